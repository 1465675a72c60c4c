//! Exclude globs and relative-path hygiene.

use std::path::{Component, Path};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::HistoryError;

/// The `[isolation] exclude` globs. A pattern without `/` matches a file or directory
/// name at any depth (`node_modules`, `*.log`); a pattern with `/` matches the path
/// from the project root (`build/cache`, `docs/*.pdf`). A trailing `/` is ignored and
/// a leading `/` only anchors. This is the gitignore reading of the same lines, which
/// is why they are also written to the session's `info/exclude`.
pub(crate) struct Excludes {
    names: GlobSet,
    paths: GlobSet,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> Result<Self, HistoryError> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for raw in patterns {
            let p = raw.trim().trim_end_matches('/');
            if p.is_empty() || p.starts_with('#') {
                continue;
            }
            let anchored = p.starts_with('/');
            let p = p.trim_start_matches('/');
            let glob = GlobBuilder::new(p)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| HistoryError::BadExclude {
                    pattern: raw.clone(),
                    reason: e.kind().to_string(),
                })?;
            if anchored || p.contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build().map_err(|e| HistoryError::BadExclude {
                pattern: patterns.join(", "),
                reason: e.to_string(),
            })
        };
        Ok(Excludes {
            names: build(names)?,
            paths: build(paths)?,
        })
    }

    /// Whether the entry at `rel` (relative to the project) is excluded.
    pub fn is_excluded(&self, rel: &Path) -> bool {
        if let Some(name) = rel.file_name().filter(|_| !self.names.is_empty()) {
            if self.names.is_match(Path::new(name)) {
                return true;
            }
        }
        !self.paths.is_empty() && self.paths.is_match(rel)
    }
}

/// The text of `info/exclude` for these globs (gitignore syntax).
pub(crate) fn exclude_file_text(patterns: &[String]) -> String {
    let mut s = String::from("# Safe Coder: [isolation] exclude\n");
    for p in patterns {
        let p = p.trim();
        if !p.is_empty() {
            s.push_str(p);
            s.push('\n');
        }
    }
    s
}

/// Whether a file name would be read as `.git` by git or by some host file system:
/// `.git` in any case, with trailing dots or spaces or an NTFS stream suffix (`.git.`,
/// `.git ::$DATA`), its NTFS short name (`git~1`), or with the code points HFS+ ignores
/// (`.g\u{200c}it`). Such a name is never stored nor synced: on a case-insensitive or
/// Windows-mounted project it would write into the user's own repository.
pub(crate) fn is_git_dir_name(name: &str) -> bool {
    if name.is_ascii() {
        // The same rule without allocating (the HFS+ code points are not ASCII): it
        // runs for every component of every file at session start.
        let b = name.as_bytes();
        if b.eq_ignore_ascii_case(b"git~1") {
            return true;
        }
        if b.len() < 4 || !b[..4].eq_ignore_ascii_case(b".git") {
            return false;
        }
        let rest = b[4..].split(|&c| c == b':').next().unwrap_or_default();
        return rest.iter().all(|&c| c == b'.' || c == b' ');
    }
    folded_is_git_dir_name(name)
}

/// [`is_git_dir_name`] for any name: case and the code points HFS+ ignores folded.
fn folded_is_git_dir_name(name: &str) -> bool {
    const HFS_IGNORED: &[char] = &[
        '\u{200c}', '\u{200d}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}',
        '\u{202d}', '\u{202e}', '\u{206a}', '\u{206b}', '\u{206c}', '\u{206d}', '\u{206e}',
        '\u{206f}', '\u{feff}',
    ];
    let folded: String = name
        .chars()
        .filter(|c| !HFS_IGNORED.contains(c))
        .collect::<String>()
        .to_ascii_lowercase();
    if folded == "git~1" {
        return true;
    }
    let Some(rest) = folded.strip_prefix(".git") else {
        return false;
    };
    let rest = rest.split(':').next().unwrap_or_default();
    rest.chars().all(|c| c == '.' || c == ' ')
}

/// Why git (or the review) cannot hold a file of this name, if it cannot.
pub(crate) fn unstorable_name(name: &[u8]) -> Option<&'static str> {
    match std::str::from_utf8(name) {
        Err(_) => Some("its name is not valid UTF-8, which the review and sync cannot show"),
        Ok(s) if is_git_dir_name(s) => {
            Some("its name is read as `.git` by git or by some file systems, so it is never stored or synced")
        }
        Ok(_) => None,
    }
}

