//! The shared workspace of the `qemu` backend (`[vm] workspace = "shared"`): the guest's
//! `/workspace` IS the session's host tree, served over virtio-fs; nothing is copied in
//! either direction.
//!
//! There is ONE overlay mount: the session's host workspace is the same overlay as the
//! `process` backend's (`crate::overlay`: the project read-only below, `<session>/upper`
//! above, mounted in a user+mount namespace of its own). `virtiofsd` runs joined to that
//! namespace ([`crate::overlay::OverlayMount::enter`], as git and the confiners do) and
//! serves the merged tree; QEMU reaches it through a vhost-user socket
//! (`vhost-user-fs-device`, guest RAM from the shared memfd every `qemu` VM already has);
//! the guest agent mounts the tag at `/workspace` when the kernel command line says
//! `safe_coder.workspace=virtiofs:workspace`. The guest's writes land in the upper layer
//! directly, where the session history's change detection looks anyway, and the host's
//! writes (the file tools, a rollback) are seen by the guest's next lookup
//! (`--cache never`: no stale attributes or pages in the guest).
//!
//! virtiofsd runs without its own sandbox (`--sandbox none`): a process that joined a
//! user namespace it does not own as uid 0 keeps no capability across `exec`, so neither
//! `chroot` nor `namespace` mode can be set up there. It is confined instead by what it
//! joined: it sees the host's files with the user's own rights only. The guest's uids
//! are squashed to the user's (`--translate-uid`), and the user's files look like
//! root's in the guest, whose commands run as root.
//!
//! A vhost-user-fs device cannot be migrated, so a shared VM boots (no snapshot), and
//! under TCG every FUSE request is emulated work (reading the tree costs 6-10x the
//! copy's). So [`VmWorkspace::Auto`] shares only under KVM and only a project large
//! enough that copying it in would cost more than the boot (docs/microvm.md has the
//! figures).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::agent_client::Endpoint;
use super::image::GuestImage;
use super::qemu::Transport;
use super::snapshot;
use super::supervised::Supervised;
use super::Started;
use crate::overlay::OverlayMount;
use crate::{BackendKind, SandboxError, VmSpec, VmWorkspace};

pub(crate) const VIRTIOFSD_BIN: &str = "virtiofsd";
/// The image feature that says the initramfs has virtio-fs and the agent mounts it.
pub(crate) const IMAGE_FEATURE: &str = "virtiofs-workspace";
/// The virtio-fs tag of the workspace.
pub(crate) const TAG: &str = "workspace";

/// `auto` shares a project of at least this many files...
pub(crate) const AUTO_MIN_FILES: usize = 2_500;
/// ... or of at least this many bytes (the copy in costs per file and per byte; see
/// docs/microvm.md for the measurements these thresholds come from).
pub(crate) const AUTO_MIN_BYTES: u64 = 64 * 1024 * 1024;

/// The kernel command line's addition for a shared workspace.
pub(crate) fn kernel_param() -> String {
    format!("safe_coder.workspace=virtiofs:{TAG}")
}

/// `virtiofsd`: on `PATH`, in `$SAFE_CODER_CACHE/cargo/bin` (CI), `~/.cargo/bin`, or
/// where distributions put it (`/usr/libexec`, `/usr/lib/qemu`).
pub fn find_virtiofsd() -> Option<PathBuf> {
    crate::which::find_executable(VIRTIOFSD_BIN).or_else(|| {
        let home_cargo = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
        [
            super::qemu::ci_cargo_bin(),
            home_cargo,
            Some(PathBuf::from("/usr/libexec")),
            Some(PathBuf::from("/usr/lib/qemu")),
        ]
        .into_iter()
        .flatten()
        .map(|d| d.join(VIRTIOFSD_BIN))
        .find(|p| p.is_file())
    })
}

/// Whether a new `kind` session over `project` gets a shared workspace, and why (or why
/// not), in a clause for the start line and `sandbox doctor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareDecision {
    pub shared: bool,
    pub why: String,
}

