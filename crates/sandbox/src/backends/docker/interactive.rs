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
//! - The request's binds (the network allow-list's proxy socket) and mounts cannot be
//!   added to a running container: both are refused with a clear error for now.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
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

use super::container::{host_user, WORKSPACE};
use super::engine::engine_error;
use crate::interactive::{open_terminal, ChildControl, RunExit, TermSize};
use crate::{InteractiveChild, InteractiveRequest, SandboxError};

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

/// Starts `request` in `container` (see the module doc).
pub(crate) async fn spawn(
    docker: &Docker,
    container: &str,
    env: &[String],
    request: &InteractiveRequest,
) -> Result<InteractiveChild, SandboxError> {
    if request.argv.is_empty() {
        return Err(SandboxError::Other("no command to run was given".into()));
    }
    if !request.binds.is_empty() || request.network.is_some() {
        return Err(SandboxError::Unavailable(
            "the docker backend cannot enforce a network allow-list yet (the proxy's socket cannot be added to a running container); drop --allow-net or use --backend process".into(),
        ));
    }
    if let Some(m) = request.mounts.first() {
        return Err(SandboxError::Unavailable(format!(
            "the docker backend cannot show --mount paths yet ({} cannot be added to a running container); drop --mount or use --backend process",
            m.host.display()
        )));
    }
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
    let exec = match docker.create_exec(container, config.clone()).await {
        Ok(e) => e,
        // A stopped container (a kept session's, or one a limit took down): start it.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => {
            docker
                .start_container(container, None)
                .await
                .map_err(|e| SandboxError::from(engine_error("start the stopped container", e)))?;
            docker
                .create_exec(container, config)
                .await
                .map_err(|e| SandboxError::from(engine_error("start the command", e)))?
        }
        Err(e) => return Err(engine_error("start the command", e).into()),
    };
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
    tokio::spawn(pump(ours, output, input, done_tx));
    Ok(InteractiveChild {
        terminal: pair.parent,
        control: Box::new(DockerChild {
            docker: docker.clone(),
            container: container.to_string(),
            exec: exec.id,
            tag,
            tty,
            done: done_rx,
            finished: Arc::new(Mutex::new(false)),
        }),
    })
}

fn tokio_stream(fd: OwnedFd) -> Result<tokio::net::UnixStream, SandboxError> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(std))
        .map_err(|e| SandboxError::Other(format!("could not open the command's terminal: {e}")))
}

/// Carries bytes both ways until the exec's output ends, then closes our end (the core
/// reads EOF) and says so on `done`.
async fn pump(
    ours: tokio::net::UnixStream,
    mut output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
    >,
    mut input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    done: watch::Sender<bool>,
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
    while let Some(item) = output.next().await {
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
        for _ in 0..200 {
            match self.docker.inspect_exec(&self.exec).await {
                Ok(state) if state.running == Some(true) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(state) => {
                    code = state.exit_code.map(|c| c as i32);
                    break;
                }
                Err(e) => return Err(engine_error("learn how the command ended", e).into()),
            }
        }
        if let Ok(mut f) = self.finished.lock() {
            *f = true;
        }
        // What CMD left running in its session ends with it, as on every backend.
        let _ = kill_session(&self.docker, &self.container, &self.tag).await;
        // A signal that ended CMD shows as 128+N, as a shell reports it: the engine does
        // not tell it apart from `exit 128+N`, so it stays a code.
        Ok(RunExit { code, signal: None })
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
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let docker = self.docker.clone();
        let container = self.container.clone();
        let tag = self.tag.clone();
        handle.spawn(async move {
            // The killer cannot run (the process limit is full, or the workspace's
            // directory is gone from under the container): a restart ends every
            // process in it, and the files stay on the host.
            if !kill_session(&docker, &container, &tag).await {
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

/// Runs the killer (see the module doc) and waits for it; whether it ran and succeeded.
async fn kill_session(docker: &Docker, container: &str, tag: &str) -> bool {
    let Ok(exec) = docker
        .create_exec(
            container,
            ExecConfig {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(vec![
                    "/bin/bash".into(),
                    "-c".into(),
                    KILLER.into(),
                    "safe-coder".into(),
                    tag.to_string(),
                ]),
                user: Some(host_user()),
                ..Default::default()
            },
        )
        .await
    else {
        return false;
    };
    if let Ok(StartExecResults::Attached { mut output, .. }) = docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: None,
            }),
        )
        .await
    {
        let end = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Some(_)) = tokio::time::timeout_at(end, output.next()).await {}
    }
    // The engine may record the end a moment after the stream closed.
    for _ in 0..50 {
        match docker.inspect_exec(&exec.id).await {
            Ok(s) if s.running == Some(true) => tokio::time::sleep(Duration::from_millis(10)).await,
            Ok(s) => return s.exit_code == Some(0),
            Err(_) => return false,
        }
    }
    false
}
