//! `safe-coder exec`: one task, headless. No prompts, no stdin; the final answer on
//! stdout (or JSON events, one per line, with `--json`); progress on stderr.
//!
//! Like every front end it only sends ops and renders events: the prompt, then
//! `Shutdown`; the review the core asks for at the end is answered by `--sync`.

use std::io::Write;

use anyhow::Result;
use safe_coder_core::Start;
use safe_coder_protocol::{ApprovalMode, Event, Op, ReviewDecision, ToolOutcome};

use crate::setup::{self, Reported};
use crate::{render, AgentArgs, SyncChoice};

fn print_json(event: &Event) {
    let mut out = std::io::stdout().lock();
    if let Ok(line) = serde_json::to_string(event) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

fn print_progress(event: &Event, verbose: bool) {
    let text = match event {
        // One `error:` line per failure, nothing else.
        Event::Error { message } | Event::TurnFailed { message } => {
            Some(format!("error: {message}"))
        }
        // The answer goes to stdout at the end.
        Event::TurnCancelled => None,
        other => render::event_text(other, verbose),
    };
    if let Some(text) = text {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{text}");
    }
}

/// How the task ended, from the events.
#[derive(Default)]
struct Ending {
    answer: Option<String>,
    truncated: bool,
    failed: bool,
    cancelled: bool,
    refused: usize,
    session_id: String,
}

pub async fn run(args: AgentArgs, json: bool, sync: SyncChoice, prompt: String) -> Result<()> {
    let prepared = setup::prepare(&args)?;
    let mut settings = setup::settings(&prepared)?;
    settings.headless = true;
    // On a sandboxed backend nothing reaches the project without a sync, so
    // the agent's tools run inside the sandbox unless the user chose a stricter mode.
    let chosen = prepared.resolved.approval_mode_source.is_explicit();
    if !chosen && settings.backend.is_none_or(|b| b.uses_copy()) {
        settings.approval_mode = ApprovalMode::Yolo;
    }
    let verbose = args.verbose;
    // In plan mode a refused write is what the user asked for, not a failure.
    let refusals_fail = settings.approval_mode != ApprovalMode::Plan;
    let mut conv = safe_coder_core::start(settings, Start::New).await?;

    // SIGINT / SIGTERM cancel the turn; the review per --sync still runs.
    let signals = {
        let ops = conv.ops.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if ops.send(Op::Interrupt).is_err() {
                    break;
                }
            }
        })
    };
    let _ = conv.ops.send(Op::Prompt { text: prompt });
    let _ = conv.ops.send(Op::Shutdown);

    let mut end = Ending {
        session_id: conv.session_id.clone(),
        ..Ending::default()
    };
    while let Some(event) = conv.events.recv().await {
        if json {
            print_json(&event)
        } else {
            print_progress(&event, verbose)
        }
        match &event {
            Event::TurnFinished { text, truncated } => {
                end.answer = Some(text.clone());
                end.truncated = *truncated;
            }
            Event::TurnFailed { .. } => end.failed = true,
            Event::TurnCancelled => end.cancelled = true,
            Event::ToolCallFinished {
                outcome: ToolOutcome::Denied,
                ..
            } if refusals_fail => end.refused += 1,
            Event::ReviewRequested { .. } => {
                let decision = match sync {
                    SyncChoice::Accept => ReviewDecision::AcceptAll,
                    SyncChoice::Reject => ReviewDecision::RejectAll,
                    SyncChoice::Keep => ReviewDecision::Keep,
                };
                let _ = conv.ops.send(Op::Review { decision });
            }
            Event::SessionEnded { .. } => break,
            _ => {}
        }
    }
    signals.abort();
    conv.join().await;

    if let (Some(answer), false) = (&end.answer, json) {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", answer.trim_end())?;
    }
    if end.cancelled {
        anyhow::bail!(
            "cancelled; the agent's work so far stays in session {} unless --sync said otherwise",
            end.session_id
        );
    }
    // Each of these was already reported as an `error:` line (or a JSON event).
    if end.failed || end.truncated || end.refused > 0 || end.answer.is_none() {
        return Err(Reported.into());
    }
    Ok(())
}
