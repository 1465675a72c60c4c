//! The `qemu` VMM: QEMU's `microvm` machine (no PCI, no firmware, virtio-mmio), KVM or
//! TCG, the guest image's kernel booted directly (PVH entry of the ELF vmlinux), and the
//! agent's channel: a vhost-user vsock device served by `vhost-device-vsock`, which
//! speaks Firecracker's hybrid vsock protocol on a host socket, so the agent client is
//! the same for both VMMs. It is used also where `/dev/vhost-vsock` exists: the kernel's
//! vhost-vsock would need a machine-wide unique guest CID per VM and `AF_VSOCK` sockets on
//! the host, for no gain at these speeds.
//!
//! What these machines need (docs/microvm.md): `tsc_early_khz` on the kernel command line
//! (TCG otherwise hangs calibrating the TSC), guest RAM from a shared memfd (vhost-user
//! maps it), no option ROMs, no RTC.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::image::GuestImage;
use super::supervised::Supervised;
use crate::VmSpec;

pub(crate) const QEMU_BIN: &str = "qemu-system-x86_64";
pub(crate) const VHOST_VSOCK_BIN: &str = "vhost-device-vsock";
/// The guest's vsock context id (each VM has its own vsock backend, so one id serves).
pub(crate) const GUEST_CID: u32 = 3;

/// The kernel command line: serial console, no reboot (a guest panic ends QEMU), the
/// TSC frequency TCG cannot calibrate, and the root disk read-only (the agent's init
/// then keeps `/workspace` and `/tmp` in RAM; one snapshot serves every session).
pub(crate) const KERNEL_CMDLINE: &str =
    "console=ttyS0 quiet reboot=t panic=-1 tsc_early_khz=2000000 root=/dev/vda ro";

pub(crate) fn find_qemu() -> Option<PathBuf> {
    crate::which::find_executable(QEMU_BIN)
}

/// Where `cargo install` puts tools in CI: `$SAFE_CODER_CACHE/cargo/bin`
/// (`$SAFE_CODER_CACHE` defaults to `~/.cache/safe-coder-ci`).
pub(crate) fn ci_cargo_bin() -> Option<PathBuf> {
    let cache = std::env::var_os("SAFE_CODER_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/safe-coder-ci"))
        })?;
    Some(cache.join("cargo/bin"))
}

/// `vhost-device-vsock`: `[vm] vhost_vsock_bin`, else on `PATH`, else in
/// `$SAFE_CODER_CACHE/cargo/bin`, else `~/.cargo/bin`.
pub(crate) fn find_vhost_vsock(vm: &VmSpec) -> Option<PathBuf> {
    if let Some(p) = &vm.vhost_vsock_bin {
        return p.is_file().then(|| p.clone());
    }
    crate::which::find_executable(VHOST_VSOCK_BIN).or_else(|| {
        let home_cargo = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
        [ci_cargo_bin(), home_cargo]
            .into_iter()
            .flatten()
            .map(|d| d.join(VHOST_VSOCK_BIN))
            .find(|p| p.is_file())
    })
}

/// How the host reaches the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A vhost-user vsock device (`vhost-device-vsock`, hybrid vsock on the host).
    Vsock,
    /// A virtio-serial port `safe-coder.agent` on a chardev socket: the snapshot mode,
    /// since QEMU 7.2 refuses to migrate a vhost-user vsock device.
    Serial,
}

/// Everything one QEMU run is made of.
pub(crate) struct QemuLaunch<'a> {
    pub qemu: &'a Path,
    pub image: &'a GuestImage,
    pub memory_mb: u64,
    pub vcpus: u32,
    pub kvm: bool,
    /// The VM's private runtime directory (sockets, console log).
    pub dir: &'a Path,
    pub network: bool,
    /// Restore the VM state saved in this file instead of booting.
    pub incoming: Option<&'a Path>,
    pub transport: Transport,
    /// A shared workspace: virtiofsd's vhost-user socket (`share.rs`); the guest mounts
    /// it at `/workspace`.
    pub share: Option<&'a Path>,
}

/// The files of a VM's runtime directory.
pub(crate) struct RuntimePaths {
    pub qmp: PathBuf,
    /// The vhost-user socket between QEMU and vhost-device-vsock.
    pub vhost_user: PathBuf,
    /// The hybrid vsock socket the host connects to (`CONNECT <port>`).
    pub vsock: PathBuf,
    pub console: PathBuf,
    pub qemu_log: PathBuf,
    /// The chardev socket of the agent's serial port (snapshot mode).
    pub serial: PathBuf,
}

