//! What `sandbox doctor` and `auto` ask of the microVM backends, and the KVM verdict.
//!
//! Each probe names exactly what is missing: the VMM binary, `vhost-device-vsock`,
//! `/dev/kvm` (or access to it), the guest image (with the command that builds it), or
//! a KVM that cannot run a standard guest.
//!
//! **The KVM verdict.** `/dev/kvm` can exist and open fine and still fail: a nested,
//! paravirtual KVM may start a VM and then stop it with an emulation failure
//! (`KVM_EXIT_INTERNAL_ERROR` on `cmpxchg16b`/`xrstor`) seconds to minutes in. So
//! whether KVM works is decided by booting the real guest image under KVM with a
//! deadline and running a load that switches FPU state between processes, and the
//! verdict is cached in `<data_dir>/vm/kvm-verdict.json` per host kernel, CPU, QEMU and
//! image. A VM that hits the failure later still ends cleanly (the QEMU log is watched)
//! and records the verdict, so the next session does not try again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::agent_client::{AgentClient, Endpoint};
use super::image::{image_dir, GuestImage};
use super::qemu::{self, QemuLaunch, QemuProcess};
use crate::select::BackendProbe;
use crate::{Accel, BackendKind, CancellationToken, VmSpec};

/// How long the KVM trial may take in all (boot, then the load).
const TRIAL_BOOT: Duration = Duration::from_secs(30);
const TRIAL_LOAD: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KvmAccess {
    Absent,
    NoAccess,
    Usable,
}

pub(crate) fn kvm_access() -> KvmAccess {
    let kvm = Path::new("/dev/kvm");
    if !kvm.exists() {
        return KvmAccess::Absent;
    }
    match std::fs::OpenOptions::new().read(true).write(true).open(kvm) {
        Ok(_) => KvmAccess::Usable,
        Err(_) => KvmAccess::NoAccess,
    }
}

fn kvm_access_reason(a: KvmAccess) -> &'static str {
    match a {
        KvmAccess::Absent => "/dev/kvm is absent (no hardware virtualisation here)",
        KvmAccess::NoAccess => {
            "/dev/kvm is not accessible to this user (add the user to the `kvm` group)"
        }
        KvmAccess::Usable => "/dev/kvm is usable",
    }
}

/// Whether KVM runs a standard guest here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KvmVerdict {
    Works,
    Broken(String),
}

fn verdict_file(vm: &VmSpec) -> PathBuf {
    image_dir(vm).join("kvm-verdict.json")
}

fn read_first_line(path: &str, prefix: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(prefix))
                .map(|l| l.to_string())
        })
        .unwrap_or_default()
}

/// What the verdict depends on.
fn verdict_key(qemu: &Path, image: &GuestImage) -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = read_first_line("/proc/cpuinfo", "model name");
    format!(
        "{}|{}|{}|{}",
        release.trim(),
        cpu,
        qemu.display(),
        image.fingerprint()
    )
}

fn cached_verdict(vm: &VmSpec, key: &str) -> Option<KvmVerdict> {
    let text = std::fs::read_to_string(verdict_file(vm)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    if v.get("key")?.as_str()? != key {
        return None;
    }
    Some(if v.get("works")?.as_bool()? {
        KvmVerdict::Works
    } else {
        KvmVerdict::Broken(v.get("reason")?.as_str()?.to_string())
    })
}

fn store_verdict(vm: &VmSpec, key: &str, verdict: &KvmVerdict) {
    let (works, reason) = match verdict {
        KvmVerdict::Works => (true, String::new()),
        KvmVerdict::Broken(r) => (false, r.clone()),
    };
    let file = verdict_file(vm);
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = file.with_extension("json.tmp");
    let body = json!({"key": key, "works": works, "reason": reason});
    if std::fs::write(&tmp, body.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, &file);
    }
}

/// Records that KVM failed inside a running guest (seen by a session, not the trial).
pub(crate) fn record_kvm_failure(vm: &VmSpec, image: &GuestImage, reason: &str) {
    if let Some(q) = qemu::find_qemu() {
        store_verdict(
            vm,
            &verdict_key(&q, image),
            &KvmVerdict::Broken(reason.to_string()),
        );
    }
}

