//! Pure text helpers behind the tools: `cat -n` numbering, exact-match edits
//! and the head/tail cut of long command output.

use std::fmt::Write as _;

/// `cat -n` style: each line as its right-aligned number, a tab and the line, starting at
/// line `offset` (1-based) for at most `limit` lines. Lines longer than `max_line_chars`
/// are cut with a note; the whole text stops near `max_output` bytes with a note saying
/// which offset reads on. `Err(total_lines)` when `offset` is past the end.
pub fn numbered_lines(
    text: &str,
    offset: usize,
    limit: usize,
    max_line_chars: usize,
    max_output: usize,
) -> Result<String, usize> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let total = if text.is_empty() {
        0
    } else {
        body.matches('\n').count() + 1
    };
    let offset = offset.max(1);
    if offset > total {
        return Err(total);
    }
    let mut out = String::new();
    let mut last = offset - 1;
    for (i, line) in body.split('\n').enumerate().skip(offset - 1).take(limit) {
        if out.len() >= max_output {
            break;
        }
        let line = line.strip_suffix('\r').unwrap_or(line);
        let number = i + 1;
        match line.char_indices().nth(max_line_chars) {
            Some((cut, _)) => {
                let rest = line[cut..].chars().count();
                let _ = writeln!(
                    out,
                    "{number:>6}\t{} [... line truncated, {rest} more characters]",
                    &line[..cut]
                );
            }
            None => {
                let _ = writeln!(out, "{number:>6}\t{line}");
            }
        }
        last = number;
    }
    if last < total {
        let _ = write!(
            out,
            "\n[showing lines {offset}-{last} of {total}; call read_file with offset={} to read more]",
            last + 1
        );
    }
    Ok(out)
}

/// A successful edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EditResult {
    pub content: String,
    pub replacements: usize,
    /// 1-based line of the first replacement.
    pub first_line: usize,
}

/// Why an edit cannot be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EditError {
    EmptyOldString,
    SameStrings,
    /// No exact match; `trimmed_matches` tells whether the text occurs once surrounding
    /// whitespace is ignored (a hint for the model).
    NotFound {
        trimmed_matches: bool,
    },
    Ambiguous {
        count: usize,
    },
}

impl EditError {
    /// The sentence sent back to the model.
    pub fn message(&self, path: &str) -> String {
        match self {
            EditError::EmptyOldString => format!(
                "edit_file: old_string is empty; copy the exact text to replace from {path} \
                 (to create or overwrite a whole file use write_file)"
            ),
            EditError::SameStrings => {
                "edit_file: old_string and new_string are identical, so nothing would change; \
                 give the new text in new_string"
                    .into()
            }
            EditError::NotFound { trimmed_matches } => {
                let mut msg = format!(
                    "edit_file: old_string was not found in {path}. Read the file with read_file \
                     and copy the exact text, including whitespace, indentation and line breaks \
                     (without the line-number prefix)"
                );
                if *trimmed_matches {
                    msg.push_str(
                        "; the text does occur when leading and trailing whitespace is ignored, \
                         so check the whitespace at its ends",
                    );
                }
                msg
            }
            EditError::Ambiguous { count } => format!(
                "edit_file: old_string matches {count} places in {path}; include more \
                 surrounding lines in old_string to make it unique, or set replace_all to true \
                 to replace all {count}"
            ),
        }
    }
}

