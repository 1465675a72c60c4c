//! The in-process mechanism of the `process` backend, for machines without bubblewrap:
//! between fork and exec the child enters new user, PID, network, IPC and UTS
//! namespaces, restricts itself with Landlock (read-only system and toolchains,
//! read-write project and private temp dir, nothing else; no TCP; no signals or
//! abstract sockets outside its domain) and loads the seccomp filters of the bubblewrap
//! path plus a refusal of `AF_UNIX` sockets (Landlock does not cover `connect`, and the
//! host's sockets are in its view).
//!
//! Lifetime, as under bubblewrap: the child forks once more after entering the PID
//! namespace. The first process (the "shim", the one Safe Coder waits for) only waits
//! and passes on the exit status; its child, `bash`, is PID 1 of the namespace, so when
//! the command ends every process it started ends with it (daemons, double forks,
//! `setsid`). The shim dies with Safe Coder (`PR_SET_PDEATHSIG`) and bash with the shim,
//! so a SIGKILL of Safe Coder takes the whole namespace down too.
//!
//! Where the host forbids unprivileged user namespaces (Ubuntu's AppArmor switch, see
//! `userns.rs`), the mechanism runs without namespaces when Landlock can block TCP
//! (ABI 4). There is no PID namespace then: the shim is a child subreaper instead, so
//! what the command orphans is adopted by the shim, which kills it all when the command
//! ends. (A timeout's group kill takes the shim too; what left the group then lives
//! until the sandbox's cgroup is killed at close, or the next start after a crash.)
//!
//! Still weaker than bubblewrap (docs/sandbox-process.md): no mount namespace, so `/proc`
//! is not readable at all (instead of showing the sandbox's own processes) and `/tmp` is
//! a private temp dir with `TMPDIR`/`HOME` pointing at it, not a private mount.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, NetPort, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};

use super::seccomp;
use crate::SandboxError;

/// What the kernel offers, probed once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Support {
    /// The Landlock ABI version (0 = Landlock disabled).
    pub landlock_abi: i32,
    /// Whether unprivileged user (and so network) namespaces can be created.
    pub namespaces: bool,
}

impl Support {
    pub fn describe(&self) -> String {
        format!(
            "in-process Landlock ABI {} + seccomp{}",
            self.landlock_abi,
            if self.namespaces {
                " + user/network namespaces"
            } else {
                " (no namespaces: TCP blocked by Landlock)"
            }
        )
    }
}

fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the documented way to query the ABI version: no ruleset, size 0.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        0
    } else {
        v as i32
    }
}

/// Whether the in-process mechanism works here; the first call runs `true` confined.
pub(crate) fn support() -> Result<Support, String> {
    static SUPPORT: OnceLock<Result<Support, String>> = OnceLock::new();
    SUPPORT
        .get_or_init(|| {
            let abi = landlock_abi();
            if abi < 1 {
                return Err("Landlock is not enabled in this kernel".into());
            }
            // A verdict of an earlier process under the same key (`probe_cache.rs`).
            let bash = Path::new("/bin/bash");
            let key = super::probe_cache::key(&[bash]);
            if let Some(v) = super::probe_cache::load("inprocess", &key) {
                let same_abi = v.get("abi").and_then(|a| a.as_i64()) == Some(i64::from(abi));
                if let (true, Some(namespaces)) =
                    (same_abi, v.get("namespaces").and_then(|n| n.as_bool()))
                {
                    return Ok(Support {
                        landlock_abi: abi,
                        namespaces,
                    });
                }
            }
            let found = trial_support(abi);
            if let Ok(s) = &found {
                super::probe_cache::store(
                    "inprocess",
                    &key,
                    serde_json::json!({"abi": abi, "namespaces": s.namespaces}),
                );
            }
            found
        })
        .clone()
}

/// Runs `true` confined, with namespaces and (on Landlock ABI 4+) without.
fn trial_support(abi: i32) -> Result<Support, String> {
    let tmp = PrivateTmp::create().map_err(|e| e.to_string())?;
    let trial = |namespaces: bool| -> bool {
        let support = Support {
            landlock_abi: abi,
            namespaces,
        };
        command(
            &support,
            tmp.path(),
            tmp.path(),
            tmp.path(),
            &[],
            "true",
            &RulesetCache::default(),
            None,
        )
        .ok()
        .and_then(|mut c| {
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()
        })
        .is_some_and(|s| s.success())
    };
    if trial(true) {
        Ok(Support {
            landlock_abi: abi,
            namespaces: true,
        })
    } else if abi >= 4 && trial(false) {
        Ok(Support {
            landlock_abi: abi,
            namespaces: false,
        })
    } else {
        Err(format!(
            "user namespaces are unavailable and Landlock ABI {abi} cannot block the network"
        ))
    }
}

