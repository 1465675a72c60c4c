//! What the user's git already knows about the project, borrowed read-only for the
//! first snapshot: the blob id of every tracked file whose stat data still matches the
//! user's index, and the user's object store (added to the session's as a git
//! alternate, so those blobs are neither hashed nor stored again).
//!
//! Nothing here runs git in the user's repository or writes to it: the index is read
//! as a byte file (no `index.lock`, no refresh, no hooks, no fsmonitor, no filters of
//! the repository's config), so the user's `.git` stays byte-identical. A file counts as
//! unchanged only under git's own rule (same ctime, mtime, inode, owner, size and
//! executable bit, and not "racily clean": modified no earlier than the index was
//! written); every other file is hashed as before.
//!
//! Not borrowed (the caller hashes everything, as before): SHA-256 repositories, a
//! split index (`link` extension), an index this reader does not understand.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use crate::error::{HistoryError, IoContext};
use crate::index::Stat;
use crate::objects::Oid;

/// Largest index read (a 1,000,000-file index is about 100 MB).
const MAX_INDEX_BYTES: u64 = 512 << 20;

/// One entry of the user's index, as far as matching needs it.
#[derive(Clone, Copy, Debug)]
struct Known {
    ctime: (u32, u32),
    mtime: (u32, u32),
    ino: u32,
    uid: u32,
    gid: u32,
    size: u32,
    mode: u32,
    id: Oid,
}

/// The user's index and object store, found from the project directory.
#[derive(Debug)]
pub(crate) struct Borrowed {
    /// The user's `objects` directory (absolute).
    objects: PathBuf,
    /// When the index was written (seconds, nanoseconds): entries modified at or
    /// after it are racily clean and not trusted.
    index_mtime: (i64, i64),
    /// The entries under the project, in the index's order (sorted by path), each
    /// with its path relative to the project as a range of `names`. A sorted list
    /// searched by bisection: no allocation or hashing per entry (a 50,000-file index
    /// parses in a few milliseconds).
    entries: Vec<(u32, u32, Known)>,
    names: Vec<u8>,
}

impl Borrowed {
    /// The git repository holding `project` (at it or above it), if it is one whose
    /// index this reader can use. `None` for anything else: the caller hashes.
    pub(crate) fn discover(project: &Path) -> Option<Borrowed> {
        let (top, git_dir) = find_git_dir(project)?;
        let common = match fs::read_to_string(git_dir.join("commondir")) {
            Ok(s) => {
                let p = Path::new(s.trim());
                if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    git_dir.join(p)
                }
            }
            Err(_) => git_dir.clone(),
        };
        if uses_sha256(&common.join("config")) {
            return None;
        }
        let objects = fs::canonicalize(common.join("objects")).ok()?;
        if !objects.join("info").is_dir() && !objects.join("pack").is_dir() {
            return None;
        }
        let prefix = project.strip_prefix(&top).ok()?;
        let mut prefix = prefix.as_os_str().as_encoded_bytes().to_vec();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        let (index_mtime, raw) = read_index_file(&git_dir.join("index"))?;
        let (entries, names) = parse_index(&raw, &prefix)?;
        Some(Borrowed {
            objects,
            index_mtime,
            entries,
            names,
        })
    }

    /// The blob id (and git mode) of the project file `rel` when git would call it
    /// unchanged: its stat data (from `lstat` of a regular file) matches the user's
    /// index entry.
    pub(crate) fn unchanged(&self, rel: &[u8], st: &Stat, exec: bool) -> Option<(u32, Oid)> {
        let i = self
            .entries
            .binary_search_by(|&(at, len, _)| self.names[at as usize..(at + len) as usize].cmp(rel))
            .ok()?;
        self.unchanged_at(i, st, exec)
    }

    /// How many files the index names under the project (its regular files at stage 0).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The path (relative to the project) of the index's file number `i`, in the
    /// index's order: strictly increasing bytes.
    pub(crate) fn name(&self, i: usize) -> &[u8] {
        let (at, len, _) = self.entries[i];
        &self.names[at as usize..(at + len) as usize]
    }

    /// [`Self::unchanged`] for the index's file number `i` (no search).
    pub(crate) fn unchanged_at(&self, i: usize, st: &Stat, exec: bool) -> Option<(u32, Oid)> {
        let k = &self.entries.get(i)?.2;
        let mode_ok = match k.mode {
            0o100755 => exec,
            0o100644 => !exec,
            _ => false,
        };
        // Git stores nanoseconds only where it was built to; zero means "not recorded".
        let same_time = |(s, ns): (u32, u32), ms: u32, mns: u32| s == ms && (ns == 0 || ns == mns);
        let matches = mode_ok
            && k.size == st.size
            && k.ino == st.ino
            && k.uid == st.uid
            && k.gid == st.gid
            && same_time(k.mtime, st.mtime_s, st.mtime_ns)
            && same_time(k.ctime, st.ctime_s, st.ctime_ns);
        // Racily clean: written in the same instant as (or after) the index, so a
        // change within that instant would not show in the stat data.
        let racy = (k.mtime.0 as i64, k.mtime.1 as i64) >= self.index_mtime;
        (matches && !racy).then_some((k.mode, k.id))
    }

    /// Lets the session's repository read the user's objects (read-only: git never
    /// writes to an alternate).
    pub(crate) fn write_alternates(&self, git_dir: &Path) -> Result<(), HistoryError> {
        let p = git_dir.join("objects/info/alternates");
        let mut text = self.objects.as_os_str().as_encoded_bytes().to_vec();
        text.push(b'\n');
        fs::write(&p, text).ctx(|| format!("cannot write {}", p.display()))
    }
}

