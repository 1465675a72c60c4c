//! `@path` references: files, directories and globs put into the user's message.
//!
//! **What counts as a reference.** An `@` at the start of the text or right after
//! whitespace, followed by a path-ish token (it starts with a letter, digit, or one of
//! `. / _ - * ~`) that runs to the next whitespace. `\ ` inside the token is a space in
//! the path; trailing sentence punctuation (`.,;:!?'"` and unbalanced closing brackets)
//! is not part of it. So `foo@bar.com`, `x@y` in code and a lone `@` are left alone, and
//! `\@name` is typed as a literal `@name` (the backslash is dropped).
//!
//! The message keeps the user's text and gets the referenced content appended: files
//! with numbered lines (`cat -n` style), directories as an indented listing, globs
//! (`@src/**/*.rs`) as the files they match. Everything is read through the
//! [`Sandbox`], so the files are the agent's view of the project. Problems with one
//! reference (missing, too big, binary, outside the project) become notes, shown to the
//! user and included for the model; only a sandbox that cannot be reached is an error.

use std::collections::HashSet;
use std::fmt::Write as _;

use globset::GlobBuilder;
use safe_coder_sandbox::{decode_text, normalize_in_root, Sandbox, SandboxError};

use crate::text::{human_size, numbered_lines};

/// Limits on what one message may pull in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtLimits {
    /// A larger file is skipped with a note (the agent can still read parts of it).
    pub max_file_bytes: u64,
    /// Files that would take the included content past this are skipped with a note.
    pub max_total_bytes: u64,
    /// At most this many files per message.
    pub max_files: usize,
    /// A directory listing stops after this many entries.
    pub max_listing_entries: usize,
    /// A glob stops looking after visiting this many directory entries.
    pub max_glob_scan: usize,
}

impl Default for AtLimits {
    fn default() -> Self {
        AtLimits {
            max_file_bytes: 256 * 1024,
            max_total_bytes: 1024 * 1024,
            max_files: 50,
            max_listing_entries: 500,
            max_glob_scan: 20_000,
        }
    }
}

/// The message to send and what happened on the way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expanded {
    /// The user's text (with `\@` unescaped) and the referenced content after it.
    pub text: String,
    /// One sentence per reference that could not be included in full, for the user.
    pub notes: Vec<String>,
    /// The project-relative paths of the files whose content was included.
    pub files: Vec<String>,
}

/// Only a sandbox failure that is not about one path stops the expansion.
#[derive(Debug, thiserror::Error)]
pub enum AtError {
    #[error("could not read @{path} because the sandbox is not available: {source}")]
    Sandbox {
        path: String,
        #[source]
        source: SandboxError,
    },
}

/// Expands every `@path` reference in `text`. See the module docs for the rules.
pub async fn expand_at_paths(
    text: &str,
    sandbox: &dyn Sandbox,
    limits: AtLimits,
) -> Result<Expanded, AtError> {
    let (user_text, references) = find_references(text);
    if references.is_empty() {
        return Ok(Expanded {
            text: user_text,
            ..Expanded::default()
        });
    }
    let mut state = State {
        limits,
        blocks: String::new(),
        notes: Vec::new(),
        files: Vec::new(),
        seen_files: HashSet::new(),
        total_bytes: 0,
        files_over_limit: 0,
    };
    let root = sandbox.agent_root();
    let mut seen_refs = HashSet::new();
    for raw in references {
        if !seen_refs.insert(raw.clone()) {
            continue;
        }
        let path = match normalize_in_root(&root, &raw) {
            Ok(p) => p,
            Err(reason) => {
                state.notes.push(format!("@{raw}: {reason}"));
                continue;
            }
        };
        let stat = match sandbox.stat(&path).await {
            Ok(s) => s,
            Err(e) => {
                state.path_error(&format!("@{raw}"), e)?;
                continue;
            }
        };
        // A path that exists is taken literally, so `app/[id]/page.tsx` is a file.
        if stat.is_none() && is_glob(&path) {
            expand_glob(&raw, &path, sandbox, &mut state).await?;
            continue;
        }
        match stat {
            None => state
                .notes
                .push(format!("@{raw}: no such file or directory in the project")),
            Some(s) if s.is_dir => {
                match listing(sandbox, &path, limits.max_listing_entries).await {
                    Ok((body, _)) => {
                        let shown = if path == "." {
                            "./".to_string()
                        } else {
                            format!("{path}/")
                        };
                        let _ = write!(state.blocks, "Directory: {shown}\n{body}\n");
                    }
                    Err(e) => state.path_error(&format!("@{raw}"), e)?,
                }
            }
            Some(s) => {
                state
                    .add_file(&format!("@{raw}"), &path, s.size, sandbox)
                    .await?
            }
        }
    }
    Ok(state.finish(user_text))
}

