//! The same framing, handshake and hybrid-vsock connect over tokio's `AsyncRead` /
//! `AsyncWrite` (the host side). Feature `tokio`.

use std::io;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::frame::{check_lengths, decode_header, encode_head, Frame, FrameError};
use crate::handshake::{check_agent, check_host, expect_hello, HandshakeError};
use crate::hybrid::{check_reply, connect_line, HybridError, MAX_REPLY};
use crate::{Hello, RequestId};

/// Writes one frame (and flushes).
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    id: RequestId,
    body: &T,
    data: &[u8],
) -> Result<(), FrameError> {
    let mut head = encode_head(id, body, data.len())?;
    if data.len() <= 16 * 1024 {
        head.extend_from_slice(data);
        w.write_all(&head).await?;
    } else {
        w.write_all(&head).await?;
        w.write_all(data).await?;
    }
    w.flush().await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` when the peer closed the connection between frames.
/// Not cancel-safe: drop the reader only together with the connection.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<Option<Frame<T>>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated),
            n => got += n,
        }
    }
    let total = u32::from_be_bytes(len);
    let mut hl = [0u8; 4];
    read_exact(r, &mut hl).await?;
    let header_len = check_lengths(total, u32::from_be_bytes(hl))?;
    let mut header = vec![0u8; header_len];
    read_exact(r, &mut header).await?;
    let mut data = vec![0u8; total as usize - 4 - header_len];
    read_exact(r, &mut data).await?;
    let (id, body) = decode_header(&header)?;
    Ok(Some(Frame { id, body, data }))
}

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), FrameError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(FrameError::Io(e)),
    }
}

/// The host's side of the handshake (see [`crate::handshake`]).
pub async fn host_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    ours: &Hello,
) -> Result<Hello, HandshakeError> {
    write_frame(s, 0, ours, &[]).await?;
    let agent = expect_hello(read_frame::<_, Hello>(s).await?)?;
    check_agent(ours, agent)
}

/// The agent's side of the handshake (see [`crate::handshake`]).
pub async fn agent_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    ours: &Hello,
) -> Result<Hello, HandshakeError> {
    let host = expect_hello(read_frame::<_, Hello>(s).await?)?;
    write_frame(s, 0, ours, &[]).await?;
    check_host(ours, host)
}

/// Connects to guest `port` through the hybrid vsock socket at `uds`
/// (see [`crate::hybrid`]).
pub async fn connect_hybrid(uds: &Path, port: u32) -> Result<UnixStream, HybridError> {
    let connect_err = |source| HybridError::Connect {
        path: uds.display().to_string(),
        source,
    };
    let mut s = UnixStream::connect(uds).await.map_err(connect_err)?;
    s.write_all(connect_line(port).as_bytes())
        .await
        .map_err(connect_err)?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_REPLY {
        match s.read(&mut byte).await {
            Ok(0) => break,
            Ok(_) => {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(connect_err(e)),
        }
    }
    check_reply(&line, port)?;
    Ok(s)
}