/// Replaces `old` by `new` in `content`: exactly one match, or every match with
/// `replace_all`. A file with CRLF line ends also matches an `old` written with `\n`.
pub fn apply_edit(
    content: &str,
    old: &str,
    new: &str,
    replace_all: bool,
) -> Result<EditResult, EditError> {
    if old.is_empty() {
        return Err(EditError::EmptyOldString);
    }
    if old == new {
        return Err(EditError::SameStrings);
    }
    let mut old = old.to_string();
    let mut new = new.to_string();
    let mut count = content.matches(old.as_str()).count();
    if count == 0 && content.contains("\r\n") && old.contains('\n') && !old.contains("\r\n") {
        let crlf_old = old.replace('\n', "\r\n");
        let crlf_count = content.matches(crlf_old.as_str()).count();
        if crlf_count > 0 {
            old = crlf_old;
            new = new.replace("\r\n", "\n").replace('\n', "\r\n");
            count = crlf_count;
        }
    }
    if count == 0 {
        let trimmed = old.trim();
        return Err(EditError::NotFound {
            trimmed_matches: !trimmed.is_empty() && content.contains(trimmed),
        });
    }
    if count > 1 && !replace_all {
        return Err(EditError::Ambiguous { count });
    }
    let first = content.find(old.as_str()).unwrap_or(0);
    let first_line = content[..first].matches('\n').count() + 1;
    let content = if replace_all {
        content.replace(old.as_str(), &new)
    } else {
        content.replacen(old.as_str(), &new, 1)
    };
    Ok(EditResult {
        content,
        replacements: count,
        first_line,
    })
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Cuts command output to about `limit` bytes: the first and last halves, with a note
/// saying how many bytes were left out. `total` is what the command printed in all;
/// when it exceeds `output.len()`, the sandbox already dropped the rest.
pub fn head_tail(output: &str, total: u64, limit: usize) -> String {
    let captured = output.len() as u64;
    let uncaptured = total.saturating_sub(captured);
    if output.len() <= limit {
        let mut out = output.to_string();
        if uncaptured > 0 {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            let _ = writeln!(
                out,
                "[... {uncaptured} more bytes of output were not captured ...]"
            );
        }
        return out;
    }
    let head_end = floor_boundary(output, limit / 2);
    let tail_start = ceil_boundary(output, output.len() - limit / 2);
    let omitted = total - head_end as u64 - (output.len() - tail_start) as u64;
    let mut out = String::with_capacity(limit + 128);
    out.push_str(&output[..head_end]);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    let _ = write!(out, "[... {omitted} bytes omitted ...]");
    if uncaptured > 0 {
        let _ = write!(
            out,
            " [the last {uncaptured} bytes were not captured, so the part below is not the very end]"
        );
    }
    out.push('\n');
    out.push_str(&output[tail_start..]);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn numbering() {
        let out = numbered_lines("a\nb\nc\n", 2, 10, 100, 1000).unwrap();
        assert_eq!(out, "     2\tb\n     3\tc\n");
        let out = numbered_lines("a\nb\nc", 1, 2, 100, 1000).unwrap();
        assert!(out.starts_with("     1\ta\n     2\tb\n"));
        assert!(out.contains("offset=3"));
        assert_eq!(numbered_lines("a\n", 5, 10, 100, 1000), Err(1));
        let out = numbered_lines("abcdef\r\n", 1, 10, 3, 1000).unwrap();
        assert!(
            out.contains("abc [... line truncated, 3 more characters]"),
            "{out}"
        );
    }

    #[test]
    fn edits() {
        let r = apply_edit("a b a", "a", "x", true).unwrap();
        assert_eq!((r.content.as_str(), r.replacements), ("x b x", 2));
        assert_eq!(
            apply_edit("a b a", "a", "x", false),
            Err(EditError::Ambiguous { count: 2 })
        );
        assert_eq!(
            apply_edit("  foo", "foo  ", "bar", false),
            Err(EditError::NotFound {
                trimmed_matches: true
            })
        );
        let r = apply_edit("x\r\ny\r\nz", "x\ny", "1\n2", false).unwrap();
        assert_eq!(r.content, "1\r\n2\r\nz");
        let r = apply_edit("l1\nl2\nl3", "l3", "L3", false).unwrap();
        assert_eq!(r.first_line, 3);
    }

    #[test]
    fn cut() {
        let s = "é".repeat(100);
        let out = head_tail(&s, s.len() as u64, 51);
        assert!(out.contains("bytes omitted"));
        assert_eq!(head_tail("abc", 3, 10), "abc");
        assert!(head_tail("abc", 10, 10).contains("7 more bytes"));
    }
}
