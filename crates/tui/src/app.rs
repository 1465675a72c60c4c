//! All UI state, and how inputs and keys change it. Nothing here touches the terminal.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEvent, MouseEventKind};
use ratatui::text::Line;
use safe_coder_protocol::display;
use safe_coder_protocol::{
    ApprovalDecision, ApprovalRequest, Event, Role, SandboxStatus, ToolOutcome, Usage,
};

use crate::theme::Palette;
use crate::{ReviewData, TuiConfig, UiAction, UiInput};

/// How many finished tools the recent-tools panel remembers.
const RECENT_TOOLS: usize = 100;

/// Which panel ↑/↓, PageUp/PageDown and Home/End act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    Conversation,
    Tools,
    /// ↑/↓ walk the input history.
    Input,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ToolState {
    Running,
    Ok,
    Error,
    Denied,
}

impl From<ToolOutcome> for ToolState {
    fn from(o: ToolOutcome) -> Self {
        match o {
            ToolOutcome::Ok => ToolState::Ok,
            ToolOutcome::Error => ToolState::Error,
            ToolOutcome::Denied => ToolState::Denied,
        }
    }
}

#[derive(Debug)]
pub(crate) struct ToolEntry {
    pub id: String,
    pub name: String,
    pub summary: String,
    pub state: ToolState,
    pub output: String,
    pub duration_ms: u64,
}

#[derive(Debug)]
pub(crate) enum EntryKind {
    User(String),
    Assistant(String),
    Tool(ToolEntry),
    Error(String),
    Notice(String),
}

/// The wrapped lines of one entry, valid for one width and animation key.
#[derive(Debug)]
pub(crate) struct Rendered {
    pub width: u16,
    pub key: u64,
    pub lines: Vec<Line<'static>>,
}

/// One item of the conversation.
#[derive(Debug)]
pub(crate) struct Entry {
    pub time: String,
    pub kind: EntryKind,
    /// Rendering Markdown is the costly part of a frame, so it is done once per entry
    /// and width, and only for the entries that become visible.
    pub cache: RefCell<Option<Rendered>>,
}

impl Entry {
    fn new(time: String, kind: EntryKind) -> Entry {
        Entry {
            time,
            kind,
            cache: RefCell::new(None),
        }
    }

    pub(crate) fn invalidate(&mut self) {
        *self.cache.get_mut() = None;
    }
}

#[derive(Debug)]
pub(crate) struct RecentTool {
    pub id: String,
    pub name: String,
    pub state: ToolState,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Busy {
    Idle,
    Thinking,
    Tool(String),
    Cancelling,
}

#[derive(Debug)]
pub(crate) struct ApprovalState {
    pub request: ApprovalRequest,
    /// `Some` while the user types the reason of a refusal.
    pub reason: Option<String>,
    pub scroll: usize,
}

#[derive(Debug)]
pub(crate) struct ReviewState {
    pub data: ReviewData,
    pub accepted: Vec<bool>,
    pub selected: usize,
    pub diff_scroll: usize,
}

impl ReviewState {
    fn new(data: ReviewData) -> ReviewState {
        // Everything that can be synced starts accepted: Enter syncs it all.
        let accepted = data.changes.files.iter().map(|f| !f.conflict).collect();
        ReviewState {
            data,
            accepted,
            selected: 0,
            diff_scroll: 0,
        }
    }

    pub(crate) fn accepted_paths(&self) -> Vec<String> {
        self.data
            .changes
            .files
            .iter()
            .zip(&self.accepted)
            .filter(|(f, a)| **a && !f.conflict)
            .map(|(f, _)| f.path.clone())
            .collect()
    }
}

#[derive(Debug)]
pub(crate) enum Modal {
    Approval(ApprovalState),
    Review(ReviewState),
    /// The review was answered; waiting for the sync result.
    Syncing,
    SyncResult(String),
}

/// Sizes the last frame found, so keys can clamp scrolling without a terminal.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct View {
    pub conv_height: usize,
    /// 0 until the first frame.
    pub conv_width: u16,
    /// Known once a frame reached the first entry.
    pub conv_max_scroll: Option<usize>,
    pub tools_height: usize,
    pub tools_max_scroll: usize,
    pub diff_height: usize,
    pub diff_max_scroll: usize,
}

