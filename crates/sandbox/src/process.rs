//! The `process` backend: the agent's commands run on the host, confined by bubblewrap
//! (Linux user, mount, PID, network, IPC and UTS namespaces), a seccomp filter and a
//! cgroup (or rlimits) for CPU, memory and process count. See docs/sandbox-process.md.
//!
//! What a command sees:
//! - `/usr` (and `/bin`, `/lib*`, `/sbin` as the host has them), `/etc` and `/opt`
//!   read-only, with host secrets in `/etc` (shadow files, SSH host keys, sudoers,
//!   private TLS keys) masked;
//! - the sandbox copy, read-write, at the same absolute path as on the host;
//! - a private tmpfs `/tmp` (with `HOME=/tmp/home`) and `/var/tmp`;
//! - its own `/proc` (PID namespace: no host process is visible), a minimal `/dev`
//!   where `/dev/tty` is `/dev/null`;
//! - no network but its own loopback;
//! - nothing else: the user's home, other projects, `/root`, `/home`, `/run`, `/var`
//!   and `/sys` are not mounted.
//!
//! Commands stay in the process group the caller gives them, so killing that group kills
//! them; bwrap's PID-namespace init dies with it (`--die-with-parent`), and the kernel
//! then kills whatever is left in the namespace, even processes that left the group.
//!
//! Without a working bwrap, [`Mechanism::InProcess`] confines the child itself
//! (namespaces, Landlock, seccomp; see `process/inprocess.rs`).

mod cgroup;
mod inprocess;
mod seccomp;

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

pub use cgroup::Enforcement;

use crate::host::{CommandConfiner, HostSandbox};
use crate::{BackendKind, SandboxError};

/// Resource limits of a `process` sandbox (for all its commands together where a cgroup
/// enforces them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessLimits {
    pub memory_mb: u64,
    pub cpus: f64,
    /// The most processes (and threads) alive at once: a fork bomb stops there.
    pub pids: u64,
}

impl Default for ProcessLimits {
    fn default() -> Self {
        ProcessLimits {
            memory_mb: 2048,
            cpus: 2.0,
            pids: 512,
        }
    }
}

/// How each limit is enforced on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitEnforcement {
    pub memory: Enforcement,
    pub cpus: Enforcement,
    pub pids: Enforcement,
}

impl LimitEnforcement {
    /// One line for `sandbox doctor` and the logs, e.g. `memory: cgroup v1, cpus: not
    /// enforced, processes: setrlimit`.
    pub fn describe(&self) -> String {
        format!(
            "memory: {}, cpus: {}, processes: {}",
            self.memory.as_str(),
            self.cpus.as_str(),
            self.pids.as_str()
        )
    }
}

/// What was found about bubblewrap on this machine (probed once per process).
#[derive(Clone, Debug)]
struct Bwrap {
    path: PathBuf,
    version: String,
    disable_userns: bool,
    bash: PathBuf,
}

/// The seccomp programs as raw BPF, compiled once.
struct Filters {
    deny: Vec<u8>,
    clone3: Vec<u8>,
}

fn filters() -> Result<&'static Filters, SandboxError> {
    static FILTERS: OnceLock<Result<Filters, String>> = OnceLock::new();
    FILTERS
        .get_or_init(|| {
            let deny = seccomp::deny_filter().map_err(|e| e.to_string())?;
            let clone3 = seccomp::clone3_filter().map_err(|e| e.to_string())?;
            Ok(Filters {
                deny: seccomp::program_bytes(&deny),
                clone3: seccomp::program_bytes(&clone3),
            })
        })
        .as_ref()
        .map_err(|e| SandboxError::Unavailable(e.clone()))
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Finds bwrap and checks that it really runs a trivial sandbox with every option we
/// use. Cached: the first call costs one bwrap run (about 5 ms), later ones nothing.
fn bwrap() -> Result<&'static Bwrap, SandboxError> {
    static BWRAP: OnceLock<Result<Bwrap, String>> = OnceLock::new();
    BWRAP
        .get_or_init(probe_bwrap)
        .as_ref()
        .map_err(|e| SandboxError::Unavailable(e.clone()))
}

