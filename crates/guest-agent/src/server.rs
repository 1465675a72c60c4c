//! Serving the VM protocol on one connection: the handshake, then requests dispatched
//! concurrently (one thread per request; a cancel is handled at once by the reading
//! thread), replies written whole under one lock so frames never interleave.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

use safe_coder_vm_protocol::{
    agent_handshake, read_frame, write_frame, AgentError, ErrorKind, Frame, FrameError, Hello,
    Request, RequestId, Response, TermSize, FEATURE_INTERACTIVE,
};

use crate::changes::Tracker;
use crate::exec::{self, Event};
use crate::files::Workspace;
use crate::interactive::{self, Input};
use crate::usage;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// What happens after a `shutdown` request has been answered.
pub type ShutdownAction = Box<dyn Fn() + Send + Sync>;

/// The agent's state, shared by all connections.
pub struct Agent {
    workspace: Workspace,
    tracker: Tracker,
    hello: Hello,
    /// Leaders of the execs running now (for `usage` and `shutdown`).
    running: Mutex<HashSet<i32>>,
    shutting_down: AtomicBool,
    on_shutdown: ShutdownAction,
    /// Whether `set_clock` may set the clock (only as the VM's init).
    owns_clock: bool,
}

impl Agent {
    /// An agent serving `workspace`, introducing itself with `hello`.
    pub fn new(workspace: &Path, hello: Hello, on_shutdown: ShutdownAction) -> io::Result<Self> {
        Ok(Agent {
            workspace: Workspace::new(workspace)?,
            tracker: Tracker::default(),
            hello,
            running: Mutex::new(HashSet::new()),
            shutting_down: AtomicBool::new(false),
            on_shutdown,
            owns_clock: false,
        })
    }

    /// Lets `set_clock` set the system clock: for the agent that is the VM's init.
    pub fn owning_the_clock(mut self) -> Self {
        self.owns_clock = true;
        self
    }

    /// Kills every running exec's tree.
    pub fn kill_all(&self) {
        let leaders: Vec<i32> = lock(&self.running).iter().copied().collect();
        for pid in leaders {
            exec::kill_tree(pid);
        }
    }
}

/// The writing half of a connection.
#[derive(Clone)]
struct Replier(Arc<Mutex<File>>);

impl Replier {
    /// Sends one reply; false when the connection is gone.
    fn send(&self, id: RequestId, body: &Response, data: &[u8]) -> bool {
        write_frame(&mut *lock(&self.0), id, body, data).is_ok()
    }

    fn result(&self, id: RequestId, r: Result<Response, AgentError>) {
        let body = r.unwrap_or_else(Response::Error);
        self.send(id, &body, &[]);
    }
}

/// A running exec of a connection: its events (for a cancel) and, for an interactive
/// one, its input.
struct Running {
    events: Sender<Event>,
    input: Option<Input>,
}

type Execs = Arc<Mutex<HashMap<RequestId, Running>>>;

/// Serves one connection until it closes. Whatever the connection's execs still run
/// then is killed: nobody is left to read their output.
pub fn serve_connection(agent: Arc<Agent>, conn: File) {
    let writer = match conn.try_clone() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("safe-coder-guest-agent: cannot use a connection: {e}");
            return;
        }
    };
    let mut handshake_stream = HandshakeStream {
        r: &conn,
        w: &writer,
    };
    if let Err(e) = agent_handshake(&mut handshake_stream, &agent.hello) {
        eprintln!("safe-coder-guest-agent: {e}");
        return;
    }
    let replier = Replier(Arc::new(Mutex::new(writer)));
    let execs: Execs = Arc::default();
    let mut reader = BufReader::with_capacity(64 * 1024, &conn);
    loop {
        let frame = match read_frame::<_, Request>(&mut reader) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(FrameError::Decode {
                id: Some(id),
                source,
            }) => {
                replier.result(
                    id,
                    Err(AgentError::new(
                        ErrorKind::InvalidRequest,
                        format!(
                            "this agent ({}) cannot decode the request: {source}",
                            agent.hello.software
                        ),
                    )),
                );
                continue;
            }
            Err(e) => {
                eprintln!("safe-coder-guest-agent: {e}");
                break;
            }
        };
        dispatch(&agent, &replier, &execs, frame);
    }
    for running in lock(&execs).values() {
        exec::cancel(&running.events);
    }
}

