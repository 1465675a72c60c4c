//! Drawing: a pure function of [`App`] (apart from the per-entry line caches and the
//! view sizes it records for scrolling).

use ratatui::layout::{Alignment, Constraint, Direction, Layout, Position, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Borders, Clear, Paragraph};
use ratatui::Frame;
use safe_coder_protocol::text::{escape_control, escape_control_multiline};
use safe_coder_protocol::{ApprovalSubject, ChangeKind, SandboxState};
use unicode_width::UnicodeWidthStr;

use crate::app::{
    fmt_duration, App, ApprovalState, Busy, Entry, EntryKind, Focus, Modal, Rendered, ReviewState,
    ToolState,
};
use crate::highlight::{diff_style, Highlighter, Lang};
use crate::markdown::{self, wrap_into, wrap_plain};
use crate::theme::Palette;

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
/// Below this width the right column (status, recent tools) is dropped.
const WIDE: u16 = 80;
const RIGHT_COLUMN: u16 = 30;
/// Lines of tool output shown before "… N more lines".
const FOLDED_OUTPUT: usize = 4;

fn spinner(tick: u64) -> &'static str {
    SPINNER[(tick as usize) % SPINNER.len()]
}

/// Draws the whole UI for the current state.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let pal = &app.pal;
    frame.render_widget(Block::new().style(pal.text), area);
    if let Some(Modal::Review(r)) = &app.modal {
        draw_review(frame, app, r, area);
        return;
    }

    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(3),
            Constraint::Min(3),
            Constraint::Length(3),
            Constraint::Length(1),
        ])
        .split(area);
    draw_header(frame, app, rows[0]);
    if area.width >= WIDE {
        let cols = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Min(20), Constraint::Length(RIGHT_COLUMN)])
            .split(rows[1]);
        draw_conversation(frame, app, cols[0]);
        let right = Layout::default()
            .direction(Direction::Vertical)
            .constraints([Constraint::Length(10), Constraint::Min(3)])
            .split(cols[1]);
        draw_status(frame, app, right[0]);
        draw_tools(frame, app, right[1]);
    } else {
        draw_conversation(frame, app, rows[1]);
    }
    draw_input(frame, app, rows[2]);
    draw_footer(frame, app, rows[3]);

    match &app.modal {
        Some(Modal::Approval(a)) => draw_approval(frame, app, a, area),
        Some(Modal::Syncing) => {
            let text = format!("{} Syncing accepted changes…", spinner(app.tick));
            draw_message_box(frame, app, area, " Sync ", &text, None);
        }
        Some(Modal::SyncResult(text)) => {
            let hint = if app.quitting {
                "Press any key to close"
            } else {
                "Press any key to continue"
            };
            draw_message_box(frame, app, area, " ✔ Sync result ", text, Some(hint));
        }
        _ => {}
    }
}

fn panel<'a>(app: &App, title: &'a str, focused: bool, pulsing: bool) -> Block<'a> {
    let pal = &app.pal;
    let style = if pulsing {
        pal.pulse(app.tick)
    } else if focused {
        pal.border_focus
    } else {
        pal.border
    };
    Block::new()
        .borders(Borders::ALL)
        .border_type(if focused {
            BorderType::Thick
        } else {
            BorderType::Rounded
        })
        .border_style(style)
        .title(Span::styled(title, pal.title))
}

fn draw_header(frame: &mut Frame, app: &App, area: Rect) {
    let pal = &app.pal;
    let block = panel(app, "", false, app.is_busy());
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let max = inner.width as usize;
    let mut project = app.config.project.clone();
    let fixed = "🔥 Safe Coder | ".width();
    if fixed + project.width() > max {
        let keep = max.saturating_sub(fixed + 1);
        project = format!("…{}", tail_by_width(&project, keep));
    }
    let line = Line::from(vec![
        Span::styled("🔥 Safe Coder", pal.title),
        Span::styled(" | ", pal.dim),
        Span::styled(project, pal.accent),
    ]);
    frame.render_widget(Paragraph::new(line).alignment(Alignment::Center), inner);
}

fn tail_by_width(s: &str, width: usize) -> String {
    let mut w = 0;
    let mut start = s.len();
    for (i, c) in s.char_indices().rev() {
        let cw = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if w + cw > width {
            break;
        }
        w += cw;
        start = i;
    }
    s[start..].to_string()
}

fn truncate_width(s: &str, width: usize) -> String {
    if s.width() <= width {
        return s.to_string();
    }
    let mut out = String::new();
    let mut w = 0;
    for c in s.chars() {
        let cw = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if w + cw + 1 > width {
            break;
        }
        w += cw;
        out.push(c);
    }
    out.push('…');
    out
}