fn probe_bwrap() -> Result<Bwrap, String> {
    let path = find_in_path("bwrap").ok_or_else(|| {
        "bubblewrap (bwrap) is not installed; install it (apt-get install bubblewrap)".to_string()
    })?;
    let bash = ["/usr/bin/bash", "/bin/bash"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| "bash is not installed in /usr/bin or /bin".to_string())?;
    // `--help` and `--version` run side by side: this is on session start's path.
    let version_child = Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let help = Command::new(&path)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {}: {e}", path.display()))?;
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let version = version_child
        .and_then(|c| c.wait_with_output())
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "bubblewrap".to_string());
    if !help.contains("--add-seccomp-fd") {
        return Err(format!(
            "{} is too old (it lacks --add-seccomp-fd, added in bubblewrap 0.5)",
            path.display()
        ));
    }
    let mut info = Bwrap {
        path,
        version,
        disable_userns: help.contains("--disable-userns"),
        bash,
    };
    let trial = |info: &Bwrap| -> Result<(), String> {
        let mut cmd = command(info, &[], None, "true", None).map_err(|e| e.to_string())?;
        let out = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("could not run {}: {e}", info.path.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} cannot create a sandbox here ({}): {}",
                info.path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    match trial(&info) {
        Ok(()) => Ok(info),
        // Some kernels refuse the nested user namespace --disable-userns needs; seccomp
        // still refuses new namespaces then.
        Err(first) if info.disable_userns => {
            info.disable_userns = false;
            trial(&info).map(|()| info).map_err(|_| first)
        }
        Err(e) => Err(e),
    }
}

/// The read-only system part of the mount table, computed once.
fn system_mounts() -> &'static [OsString] {
    static MOUNTS: OnceLock<Vec<OsString>> = OnceLock::new();
    MOUNTS.get_or_init(|| {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |a: &[&str]| args.extend(a.iter().map(OsString::from));
        push(&["--ro-bind", "/usr", "/usr"]);
        for dir in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
            let p = Path::new(dir);
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(p) {
                        if let Some(t) = target.to_str() {
                            push(&["--symlink", t, dir]);
                        }
                    }
                }
                Ok(m) if m.is_dir() => push(&["--ro-bind", dir, dir]),
                _ => {}
            }
        }
        for dir in ["/etc", "/opt"] {
            if Path::new(dir).is_dir() {
                push(&["--ro-bind", dir, dir]);
            }
        }
        // Host secrets that /etc would otherwise show (the sandbox runs as the caller,
        // and a root caller could read them).
        for file in [
            "/etc/shadow",
            "/etc/shadow-",
            "/etc/gshadow",
            "/etc/gshadow-",
            "/etc/sudoers",
        ] {
            if Path::new(file).exists() {
                push(&["--ro-bind", "/dev/null", file]);
            }
        }
        for dir in ["/etc/ssh", "/etc/sudoers.d", "/etc/ssl/private"] {
            if Path::new(dir).is_dir() {
                push(&["--tmpfs", dir]);
            }
        }
        push(&["--proc", "/proc", "--dev", "/dev"]);
        push(&["--ro-bind", "/dev/null", "/dev/tty"]);
        push(&[
            "--tmpfs",
            "/tmp",
            "--dir",
            "/tmp/home",
            "--tmpfs",
            "/var/tmp",
        ]);
        args
    })
}

