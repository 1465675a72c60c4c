//! Firecracker's "hybrid vsock", which `vhost-device-vsock` speaks too: the host reaches
//! a guest port through a Unix socket by writing `CONNECT <port>\n` and reading
//! `OK <host port>\n`; after that the socket is the stream to the guest.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Errors connecting through a hybrid vsock socket.
#[derive(Debug, thiserror::Error)]
pub enum HybridError {
    #[error("cannot connect to the VM's vsock socket {path} ({source}); the VM is not running")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "nothing listens on vsock port {port} in the guest yet; the guest agent has not started"
    )]
    NoListener { port: u32 },
    #[error("the VM's vsock socket answered {reply:?} instead of `OK <port>`; it is not a hybrid vsock socket")]
    BadReply { reply: String },
}

pub(crate) fn connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// Reads the reply line one byte at a time (what follows it is the guest's stream).
/// `Ok(None)` at EOF before any byte.
pub(crate) fn check_reply(line: &[u8], port: u32) -> Result<(), HybridError> {
    if line.is_empty() {
        return Err(HybridError::NoListener { port });
    }
    let text = String::from_utf8_lossy(line).trim_end().to_string();
    match text.strip_prefix("OK ") {
        Some(rest) if rest.parse::<u32>().is_ok() => Ok(()),
        _ => Err(HybridError::BadReply { reply: text }),
    }
}

/// The longest reply line accepted (`OK 4294967295\n` is 14 bytes).
pub(crate) const MAX_REPLY: usize = 64;

/// Connects to guest `port` through the hybrid vsock socket at `uds`.
pub fn connect(uds: &Path, port: u32) -> Result<UnixStream, HybridError> {
    let connect_err = |source| HybridError::Connect {
        path: uds.display().to_string(),
        source,
    };
    let mut s = UnixStream::connect(uds).map_err(connect_err)?;
    s.write_all(connect_line(port).as_bytes())
        .map_err(connect_err)?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_REPLY {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // vhost-device-vsock resets the connection when nobody listens.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(connect_err(e)),
        }
    }
    check_reply(&line, port)?;
    Ok(s)
}
