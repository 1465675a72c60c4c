//! Interactive commands (`safe-coder run`): one long-running program in the sandbox with
//! a terminal of its own, for agent CLIs such as Codex, Claude Code, Gemini CLI or
//! Aider. See docs/run.md for the contract every backend keeps.
//!
//! A backend gets an [`InteractiveRequest`] (argv, extra variables, a terminal size or
//! none, paths to show) and returns an [`InteractiveChild`]: the host end of the
//! command's terminal as a file descriptor (a PTY master, or one end of a socket pair
//! when no terminal was asked for) and a [`ChildControl`] to wait for it, resize its
//! terminal and kill it.
//!
//! This module also holds what the host backends (`direct`, `copy`, `process`) share:
//! opening the terminal, the environment, and a child that is a host process.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Stdio;

use async_trait::async_trait;

use crate::env::command_env;
use crate::SandboxError;

/// The size of a terminal, in character cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
}

/// A host path shown inside the sandbox at an exact path (Safe Coder's own helpers:
/// the network proxy's socket, the forwarder).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub host: PathBuf,
    pub inside: PathBuf,
    pub read_only: bool,
}

/// A host path the user asked to show (`--mount PATH[:ro]`). The backend decides where
/// it appears, from `path`: on `process`, a path under the user's home appears at the
/// same place under the sandbox's home (`~/.codex` → `$HOME/.codex` inside), any other
/// path at its own path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// What is shown: the canonical source (symlinks resolved).
    pub host: PathBuf,
    /// Where the user named it: absolute and without `.` or `..`, but symlinks kept, so
    /// a directory reached through a symlink (`~/.codex` → `~/dotfiles/codex`) appears
    /// where the user and the command name it, not at its target.
    pub path: PathBuf,
    pub read_only: bool,
}

/// The network allow-list, for the backend to realise (docs/run.md): the command
/// reaches `127.0.0.1:port` inside, and whatever connects there is carried to the host
/// proxy's Unix socket, which enforces the list. The core started the proxy and set the
/// proxy variables (`HTTPS_PROXY` and its kin) in `env_extra`; each backend brings the
/// connections out its own way:
/// - `process`: binds the socket and `forwarder` into the sandbox and runs the command
///   under `forwarder __net-forward` (which listens on the port);
/// - docker and the microVMs: start `safe-coder-guest-agent net-forward --port P`
///   inside with piped stdin/stdout and run `safe_coder_netproxy::mux::serve_host` over
///   those pipes on the host.
///
/// A backend that cannot realise it returns one clear error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkAccess {
    /// The host proxy's Unix socket (the allow-list is enforced there).
    pub proxy_socket: PathBuf,
    /// The loopback port inside the sandbox that HTTP(S)_PROXY points at.
    pub port: u16,
    /// The safe-coder binary (the process backend's `__net-forward` forwarder).
    pub forwarder: PathBuf,
}

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct InteractiveRequest {
    /// The program and its arguments (looked up on the sandbox's `PATH`).
    pub argv: Vec<String>,
    /// Variables set on top of the allow-listed environment (the `--env` names the user
    /// passed on purpose, the proxy variables).
    pub env_extra: Vec<(String, String)>,
    /// `Some`: a PTY of this size is the command's stdin, stdout and stderr and its
    /// controlling terminal. `None`: one end of a socket pair is (scripts, `--json`).
    pub terminal: Option<TermSize>,
    /// Safe Coder's helpers, at exact paths.
    pub binds: Vec<Bind>,
    /// The user's `--mount` paths.
    pub mounts: Vec<Mount>,
    /// `Some`: the network allow-list (see [`NetworkAccess`]); `None`: no network but
    /// the sandbox's loopback.
    pub network: Option<NetworkAccess>,
}

impl InteractiveRequest {
    /// The command line as one line for messages: `codex --full-auto`.
    pub fn display(&self) -> String {
        self.argv.join(" ")
    }
}

/// How an interactive command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunExit {
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
}

/// Waits for, resizes and kills an interactive command.
#[async_trait]
pub trait ChildControl: Send + Sync {
    /// Waits until the command has exited (and its sandbox with it).
    async fn wait(&mut self) -> Result<RunExit, SandboxError>;
    /// Sets the terminal's size (the command gets `SIGWINCH`); a no-op without a PTY.
    fn resize(&self, size: TermSize) -> Result<(), SandboxError>;
    /// Kills the command and everything it started.
    fn kill(&self);
}