/// The full bwrap command line; `workdir` is bound read-write at its own path and is the
/// working directory. The seccomp programs are handed over on inherited pipes.
fn command(
    info: &Bwrap,
    extra_read_only: &[PathBuf],
    workdir: Option<&Path>,
    script: &str,
    setup: Option<ChildSetup>,
) -> Result<Command, SandboxError> {
    let filters = filters()?;
    let deny = bpf_pipe(&filters.deny)?;
    let clone3 = bpf_pipe(&filters.clone3)?;
    let mut cmd = Command::new(&info.path);
    cmd.args([
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--hostname",
        "safe-coder",
    ]);
    if info.disable_userns {
        cmd.arg("--disable-userns");
    }
    cmd.args(system_mounts());
    for path in extra_read_only {
        if path.exists() {
            cmd.arg("--ro-bind").arg(path).arg(path);
        }
    }
    if let Some(dir) = workdir {
        cmd.arg("--bind").arg(dir).arg(dir).arg("--chdir").arg(dir);
    } else {
        cmd.args(["--chdir", "/tmp"]);
    }
    cmd.args([
        "--setenv",
        "HOME",
        "/tmp/home",
        "--setenv",
        "TMPDIR",
        "/tmp",
    ]);
    for var in [
        "XDG_RUNTIME_DIR",
        "XDG_CONFIG_HOME",
        "XDG_CACHE_HOME",
        "XDG_DATA_HOME",
        "XDG_STATE_HOME",
        "DBUS_SESSION_BUS_ADDRESS",
        "DISPLAY",
        "WAYLAND_DISPLAY",
    ] {
        cmd.args(["--unsetenv", var]);
    }
    cmd.arg("--add-seccomp-fd")
        .arg(deny.as_raw_fd().to_string())
        .arg("--add-seccomp-fd")
        .arg(clone3.as_raw_fd().to_string());
    cmd.arg("--").arg(&info.bash).arg("-c").arg(script);
    if let Some(setup) = setup {
        // SAFETY: ChildSetup closures are async-signal-safe by contract.
        unsafe {
            cmd.pre_exec(setup);
        }
    }
    let fds = [deny, clone3];
    // SAFETY: the closure only calls fcntl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                if libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// A pipe whose read end holds `bytes` (a BPF program is far below the pipe's 64 KiB).
fn bpf_pipe(bytes: &[u8]) -> Result<OwnedFd, SandboxError> {
    let err = |e: io::Error| SandboxError::Other(format!("could not pass the seccomp filter: {e}"));
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut writer = File::from(write);
    writer.write_all(bytes).map_err(err)?;
    drop(writer);
    Ok(read)
}

/// Work done in the child between fork and exec. Must be async-signal-safe: system
/// calls only, on memory prepared before the fork.
type ChildSetup = Box<dyn FnMut() -> io::Result<()> + Send + Sync>;

/// How the `process` backend confines commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// bubblewrap: all namespaces (PID and mount included) + seccomp. Preferred.
    Bubblewrap,
    /// No bubblewrap: user/network/IPC/UTS namespaces, Landlock and seccomp applied by
    /// the child itself (weaker: see docs/sandbox-process.md).
    InProcess,
}

#[derive(Debug)]
enum Confinement {
    Bwrap(&'static Bwrap),
    InProcess {
        support: inprocess::Support,
        tmp: inprocess::PrivateTmp,
        rulesets: inprocess::RulesetCache,
    },
}

/// Builds confined commands for the `process` backend (see the module docs). One
/// confiner per sandbox: its cgroup holds every command of the session.
#[derive(Debug)]
pub struct ProcessConfiner {
    confinement: Confinement,
    limits: ProcessLimits,
    extra_read_only: Vec<PathBuf>,
    cgroup: Option<Arc<cgroup::Cgroup>>,
    enforcement: LimitEnforcement,
}

impl ProcessConfiner {
    /// A confiner with these limits: bubblewrap when it works here, else the in-process
    /// mechanism. Fails with [`SandboxError::Unavailable`] (saying why) when neither does.
    pub fn new(limits: ProcessLimits) -> Result<Self, SandboxError> {
        match Self::with_mechanism(limits, Mechanism::Bubblewrap) {
            Ok(c) => Ok(c),
            Err(bwrap_err) => Self::with_mechanism(limits, Mechanism::InProcess).map_err(|e| {
                SandboxError::Unavailable(format!("{bwrap_err}; and without it: {e}"))
            }),
        }
    }