/// The work tree root and git dir of the repository holding `dir` (its own `.git`
/// directory or `.git` file, or a parent's).
fn find_git_dir(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let mut cur = Some(dir);
    while let Some(d) = cur {
        let dot = d.join(".git");
        match fs::symlink_metadata(&dot) {
            Ok(m) if m.is_dir() => return Some((d.to_path_buf(), dot)),
            Ok(m) if m.is_file() => {
                // A linked worktree or a submodule: `gitdir: <path>`.
                let text = fs::read_to_string(&dot).ok()?;
                let target = text.trim().strip_prefix("gitdir:")?.trim();
                let p = Path::new(target);
                let git_dir = if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    d.join(p)
                };
                return git_dir.is_dir().then(|| (d.to_path_buf(), git_dir));
            }
            Ok(_) => return None,
            Err(_) => {}
        }
        cur = d.parent();
    }
    None
}

/// Whether the repository's config selects SHA-256 object names.
fn uses_sha256(config: &Path) -> bool {
    let text = fs::read_to_string(config).unwrap_or_default();
    text.lines().any(|l| {
        let l = l.trim().to_ascii_lowercase();
        l.starts_with("objectformat") && l.contains("sha256")
    })
}

/// The index bytes and the index file's modification time, through one descriptor so
/// both describe the same file. Mapped, not read, as git itself does: no copy, and no
/// fresh pages to fault in (a 50,000-file index is 4.4 MB).
fn read_index_file(path: &Path) -> Option<((i64, i64), Mapped)> {
    let f = fs::File::open(path).ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_INDEX_BYTES {
        return None;
    }
    Some((
        (meta.mtime(), meta.mtime_nsec()),
        Mapped::new(&f, meta.len())?,
    ))
}

/// A file mapped read-only and private. git replaces its index by renaming a new
/// file over it, never by writing in place, so the mapped bytes stay those of the
/// file that was opened.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn new(f: &fs::File, len: u64) -> Option<Mapped> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
        // SAFETY: a fresh read-only private mapping of an open descriptor; checked
        // for failure, unmapped once in `Drop`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(Mapped { ptr, len })
    }
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The parsed entries (name ranges into the second vector) of [`parse_index`].
type Parsed = (Vec<(u32, u32, Known)>, Vec<u8>);

