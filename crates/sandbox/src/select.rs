//! Backend selection: what each backend needs and whether this machine has it (`probe`),
//! the `auto` choice (the strongest that works here), and the report of
//! `safe-coder sandbox doctor`.
//!
//! Each backend's own `probe.rs` answers; probes are cheap: file and `PATH` checks, plus
//! one cached bwrap run (and one in-process trial) for `process`.

use crate::{BackendKind, DockerSpec, SandboxError, VmSpec};

/// The user's settings that decide whether a backend can run here: the `[vm]` image,
/// binaries and acceleration, and the `[docker]` engine, runtime and image.
#[derive(Clone, Debug, Default)]
pub struct BackendSettings {
    pub vm: VmSpec,
    pub docker: DockerSpec,
}

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

/// Whether `kind` works on this machine, with the default settings. Fast: the costly
/// checks (running bwrap once for `process`; booting the guest image once under KVM for
/// the VM backends) are cached, for the life of the process or in the data dir; `docker`
/// asks the engine on its socket (a few milliseconds).
pub fn probe(kind: BackendKind) -> BackendProbe {
    probe_with(kind, &BackendSettings::default())
}

/// [`probe`] with the user's `[vm]` and `[docker]` settings.
pub fn probe_with(kind: BackendKind, settings: &BackendSettings) -> BackendProbe {
    crate::backends::probe(kind, settings)
}

/// Every backend in `auto` order.
pub fn probe_all() -> Vec<BackendProbe> {
    probe_all_with(&BackendSettings::default())
}

/// [`probe_all`] with the user's `[vm]` and `[docker]` settings.
pub fn probe_all_with(settings: &BackendSettings) -> Vec<BackendProbe> {
    AUTO_ORDER
        .iter()
        .map(|&k| probe_with(k, settings))
        .collect()
}

/// The backend to use: `requested`, or with `None` (`auto`) the strongest available one.
/// The note says what was chosen and why stronger backends were passed over. A requested
/// backend that cannot run here is [`SandboxError::Unavailable`] with the reason.
pub fn choose(requested: Option<BackendKind>) -> Result<(BackendKind, String), SandboxError> {
    choose_with(requested, &BackendSettings::default())
}

/// [`choose`] with the user's `[vm]` and `[docker]` settings. `auto` passes over `qemu`
/// when it could only emulate the CPU (TCG): asked for by name, `qemu` runs under TCG.
/// `auto` takes docker after the microVM backends (a container shares the host kernel;
/// a VM does not) and before `process` (the container adds its own root filesystem,
/// cgroup limits and, with gVisor, a kernel in user space).
pub fn choose_with(
    requested: Option<BackendKind>,
    settings: &BackendSettings,
) -> Result<(BackendKind, String), SandboxError> {
    if let Some(kind) = requested {
        let p = probe_with(kind, settings);
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
            crate::backends::vm::probe::probe_qemu_for_auto(&settings.vm)
        } else {
            probe_with(kind, settings)
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
    doctor_report_with(&BackendSettings::default())
}

/// [`doctor_report`] with the user's `[vm]` and `[docker]` settings.
pub fn doctor_report_with(settings: &BackendSettings) -> String {
    let mut out = String::new();
    for p in probe_all_with(settings) {
        out.push_str(&format!(
            "{} {:<12} {}\n",
            if p.available { "✓" } else { "✗" },
            p.kind.as_str(),
            p.reason
        ));
    }
    match choose_with(None, settings) {
        Ok((kind, _)) => out.push_str(&format!("auto → {}\n", kind.as_str())),
        Err(e) => out.push_str(&format!("auto → none: {e}\n")),
    }
    out.push_str(&workspace_line(&std::env::temp_dir()));
    out.push_str(&crate::backends::vm::share::doctor_line(&settings.vm));
    out.push_str(&crate::backends::docker::share::doctor_line(
        &settings.docker,
    ));
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
