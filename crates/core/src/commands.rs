//! The conversation loop's handling of each op: prompts (with `@path`s), `!cmd`,
//! slash commands, settings, and the review with sync back. Front ends only send ops
//! and render the events emitted here, so every front end behaves the same.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use safe_coder_interact::at_paths::{expand_at_paths, AtLimits};
use safe_coder_interact::custom::{expand_custom, CustomCommands};
use safe_coder_interact::memory::{add_to_project_memory, load_memory};
use safe_coder_interact::slash::{self, MemoryCmd, SlashCommand};
use safe_coder_interact::Input;
use safe_coder_protocol::{ApprovalMode, Event, Op, ReviewDecision, SyncOutcome};
use safe_coder_sandbox::{CancellationToken, ExecRequest};
use tokio::sync::mpsc;

use crate::agent::{Agent, EventSink};
use crate::approval::Approver;
use crate::conversation::{diffs_of, outcome_of, CurrentCancel, Emitter, Queued};
use crate::recorder::Recorder;
use crate::session::Session;
use crate::settings::Settings;
use crate::workspace::ReviewResult;

/// How long a `!cmd` may run.
const SHELL_TIMEOUT: Duration = Duration::from_secs(600);
/// Output of a `!cmd` kept for the screen and the model.
const SHELL_OUTPUT_LIMIT: usize = 30_000;

/// The state the conversation loop works on.
pub(crate) struct Runner {
    pub(crate) settings: Settings,
    pub(crate) session: Arc<Session>,
    pub(crate) agent: Agent,
    pub(crate) custom: CustomCommands,
    pub(crate) recorder: Recorder,
    pub(crate) events: Emitter,
    pub(crate) cancel: CurrentCancel,
    pub(crate) queue: mpsc::UnboundedReceiver<Queued>,
    pub(crate) started: Instant,
    /// Whether the session has its title (its first prompt).
    pub(crate) titled: bool,
    /// The input of the command `Op::Run` runs, if any (the dispatcher feeds it).
    pub(crate) terminal: crate::run::TerminalSlot,
}

fn short(commit: &str) -> String {
    commit.chars().take(8).collect()
}

impl Runner {
    /// Handles one op. Returns true when the session has ended.
    pub(crate) async fn handle(
        &mut self,
        op: Op,
        approver: &dyn Approver,
        cancel: &CancellationToken,
    ) -> bool {
        match op {
            Op::Shutdown => {
                self.shutdown(false).await;
                return true;
            }
            Op::UserInput { text } => return self.line(&text, approver, cancel).await,
            Op::Prompt { text } => self.prompt(text, approver, cancel).await,
            Op::Shell { command } => self.shell(&command, cancel).await,
            Op::Slash { command } => {
                let line = if command.starts_with('/') {
                    command
                } else {
                    format!("/{command}")
                };
                return self.line(&line, approver, cancel).await;
            }
            Op::SyncNow => {
                if self.review(false).await {
                    self.shutdown(false).await;
                    return true;
                }
            }
            Op::SetModel { model } => self.set_model(model),
            Op::SetApprovalMode { mode } => self.set_approval_mode(mode),
            Op::Review { .. } => self.events.error("no review is open"),
            Op::Run { run } => self.run_command(run, cancel).await,
            // The dispatcher handles these at once.
            Op::Interrupt
            | Op::Approval { .. }
            | Op::Complete { .. }
            | Op::TerminalInput { .. }
            | Op::TerminalResize { .. } => {}
        }
        false
    }

    /// One line as typed: a `!cmd`, a slash command or a prompt.
    async fn line(
        &mut self,
        line: &str,
        approver: &dyn Approver,
        cancel: &CancellationToken,
    ) -> bool {
        match safe_coder_interact::classify(line, &self.custom) {
            Err(e) => self.events.error(e.to_string()),
            Ok(Input::Shell(cmd)) if cmd.trim().is_empty() => self
                .events
                .error("type a command after `!`, e.g. `!ls -la`"),
            Ok(Input::Shell(cmd)) => self.shell(&cmd, cancel).await,
            Ok(Input::Slash(cmd)) => return self.slash(cmd, approver, cancel).await,
            Ok(Input::Prompt(text)) => self.prompt(text, approver, cancel).await,
        }
        false
    }