/// All UI state. [`crate::draw`] is a pure function of it.
pub struct App {
    pub(crate) config: TuiConfig,
    pub(crate) pal: Palette,
    pub(crate) entries: Vec<Entry>,
    /// The assistant entry text deltas are appended to.
    streaming: Option<usize>,
    /// Whether the current turn already showed an assistant message (so the final
    /// answer of `TurnFinished` is not shown twice).
    turn_answer_shown: bool,
    pub(crate) busy: Busy,
    pub(crate) input: String,
    /// Cursor position in chars.
    pub(crate) cursor: usize,
    history: Vec<String>,
    history_pos: Option<usize>,
    pub(crate) completions: Vec<String>,
    pub(crate) scroll: usize,
    pub(crate) tools_scroll: usize,
    pub(crate) focus: Focus,
    pub(crate) status: Option<SandboxStatus>,
    pub(crate) usage: Option<Usage>,
    pub(crate) recent: VecDeque<RecentTool>,
    pub(crate) modal: Option<Modal>,
    queued_approvals: VecDeque<ApprovalRequest>,
    /// Recently answered approval ids: the same request may arrive both as an event
    /// and as a `UiInput::Approval`, and must not be asked twice.
    answered: VecDeque<String>,
    pub(crate) tick: u64,
    pub(crate) quitting: bool,
    finished: bool,
    dirty: bool,
    clock: Option<String>,
    pub(crate) view: Cell<View>,
}

impl App {
    pub fn new(config: TuiConfig) -> App {
        App {
            pal: Palette::new(config.theme),
            config,
            entries: Vec::new(),
            streaming: None,
            turn_answer_shown: false,
            busy: Busy::Idle,
            input: String::new(),
            cursor: 0,
            history: Vec::new(),
            history_pos: None,
            completions: Vec::new(),
            scroll: 0,
            tools_scroll: 0,
            focus: Focus::Conversation,
            status: None,
            usage: None,
            recent: VecDeque::new(),
            modal: None,
            queued_approvals: VecDeque::new(),
            answered: VecDeque::new(),
            tick: 0,
            quitting: false,
            finished: false,
            dirty: true,
            clock: None,
            view: Cell::new(View::default()),
        }
    }

    /// Uses `hhmmss` as the time of every new entry instead of the clock (tests).
    pub fn freeze_clock(&mut self, hhmmss: impl Into<String>) {
        self.clock = Some(hhmmss.into());
    }

    fn now(&self) -> String {
        match &self.clock {
            Some(t) => t.clone(),
            None => chrono::Local::now().format("%H:%M:%S").to_string(),
        }
    }

    /// Whether something changed since the last [`App::mark_drawn`].
    pub fn needs_redraw(&self) -> bool {
        self.dirty
    }

    /// Called after a frame was drawn.
    pub fn mark_drawn(&mut self) {
        self.dirty = false;
    }

    /// Forces the next frame (terminal resized).
    pub fn invalidate(&mut self) {
        self.dirty = true;
    }

    /// Whether the UI has something moving (spinner, pulsing border), so the run loop
    /// needs animation ticks. When false the loop sleeps until input.
    pub fn is_animating(&self) -> bool {
        self.busy != Busy::Idle || matches!(self.modal, Some(Modal::Syncing))
    }

    /// True once the user dismissed the final sync result: the UI should close.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The lead closed the input channel. Returns true when the UI should stay open
    /// anyway: a sync result is on screen and waits for a key, after which the UI
    /// finishes.
    pub fn input_closed(&mut self) -> bool {
        if matches!(self.modal, Some(Modal::SyncResult(_))) {
            if !self.quitting {
                self.quitting = true;
                self.dirty = true;
            }
            true
        } else {
            false
        }
    }

    /// Whether a turn is running.
    pub fn is_busy(&self) -> bool {
        self.busy != Busy::Idle
    }

    /// The current input line.
    pub fn input_text(&self) -> &str {
        &self.input
    }

    /// The focused panel.
    pub fn focus(&self) -> Focus {
        self.focus
    }

    /// Number of conversation entries.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Advances the animation by one step.
    pub fn tick(&mut self) {
        self.tick = self.tick.wrapping_add(1);
        if self.is_animating() {
            self.dirty = true;
        }
    }

    fn push(&mut self, kind: EntryKind) {
        let time = self.now();
        self.entries.push(Entry::new(time, kind));
    }

    fn push_notice(&mut self, text: impl Into<String>) {
        self.push(EntryKind::Notice(text.into()));
    }

