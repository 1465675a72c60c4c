//! `safe-coder chat` with the TUI: wires the UI's actions to the session and the turn
//! loop, and the core's events to the UI.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use safe_coder_core::session::{Review, Session};
use safe_coder_core::Approver;
use safe_coder_protocol::{ApprovalDecision, ApprovalRequest, Event};
use safe_coder_sandbox::CancellationToken;
use safe_coder_tui::{ReviewData, TuiConfig, UiAction, UiInput};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::interactive::{Interactive, Outcome};
use crate::setup;
use crate::AgentArgs;

/// Approvals go to the UI's dialog; the answer comes back through the dispatcher.
struct TuiApprover {
    to_ui: mpsc::UnboundedSender<UiInput>,
    pending: Arc<Mutex<Option<oneshot::Sender<ApprovalDecision>>>>,
}

#[async_trait]
impl Approver for TuiApprover {
    async fn approve(&self, request: ApprovalRequest) -> ApprovalDecision {
        let (tx, rx) = oneshot::channel();
        *self.pending.lock().await = Some(tx);
        if self.to_ui.send(UiInput::Approval(request)).is_err() {
            return ApprovalDecision::DenyWithReason {
                reason: "the UI closed".into(),
            };
        }
        rx.await.unwrap_or(ApprovalDecision::DenyWithReason {
            reason: "the UI closed".into(),
        })
    }
}

/// What the main loop acts on (approvals and cancellation are handled by the
/// dispatcher while a turn runs).
enum Command {
    Submit(String),
    Quit,
    Review(Option<Vec<String>>),
    CycleMode,
}

