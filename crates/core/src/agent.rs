use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use safe_coder_history::SessionRepo;
use safe_coder_llm::{LlmError, ModelClient};
use safe_coder_protocol::{
    ApprovalDecision, ApprovalMode, ApprovalRequest, ContentBlock, Event, Gate, Message,
    ModelRequest, Role, StopReason, StreamEvent, ToolOutcome, Usage,
};
use safe_coder_sandbox::{CancellationToken, Sandbox};
use safe_coder_tools::{ToolCall, ToolContext, ToolRegistry};

use crate::recorder::Recorder;

use crate::approval::{needs_approval, Approver};
use crate::compact::{estimate_tokens, SUMMARY_HEADER, SUMMARY_REQUEST};
use crate::prompt::system_prompt;

/// Receives the core's events. Closures work: `|e: Event| println!("{e:?}")`.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: Event);
}

impl<F: Fn(Event) + Send + Sync> EventSink for F {
    fn emit(&self, event: Event) {
        self(event)
    }
}

/// Errors that end a turn. Tool failures never do: they go back to the model.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The model provider failed after its retries (the message names the fix).
    #[error(transparent)]
    Model(#[from] LlmError),
    /// The model kept calling tools past the `max_turns` guard.
    #[error("stopped after {0} model requests in one turn (agent.max_turns); ask the agent to continue if it was making progress")]
    MaxTurns(u32),
    #[error("the turn was cancelled")]
    Cancelled,
}

/// How a turn ended.
#[derive(Clone, Debug, PartialEq)]
pub enum TurnOutcome {
    /// The model ended its turn with this final answer.
    Finished(String),
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub model: String,
    pub max_tokens: u32,
    /// Model requests allowed in one user turn.
    pub max_turns: u32,
    pub approval_mode: ApprovalMode,
    /// Memory files, formatted for the system prompt.
    pub memory: String,
    /// The model's context window in tokens.
    pub context_window: u64,
    /// Compact when the conversation passes this fraction of the window.
    pub compact_threshold: f64,
    /// Tool results longer than this are cut in the history, with a note.
    pub max_tool_result_chars: usize,
    /// What the user can do when the conversation no longer fits the model, in the
    /// words of the front end (`/compress` in chat; nothing to type in `exec`).
    pub overflow_advice: String,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            model: String::new(),
            max_tokens: safe_coder_llm::DEFAULT_MAX_TOKENS,
            max_turns: 100,
            approval_mode: ApprovalMode::Default,
            memory: String::new(),
            context_window: 200_000,
            compact_threshold: 0.8,
            max_tool_result_chars: 40_000,
            overflow_advice: "run /compress, or /clear to start over".into(),
        }
    }
}

/// Per-session statistics kept in memory (the store keeps the durable copy).
#[derive(Clone, Debug, Default)]
pub struct LiveStats {
    pub total_usage: Usage,
    /// Input tokens of the last request, as the API reported them.
    pub last_input_tokens: u64,
    pub requests: u64,
}

/// One conversation with the model over one sandbox.
pub struct Agent {
    client: Box<dyn ModelClient>,
    sandbox: Arc<dyn Sandbox>,
    repo: Option<Arc<SessionRepo>>,
    recorder: Option<Recorder>,
    options: AgentOptions,
    messages: Vec<Message>,
    always_allowed: HashSet<String>,
    stats: LiveStats,
    /// Whether the server was asked for its context window yet.
    window_checked: bool,
}

impl Agent {
    pub fn new(
        client: Box<dyn ModelClient>,
        sandbox: Arc<dyn Sandbox>,
        options: AgentOptions,
    ) -> Agent {
        Agent {
            client,
            sandbox,
            repo: None,
            recorder: None,
            options,
            messages: Vec::new(),
            always_allowed: HashSet::new(),
            stats: LiveStats::default(),
            window_checked: false,
        }
    }

    /// Record a commit after every model reply whose tools changed something.
    pub fn with_history(mut self, repo: Arc<SessionRepo>) -> Agent {
        self.repo = Some(repo);
        self
    }

    /// Save every message, tool call and usage report as it happens (off the loop).
    pub fn with_recorder(mut self, recorder: Recorder) -> Agent {
        self.recorder = Some(recorder);
        self
    }