impl RuntimePaths {
    pub fn new(dir: &Path) -> RuntimePaths {
        RuntimePaths {
            qmp: dir.join("qmp.sock"),
            vhost_user: dir.join("vhost-user.sock"),
            vsock: dir.join("vsock.sock"),
            console: dir.join("console.log"),
            qemu_log: dir.join("qemu.log"),
            serial: dir.join("agent.sock"),
        }
    }
}

impl QemuLaunch<'_> {
    /// QEMU's arguments. The root filesystem is attached read-only (the guest keeps its
    /// writes in RAM), which is also what lets one saved state serve every session.
    pub fn args(&self) -> Vec<OsString> {
        let p = RuntimePaths::new(self.dir);
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(OsString::from(s));
        push("-M");
        push("microvm,x-option-roms=off,rtc=off,memory-backend=mem");
        push("-accel");
        push(if self.kvm { "kvm" } else { "tcg" });
        push("-cpu");
        push(if self.kvm { "host" } else { "max" });
        push("-m");
        push(&format!("{}M", self.memory_mb));
        push("-smp");
        push(&self.vcpus.to_string());
        push("-object");
        push(&format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            self.memory_mb
        ));
        for s in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
            push(s);
        }
        push("-serial");
        push(&format!("file:{}", p.console.display()));
        push("-qmp");
        push(&format!("unix:{},server=on,wait=off", p.qmp.display()));
        push("-kernel");
        push(&self.image.kernel.display().to_string());
        if let Some(i) = &self.image.initramfs {
            push("-initrd");
            push(&i.display().to_string());
        }
        push("-append");
        match self.share {
            Some(_) => push(&format!(
                "{KERNEL_CMDLINE} {}",
                super::share::kernel_param()
            )),
            None => push(KERNEL_CMDLINE),
        }
        push("-drive");
        push(&format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            self.image.rootfs.display()
        ));
        push("-device");
        push("virtio-blk-device,drive=root");
        match self.transport {
            Transport::Vsock => {
                push("-chardev");
                push(&format!("socket,id=vsock,path={}", p.vhost_user.display()));
                push("-device");
                push("vhost-user-vsock-device,chardev=vsock");
            }
            Transport::Serial => {
                push("-device");
                push("virtio-serial-device");
                push("-chardev");
                push(&format!(
                    "socket,id=agent,path={},server=on,wait=off",
                    p.serial.display()
                ));
                push("-device");
                push("virtserialport,chardev=agent,name=safe-coder.agent");
            }
        }
        if let Some(sock) = self.share {
            push("-chardev");
            push(&format!("socket,id=fs,path={}", sock.display()));
            push("-device");
            push(&format!(
                "vhost-user-fs-device,chardev=fs,tag={}",
                super::share::TAG
            ));
        }
        if self.network {
            // User-mode networking: outbound only, no host port reachable from outside.
            push("-netdev");
            push("user,id=net0");
            push("-device");
            push("virtio-net-device,netdev=net0");
        }
        if let Some(f) = self.incoming {
            push("-incoming");
            push(&format!(
                "exec:cat {}",
                super::qmp::shell_quote(&f.display().to_string())
            ));
        }
        a
    }
}

fn start_vhost(bin: &Path, dir: &Path, paths: &RuntimePaths) -> Result<Supervised, String> {
    let mut cmd = Command::new(bin);
    cmd.arg("--guest-cid")
        .arg(GUEST_CID.to_string())
        .arg("--socket")
        .arg(&paths.vhost_user)
        .arg("--uds-path")
        .arg(&paths.vsock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(&dir.join("vhost-device-vsock.log"))?);
    let vhost = Supervised::spawn("vhost-device-vsock", cmd)
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    super::supervised::wait_listening(
        &vhost,
        &paths.vhost_user,
        "vhost-device-vsock",
        Duration::from_secs(10),
    )?;
    Ok(vhost)
}

/// A running QEMU and its vsock backend.
pub(crate) struct QemuProcess {
    pub paths: RuntimePaths,
    // Field order is drop order: QEMU goes first, then its vsock backend.
    pub qemu: Supervised,
    pub vhost: Option<Supervised>,
    /// A shared workspace's virtiofsd (started before QEMU, which connects to it).
    pub virtiofsd: Option<Supervised>,
}

