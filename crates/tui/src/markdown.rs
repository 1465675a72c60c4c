//! Markdown to wrapped ratatui lines.
//!
//! The output is already wrapped to the given width, so the conversation view knows
//! each message's exact height and can cache it (see `app::Entry`).

use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Options, Parser, Tag, TagEnd};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use unicode_width::UnicodeWidthChar;

use crate::highlight::{Highlighter, Lang};
use crate::theme::Palette;

/// One logical line before wrapping: what starts its first row, what starts the rows
/// it wraps onto, and its content.
struct Block {
    first: Vec<Span<'static>>,
    cont: Vec<Span<'static>>,
    spans: Vec<Span<'static>>,
    /// Code keeps its spaces and breaks anywhere instead of between words.
    code: bool,
}

struct ListState {
    next: Option<u64>,
}

/// Renders `text` as Markdown into lines at most `width` columns wide.
pub(crate) fn render(text: &str, width: usize, pal: &Palette) -> Vec<Line<'static>> {
    let width = width.max(8);
    let mut opts = Options::empty();
    opts.insert(Options::ENABLE_STRIKETHROUGH);
    opts.insert(Options::ENABLE_TABLES);
    opts.insert(Options::ENABLE_TASKLISTS);
    let parser = Parser::new_ext(text, opts);

    let mut blocks: Vec<Block> = Vec::new();
    let mut styles: Vec<Style> = vec![pal.text];
    let mut cur: Vec<Span<'static>> = Vec::new();
    // Prefix stack (block quotes, list indentation) for continuation rows.
    let mut prefix: Vec<Span<'static>> = Vec::new();
    let mut prefix_stack: Vec<usize> = Vec::new();
    // The marker of a list item, used for its first row only.
    let mut pending_marker: Option<Vec<Span<'static>>> = None;
    let mut lists: Vec<ListState> = Vec::new();
    let mut code: Option<(Lang, String)> = None;
    let mut need_blank = false;
    let mut link_targets: Vec<String> = Vec::new();

    fn flush(
        blocks: &mut Vec<Block>,
        cur: &mut Vec<Span<'static>>,
        prefix: &[Span<'static>],
        pending_marker: &mut Option<Vec<Span<'static>>>,
        force: bool,
    ) {
        if cur.is_empty() && pending_marker.is_none() && !force {
            return;
        }
        let first = match pending_marker.take() {
            Some(m) => m,
            None => prefix.to_vec(),
        };
        blocks.push(Block {
            first,
            cont: prefix.to_vec(),
            spans: std::mem::take(cur),
            code: false,
        });
    }

    let blank = |blocks: &mut Vec<Block>, need_blank: &mut bool, prefix: &[Span<'static>]| {
        if *need_blank && !blocks.is_empty() {
            blocks.push(Block {
                first: prefix.to_vec(),
                cont: prefix.to_vec(),
                spans: Vec::new(),
                code: false,
            });
        }
        *need_blank = false;
    };

    for event in parser {
        let top = *styles.last().unwrap_or(&pal.text);
        match event {
            Event::Start(tag) => match tag {
                Tag::Paragraph if pending_marker.is_none() => {
                    blank(&mut blocks, &mut need_blank, &prefix);
                }
                Tag::Heading { level, .. } => {
                    blank(&mut blocks, &mut need_blank, &prefix);
                    let hashes = match level {
                        HeadingLevel::H1 => "# ",
                        HeadingLevel::H2 => "## ",
                        HeadingLevel::H3 => "### ",
                        _ => "#### ",
                    };
                    cur.push(Span::styled(hashes, pal.heading.patch(pal.dim)));
                    let mut h = pal.heading;
                    if level == HeadingLevel::H1 {
                        h = h.add_modifier(Modifier::UNDERLINED);
                    }
                    styles.push(h);
                }
                Tag::BlockQuote(_) => {
                    flush(&mut blocks, &mut cur, &prefix, &mut pending_marker, false);
                    blank(&mut blocks, &mut need_blank, &prefix);
                    prefix_stack.push(prefix.len());
                    prefix.push(Span::styled("│ ", pal.accent2));
                    styles.push(top.add_modifier(Modifier::ITALIC));
                }
                Tag::CodeBlock(kind) => {
                    flush(&mut blocks, &mut cur, &prefix, &mut pending_marker, false);
                    blank(&mut blocks, &mut need_blank, &prefix);
                    let lang = match kind {
                        CodeBlockKind::Fenced(info) => Lang::from_token(&info),
                        CodeBlockKind::Indented => Lang::Unknown,
                    };
                    code = Some((lang, String::new()));
                }
                Tag::List(start) => {
                    flush(&mut blocks, &mut cur, &prefix, &mut pending_marker, false);
                    if lists.is_empty() {
                        blank(&mut blocks, &mut need_blank, &prefix);
                    }
                    lists.push(ListState { next: start });
                }
                Tag::Item => {
                    flush(&mut blocks, &mut cur, &prefix, &mut pending_marker, false);
                    let marker = match lists.last_mut() {
                        Some(ListState { next: Some(n) }) => {
                            let m = format!("{n}. ");
                            *n += 1;
                            m
                        }
                        _ => match lists.len() {
                            1 => "• ".to_string(),
                            2 => "◦ ".to_string(),
                            _ => "▪ ".to_string(),
                        },
                    };
                    let w = marker.chars().count();
                    let mut first = prefix.clone();
                    first.push(Span::styled(marker, pal.accent2));
                    pending_marker = Some(first);
                    prefix_stack.push(prefix.len());
                    prefix.push(Span::raw(" ".repeat(w)));
                }
                Tag::Emphasis => styles.push(top.add_modifier(Modifier::ITALIC)),
                Tag::Strong => styles.push(top.add_modifier(Modifier::BOLD)),
                Tag::Strikethrough => styles.push(top.add_modifier(Modifier::CROSSED_OUT)),
                Tag::Link { dest_url, .. } => {
                    link_targets.push(dest_url.to_string());
                    styles.push(pal.link);
                }
                Tag::Image { dest_url, .. } => {
                    link_targets.push(dest_url.to_string());
                    cur.push(Span::styled("🖼 ", pal.dim));
                    styles.push(pal.link);
                }
                Tag::Table(_) => {
                    flush(&mut blocks, &mut cur, &prefix, &mut pending_marker, false);
                    blank(&mut blocks, &mut need_blank, &prefix);
                }
                Tag::TableHead => styles.push(top.add_modifier(Modifier::BOLD)),
                Tag::TableRow | Tag::TableCell => {}
                _ => {}
            },
            Event::End(tag) => match tag {
                TagEnd::Paragraph => {
                    flush(&mut blocks, &mut cur, &prefix, &mut pending_marker, false);
                    need_blank = true;
                }
                TagEnd::Heading(_) => {
                    styles.pop();
                    flush(&mut blocks, &mut cur, &prefix, &mut pending_marker, false);
                    need_blank = true;
                }
                TagEnd::BlockQuote(_) => {
                    flush(&mut blocks, &mut cur, &prefix, &mut pending_marker, false);
                    styles.pop();
                    if let Some(n) = prefix_stack.pop() {
                        prefix.truncate(n);
                    }
                    need_blank = true;
                }
                TagEnd::CodeBlock => {
                    if let Some((lang, body)) = code.take() {
                        let mut h = Highlighter::default();
                        let body = body.strip_suffix('\n').unwrap_or(&body);
                        let bar = Span::styled("▎ ", pal.accent2);
                        for line in body.split('\n') {
                            let line = line.replace('\t', "    ");
                            let mut first = prefix.clone();
                            first.push(bar.clone());
                            blocks.push(Block {
                                first: first.clone(),
                                cont: first,
                                spans: h.line(lang, &line, pal),
                                code: true,
                            });
                        }
                    }
                    need_blank = true;
                }
                TagEnd::List(_) => {
                    flush(&mut blocks, &mut cur, &prefix, &mut pending_marker, false);
                    lists.pop();
                    need_blank = true;
                }
                TagEnd::Item => {
                    flush(&mut blocks, &mut cur, &prefix, &mut pending_marker, false);
                    if let Some(n) = prefix_stack.pop() {
                        prefix.truncate(n);
                    }
                    need_blank = false;
                }
                TagEnd::Emphasis | TagEnd::Strong | TagEnd::Strikethrough => {
                    styles.pop();
                }
                TagEnd::Link | TagEnd::Image => {
                    styles.pop();
                    if let Some(url) = link_targets.pop() {
                        let shown: String = cur.iter().map(|s| s.content.as_ref()).collect();
                        if !url.is_empty() && !shown.ends_with(url.as_str()) {
                            cur.push(Span::styled(format!(" ({url})"), pal.dim));
                        }
                    }
                }
                TagEnd::TableCell => cur.push(Span::styled(" │ ", pal.dim)),
                TagEnd::TableHead => {
                    styles.pop();
                    if matches!(cur.last(), Some(s) if s.content == " │ ") {
                        cur.pop();
                    }
                    flush(&mut blocks, &mut cur, &prefix, &mut pending_marker, false);
                }
                TagEnd::TableRow => {
                    if matches!(cur.last(), Some(s) if s.content == " │ ") {
                        cur.pop();
                    }
                    flush(&mut blocks, &mut cur, &prefix, &mut pending_marker, false);
                }
                TagEnd::Table => need_blank = true,
                _ => {}
            },
            Event::Text(t) => {
                if let Some((_, body)) = code.as_mut() {
                    body.push_str(&t);
                } else {
                    cur.push(Span::styled(t.into_string(), top));
                }
            }
            Event::Code(t) => cur.push(Span::styled(t.into_string(), pal.inline_code)),
            Event::InlineMath(t) | Event::DisplayMath(t) => {
                cur.push(Span::styled(t.into_string(), pal.inline_code))
            }
            Event::Html(t) | Event::InlineHtml(t) => {
                if let Some((_, body)) = code.as_mut() {
                    body.push_str(&t);
                } else {
                    let t = t.trim_end_matches('\n').to_string();
                    cur.push(Span::styled(t, pal.dim));
                }
            }
            Event::SoftBreak => cur.push(Span::styled(" ", top)),
            Event::HardBreak => {
                flush(&mut blocks, &mut cur, &prefix, &mut pending_marker, true);
            }
            Event::Rule => {
                flush(&mut blocks, &mut cur, &prefix, &mut pending_marker, false);
                blank(&mut blocks, &mut need_blank, &prefix);
                let w = width.saturating_sub(width_of(&prefix)).min(40);
                blocks.push(Block {
                    first: prefix.clone(),
                    cont: prefix.clone(),
                    spans: vec![Span::styled("─".repeat(w), pal.dim)],
                    code: false,
                });
                need_blank = true;
            }
            Event::TaskListMarker(done) => {
                cur.push(Span::styled(if done { "☑ " } else { "☐ " }, pal.accent));
            }
            Event::FootnoteReference(t) => cur.push(Span::styled(format!("[{t}]"), pal.dim)),
        }
    }
    // Streaming text may stop mid-block: show what there is.
    if let Some((lang, body)) = code.take() {
        let mut h = Highlighter::default();
        for line in body.split('\n') {
            let mut first = prefix.clone();
            first.push(Span::styled("▎ ", pal.accent2));
            blocks.push(Block {
                first: first.clone(),
                cont: first,
                spans: h.line(lang, line, pal),
                code: true,
            });
        }
    }
    flush(&mut blocks, &mut cur, &prefix, &mut pending_marker, false);

    let mut out = Vec::with_capacity(blocks.len());
    for b in blocks {
        wrap_into(&mut out, b.first, b.cont, b.spans, width, b.code);
    }
    out
}

