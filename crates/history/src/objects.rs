//! Git objects written and read directly (loose objects), and commit objects.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use sha1::{Digest, Sha1};

use crate::error::{HistoryError, IoContext};
use crate::{AUTHOR_EMAIL, AUTHOR_NAME};

pub(crate) type Oid = [u8; 20];

pub(crate) fn hash_object(kind: &str, data: &[u8]) -> Oid {
    let mut h = Sha1::new();
    h.update(format!("{kind} {}\0", data.len()).as_bytes());
    h.update(data);
    h.finalize().into()
}

pub(crate) fn hex(id: &Oid) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(40);
    for b in id {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

pub(crate) fn is_hex_id(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn loose_path(git_dir: &Path, hex_id: &str) -> PathBuf {
    git_dir
        .join("objects")
        .join(&hex_id[..2])
        .join(&hex_id[2..])
}

/// Writes a loose object (if it is not there yet) and returns its id in hex.
pub(crate) fn write_loose(git_dir: &Path, kind: &str, data: &[u8]) -> Result<String, HistoryError> {
    let id = hex(&hash_object(kind, data));
    let path = loose_path(git_dir, &id);
    if path.exists() {
        return Ok(id);
    }
    let dir = path.parent().unwrap_or(git_dir);
    fs::create_dir_all(dir).ctx(|| format!("cannot create {}", dir.display()))?;
    let mut enc = ZlibEncoder::new(Vec::with_capacity(data.len() / 2 + 64), Compression::fast());
    let header = format!("{kind} {}\0", data.len());
    let compressed = enc
        .write_all(header.as_bytes())
        .and_then(|_| enc.write_all(data))
        .and_then(|_| enc.finish())
        .ctx(|| "cannot compress a git object".to_string())?;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("tmp_obj_{}_{n}", std::process::id()));
    fs::write(&tmp, &compressed).ctx(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &path).ctx(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// Writes a blob of `len` bytes read from `input` as a loose object, streaming (never
/// holding the whole content), and returns its id in hex. An input that yields more or
/// fewer than `len` bytes (the file changed meanwhile) is an error.
pub(crate) fn write_loose_blob_stream(
    git_dir: &Path,
    len: u64,
    mut input: impl Read,
) -> Result<String, HistoryError> {
    let objects = git_dir.join("objects");
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = objects.join(format!("tmp_obj_{}_{n}", std::process::id()));
    let file = fs::File::create(&tmp).ctx(|| format!("cannot write {}", tmp.display()))?;
    let cleanup = |e: HistoryError| {
        let _ = fs::remove_file(&tmp);
        e
    };
    let mut enc = ZlibEncoder::new(std::io::BufWriter::new(file), Compression::fast());
    let mut sha = Sha1::new();
    let header = format!("blob {len}\0");
    sha.update(header.as_bytes());
    let written = (|| -> std::io::Result<u64> {
        enc.write_all(header.as_bytes())?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            total += n as u64;
            if total > len {
                break;
            }
            sha.update(&buf[..n]);
            enc.write_all(&buf[..n])?;
        }
        enc.finish()?.flush()?;
        Ok(total)
    })()
    .ctx(|| format!("cannot write {}", tmp.display()))
    .map_err(cleanup)?;
    if written != len {
        return Err(cleanup(HistoryError::ChangedDuringCopy {
            path: PathBuf::from("a file of the work tree"),
        }));
    }
    let id: Oid = sha.finalize().into();
    let id = hex(&id);
    let path = loose_path(git_dir, &id);
    let dir = path.parent().unwrap_or(git_dir);
    fs::create_dir_all(dir)
        .ctx(|| format!("cannot create {}", dir.display()))
        .map_err(cleanup)?;
    if path.exists() {
        let _ = fs::remove_file(&tmp);
    } else {
        fs::rename(&tmp, &path)
            .ctx(|| format!("cannot write {}", path.display()))
            .map_err(cleanup)?;
    }
    Ok(id)
}

/// Reads a loose object: `Ok(None)` when it is not loose (it may be packed).
pub(crate) fn read_loose(
    git_dir: &Path,
    hex_id: &str,
) -> Result<Option<(String, Vec<u8>)>, HistoryError> {
    if !is_hex_id(hex_id) {
        return Ok(None);
    }
    let path = loose_path(git_dir, hex_id);
    let raw = match fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(HistoryError::io(
                format!("cannot read {}", path.display()),
                e,
            ))
        }
    };
    let mut data = Vec::new();
    ZlibDecoder::new(&raw[..])
        .read_to_end(&mut data)
        .map_err(|_| HistoryError::Corrupt(format!("object {hex_id} cannot be decompressed")))?;
    let nul = data
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| HistoryError::Corrupt(format!("object {hex_id} has no header")))?;
    let header = String::from_utf8_lossy(&data[..nul]).to_string();
    let kind = header.split(' ').next().unwrap_or_default().to_string();
    Ok(Some((kind, data[nul + 1..].to_vec())))
}