pub async fn run(args: AgentArgs, resume: Option<String>) -> Result<()> {
    let prepared = setup::prepare(&args)?;
    let (session, agent, resumed, memory_warnings) =
        crate::chat_line::open_session(&prepared, resume).await?;

    let (to_ui, ui_inputs) = mpsc::unbounded_channel::<UiInput>();
    let (ui_actions_tx, mut ui_actions) = mpsc::unbounded_channel::<UiAction>();
    let theme = prepared.resolved.theme;
    let config = TuiConfig {
        project: session.project.display().to_string(),
        theme,
        approval_mode: prepared.resolved.approval_mode,
        provider: prepared.resolved.provider.as_str().to_string(),
        model: prepared.resolved.model.clone(),
    };
    let ui = tokio::spawn(safe_coder_tui::run(config, ui_inputs, ui_actions_tx));

    let pending: Arc<Mutex<Option<oneshot::Sender<ApprovalDecision>>>> = Arc::new(Mutex::new(None));
    let current_cancel: Arc<std::sync::Mutex<CancellationToken>> =
        Arc::new(std::sync::Mutex::new(CancellationToken::new()));
    let (cmd_tx, mut commands) = mpsc::unbounded_channel::<Command>();

    // The dispatcher: routes the UI's actions while the main loop may be busy in a turn.
    let dispatcher = {
        let pending = pending.clone();
        let current_cancel = current_cancel.clone();
        let sandbox = session.sandbox.clone();
        let custom =
            safe_coder_interact::load_custom_commands(&prepared.dirs.config_dir, &prepared.project);
        let to_ui = to_ui.clone();
        tokio::spawn(async move {
            while let Some(action) = ui_actions.recv().await {
                match action {
                    UiAction::Approval(decision) => {
                        if let Some(tx) = pending.lock().await.take() {
                            let _ = tx.send(decision);
                        }
                    }
                    UiAction::Cancel => {
                        if let Ok(c) = current_cancel.lock() {
                            c.cancel();
                        }
                    }
                    UiAction::Submit(line) => {
                        let _ = cmd_tx.send(Command::Submit(line));
                    }
                    UiAction::Quit => {
                        let _ = cmd_tx.send(Command::Quit);
                    }
                    UiAction::Review(paths) => {
                        let _ = cmd_tx.send(Command::Review(Some(paths)));
                    }
                    UiAction::KeepForLater => {
                        let _ = cmd_tx.send(Command::Review(None));
                    }
                    UiAction::CycleApprovalMode => {
                        let _ = cmd_tx.send(Command::CycleMode);
                    }
                    UiAction::RequestCompletions(text) => {
                        let word = text.rsplit(char::is_whitespace).next().unwrap_or("");
                        let list = if let Some(rest) = word.strip_prefix('@') {
                            safe_coder_interact::complete_at_path(rest, &*sandbox)
                                .await
                                .into_iter()
                                .map(|c| format!("@{c}"))
                                .collect()
                        } else if text.starts_with('/') {
                            safe_coder_interact::slash::complete_slash(&text, &custom)
                        } else {
                            Vec::new()
                        };
                        let _ = to_ui.send(UiInput::Completions(list));
                    }
                }
            }
        })
    };

    // The status panel's feed.
    let status_task = {
        let sandbox = session.sandbox.clone();
        let to_ui = to_ui.clone();
        tokio::spawn(async move {
            loop {
                if to_ui.send(UiInput::Status(sandbox.status().await)).is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    let sink = {
        let to_ui = to_ui.clone();
        move |e: Event| {
            let _ = to_ui.send(UiInput::Event(e));
        }
    };
    sink(Event::SessionStarted {
        session_id: session.id.clone(),
        project: session.project.display().to_string(),
        backend: session.backend.as_str().to_string(),
        note: session.note.clone(),
        provider: prepared.resolved.provider.as_str().to_string(),
        model: prepared.resolved.model.clone(),
    });
    if resumed > 0 {
        sink(Event::Notice {
            message: format!("Resumed session {} with {resumed} message(s).", session.id),
        });
    }

    let approver = TuiApprover {
        to_ui: to_ui.clone(),
        pending: pending.clone(),
    };
    let mut ia = Interactive::new(&prepared, &session, agent);
    for w in memory_warnings.iter().chain(ia.startup_warnings()) {
        sink(Event::Notice {
            message: format!("warning: {w}"),
        });
    }

    while let Some(cmd) = commands.recv().await {
        match cmd {
            Command::Submit(line) => {
                let cancel = CancellationToken::new();
                if let Ok(mut c) = current_cancel.lock() {
                    *c = cancel.clone();
                }
                match ia.handle(line.trim(), &approver, &sink, &cancel).await {
                    Ok(Outcome::Continue) => {}
                    Ok(Outcome::Quit) => {
                        if review(&session, &to_ui, &mut commands, true).await? {
                            break;
                        }
                    }
                    Ok(Outcome::Sync) => {
                        review(&session, &to_ui, &mut commands, false).await?;
                    }
                    Err(e) => sink(Event::Error {
                        message: setup::one_line(&e),
                    }),
                }
            }
            Command::Quit => {
                if review(&session, &to_ui, &mut commands, true).await? {
                    break;
                }
            }
            Command::CycleMode => {
                let mode = ia.agent.options().approval_mode.next();
                ia.agent.set_approval_mode(mode);
                sink(Event::Notice {
                    message: format!("Approval mode: {mode}"),
                });
            }
            Command::Review(_) => {}
        }
    }
    status_task.abort();
    drop(to_ui);
    drop(approver);
    let _ = ui.await;
    dispatcher.abort();
    Ok(())
}

/// Shows the review screen and applies the verdict. Returns true when the UI was told
/// the result (the session is over when `ending`).
async fn review(
    session: &Session,
    to_ui: &mpsc::UnboundedSender<UiInput>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    ending: bool,
) -> Result<bool> {
    let changes = session.change_set()?;
    if changes.is_empty() || session.backend == safe_coder_sandbox::BackendKind::Direct {
        let text = if changes.is_empty() {
            "No changes.".to_string()
        } else {
            changes.summary_text()
        };
        if ending {
            let verdict = if session.backend == safe_coder_sandbox::BackendKind::Direct {
                Review::AcceptAll
            } else {
                Review::RejectAll
            };
            session.review(verdict, true)?;
            let _ = to_ui.send(UiInput::SyncResult(text));
        } else {
            let _ = to_ui.send(UiInput::Event(Event::Notice { message: text }));
        }
        return Ok(true);
    }
    let mut diffs = HashMap::new();
    for f in &changes.files {
        diffs.insert(
            f.path.clone(),
            session.diff(Some(&f.path)).unwrap_or_default(),
        );
    }
    let all: Vec<String> = changes
        .files
        .iter()
        .filter(|f| !f.conflict)
        .map(|f| f.path.clone())
        .collect();
    let _ = to_ui.send(UiInput::Review(ReviewData {
        changes: changes.clone(),
        diffs,
    }));
    let verdict = loop {
        match commands.recv().await {
            Some(Command::Review(Some(paths))) => {
                if paths.is_empty() {
                    break Review::RejectAll;
                } else if paths.len() == all.len() && all.iter().all(|p| paths.contains(p)) {
                    break Review::AcceptAll;
                } else {
                    break Review::Pick(paths);
                }
            }
            Some(Command::Review(None)) | None => break Review::Keep,
            Some(_) => continue,
        }
    };
    let kind = verdict.clone();
    let (report, finished) = session.review(verdict, ending)?;
    let mut text = match kind {
        Review::Keep => format!(
            "Changes kept in session {id}: `safe-coder sessions sync {id}` applies them later.",
            id = session.id
        ),
        Review::RejectAll => "Changes rejected; your project is untouched.".to_string(),
        _ => format!(
            "✓ Changes synced to host: {} ({} file(s))",
            session.project.display(),
            report.applied.len()
        ),
    };
    for c in &report.conflicts {
        text.push_str(&format!("\n⚠ {c}: changed on the host since the session began; the agent's version stays in the session"));
    }
    if ending && !finished && kind != Review::Keep {
        text.push_str(&format!(
            "\nSession {} keeps the unsynced work.",
            session.id
        ));
    }
    if ending {
        let _ = to_ui.send(UiInput::SyncResult(text));
    } else {
        let _ = to_ui.send(UiInput::Event(Event::Notice { message: text }));
    }
    Ok(true)
}
