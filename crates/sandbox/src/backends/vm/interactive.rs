//! Interactive commands on the microVM backends (`safe-coder run`, docs/run.md): an
//! interactive exec of the guest agent (`exec_interactive`, docs/vm-protocol.md) on the
//! VM's one agent connection.
//!
//! - The core gets one end of a host socket pair as the terminal; a bridge task carries
//!   its bytes to the exec as `stdin` requests (a few in flight, in order) and the exec's
//!   `output` frames back. With a terminal the line discipline is the guest's PTY (a
//!   `Ctrl+C` byte is `SIGINT` for CMD's foreground group there, `resize` is the PTY's
//!   `TIOCSWINSZ`); a host PTY in between would echo and edit lines a second time.
//! - The host tree is pushed into the guest first; while CMD runs a supervisor task
//!   pulls what changed every second (as a long `exec` does), so the core's quiet-period
//!   commits of the host tree see CMD's work; after CMD ends, a final pull, and only then
//!   does [`ChildControl::wait`] return. The supervisor also watches the VMM: a VM that
//!   dies ends the wait with the reason.
//! - `kill()` is the agent's `cancel` (CMD's whole process group and session); a VM
//!   whose connection drops kills its execs itself; a killed Safe Coder takes the VM
//!   with it.
//! - The network allow-list (`request.network`): the agent's `net-forward` as a second
//!   interactive exec with pipes, bridged to the host proxy (`net.rs`), listening before
//!   CMD starts and stopped when it ends.
//! - `--mount PATH:ro` is a copy pushed into the guest at the start (a tar stream into
//!   the guest's `tar`); read-write mounts are refused, since nothing would carry CMD's
//!   changes back to that host path.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use safe_coder_vm_protocol::{
    ExecExit, Frame, InteractiveExec, RequestId, Response, TermSize as WireSize,
    FEATURE_INTERACTIVE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::agent_client::AgentClient;
use super::net;
use super::sync::WorkspaceSync;
use super::{VmSandbox, Vmm, LIVE_PULL};
use crate::interactive::{open_terminal, ChildControl, RunExit, TermSize};
use crate::{InteractiveChild, InteractiveRequest, SandboxError};

/// `stdin` requests in flight at once (each is answered once written in the guest).
const STDIN_WINDOW: usize = 8;
/// Bytes per `stdin` request.
const STDIN_CHUNK: usize = 16 * 1024;
/// The most a `--mount PATH:ro` copy may weigh (it travels through the agent and lives
/// in guest RAM).
const MOUNT_LIMIT: u64 = 64 << 20;

type Vmms = Arc<Mutex<Option<Box<dyn Vmm>>>>;

/// How the command ended, once it has: its exit, or why it could not be followed.
type Outcome = Option<Result<ExecExit, String>>;

fn other(msg: String) -> SandboxError {
    SandboxError::Other(msg)
}

