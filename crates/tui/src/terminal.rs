//! The real terminal: raw mode, alternate screen, mouse, the event loop, and restoring
//! the terminal on every way out (return, panic, SIGTERM/SIGHUP).

use std::io::{self, Stdout};
use std::sync::Once;
use std::time::Duration;

use crossterm::event::{
    DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture,
    Event as TermEvent, EventStream,
};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use futures_util::StreamExt;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::{draw, App, Theme, TuiConfig, UiAction, UiInput};

/// Animation step while something moves: 8 frames per second.
const TICK: Duration = Duration::from_millis(125);

/// Leaves raw mode and the alternate screen. Safe to call more than once.
fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(
        io::stdout(),
        DisableMouseCapture,
        DisableBracketedPaste,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// Restores the terminal when dropped, so every early return and `?` is covered.
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Runs the UI on the real terminal until the lead drops the [`UiInput`] sender or
/// the user closes the UI (after the final sync result). The terminal is restored on
/// exit, on panic and on SIGTERM/SIGHUP.
///
/// Draws happen only when the state changed, or on an animation tick (8 fps) while a
/// spinner or a pulsing border is shown; an idle UI blocks on input and draws nothing.
pub async fn run(
    mut config: TuiConfig,
    mut inputs: UnboundedReceiver<UiInput>,
    actions: UnboundedSender<UiAction>,
) -> io::Result<()> {
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        config.theme = Theme::Plain;
    }
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;

    install_panic_hook();
    enable_raw_mode()?;
    let _guard = Guard;
    execute!(
        io::stdout(),
        EnterAlternateScreen,
        EnableMouseCapture,
        EnableBracketedPaste
    )?;
    let mut terminal: Terminal<CrosstermBackend<Stdout>> =
        Terminal::new(CrosstermBackend::new(io::stdout()))?;
    terminal.clear()?;

    let mut app = App::new(config);
    let mut events = EventStream::new();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut inputs_open = true;

    loop {
        if app.needs_redraw() {
            terminal.draw(|f| draw(f, &app))?;
            app.mark_drawn();
        }
        if app.is_finished() || (!inputs_open && !app.input_closed()) {
            break;
        }
        let animating = app.is_animating();
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(ev)) => handle_terminal_event(&mut app, ev, &actions),
                Some(Err(e)) => return Err(e),
                None => break,
            },
            input = inputs.recv(), if inputs_open => match input {
                Some(input) => {
                    app.handle_input(input);
                    // Drain what is already queued (a burst of text deltas) before
                    // drawing, so a frame is drawn per burst, not per delta.
                    loop {
                        match inputs.try_recv() {
                            Ok(more) => app.handle_input(more),
                            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                                inputs_open = false;
                                break;
                            }
                        }
                    }
                }
                None => inputs_open = false,
            },
            _ = ticker.tick(), if animating => app.tick(),
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
        }
    }
    terminal.show_cursor()?;
    Ok(())
}

fn handle_terminal_event(app: &mut App, ev: TermEvent, actions: &UnboundedSender<UiAction>) {
    match ev {
        TermEvent::Key(key) => {
            if let Some(action) = app.handle_key(key) {
                // The receiver gone means the lead is shutting down; the UI closes
                // when the input channel closes.
                let _ = actions.send(action);
            }
        }
        TermEvent::Mouse(m) => app.handle_mouse(m),
        TermEvent::Paste(text) => app.paste(&text),
        TermEvent::Resize(..) | TermEvent::FocusGained => app.invalidate(),
        TermEvent::FocusLost => {}
    }
}