    pub fn handle_input(&mut self, input: UiInput) {
        self.dirty = true;
        // While the user reads older lines, new lines must not move them: grow the
        // offset from the bottom by what was added below.
        let anchor = (self.scroll > 0 && self.view.get().conv_width > 0).then(|| {
            let from = self.entries.len().saturating_sub(1);
            (from, self.lines_from(from))
        });
        self.apply_input(input);
        if let Some((from, before)) = anchor {
            let after = self.lines_from(from.min(self.entries.len()));
            if after >= before {
                self.scroll = self.scroll.saturating_add(after - before);
            } else {
                self.scroll = self.scroll.saturating_sub(before - after).max(1);
            }
        }
    }

    /// Rows taken by the entries from index `from` on, at the last frame's width.
    fn lines_from(&self, from: usize) -> usize {
        let width = self.view.get().conv_width;
        self.entries
            .iter()
            .enumerate()
            .skip(from)
            .map(|(i, e)| {
                crate::ui::entry_lines(e, width, &self.pal, self.tick)
                    .lines
                    .len()
                    + usize::from(i > 0)
            })
            .sum()
    }

    fn apply_input(&mut self, input: UiInput) {
        match input {
            UiInput::Event(e) => self.handle_event(e),
            UiInput::Status(s) => self.status = Some(s),
            UiInput::Approval(req) => self.open_approval(req),
            UiInput::Review(data) => {
                self.modal = Some(Modal::Review(ReviewState::new(data)));
            }
            UiInput::SyncResult(text) => {
                self.push_notice(text.trim_end().to_string());
                self.modal = Some(Modal::SyncResult(text));
            }
            UiInput::Completions(list) => self.apply_completions(list),
        }
    }

    fn open_approval(&mut self, request: ApprovalRequest) {
        if self.answered.contains(&request.tool_call_id) {
            return;
        }
        match &self.modal {
            Some(Modal::Approval(a)) if a.request.tool_call_id == request.tool_call_id => {}
            Some(_) => {
                if !self
                    .queued_approvals
                    .iter()
                    .any(|q| q.tool_call_id == request.tool_call_id)
                {
                    self.queued_approvals.push_back(request);
                }
            }
            None => {
                self.modal = Some(Modal::Approval(ApprovalState {
                    request,
                    reason: None,
                    scroll: 0,
                }))
            }
        }
    }

    /// Closes the approval dialog of `id` (answered or cancelled) and opens the next.
    fn finish_approval(&mut self, id: String) {
        self.answered.push_back(id);
        if self.answered.len() > 32 {
            self.answered.pop_front();
        }
        self.close_modal();
    }

    fn close_modal(&mut self) {
        self.modal = None;
        if let Some(next) = self.queued_approvals.pop_front() {
            self.open_approval(next);
        }
    }