/// Starts `request` in the VM (see the module doc).
pub(super) async fn spawn(
    vm: &VmSandbox,
    request: InteractiveRequest,
) -> Result<InteractiveChild, SandboxError> {
    if request.argv.is_empty() {
        return Err(other("no command to run was given".into()));
    }
    let backend = vm.kind.as_str();
    if let Some(b) = request.binds.first() {
        return Err(SandboxError::Unavailable(format!(
            "the {backend} backend cannot show a host path ({}) at a fixed place in the VM; use --backend process",
            b.host.display()
        )));
    }
    if let Some(m) = request.mounts.iter().find(|m| !m.read_only) {
        return Err(SandboxError::Unavailable(format!(
            "the {backend} backend can show --mount paths only read-only (a copy made at the start; CMD's changes to it stay in the VM): use --mount {}:ro, or --backend process for a writable mount",
            m.path.display()
        )));
    }
    let client = vm.client().await?;
    let features = vm
        .watched(async { client.features().await.map_err(|e| other(e.to_string())) })
        .await;
    let features = vm.lost_agent(&client, features)?;
    if !features.iter().any(|f| f == FEATURE_INTERACTIVE) {
        return Err(SandboxError::Unavailable(format!(
            "the guest agent in this VM image predates interactive commands (safe-coder run); rebuild the image with `safe-coder sandbox image build --backend {backend}`"
        )));
    }
    // The project as the host has it now (the file tools' writes, a rollback).
    {
        let mut sync = vm.sync.lock().await;
        let pushed = vm.watched(sync.push(&client)).await;
        vm.lost_agent(&client, pushed)?;
    }
    if !request.mounts.is_empty() {
        let tar = {
            let mounts = request.mounts.clone();
            tokio::task::spawn_blocking(move || mount_archive(&mounts))
                .await
                .map_err(|e| other(format!("could not read the --mount paths: {e}")))??
        };
        let copied = vm.watched(copy_in(&client, &vm.env, tar)).await;
        vm.lost_agent(&client, copied)?;
    }

    // A socket pair either way: the guest's PTY (if any) is the terminal. Made before
    // the forwarder and CMD start, so nothing can fail between its start and its bridge.
    let pair = open_terminal(None)?;
    let ours = tokio_stream(pair.child)?;

    // The network allow-list: the forwarder listens before CMD starts.
    let forwarder = match &request.network {
        Some(net) => {
            let started = vm.watched(net::start(&client, &vm.env, net)).await;
            Some(vm.lost_agent(&client, started)?)
        }
        None => None,
    };

    let tty = request.terminal.is_some();
    let mut env = vm.env.clone();
    for (k, v) in &request.env_extra {
        env.retain(|(n, _)| n != k);
        env.push((k.clone(), v.clone()));
    }
    if tty && !env.iter().any(|(k, _)| k == "TERM") {
        env.push((
            "TERM".into(),
            std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into()),
        ));
    }
    let exec = InteractiveExec {
        argv: request.argv.clone(),
        env,
        cwd: String::new(),
        terminal: request.terminal.map(|t| WireSize {
            rows: t.rows,
            cols: t.cols,
        }),
        merge_stderr: true,
    };
    let started = vm
        .watched(async {
            client.exec_interactive(exec).await.map_err(|e| {
                other(format!(
                    "could not start {} in the VM: {e}",
                    request.argv[0]
                ))
            })
        })
        .await;
    let (id, _pid, frames) = match vm.lost_agent(&client, started) {
        Ok(s) => s,
        Err(e) => {
            if let Some(f) = forwarder {
                f.stop().await;
            }
            return Err(e);
        }
    };

    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    let (resize_tx, resize_rx) = mpsc::unbounded_channel();
    tokio::spawn(bridge(
        client.clone(),
        id,
        frames,
        ours,
        tty,
        Output::Everything,
        resize_rx,
        exit_tx,
    ));
    let (done_tx, done_rx) = watch::channel::<Outcome>(None);
    tokio::spawn(supervise(
        client.clone(),
        vm.sync.clone(),
        vm.vmm.clone(),
        forwarder,
        exit_rx,
        done_tx,
    ));
    Ok(InteractiveChild {
        terminal: pair.parent,
        control: Box::new(VmChild {
            client,
            id,
            tty,
            resize: resize_tx,
            done: done_rx,
            finished: Mutex::new(false),
        }),
    })
}

fn tokio_stream(fd: OwnedFd) -> Result<tokio::net::UnixStream, SandboxError> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(std))
        .map_err(|e| other(format!("could not open the command's terminal: {e}")))
}

/// Where a bridged exec's output goes.
pub(super) enum Output {
    /// All of it into the stream (a terminal, or merged pipes).
    Everything,
    /// Only stdout into the stream (a byte protocol such as the network forwarder's);
    /// stderr is collected here for messages.
    StdoutOnly(watch::Sender<String>),
}