/// The cached verdict, or a trial boot now (at most ~50 s, once per machine and image).
pub(crate) fn kvm_verdict(vm: &VmSpec, image: &GuestImage) -> KvmVerdict {
    let access = kvm_access();
    if access != KvmAccess::Usable {
        return KvmVerdict::Broken(kvm_access_reason(access).to_string());
    }
    let Some(q) = qemu::find_qemu() else {
        return KvmVerdict::Broken(
            "KVM could not be tried: qemu-system-x86_64 is not installed".into(),
        );
    };
    let vhost = qemu::find_vhost_vsock(vm);
    if vhost.is_none() && !image.has_feature("serial-agent") {
        return KvmVerdict::Broken(
            "KVM could not be tried: vhost-device-vsock is not installed".into(),
        );
    }
    let key = verdict_key(&q, image);
    if let Some(v) = cached_verdict(vm, &key) {
        return v;
    }
    let verdict = match trial(vm, image, &q, vhost.as_deref()) {
        Ok(()) => KvmVerdict::Works,
        Err(e) => KvmVerdict::Broken(e),
    };
    store_verdict(vm, &key, &verdict);
    verdict
}

/// Boots the image under KVM and runs a load that context-switches FPU state.
fn trial(vm: &VmSpec, image: &GuestImage, q: &Path, vhost: Option<&Path>) -> Result<(), String> {
    let dir = super::runtime_dir(&format!("kvm-{}", super::new_id()))
        .map_err(|e| format!("cannot create a directory for the KVM trial: {e}"))?;
    let result = trial_in(vm, image, q, vhost, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn trial_in(
    vm: &VmSpec,
    image: &GuestImage,
    q: &Path,
    vhost: Option<&Path>,
    dir: &Path,
) -> Result<(), String> {
    // The serial port where the image's agent serves one (no vhost-device-vsock needed).
    let transport = if image.has_feature("serial-agent") {
        qemu::Transport::Serial
    } else {
        qemu::Transport::Vsock
    };
    let launch = QemuLaunch {
        qemu: q,
        image,
        memory_mb: vm.memory_mb,
        vcpus: vm.vcpus,
        kvm: true,
        dir,
        network: false,
        incoming: None,
        transport,
        share: None,
    };
    let proc = Arc::new(QemuProcess::start(&launch, vhost)?);
    let endpoint = match transport {
        qemu::Transport::Serial => Endpoint::Serial(proc.paths.serial.clone()),
        qemu::Transport::Vsock => Endpoint::HybridVsock(proc.paths.vsock.clone()),
    };
    let p = proc.clone();
    let result = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let (client, _conn) = AgentClient::connect_when_ready(&endpoint, TRIAL_BOOT, true, || p.alive())
                .await
                .map_err(|e| match e.split_once(": this machine's KVM") {
                    // QEMU's own words are the reason; the advice is the probe's.
                    Some((failure, _)) => failure.to_string(),
                    None => format!("the guest was not ready within {} s under KVM: {e}", TRIAL_BOOT.as_secs()),
                })?;
            let load = "for i in 1 2 3 4 5 6 7 8; do (head -c 4000000 /dev/urandom | sha256sum | gzip -c > /dev/null) & done; wait; echo kvm-ok";
            let mut req = safe_coder_vm_protocol::ExecRequest::shell(load, super::guest_env(&[]));
            req.timeout_ms = Some(TRIAL_LOAD.as_millis() as u64);
            let started = Instant::now();
            let run = tokio::time::timeout(
                TRIAL_LOAD + Duration::from_secs(5),
                client.exec(req, 4096, &CancellationToken::new()),
            )
            .await;
            p.alive()?;
            match run {
                Ok(Ok(r)) if String::from_utf8_lossy(&r.output).contains("kvm-ok") => Ok(()),
                Ok(Ok(r)) => Err(format!(
                    "a load under KVM did not finish ({:?} after {:.1} s)",
                    r.exit,
                    started.elapsed().as_secs_f64()
                )),
                Ok(Err(e)) => Err(format!("a load under KVM failed: {e}")),
                Err(_) => Err("a load under KVM hung".into()),
            }
        })
    })
    .join()
    .map_err(|_| "the KVM trial panicked".to_string())?;
    proc.qemu.kill();
    if let Some(v) = &proc.vhost {
        v.kill();
    }
    result.map_err(|e| format!("KVM here cannot run a standard guest ({e})"))
}

/// Whether QEMU runs the guest under KVM (`true`) or TCG, as `[vm] accel` and the
/// verdict say; an error when `accel = "kvm"` is impossible here.
pub(crate) fn decide_accel(vm: &VmSpec, image: &GuestImage) -> Result<bool, String> {
    match vm.accel {
        Accel::Tcg => Ok(false),
        Accel::Kvm => match kvm_access() {
            KvmAccess::Usable => Ok(true),
            a => Err(format!(
                "[vm] accel = \"kvm\" but {}; set accel = \"auto\" or \"tcg\"",
                kvm_access_reason(a)
            )),
        },
        Accel::Auto => Ok(kvm_verdict(vm, image) == KvmVerdict::Works),
    }
}

