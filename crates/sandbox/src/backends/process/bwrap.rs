//! The bubblewrap mechanism: finding and trying bwrap once, the read-only system part
//! of its mount table, and the full command line of one confined command.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::{probe_cache, seccomp, ChildSetup};
use crate::SandboxError;

/// What was found about bubblewrap on this machine (probed once per process).
#[derive(Clone, Debug)]
pub(crate) struct Bwrap {
    pub path: PathBuf,
    pub version: String,
    disable_userns: bool,
    bash: PathBuf,
}

/// The seccomp programs as raw BPF, compiled once.
pub(crate) struct Filters {
    deny: Vec<u8>,
    clone3: Vec<u8>,
}

pub(crate) fn filters() -> Result<&'static Filters, SandboxError> {
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
/// use. Cached: the first call costs three bwrap runs (`--version`, `--help`, the
/// trial: 5–40 ms), later ones nothing; a working verdict is also remembered across
/// processes (`probe_cache.rs`), so a new process whose bwrap, kernel and settings are
/// unchanged pays no run at all.
pub(crate) fn bwrap() -> Result<&'static Bwrap, SandboxError> {
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
    let key = probe_cache::key(&[&path, &bash]);
    if let Some(v) = probe_cache::load("bwrap", &key) {
        if let (Some(version), Some(disable_userns)) = (
            v.get("version").and_then(|x| x.as_str()),
            v.get("disable_userns").and_then(|x| x.as_bool()),
        ) {
            return Ok(Bwrap {
                path,
                version: version.to_string(),
                disable_userns,
                bash,
            });
        }
    }
    let tried = trial_bwrap(path, bash);
    if let Ok(info) = &tried {
        probe_cache::store(
            "bwrap",
            &key,
            serde_json::json!({"version": info.version, "disable_userns": info.disable_userns}),
        );
    }
    tried
}

/// Runs bwrap: its version, its options, then a trial sandbox with every option used.
fn trial_bwrap(path: PathBuf, bash: PathBuf) -> Result<Bwrap, String> {
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
    let tried = match trial(&info) {
        Ok(()) => Ok(info),
        // Some kernels refuse the nested user namespace --disable-userns needs; seccomp
        // still refuses new namespaces then.
        Err(first) if info.disable_userns => {
            info.disable_userns = false;
            trial(&info).map(|()| info).map_err(|_| first)
        }
        Err(e) => Err(e),
    };
    // The usual cause on Ubuntu 24.04 and its kin: say it, with the fix.
    tried.map_err(
        |e| match super::userns::restriction(Path::new(super::userns::PROC_SYS)) {
            Some(r) => format!("{e}; {}", r.explain()),
            None => e,
        },
    )
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
pub(crate) fn command(
    info: &Bwrap,
    extra_read_only: &[PathBuf],
    workdir: Option<&Path>,
    script: &str,
    setup: Option<ChildSetup>,
) -> Result<Command, SandboxError> {
    command_with(info, extra_read_only, workdir, script, setup, &[])
}

/// [`command`] with `extra` bwrap options after the mounts (interactive commands add
/// their binds and `/dev/tty` there).
pub(crate) fn command_with(
    info: &Bwrap,
    extra_read_only: &[PathBuf],
    workdir: Option<&Path>,
    script: &str,
    setup: Option<ChildSetup>,
    extra: &[OsString],
) -> Result<Command, SandboxError> {
    let argv = [
        info.bash.clone().into_os_string(),
        "-c".into(),
        script.into(),
    ];
    command_argv(info, extra_read_only, workdir, &argv, setup, extra)
}

/// [`command_with`] running `argv` itself (bwrap looks it up in the command's `PATH`),
/// not a script: no shell starts in between (`run`'s commands).
pub(crate) fn command_argv(
    info: &Bwrap,
    extra_read_only: &[PathBuf],
    workdir: Option<&Path>,
    argv: &[OsString],
    setup: Option<ChildSetup>,
    extra: &[OsString],
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
    cmd.args(extra);
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
    cmd.arg("--").args(argv);
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
