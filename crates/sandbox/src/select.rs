//! Backend selection: what each backend needs and whether this machine has it (`probe`),
//! the `auto` choice (the strongest that works here, DESIGN §4), and the report of
//! `safe-coder sandbox doctor`.
//!
//! Probes are cheap: file and `PATH` checks, plus one cached bwrap run for `process`.

use std::path::{Path, PathBuf};

use crate::{BackendKind, SandboxError};

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

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn kvm_fact() -> String {
    let kvm = Path::new("/dev/kvm");
    if !kvm.exists() {
        return "/dev/kvm is absent".into();
    }
    let writable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm)
        .is_ok();
    if writable {
        "/dev/kvm is present and usable".into()
    } else {
        "/dev/kvm is present but not accessible to this user".into()
    }
}

fn binary_fact(name: &str) -> String {
    match which(name) {
        Some(p) => format!("{name} is at {}", p.display()),
        None => format!("{name} is not installed"),
    }
}

fn docker_fact() -> String {
    let mut facts = Vec::new();
    facts.push(binary_fact("docker"));
    if which("podman").is_some() {
        facts.push(binary_fact("podman"));
    }
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
    if socket.exists() {
        facts.push(format!("the engine socket {} exists", socket.display()));
    } else {
        facts.push(format!("no engine socket at {}", socket.display()));
    }
    facts.join(", ")
}

/// Whether `kind` works on this machine. Fast: the only costly check (running bwrap
/// once for `process`) is cached for the life of the process.
pub fn probe(kind: BackendKind) -> BackendProbe {
    let (available, reason) = match kind {
        BackendKind::Firecracker => (
            false,
            format!(
                "the firecracker backend is not available in this build ({}, {})",
                kvm_fact(),
                binary_fact("firecracker")
            ),
        ),
        BackendKind::Qemu => (
            false,
            format!(
                "the qemu backend is not available in this build ({}, {})",
                kvm_fact(),
                binary_fact("qemu-system-x86_64")
            ),
        ),
        BackendKind::Docker => (
            false,
            format!(
                "the docker backend is not available in this build ({})",
                docker_fact()
            ),
        ),
        BackendKind::Process => match crate::process::probe() {
            Ok(reason) => (true, reason),
            Err(reason) => (false, reason),
        },
        BackendKind::Copy => (
            true,
            "a sandbox copy without OS isolation: commands run on the host with the user's rights"
                .into(),
        ),
        BackendKind::Direct => (
            true,
            "no isolation: the agent works in the project itself (auto never chooses it)".into(),
        ),
    };
    BackendProbe {
        kind,
        available,
        reason,
    }
}

/// Every backend in `auto` order.
pub fn probe_all() -> Vec<BackendProbe> {
    AUTO_ORDER.iter().map(|&k| probe(k)).collect()
}

/// The backend to use: `requested`, or with `None` (`auto`) the strongest available one.
/// The note says what was chosen and why stronger backends were passed over. A requested
/// backend that cannot run here is [`SandboxError::Unavailable`] with the reason.
pub fn choose(requested: Option<BackendKind>) -> Result<(BackendKind, String), SandboxError> {
    if let Some(kind) = requested {
        let p = probe(kind);
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
        let p = probe(kind);
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
    let mut out = String::new();
    for p in probe_all() {
        out.push_str(&format!(
            "{} {:<12} {}\n",
            if p.available { "✓" } else { "✗" },
            p.kind.as_str(),
            p.reason
        ));
    }
    match choose(None) {
        Ok((kind, _)) => out.push_str(&format!("auto → {}\n", kind.as_str())),
        Err(e) => out.push_str(&format!("auto → none: {e}\n")),
    }
    out
}
