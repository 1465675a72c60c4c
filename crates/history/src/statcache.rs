//! The stat cache of a project without git: what the first snapshot of the previous
//! session learned (each file's stat data and blob id), kept in the data dir with the
//! packs holding those blobs, so the next session's first snapshot neither reads nor
//! hashes nor stores again the files that did not change.
//!
//! Layout: `<root>/<sha1 of the canonical project path>/` holds `cache` (the entries)
//! and `pack/` (the blob packs of earlier sessions). A session hard-links the packs the
//! cache names into its own `objects/pack` before trusting any entry, so the blobs it
//! reuses are its own from then on: nothing a later session does to the store (adding
//! packs, starting over) can take them away (the lock below guards only the read and the
//! linking). When a link fails (another file system, a pack removed meanwhile) the
//! cache is not used.
//!
//! The file is written atomically (temporary file, `fsync`, rename), mode 0600, starts
//! with a version line and ends with a SHA-1 of everything before it: a torn, foreign
//! or tampered-with file fails that check or the strict parser and is ignored, and the
//! session hashes everything as without a cache. An entry is trusted only when all its
//! stat data match and the file was modified before the cache was written (git's
//! "racily clean" rule: a change in the same timestamp tick would not show).
//!
//! Bounded: at most [`MAX_PACKS`] packs and [`MAX_STORE_BYTES`] bytes (or twice the
//! project's bytes, whichever is larger) in the store, and a cache file of at most
//! [`MAX_CACHE_BYTES`]; past a bound the store is dropped and the next session starts
//! over with one full hash.
//!
//! Concurrent sessions of one project: `<store>/lock` is `flock`ed, shared by a session
//! from reading the cache until its packs are linked, exclusive by a session writing
//! it (linking every pack its cache names, dropping the others, the rename). So no session links from a half-pruned store and no cache names a pack
//! another writer removed; the last writer's cache wins. Neither side waits long: a
//! reader that cannot lock within [`READ_PATIENCE`] uses no cache, a writer within
//! [`WRITE_PATIENCE`] writes none (either costs the next session a hash, nothing else).
//!
//! Stores do not outlive their use: each records its project's path (`project`) and
//! is marked at every session start that reads it (`used`'s mtime). At most once a day
//! ([`PRUNE_EVERY`], stamped by `<root>/.pruned`) a session start removes, on a
//! background thread, the stores whose project is gone or that no session used for
//! [`STORE_MAX_IDLE`] ([`prune`]); a store locked by a session is left alone. The
//! start itself pays one `stat` of the stamp.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha1::{Digest, Sha1};

use crate::index::Stat;
use crate::objects::{hex, Oid};

const MAGIC: &[u8] = b"safe-coder statcache 1\n";
/// Packs kept for one project before the store starts over.
pub(crate) const MAX_PACKS: usize = 16;
/// Store size allowed whatever the project's size.
pub(crate) const MAX_STORE_BYTES: u64 = 64 << 20;
/// Largest cache file read (about 2 million entries).
pub(crate) const MAX_CACHE_BYTES: u64 = 256 << 20;
/// A store no session read for this long is removed by [`prune`].
pub const STORE_MAX_IDLE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often a session start prunes the stores (in the background).
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How long a reader waits for a writer's exclusive lock before it uses no cache.
pub(crate) const READ_PATIENCE: Duration = Duration::from_millis(300);
/// How long a writer waits for readers and other writers before it writes no cache.
pub(crate) const WRITE_PATIENCE: Duration = Duration::from_secs(2);
const LOCK_FILE: &str = "lock";
const USED_FILE: &str = "used";
const PROJECT_FILE: &str = "project";
const PRUNE_STAMP: &str = ".pruned";

