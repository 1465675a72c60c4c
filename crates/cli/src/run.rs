//! `safe-coder run [OPTIONS] -- CMD [ARGS...]` (docs/run.md): any agent CLI in the
//! sandbox, with the session's history, review and sync.
//!
//! Like every front end it only sends ops and renders events: [`Op::Run`] then
//! [`Op::Shutdown`]. While the command runs, the user's terminal is in raw mode and
//! passed through: every byte typed goes to the command (`Ctrl+C` included: the
//! command's own terminal turns it into `SIGINT` for the command), its output is written
//! as it comes, and `SIGWINCH` resizes its terminal. When it exits, the terminal is
//! restored and the review is asked as in line mode (or answered by `--sync`).
//!
//! The hidden `__net-forward` subcommand runs inside the sandbox (see
//! [`net_forward`]): the forwarder of the network allow-list, wrapping the command.

use std::io::{IsTerminal, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;

use anyhow::Result;
use safe_coder_protocol::display::{escape_for_terminal, run_finished_text};
use safe_coder_protocol::{Event, Op, ReviewDecision, RunRequest};
use tokio::sync::mpsc;

use crate::chat_line::{ask_review, LineInput};
use crate::setup;
use crate::{render, AgentArgs, SyncChoice};

/// A known agent CLI: its command, the hosts its API lives on, its key variables.
pub struct Preset {
    pub name: &'static str,
    pub hosts: &'static [&'static str],
    /// Passed when set (at least one should be).
    pub keys: &'static [&'static str],
}

/// `safe-coder run claude|codex|gemini|aider` (docs/run.md has what each needs).
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "claude",
        hosts: &["api.anthropic.com", "statsig.anthropic.com"],
        keys: &["ANTHROPIC_API_KEY"],
    },
    Preset {
        name: "codex",
        hosts: &["api.openai.com"],
        keys: &["OPENAI_API_KEY"],
    },
    Preset {
        name: "gemini",
        hosts: &["generativelanguage.googleapis.com"],
        keys: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
    },
    Preset {
        name: "aider",
        hosts: &["api.openai.com", "api.anthropic.com"],
        keys: &["OPENAI_API_KEY", "ANTHROPIC_API_KEY"],
    },
];

pub fn preset(command: &str) -> Option<&'static Preset> {
    let base = command.rsplit('/').next().unwrap_or(command);
    PRESETS.iter().find(|p| p.name == base)
}

/// What `safe-coder run` was given.
pub struct RunArgs {
    pub agent: AgentArgs,
    pub allow_net: Vec<String>,
    pub env: Vec<String>,
    pub mounts: Vec<String>,
    pub json: bool,
    pub sync: Option<SyncChoice>,
    pub no_preset: bool,
    pub command: Vec<String>,
}

/// `PATH[:ro]` → the path as the user named it and read-only: absolute (from the shell's
/// `PWD` when it is the current directory, so a directory entered through a symlink
/// keeps its name), `.` and `..` taken out by the letter, symlinks kept; the core shows
/// the canonical source there (docs/run.md). The path must exist.
fn parse_mount(spec: &str) -> Result<(String, bool)> {
    let (path, ro) = match spec.strip_suffix(":ro") {
        Some(p) => (p, true),
        None => (spec.strip_suffix(":rw").unwrap_or(spec), false),
    };
    let given = PathBuf::from(path);
    let absolute = if given.is_absolute() {
        given.clone()
    } else {
        logical_cwd()
            .map_err(|e| anyhow::anyhow!("cannot mount {}: {e}", given.display()))?
            .join(&given)
    };
    let normal = normalize(&absolute);
    std::fs::metadata(&normal)
        .map_err(|e| anyhow::anyhow!("cannot mount {}: {e}", given.display()))?;
    Ok((normal.display().to_string(), ro))
}

/// The current directory as the shell names it (`PWD`, when that is this directory),
/// else as the kernel does.
fn logical_cwd() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let physical = std::env::current_dir()?;
    if let Some(pwd) = std::env::var_os("PWD").map(PathBuf::from) {
        if let (true, Ok(a), Ok(b)) = (
            pwd.is_absolute(),
            std::fs::metadata(&pwd),
            std::fs::metadata(&physical),
        ) {
            if (a.dev(), a.ino()) == (b.dev(), b.ino()) {
                return Ok(pwd);
            }
        }
    }
    Ok(physical)
}

