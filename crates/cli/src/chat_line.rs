//! `safe-coder chat --no-tui`: the line-mode REPL. It sends what the user types as ops
//! and prints the core's events: streamed text, tool calls as they run, approvals and
//! the review asked on the terminal.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use anyhow::Result;
use safe_coder_core::{Conversation, Start};
use safe_coder_protocol::display::escape_for_terminal;
use safe_coder_protocol::{
    ApprovalDecision, ApprovalRequest, ApprovalSubject, ChangeSet, Event, Op, ReviewDecision,
};
use tokio::sync::{mpsc, Mutex};

use crate::render;
use crate::setup;
use crate::AgentArgs;

/// Lines from stdin, read on a thread so the runtime never blocks on the terminal.
pub struct LineInput {
    rx: Mutex<mpsc::UnboundedReceiver<String>>,
}

impl LineInput {
    pub fn spawn() -> Arc<LineInput> {
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            let mut line = String::new();
            loop {
                line.clear();
                match stdin.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx
                            .send(line.trim_end_matches(['\n', '\r']).to_string())
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
        Arc::new(LineInput { rx: Mutex::new(rx) })
    }

    /// Lines from elsewhere (`run` reads stdin itself and hands lines on after the
    /// command exits).
    pub fn from_receiver(rx: mpsc::UnboundedReceiver<String>) -> Arc<LineInput> {
        Arc::new(LineInput { rx: Mutex::new(rx) })
    }

    /// The next line, or `None` at end of input.
    pub async fn next_line(&self) -> Option<String> {
        self.rx.lock().await.recv().await
    }

    pub async fn ask(&self, question: &str) -> Option<String> {
        print!("{question}");
        let _ = std::io::stdout().flush();
        self.next_line().await
    }
}

/// Asks before a write, edit or bash: yes / no / always for this tool / a reason.
async fn ask_approval(input: &LineInput, request: &ApprovalRequest) -> ApprovalDecision {
    println!();
    match &request.subject {
        ApprovalSubject::FileChange { path, diff } => {
            println!(
                "── {} wants to change {} ──",
                request.tool_name,
                escape_for_terminal(path)
            );
            print!("{}", escape_for_terminal(diff));
            if !diff.ends_with('\n') {
                println!();
            }
        }
        ApprovalSubject::Command { command } => {
            println!(
                "── {} wants to run ──\n$ {}",
                request.tool_name,
                escape_for_terminal(command)
            );
        }
    }
    loop {
        let question = format!(
            "Allow? [y]es / [n]o / [a]lways for {} / or type a reason to refuse: ",
            request.tool_name
        );
        let Some(answer) = input.ask(&question).await else {
            return ApprovalDecision::DenyWithReason {
                reason: "the user closed the input".into(),
            };
        };
        match answer.trim() {
            "y" | "Y" | "yes" => return ApprovalDecision::Approve,
            "n" | "N" | "no" => return ApprovalDecision::Deny,
            "a" | "A" | "always" => return ApprovalDecision::ApproveAlwaysForTool,
            "" => continue,
            reason => {
                return ApprovalDecision::DenyWithReason {
                    reason: reason.to_string(),
                }
            }
        }
    }
}

/// The verdict on a change set (the summary was printed with the change summary
/// event): accept all / reject all / pick files / diff / keep for later.
pub async fn ask_review(
    input: &LineInput,
    changes: &ChangeSet,
    diffs: &BTreeMap<String, String>,
) -> ReviewDecision {
    let all_diffs = || {
        diffs
            .values()
            .map(|d| escape_for_terminal(d).into_owned())
            .collect::<Vec<_>>()
            .join("")
    };
    loop {
        let Some(answer) = input
            .ask("Sync to the host? [a]ccept all / [r]eject all / [p]ick files / [d]iff / [k]eep for later: ")
            .await
        else {
            return ReviewDecision::Keep;
        };
        match answer.trim() {
            "a" | "accept" => return ReviewDecision::AcceptAll,
            "r" | "reject" => return ReviewDecision::RejectAll,
            "k" | "keep" | "" => return ReviewDecision::Keep,
            "d" | "diff" => println!("{}", all_diffs()),
            "p" | "pick" => {
                let mut picked = Vec::new();
                for f in &changes.files {
                    let path = escape_for_terminal(&f.path);
                    if f.conflict {
                        println!("  {path} — conflict (changed on the host), stays in the session");
                        continue;
                    }
                    loop {
                        let q = format!(
                            "  {path} ({}) — sync? [y]es / [n]o / [d]iff: ",
                            f.kind.as_str()
                        );
                        match input.ask(&q).await.as_deref().map(str::trim) {
                            Some("y") | Some("yes") => {
                                picked.push(f.path.clone());
                                break;
                            }
                            Some("d") | Some("diff") => println!(
                                "{}",
                                escape_for_terminal(
                                    diffs.get(&f.path).map(String::as_str).unwrap_or("")
                                )
                            ),
                            Some("n") | Some("no") | None => break,
                            _ => {}
                        }
                    }
                }
                return ReviewDecision::Pick {
                    paths: picked,
                    keep_rest: false,
                };
            }
            _ => {}
        }
    }
}

/// Prints one event for a person reading a terminal.
fn print_event(event: &Event, verbose: bool) {
    let mut out = std::io::stdout().lock();
    match event {
        Event::TextDelta { text } => {
            let _ = write!(out, "{}", escape_for_terminal(text));
        }
        Event::AssistantMessage { text } if !text.is_empty() && !text.ends_with('\n') => {
            let _ = writeln!(out);
        }
        Event::SessionStarted {
            project,
            backend,
            provider,
            model,
            approval_mode,
            session_id,
            resumed_messages,
            ..
        } => {
            let _ = writeln!(
                out,
                "🔥 Safe Coder - AI Coding Assistant with {backend} isolation\nProject: {project}"
            );
            if let Some(line) = render::event_text(event, verbose) {
                let _ = writeln!(out, "{line}");
            }
            let _ = writeln!(
                out,
                "Session: {session_id}  Model: {model} ({provider})  Approval mode: {approval_mode}"
            );
            if *resumed_messages > 0 {
                let _ = writeln!(out, "Resumed with {resumed_messages} message(s).");
            }
            let _ = writeln!(
                out,
                "Type 'exit' or 'quit' to end the session, /help for commands"
            );
        }
        Event::ConversationRestored { messages } => {
            for m in messages.iter().rev().take(6).rev() {
                let text = m.text();
                if text.trim().is_empty() {
                    continue;
                }
                let who = match m.role {
                    safe_coder_protocol::Role::User => "you",
                    safe_coder_protocol::Role::Assistant => "assistant",
                };
                let first: String = text
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(120)
                    .collect();
                let _ = writeln!(out, "  [{who}] {}", escape_for_terminal(&first));
            }
        }
        Event::TurnCancelled => {
            let _ = writeln!(out, "\n(cancelled)");
        }
        other => {
            if let Some(text) = render::event_text(other, verbose) {
                let _ = writeln!(out, "{text}");
            }
        }
    }
    let _ = out.flush();
}

pub async fn run(args: AgentArgs, resume: Option<String>) -> Result<()> {
    let prepared = setup::prepare(&args)?;
    let settings = setup::settings(&prepared)?;
    let start = match resume {
        None => Start::New,
        Some(id) if id.is_empty() => Start::Resume(None),
        Some(id) => Start::Resume(Some(id)),
    };
    let conv = safe_coder_core::start(settings, start).await?;
    drive(conv, args.verbose).await;
    println!("Goodbye!");
    Ok(())
}

/// The REPL: prints events, and reads a line whenever the core is ready for one, or
/// asks an approval, or holds a review.
async fn drive(mut conv: Conversation, verbose: bool) {
    let input = LineInput::spawn();
    let mut shutting_down = false;
    loop {
        let event = tokio::select! {
            e = conv.events.recv() => e,
            // Ctrl+C while something runs cancels it; at the prompt it ends the session.
            _ = tokio::signal::ctrl_c() => {
                let _ = conv.ops.send(Op::Interrupt);
                continue;
            }
        };
        let Some(event) = event else { break };
        match &event {
            Event::Ready if !shutting_down => {
                let op = loop {
                    print!("\n> ");
                    let _ = std::io::stdout().flush();
                    let line = tokio::select! {
                        l = input.next_line() => l,
                        _ = tokio::signal::ctrl_c() => None,
                    };
                    match line.as_deref().map(str::trim) {
                        None | Some("exit") | Some("quit") => {
                            shutting_down = true;
                            break Op::Shutdown;
                        }
                        // An empty line asks again.
                        Some("") => continue,
                        Some(line) => {
                            break Op::UserInput {
                                text: line.to_string(),
                            }
                        }
                    }
                };
                let _ = conv.ops.send(op);
            }
            Event::ApprovalRequested { request } => {
                let decision = ask_approval(&input, request).await;
                let _ = conv.ops.send(Op::Approval {
                    call_id: request.tool_call_id.clone(),
                    decision,
                });
            }
            Event::ReviewRequested { changes, diffs, .. } => {
                let decision = ask_review(&input, changes, diffs).await;
                let _ = conv.ops.send(Op::Review { decision });
            }
            Event::SessionEnded { .. } => break,
            other => print_event(other, verbose),
        }
    }
    conv.join().await;
}