    fn handle_event(&mut self, e: Event) {
        match e {
            Event::SessionStarted {
                session_id,
                project,
                backend,
                note,
                provider,
                model,
                approval_mode,
                ..
            } => {
                if !project.is_empty() {
                    self.config.project = project;
                }
                self.config.provider = provider;
                self.config.model = model;
                self.config.approval_mode = approval_mode;
                self.push_notice(display::session_started_line(
                    &session_id,
                    &backend,
                    &note,
                    false,
                ));
            }
            Event::ConversationRestored { messages } => {
                // How each earlier call ended, from the results sent back to the model.
                let failed: std::collections::HashMap<&str, bool> =
                    messages.iter().flat_map(|m| m.tool_results()).collect();
                let mut tools = Vec::new();
                for m in &messages {
                    let text = m.text();
                    if !text.trim().is_empty() {
                        self.push(match m.role {
                            Role::User => EntryKind::User(text),
                            Role::Assistant => EntryKind::Assistant(text),
                        });
                    }
                    for (id, name, input) in m.tool_uses() {
                        let state = match failed.get(id) {
                            Some(true) => ToolState::Error,
                            _ => ToolState::Ok,
                        };
                        tools.push(RecentTool {
                            id: id.to_string(),
                            name: name.to_string(),
                            state,
                            duration_ms: 0,
                        });
                        self.push(EntryKind::Tool(ToolEntry {
                            id: id.to_string(),
                            name: name.to_string(),
                            summary: fit_summary(&restored_summary(input)),
                            state,
                            output: String::new(),
                            duration_ms: 0,
                        }));
                    }
                }
                // The recent-tools panel lists the newest first.
                for t in tools {
                    self.recent.push_front(t);
                }
                self.recent.truncate(RECENT_TOOLS);
                // Counted as `/stats` counts: tool results are not messages of their own.
                let count = messages.iter().filter(|m| !m.is_tool_results()).count();
                self.push_notice(format!(
                    "Resumed with {count} message(s): the conversation so far is above."
                ));
            }
            Event::SettingsChanged {
                model,
                approval_mode,
            } => {
                self.config.model = model;
                self.config.approval_mode = approval_mode;
            }
            Event::TurnFailed { message } => {
                self.streaming = None;
                self.push(EntryKind::Error(message));
                self.end_turn();
            }
            Event::Ready => {
                if self.busy != Busy::Idle {
                    self.end_turn();
                }
            }
            Event::ShellStarted { command } => {
                self.busy = Busy::Tool(format!("!{command}"));
                self.push_notice(format!("$ {}", display::escape_for_terminal(&command)));
            }
            Event::ShellFinished {
                output,
                exit_code,
                timed_out,
                cancelled,
                ..
            } => {
                self.busy = Busy::Thinking;
                self.push_notice(
                    display::escape_for_terminal(&display::shell_result(
                        &output, exit_code, timed_out, cancelled,
                    ))
                    .into_owned(),
                );
            }
            Event::ReviewRequested { changes, diffs, .. } => {
                self.modal = Some(Modal::Review(ReviewState::new(ReviewData {
                    changes,
                    diffs: diffs.into_iter().collect(),
                })));
            }
            Event::Status { status } => self.status = Some(status),
            Event::Completions { items } => self.apply_completions(items),
            Event::SessionEnded { .. } => {}
            // `safe-coder run` draws these itself; the TUI never sends `Op::Run`.
            Event::RunStarted { .. }
            | Event::TerminalOutput { .. }
            | Event::NetworkRefused { .. }
            | Event::RunFinished { .. } => {}
            Event::TurnStarted => {
                self.busy = Busy::Thinking;
                self.streaming = None;
                self.turn_answer_shown = false;
            }
            Event::TextDelta { text } => {
                if self.busy == Busy::Idle {
                    self.busy = Busy::Thinking;
                }
                match self.streaming {
                    Some(i) => {
                        if let Some(Entry {
                            kind: EntryKind::Assistant(t),
                            cache,
                            ..
                        }) = self.entries.get_mut(i)
                        {
                            t.push_str(&text);
                            *cache.get_mut() = None;
                        }
                    }
                    None => {
                        self.push(EntryKind::Assistant(text));
                        self.streaming = Some(self.entries.len() - 1);
                    }
                }
                self.turn_answer_shown = true;
            }
            Event::Retrying {
                attempt,
                delay_ms,
                reason,
            } => {
                if let Some(i) = self.streaming.take() {
                    if i < self.entries.len() {
                        self.entries.remove(i);
                    }
                }
                self.push_notice(format!(
                    "Retrying (attempt {attempt}, in {}): {reason}",
                    fmt_duration(delay_ms)
                ));
            }
            Event::AssistantMessage { text } => {
                match self.streaming.take() {
                    Some(i) => {
                        if let Some(entry) = self.entries.get_mut(i) {
                            if let EntryKind::Assistant(t) = &mut entry.kind {
                                if !text.is_empty() {
                                    *t = text;
                                }
                            }
                            entry.invalidate();
                        }
                    }
                    None if !text.trim().is_empty() => self.push(EntryKind::Assistant(text)),
                    None => {}
                }
                self.turn_answer_shown = true;
            }
            Event::ToolCallStarted {
                id, name, summary, ..
            } => {
                self.streaming = None;
                let summary = fit_summary(&summary);
                self.busy = Busy::Tool(name.clone());
                self.recent.push_front(RecentTool {
                    id: id.clone(),
                    name: name.clone(),
                    state: ToolState::Running,
                    duration_ms: 0,
                });
                self.recent.truncate(RECENT_TOOLS);
                self.push(EntryKind::Tool(ToolEntry {
                    id,
                    name,
                    summary,
                    state: ToolState::Running,
                    output: String::new(),
                    duration_ms: 0,
                }));
            }
            Event::ApprovalRequested { request } => self.open_approval(request),
            Event::ToolCallFinished {
                id,
                name,
                outcome,
                output,
                duration_ms,
            } => {
                let state = ToolState::from(outcome);
                let found = self
                    .entries
                    .iter_mut()
                    .rev()
                    .take(200)
                    .find(|e| matches!(&e.kind, EntryKind::Tool(t) if t.id == id));
                match found {
                    Some(entry) => {
                        if let EntryKind::Tool(t) = &mut entry.kind {
                            t.state = state;
                            t.output = output;
                            t.duration_ms = duration_ms;
                        }
                        entry.invalidate();
                    }
                    None => self.push(EntryKind::Tool(ToolEntry {
                        id: id.clone(),
                        name: name.clone(),
                        summary: String::new(),
                        state,
                        output,
                        duration_ms,
                    })),
                }
                match self.recent.iter_mut().find(|r| r.id == id) {
                    Some(r) => {
                        r.state = state;
                        r.duration_ms = duration_ms;
                    }
                    None => {
                        self.recent.push_front(RecentTool {
                            id,
                            name,
                            state,
                            duration_ms,
                        });
                        self.recent.truncate(RECENT_TOOLS);
                    }
                }
                if matches!(self.busy, Busy::Tool(_)) {
                    let still = self.recent.iter().find(|r| r.state == ToolState::Running);
                    self.busy = match still {
                        Some(r) => Busy::Tool(r.name.clone()),
                        None => Busy::Thinking,
                    };
                }
            }
            Event::Usage { total, .. } => self.usage = Some(total),
            Event::Committed { message, commit } => {
                let short: String = commit.chars().take(7).collect();
                let first = message.lines().next().unwrap_or("").to_string();
                self.push_notice(format!("● {short} {first}"));
            }
            Event::Error { message } => {
                self.streaming = None;
                self.push(EntryKind::Error(message));
            }
            Event::TurnFinished { text, .. } => {
                if !self.turn_answer_shown && !text.trim().is_empty() {
                    self.push(EntryKind::Assistant(text));
                }
                self.end_turn();
            }
            Event::TurnCancelled => {
                self.end_turn();
                self.push_notice("Turn cancelled.");
            }
            Event::Notice { message } => self.push_notice(message),
            Event::ChangeSummary { changes } => {
                if !changes.is_empty() {
                    self.push_notice(changes.summary_text().trim_end().to_string());
                }
            }
            e @ Event::SyncFinished { .. } => {
                if let Some(text) = display::sync_finished_text(&e) {
                    self.push_notice(text);
                }
            }
        }
    }