/// [`decide_accel`] without a trial: `Some(kvm)` where it is known already (the
/// setting, no usable `/dev/kvm`, or a cached verdict), `None` while KVM is untried.
pub(crate) fn known_accel(vm: &VmSpec, image: &GuestImage) -> Option<bool> {
    match vm.accel {
        Accel::Tcg => Some(false),
        Accel::Kvm => Some(kvm_access() == KvmAccess::Usable),
        Accel::Auto if kvm_access() != KvmAccess::Usable => Some(false),
        Accel::Auto => {
            let q = qemu::find_qemu()?;
            cached_verdict(vm, &verdict_key(&q, image)).map(|v| v == KvmVerdict::Works)
        }
    }
}

fn unavailable(kind: BackendKind, reason: String) -> BackendProbe {
    BackendProbe {
        kind,
        available: false,
        reason,
    }
}

/// The checks both VMMs share after their binary: the image, and vhost-device-vsock
/// for QEMU.
fn common(kind: BackendKind, vm: &VmSpec) -> Result<GuestImage, BackendProbe> {
    GuestImage::locate(vm).map_err(|e| unavailable(kind, e))
}

/// `qemu` as asked for by name: KVM where it works, TCG otherwise.
pub fn probe_qemu(vm: &VmSpec) -> BackendProbe {
    probe_qemu_inner(vm, false)
}

/// `qemu` as `auto` sees it: only with a working KVM (auto never picks emulation).
pub fn probe_qemu_for_auto(vm: &VmSpec) -> BackendProbe {
    probe_qemu_inner(vm, true)
}

fn probe_qemu_inner(vm: &VmSpec, need_kvm: bool) -> BackendProbe {
    let kind = BackendKind::Qemu;
    let Some(q) = qemu::find_qemu() else {
        return unavailable(
            kind,
            "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into(),
        );
    };
    let image = match common(kind, vm) {
        Ok(i) => i,
        Err(p) => return p,
    };
    // Only a VM booted with vsock needs it (snapshot mode talks over a serial port).
    if !super::snapshot::snapshot_mode(vm, &image) && qemu::find_vhost_vsock(vm).is_none() {
        return unavailable(
            kind,
            format!(
                "vhost-device-vsock is not installed (needed for the guest's vsock without /dev/vhost-vsock): `cargo install --locked vhost-device-vsock`, or set [vm] vhost_vsock_bin{}",
                vm.vhost_vsock_bin
                    .as_ref()
                    .map(|p| format!(" (now {}, which does not exist)", p.display()))
                    .unwrap_or_default()
            ),
        );
    }
    let limits = super::vm_limits(vm);
    match vm.accel {
        Accel::Tcg if need_kvm => unavailable(
            kind,
            "[vm] accel = \"tcg\": auto does not pick a VM under emulation; ask for --backend qemu".into(),
        ),
        Accel::Tcg => BackendProbe {
            kind,
            available: true,
            reason: format!("{} under TCG (software emulation, as [vm] accel says; slow), {limits}", q.display()),
        },
        Accel::Kvm => match kvm_access() {
            KvmAccess::Usable => BackendProbe {
                kind,
                available: true,
                reason: format!("{} under KVM ([vm] accel = \"kvm\"), {limits}", q.display()),
            },
            a => unavailable(kind, format!("[vm] accel = \"kvm\" but {}", kvm_access_reason(a))),
        },
        Accel::Auto => match kvm_verdict(vm, &image) {
            KvmVerdict::Works => BackendProbe {
                kind,
                available: true,
                reason: format!("{} under KVM, {limits}", q.display()),
            },
            KvmVerdict::Broken(why) if need_kvm => unavailable(
                kind,
                format!("it would run only under emulation (TCG) because {why}; ask for --backend qemu to use it anyway"),
            ),
            KvmVerdict::Broken(why) => BackendProbe {
                kind,
                available: true,
                reason: format!("{} under TCG (software emulation, slow) because {why}, {limits}", q.display()),
            },
        },
    }
}

/// `firecracker`: `[vm] firecracker_bin` or `firecracker` on `PATH`.
pub(crate) fn find_firecracker(vm: &VmSpec) -> Result<PathBuf, String> {
    match &vm.firecracker_bin {
        Some(p) if p.is_file() => Ok(p.clone()),
        Some(p) => Err(format!(
            "[vm] firecracker_bin {} does not exist",
            p.display()
        )),
        None => crate::which::find_executable("firecracker").ok_or_else(|| {
            "firecracker is not installed (not on PATH, no [vm] firecracker_bin); Firecracker's static binaries are on its GitHub releases page".to_string()
        }),
    }
}