    /// Restore a saved conversation (resume).
    pub fn with_messages(mut self, messages: Vec<Message>) -> Agent {
        self.messages = messages;
        self
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    pub fn options(&self) -> &AgentOptions {
        &self.options
    }

    pub fn stats(&self) -> &LiveStats {
        &self.stats
    }

    pub fn sandbox(&self) -> &Arc<dyn Sandbox> {
        &self.sandbox
    }

    pub fn repo(&self) -> Option<&Arc<SessionRepo>> {
        self.repo.as_ref()
    }

    pub fn set_approval_mode(&mut self, mode: ApprovalMode) {
        self.options.approval_mode = mode;
    }

    pub fn set_model(&mut self, model: String) {
        self.options.model = model;
    }

    pub fn set_memory(&mut self, memory: String) {
        self.options.memory = memory;
    }

    /// Forget the conversation (`/clear`).
    pub fn clear(&mut self) {
        self.messages.clear();
        self.stats.last_input_tokens = 0;
        self.persist_replace();
    }

    /// Add a message to the conversation without asking the model (e.g. `!cmd` output).
    pub fn push_context(&mut self, text: String) {
        self.push(Message::user_text(text));
    }

    pub fn system_prompt(&self) -> String {
        system_prompt(
            &self.sandbox.agent_root(),
            self.sandbox.backend().as_str(),
            self.sandbox.backend().uses_copy(),
            self.options.approval_mode,
            &self.options.memory,
        )
    }

    fn push(&mut self, message: Message) {
        if let Some(r) = &self.recorder {
            r.append_message(&message);
        }
        self.messages.push(message);
    }

    fn persist_replace(&self) {
        if let Some(r) = &self.recorder {
            r.replace_messages(&self.messages);
        }
    }

    /// The request for the current conversation. Consecutive user messages (left by a
    /// failed or cancelled turn) are merged so every API accepts the history.
    fn build_request(&self, system: String, with_tools: bool) -> ModelRequest {
        let mut messages: Vec<Message> = Vec::with_capacity(self.messages.len());
        for m in &self.messages {
            match messages.last_mut() {
                Some(last) if last.role == m.role && m.role == Role::User => {
                    last.content.extend(m.content.iter().cloned())
                }
                _ => messages.push(m.clone()),
            }
        }
        ModelRequest {
            model: self.options.model.clone(),
            system,
            messages,
            tools: if with_tools {
                ToolRegistry::builtin().specs(self.options.approval_mode)
            } else {
                Vec::new()
            },
            max_tokens: self.options.max_tokens,
        }
    }

    fn record_usage(&mut self, usage: Usage, events: &dyn EventSink) {
        self.stats.total_usage.add(usage);
        self.stats.last_input_tokens = usage.input_tokens;
        self.stats.requests += 1;
        if let Some(r) = &self.recorder {
            r.usage(&self.options.model, usage);
        }
        events.emit(Event::Usage {
            last: usage,
            total: self.stats.total_usage,
        });
    }

    /// Tokens the next request would carry: the API's last count where we have one.
    pub fn context_tokens(&self) -> u64 {
        let estimate = estimate_tokens(&self.system_prompt(), &self.messages);
        estimate.max(self.stats.last_input_tokens)
    }

    fn over_threshold(&self) -> bool {
        let limit = (self.options.context_window as f64 * self.options.compact_threshold) as u64;
        self.messages.len() >= 2 && self.context_tokens() > limit
    }

    /// Replace the conversation by a summary the model writes (`/compress`, and
    /// automatically when the conversation nears the context window).
    pub async fn compact(
        &mut self,
        events: &dyn EventSink,
        cancel: &CancellationToken,
    ) -> Result<(), CoreError> {
        if self.messages.is_empty() {
            return Ok(());
        }
        let before = self.context_tokens();
        let mut request = self.build_request(self.system_prompt(), false);
        match request.messages.last_mut() {
            Some(last) if last.role == Role::User => last.content.push(ContentBlock::Text {
                text: SUMMARY_REQUEST.into(),
            }),
            _ => request.messages.push(Message::user_text(SUMMARY_REQUEST)),
        }
        // A request without tools must not carry tool blocks for some APIs: flatten them.
        for m in &mut request.messages {
            for b in &mut m.content {
                let text = match b {
                    ContentBlock::ToolUse { name, input, .. } => {
                        Some(format!("[called tool {name} with {input}]"))
                    }
                    ContentBlock::ToolResult {
                        content, is_error, ..
                    } => Some(format!(
                        "[tool result{}]\n{content}",
                        if *is_error { " (error)" } else { "" }
                    )),
                    ContentBlock::Text { .. } => None,
                };
                if let Some(text) = text {
                    *b = ContentBlock::Text { text };
                }
            }
        }
        let mut sink = |_e: StreamEvent| {};
        let response = self.client.stream(&request, &mut sink, cancel).await?;
        self.record_usage(response.usage, events);
        let summary = response.message.text();
        self.messages = vec![
            Message::user_text(format!("{SUMMARY_HEADER}{summary}")),
            Message::assistant_text("Understood. I have the summary and will continue from it."),
        ];
        self.stats.last_input_tokens = 0;
        self.persist_replace();
        let after = self.context_tokens();
        events.emit(Event::Notice {
            message: format!("Conversation compacted: about {before} → {after} tokens."),
        });
        Ok(())
    }

    /// Runs one user turn: the user's message, then model requests and tool calls until
    /// the model answers without calling tools. Tool calls → run them and sample again;
    /// an assistant message alone → the turn is done.
    pub async fn run_turn(
        &mut self,
        user_text: String,
        approver: &dyn Approver,
        events: &dyn EventSink,
        cancel: &CancellationToken,
    ) -> Result<TurnOutcome, CoreError> {
        if !self.window_checked {
            self.window_checked = true;
            // A window the server states is the truth; the configured one is a guess.
            if let Some(w) = self.client.context_window().await {
                self.options.context_window = w;
            }
        }
        if self.over_threshold() {
            if let Err(e) = self.compact(events, cancel).await {
                if matches!(e, CoreError::Model(LlmError::Cancelled)) {
                    events.emit(Event::TurnCancelled);
                    return Ok(TurnOutcome::Cancelled);
                }
                events.emit(Event::Error {
                    message: format!("could not compact the conversation: {e}"),
                });
            }
        }
        let last_user_text = user_text.clone();
        self.push(Message::user_text(user_text));
        events.emit(Event::TurnStarted);
        let mut overflow_compacted = false;

        for _ in 0..self.options.max_turns {
            let request = self.build_request(self.system_prompt(), true);
            let mut on_stream = |e: StreamEvent| match e {
                StreamEvent::TextDelta { text } => events.emit(Event::TextDelta { text }),
                StreamEvent::Retrying {
                    attempt,
                    delay_ms,
                    reason,
                } => events.emit(Event::Retrying {
                    attempt,
                    delay_ms,
                    reason,
                }),
                StreamEvent::ToolCallStarted { .. } => {}
                StreamEvent::Warning { message } => events.emit(Event::Notice { message }),
            };
            let result = self.client.stream(&request, &mut on_stream, cancel).await;
            if let Err(LlmError::ContextOverflow { window, .. }) = &result {
                // Too long for the model: compact once and ask again, as the user would.
                if let Some(w) = window {
                    self.options.context_window = *w;
                }
                if !overflow_compacted && self.messages.len() > 2 {
                    overflow_compacted = true;
                    events.emit(Event::Notice {
                        message: "The conversation no longer fits the model: compacting it and asking again.".into(),
                    });
                    if self.compact(events, cancel).await.is_ok() {
                        // The user's request is kept verbatim after the summary.
                        self.push(Message::user_text(last_user_text.clone()));
                        continue;
                    }
                }
            }
            let response = match result {
                Ok(r) => r,
                Err(LlmError::Cancelled) => {
                    self.push(Message::assistant_text("(the user cancelled this turn)"));
                    events.emit(Event::TurnCancelled);
                    return Ok(TurnOutcome::Cancelled);
                }
                Err(e @ LlmError::ContextOverflow { .. }) => {
                    events.emit(Event::TurnFailed {
                        message: format!("{e}; {}", self.options.overflow_advice),
                    });
                    return Err(e.into());
                }
                Err(e) => {
                    events.emit(Event::TurnFailed {
                        message: e.to_string(),
                    });
                    return Err(e.into());
                }
            };
            self.record_usage(response.usage, events);
            let text = response.message.text();
            events.emit(Event::AssistantMessage { text: text.clone() });
            let calls: Vec<(String, String, safe_coder_protocol::ToolInput)> = response
                .message
                .tool_uses()
                .map(|(id, name, input)| (id.to_string(), name.to_string(), input.clone()))
                .collect();
            self.push(response.message);
            if calls.is_empty() {
                let truncated = response.stop_reason == StopReason::MaxTokens;
                if truncated {
                    events.emit(Event::Error {
                        message: format!(
                            "the reply was cut at the output limit of {} tokens, so the answer above is incomplete; ask the agent to continue, or raise llm.max_tokens",
                            self.options.max_tokens
                        ),
                    });
                }
                events.emit(Event::TurnFinished {
                    text: text.clone(),
                    truncated,
                });
                return Ok(TurnOutcome::Finished(text));
            }

            let (results, cancelled) = self.run_tools(&calls, approver, events, cancel).await;
            self.push(Message {
                role: Role::User,
                content: results,
            });
            if cancelled {
                events.emit(Event::TurnCancelled);
                return Ok(TurnOutcome::Cancelled);
            }
        }
        let err = CoreError::MaxTurns(self.options.max_turns);
        events.emit(Event::TurnFailed {
            message: err.to_string(),
        });
        Err(err)
    }

    /// Runs one reply's tool calls in order, then commits what they changed.
    async fn run_tools(
        &mut self,
        calls: &[(String, String, safe_coder_protocol::ToolInput)],
        approver: &dyn Approver,
        events: &dyn EventSink,
        cancel: &CancellationToken,
    ) -> (Vec<ContentBlock>, bool) {
        let mut results = Vec::with_capacity(calls.len());
        let mut executed: Vec<String> = Vec::new();
        let mut touched: Vec<String> = Vec::new();
        let mut full_scan = false;
        let mut may_have_changed = false;
        let mut cancelled = false;

        for (id, name, tool_input) in calls {
            let input = &tool_input.to_value();
            if cancelled || cancel.is_cancelled() {
                cancelled = true;
                results.push(ContentBlock::ToolResult {
                    tool_use_id: id.clone(),
                    content: "Not run: the user cancelled the turn.".into(),
                    is_error: true,
                });
                continue;
            }
            // Unknown tools and bad arguments are the model's to fix: they are reported
            // to it without asking the user, since nothing would run.
            let prepared = match tool_input.invalid() {
                Some((raw, error)) => Err((
                    format!(
                        "Not run: the arguments of this {name} call are not valid JSON for a tool call ({error}): {}. Send the call again with a JSON object as its arguments.",
                        raw.chars().take(200).collect::<String>()
                    ),
                    ToolOutcome::Error,
                )),
                None => ToolRegistry::builtin()
                    .prepare(name, input)
                    .map_err(|why| (why, ToolOutcome::Error)),
            };
            events.emit(Event::ToolCallStarted {
                id: id.clone(),
                name: name.clone(),
                input: input.clone(),
                summary: prepared
                    .as_ref()
                    .map(|call| call.summary())
                    .unwrap_or_default(),
            });
            let mut started = Instant::now();

            let authorized = match prepared {
                Err(refusal) => Err(refusal),
                Ok(call) => match self.authorize(id, &*call, approver).await {
                    Ok(()) => Ok(call),
                    Err(refusal) => Err((refusal, ToolOutcome::Denied)),
                },
            };
            let (content, outcome) = match authorized {
                Err(refusal) => refusal,
                Ok(call) => {
                    // The tool's own time, without the time the user took to approve.
                    started = Instant::now();
                    let ctx = ToolContext {
                        sandbox: &*self.sandbox,
                        cancel: cancel.clone(),
                    };
                    let out = call.run(&ctx).await;
                    let effect = call.effect();
                    if !effect.is_read_only() {
                        may_have_changed = true;
                        // A command's effects are unknown: commit after a full scan.
                        if effect.needs_full_scan() {
                            full_scan = true;
                        }
                        touched.extend(out.touched_paths.iter().cloned());
                    }
                    if !executed.contains(name) {
                        executed.push(name.clone());
                    }
                    let outcome = if out.is_error {
                        ToolOutcome::Error
                    } else {
                        ToolOutcome::Ok
                    };
                    (out.content, outcome)
                }
            };
            let duration_ms = started.elapsed().as_millis() as u64;
            if cancel.is_cancelled() {
                cancelled = true;
            }
            let content = cap_tool_result(content, self.options.max_tool_result_chars);
            if let Some(r) = &self.recorder {
                r.tool_call(name, outcome == ToolOutcome::Ok, duration_ms);
            }
            events.emit(Event::ToolCallFinished {
                id: id.clone(),
                name: name.clone(),
                outcome,
                output: content.clone(),
                duration_ms,
            });
            results.push(ContentBlock::ToolResult {
                tool_use_id: id.clone(),
                content,
                is_error: outcome != ToolOutcome::Ok,
            });
        }

        if may_have_changed {
            if let Some(repo) = self.repo.clone() {
                let message = format!("Agent executed: {}", executed.join(", "));
                let paths = if full_scan { None } else { Some(touched) };
                let msg = message.clone();
                let res = tokio::task::spawn_blocking(move || {
                    repo.commit_changes_reporting(&msg, paths.as_deref())
                })
                .await;
                match res {
                    Ok(Ok(outcome)) => {
                        if let Some(commit) = outcome.commit {
                            events.emit(Event::Committed { message, commit });
                        }
                        // Said once per path and session: what the history cannot hold.
                        for left in outcome.newly_left_out {
                            events.emit(Event::Notice {
                                message: format!(
                                    "not in the session history (so never synced): {}: {}",
                                    safe_coder_protocol::display::escape_for_terminal(&left.path),
                                    left.reason
                                ),
                            });
                        }
                    }
                    Ok(Err(e)) => events.emit(Event::Error {
                        message: format!("could not record the commit: {e}"),
                    }),
                    Err(e) => events.emit(Event::Error {
                        message: format!("could not record the commit: {e}"),
                    }),
                }
            }
        }
        (results, cancelled)
    }

    /// Applies the approval mode; asks the approver where needed. `Err` holds the text
    /// the model receives when the call is refused.
    async fn authorize(
        &mut self,
        id: &str,
        call: &dyn ToolCall,
        approver: &dyn Approver,
    ) -> Result<(), String> {
        let name = call.name();
        match needs_approval(self.options.approval_mode, call.effect()) {
            Gate::Run => return Ok(()),
            Gate::Refuse => {
                return Err(format!(
                    "Not run: {name} is not available in plan mode (read-only). Propose the change in your answer instead."
                ))
            }
            Gate::Ask if self.always_allowed.contains(name) => return Ok(()),
            Gate::Ask => {}
        }
        let Some(subject) = call.preview(&*self.sandbox).await else {
            // Never run a call the user was not shown.
            return Err(format!(
                "Not run: this {name} call needs the user's approval, but {name} cannot show what it would do."
            ));
        };
        let request = ApprovalRequest {
            tool_call_id: id.to_string(),
            tool_name: name.to_string(),
            effect: call.effect(),
            subject,
        };
        // The approver shows the request (an event) and waits for the answer.
        match approver.approve(request).await {
            ApprovalDecision::Approve => Ok(()),
            ApprovalDecision::ApproveAlwaysForTool => {
                self.always_allowed.insert(name.to_string());
                Ok(())
            }
            ApprovalDecision::Deny => Err(format!("Not run: the user refused this {name} call.")),
            ApprovalDecision::DenyWithReason { reason } => Err(format!(
                "Not run: the user refused this {name} call: {reason}"
            )),
        }
    }
}

/// Keeps the head and the tail of an over-long tool result, with a note in between.
fn cap_tool_result(content: String, max: usize) -> String {
    if content.len() <= max {
        return content;
    }
    let head_end = floor_char_boundary(&content, max * 2 / 3);
    let tail_start = ceil_char_boundary(&content, content.len() - max / 3);
    format!(
        "{}\n[... {} bytes omitted from the history ...]\n{}",
        &content[..head_end],
        tail_start - head_end,
        &content[tail_start..]
    )
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_keeps_head_and_tail() {
        let s = "a".repeat(100) + &"b".repeat(100);
        let out = cap_tool_result(s, 60);
        assert!(out.starts_with("aaaa"));
        assert!(out.ends_with("bbbb"));
        assert!(out.contains("bytes omitted"));
    }

    #[test]
    fn cap_respects_char_boundaries() {
        let s = "é".repeat(100);
        let out = cap_tool_result(s, 31);
        assert!(out.contains("omitted"));
    }
}
