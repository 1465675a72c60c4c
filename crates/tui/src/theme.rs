//! Colours. `Cyberpunk` is the neon palette; `Plain` uses no colour at all
//! (only bold/reverse), for `NO_COLOR` and for terminals that render colour badly.

use ratatui::style::{Color, Modifier, Style};

/// Which palette the UI uses (`[ui] theme`): `cyberpunk` or `plain` (serde names; the
/// aliases are those `parse` accepts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Theme {
    #[default]
    #[serde(alias = "neon", alias = "default")]
    Cyberpunk,
    #[serde(alias = "none", alias = "mono")]
    Plain,
}

impl Theme {
    pub fn as_str(self) -> &'static str {
        match self {
            Theme::Cyberpunk => "cyberpunk",
            Theme::Plain => "plain",
        }
    }

    /// Parses `cyberpunk` or `plain` (the config values).
    pub fn parse(s: &str) -> Option<Theme> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cyberpunk" | "neon" | "default" => Some(Theme::Cyberpunk),
            "plain" | "none" | "mono" => Some(Theme::Plain),
            _ => None,
        }
    }
}

/// The resolved styles one frame is drawn with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Palette {
    pub plain: bool,
    pub text: Style,
    pub dim: Style,
    pub title: Style,
    pub accent: Style,
    pub accent2: Style,
    pub good: Style,
    pub bad: Style,
    pub warn: Style,
    pub user: Style,
    pub assistant: Style,
    pub border: Style,
    pub border_focus: Style,
    pub selected: Style,
    pub heading: Style,
    pub inline_code: Style,
    pub code: Style,
    pub keyword: Style,
    pub string: Style,
    pub comment: Style,
    pub number: Style,
    pub ty: Style,
    pub func: Style,
    pub diff_add: Style,
    pub diff_del: Style,
    pub diff_hunk: Style,
    pub link: Style,
}

const BG: Color = Color::Rgb(12, 10, 24);
const CODE_BG: Color = Color::Rgb(24, 20, 44);
const CYAN: Color = Color::Rgb(0, 240, 255);
const MAGENTA: Color = Color::Rgb(255, 46, 200);
const GREEN: Color = Color::Rgb(57, 255, 20);
const RED: Color = Color::Rgb(255, 60, 90);
const YELLOW: Color = Color::Rgb(255, 214, 0);
const VIOLET: Color = Color::Rgb(157, 110, 255);
const FG: Color = Color::Rgb(220, 220, 240);
const DIM: Color = Color::Rgb(120, 118, 150);

/// The colours a busy border cycles through (one step per animation tick).
const PULSE: [Color; 6] = [
    Color::Rgb(0, 240, 255),
    Color::Rgb(80, 170, 255),
    Color::Rgb(157, 110, 255),
    Color::Rgb(255, 46, 200),
    Color::Rgb(157, 110, 255),
    Color::Rgb(80, 170, 255),
];

impl Palette {
    pub fn new(theme: Theme) -> Palette {
        match theme {
            Theme::Cyberpunk => Palette {
                plain: false,
                text: Style::new().fg(FG).bg(BG),
                dim: Style::new().fg(DIM),
                title: Style::new().fg(MAGENTA).add_modifier(Modifier::BOLD),
                accent: Style::new().fg(CYAN),
                accent2: Style::new().fg(MAGENTA),
                good: Style::new().fg(GREEN),
                bad: Style::new().fg(RED),
                warn: Style::new().fg(YELLOW),
                user: Style::new().fg(GREEN).add_modifier(Modifier::BOLD),
                assistant: Style::new().fg(CYAN).add_modifier(Modifier::BOLD),
                border: Style::new().fg(VIOLET),
                border_focus: Style::new().fg(CYAN).add_modifier(Modifier::BOLD),
                selected: Style::new().fg(BG).bg(CYAN).add_modifier(Modifier::BOLD),
                heading: Style::new().fg(MAGENTA).add_modifier(Modifier::BOLD),
                inline_code: Style::new().fg(YELLOW).bg(CODE_BG),
                code: Style::new().fg(FG).bg(CODE_BG),
                keyword: Style::new().fg(MAGENTA).bg(CODE_BG),
                string: Style::new().fg(GREEN).bg(CODE_BG),
                comment: Style::new()
                    .fg(DIM)
                    .bg(CODE_BG)
                    .add_modifier(Modifier::ITALIC),
                number: Style::new().fg(YELLOW).bg(CODE_BG),
                ty: Style::new().fg(CYAN).bg(CODE_BG),
                func: Style::new().fg(Color::Rgb(80, 170, 255)).bg(CODE_BG),
                diff_add: Style::new().fg(GREEN),
                diff_del: Style::new().fg(RED),
                diff_hunk: Style::new().fg(CYAN),
                link: Style::new().fg(CYAN).add_modifier(Modifier::UNDERLINED),
            },
            Theme::Plain => {
                let none = Style::new();
                let bold = Style::new().add_modifier(Modifier::BOLD);
                Palette {
                    plain: true,
                    text: none,
                    dim: none,
                    title: bold,
                    accent: none,
                    accent2: none,
                    good: none,
                    bad: bold,
                    warn: none,
                    user: bold,
                    assistant: bold,
                    border: none,
                    border_focus: bold,
                    selected: Style::new().add_modifier(Modifier::REVERSED),
                    heading: bold,
                    inline_code: none,
                    code: none,
                    keyword: none,
                    string: none,
                    comment: none,
                    number: none,
                    ty: none,
                    func: none,
                    diff_add: none,
                    diff_del: none,
                    diff_hunk: none,
                    link: Style::new().add_modifier(Modifier::UNDERLINED),
                }
            }
        }
    }

    /// The border style of a busy panel at animation step `tick`.
    pub fn pulse(&self, tick: u64) -> Style {
        if self.plain {
            return self.border_focus;
        }
        let c = PULSE[(tick as usize) % PULSE.len()];
        Style::new().fg(c).add_modifier(Modifier::BOLD)
    }
}