pub fn probe_firecracker(vm: &VmSpec) -> BackendProbe {
    let kind = BackendKind::Firecracker;
    let bin = match find_firecracker(vm) {
        Ok(b) => b,
        Err(e) => return unavailable(kind, e),
    };
    let access = kvm_access();
    if access != KvmAccess::Usable {
        return unavailable(
            kind,
            format!("{}; Firecracker needs KVM", kvm_access_reason(access)),
        );
    }
    let image = match common(kind, vm) {
        Ok(i) => i,
        Err(p) => return p,
    };
    let limits = super::vm_limits(vm);
    if vm.accel == Accel::Kvm {
        return BackendProbe {
            kind,
            available: true,
            reason: format!(
                "{} ([vm] accel = \"kvm\": KVM trusted without a trial), {limits}",
                bin.display()
            ),
        };
    }
    match kvm_verdict(vm, &image) {
        KvmVerdict::Works => BackendProbe {
            kind,
            available: true,
            reason: format!(
                "{} on a KVM that runs the guest image, {limits}",
                bin.display()
            ),
        },
        KvmVerdict::Broken(why) => unavailable(kind, why),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> VmSpec {
        VmSpec {
            data_dir: dir.to_path_buf(),
            ..VmSpec::default()
        }
    }

    #[test]
    fn no_image_names_the_build_command_and_a_missing_binary_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut vm = spec(dir.path());
        vm.vhost_vsock_bin = Some(dir.path().join("no-such-vhost"));
        vm.firecracker_bin = Some(dir.path().join("no-such-fc"));
        let fc = probe_firecracker(&vm);
        assert!(!fc.available);
        assert!(
            fc.reason.contains("firecracker_bin") && fc.reason.contains("does not exist"),
            "{}",
            fc.reason
        );
        let q = probe_qemu(&vm);
        assert!(!q.available);
        if qemu::find_qemu().is_some() {
            assert!(
                q.reason.contains(super::super::BUILD_COMMAND),
                "{}",
                q.reason
            );
        }
        // An image without the serial agent needs vhost-device-vsock, which is missing.
        dummy(&vm, "");
        let q = probe_qemu(&vm);
        if qemu::find_qemu().is_some() {
            assert!(
                q.reason.contains("vhost-device-vsock is not installed"),
                "{}",
                q.reason
            );
        }
        std::fs::remove_dir_all(image_dir(&vm)).unwrap();
        // With binaries that exist, the image is what is missing.
        let fake = dir.path().join("bin");
        std::fs::write(&fake, "").unwrap();
        vm.vhost_vsock_bin = Some(fake.clone());
        vm.firecracker_bin = Some(fake);
        let q = probe_qemu(&vm);
        if qemu::find_qemu().is_some() {
            assert!(
                q.reason.contains(super::super::BUILD_COMMAND),
                "{}",
                q.reason
            );
        }
        let fc = probe_firecracker(&vm);
        if kvm_access() == KvmAccess::Usable {
            assert!(
                fc.reason.contains(super::super::BUILD_COMMAND),
                "{}",
                fc.reason
            );
        } else {
            assert!(fc.reason.contains("/dev/kvm"), "{}", fc.reason);
        }
    }

    fn dummy(vm: &VmSpec, features: &str) {
        let d = image_dir(vm);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("vmlinux"), "k").unwrap();
        std::fs::write(d.join("rootfs.ext4"), "r").unwrap();
        std::fs::write(d.join("features"), features).unwrap();
    }

    #[test]
    fn tcg_qemu_is_offered_by_name_but_never_to_auto() {
        let dir = tempfile::tempdir().unwrap();
        let mut vm = spec(dir.path());
        dummy(&vm, "serial-agent\n");
        vm.accel = Accel::Tcg;
        let named = probe_qemu(&vm);
        let auto = probe_qemu_for_auto(&vm);
        assert!(!auto.available, "{}", auto.reason);
        if qemu::find_qemu().is_some() {
            assert!(named.available, "{}", named.reason);
            assert!(named.reason.contains("TCG"), "{}", named.reason);
            assert!(auto.reason.contains("--backend qemu"), "{}", auto.reason);
        }
    }

    #[test]
    fn verdicts_are_cached_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let vm = spec(dir.path());
        assert_eq!(cached_verdict(&vm, "k"), None);
        store_verdict(&vm, "k", &KvmVerdict::Broken("emulation failure".into()));
        assert_eq!(
            cached_verdict(&vm, "k"),
            Some(KvmVerdict::Broken("emulation failure".into()))
        );
        assert_eq!(
            cached_verdict(&vm, "other"),
            None,
            "another machine or image"
        );
        store_verdict(&vm, "k", &KvmVerdict::Works);
        assert_eq!(cached_verdict(&vm, "k"), Some(KvmVerdict::Works));
    }
}
