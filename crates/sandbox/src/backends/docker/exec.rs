//! `bash` inside the container through the exec API: the command's stderr goes to its
//! stdout inside the container, so the output keeps the order it was written in (as
//! on every backend; two demultiplexed streams would not), the exit code, a timeout and cancel
//! that kill the command's whole process tree inside the container.
//!
//! The exec API cannot signal what it started, so every command runs under a small
//! wrapper: the command gets a new session (`setsid`, so its process group is its own
//! and holds its children), the wrapper writes that group's id to
//! `/tmp/.safe-coder/<n>` and waits for it. A timeout or a cancel runs a second exec
//! that kills the group (`kill -KILL -- -PGID`); without the file (the agent removed it,
//! or the command had not started) it kills every process the user owns in the
//! container except PID 1.
//!
//! When the command is done, the wrapper kills what is left of its process group: as on
//! the `process` backend, every process of a command ends with it (Podman ends the
//! stream when the command exits, so leftovers would otherwise fill the process limit
//! unseen). Processes that left the group (`setsid`) and still hold the output keep
//! Docker's stream open: the exec is polled, and once the wrapper has exited they get
//! the same grace as on the host before they are killed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecResults, StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::Docker;
use futures_util::StreamExt;
use tokio::time::sleep_until;

use super::container::{host_user, WORKSPACE};
use super::engine::engine_error;
use crate::{CancellationToken, ExecOutput, ExecRequest, SandboxError};

/// The wrapper (`$1`: the pgid file's name, `$2`: the command).
const WRAPPER: &str = r#"d=/tmp/.safe-coder; mkdir -p "$d" 2>/dev/null
setsid /bin/bash -c "$2" </dev/null 2>&1 & p=$!
echo "$p" > "$d/$1" 2>/dev/null
wait "$p"; rc=$?
kill -KILL -- "-$p" 2>/dev/null
rm -f "$d/$1"
exit "$rc""#;

/// Kills the command's process group (`$1`: the pgid file's name).
const KILLER: &str = r#"p=$(cat "/tmp/.safe-coder/$1" 2>/dev/null)
if [ -n "$p" ] && kill -KILL -- "-$p" 2>/dev/null; then exit 0; fi
kill -KILL -1 2>/dev/null; exit 0"#;

/// As on the host: how long background processes that hold the output may keep it
/// after the command is done, and how long to wait for the stream after a kill.
const EXIT_GRACE: Duration = Duration::from_millis(250);
const KILL_GRACE: Duration = Duration::from_millis(1500);
/// How often a running exec is asked whether the command is done (only matters when
/// background processes keep the output open).
const POLL: Duration = Duration::from_millis(200);
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

static SEQ: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Killed {
    TimedOut,
    Cancelled,
    Leftovers,
}

/// Runs `request` in `container` with environment `env`. When the engine could not even
/// start the command (the container's process limit is full of processes that escaped
/// their commands: Podman answers with its own error and exit code 125), the container
/// is restarted so the next command runs; this one is not run again (it may have had
/// effects), and the result says to retry.
pub(crate) async fn run(
    docker: &Docker,
    container: &str,
    env: Vec<String>,
    request: ExecRequest,
    cancel: CancellationToken,
) -> Result<ExecOutput, SandboxError> {
    let mut out = run_once(docker, container, env, request, cancel).await?;
    let not_started = out.exit_code == Some(125)
        && out.output.starts_with("Error: ")
        && out.output.contains("OCI runtime error");
    if not_started {
        restart(docker, container).await;
        out.output.push_str(
            "[the container could not start the command (its process limit was full); it was \
             started again, so run the command again: the files are kept, running processes \
             were lost]",
        );
    }
    Ok(out)
}

async fn restart(docker: &Docker, container: &str) {
    let options = bollard::query_parameters::RestartContainerOptionsBuilder::default()
        .t(0)
        .build();
    let _ = docker.restart_container(container, Some(options)).await;
}