/// Decides the workspace of a new `qemu` session (other backends: never shared).
/// `project` is only walked for `auto` (a `stat` per file, stopping at the thresholds).
pub fn decide(kind: BackendKind, vm: &VmSpec, project: Option<&Path>) -> ShareDecision {
    decide_with(kind, vm, project, || {
        let image = available(vm)?;
        Ok(super::probe::known_accel(vm, &image))
    })
}

/// [`decide`] with what [`available`] and the KVM verdict would say given (tests):
/// `Ok(Some(kvm))`, `Ok(None)` while KVM is untried, or why no share can be made.
fn decide_with(
    kind: BackendKind,
    vm: &VmSpec,
    project: Option<&Path>,
    available: impl FnOnce() -> Result<Option<bool>, String>,
) -> ShareDecision {
    let no = |why: String| ShareDecision { shared: false, why };
    if kind != BackendKind::Qemu {
        return no(format!("{} has no virtio-fs", kind.as_str()));
    }
    if vm.workspace == VmWorkspace::Copy {
        return no("copied into the guest ([vm] workspace = \"copy\")".into());
    }
    if crate::overlay::forced_copy() {
        return no("copied into the guest (SAFE_CODER_WORKSPACE=copy)".into());
    }
    let kvm = match available() {
        Ok(kvm) => kvm,
        Err(why) => return no(format!("copied into the guest ({why})")),
    };
    if vm.workspace == VmWorkspace::Shared {
        return ShareDecision {
            shared: true,
            why: "shared over virtio-fs as [vm] workspace says, the VM boots".into(),
        };
    }
    if kvm != Some(true) {
        return no(format!(
            "copied into the guest: {} reading through virtio-fs costs 6-10x reading a copy, so auto shares only under KVM",
            if kvm.is_none() { "KVM is untried, and under TCG" } else { "under TCG" }
        ));
    }
    match project {
        Some(p) => {
            let (files, bytes) = measure(p, AUTO_MIN_FILES, AUTO_MIN_BYTES);
            if files >= AUTO_MIN_FILES || bytes >= AUTO_MIN_BYTES {
                ShareDecision {
                    shared: true,
                    why: format!(
                        "shared over virtio-fs, the VM boots: {}{files} files are cheaper to share than to copy in",
                        if files >= AUTO_MIN_FILES { "at least " } else { "" }
                    ),
                }
            } else {
                no(format!(
                    "copied into the guest: a small project ({files} files, {} KiB) restores and copies faster than a VM boots",
                    bytes / 1024
                ))
            }
        }
        None => ShareDecision {
            shared: true,
            why: format!(
                "shared over virtio-fs for projects of {AUTO_MIN_FILES} files or {} MiB and more, copied into the guest below ([vm] workspace = \"auto\")",
                AUTO_MIN_BYTES >> 20
            ),
        },
    }
}

/// The doctor's line on the `qemu` workspace: shared (and for which projects) or copied,
/// saying why.
pub fn doctor_line(vm: &VmSpec) -> String {
    format!(
        "qemu workspace: {}\n",
        decide(BackendKind::Qemu, vm, None).why
    )
}

/// `Ok` (the image) where a shared workspace can be made: virtiofsd installed and an
/// image whose initramfs has virtio-fs. `Err` says what is missing and how to get it.
pub(crate) fn available(vm: &VmSpec) -> Result<GuestImage, String> {
    find_virtiofsd().ok_or_else(|| {
        "virtiofsd is not installed: `cargo install --locked virtiofsd` (needs libseccomp-dev and libcap-ng-dev)".to_string()
    })?;
    let image = GuestImage::locate(vm)?;
    if !image.has_feature(IMAGE_FEATURE) {
        return Err(format!(
            "the guest image predates virtio-fs, rebuild it with `{}`",
            super::image::BUILD_COMMAND
        ));
    }
    Ok(image)
}