/// A private temp directory (mode 0700) standing in for `/tmp`; removed on drop.
#[derive(Debug)]
pub(crate) struct PrivateTmp(PathBuf);

impl PrivateTmp {
    pub fn create() -> io::Result<PrivateTmp> {
        static N: AtomicU64 = AtomicU64::new(0);
        // A killed Safe Coder leaves its directories behind, and a later process may get
        // the same PID: a name that exists is skipped, never reused (it could be another
        // user's), so the next one is tried.
        let mut tries = 0;
        loop {
            let dir = std::env::temp_dir().join(format!(
                "safe-coder-tmp-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    fs::DirBuilder::new().mode(0o700).create(dir.join("home"))?;
                    return Ok(PrivateTmp(dir));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 1000 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateTmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// System paths readable (and executable) inside: everything in `/etc` but its secrets.
fn read_only_paths() -> &'static [PathBuf] {
    static PATHS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    PATHS.get_or_init(|| {
        let mut paths: Vec<PathBuf> = [
            "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt",
        ]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect();
        let secret = |name: &str| {
            matches!(
                name,
                "shadow" | "shadow-" | "gshadow" | "gshadow-" | "sudoers" | "sudoers.d" | "ssh"
            )
        };
        if let Ok(entries) = fs::read_dir("/etc") {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if secret(&name) {
                    continue;
                }
                if name == "ssl" {
                    if let Ok(ssl) = fs::read_dir(e.path()) {
                        paths.extend(
                            ssl.flatten()
                                .filter(|s| s.file_name() != "private")
                                .map(|s| s.path()),
                        );
                    }
                    continue;
                }
                paths.push(e.path());
            }
        }
        paths
    })
}

/// The deny-list and `clone3` programs, in the kernel's `sock_filter` type.
type Programs = (Vec<libc::sock_filter>, Vec<libc::sock_filter>);

fn filters() -> Result<&'static Programs, SandboxError> {
    static FILTERS: OnceLock<Result<Programs, String>> = OnceLock::new();
    let convert = |p: seccompiler::BpfProgram| -> Vec<libc::sock_filter> {
        p.into_iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect()
    };
    FILTERS
        .get_or_init(|| {
            let deny = seccomp::deny_filter_without_unix_sockets().map_err(|e| e.to_string())?;
            let clone3 = seccomp::clone3_filter().map_err(|e| e.to_string())?;
            Ok((convert(deny), convert(clone3)))
        })
        .as_ref()
        .map_err(|e| SandboxError::Unavailable(e.clone()))
}

fn landlock_error(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Unavailable(format!("could not build the Landlock rules: {e}"))
}

/// The Landlock ruleset of one command, built in the parent (it opens paths and
/// allocates); the child only calls `landlock_restrict_self` on the returned fd.
/// A Landlock ruleset can restrict any number of processes, so a sandbox builds it once
/// per work tree (opening a few hundred paths costs milliseconds).
#[derive(Debug, Default)]
pub(crate) struct RulesetCache {
    slot: Mutex<Option<(PathBuf, Arc<OwnedFd>)>>,
    run: RunRules,
}

/// What an interactive command (`safe-coder run`) may have beyond an agent's command.
#[derive(Debug, Default)]
pub(crate) struct RunRules {
    /// A TCP port of the sandbox's own loopback that it may bind and connect to (the
    /// network allow-list's forwarder listens there); with it, the loopback of the
    /// sandbox's network namespace is brought up. Only with namespaces: without, the
    /// loopback is the host's.
    pub loopback_port: Option<u16>,
    /// Host paths it may write (the user's writable `--mount`s).
    pub writable: Vec<PathBuf>,
}

impl RulesetCache {
    /// Rules with `run`'s additions.
    pub(crate) fn for_run(run: RunRules) -> RulesetCache {
        RulesetCache {
            slot: Mutex::new(None),
            run,
        }
    }

    fn get(
        &self,
        support: &Support,
        workdir: &Path,
        tmp: &Path,
        extra_read_only: &[PathBuf],
    ) -> Result<Arc<OwnedFd>, SandboxError> {
        let mut slot = match self.slot.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some((dir, fd)) = slot.as_ref() {
            if dir == workdir {
                return Ok(fd.clone());
            }
        }
        let fd = Arc::new(ruleset(support, workdir, tmp, extra_read_only, &self.run)?);
        *slot = Some((workdir.to_path_buf(), fd.clone()));
        Ok(fd)
    }
}

fn ruleset(
    support: &Support,
    workdir: &Path,
    tmp: &Path,
    extra_read_only: &[PathBuf],
    run: &RunRules,
) -> Result<OwnedFd, SandboxError> {
    let abi = match support.landlock_abi {
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        _ => ABI::V6,
    };
    let all = AccessFs::from_all(abi);
    let read = AccessFs::from_read(abi);
    let mut rs = Ruleset::default()
        .handle_access(all)
        .map_err(landlock_error)?;
    if support.landlock_abi >= 4 {
        rs = rs
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(landlock_error)?;
    }
    if support.landlock_abi >= 6 {
        rs = rs
            .scope(Scope::AbstractUnixSocket | Scope::Signal)
            .map_err(landlock_error)?;
    }
    let created = rs
        .create()
        .map_err(landlock_error)?
        .add_rules(path_beneath_rules(read_only_paths(), read))
        .map_err(landlock_error)?
        .add_rules(path_beneath_rules(
            extra_read_only.iter().filter(|p| p.exists()),
            read,
        ))
        .map_err(landlock_error)?
        .add_rules(path_beneath_rules(
            [
                "/dev/null",
                "/dev/zero",
                "/dev/full",
                "/dev/random",
                "/dev/urandom",
            ],
            all,
        ))
        .map_err(landlock_error)?
        .add_rules(path_beneath_rules([workdir, tmp], all))
        .map_err(landlock_error)?;
    let created = created
        .add_rules(path_beneath_rules(
            run.writable.iter().filter(|p| p.exists()),
            all,
        ))
        .map_err(landlock_error)?;
    let created = match run.loopback_port {
        // Only inside a network namespace of its own is the port the sandbox's alone.
        Some(port) if support.landlock_abi >= 4 && support.namespaces => created
            .add_rule(NetPort::new(
                port,
                AccessNet::BindTcp | AccessNet::ConnectTcp,
            ))
            .map_err(landlock_error)?,
        _ => created,
    };
    let fd: Option<OwnedFd> = created.into();
    fd.ok_or_else(|| SandboxError::Unavailable("Landlock is not supported by this kernel".into()))
}

/// Writes `data` to `path`. Async-signal-safe (for the child between fork and exec).
fn write_child(path: &CString, data: &[u8]) -> io::Result<()> {
    // SAFETY: valid C string and buffer; plain open/write/close.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = io::Error::last_os_error();
        libc::close(fd);
        if n < 0 || n as usize != data.len() {
            return Err(err);
        }
    }
    Ok(())
}

/// `bash -c script` in `workdir`, confined in-process. `tmp` is the sandbox's private
/// temp directory (HOME is `tmp/home`); `extra_read_only` are host directories shown
/// read-only (the user's toolchains). `files` is where this process reaches the work
/// tree (the Landlock rule is made on it): `workdir` itself, or an overlay workspace's
/// mounted tree when the child joins the overlay's namespace (`crate::overlay`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn command(
    support: &Support,
    workdir: &Path,
    files: &Path,
    tmp: &Path,
    extra_read_only: &[PathBuf],
    script: &str,
    rulesets: &RulesetCache,
    setup: Option<super::ChildSetup>,
) -> Result<Command, SandboxError> {
    let (deny, clone3) = filters()?;
    let ruleset = rulesets.get(support, files, tmp, extra_read_only)?;
    let bash = ["/usr/bin/bash", "/bin/bash"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| SandboxError::Unavailable("bash is not installed".into()))?;
    let mut cmd = Command::new(bash);
    cmd.arg("-c").arg(script).current_dir(workdir);
    cmd.env("HOME", tmp.join("home"))
        .env("TMPDIR", tmp)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY");

    let namespaces = support.namespaces;
    if rulesets.run.loopback_port.is_some() && !namespaces {
        return Err(SandboxError::Unavailable(
            "the network allow-list needs a network namespace of its own for the sandbox, which this machine refuses to unprivileged users (see `safe-coder sandbox doctor`); install bubblewrap (apt-get install bubblewrap) or allow user namespaces".into(),
        ));
    }
    let loopback = rulesets.run.loopback_port.is_some();
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let uid_map = format!("{uid} {uid} 1").into_bytes();
    let gid_map = format!("{gid} {gid} 1").into_bytes();
    let c = |s: &str| CString::new(s).map_err(|e| SandboxError::Other(e.to_string()));
    let (setgroups, uid_file, gid_file) = (
        c("/proc/self/setgroups")?,
        c("/proc/self/uid_map")?,
        c("/proc/self/gid_map")?,
    );
    let hostname = b"safe-coder";
    // The shim checks that Safe Coder did not die before PR_SET_PDEATHSIG took hold.
    let parent = std::process::id() as libc::pid_t;
    if let Some(setup) = setup {
        // SAFETY: ChildSetup closures are async-signal-safe by contract.
        unsafe {
            cmd.pre_exec(setup);
        }
    }
    // SAFETY: the closure makes only async-signal-safe system calls (unshare, open,
    // write, close, sethostname, prctl, clone, waitpid, landlock_restrict_self,
    // seccomp) on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if namespaces {
                let flags = libc::CLONE_NEWUSER
                    | libc::CLONE_NEWPID
                    | libc::CLONE_NEWNET
                    | libc::CLONE_NEWIPC
                    | libc::CLONE_NEWUTS;
                if libc::unshare(flags) != 0 {
                    return Err(io::Error::last_os_error());
                }
                write_child(&setgroups, b"deny")?;
                write_child(&uid_file, &uid_map)?;
                write_child(&gid_file, &gid_map)?;
                libc::sethostname(hostname.as_ptr().cast(), hostname.len());
                if loopback {
                    loopback_up()?;
                }
                fork_shim(parent, Shim::PidNamespace)?;
            } else {
                fork_shim(parent, Shim::Subreaper)?;
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) != 0 {
                return Err(io::Error::last_os_error());
            }
            for program in [clone3, deny] {
                let prog = libc::sock_fprog {
                    len: program.len() as libc::c_ushort,
                    filter: program.as_ptr() as *mut libc::sock_filter,
                };
                if libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0u32,
                    &prog as *const libc::sock_fprog,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Brings up `lo` of the new network namespace (it starts down; bubblewrap does the
/// same). Runs between fork and exec: raw system calls only.
///
/// # Safety
/// Only between fork and exec, in a new user and network namespace.
unsafe fn loopback_up() -> io::Result<()> {
    // SAFETY: socket, ioctl and close on a zeroed, valid ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
            *dst = *src as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(())
}

/// What the shim does for the command's lifetime.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shim {
    /// After `unshare(CLONE_NEWPID)`: the shim's child is PID 1 of the namespace, and the
    /// kernel kills the rest of the namespace when it exits.
    PidNamespace,
    /// No namespaces allowed here: the shim is a child subreaper, so everything the
    /// command orphans (daemons, double forks, `setsid`) becomes the shim's child, and
    /// the shim kills it all when the command ends.
    Subreaper,
}

/// Forks the process that goes on to exec the command (this call returns in it), while
/// the calling process becomes the shim that waits for it and never returns. Runs
/// between fork and exec: raw system calls only (a raw `clone`, not glibc's `fork`,
/// whose handlers take locks another thread of Safe Coder may have held at the first
/// fork).
///
/// # Safety
/// Only between fork and exec, in the child std spawned.
unsafe fn fork_shim(parent: libc::pid_t, kind: Shim) -> io::Result<()> {
    // SAFETY: raw system calls on plain values, in the single-threaded child.
    unsafe {
        // The shim dies with Safe Coder (also on SIGKILL)...
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            // ...which may have died before the line above.
            libc::_exit(137);
        }
        if kind == Shim::Subreaper && libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        let pid = libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        );
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // The command: dies with the shim. As PID 1 of a namespace, its exit makes
            // the kernel kill every other process of the namespace.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            return Ok(());
        }
        shim(pid as libc::pid_t, kind)
    }
}

