//! Running a program for an `exec` request: fork/exec by hand (so the reaper is the only
//! waiter), a new session and process group, stdin `/dev/null`, output streamed as it
//! arrives, and the whole tree killed on timeout, cancel or a lost connection.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use safe_coder_vm_protocol::{AgentError, ErrorKind, ExecExit, ExecRequest, Response, Stream};

use crate::files::Workspace;
use crate::reaper;

/// Once the program exited, how long background processes may hold its output open.
pub const EXIT_GRACE: Duration = Duration::from_millis(250);
/// After a kill, how long to wait for the output to close before giving up on it.
pub const KILL_GRACE: Duration = Duration::from_millis(500);
const CHUNK: usize = 64 * 1024;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the exec's thread waits for.
pub enum Event {
    Chunk(Stream, Vec<u8>),
    Eof,
    Exited(i32),
    Cancel,
}

fn spawn_failed(msg: String) -> AgentError {
    AgentError::new(ErrorKind::SpawnFailed, msg)
}

fn cstring(s: &str, what: &str) -> Result<CString, AgentError> {
    CString::new(s).map_err(|_| spawn_failed(format!("the {what} contains a NUL byte")))
}

/// `argv0` looked up in `path` like `execvp` would.
fn find_program(argv0: &str, path: &str, cwd: &Path) -> Result<PathBuf, AgentError> {
    if argv0.contains('/') {
        return Ok(cwd.join(argv0));
    }
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(argv0);
        if let Ok(md) = fs::metadata(&candidate) {
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(spawn_failed(format!(
        "program '{argv0}' not found in PATH ({path})"
    )))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 with a valid two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A started program: its pid (= process group = session) and output pipes.
pub struct Started {
    pub pid: i32,
    pipes: Vec<(Stream, OwnedFd)>,
    started: Instant,
}

impl Started {
    /// A program started by [`spawn`], whose output is read from `outputs`.
    pub fn new(pid: i32, outputs: Vec<(Stream, OwnedFd)>) -> Started {
        Started {
            pid,
            pipes: outputs,
            started: Instant::now(),
        }
    }
}

/// The program's standard descriptors in the child, and whether its stdin is a
/// terminal to make its controlling terminal.
pub struct Stdio {
    pub stdin: i32,
    pub stdout: i32,
    pub stderr: i32,
    pub controlling_terminal: bool,
}

/// A pipe whose ends are close-on-exec (the child gets its end through `dup2`).
pub fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    pipe()
}

/// Starts `req` in `ws`. `events` receives the exit status (from the reaper); output is
/// read by [`run`].
pub fn start(
    req: &ExecRequest,
    ws: &Workspace,
    events: Sender<Event>,
) -> Result<Started, AgentError> {
    let io_err =
        |e: io::Error| AgentError::new(ErrorKind::Io, format!("cannot start the command: {e}"));
    let devnull = fs::File::open("/dev/null").map_err(io_err)?;
    let (out_r, out_w) = pipe().map_err(io_err)?;
    let err_pipe = if req.merge_stderr {
        None
    } else {
        Some(pipe().map_err(io_err)?)
    };
    let stdio = Stdio {
        stdin: devnull.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_pipe
            .as_ref()
            .map(|(_, w)| w.as_raw_fd())
            .unwrap_or(out_w.as_raw_fd()),
        controlling_terminal: false,
    };
    let pid = spawn(&req.argv, &req.env, &req.cwd, ws, &stdio, events)?;
    drop(out_w);
    let mut pipes = vec![(Stream::Stdout, out_r)];
    if let Some((r, w)) = err_pipe {
        drop(w);
        pipes.push((Stream::Stderr, r));
    }
    Ok(Started::new(pid, pipes))
}

/// Forks and execs `argv` in `cwd` (under the workspace) with exactly `env` and the
/// descriptors of `stdio`, as the leader of a new session; returns its pid once the
/// exec succeeded. `events` receives the exit status (from the reaper).
pub fn spawn(
    argv: &[String],
    env: &[(String, String)],
    cwd: &str,
    ws: &Workspace,
    stdio: &Stdio,
    events: Sender<Event>,
) -> Result<i32, AgentError> {
    let Some(argv0) = argv.first() else {
        return Err(AgentError::new(
            ErrorKind::InvalidRequest,
            "exec needs a program (argv is empty)",
        ));
    };
    let cwd = ws.resolve_dir(cwd)?;
    let path_var = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    let program = find_program(argv0, path_var, &cwd)?;
    let program_c = CString::new(program.as_os_str().as_bytes())
        .map_err(|_| spawn_failed("the program path contains a NUL byte".into()))?;
    let cwd_c = CString::new(cwd.as_os_str().as_bytes())
        .map_err(|_| spawn_failed("the working directory contains a NUL byte".into()))?;
    let argv: Vec<CString> = argv
        .iter()
        .map(|a| cstring(a, "argument list"))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env
        .iter()
        .map(|(k, v)| cstring(&format!("{k}={v}"), "environment"))
        .collect::<Result<_, _>>()?;
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_p.push(std::ptr::null());

    let io_err =
        |e: io::Error| AgentError::new(ErrorKind::Io, format!("cannot start the command: {e}"));
    let (exec_r, exec_w) = pipe().map_err(io_err)?;
    let oom_path = c"/proc/self/oom_score_adj";

    let fds = (stdio.stdin, stdio.stdout, stdio.stderr, exec_w.as_raw_fd());
    let ctty = stdio.controlling_terminal;
    let on_exit = {
        let events = events.clone();
        move |status| {
            let _ = events.send(Event::Exited(status));
        }
    };
    let pid = reaper::global().start(
        || {
            // SAFETY: between fork and exec the child calls only async-signal-safe
            // functions on memory prepared before the fork, then execs or `_exit`s.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                return Err(io_err(io::Error::last_os_error()));
            }
            if pid == 0 {
                unsafe {
                    child(
                        fds,
                        ctty,
                        &cwd_c,
                        &program_c,
                        &argv_p,
                        &envp_p,
                        oom_path.as_ptr(),
                    )
                }
            }
            Ok(pid)
        },
        on_exit,
    )?;
    drop(exec_w);
    // The exec pipe closes (CLOEXEC) when exec succeeds; otherwise the child wrote errno.
    let mut errno = [0u8; 4];
    let mut f = fs::File::from(exec_r);
    let n = f.read(&mut errno).unwrap_or(0);
    if n == 4 {
        let e = io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
        return Err(spawn_failed(format!(
            "cannot run '{}': {e}",
            program.display()
        )));
    }
    Ok(pid)
}

