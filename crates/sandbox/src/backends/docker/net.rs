//! `safe-coder run --allow-net` on docker: the network allow-list's proxy reached from
//! inside the container without a socket.
//!
//! The proxy runs on the host on a Unix socket (crates/netproxy). Inside, the static
//! guest agent's `net-forward --port P` listens on the container's loopback and carries
//! every connection over its own stdin and stdout (`safe_coder_netproxy::mux`). Here
//! that program is an exec of the engine with stdin attached, no TTY: its stdin and
//! stdout are the one byte stream the multiplexer needs, and `mux::serve_host` bridges
//! it to the proxy's socket. Nothing crosses the container's boundary but the engine's
//! own attach connection, so it works the same on runc, gVisor (whose sockets the host
//! cannot reach) and Podman, and the container keeps `--network none`.
//!
//! Without a TTY the engine frames the attached output: an 8-byte header (stream type
//! 0/1/2, three zero bytes, the big-endian payload length) before each chunk, stdout
//! and stderr interleaved. [`attach`] gives back stdout alone as a byte stream (bollard
//! decodes the frames, partial ones included; stderr is kept aside for error messages),
//! and treats anything unframed as the broken stream it is rather than as data.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::Docker;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;

use super::agent::AGENT_IN_CONTAINER;
use super::container::host_user;
use super::engine::engine_error;
use super::exec::create_exec_starting;
use crate::SandboxError;

/// How much of a program's stderr is kept for an error message.
const STDERR_KEEP: usize = 4096;
/// What `net-forward` writes to stderr once it listens.
const LISTENING: &[u8] = b"listening on";
/// How long the forwarder may take to listen (gVisor starts an exec slowly).
const READY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// An attached exec's stdout, as bytes (see the module doc).
pub(crate) struct Reader {
    chunks: Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>,
    /// What is left of the current chunk.
    chunk: Bytes,
}

impl AsyncRead for Reader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.chunk.is_empty() {
                let n = buf.remaining().min(self.chunk.len());
                let part = self.chunk.split_to(n);
                buf.put_slice(&part);
                return Poll::Ready(Ok(()));
            }
            match self.chunks.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(next))) => self.chunk = next,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                // The end of the stream: a read of 0 bytes.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// An attached exec: its stdout, its stdin, and what it wrote to stderr so far.
pub(crate) struct Attached {
    pub stdout: Reader,
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
    pub stderr: Arc<Mutex<Vec<u8>>>,
}

/// Starts `cmd` in `container` as the host user, stdin attached, no TTY.
pub(crate) async fn attach(
    docker: &Docker,
    container: &str,
    cmd: Vec<String>,
) -> Result<Attached, SandboxError> {
    let config = ExecConfig {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        cmd: Some(cmd),
        user: Some(host_user()),
        ..Default::default()
    };
    let (exec, _) =
        create_exec_starting(docker, container, config, "start the network forwarder").await?;
    let started = docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: None,
            }),
        )
        .await
        .map_err(|e| SandboxError::from(engine_error("start the network forwarder", e)))?;
    let StartExecResults::Attached { output, input } = started else {
        return Err(SandboxError::Other(
            "the container engine started the network forwarder detached; its stream is lost"
                .into(),
        ));
    };
    let stderr = Arc::new(Mutex::new(Vec::new()));
    Ok(Attached {
        stdout: stdout_of(output, stderr.clone()),
        stdin: input,
        stderr,
    })
}

