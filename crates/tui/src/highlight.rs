//! A small hand-written syntax highlighter for code blocks and diffs.
//!
//! A real grammar engine (syntect) costs a long compile and milliseconds per block;
//! keyword/string/comment/number colouring per language is enough for a chat view and
//! costs microseconds, which keeps a frame within its 2 ms budget.

use ratatui::style::Style;
use ratatui::text::Span;

use crate::theme::Palette;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lang {
    Rust,
    Python,
    JavaScript,
    TypeScript,
    Bash,
    Json,
    Toml,
    Go,
    C,
    Yaml,
    Diff,
    Unknown,
}

impl Lang {
    /// Maps a code fence info string (or a file extension) to a language.
    pub fn from_token(info: &str) -> Lang {
        let tok = info
            .split(|c: char| c.is_whitespace() || c == ',' || c == '{')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        match tok.as_str() {
            "rust" | "rs" => Lang::Rust,
            "python" | "py" | "python3" => Lang::Python,
            "js" | "javascript" | "jsx" | "mjs" | "cjs" => Lang::JavaScript,
            "ts" | "typescript" | "tsx" => Lang::TypeScript,
            "bash" | "sh" | "shell" | "zsh" | "console" | "shell-session" => Lang::Bash,
            "json" | "jsonc" | "json5" => Lang::Json,
            "toml" | "ini" | "cfg" => Lang::Toml,
            "go" | "golang" => Lang::Go,
            "c" | "h" | "cpp" | "c++" | "cc" | "hpp" | "cxx" | "java" => Lang::C,
            "yaml" | "yml" => Lang::Yaml,
            "diff" | "patch" => Lang::Diff,
            _ => Lang::Unknown,
        }
    }

    /// The language of a file path, by extension.
    pub fn from_path(path: &str) -> Lang {
        let name = path.rsplit('/').next().unwrap_or(path);
        match name.rsplit_once('.') {
            Some((_, ext)) => Lang::from_token(ext),
            None if name == "Makefile" || name == "Dockerfile" => Lang::Bash,
            None => Lang::Unknown,
        }
    }

    fn keywords(self) -> &'static [&'static str] {
        match self {
            Lang::Rust => &[
                "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else",
                "enum", "extern", "false", "fn", "for", "if", "impl", "in", "let", "loop", "match",
                "mod", "move", "mut", "pub", "ref", "return", "self", "Self", "static", "struct",
                "super", "trait", "true", "type", "unsafe", "use", "where", "while", "Some",
                "None", "Ok", "Err",
            ],
            Lang::Python => &[
                "and", "as", "assert", "async", "await", "break", "class", "continue", "def",
                "del", "elif", "else", "except", "False", "finally", "for", "from", "global", "if",
                "import", "in", "is", "lambda", "None", "nonlocal", "not", "or", "pass", "raise",
                "return", "True", "try", "while", "with", "yield", "self",
            ],
            Lang::JavaScript | Lang::TypeScript => &[
                "async",
                "await",
                "break",
                "case",
                "catch",
                "class",
                "const",
                "continue",
                "default",
                "delete",
                "do",
                "else",
                "export",
                "extends",
                "false",
                "finally",
                "for",
                "from",
                "function",
                "if",
                "import",
                "in",
                "instanceof",
                "let",
                "new",
                "null",
                "return",
                "static",
                "super",
                "switch",
                "this",
                "throw",
                "true",
                "try",
                "typeof",
                "undefined",
                "var",
                "void",
                "while",
                "yield",
                "interface",
                "type",
                "enum",
                "implements",
                "private",
                "public",
                "protected",
                "readonly",
                "as",
                "of",
            ],
            Lang::Bash => &[
                "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case",
                "esac", "in", "function", "return", "local", "export", "echo", "cd", "set",
                "unset", "exit", "source", "sudo", "cargo", "git", "npm", "make",
            ],
            Lang::Json => &["true", "false", "null"],
            Lang::Toml | Lang::Yaml => &["true", "false", "null", "yes", "no"],
            Lang::Go => &[
                "break",
                "case",
                "chan",
                "const",
                "continue",
                "default",
                "defer",
                "else",
                "fallthrough",
                "for",
                "func",
                "go",
                "goto",
                "if",
                "import",
                "interface",
                "map",
                "package",
                "range",
                "return",
                "select",
                "struct",
                "switch",
                "type",
                "var",
                "nil",
                "true",
                "false",
                "err",
            ],
            Lang::C => &[
                "auto",
                "break",
                "case",
                "char",
                "const",
                "continue",
                "default",
                "do",
                "double",
                "else",
                "enum",
                "extern",
                "float",
                "for",
                "goto",
                "if",
                "int",
                "long",
                "register",
                "return",
                "short",
                "signed",
                "sizeof",
                "static",
                "struct",
                "switch",
                "typedef",
                "union",
                "unsigned",
                "void",
                "volatile",
                "while",
                "class",
                "public",
                "private",
                "protected",
                "namespace",
                "template",
                "new",
                "delete",
                "true",
                "false",
                "nullptr",
                "NULL",
                "include",
                "define",
                "bool",
                "import",
                "package",
            ],
            Lang::Diff | Lang::Unknown => &[],
        }
    }

    fn line_comment(self) -> &'static [&'static str] {
        match self {
            Lang::Rust | Lang::JavaScript | Lang::TypeScript | Lang::Go | Lang::C => &["//"],
            Lang::Python | Lang::Bash | Lang::Toml | Lang::Yaml => &["#"],
            _ => &[],
        }
    }

    fn block_comments(self) -> bool {
        matches!(
            self,
            Lang::Rust | Lang::JavaScript | Lang::TypeScript | Lang::Go | Lang::C
        )
    }

    fn capitalized_types(self) -> bool {
        matches!(
            self,
            Lang::Rust | Lang::TypeScript | Lang::Go | Lang::C | Lang::JavaScript
        )
    }
}