/// Carries the stream's bytes to the exec's input and its output back until it exits;
/// then closes our end (the core reads EOF) and reports the exit.
#[allow(clippy::too_many_arguments)]
pub(super) async fn bridge(
    client: Arc<AgentClient>,
    id: RequestId,
    mut frames: mpsc::UnboundedReceiver<Frame<Response>>,
    ours: tokio::net::UnixStream,
    tty: bool,
    output: Output,
    mut resizes: mpsc::UnboundedReceiver<TermSize>,
    exit: tokio::sync::oneshot::Sender<Result<ExecExit, String>>,
) {
    let (mut read, mut write) = ours.into_split();
    let input = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut in_flight: VecDeque<(RequestId, mpsc::UnboundedReceiver<Frame<Response>>)> =
                VecDeque::new();
            let mut buf = vec![0u8; STDIN_CHUNK];
            let (mut input_open, mut resizes_open) = (true, true);
            while input_open || resizes_open {
                // A resize asked before some input was typed reaches the guest before
                // that input (both travel in this task, in order).
                let n = tokio::select! {
                    biased;
                    size = resizes.recv(), if resizes_open => {
                        match size {
                            Some(size) => {
                                let req = safe_coder_vm_protocol::Request::Resize {
                                    exec: id,
                                    rows: size.rows,
                                    cols: size.cols,
                                };
                                match client.send(&req, &[]).await {
                                    Ok((rid, _)) => client.forget_request(rid),
                                    Err(_) => break,
                                }
                            }
                            None => resizes_open = false,
                        }
                        continue;
                    }
                    n = read.read(&mut buf), if input_open => n.unwrap_or(0),
                };
                if n == 0 && tty {
                    // A terminal's input has no end of its own: CMD ends it. Resizes
                    // still go on.
                    input_open = false;
                    continue;
                }
                let Ok(sent) = client.send_stdin(id, &buf[..n]).await else {
                    break;
                };
                in_flight.push_back(sent);
                if n == 0 {
                    input_open = false;
                    continue;
                }
                while in_flight.len() >= STDIN_WINDOW {
                    if let Some((rid, mut rx)) = in_flight.pop_front() {
                        let answer = rx.recv().await;
                        client.forget_request(rid);
                        if !matches!(answer.map(|f| f.body), Some(Response::Done)) {
                            // The exec ended or no longer takes input.
                            return;
                        }
                    }
                }
            }
            for (rid, mut rx) in in_flight {
                let _ = rx.recv().await;
                client.forget_request(rid);
            }
        })
    };
    let lost = "the connection to the guest agent ended (the VM stopped or its agent died)";
    let result = loop {
        let Some(frame) = frames.recv().await else {
            break Err(lost.to_string());
        };
        match frame.body {
            Response::Output { stream } => match (&output, stream) {
                (Output::StdoutOnly(said), safe_coder_vm_protocol::Stream::Stderr) => {
                    let text = String::from_utf8_lossy(&frame.data).into_owned();
                    log::debug!("{}", text.trim_end());
                    said.send_modify(|s| {
                        if s.len() < 4096 {
                            s.push_str(&text);
                        }
                    });
                }
                // Nobody reads the terminal any more: keep draining, CMD must not block.
                _ => {
                    let _ = write.write_all(&frame.data).await;
                }
            },
            Response::Exited(e) => break Ok(e),
            Response::Error(e) => break Err(e.to_string()),
            other => break Err(format!("the guest agent answered {other:?} to the command")),
        }
    };
    client.forget_request(id);
    input.abort();
    let _ = write.shutdown().await;
    drop(write);
    let _ = exit.send(result);
}