    fn end_turn(&mut self) {
        self.busy = Busy::Idle;
        if let Some(i) = self.streaming.take() {
            if let Some(e) = self.entries.get_mut(i) {
                e.invalidate();
            }
        }
        // Tools that never reported back are not running any more.
        for r in self.recent.iter_mut() {
            if r.state == ToolState::Running {
                r.state = ToolState::Error;
            }
        }
        for e in self.entries.iter_mut().rev().take(50) {
            if let EntryKind::Tool(t) = &mut e.kind {
                if t.state == ToolState::Running {
                    t.state = ToolState::Error;
                    *e.cache.get_mut() = None;
                }
            }
        }
    }

    fn apply_completions(&mut self, list: Vec<String>) {
        if list.len() == 1 {
            let word_start = current_word_start(&self.input);
            self.input.truncate(word_start);
            self.input.push_str(&list[0]);
            if !list[0].ends_with('/') {
                self.input.push(' ');
            }
            self.cursor = self.input.chars().count();
            self.completions.clear();
        } else {
            // Complete the common prefix, show the rest.
            if let Some(prefix) = common_prefix(&list) {
                let word_start = current_word_start(&self.input);
                if prefix.len() > self.input.len() - word_start {
                    self.input.truncate(word_start);
                    self.input.push_str(&prefix);
                    self.cursor = self.input.chars().count();
                }
            }
            self.completions = list;
        }
    }

    pub fn handle_mouse(&mut self, mouse: MouseEvent) {
        let delta: isize = match mouse.kind {
            MouseEventKind::ScrollUp => 3,
            MouseEventKind::ScrollDown => -3,
            _ => return,
        };
        self.dirty = true;
        match &mut self.modal {
            Some(Modal::Review(r)) => {
                let max = self.view.get().diff_max_scroll;
                r.diff_scroll = add_clamped(r.diff_scroll, -delta, max);
            }
            Some(Modal::Approval(a)) => {
                let max = self.view.get().diff_max_scroll;
                a.scroll = add_clamped(a.scroll, -delta, max);
            }
            Some(_) => {}
            None => self.scroll_conversation(delta),
        }
    }

    fn scroll_conversation(&mut self, delta: isize) {
        let max = self.view.get().conv_max_scroll.unwrap_or(usize::MAX);
        self.scroll = add_clamped(self.scroll.min(max), delta, max);
    }

    fn scroll_tools(&mut self, delta: isize) {
        let max = self.view.get().tools_max_scroll;
        self.tools_scroll = add_clamped(self.tools_scroll, -delta, max);
    }

