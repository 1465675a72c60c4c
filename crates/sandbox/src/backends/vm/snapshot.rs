//! Starting a `qemu` VM: restored from a saved state when there is one, else booted —
//! and then saved, so that the next session does not pay the boot.
//!
//! **Snapshot mode** (the default): the guest gets no vsock device but a virtio-serial
//! port (`safe-coder.agent`) on a chardev socket, because QEMU 7.2 (Debian 12) refuses
//! to migrate a vhost-user vsock device. The first session boots, waits for the agent,
//! disconnects, pauses the VM and writes its whole state to
//! `<data_dir>/vm/snapshots/qemu-<key>/state` through QMP `migrate` to `exec:cat > FILE`,
//! then resumes it and goes on. Later sessions start QEMU with `-incoming exec:cat FILE`:
//! the guest continues where the first one was saved, with an empty `/workspace` and
//! the agent waiting for a host; the project then arrives through the agent (`sync.rs`).
//! The root filesystem is attached read-only, so one state serves every session. The
//! key covers the image files, the VM's size and KVM/TCG; a state that fails to restore
//! is deleted and the session boots instead.
//!
//! **Boot mode** (with `[vm] network`, when the image's agent has no serial port
//! support, or with `SAFE_CODER_VM_SNAPSHOT=0`): vsock through `vhost-device-vsock`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::agent_client::{AgentClient, Endpoint};
use super::image::{snapshots_dir, GuestImage};
use super::qemu::{self, QemuLaunch, QemuProcess, Transport};
use super::qmp::Qmp;
use super::{block_on_own_runtime, ready_timeout, Started, Vmm};
use crate::{SandboxError, VmSpec};

/// A restore that is not ready in this long is abandoned (and the state deleted).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

/// The `qemu` VMM of a running sandbox.
pub(crate) struct QemuVmm {
    pub(super) proc: Arc<QemuProcess>,
    vm: VmSpec,
    image: GuestImage,
    kvm: bool,
}

impl Vmm for QemuVmm {
    fn alive(&self) -> Result<(), String> {
        let r = self.proc.alive();
        if let Err(e) = &r {
            if self.kvm && e.contains("KVM failed") {
                super::probe::record_kvm_failure(&self.vm, &self.image, e);
            }
        }
        r
    }

    fn wait_exit(&self, timeout: Duration) -> bool {
        self.proc.qemu.wait_timeout(timeout).is_some()
    }

    fn kill(&self) {
        self.proc.qemu.kill();
        if let Some(v) = &self.proc.vhost {
            v.kill();
        }
        if let Some(v) = &self.proc.virtiofsd {
            v.kill();
        }
    }

    fn console_tail(&self) -> String {
        self.proc.console_tail()
    }
}

/// Whether this VM can be saved and restored.
pub(crate) fn snapshot_mode(vm: &VmSpec, image: &GuestImage) -> bool {
    !vm.network
        && image.has_feature("serial-agent")
        && std::env::var("SAFE_CODER_VM_SNAPSHOT").map_or(true, |v| v != "0")
}

/// Where the saved state of VMs like this one lives.
pub(crate) fn snapshot_dir(vm: &VmSpec, image: &GuestImage, kvm: bool) -> PathBuf {
    let mut h = DefaultHasher::new();
    (
        image.fingerprint(),
        vm.memory_mb,
        vm.vcpus,
        kvm,
        qemu::KERNEL_CMDLINE,
    )
        .hash(&mut h);
    snapshots_dir(vm, image).join(format!("qemu-{:016x}", h.finish()))
}

fn unavailable(e: String) -> SandboxError {
    SandboxError::Unavailable(e)
}

