//! Backend selection: what each backend needs and whether this machine has it (`probe`),
//! the `auto` choice (the strongest that works here), and the report of
//! `safe-coder sandbox doctor`.
//!
//! Each backend's own `probe.rs` answers; probes are cheap: file and `PATH` checks, plus
//! one cached bwrap run (and one in-process trial) for `process`.

use crate::{BackendKind, SandboxError, VmSpec};

/// Whether one backend can run here, and why (or why not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendProbe {
    pub kind: BackendKind,
    pub available: bool,
    pub reason: String,
}

/// Every backend, strongest isolation first: the order `auto` tries them in (`direct`
/// is last and never chosen by `auto`).
pub const AUTO_ORDER: [BackendKind; 6] = [
    BackendKind::Firecracker,
    BackendKind::Qemu,
    BackendKind::Docker,
    BackendKind::Process,
    BackendKind::Copy,
    BackendKind::Direct,
];

/// Whether `kind` works on this machine, with the default `[vm]` settings. Fast: the
/// costly checks (running bwrap once for `process`; booting the guest image once under
/// KVM for the VM backends) are cached, for the life of the process or in the data dir.
pub fn probe(kind: BackendKind) -> BackendProbe {
    probe_with(kind, &VmSpec::default())
}

/// [`probe`] with the `[vm]` settings in force (image, binaries, acceleration).
pub fn probe_with(kind: BackendKind, vm: &VmSpec) -> BackendProbe {
    crate::backends::probe(kind, vm)
}

/// Every backend in `auto` order.
pub fn probe_all() -> Vec<BackendProbe> {
    probe_all_with(&VmSpec::default())
}

/// [`probe_all`] with the `[vm]` settings in force.
pub fn probe_all_with(vm: &VmSpec) -> Vec<BackendProbe> {
    AUTO_ORDER.iter().map(|&k| probe_with(k, vm)).collect()
}

/// The backend to use: `requested`, or with `None` (`auto`) the strongest available one.
/// The note says what was chosen and why stronger backends were passed over. A requested
/// backend that cannot run here is [`SandboxError::Unavailable`] with the reason.
pub fn choose(requested: Option<BackendKind>) -> Result<(BackendKind, String), SandboxError> {
    choose_with(requested, &VmSpec::default())
}

/// [`choose`] with the `[vm]` settings in force. `auto` passes over `qemu` when it could
/// only emulate the CPU (TCG): asked for by name, `qemu` runs under TCG.
pub fn choose_with(
    requested: Option<BackendKind>,
    vm: &VmSpec,
) -> Result<(BackendKind, String), SandboxError> {
    if let Some(kind) = requested {
        let p = probe_with(kind, vm);
        return if p.available {
            Ok((
                kind,
                format!("using the {} backend: {}", kind.as_str(), p.reason),
            ))
        } else {
            Err(SandboxError::Unavailable(format!(
                "the {} backend cannot run here: {}",
                kind.as_str(),
                p.reason
            )))
        };
    }
    let mut passed = Vec::new();
    for kind in AUTO_ORDER {
        if kind == BackendKind::Direct {
            break;
        }
        let p = if kind == BackendKind::Qemu {
            crate::backends::vm::probe::probe_qemu_for_auto(vm)
        } else {
            probe_with(kind, vm)
        };
        if p.available {
            let mut note = format!("auto chose {}: {}", kind.as_str(), p.reason);
            if !passed.is_empty() {
                note.push_str("; passed over ");
                note.push_str(&passed.join("; "));
            }
            return Ok((kind, note));
        }
        passed.push(format!("{} ({})", kind.as_str(), p.reason));
    }
    Err(SandboxError::Unavailable(format!(
        "no sandboxed backend works here: {}",
        passed.join("; ")
    )))
}

/// What `safe-coder sandbox doctor` prints: one line per backend (✓ or ✗, the name,
/// the reason) and then what `auto` would choose.
pub fn doctor_report() -> String {
    doctor_report_with(&VmSpec::default())
}

/// [`doctor_report`] with the `[vm]` settings in force.
pub fn doctor_report_with(vm: &VmSpec) -> String {
    let mut out = String::new();
    for p in probe_all_with(vm) {
        out.push_str(&format!(
            "{} {:<12} {}\n",
            if p.available { "✓" } else { "✗" },
            p.kind.as_str(),
            p.reason
        ));
    }
    match choose_with(None, vm) {
        Ok((kind, _)) => out.push_str(&format!("auto → {}\n", kind.as_str())),
        Err(e) => out.push_str(&format!("auto → none: {e}\n")),
    }
    out.push_str(&workspace_line(&std::env::temp_dir()));
    out
}

/// The doctor's line on the workspace of `copy` and `process` sessions: the overlay
/// (tried here, under `scratch`) or, saying why not, the copy it falls back to.
pub fn workspace_line(scratch: &std::path::Path) -> String {
    if crate::overlay::forced_copy() {
        return "workspace: copy (SAFE_CODER_WORKSPACE=copy)\n".to_string();
    }
    match crate::overlay::overlay_probe(scratch) {
        Ok(()) => "workspace: overlay (the project read-only below, the session's writes above; nothing copied)\n".to_string(),
        Err(e) => format!("workspace: copy, with reflinks where the filesystem has them ({e})\n"),
    }
}
