//! "Which files changed since mark N" (docs/vm-protocol.md, "Changed files").
//!
//! The agent keeps a stat record of the workspace (every file and symlink: kind, size,
//! mode, mtime, ctime, inode) and a mark is a copy of it. The record is kept current
//! by inotify: every directory is watched, and an event only says *which* path to look
//! at again (`lstat` decides what it is now), so a refresh costs what changed, not the
//! size of the tree. A new directory is watched before it is read, so nothing created
//! in it is missed. When inotify cannot serve (no watches left, queue overflow) the
//! record is rebuilt by a full walk, which is also what every refresh does when
//! inotify is unavailable: slower, never wrong.
//!
//! Files modified within the same clock tick as a refresh are "racy" (git's term): a
//! second write of the same size may leave their metadata unchanged, so the record also
//! keeps a hash of their contents and compares that.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::CString;
use std::fs;
use std::hash::Hasher;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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

fn join_rel(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn abs(root: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

/// The record of one file or symlink; `None` for a directory.
fn entry_of(path: &Path, md: &fs::Metadata, racy_from: i128) -> Option<Entry> {
    let kind = kind_of(md.file_type());
    if kind == FileKind::Dir {
        return None;
    }
    let mtime_ns = i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec());
    let ctime_ns = i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec());
    let racy = kind == FileKind::File && mtime_ns.max(ctime_ns) >= racy_from - RACY_NS;
    let stat = stat_of(path, md);
    Some(Entry {
        kind,
        size: md.len(),
        mode: stat.mode,
        mtime_ns,
        ctime_ns,
        ino: md.ino(),
        target: stat.target,
        hash: if racy { hash_file(path) } else { None },
    })
}

/// Walks the subtree `rel` of `root` into `out`: every file and symlink, by
/// `/`-separated relative path (names that are not UTF-8 are skipped: the protocol's
/// paths are strings). `on_dir` sees each directory before it is read (to watch it
/// first); its error stops the walk.
fn walk_into(
    root: &Path,
    rel: &str,
    out: &mut Snapshot,
    on_dir: &mut dyn FnMut(&Path, &str) -> io::Result<()>,
) -> io::Result<()> {
    let start = now_ns();
    let mut stack = vec![(abs(root, rel), rel.to_string())];
    while let Some((dir, prefix)) = stack.pop() {
        on_dir(&dir, &prefix)?;
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            // A directory removed during the walk, or unreadable: nothing to report.
            Err(_) if !prefix.is_empty() => continue,
            Err(e) => return Err(e),
        };
        for entry in rd.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let rel = join_rel(&prefix, &name);
            let path = entry.path();
            // fstatat on the open directory: no path lookup from the root per file.
            let Ok(md) = entry.metadata() else {
                continue;
            };
            match entry_of(&path, &md, start) {
                Some(e) => {
                    out.insert(rel, e);
                }
                None => stack.push((path, rel)),
            }
        }
    }
    Ok(())
}

/// How `path` changed from `before` to `now` (both from records), if it did.
fn compare(
    root: &Path,
    path: &str,
    before: Option<&Entry>,
    now: Option<&Entry>,
) -> Option<ChangeKind> {
    match (before, now) {
        (None, None) => None,
        (Some(_), None) => Some(ChangeKind::Deleted),
        (None, Some(_)) => Some(ChangeKind::Written),
        (Some(before), Some(now)) => {
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
    }
}

/// The changes between two records over `paths` (every path of both when `None`),
/// sorted by path, each with its stat now.
fn diff(
    root: &Path,
    old: &Snapshot,
    new: &Snapshot,
    paths: Option<&BTreeSet<String>>,
) -> Vec<Change> {
    let all: BTreeSet<&str>;
    let keys: Box<dyn Iterator<Item = &str> + '_> = match paths {
        Some(p) => Box::new(p.iter().map(String::as_str)),
        None => {
            all = old.keys().chain(new.keys()).map(String::as_str).collect();
            Box::new(all.iter().copied())
        }
    };
    let mut changes = Vec::new();
    for path in keys {
        let Some(kind) = compare(root, path, old.get(path), new.get(path)) else {
            continue;
        };
        let stat = if kind == ChangeKind::Deleted {
            None
        } else {
            let p = root.join(path);
            fs::symlink_metadata(&p).ok().map(|md| stat_of(&p, &md))
        };
        match (kind, stat) {
            (ChangeKind::Deleted, _) => changes.push(Change {
                path: path.to_string(),
                kind,
                stat: None,
            }),
            (_, Some(stat)) => changes.push(Change {
                path: path.to_string(),
                kind,
                stat: Some(stat),
            }),
            // Gone since the refresh: deleted if it existed at the mark.
            (_, None) if old.contains_key(path) => changes.push(Change {
                path: path.to_string(),
                kind: ChangeKind::Deleted,
                stat: None,
            }),
            (_, None) => {}
        }
    }
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    changes
}