/// Takes `.` and `..` out of an absolute path by the letter (as `cd -L` does).
fn normalize(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The terminal in raw mode until dropped.
struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    fn enable(fd: i32) -> Option<RawMode> {
        // SAFETY: tcgetattr/tcsetattr on a valid fd with a termios we own.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawMode { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable`.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}

fn terminal_size() -> Option<(u16, u16)> {
    for fd in [1, 0, 2] {
        // SAFETY: TIOCGWINSZ writes a winsize into a valid struct.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

/// Reads stdin as bytes on a thread; an empty chunk is the end of input.
fn stdin_bytes() -> mpsc::UnboundedReceiver<Vec<u8>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: read into a valid buffer from fd 0.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                let _ = tx.send(Vec::new());
                break;
            }
            if tx.send(buf[..n as usize].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

fn eprint_line(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

fn print_json(event: &Event) {
    let mut out = std::io::stdout().lock();
    if let Ok(line) = serde_json::to_string(event) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Runs the command; returns the exit code for the process (the command's own).
pub async fn run(args: RunArgs) -> Result<u8> {
    let prepared = setup::prepare(&args.agent)?;
    let settings = setup::settings(&prepared)?;
    let mut allow_net = prepared.resolved.network_allow.clone();
    allow_net.extend(args.allow_net.iter().cloned());
    let mut env = args.env.clone();
    let command = args.command.clone();
    let Some(program) = command.first() else {
        anyhow::bail!("no command to run: `safe-coder run -- CMD [ARGS...]` or a preset (claude, codex, gemini, aider)");
    };
    if let Some(p) = preset(program).filter(|_| !args.no_preset) {
        allow_net.extend(p.hosts.iter().map(|h| h.to_string()));
        let set: Vec<&str> = p
            .keys
            .iter()
            .copied()
            .filter(|k| std::env::var_os(k).is_some())
            .collect();
        if set.is_empty() {
            eprint_line(&format!(
                "warning: {} needs {} set to reach its API (or --mount its login directory)",
                p.name,
                p.keys.join(" or ")
            ));
        }
        env.extend(set.iter().map(|k| k.to_string()));
    }
    env.dedup();
    let mounts = args
        .mounts
        .iter()
        .map(|m| parse_mount(m))
        .collect::<Result<Vec<_>>>()?;
    let interactive =
        std::io::stdin().is_terminal() && std::io::stdout().is_terminal() && !args.json;
    let terminal = if interactive {
        Some(terminal_size().unwrap_or((24, 80)))
    } else {
        None
    };
    let forwarder = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string());
    let request = RunRequest {
        argv: command.clone(),
        env,
        allow_net,
        mounts,
        terminal,
        forwarder,
    };

    let mut conv = safe_coder_core::start_run(settings).await?;
    let _ = conv.ops.send(Op::Run { run: request });
    let _ = conv.ops.send(Op::Shutdown);

    // Typed bytes go to the command while it runs (what was typed before it started
    // waits for it, the end of input included), and become lines for the review
    // afterwards (the review is asked while the event loop waits for the answer).
    let (phase, phase_rx) = tokio::sync::watch::channel(Phase::Before);
    let (line_tx, line_rx) = mpsc::unbounded_channel::<String>();
    let lines = LineInput::from_receiver(line_rx);
    let pump = tokio::spawn(pump_input(
        stdin_bytes(),
        phase_rx,
        conv.ops.clone(),
        line_tx,
    ));
    let mut raw: Option<RawMode> = None;
    let mut held: Vec<String> = Vec::new();
    let mut exit_code: u8 = 0;
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        let event = tokio::select! {
            e = conv.events.recv() => e,
            _ = winch.recv() => {
                if let Some((rows, cols)) = terminal_size() {
                    let _ = conv.ops.send(Op::TerminalResize { rows, cols });
                }
                continue;
            }
            _ = term.recv() => { let _ = conv.ops.send(Op::Interrupt); continue; }
            _ = hup.recv() => { let _ = conv.ops.send(Op::Interrupt); continue; }
        };
        let Some(event) = event else { break };
        if args.json && !matches!(event, Event::TerminalOutput { .. }) {
            print_json(&event);
        }
        match &event {
            Event::SessionStarted {
                session_id,
                backend,
                ..
            } if !args.json => {
                eprint_line(&format!(
                    "🔒 Safe Coder: running {} in session {session_id} ({backend} backend)",
                    escape_for_terminal(&command.join(" "))
                ));
            }
            Event::RunStarted { allow_net, .. } => {
                if !args.json {
                    eprint_line(&if allow_net.is_empty() {
                        "   network: none".to_string()
                    } else {
                        format!("   network: only {}", allow_net.join(", "))
                    });
                }
                let _ = phase.send(Phase::Running);
                if interactive {
                    raw = RawMode::enable(0);
                }
            }
            Event::TerminalOutput { data } => {
                if args.json {
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(data);
                    let _ = err.flush();
                } else {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(data);
                    let _ = out.flush();
                }
            }
            Event::RunFinished {
                exit_code: code,
                signal,
                ..
            } => {
                let _ = phase.send(Phase::After);
                drop(raw.take());
                exit_code = match (code, signal) {
                    (Some(c), _) => (*c).clamp(0, 255) as u8,
                    (None, Some(s)) => (128 + *s).clamp(0, 255) as u8,
                    (None, None) => 1,
                };
                if !args.json {
                    if let Some(text) = run_finished_text(&event) {
                        eprint_line(&format!("\n{text}"));
                    }
                    for line in held.drain(..) {
                        eprint_line(&line);
                    }
                }
            }
            Event::ReviewRequested { changes, diffs, .. } => {
                // A command that never started: what is typed now answers the review.
                if *phase.borrow() == Phase::Before {
                    let _ = phase.send(Phase::After);
                }
                let decision = match args.sync {
                    Some(SyncChoice::Accept) => ReviewDecision::AcceptAll,
                    Some(SyncChoice::Reject) => ReviewDecision::RejectAll,
                    Some(SyncChoice::Keep) => ReviewDecision::Keep,
                    // A SIGTERM or SIGHUP while asking keeps everything for later.
                    None if interactive => tokio::select! {
                        d = ask_review(&lines, changes, diffs) => d,
                        _ = term.recv() => ReviewDecision::Keep,
                        _ = hup.recv() => ReviewDecision::Keep,
                    },
                    None => ReviewDecision::Keep,
                };
                let _ = conv.ops.send(Op::Review { decision });
            }
            Event::SessionEnded { .. } => break,
            // Lines would tear a full-screen program: held until it exits.
            Event::Error { message }
                if !args.json && interactive && *phase.borrow() == Phase::Running =>
            {
                held.push(format!("error: {message}"));
                exit_code = exit_code.max(1);
            }
            Event::Error { message } if !args.json => {
                drop(raw.take());
                eprint_line(&format!("error: {message}"));
                exit_code = exit_code.max(1);
            }
            Event::Error { .. } => exit_code = exit_code.max(1),
            // Lines would tear a full-screen program: shown at its exit instead.
            Event::Committed { .. } | Event::NetworkRefused { .. }
                if interactive && *phase.borrow() == Phase::Running => {}
            other if !args.json => {
                if let Some(text) = render::event_text(other, false) {
                    eprint_line(&text);
                }
            }
            _ => {}
        }
    }
    drop(raw);
    pump.abort();
    conv.join().await;
    Ok(exit_code)
}

/// Where typed bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Before,
    Running,
    After,
}

async fn pump_input(
    mut input: mpsc::UnboundedReceiver<Vec<u8>>,
    mut phase: tokio::sync::watch::Receiver<Phase>,
    ops: mpsc::UnboundedSender<Op>,
    lines: mpsc::UnboundedSender<String>,
) {
    let mut queued: Vec<Vec<u8>> = Vec::new();
    let mut pending = Vec::<u8>::new();
    let mut eof = false;
    loop {
        tokio::select! {
            bytes = input.recv(), if !eof => match bytes {
                Some(b) => {
                    eof = b.is_empty();
                    queued.push(b);
                }
                None => eof = true,
            },
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
        let now = *phase.borrow();
        match now {
            Phase::Before => {}
            Phase::Running => {
                for data in queued.drain(..) {
                    let _ = ops.send(Op::TerminalInput { data });
                }
            }
            Phase::After => {
                for b in queued.drain(..) {
                    pending.extend_from_slice(&b);
                }
                while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    let text = String::from_utf8_lossy(&line)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    let _ = lines.send(text);
                }
                if eof {
                    // Dropping `lines` answers the review's questions with "end of input".
                    break;
                }
            }
        }
    }
}

/// Where `__net-forward` carries the connections.
pub enum ForwardVia {
    /// The proxy's Unix socket, bound into the sandbox (bubblewrap).
    Socket(PathBuf),
    /// An inherited stream (a socket pair's end) whose other end the host serves with
    /// `mux::serve_host` (the in-process confiner, which can bind nothing in).
    Stream(i32),
}

/// `safe-coder __net-forward --port P (--socket S | --stream-fd N) -- CMD...`, inside the
/// sandbox: listens on the sandbox's loopback, carries each connection to the proxy
/// (its socket, or the stream), and runs CMD as its child, exiting as CMD did. It
/// ignores `SIGINT` and `SIGQUIT` (typed at the terminal, they are for CMD, which gets
/// them with their default meaning back).
pub fn net_forward(port: u16, via: ForwardVia, command: Vec<String>) -> u8 {
    let Some(program) = command.first() else {
        eprintln!("safe-coder __net-forward: no command");
        return 2;
    };
    let listener = match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("safe-coder: could not listen on 127.0.0.1:{port} in the sandbox: {e}");
            return 126;
        }
    };
    match via {
        ForwardVia::Socket(socket) => {
            std::thread::spawn(move || safe_coder_netproxy::forward::serve(listener, &socket));
        }
        ForwardVia::Stream(fd) => {
            let stream = match inherited_stream(fd) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!(
                        "safe-coder: the network stream (descriptor {fd}) is not usable: {e}"
                    );
                    return 126;
                }
            };
            std::thread::spawn(move || {
                let (from_host, to_host) = stream;
                if let Err(e) = safe_coder_netproxy::mux::serve_guest(listener, from_host, to_host)
                {
                    eprintln!("safe-coder: the sandbox's network stream broke: {e}");
                }
            });
        }
    }
    // SAFETY: setting signal dispositions to SIG_IGN / SIG_DFL.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(&command[1..]);
    // SAFETY: signal(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            Ok(())
        });
    }
    match cmd.status() {
        Ok(status) => {
            if let Some(code) = status.code() {
                return code.clamp(0, 255) as u8;
            }
            let sig = status.signal().unwrap_or(libc::SIGKILL);
            // SAFETY: dies of the same signal, so the caller sees how CMD ended.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::kill(libc::getpid(), sig);
            }
            (128 + sig).clamp(0, 255) as u8
        }
        Err(e) => {
            eprintln!("safe-coder: could not start {program} in the sandbox: {e}");
            127
        }
    }
}

