//! Frames, blocking: over any `Read`/`Write` (a vsock stream in the guest, the Unix
//! socket of a hybrid vsock on the host, a pipe in tests).
//!
//! ```text
//! u32 BE  length of everything after this field (4 + header + data)
//! u32 BE  header length
//! header  JSON: {"id": <u64>, "body": <Request | Response | Hello>}
//! data    raw bytes (file contents, command output), possibly empty
//! ```

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{RequestId, MAX_FRAME_BYTES};

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<T> {
    pub id: RequestId,
    pub body: T,
    pub data: Vec<u8>,
}

impl<T> Frame<T> {
    pub fn new(id: RequestId, body: T) -> Self {
        Frame {
            id,
            body,
            data: Vec::new(),
        }
    }

    pub fn with_data(id: RequestId, body: T, data: Vec<u8>) -> Self {
        Frame { id, body, data }
    }
}

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the connection to the guest agent failed ({0}); check that the VM is still running")]
    Io(#[from] io::Error),
    #[error("the connection to the guest agent closed in the middle of a frame; the agent or the VM stopped")]
    Truncated,
    #[error("a frame of {len} bytes exceeds the limit of {max} bytes; send large files in parts")]
    TooLarge { len: u64, max: u64 },
    #[error("a malformed frame arrived ({0}); the peer does not speak the safe-coder VM protocol")]
    Malformed(&'static str),
    #[error("a message could not be encoded ({0}); this is a bug in safe-coder, please report it")]
    Encode(#[source] serde_json::Error),
    /// The header is JSON but not a message this side knows. `id` is the request id when
    /// it could be read, so the agent can answer with an error for that request.
    #[error(
        "a frame could not be decoded ({source}); the host and the agent are of different builds"
    )]
    Decode {
        id: Option<RequestId>,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Serialize)]
struct HeaderRef<'a, T> {
    id: RequestId,
    body: &'a T,
}

#[derive(Deserialize)]
struct Header<T> {
    id: RequestId,
    body: T,
}

#[derive(Deserialize)]
struct IdOnly {
    id: RequestId,
}

/// The length prefixes and the header of a frame whose `data_len` bytes of data follow.
/// Writing this and then the data is the whole frame.
pub fn encode_head<T: Serialize>(
    id: RequestId,
    body: &T,
    data_len: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; 8];
    serde_json::to_writer(&mut buf, &HeaderRef { id, body }).map_err(FrameError::Encode)?;
    let header_len = buf.len() - 8;
    let total = 4u64 + header_len as u64 + data_len as u64;
    if total > MAX_FRAME_BYTES as u64 {
        return Err(FrameError::TooLarge {
            len: total,
            max: MAX_FRAME_BYTES as u64,
        });
    }
    buf[0..4].copy_from_slice(&(total as u32).to_be_bytes());
    buf[4..8].copy_from_slice(&(header_len as u32).to_be_bytes());
    Ok(buf)
}

/// Checks the two length fields; returns the header length.
pub(crate) fn check_lengths(total: u32, header_len: u32) -> Result<usize, FrameError> {
    if total as usize > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len: total as u64,
            max: MAX_FRAME_BYTES as u64,
        });
    }
    if total < 4 || header_len > total - 4 {
        return Err(FrameError::Malformed("a header longer than its frame"));
    }
    Ok(header_len as usize)
}

/// Decodes a header (`{"id":..,"body":..}`).
pub(crate) fn decode_header<T: DeserializeOwned>(
    header: &[u8],
) -> Result<(RequestId, T), FrameError> {
    match serde_json::from_slice::<Header<T>>(header) {
        Ok(h) => Ok((h.id, h.body)),
        Err(source) => {
            let id = serde_json::from_slice::<IdOnly>(header).ok().map(|h| h.id);
            if id.is_none() && serde_json::from_slice::<serde_json::Value>(header).is_err() {
                return Err(FrameError::Malformed("a header that is not JSON"));
            }
            Err(FrameError::Decode { id, source })
        }
    }
}

/// Writes one frame (and flushes). Callers sharing a writer between threads hold a lock
/// around this call so frames never interleave.
pub fn write_frame<W: Write, T: Serialize>(
    w: &mut W,
    id: RequestId,
    body: &T,
    data: &[u8],
) -> Result<(), FrameError> {
    let mut head = encode_head(id, body, data.len())?;
    if data.len() <= 16 * 1024 {
        head.extend_from_slice(data);
        w.write_all(&head)?;
    } else {
        w.write_all(&head)?;
        w.write_all(data)?;
    }
    w.flush()?;
    Ok(())
}

/// Reads one frame; `Ok(None)` when the peer closed the connection between frames.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<Option<Frame<T>>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let total = u32::from_be_bytes(len);
    let mut hl = [0u8; 4];
    read_exact(r, &mut hl)?;
    let header_len = check_lengths(total, u32::from_be_bytes(hl))?;
    let mut header = vec![0u8; header_len];
    read_exact(r, &mut header)?;
    let mut data = vec![0u8; total as usize - 4 - header_len];
    read_exact(r, &mut data)?;
    let (id, body) = decode_header(&header)?;
    Ok(Some(Frame { id, body, data }))
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), FrameError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })
}