impl QemuProcess {
    /// Starts `vhost-device-vsock` (for [`Transport::Vsock`]) and QEMU.
    pub fn start(
        launch: &QemuLaunch<'_>,
        vhost_vsock: Option<&Path>,
    ) -> Result<QemuProcess, String> {
        let paths = RuntimePaths::new(launch.dir);
        let vhost = match (launch.transport, vhost_vsock) {
            (Transport::Vsock, Some(bin)) => Some(start_vhost(bin, launch.dir, &paths)?),
            (Transport::Vsock, None) => {
                return Err("vhost-device-vsock is not installed: `cargo install --locked vhost-device-vsock`, or set [vm] vhost_vsock_bin".into())
            }
            (Transport::Serial, _) => None,
        };
        let mut cmd = Command::new(launch.qemu);
        cmd.args(launch.args());
        cmd.stdin(Stdio::null())
            .stdout(log_file(&paths.qemu_log)?)
            .stderr(log_file(&paths.qemu_log)?);
        let qemu = Supervised::spawn("qemu", cmd)
            .map_err(|e| format!("cannot start {}: {e}", launch.qemu.display()))?;
        Ok(QemuProcess {
            paths,
            qemu,
            vhost,
            virtiofsd: None,
        })
    }

    /// `Ok` while QEMU and its vsock backend run and KVM has not failed inside the
    /// guest; else what went wrong, with QEMU's own last words.
    pub fn alive(&self) -> Result<(), String> {
        if let Some(v) = &self.vhost {
            v.alive()?;
        }
        if let Some(v) = &self.virtiofsd {
            v.alive()?;
        }
        let log = std::fs::read_to_string(&self.paths.qemu_log).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("KVM internal error") || l.contains("emulation failure"))
        {
            return Err(format!(
                "KVM failed inside the guest ({}): this machine's KVM cannot run a standard guest; set `[vm] accel = \"tcg\"`",
                line.trim()
            ));
        }
        self.qemu.alive().map_err(|e| {
            let tail: Vec<&str> = log.lines().rev().take(3).collect();
            if tail.is_empty() {
                e
            } else {
                format!(
                    "{e}: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                )
            }
        })
    }

    /// The end of the guest's console output, for error messages.
    pub fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.paths.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
    }
}

fn log_file(path: &Path) -> Result<Stdio, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Stdio::from)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_what_these_machines_need() {
        let image = GuestImage {
            kernel: "/img/vmlinux".into(),
            initramfs: Some("/img/initramfs.cpio.gz".into()),
            rootfs: "/img/rootfs.ext4".into(),
            features: Vec::new(),
        };
        let launch = QemuLaunch {
            qemu: Path::new("qemu-system-x86_64"),
            image: &image,
            memory_mb: 512,
            vcpus: 2,
            kvm: false,
            dir: Path::new("/run/vm"),
            network: false,
            incoming: Some(Path::new("/snap/state")),
            transport: Transport::Vsock,
            share: None,
        };
        let args: Vec<String> = launch
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let line = args.join(" ");
        for want in [
            "-M microvm,x-option-roms=off,rtc=off,memory-backend=mem",
            "-accel tcg -cpu max",
            "-m 512M -smp 2",
            "memory-backend-memfd,id=mem,size=512M,share=on",
            "tsc_early_khz=2000000",
            "file=/img/rootfs.ext4,format=raw,if=none,readonly=on",
            "-initrd /img/initramfs.cpio.gz",
            "vhost-user-vsock-device,chardev=vsock",
            "-incoming exec:cat '/snap/state'",
            "-qmp unix:/run/vm/qmp.sock,server=on,wait=off",
        ] {
            assert!(line.contains(want), "{want} missing from {line}");
        }
        assert!(!line.contains("netdev"), "no network unless asked: {line}");
        assert!(
            !line.contains("vhost-user-fs") && !line.contains("safe_coder.workspace"),
            "{line}"
        );
        let with_net = QemuLaunch {
            network: true,
            kvm: true,
            incoming: None,
            transport: Transport::Serial,
            share: Some(Path::new("/run/vm/virtiofsd.sock")),
            ..launch
        };
        let line = with_net
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(line.contains("-accel kvm -cpu host") && line.contains("virtio-net-device"));
        assert!(line.contains("virtserialport,chardev=agent,name=safe-coder.agent"));
        assert!(!line.contains("vhost-user-vsock"), "{line}");
        assert!(!line.contains("-incoming"));
        assert!(
            line.contains("safe_coder.workspace=virtiofs:workspace"),
            "{line}"
        );
        assert!(
            line.contains("-chardev socket,id=fs,path=/run/vm/virtiofsd.sock -device vhost-user-fs-device,chardev=fs,tag=workspace"),
            "{line}"
        );
    }
}