/// Takes the inherited descriptor `fd` (kept from CMD: close-on-exec) as the read and
/// write halves of the network stream.
fn inherited_stream(fd: i32) -> std::io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl on a plain number: it fails with EBADF when nothing is open there.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (above), was handed to this process for this use
    // alone, and is owned by this File from here on.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    Ok((file.try_clone()?, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_keep_their_symlinks() {
        assert_eq!(
            normalize(std::path::Path::new("/a/./b/../c//d/")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(
            normalize(std::path::Path::new("/../x")),
            PathBuf::from("/x")
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("real")).expect("mkdir");
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link"))
            .expect("symlink");
        let spec = format!("{}/./link/:ro", dir.path().display());
        let (path, ro) = parse_mount(&spec).expect("parse");
        assert!(ro);
        assert_eq!(PathBuf::from(path), dir.path().join("link"));
        assert!(parse_mount(&format!("{}/absent", dir.path().display())).is_err());
    }

    #[test]
    fn presets_by_command_name() {
        assert_eq!(preset("codex").map(|p| p.name), Some("codex"));
        assert_eq!(
            preset("/usr/local/bin/claude").map(|p| p.name),
            Some("claude")
        );
        assert!(preset("bash").is_none());
        for p in PRESETS {
            assert!(
                safe_coder_netproxy::AllowList::parse(p.hosts).is_ok(),
                "{}",
                p.name
            );
            assert!(!p.keys.is_empty());
        }
    }
}
