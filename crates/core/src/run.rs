//! `safe-coder run` (docs/run.md): any agent CLI as the session's agent. [`Op::Run`]
//! starts the command in the sandbox with a terminal of its own; the front end passes
//! the user's keys in ([`Op::TerminalInput`], [`Op::TerminalResize`], taken by the
//! dispatcher at once) and draws [`Event::TerminalOutput`]. While it runs, the work
//! tree is committed after a quiet period following changes, and once more when it
//! exits, as `Agent executed: run <cmd>`; so `sessions diff` works during a long run,
//! and a crash of anything loses at most the last quiet period. The review and sync
//! afterwards are the session's usual ones ([`Op::Shutdown`]).
//!
//! With an allow-list, a [`Proxy`] outside the sandbox listens on a Unix socket in the
//! session dir, and the command gets `HTTPS_PROXY` and its kin pointing at
//! `127.0.0.1:FORWARDER_PORT`; the backend makes that port inside reach the socket
//! ([`NetworkAccess`]: a forwarder bound in on `process`, the guest agent's
//! `net-forward` over a pipe on docker and the microVMs).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use safe_coder_llm::{CancellationToken as LlmCancel, LlmError, ModelClient, ProviderKind};
use safe_coder_netproxy::{AllowList, Proxy};
use safe_coder_protocol::{Event, ModelRequest, ModelResponse, RunRequest, StreamEvent};
use safe_coder_sandbox::{
    BackendKind, CancellationToken, InteractiveRequest, Mount, NetworkAccess, RunExit, TermSize,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::agent::EventSink;
use crate::commands::Runner;

/// The forwarder's port on the sandbox's loopback (the sandbox has a network namespace
/// of its own, so no port of the host is taken).
pub const FORWARDER_PORT: u16 = 3128;
/// How often the work tree is looked at for changes while the command runs.
const POLL: Duration = Duration::from_millis(500);
/// How long the work tree must stay unchanged before a change is committed.
const QUIET: Duration = Duration::from_millis(1500);
/// After the command exited, how long to wait for the rest of its output.
const DRAIN: Duration = Duration::from_millis(500);

/// What the dispatcher hands the running command.
pub(crate) enum TermIn {
    Data(Vec<u8>),
    Resize(u16, u16),
}

/// The running command's input, when one runs.
#[derive(Clone, Default)]
pub(crate) struct TerminalSlot(Arc<Mutex<Option<mpsc::UnboundedSender<TermIn>>>>);

impl TerminalSlot {
    /// Passes input on; dropped when nothing runs.
    pub(crate) fn send(&self, msg: TermIn) {
        if let Ok(slot) = self.0.lock() {
            if let Some(tx) = slot.as_ref() {
                let _ = tx.send(msg);
            }
        }
    }

    fn set(&self, tx: Option<mpsc::UnboundedSender<TermIn>>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = tx;
        }
    }
}

/// The model client of a `run` session: there is no model, the command is the agent.
pub(crate) struct NoModel(pub ProviderKind);

#[async_trait]
impl ModelClient for NoModel {
    async fn stream(
        &self,
        _request: &ModelRequest,
        _on_event: &mut (dyn FnMut(StreamEvent) + Send),
        _cancel: &LlmCancel,
    ) -> Result<ModelResponse, LlmError> {
        Err(LlmError::MissingApiKey { provider: self.0 })
    }

    fn kind(&self) -> ProviderKind {
        self.0
    }
}

/// A cheap summary of the work tree: paths, sizes, modification times and modes (one
/// `lstat` per entry). Public for `benches/watch.rs`, which measures what it costs.
#[doc(hidden)]
pub fn fingerprint(root: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            e.file_name().hash(&mut h);
            (m.len(), m.mtime(), m.mtime_nsec(), m.mode()).hash(&mut h);
            if m.is_dir() {
                stack.push(e.path());
            }
        }
        dir.hash(&mut h);
    }
    h.finish()
}

/// Commits after a quiet period following changes.
struct Watcher {
    root: PathBuf,
    last: Option<u64>,
    changed_at: Option<Instant>,
}

impl Watcher {
    /// The first look is taken at the first tick, after the command started (not on
    /// the path to its start).
    fn new(root: PathBuf) -> Watcher {
        Watcher {
            root,
            last: None,
            changed_at: None,
        }
    }

