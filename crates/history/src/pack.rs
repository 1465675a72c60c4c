//! A minimal packfile writer (version 2 pack + version 2 idx), used for the initial
//! snapshot: one sequential file per copy thread instead of thousands of loose objects.
//! Blobs are stored uncompressed (zlib "stored" blocks), which costs disk space but no
//! CPU; git reads such packs like any other.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use crate::error::{HistoryError, IoContext};
use crate::objects::{hex, Oid};

pub(crate) const OBJ_COMMIT: u8 = 1;
pub(crate) const OBJ_TREE: u8 = 2;
pub(crate) const OBJ_BLOB: u8 = 3;

/// The largest payload of one deflate stored block.
const STORED_BLOCK: usize = 65535;

pub(crate) struct PackWriter {
    out: BufWriter<File>,
    tmp_path: PathBuf,
    pack_dir: PathBuf,
    sha: Sha1,
    pos: u64,
    crc: crc32fast::Hasher,
    entries: Vec<(Oid, u64, u32)>,
    seen: HashSet<Oid>,
    count: u32,
    // State of the object being streamed.
    remaining: u64,
    adler: adler2::Adler32,
    block: Vec<u8>,
    /// The last block written for the current object carried the final flag.
    open_block_final: bool,
}

impl PackWriter {
    /// Starts a pack that will hold exactly `count` objects (all distinct).
    pub fn create(pack_dir: &Path, tag: &str, count: u32) -> Result<Self, HistoryError> {
        let tmp_path = pack_dir.join(format!("tmp_pack_{}_{tag}", std::process::id()));
        let file =
            File::create(&tmp_path).ctx(|| format!("cannot create {}", tmp_path.display()))?;
        let mut w = PackWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            tmp_path,
            pack_dir: pack_dir.to_path_buf(),
            sha: Sha1::new(),
            pos: 0,
            crc: crc32fast::Hasher::new(),
            entries: Vec::with_capacity(count as usize),
            seen: HashSet::with_capacity(count as usize),
            count,
            remaining: 0,
            adler: adler2::Adler32::new(),
            block: Vec::with_capacity(STORED_BLOCK),
            open_block_final: false,
        };
        let mut header = *b"PACK\0\0\0\x02\0\0\0\0";
        header[8..].copy_from_slice(&count.to_be_bytes());
        w.put(&header)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), HistoryError> {
        self.sha.update(bytes);
        self.crc.update(bytes);
        self.pos += bytes.len() as u64;
        self.out
            .write_all(bytes)
            .ctx(|| format!("cannot write {}", self.tmp_path.display()))
    }

    /// Starts an object of `len` bytes; feed its content with [`Self::feed`] and close
    /// it with [`Self::end_object`].
    pub fn begin_object(&mut self, kind: u8, len: u64) -> Result<(), HistoryError> {
        if self.entries.len() as u32 >= self.count {
            return Err(HistoryError::Corrupt(
                "a pack received more objects than announced".into(),
            ));
        }
        self.crc = crc32fast::Hasher::new();
        let offset = self.pos;
        let mut header = Vec::with_capacity(12);
        let mut size = len;
        let mut byte = (kind << 4) | (size & 15) as u8;
        size >>= 4;
        while size > 0 {
            header.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        header.push(byte);
        // zlib header: deflate with a 32K window; 0x7801 is a multiple of 31.
        header.extend_from_slice(&[0x78, 0x01]);
        self.put(&header)?;
        self.entries.push(([0; 20], offset, 0));
        self.remaining = len;
        self.adler = adler2::Adler32::new();
        self.block.clear();
        self.open_block_final = false;
        Ok(())
    }

    /// Appends content to the current object; more than announced is an error.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), HistoryError> {
        if data.len() as u64 > self.remaining {
            return Err(HistoryError::Corrupt(
                "a packed object was longer than announced".into(),
            ));
        }
        self.adler.write_slice(data);
        while !data.is_empty() {
            let take = (STORED_BLOCK - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.remaining -= take as u64;
            if self.block.len() == STORED_BLOCK || self.remaining == 0 {
                self.flush_block(self.remaining == 0)?;
            }
        }
        Ok(())
    }

    fn flush_block(&mut self, last: bool) -> Result<(), HistoryError> {
        let len = self.block.len() as u16;
        let mut head = [0u8; 5];
        head[0] = u8::from(last);
        head[1..3].copy_from_slice(&len.to_le_bytes());
        head[3..5].copy_from_slice(&(!len).to_le_bytes());
        self.put(&head)?;
        let block = std::mem::take(&mut self.block);
        self.put(&block)?;
        self.block = block;
        self.block.clear();
        self.open_block_final = last;
        Ok(())
    }

    /// Closes the current object, whose id (computed by the caller) is `id`.
    pub fn end_object(&mut self, id: Oid) -> Result<(), HistoryError> {
        if !self.seen.insert(id) {
            return Err(HistoryError::Corrupt("an object was packed twice".into()));
        }
        if self.remaining != 0 {
            return Err(HistoryError::Corrupt(
                "a packed object was shorter than announced".into(),
            ));
        }
        if !self.open_block_final {
            // An empty object still needs its (empty) final block.
            self.flush_block(true)?;
        }
        let adler = self.adler.checksum().to_be_bytes();
        self.put(&adler)?;
        let crc = std::mem::replace(&mut self.crc, crc32fast::Hasher::new()).finalize();
        if let Some(last) = self.entries.last_mut() {
            last.0 = id;
            last.2 = crc;
        }
        Ok(())
    }

    /// Finishes the pack: the checksum, the `.idx`, both moved into place. Returns the
    /// pack's name (`pack-<hex>`), or `None` for an empty pack (nothing written).
    pub fn finish(self) -> Result<Option<String>, HistoryError> {
        let PackWriter {
            mut out,
            tmp_path,
            pack_dir,
            sha,
            mut entries,
            count,
            ..
        } = self;
        if entries.len() as u32 != count {
            return Err(HistoryError::Corrupt(
                "a pack received fewer objects than announced".into(),
            ));
        }
        let checksum: Oid = sha.finalize().into();
        let ctx = || format!("cannot write {}", tmp_path.display());
        out.write_all(&checksum).ctx(ctx)?;
        out.flush().ctx(ctx)?;
        drop(out);
        if count == 0 {
            let _ = fs::remove_file(&tmp_path);
            return Ok(None);
        }
        let name = format!("pack-{}", hex(&checksum));
        let pack_path = pack_dir.join(format!("{name}.pack"));
        fs::rename(&tmp_path, &pack_path)
            .ctx(|| format!("cannot write {}", pack_path.display()))?;

        entries.sort_unstable_by_key(|a| a.0);
        let mut idx = Vec::with_capacity(8 + 1024 + entries.len() * 28 + 40);
        idx.extend_from_slice(b"\xfftOc\0\0\0\x02");
        let mut fanout = [0u32; 256];
        for e in &entries {
            fanout[e.0[0] as usize] += 1;
        }
        let mut total = 0u32;
        for f in fanout {
            total += f;
            idx.extend_from_slice(&total.to_be_bytes());
        }
        for e in &entries {
            idx.extend_from_slice(&e.0);
        }
        for e in &entries {
            idx.extend_from_slice(&e.2.to_be_bytes());
        }
        let mut large = Vec::new();
        for e in &entries {
            if e.1 < 0x8000_0000 {
                idx.extend_from_slice(&(e.1 as u32).to_be_bytes());
            } else {
                idx.extend_from_slice(&(0x8000_0000u32 | large.len() as u32).to_be_bytes());
                large.push(e.1);
            }
        }
        for off in large {
            idx.extend_from_slice(&off.to_be_bytes());
        }
        idx.extend_from_slice(&checksum);
        let idx_sum: Oid = Sha1::digest(&idx).into();
        idx.extend_from_slice(&idx_sum);
        let tmp_idx = pack_dir.join(format!("tmp_idx_{}_{name}", std::process::id()));
        let idx_path = pack_dir.join(format!("{name}.idx"));
        fs::write(&tmp_idx, &idx).ctx(|| format!("cannot write {}", tmp_idx.display()))?;
        fs::rename(&tmp_idx, &idx_path).ctx(|| format!("cannot write {}", idx_path.display()))?;
        Ok(Some(name))
    }
}