/// inotify watches on every directory of the workspace.
struct Watcher {
    fd: OwnedFd,
    /// Watch descriptor -> the directory's relative path.
    dirs: HashMap<i32, String>,
}

const WATCH_MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ONLYDIR
    | libc::IN_DONT_FOLLOW
    | libc::IN_EXCL_UNLINK;

/// An event whose queue overflowed: the record must be rebuilt.
struct Overflow;

impl Watcher {
    fn new() -> io::Result<Watcher> {
        // SAFETY: inotify_init1 with flags only.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Watcher {
            // SAFETY: a new fd owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            dirs: HashMap::new(),
        })
    }

    fn add(&mut self, dir: &Path, rel: &str) -> io::Result<()> {
        let c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
        // SAFETY: a valid fd and C string.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), WATCH_MASK) };
        if wd < 0 {
            let e = io::Error::last_os_error();
            // Gone (or replaced by a file) before we got to it: nothing to watch.
            if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) {
                return Ok(());
            }
            return Err(e);
        }
        self.dirs.insert(wd, rel.to_string());
        Ok(())
    }

    /// Stops watching `rel` and everything under it (it was removed or moved away).
    fn forget(&mut self, rel: &str) {
        let prefix = format!("{rel}/");
        let gone: Vec<i32> = self
            .dirs
            .iter()
            .filter(|(_, d)| d.as_str() == rel || d.starts_with(&prefix))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            self.dirs.remove(&wd);
            // SAFETY: removing a watch of ours (an already removed one fails harmlessly).
            unsafe {
                libc::inotify_rm_watch(self.fd.as_raw_fd(), wd);
            }
        }
    }

    /// Every queued event as (directory, name, mask).
    fn drain(&mut self) -> Result<Vec<(String, Option<String>, u32)>, Overflow> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: read into a buffer of the given length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                // EAGAIN: the queue is empty (any other error: nothing more to read).
                return Ok(out);
            }
            let mut off = 0usize;
            let n = n as usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while off + header <= n {
                let word =
                    |o: usize| u32::from_ne_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
                let wd = word(off) as i32;
                let mask = word(off + 4);
                let len = word(off + 12) as usize;
                let name_bytes = &buf[off + header..(off + header + len).min(n)];
                let name = name_bytes.split(|&b| b == 0).next().unwrap_or(&[]);
                off += header + len;
                if mask & libc::IN_Q_OVERFLOW != 0 {
                    return Err(Overflow);
                }
                if mask & libc::IN_IGNORED != 0 {
                    self.dirs.remove(&wd);
                    continue;
                }
                let Some(dir) = self.dirs.get(&wd) else {
                    continue;
                };
                let name = if name.is_empty() {
                    None
                } else {
                    match std::str::from_utf8(name) {
                        Ok(s) => Some(s.to_string()),
                        Err(_) => continue,
                    }
                };
                out.push((dir.clone(), name, mask));
            }
        }
    }
}

/// The current record of the workspace, and how it is kept current.
struct Live {
    root: PathBuf,
    snapshot: Snapshot,
    /// `None`: inotify is unavailable here; every refresh walks.
    watcher: Option<Watcher>,
}

