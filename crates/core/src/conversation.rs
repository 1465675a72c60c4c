//! The queue pair: a conversation takes [`Op`]s in and sends [`Event`]s out.
//!
//! [`start`] opens (or resumes) a session and spawns three tasks:
//! - the **dispatcher** reads the front end's ops. [`Op::Interrupt`] and
//!   [`Op::Approval`] act at once, even while a turn runs; [`Op::Complete`] is answered
//!   at once; every other op goes, in order, to
//! - the **conversation loop**, which handles one op at a time (a prompt, a slash
//!   command, a `!cmd`, a review) and emits [`Event::Ready`] after each;
//! - the **status feed** (only when [`Settings::status_interval`] is set).
//!
//! The store is written off the loop by the [`Recorder`]. When the front end drops its
//! op sender without a [`Op::Shutdown`], the session ends as if the user chose "keep for
//! later": nothing is lost. The event stream ends after [`Event::SessionEnded`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use safe_coder_interact::custom::{load_custom_commands, CustomCommands};
use safe_coder_interact::memory::load_memory;
use safe_coder_protocol::{
    ApprovalDecision, ApprovalRequest, ApprovalSubject, Event, Message, Op, ReviewDecision,
    SyncOutcome,
};
use safe_coder_sandbox::{CancellationToken, Sandbox};
use safe_coder_store::{SessionRecord, Store};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::agent::{Agent, AgentOptions, EventSink};
use crate::approval::{Approver, HeadlessApprover};
use crate::recorder::Recorder;
use crate::session::{store_path, Session, SessionConfig, SessionError, SessionLimits};
use crate::settings::{Settings, Start};

/// Why a conversation could not start. Each message is one sentence naming the fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Model(#[from] safe_coder_llm::LlmError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("cannot open the session store {path}: {source}")]
    Store {
        path: String,
        source: safe_coder_store::StoreError,
    },
    #[error("{0}")]
    Other(String),
}

impl From<safe_coder_store::StoreError> for StartError {
    fn from(e: safe_coder_store::StoreError) -> Self {
        StartError::Session(SessionError::Store(e))
    }
}

/// A front end's ends of the queue pair.
pub struct Conversation {
    pub ops: mpsc::UnboundedSender<Op>,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub session_id: String,
    tasks: Vec<JoinHandle<()>>,
}

