//! Interactive commands on the `docker` backend (`safe-coder run`, docs/run.md): an exec
//! in the session's container, with a TTY when the request asks for one.
//!
//! - The core gets one end of a host socket pair as the terminal; a task pumps bytes
//!   between the other end and the exec's attached stream. With a TTY the line
//!   discipline is the container's PTY (so a `Ctrl+C` byte becomes `SIGINT` for CMD's
//!   foreground group there, and [`ChildControl::resize`] is `resize_exec`); a host PTY
//!   in between would echo and edit lines a second time.
//! - The exec API cannot signal what it started, so CMD runs under a one-line wrapper
//!   that writes its process id (with a TTY, the id of its session) to
//!   `/tmp/.safe-coder/run-<n>` and `exec`s CMD. `kill()` runs a second exec that kills
//!   every process of that session (and its process group).
//! - `wait()` is the end of the stream, then the exec's exit code (`inspect_exec`).
//! - `--mount` paths: a running container takes no new mounts, so a run with mounts gets
//!   a container of its own (the session's shape, the same `/workspace` bind, plus the
//!   mounts; `container.rs`), removed when the run ends; `kill()` removes it, which ends
//!   every process in it at once. A path under the user's home appears under the
//!   container's home (`/tmp`): `~/.codex` is `/tmp/.codex`; any other at its own path.
//! - The network allow-list (`request.network`): the guest agent's `net-forward` runs as a
//!   second exec before CMD, bridged to the host's proxy (`net.rs`); it ends with CMD.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::container::{self, host_user, WORKSPACE};
use super::engine::{engine_error, EngineInfo};
use super::exec::{create_exec_starting, run_killer};
use super::net;
use crate::interactive::{open_terminal, ChildControl, Mount, RunExit, TermSize};
use crate::{CancellationToken, InteractiveChild, InteractiveRequest, Limits, SandboxError};

/// The container's home (`HOME`): where a `--mount` under the user's home appears.
const CONTAINER_HOME: &str = "/tmp";
/// Paths a `--mount` may not land on or under: the workspace, the agent's, and what the
/// engine provides.
const RESERVED: &[&str] = &["/workspace", "/.safe-coder", "/proc", "/sys", "/dev"];

/// What a run needs to make a container of its own: the session container's shape.
#[derive(Clone, Debug)]
pub(crate) struct RunShape {
    pub engine: EngineInfo,
    pub session: String,
    pub session_dir: Option<PathBuf>,
    /// The session container's name (a run's container is named after it).
    pub name: String,
    pub image: String,
    pub runtime: String,
    pub network: String,
    pub workspace: container::WorkspaceSource,
    pub limits: Limits,
    /// The static guest agent's binary, when one was found.
    pub agent: Option<PathBuf>,
    /// Whether the session's container has the agent's binary mounted (a kept one made
    /// before may not).
    pub session_has_agent: bool,
}

/// Records CMD's process id (`$1`: the file's name), sets the TTY's size (`$2`:
/// `ROWSxCOLS`, or empty without one), then becomes CMD (`$3…`). The size is set from
/// inside because the engine's `resize_exec` can only follow the start, and CMD would
/// otherwise first see a 0×0 terminal.
const WRAPPER: &str = r#"mkdir -p /tmp/.safe-coder 2>/dev/null; echo $$ > "/tmp/.safe-coder/$1" 2>/dev/null
if [ -n "$2" ]; then stty rows "${2%x*}" cols "${2#*x}" 2>/dev/null; fi
shift 2; exec "$@""#;

