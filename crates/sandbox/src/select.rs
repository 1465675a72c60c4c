//! Backend selection: what each backend needs and whether this machine has it (`probe`),
//! the `auto` choice (the strongest that works here), and the report of
//! `safe-coder sandbox doctor`.
//!
//! Each backend's own `probe.rs` answers; probes are cheap: file and `PATH` checks, plus
//! one cached bwrap run (and one in-process trial) for `process`.

use crate::{BackendKind, DockerSpec, SandboxError};

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

/// Whether `kind` works on this machine. Fast: the only costly check (running bwrap
/// once for `process`) is cached for the life of the process; `docker` asks the engine
/// on its socket (a few milliseconds). With the default `[docker]` settings; see
/// [`probe_with`].
pub fn probe(kind: BackendKind) -> BackendProbe {
    probe_with(kind, &DockerSpec::default())
}

/// [`probe`] with the user's `[docker]` settings (engine socket, runtime, image).
pub fn probe_with(kind: BackendKind, docker: &DockerSpec) -> BackendProbe {
    crate::backends::probe(kind, docker)
}

/// Every backend in `auto` order.
pub fn probe_all() -> Vec<BackendProbe> {
    probe_all_with(&DockerSpec::default())
}

fn probe_all_with(docker: &DockerSpec) -> Vec<BackendProbe> {
    AUTO_ORDER.iter().map(|&k| probe_with(k, docker)).collect()
}

/// The backend to use: `requested`, or with `None` (`auto`) the strongest available one.
/// The note says what was chosen and why stronger backends were passed over. A requested
/// backend that cannot run here is [`SandboxError::Unavailable`] with the reason.
pub fn choose(requested: Option<BackendKind>) -> Result<(BackendKind, String), SandboxError> {
    choose_with(requested, &DockerSpec::default())
}

/// [`choose`] with the user's `[docker]` settings. `auto` takes docker after the
/// microVM backends (a container shares the host kernel; a VM does not) and before
/// `process` (the container adds its own root filesystem, cgroup limits and, with
/// gVisor, a kernel in user space); its reason names the engine and runtime.
pub fn choose_with(
    requested: Option<BackendKind>,
    docker: &DockerSpec,
) -> Result<(BackendKind, String), SandboxError> {
    if let Some(kind) = requested {
        let p = probe_with(kind, docker);
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
        let p = probe_with(kind, docker);
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
    doctor_report_with(&DockerSpec::default())
}

/// [`doctor_report`] with the user's `[docker]` settings.
pub fn doctor_report_with(docker: &DockerSpec) -> String {
    let mut out = String::new();
    for p in probe_all_with(docker) {
        out.push_str(&format!(
            "{} {:<12} {}\n",
            if p.available { "✓" } else { "✗" },
            p.kind.as_str(),
            p.reason
        ));
    }
    match choose_with(None, docker) {
        Ok((kind, _)) => out.push_str(&format!("auto → {}\n", kind.as_str())),
        Err(e) => out.push_str(&format!("auto → none: {e}\n")),
    }
    out
}