/// A `flock` on a store's lock file, released when dropped (the descriptor closes).
#[derive(Debug)]
pub(crate) struct StoreLock(#[allow(dead_code)] File);

impl StoreLock {
    /// Locks `dir`'s lock file (creating it), retrying for `patience`; `None` when the
    /// store does not exist or stays locked.
    pub(crate) fn take(dir: &Path, exclusive: bool, patience: Duration) -> Option<StoreLock> {
        use std::os::fd::AsRawFd;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))
            .ok()?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        let deadline = std::time::Instant::now() + patience;
        loop {
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
                return Some(StoreLock(f));
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK)
                || std::time::Instant::now() >= deadline
            {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// What the cache knows of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Known {
    size: u64,
    mtime: (u32, u32),
    ctime: (u32, u32),
    ino: u32,
    dev: u32,
    mode: u32,
    id: Oid,
}

/// One file of a finished snapshot, for [`save`].
pub(crate) struct Record<'a> {
    pub rel: &'a [u8],
    pub size: u64,
    pub stat: Stat,
    pub mode: u32,
    pub id: Oid,
}

/// A project's cache, loaded and with its packs linked into the session's store.
#[derive(Debug)]
pub(crate) struct StatCache {
    /// The project's store (`<root>/<key>`).
    dir: PathBuf,
    /// When the cache file was written (its mtime): entries modified at or after it
    /// are racy.
    written: (i64, i64),
    entries: HashMap<Vec<u8>, Known>,
    /// Pack names (`pack-<hex>`) the entries' blobs are in.
    packs: Vec<String>,
    /// Held (shared) from the read until the packs are linked.
    lock: Option<StoreLock>,
}

/// The store of `project` under `root`.
pub(crate) fn store_dir(root: &Path, project: &Path) -> PathBuf {
    let key: Oid = Sha1::digest(project.as_os_str().as_encoded_bytes()).into();
    root.join(hex(&key))
}

impl StatCache {
    /// Reads and checks the cache of `project` (nothing is trusted yet: see
    /// [`StatCache::link`]). `None` when there is no sound cache.
    pub(crate) fn read(root: &Path, project: &Path) -> Option<StatCache> {
        let dir = store_dir(root, project);
        if !dir.is_dir() {
            return None;
        }
        let lock = StoreLock::take(&dir, false, READ_PATIENCE)?;
        // Marks the store as used (for `prune`); never the cache file, whose mtime
        // decides which entries are racy.
        let _ = File::create(dir.join(USED_FILE));
        let mut f = File::open(dir.join("cache")).ok()?;
        let meta = f.metadata().ok()?;
        if !meta.is_file() || meta.len() > MAX_CACHE_BYTES || meta.uid() != current_uid() {
            return None;
        }
        let mut raw = Vec::with_capacity(meta.len() as usize);
        f.read_to_end(&mut raw).ok()?;
        let (packs, entries) = parse(&raw)?;
        Some(StatCache {
            dir,
            written: (meta.mtime(), meta.mtime_nsec()),
            entries,
            packs,
            lock: Some(lock),
        })
    }

    /// Hard-links the cache's packs into `git_dir`'s `objects/pack` and keeps only the
    /// entries whose blob they hold. `None` (hash everything) when a link fails.
    pub(crate) fn link(mut self, git_dir: &Path) -> Option<StatCache> {
        let dst = git_dir.join("objects/pack");
        for name in &self.packs {
            for ext in ["pack", "idx"] {
                let from = self.dir.join("pack").join(format!("{name}.{ext}"));
                let to = dst.join(format!("{name}.{ext}"));
                if fs::hard_link(&from, &to).is_err() {
                    // Undo the links made so far: a half-linked store is useless.
                    for n in &self.packs {
                        for ext in ["pack", "idx"] {
                            let _ = fs::remove_file(dst.join(format!("{n}.{ext}")));
                        }
                    }
                    return None;
                }
            }
        }
        // Only ids the linked packs really hold are used: a cache naming a blob the
        // store lacks would make a snapshot with a missing object.
        let mut held = HashSet::new();
        for name in &self.packs {
            if !pack_ids(&dst.join(format!("{name}.idx")), &mut held) {
                held.clear();
                break;
            }
        }
        self.entries.retain(|_, k| held.contains(&k.id));
        // The session owns its links now: writers may go on.
        self.lock = None;
        Some(self)
    }

