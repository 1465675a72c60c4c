//! The `firecracker` VMM: one Firecracker process per sandbox, driven through its API
//! socket (`fc_api.rs`), with the same guest image and agent as `qemu`. Firecracker's
//! vsock device is a hybrid vsock on a host Unix socket, which is what the agent client
//! speaks.
//!
//! Start: from a snapshot when one was saved for this image and size
//! (`PUT /snapshot/load` with the session's own vsock socket as `vsock_override`, and
//! `resume_vm`), else `PUT /machine-config`, `/boot-source`, `/drives/rootfs`
//! (read-only), `/vsock`, `/metrics`, then `PUT /actions {InstanceStart}`; once the agent
//! answers, the VM is paused, saved (`PUT /snapshot/create`) and resumed, so the next
//! session restores it. Stop: the agent powers the guest off; what is left is killed.
//!
//! The jailer is not used yet: Firecracker runs as the user, in its own process group,
//! killed with Safe Coder (see `supervised.rs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::agent_client::{AgentClient, Endpoint};
use super::fc_api::FirecrackerApi;
use super::image::{snapshots_dir, GuestImage};
use super::supervised::Supervised;
use super::{block_on_own_runtime, ready_timeout, Started, Vmm};
use crate::{SandboxError, VmSpec};

/// The kernel command line under Firecracker (its serial console is its stdout).
pub(crate) const FC_CMDLINE: &str = "console=ttyS0 quiet reboot=k panic=1 pci=off root=/dev/vda ro";

pub(crate) struct FirecrackerVmm {
    proc: Arc<Supervised>,
    console: PathBuf,
}

impl Vmm for FirecrackerVmm {
    fn alive(&self) -> Result<(), String> {
        self.proc.alive()
    }

    fn wait_exit(&self, timeout: Duration) -> bool {
        self.proc.wait_timeout(timeout).is_some()
    }

    fn kill(&self) {
        self.proc.kill();
    }

    fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
    }
}

fn snapshot_dir(vm: &VmSpec, image: &GuestImage, bin: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (image.fingerprint(), vm.memory_mb, vm.vcpus, bin, FC_CMDLINE).hash(&mut h);
    snapshots_dir(vm, image).join(format!("firecracker-{:016x}", h.finish()))
}

fn other(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Other(e.to_string())
}

/// Starts Firecracker in `run_dir` and waits for its API socket.
fn spawn(bin: &Path, run_dir: &Path) -> Result<(FirecrackerVmm, FirecrackerApi), SandboxError> {
    let api_sock = run_dir.join("api.sock");
    let console = run_dir.join("console.log");
    let log = std::fs::File::create(&console).map_err(other)?;
    let log2 = log.try_clone().map_err(other)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--api-sock")
        .arg(&api_sock)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    let proc = Supervised::spawn("firecracker", cmd)
        .map_err(|e| other(format!("cannot start {}: {e}", bin.display())))?;
    super::supervised::wait_listening(&proc, &api_sock, "firecracker", Duration::from_secs(10))
        .map_err(other)?;
    Ok((
        FirecrackerVmm {
            proc: Arc::new(proc),
            console,
        },
        FirecrackerApi::new(api_sock),
    ))
}