impl Conversation {
    /// Waits until the conversation's tasks have ended, after [`Event::SessionEnded`]
    /// was received (before it, use [`Conversation::close`]).
    pub async fn join(self) {
        let Conversation { ops, tasks, .. } = self;
        // The dispatcher ends when no op sender is left.
        drop(ops);
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Lets go of the conversation: a session still open ends as if the user chose
    /// "keep for later" (nothing is lost); waits until that is done.
    pub async fn close(self) {
        let Conversation {
            ops,
            mut events,
            tasks,
            ..
        } = self;
        drop(ops);
        while let Some(e) = events.recv().await {
            if matches!(e, Event::SessionEnded { .. }) {
                break;
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Sends events to the front end.
#[derive(Clone)]
pub(crate) struct Emitter {
    tx: mpsc::UnboundedSender<Event>,
}

impl EventSink for Emitter {
    fn emit(&self, event: Event) {
        let _ = self.tx.send(event);
    }
}

impl Emitter {
    pub(crate) fn notice(&self, message: impl Into<String>) {
        self.emit(Event::Notice {
            message: message.into(),
        });
    }

    pub(crate) fn error(&self, message: impl Into<String>) {
        self.emit(Event::Error {
            message: message.into(),
        });
    }
}

/// What the dispatcher hands the loop.
pub(crate) enum Queued {
    Op(Op),
    /// The front end dropped its sender.
    Closed,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<ApprovalDecision>>>>;

/// The token the current op runs under; [`Op::Interrupt`] fires it.
#[derive(Clone, Default)]
pub(crate) struct CurrentCancel(Arc<Mutex<CancellationToken>>);

impl CurrentCancel {
    pub(crate) fn fresh(&self) -> CancellationToken {
        let token = CancellationToken::new();
        if let Ok(mut c) = self.0.lock() {
            *c = token.clone();
        }
        token
    }

    fn cancel(&self) {
        if let Ok(c) = self.0.lock() {
            c.cancel();
        }
    }
}

/// Approvals through the queue pair: emits [`Event::ApprovalRequested`] and waits for
/// the matching [`Op::Approval`] (or the turn's cancellation).
struct QueueApprover {
    pending: Pending,
    events: Emitter,
    cancel: CurrentCancel,
}

#[async_trait]
impl Approver for QueueApprover {
    async fn approve(&self, request: ApprovalRequest) -> ApprovalDecision {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(request.tool_call_id.clone(), tx);
        }
        let token = self.cancel.0.lock().map(|c| c.clone()).unwrap_or_default();
        let id = request.tool_call_id.clone();
        self.events.emit(Event::ApprovalRequested { request });
        let decision = tokio::select! {
            answer = rx => answer.unwrap_or(ApprovalDecision::DenyWithReason {
                reason: "the user interface closed".into(),
            }),
            _ = token.cancelled() => ApprovalDecision::DenyWithReason {
                reason: "the user cancelled the turn".into(),
            },
        };
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
        decision
    }
}

/// Headless: refuses what needs asking, and remembers it for the summary line.
struct CountingHeadless {
    inner: HeadlessApprover,
    refused: Mutex<Vec<ApprovalSubject>>,
}

#[async_trait]
impl Approver for CountingHeadless {
    async fn approve(&self, request: ApprovalRequest) -> ApprovalDecision {
        if let Ok(mut r) = self.refused.lock() {
            r.push(request.subject.clone());
        }
        self.inner.approve(request).await
    }
}

impl CountingHeadless {
    /// One line naming the flag that would have let the refused calls run.
    fn take_summary(&self) -> Option<String> {
        let refused = std::mem::take(&mut *self.refused.lock().ok()?);
        if refused.is_empty() {
            return None;
        }
        let commands = refused
            .iter()
            .any(|s| matches!(s, ApprovalSubject::Command { .. }));
        let flag = if commands {
            "--approval-mode yolo"
        } else {
            "--approval-mode auto-edit"
        };
        Some(format!(
            "{} tool call(s) needed approval in approval mode '{}', which this headless run cannot ask for; rerun with {flag} to let them run",
            refused.len(),
            self.inner.mode
        ))
    }
}

enum Approvals {
    Queue(QueueApprover),
    Headless(CountingHeadless),
}

impl Approvals {
    fn approver(&self) -> &dyn Approver {
        match self {
            Approvals::Queue(q) => q,
            Approvals::Headless(h) => h,
        }
    }
}

/// Opens the session (new or resumed) and spawns the conversation. Errors that happen
/// before the session exists (no key, a bad URL, no session to resume) come back here,
/// as one error; after that everything is an event.
pub async fn start(settings: Settings, start: Start) -> Result<Conversation, StartError> {
    // A bad provider setting (no key, bad URL) fails before any session is made.
    let client = safe_coder_llm::client(settings.provider.clone())?;
    start_with(settings, start, client).await
}

/// A new session for `safe-coder run` (docs/run.md): no model, the command sent with
/// [`Op::Run`] is the agent. Everything else (session dir, history, store record, the
/// review and sync at [`Op::Shutdown`]) is as for [`start`].
pub async fn start_run(settings: Settings) -> Result<Conversation, StartError> {
    let client = Box::new(crate::run::NoModel(settings.provider.kind));
    start_with(settings, Start::New, client).await
}

async fn start_with(
    settings: Settings,
    start: Start,
    client: Box<dyn safe_coder_llm::ModelClient>,
) -> Result<Conversation, StartError> {
    let path = store_path(&settings.data_dir);
    let store = Store::open(&path).map_err(|source| StartError::Store {
        path: path.display().to_string(),
        source,
    })?;
    let store = Arc::new(Mutex::new(store));
    let memory = load_memory(&settings.config_dir, &settings.project);
    let custom = load_custom_commands(&settings.config_dir, &settings.project);

    let opened = open_session(&settings, start, store.clone()).await?;
    let resumed = opened.restored.is_some();
    let session = Arc::new(opened.session);

    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let events = Emitter { tx: event_tx };
    let recorder = Recorder::spawn(store.clone(), session.id.clone(), {
        let events = events.clone();
        move |e| events.emit(e)
    });

    let mut options = AgentOptions {
        model: settings.provider.model.clone(),
        max_tokens: settings.provider.max_tokens,
        max_turns: settings.max_turns,
        approval_mode: settings.approval_mode,
        memory: memory.system_prompt_section(),
        context_window: settings.context_window,
        compact_threshold: settings.compact_threshold,
        overflow_advice: if settings.headless {
            "give a shorter task, or one that reads less at once".into()
        } else {
            AgentOptions::default().overflow_advice
        },
        ..AgentOptions::default()
    };
    if let Some(record) = &opened.restored {
        // The session's own choices win over the defaults of this run.
        if record.provider == settings.provider.kind.as_str() && !record.model.is_empty() {
            options.model = record.model.clone();
        }
        if let Ok(mode) = record.approval_mode.parse() {
            options.approval_mode = mode;
        }
    }
    let agent = Agent::new(client, session.sandbox.clone(), options)
        .with_history(session.repo.clone())
        .with_recorder(recorder.clone())
        .with_messages(opened.messages.clone());

    events.emit(Event::SessionStarted {
        session_id: session.id.clone(),
        project: session.project.display().to_string(),
        backend: session.backend.as_str().to_string(),
        note: session.note.clone(),
        provider: settings.provider.kind.as_str().to_string(),
        model: agent.options().model.clone(),
        approval_mode: agent.options().approval_mode,
        // Counted as `/stats` counts: tool results are not messages of their own.
        resumed_messages: opened
            .messages
            .iter()
            .filter(|m| !m.is_tool_results())
            .count(),
    });
    if !opened.messages.is_empty() {
        events.emit(Event::ConversationRestored {
            messages: opened.messages,
        });
    }
    for w in memory.warnings.iter().chain(custom.warnings.iter()) {
        events.notice(format!("warning: {w}"));
    }

    let (ops_tx, mut ops_rx) = mpsc::unbounded_channel::<Op>();
    let (queue_tx, queue_rx) = mpsc::unbounded_channel::<Queued>();
    let pending: Pending = Arc::default();
    let cancel = CurrentCancel::default();
    let terminal = crate::run::TerminalSlot::default();
    let mut tasks = Vec::new();

    // The dispatcher.
    tasks.push(tokio::spawn({
        let pending = pending.clone();
        let cancel = cancel.clone();
        let events = events.clone();
        let sandbox = session.sandbox.clone();
        let custom = custom.clone();
        let terminal = terminal.clone();
        async move {
            while let Some(op) = ops_rx.recv().await {
                match op {
                    Op::Interrupt => cancel.cancel(),
                    Op::TerminalInput { data } => terminal.send(crate::run::TermIn::Data(data)),
                    Op::TerminalResize { rows, cols } => {
                        terminal.send(crate::run::TermIn::Resize(rows, cols))
                    }
                    Op::Approval { call_id, decision } => {
                        let waiting = pending.lock().ok().and_then(|mut p| p.remove(&call_id));
                        match waiting {
                            Some(tx) => {
                                let _ = tx.send(decision);
                            }
                            None => {
                                events.error(format!("no approval is waiting for call {call_id}"))
                            }
                        }
                    }
                    Op::Complete { text } => {
                        let items = completions(&text, &*sandbox, &custom).await;
                        events.emit(Event::Completions { items });
                    }
                    other => {
                        if queue_tx.send(Queued::Op(other)).is_err() {
                            break;
                        }
                    }
                }
            }
            // Approvals that wait now can never be answered.
            if let Ok(mut p) = pending.lock() {
                p.clear();
            }
            let _ = queue_tx.send(Queued::Closed);
        }
    }));

    // The status feed; it ends with the conversation loop.
    let status_feed = settings.status_interval.map(|every| {
        let sandbox = session.sandbox.clone();
        let events = events.clone();
        tokio::spawn(async move {
            loop {
                let status = sandbox.status().await;
                if events.tx.send(Event::Status { status }).is_err() {
                    break;
                }
                tokio::time::sleep(every).await;
            }
        })
    });

    let approvals = if settings.headless {
        Approvals::Headless(CountingHeadless {
            inner: HeadlessApprover {
                mode: agent.options().approval_mode,
            },
            refused: Mutex::new(Vec::new()),
        })
    } else {
        Approvals::Queue(QueueApprover {
            pending,
            events: events.clone(),
            cancel: cancel.clone(),
        })
    };
    let session_id = session.id.clone();
    let runner = crate::commands::Runner {
        settings,
        session,
        agent,
        custom,
        recorder,
        events,
        cancel,
        queue: queue_rx,
        started: Instant::now(),
        titled: resumed,
        terminal,
    };
    tasks.push(tokio::spawn(async move {
        run_loop(runner, approvals).await;
        // Nothing follows `SessionEnded`: the stream ends once the op sender is gone.
        if let Some(feed) = status_feed {
            feed.abort();
        }
    }));
    Ok(Conversation {
        ops: ops_tx,
        events: event_rx,
        session_id,
        tasks,
    })
}

async fn run_loop(mut runner: crate::commands::Runner, approvals: Approvals) {
    runner.events.emit(Event::Ready);
    loop {
        let Some(item) = runner.queue.recv().await else {
            break;
        };
        let op = match item {
            Queued::Op(op) => op,
            Queued::Closed => {
                runner.shutdown(true).await;
                break;
            }
        };
        let token = runner.cancel.fresh();
        let quit = runner.handle(op, approvals.approver(), &token).await;
        if let Approvals::Headless(h) = &approvals {
            if let Some(line) = h.take_summary() {
                runner.events.error(line);
            }
        }
        if quit {
            break;
        }
        runner.events.emit(Event::Ready);
    }
}

/// Candidates for the `@path` or `/command` being typed.
async fn completions(text: &str, sandbox: &dyn Sandbox, custom: &CustomCommands) -> Vec<String> {
    let word = text.rsplit(char::is_whitespace).next().unwrap_or("");
    if let Some(rest) = word.strip_prefix('@') {
        safe_coder_interact::complete_at_path(rest, sandbox)
            .await
            .into_iter()
            .map(|c| format!("@{c}"))
            .collect()
    } else if text.starts_with('/') {
        safe_coder_interact::slash::complete_slash(text, custom)
    } else {
        Vec::new()
    }
}

struct Opened {
    session: Session,
    messages: Vec<Message>,
    /// The record of a resumed session whose sandbox is still there.
    restored: Option<SessionRecord>,
}

fn limits_of(settings: &Settings) -> SessionLimits {
    SessionLimits {
        memory_mb: settings.memory_mb,
        cpus: settings.cpus,
        env_passthrough: settings.env_passthrough.clone(),
        max_file_bytes: settings.max_file_mb.saturating_mul(1024 * 1024),
        vm: settings.vm.clone(),
        docker: settings.docker.clone(),
    }
}

fn session_config(settings: &Settings) -> SessionConfig {
    SessionConfig {
        project: settings.project.clone(),
        data_dir: settings.data_dir.clone(),
        backend: settings.backend,
        exclude: settings.exclude.clone(),
        limits: limits_of(settings),
        provider: settings.provider.kind,
        model: settings.provider.model.clone(),
        approval_mode: settings.approval_mode,
    }
}

async fn new_session(settings: &Settings, store: Arc<Mutex<Store>>) -> Result<Session, StartError> {
    let config = session_config(settings);
    tokio::task::spawn_blocking(move || Session::start(&config, store))
        .await
        .map_err(|e| StartError::Other(format!("the session could not be created: {e}")))?
        .map_err(StartError::from)
}

fn lock(store: &Arc<Mutex<Store>>) -> Result<std::sync::MutexGuard<'_, Store>, StartError> {
    store
        .lock()
        .map_err(|_| StartError::Other("the session store is poisoned".into()))
}

/// A new session, or the one to resume. A resumed session whose sandbox is gone (it was
/// synced or discarded) goes on with its conversation on a fresh copy of the project.
async fn open_session(
    settings: &Settings,
    start: Start,
    store: Arc<Mutex<Store>>,
) -> Result<Opened, StartError> {
    let Start::Resume(which) = start else {
        return Ok(Opened {
            session: new_session(settings, store).await?,
            messages: Vec::new(),
            restored: None,
        });
    };
    let (record, messages) = {
        let s = lock(&store)?;
        let record = match which.as_deref() {
            None | Some("") => s
                .latest_for_project(&settings.project.display().to_string())?
                .ok_or_else(|| {
                    StartError::Other(format!(
                        "no session to resume for {}: start one with `safe-coder chat`",
                        settings.project.display()
                    ))
                })?,
            Some(id) => s.get_session(id)?.ok_or_else(|| {
                StartError::Other(format!(
                    "no session '{id}': see `safe-coder sessions list --all`"
                ))
            })?,
        };
        let messages = s.load_messages(&record.id)?;
        (record, messages)
    };
    let sandbox_kept =
        std::path::Path::new(&record.session_dir).exists() && record.state.holds_unsynced_work();
    if !sandbox_kept {
        let session = new_session(settings, store.clone()).await?;
        {
            let s = lock(&store)?;
            s.replace_messages(&session.id, &messages)?;
            if let Some(title) = &record.title {
                s.set_title(&session.id, title)?;
            }
            s.set_model(&session.id, &record.provider, &record.model)?;
            s.set_approval_mode(&session.id, &record.approval_mode)?;
        }
        return Ok(Opened {
            session,
            messages,
            restored: Some(record),
        });
    }
    if record.state.as_str() == "active"
        && crate::session::owner_alive(std::path::Path::new(&record.session_dir))
    {
        return Err(StartError::Other(format!(
            "session {} is still open in another safe-coder process",
            record.id
        )));
    }
    let session = {
        let store = store.clone();
        let record = record.clone();
        let limits = limits_of(settings);
        tokio::task::spawn_blocking(move || Session::open(&record, store, &limits))
            .await
            .map_err(|e| StartError::Other(format!("the session could not be opened: {e}")))??
    };
    session.claim();
    Ok(Opened {
        session,
        messages,
        restored: Some(record),
    })
}

/// The diffs the review shows, one per changed file.
pub(crate) fn diffs_of(
    session: &Session,
    changes: &safe_coder_protocol::ChangeSet,
) -> BTreeMap<String, String> {
    changes
        .files
        .iter()
        .map(|f| {
            (
                f.path.clone(),
                session
                    .diff(Some(&f.path))
                    .unwrap_or_else(|e| format!("(no diff: {e})\n")),
            )
        })
        .collect()
}

/// What a review decision is called in [`Event::SyncFinished`].
pub(crate) fn outcome_of(decision: &ReviewDecision) -> SyncOutcome {
    match decision {
        ReviewDecision::AcceptAll | ReviewDecision::Pick { .. } => SyncOutcome::Synced,
        ReviewDecision::RejectAll => SyncOutcome::Rejected,
        ReviewDecision::Keep => SyncOutcome::Kept,
    }
}