/// The child between fork and exec.
///
/// # Safety
/// Only after `fork`, in the child; every pointer must be valid.
unsafe fn child(
    (stdin, stdout, stderr, exec_w): (i32, i32, i32, i32),
    controlling_terminal: bool,
    cwd: &CString,
    program: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    oom_path: *const libc::c_char,
) -> ! {
    unsafe {
        libc::setsid();
        libc::dup2(stdin, 0);
        libc::dup2(stdout, 1);
        libc::dup2(stderr, 2);
        // A PTY as stdin becomes the new session's controlling terminal, so `Ctrl+C`
        // there is `SIGINT` for the foreground process group.
        if controlling_terminal {
            libc::ioctl(0, libc::TIOCSCTTY, 0);
        }
        // The agent ignores SIGPIPE and blocks nothing, but say so for the child; and a
        // disposition the agent inherited (an ignored SIGINT from a background launch)
        // must not reach the command, or `Ctrl+C` on its terminal would do nothing.
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        // The agent protects itself from the OOM killer; its commands must not be.
        let fd = libc::open(oom_path, libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
        }
        if libc::chdir(cwd.as_ptr()) == 0 {
            libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
        let errno = *libc::__errno_location();
        let bytes = errno.to_ne_bytes();
        libc::write(exec_w, bytes.as_ptr().cast(), 4);
        libc::_exit(127)
    }
}

/// Kills `leader`'s process group, then every process still in its group or session
/// (a process that made its own group stays in the session; one that made its own
/// session is out of reach, as with any process supervisor without cgroups).
pub fn kill_tree(leader: i32) {
    // SAFETY: kill(2) of a negative pid signals a process group of ours.
    unsafe {
        libc::kill(-leader, libc::SIGKILL);
    }
    for _ in 0..3 {
        let mut found = false;
        let Ok(rd) = fs::read_dir("/proc") else {
            return;
        };
        for entry in rd.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // Fields after the command name (which may contain spaces and parens).
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let pgrp = f.get(2).and_then(|s| s.parse::<i32>().ok());
            let session = f.get(3).and_then(|s| s.parse::<i32>().ok());
            if (pgrp == Some(leader) || session == Some(leader)) && f.first() != Some(&"Z") {
                // SAFETY: plain kill(2).
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                found = true;
            }
        }
        if !found {
            break;
        }
    }
}