    /// A confiner that uses `mechanism` (tests and `sandbox doctor` use both).
    pub fn with_mechanism(
        limits: ProcessLimits,
        mechanism: Mechanism,
    ) -> Result<Self, SandboxError> {
        let confinement = match mechanism {
            Mechanism::Bubblewrap => {
                let bwrap = bwrap()?;
                filters()?;
                Confinement::Bwrap(bwrap)
            }
            Mechanism::InProcess => {
                let support = inprocess::support().map_err(SandboxError::Unavailable)?;
                let tmp = inprocess::PrivateTmp::create().map_err(|e| {
                    SandboxError::Other(format!(
                        "could not create the sandbox's temp directory: {e}"
                    ))
                })?;
                Confinement::InProcess {
                    support,
                    tmp,
                    rulesets: inprocess::RulesetCache::default(),
                }
            }
        };
        let memory_bytes = limits.memory_mb.max(16).saturating_mul(1024 * 1024);
        let pids = limits.pids.max(8);
        let cgroup = cgroup::Cgroup::create(memory_bytes, limits.cpus, pids);
        let cg = cgroup
            .as_ref()
            .map(|c| c.enforcement())
            .unwrap_or(cgroup::CgroupEnforcement {
                memory: Enforcement::None,
                cpu: Enforcement::None,
                pids: Enforcement::None,
            });
        let fallback = |e: Enforcement| {
            if e == Enforcement::None {
                Enforcement::Rlimit
            } else {
                e
            }
        };
        let enforcement = LimitEnforcement {
            memory: fallback(cg.memory),
            cpus: cg.cpu,
            pids: fallback(cg.pids),
        };
        Ok(ProcessConfiner {
            confinement,
            limits,
            extra_read_only: Vec::new(),
            cgroup: cgroup.map(Arc::new),
            enforcement,
        })
    }

    /// Also shows these host paths read-only inside the sandbox (toolchains installed
    /// under the home directory, for example). Paths that do not exist are skipped.
    /// Bubblewrap only: the in-process mechanism ignores them.
    pub fn with_read_only_paths(mut self, paths: Vec<PathBuf>) -> Self {
        self.extra_read_only = paths;
        self
    }

    pub fn limits(&self) -> ProcessLimits {
        self.limits
    }

    /// How each limit is enforced here.
    pub fn enforcement(&self) -> LimitEnforcement {
        self.enforcement
    }

    pub fn mechanism(&self) -> Mechanism {
        match self.confinement {
            Confinement::Bwrap(_) => Mechanism::Bubblewrap,
            Confinement::InProcess { .. } => Mechanism::InProcess,
        }
    }

    /// What confines, e.g. `bubblewrap 0.8.0 (/usr/bin/bwrap)`.
    pub fn describe_mechanism(&self) -> String {
        match &self.confinement {
            Confinement::Bwrap(b) => format!("{} ({})", b.version, b.path.display()),
            Confinement::InProcess { support, .. } => support.describe(),
        }
    }

    /// Memory used now by everything in the sandbox, when a cgroup measures it.
    pub fn memory_used_mb(&self) -> Option<u64> {
        self.cgroup
            .as_ref()
            .and_then(|c| c.memory_usage())
            .map(|b| b / (1024 * 1024))
    }

    /// Processes alive in the sandbox's cgroup now (`None` without a cgroup).
    pub fn process_count(&self) -> Option<usize> {
        self.cgroup.as_ref().map(|c| c.process_count())
    }

