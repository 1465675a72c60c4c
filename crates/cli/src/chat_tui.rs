//! `safe-coder chat` with the TUI: the UI's actions become ops, the core's events go to
//! the UI. Nothing else happens here.

use std::time::Duration;

use anyhow::Result;
use safe_coder_core::Start;
use safe_coder_protocol::display::sync_finished_text;
use safe_coder_protocol::{Event, Op, ReviewDecision};
use safe_coder_tui::{TuiConfig, UiAction, UiInput};
use tokio::sync::mpsc;

use crate::setup;
use crate::AgentArgs;

/// Turns the review screen's answer (the paths to sync) into a decision.
fn review_decision(paths: Vec<String>, syncable: &[String]) -> ReviewDecision {
    if paths.is_empty() {
        ReviewDecision::RejectAll
    } else if paths.len() == syncable.len() && syncable.iter().all(|p| paths.contains(p)) {
        ReviewDecision::AcceptAll
    } else {
        ReviewDecision::Pick {
            paths,
            keep_rest: false,
        }
    }
}

pub async fn run(args: AgentArgs, resume: Option<String>) -> Result<()> {
    let prepared = setup::prepare(&args)?;
    let mut settings = setup::settings(&prepared)?;
    settings.status_interval = Some(Duration::from_secs(1));
    let start = match resume {
        None => Start::New,
        Some(id) if id.is_empty() => Start::Resume(None),
        Some(id) => Start::Resume(Some(id)),
    };
    let mut conv = safe_coder_core::start(settings, start).await?;

    let (to_ui, ui_inputs) = mpsc::unbounded_channel::<UiInput>();
    let (ui_actions_tx, mut ui_actions) = mpsc::unbounded_channel::<UiAction>();
    let theme = prepared.resolved.theme;
    let config = TuiConfig {
        project: prepared.project.display().to_string(),
        theme,
        approval_mode: prepared.resolved.approval_mode,
        provider: prepared.resolved.provider.as_str().to_string(),
        model: prepared.resolved.model.clone(),
    };
    let ui = tokio::spawn(safe_coder_tui::run(config, ui_inputs, ui_actions_tx));

    let mut mode = prepared.resolved.approval_mode;
    // Paths the open review screen can sync (conflicts cannot).
    let mut syncable: Vec<String> = Vec::new();
    // The last sync result, shown as the closing screen when the session ends.
    let mut last_sync: Option<String> = None;
    let mut ended: Option<(String, bool)> = None;
    let mut ui_open = true;
    loop {
        tokio::select! {
            action = ui_actions.recv(), if ui_open => {
                let op = match action {
                    None => {
                        // The UI is gone (its terminal closed): end the session; the
                        // core keeps the changes when nobody can answer the review.
                        ui_open = false;
                        Op::Shutdown
                    }
                    Some(UiAction::Submit(line)) => Op::UserInput { text: line },
                    Some(UiAction::Cancel) => Op::Interrupt,
                    Some(UiAction::Approval { call_id, decision }) => Op::Approval { call_id, decision },
                    Some(UiAction::CycleApprovalMode) => Op::SetApprovalMode { mode: mode.next() },
                    Some(UiAction::Review(paths)) => Op::Review { decision: review_decision(paths, &syncable) },
                    Some(UiAction::KeepForLater) => Op::Review { decision: ReviewDecision::Keep },
                    Some(UiAction::Quit) => Op::Shutdown,
                    Some(UiAction::RequestCompletions(text)) => Op::Complete { text },
                };
                let gone = !ui_open;
                if conv.ops.send(op).is_err() || gone {
                    // Dropping the op sender ends the session as "keep for later".
                    break;
                }
            }
            event = conv.events.recv() => {
                let Some(event) = event else { break };
                match &event {
                    Event::SessionStarted { approval_mode, .. }
                    | Event::SettingsChanged { approval_mode, .. } => mode = *approval_mode,
                    Event::ReviewRequested { changes, .. } => {
                        syncable = changes.files.iter().filter(|f| !f.conflict).map(|f| f.path.clone()).collect();
                    }
                    Event::SyncFinished { .. } => {
                        last_sync = sync_finished_text(&event);
                    }
                    Event::SessionEnded { session_id, kept } => {
                        ended = Some((session_id.clone(), *kept));
                        // Shown in the UI, and printed to the shell again after it closes.
                        let text = last_sync.clone().unwrap_or_else(|| "Session ended.".into());
                        let _ = to_ui.send(UiInput::SyncResult(text));
                        break;
                    }
                    _ => {}
                }
                let _ = to_ui.send(UiInput::Event(event));
            }
        }
    }
    drop(to_ui);
    let _ = ui.await;
    if ended.is_some() {
        // `close` would wait for the end of the event stream, which the status feed
        // keeps open; after `SessionEnded` only the tasks are left to wait for.
        conv.join().await;
    } else {
        conv.close().await;
    }
    // After the TUI is gone, say on the shell what became of the session.
    match ended {
        Some((id, true)) => println!(
            "Session {id} keeps unsynced work: `safe-coder sessions diff {id}`, `safe-coder sessions sync {id}`."
        ),
        Some((id, false)) => println!("Session {id} ended; nothing unsynced remains."),
        None => {}
    }
    if let Some(text) = last_sync {
        println!("{text}");
    }
    Ok(())
}
