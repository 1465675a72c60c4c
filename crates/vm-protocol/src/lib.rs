//! The protocol between the host (the `qemu` and `firecracker` backends) and the guest
//! agent inside a microVM: versioned, length-prefixed frames over a vsock stream.
//!
//! - [`frame`]: the frame format and blocking `Read`/`Write` helpers (the guest agent);
//!   [`nonblocking`] (feature `tokio`): the same over tokio streams (the host).
//! - [`handshake`]: each side says its [`PROTOCOL_VERSION`] first; a host that meets an
//!   agent of another version gets [`HandshakeError::VersionMismatch`] naming both.
//! - [`Request`] / [`Response`]: exec with streamed output, cancel, files under
//!   [`WORKSPACE`], changed files since a mark, usage, shutdown. Every request has an id
//!   and several may be in flight, so a cancel reaches a running exec.
//! - [`client::AgentClient`] (feature `tokio`): a connection with many requests in
//!   flight, replies routed by id.
//! - [`hybrid`]: connecting to a guest port through Firecracker's (and
//!   `vhost-device-vsock`'s) hybrid vsock Unix socket.
//!
//! The wire format is documented in `docs/vm-protocol.md`.

#[cfg(feature = "tokio")]
pub mod client;
pub mod frame;
pub mod handshake;
pub mod hybrid;
mod messages;
#[cfg(feature = "tokio")]
pub mod nonblocking;

pub use frame::{read_frame, write_frame, Frame, FrameError};
pub use handshake::{agent_handshake, hello, host_handshake, HandshakeError};
pub use hybrid::HybridError;
pub use messages::*;

/// The version both sides must speak. Bump it on any change an older peer would
/// misread (a changed message or frame format); a new request is not one, since an
/// agent that predates it answers `invalid_request`. The handshake's [`Hello`] never
/// changes.
pub const PROTOCOL_VERSION: u32 = 1;

/// The vsock port the guest agent listens on (any CID).
pub const AGENT_PORT: u32 = 1024;

/// The guest CID the backends give the VM (vsock CIDs 0–2 are reserved).
pub const DEFAULT_GUEST_CID: u32 = 3;

/// The directory in the guest that holds the session's work tree.
pub const WORKSPACE: &str = "/workspace";

/// The largest frame either side accepts (length field included in no part of it).
/// File contents travel in one frame, so this is also the largest file.
pub const MAX_FRAME_BYTES: usize = 256 << 20;

/// The `software` string of this crate's users, e.g. `safe-coder-guest-agent 0.1.0`.
pub fn software(name: &str) -> String {
    format!("{name} {}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests;
