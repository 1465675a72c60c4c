//! The agent as the guest's init (docs/vm-image.md).
//!
//! Stage 1, in the initramfs (`/init` is this binary, next to [`INITRAMFS_MARKER`]):
//! mount `/proc`, `/sys`, `/dev`; load the kernel modules listed in [`MODULES_LIST`]
//! (dependencies first, as the image builder ordered them) with their parameters from
//! the kernel command line; mount the root disk (`root=`, default `/dev/vda`) —
//! writable if it can be, else (`ro`, or a read-only drive) read-only under a tmpfs
//! overlay so the guest's writes stay in RAM; free the initramfs; switch root; exec
//! [`AGENT_PATH`] `--init`.
//!
//! Stage 2, in the root filesystem: mount what a Debian userland expects (`/proc`,
//! `/sys`, `/dev`, `/dev/pts`, `/dev/shm`, `/tmp`, `/run`), set the clock from
//! `safe_coder.time=<unix seconds>`, bring up `lo`, mount the workspace
//! (`safe_coder.workspace=virtiofs:<tag>` for the host's tree over virtio-fs,
//! `safe_coder.workspace=<device>` for an ext4 disk, else `/workspace` on the root disk,
//! else a tmpfs when the root is read-only), shield the agent from the OOM killer, then serve on
//! vsock. Zombies are reaped by [`crate::reaper`]; `shutdown` syncs and reboots, which
//! QEMU (`-no-reboot`) and Firecracker both turn into the VM's exit.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A file only the initramfs has: the agent started as `/init` does stage 1 when it sees it.
pub const INITRAMFS_MARKER: &str = "/safe-coder-initramfs";
/// The modules stage 1 loads, one path per line, dependencies first.
pub const MODULES_LIST: &str = "/etc/safe-coder-modules";
/// Where the image puts the agent in the root filesystem.
pub const AGENT_PATH: &str = "/usr/local/sbin/safe-coder-guest-agent";
/// Printed on the console once the agent listens (for logs and humans; the host's
/// readiness check is the handshake).
pub const READY_LINE: &str = "safe-coder-guest-agent: ready";

fn say(msg: &str) {
    println!("safe-coder-init: {msg}");
}

fn cstr(p: &str) -> io::Result<CString> {
    CString::new(p).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// mount(2); `EBUSY` (already mounted) counts as success.
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let _ = fs::create_dir_all(target);
    let (s, t, f, d) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            if fstype.is_empty() {
                std::ptr::null()
            } else {
                f.as_ptr()
            },
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                d.as_ptr().cast()
            },
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EBUSY) {
        return Ok(());
    }
    Err(io::Error::new(
        e.kind(),
        format!("mount {source} on {target}: {e}"),
    ))
}

/// The kernel command line's words.
pub fn cmdline() -> Vec<String> {
    fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn param<'a>(cmdline: &'a [String], key: &str) -> Option<&'a str> {
    cmdline
        .iter()
        .rev()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Parameters for module `name` from the command line (`name.key=value`), as
/// `modprobe` would pass them; `-` and `_` are the same in module names.
pub fn module_params(cmdline: &[String], name: &str) -> String {
    let norm = |s: &str| s.replace('-', "_");
    let name = norm(name);
    cmdline
        .iter()
        .filter_map(|w| {
            let (module, rest) = w.split_once('.')?;
            (norm(module) == name && rest.contains('=')).then(|| rest.to_string())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn load_module(path: &Path, params: &str) -> io::Result<()> {
    let f = fs::File::open(path)?;
    let p = cstr(params)?;
    // SAFETY: finit_module with an open fd and a C string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            p.as_ptr(),
            0,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

fn wait_for(path: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if Path::new(path).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Ends the VM: sync, then reboot (the VMM exits).
pub fn power_off() -> ! {
    // The `done` reply is written; give the VMM's vsock backend a moment to carry it
    // to the host before the VM disappears.
    std::thread::sleep(std::time::Duration::from_millis(50));
    // SAFETY: sync and reboot have no memory arguments.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // Only reached when not allowed to reboot (not PID 1 in a VM).
    std::process::exit(0)
}

/// Stage 1. Returns only on failure (the caller prints it and powers off).
pub fn stage1() -> io::Result<std::convert::Infallible> {
    mount("proc", "/proc", "proc", 0, "")?;
    mount("sysfs", "/sys", "sysfs", 0, "")?;
    mount("devtmpfs", "/dev", "devtmpfs", 0, "")?;
    let cmd = cmdline();
    let list = fs::read_to_string(MODULES_LIST).unwrap_or_default();
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = Path::new(line);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.trim_end_matches(".ko"))
            .unwrap_or(line);
        if let Err(e) = load_module(path, &module_params(&cmd, name)) {
            say(&format!("module {name}: {e}"));
        }
    }
    let root = param(&cmd, "root").unwrap_or("/dev/vda").to_string();
    if !wait_for(&root, Duration::from_secs(10)) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("the root disk {root} did not appear"),
        ));
    }
    let ro = cmd.iter().any(|w| w == "ro");
    let fstype = param(&cmd, "rootfstype").unwrap_or("ext4").to_string();
    // A writable disk is the root itself. A read-only one (`ro`, or a drive the VMM
    // attached read-only, which is how one image serves every session) gets a tmpfs
    // overlay: the guest can write anywhere, and its writes stay in RAM.
    if ro || mount(&root, "/newroot", &fstype, 0, "").is_err() {
        mount(&root, "/lower", &fstype, libc::MS_RDONLY, "")?;
        mount("tmpfs", "/rw", "tmpfs", 0, "mode=755")?;
        fs::create_dir_all("/rw/upper")?;
        fs::create_dir_all("/rw/work")?;
        mount(
            "overlay",
            "/newroot",
            "overlay",
            0,
            "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work",
        )?;
    }
    // Free the initramfs (it stays in RAM otherwise), as switch_root does.
    if let Ok(rd) = fs::read_dir("/") {
        for e in rd.flatten() {
            let n = e.file_name();
            if ["newroot", "dev", "proc", "sys", "lower", "rw"]
                .iter()
                .any(|k| n.as_bytes() == k.as_bytes())
            {
                continue;
            }
            let p = e.path();
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
    for m in ["/dev", "/proc", "/sys"] {
        mount(m, &format!("/newroot{m}"), "", libc::MS_MOVE, "")?;
    }
    std::env::set_current_dir("/newroot")?;
    mount(".", "/", "", libc::MS_MOVE, "")?;
    let dot = cstr(".")?;
    // SAFETY: chroot with a C string.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    std::env::set_current_dir("/")?;
    let agent = cstr(AGENT_PATH)?;
    let arg = cstr("--init")?;
    let argv = [agent.as_ptr(), arg.as_ptr(), std::ptr::null()];
    // SAFETY: execv with a NULL-terminated argv of valid C strings.
    unsafe { libc::execv(agent.as_ptr(), argv.as_ptr()) };
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("cannot start {AGENT_PATH}: {}", io::Error::last_os_error()),
    ))
}

