//! The handshake: the host sends a [`Hello`] (frame id 0), the agent answers with its
//! own [`Hello`] whatever the host's version, and each side checks the other's version.
//! An agent that meets another version closes the connection after its hello, so the
//! host always learns both versions and can say which side to rebuild.

use std::io::{Read, Write};

use crate::frame::{read_frame, write_frame, FrameError};
use crate::{Hello, PROTOCOL_VERSION};

/// Errors of the handshake.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the guest agent closed the connection before saying hello; it is not running or is not a safe-coder agent")]
    Closed,
    #[error("the first frame was not a hello (id {0}); the peer does not speak the safe-coder VM protocol")]
    NotHello(u64),
    #[error("the guest agent speaks VM protocol version {agent} ({agent_software}) but the host speaks version {host} ({host_software}); rebuild the VM image with `safe-coder sandbox image build` so both match")]
    VersionMismatch {
        host: u32,
        host_software: String,
        agent: u32,
        agent_software: String,
    },
}

/// This side's hello.
pub fn hello(software: &str) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        software: software.to_string(),
    }
}

pub(crate) fn check_agent(host: &Hello, agent: Hello) -> Result<Hello, HandshakeError> {
    if agent.protocol != host.protocol {
        return Err(HandshakeError::VersionMismatch {
            host: host.protocol,
            host_software: host.software.clone(),
            agent: agent.protocol,
            agent_software: agent.software,
        });
    }
    Ok(agent)
}

pub(crate) fn check_host(agent: &Hello, host: Hello) -> Result<Hello, HandshakeError> {
    if agent.protocol != host.protocol {
        return Err(HandshakeError::VersionMismatch {
            host: host.protocol,
            host_software: host.software,
            agent: agent.protocol,
            agent_software: agent.software.clone(),
        });
    }
    Ok(host)
}

pub(crate) fn expect_hello(
    frame: Option<crate::frame::Frame<Hello>>,
) -> Result<Hello, HandshakeError> {
    match frame {
        None => Err(HandshakeError::Closed),
        Some(f) if f.id != 0 => Err(HandshakeError::NotHello(f.id)),
        Some(f) => Ok(f.body),
    }
}

/// The host's side: sends `ours`, returns the agent's hello when the versions match.
pub fn host_handshake<S: Read + Write>(s: &mut S, ours: &Hello) -> Result<Hello, HandshakeError> {
    write_frame(s, 0, ours, &[])?;
    let agent = expect_hello(read_frame::<_, Hello>(s)?)?;
    check_agent(ours, agent)
}

/// The agent's side: reads the host's hello, always answers with `ours`, then returns
/// the host's hello when the versions match (on a mismatch the caller closes).
pub fn agent_handshake<S: Read + Write>(s: &mut S, ours: &Hello) -> Result<Hello, HandshakeError> {
    let host = expect_hello(read_frame::<_, Hello>(s)?)?;
    write_frame(s, 0, ours, &[])?;
    check_host(ours, host)
}
