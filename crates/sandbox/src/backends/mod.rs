//! The backends, one module each with the same files (`mod.rs`, `probe.rs`, `limits.rs`,
//! `status.rs`), and the two dispatchers over them: [`open`] (behind
//! [`crate::open`]) and [`probe`] (behind `select`).
//!
//! `firecracker` and `qemu` are accepted by the settings but not built yet:
//! their probe says so (with the facts of this machine that they will need), and
//! opening them is [`SandboxError::Unavailable`] with that sentence.

use std::sync::Arc;

use crate::select::BackendProbe;
use crate::{BackendKind, Sandbox, SandboxError, SandboxSpec};

mod copy;
mod direct;
pub mod docker;
mod not_built;
pub mod process;

pub(crate) fn open(kind: BackendKind, spec: SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError> {
    match kind {
        BackendKind::Direct => direct::open(spec),
        BackendKind::Copy => copy::open(spec),
        BackendKind::Process => process::open(spec),
        BackendKind::Docker => docker::open(spec),
        BackendKind::Firecracker | BackendKind::Qemu => {
            Err(SandboxError::Unavailable(not_built::probe(kind).reason))
        }
    }
}

pub(crate) fn probe(kind: BackendKind, docker_spec: &crate::DockerSpec) -> BackendProbe {
    match kind {
        BackendKind::Direct => direct::probe(),
        BackendKind::Copy => copy::probe(),
        BackendKind::Process => process::probe::probe(),
        BackendKind::Docker => docker::probe::probe(docker_spec),
        BackendKind::Firecracker | BackendKind::Qemu => not_built::probe(kind),
    }
}