/// Pulls the guest's changes every second while the command runs and once after it,
/// watches the VMM, then says how it ended on `done`.
async fn supervise(
    client: Arc<AgentClient>,
    sync: Arc<tokio::sync::Mutex<WorkspaceSync>>,
    vmm: Vmms,
    forwarder: Option<net::Forwarder>,
    mut exit: tokio::sync::oneshot::Receiver<Result<ExecExit, String>>,
    done: watch::Sender<Outcome>,
) {
    let alive = || -> Result<(), String> {
        match vmm.lock() {
            Ok(g) => match g.as_ref() {
                Some(v) => v.alive(),
                None => Err("the VM was stopped".into()),
            },
            Err(_) => Err("the VM's state is poisoned".into()),
        }
    };
    let mut pull = tokio::time::interval(LIVE_PULL);
    pull.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    pull.tick().await;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let outcome = loop {
        tokio::select! {
            r = &mut exit => break r.unwrap_or_else(|_| Err("the command's bridge ended".into())),
            _ = pull.tick() => {
                let mut s = sync.lock().await;
                if let Err(e) = s.pull(&client).await {
                    log::warn!("pulling the VM's changes during the run: {e}");
                }
            }
            _ = check.tick() => {
                if let Err(why) = alive() {
                    break Err(why);
                }
            }
        }
    };
    // The network ends with CMD.
    if let Some(f) = forwarder {
        f.stop().await;
    }
    if outcome.is_ok() || alive().is_ok() {
        let mut s = sync.lock().await;
        let last = tokio::time::timeout(Duration::from_secs(120), s.pull(&client)).await;
        match last {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::warn!("the final pull after the run: {e}"),
            Err(_) => log::warn!("the final pull after the run did not end in 120 s"),
        }
    }
    let _ = done.send(Some(outcome));
}

/// An interactive exec in the VM as an interactive child.
struct VmChild {
    client: Arc<AgentClient>,
    id: RequestId,
    tty: bool,
    /// To the bridge, which sends it in order with the input.
    resize: mpsc::UnboundedSender<TermSize>,
    done: watch::Receiver<Outcome>,
    finished: Mutex<bool>,
}

#[async_trait]
impl ChildControl for VmChild {
    async fn wait(&mut self) -> Result<RunExit, SandboxError> {
        let outcome = loop {
            if let Some(o) = self.done.borrow_and_update().clone() {
                break o;
            }
            if self.done.changed().await.is_err() {
                break Err("the command's supervisor ended".into());
            }
        };
        if let Ok(mut f) = self.finished.lock() {
            *f = true;
        }
        let exit = outcome.map_err(|why| {
            other(format!(
                "the command in the VM could not be followed to its end: {why}; the session's files are kept"
            ))
        })?;
        Ok(RunExit {
            code: if exit.signal.is_some() {
                None
            } else {
                exit.code
            },
            signal: exit.signal,
        })
    }

    fn resize(&self, size: TermSize) -> Result<(), SandboxError> {
        if self.tty {
            // Ended: nothing to resize.
            let _ = self.resize.send(size);
        }
        Ok(())
    }

    fn kill(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let req = safe_coder_vm_protocol::Request::Cancel { exec: self.id };
        handle.spawn(async move {
            let _ = client.done(&req, &[]).await;
        });
    }
}

impl Drop for VmChild {
    fn drop(&mut self) {
        let finished = self.finished.lock().map(|f| *f).unwrap_or(false);
        if !finished {
            self.kill();
        }
    }
}

/// Where a `--mount` path appears in the guest: a path under the user's home under the
/// guest's (`/root`), any other at its own path.
pub(super) fn guest_path(host: &Path, home: Option<&Path>) -> Result<PathBuf, SandboxError> {
    let inside = match home.and_then(|h| host.strip_prefix(h).ok()) {
        Some(rel) => Path::new("/root").join(rel),
        None => host.to_path_buf(),
    };
    let ws = Path::new(safe_coder_vm_protocol::WORKSPACE);
    if inside == Path::new("/") || inside == Path::new("/root") || inside.starts_with(ws) {
        return Err(SandboxError::Unavailable(format!(
            "--mount {} would cover the VM's {} and cannot be shown; mount a directory below it",
            host.display(),
            inside.display()
        )));
    }
    Ok(inside)
}