/// Reads one pipe into the exec's events until EOF (or until nobody listens).
fn pump(stream: Stream, fd: OwnedFd, events: Sender<Event>) {
    let mut f = fs::File::from(fd);
    let mut buf = vec![0u8; CHUNK];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if events
                    .send(Event::Chunk(stream, buf[..n].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = events.send(Event::Eof);
}

/// Streams the output of `started` through `send` and returns how it ended. `events`
/// also carries [`Event::Cancel`]. A failed `send` (the host is gone) kills the tree.
pub fn run(
    started: Started,
    req: &ExecRequest,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    send: impl FnMut(Response, &[u8]) -> bool,
) -> ExecExit {
    run_streams(
        started,
        req.output_limit,
        req.timeout_ms,
        events_tx,
        events,
        send,
    )
}

/// [`run`] with the output limit and timeout given apart (interactive execs have
/// neither).
pub fn run_streams(
    started: Started,
    output_limit: Option<u64>,
    timeout_ms: Option<u64>,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    mut send: impl FnMut(Response, &[u8]) -> bool,
) -> ExecExit {
    let pid = started.pid;
    let mut open = started.pipes.len();
    for (stream, fd) in started.pipes {
        let tx = events_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("exec-output".into())
            .spawn(move || pump(stream, fd, tx));
        if spawned.is_err() {
            open -= 1;
        }
    }
    drop(events_tx);
    let limit = output_limit.unwrap_or(u64::MAX);
    let deadline = timeout_ms.map(|ms| started.started + Duration::from_millis(ms));
    let mut status: Option<i32> = None;
    let mut sent = 0u64;
    let mut total = 0u64;
    let (mut timed_out, mut cancelled, mut killed) = (false, false, false);
    let mut host_gone = false;
    // When the program has exited (or been killed): how long the output may stay open.
    let mut grace: Option<Instant> = None;
    let mut gave_up = false;
    while !gave_up && (status.is_none() || open > 0) {
        let wake = match (grace, deadline) {
            (Some(g), _) => Some(g),
            (None, Some(d)) if !killed => Some(d),
            _ => None,
        };
        let ev = match wake {
            Some(t) => events.recv_timeout(t.saturating_duration_since(Instant::now())),
            None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match ev {
            Ok(Event::Chunk(stream, data)) => {
                total += data.len() as u64;
                if sent < limit && !host_gone {
                    let take = ((limit - sent).min(data.len() as u64)) as usize;
                    sent += take as u64;
                    if !send(Response::Output { stream }, &data[..take]) {
                        host_gone = true;
                        if !killed {
                            killed = true;
                            cancelled = true;
                            kill_tree(pid);
                            grace = Some(Instant::now() + KILL_GRACE);
                        }
                    }
                }
            }
            Ok(Event::Eof) => open = open.saturating_sub(1),
            Ok(Event::Exited(st)) => {
                status = Some(st);
                if open > 0 && grace.is_none() {
                    grace = Some(Instant::now() + EXIT_GRACE);
                }
            }
            Ok(Event::Cancel) => {
                if !killed {
                    killed = true;
                    cancelled = true;
                    kill_tree(pid);
                    grace = Some(Instant::now() + KILL_GRACE);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if grace.is_some_and(|g| Instant::now() >= g) {
                    if status.is_some() && !killed {
                        // Exited, but background processes hold the output: kill them.
                        killed = true;
                        kill_tree(pid);
                        grace = Some(Instant::now() + KILL_GRACE);
                    } else if status.is_some() {
                        gave_up = true;
                    } else {
                        // Killed but not yet reaped: SIGKILL cannot be blocked, wait on.
                        grace = None;
                    }
                } else if !killed && deadline.is_some_and(|d| Instant::now() >= d) {
                    killed = true;
                    timed_out = true;
                    kill_tree(pid);
                    grace = Some(Instant::now() + KILL_GRACE);
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let st = status.unwrap_or(0);
    let (code, signal) = if status.is_none() {
        (None, None)
    } else if libc::WIFEXITED(st) {
        (Some(libc::WEXITSTATUS(st)), None)
    } else if libc::WIFSIGNALED(st) {
        (None, Some(libc::WTERMSIG(st)))
    } else {
        (None, None)
    };
    ExecExit {
        // A command killed by us reports no exit code even if it raced to exit.
        code: if timed_out || cancelled { None } else { code },
        signal: if timed_out || cancelled {
            signal.or(Some(libc::SIGKILL))
        } else {
            signal
        },
        timed_out,
        cancelled,
        output_bytes: total,
        duration_ms: started.started.elapsed().as_millis() as u64,
    }
}

/// Sends a cancel to an exec's events; false when it already ended.
pub fn cancel(tx: &Sender<Event>) -> bool {
    tx.send(Event::Cancel).is_ok()
}

/// A fresh channel for one exec.
pub fn channel() -> (Sender<Event>, Receiver<Event>) {
    mpsc::channel()
}