/// The text of a commit object by Safe Coder.
pub(crate) fn commit_body(tree: &str, parents: &[&str], message: &str, time: i64) -> Vec<u8> {
    let mut s = format!("tree {tree}\n");
    for p in parents {
        s.push_str(&format!("parent {p}\n"));
    }
    let ident = format!("{AUTHOR_NAME} <{AUTHOR_EMAIL}> {time} +0000");
    s.push_str(&format!("author {ident}\ncommitter {ident}\n\n{message}"));
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s.into_bytes()
}

/// The parsed head of a commit object.
pub(crate) struct CommitFields {
    pub tree: String,
    pub parents: Vec<String>,
    pub time: i64,
    pub message: String,
}

pub(crate) fn parse_commit(data: &[u8]) -> CommitFields {
    let text = String::from_utf8_lossy(data);
    let (head, message) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut fields = CommitFields {
        tree: String::new(),
        parents: Vec::new(),
        time: 0,
        message: message.to_string(),
    };
    for line in head.lines() {
        if let Some(t) = line.strip_prefix("tree ") {
            fields.tree = t.trim().to_string();
        } else if let Some(p) = line.strip_prefix("parent ") {
            fields.parents.push(p.trim().to_string());
        } else if let Some(c) = line.strip_prefix("committer ") {
            let mut parts = c.rsplitn(3, ' ');
            let _zone = parts.next();
            fields.time = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
        }
    }
    fields
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Reads any non-delta object: loose, or from one of the repository's packs.
/// `Ok(None)` when it cannot be found this way (a delta, or absent): callers then ask git.
pub(crate) fn read_object(
    git_dir: &Path,
    hex_id: &str,
) -> Result<Option<(String, Vec<u8>)>, HistoryError> {
    if let Some(obj) = read_loose(git_dir, hex_id)? {
        return Ok(Some(obj));
    }
    let Some(id) = parse_hex(hex_id) else {
        return Ok(None);
    };
    let pack_dir = git_dir.join("objects/pack");
    let Ok(dir) = fs::read_dir(&pack_dir) else {
        return Ok(None);
    };
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("idx") {
            continue;
        }
        let Ok(idx) = fs::read(&path) else { continue };
        let Some(offset) = idx_lookup(&idx, &id) else {
            continue;
        };
        return read_packed(&path.with_extension("pack"), offset);
    }
    Ok(None)
}

pub(crate) fn parse_hex(s: &str) -> Option<Oid> {
    if !is_hex_id(s) {
        return None;
    }
    let mut id = [0u8; 20];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(id)
}