/// Carries multi-line state (an open `/* */` comment) from one line to the next.
#[derive(Default)]
pub(crate) struct Highlighter {
    in_block_comment: bool,
}

impl Highlighter {
    /// Highlights one line of `lang` code. The spans own their text.
    pub fn line(&mut self, lang: Lang, line: &str, pal: &Palette) -> Vec<Span<'static>> {
        if lang == Lang::Diff {
            return vec![Span::styled(line.to_string(), diff_style(line, pal))];
        }
        if lang == Lang::Unknown {
            return vec![Span::styled(line.to_string(), pal.code)];
        }
        let mut out: Vec<Span<'static>> = Vec::new();
        let push = |out: &mut Vec<Span<'static>>, text: &str, style: Style| {
            if text.is_empty() {
                return;
            }
            if let Some(last) = out.last_mut() {
                if last.style == style {
                    last.content.to_mut().push_str(text);
                    return;
                }
            }
            out.push(Span::styled(text.to_string(), style));
        };
        let bytes = line.as_bytes();
        let mut i = 0;
        let mut key_position = true; // for toml/yaml: start of line is a key
        while i < line.len() {
            let rest = &line[i..];
            if self.in_block_comment {
                match rest.find("*/") {
                    Some(end) => {
                        push(&mut out, &rest[..end + 2], pal.comment);
                        i += end + 2;
                        self.in_block_comment = false;
                    }
                    None => {
                        push(&mut out, rest, pal.comment);
                        i = line.len();
                    }
                }
                continue;
            }
            if lang.block_comments() && rest.starts_with("/*") {
                self.in_block_comment = true;
                push(&mut out, "/*", pal.comment);
                i += 2;
                continue;
            }
            if lang.line_comment().iter().any(|c| rest.starts_with(c)) {
                // `#` inside a bash word (e.g. `$#`) is rare enough to ignore.
                push(&mut out, rest, pal.comment);
                break;
            }
            let c = bytes[i];
            if c == b'"'
                || c == b'\''
                || (c == b'`' && matches!(lang, Lang::JavaScript | Lang::TypeScript | Lang::Go))
            {
                // Rust lifetimes ('a) are not strings.
                if c == b'\'' && lang == Lang::Rust && !is_rust_char_literal(rest) {
                    push(&mut out, "'", pal.code);
                    i += 1;
                    continue;
                }
                let end = string_end(rest, c);
                let style = if matches!(lang, Lang::Json | Lang::Toml | Lang::Yaml)
                    && key_position
                    && rest[end..].trim_start().starts_with([':', '='])
                {
                    pal.ty
                } else {
                    pal.string
                };
                push(&mut out, &rest[..end], style);
                i += end;
                continue;
            }
            if c.is_ascii_digit() {
                let end = rest
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '.' || ch == '_'))
                    .unwrap_or(rest.len());
                push(&mut out, &rest[..end], pal.number);
                i += end;
                key_position = false;
                continue;
            }
            if c.is_ascii_alphabetic() || c == b'_' || (c == b'$' && lang == Lang::Bash) {
                let end = rest[1..]
                    .find(|ch: char| {
                        !(ch.is_ascii_alphanumeric()
                            || ch == '_'
                            || (ch == '-' && matches!(lang, Lang::Toml | Lang::Yaml)))
                    })
                    .map(|e| e + 1)
                    .unwrap_or(rest.len());
                let word = &rest[..end];
                let after = rest[end..].trim_start();
                let style = if matches!(lang, Lang::Toml | Lang::Yaml)
                    && key_position
                    && after.starts_with([':', '='])
                {
                    pal.ty
                } else if lang.keywords().contains(&word) {
                    pal.keyword
                } else if c == b'$' {
                    pal.ty
                } else if after.starts_with('(') || (lang == Lang::Rust && after.starts_with('!')) {
                    pal.func
                } else if lang.capitalized_types() && c.is_ascii_uppercase() {
                    pal.ty
                } else {
                    pal.code
                };
                push(&mut out, word, style);
                i += end;
                key_position = false;
                continue;
            }
            if lang == Lang::Toml && c == b'[' && i == line.len() - line.trim_start().len() {
                push(&mut out, rest, pal.heading.patch(pal.code));
                break;
            }
            let ch_len = rest.chars().next().map(char::len_utf8).unwrap_or(1);
            if !c.is_ascii_whitespace() && c != b'-' {
                key_position = false;
            }
            push(&mut out, &rest[..ch_len], pal.code);
            i += ch_len;
        }
        out
    }
}