fn set_clock(cmd: &[String]) {
    let Some(secs) = param(cmd, "safe_coder.time").and_then(|s| s.parse::<i64>().ok()) else {
        return;
    };
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    // SAFETY: clock_settime with a valid timespec.
    unsafe {
        libc::clock_settime(libc::CLOCK_REALTIME, &ts);
    }
}

fn loopback_up() {
    // SAFETY: an ioctl on a socket with an initialised ifreq.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr);
        }
        libc::close(s);
    }
}

fn writable(dir: &str) -> bool {
    let probe = format!("{dir}/.safe-coder-probe");
    let ok = fs::write(&probe, b"").is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

/// Stage 2's setup; returns the workspace directory.
pub fn stage2() -> io::Result<String> {
    mount("proc", "/proc", "proc", 0, "")?;
    mount("sysfs", "/sys", "sysfs", 0, "")?;
    mount("devtmpfs", "/dev", "devtmpfs", 0, "")?;
    let nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let _ = mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "gid=5,mode=620,ptmxmode=666",
    );
    let _ = mount("tmpfs", "/dev/shm", "tmpfs", nodev, "mode=1777");
    mount("tmpfs", "/tmp", "tmpfs", nodev, "mode=1777")?;
    mount("tmpfs", "/run", "tmpfs", nodev, "mode=755")?;
    let cmd = cmdline();
    set_clock(&cmd);
    loopback_up();
    let _ = fs::write("/proc/sys/kernel/hostname", "safe-coder");
    // Under memory pressure the kernel kills the commands, never the agent.
    let _ = fs::write("/proc/self/oom_score_adj", "-1000");
    let ws = safe_coder_vm_protocol::WORKSPACE;
    if let Some(tag) = param(&cmd, "safe_coder.workspace").and_then(|d| d.strip_prefix("virtiofs:"))
    {
        // The host's session tree itself, shared by virtiofsd (no copy in either
        // direction; docs/microvm.md, "Shared workspace").
        let _ = fs::create_dir_all(ws);
        mount(tag, ws, "virtiofs", 0, "")?;
    } else if let Some(dev) = param(&cmd, "safe_coder.workspace") {
        let dev = dev.to_string();
        if !wait_for(&dev, Duration::from_secs(10)) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the workspace disk {dev} did not appear"),
            ));
        }
        mount(&dev, ws, "ext4", 0, "")?;
    } else {
        let _ = fs::create_dir_all(ws);
        if !writable(ws) {
            mount("tmpfs", ws, "tmpfs", nodev, "mode=755")?;
        }
    }
    Ok(ws.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn module_parameters_come_from_the_command_line_like_modprobe() {
        let cmd = words(
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio-mmio.device=4K@0xd0001000:6 \
             virtio_blk.x virtio_ring.y=1 root=/dev/vda",
        );
        assert_eq!(
            module_params(&cmd, "virtio_mmio"),
            "device=4K@0xd0000000:5 device=4K@0xd0001000:6"
        );
        assert_eq!(module_params(&cmd, "virtio_blk"), "");
        assert_eq!(module_params(&cmd, "ext4"), "");
    }

    #[test]
    fn parameters_take_the_last_value() {
        let cmd = words("root=/dev/vdb safe_coder.time=5 root=/dev/vda rootfstype=ext4");
        assert_eq!(param(&cmd, "root"), Some("/dev/vda"));
        assert_eq!(param(&cmd, "rootfstype"), Some("ext4"));
        assert_eq!(param(&cmd, "safe_coder.time"), Some("5"));
        assert_eq!(param(&cmd, "ro"), None);
    }
}
