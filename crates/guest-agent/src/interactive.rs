//! Interactive execs (`exec_interactive`, docs/vm-protocol.md): a program whose input
//! the host streams while it runs (`safe-coder run`, and the network forwarder).
//!
//! - With a terminal: a PTY of the asked size is the program's stdin, stdout, stderr and
//!   controlling terminal (it leads a new session), so a `Ctrl+C` byte from the host is
//!   `SIGINT` for its foreground process group, and `resize` (`TIOCSWINSZ`) is
//!   `SIGWINCH`. The master's bytes go back as `stdout` output.
//! - Without: pipes. stdin is fed by `stdin` requests (empty data closes it); stdout and
//!   stderr come back as with `exec` (merged when asked).
//!
//! Output, exit, cancel and the end of the connection are [`crate::exec::run_streams`]'s,
//! as for every exec: the whole process group and session die on a cancel or when the
//! host is gone. Input is written by a thread of its own per exec, so a program that
//! does not read its input never blocks the connection; each `stdin` request is answered
//! once its bytes were written.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;

use safe_coder_vm_protocol::{
    AgentError, ErrorKind, InteractiveExec, RequestId, Response, Stream, TermSize,
};

use crate::exec::{self, Event, Started, Stdio};
use crate::files::Workspace;

/// What `stdin` and `resize` requests reach.
pub struct Input {
    tx: Sender<(RequestId, Vec<u8>)>,
    /// The PTY's master, for `resize`; `None` with pipes.
    pty: Option<Arc<OwnedFd>>,
}

impl Input {
    /// Hands `data` to the exec's input thread, which answers request `id` through
    /// `reply` once written (or failed). False when the exec has ended.
    pub fn write(&self, id: RequestId, data: Vec<u8>) -> bool {
        self.tx.send((id, data)).is_ok()
    }

    /// Sets the PTY's size (its foreground process group gets `SIGWINCH`).
    pub fn resize(&self, size: TermSize) -> Result<(), AgentError> {
        let Some(pty) = &self.pty else {
            return Ok(());
        };
        set_size(pty.as_raw_fd(), size)
            .map_err(|e| AgentError::new(ErrorKind::Io, format!("cannot resize the terminal: {e}")))
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

fn set_size(fd: i32, size: TermSize) -> io::Result<()> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A PTY of `size`: (master, slave), both close-on-exec.
fn open_pty(size: TermSize) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    let ws = winsize(size);
    // SAFETY: openpty writes two descriptors into `fds`; name and termios are null
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
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded; both are open and owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on an owned descriptor. Other execs must not inherit them.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((master, slave))
}

/// Starts `req` in `ws`; `reply` answers the `stdin` requests later handed to the
/// returned [`Input`]. `events` receives the exit status; the output is read by
/// [`exec::run_streams`] from the returned [`Started`].
pub fn start(
    req: &InteractiveExec,
    ws: &Workspace,
    events: Sender<Event>,
    reply: impl Fn(RequestId, Result<Response, AgentError>) + Send + 'static,
) -> Result<(Started, Input), AgentError> {
    let mut argv = req.argv.clone();
    // The agent itself by name (`safe-coder-guest-agent net-forward …`, the network
    // forwarder): this very executable, wherever it lives (`/usr/local/sbin` in the
    // image, a build directory when a test runs the agent on the host).
    if argv.first().map(String::as_str) == Some(crate::SOFTWARE_NAME) {
        if let Ok(me) = std::env::current_exe() {
            argv[0] = me.display().to_string();
        }
    }
    let req = &InteractiveExec {
        argv,
        ..req.clone()
    };
    let io_err =
        |e: io::Error| AgentError::new(ErrorKind::Io, format!("cannot start the command: {e}"));
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(io_err);
    match req.terminal {
        Some(size) => {
            let (master, slave) = open_pty(size).map_err(io_err)?;
            let stdio = Stdio {
                stdin: slave.as_raw_fd(),
                stdout: slave.as_raw_fd(),
                stderr: slave.as_raw_fd(),
                controlling_terminal: true,
            };
            let pid = exec::spawn(&req.argv, &req.env, &req.cwd, ws, &stdio, events)?;
            // Only the program may hold the terminal: the master reads EIO once it and
            // everything it started are gone.
            drop(slave);
            let writer = dup(&master)?;
            let pty = Arc::new(dup(&master)?);
            let input = input_thread(Some(writer), true, reply).map_err(io_err)?;
            Ok((
                Started::new(pid, vec![(Stream::Stdout, master)]),
                Input {
                    tx: input,
                    pty: Some(pty),
                },
            ))
        }
        None => {
            let (in_r, in_w) = exec::cloexec_pipe().map_err(io_err)?;
            let (out_r, out_w) = exec::cloexec_pipe().map_err(io_err)?;
            let err_pipe = if req.merge_stderr {
                None
            } else {
                Some(exec::cloexec_pipe().map_err(io_err)?)
            };
            let stdio = Stdio {
                stdin: in_r.as_raw_fd(),
                stdout: out_w.as_raw_fd(),
                stderr: err_pipe
                    .as_ref()
                    .map(|(_, w)| w.as_raw_fd())
                    .unwrap_or(out_w.as_raw_fd()),
                controlling_terminal: false,
            };
            let pid = exec::spawn(&req.argv, &req.env, &req.cwd, ws, &stdio, events)?;
            drop((in_r, out_w));
            let mut outputs = vec![(Stream::Stdout, out_r)];
            if let Some((r, w)) = err_pipe {
                drop(w);
                outputs.push((Stream::Stderr, r));
            }
            let input = input_thread(Some(in_w), false, reply).map_err(io_err)?;
            Ok((
                Started::new(pid, outputs),
                Input {
                    tx: input,
                    pty: None,
                },
            ))
        }
    }
}

/// The thread that writes the program's input, in the order the requests came. Ends
/// when the exec's [`Input`] is dropped.
fn input_thread(
    fd: Option<OwnedFd>,
    is_pty: bool,
    reply: impl Fn(RequestId, Result<Response, AgentError>) + Send + 'static,
) -> io::Result<Sender<(RequestId, Vec<u8>)>> {
    let (tx, rx) = mpsc::channel::<(RequestId, Vec<u8>)>();
    let mut file = fd.map(File::from);
    std::thread::Builder::new()
        .name("exec-input".into())
        .spawn(move || {
            for (id, data) in rx {
                if data.is_empty() {
                    // The end of the input: a pipe is closed (the program reads EOF);
                    // a terminal has no end of its own (its program ends it).
                    if !is_pty {
                        file = None;
                    }
                    reply(id, Ok(Response::Done));
                    continue;
                }
                let r = match file.as_mut() {
                    None => Err(AgentError::new(
                        ErrorKind::InvalidRequest,
                        "the command's input was already closed",
                    )),
                    Some(f) => f.write_all(&data).map(|()| Response::Done).map_err(|e| {
                        AgentError::new(
                            ErrorKind::Io,
                            format!("the command no longer takes input: {e}"),
                        )
                    }),
                };
                reply(id, r);
            }
        })?;
    Ok(tx)
}