/// Starts the VM of a `qemu` sandbox in `run_dir`.
pub(crate) fn start(
    vm: &VmSpec,
    image: &GuestImage,
    run_dir: &Path,
    kvm: bool,
) -> Result<Started, SandboxError> {
    let q = qemu::find_qemu().ok_or_else(|| {
        unavailable("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into())
    })?;
    let accel = if kvm { "KVM" } else { "TCG" };
    if !snapshot_mode(vm, image) {
        let vhost = qemu::find_vhost_vsock(vm).ok_or_else(|| {
            unavailable("vhost-device-vsock is not installed: `cargo install --locked vhost-device-vsock`, or set [vm] vhost_vsock_bin".into())
        })?;
        let t = Instant::now();
        let vmm = launch(
            vm,
            image,
            &q,
            run_dir,
            kvm,
            Transport::Vsock,
            None,
            Some(&vhost),
            None,
        )?;
        let endpoint = Endpoint::HybridVsock(vmm.proc.paths.vsock.clone());
        let conn = wait_ready(&vmm, &endpoint, ready_timeout(vm), true)?;
        return Ok(Started {
            restored_from: None,
            conn,
            how: format!("booted under {accel} in {:.1} s", t.elapsed().as_secs_f64()),
            vmm: Box::new(vmm),
            endpoint,
        });
    }
    let dir = snapshot_dir(vm, image, kvm);
    let state = dir.join("state");
    if state.is_file() {
        let t = Instant::now();
        match restore(vm, image, &q, run_dir, kvm, &state) {
            Ok((vmm, endpoint, conn)) => {
                return Ok(Started {
                    restored_from: Some(dir.clone()),
                    conn,
                    how: format!(
                        "restored under {accel} from a snapshot in {:.2} s",
                        t.elapsed().as_secs_f64()
                    ),
                    vmm: Box::new(vmm),
                    endpoint,
                })
            }
            Err(e) => {
                log::warn!(
                    "the VM snapshot {} did not restore ({e}); booting instead",
                    state.display()
                );
                let _ = std::fs::remove_file(&state);
                clear_run_dir(run_dir);
            }
        }
    }
    let t = Instant::now();
    let vmm = launch(
        vm,
        image,
        &q,
        run_dir,
        kvm,
        Transport::Serial,
        None,
        None,
        None,
    )?;
    let endpoint = Endpoint::Serial(vmm.proc.paths.serial.clone());
    let conn = wait_ready(&vmm, &endpoint, ready_timeout(vm), true)?;
    let booted = t.elapsed();
    let t = Instant::now();
    let saved = save(&vmm, &dir);
    Ok(Started {
        restored_from: None,
        conn,
        how: match saved {
            Ok(()) => format!(
                "booted under {accel} in {:.1} s, and saved a snapshot in {:.1} s for the next sessions",
                booted.as_secs_f64(),
                t.elapsed().as_secs_f64()
            ),
            Err(e) => format!(
                "booted under {accel} in {:.1} s (no snapshot saved: {e})",
                booted.as_secs_f64()
            ),
        },
        vmm: Box::new(vmm),
        endpoint,
    })
}

fn clear_run_dir(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn launch(
    vm: &VmSpec,
    image: &GuestImage,
    q: &Path,
    run_dir: &Path,
    kvm: bool,
    transport: Transport,
    incoming: Option<&Path>,
    vhost: Option<&Path>,
    share: Option<&Path>,
) -> Result<QemuVmm, SandboxError> {
    let l = QemuLaunch {
        qemu: q,
        image,
        memory_mb: vm.memory_mb,
        vcpus: vm.vcpus,
        kvm,
        dir: run_dir,
        network: vm.network,
        incoming,
        transport,
        share,
    };
    let proc = QemuProcess::start(&l, vhost).map_err(SandboxError::Other)?;
    Ok(QemuVmm {
        proc: Arc::new(proc),
        vm: vm.clone(),
        image: image.clone(),
        kvm,
    })
}

/// How long a ready agent may take to answer a ping (a TCG guest on a busy host).
const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// Waits until the agent answers a handshake and a ping, then lets go of the
/// connection. A VMM that dies ends the wait at once.
pub(super) fn wait_ready(
    vmm: &QemuVmm,
    endpoint: &Endpoint,
    timeout: Duration,
    handshake: bool,
) -> Result<OwnedFd, SandboxError> {
    let proc = vmm.proc.clone();
    let ep = endpoint.clone();
    let r = block_on_own_runtime(move || {
        Box::pin(async move {
            let (c, fd) =
                AgentClient::connect_when_ready(&ep, timeout, handshake, || proc.alive()).await?;
            match tokio::time::timeout(PING_TIMEOUT, c.ping()).await {
                Ok(Ok(_)) => return Ok::<_, String>(fd),
                Ok(Err(e)) if handshake => return Err(e.to_string()),
                Err(_) if handshake => {
                    return Err(format!(
                        "the agent did not answer a ping in {} s",
                        PING_TIMEOUT.as_secs()
                    ))
                }
                // A restored agent may have been saved between two host sessions (the
                // first host had just let go when the state was written): it waits for
                // a hello, took our ping for a bad one and waits again. Greet it anew.
                _ => {}
            }
            drop(c);
            drop(fd);
            let (c, fd) =
                AgentClient::connect_when_ready(&ep, timeout, true, || proc.alive()).await?;
            match tokio::time::timeout(PING_TIMEOUT, c.ping()).await {
                Ok(Ok(_)) => Ok(fd),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "the agent did not answer a ping in {} s, greeted or not",
                    PING_TIMEOUT.as_secs()
                )),
            }
        })
    })?;
    r.map_err(|e| {
        let tail = vmm.console_tail();
        vmm.kill();
        SandboxError::Other(format!(
            "the VM did not become ready within {} s: {e}{}",
            timeout.as_secs(),
            if tail.is_empty() {
                String::new()
            } else {
                format!(" (the guest printed last: {tail})")
            }
        ))
    })
}

