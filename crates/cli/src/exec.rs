//! `safe-coder exec`: one task, headless. No prompts, no stdin; the final answer on
//! stdout (or JSON events, one per line, with `--json`); progress on stderr.

use std::io::Write;

use anyhow::Result;
use safe_coder_core::session::{Review, Session};
use safe_coder_core::{HeadlessApprover, TurnOutcome};
use safe_coder_protocol::{Event, ToolOutcome};

use crate::setup;
use crate::{AgentArgs, SyncChoice};

fn print_json(event: &Event) {
    let mut out = std::io::stdout().lock();
    if let Ok(line) = serde_json::to_string(event) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

fn print_progress(event: &Event) {
    let mut err = std::io::stderr().lock();
    match event {
        Event::ToolCallStarted { name, summary, .. } => {
            let _ = writeln!(err, "▶ {name} {summary}");
        }
        Event::ToolCallFinished {
            name,
            outcome,
            duration_ms,
            output,
            ..
        } => {
            let _ = writeln!(
                err,
                "{}",
                tool_finished_line(name, *outcome, *duration_ms, output)
            );
        }
        Event::Retrying {
            attempt,
            delay_ms,
            reason,
        } => {
            let _ = writeln!(err, "… retrying ({attempt}) in {delay_ms} ms: {reason}");
        }
        Event::Error { message } => {
            let _ = writeln!(err, "error: {message}");
        }
        Event::Notice { message } => {
            let _ = writeln!(err, "{message}");
        }
        Event::SessionStarted {
            session_id,
            backend,
            note,
            ..
        } => {
            let _ = writeln!(err, "Session {session_id} on the {backend} backend");
            if !note.is_empty() {
                let _ = writeln!(err, "  {note}");
            }
        }
        _ => {}
    }
}

/// `✓ bash (12 ms) first line of its output`: how front ends report a finished call.
pub fn tool_finished_line(
    name: &str,
    outcome: ToolOutcome,
    duration_ms: u64,
    output: &str,
) -> String {
    let mark = match outcome {
        ToolOutcome::Ok => "✓",
        ToolOutcome::Error => "✗",
        ToolOutcome::Denied => "⊘",
    };
    let first = output.lines().next().unwrap_or("");
    format!("{mark} {name} ({duration_ms} ms) {first}")
}

pub async fn run(args: AgentArgs, json: bool, sync: SyncChoice, prompt: String) -> Result<()> {
    let prepared = setup::prepare(&args)?;
    // A bad provider setting (no key, bad URL) fails before any session is made.
    setup::client(&prepared.resolved)?;
    let store = setup::open_store(&prepared.dirs)?;
    let session_config = setup::session_config(&prepared)?;
    let session = tokio::task::spawn_blocking({
        let store = store.clone();
        move || Session::start(&session_config, store)
    })
    .await??;
    let (memory, memory_warnings) = crate::chat_line::load_memory_text(&prepared);
    for w in &memory_warnings {
        eprintln!("warning: {w}");
    }
    let mut agent = setup::build_agent(&prepared, &session, memory)?;

    let emit = move |e: Event| {
        if json {
            print_json(&e)
        } else {
            print_progress(&e)
        }
    };
    emit(Event::SessionStarted {
        session_id: session.id.clone(),
        project: prepared.project.display().to_string(),
        backend: session.backend.as_str().to_string(),
        note: session.note.clone(),
        provider: prepared.resolved.provider.as_str().to_string(),
        model: prepared.resolved.model.clone(),
    });
    if let Ok(s) = store.lock() {
        let title: String = prompt.chars().take(80).collect();
        let _ = s.set_title(&session.id, &title);
    }

    let cancel = setup::cancel_on_signals();
    let approver = HeadlessApprover {
        mode: prepared.resolved.approval_mode,
    };
    let outcome = agent.run_turn(prompt, &approver, &emit, &cancel).await;

    // Whatever happened, the agent's work is in the session: review per --sync.
    finish(&session, sync, json, &emit)?;
    match outcome {
        Ok(TurnOutcome::Finished(text)) => {
            if !json {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", text.trim_end())?;
            }
            Ok(())
        }
        Ok(TurnOutcome::Cancelled) => anyhow::bail!(
            "cancelled; the agent's work so far is kept in session {}",
            session.id
        ),
        Err(e) => Err(e.into()),
    }
}

fn finish(session: &Session, sync: SyncChoice, json: bool, emit: &dyn Fn(Event)) -> Result<()> {
    let changes = session.change_set()?;
    if session.backend == safe_coder_sandbox::BackendKind::Direct {
        if !changes.is_empty() {
            emit(Event::ChangeSummary {
                changes: changes.clone(),
            });
            if !json {
                eprint!("{}", changes.summary_text());
            }
        }
        session.review(Review::AcceptAll, true)?;
        return Ok(());
    }
    if changes.is_empty() {
        session.review(Review::RejectAll, true)?;
        if !json {
            eprintln!("No changes.");
        }
        return Ok(());
    }
    emit(Event::ChangeSummary {
        changes: changes.clone(),
    });
    if !json {
        eprint!(
            "🔒 Changes detected in the sandbox:\n{}",
            changes.summary_text()
        );
    }
    let review = match sync {
        SyncChoice::Accept => Review::AcceptAll,
        SyncChoice::Reject => Review::RejectAll,
        SyncChoice::Keep => Review::Keep,
    };
    let (report, finished) = session.review(review, true)?;
    emit(Event::SyncFinished {
        applied: report.applied.clone(),
        conflicts: report.conflicts.clone(),
        session_kept: !finished,
    });
    if !json {
        match sync {
            SyncChoice::Accept => {
                eprintln!("✓ Synced {} file(s) to {}", report.applied.len(), session.project.display());
                for c in &report.conflicts {
                    eprintln!("⚠ {c}: changed on the host since the session began; the agent's version stays in session {}", session.id);
                }
            }
            SyncChoice::Reject => eprintln!("Changes rejected; the project is untouched."),
            SyncChoice::Keep => eprintln!(
                "Changes kept in session {id}: review with `safe-coder sessions diff {id}`, apply with `safe-coder sessions sync {id}`.",
                id = session.id
            ),
        }
    }
    Ok(())
}