pub(crate) fn width_of(spans: &[Span<'_>]) -> usize {
    spans.iter().map(|s| s.width()).sum()
}

fn char_width(c: char) -> usize {
    if c == '\t' {
        4
    } else {
        c.width().unwrap_or(0)
    }
}

/// Wraps plain `text` (which may contain newlines) in one style.
pub(crate) fn wrap_plain(
    out: &mut Vec<Line<'static>>,
    text: &str,
    style: Style,
    first: Vec<Span<'static>>,
    cont: Vec<Span<'static>>,
    width: usize,
) {
    let mut first = Some(first);
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let f = first.take().unwrap_or_else(|| cont.clone());
        wrap_into(
            out,
            f,
            cont.clone(),
            vec![Span::styled(line.to_string(), style)],
            width,
            false,
        );
    }
}

/// Greedy word wrap of styled spans: each produced row starts with `first` (the first
/// row) or `cont` (the others). `hard` breaks anywhere and keeps all spaces (code).
pub(crate) fn wrap_into(
    out: &mut Vec<Line<'static>>,
    first: Vec<Span<'static>>,
    cont: Vec<Span<'static>>,
    spans: Vec<Span<'static>>,
    width: usize,
    hard: bool,
) {
    let mut row: Vec<Span<'static>> = first;
    let mut row_w = width_of(&row);
    let cont_w = width_of(&cont);
    // Never less than a few columns of content, however deep the prefixes go.
    let width = width.max(cont_w + 4).max(row_w + 4);
    let mut row_has_content = false;
    let mut first_row = true;

    let push_piece = |row: &mut Vec<Span<'static>>, text: &str, style: Style| {
        if let Some(last) = row.last_mut() {
            if last.style == style {
                last.content.to_mut().push_str(text);
                return;
            }
        }
        row.push(Span::styled(text.to_string(), style));
    };

    for span in spans {
        let style = span.style;
        let text = span.content;
        // Split into runs of whitespace / non-whitespace.
        let mut pieces: Vec<&str> = Vec::new();
        if hard {
            pieces.push(&text);
        } else {
            let mut start = 0;
            let mut in_ws: Option<bool> = None;
            for (i, c) in text.char_indices() {
                let ws = c == ' ';
                if in_ws.is_some_and(|w| w != ws) {
                    pieces.push(&text[start..i]);
                    start = i;
                }
                in_ws = Some(ws);
            }
            if start < text.len() {
                pieces.push(&text[start..]);
            }
        }
        for piece in pieces {
            let is_space = !hard && piece.starts_with(' ');
            let pw: usize = piece.chars().map(char_width).sum();
            if is_space {
                // Leading spaces on a wrapped row are dropped (not on the first).
                if !row_has_content && !first_row {
                    continue;
                }
                if row_w + pw > width {
                    // Break here; drop the spaces.
                    out.push(Line::from(std::mem::replace(&mut row, cont.clone())));
                    first_row = false;
                    row_w = cont_w;
                    row_has_content = false;
                    continue;
                }
                push_piece(&mut row, piece, style);
                row_w += pw;
                continue;
            }
            if !hard && row_w + pw <= width {
                push_piece(&mut row, piece, style);
                row_w += pw;
                row_has_content = true;
                continue;
            }
            if !hard && row_has_content && cont_w + pw <= width {
                // The word fits on a fresh row.
                trim_row_end(&mut row);
                out.push(Line::from(std::mem::replace(&mut row, cont.clone())));
                first_row = false;
                row_w = cont_w;
                push_piece(&mut row, piece, style);
                row_w += pw;
                row_has_content = true;
                continue;
            }
            // Break the piece by characters.
            let mut chunk = String::new();
            for c in piece.chars() {
                let cw = char_width(c);
                if row_w + cw > width {
                    if !hard && chunk.is_empty() && row_has_content {
                        trim_row_end(&mut row);
                    }
                    if !chunk.is_empty() {
                        push_piece(&mut row, &chunk, style);
                        chunk.clear();
                    }
                    out.push(Line::from(std::mem::replace(&mut row, cont.clone())));
                    first_row = false;
                    row_w = cont_w;
                }
                if c == '\t' {
                    chunk.push_str("    ");
                } else {
                    chunk.push(c);
                }
                row_w += cw;
                row_has_content = true;
            }
            if !chunk.is_empty() {
                push_piece(&mut row, &chunk, style);
            }
        }
    }
    // Trailing spaces are invisible but could hide a wrap: trim them.
    if let Some(last) = row.last_mut() {
        if !hard && last.content.ends_with(' ') && row_has_content {
            let trimmed = last.content.trim_end().to_string();
            last.content = trimmed.into();
        }
    }
    out.push(Line::from(row));
}