    /// The git mode and blob id of `rel` when its stat data (from `lstat` of a regular
    /// file of `size` bytes) all match the cache and the entry is not racy.
    pub(crate) fn unchanged(
        &self,
        rel: &[u8],
        size: u64,
        st: &Stat,
        exec: bool,
    ) -> Option<(u32, Oid)> {
        let k = self.entries.get(rel)?;
        let mode = if exec { 0o100755 } else { 0o100644 };
        let matches = k.mode == mode
            && k.size == size
            && k.mtime == (st.mtime_s, st.mtime_ns)
            && k.ctime == (st.ctime_s, st.ctime_ns)
            && k.ino == st.ino
            && k.dev == st.dev;
        let racy = (k.mtime.0 as i64, k.mtime.1 as i64) >= self.written;
        (matches && !racy).then_some((k.mode, k.id))
    }

    /// The packs this cache's blobs are in (now also in the session's store).
    pub(crate) fn packs(&self) -> &[String] {
        &self.packs
    }
}

/// Adds the object ids listed in a version 2 pack index to `ids`; false when the file
/// is not one.
fn pack_ids(idx: &Path, ids: &mut HashSet<Oid>) -> bool {
    let Ok(raw) = fs::read(idx) else {
        return false;
    };
    if raw.len() < 8 + 1024 || &raw[..8] != b"\xfftOc\0\0\0\x02" {
        return false;
    }
    let count = u32::from_be_bytes([raw[1028], raw[1029], raw[1030], raw[1031]]) as usize;
    let Some(list) = raw.get(1032..1032 + count * 20) else {
        return false;
    };
    for id in list.chunks_exact(20) {
        let mut o = [0u8; 20];
        o.copy_from_slice(id);
        ids.insert(o);
    }
    true
}

fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Writes the cache of `project` after a first snapshot: `records` are its files,
/// whose blobs are in `old_packs` (linked from the store) or `new_packs` (written by
/// this session in `git_dir/objects/pack`). Errors are ignored by the caller: a cache
/// that cannot be written costs the next session a full hash, nothing else.
pub(crate) fn save(
    root: &Path,
    project: &Path,
    git_dir: &Path,
    old_packs: &[String],
    new_packs: &[String],
    records: &[Record<'_>],
) -> std::io::Result<()> {
    let dir = store_dir(root, project);
    let pack_dir = dir.join("pack");
    let project_bytes: u64 = records.iter().map(|r| r.size).sum();
    let src = git_dir.join("objects/pack");
    let size_of = |d: &Path, n: &str| {
        ["pack", "idx"]
            .iter()
            .map(|e| fs::metadata(d.join(format!("{n}.{e}"))).map_or(0, |m| m.len()))
            .sum::<u64>()
    };
    let mut packs: Vec<String> = old_packs.to_vec();
    let mut bytes: u64 = old_packs.iter().map(|n| size_of(&src, n)).sum();
    for n in new_packs {
        if !packs.contains(n) {
            bytes += size_of(&src, n);
            packs.push(n.clone());
        }
    }
    let over = packs.len() > MAX_PACKS || bytes > MAX_STORE_BYTES.max(2 * project_bytes);
    fs::create_dir_all(&pack_dir)?;
    set_private(root);
    set_private(&dir);
    set_private(&pack_dir);
    let Some(_lock) = StoreLock::take(&dir, true, WRITE_PATIENCE) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "the stat cache is locked by another session",
        ));
    };
    if over {
        // Start over: the next session hashes everything once and keeps only its packs.
        remove_store(&dir);
        return Ok(());
    }
    let _ = fs::write(
        dir.join(PROJECT_FILE),
        project.as_os_str().as_encoded_bytes(),
    );
    let _ = File::create(dir.join(USED_FILE));
    // Every pack the new cache names, the old ones too: another session that read no
    // cache (or an older one) may have dropped an old pack from the store since this
    // one read it, and this session holds its own link to each.
    for n in &packs {
        for ext in ["pack", "idx"] {
            let to = pack_dir.join(format!("{n}.{ext}"));
            if !to.exists() {
                fs::hard_link(src.join(format!("{n}.{ext}")), &to)?;
            }
        }
    }
    // Packs no longer named by the cache (an earlier, replaced cache's) are dropped;
    // sessions using them hold their own links.
    if let Ok(rd) = fs::read_dir(&pack_dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            let stem = Path::new(&name).file_stem().map(|s| s.to_os_string());
            let keep = stem.is_some_and(|s| packs.iter().any(|p| s == p.as_str()));
            if !keep {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let body = serialize(&packs, records);
    let tmp = dir.join(format!("cache.tmp.{}", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join("cache"))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Removes a store: the cache file first, so a half-removed store is never read.
fn remove_store(dir: &Path) {
    let _ = fs::remove_file(dir.join("cache"));
    let _ = fs::remove_dir_all(dir);
}

/// What [`prune`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Stores removed because their project no longer exists.
    pub project_gone: usize,
    /// Stores removed because no session used them for the idle limit.
    pub idle: usize,
    /// Stores kept (in use, recent, or locked by a session now).
    pub kept: usize,
}

/// Removes the stores under `root` (`<data_dir>/statcache`) whose project is gone or
/// that no session read for `max_idle` (as of `now`); a store a session holds locked is
/// kept. Deleting any store is always safe: sessions own links to the packs they use.
pub fn prune(root: &Path, max_idle: Duration, now: SystemTime) -> PruneReport {
    let mut report = PruneReport::default();
    let Ok(rd) = fs::read_dir(root) else {
        return report;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let is_store = name.len() == 40
            && name
                .as_encoded_bytes()
                .iter()
                .all(|b| b.is_ascii_hexdigit())
            && e.file_type().is_ok_and(|t| t.is_dir());
        if !is_store {
            continue;
        }
        let dir = e.path();
        let Some(_lock) = StoreLock::take(&dir, true, Duration::ZERO) else {
            report.kept += 1;
            continue;
        };
        let gone = fs::read(dir.join(PROJECT_FILE)).ok().is_some_and(|p| {
            let p = Path::new(std::ffi::OsStr::from_bytes(&p));
            p.is_absolute() && !p.exists()
        });
        // Stores written before `used` existed: the cache's own mtime.
        let last_used = [USED_FILE, "cache", LOCK_FILE]
            .iter()
            .filter_map(|f| fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok())
            .max();
        let idle = last_used.is_some_and(|t| now.duration_since(t).unwrap_or_default() > max_idle);
        if gone {
            remove_store(&dir);
            report.project_gone += 1;
        } else if idle || last_used.is_none() {
            remove_store(&dir);
            report.idle += 1;
        } else {
            report.kept += 1;
        }
    }
    report
}

/// At most once per [`PRUNE_EVERY`] (stamped in `root`), [`prune`] on a background
/// thread: the session start that calls this pays one `stat`.
pub(crate) fn prune_now_and_then(root: &Path) {
    let stamp = root.join(PRUNE_STAMP);
    let due = match fs::metadata(&stamp).and_then(|m| m.modified()) {
        Ok(t) => SystemTime::now()
            .duration_since(t)
            .is_ok_and(|d| d > PRUNE_EVERY),
        // No stores yet: nothing to prune.
        Err(_) => root.is_dir(),
    };
    if !due {
        return;
    }
    // Claim this round first, so sessions starting together do not all prune.
    if File::create(&stamp).is_err() {
        return;
    }
    let root = root.to_path_buf();
    let _ = std::thread::Builder::new()
        .name("statcache-prune".into())
        .spawn(move || prune(&root, STORE_MAX_IDLE, SystemTime::now()));
}

fn set_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
}

/// `MAGIC`, `<n packs>\n`, pack names one a line, then per file
/// `size mtime_s mtime_ns ctime_s ctime_ns ino dev mode id\t<path>\0`, then the SHA-1
/// of all of that.
fn serialize(packs: &[String], records: &[Record<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + records.len() * 120);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(format!("{}\n", packs.len()).as_bytes());
    for p in packs {
        out.extend_from_slice(p.as_bytes());
        out.push(b'\n');
    }
    for r in records {
        let s = &r.stat;
        out.extend_from_slice(
            format!(
                "{} {} {} {} {} {} {} {:o} {}\t",
                r.size,
                s.mtime_s,
                s.mtime_ns,
                s.ctime_s,
                s.ctime_ns,
                s.ino,
                s.dev,
                r.mode,
                hex(&r.id)
            )
            .as_bytes(),
        );
        out.extend_from_slice(r.rel);
        out.push(0);
    }
    let sum: Oid = Sha1::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

type Parsed = (Vec<String>, HashMap<Vec<u8>, Known>);

/// The strict inverse of [`serialize`]; `None` for anything else.
fn parse(raw: &[u8]) -> Option<Parsed> {
    let body = raw.get(..raw.len().checked_sub(20)?)?;
    let sum: Oid = Sha1::digest(body).into();
    if sum[..] != raw[body.len()..] {
        return None;
    }
    let mut rest = body.strip_prefix(MAGIC)?;
    let line = |rest: &mut &[u8]| -> Option<String> {
        let nl = rest.iter().position(|&b| b == b'\n')?;
        let s = std::str::from_utf8(&rest[..nl]).ok()?.to_string();
        *rest = &rest[nl + 1..];
        Some(s)
    };
    let count: usize = line(&mut rest)?.parse().ok()?;
    if count > MAX_PACKS {
        return None;
    }
    let mut packs = Vec::with_capacity(count);
    for _ in 0..count {
        let name = line(&mut rest)?;
        let ok = name.len() == 45
            && name.starts_with("pack-")
            && name[5..].bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return None;
        }
        packs.push(name);
    }
    let mut entries = HashMap::new();
    while !rest.is_empty() {
        let end = rest.iter().position(|&b| b == 0)?;
        let rec = &rest[..end];
        rest = &rest[end + 1..];
        let tab = rec.iter().position(|&b| b == b'\t')?;
        let path = &rec[tab + 1..];
        if path.is_empty() || path.starts_with(b"/") {
            return None;
        }
        let fields = std::str::from_utf8(&rec[..tab]).ok()?;
        let f: Vec<&str> = fields.split(' ').collect();
        if f.len() != 9 {
            return None;
        }
        let n = |i: usize| f[i].parse::<u32>().ok();
        let id_hex = f[8];
        if id_hex.len() != 40 {
            return None;
        }
        let mut id = [0u8; 20];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(id_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        let mode = u32::from_str_radix(f[7], 8).ok()?;
        if mode != 0o100644 && mode != 0o100755 {
            return None;
        }
        let k = Known {
            size: f[0].parse().ok()?,
            mtime: (n(1)?, n(2)?),
            ctime: (n(3)?, n(4)?),
            ino: n(5)?,
            dev: n(6)?,
            mode,
            id,
        };
        entries.insert(path.to_vec(), k);
    }
    Some((packs, entries))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn stat() -> Stat {
        Stat {
            ctime_s: 5,
            ctime_ns: 6,
            mtime_s: 3,
            mtime_ns: 4,
            dev: 7,
            ino: 8,
            uid: 0,
            gid: 0,
            size: 9,
        }
    }

    #[test]
    fn readers_share_the_store_and_exclude_writers_until_linked() {
        let root = tempfile::tempdir().unwrap();
        let project = Path::new("/nonexistent/project");
        let dir = store_dir(root.path(), project);
        fs::create_dir_all(dir.join("pack")).unwrap();
        let packs: Vec<String> = Vec::new();
        fs::write(dir.join("cache"), serialize(&packs, &[])).unwrap();
        let git_dir = root.path().join("session.git");
        fs::create_dir_all(git_dir.join("objects/pack")).unwrap();

        let a = StatCache::read(root.path(), project).unwrap();
        let b = StatCache::read(root.path(), project).unwrap();
        assert!(
            a.lock.is_some() && b.lock.is_some(),
            "readers share the lock"
        );
        assert!(
            StoreLock::take(&dir, true, Duration::ZERO).is_none(),
            "a writer got in while a session was reading the cache"
        );
        let a = a.link(&git_dir).unwrap();
        assert!(a.lock.is_none());
        assert!(StoreLock::take(&dir, true, Duration::ZERO).is_none());
        drop(b);
        let w = StoreLock::take(&dir, true, Duration::ZERO).unwrap();
        // And a reader does not read while a writer holds the store.
        assert!(StoreLock::take(&dir, false, Duration::ZERO).is_none());
        drop(w);
        assert!(dir.join("used").is_file());
    }

    #[test]
    fn a_writer_keeps_every_pack_its_cache_names_in_the_store() {
        // Session A read a cache naming P0; session V read none (it timed out) and
        // wrote its own cache, dropping P0 from the store; then A writes. A's cache
        // names P0, so the store must hold P0 again.
        let root = tempfile::tempdir().unwrap();
        let project = Path::new("/nonexistent/project");
        let name = |c: char| format!("pack-{}", c.to_string().repeat(40));
        let (p0, pa, pv) = (name('0'), name('a'), name('b'));
        let session = |dir: &str, packs: &[&String]| {
            let d = root.path().join(dir).join("objects/pack");
            fs::create_dir_all(&d).unwrap();
            for p in packs {
                for ext in ["pack", "idx"] {
                    fs::write(d.join(format!("{p}.{ext}")), p.as_bytes()).unwrap();
                }
            }
            root.path().join(dir)
        };
        let first = session("first", &[&p0]);
        save(
            root.path(),
            project,
            &first,
            &[],
            std::slice::from_ref(&p0),
            &[],
        )
        .unwrap();
        let a = session("a", &[&p0, &pa]);
        let v = session("v", &[&pv]);
        save(
            root.path(),
            project,
            &v,
            &[],
            std::slice::from_ref(&pv),
            &[],
        )
        .unwrap();
        let store = store_dir(root.path(), project).join("pack");
        assert!(!store.join(format!("{p0}.pack")).exists());
        save(
            root.path(),
            project,
            &a,
            std::slice::from_ref(&p0),
            std::slice::from_ref(&pa),
            &[],
        )
        .unwrap();
        let raw = fs::read(store_dir(root.path(), project).join("cache")).unwrap();
        let (named, _) = parse(&raw).unwrap();
        assert_eq!(named, [p0.clone(), pa.clone()]);
        for p in &named {
            for ext in ["pack", "idx"] {
                assert!(
                    store.join(format!("{p}.{ext}")).is_file(),
                    "{p}.{ext} missing"
                );
            }
        }
        assert!(!store.join(format!("{pv}.pack")).exists());
    }

    #[test]
    fn round_trip_and_damage() {
        let packs = vec![format!("pack-{}", "a".repeat(40))];
        let recs = [Record {
            rel: b"dir/f.txt",
            size: 9,
            stat: stat(),
            mode: 0o100755,
            id: [0xab; 20],
        }];
        let raw = serialize(&packs, &recs);
        let (p, e) = parse(&raw).unwrap();
        assert_eq!(p, packs);
        let k = e[&b"dir/f.txt"[..]];
        assert_eq!(
            (k.size, k.mtime, k.ctime, k.mode),
            (9, (3, 4), (5, 6), 0o100755)
        );
        assert_eq!(k.id, [0xab; 20]);
        for i in [0, MAGIC.len() + 3, raw.len() / 2, raw.len() - 1] {
            let mut bad = raw.clone();
            bad[i] ^= 1;
            assert!(parse(&bad).is_none(), "flip at {i} accepted");
        }
        assert!(parse(&raw[..raw.len() - 1]).is_none());
        assert!(parse(b"").is_none());
    }
}
