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
    git_dir.join("objects").join(&hex_id[..2]).join(&hex_id[2..])
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
    let tmp = dir.join(format!("tmp_obj_{}_{}", std::process::id(), &id[2..12]));
    fs::write(&tmp, &compressed).ctx(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &path).ctx(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// Reads a loose object: `Ok(None)` when it is not loose (it may be packed).
pub(crate) fn read_loose(git_dir: &Path, hex_id: &str) -> Result<Option<(String, Vec<u8>)>, HistoryError> {
    if !is_hex_id(hex_id) {
        return Ok(None);
    }
    let path = loose_path(git_dir, hex_id);
    let raw = match fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HistoryError::io(format!("cannot read {}", path.display()), e)),
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
    let mut fields = CommitFields { tree: String::new(), parents: Vec::new(), time: 0, message: message.to_string() };
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
