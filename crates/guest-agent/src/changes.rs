//! "Which files changed since mark N": a walk of the workspace with `lstat`, compared
//! with the walk recorded at the mark (see docs/vm-protocol.md, "Changed files").
//!
//! A walk rather than inotify/fanotify: it needs no watch per directory (inotify's limit
//! and its overflow on big trees), sees changes made while nobody listened, and costs
//! little (`cargo bench -p safe-coder-guest-agent`: docs/vm-protocol.md has the figures).
//! Files modified within the same clock tick as a walk are "racy" (git's term): their
//! metadata may not change on a second write of the same size, so the mark also keeps a
//! hash of their contents and compares that.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::hash::Hasher;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use safe_coder_vm_protocol::{AgentError, Change, ChangeKind, ErrorKind, FileKind};

use crate::files::{kind_of, stat_of};

/// How many marks are kept; older ones are answered with `unknown_mark`.
pub const KEPT_MARKS: usize = 8;

/// Files whose mtime is this close to (or after) the walk's start are racy. Linux file
/// times come from a coarse clock (one tick: 4 ms at HZ=250, the Debian kernel's).
const RACY_NS: i128 = 20_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    kind: FileKind,
    size: u64,
    mode: u32,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    target: Option<String>,
    /// Contents hash, for racy files only.
    hash: Option<u64>,
}

type Snapshot = BTreeMap<String, Entry>;

/// The marks of one agent.
#[derive(Default)]
pub struct Tracker {
    inner: Mutex<Marks>,
}

#[derive(Default)]
struct Marks {
    next: u64,
    kept: VecDeque<(u64, Arc<Snapshot>)>,
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn hash_file(path: &Path) -> Option<u64> {
    let mut f = fs::File::open(path).ok()?;
    let mut h = DefaultHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Some(h.finish()),
            Ok(n) => h.write(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Walks `root`: every file and symlink, by `/`-separated relative path. Names that are
/// not UTF-8 are skipped (the protocol's paths are strings).
fn walk(root: &Path) -> io::Result<Snapshot> {
    let start = now_ns();
    let mut out = Snapshot::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            // A directory removed during the walk, or unreadable: nothing to report.
            Err(e) if dir != root => {
                let _ = e;
                continue;
            }
            Err(e) => return Err(e),
        };
        for entry in rd.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let path = entry.path();
            // fstatat on the open directory: no path lookup from the root per file.
            let Ok(md) = entry.metadata() else {
                continue;
            };
            let kind = kind_of(md.file_type());
            if kind == FileKind::Dir {
                stack.push((path, rel));
                continue;
            }
            let mtime_ns = i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec());
            let ctime_ns = i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec());
            let racy = kind == FileKind::File && mtime_ns.max(ctime_ns) >= start - RACY_NS;
            let stat = stat_of(&path, &md);
            out.insert(
                rel,
                Entry {
                    kind,
                    size: md.len(),
                    mode: stat.mode,
                    mtime_ns,
                    ctime_ns,
                    ino: md.ino(),
                    target: stat.target,
                    hash: if racy { hash_file(&path) } else { None },
                },
            );
        }
    }
    Ok(out)
}

/// What changed from `old` to `new`, sorted by path.
fn diff(root: &Path, old: &Snapshot, new: &Snapshot) -> Vec<Change> {
    let mut changes = Vec::new();
    for (path, now) in new {
        let kind = match old.get(path) {
            None => Some(ChangeKind::Written),
            Some(before) => {
                if before.kind != now.kind
                    || before.size != now.size
                    || before.mtime_ns != now.mtime_ns
                    || before.ino != now.ino
                    || before.target != now.target
                {
                    Some(ChangeKind::Written)
                } else if before.mode != now.mode {
                    Some(ChangeKind::ModeChanged)
                } else if before.ctime_ns != now.ctime_ns {
                    // Contents rewritten with the mtime put back (`cp -p`, `touch -r`):
                    // report it; the host compares contents anyway.
                    Some(ChangeKind::Written)
                } else if let Some(h) = before.hash {
                    let current = now.hash.or_else(|| hash_file(&root.join(path)));
                    (current != Some(h)).then_some(ChangeKind::Written)
                } else {
                    None
                }
            }
        };
        if let Some(kind) = kind {
            let p = root.join(path);
            let stat = fs::symlink_metadata(&p).ok().map(|md| stat_of(&p, &md));
            match stat {
                Some(stat) => changes.push(Change {
                    path: path.clone(),
                    kind,
                    stat: Some(stat),
                }),
                // Gone since the walk: it is deleted if it existed at the mark.
                None if old.contains_key(path) => changes.push(Change {
                    path: path.clone(),
                    kind: ChangeKind::Deleted,
                    stat: None,
                }),
                None => {}
            }
        }
    }
    for path in old.keys() {
        if !new.contains_key(path) {
            changes.push(Change {
                path: path.clone(),
                kind: ChangeKind::Deleted,
                stat: None,
            });
        }
    }
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    changes
}

fn walk_error(e: &io::Error) -> AgentError {
    AgentError::new(ErrorKind::Io, format!("cannot walk the workspace: {e}"))
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Marks> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn record(marks: &mut Marks, snapshot: Snapshot) -> u64 {
        marks.next += 1;
        let id = marks.next;
        marks.kept.push_back((id, Arc::new(snapshot)));
        while marks.kept.len() > KEPT_MARKS {
            marks.kept.pop_front();
        }
        id
    }

    /// Records the workspace now; returns the mark.
    pub fn set_mark(&self, root: &Path) -> Result<u64, AgentError> {
        let snapshot = walk(root).map_err(|e| walk_error(&e))?;
        Ok(Self::record(&mut self.lock(), snapshot))
    }

    /// The changes since `mark`, and a new mark taken from the same walk if asked.
    pub fn changes_since(
        &self,
        root: &Path,
        mark: u64,
        set_mark: bool,
    ) -> Result<(Vec<Change>, Option<u64>), AgentError> {
        let old = {
            let marks = self.lock();
            match marks.kept.iter().find(|(id, _)| *id == mark) {
                Some((_, s)) => Arc::clone(s),
                None => {
                    return Err(AgentError::new(
                        ErrorKind::UnknownMark,
                        format!("mark {mark} is unknown (the agent keeps the last {KEPT_MARKS}); set a new mark"),
                    ))
                }
            }
        };
        let new = walk(root).map_err(|e| walk_error(&e))?;
        let changes = diff(root, &old, &new);
        let new_mark = set_mark.then(|| Self::record(&mut self.lock(), new));
        Ok((changes, new_mark))
    }
}

/// For the bench: one walk of `root`, returning how many entries it saw.
pub fn walk_count(root: &Path) -> io::Result<usize> {
    walk(root).map(|s| s.len())
}