    /// Applies one key; returns what the lead must do, if anything.
    pub fn handle_key(&mut self, key: KeyEvent) -> Option<UiAction> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        self.dirty = true;
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if let Some(modal) = self.modal.take() {
            return self.modal_key(modal, key, ctrl);
        }
        if ctrl {
            match key.code {
                KeyCode::Char('c') => {
                    if self.busy != Busy::Idle {
                        self.busy = Busy::Cancelling;
                        return Some(UiAction::Cancel);
                    }
                    if self.quitting {
                        // The lead did not answer the first Quit: close anyway.
                        self.finished = true;
                        return None;
                    }
                    self.quitting = true;
                    return Some(UiAction::Quit);
                }
                KeyCode::Char('a') => self.cursor = 0,
                KeyCode::Char('e') => self.cursor = self.input.chars().count(),
                KeyCode::Char('u') => {
                    let at = byte_at(&self.input, self.cursor);
                    self.input.replace_range(..at, "");
                    self.cursor = 0;
                }
                KeyCode::Char('k') => {
                    let at = byte_at(&self.input, self.cursor);
                    self.input.truncate(at);
                }
                KeyCode::Char('w') => {
                    let at = byte_at(&self.input, self.cursor);
                    let before = self.input[..at].trim_end_matches(' ');
                    let start = before.rfind(' ').map(|i| i + 1).unwrap_or(0);
                    self.input.replace_range(start..at, "");
                    self.cursor = self.input[..start].chars().count();
                }
                KeyCode::Home => self.scroll_conversation(isize::MAX),
                KeyCode::End => self.scroll = 0,
                _ => {}
            }
            return None;
        }
        let page = self.view.get().conv_height.saturating_sub(1).max(1) as isize;
        match key.code {
            KeyCode::Enter => {
                if key.modifiers.contains(KeyModifiers::ALT)
                    || key.modifiers.contains(KeyModifiers::SHIFT)
                {
                    self.insert_char('\n');
                    return None;
                }
                let text = self.input.trim_end().to_string();
                if text.trim().is_empty() {
                    return None;
                }
                self.input.clear();
                self.cursor = 0;
                self.completions.clear();
                self.history_pos = None;
                if self.history.last() != Some(&text) {
                    self.history.push(text.clone());
                }
                self.scroll = 0;
                self.push(EntryKind::User(text.clone()));
                return Some(UiAction::Submit(text));
            }
            KeyCode::BackTab => {
                self.config.approval_mode = self.config.approval_mode.next();
                return Some(UiAction::CycleApprovalMode);
            }
            KeyCode::Tab => {
                let word = &self.input[current_word_start(&self.input)..];
                let wants_completion = (self.input.starts_with('/') && !self.input.contains(' '))
                    || word.starts_with('@');
                if wants_completion && self.cursor == self.input.chars().count() {
                    return Some(UiAction::RequestCompletions(self.input.clone()));
                }
                self.focus = match self.focus {
                    Focus::Conversation => Focus::Tools,
                    Focus::Tools => Focus::Input,
                    Focus::Input => Focus::Conversation,
                };
            }
            KeyCode::Esc => self.completions.clear(),
            KeyCode::Char(c) => self.insert_char(c),
            KeyCode::Backspace => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    let at = byte_at(&self.input, self.cursor);
                    self.input.remove(at);
                }
                self.completions.clear();
            }
            KeyCode::Delete if self.cursor < self.input.chars().count() => {
                let at = byte_at(&self.input, self.cursor);
                self.input.remove(at);
            }
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(self.input.chars().count()),
            KeyCode::Up => match self.focus {
                Focus::Conversation => self.scroll_conversation(1),
                Focus::Tools => self.scroll_tools(-1),
                Focus::Input => self.history_step(-1),
            },
            KeyCode::Down => match self.focus {
                Focus::Conversation => self.scroll_conversation(-1),
                Focus::Tools => self.scroll_tools(1),
                Focus::Input => self.history_step(1),
            },
            KeyCode::PageUp => match self.focus {
                Focus::Tools => self.scroll_tools(-(self.view.get().tools_height as isize)),
                _ => self.scroll_conversation(page),
            },
            KeyCode::PageDown => match self.focus {
                Focus::Tools => self.scroll_tools(self.view.get().tools_height as isize),
                _ => self.scroll_conversation(-page),
            },
            KeyCode::Home => match self.focus {
                Focus::Input => self.cursor = 0,
                Focus::Tools => self.tools_scroll = 0,
                Focus::Conversation => self.scroll_conversation(isize::MAX),
            },
            KeyCode::End => match self.focus {
                Focus::Input => self.cursor = self.input.chars().count(),
                Focus::Tools => self.tools_scroll = self.view.get().tools_max_scroll,
                Focus::Conversation => self.scroll = 0,
            },
            _ => {}
        }
        None
    }

    /// Inserts pasted text at the cursor (bracketed paste).
    pub fn paste(&mut self, text: &str) {
        self.dirty = true;
        if let Some(Modal::Approval(ApprovalState {
            reason: Some(r), ..
        })) = &mut self.modal
        {
            r.push_str(&text.replace(['\r', '\n'], " "));
            return;
        }
        if self.modal.is_some() {
            return;
        }
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let at = byte_at(&self.input, self.cursor);
        self.input.insert_str(at, &text);
        self.cursor += text.chars().count();
    }

    fn insert_char(&mut self, c: char) {
        let at = byte_at(&self.input, self.cursor);
        self.input.insert(at, c);
        self.cursor += 1;
        if c == ' ' {
            self.completions.clear();
        }
    }

    fn history_step(&mut self, dir: isize) {
        if self.history.is_empty() {
            return;
        }
        let next = match (self.history_pos, dir < 0) {
            (None, true) => Some(self.history.len() - 1),
            (None, false) => None,
            (Some(p), true) => Some(p.saturating_sub(1)),
            (Some(p), false) if p + 1 < self.history.len() => Some(p + 1),
            (Some(_), false) => None,
        };
        self.history_pos = next;
        self.input = next
            .and_then(|p| self.history.get(p).cloned())
            .unwrap_or_default();
        self.cursor = self.input.chars().count();
    }

    fn modal_key(&mut self, modal: Modal, key: KeyEvent, ctrl: bool) -> Option<UiAction> {
        match modal {
            Modal::Approval(mut a) => {
                if ctrl && key.code == KeyCode::Char('c') {
                    // Closing the dialog cancels the whole turn.
                    self.busy = Busy::Cancelling;
                    self.finish_approval(a.request.tool_call_id.clone());
                    return Some(UiAction::Cancel);
                }
                let max = self.view.get().diff_max_scroll;
                let page = self.view.get().diff_height.max(1) as isize;
                if let Some(reason) = a.reason.as_mut() {
                    match key.code {
                        KeyCode::Enter => {
                            let reason = reason.trim().to_string();
                            let call_id = a.request.tool_call_id.clone();
                            self.finish_approval(call_id.clone());
                            let decision = if reason.is_empty() {
                                ApprovalDecision::Deny
                            } else {
                                ApprovalDecision::DenyWithReason { reason }
                            };
                            return Some(UiAction::Approval { call_id, decision });
                        }
                        KeyCode::Esc => a.reason = None,
                        KeyCode::Backspace => {
                            reason.pop();
                        }
                        KeyCode::Char(c) if !ctrl => reason.push(c),
                        _ => {}
                    }
                    self.modal = Some(Modal::Approval(a));
                    return None;
                }
                let decision = match key.code {
                    KeyCode::Char('y') | KeyCode::Char('Y') => Some(ApprovalDecision::Approve),
                    KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => {
                        Some(ApprovalDecision::Deny)
                    }
                    KeyCode::Char('a') | KeyCode::Char('A') => {
                        Some(ApprovalDecision::ApproveAlwaysForTool)
                    }
                    KeyCode::Char('r') | KeyCode::Char('R') => {
                        a.reason = Some(String::new());
                        None
                    }
                    KeyCode::Up | KeyCode::Char('k') => {
                        a.scroll = add_clamped(a.scroll, -1, max);
                        None
                    }
                    KeyCode::Down | KeyCode::Char('j') => {
                        a.scroll = add_clamped(a.scroll, 1, max);
                        None
                    }
                    KeyCode::PageUp => {
                        a.scroll = add_clamped(a.scroll, -page, max);
                        None
                    }
                    KeyCode::PageDown | KeyCode::Char(' ') => {
                        a.scroll = add_clamped(a.scroll, page, max);
                        None
                    }
                    _ => None,
                };
                match decision {
                    Some(decision) => {
                        let call_id = a.request.tool_call_id.clone();
                        self.finish_approval(call_id.clone());
                        Some(UiAction::Approval { call_id, decision })
                    }
                    None => {
                        self.modal = Some(Modal::Approval(a));
                        None
                    }
                }
            }
            Modal::Review(mut r) => {
                let n = r.data.changes.files.len();
                let max = self.view.get().diff_max_scroll;
                let page = self.view.get().diff_height.max(1) as isize;
                match key.code {
                    KeyCode::Enter => {
                        let paths = r.accepted_paths();
                        self.modal = Some(Modal::Syncing);
                        return Some(UiAction::Review(paths));
                    }
                    KeyCode::Esc => {
                        self.modal = if self.quitting {
                            Some(Modal::Syncing)
                        } else {
                            None
                        };
                        return Some(UiAction::KeepForLater);
                    }
                    KeyCode::Char('c') if ctrl => {
                        self.modal = if self.quitting {
                            Some(Modal::Syncing)
                        } else {
                            None
                        };
                        return Some(UiAction::KeepForLater);
                    }
                    KeyCode::Up | KeyCode::Char('k') if r.selected > 0 => {
                        r.selected -= 1;
                        r.diff_scroll = 0;
                    }
                    KeyCode::Down | KeyCode::Char('j') if r.selected + 1 < n => {
                        r.selected += 1;
                        r.diff_scroll = 0;
                    }
                    KeyCode::Char(' ') => {
                        let conflict = r
                            .data
                            .changes
                            .files
                            .get(r.selected)
                            .is_some_and(|f| f.conflict);
                        if !conflict {
                            if let Some(a) = r.accepted.get_mut(r.selected) {
                                *a = !*a;
                            }
                        }
                    }
                    KeyCode::Char('a') | KeyCode::Char('A') => {
                        for (a, f) in r.accepted.iter_mut().zip(&r.data.changes.files) {
                            *a = !f.conflict;
                        }
                    }
                    KeyCode::Char('r') | KeyCode::Char('R') => {
                        r.accepted.iter_mut().for_each(|a| *a = false);
                    }
                    KeyCode::PageDown => r.diff_scroll = add_clamped(r.diff_scroll, page, max),
                    KeyCode::PageUp => r.diff_scroll = add_clamped(r.diff_scroll, -page, max),
                    KeyCode::Home => r.diff_scroll = 0,
                    KeyCode::End => r.diff_scroll = max,
                    _ => {}
                }
                self.modal = Some(Modal::Review(r));
                None
            }
            Modal::Syncing => {
                if ctrl && key.code == KeyCode::Char('c') && self.quitting {
                    self.finished = true;
                    return None;
                }
                if key.code == KeyCode::Esc && !self.quitting {
                    // Mid-session sync: the result will still be shown when it comes.
                    self.close_modal();
                    return None;
                }
                self.modal = Some(Modal::Syncing);
                None
            }
            Modal::SyncResult(_) => {
                if self.quitting {
                    self.finished = true;
                }
                self.close_modal();
                None
            }
        }
    }
}

