//! The backends, one module each with the same files (`mod.rs`, `probe.rs`, `limits.rs`,
//! `status.rs`), and the two dispatchers over them: [`open`] (behind
//! [`crate::open`]) and [`probe`] (behind `select`).
//!
//! `docker` is accepted by the settings but not built yet: its probe says so (with the
//! facts of this machine that it will need), and opening it is
//! [`SandboxError::Unavailable`] with that sentence. `firecracker` and `qemu` share the
//! `vm` module: everything but the VMM.

use std::sync::Arc;

use crate::select::BackendProbe;
use crate::{BackendKind, Sandbox, SandboxError, SandboxSpec, VmSpec};

mod copy;
mod direct;
mod not_built;
pub mod process;
pub mod vm;

pub(crate) fn open(kind: BackendKind, spec: SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError> {
    match kind {
        BackendKind::Direct => direct::open(spec),
        BackendKind::Copy => copy::open(spec),
        BackendKind::Process => process::open(spec),
        BackendKind::Firecracker | BackendKind::Qemu => vm::open(kind, spec),
        BackendKind::Docker => Err(SandboxError::Unavailable(not_built::probe(kind).reason)),
    }
}

pub(crate) fn probe(kind: BackendKind, vm: &VmSpec) -> BackendProbe {
    match kind {
        BackendKind::Direct => direct::probe(),
        BackendKind::Copy => copy::probe(),
        BackendKind::Process => process::probe::probe(),
        BackendKind::Firecracker => vm::probe::probe_firecracker(vm),
        BackendKind::Qemu => vm::probe::probe_qemu(vm),
        BackendKind::Docker => not_built::probe(kind),
    }
}