struct State {
    limits: AtLimits,
    blocks: String,
    notes: Vec<String>,
    files: Vec<String>,
    seen_files: HashSet<String>,
    total_bytes: u64,
    files_over_limit: usize,
}

impl State {
    /// A per-path failure becomes a note; an unreachable sandbox is an error. `label`
    /// is how notes name the path: `@ref` as typed, or a glob's match.
    fn path_error(&mut self, label: &str, e: SandboxError) -> Result<(), AtError> {
        match e {
            SandboxError::Unavailable(_) => Err(AtError::Sandbox {
                path: label.trim_start_matches('@').to_string(),
                source: e,
            }),
            SandboxError::NotFound(_) => {
                self.notes
                    .push(format!("{label}: no such file or directory in the project"));
                Ok(())
            }
            other => {
                self.notes.push(format!("{label}: {other}"));
                Ok(())
            }
        }
    }

    async fn add_file(
        &mut self,
        label: &str,
        path: &str,
        size: u64,
        sandbox: &dyn Sandbox,
    ) -> Result<(), AtError> {
        if self.seen_files.contains(path) {
            return Ok(());
        }
        if self.files.len() >= self.limits.max_files {
            self.files_over_limit += 1;
            return Ok(());
        }
        if size > self.limits.max_file_bytes {
            self.notes.push(format!(
                "{label}: skipped, {} is over the {} per-file limit (ask the agent to read parts of it)",
                human_size(size),
                human_size(self.limits.max_file_bytes)
            ));
            return Ok(());
        }
        if self.total_bytes + size > self.limits.max_total_bytes {
            self.notes.push(format!(
                "{label}: skipped, it would take the referenced content over the {} total limit",
                human_size(self.limits.max_total_bytes)
            ));
            return Ok(());
        }
        let data = match sandbox.read_file(path).await {
            Ok(d) => d,
            Err(e) => return self.path_error(label, e),
        };
        let text = match decode_text(&data) {
            Ok(text) => text,
            Err(why) => {
                self.notes.push(format!(
                    "{label}: skipped, binary file ({}; {why})",
                    human_size(data.len() as u64)
                ));
                return Ok(());
            }
        };
        self.total_bytes += data.len() as u64;
        self.seen_files.insert(path.to_string());
        self.files.push(path.to_string());
        let lines = text.lines().count();
        let _ = write!(
            self.blocks,
            "File: {path} ({lines} line{})\n{}\n",
            if lines == 1 { "" } else { "s" },
            numbered_lines(&text)
        );
        Ok(())
    }

    fn finish(mut self, user_text: String) -> Expanded {
        if self.files_over_limit > 0 {
            self.notes.push(format!(
                "{} more file{} not included: a message takes at most {} files",
                self.files_over_limit,
                if self.files_over_limit == 1 { "" } else { "s" },
                self.limits.max_files
            ));
        }
        let mut text = user_text;
        if !self.blocks.is_empty() || !self.notes.is_empty() {
            text.push_str("\n\n--- Referenced content ---\n");
            text.push_str(&self.blocks);
            for note in &self.notes {
                let _ = writeln!(text, "Note: {note}");
            }
            text.push_str("--- End of referenced content ---");
        }
        Expanded {
            text,
            notes: self.notes,
            files: self.files,
        }
    }
}

/// The user's text with `\@` unescaped, and the raw paths of the references in order.
fn find_references(text: &str) -> (String, Vec<String>) {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut refs = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && chars.get(i + 1) == Some(&'@') {
            out.push('@');
            i += 2;
            continue;
        }
        let at_boundary = i == 0 || chars[i - 1].is_whitespace();
        if c == '@' && at_boundary {
            let (token, end) = read_token(&chars, i + 1);
            if let Some(path) = clean_token(&token) {
                refs.push(path);
            }
            out.extend(&chars[i..end]);
            i = end;
            continue;
        }
        out.push(c);
        i += 1;
    }
    (out, refs)
}

