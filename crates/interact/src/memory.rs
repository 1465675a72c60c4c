//! Memory files: the user's standing instructions, put into the system prompt.
//!
//! `SAFECODER.md` and `AGENTS.md` (as other agents write it) are loaded from the user
//! config dir, then from each directory from the repository root down to the project
//! root: outermost first, so the more specific file comes later and wins. The repository
//! root is the nearest ancestor of the project (itself included) holding `.git`; without
//! one, only the project directory is read. They come from the host, not the sandbox:
//! they are the user's instructions, not the agent's files. Only those few paths are
//! checked, so the cost does not grow with the size of the project.
//!
//! A project's memory files may have been written by an agent and accepted at a sync,
//! or shipped in a cloned repository, so they are read defensively (see
//! [`read_guarded`]): a symlink that leaves the repository is refused, only regular
//! files are read (never a FIFO or `/dev/zero`), and never more than the cap.

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
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

/// What [`read_guarded`] found at a path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Guarded {
    /// Nothing there.
    Missing,
    /// The file's first bytes (at most the cap), and whether there was more.
    Read { data: Vec<u8>, truncated: bool },
}

/// Reads at most `cap` bytes of the regular file at `path`, for text that goes to the
/// model. A symlink is resolved, and refused when `confine` is given and the target
/// lies outside it (a link to `~/.ssh/id_ed25519` in a cloned repository must not
/// reach the model); the file is then opened without following links and without
/// blocking, and anything but a regular file (a FIFO, `/dev/zero`, a directory) is
/// refused. `Err` is the warning to show, one sentence naming the path.
pub(crate) fn read_guarded(
    path: &Path,
    confine: Option<&Path>,
    cap: u64,
) -> Result<Guarded, String> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Guarded::Missing),
        Err(e) => return Err(format!("could not read {}: {e}", path.display())),
    };
    let mut open_path = path.to_path_buf();
    if meta.file_type().is_symlink() {
        let target = fs::canonicalize(path).map_err(|e| {
            format!(
                "{} is a symlink that cannot be followed ({e}); it is not read",
                path.display()
            )
        })?;
        if let Some(root) = confine {
            let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
            if !target.starts_with(&root) {
                return Err(format!(
                    "{} is a symlink to {}, outside {}; it is not read (copy the file in instead)",
                    path.display(),
                    target.display(),
                    root.display()
                ));
            }
        }
        open_path = target;
    }
    let refuse_kind = || format!("{} is not a regular file; it is not read", path.display());
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&open_path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                refuse_kind()
            } else {
                format!("could not read {}: {e}", path.display())
            }
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("could not read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(refuse_kind());
    }
    let mut data = Vec::with_capacity(meta.len().min(cap) as usize);
    file.take(cap + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("could not read {}: {e}", path.display()))?;
    let truncated = data.len() as u64 > cap;
    data.truncate(cap as usize);
    Ok(Guarded::Read { data, truncated })
}

/// Loads the memory files for `project` (see the module docs for the order). Files in
/// the user's config dir may link anywhere (the user put them there); files of the
/// project may link only inside the repository (or the project, without one).
pub fn load_memory(config_dir: &Path, project: &Path) -> Memory {
    let project = std::path::absolute(project).unwrap_or_else(|_| project.to_path_buf());
    let mut dirs: Vec<PathBuf> = vec![config_dir.to_path_buf()];
    let repo_root = project.ancestors().find(|dir| dir.join(".git").exists());
    let confine_to = repo_root.unwrap_or(&project).to_path_buf();
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
    for (i, dir) in dirs.iter().enumerate() {
        let confine = (i > 0).then_some(confine_to.as_path());
        for name in MEMORY_FILE_NAMES {
            let path = dir.join(name);
            let (data, truncated) = match read_guarded(&path, confine, MAX_MEMORY_FILE_BYTES as u64)
            {
                Ok(Guarded::Missing) => continue,
                Ok(Guarded::Read { data, truncated }) => (data, truncated),
                Err(warning) => {
                    memory.warnings.push(warning);
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
            if truncated {
                // The cut may have split a character: drop the replacement it became.
                while text.ends_with('\u{fffd}') {
                    text.pop();
                }
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