/// The `--mount` paths as one tar stream of their guest paths (relative to `/`).
fn mount_archive(mounts: &[crate::Mount]) -> Result<Vec<u8>, SandboxError> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut tar = Tar::default();
    for m in mounts {
        // Shown where the user named it (symlinks kept), with what it leads to.
        let inside = guest_path(&m.path, home.as_deref())?;
        tar.add_tree(&m.host, &inside)?;
    }
    Ok(tar.finish())
}

/// Unpacks `tar` at the guest's `/` with the guest's `tar`, fed through an interactive
/// exec's input.
async fn copy_in(
    client: &Arc<AgentClient>,
    env: &[(String, String)],
    tar: Vec<u8>,
) -> Result<(), SandboxError> {
    let exec = InteractiveExec {
        argv: ["tar", "-x", "-p", "-C", "/", "-f", "-"]
            .map(String::from)
            .to_vec(),
        env: env.to_vec(),
        cwd: String::new(),
        terminal: None,
        merge_stderr: true,
    };
    let err = |e: super::agent_client::AgentClientError| {
        other(format!("could not copy the --mount paths into the VM: {e}"))
    };
    let (id, _, mut frames) = client.exec_interactive(exec).await.map_err(err)?;
    let mut in_flight = VecDeque::new();
    for chunk in tar.chunks(256 * 1024).chain(std::iter::once(&[][..])) {
        in_flight.push_back(client.send_stdin(id, chunk).await.map_err(err)?);
        while in_flight.len() >= STDIN_WINDOW {
            if let Some((rid, mut rx)) = in_flight.pop_front() {
                let _ = rx.recv().await;
                client.forget_request(rid);
            }
        }
    }
    for (rid, mut rx) in in_flight {
        let _ = rx.recv().await;
        client.forget_request(rid);
    }
    let mut said = Vec::new();
    let exit = loop {
        match frames.recv().await.map(|f| (f.body, f.data)) {
            Some((Response::Output { .. }, d)) => said.extend_from_slice(&d),
            Some((Response::Exited(e), _)) => break e,
            Some((other_reply, _)) => {
                client.forget_request(id);
                return Err(other(format!(
                    "could not copy the --mount paths into the VM: the agent answered {other_reply:?}"
                )));
            }
            None => {
                return Err(other(
                    "could not copy the --mount paths into the VM: the agent's connection ended"
                        .into(),
                ))
            }
        }
    };
    client.forget_request(id);
    if exit.code != Some(0) {
        return Err(other(format!(
            "could not copy the --mount paths into the VM: tar said {}",
            String::from_utf8_lossy(&said).trim()
        )));
    }
    Ok(())
}

/// A minimal ustar writer: directories, regular files and symlinks.
#[derive(Default)]
struct Tar {
    out: Vec<u8>,
    weight: u64,
}

