//! `safe-coder chat --no-tui`: the line-mode REPL. Streamed text, tool calls shown as
//! they run, approvals asked on the terminal, slash commands, `@path`, `!cmd`, and the
//! review of the agent's changes at the end.

use std::io::Write;
use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use safe_coder_core::session::{Review, Session};
use safe_coder_core::{Agent, Approver};
use safe_coder_protocol::{ApprovalDecision, ApprovalRequest, ApprovalSubject, Event};
use tokio::sync::{mpsc, Mutex};

use crate::interactive::{Interactive, Outcome};
use crate::setup::{self, Prepared};
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
struct LineApprover {
    input: Arc<LineInput>,
}

#[async_trait]
impl Approver for LineApprover {
    async fn approve(&self, request: ApprovalRequest) -> ApprovalDecision {
        println!();
        match &request.subject {
            ApprovalSubject::FileChange { path, diff } => {
                println!("── {} wants to change {path} ──", request.tool_name);
                print!("{diff}");
                if !diff.ends_with('\n') {
                    println!();
                }
            }
            ApprovalSubject::Command { command } => {
                println!("── bash wants to run ──\n$ {command}");
            }
        }
        loop {
            let question = format!(
                "Allow? [y]es / [n]o / [a]lways for {} / or type a reason to refuse: ",
                request.tool_name
            );
            let Some(answer) = self.input.ask(&question).await else {
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
}

/// Prints the core's events for a person reading a terminal.
pub fn print_event(event: &Event) {
    let mut out = std::io::stdout().lock();
    match event {
        Event::TextDelta { text } => {
            let _ = write!(out, "{text}");
        }
        Event::AssistantMessage { text } if !text.is_empty() && !text.ends_with('\n') => {
            let _ = writeln!(out);
        }
        Event::ToolCallStarted { name, summary, .. } => {
            let _ = writeln!(out, "🔧 {name} {summary}");
        }
        Event::ToolCallFinished {
            name,
            outcome,
            duration_ms,
            output,
            ..
        } => {
            let line = crate::exec::tool_finished_line(name, *outcome, *duration_ms, output);
            let _ = writeln!(out, "{line}");
        }
        Event::Retrying {
            attempt,
            delay_ms,
            reason,
        } => {
            let _ = writeln!(
                out,
                "\n[retrying ({attempt}) in {delay_ms} ms: {reason}; the text above may repeat]"
            );
        }
        Event::Committed { message, commit } => {
            let short: String = commit.chars().take(8).collect();
            let _ = writeln!(out, "🔒 {short} {message}");
        }
        Event::Error { message } => {
            let _ = writeln!(out, "✗ error: {message}");
        }
        Event::Notice { message } => {
            let _ = writeln!(out, "{message}");
        }
        Event::TurnCancelled => {
            let _ = writeln!(out, "\n(cancelled)");
        }
        _ => {}
    }
    let _ = out.flush();
}

/// The memory files as a system-prompt section, and the problems found reading them.
pub fn load_memory_text(p: &Prepared) -> (String, Vec<String>) {
    let memory = safe_coder_interact::memory::load_memory(&p.dirs.config_dir, &p.project);
    (memory.system_prompt_section(), memory.warnings)
}

/// Starts a new session or reopens the one to resume, with its agent. Also returns how
/// many messages were resumed and the memory files' warnings.
pub async fn open_session(
    p: &Prepared,
    resume: Option<String>,
) -> Result<(Session, Agent, usize, Vec<String>)> {
    // A bad provider setting (no key, bad URL) fails before any session is made.
    setup::client(&p.resolved)?;
    let store = setup::open_store(&p.dirs)?;
    let (memory, warnings) = load_memory_text(p);
    match resume {
        None => {
            let config = setup::session_config(p)?;
            let session = tokio::task::spawn_blocking({
                let store = store.clone();
                move || Session::start(&config, store)
            })
            .await??;
            let agent = setup::build_agent(p, &session, memory)?;
            Ok((session, agent, 0, warnings))
        }
        Some(id) => {
            let record = {
                let s = store
                    .lock()
                    .map_err(|_| anyhow::anyhow!("the session store is poisoned"))?;
                if id.is_empty() {
                    s.latest_for_project(&p.project.display().to_string())?
                        .ok_or_else(|| {
                            anyhow::anyhow!("no session to resume for {}", p.project.display())
                        })?
                } else {
                    s.get_session(&id)?.ok_or_else(|| {
                        anyhow::anyhow!("no session '{id}': see `safe-coder sessions list`")
                    })?
                }
            };
            let messages = {
                let s = store
                    .lock()
                    .map_err(|_| anyhow::anyhow!("the session store is poisoned"))?;
                s.load_messages(&record.id)?
            };
            let n = messages.len();
            let sandbox_kept = std::path::Path::new(&record.session_dir).exists()
                && record.state.holds_unsynced_work();
            if !sandbox_kept {
                // The old sandbox was synced or discarded: go on with the conversation on
                // a fresh copy of the project.
                let config = setup::session_config(p)?;
                let session = tokio::task::spawn_blocking({
                    let store = store.clone();
                    move || Session::start(&config, store)
                })
                .await??;
                if let Ok(s) = store.lock() {
                    let _ = s.replace_messages(&session.id, &messages);
                    if let Some(title) = &record.title {
                        let _ = s.set_title(&session.id, title);
                    }
                }
                let agent = setup::build_agent(p, &session, memory)?.with_messages(messages);
                return Ok((session, agent, n, warnings));
            }
            let session = Session::open(&record, store, p.resolved.memory_mb, p.resolved.cpus)?;
            session.claim();
            let agent = setup::build_agent(p, &session, memory)?.with_messages(messages);
            Ok((session, agent, n, warnings))
        }
    }
}

pub async fn run(args: AgentArgs, resume: Option<String>) -> Result<()> {
    let prepared = setup::prepare(&args)?;
    let (session, agent, resumed, memory_warnings) = open_session(&prepared, resume).await?;
    let input = LineInput::spawn();
    println!(
        "🔥 Safe Coder - AI Coding Assistant with {} isolation",
        session.backend.as_str()
    );
    println!("Project: {}", session.project.display());
    if !session.note.is_empty() {
        println!("Backend: {} — {}", session.backend.as_str(), session.note);
    }
    println!(
        "Session: {}  Model: {} ({})  Approval mode: {}",
        session.id,
        prepared.resolved.model,
        prepared.resolved.provider.as_str(),
        prepared.resolved.approval_mode
    );
    if resumed > 0 {
        println!("Resumed with {resumed} message(s).");
    }
    println!("Type 'exit' or 'quit' to end the session, /help for commands");

    let mut ia = Interactive::new(&prepared, &session, agent);
    for w in memory_warnings.iter().chain(ia.startup_warnings()) {
        println!("warning: {w}");
    }
    let approver = LineApprover {
        input: input.clone(),
    };
    let sink = |e: Event| print_event(&e);

    loop {
        print!("\n> ");
        let _ = std::io::stdout().flush();
        // Ctrl+C at the prompt ends the session (into review).
        let line = tokio::select! {
            l = input.next_line() => l,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(line) = line else { break };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "exit" || line == "quit" {
            break;
        }
        let cancel = safe_coder_sandbox::CancellationToken::new();
        let watcher = {
            let c = cancel.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    c.cancel();
                }
            })
        };
        let result = ia.handle(line, &approver, &sink, &cancel).await;
        watcher.abort();
        match result {
            Ok(Outcome::Continue) => {}
            Ok(Outcome::Quit) => break,
            Ok(Outcome::Sync) => {
                if let Err(e) = review(&session, &input, false).await {
                    println!("✗ {}", setup::one_line(&e));
                }
            }
            Err(e) => println!("✗ {}", setup::one_line(&e)),
        }
    }
    review(&session, &input, true).await?;
    println!("Goodbye!");
    Ok(())
}

/// The change summary and the user's verdict (spec/02's summary, then accept all /
/// reject all / pick files / keep). `ending`: at the end of the session, not `/sync`.
pub async fn review(session: &Session, input: &LineInput, ending: bool) -> Result<()> {
    let changes = session.change_set()?;
    if session.backend == safe_coder_sandbox::BackendKind::Direct {
        if !changes.is_empty() {
            print!("{}", changes.summary_text());
        }
        if ending {
            session.review(Review::AcceptAll, true)?;
        }
        return Ok(());
    }
    if changes.is_empty() {
        if ending {
            session.review(Review::RejectAll, true)?;
        }
        println!("No changes.");
        return Ok(());
    }
    println!("\n🔒 Changes detected in the sandbox:");
    print!("{}", changes.summary_text());
    let verdict = loop {
        let Some(answer) = input
            .ask("Sync to the host? [a]ccept all / [r]eject all / [p]ick files / [d]iff / [k]eep for later: ")
            .await
        else {
            break Review::Keep;
        };
        match answer.trim() {
            "a" | "accept" => break Review::AcceptAll,
            "r" | "reject" => break Review::RejectAll,
            "k" | "keep" | "" => break Review::Keep,
            "d" | "diff" => println!("{}", session.diff(None)?),
            "p" | "pick" => {
                let mut picked = Vec::new();
                for f in &changes.files {
                    if f.conflict {
                        println!(
                            "  {} — conflict (changed on the host), stays in the session",
                            f.path
                        );
                        continue;
                    }
                    loop {
                        let q = format!(
                            "  {} ({}) — sync? [y]es / [n]o / [d]iff: ",
                            f.path,
                            f.kind.as_str()
                        );
                        match input.ask(&q).await.as_deref().map(str::trim) {
                            Some("y") | Some("yes") => {
                                picked.push(f.path.clone());
                                break;
                            }
                            Some("d") | Some("diff") => {
                                println!("{}", session.diff(Some(&f.path))?)
                            }
                            Some("n") | Some("no") | None => break,
                            _ => {}
                        }
                    }
                }
                break Review::Pick(picked);
            }
            _ => {}
        }
    };
    let kind = verdict.clone();
    let (report, finished) = session.review(verdict, ending)?;
    match kind {
        Review::Keep => println!(
            "Changes kept in session {id}: `safe-coder sessions sync {id}` applies them later.",
            id = session.id
        ),
        Review::RejectAll => println!("Changes rejected; your project is untouched."),
        _ => {
            println!(
                "✓ Changes synced to host: {} ({} file(s))",
                session.project.display(),
                report.applied.len()
            );
            for c in &report.conflicts {
                println!("⚠ {c}: changed on the host since the session began; the agent's version stays in the session");
            }
            if ending && !finished {
                println!("Session {} keeps the unsynced work.", session.id);
            }
        }
    }
    Ok(())
}