/// The pack offset of `id` in a version-2 `.idx`.
fn idx_lookup(idx: &[u8], id: &Oid) -> Option<u64> {
    if idx.len() < 8 + 1024 || &idx[..8] != b"\xfftOc\0\0\0\x02" {
        return None;
    }
    let be32 = |pos: usize| -> Option<u32> {
        idx.get(pos..pos + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let n = be32(8 + 255 * 4)? as usize;
    let lo = if id[0] == 0 {
        0
    } else {
        be32(8 + (id[0] as usize - 1) * 4)? as usize
    };
    let hi = be32(8 + id[0] as usize * 4)? as usize;
    let names = 8 + 1024;
    let (mut lo, mut hi) = (lo, hi.min(n));
    while lo < hi {
        let mid = (lo + hi) / 2;
        let name = idx.get(names + mid * 20..names + mid * 20 + 20)?;
        match name.cmp(&id[..]) {
            std::cmp::Ordering::Equal => {
                let offsets = names + n * 20 + n * 4;
                let off = be32(offsets + mid * 4)?;
                if off & 0x8000_0000 == 0 {
                    return Some(off as u64);
                }
                let large = offsets + n * 4 + (off & 0x7fff_ffff) as usize * 8;
                let b = idx.get(large..large + 8)?;
                return Some(u64::from_be_bytes([
                    b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
                ]));
            }
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
        }
    }
    None
}

fn read_packed(pack: &Path, offset: u64) -> Result<Option<(String, Vec<u8>)>, HistoryError> {
    use std::io::{BufReader, Seek, SeekFrom};
    let mut f = fs::File::open(pack).ctx(|| format!("cannot read {}", pack.display()))?;
    f.seek(SeekFrom::Start(offset))
        .ctx(|| format!("cannot read {}", pack.display()))?;
    let mut r = BufReader::with_capacity(64 * 1024, f);
    let mut byte = [0u8; 1];
    r.read_exact(&mut byte)
        .ctx(|| format!("cannot read {}", pack.display()))?;
    let kind = (byte[0] >> 4) & 7;
    let mut size = (byte[0] & 15) as u64;
    let mut shift = 4;
    while byte[0] & 0x80 != 0 {
        r.read_exact(&mut byte)
            .ctx(|| format!("cannot read {}", pack.display()))?;
        size |= ((byte[0] & 0x7f) as u64) << shift;
        shift += 7;
    }
    let kind = match kind {
        1 => "commit",
        2 => "tree",
        3 => "blob",
        4 => "tag",
        _ => return Ok(None),
    };
    let mut data = Vec::with_capacity(size as usize);
    ZlibDecoder::new(r)
        .take(size)
        .read_to_end(&mut data)
        .map_err(|_| {
            HistoryError::Corrupt(format!(
                "a packed object in {} cannot be decompressed",
                pack.display()
            ))
        })?;
    if data.len() as u64 != size {
        return Err(HistoryError::Corrupt(format!(
            "a packed object in {} is truncated",
            pack.display()
        )));
    }
    Ok(Some((kind.to_string(), data)))
}

/// Entries of a tree object: (mode, name, id).
pub(crate) fn parse_tree(data: &[u8]) -> Option<Vec<(u32, Vec<u8>, Oid)>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let sp = rest.iter().position(|&b| b == b' ')?;
        let mode = u32::from_str_radix(std::str::from_utf8(&rest[..sp]).ok()?, 8).ok()?;
        rest = &rest[sp + 1..];
        let nul = rest.iter().position(|&b| b == 0)?;
        let name = rest[..nul].to_vec();
        let id: Oid = rest.get(nul + 1..nul + 21)?.try_into().ok()?;
        out.push((mode, name, id));
        rest = &rest[nul + 21..];
    }
    Some(out)
}

/// A tree object's body from entries; sorts them in git's order (directories compare
/// as if their name ended with `/`).
pub(crate) fn tree_body(entries: &mut [(u32, Vec<u8>, Oid)]) -> Vec<u8> {
    let key = |e: &(u32, Vec<u8>, Oid)| {
        let mut k = e.1.clone();
        if e.0 == 0o40000 {
            k.push(b'/');
        }
        k
    };
    entries.sort_by_key(key);
    let mut body = Vec::with_capacity(entries.len() * 40);
    for (mode, name, id) in entries.iter() {
        body.extend_from_slice(format!("{mode:o} ").as_bytes());
        body.extend_from_slice(name);
        body.push(0);
        body.extend_from_slice(id);
    }
    body
}
