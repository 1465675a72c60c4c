//! The backends, one module each with the same files (`mod.rs`, `probe.rs`, `limits.rs`,
//! `status.rs`), and the two dispatchers over them: [`open`] (behind
//! [`crate::open`]) and [`probe`] (behind `select`).
//!
//! `firecracker` and `qemu` share the `vm` module: everything but the VMM.

use std::sync::Arc;

use crate::select::{BackendProbe, BackendSettings};
use crate::{BackendKind, Sandbox, SandboxError, SandboxSpec};

mod copy;
mod direct;
pub mod docker;
pub mod process;
pub mod vm;

pub(crate) fn open(kind: BackendKind, spec: SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError> {
    match kind {
        BackendKind::Direct => direct::open(spec),
        BackendKind::Copy => copy::open(spec),
        BackendKind::Process => process::open(spec),
        BackendKind::Firecracker | BackendKind::Qemu => vm::open(kind, spec),
        BackendKind::Docker => docker::open(spec),
    }
}

pub(crate) fn probe(kind: BackendKind, settings: &BackendSettings) -> BackendProbe {
    match kind {
        BackendKind::Direct => direct::probe(),
        BackendKind::Copy => copy::probe(),
        BackendKind::Process => process::probe::probe(&settings.vm.data_dir),
        BackendKind::Firecracker => vm::probe::probe_firecracker(&settings.vm),
        BackendKind::Qemu => vm::probe::probe_qemu(&settings.vm),
        BackendKind::Docker => docker::probe::probe(&settings.docker),
    }
}