/// Waits for the command and exits as it did; as a subreaper, first kills whatever the
/// command left behind. Holds no descriptor: the command's output pipe must close when
/// the command's processes are gone, and std's spawn waits for its exec-error pipe to
/// close.
///
/// # Safety
/// Only between fork and exec.
unsafe fn shim(child: libc::pid_t, kind: Shim) -> ! {
    // SAFETY: raw system calls on plain values, a local status word and a stack buffer.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
            for fd in 0..4096 {
                libc::close(fd);
            }
        }
        let status = loop {
            let mut st: libc::c_int = 0;
            let r = libc::waitpid(-1, &mut st, 0);
            if r == child {
                break st;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
            // An orphan the subreaper adopted ended: keep waiting for the command.
        };
        if kind == Shim::Subreaper {
            kill_adopted();
        }
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        if libc::WIFSIGNALED(status) {
            // Die of the same signal, so the caller sees "killed by a signal".
            let sig = libc::WTERMSIG(status);
            libc::signal(sig, libc::SIG_DFL);
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
        libc::_exit(127)
    }
}

/// Kills every child of the calling subreaper, again and again as their own orphans
/// are adopted, until it has none. Children are listed from
/// `/proc/thread-self/children`; if that cannot be read, it gives up (the sandbox's
/// cgroup still kills them when the sandbox closes).
///
/// # Safety
/// Only between fork and exec (raw system calls, no allocation).
unsafe fn kill_adopted() {
    // SAFETY: raw system calls on a constant path and a stack buffer.
    unsafe {
        let mut buf = [0u8; 4096];
        loop {
            let fd = libc::open(
                c"/proc/thread-self/children".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            if fd < 0 {
                return;
            }
            let mut pid: libc::pid_t = 0;
            loop {
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 {
                    break;
                }
                for &b in &buf[..n as usize] {
                    if b.is_ascii_digit() {
                        pid = pid
                            .saturating_mul(10)
                            .saturating_add((b - b'0') as libc::pid_t);
                    } else {
                        if pid > 0 {
                            libc::kill(pid, libc::SIGKILL);
                        }
                        pid = 0;
                    }
                }
            }
            if pid > 0 {
                libc::kill(pid, libc::SIGKILL);
            }
            libc::close(fd);
            // Wait for one to go (its orphans are adopted meanwhile); none left: done.
            let r = libc::waitpid(-1, std::ptr::null_mut(), 0);
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker_processes(marker: &str) -> usize {
        fs::read_dir("/proc")
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| {
                        fs::read(e.path().join("cmdline"))
                            .map(|c| String::from_utf8_lossy(&c).contains(marker))
                            .unwrap_or(false)
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// On a host that forbids user namespaces (no PID namespace), the subreaper shim
    /// still kills what a command leaves behind when it ends.
    #[test]
    fn without_namespaces_the_subreaper_kills_what_a_command_leaves() {
        let abi = landlock_abi();
        if abi < 1 {
            assert!(
                std::env::var_os("SAFE_CODER_REQUIRE_SANDBOX").is_none(),
                "Landlock is required here"
            );
            eprintln!("skipped: no Landlock in this kernel");
            return;
        }
        let support = Support {
            landlock_abi: abi,
            namespaces: false,
        };
        let tmp = PrivateTmp::create().expect("temp dir");
        let work = tempfile::tempdir().expect("work dir");
        let work = work.path().canonicalize().expect("canonical");
        let marker = format!("{}", 7_500_000 + std::process::id() % 100_000);
        let script = format!(
            "setsid sleep {marker}1 > /dev/null 2>&1 & \
             (sleep {marker}2 > /dev/null 2>&1 &) ; \
             setsid bash -c 'sleep {marker}3 & sleep {marker}4' > /dev/null 2>&1 & \
             sleep 0.3; exit 7"
        );
        let mut cmd = command(
            &support,
            &work,
            &work,
            tmp.path(),
            &[],
            &script,
            &RulesetCache::default(),
            None,
        )
        .expect("command");
        let status = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run");
        assert_eq!(status.code(), Some(7), "the shim passes the exit code on");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while marker_processes(&marker) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} processes outlived their command",
                marker_processes(&marker)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
