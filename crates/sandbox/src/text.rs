//! The one rule for "is this file text?", shared by `read_file` and `@path`, so the
//! model and the user never get different answers about the same file.

use std::borrow::Cow;

/// Leading bytes searched for a NUL byte (git's own `FIRST_FEW_BYTES`).
const BINARY_SNIFF_BYTES: usize = 8000;

/// Why bytes are not treated as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotText {
    #[error("it contains NUL bytes")]
    NulBytes,
    #[error("it is not UTF-8 text")]
    NotUtf8,
}

/// Decodes file bytes as text, or says why they look binary: a NUL byte in the first
/// 8000 bytes (what git and grep check), or more than 1% of the characters invalid
/// UTF-8. A few invalid bytes (a Latin-1 accent in a comment) are shown as U+FFFD.
/// Valid UTF-8 is borrowed, not copied.
pub fn decode_text(bytes: &[u8]) -> Result<Cow<'_, str>, NotText> {
    if bytes[..bytes.len().min(BINARY_SNIFF_BYTES)].contains(&0) {
        return Err(NotText::NulBytes);
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(Cow::Borrowed(s)),
        Err(_) => {
            let lossy = String::from_utf8_lossy(bytes);
            let bad = lossy.chars().filter(|&c| c == '\u{FFFD}').count();
            let all = lossy.chars().count().max(1);
            if bad * 100 > all {
                Err(NotText::NotUtf8)
            } else {
                Ok(Cow::Owned(lossy.into_owned()))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn text_is_borrowed() {
        assert!(matches!(
            decode_text(b"hello\n"),
            Ok(Cow::Borrowed("hello\n"))
        ));
        assert_eq!(decode_text(b"").unwrap(), "");
        assert_eq!(decode_text("héllo".as_bytes()).unwrap(), "héllo");
    }

    #[test]
    fn nul_near_the_start_is_binary() {
        assert_eq!(decode_text(b"he\0llo"), Err(NotText::NulBytes));
        // A PNG header: NUL bytes right after the signature.
        assert_eq!(
            decode_text(&[0x89, b'P', b'N', b'G', 0, 0, 1, 2]),
            Err(NotText::NulBytes)
        );
        // A NUL past the sniffed head does not make a text file binary.
        let mut late = vec![b'a'; BINARY_SNIFF_BYTES];
        late.push(0);
        assert!(decode_text(&late).is_ok());
    }

    #[test]
    fn mostly_invalid_utf8_is_binary_a_few_bad_bytes_are_replaced() {
        assert_eq!(decode_text(&[0xff; 100]), Err(NotText::NotUtf8));
        assert_eq!(decode_text(&[0xff, 0xfe, 0x41]), Err(NotText::NotUtf8));
        // One Latin-1 byte in 200 characters of text: shown, with U+FFFD in its place.
        let mut latin = b"// caf".to_vec();
        latin.push(0xe9);
        latin.extend([b'x'; 200]);
        let text = decode_text(&latin).unwrap();
        assert!(text.starts_with("// caf\u{FFFD}x"), "{text}");
    }
}