/// A running interactive command.
pub struct InteractiveChild {
    /// The host end of the command's terminal: read its output, write its input. A PTY
    /// master with [`InteractiveRequest::terminal`], else a stream socket. Reads end
    /// with EOF or `EIO` once the command and everything holding the terminal are gone.
    pub terminal: OwnedFd,
    pub control: Box<dyn ChildControl>,
}

/// Where the terminal lives for a host process.
pub(crate) struct Terminal {
    /// Safe Coder's end.
    pub parent: OwnedFd,
    /// The command's end (stdin, stdout and stderr).
    pub child: OwnedFd,
    pub is_pty: bool,
}

fn os_err(what: &str) -> SandboxError {
    SandboxError::Other(format!(
        "could not {what} for the command: {}",
        io::Error::last_os_error()
    ))
}

/// Opens a PTY of `size`, or a socket pair without one.
pub(crate) fn open_terminal(size: Option<TermSize>) -> Result<Terminal, SandboxError> {
    let mut fds = [0 as libc::c_int; 2];
    match size {
        Some(size) => {
            let ws = winsize(size);
            // SAFETY: openpty writes two descriptors into `fds`; name, termios are null
            // (defaults) and `ws` is a valid winsize.
            let rc = unsafe {
                libc::openpty(
                    &mut fds[0],
                    &mut fds[1],
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    &ws,
                )
            };
            if rc != 0 {
                return Err(os_err("open a terminal (PTY)"));
            }
            // SAFETY: openpty succeeded; both are open and owned by nobody else.
            let (parent, child) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            for fd in [&parent, &child] {
                // SAFETY: fcntl on an owned descriptor.
                unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            }
            Ok(Terminal {
                parent,
                child,
                is_pty: true,
            })
        }
        None => {
            // SAFETY: socketpair writes two descriptors into `fds`.
            let rc = unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                    0,
                    fds.as_mut_ptr(),
                )
            };
            if rc != 0 {
                return Err(os_err("open a socket pair"));
            }
            // SAFETY: socketpair succeeded; both are open and owned by nobody else.
            let (parent, child) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            Ok(Terminal {
                parent,
                child,
                is_pty: false,
            })
        }
    }
}

fn winsize(size: TermSize) -> libc::winsize {
    libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Sets the PTY's size; the kernel sends `SIGWINCH` to its foreground process group.
pub fn set_size(fd: RawFd, size: TermSize) -> io::Result<()> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Quotes `s` for `bash -c` (single quotes; a quote inside becomes `'\''`).
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The argv as a bash command line.
pub(crate) fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets the job-control and termination signals back to their default action and
/// unblocks every signal. Only `sigaction` and `sigprocmask`: async-signal-safe, for
/// `pre_exec`.
fn reset_signal_dispositions() -> io::Result<()> {
    // SAFETY: a zeroed sigaction with SIG_DFL is a valid argument; both calls are
    // async-signal-safe.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut dfl.sa_mask);
        for sig in [
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGHUP,
            libc::SIGTERM,
            libc::SIGPIPE,
        ] {
            if libc::sigaction(sig, &dfl, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// What the command's process does about its session and terminal, in `pre_exec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Session {
    /// `setsid()`, then (with a PTY) make it the controlling terminal: the process is
    /// the command itself (or its direct parent in the sandbox).
    LeaderWithTerminal,
    /// `setsid()` only: the process is a sandbox launcher (bwrap), and the command takes
    /// the terminal itself inside (`setsid --ctty`), so that `Ctrl+C` reaches the
    /// command and not the launcher.
    LeaderOnly,
}

/// Sets the environment (the allow-list, what the confiner set explicitly, then
/// `extra`), the terminal as stdio and the session; with `die_with_us`,
/// `PR_SET_PDEATHSIG` (a command whose sandbox does not already die with Safe Coder).
/// Call it after the confiner built `cmd`: its `pre_exec` work runs after the
/// confiner's, in the process that execs the command.
pub(crate) fn prepare(
    cmd: &mut std::process::Command,
    terminal: &Terminal,
    passthrough: &[String],
    extra: &[(String, String)],
    session: Session,
    die_with_us: bool,
) -> Result<(), SandboxError> {
    let explicit: Vec<(OsString, Option<OsString>)> = cmd
        .get_envs()
        .map(|(k, v)| (k.to_os_string(), v.map(|v| v.to_os_string())))
        .collect();
    cmd.env_clear();
    cmd.envs(command_env(passthrough));
    for (k, v) in explicit {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.envs(extra.iter().map(|(k, v)| (k, v)));
    let dup = |what: &str| {
        terminal
            .child
            .try_clone()
            .map_err(|e| SandboxError::Other(format!("could not pass the {what}: {e}")))
    };
    cmd.stdin(Stdio::from(dup("terminal")?))
        .stdout(Stdio::from(dup("terminal")?))
        .stderr(Stdio::from(dup("terminal")?));
    let with_tty = terminal.is_pty && session == Session::LeaderWithTerminal;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: setsid, ioctl, prctl and getppid are async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            // A command starts with every signal at its default, whatever Safe Coder
            // inherited: started as a background job of a non-interactive shell, it has
            // SIGINT and SIGQUIT ignored, and Ctrl+C would then do nothing to the command.
            reset_signal_dispositions()?;
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if with_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if die_with_us {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(137);
                }
            }
            Ok(())
        });
    }
    Ok(())
}

