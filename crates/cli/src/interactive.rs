//! What the user types in `chat`, line mode and TUI alike: slash commands, `!cmd`,
//! `@path` references, custom commands, and plain prompts for the agent. Everything it
//! says goes through the event sink, so both front ends show it the same way.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Result;
use safe_coder_core::session::Session;
use safe_coder_core::{Agent, Approver, EventSink};
use safe_coder_interact::at_paths::{expand_at_paths, AtLimits};
use safe_coder_interact::custom::{expand_custom, load_custom_commands, CustomCommands};
use safe_coder_interact::memory::{add_to_project_memory, load_memory};
use safe_coder_interact::slash::{self, MemoryCmd, SlashCommand};
use safe_coder_interact::Input;
use safe_coder_protocol::Event;
use safe_coder_sandbox::{CancellationToken, ExecRequest};

use crate::setup::Prepared;

/// What the front end does after a line was handled.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    /// End the session (into review).
    Quit,
    /// `/sync`: review and sync now, then go on.
    Sync,
}

pub struct Interactive<'a> {
    prepared: &'a Prepared,
    session: &'a Session,
    pub agent: Agent,
    custom: CustomCommands,
    started: Instant,
}

fn notice(events: &dyn EventSink, message: impl Into<String>) {
    events.emit(Event::Notice {
        message: message.into(),
    });
}