    /// Sends a prompt to the agent, after expanding `@path` references.
    async fn prompt(&mut self, text: String, approver: &dyn Approver, cancel: &CancellationToken) {
        let text = if text.contains('@') {
            match expand_at_paths(&text, &**self.agent.sandbox(), AtLimits::default()).await {
                Ok(expanded) => {
                    for n in expanded.notes {
                        self.events.notice(n);
                    }
                    expanded.text
                }
                Err(e) => {
                    self.events.error(e.to_string());
                    return;
                }
            }
        } else {
            text
        };
        if !self.titled {
            let title: String = text.lines().next().unwrap_or("").chars().take(80).collect();
            self.recorder.title(&title);
            self.titled = true;
        }
        // Every way the turn ends was reported as an event (finished, cancelled, failed).
        let _ = self
            .agent
            .run_turn(text, approver, &self.events, cancel)
            .await;
    }

    /// `!cmd`: runs in the sandbox like the agent's bash; the output goes into the
    /// conversation and what it changed is committed as `User executed: CMD`.
    async fn shell(&mut self, cmd: &str, cancel: &CancellationToken) {
        self.events.emit(Event::ShellStarted {
            command: cmd.to_string(),
        });
        let request = ExecRequest {
            command: cmd.to_string(),
            timeout: SHELL_TIMEOUT,
            max_output_bytes: SHELL_OUTPUT_LIMIT,
        };
        let output = match self.agent.sandbox().exec(request, cancel.clone()).await {
            Ok(o) => o,
            Err(e) => {
                self.events.emit(Event::ShellFinished {
                    command: cmd.to_string(),
                    output: format!("could not run the command: {e}"),
                    exit_code: None,
                    timed_out: false,
                    cancelled: false,
                });
                return;
            }
        };
        self.events.emit(Event::ShellFinished {
            command: cmd.to_string(),
            output: output.output.clone(),
            exit_code: output.exit_code,
            timed_out: output.timed_out,
            cancelled: output.cancelled,
        });
        self.agent
            .push_context(safe_coder_interact::shell::format_shell_for_model(
                cmd, &output,
            ));
        let message = format!("User executed: {cmd}");
        let repo = self.session.repo.clone();
        let msg = message.clone();
        match tokio::task::spawn_blocking(move || repo.commit_changes(&msg, None)).await {
            Ok(Ok(Some(commit))) => self.events.emit(Event::Committed { message, commit }),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => self
                .events
                .error(format!("could not record the commit: {e}")),
            Err(e) => self
                .events
                .error(format!("could not record the commit: {e}")),
        }
    }