/// Reads a path token starting at `start`: up to the next unescaped whitespace, with
/// `\ ` standing for a space. Returns the unescaped token and the index after it.
fn read_token(chars: &[char], start: usize) -> (String, usize) {
    let mut token = String::new();
    let mut i = start;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && chars.get(i + 1).is_some_and(|n| n.is_whitespace()) {
            token.push(chars[i + 1]);
            i += 2;
            continue;
        }
        if c.is_whitespace() {
            break;
        }
        token.push(c);
        i += 1;
    }
    (token, i)
}

/// The path a token names, or `None` when it is not path-ish.
fn clean_token(token: &str) -> Option<String> {
    let first = token.chars().next()?;
    if !(first.is_alphanumeric() || matches!(first, '.' | '/' | '_' | '-' | '*' | '~')) {
        return None;
    }
    let mut t = token;
    while let Some(last) = t.chars().last() {
        let strip = match last {
            '.' | ',' | ';' | ':' | '!' | '?' | '\'' | '"' => true,
            ')' => t.matches(')').count() > t.matches('(').count(),
            ']' => t.matches(']').count() > t.matches('[').count(),
            '}' => t.matches('}').count() > t.matches('{').count(),
            _ => false,
        };
        // Keep `.` and `..` themselves, and a trailing `.` after `/` (`src/.`).
        if !strip || t == "." || t == ".." || (last == '.' && t.ends_with("/.")) {
            break;
        }
        t = &t[..t.len() - last.len_utf8()];
    }
    (!t.is_empty()).then(|| t.to_string())
}

fn is_glob(path: &str) -> bool {
    path.contains(['*', '?', '[', '{'])
}

async fn expand_glob(
    raw: &str,
    pattern: &str,
    sandbox: &dyn Sandbox,
    state: &mut State,
) -> Result<(), AtError> {
    let matcher = match GlobBuilder::new(pattern).literal_separator(true).build() {
        Ok(g) => g.compile_matcher(),
        Err(e) => {
            state.notes.push(format!("@{raw}: not a valid glob: {e}"));
            return Ok(());
        }
    };
    // Walk only below the pattern's literal leading directories.
    let parts: Vec<&str> = pattern.split('/').collect();
    let literal = parts.iter().take_while(|p| !is_glob(p)).count();
    let base = if literal == 0 {
        ".".to_string()
    } else {
        parts[..literal.min(parts.len() - 1)].join("/")
    };
    let base = if base.is_empty() {
        ".".to_string()
    } else {
        base
    };
    let recursive = pattern.contains("**");
    let max_depth = parts.len() - literal.min(parts.len() - 1);

    let mut matches = Vec::new();
    let mut scanned = 0usize;
    let mut truncated = false;
    let mut stack = vec![(base, 1usize)];
    while let Some((dir, depth)) = stack.pop() {
        let entries = match sandbox.list_dir(&dir).await {
            Ok(e) => e,
            Err(SandboxError::Unavailable(m)) => {
                return Err(AtError::Sandbox {
                    path: raw.to_string(),
                    source: SandboxError::Unavailable(m),
                })
            }
            Err(_) => continue,
        };
        for entry in entries {
            scanned += 1;
            if scanned > state.limits.max_glob_scan {
                truncated = true;
                break;
            }
            let rel = if dir == "." {
                entry.name.clone()
            } else {
                format!("{dir}/{}", entry.name)
            };
            if entry.is_dir {
                if entry.name != ".git" && (recursive || depth < max_depth) {
                    stack.push((rel, depth + 1));
                }
            } else if matcher.is_match(&rel) {
                matches.push((rel, entry.size));
            }
        }
        if truncated {
            break;
        }
    }
    if truncated {
        state.notes.push(format!(
            "@{raw}: stopped looking after {} entries; the matches may be incomplete (use a narrower pattern)",
            state.limits.max_glob_scan
        ));
    }
    if matches.is_empty() {
        state.notes.push(format!("@{raw}: no files match"));
        return Ok(());
    }
    matches.sort();
    for (path, size) in matches {
        state.add_file(&path, &path, size, sandbox).await?;
    }
    Ok(())
}