fn add_clamped(v: usize, delta: isize, max: usize) -> usize {
    let r = if delta >= 0 {
        v.saturating_add(delta as usize)
    } else {
        v.saturating_sub(delta.unsigned_abs())
    };
    r.min(max)
}

fn byte_at(s: &str, chars: usize) -> usize {
    s.char_indices()
        .nth(chars)
        .map(|(i, _)| i)
        .unwrap_or(s.len())
}

fn current_word_start(s: &str) -> usize {
    s.rfind(' ').map(|i| i + 1).unwrap_or(0)
}

fn common_prefix(list: &[String]) -> Option<String> {
    let first = list.first()?;
    let mut len = first.len();
    for s in &list[1..] {
        len = len.min(
            first
                .char_indices()
                .zip(s.chars())
                .take_while(|((_, a), b)| a == b)
                .last()
                .map(|((i, c), _)| i + c.len_utf8())
                .unwrap_or(0),
        );
    }
    Some(first[..len].to_string())
}

/// A one-line summary of a restored call (no live event carries one): the path or the
/// command it was given, else its input as JSON.
fn restored_summary(input: &safe_coder_protocol::ToolInput) -> String {
    let Some(json) = input.as_json() else {
        return String::new();
    };
    ["command", "path"]
        .iter()
        .find_map(|k| json.get(*k).and_then(|v| v.as_str()).map(str::to_string))
        .unwrap_or_else(|| json.to_string())
}

/// The tool's one-line summary of a call (the event's `summary`), with its whitespace
/// collapsed and cut to fit the tool line.
pub(crate) fn fit_summary(summary: &str) -> String {
    let one_line: String = summary.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 80 {
        let cut: String = one_line.chars().take(79).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

/// `12ms`, `1.2s`, `1m 05s`.
pub(crate) fn fmt_duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}
