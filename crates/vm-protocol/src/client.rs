//! A tokio client for the agent (feature `tokio`): one connection, many requests in
//! flight. A reader task routes every reply frame to the request with its id, so an exec
//! streams while files are read, and a cancel reaches it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

use crate::frame::{Frame, FrameError};
use crate::handshake::HandshakeError;
use crate::nonblocking::{host_handshake, read_frame, write_frame};
use crate::{
    AgentError, Change, DirEntry, ErrorKind, ExecExit, ExecRequest, FileStat, Hello,
    InteractiveExec, Request, RequestId, Response, Stream, UsageReport,
};

/// Errors of a request through [`AgentClient`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The agent carried the request out and it failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("the guest agent closed the connection; the VM stopped or the agent died")]
    Closed,
    #[error("the guest agent answered {0} to this request; the host and the agent are of different builds")]
    Unexpected(String),
}

type Routes = Arc<StdMutex<HashMap<RequestId, Route>>>;

struct Route {
    tx: mpsc::UnboundedSender<Frame<Response>>,
    /// An exec's route stays until its `exited` (or `error`); others take one reply.
    stream: bool,
}

fn lock(r: &Routes) -> MutexGuard<'_, HashMap<RequestId, Route>> {
    match r.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A connection to a guest agent, after the handshake.
pub struct AgentClient<S> {
    writer: Mutex<WriteHalf<S>>,
    routes: Routes,
    next_id: AtomicU64,
    agent: Hello,
    reader: JoinHandle<()>,
}

/// What an exec sends after it started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecEvent {
    Output(Stream, Vec<u8>),
    Exited(ExecExit),
}

/// A running exec: its request id (for [`AgentClient::cancel`]), its pid in the guest
/// and its output.
pub struct ExecHandle {
    pub id: RequestId,
    pub pid: u32,
    rx: mpsc::UnboundedReceiver<Frame<Response>>,
}