fn wait_ready(
    vmm: &FirecrackerVmm,
    uds: &Path,
    timeout: Duration,
) -> Result<std::os::fd::OwnedFd, SandboxError> {
    let proc = vmm.proc.clone();
    let ep = Endpoint::HybridVsock(uds.to_path_buf());
    let r = block_on_own_runtime(move || {
        Box::pin(async move {
            // Firecracker resets vsock connections on a snapshot, so each start greets.
            let (c, fd) =
                AgentClient::connect_when_ready(&ep, timeout, true, || proc.alive()).await?;
            c.ping().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(fd)
        })
    })?;
    r.map_err(|e| {
        let tail = vmm.console_tail();
        vmm.kill();
        other(format!(
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

pub(crate) fn start(
    vm: &VmSpec,
    image: &GuestImage,
    run_dir: &Path,
) -> Result<Started, SandboxError> {
    let bin = super::probe::find_firecracker(vm).map_err(SandboxError::Unavailable)?;
    let uds = run_dir.join("vsock.sock");
    let snap = snapshot_dir(vm, image, &bin);
    let (state, mem) = (snap.join("vmstate"), snap.join("memory"));
    if state.is_file() && mem.is_file() {
        let t = Instant::now();
        let (vmm, api) = spawn(&bin, run_dir)?;
        let loaded = api
            .snapshot_load(&state, &mem, &uds)
            .map_err(other)
            .and_then(|()| wait_ready(&vmm, &uds, Duration::from_secs(30)));
        match loaded {
            Ok(conn) => {
                return Ok(Started {
                    restored_from: Some(snap.clone()),
                    conn,
                    how: format!(
                        "restored from a Firecracker snapshot in {:.2} s",
                        t.elapsed().as_secs_f64()
                    ),
                    vmm: Box::new(vmm),
                    endpoint: Endpoint::HybridVsock(uds),
                })
            }
            Err(e) => {
                log::warn!(
                    "the Firecracker snapshot in {} did not load ({e}); booting instead",
                    snap.display()
                );
                vmm.kill();
                let _ = std::fs::remove_dir_all(&snap);
                for f in ["api.sock", "vsock.sock", "console.log"] {
                    let _ = std::fs::remove_file(run_dir.join(f));
                }
            }
        }
    }
    let t = Instant::now();
    let (vmm, api) = spawn(&bin, run_dir)?;
    let configured = (|| {
        api.machine_config(vm.vcpus, vm.memory_mb)?;
        api.boot_source(&image.kernel, image.initramfs.as_deref(), FC_CMDLINE)?;
        api.drive("rootfs", &image.rootfs, true, true)?;
        api.vsock(safe_coder_vm_protocol::DEFAULT_GUEST_CID, &uds)?;
        api.metrics(&run_dir.join("metrics.json"))?;
        api.instance_start()
    })();
    if let Err(e) = configured {
        vmm.kill();
        return Err(other(e));
    }
    let conn = wait_ready(&vmm, &uds, ready_timeout(vm))?;
    let booted = t.elapsed();
    let t = Instant::now();
    let saved = save(&api, &snap);
    // A snapshot may reset the guest's vsock connections: greet the agent again.
    let conn = if saved.is_ok() {
        wait_ready(&vmm, &uds, Duration::from_secs(30))?
    } else {
        conn
    };
    Ok(Started {
        restored_from: None,
        conn,
        how: match saved {
            Ok(()) => format!(
                "booted by Firecracker in {:.2} s, snapshot saved in {:.2} s",
                booted.as_secs_f64(),
                t.elapsed().as_secs_f64()
            ),
            Err(e) => format!(
                "booted by Firecracker in {:.2} s (no snapshot saved: {e})",
                booted.as_secs_f64()
            ),
        },
        vmm: Box::new(vmm),
        endpoint: Endpoint::HybridVsock(uds),
    })
}

/// Pause, snapshot into temp files, resume; then move the files into place.
fn save(api: &FirecrackerApi, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let pid = std::process::id();
    let (state, mem) = (
        dir.join(format!("vmstate.tmp-{pid}")),
        dir.join(format!("memory.tmp-{pid}")),
    );
    api.pause().map_err(|e| e.to_string())?;
    let created = api.snapshot_create(&state, &mem).map_err(|e| e.to_string());
    let resumed = api.resume().map_err(|e| e.to_string());
    let done = created.and(resumed).and_then(|()| {
        std::fs::rename(&mem, dir.join("memory")).map_err(|e| e.to_string())?;
        std::fs::rename(&state, dir.join("vmstate")).map_err(|e| e.to_string())
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&state);
        let _ = std::fs::remove_file(&mem);
    } else if let Some(parent) = dir.parent() {
        super::image::prune_snapshots(parent, "firecracker-", 3);
    }
    done
}
