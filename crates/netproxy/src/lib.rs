//! The network allow-list of `safe-coder run` (docs/run.md).
//!
//! A sandboxed command has no network but its own loopback. To let it reach a few named
//! hosts, Safe Coder runs a small HTTP proxy **outside** the sandbox ([`Proxy`]) on a
//! Unix socket that is bound into the sandbox, and a [`forward`]er **inside** it listens
//! on the sandbox's loopback and carries each TCP connection to that socket. The
//! command gets `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` pointing at the forwarder.
//!
//! The proxy understands `CONNECT host:port` (HTTPS, or any TCP stream) and plain HTTP
//! requests in absolute form (`GET http://host:port/path`). A destination that is not on
//! the [`AllowList`] is answered `403 Forbidden` and reported as a [`Refusal`]; an
//! allowed one is connected from the host and the bytes are copied both ways. Names are
//! matched as the client gave them (the proxy resolves them), so a client cannot reach an
//! address by a name that is not listed.
//!
//! Where the sandbox cannot see a host Unix socket (a container, a microVM), the
//! connections travel over one byte stream instead: [`mux`] multiplexes them over, say,
//! the stdin/stdout of `safe-coder-guest-agent net-forward` run inside, and the host
//! side carries each to the proxy's socket.
//!
//! Features: `host` (default) is the proxy and the host side of [`mux`], on tokio; without
//! it only the std-only parts remain ([`forward`], the guest side of [`mux`]), which is
//! what the static guest agent links.

pub mod forward;
pub mod mux;
#[cfg(feature = "host")]
mod proxy;

#[cfg(feature = "host")]
pub use proxy::*;