/// Creates an exec in `container`. A stopped container (409) is started first and the
/// exec created again, once: a kept session's on resume, or one that stopped under us
/// (under gVisor a command past the memory limit takes the whole sandbox down). Its
/// files are on the host, so nothing is lost but the processes. Returns the exec and
/// whether the container had to be started; `what` names the exec in errors.
pub(super) async fn create_exec_starting(
    docker: &Docker,
    container: &str,
    config: ExecConfig,
    what: &str,
) -> Result<(CreateExecResults, bool), SandboxError> {
    match docker.create_exec(container, config.clone()).await {
        Ok(exec) => Ok((exec, false)),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => {
            docker
                .start_container(container, None)
                .await
                .map_err(|e| SandboxError::from(engine_error("start the stopped container", e)))?;
            let exec = docker
                .create_exec(container, config)
                .await
                .map_err(|e| SandboxError::from(engine_error(what, e)))?;
            Ok((exec, true))
        }
        Err(e) => Err(engine_error(what, e).into()),
    }
}

async fn run_once(
    docker: &Docker,
    container: &str,
    env: Vec<String>,
    request: ExecRequest,
    cancel: CancellationToken,
) -> Result<ExecOutput, SandboxError> {
    let started = Instant::now();
    let tag = format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let config = ExecConfig {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        attach_stdin: Some(false),
        tty: Some(false),
        env: Some(env),
        cmd: Some(vec![
            "/bin/bash".into(),
            "-c".into(),
            WRAPPER.into(),
            "safe-coder".into(),
            tag.clone(),
            request.command.clone(),
        ]),
        user: Some(host_user()),
        working_dir: Some(WORKSPACE.into()),
        ..Default::default()
    };
    let (exec, restarted) =
        create_exec_starting(docker, container, config, "start the command").await?;
    let attached = docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: None,
            }),
        )
        .await
        .map_err(|e| SandboxError::from(engine_error("start the command", e)))?;
    let StartExecResults::Attached { mut output, input } = attached else {
        return Err(SandboxError::Other(
            "the container engine started the command detached; its output is lost".into(),
        ));
    };
    // Not attached: the command's stdin is closed. The connection's write half stays
    // open until the end (closing it early ends the exec under gVisor).
    let _input = input;

    let cap = request.max_output_bytes;
    let mut captured: Vec<u8> = Vec::with_capacity(cap.min(64 * 1024));
    let mut total: u64 = 0;
    let timeout = request.timeout.min(MAX_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;
    let far = deadline + MAX_TIMEOUT;
    let mut next_poll = tokio::time::Instant::now() + POLL;
    let mut killed: Option<Killed> = None;
    let mut grace: Option<tokio::time::Instant> = None;
    let mut wrapper_done = false;
    let mut engine_failed: Option<String> = None;
    let mut container_died = false;

    loop {
        let running = killed.is_none() && !wrapper_done;
        tokio::select! {
            biased;
            _ = cancel.cancelled(), if running => {
                kill(docker, container, &tag).await;
                killed = Some(Killed::Cancelled);
                grace = Some(tokio::time::Instant::now() + KILL_GRACE);
            }
            _ = sleep_until(deadline), if running => {
                kill(docker, container, &tag).await;
                killed = Some(Killed::TimedOut);
                grace = Some(tokio::time::Instant::now() + KILL_GRACE);
            }
            item = output.next() => match item {
                None => break,
                Some(Ok(LogOutput::StdOut { message } | LogOutput::StdErr { message }
                    | LogOutput::Console { message })) => {
                    total += message.len() as u64;
                    let room = cap.saturating_sub(captured.len());
                    captured.extend_from_slice(&message[..message.len().min(room)]);
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => {
                    engine_failed = Some(e.to_string());
                    break;
                }
            },
            _ = sleep_until(next_poll), if running => {
                next_poll = tokio::time::Instant::now() + POLL;
                let done = match docker.inspect_exec(&exec.id).await {
                    // Not running *and* an exit code: done (before it starts, an exec
                    // is not running either, without a code; gVisor starts slowly).
                    Ok(state) => state.running == Some(false) && state.exit_code.is_some(),
                    // An exited container forgets its execs.
                    Err(_) => false,
                };
                if done {
                    wrapper_done = true;
                    grace = Some(tokio::time::Instant::now() + EXIT_GRACE);
                } else if !container_running(docker, container).await {
                    // The whole container died (gVisor's Sentry at a limit): the
                    // engine never ends this exec's stream by itself.
                    container_died = true;
                    break;
                }
            }
            _ = sleep_until(grace.unwrap_or(far)), if grace.is_some() => {
                if killed.is_none() && wrapper_done {
                    if !container_running(docker, container).await {
                        container_died = true;
                        break;
                    }
                    // The command is done but background processes still hold its
                    // output: kill them, then wait a little for the stream to end.
                    kill(docker, container, &tag).await;
                    killed = Some(Killed::Leftovers);
                    grace = Some(tokio::time::Instant::now() + KILL_GRACE);
                } else {
                    break;
                }
            }
        }
    }
    drop(output);
    if let Some(detail) = engine_failed {
        if killed.is_none() {
            kill(docker, container, &tag).await;
            return Err(SandboxError::Other(format!(
                "the container engine lost the command's output ({detail}); the command was stopped, \
                 and the session's files are kept: check the engine with `safe-coder sandbox doctor`"
            )));
        }
    }
    let mut exit_code = if container_died {
        None
    } else {
        match killed {
            Some(Killed::TimedOut | Killed::Cancelled) => None,
            _ => exit_code_of(docker, &exec.id).await,
        }
    };
    // A failed command may have taken the container with it (gVisor at a limit). The
    // engine may notice a moment after the stream ended: an abnormal end (no code, or
    // 128 and above) is given a few looks.
    if exit_code != Some(0) && !container_died {
        let looks = if exit_code.is_none_or(|c| c >= 128) {
            4
        } else {
            1
        };
        for look in 0..looks {
            if look > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if !container_running(docker, container).await {
                container_died = true;
                exit_code = None;
                break;
            }
        }
    }
    let mut text = String::new();
    if restarted {
        text.push_str(
            "[the container had stopped (a command passed its memory limit?); it was started again: \
             the files are kept, running processes were lost]\n",
        );
    }
    text.push_str(&String::from_utf8_lossy(&captured));
    if container_died {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(
            "[the container stopped while the command ran (it passed the sandbox's memory or \
             process limit); the next command starts it again, the files are kept]",
        );
    }
    if killed == Some(Killed::Leftovers) {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(
            "[background processes that still held the output were killed; \
             in this sandbox every process of a command ends with it]",
        );
    }
    Ok(ExecOutput {
        exit_code,
        output: text,
        total_output_bytes: total,
        timed_out: killed == Some(Killed::TimedOut),
        cancelled: killed == Some(Killed::Cancelled),
        duration: started.elapsed(),
    })
}

/// Whether the container still runs (an engine that does not answer counts as running:
/// the stream will tell).
async fn container_running(docker: &Docker, container: &str) -> bool {
    match docker.inspect_container(container, None).await {
        Ok(c) => c.state.and_then(|s| s.running).unwrap_or(true),
        Err(_) => true,
    }
}

/// The wrapper's exit code (the command's; 128+N when a signal killed it). The engine
/// may report the end a moment after the stream closed.
async fn exit_code_of(docker: &Docker, exec: &str) -> Option<i32> {
    for _ in 0..50 {
        match docker.inspect_exec(exec).await {
            Ok(state) if state.running == Some(true) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(state) => return state.exit_code.map(|c| c as i32),
            Err(_) => return None,
        }
    }
    None
}

/// Kills the command's process group (see the module doc). When the killer cannot run
/// (a fork bomb holds every process the container may have, so not even the engine's
/// exec can start), the container is restarted: its processes all end, its files stay.
async fn kill(docker: &Docker, container: &str, tag: &str) {
    if !run_killer(docker, container, KILLER, tag).await
        && container_running(docker, container).await
    {
        restart(docker, container).await;
    }
}

/// Runs a killer script (`script`, with `tag` as `$1`: the file that names what to
/// kill) as the host user and waits for it; whether it ran and succeeded. Shared by
/// commands (their process group) and `safe-coder run` (CMD's session).
pub(crate) async fn run_killer(docker: &Docker, container: &str, script: &str, tag: &str) -> bool {
    let exec = docker
        .create_exec(
            container,
            ExecConfig {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(vec![
                    "/bin/bash".into(),
                    "-c".into(),
                    script.into(),
                    "safe-coder".into(),
                    tag.to_string(),
                ]),
                user: Some(host_user()),
                ..Default::default()
            },
        )
        .await;
    let Ok(exec) = exec else { return false };
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
        let end = tokio::time::Instant::now() + KILL_GRACE;
        while let Ok(Some(_)) = tokio::time::timeout_at(end, output.next()).await {}
    }
    exit_code_of(docker, &exec.id).await == Some(0)
}