/// Kills the session and process group of the recorded process (`$1`: the file's name).
/// `/proc/N/stat` after the command's name: state, ppid, pgrp, session.
const KILLER: &str = r#"f="/tmp/.safe-coder/$1"; p=$(cat "$f" 2>/dev/null); [ -n "$p" ] || exit 0
kill -KILL -- "-$p" "$p" 2>/dev/null
for s in /proc/[0-9]*/stat; do
  l=$(cat "$s" 2>/dev/null) || continue; l=${l##*) }; set -- $l
  if [ "$4" = "$p" ] || [ "$3" = "$p" ]; then n=${s#/proc/}; kill -KILL "${n%/stat}" 2>/dev/null; fi
done
rm -f "$f"; exit 0"#;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Starts `request` in the session's container, or with `--mount` paths in a container
/// of its own (see the module doc).
pub(crate) async fn spawn(
    docker: &Docker,
    session_container: &str,
    runs: &RunShape,
    env: &[String],
    request: &InteractiveRequest,
) -> Result<InteractiveChild, SandboxError> {
    if request.argv.is_empty() {
        return Err(SandboxError::Other("no command to run was given".into()));
    }
    if let Some(b) = request.binds.first() {
        // Host paths at exact places are the process backend's way; a container shows
        // `--mount` paths and realises `network` itself.
        return Err(SandboxError::Unavailable(format!(
            "the docker backend does not bind {} into a container; use --backend process",
            b.host.display()
        )));
    }
    if request.network.is_some() && runs.agent.is_none() {
        return Err(SandboxError::Unavailable(
            "the network allow-list on docker needs the static guest agent in the container, and none was found; build it with scripts/build-guest-agent.sh (or set SAFE_CODER_GUEST_AGENT), or use --backend process".into(),
        ));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mounts = request
        .mounts
        .iter()
        .map(|m| engine_mount(m, home.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    // A container of the run's own for mounts, and for the network when the session's
    // (a kept one made before) lacks the agent's binary.
    let needs_own = !mounts.is_empty() || (request.network.is_some() && !runs.session_has_agent);
    let own = if needs_own {
        if matches!(runs.workspace, container::WorkspaceSource::Overlay { .. }) {
            // One engine mount of the layers at a time (docs/docker.md): the session's
            // container rests while the run's has the workspace; the next command
            // starts it again.
            container::stop(docker, session_container)
                .await
                .map_err(SandboxError::from)?;
        }
        Some(start_run_container(docker, runs, &mounts).await?)
    } else {
        None
    };
    let container = own.as_deref().unwrap_or(session_container);
    let started = async {
        let forwarder = match &request.network {
            Some(n) => Some(net::start(docker, container, n.port, n.proxy_socket.clone()).await?),
            None => None,
        };
        let started = start(docker, container, env, request).await?;
        Ok::<_, SandboxError>((started, forwarder))
    };
    match started.await {
        Ok((s, forwarder)) => Ok(InteractiveChild {
            terminal: s.terminal,
            control: Box::new(DockerChild {
                docker: docker.clone(),
                container: container.to_string(),
                own,
                exec: s.exec,
                tag: s.tag,
                tty: request.terminal.is_some(),
                done: s.done,
                finished: Arc::new(Mutex::new(false)),
                forwarder,
                killed: Arc::new(AtomicBool::new(false)),
                stop: s.stop,
            }),
        }),
        Err(e) => {
            if let Some(id) = &own {
                let _ = container::remove(docker, id).await;
            }
            Err(e)
        }
    }
}

/// Where a `--mount` path (as the user named it) appears in the container: under the
/// container's home when it is under the user's home (`~/.codex` → `/tmp/.codex`), else
/// at its own path.
pub(crate) fn mount_target(host: &Path, home: Option<&Path>) -> PathBuf {
    match home.and_then(|h| host.strip_prefix(h).ok()) {
        Some(rel) if !rel.as_os_str().is_empty() => Path::new(CONTAINER_HOME).join(rel),
        _ => host.to_path_buf(),
    }
}

/// A `--mount` as the engine's bind mount; a path that is missing, or that would land
/// on the container's own places, is one clear error.
fn engine_mount(m: &Mount, home: Option<&Path>) -> Result<bollard::models::Mount, SandboxError> {
    if !m.host.exists() {
        return Err(SandboxError::NotFound(format!(
            "{} (given with --mount)",
            m.path.display()
        )));
    }
    // The canonical source is shown where the user named it (symlinks kept).
    let target = mount_target(&m.path, home);
    let clashes = target == Path::new("/")
        || target == Path::new(CONTAINER_HOME)
        || RESERVED.iter().any(|r| target.starts_with(r));
    if clashes || !target.is_absolute() {
        return Err(SandboxError::Other(format!(
            "--mount {} would appear at {} in the container, which is the container's own; mount a path below it instead",
            m.path.display(),
            target.display()
        )));
    }
    Ok(bollard::models::Mount {
        target: Some(target.display().to_string()),
        source: Some(m.host.display().to_string()),
        typ: Some(bollard::models::MountType::BIND),
        read_only: Some(m.read_only),
        ..Default::default()
    })
}

/// Creates and starts a run's own container: the session's shape plus `mounts`.
async fn start_run_container(
    docker: &Docker,
    runs: &RunShape,
    mounts: &[bollard::models::Mount],
) -> Result<String, SandboxError> {
    let name = format!(
        "{}-run-{}-{}",
        runs.name,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let agent = match &runs.agent {
        Some(binary) => container::Agent::Binary(binary),
        None => container::Agent::None,
    };
    let shape = container::Shape {
        name: &name,
        session: &runs.session,
        session_dir: runs.session_dir.as_deref(),
        image: &runs.image,
        runtime: &runs.runtime,
        network: &runs.network,
        workspace: runs.workspace.view(),
        limits: runs.limits,
        agent,
        mounts,
        run: true,
    };
    container::create_run(docker, &runs.engine, &shape)
        .await
        .map_err(SandboxError::from)
}

/// CMD started as an exec (see [`start`]).
struct Started {
    /// The host end of its terminal.
    terminal: OwnedFd,
    exec: String,
    /// The name of the file that records its pid (for the killer).
    tag: String,
    /// Becomes `true` when the exec's stream has ended.
    done: watch::Receiver<bool>,
    /// Ends the stream's pump.
    stop: CancellationToken,
}

/// Starts CMD as an exec in `container`.
async fn start(
    docker: &Docker,
    container: &str,
    env: &[String],
    request: &InteractiveRequest,
) -> Result<Started, SandboxError> {
    let tty = request.terminal.is_some();
    let tag = format!(
        "run-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let mut env = env.to_vec();
    env.extend(request.env_extra.iter().map(|(k, v)| format!("{k}={v}")));
    if tty && !request.env_extra.iter().any(|(k, _)| k == "TERM") {
        env.push(format!(
            "TERM={}",
            std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into())
        ));
    }
    let mut cmd = vec![
        "/bin/bash".to_string(),
        "-c".into(),
        WRAPPER.into(),
        "safe-coder".into(),
        tag.clone(),
        request
            .terminal
            .map(|t| format!("{}x{}", t.rows, t.cols))
            .unwrap_or_default(),
    ];
    cmd.extend(request.argv.iter().cloned());
    let config = ExecConfig {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(tty),
        env: Some(env),
        cmd: Some(cmd),
        user: Some(host_user()),
        working_dir: Some(WORKSPACE.into()),
        ..Default::default()
    };
    let (exec, _) = create_exec_starting(docker, container, config, "start the command").await?;
    let started = docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: false,
                tty,
                output_capacity: None,
            }),
        )
        .await
        .map_err(|e| SandboxError::from(engine_error("start the command", e)))?;
    let StartExecResults::Attached { output, input } = started else {
        return Err(SandboxError::Other(
            "the container engine started the command detached; its terminal is lost".into(),
        ));
    };
    if let Some(size) = request.terminal {
        // Best effort: the command may already be gone.
        let _ = resize(docker, &exec.id, size).await;
    }
    // A socket pair either way: the container's PTY (if any) is the terminal.
    let pair = open_terminal(None)?;
    let ours = tokio_stream(pair.child)?;
    let (done_tx, done_rx) = watch::channel(false);
    let stop = CancellationToken::new();
    tokio::spawn(pump(ours, output, input, done_tx, stop.clone()));
    Ok(Started {
        terminal: pair.parent,
        exec: exec.id,
        tag,
        done: done_rx,
        stop,
    })
}

fn tokio_stream(fd: OwnedFd) -> Result<tokio::net::UnixStream, SandboxError> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(std))
        .map_err(|e| SandboxError::Other(format!("could not open the command's terminal: {e}")))
}

/// Carries bytes both ways until the exec's output ends (or `stop`: the engine does not
/// always end an exec's stream when its container is removed), then closes our end (the
/// core reads EOF) and says so on `done`.
async fn pump(
    ours: tokio::net::UnixStream,
    mut output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
    >,
    mut input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    done: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let (mut read, mut write) = ours.into_split();
    let to_exec = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if input.write_all(&buf[..n]).await.is_err() || input.flush().await.is_err() {
                        break;
                    }
                }
            }
        }
        // The core closed its side: CMD's stdin ends (without a TTY).
        let _ = input.shutdown().await;
        // Keep the connection until the output is done (closing it may end the exec).
        std::future::pending::<()>().await;
    });
    loop {
        let item = tokio::select! {
            item = output.next() => item,
            _ = stop.cancelled() => break,
        };
        let Some(item) = item else { break };
        match item {
            Ok(
                LogOutput::StdOut { message }
                | LogOutput::StdErr { message }
                | LogOutput::Console { message },
            ) => {
                if write.write_all(&message).await.is_err() {
                    // Nobody reads the terminal any more; keep draining so CMD is not
                    // blocked on a full pipe.
                    continue;
                }
            }
            Ok(LogOutput::StdIn { .. }) => {}
            Err(_) => break,
        }
    }
    to_exec.abort();
    let _ = write.shutdown().await;
    drop(write);
    let _ = done.send(true);
}