/// The lines of one entry at `width`, from the cache when possible.
pub(crate) fn entry_lines<'a>(
    entry: &'a Entry,
    width: u16,
    pal: &Palette,
    tick: u64,
) -> std::cell::Ref<'a, Rendered> {
    let running = matches!(&entry.kind, EntryKind::Tool(t) if t.state == ToolState::Running);
    let key = if running {
        tick % SPINNER.len() as u64
    } else {
        0
    };
    {
        let cache = entry.cache.borrow();
        if cache
            .as_ref()
            .is_some_and(|c| c.width == width && c.key == key)
        {
            return std::cell::Ref::map(cache, |c| c.as_ref().unwrap_or_else(|| unreachable!()));
        }
    }
    let lines = render_entry(entry, width as usize, pal, tick);
    *entry.cache.borrow_mut() = Some(Rendered { width, key, lines });
    std::cell::Ref::map(entry.cache.borrow(), |c| {
        c.as_ref().unwrap_or_else(|| unreachable!())
    })
}

fn render_entry(entry: &Entry, width: usize, pal: &Palette, tick: u64) -> Vec<Line<'static>> {
    let mut out = Vec::new();
    let indent = || vec![Span::raw("   ")];
    match &entry.kind {
        EntryKind::User(text) => {
            let first = vec![
                Span::raw("👤 "),
                Span::styled(format!("[{}] ", entry.time), pal.dim),
                Span::styled("You: ", pal.user),
            ];
            wrap_plain(&mut out, text, pal.text, first, indent(), width);
        }
        EntryKind::Assistant(text) => {
            out.push(Line::from(vec![
                Span::raw("🤖 "),
                Span::styled(format!("[{}] ", entry.time), pal.dim),
                Span::styled("Assistant:", pal.assistant),
            ]));
            // A fence being streamed shows as a lone ` or `` for a moment: hide it.
            let text = match text.rsplit_once('\n') {
                Some((head, last)) if matches!(last.trim(), "`" | "``") => head,
                _ => text.as_str(),
            };
            for line in markdown::render(text, width.saturating_sub(3), pal) {
                let mut spans = indent();
                spans.extend(line.spans);
                out.push(Line::from(spans));
            }
        }
        EntryKind::Tool(t) => {
            let (mark, style) = match t.state {
                ToolState::Running => (spinner(tick), pal.warn),
                ToolState::Ok => ("✓", pal.good),
                ToolState::Error => ("✗", pal.bad),
                ToolState::Denied => ("✗", pal.warn),
            };
            let mut first = vec![
                Span::styled(format!("{mark} "), style),
                Span::styled(t.name.clone(), style.add_modifier(Modifier::BOLD)),
            ];
            if !t.summary.is_empty() {
                first.push(Span::raw(" "));
            }
            let mut tail = vec![Span::styled(t.summary.clone(), pal.accent)];
            match t.state {
                ToolState::Running => tail.push(Span::styled(" running…", pal.dim)),
                ToolState::Denied => tail.push(Span::styled(" (denied)", pal.warn)),
                _ => tail.push(Span::styled(
                    format!(" ({})", fmt_duration(t.duration_ms)),
                    pal.dim,
                )),
            }
            wrap_into(&mut out, first, indent(), tail, width, false);
            let output = t.output.trim_end();
            if !output.is_empty() && t.state != ToolState::Running {
                let out_style = if t.state == ToolState::Error {
                    pal.bad
                } else {
                    pal.dim
                };
                let total = output.lines().count();
                for line in output.lines().take(FOLDED_OUTPUT) {
                    let line = line.replace('\t', "    ");
                    out.push(Line::from(vec![
                        Span::styled("   │ ", pal.dim),
                        Span::styled(truncate_width(&line, width.saturating_sub(5)), out_style),
                    ]));
                }
                if total > FOLDED_OUTPUT {
                    out.push(Line::from(Span::styled(
                        format!("   … {} more lines", total - FOLDED_OUTPUT),
                        pal.dim,
                    )));
                }
            }
        }
        EntryKind::Error(text) => {
            let first = vec![Span::styled(
                "✗ Error: ",
                pal.bad.add_modifier(Modifier::BOLD),
            )];
            wrap_plain(&mut out, text, pal.bad, first, indent(), width);
        }
        EntryKind::Notice(text) => {
            let first = vec![Span::styled("ℹ ", pal.accent)];
            wrap_plain(&mut out, text, pal.dim, first, vec![Span::raw("  ")], width);
        }
    }
    out
}

