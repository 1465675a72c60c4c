//! An incremental newline-delimited JSON line splitter (Ollama's streaming format).
//!
//! Bytes are pushed as they arrive, split anywhere; complete lines come out of
//! [`NdjsonDecoder::next_line`] without their `\n` / `\r\n`, blank lines skipped. At the
//! end of the body, [`NdjsonDecoder::finish`] returns a last line that had no newline.

#[derive(Debug, Default)]
pub struct NdjsonDecoder {
    buf: Vec<u8>,
    pos: usize,
}

impl NdjsonDecoder {
    pub fn new() -> Self {
        NdjsonDecoder::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete, non-blank line (lossily decoded as UTF-8).
    pub fn next_line(&mut self) -> Option<String> {
        loop {
            let rest = &self.buf[self.pos..];
            let end = rest.iter().position(|&b| b == b'\n')?;
            let line = trim(&rest[..end]);
            self.pos += end + 1;
            if !line.is_empty() {
                return Some(String::from_utf8_lossy(line).into_owned());
            }
        }
    }

    /// What is left after the last newline, if it is not blank; the decoder is empty
    /// afterwards.
    pub fn finish(&mut self) -> Option<String> {
        let line = trim(&self.buf[self.pos..]);
        let out = (!line.is_empty()).then(|| String::from_utf8_lossy(line).into_owned());
        self.buf.clear();
        self.pos = 0;
        out
    }
}

fn trim(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., last] = line {
        if last.is_ascii_whitespace() {
            line = rest;
        } else {
            break;
        }
    }
    while let [first, rest @ ..] = line {
        if first.is_ascii_whitespace() {
            line = rest;
        } else {
            break;
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "{\"a\":\"é😀\"}\n\n{\"b\":2}\r\n  \n{\"c\":3}\n{\"tail\":true}";

    fn expected() -> Vec<String> {
        vec![
            "{\"a\":\"é😀\"}".to_string(),
            "{\"b\":2}".to_string(),
            "{\"c\":3}".to_string(),
        ]
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let bytes = STREAM.as_bytes();
        for cut in 0..=bytes.len() {
            let mut dec = NdjsonDecoder::new();
            dec.push(&bytes[..cut]);
            let mut got: Vec<String> = std::iter::from_fn(|| dec.next_line()).collect();
            dec.push(&bytes[cut..]);
            got.extend(std::iter::from_fn(|| dec.next_line()));
            assert_eq!(got, expected(), "split at byte {cut}");
            assert_eq!(dec.finish().as_deref(), Some("{\"tail\":true}"));
            assert_eq!(dec.finish(), None);
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut dec = NdjsonDecoder::new();
        let mut got = Vec::new();
        for b in STREAM.as_bytes() {
            dec.push(std::slice::from_ref(b));
            got.extend(std::iter::from_fn(|| dec.next_line()));
        }
        assert_eq!(got, expected());
    }

    #[test]
    fn blank_tail_is_nothing() {
        let mut dec = NdjsonDecoder::new();
        dec.push(b"{}\n \r\n");
        assert_eq!(dec.next_line().as_deref(), Some("{}"));
        assert_eq!(dec.next_line(), None);
        assert_eq!(dec.finish(), None);
    }
}