/// An indented listing of `dir` (recursive, `.git` skipped, at most `max_entries`
/// lines): `name/` for directories, `name (size)` for files. Returns the text and the
/// number of entries shown.
pub(crate) async fn listing(
    sandbox: &dyn Sandbox,
    dir: &str,
    max_entries: usize,
) -> Result<(String, usize), SandboxError> {
    let mut out = String::new();
    let mut shown = 0usize;
    // Depth-first, so children follow their directory; the stack holds pending entries.
    let top = sandbox.list_dir(dir).await?;
    let mut stack: Vec<(String, safe_coder_sandbox::DirEntry, usize)> = top
        .into_iter()
        .rev()
        .map(|e| (dir.to_string(), e, 0))
        .collect();
    if stack.is_empty() {
        out.push_str("  (empty)\n");
    }
    while let Some((parent, entry, depth)) = stack.pop() {
        if entry.name == ".git" {
            continue;
        }
        if shown >= max_entries {
            let _ = writeln!(out, "  ... (listing stopped at {max_entries} entries)");
            break;
        }
        shown += 1;
        let indent = "  ".repeat(depth + 1);
        if entry.is_dir {
            let _ = writeln!(out, "{indent}{}/", entry.name);
            let path = if parent == "." {
                entry.name.clone()
            } else {
                format!("{parent}/{}", entry.name)
            };
            match sandbox.list_dir(&path).await {
                Ok(children) => {
                    for child in children.into_iter().rev() {
                        stack.push((path.clone(), child, depth + 1));
                    }
                }
                Err(SandboxError::Unavailable(m)) => return Err(SandboxError::Unavailable(m)),
                Err(_) => {}
            }
        } else {
            let _ = writeln!(out, "{indent}{} ({})", entry.name, human_size(entry.size));
        }
    }
    Ok((out, shown))
}

/// Completions for an `@` prefix typed so far (with or without the `@`): the entries of
/// the prefix's directory whose names start with the rest (case-insensitively), with
/// `/` after directories and spaces escaped as `\ `. Hidden entries only when the rest
/// starts with `.`; at most 200, sorted.
pub async fn complete_at_path(prefix: &str, sandbox: &dyn Sandbox) -> Vec<String> {
    let prefix = prefix
        .strip_prefix('@')
        .unwrap_or(prefix)
        .replace("\\ ", " ");
    let (dir_part, name_part) = match prefix.rfind('/') {
        Some(i) => (&prefix[..=i], &prefix[i + 1..]),
        None => ("", prefix.as_str()),
    };
    let dir = if dir_part.is_empty() {
        ".".to_string()
    } else {
        match normalize_in_root(&sandbox.agent_root(), dir_part) {
            Ok(d) => d,
            Err(_) => return Vec::new(),
        }
    };
    let Ok(entries) = sandbox.list_dir(&dir).await else {
        return Vec::new();
    };
    let wanted = name_part.to_lowercase();
    let mut out: Vec<String> = entries
        .into_iter()
        .filter(|e| e.name != ".git")
        .filter(|e| !e.name.starts_with('.') || wanted.starts_with('.'))
        .filter(|e| e.name.to_lowercase().starts_with(&wanted))
        .map(|e| {
            let mut s = format!("{dir_part}{}", e.name).replace(' ', "\\ ");
            if e.is_dir {
                s.push('/');
            }
            s
        })
        .collect();
    out.sort();
    out.truncate(200);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_rules() {
        let (text, refs) = find_references("look at @src/main.rs, and mail foo@bar.com \\@not");
        assert_eq!(refs, ["src/main.rs"]);
        assert_eq!(text, "look at @src/main.rs, and mail foo@bar.com @not");
        let (_, refs) = find_references("@a.txt (@b.txt) @ @@x @my\\ file.md. @src/**/*.{rs,toml}");
        assert_eq!(refs, ["a.txt", "my file.md", "src/**/*.{rs,toml}"]);
        let (_, refs) = find_references("see @. and @src/.");
        assert_eq!(refs, [".", "src/."]);
    }
}