async fn resize(docker: &Docker, exec: &str, size: TermSize) -> Result<(), SandboxError> {
    let options = bollard::query_parameters::ResizeExecOptionsBuilder::default()
        .h(i32::from(size.rows))
        .w(i32::from(size.cols))
        .build();
    docker
        .resize_exec(exec, options)
        .await
        .map_err(|e| SandboxError::from(engine_error("resize the command's terminal", e)))
}

/// An exec in the container as an interactive child.
struct DockerChild {
    docker: Docker,
    container: String,
    /// The run's own container (with `--mount`): removed at the end and by `kill()`.
    own: Option<String>,
    /// The network allow-list's forwarder (`net.rs`), ended with CMD.
    forwarder: Option<net::Forwarder>,
    /// `kill()` was called (with the run's own container, the exec is then gone).
    killed: Arc<AtomicBool>,
    /// Ends the pump of the exec's stream.
    stop: CancellationToken,
    exec: String,
    tag: String,
    tty: bool,
    /// Becomes `true` when the exec's stream has ended.
    done: watch::Receiver<bool>,
    finished: Arc<Mutex<bool>>,
}

#[async_trait]
impl ChildControl for DockerChild {
    async fn wait(&mut self) -> Result<RunExit, SandboxError> {
        while !*self.done.borrow_and_update() {
            if self.done.changed().await.is_err() {
                break;
            }
        }
        // The engine may record the end a moment after the stream closed.
        let mut code = None;
        let mut signal = None;
        for _ in 0..200 {
            match self.docker.inspect_exec(&self.exec).await {
                Ok(state) if state.running == Some(true) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(state) => {
                    code = state.exit_code.map(|c| c as i32);
                    break;
                }
                // `kill()` removed the run's own container, and its execs with it (Docker
                // answers 404, Podman may answer otherwise).
                Err(_) if self.own.is_some() && self.killed.load(Ordering::SeqCst) => {
                    signal = Some(libc::SIGKILL);
                    break;
                }
                Err(e) => return Err(engine_error("learn how the command ended", e).into()),
            }
        }
        if let Ok(mut f) = self.finished.lock() {
            *f = true;
        }
        if let Some(f) = &self.forwarder {
            f.stop();
        }
        // What CMD left running in its session ends with it, as on every backend (with
        // the run's own container, everything in it).
        match &self.own {
            // Should the engine fail to remove it, the next session's sweep does (its
            // owner will be dead by then).
            Some(id) => {
                let _ = container::remove(&self.docker, id).await;
            }
            None => {
                let _ = run_killer(&self.docker, &self.container, KILLER, &self.tag).await;
            }
        }
        // A signal that ended CMD shows as 128+N, as a shell reports it: the engine does
        // not tell it apart from `exit 128+N`, so it stays a code.
        Ok(RunExit { code, signal })
    }

