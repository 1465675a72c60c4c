//! Making agent-made text safe to print on a terminal.
//!
//! A file name, a diff line or a summary comes from files the agent wrote. Printed raw,
//! an escape sequence in it (`ESC [2K`, a carriage return, a backspace, a bidi override)
//! could erase or reorder other lines of the review, so the user would accept something
//! other than what they saw. Every front end prints such text through these functions,
//! which turn each control character into a visible escape (`\x1b`, `\r`, `\u{202e}`).

use std::borrow::Cow;

/// Whether `c` must not reach a terminal raw: C0 controls, DEL, C1 controls, the Unicode
/// bidi embeddings, overrides, isolates and marks, and the line/paragraph separators.
pub fn is_unsafe_char(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{061c}'
        | '\u{200e}' | '\u{200f}'
        | '\u{2028}' | '\u{2029}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

fn escape_with(s: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| is_unsafe_char(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !is_unsafe_char(c) || keep(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

/// `s` with every control character escaped, newlines and tabs included: for one-line
/// text such as a file name.
pub fn escape_control(s: &str) -> Cow<'_, str> {
    escape_with(s, |_| false)
}

/// `s` with every control character escaped except `\n` and `\t`: for multi-line text
/// such as a diff. A carriage return is escaped too, so a line cannot overwrite itself
/// (CRLF files show a visible `\r` at each line end).
pub fn escape_control_multiline(s: &str) -> Cow<'_, str> {
    escape_with(s, |c| c == '\n' || c == '\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(escape_control("src/main.rs"), Cow::Borrowed(_)));
        assert!(matches!(
            escape_control_multiline("+ a\tb\n- c\n"),
            Cow::Borrowed(_)
        ));
        assert_eq!(escape_control("naïve/日本.txt"), "naïve/日本.txt");
    }

    #[test]
    fn controls_become_visible() {
        assert_eq!(escape_control("a\x1b[2K\rb.txt"), "a\\x1b[2K\\rb.txt");
        assert_eq!(escape_control("x\ny\tz\x08\x7f"), "x\\ny\\tz\\x08\\x7f");
        assert_eq!(escape_control("\u{9b}31m"), "\\u{009b}31m");
        assert_eq!(
            escape_control("evil\u{202e}txt.exe"),
            "evil\\u{202e}txt.exe"
        );
        assert_eq!(escape_control("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
    }

    #[test]
    fn multiline_keeps_newlines_and_tabs_only() {
        assert_eq!(
            escape_control_multiline("+ok\tyes\n+bad\r\x1b[1A\n"),
            "+ok\tyes\n+bad\\r\\x1b[1A\n"
        );
    }

    #[test]
    fn no_escape_survives() {
        for c in (0u32..0x3000).filter_map(char::from_u32) {
            let s = c.to_string();
            let e = escape_control(&s);
            assert!(
                !e.chars().any(is_unsafe_char),
                "U+{:04X} survived as {e:?}",
                c as u32
            );
        }
    }
}