    /// The limits' part of the child setup: join the cgroup, set rlimits, volunteer for
    /// the OOM killer. Runs first, before any namespace is entered.
    fn limits_setup(&self) -> ChildSetup {
        let procs: Vec<CString> = self
            .cgroup
            .as_ref()
            .map(|c| c.procs_files())
            .unwrap_or_default();
        let mut rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)> =
            vec![(libc::RLIMIT_CORE, 0)];
        if self.enforcement.memory == Enforcement::Rlimit {
            let bytes = self.limits.memory_mb.max(16).saturating_mul(1024 * 1024);
            rlimits.push((libc::RLIMIT_DATA, bytes as libc::rlim_t));
        }
        if self.enforcement.pids == Enforcement::Rlimit {
            rlimits.push((libc::RLIMIT_NPROC, self.limits.pids.max(8) as libc::rlim_t));
        }
        Box::new(move || {
            cgroup::Cgroup::join_from_child(&procs)?;
            for &(resource, value) in &rlimits {
                let lim = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                // SAFETY: setrlimit with a valid struct.
                if unsafe { libc::setrlimit(resource, &lim) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Under memory pressure the kernel kills sandboxed processes first.
            // SAFETY: open/write/close of a constant path.
            unsafe {
                let fd = libc::open(
                    c"/proc/self/oom_score_adj".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                if fd >= 0 {
                    libc::write(fd, b"1000".as_ptr().cast(), 4);
                    libc::close(fd);
                }
            }
            Ok(())
        })
    }

    /// The confined `bash -c command` with `workdir` (an absolute path) as the
    /// writable project directory. The caller sets stdio, environment and process group.
    pub fn command(&self, command: &str, workdir: &Path) -> Result<Command, SandboxError> {
        if !workdir.is_absolute() {
            return Err(SandboxError::Other(format!(
                "the work tree '{}' must be an absolute path",
                workdir.display()
            )));
        }
        let setup = self.limits_setup();
        match &self.confinement {
            Confinement::Bwrap(info) => self::command(
                info,
                &self.extra_read_only,
                Some(workdir),
                command,
                Some(setup),
            ),
            Confinement::InProcess {
                support,
                tmp,
                rulesets,
            } => inprocess::command(support, workdir, tmp.path(), command, rulesets, Some(setup)),
        }
    }
}

impl CommandConfiner for ProcessConfiner {
    fn build(&self, command: &str, workdir: &Path) -> Result<Command, SandboxError> {
        self.command(command, workdir)
    }

    fn memory_limit_mb(&self) -> Option<u64> {
        (self.enforcement.memory != Enforcement::None).then_some(self.limits.memory_mb)
    }

    fn cpus(&self) -> Option<f64> {
        (self.enforcement.cpus != Enforcement::None).then_some(self.limits.cpus)
    }
}

/// Opens a `process` sandbox over `workdir` (the sandbox copy).
pub fn open_process_sandbox(
    workdir: PathBuf,
    limits: ProcessLimits,
) -> Result<HostSandbox, SandboxError> {
    let confiner = ProcessConfiner::new(limits)?;
    HostSandbox::new(BackendKind::Process, workdir, Some(Arc::new(confiner)))
}

/// Whether the `process` backend works here, and why (for `sandbox doctor` and `auto`).
/// The first call runs bwrap once; later calls are free.
pub fn probe() -> Result<String, String> {
    let bwrap_result = bwrap().map_err(|e| e.to_string()).and_then(|info| {
        filters().map_err(|e| e.to_string())?;
        Ok(info)
    });
    match bwrap_result {
        Ok(info) => Ok(format!(
            "{} ({}) runs a namespaced sandbox with seccomp; {}",
            info.version,
            info.path.display(),
            limits_here().describe()
        )),
        Err(bwrap_err) => match inprocess::support() {
            Ok(support) => Ok(format!(
                "{}, so the weaker {} is used; {}",
                bwrap_err,
                support.describe(),
                limits_here().describe()
            )),
            Err(e) => Err(format!("{bwrap_err}; and without it: {e}")),
        },
    }
}

/// How limits would be enforced for a new sandbox here (cached: it creates and removes
/// a probe cgroup once).
pub fn limits_here() -> LimitEnforcement {
    static HERE: OnceLock<LimitEnforcement> = OnceLock::new();
    *HERE.get_or_init(|| {
        let cg = cgroup::Cgroup::create(256 * 1024 * 1024, 1.0, 64).map(|c| c.enforcement());
        let or_rlimit = |e: Option<Enforcement>| match e {
            Some(Enforcement::None) | None => Enforcement::Rlimit,
            Some(e) => e,
        };
        LimitEnforcement {
            memory: or_rlimit(cg.map(|c| c.memory)),
            cpus: cg.map(|c| c.cpu).unwrap_or(Enforcement::None),
            pids: or_rlimit(cg.map(|c| c.pids)),
        }
    })
}
