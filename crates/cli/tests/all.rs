//! End-to-end tests of the real `safe-coder` binary against the in-repo mock model
//! servers, real git and real sandboxes. One test binary, as codex-rs does.

mod common;
mod suite;