fn draw_conversation(frame: &mut Frame, app: &App, area: Rect) {
    let pal = &app.pal;
    let focused = app.focus == Focus::Conversation;
    let mut block = panel(app, " 💬 Conversation ", focused, app.is_busy());
    let inner = block.inner(area);
    let width = inner.width.max(1);
    let height = inner.height as usize;

    let mut view = app.view.get();
    view.conv_height = height;
    view.conv_width = width;

    if app.entries.is_empty() {
        view.conv_max_scroll = Some(0);
        app.view.set(view);
        frame.render_widget(block, area);
        let text = vec![
            Line::from(""),
            Line::from(Span::styled("Welcome to Safe Coder", pal.title)),
            Line::from(""),
            Line::from(Span::styled(
                "The agent works on a sandboxed copy of your project;",
                pal.dim,
            )),
            Line::from(Span::styled(
                "your files change only when you accept its changes.",
                pal.dim,
            )),
            Line::from(""),
            Line::from(vec![
                Span::styled("/help", pal.accent),
                Span::styled(" commands  ", pal.dim),
                Span::styled("@path", pal.accent),
                Span::styled(" attach a file  ", pal.dim),
                Span::styled("!cmd", pal.accent),
                Span::styled(" run a command", pal.dim),
            ]),
        ];
        frame.render_widget(
            Paragraph::new(text)
                .alignment(Alignment::Center)
                .wrap(ratatui::widgets::Wrap { trim: true }),
            inner,
        );
        return;
    }

    // Walk back from the newest entry until the window (plus the scroll offset) is
    // filled: only those entries are rendered.
    let want = height + app.scroll;
    let mut chunks: Vec<(usize, std::cell::Ref<'_, Rendered>)> = Vec::new();
    let mut collected = 0usize;
    let mut reached_top = true;
    for (i, entry) in app.entries.iter().enumerate().rev() {
        if collected >= want {
            reached_top = false;
            break;
        }
        let r = entry_lines(entry, width, pal, app.tick);
        collected += r.lines.len() + usize::from(i > 0);
        chunks.push((i, r));
    }
    let scroll = if reached_top {
        let max = collected.saturating_sub(height);
        view.conv_max_scroll = Some(max);
        app.scroll.min(max)
    } else {
        view.conv_max_scroll = None;
        app.scroll
    };
    app.view.set(view);

    // Lines from the bottom: skip `scroll`, take `height`.
    let mut lines: Vec<Line<'static>> = Vec::with_capacity(height);
    let mut skip = scroll;
    'outer: for (i, r) in &chunks {
        let sep = usize::from(*i > 0);
        for line in r.lines.iter().rev() {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            lines.push(line.clone());
            if lines.len() >= height {
                break 'outer;
            }
        }
        if sep == 1 {
            if skip > 0 {
                skip -= 1;
            } else {
                lines.push(Line::from(""));
                if lines.len() >= height {
                    break;
                }
            }
        }
    }
    lines.reverse();
    if scroll > 0 {
        block = block.title_bottom(
            Line::from(Span::styled(
                format!(" ↓ {scroll} more lines (End) "),
                pal.accent2,
            ))
            .alignment(Alignment::Right),
        );
    }
    frame.render_widget(block, area);
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_status(frame: &mut Frame, app: &App, area: Rect) {
    let pal = &app.pal;
    let block = panel(app, " 🔥 Sandbox ", false, false);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let w = inner.width as usize;
    let mut lines: Vec<Line> = Vec::new();
    let kv = |icon: &'static str, k: &'static str, v: String, style: Style| {
        Line::from(vec![
            Span::raw(icon),
            Span::styled(k, pal.dim),
            Span::styled(v, style),
        ])
    };
    match &app.status {
        Some(s) => {
            let (icon, style) = match s.state {
                SandboxState::Running => ("🟢 ", pal.good),
                SandboxState::Preparing => ("🟡 ", pal.warn),
                SandboxState::Stopped => ("⚪ ", pal.dim),
                SandboxState::Failed => ("🔴 ", pal.bad),
            };
            lines.push(kv(icon, "Status: ", capitalize(s.state.as_str()), style));
            lines.push(kv("📦 ", "Backend: ", s.backend.clone(), pal.accent));
            lines.push(kv("⌛ ", "Uptime: ", fmt_uptime(s.uptime_secs), pal.text));
            let mem = match (s.memory_used_mb, s.memory_limit_mb) {
                (Some(u), Some(l)) => format!("{u}/{l} MB"),
                (None, Some(l)) => format!("{l} MB"),
                (Some(u), None) => format!("{u} MB used"),
                (None, None) => "no limit".to_string(),
            };
            lines.push(kv("💾 ", "Memory: ", mem, pal.text));
            let cpus = match s.cpus {
                Some(c) if c.fract() == 0.0 => format!("{c:.0}"),
                Some(c) => format!("{c:.1}"),
                None => "no limit".to_string(),
            };
            lines.push(kv("⚡ ", "CPUs: ", cpus, pal.text));
            if let Some(p) = s.cpu_percent {
                lines.push(kv("📊 ", "CPU: ", format!("{p:.1}%"), pal.accent2));
            }
        }
        None => lines.push(kv("⏳ ", "Status: ", "starting…".to_string(), pal.warn)),
    }
    if !app.config.model.is_empty() {
        let m = format!("{}/{}", app.config.provider, app.config.model);
        lines.push(kv(
            "🤖 ",
            "",
            truncate_width(&m, w.saturating_sub(3)),
            pal.accent,
        ));
    }
    if let Some(u) = app.usage {
        // At most 28 columns ("Tokens: 999.9k in/999.9k out"): the panel's inner width,
        // so the line is never cut.
        lines.push(kv(
            "",
            "Tokens: ",
            format!(
                "{} in/{} out",
                fmt_count(u.input_tokens),
                fmt_count(u.output_tokens)
            ),
            pal.text,
        ));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn fmt_count(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else if n >= 1000 {
        format!("{:.1}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

fn fmt_uptime(secs: u64) -> String {
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m {}s", secs / 60, secs % 60)
    } else {
        format!("{}h {:02}m", secs / 3600, (secs / 60) % 60)
    }
}

fn draw_tools(frame: &mut Frame, app: &App, area: Rect) {
    let pal = &app.pal;
    let block = panel(app, " 🔧 Recent Tools ", app.focus == Focus::Tools, false);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let height = inner.height as usize;
    let mut view = app.view.get();
    view.tools_height = height;
    view.tools_max_scroll = app.recent.len().saturating_sub(height);
    app.view.set(view);
    let w = inner.width as usize;
    let lines: Vec<Line> = app
        .recent
        .iter()
        .skip(app.tools_scroll.min(view.tools_max_scroll))
        .take(height)
        .map(|r| {
            let (mark, style) = match r.state {
                ToolState::Running => (spinner(app.tick), pal.warn),
                ToolState::Ok => ("✓", pal.good),
                ToolState::Error => ("✗", pal.bad),
                ToolState::Denied => ("✗", pal.warn),
            };
            let dur = match r.state {
                ToolState::Running => String::new(),
                ToolState::Denied => "denied".to_string(),
                _ => fmt_duration(r.duration_ms),
            };
            let name_w = w.saturating_sub(3 + dur.width());
            let name = truncate_width(&r.name, name_w);
            let pad = w.saturating_sub(2 + name.width() + dur.width());
            Line::from(vec![
                Span::styled(format!("{mark} "), style),
                Span::styled(name, pal.text),
                Span::raw(" ".repeat(pad)),
                Span::styled(dur, pal.dim),
            ])
        })
        .collect();
    if lines.is_empty() {
        frame.render_widget(Paragraph::new(Span::styled("none yet", pal.dim)), inner);
    } else {
        frame.render_widget(Paragraph::new(lines), inner);
    }
}

fn draw_input(frame: &mut Frame, app: &App, area: Rect) {
    let pal = &app.pal;
    let mut block = panel(app, "", app.focus == Focus::Input, false);
    if !app.completions.is_empty() {
        let list = app.completions.join("  ");
        let list = truncate_width(&list, area.width.saturating_sub(4) as usize);
        block = block.title(Span::styled(format!(" {list} "), pal.accent2));
    }
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let prompt = Span::styled("❯ ", pal.accent2.add_modifier(Modifier::BOLD));
    let avail = (inner.width as usize).saturating_sub(3);
    if app.input.is_empty() {
        let hint = if app.is_busy() {
            "the agent is working… (^C to cancel)"
        } else {
            "Type a message, /help, @file or !command"
        };
        frame.render_widget(
            Paragraph::new(Line::from(vec![
                prompt,
                Span::styled(truncate_width(hint, avail), pal.dim),
            ])),
            inner,
        );
        if app.modal.is_none() {
            frame.set_cursor_position(Position::new(inner.x + 2, inner.y));
        }
        return;
    }
    // Newlines are shown as ⏎ so the input stays one row.
    let chars: Vec<char> = app
        .input
        .chars()
        .map(|c| if c == '\n' { '⏎' } else { c })
        .collect();
    let before: String = chars[..app.cursor.min(chars.len())].iter().collect();
    // Keep the cursor visible: drop text from the left when it would overflow.
    let before_w = before.width();
    let (shown_from, offset_w) = if before_w >= avail {
        let tail = tail_by_width(&before, avail.saturating_sub(1));
        (before.len() - tail.len(), tail.width())
    } else {
        (0, before_w)
    };
    let full: String = chars.iter().collect();
    let shown = truncate_width(&full[shown_from..], avail + 1);
    frame.render_widget(
        Paragraph::new(Line::from(vec![prompt, Span::styled(shown, pal.text)])),
        inner,
    );
    if app.modal.is_none() {
        let x = inner.x + 2 + offset_w as u16;
        frame.set_cursor_position(Position::new(
            x.min(inner.right().saturating_sub(1)),
            inner.y,
        ));
    }
}

fn draw_footer(frame: &mut Frame, app: &App, area: Rect) {
    let pal = &app.pal;
    let sep = Span::styled(" │ ", pal.dim);
    let (status, style) = match (&app.busy, app.quitting) {
        (Busy::Idle, true) => ("Exiting…".to_string(), pal.warn),
        (Busy::Idle, false) => ("● Ready".to_string(), pal.good),
        (Busy::Thinking, _) => (format!("{} Thinking…", spinner(app.tick)), pal.accent2),
        (Busy::Tool(name), _) => (format!("{} Running {name}…", spinner(app.tick)), pal.warn),
        (Busy::Cancelling, _) => (format!("{} Cancelling…", spinner(app.tick)), pal.warn),
    };
    let status_w = status.width() + 1;
    let mode = app.config.approval_mode.as_str();
    let exit = if app.is_busy() { " Cancel" } else { " Exit" };
    // The longest key help that fits next to the status.
    let levels: [[&'static str; 4]; 3] = [
        [exit, " Scroll", " Switch Panel", " Mode: "],
        [exit, " Scroll", " Panel", " "],
        ["", "", "", " "],
    ];
    let keys_of = |labels: &[&'static str; 4]| -> Vec<Span<'static>> {
        let mut keys: Vec<Span> = vec![Span::raw(" ")];
        for (k, v) in ["^C", "↑↓", "Tab"].iter().zip(labels) {
            keys.push(Span::styled(*k, pal.accent));
            keys.push(Span::styled(*v, pal.dim));
            keys.push(sep.clone());
        }
        keys.push(Span::styled("⇧Tab", pal.accent));
        keys.push(Span::styled(format!("{}{mode}", labels[3]), pal.dim));
        keys
    };
    let avail = (area.width as usize).saturating_sub(status_w);
    let keys = levels
        .iter()
        .map(keys_of)
        .find(|k| markdown::width_of(k) <= avail)
        .unwrap_or_else(|| keys_of(&levels[2]));
    let cols = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Min(1), Constraint::Length(status_w as u16)])
        .split(area);
    frame.render_widget(Paragraph::new(Line::from(keys)), cols[0]);
    frame.render_widget(
        Paragraph::new(Span::styled(status, style)).alignment(Alignment::Right),
        cols[1],
    );
}

/// Clears the dialog's area plus one column on each side: a wide character (emoji)
/// starting just left of the dialog would otherwise spill over its border.
fn clear_around(frame: &mut Frame, rect: Rect, style: Style) {
    let area = frame.area();
    let x = rect.x.saturating_sub(1).max(area.x);
    let right = (rect.right() + 1).min(area.right());
    frame.render_widget(Clear, Rect::new(x, rect.y, right - x, rect.height));
    frame.render_widget(
        Block::new().style(style),
        Rect::new(x, rect.y, right - x, rect.height),
    );
}

fn centered(area: Rect, w_pct: u16, h_pct: u16, min_w: u16, min_h: u16) -> Rect {
    let w = (area.width * w_pct / 100).max(min_w).min(area.width);
    let h = (area.height * h_pct / 100).max(min_h).min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn draw_message_box(
    frame: &mut Frame,
    app: &App,
    area: Rect,
    title: &str,
    text: &str,
    hint: Option<&str>,
) {
    let pal = &app.pal;
    let w = (area.width * 70 / 100).max(40).min(area.width);
    let mut lines = Vec::new();
    wrap_plain(
        &mut lines,
        text.trim_end(),
        pal.text,
        vec![],
        vec![],
        w.saturating_sub(4) as usize,
    );
    if let Some(h) = hint {
        lines.push(Line::from(""));
        lines.push(Line::from(Span::styled(h.to_string(), pal.dim)));
    }
    let h = (lines.len() as u16 + 2).min(area.height);
    let rect = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    clear_around(frame, rect, pal.text);
    let block = Block::new()
        .borders(Borders::ALL)
        .border_type(BorderType::Double)
        .border_style(pal.border_focus)
        .title(Span::styled(title.to_string(), pal.title))
        .style(pal.text);
    let inner = block.inner(rect);
    frame.render_widget(block, rect);
    let inner = Rect {
        x: inner.x + 1,
        width: inner.width.saturating_sub(1),
        ..inner
    };
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_approval(frame: &mut Frame, app: &App, a: &ApprovalState, area: Rect) {
    let pal = &app.pal;
    // The dialog is as wide as 80% of the screen and as tall as its content needs.
    let outer_w = (area.width * 80 / 100).max(56).min(area.width);
    let w = outer_w.saturating_sub(4) as usize;
    let mut head: Vec<Line> = Vec::new();
    let mut body: Vec<Line<'static>> = Vec::new();
    match &a.request.subject {
        ApprovalSubject::FileChange { path, diff } => {
            head.push(Line::from(vec![
                Span::styled("The agent wants to change ", pal.text),
                Span::styled(
                    escape_control(path).into_owned(),
                    pal.accent.add_modifier(Modifier::BOLD),
                ),
                Span::styled(":", pal.text),
            ]));
            let lang = Lang::from_path(path);
            let mut h = Highlighter::default();
            for line in escape_control_multiline(diff).lines() {
                let line = line.replace('\t', "    ");
                body.push(diff_line(&line, lang, &mut h, pal, w));
            }
            if body.is_empty() {
                body.push(Line::from(Span::styled("(no textual change)", pal.dim)));
            }
        }
        ApprovalSubject::Command { command } => {
            head.push(Line::from(Span::styled(
                "The agent wants to run:",
                pal.text,
            )));
            let mut h = Highlighter::default();
            for (i, line) in command.lines().enumerate() {
                let first = vec![Span::styled(if i == 0 { "$ " } else { "  " }, pal.accent2)];
                wrap_into(
                    &mut body,
                    first,
                    vec![Span::raw("  ")],
                    h.line(Lang::Bash, line, pal),
                    w,
                    true,
                );
            }
        }
    }
    head.push(Line::from(""));

    let footer: Vec<Line> = match &a.reason {
        Some(reason) => vec![
            Line::from(Span::styled(
                "Why not? (Enter to send, Esc to go back)",
                pal.dim,
            )),
            Line::from(vec![
                Span::styled("Reason: ", pal.accent2),
                Span::styled(reason.clone(), pal.text),
            ]),
        ],
        None => {
            let key = |k: &'static str, v: String| {
                vec![
                    Span::styled(k, pal.selected),
                    Span::styled(v, pal.text),
                    Span::raw("  "),
                ]
            };
            let mut spans = Vec::new();
            spans.extend(key(" y ", " Yes".into()));
            spans.extend(key(" n ", " No".into()));
            spans.extend(key(" a ", format!(" Always for {}", a.request.tool_name)));
            spans.extend(key(" r ", " No, with a reason".into()));
            let mut lines = Vec::new();
            wrap_into(&mut lines, vec![], vec![], spans, w, false);
            lines
        }
    };
    let chrome = head.len() + footer.len() + 1 + 2;
    let max_h = (area.height as usize * 85 / 100)
        .max(12)
        .min(area.height as usize);
    let outer_h = (chrome + body.len()).clamp(10.min(max_h), max_h) as u16;
    let rect = centered(area, 0, 0, outer_w, outer_h);
    clear_around(frame, rect, pal.text);
    let title = format!(" ⚠ Approval required: {} ", a.request.tool_name);
    let block = Block::new()
        .borders(Borders::ALL)
        .border_type(BorderType::Double)
        .border_style(if pal.plain {
            pal.border_focus
        } else {
            pal.warn.add_modifier(Modifier::BOLD)
        })
        .title(Span::styled(title, pal.warn.add_modifier(Modifier::BOLD)))
        .style(pal.text);
    let inner = block.inner(rect);
    frame.render_widget(block, rect);
    let inner = Rect {
        x: inner.x + 1,
        width: inner.width.saturating_sub(2),
        ..inner
    };
    let body_h = (inner.height as usize).saturating_sub(head.len() + footer.len() + 1);
    let max = body.len().saturating_sub(body_h);
    let mut view = app.view.get();
    view.diff_height = body_h;
    view.diff_max_scroll = max;
    app.view.set(view);
    let scroll = a.scroll.min(max);
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(head.len() as u16),
            Constraint::Length(body_h as u16),
            Constraint::Length(1),
            Constraint::Min(footer.len() as u16),
        ])
        .split(inner);
    frame.render_widget(Paragraph::new(head), rows[0]);
    let shown: Vec<Line> = body.into_iter().skip(scroll).take(body_h).collect();
    frame.render_widget(Paragraph::new(shown), rows[1]);
    if max > 0 {
        let more = format!(
            "↑↓ scroll ({}/{} lines)",
            (scroll + body_h).min(max + body_h),
            max + body_h
        );
        frame.render_widget(
            Paragraph::new(Span::styled(more, pal.dim)).alignment(Alignment::Right),
            rows[2],
        );
    }
    frame.render_widget(Paragraph::new(footer.clone()), rows[3]);
    if let Some(reason) = &a.reason {
        let x = rows[3].x + 8 + reason.width() as u16;
        frame.set_cursor_position(Position::new(
            x.min(rows[3].right().saturating_sub(1)),
            rows[3].y + 1,
        ));
    }
}

fn kind_letter(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Added => "A",
        ChangeKind::Modified => "M",
        ChangeKind::Deleted => "D",
        ChangeKind::ModeChanged => "X",
    }
}

fn draw_review(frame: &mut Frame, app: &App, r: &ReviewState, area: Rect) {
    let pal = &app.pal;
    let files = &r.data.changes.files;
    let accepted = r.accepted_paths().len();
    let title = format!(
        " 📋 Review changes: {} file(s), {} accepted ",
        files.len(),
        accepted
    );
    let block = Block::new()
        .borders(Borders::ALL)
        .border_type(BorderType::Double)
        .border_style(pal.border_focus)
        .title(Span::styled(title, pal.title))
        .style(pal.text);
    let inner = block.inner(area);
    frame.render_widget(block, area);

    let help_spans = vec![
        Span::styled("↑↓", pal.accent),
        Span::styled(" Select  ", pal.dim),
        Span::styled("Space", pal.accent),
        Span::styled(" Toggle  ", pal.dim),
        Span::styled("a", pal.accent),
        Span::styled(" Accept all  ", pal.dim),
        Span::styled("r", pal.accent),
        Span::styled(" Reject all  ", pal.dim),
        Span::styled("Enter", pal.accent),
        Span::styled(" Sync accepted  ", pal.dim),
        Span::styled("Esc", pal.accent),
        Span::styled(" Keep for later", pal.dim),
    ];
    let mut help = Vec::new();
    wrap_into(
        &mut help,
        vec![Span::raw(" ")],
        vec![Span::raw(" ")],
        help_spans,
        inner.width as usize,
        false,
    );
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Min(3), Constraint::Length(help.len() as u16)])
        .split(inner);
    frame.render_widget(Paragraph::new(help), rows[1]);

    let wide = area.width >= WIDE;
    let (list_area, diff_area) = if wide {
        let list_w = (rows[0].width * 2 / 5).clamp(30, 60);
        let c = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Length(list_w), Constraint::Min(10)])
            .split(rows[0]);
        (c[0], c[1])
    } else {
        let list_h = (files.len() as u16 * 2 + 2).min(rows[0].height / 3).max(4);
        let c = Layout::default()
            .direction(Direction::Vertical)
            .constraints([Constraint::Length(list_h), Constraint::Min(3)])
            .split(rows[0]);
        (c[0], c[1])
    };

    // File list.
    let list_block = Block::new()
        .borders(Borders::ALL)
        .border_type(BorderType::Rounded)
        .border_style(pal.border)
        .title(Span::styled(" Files ", pal.title));
    let list_inner = list_block.inner(list_area);
    frame.render_widget(list_block, list_area);
    let lw = list_inner.width as usize;
    let mut lines: Vec<Line> = Vec::new();
    let mut selected_row = 0;
    for (i, f) in files.iter().enumerate() {
        let sel = i == r.selected;
        if sel {
            selected_row = lines.len();
        }
        let mark = if f.conflict {
            "⚠  "
        } else if r.accepted.get(i).copied().unwrap_or(false) {
            "[✓]"
        } else {
            "[ ]"
        };
        let counts = format!(" +{} -{}", f.additions, f.deletions);
        let kind = kind_letter(f.kind);
        let path_w = lw.saturating_sub(6 + counts.width());
        let path = truncate_width(&escape_control(&f.path), path_w);
        let pad = lw.saturating_sub(6 + path.width() + counts.width());
        let base = if sel { pal.selected } else { Style::new() };
        let mark_style = if f.conflict {
            pal.bad
        } else if r.accepted.get(i).copied().unwrap_or(false) {
            pal.good
        } else {
            pal.dim
        };
        let kind_style = match f.kind {
            ChangeKind::Added => pal.good,
            ChangeKind::Deleted => pal.bad,
            _ => pal.warn,
        };
        lines.push(Line::from(vec![
            Span::styled(mark, mark_style.patch(base)),
            Span::styled(format!(" {kind} "), kind_style.patch(base)),
            Span::styled(path, pal.text.patch(base)),
            Span::styled(" ".repeat(pad), base),
            Span::styled(format!("+{}", f.additions), pal.diff_add.patch(base)),
            Span::styled(format!(" -{}", f.deletions), pal.diff_del.patch(base)),
        ]));
        if f.conflict {
            lines.push(Line::from(Span::styled(
                truncate_width("    ⚠ conflict: cannot be synced", lw),
                pal.bad,
            )));
        }
        if f.needs_second_look() {
            let why = if f.is_symlink {
                "    ⚠ symlink: check where it points"
            } else {
                "    ⚠ steers the next session"
            };
            lines.push(Line::from(Span::styled(truncate_width(why, lw), pal.warn)));
        }
    }
    if files.is_empty() {
        lines.push(Line::from(Span::styled("No changes.", pal.dim)));
    }
    let lh = list_inner.height as usize;
    let list_scroll = (selected_row + 2).saturating_sub(lh);
    let shown: Vec<Line> = lines.into_iter().skip(list_scroll).take(lh).collect();
    frame.render_widget(Paragraph::new(shown), list_inner);

    // Diff of the selected file.
    let sel_file = files.get(r.selected);
    let diff_title = match sel_file {
        Some(f) => format!(" {} ({}) ", escape_control(&f.path), f.kind.as_str()),
        None => " Diff ".to_string(),
    };
    let diff_block = Block::new()
        .borders(Borders::ALL)
        .border_type(BorderType::Rounded)
        .border_style(pal.border)
        .title(Span::styled(diff_title, pal.accent));
    let diff_inner = diff_block.inner(diff_area);
    frame.render_widget(diff_block, diff_area);
    let dw = diff_inner.width as usize;
    let dh = diff_inner.height as usize;
    let mut body: Vec<Line> = Vec::new();
    if let Some(f) = sel_file {
        if f.conflict {
            wrap_plain(
                &mut body,
                "This file changed on the host since the session began: it cannot be synced.",
                pal.bad,
                vec![Span::styled("⚠ ", pal.bad)],
                vec![Span::raw("  ")],
                dw,
            );
            body.push(Line::from(""));
        }
        match r.data.diffs.get(&f.path) {
            Some(diff) => {
                let lang = Lang::from_path(&f.path);
                let mut h = Highlighter::default();
                for line in escape_control_multiline(diff).lines() {
                    let line = line.replace('\t', "    ");
                    body.push(diff_line(&line, lang, &mut h, pal, dw));
                }
            }
            None => body.push(Line::from(Span::styled(
                match f.kind {
                    ChangeKind::ModeChanged => "Only the executable bit changed.",
                    _ => "(no diff available)",
                },
                pal.dim,
            ))),
        }
    }
    let max = body.len().saturating_sub(dh);
    let mut view = app.view.get();
    view.diff_height = dh;
    view.diff_max_scroll = max;
    app.view.set(view);
    let shown: Vec<Line> = body
        .into_iter()
        .skip(r.diff_scroll.min(max))
        .take(dh)
        .collect();
    frame.render_widget(Paragraph::new(shown), diff_inner);
}

