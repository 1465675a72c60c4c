//! Writes a conversation's durable record (messages, usage, tool calls, settings) to the
//! store on a thread of its own, so the turn loop never waits on SQLite. A write that
//! fails is reported as an [`Event::Error`], never dropped silently: the conversation
//! goes on in memory, and the user learns that `--resume` may miss part of it.

use std::sync::{mpsc, Arc, Mutex};

use safe_coder_protocol::{ApprovalMode, Event, Message, Usage};
use safe_coder_store::Store;

/// One write to the store.
#[derive(Debug)]
enum Record {
    Append(Message),
    Replace(Vec<Message>),
    Usage {
        model: String,
        usage: Usage,
    },
    ToolCall {
        tool: String,
        ok: bool,
        duration_ms: u64,
    },
    Model {
        provider: String,
        model: String,
    },
    ApprovalMode(ApprovalMode),
    Title(String),
    /// Answered once every earlier record is written.
    Flush(mpsc::Sender<()>),
}

/// A handle to the recorder thread of one session. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: mpsc::Sender<Record>,
}

impl Recorder {
    /// Starts the recorder for `session_id`. Failures are reported through `report`.
    pub fn spawn(
        store: Arc<Mutex<Store>>,
        session_id: String,
        report: impl Fn(Event) + Send + 'static,
    ) -> Recorder {
        let (tx, rx) = mpsc::channel::<Record>();
        let spawned = std::thread::Builder::new()
            .name("store-recorder".into())
            .spawn(move || {
                for record in rx {
                    if let Record::Flush(done) = record {
                        let _ = done.send(());
                        continue;
                    }
                    let what = describe(&record);
                    let result = match store.lock() {
                        Ok(s) => write(&s, &session_id, record),
                        Err(_) => Err("the session store is poisoned".to_string()),
                    };
                    if let Err(e) = result {
                        report(Event::Error {
                            message: format!(
                                "could not save {what} to the session store ({e}); the conversation goes on, but --resume may miss it"
                            ),
                        });
                    }
                }
            });
        if let Err(e) = spawned {
            // Without a thread nothing could be saved: say so once.
            eprintln!("warning: the session recorder could not start ({e}); nothing of this session will be saved");
        }
        Recorder { tx }
    }

    fn send(&self, record: Record) {
        let _ = self.tx.send(record);
    }

    pub fn append_message(&self, message: &Message) {
        self.send(Record::Append(message.clone()));
    }

    pub fn replace_messages(&self, messages: &[Message]) {
        self.send(Record::Replace(messages.to_vec()));
    }

    pub fn usage(&self, model: &str, usage: Usage) {
        self.send(Record::Usage {
            model: model.to_string(),
            usage,
        });
    }

    pub fn tool_call(&self, tool: &str, ok: bool, duration_ms: u64) {
        self.send(Record::ToolCall {
            tool: tool.to_string(),
            ok,
            duration_ms,
        });
    }

    pub fn model(&self, provider: &str, model: &str) {
        self.send(Record::Model {
            provider: provider.to_string(),
            model: model.to_string(),
        });
    }

    pub fn approval_mode(&self, mode: ApprovalMode) {
        self.send(Record::ApprovalMode(mode));
    }

    pub fn title(&self, title: &str) {
        self.send(Record::Title(title.to_string()));
    }

    /// Waits until everything sent before is written (before reading the store back,
    /// e.g. for `/stats`, and at the end of a session).
    pub async fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Record::Flush(tx));
        let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
    }
}

fn describe(record: &Record) -> &'static str {
    match record {
        Record::Append(_) => "a message",
        Record::Replace(_) => "the conversation",
        Record::Usage { .. } => "token usage",
        Record::ToolCall { .. } => "a tool call's statistics",
        Record::Model { .. } => "the model",
        Record::ApprovalMode(_) => "the approval mode",
        Record::Title(_) => "the session title",
        Record::Flush(_) => "",
    }
}

fn write(store: &Store, id: &str, record: Record) -> Result<(), String> {
    let r = match record {
        Record::Append(m) => store.append_message(id, &m).map(|_| ()),
        Record::Replace(ms) => store.replace_messages(id, &ms),
        Record::Usage { model, usage } => store.record_usage(id, &model, usage),
        Record::ToolCall {
            tool,
            ok,
            duration_ms,
        } => store.record_tool_call(id, &tool, ok, duration_ms),
        Record::Model { provider, model } => store.set_model(id, &provider, &model),
        Record::ApprovalMode(mode) => store.set_approval_mode(id, mode.as_str()),
        Record::Title(t) => store.set_title(id, &t),
        Record::Flush(_) => Ok(()),
    };
    r.map_err(|e| e.to_string())
}