/// A `Read + Write` over the two halves, for the handshake.
struct HandshakeStream<'a> {
    r: &'a File,
    w: &'a File,
}

impl io::Read for HandshakeStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut self.r, buf)
    }
}

impl io::Write for HandshakeStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut self.w, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        io::Write::flush(&mut self.w)
    }
}

fn spawn(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name("request".into()).spawn(f) {
        eprintln!("safe-coder-guest-agent: cannot start a thread: {e}");
    }
}

/// Registers exec `id` with its events; false (and an error sent) when that id runs.
fn register(execs: &Execs, replier: &Replier, id: RequestId, events: &Sender<Event>) -> bool {
    let mut map = lock(execs);
    if map.contains_key(&id) {
        drop(map);
        replier.result(
            id,
            Err(AgentError::new(
                ErrorKind::InvalidRequest,
                format!("request id {id} is already running"),
            )),
        );
        return false;
    }
    map.insert(
        id,
        Running {
            events: events.clone(),
            input: None,
        },
    );
    true
}

fn no_such_exec(exec: RequestId) -> AgentError {
    AgentError::new(
        ErrorKind::InvalidRequest,
        format!("no interactive exec {exec} is running on this connection"),
    )
}

fn dispatch(agent: &Arc<Agent>, replier: &Replier, execs: &Execs, frame: Frame<Request>) {
    let Frame { id, body, data } = frame;
    match body {
        Request::Ping => {
            replier.send(id, &Response::Pong, &[]);
        }
        Request::Cancel { exec } => {
            if let Some(running) = lock(execs).get(&exec) {
                exec::cancel(&running.events);
            }
            replier.send(id, &Response::Done, &[]);
        }
        Request::Features => {
            replier.send(
                id,
                &Response::Features {
                    features: vec![FEATURE_INTERACTIVE.to_string()],
                },
                &[],
            );
        }
        Request::Stdin { exec } => {
            // In order, on the exec's own input thread, which answers.
            let handed = lock(execs)
                .get(&exec)
                .and_then(|r| r.input.as_ref())
                .is_some_and(|input| input.write(id, data));
            if !handed {
                replier.result(id, Err(no_such_exec(exec)));
            }
        }
        Request::Resize { exec, rows, cols } => {
            let r = match lock(execs).get(&exec).and_then(|r| r.input.as_ref()) {
                Some(input) => input
                    .resize(TermSize { rows, cols })
                    .map(|()| Response::Done),
                None => Err(no_such_exec(exec)),
            };
            replier.result(id, r);
        }
        Request::ExecInteractive(req) => {
            let (tx, rx) = exec::channel();
            if !register(execs, replier, id, &tx) {
                return;
            }
            let (agent, replier, execs) = (Arc::clone(agent), replier.clone(), Arc::clone(execs));
            spawn(move || {
                let input_replier = replier.clone();
                let started = if agent.shutting_down.load(Ordering::SeqCst) {
                    Err(AgentError::new(
                        ErrorKind::SpawnFailed,
                        "the VM is shutting down",
                    ))
                } else {
                    interactive::start(&req, &agent.workspace, tx.clone(), move |rid, r| {
                        input_replier.result(rid, r)
                    })
                };
                let (started, input) = match started {
                    Err(e) => {
                        lock(&execs).remove(&id);
                        replier.result(id, Err(e));
                        return;
                    }
                    Ok(s) => s,
                };
                let pid = started.pid;
                lock(&agent.running).insert(pid);
                if let Some(running) = lock(&execs).get_mut(&id) {
                    running.input = Some(input);
                }
                replier.send(id, &Response::ExecStarted { pid: pid as u32 }, &[]);
                let exit = exec::run_streams(started, None, None, tx, rx, |body, data| {
                    replier.send(id, &body, data)
                });
                lock(&agent.running).remove(&pid);
                // Dropping its input ends the exec's input thread.
                lock(&execs).remove(&id);
                replier.send(id, &Response::Exited(exit), &[]);
            });
        }
        Request::Exec(req) => {
            let (tx, rx) = exec::channel();
            if !register(execs, replier, id, &tx) {
                return;
            }
            let (agent, replier, execs) = (Arc::clone(agent), replier.clone(), Arc::clone(execs));
            spawn(move || {
                let started = if agent.shutting_down.load(Ordering::SeqCst) {
                    Err(AgentError::new(
                        ErrorKind::SpawnFailed,
                        "the VM is shutting down",
                    ))
                } else {
                    exec::start(&req, &agent.workspace, tx.clone())
                };
                match started {
                    Err(e) => {
                        lock(&execs).remove(&id);
                        replier.result(id, Err(e));
                    }
                    Ok(started) => {
                        let pid = started.pid;
                        lock(&agent.running).insert(pid);
                        replier.send(id, &Response::ExecStarted { pid: pid as u32 }, &[]);
                        let exit = exec::run(started, &req, tx, rx, |body, data| {
                            replier.send(id, &body, data)
                        });
                        lock(&agent.running).remove(&pid);
                        lock(&execs).remove(&id);
                        replier.send(id, &Response::Exited(exit), &[]);
                    }
                }
            });
        }
        Request::Shutdown => {
            agent.shutting_down.store(true, Ordering::SeqCst);
            agent.kill_all();
            replier.send(id, &Response::Done, &[]);
            (agent.on_shutdown)();
        }
        other => {
            let (agent, replier) = (Arc::clone(agent), replier.clone());
            spawn(move || {
                let ws = &agent.workspace;
                let reply = match other {
                    Request::ReadFile { path } => match ws.read_file(&path) {
                        Ok((contents, mode)) => {
                            replier.send(id, &Response::FileData { mode }, &contents);
                            return;
                        }
                        Err(e) => Err(e),
                    },
                    Request::WriteFile { path, mode } => {
                        ws.write_file(&path, &data, mode).map(|()| Response::Done)
                    }
                    Request::Stat { path } => ws.stat(&path).map(|stat| Response::Stat { stat }),
                    Request::ListDir { path } => ws
                        .list_dir(&path)
                        .map(|entries| Response::Entries { entries }),
                    Request::Remove { path } => ws.remove(&path).map(|()| Response::Done),
                    Request::SetMark => agent
                        .tracker
                        .set_mark(ws.root())
                        .map(|mark| Response::Marked { mark }),
                    Request::ChangesSince { mark, set_mark } => agent
                        .tracker
                        .changes_since(ws.root(), mark, set_mark)
                        .map(|(changes, mark)| Response::Changes { changes, mark }),
                    Request::Usage => Ok(Response::Usage(usage::report(
                        lock(&agent.running).len() as u32,
                    ))),
                    Request::SetClock { unix_ms } => set_clock(agent.owns_clock, unix_ms),
                    Request::Ping
                    | Request::Cancel { .. }
                    | Request::Exec(_)
                    | Request::ExecInteractive(_)
                    | Request::Stdin { .. }
                    | Request::Resize { .. }
                    | Request::Features
                    | Request::Shutdown => Err(AgentError::new(
                        ErrorKind::InvalidRequest,
                        "unexpected request",
                    )),
                };
                replier.result(id, reply);
            });
        }
    }
}

fn set_clock(owns_clock: bool, unix_ms: u64) -> Result<Response, AgentError> {
    if !owns_clock {
        return Err(AgentError::new(
            ErrorKind::InvalidRequest,
            "this agent is not a VM's init and leaves the clock alone",
        ));
    }
    let ts = libc::timespec {
        tv_sec: (unix_ms / 1000) as libc::time_t,
        tv_nsec: ((unix_ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime with a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        let e = io::Error::last_os_error();
        return Err(AgentError::new(
            ErrorKind::Io,
            format!("cannot set the clock: {e}"),
        ));
    }
    Ok(Response::Done)
}