    /// Whether a commit is due now.
    async fn due(&mut self) -> bool {
        let r = self.root.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&r)).await else {
            return false;
        };
        let Some(last) = self.last.replace(now) else {
            // The command may have changed files before this first look: one commit
            // attempt after a quiet period (it commits nothing if nothing changed).
            self.changed_at = Some(Instant::now());
            return false;
        };
        if now != last {
            self.changed_at = Some(Instant::now());
            return false;
        }
        match self.changed_at {
            Some(t) if t.elapsed() >= QUIET => {
                self.changed_at = None;
                true
            }
            _ => false,
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on an owned descriptor.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Reads what the terminal has; `Ok(None)` at its end (EOF, or `EIO` from a PTY whose
/// other side is closed).
async fn read_terminal(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        let mut guard = fd.readable().await?;
        let r = guard.try_io(|inner| {
            // SAFETY: read into a valid buffer of this length.
            let n = unsafe { libc::read(inner.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match r {
            Ok(Ok(0)) => return Ok(None),
            Ok(Ok(n)) => return Ok(Some(n)),
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(None),
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

async fn write_terminal(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|inner| {
            // SAFETY: write from a valid buffer of this length.
            let n = unsafe { libc::write(inner.as_raw_fd(), data.as_ptr().cast(), data.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// The variables that point a command at the forwarder (both spellings: curl reads only
/// the lower-case `http_proxy`, others only upper case).
fn proxy_env() -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{FORWARDER_PORT}");
    let mut env = Vec::new();
    for name in ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"] {
        env.push((name.to_string(), url.clone()));
        env.push((name.to_ascii_lowercase(), url.clone()));
    }
    env
}

impl Runner {
    async fn commit_run(&self, message: &str) {
        let repo = self.session.repo.clone();
        let msg = message.to_string();
        match tokio::task::spawn_blocking(move || repo.commit_changes(&msg, None)).await {
            Ok(Ok(Some(commit))) => self.events.emit(Event::Committed {
                message: message.to_string(),
                commit,
            }),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => self
                .events
                .error(format!("could not record the commit: {e}")),
            Err(e) => self
                .events
                .error(format!("could not record the commit: {e}")),
        }
    }

    /// [`Op::Run`](safe_coder_protocol::Op::Run): runs the command until it exits.
    pub(crate) async fn run_command(&mut self, run: RunRequest, cancel: &CancellationToken) {
        let command = run.argv.join(" ");
        if run.argv.is_empty() {
            self.events.error("no command to run: give one after `--`");
            return;
        }
        if !self.titled {
            self.recorder.title(&format!("run {command}"));
            self.titled = true;
        }
        let mut env_extra = Vec::new();
        for name in &run.env {
            match std::env::var(name) {
                Ok(v) => env_extra.push((name.clone(), v)),
                Err(_) => self.events.notice(format!(
                    "warning: {name} is not set here, so it is not passed"
                )),
            }
        }
        let allow = match AllowList::parse(&run.allow_net) {
            Ok(a) => a,
            Err(e) => {
                self.events.error(e.to_string());
                return;
            }
        };
        // Shown where the user named it, the canonical source behind it (a path through a
        // symlink keeps working inside by the name the user and the command use).
        let mut mounts = Vec::new();
        for (p, read_only) in &run.mounts {
            let path = PathBuf::from(p);
            match path.canonicalize() {
                Ok(host) if path.is_absolute() => mounts.push(Mount {
                    host,
                    path,
                    read_only: *read_only,
                }),
                Ok(_) => {
                    self.events
                        .error(format!("cannot mount {p}: give an absolute path"));
                    return;
                }
                Err(e) => {
                    self.events.error(format!("cannot mount {p}: {e}"));
                    return;
                }
            }
        }
        let mut network = None;
        let mut proxy = None;
        let isolated = !matches!(
            self.session.backend,
            BackendKind::Copy | BackendKind::Direct
        );
        if !allow.is_empty() && !isolated {
            self.events.notice(format!(
                "note: the {} backend does not isolate the network: the command can reach any host, and --allow-net is not enforced",
                self.session.backend.as_str()
            ));
        } else if !allow.is_empty() {
            let Some(forwarder) = run.forwarder.as_ref() else {
                self.events
                    .error("the network allow-list needs the safe-coder binary as the forwarder");
                return;
            };
            let socket = self.session.dir.join("net.sock");
            match Proxy::serve_unix(&socket, allow.clone()) {
                Ok(p) => proxy = Some(p),
                Err(e) => {
                    self.events.error(e.to_string());
                    return;
                }
            }
            // The backend brings the sandbox's connections to the socket (docs/run.md).
            network = Some(NetworkAccess {
                proxy_socket: socket,
                port: FORWARDER_PORT,
                forwarder: PathBuf::from(forwarder),
            });
            env_extra.extend(proxy_env());
        }
        let request = InteractiveRequest {
            argv: run.argv.clone(),
            env_extra,
            terminal: run.terminal.map(|(rows, cols)| TermSize { rows, cols }),
            binds: Vec::new(),
            mounts,
            network,
        };
        let child = match self.session.sandbox.spawn_interactive(request).await {
            Ok(c) => c,
            Err(e) => {
                self.events.error(format!("could not run {command}: {e}"));
                return;
            }
        };
        self.events.emit(Event::RunStarted {
            command: command.clone(),
            allow_net: allow.entries(),
        });
        let exit = self.drive(child, proxy, &command, cancel).await;
        let (exit, refused) = match exit {
            Ok(r) => r,
            Err(e) => {
                self.events.error(format!("{command}: {e}"));
                (
                    RunExit {
                        code: None,
                        signal: None,
                    },
                    Vec::new(),
                )
            }
        };
        self.commit_run(&format!("Agent executed: run {command}"))
            .await;
        self.events.emit(Event::RunFinished {
            command,
            exit_code: exit.code,
            signal: exit.signal,
            refused,
        });
    }

    /// Passes the terminal through, commits while it runs, and waits for the end.
    async fn drive(
        &mut self,
        child: safe_coder_sandbox::InteractiveChild,
        mut proxy: Option<Proxy>,
        command: &str,
        cancel: &CancellationToken,
    ) -> io::Result<(RunExit, Vec<String>)> {
        let safe_coder_sandbox::InteractiveChild {
            terminal,
            mut control,
        } = child;
        set_nonblocking(&terminal)?;
        // SAFETY: `terminal` is an owned, open descriptor that the AsyncFd now owns, and
        // an OwnedFd always returns that same descriptor.
        let fd = unsafe { AsyncFd::register(terminal) }
            .map_err(|e| io::Error::other(format!("could not watch the terminal: {e}")))?;
        let (tx, mut input) = mpsc::unbounded_channel();
        self.terminal.set(Some(tx));
        let message = format!("Agent executed: run {command}");
        // An overlay workspace's changes all land in its upper layer (an empty directory
        // on the host is all its mount point shows this process), and watching only them
        // costs what changed, not what the project weighs.
        let watched = match self.session.repo.overlay() {
            Some(mount) => mount.layers().upper.clone(),
            None => self.session.workspace.work_tree().to_path_buf(),
        };
        let mut watcher = Watcher::new(watched);
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; 64 * 1024];
        let mut refused: Vec<String> = Vec::new();
        let mut exit: Option<RunExit> = None;
        let mut eof = false;
        let mut drain_until: Option<tokio::time::Instant> = None;
        let mut killed = false;
        loop {
            if exit.is_some() && eof {
                break;
            }
            let drain = drain_until.unwrap_or_else(|| tokio::time::Instant::now() + DRAIN * 1000);
            tokio::select! {
                read = read_terminal(&fd, &mut buf), if !eof => match read {
                    Ok(Some(n)) => self.events.emit(Event::TerminalOutput { data: buf[..n].to_vec() }),
                    Ok(None) | Err(_) => eof = true,
                },
                msg = input.recv() => match msg {
                    // The end of the user's input: without a PTY, the command reads EOF.
                    Some(TermIn::Data(d)) if d.is_empty() => {
                        // SAFETY: shutdown on an open descriptor; on a PTY it fails harmlessly.
                        unsafe { libc::shutdown(fd.get_ref().as_raw_fd(), libc::SHUT_WR) };
                    }
                    Some(TermIn::Data(d)) if exit.is_none() => {
                        let _ = write_terminal(&fd, &d).await;
                    }
                    Some(TermIn::Data(_)) => {}
                    Some(TermIn::Resize(rows, cols)) => {
                        let _ = control.resize(TermSize { rows, cols });
                    }
                    None => {}
                },
                r = async { match proxy.as_mut() { Some(p) => p.refused().await, None => std::future::pending().await } } => {
                    if let Some(r) = r {
                        let text = r.to_string();
                        self.events.emit(Event::NetworkRefused { host: r.host, port: r.port });
                        if !refused.contains(&text) {
                            refused.push(text);
                        }
                    }
                }
                _ = tick.tick(), if exit.is_none() => {
                    if watcher.due().await {
                        self.commit_run(&message).await;
                    }
                }
                done = control.wait(), if exit.is_none() => {
                    exit = Some(done.map_err(|e| io::Error::other(e.to_string()))?);
                    drain_until = Some(tokio::time::Instant::now() + DRAIN);
                }
                _ = cancel.cancelled(), if !killed => {
                    control.kill();
                    killed = true;
                }
                _ = tokio::time::sleep_until(drain), if drain_until.is_some() => break,
            }
        }
        self.terminal.set(None);
        if let Some(p) = proxy.as_mut() {
            for r in p.drain_refused() {
                let text = r.to_string();
                self.events.emit(Event::NetworkRefused {
                    host: r.host,
                    port: r.port,
                });
                if !refused.contains(&text) {
                    refused.push(text);
                }
            }
        }
        Ok((
            exit.unwrap_or(RunExit {
                code: None,
                signal: None,
            }),
            refused,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_sees_writes_and_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = fingerprint(dir.path());
        std::fs::create_dir(dir.path().join("d")).expect("mkdir");
        std::fs::write(dir.path().join("d/f"), "1").expect("write");
        let b = fingerprint(dir.path());
        assert_ne!(a, b);
        assert_eq!(b, fingerprint(dir.path()));
        std::fs::write(dir.path().join("d/f"), "22").expect("write");
        let c = fingerprint(dir.path());
        assert_ne!(b, c);
        std::fs::remove_file(dir.path().join("d/f")).expect("rm");
        assert_ne!(c, fingerprint(dir.path()));
    }
}