/// One diff line: the +/- colour for the marker, the code after it highlighted.
fn diff_line(
    line: &str,
    lang: Lang,
    h: &mut Highlighter,
    pal: &Palette,
    width: usize,
) -> Line<'static> {
    let line = truncate_width(line, width);
    let is_header = line.starts_with("+++")
        || line.starts_with("---")
        || line.starts_with("@@")
        || line.starts_with("diff ")
        || line.starts_with("index ");
    if is_header || lang == Lang::Unknown || pal.plain {
        return Line::from(Span::styled(line.clone(), diff_style(&line, pal)));
    }
    let (marker, rest) = match line.chars().next() {
        Some(c @ ('+' | '-' | ' ')) => (c.to_string(), &line[1..]),
        _ => (String::new(), line.as_str()),
    };
    let mstyle = diff_style(&line, pal);
    let mut spans = vec![Span::styled(
        marker.clone(),
        mstyle.add_modifier(Modifier::BOLD),
    )];
    let code = h.line(lang, rest, pal);
    let tint = match marker.as_str() {
        "+" => Some(pal.diff_add),
        "-" => Some(pal.diff_del),
        _ => None,
    };
    for mut s in code {
        // Added and removed lines keep the +/- colour for plain text so the diff
        // reads at a glance; keywords and strings keep their own colour.
        s.style = s.style.bg(ratatui::style::Color::Reset);
        if let Some(t) = tint {
            if s.style.fg == pal.code.fg {
                s.style = s.style.patch(t);
            }
        }
        spans.push(s);
    }
    Line::from(spans)
}
