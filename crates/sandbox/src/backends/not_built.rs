//! The probe of the backends that are planned but not built yet (firecracker, qemu,
//! docker). It says so honestly, with the facts of this machine they will need, so
//! `sandbox doctor` already tells the user what is missing.

use std::path::{Path, PathBuf};

use crate::select::BackendProbe;
use crate::BackendKind;

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
    let mut facts = vec![binary_fact("docker")];
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

/// Always unavailable, with the reason.
pub(crate) fn probe(kind: BackendKind) -> BackendProbe {
    let facts = match kind {
        BackendKind::Firecracker => format!("{}, {}", kvm_fact(), binary_fact("firecracker")),
        BackendKind::Qemu => format!("{}, {}", kvm_fact(), binary_fact("qemu-system-x86_64")),
        _ => docker_fact(),
    };
    BackendProbe {
        kind,
        available: false,
        reason: format!(
            "the {} backend is not built yet in this version of Safe Coder ({facts}); use the process backend, or auto",
            kind.as_str()
        ),
    }
}