/// The number of files and their bytes under `root`, counted until either limit is met.
fn measure(root: &Path, max_files: usize, max_bytes: u64) -> (usize, u64) {
    let (mut files, mut bytes) = (0usize, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                if t.is_file() {
                    bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
                if files >= max_files || bytes >= max_bytes {
                    return (files, bytes);
                }
            }
        }
    }
    (files, bytes)
}

/// The vhost-user socket QEMU connects to.
pub(crate) fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("virtiofsd.sock")
}

/// Starts `virtiofsd` inside `overlay`'s namespace, serving its merged tree on
/// [`socket_path`], and waits until it listens.
pub(crate) fn start_virtiofsd(
    bin: &Path,
    overlay: &OverlayMount,
    run_dir: &Path,
) -> Result<Supervised, String> {
    let socket = socket_path(run_dir);
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join("virtiofsd.log"))
        .map_err(|e| format!("cannot create the virtiofsd log: {e}"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(overlay.merged())
        .args(["--sandbox", "none", "--cache", "never", "--allow-mmap"])
        // Whatever uid the guest writes as becomes the user's; the user's files look
        // like root's (the guest's commands run as root).
        .arg(format!("--translate-uid=squash-guest:0:{uid}:4294967295"))
        .arg(format!("--translate-gid=squash-guest:0:{gid}:4294967295"))
        .arg(format!("--translate-uid=host:{uid}:0:1"))
        .arg(format!("--translate-gid=host:{gid}:0:1"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    overlay.enter(&mut cmd);
    let v = Supervised::spawn("virtiofsd", cmd)
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    super::supervised::wait_listening(&v, &socket, "virtiofsd", Duration::from_secs(10)).map_err(
        |e| {
            let log = std::fs::read_to_string(run_dir.join("virtiofsd.log")).unwrap_or_default();
            let last = log.lines().last().unwrap_or("").trim().to_string();
            if last.is_empty() {
                e
            } else {
                format!("{e}: {last}")
            }
        },
    )?;
    Ok(v)
}

/// Boots a `qemu` VM whose `/workspace` is `overlay`'s merged tree: virtiofsd first,
/// then QEMU (which connects to it), then the agent's handshake. No snapshot is
/// restored or saved (a vhost-user-fs device cannot be migrated).
pub(crate) fn boot(
    vm: &VmSpec,
    image: &GuestImage,
    run_dir: &Path,
    kvm: bool,
    overlay: &OverlayMount,
) -> Result<Started, SandboxError> {
    let unavailable =
        |e: String| SandboxError::Unavailable(format!("no shared workspace for the VM: {e}"));
    available(vm).map_err(unavailable)?;
    let bin = find_virtiofsd().ok_or_else(|| unavailable("virtiofsd is not installed".into()))?;
    let q = super::qemu::find_qemu().ok_or_else(|| {
        SandboxError::Unavailable(
            "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into(),
        )
    })?;
    let (transport, vhost) = if !vm.network && image.has_feature("serial-agent") {
        (Transport::Serial, None)
    } else {
        let v = super::qemu::find_vhost_vsock(vm).ok_or_else(|| {
            SandboxError::Unavailable("vhost-device-vsock is not installed: `cargo install --locked vhost-device-vsock`, or set [vm] vhost_vsock_bin".into())
        })?;
        (Transport::Vsock, Some(v))
    };
    let t = Instant::now();
    let fsd = start_virtiofsd(&bin, overlay, run_dir)
        .map_err(|e| SandboxError::Other(format!("virtiofsd did not start: {e}")))?;
    let mut vmm = snapshot::launch(
        vm,
        image,
        &q,
        run_dir,
        kvm,
        transport,
        None,
        vhost.as_deref(),
        Some(&socket_path(run_dir)),
    )?;
    match Arc::get_mut(&mut vmm.proc) {
        Some(p) => p.virtiofsd = Some(fsd),
        None => {
            return Err(SandboxError::Other(
                "the VM's process handle is shared before it started".into(),
            ))
        }
    }
    let endpoint = match transport {
        Transport::Serial => Endpoint::Serial(vmm.proc.paths.serial.clone()),
        Transport::Vsock => Endpoint::HybridVsock(vmm.proc.paths.vsock.clone()),
    };
    let conn = snapshot::wait_ready(&vmm, &endpoint, super::ready_timeout(vm), true)?;
    Ok(Started {
        restored_from: None,
        conn,
        how: format!(
            "booted under {} in {:.1} s, workspace shared over virtio-fs",
            if kvm { "KVM" } else { "TCG" },
            t.elapsed().as_secs_f64()
        ),
        vmm: Box::new(vmm),
        endpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measure_stops_at_the_limits() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for i in 0..5 {
            std::fs::create_dir_all(tmp.path().join(format!("d{i}"))).expect("mkdir");
            std::fs::write(tmp.path().join(format!("d{i}/f")), b"12345").expect("write");
        }
        assert_eq!(measure(tmp.path(), 100, 1 << 20), (5, 25));
        assert_eq!(measure(tmp.path(), 3, 1 << 20).0, 3);
        assert!(measure(tmp.path(), 100, 10).1 >= 10);
    }

    fn shared_spec() -> VmSpec {
        VmSpec {
            workspace: VmWorkspace::Shared,
            ..VmSpec::default()
        }
    }

    #[test]
    fn auto_shares_large_projects_only_and_says_why_not() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let small = tmp.path().join("small");
        std::fs::create_dir_all(&small).expect("mkdir");
        std::fs::write(small.join("a.rs"), b"fn main() {}").expect("write");
        let large = tmp.path().join("large");
        for i in 0..AUTO_MIN_FILES {
            let d = large.join(format!("d{}", i / 100));
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join(format!("f{i}")), b"x").expect("write");
        }
        let vm = VmSpec::default();
        let ok = || Ok(Some(true));
        let d = decide_with(BackendKind::Qemu, &vm, Some(&small), ok);
        assert!(
            !d.shared && d.why.contains("small project (1 files"),
            "{d:?}"
        );
        let d = decide_with(BackendKind::Qemu, &vm, Some(&large), ok);
        assert!(d.shared && d.why.contains("2500 files"), "{d:?}");
        let missing = || Err("virtiofsd is not installed".to_string());
        let tcg = || Ok(Some(false));
        let d = decide_with(BackendKind::Qemu, &vm, Some(&large), tcg);
        assert!(!d.shared && d.why.contains("only under KVM"), "{d:?}");
        let untried = || Ok(None);
        let d = decide_with(BackendKind::Qemu, &vm, Some(&large), untried);
        assert!(!d.shared && d.why.contains("KVM is untried"), "{d:?}");
        let d = decide_with(BackendKind::Qemu, &shared_spec(), Some(&large), tcg);
        assert!(d.shared, "\"shared\" shares under TCG too: {d:?}");
        let d = decide_with(BackendKind::Qemu, &vm, Some(&large), missing);
        assert!(
            !d.shared && d.why.contains("virtiofsd is not installed"),
            "{d:?}"
        );
        let shared = VmSpec {
            workspace: VmWorkspace::Shared,
            ..VmSpec::default()
        };
        let d = decide_with(BackendKind::Qemu, &shared, Some(&small), ok);
        assert!(d.shared, "{d:?}");
        let d = decide_with(BackendKind::Qemu, &vm, None, ok);
        assert!(d.shared && d.why.contains("2500 files or 64 MiB"), "{d:?}");
    }

    #[test]
    fn only_qemu_shares_and_copy_is_honoured() {
        let vm = VmSpec {
            workspace: VmWorkspace::Shared,
            ..VmSpec::default()
        };
        let d = decide(BackendKind::Firecracker, &vm, None);
        assert!(!d.shared && d.why.contains("no virtio-fs"), "{d:?}");
        let copy = VmSpec {
            workspace: VmWorkspace::Copy,
            ..VmSpec::default()
        };
        let d = decide(BackendKind::Qemu, &copy, None);
        assert!(!d.shared && d.why.contains("workspace = \"copy\""), "{d:?}");
    }
}