impl Live {
    /// A full walk, watching every directory when inotify can.
    fn start(root: &Path, use_inotify: bool) -> io::Result<Live> {
        if use_inotify {
            if let Ok(mut w) = Watcher::new() {
                let mut snapshot = Snapshot::new();
                let watched = walk_into(root, "", &mut snapshot, &mut |dir, rel| w.add(dir, rel));
                if watched.is_ok() {
                    return Ok(Live {
                        root: root.to_path_buf(),
                        snapshot,
                        watcher: Some(w),
                    });
                }
            }
        }
        let mut snapshot = Snapshot::new();
        walk_into(root, "", &mut snapshot, &mut |_, _| Ok(()))?;
        Ok(Live {
            root: root.to_path_buf(),
            snapshot,
            watcher: None,
        })
    }

    /// Brings the record up to date. Returns the paths whose record changed, or `None`
    /// when it had to be rebuilt whole (any path may have changed).
    fn refresh(&mut self) -> io::Result<Option<BTreeSet<String>>> {
        let Some(w) = self.watcher.as_mut() else {
            let mut snapshot = Snapshot::new();
            walk_into(&self.root, "", &mut snapshot, &mut |_, _| Ok(()))?;
            self.snapshot = snapshot;
            return Ok(None);
        };
        let start = now_ns();
        let Ok(events) = w.drain() else {
            *self = Live::start(&self.root, true)?;
            return Ok(None);
        };
        let (mut dirty, mut rescan, mut gone) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for (dir, name, mask) in events {
            // Events about a watched directory itself are also reported by its parent.
            let Some(name) = name else { continue };
            let p = join_rel(&dir, &name);
            if mask & libc::IN_ISDIR != 0 {
                if mask & (libc::IN_DELETE | libc::IN_MOVED_FROM) != 0 {
                    gone.insert(p.clone());
                }
                if mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
                    rescan.insert(p);
                }
            } else {
                dirty.insert(p);
            }
        }
        let mut changed = BTreeSet::new();
        let remove_under = |snapshot: &mut Snapshot, changed: &mut BTreeSet<String>, rel: &str| {
            let prefix = format!("{rel}/");
            let keys: Vec<String> = snapshot
                .range(prefix.clone()..)
                .map(|(k, _)| k.clone())
                .take_while(|k| k.starts_with(&prefix))
                .collect();
            for k in keys {
                snapshot.remove(&k);
                changed.insert(k);
            }
        };
        for g in &gone {
            w.forget(g);
            remove_under(&mut self.snapshot, &mut changed, g);
        }
        for r in &rescan {
            remove_under(&mut self.snapshot, &mut changed, r);
            let mut found = Snapshot::new();
            let root = self.root.clone();
            if walk_into(&root, r, &mut found, &mut |dir, rel| w.add(dir, rel)).is_err() {
                // Out of watches: carry on without inotify.
                *self = Live::start(&root, false)?;
                return Ok(None);
            }
            for (k, e) in found {
                changed.insert(k.clone());
                self.snapshot.insert(k, e);
            }
        }
        // A path under a directory walked just now is already current.
        let rescanned = |d: &str| d.match_indices('/').any(|(i, _)| rescan.contains(&d[..i]));
        for d in dirty {
            if rescanned(&d) {
                continue;
            }
            let p = self.root.join(&d);
            match fs::symlink_metadata(&p) {
                Ok(md) => match entry_of(&p, &md, start) {
                    Some(e) => {
                        if self.snapshot.get(&d) != Some(&e) {
                            self.snapshot.insert(d.clone(), e);
                            changed.insert(d);
                        }
                    }
                    // Now a directory: its creation event brings its contents.
                    None => {
                        if self.snapshot.remove(&d).is_some() {
                            changed.insert(d);
                        }
                    }
                },
                Err(_) => {
                    if self.snapshot.remove(&d).is_some() {
                        changed.insert(d);
                    }
                }
            }
        }
        Ok(Some(changed))
    }
}

struct Kept {
    id: u64,
    snapshot: Arc<Snapshot>,
    /// Paths whose record changed since this mark; `None` after a rebuild (compare all).
    touched: Option<BTreeSet<String>>,
}