impl ExecHandle {
    /// The next chunk of output, or the end. After [`ExecEvent::Exited`], `Ok(None)`.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>, ClientError> {
        let Some(frame) = self.rx.recv().await else {
            return Ok(None);
        };
        match frame.body {
            Response::Output { stream } => Ok(Some(ExecEvent::Output(stream, frame.data))),
            Response::Exited(exit) => {
                self.rx.close();
                Ok(Some(ExecEvent::Exited(exit)))
            }
            Response::Error(e) => Err(ClientError::Agent(e)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Reads everything: `(stdout, stderr, exit)`. `Closed` when the connection ended
    /// before the exit.
    pub async fn collect(mut self) -> Result<(Vec<u8>, Vec<u8>, ExecExit), ClientError> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match self.next().await? {
                Some(ExecEvent::Output(Stream::Stdout, d)) => out.extend_from_slice(&d),
                Some(ExecEvent::Output(Stream::Stderr, d)) => err.extend_from_slice(&d),
                Some(ExecEvent::Exited(exit)) => return Ok((out, err, exit)),
                None => return Err(ClientError::Closed),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> AgentClient<S> {
    /// Does the handshake on `stream` (saying `ours`) and starts routing replies.
    pub async fn connect(mut stream: S, ours: &Hello) -> Result<Self, ClientError>
    where
        S: Unpin,
    {
        let agent = host_handshake(&mut stream, ours).await?;
        let (reader, writer) = tokio::io::split(stream);
        let routes: Routes = Arc::default();
        let reader = tokio::spawn(route(reader, Arc::clone(&routes)));
        Ok(AgentClient {
            writer: Mutex::new(writer),
            routes,
            next_id: AtomicU64::new(1),
            agent,
            reader,
        })
    }

    /// The agent's hello.
    pub fn agent(&self) -> &Hello {
        &self.agent
    }

    /// Whether the connection still routes replies.
    pub fn is_open(&self) -> bool {
        !self.reader.is_finished()
    }

    async fn send(
        &self,
        req: &Request,
        data: &[u8],
        stream: bool,
    ) -> Result<(RequestId, mpsc::UnboundedReceiver<Frame<Response>>), ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.routes).insert(id, Route { tx, stream });
        if self.reader.is_finished() {
            lock(&self.routes).remove(&id);
            return Err(ClientError::Closed);
        }
        let mut w = self.writer.lock().await;
        if let Err(e) = write_frame(&mut *w, id, req, data).await {
            lock(&self.routes).remove(&id);
            return Err(e.into());
        }
        Ok((id, rx))
    }

    /// Sends a request and waits for its one reply (an `error` reply is an `Err`).
    pub async fn request(
        &self,
        req: &Request,
        data: &[u8],
    ) -> Result<Frame<Response>, ClientError> {
        let (_, mut rx) = self.send(req, data, false).await?;
        let frame = rx.recv().await.ok_or(ClientError::Closed)?;
        match frame.body {
            Response::Error(e) => Err(ClientError::Agent(e)),
            _ => Ok(frame),
        }
    }

    async fn expect_done(&self, req: &Request, data: &[u8]) -> Result<(), ClientError> {
        match self.request(req, data).await?.body {
            Response::Done => Ok(()),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Starts an exec; returns once the agent started it (or could not).
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecHandle, ClientError> {
        let (id, mut rx) = self.send(&Request::Exec(req), &[], true).await?;
        let frame = rx.recv().await.ok_or(ClientError::Closed)?;
        match frame.body {
            Response::ExecStarted { pid } => Ok(ExecHandle { id, pid, rx }),
            Response::Error(e) => Err(ClientError::Agent(e)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// What the agent can do beyond version 1 (empty for an agent that predates the
    /// `features` request).
    pub async fn features(&self) -> Result<Vec<String>, ClientError> {
        match self.request(&Request::Features, &[]).await {
            Ok(Frame {
                body: Response::Features { features },
                ..
            }) => Ok(features),
            Ok(other) => Err(ClientError::Unexpected(format!("{:?}", other.body))),
            Err(ClientError::Agent(e)) if e.kind == ErrorKind::InvalidRequest => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Starts an interactive exec; returns once the agent started it (or could not).
    /// Feed it with [`AgentClient::stdin`], size it with [`AgentClient::resize`].
    pub async fn exec_interactive(&self, req: InteractiveExec) -> Result<ExecHandle, ClientError> {
        let (id, mut rx) = self.send(&Request::ExecInteractive(req), &[], true).await?;
        let frame = rx.recv().await.ok_or(ClientError::Closed)?;
        match frame.body {
            Response::ExecStarted { pid } => Ok(ExecHandle { id, pid, rx }),
            Response::Error(e) => Err(ClientError::Agent(e)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Writes `data` to the input of interactive exec `exec` (empty: ends it); returns
    /// once the agent wrote it.
    pub async fn stdin(&self, exec: RequestId, data: &[u8]) -> Result<(), ClientError> {
        self.expect_done(&Request::Stdin { exec }, data).await
    }

    /// Sets the terminal size of interactive exec `exec`.
    pub async fn resize(&self, exec: RequestId, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.expect_done(&Request::Resize { exec, rows, cols }, &[])
            .await
    }

    /// Kills the exec started by request `exec` (its whole process tree).
    pub async fn cancel(&self, exec: RequestId) -> Result<(), ClientError> {
        self.expect_done(&Request::Cancel { exec }, &[]).await
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.request(&Request::Ping, &[]).await?.body {
            Response::Pong => Ok(()),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The contents and permission bits of a file.
    pub async fn read_file(&self, path: &str) -> Result<(Vec<u8>, u32), ClientError> {
        let f = self
            .request(&Request::ReadFile { path: path.into() }, &[])
            .await?;
        match f.body {
            Response::FileData { mode } => Ok((f.data, mode)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
        mode: Option<u32>,
    ) -> Result<(), ClientError> {
        self.expect_done(
            &Request::WriteFile {
                path: path.into(),
                mode,
            },
            data,
        )
        .await
    }

    pub async fn stat(&self, path: &str) -> Result<Option<FileStat>, ClientError> {
        match self
            .request(&Request::Stat { path: path.into() }, &[])
            .await?
            .body
        {
            Response::Stat { stat } => Ok(stat),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, ClientError> {
        match self
            .request(&Request::ListDir { path: path.into() }, &[])
            .await?
            .body
        {
            Response::Entries { entries } => Ok(entries),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn remove(&self, path: &str) -> Result<(), ClientError> {
        self.expect_done(&Request::Remove { path: path.into() }, &[])
            .await
    }

    pub async fn set_mark(&self) -> Result<u64, ClientError> {
        match self.request(&Request::SetMark, &[]).await?.body {
            Response::Marked { mark } => Ok(mark),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The changes since `mark`, and the new mark when `set_mark`.
    pub async fn changes_since(
        &self,
        mark: u64,
        set_mark: bool,
    ) -> Result<(Vec<Change>, Option<u64>), ClientError> {
        match self
            .request(&Request::ChangesSince { mark, set_mark }, &[])
            .await?
            .body
        {
            Response::Changes { changes, mark } => Ok((changes, mark)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sets the guest's clock to `unix_ms` (milliseconds since the epoch).
    pub async fn set_clock(&self, unix_ms: u64) -> Result<(), ClientError> {
        self.expect_done(&Request::SetClock { unix_ms }, &[]).await
    }

    pub async fn usage(&self) -> Result<UsageReport, ClientError> {
        match self.request(&Request::Usage, &[]).await?.body {
            Response::Usage(u) => Ok(u),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Asks the agent to power the VM off; returns once it acknowledged.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.expect_done(&Request::Shutdown, &[]).await
    }
}

impl<S> Drop for AgentClient<S> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn route<S: AsyncRead>(mut reader: ReadHalf<S>, routes: Routes) {
    loop {
        let frame = match read_frame::<_, Response>(&mut reader).await {
            Ok(Some(f)) => f,
            // Closed or broken: every waiter sees its channel end (`Closed`).
            Ok(None) | Err(_) => break,
        };
        let id = frame.id;
        let mut map = lock(&routes);
        let Some(route) = map.get(&id) else { continue };
        let last = !route.stream || matches!(frame.body, Response::Exited(_) | Response::Error(_));
        let _ = route.tx.send(frame);
        if last {
            map.remove(&id);
        }
    }
    lock(&routes).clear();
}
