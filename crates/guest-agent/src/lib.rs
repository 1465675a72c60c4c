//! The guest agent of the microVM backends: inside the VM it is the init (or started by
//! it) and serves the VM protocol (`safe-coder-vm-protocol`, docs/vm-protocol.md) on
//! vsock. The same server runs on a Unix socket or TCP loopback on the host, which is how
//! its tests run without a VM.
//!
//! No tokio: plain threads, one per connection and per request, and one reaper thread
//! that is the only `waitpid` (the agent is PID 1 in the guest).

pub mod changes;
pub mod exec;
pub mod files;
pub mod init;
pub mod interactive;
pub mod listen;
pub mod net_forward;
pub mod reaper;
pub mod server;
pub mod usage;

/// The name the agent gives in its hello.
pub const SOFTWARE_NAME: &str = "safe-coder-guest-agent";