/// A safe relative path (`/`-separated, no `..`, no `.git`, not absolute), or `None`.
pub(crate) fn clean_rel(p: &str) -> Option<String> {
    let path = Path::new(p);
    let mut parts: Vec<&str> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => {
                let s = s.to_str()?;
                if is_git_dir_name(s) {
                    return None;
                }
                parts.push(s);
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    }
}

/// Like [`clean_rel`], also accepting an absolute path inside `root`.
pub(crate) fn rel_to_root(root: &Path, p: &str) -> Option<String> {
    let path = Path::new(p);
    if path.is_absolute() {
        let rest = path.strip_prefix(root).ok()?;
        clean_rel(rest.to_str()?)
    } else {
        clean_rel(p)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn excludes_match_names_and_paths() {
        let ex = Excludes::new(&[
            "node_modules".into(),
            "*.log".into(),
            "build/cache/".into(),
            "/top".into(),
        ])
        .unwrap();
        assert!(ex.is_excluded(Path::new("a/node_modules")));
        assert!(ex.is_excluded(Path::new("x.log")));
        assert!(ex.is_excluded(Path::new("deep/er/x.log")));
        assert!(ex.is_excluded(Path::new("build/cache")));
        assert!(!ex.is_excluded(Path::new("other/build/cache")));
        assert!(ex.is_excluded(Path::new("top")));
        assert!(!ex.is_excluded(Path::new("src/main.rs")));
    }

    #[test]
    fn clean_rel_refuses_escapes() {
        assert_eq!(clean_rel("./a/b").as_deref(), Some("a/b"));
        assert_eq!(clean_rel("a/../b"), None);
        assert_eq!(clean_rel("/etc/passwd"), None);
        assert_eq!(clean_rel(".git/config"), None);
        assert_eq!(clean_rel("sub/.git/HEAD"), None);
        assert_eq!(clean_rel(""), None);
        assert_eq!(
            rel_to_root(Path::new("/w"), "/w/x/y").as_deref(),
            Some("x/y")
        );
        assert_eq!(rel_to_root(Path::new("/w"), "/other/y"), None);
        assert_eq!(clean_rel("a/.GIT./hooks"), None);
    }

    #[test]
    fn git_dir_names_in_every_spelling() {
        for n in [
            ".git",
            ".GIT",
            ".Git",
            ".git.",
            ".git ",
            ".git. .",
            "git~1",
            "GIT~1",
            ".git::$INDEX_ALLOCATION",
            ".g\u{200c}it",
            "\u{feff}.git",
        ] {
            assert!(is_git_dir_name(n), "{n:?}");
        }
        for n in [
            ".gitignore",
            ".github",
            "git",
            ".git~1",
            "a.git",
            ".gitx",
            "x",
        ] {
            assert!(!is_git_dir_name(n), "{n:?}");
        }
        assert!(unstorable_name(b"bad\xff").is_some());
        assert!(unstorable_name("ok é".as_bytes()).is_none());
    }

    /// The allocation-free rule for ASCII names says what the folding one says, for
    /// every name of up to four characters over an alphabet of the characters that
    /// matter, and for longer ones around `.git`.
    #[test]
    fn ascii_git_dir_names_match_the_folded_rule() {
        let alphabet = [
            ".", "g", "G", "i", "I", "t", "T", "~", "1", " ", ":", "x", "$",
        ];
        let mut names: Vec<String> = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = names
                .iter()
                .flat_map(|n| alphabet.iter().map(move |c| format!("{n}{c}")))
                .collect();
            names.extend(longer);
        }
        for stem in [".git", ".GiT", "git~1", "GIT~1"] {
            for tail in [
                "", ".", " ", ". .", ":", "::$DATA", "x", ".x", " x", "~1", ":x y",
            ] {
                names.push(format!("{stem}{tail}"));
                names.push(format!("x{stem}{tail}"));
            }
        }
        let mut matched = 0;
        for n in &names {
            assert_eq!(is_git_dir_name(n), folded_is_git_dir_name(n), "{n:?}");
            matched += usize::from(is_git_dir_name(n));
        }
        assert!(matched > 20, "{matched}");
    }
}