impl<'a> Interactive<'a> {
    pub fn new(prepared: &'a Prepared, session: &'a Session, agent: Agent) -> Interactive<'a> {
        let custom = load_custom_commands(&prepared.dirs.config_dir, &prepared.project);
        Interactive {
            prepared,
            session,
            agent,
            custom,
            started: Instant::now(),
        }
    }

    /// Problems found while loading custom commands, for the front end to show once at
    /// start (the memory files' come from `chat_line::open_session`).
    pub fn startup_warnings(&self) -> &[String] {
        &self.custom.warnings
    }

    /// Handles one line the user entered.
    pub async fn handle(
        &mut self,
        line: &str,
        approver: &dyn Approver,
        events: &dyn EventSink,
        cancel: &CancellationToken,
    ) -> Result<Outcome> {
        match safe_coder_interact::classify(line, &self.custom) {
            Err(e) => {
                events.emit(Event::Error {
                    message: e.to_string(),
                });
                Ok(Outcome::Continue)
            }
            Ok(Input::Shell(cmd)) if cmd.trim().is_empty() => {
                events.emit(Event::Error {
                    message: "type a command after `!`, e.g. `!ls -la`".into(),
                });
                Ok(Outcome::Continue)
            }
            Ok(Input::Shell(cmd)) => {
                self.shell(&cmd, events, cancel).await?;
                Ok(Outcome::Continue)
            }
            Ok(Input::Slash(cmd)) => self.slash(cmd, approver, events, cancel).await,
            Ok(Input::Prompt(text)) => {
                self.prompt(text, approver, events, cancel).await?;
                Ok(Outcome::Continue)
            }
        }
    }

    /// Sends a prompt to the agent, after expanding `@path` references.
    async fn prompt(
        &mut self,
        text: String,
        approver: &dyn Approver,
        events: &dyn EventSink,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let text = if text.contains('@') {
            let expanded =
                expand_at_paths(&text, &**self.agent.sandbox(), AtLimits::default()).await?;
            for n in &expanded.notes {
                notice(events, n.clone());
            }
            expanded.text
        } else {
            text
        };
        if self.agent.messages().is_empty() {
            if let Ok(s) = self.session.store.lock() {
                let title: String = text.lines().next().unwrap_or("").chars().take(80).collect();
                let _ = s.set_title(&self.session.id, &title);
            }
        }
        // A failed turn was already reported as an event; the session goes on.
        let _ = self.agent.run_turn(text, approver, events, cancel).await;
        Ok(())
    }

    /// `!cmd`: runs in the sandbox like the agent's bash; the output goes into the
    /// conversation and what it changed is committed as `User executed: CMD`.
    async fn shell(
        &mut self,
        cmd: &str,
        events: &dyn EventSink,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let request = ExecRequest {
            command: cmd.to_string(),
            timeout: Duration::from_secs(600),
            max_output_bytes: 30_000,
        };
        let output = self.agent.sandbox().exec(request, cancel.clone()).await?;
        let mut shown = output.output.clone();
        if !shown.ends_with('\n') && !shown.is_empty() {
            shown.push('\n');
        }
        match output.exit_code {
            Some(0) => {}
            Some(code) => shown.push_str(&format!("(exit code {code})\n")),
            None if output.timed_out => shown.push_str("(timed out)\n"),
            None => shown.push_str("(killed)\n"),
        }
        notice(events, format!("$ {cmd}\n{}", shown.trim_end()));
        self.agent
            .push_context(safe_coder_interact::shell::format_shell_for_model(
                cmd, &output,
            ));
        let repo = self.session.repo.clone();
        let message = format!("User executed: {cmd}");
        let msg = message.clone();
        if let Ok(Ok(Some(commit))) =
            tokio::task::spawn_blocking(move || repo.commit_changes(&msg, None)).await
        {
            events.emit(Event::Committed { message, commit });
        }
        Ok(())
    }

    async fn slash(
        &mut self,
        cmd: SlashCommand,
        approver: &dyn Approver,
        events: &dyn EventSink,
        cancel: &CancellationToken,
    ) -> Result<Outcome> {
        let repo = &self.session.repo;
        match cmd {
            SlashCommand::Help => notice(events, slash::help_text(&self.custom)),
            SlashCommand::Quit => return Ok(Outcome::Quit),
            SlashCommand::Sync => return Ok(Outcome::Sync),
            SlashCommand::Clear => {
                self.agent.clear();
                notice(
                    events,
                    "Conversation cleared (the sandbox and its history are kept).",
                );
            }
            SlashCommand::Stats => notice(events, self.stats_text()?),
            SlashCommand::Diff => {
                let diff = self.session.diff(None)?;
                notice(
                    events,
                    if diff.trim().is_empty() {
                        "No changes yet.".to_string()
                    } else {
                        diff
                    },
                );
            }
            SlashCommand::Undo => match repo.undo()? {
                Some(c) => notice(
                    events,
                    format!("Undid the last change (now at {}).", short(&c)),
                ),
                None => notice(
                    events,
                    "Nothing to undo: the session is at its starting snapshot.",
                ),
            },
            SlashCommand::Restore(path) => {
                let restored = repo.restore(path.as_deref())?;
                if restored.is_empty() {
                    notice(events, "Nothing to restore.");
                } else {
                    let label = path.as_deref().unwrap_or("all files");
                    if let Some(c) = repo.commit_changes(&format!("Restored: {label}"), None)? {
                        events.emit(Event::Committed {
                            message: format!("Restored: {label}"),
                            commit: c,
                        });
                    }
                    notice(
                        events,
                        format!(
                            "Restored {} file(s) to the session start: {}",
                            restored.len(),
                            restored.join(", ")
                        ),
                    );
                }
            }
            SlashCommand::Snapshot(label) => {
                let c = repo.snapshot(&label)?;
                events.emit(Event::Committed {
                    message: format!("🔒 Snapshot: {label}"),
                    commit: c,
                });
            }
            SlashCommand::Rollback(target) => {
                // A snapshot label, a commit id, or (none) the latest snapshot.
                let log = repo.log()?;
                let is_snapshot = |m: &str| m.starts_with("🔒 Snapshot: ");
                let found = match &target {
                    Some(t) => log
                        .iter()
                        .find(|c| c.message == format!("🔒 Snapshot: {t}"))
                        .map(|c| (c.id.clone(), c.message.clone()))
                        .or_else(|| Some((t.clone(), t.clone()))),
                    None => log
                        .iter()
                        .find(|c| is_snapshot(&c.message))
                        .map(|c| (c.id.clone(), c.message.clone())),
                };
                match found {
                    Some((id, label)) => {
                        repo.rollback(&id)?;
                        notice(events, format!("Rolled back to {} ({label}).", short(&id)));
                    }
                    None => {
                        let mut text = String::from(
                            "No snapshot yet (`/snapshot LABEL` makes one). Commits, newest first; `/rollback ID` moves the sandbox back to one:\n",
                        );
                        for c in log.iter().take(20) {
                            let _ = writeln!(text, "  {} {}", c.short_id, c.message);
                        }
                        notice(events, text);
                    }
                }
            }
            SlashCommand::Memory(m) => match m {
                MemoryCmd::Show => {
                    let mem = load_memory(&self.prepared.dirs.config_dir, &self.prepared.project);
                    let text = mem.system_prompt_section();
                    notice(
                        events,
                        if text.trim().is_empty() {
                            "No memory files.".to_string()
                        } else {
                            text
                        },
                    );
                }
                MemoryCmd::Add(text) => {
                    let path = add_to_project_memory(&self.prepared.project, &text)?;
                    self.refresh_memory();
                    notice(events, format!("Added to {}.", path.display()));
                }
                MemoryCmd::Refresh => {
                    let n = self.refresh_memory();
                    notice(events, format!("Memory reloaded ({n} file(s))."));
                }
            },
            SlashCommand::Model(name) => match name {
                Some(n) => {
                    self.agent.set_model(n.clone());
                    notice(events, format!("Model set to {n}."));
                }
                None => notice(events, format!("Model: {}", self.agent.options().model)),
            },
            SlashCommand::ApprovalMode(mode) => match mode {
                Some(m) => {
                    self.agent.set_approval_mode(m);
                    notice(events, format!("Approval mode: {m}"));
                }
                None => notice(
                    events,
                    format!(
                        "Approval mode: {} (plan, default, auto-edit, yolo)",
                        self.agent.options().approval_mode
                    ),
                ),
            },
            SlashCommand::Compress => self.agent.compact(events, cancel).await?,
            SlashCommand::Custom { name, args } => {
                let Some(custom) = self.custom.get(&name).cloned() else {
                    events.emit(Event::Error {
                        message: format!("unknown command /{name}"),
                    });
                    return Ok(Outcome::Continue);
                };
                let prompt = expand_custom(&custom, &args, &**self.agent.sandbox()).await?;
                self.prompt(prompt, approver, events, cancel).await?;
            }
        }
        Ok(Outcome::Continue)
    }

    fn refresh_memory(&mut self) -> usize {
        let mem = load_memory(&self.prepared.dirs.config_dir, &self.prepared.project);
        let n = mem.files.len();
        self.agent.set_memory(mem.system_prompt_section());
        n
    }

    /// `/stats`: duration, messages, tool calls per tool with success rate and time,
    /// tokens from the APIs' usage reports, and the estimated cost.
    pub fn stats_text(&self) -> Result<String> {
        let stats = {
            let s = self
                .session
                .store
                .lock()
                .map_err(|_| anyhow::anyhow!("the session store is poisoned"))?;
            s.stats(&self.session.id)?
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
        let total_calls = stats.tool_calls;
        let _ = writeln!(out, "🔧 Tool Calls: {total_calls}");
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
            if let Some(p) = self.prepared.resolved.prices.get(&m.model) {
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
}

fn short(commit: &str) -> String {
    commit.chars().take(8).collect()
}