/// A host process as an interactive child: killed with its session (process group).
struct HostChild {
    child: tokio::process::Child,
    pgid: i32,
    /// A copy of the PTY master, for resizing.
    pty: Option<OwnedFd>,
    /// Host tasks serving the command (the network stream), aborted with it.
    tasks: Vec<tokio::task::AbortHandle>,
}

#[async_trait]
impl ChildControl for HostChild {
    async fn wait(&mut self) -> Result<RunExit, SandboxError> {
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| SandboxError::Other(format!("could not wait for the command: {e}")))?;
        Ok(RunExit {
            code: status.code(),
            signal: status.signal(),
        })
    }

    fn resize(&self, size: TermSize) -> Result<(), SandboxError> {
        match &self.pty {
            Some(fd) => set_size(fd.as_raw_fd(), size)
                .map_err(|e| SandboxError::Other(format!("could not resize the terminal: {e}"))),
            None => Ok(()),
        }
    }

    fn kill(&self) {
        if self.pgid > 0 {
            // SAFETY: kill has no memory-safety preconditions; a negative pid is a group.
            // The process is a group leader (its own session, or `process_group(0)`);
            // a sandbox's processes die with it.
            unsafe {
                libc::kill(-self.pgid, libc::SIGKILL);
                libc::kill(self.pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for HostChild {
    fn drop(&mut self) {
        if self.child.id().is_some() {
            self.kill();
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Spawns a prepared command (see [`prepare`]) as an interactive child; `tasks` serve
/// it and are aborted when the child is dropped.
pub(crate) fn spawn_host(
    cmd: std::process::Command,
    terminal: Terminal,
    tasks: Vec<tokio::task::AbortHandle>,
) -> Result<InteractiveChild, SandboxError> {
    let mut cmd = tokio::process::Command::from(cmd);
    let child = cmd.spawn().map_err(|e| {
        SandboxError::Unavailable(format!("could not start the command in the sandbox: {e}"))
    })?;
    // Our copies of the command's end must go, or reads would never see the end.
    drop(cmd);
    let Terminal {
        parent,
        child: child_end,
        is_pty,
    } = terminal;
    drop(child_end);
    let pty = if is_pty {
        Some(
            parent
                .try_clone()
                .map_err(|e| SandboxError::Other(format!("could not keep the terminal: {e}")))?,
        )
    } else {
        None
    };
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    Ok(InteractiveChild {
        terminal: parent,
        control: Box::new(HostChild {
            child,
            pgid,
            pty,
            tasks,
        }),
    })
}

/// `direct` and `copy`: the command runs as a plain host process in the work tree.
pub(crate) fn spawn_unconfined(
    host: &crate::host::HostSandbox,
    request: &InteractiveRequest,
) -> Result<InteractiveChild, SandboxError> {
    let Some(program) = request.argv.first() else {
        return Err(SandboxError::Other("no command to run was given".into()));
    };
    if !request.binds.is_empty() || request.network.is_some() {
        return Err(SandboxError::Unavailable(format!(
            "the {} backend does not isolate the network, so it cannot enforce a network allow-list; use --backend process",
            host.backend().as_str()
        )));
    }
    let terminal = open_terminal(request.terminal)?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(&request.argv[1..]);
    match host.overlay() {
        // The overlay workspace's namespace, entered first, as every command does.
        Some(mount) => {
            cmd.current_dir("/");
            mount.enter(&mut cmd);
        }
        None => {
            cmd.current_dir(host.exec_dir());
        }
    }
    prepare(
        &mut cmd,
        &terminal,
        host.env_passthrough(),
        &request.env_extra,
        Session::LeaderWithTerminal,
        true,
    )?;
    spawn_host(cmd, terminal, Vec::new())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(
            shell_line(&["echo".into(), "a b".into(), "$HOME".into()]),
            "'echo' 'a b' '$HOME'"
        );
    }
}