    fn resize(&self, size: TermSize) -> Result<(), SandboxError> {
        if !self.tty {
            return Ok(());
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            SandboxError::Other("could not resize the terminal: no async runtime".into())
        })?;
        let docker = self.docker.clone();
        let exec = self.exec.clone();
        handle.spawn(async move {
            let _ = resize(&docker, &exec, size).await;
        });
        Ok(())
    }

    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(f) = &self.forwarder {
            f.stop();
        }
        let docker = self.docker.clone();
        let container = self.container.clone();
        let tag = self.tag.clone();
        if let Some(own) = self.own.clone() {
            let stop = self.stop.clone();
            handle.spawn(async move {
                let _ = container::remove(&docker, &own).await;
                stop.cancel();
            });
            return;
        }
        handle.spawn(async move {
            // The killer cannot run (the process limit is full, or the workspace's
            // directory is gone from under the container): a restart ends every
            // process in it, and the files stay on the host.
            if !run_killer(&docker, &container, KILLER, &tag).await {
                let options = bollard::query_parameters::RestartContainerOptionsBuilder::default()
                    .t(0)
                    .build();
                let _ = docker.restart_container(&container, Some(options)).await;
            }
        });
    }
}

impl Drop for DockerChild {
    fn drop(&mut self) {
        let finished = self.finished.lock().map(|f| *f).unwrap_or(false);
        if !finished {
            self.kill();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mounts_land_under_the_container_home_or_at_their_path() {
        let home = Path::new("/home/u");
        assert_eq!(
            mount_target(Path::new("/home/u/.codex"), Some(home)),
            Path::new("/tmp/.codex")
        );
        assert_eq!(
            mount_target(Path::new("/data/x"), Some(home)),
            Path::new("/data/x")
        );
        let dir = std::env::temp_dir();
        let m = |p: &Path| Mount {
            host: p.to_path_buf(),
            path: p.to_path_buf(),
            read_only: true,
        };
        // The home itself would replace the container's /tmp: refused.
        let e = engine_mount(&m(&dir), Some(&dir)).unwrap_err().to_string();
        assert!(e.contains("container's own"), "{e}");
        let e = engine_mount(&m(Path::new("/proc/self")), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("container's own"), "{e}");
        let e = engine_mount(&m(Path::new("/no/such/path/here")), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--mount"), "{e}");
        let sub = tempfile::tempdir().unwrap();
        let ok = engine_mount(&m(sub.path()), None).unwrap();
        assert_eq!(ok.read_only, Some(true));
        assert_eq!(ok.target, ok.source);
        // A symlink is shown (its target) where the user named it.
        let link = sub.path().join("link");
        let real = sub.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let named = Mount {
            host: real.canonicalize().unwrap(),
            path: link.clone(),
            read_only: false,
        };
        let ok = engine_mount(&named, None).unwrap();
        assert_eq!(ok.target.as_deref(), link.to_str());
        assert_eq!(
            ok.source,
            real.canonicalize().unwrap().to_str().map(String::from)
        );
    }
}