    /// Runs a git operation of the session history off the async runtime.
    async fn git<T: Send + 'static>(
        &self,
        f: impl FnOnce(&safe_coder_history::SessionRepo) -> Result<T, safe_coder_history::HistoryError>
            + Send
            + 'static,
    ) -> Result<T, String> {
        let repo = self.session.repo.clone();
        match tokio::task::spawn_blocking(move || f(&repo)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn slash(
        &mut self,
        cmd: SlashCommand,
        approver: &dyn Approver,
        cancel: &CancellationToken,
    ) -> bool {
        match cmd {
            SlashCommand::Help => self.events.notice(slash::help_text(&self.custom)),
            SlashCommand::Quit => {
                self.shutdown(false).await;
                return true;
            }
            SlashCommand::Sync => {
                if self.review(false).await {
                    self.shutdown(false).await;
                    return true;
                }
            }
            SlashCommand::Clear => {
                self.agent.clear();
                self.events
                    .notice("Conversation cleared (the sandbox and its history are kept).");
            }
            SlashCommand::Stats => {
                self.recorder.flush().await;
                match self.stats_text() {
                    Ok(t) => self.events.notice(t),
                    Err(e) => self.events.error(e),
                }
            }
            SlashCommand::Diff => match self.git(|r| r.diff(None)).await {
                Ok(diff) if diff.trim().is_empty() => self.events.notice("No changes yet."),
                Ok(diff) => self.events.notice(diff),
                Err(e) => self.events.error(e),
            },
            SlashCommand::Undo => match self.git(|r| r.undo()).await {
                Ok(Some(c)) => self
                    .events
                    .notice(format!("Undid the last change (now at {}).", short(&c))),
                Ok(None) => self
                    .events
                    .notice("Nothing to undo: the session is at its starting snapshot."),
                Err(e) => self.events.error(e),
            },
            SlashCommand::Restore(path) => {
                let label = path.clone().unwrap_or_else(|| "all files".into());
                let message = format!("Restored: {label}");
                let msg = message.clone();
                let done = self
                    .git(move |r| {
                        let restored = r.restore(path.as_deref())?;
                        let commit = if restored.is_empty() {
                            None
                        } else {
                            r.commit_changes(&msg, None)?
                        };
                        Ok((restored, commit))
                    })
                    .await;
                match done {
                    Ok((restored, _)) if restored.is_empty() => {
                        self.events.notice("Nothing to restore.")
                    }
                    Ok((restored, commit)) => {
                        if let Some(commit) = commit {
                            self.events.emit(Event::Committed { message, commit });
                        }
                        self.events.notice(format!(
                            "Restored {} file(s) to the session start: {}",
                            restored.len(),
                            restored.join(", ")
                        ));
                    }
                    Err(e) => self.events.error(e),
                }
            }
            SlashCommand::Snapshot(label) => {
                let l = label.clone();
                match self.git(move |r| r.snapshot(&l)).await {
                    Ok(commit) => self.events.emit(Event::Committed {
                        message: format!("{}{label}", safe_coder_history::SNAPSHOT_PREFIX),
                        commit,
                    }),
                    Err(e) => self.events.error(e),
                }
            }
            SlashCommand::Rollback(target) => self.rollback(target).await,
            SlashCommand::Memory(m) => self.memory(m),
            SlashCommand::Model(name) => match name {
                Some(n) => self.set_model(n),
                None => self
                    .events
                    .notice(format!("Model: {}", self.agent.options().model)),
            },
            SlashCommand::ApprovalMode(mode) => match mode {
                Some(m) => self.set_approval_mode(m),
                None => self.events.notice(format!(
                    "Approval mode: {} (plan, default, auto-edit, yolo)",
                    self.agent.options().approval_mode
                )),
            },
            SlashCommand::Compress => {
                if let Err(e) = self.agent.compact(&self.events, cancel).await {
                    self.events.error(e.to_string());
                }
            }
            SlashCommand::Custom { name, args } => {
                let Some(custom) = self.custom.get(&name).cloned() else {
                    self.events.error(format!("unknown command /{name}"));
                    return false;
                };
                match expand_custom(&custom, &args, &**self.agent.sandbox()).await {
                    Ok(prompt) => self.prompt(prompt, approver, cancel).await,
                    Err(e) => self.events.error(e.to_string()),
                }
            }
        }
        false
    }

    /// `/rollback [LABEL|COMMIT]`: a snapshot label, a commit id, or (none) the latest
    /// snapshot; without any snapshot, the commits to choose from.
    async fn rollback(&mut self, target: Option<String>) {
        let t = target.clone();
        let found = self
            .git(move |r| {
                Ok(match r.find_snapshot(t.as_deref())? {
                    Some(c) => Some((c.id, c.message)),
                    None => t.map(|t| (t.clone(), t)),
                })
            })
            .await;
        match found {
            Ok(Some((id, label))) => {
                let target = id.clone();
                match self.git(move |r| r.rollback(&target)).await {
                    Ok(_) => self
                        .events
                        .notice(format!("Rolled back to {} ({label}).", short(&id))),
                    Err(e) => self.events.error(e),
                }
            }
            Ok(None) => match self.git(|r| r.log()).await {
                Ok(log) => {
                    let mut text = String::from(
                        "No snapshot yet (`/snapshot LABEL` makes one). Commits, newest first; `/rollback ID` moves the sandbox back to one:\n",
                    );
                    for c in log.iter().take(20) {
                        let _ = writeln!(text, "  {} {}", c.short_id, c.message);
                    }
                    self.events.notice(text);
                }
                Err(e) => self.events.error(e),
            },
            Err(e) => self.events.error(e),
        }
    }

    fn memory(&mut self, cmd: MemoryCmd) {
        let (config_dir, project) = (&self.settings.config_dir, &self.settings.project);
        match cmd {
            MemoryCmd::Show => {
                let text = load_memory(config_dir, project).system_prompt_section();
                self.events.notice(if text.trim().is_empty() {
                    "No memory files.".to_string()
                } else {
                    text
                });
            }
            MemoryCmd::Add(text) => match add_to_project_memory(project, &text) {
                Ok(path) => {
                    self.refresh_memory();
                    self.events.notice(format!("Added to {}.", path.display()));
                }
                Err(e) => self.events.error(e.to_string()),
            },
            MemoryCmd::Refresh => {
                let n = self.refresh_memory();
                self.events
                    .notice(format!("Memory reloaded ({n} file(s))."));
            }
        }
    }

    fn refresh_memory(&mut self) -> usize {
        let mem = load_memory(&self.settings.config_dir, &self.settings.project);
        let n = mem.files.len();
        self.agent.set_memory(mem.system_prompt_section());
        n
    }

    fn settings_changed(&self) {
        self.events.emit(Event::SettingsChanged {
            model: self.agent.options().model.clone(),
            approval_mode: self.agent.options().approval_mode,
        });
    }

    fn set_model(&mut self, model: String) {
        self.agent.set_model(model.clone());
        self.recorder
            .model(self.settings.provider.kind.as_str(), &model);
        self.events.notice(format!("Model set to {model}."));
        self.settings_changed();
    }

    fn set_approval_mode(&mut self, mode: ApprovalMode) {
        self.agent.set_approval_mode(mode);
        self.recorder.approval_mode(mode);
        self.events.notice(format!("Approval mode: {mode}"));
        self.settings_changed();
    }

    /// `/stats`: duration, messages, tool calls per tool with success rate and time,
    /// tokens from the APIs' usage reports, and the estimated cost.
    fn stats_text(&self) -> Result<String, String> {
        let stats = {
            let s = self
                .session
                .store
                .lock()
                .map_err(|_| "the session store is poisoned".to_string())?;
            s.stats(&self.session.id).map_err(|e| e.to_string())?
        };
        let d = self.started.elapsed().as_secs();
        let mut out = String::from("📊 Session Statistics\n");
        let _ = writeln!(
            out,
            "⏱️  Duration: {}h {:02}m {:02}s",
            d / 3600,
            (d / 60) % 60,
            d % 60
        );
        let _ = writeln!(
            out,
            "💬 Messages: {} ({} from you, {} from the assistant)",
            stats.messages.user + stats.messages.assistant,
            stats.messages.user,
            stats.messages.assistant
        );
        let _ = writeln!(out, "🔧 Tool Calls: {}", stats.tool_calls);
        for t in &stats.tools {
            let rate = if t.calls > 0 {
                t.successes as f64 * 100.0 / t.calls as f64
            } else {
                0.0
            };
            let _ = writeln!(
                out,
                "   {:<12} {:>4} calls  {:>5.1}% ok  {:>7} ms total",
                t.tool, t.calls, rate, t.total_ms
            );
        }
        let _ = writeln!(
            out,
            "🪙 Tokens: {} in, {} out",
            stats.tokens.input_tokens, stats.tokens.output_tokens
        );
        let mut cost = 0.0;
        let mut priced = false;
        for m in &stats.models {
            if let Some(p) = self.settings.prices.get(&m.model) {
                priced = true;
                cost += m.input_tokens as f64 / 1e6 * p.input_per_mtok
                    + m.output_tokens as f64 / 1e6 * p.output_per_mtok;
            }
        }
        if priced {
            let _ = writeln!(out, "💵 Estimated cost: ${cost:.4}");
        } else {
            let _ = writeln!(
                out,
                "💵 Estimated cost: unknown (add [pricing.\"MODEL\"] to the config)"
            );
        }
        Ok(out)
    }

    /// The review: the change summary, the user's verdict, the sync. `ending`: the
    /// session ends after it. Returns true when the user shut the session down while
    /// the review was open (or the front end went away).
    pub(crate) async fn review(&mut self, ending: bool) -> bool {
        let session = self.session.clone();
        let changes = match tokio::task::spawn_blocking(move || session.change_set()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                self.events
                    .error(format!("could not compute the changes: {e}"));
                return false;
            }
            Err(e) => {
                self.events
                    .error(format!("could not compute the changes: {e}"));
                return false;
            }
        };
        if !self.session.workspace.syncs_back() || changes.is_empty() {
            let outcome = if changes.is_empty() {
                SyncOutcome::NoChanges
            } else {
                self.events.emit(Event::ChangeSummary {
                    changes: changes.clone(),
                });
                SyncOutcome::InPlace
            };
            let kept = if ending {
                // Nothing is pending: the session is done (as synced, not discarded:
                // a mid-session `/sync` may have written everything already).
                self.apply(ReviewDecision::AcceptAll, true)
                    .await
                    .map(|r| !r.finished)
                    .unwrap_or(true)
            } else {
                false
            };
            self.sync_finished(outcome, Default::default(), kept);
            return false;
        }
        self.events.emit(Event::ChangeSummary {
            changes: changes.clone(),
        });
        let session = self.session.clone();
        let c = changes.clone();
        let diffs = tokio::task::spawn_blocking(move || diffs_of(&session, &c))
            .await
            .unwrap_or_default();
        self.events.emit(Event::ReviewRequested {
            changes,
            diffs,
            ending,
        });
        let mut shut_down = false;
        let decision = loop {
            match self.queue.recv().await {
                Some(Queued::Op(Op::Review { decision })) => break decision,
                Some(Queued::Op(Op::Shutdown)) => {
                    // Answer the review first; the session ends after it.
                    shut_down = !ending;
                }
                Some(Queued::Op(Op::SetApprovalMode { mode })) => self.set_approval_mode(mode),
                Some(Queued::Op(Op::SetModel { model })) => self.set_model(model),
                Some(Queued::Op(_)) => self
                    .events
                    .error("answer the review first (accept, reject, pick or keep)"),
                // Nobody can answer any more: keep everything for `sessions sync`.
                Some(Queued::Closed) | None => {
                    shut_down = !ending;
                    break ReviewDecision::Keep;
                }
            }
        };
        let outcome = outcome_of(&decision);
        match self.apply(decision, ending).await {
            Ok(result) => {
                let kept = !result.finished && (ending || outcome == SyncOutcome::Kept);
                self.sync_finished(outcome, result, kept);
            }
            Err(e) => self.events.error(format!(
                "the sync failed ({e}); the agent's work stays in session {}",
                self.session.id
            )),
        }
        shut_down
    }

    async fn apply(
        &self,
        decision: ReviewDecision,
        ending: bool,
    ) -> Result<crate::session::ReviewResult, String> {
        let session = self.session.clone();
        match tokio::task::spawn_blocking(move || session.review(&decision, ending)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn sync_finished(&self, outcome: SyncOutcome, result: ReviewResult, session_kept: bool) {
        self.events.emit(Event::SyncFinished {
            outcome,
            project: self.session.project.display().to_string(),
            session_id: self.session.id.clone(),
            applied: result.report.applied,
            conflicts: result.report.conflicts,
            held_back: result.held_back,
            not_written: result.report.reasons,
            session_kept,
        });
    }

    /// The end of the session: the review (unless the front end is gone, which keeps
    /// everything), the sandbox stopped, the record flushed, [`Event::SessionEnded`].
    pub(crate) async fn shutdown(&mut self, front_end_gone: bool) {
        let kept = if front_end_gone {
            let session = self.session.clone();
            let _ =
                tokio::task::spawn_blocking(move || session.review(&ReviewDecision::Keep, true))
                    .await;
            self.session.workspace.syncs_back()
        } else {
            self.review(true).await;
            self.session.dir.exists() && self.session.workspace.syncs_back()
        };
        let lines = self.session.sandbox.stop_lines();
        if let Some((before, _)) = &lines {
            self.events.notice(before.clone());
        }
        let stopped = self.session.sandbox.stop().await;
        match (&lines, stopped) {
            (Some((_, after)), Ok(())) => self.events.notice(after.clone()),
            (_, Err(e)) => self
                .events
                .error(format!("stopping the sandbox failed: {e}")),
            _ => {}
        }
        self.recorder.flush().await;
        self.events.emit(Event::SessionEnded {
            session_id: self.session.id.clone(),
            kept,
        });
    }
}