/// Stdout of a demultiplexed attach stream as a reader; stderr goes to `stderr`.
fn stdout_of(
    output: Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    stderr: Arc<Mutex<Vec<u8>>>,
) -> Reader {
    let bytes = output.filter_map(move |item| {
        let stderr = stderr.clone();
        async move {
            match item {
                Ok(LogOutput::StdOut { message }) => Some(Ok(message)),
                Ok(LogOutput::StdErr { message }) => {
                    if let Ok(mut kept) = stderr.lock() {
                        let room = STDERR_KEEP.saturating_sub(kept.len());
                        kept.extend_from_slice(&message[..message.len().min(room)]);
                    }
                    None
                }
                Ok(LogOutput::StdIn { .. }) => None,
                // Bytes outside a frame: the engine did not frame the stream (or it
                // ended mid-frame). Carrying them on would corrupt every connection.
                Ok(LogOutput::Console { .. }) => Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the container engine sent the forwarder's output unframed",
                ))),
                Err(e) => Some(Err(io::Error::other(e.to_string()))),
            }
        }
    });
    Reader {
        chunks: Box::pin(bytes),
        chunk: Bytes::new(),
    }
}

/// The guest agent's forwarder in a container, bridged to the proxy's socket.
pub(crate) struct Forwarder {
    task: JoinHandle<io::Result<()>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// Starts `net-forward --port port` in `container`, bridges it to `proxy_socket`, and
/// waits until it listens (its line on stderr), so CMD's first request cannot race its
/// `bind`. The container must have the agent's binary (`container::Agent::has_binary`).
pub(crate) async fn start(
    docker: &Docker,
    container: &str,
    port: u16,
    proxy_socket: std::path::PathBuf,
) -> Result<Forwarder, SandboxError> {
    let a = attach(
        docker,
        container,
        vec![
            AGENT_IN_CONTAINER.into(),
            "net-forward".into(),
            "--port".into(),
            port.to_string(),
        ],
    )
    .await?;
    let task = tokio::spawn(safe_coder_netproxy::mux::serve_host(
        a.stdout,
        a.stdin,
        proxy_socket,
    ));
    let forwarder = Forwarder {
        task,
        stderr: a.stderr,
    };
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    loop {
        let listening = forwarder
            .stderr
            .lock()
            .is_ok_and(|s| s.windows(LISTENING.len()).any(|w| w == LISTENING));
        if listening {
            return Ok(forwarder);
        }
        if let Some(said) = forwarder.ended() {
            return Err(SandboxError::Other(format!(
                "the network forwarder in the container did not start: {said}"
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SandboxError::Other(format!(
                "the network forwarder in the container did not listen on port {port} within {} s",
                READY_DEADLINE.as_secs()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

impl Forwarder {
    /// Whether the forwarder has ended already (it failed to listen, or the engine
    /// dropped it), with what it said.
    pub(crate) fn ended(&self) -> Option<String> {
        self.task.is_finished().then(|| {
            let said = self
                .stderr
                .lock()
                .map(|s| String::from_utf8_lossy(&s).trim().to_string())
                .unwrap_or_default();
            if said.is_empty() {
                "it ended without a word".to_string()
            } else {
                said
            }
        })
    }

    /// Ends the bridge: the attach connection closes, so the forwarder's stdin ends and
    /// it exits (a run's own container is removed anyway).
    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures_util::stream;

    /// Frames split anywhere, stderr between them, become stdout's bytes alone.
    #[tokio::test]
    async fn stdout_alone_in_order() {
        use tokio::io::AsyncReadExt;
        let items: Vec<Result<LogOutput, bollard::errors::Error>> = vec![
            Ok(LogOutput::StdOut {
                message: Bytes::from_static(&[0, 1, 2, 255]),
            }),
            Ok(LogOutput::StdErr {
                message: Bytes::from_static(b"listening"),
            }),
            Ok(LogOutput::StdOut {
                message: Bytes::from_static(b"\x01\x00\x00\x00rest"),
            }),
        ];
        let err = Arc::new(Mutex::new(Vec::new()));
        let mut r = stdout_of(Box::pin(stream::iter(items)), err.clone());
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"\x00\x01\x02\xff\x01\x00\x00\x00rest");
        assert_eq!(err.lock().unwrap().as_slice(), b"listening");
        let unframed: Vec<Result<LogOutput, bollard::errors::Error>> =
            vec![Ok(LogOutput::Console {
                message: Bytes::from_static(b"raw"),
            })];
        let mut r = stdout_of(Box::pin(stream::iter(unframed)), err);
        let e = r.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