/// Drops the spaces a row ends with (where it was broken between words).
fn trim_row_end(row: &mut [Span<'static>]) {
    if let Some(last) = row.last_mut() {
        if last.content.ends_with(' ') {
            let t = last.content.trim_end().to_string();
            last.content = t.into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::theme::{Palette, Theme};

    fn text_of(lines: &[Line<'_>]) -> Vec<String> {
        lines
            .iter()
            .map(|l| l.spans.iter().map(|s| s.content.as_ref()).collect())
            .collect()
    }

    #[test]
    fn wraps_words_within_width() {
        let pal = Palette::new(Theme::Plain);
        let lines = render("one two three four five six seven", 12, &pal);
        let t = text_of(&lines);
        assert!(t.iter().all(|l| l.chars().count() <= 12), "{t:?}");
        assert_eq!(t.join(" "), "one two three four five six seven");
    }

    #[test]
    fn lists_headings_and_code() {
        let pal = Palette::new(Theme::Plain);
        let md = "# Title\n\n- a\n- b\n\n1. x\n2. y\n\n```rust\nfn main() {}\n```\n";
        let t = text_of(&render(md, 40, &pal));
        assert_eq!(
            t,
            vec![
                "# Title",
                "",
                "• a",
                "• b",
                "",
                "1. x",
                "2. y",
                "",
                "▎ fn main() {}"
            ]
        );
    }

    #[test]
    fn long_words_are_broken() {
        let pal = Palette::new(Theme::Plain);
        let t = text_of(&render(&"x".repeat(25), 10, &pal));
        assert_eq!(t, vec!["x".repeat(10), "x".repeat(10), "x".repeat(5)]);
    }

    #[test]
    fn unclosed_fence_while_streaming() {
        let pal = Palette::new(Theme::Plain);
        let t = text_of(&render("Here:\n```py\nprint(1)", 40, &pal));
        assert_eq!(t, vec!["Here:", "", "▎ print(1)"]);
    }

    #[test]
    fn quotes_tables_nested_lists_and_links() {
        let pal = Palette::new(Theme::Plain);
        let md = "> quoted **text**\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- outer\n  - inner\n\n[site](https://x.org) and ~~old~~\n\n---\n";
        let t = text_of(&render(md, 40, &pal));
        assert_eq!(
            t,
            vec![
                "│ quoted text",
                "",
                "a │ b",
                "1 │ 2",
                "",
                "• outer",
                "  ◦ inner",
                "",
                "site (https://x.org) and old",
                "",
                "────────────────────────────────────────",
            ]
        );
    }
}