/// The marks of one agent.
#[derive(Default)]
pub struct Tracker {
    inner: Mutex<Marks>,
}

#[derive(Default)]
struct Marks {
    next: u64,
    kept: VecDeque<Kept>,
    live: Option<Live>,
    /// Set by [`Tracker::walking`].
    no_inotify: bool,
}

fn walk_error(e: &io::Error) -> AgentError {
    AgentError::new(ErrorKind::Io, format!("cannot walk the workspace: {e}"))
}

impl Marks {
    /// Brings the live record of `root` up to date and notes what changed in every
    /// kept mark.
    fn refresh(&mut self, root: &Path) -> Result<(), AgentError> {
        let changed = match self.live.as_mut().filter(|l| l.root == root) {
            Some(live) => live.refresh().map_err(|e| walk_error(&e))?,
            None => {
                self.live = Some(Live::start(root, !self.no_inotify).map_err(|e| walk_error(&e))?);
                None
            }
        };
        for k in &mut self.kept {
            match (&mut k.touched, &changed) {
                (Some(t), Some(c)) => t.extend(c.iter().cloned()),
                (t, _) => *t = None,
            }
        }
        Ok(())
    }

    fn record(&mut self) -> u64 {
        self.next += 1;
        let id = self.next;
        let snapshot = Arc::new(
            self.live
                .as_ref()
                .map(|l| l.snapshot.clone())
                .unwrap_or_default(),
        );
        self.kept.push_back(Kept {
            id,
            snapshot,
            touched: Some(BTreeSet::new()),
        });
        while self.kept.len() > KEPT_MARKS {
            self.kept.pop_front();
        }
        id
    }
}

