//! The host's client of the guest agent (`docs/vm-protocol.md`): one connection through
//! the VMM's hybrid vsock socket, the handshake, then many requests in flight at once.
//! A reader task hands each reply frame to the request that waits for its id, so an exec
//! can stream output while a status request or a cancel goes through.
//!
//! The connection lives on the tokio runtime that made it. If the agent goes away every
//! waiting request fails at once with the reason (the VM stopped or died), never hangs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use safe_coder_vm_protocol::nonblocking::{
    connect_hybrid, host_handshake, read_frame, write_frame,
};
use safe_coder_vm_protocol::{
    hello, software, AgentError, Change, ErrorKind, ExecExit, ExecRequest, Frame, InteractiveExec,
    Request, RequestId, Response, UsageReport, AGENT_PORT,
};
use std::os::fd::{AsFd, OwnedFd};

use tokio::io::WriteHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Errors talking to the agent. Each is one sentence naming the fix.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    #[error(transparent)]
    Connect(#[from] safe_coder_vm_protocol::HybridError),
    #[error(transparent)]
    Handshake(#[from] safe_coder_vm_protocol::HandshakeError),
    #[error(transparent)]
    Frame(#[from] safe_coder_vm_protocol::FrameError),
    #[error("the connection to the guest agent failed ({0}); check that the VM is still running")]
    Io(#[from] std::io::Error),
    /// The agent answered with an error.
    #[error("{0}")]
    Agent(AgentError),
    #[error("the connection to the guest agent ended ({0}); the VM stopped or its agent died, start a new session")]
    Gone(String),
    #[error("the guest agent answered {got} to a {asked} request; the host and the agent are of different builds, rebuild the image with `safe-coder sandbox image build --backend qemu`")]
    Unexpected { asked: &'static str, got: String },
}

type Waiters = Arc<Mutex<HashMap<RequestId, mpsc::UnboundedSender<Frame<Response>>>>>;

/// A connected, handshaken agent.
pub(crate) struct AgentClient {
    // `tokio::io::split`, not `into_split`: dropping this half must not shut the
    // socket down, since a duplicate of its fd lives on (see [`AgentClient::from_fd`]).
    writer: tokio::sync::Mutex<WriteHalf<UnixStream>>,
    waiters: Waiters,
    next_id: AtomicU64,
    /// Why the connection ended, once it has.
    gone: Arc<Mutex<Option<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// What the agent printed and how the command ended.
pub(crate) struct ExecResult {
    pub exit: ExecExit,
    pub output: Vec<u8>,
}

fn name(r: &Response) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.get("reply").and_then(|n| n.as_str()).map(String::from))
        .unwrap_or_else(|| "an unknown reply".into())
}

/// Where the agent is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// A hybrid vsock socket (Firecracker's, or `vhost-device-vsock`'s): `CONNECT 1024`.
    HybridVsock(PathBuf),
    /// QEMU's chardev socket of the guest's virtio-serial port `safe-coder.agent` (the
    /// snapshot mode: QEMU 7.2 cannot migrate a vhost-user vsock device). One connection
    /// at a time; the agent starts over with a new handshake after each.
    Serial(PathBuf),
}

impl Endpoint {
    pub fn path(&self) -> &Path {
        match self {
            Endpoint::HybridVsock(p) | Endpoint::Serial(p) => p,
        }
    }
}

impl AgentClient {
    /// Connects to the agent, says hello when `handshake` (a restored VM's agent is
    /// still in the session it had when it was saved, so it is not greeted again), and
    /// returns the client with a duplicate of the connection's fd: the connection
    /// outlives this client (and its runtime) through it.
    pub async fn connect(
        endpoint: &Endpoint,
        handshake: bool,
    ) -> Result<(AgentClient, OwnedFd), AgentClientError> {
        let mut stream = match endpoint {
            Endpoint::HybridVsock(uds) => connect_hybrid(uds, AGENT_PORT).await?,
            Endpoint::Serial(path) => {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|source| safe_coder_vm_protocol::HybridError::Connect {
                        path: path.display().to_string(),
                        source,
                    })?
            }
        };
        if handshake {
            host_handshake(&mut stream, &hello(&software("safe-coder"))).await?;
        }
        let fd = stream.as_fd().try_clone_to_owned()?;
        Ok((Self::from_stream(stream), fd))
    }

    /// A client on an already greeted connection (a duplicate of `fd`), on the current
    /// runtime.
    pub fn from_fd(fd: &OwnedFd) -> Result<AgentClient, AgentClientError> {
        let std = std::os::unix::net::UnixStream::from(fd.try_clone()?);
        std.set_nonblocking(true)?;
        Ok(Self::from_stream(UnixStream::from_std(std)?))
    }

    fn from_stream(stream: UnixStream) -> AgentClient {
        let (mut read, write) = tokio::io::split(stream);
        let waiters: Waiters = Arc::default();
        let gone: Arc<Mutex<Option<String>>> = Arc::default();
        let reader = tokio::spawn({
            let waiters = waiters.clone();
            let gone = gone.clone();
            async move {
                let reason = loop {
                    match read_frame::<_, Response>(&mut read).await {
                        Ok(Some(frame)) => {
                            let tx = waiters.lock().ok().and_then(|w| w.get(&frame.id).cloned());
                            if let Some(tx) = tx {
                                let _ = tx.send(frame);
                            }
                        }
                        Ok(None) => break "the agent closed the connection".to_string(),
                        Err(e) => break e.to_string(),
                    }
                };
                if let Ok(mut g) = gone.lock() {
                    *g = Some(reason);
                }
                // Dropping the senders wakes every waiting request.
                if let Ok(mut w) = waiters.lock() {
                    w.clear();
                }
            }
        });
        AgentClient {
            writer: tokio::sync::Mutex::new(write),
            waiters,
            next_id: AtomicU64::new(1),
            gone,
            reader,
        }
    }

    /// Connects, retrying while nothing listens yet (the guest is still booting), until
    /// `timeout`; `alive` is asked between attempts so a VMM that died ends the wait.
    pub async fn connect_when_ready(
        endpoint: &Endpoint,
        timeout: Duration,
        handshake: bool,
        alive: impl Fn() -> Result<(), String>,
    ) -> Result<(AgentClient, OwnedFd), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("the VM's vsock socket was never created");
        loop {
            alive()?;
            if endpoint.path().exists() {
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    Self::connect(endpoint, handshake),
                )
                .await
                {
                    Ok(Ok(c)) => return Ok(c),
                    // A version mismatch will not go away by retrying.
                    Ok(Err(e @ AgentClientError::Handshake(_))) => return Err(e.to_string()),
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "the agent did not answer the handshake in 5 s".into(),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn gone_error(&self) -> AgentClientError {
        let reason = self
            .gone
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_else(|| "the reply stream ended".into());
        AgentClientError::Gone(reason)
    }

    pub fn is_gone(&self) -> bool {
        self.gone.lock().map(|g| g.is_some()).unwrap_or(true)
    }

    /// Sends one request and returns the receiver of its reply frames (call
    /// [`AgentClient::forget_request`] with the id when done with them).
    pub async fn send(
        &self,
        req: &Request,
        data: &[u8],
    ) -> Result<(RequestId, mpsc::UnboundedReceiver<Frame<Response>>), AgentClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(id, tx);
        }
        if self.is_gone() {
            self.forget(id);
            return Err(self.gone_error());
        }
        let mut w = self.writer.lock().await;
        if let Err(e) = write_frame(&mut *w, id, req, data).await {
            self.forget(id);
            // A connection that cannot be written to is gone, whether or not the reader
            // has seen its end yet.
            if let safe_coder_vm_protocol::FrameError::Io(io) = &e {
                if let Ok(mut g) = self.gone.lock() {
                    g.get_or_insert_with(|| io.to_string());
                }
            }
            return Err(e.into());
        }
        Ok((id, rx))
    }

    fn forget(&self, id: RequestId) {
        if let Ok(mut w) = self.waiters.lock() {
            w.remove(&id);
        }
    }

    /// A request answered by one frame.
    pub async fn call(
        &self,
        req: &Request,
        data: &[u8],
    ) -> Result<Frame<Response>, AgentClientError> {
        let (id, mut rx) = self.send(req, data).await?;
        let frame = rx.recv().await;
        self.forget(id);
        match frame {
            Some(Frame {
                body: Response::Error(e),
                ..
            }) => Err(AgentClientError::Agent(e)),
            Some(f) => Ok(f),
            None => Err(self.gone_error()),
        }
    }

    pub async fn ping(&self) -> Result<(), AgentClientError> {
        match self.call(&Request::Ping, &[]).await?.body {
            Response::Pong => Ok(()),
            other => Err(unexpected("ping", &other)),
        }
    }

    /// A request answered by `done`.
    pub async fn done(&self, req: &Request, data: &[u8]) -> Result<(), AgentClientError> {
        match self.call(req, data).await?.body {
            Response::Done => Ok(()),
            other => Err(unexpected("write/remove/cancel", &other)),
        }
    }

    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<(), AgentClientError> {
        self.done(
            &Request::WriteFile {
                path: path.to_string(),
                mode: Some(mode),
            },
            data,
        )
        .await
    }

    /// The contents and the permission bits.
    pub async fn read_file(&self, path: &str) -> Result<(Vec<u8>, u32), AgentClientError> {
        let f = self
            .call(
                &Request::ReadFile {
                    path: path.to_string(),
                },
                &[],
            )
            .await?;
        match f.body {
            Response::FileData { mode } => Ok((f.data, mode)),
            other => Err(unexpected("read_file", &other)),
        }
    }

    pub async fn set_mark(&self) -> Result<u64, AgentClientError> {
        match self.call(&Request::SetMark, &[]).await?.body {
            Response::Marked { mark } => Ok(mark),
            other => Err(unexpected("set_mark", &other)),
        }
    }

    /// The changes since `mark`, and the new mark recorded in the same walk.
    pub async fn changes_since(&self, mark: u64) -> Result<(Vec<Change>, u64), AgentClientError> {
        let req = Request::ChangesSince {
            mark,
            set_mark: true,
        };
        match self.call(&req, &[]).await?.body {
            Response::Changes {
                changes,
                mark: Some(m),
            } => Ok((changes, m)),
            other => Err(unexpected("changes_since", &other)),
        }
    }

    pub async fn usage(&self) -> Result<UsageReport, AgentClientError> {
        match self.call(&Request::Usage, &[]).await?.body {
            Response::Usage(u) => Ok(u),
            other => Err(unexpected("usage", &other)),
        }
    }

    pub async fn shutdown(&self) -> Result<(), AgentClientError> {
        self.done(&Request::Shutdown, &[]).await
    }

    /// The agent's feature words (empty for an agent that predates `features`).
    pub async fn features(&self) -> Result<Vec<String>, AgentClientError> {
        match self.call(&Request::Features, &[]).await {
            Ok(Frame {
                body: Response::Features { features },
                ..
            }) => Ok(features),
            Ok(other) => Err(unexpected("features", &other.body)),
            Err(AgentClientError::Agent(e)) if e.kind == ErrorKind::InvalidRequest => {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Starts an interactive exec; once the agent started it, its id, pid and the
    /// receiver of its `output` and `exited` frames (call [`AgentClient::forget`] with
    /// the id when done).
    pub async fn exec_interactive(
        &self,
        req: InteractiveExec,
    ) -> Result<(RequestId, u32, mpsc::UnboundedReceiver<Frame<Response>>), AgentClientError> {
        let (id, mut rx) = self.send(&Request::ExecInteractive(req), &[]).await?;
        match rx.recv().await {
            Some(Frame {
                body: Response::ExecStarted { pid },
                ..
            }) => Ok((id, pid, rx)),
            Some(Frame {
                body: Response::Error(e),
                ..
            }) => {
                self.forget(id);
                Err(AgentClientError::Agent(e))
            }
            Some(f) => {
                self.forget(id);
                Err(unexpected("exec_interactive", &f.body))
            }
            None => {
                self.forget(id);
                Err(self.gone_error())
            }
        }
    }

    /// Sends input for interactive exec `exec` (empty: its end) and returns the
    /// receiver of the agent's answer, so several can be in flight in order.
    pub async fn send_stdin(
        &self,
        exec: RequestId,
        data: &[u8],
    ) -> Result<(RequestId, mpsc::UnboundedReceiver<Frame<Response>>), AgentClientError> {
        self.send(&Request::Stdin { exec }, data).await
    }

    /// Forgets request `id` (its replies are dropped from now on).
    pub fn forget_request(&self, id: RequestId) {
        self.forget(id);
    }

    /// Runs a command; output is collected up to `keep` bytes. When `cancel` fires the
    /// agent is asked to kill the command's group, and the exec ends `cancelled`.
    pub async fn exec(
        &self,
        req: ExecRequest,
        keep: usize,
        cancel: &CancellationToken,
    ) -> Result<ExecResult, AgentClientError> {
        let (id, mut rx) = self.send(&Request::Exec(req), &[]).await?;
        let mut output = Vec::new();
        let mut cancel_sent = false;
        let result = loop {
            let frame = tokio::select! {
                f = rx.recv() => f,
                _ = cancel.cancelled(), if !cancel_sent => {
                    cancel_sent = true;
                    // The reply to the cancel itself is not waited for: the exec's own
                    // `exited` (with `cancelled`) is what ends this loop.
                    let (cid, _crx) = match self.send(&Request::Cancel { exec: id }, &[]).await {
                        Ok(x) => x,
                        Err(e) => break Err(e),
                    };
                    self.forget(cid);
                    continue;
                }
            };
            match frame {
                None => break Err(self.gone_error()),
                Some(f) => match f.body {
                    Response::ExecStarted { .. } => {}
                    Response::Output { .. } => {
                        let room = keep.saturating_sub(output.len());
                        output.extend_from_slice(&f.data[..f.data.len().min(room)]);
                    }
                    Response::Exited(exit) => break Ok(ExecResult { exit, output }),
                    Response::Error(e) => break Err(AgentClientError::Agent(e)),
                    other => break Err(unexpected("exec", &other)),
                },
            }
        };
        self.forget(id);
        result
    }
}

fn unexpected(asked: &'static str, got: &Response) -> AgentClientError {
    AgentClientError::Unexpected {
        asked,
        got: name(got),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use safe_coder_vm_protocol::{read_frame, write_frame, ErrorKind};

    /// An agent from before `features` answers `invalid_request` (as the real one does
    /// for any op it cannot decode): that means no features, not a failure; a newer
    /// one lists them.
    #[tokio::test]
    async fn features_of_an_agent_that_predates_them_are_none() {
        let (host, agent) = std::os::unix::net::UnixStream::pair().unwrap();
        let old = std::thread::spawn(move || {
            let mut a = agent;
            for answer in [
                Response::Error(AgentError::new(
                    ErrorKind::InvalidRequest,
                    "this agent cannot decode the request: unknown variant `features`",
                )),
                Response::Features {
                    features: vec!["exec_interactive".into()],
                },
            ] {
                let f = read_frame::<_, Request>(&mut a).unwrap().unwrap();
                assert_eq!(f.body, Request::Features);
                write_frame(&mut a, f.id, &answer, &[]).unwrap();
            }
        });
        host.set_nonblocking(true).unwrap();
        let client = AgentClient::from_stream(UnixStream::from_std(host).unwrap());
        assert!(client.features().await.unwrap().is_empty());
        assert_eq!(client.features().await.unwrap(), ["exec_interactive"]);
        old.join().unwrap();
    }
}