/// Parses an index (versions 2, 3 and 4) into stage-0 regular-file entries under
/// `prefix` (names relative to it), in the index's order. `None` when the checksum is
/// wrong, the format is unknown, the entries are not sorted or the index is split.
fn parse_index(raw: &[u8], prefix: &[u8]) -> Option<Parsed> {
    if raw.len() < 12 + 20 || &raw[..4] != b"DIRC" {
        return None;
    }
    let body = &raw[..raw.len() - 20];
    let trailer = &raw[raw.len() - 20..];
    // `index.skipHash` writes zeros instead of the checksum.
    if trailer.iter().any(|&b| b != 0) {
        let sum: Oid = Sha1::digest(body).into();
        if sum[..] != trailer[..] {
            return None;
        }
    }
    let version = be32(raw, 4)?;
    if !(2..=4).contains(&version) {
        return None;
    }
    let count = be32(raw, 8)? as usize;
    let mut entries: Vec<(u32, u32, Known)> = Vec::with_capacity(count.min(1 << 20));
    let mut names: Vec<u8> = Vec::with_capacity(body.len().min(64 << 20) / 2);
    let mut at = 12;
    let mut name: Vec<u8> = Vec::new();
    for _ in 0..count {
        let f = |i: usize| be32(body, at + 4 * i);
        let k = Known {
            ctime: (f(0)?, f(1)?),
            mtime: (f(2)?, f(3)?),
            ino: f(5)?,
            mode: f(6)?,
            uid: f(7)?,
            gid: f(8)?,
            size: f(9)?,
            id: body.get(at + 40..at + 60)?.try_into().ok()?,
        };
        let flags = u16::from_be_bytes(body.get(at + 60..at + 62)?.try_into().ok()?);
        let mut fixed = 62;
        let mut extended = 0u16;
        if flags & 0x4000 != 0 {
            if version < 3 {
                return None;
            }
            extended = u16::from_be_bytes(body.get(at + 62..at + 64)?.try_into().ok()?);
            fixed = 64;
        }
        let name_at = at + fixed;
        if version == 4 {
            // Prefix compression: strip N bytes of the previous name, add the rest.
            let (strip, used) = varint(body.get(name_at..)?)?;
            let rest_at = name_at + used;
            let end = rest_at + body.get(rest_at..)?.iter().position(|&b| b == 0)?;
            let keep = name.len().checked_sub(strip)?;
            name.truncate(keep);
            name.extend_from_slice(&body[rest_at..end]);
            at = end + 1;
        } else {
            let end = name_at + body.get(name_at..)?.iter().position(|&b| b == 0)?;
            name.clear();
            name.extend_from_slice(&body[name_at..end]);
            // Entries are padded with 1..=8 NULs to a multiple of 8 bytes.
            at += (fixed + name.len() + 8) & !7;
        }
        let stage = (flags >> 12) & 3;
        // Skip-worktree and intent-to-add entries say nothing of the file's bytes.
        let odd = extended & (0x4000 | 0x2000) != 0;
        let file = matches!(k.mode, 0o100644 | 0o100755);
        if stage == 0 && !odd && file {
            if let Some(rel) = name.strip_prefix(prefix) {
                // Bisection needs strictly sorted names, as git writes them.
                if let Some(&(pat, plen, _)) = entries.last() {
                    let prev = &names[pat as usize..(pat + plen) as usize];
                    if prev >= rel {
                        return None;
                    }
                }
                let start = u32::try_from(names.len()).ok()?;
                let len = u32::try_from(rel.len()).ok()?;
                names.extend_from_slice(rel);
                entries.push((start, len, k));
            }
        }
    }
    // Extensions: a split index keeps most entries in another file.
    while at + 8 <= body.len() {
        let sig = &body[at..at + 4];
        if sig == b"link" {
            return None;
        }
        let len = be32(body, at + 4)? as usize;
        at = at.checked_add(8 + len)?;
    }
    Some((entries, names))
}

/// Git's offset varint (index v4 name compression).
fn varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    let mut c = *b.first()?;
    let mut val = (c & 127) as usize;
    while c & 128 != 0 {
        i += 1;
        c = *b.get(i)?;
        val = ((val + 1) << 7) + (c & 127) as usize;
    }
    Some((val, i + 1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn varint_matches_git() {
        assert_eq!(varint(&[0]), Some((0, 1)));
        assert_eq!(varint(&[127]), Some((127, 1)));
        assert_eq!(varint(&[0x80, 0]), Some((128, 2)));
        assert_eq!(varint(&[0x80]), None);
    }

    #[test]
    fn garbage_is_not_an_index() {
        assert!(parse_index(b"DIRC\0\0\0\x02\0\0\0\x01garbage-garbage-garbage", b"").is_none());
        assert!(parse_index(b"", b"").is_none());
    }
}