impl Tar {
    fn add_tree(&mut self, host: &Path, inside: &Path) -> Result<(), SandboxError> {
        let io = |p: &Path| {
            let path = p.display().to_string();
            move |source| SandboxError::Io { path, source }
        };
        let meta = std::fs::symlink_metadata(host).map_err(io(host))?;
        let name = inside
            .strip_prefix("/")
            .unwrap_or(inside)
            .to_string_lossy()
            .into_owned();
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(host).map_err(io(host))?;
            self.entry(&name, mode, b'2', &target.to_string_lossy(), &[])?;
        } else if ft.is_dir() {
            self.entry(&format!("{name}/"), mode, b'5', "", &[])?;
            let mut children: Vec<_> = std::fs::read_dir(host)
                .map_err(io(host))?
                .flatten()
                .map(|e| e.file_name())
                .collect();
            children.sort();
            for c in children {
                self.add_tree(&host.join(&c), &inside.join(&c))?;
            }
        } else if ft.is_file() {
            self.weight += meta.len();
            if self.weight > MOUNT_LIMIT {
                return Err(SandboxError::Unavailable(format!(
                    "the --mount paths weigh more than {} MiB, too much to copy into the VM; mount a smaller directory or use --backend process",
                    MOUNT_LIMIT >> 20
                )));
            }
            let data = std::fs::read(host).map_err(io(host))?;
            self.entry(&name, mode, b'0', "", &data)?;
        }
        // Sockets, FIFOs and devices are not copied.
        Ok(())
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        kind: u8,
        link: &str,
        data: &[u8],
    ) -> Result<(), SandboxError> {
        let too_long = || {
            SandboxError::Unavailable(format!(
                "--mount: the path {name} is too long to copy into the VM"
            ))
        };
        let mut h = [0u8; 512];
        let (prefix, base) = if name.len() <= 100 {
            ("", name)
        } else {
            // Split at a '/' so the prefix fits 155 bytes and the rest 100.
            let cut = name[..name.len().min(156)]
                .rfind('/')
                .filter(|&i| name.len() - i - 1 <= 100 && i <= 155)
                .ok_or_else(too_long)?;
            (&name[..cut], &name[cut + 1..])
        };
        if link.len() > 100 {
            return Err(too_long());
        }
        let put = |h: &mut [u8; 512], at: usize, s: &[u8]| h[at..at + s.len()].copy_from_slice(s);
        put(&mut h, 0, base.as_bytes());
        put(&mut h, 100, format!("{mode:07o}\0").as_bytes());
        put(&mut h, 108, b"0000000\0");
        put(&mut h, 116, b"0000000\0");
        put(&mut h, 124, format!("{:011o}\0", data.len()).as_bytes());
        put(&mut h, 136, b"00000000000\0");
        put(&mut h, 148, b"        ");
        h[156] = kind;
        put(&mut h, 157, link.as_bytes());
        put(&mut h, 257, b"ustar\0");
        put(&mut h, 263, b"00");
        put(&mut h, 345, prefix.as_bytes());
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
        self.out.extend_from_slice(&h);
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(&[0u8; 1024]);
        self.out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_under_home_go_under_the_guests_home() {
        let home = Path::new("/home/u");
        assert_eq!(
            guest_path(Path::new("/home/u/.codex"), Some(home)).unwrap(),
            Path::new("/root/.codex")
        );
        assert_eq!(
            guest_path(Path::new("/opt/tools"), Some(home)).unwrap(),
            Path::new("/opt/tools")
        );
        assert!(guest_path(Path::new("/home/u"), Some(home)).is_err());
        assert!(guest_path(Path::new("/workspace/x"), Some(home)).is_err());
        assert!(guest_path(Path::new("/"), None).is_err());
    }

    #[test]
    fn the_archive_is_one_tar_understands() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let deep = format!("{}/{}", "d".repeat(90), "e".repeat(90));
        std::fs::create_dir_all(src.join(&deep)).unwrap();
        std::fs::write(src.join("a.txt"), "hello\n").unwrap();
        std::fs::write(src.join(&deep).join("f.bin"), vec![7u8; 1000]).unwrap();
        std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
        let mut tar = Tar::default();
        tar.add_tree(&src, Path::new("/out/copy")).unwrap();
        let bytes = tar.finish();
        let archive = dir.path().join("x.tar");
        std::fs::write(&archive, bytes).unwrap();
        let to = dir.path().join("to");
        std::fs::create_dir_all(&to).unwrap();
        let st = std::process::Command::new("tar")
            .arg("-x")
            .arg("-f")
            .arg(&archive)
            .arg("-C")
            .arg(&to)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            std::fs::read_to_string(to.join("out/copy/a.txt")).unwrap(),
            "hello\n"
        );
        assert_eq!(
            std::fs::read(to.join("out/copy").join(&deep).join("f.bin")).unwrap(),
            vec![7u8; 1000]
        );
        assert_eq!(
            std::fs::read_link(to.join("out/copy/link")).unwrap(),
            Path::new("a.txt")
        );
    }
}