fn restore(
    vm: &VmSpec,
    image: &GuestImage,
    q: &Path,
    run_dir: &Path,
    kvm: bool,
    state: &Path,
) -> Result<(QemuVmm, Endpoint, OwnedFd), String> {
    let vmm = launch(
        vm,
        image,
        q,
        run_dir,
        kvm,
        Transport::Serial,
        Some(state),
        None,
        None,
    )
    .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + RESTORE_TIMEOUT;
    let restored = Qmp::connect(&vmm.proc.paths.qmp, deadline)
        .and_then(|mut qmp| qmp.finish_restore(deadline))
        .map_err(|e| e.to_string());
    if let Err(e) = restored {
        vmm.kill();
        return Err(e);
    }
    let endpoint = Endpoint::Serial(vmm.proc.paths.serial.clone());
    // The saved agent is inside the session it had with the first host: no new hello.
    let conn = wait_ready(&vmm, &endpoint, RESTORE_TIMEOUT, false).map_err(|e| e.to_string())?;
    Ok((vmm, endpoint, conn))
}

/// Saves the running VM's state into `dir/state` (written to a temp file, then
/// renamed, so a concurrent session never restores half a file), then resumes it.
fn save(vmm: &QemuVmm, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = dir.join(format!("state.tmp-{}", std::process::id()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut qmp = Qmp::connect(&vmm.proc.paths.qmp, deadline).map_err(|e| e.to_string())?;
    let saved = qmp.save_to_file(&tmp, deadline).map_err(|e| e.to_string());
    // The VM goes on either way.
    let resumed = qmp.execute("cont", None).map_err(|e| e.to_string());
    match saved.and(resumed) {
        Ok(_) => {
            std::fs::rename(&tmp, dir.join("state"))
                .map_err(|e| format!("cannot store the snapshot: {e}"))?;
            if let Some(parent) = dir.parent() {
                super::image::prune_snapshots(parent, "qemu-", 3);
            }
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