impl Tracker {
    /// A tracker that walks the whole tree at every refresh (no inotify).
    pub fn walking() -> Tracker {
        Tracker {
            inner: Mutex::new(Marks {
                no_inotify: true,
                ..Marks::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Marks> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Records the workspace now; returns the mark.
    pub fn set_mark(&self, root: &Path) -> Result<u64, AgentError> {
        let mut marks = self.lock();
        marks.refresh(root)?;
        Ok(marks.record())
    }

    /// The changes since `mark`, and a new mark from the same refresh if asked.
    pub fn changes_since(
        &self,
        root: &Path,
        mark: u64,
        set_mark: bool,
    ) -> Result<(Vec<Change>, Option<u64>), AgentError> {
        let mut marks = self.lock();
        if !marks.kept.iter().any(|k| k.id == mark) {
            return Err(AgentError::new(
                ErrorKind::UnknownMark,
                format!("mark {mark} is unknown (the agent keeps the last {KEPT_MARKS}); set a new mark"),
            ));
        }
        marks.refresh(root)?;
        let changes = {
            let kept = marks.kept.iter().find(|k| k.id == mark);
            let live = marks.live.as_ref();
            match (kept, live) {
                (Some(k), Some(l)) => diff(root, &k.snapshot, &l.snapshot, k.touched.as_ref()),
                _ => Vec::new(),
            }
        };
        let new_mark = set_mark.then(|| marks.record());
        Ok((changes, new_mark))
    }

    /// Whether the live record is kept by inotify (for tests and the bench).
    pub fn uses_inotify(&self) -> bool {
        self.lock()
            .live
            .as_ref()
            .is_some_and(|l| l.watcher.is_some())
    }
}

/// For the bench: one walk of `root`, returning how many entries it saw.
pub fn walk_count(root: &Path) -> io::Result<usize> {
    let mut s = Snapshot::new();
    walk_into(root, "", &mut s, &mut |_, _| Ok(())).map(|()| s.len())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn kinds(changes: &[Change]) -> Vec<(String, ChangeKind)> {
        changes.iter().map(|c| (c.path.clone(), c.kind)).collect()
    }

    /// The same history seen by inotify and by walking gives the same answers.
    #[test]
    fn inotify_and_walking_agree_on_every_kind_of_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = fs::canonicalize(dir.path()).expect("root");
        let w = |rel: &str, data: &str| {
            let p = root.join(rel);
            fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
            fs::write(p, data).expect("write");
        };
        w("keep.txt", "k");
        w("edit.txt", "v1");
        w("old/a/b.txt", "b");
        w("old/c.txt", "c");
        w("moved/x.txt", "x");
        w("becomes-dir", "f");
        let live = Tracker::default();
        let walking = Tracker::walking();
        let m1 = (
            live.set_mark(&root).expect("mark"),
            walking.set_mark(&root).expect("mark"),
        );
        assert!(live.uses_inotify(), "inotify works on this machine");
        assert!(!walking.uses_inotify());

        // Same size, same tick as the mark.
        w("edit.txt", "v2");
        fs::remove_dir_all(root.join("old")).expect("rm -r");
        fs::rename(root.join("moved"), root.join("renamed")).expect("mv dir");
        w("renamed/y.txt", "y");
        w("new/deep/er/z.txt", "z");
        fs::remove_file(root.join("becomes-dir")).expect("rm");
        w("becomes-dir/inner.txt", "i");
        fs::set_permissions(root.join("keep.txt"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::os::unix::fs::symlink("keep.txt", root.join("link")).expect("symlink");

        let want = vec![
            ("becomes-dir".to_string(), ChangeKind::Deleted),
            ("becomes-dir/inner.txt".to_string(), ChangeKind::Written),
            ("edit.txt".to_string(), ChangeKind::Written),
            ("keep.txt".to_string(), ChangeKind::ModeChanged),
            ("link".to_string(), ChangeKind::Written),
            ("moved/x.txt".to_string(), ChangeKind::Deleted),
            ("new/deep/er/z.txt".to_string(), ChangeKind::Written),
            ("old/a/b.txt".to_string(), ChangeKind::Deleted),
            ("old/c.txt".to_string(), ChangeKind::Deleted),
            ("renamed/x.txt".to_string(), ChangeKind::Written),
            ("renamed/y.txt".to_string(), ChangeKind::Written),
        ];
        let (a, m2a) = live.changes_since(&root, m1.0, true).expect("changes");
        let (b, m2b) = walking.changes_since(&root, m1.1, true).expect("changes");
        assert_eq!(kinds(&a), want);
        assert_eq!(kinds(&b), want);

        // Changes inside a directory created after the last refresh are seen too, and
        // the first mark still answers for everything since it.
        w("new/deep/er/later.txt", "l");
        fs::remove_file(root.join("renamed/y.txt")).expect("rm");
        let (a2, _) = live
            .changes_since(&root, m2a.expect("mark"), false)
            .expect("changes");
        let (b2, _) = walking
            .changes_since(&root, m2b.expect("mark"), false)
            .expect("changes");
        let want2 = vec![
            ("new/deep/er/later.txt".to_string(), ChangeKind::Written),
            ("renamed/y.txt".to_string(), ChangeKind::Deleted),
        ];
        assert_eq!(kinds(&a2), want2);
        assert_eq!(kinds(&b2), want2);
        let (a3, _) = live.changes_since(&root, m1.0, false).expect("changes");
        let (b3, _) = walking.changes_since(&root, m1.1, false).expect("changes");
        assert_eq!(kinds(&a3), kinds(&b3));
        assert!(kinds(&a3).contains(&("new/deep/er/later.txt".to_string(), ChangeKind::Written)));
        assert!(
            !kinds(&a3).iter().any(|(p, _)| p == "renamed/y.txt"),
            "created and deleted since m1"
        );
    }

    #[test]
    fn an_unchanged_tree_reports_nothing_and_an_unknown_mark_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("f"), "x").expect("write");
        let t = Tracker::default();
        let m = t.set_mark(dir.path()).expect("mark");
        assert!(t
            .changes_since(dir.path(), m, false)
            .expect("changes")
            .0
            .is_empty());
        let err = t
            .changes_since(dir.path(), m + 100, false)
            .expect_err("unknown");
        assert_eq!(err.kind, ErrorKind::UnknownMark);
    }
}
