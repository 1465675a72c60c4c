//! Memory files: the user's standing instructions, put into the system prompt.
//!
//! `SAFECODER.md` and `AGENTS.md` (as other agents write it) are loaded from the user
//! config dir, then from each directory from the repository root down to the project
//! root: outermost first, so the more specific file comes later and wins. The repository
//! root is the nearest ancestor of the project (itself included) holding `.git`; without
//! one, only the project directory is read. They come from the host, not the sandbox:
//! they are the user's instructions, not the agent's files. Only those few paths are
//! checked, so the cost does not grow with the size of the project.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The file names looked for in each directory, in this order.
pub const MEMORY_FILE_NAMES: [&str; 2] = ["SAFECODER.md", "AGENTS.md"];

/// Larger memory files are cut to this size with a note (they go into every request).
const MAX_MEMORY_FILE_BYTES: usize = 128 * 1024;

/// The loaded memory files, in prompt order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub files: Vec<(PathBuf, String)>,
    /// Files that exist but could not be read, one sentence each.
    pub warnings: Vec<String>,
}

impl Memory {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The system prompt's memory section: each file under a header naming its path.
    /// Empty when there are no memory files.
    pub fn system_prompt_section(&self) -> String {
        if self.files.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "# Memory\n\nThe user's standing instructions from memory files, most general first; \
             when they disagree, the later (more specific) file wins.\n",
        );
        for (path, content) in &self.files {
            out.push_str(&format!("\n## From {}\n\n", path.display()));
            out.push_str(content.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Why `/memory add` failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("there is nothing to remember: give the text after /memory add")]
    Empty,
    #[error("could not write the memory file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `$XDG_CONFIG_HOME/safe-coder`, else `~/.config/safe-coder`.
pub fn user_config_dir() -> Option<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        let xdg = PathBuf::from(xdg);
        if xdg.is_absolute() {
            return Some(xdg.join("safe-coder"));
        }
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".config").join("safe-coder"))
}

/// Loads the memory files for `project` (see the module docs for the order).
pub fn load_memory(config_dir: &Path, project: &Path) -> Memory {
    let project = std::path::absolute(project).unwrap_or_else(|_| project.to_path_buf());
    let mut dirs: Vec<PathBuf> = vec![config_dir.to_path_buf()];
    let repo_root = project.ancestors().find(|dir| dir.join(".git").exists());
    match repo_root {
        Some(root) => {
            let mut chain: Vec<PathBuf> = project
                .ancestors()
                .take_while(|dir| *dir != root)
                .map(Path::to_path_buf)
                .collect();
            chain.push(root.to_path_buf());
            chain.reverse();
            dirs.extend(chain);
        }
        None => dirs.push(project.clone()),
    }

    let mut memory = Memory::default();
    let mut seen: Vec<PathBuf> = Vec::new();
    for dir in &dirs {
        for name in MEMORY_FILE_NAMES {
            let path = dir.join(name);
            let data = match fs::read(&path) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    memory
                        .warnings
                        .push(format!("could not read {}: {e}", path.display()));
                    continue;
                }
            };
            // The same file twice (AGENTS.md linked to SAFECODER.md, or the config dir
            // inside the project chain) is loaded once.
            let real = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if seen.contains(&real) {
                continue;
            }
            seen.push(real);
            let mut text = String::from_utf8_lossy(&data).into_owned();
            if text.len() > MAX_MEMORY_FILE_BYTES {
                let mut cut = MAX_MEMORY_FILE_BYTES;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push_str(&format!(
                    "\n[truncated: the file is over {} KiB]",
                    MAX_MEMORY_FILE_BYTES / 1024
                ));
                memory.warnings.push(format!(
                    "{} is over {} KiB; only the start is used",
                    path.display(),
                    MAX_MEMORY_FILE_BYTES / 1024
                ));
            }
            if text.trim().is_empty() {
                continue;
            }
            memory.files.push((path, text));
        }
    }
    memory
}

/// `/memory add TEXT`: appends `- TEXT` to `<project>/SAFECODER.md` (created if
/// missing) and returns its path. Lines after the first are indented under the bullet.
pub fn add_to_project_memory(project: &Path, text: &str) -> Result<PathBuf, MemoryError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(MemoryError::Empty);
    }
    let path = project.join(MEMORY_FILE_NAMES[0]);
    let err = |source| MemoryError::Write {
        path: path.clone(),
        source,
    };
    let existing = match fs::read(&path) {
        Ok(d) => Some(d),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(err(e)),
    };
    let mut entry = String::new();
    match &existing {
        None => entry.push_str("# Safe Coder memory\n\n"),
        Some(d) if !d.is_empty() && !d.ends_with(b"\n") => entry.push('\n'),
        Some(_) => {}
    }
    let mut lines = text.lines();
    entry.push_str("- ");
    entry.push_str(lines.next().unwrap_or_default().trim_end());
    entry.push('\n');
    for line in lines {
        if !line.trim().is_empty() {
            entry.push_str("  ");
            entry.push_str(line.trim_end());
        }
        entry.push('\n');
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(err)?;
    file.write_all(entry.as_bytes()).map_err(err)?;
    Ok(path)
}