fn is_rust_char_literal(rest: &str) -> bool {
    // 'x' or '\n' or '\u{..}'
    let mut chars = rest.chars().skip(1);
    match chars.next() {
        Some('\\') => true,
        Some(_) => chars.next() == Some('\''),
        None => false,
    }
}

/// Byte length of the string literal at the start of `rest` (quote included), or the
/// rest of the line when it is not closed.
fn string_end(rest: &str, quote: u8) -> usize {
    let bytes = rest.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    rest.len()
}

/// The style of one unified-diff line.
pub(crate) fn diff_style(line: &str, pal: &Palette) -> Style {
    if line.starts_with("+++")
        || line.starts_with("---")
        || line.starts_with("diff ")
        || line.starts_with("index ")
    {
        pal.title
    } else if line.starts_with('+') {
        pal.diff_add
    } else if line.starts_with('-') {
        pal.diff_del
    } else if line.starts_with("@@") {
        pal.diff_hunk
    } else {
        pal.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::theme::{Palette, Theme};

    #[test]
    fn rust_keywords_strings_and_comments_are_split() {
        let pal = Palette::new(Theme::Cyberpunk);
        let mut h = Highlighter::default();
        let spans = h.line(Lang::Rust, "fn main() { let s = \"hi\"; // done", &pal);
        let text: String = spans.iter().map(|s| s.content.as_ref()).collect();
        assert_eq!(text, "fn main() { let s = \"hi\"; // done");
        assert_eq!(spans[0].content, "fn");
        assert_eq!(spans[0].style, pal.keyword);
        assert!(spans
            .iter()
            .any(|s| s.content == "\"hi\"" && s.style == pal.string));
        assert!(spans
            .iter()
            .any(|s| s.content == "// done" && s.style == pal.comment));
    }

    #[test]
    fn block_comments_span_lines() {
        let pal = Palette::new(Theme::Cyberpunk);
        let mut h = Highlighter::default();
        h.line(Lang::C, "int x; /* start", &pal);
        let spans = h.line(Lang::C, "still comment */ int y;", &pal);
        assert_eq!(spans[0].content, "still comment */");
        assert_eq!(spans[0].style, pal.comment);
    }

    #[test]
    fn languages_are_recognised() {
        for (t, l) in [
            ("rust", Lang::Rust),
            ("py", Lang::Python),
            ("js", Lang::JavaScript),
            ("tsx", Lang::TypeScript),
            ("bash", Lang::Bash),
            ("json", Lang::Json),
            ("toml", Lang::Toml),
            ("go", Lang::Go),
            ("c", Lang::C),
        ] {
            assert_eq!(Lang::from_token(t), l);
        }
        assert_eq!(Lang::from_path("src/main.rs"), Lang::Rust);
    }
}
