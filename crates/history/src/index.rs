//! Writing git's index file (version 2) for the initial snapshot, with real stat data
//! (so `git status` and `git add -A` trust their stat cache) and the cache-tree (`TREE`)
//! extension (so the next `git write-tree` only rehashes the directories that changed).

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha1::{Digest, Sha1};

use crate::error::{HistoryError, IoContext};
use crate::objects::Oid;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stat {
    pub ctime_s: u32,
    pub ctime_ns: u32,
    pub mtime_s: u32,
    pub mtime_ns: u32,
    pub dev: u32,
    pub ino: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u32,
}

impl Stat {
    /// The same fields from a raw `stat` (an `fstatat` relative to a directory).
    pub fn from_stat(st: &libc::stat) -> Stat {
        Stat {
            ctime_s: st.st_ctime as u32,
            ctime_ns: st.st_ctime_nsec as u32,
            mtime_s: st.st_mtime as u32,
            mtime_ns: st.st_mtime_nsec as u32,
            dev: st.st_dev as u32,
            ino: st.st_ino as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u32,
        }
    }

    pub fn from_meta(m: &fs::Metadata) -> Stat {
        Stat {
            ctime_s: m.ctime() as u32,
            ctime_ns: m.ctime_nsec() as u32,
            mtime_s: m.mtime() as u32,
            mtime_ns: m.mtime_nsec() as u32,
            dev: m.dev() as u32,
            ino: m.ino() as u32,
            uid: m.uid(),
            gid: m.gid(),
            size: m.size() as u32,
        }
    }
}

/// One tracked file: path (`/`-separated, relative), git mode, blob id, stat data.
pub(crate) struct Entry {
    pub path: Vec<u8>,
    pub mode: u32,
    pub id: Oid,
    pub stat: Stat,
}

/// A node of the cache-tree extension, in pre-order.
pub(crate) struct TreeNode {
    pub name: Vec<u8>,
    pub entry_count: usize,
    pub subtree_count: usize,
    pub id: Oid,
}

/// Writes `entries` (sorted by path bytes) as the index at `path`, atomically. Written
/// and hashed in chunks of [`CHUNK`] bytes: no buffer of the whole index (4.4 MB at
/// 50,000 files) to allocate and fault in.
pub(crate) fn write_index(
    path: &Path,
    entries: &[Entry],
    tree: &[TreeNode],
) -> Result<(), HistoryError> {
    let tmp = path.with_extension("safe-coder-tmp");
    let file = fs::File::create(&tmp).ctx(|| format!("cannot create {}", tmp.display()))?;
    let ctx = || format!("cannot write {}", tmp.display());
    let mut out = Chunked {
        file,
        sha: Sha1::new(),
        buf: Vec::with_capacity(CHUNK + 4096),
    };
    out.buf.extend_from_slice(b"DIRC");
    out.buf.extend_from_slice(&2u32.to_be_bytes());
    out.buf
        .extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        let buf = &mut out.buf;
        let start = buf.len();
        let s = &e.stat;
        for v in [
            s.ctime_s, s.ctime_ns, s.mtime_s, s.mtime_ns, s.dev, s.ino, e.mode, s.uid, s.gid,
            s.size,
        ] {
            buf.extend_from_slice(&v.to_be_bytes());
        }
        buf.extend_from_slice(&e.id);
        let flags = e.path.len().min(0xfff) as u16;
        buf.extend_from_slice(&flags.to_be_bytes());
        buf.extend_from_slice(&e.path);
        // 1..=8 NULs so the entry length is a multiple of 8.
        let len = buf.len() - start;
        let pad = 8 - (len % 8);
        buf.extend(std::iter::repeat_n(0u8, pad));
        if buf.len() >= CHUNK {
            out.flush().ctx(ctx)?;
        }
    }
    if !tree.is_empty() {
        let mut ext = Vec::with_capacity(tree.len() * 64);
        for node in tree {
            ext.extend_from_slice(&node.name);
            ext.push(0);
            ext.extend_from_slice(
                format!("{} {}\n", node.entry_count, node.subtree_count).as_bytes(),
            );
            ext.extend_from_slice(&node.id);
        }
        out.buf.extend_from_slice(b"TREE");
        out.buf.extend_from_slice(&(ext.len() as u32).to_be_bytes());
        out.buf.extend_from_slice(&ext);
    }
    out.flush().ctx(ctx)?;
    let sum: Oid = out.sha.finalize().into();
    out.file.write_all(&sum).ctx(ctx)?;
    drop(out.file);
    fs::rename(&tmp, path).ctx(|| format!("cannot write {}", path.display()))
}

/// The index is written in chunks of about this size.
const CHUNK: usize = 256 << 10;

/// A file written through a buffer that is hashed as it goes.
struct Chunked {
    file: fs::File,
    sha: Sha1,
    buf: Vec<u8>,
}

impl Chunked {
    fn flush(&mut self) -> std::io::Result<()> {
        self.sha.update(&self.buf);
        self.file.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}
