//! One entry point for a line the user typed: a slash command, a `!cmd`, or a prompt.

use crate::custom::CustomCommands;
use crate::shell::parse_shell;
use crate::slash::{parse, SlashCommand, SlashError};

/// What a line of input is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A built-in or custom slash command.
    Slash(SlashCommand),
    /// `!cmd`: the command to run in the sandbox (may be empty for a bare `!`).
    Shell(String),
    /// A prompt for the model (`@path` references not yet expanded). A leading `//` has
    /// become `/`, so a prompt can start with a slash.
    Prompt(String),
}

/// Classifies one line: `!` first, then `/`, else a prompt.
pub fn classify(line: &str, custom: &CustomCommands) -> Result<Input, SlashError> {
    if let Some(cmd) = parse_shell(line) {
        return Ok(Input::Shell(cmd.to_string()));
    }
    if let Some(cmd) = parse(line, custom)? {
        return Ok(Input::Slash(cmd));
    }
    let trimmed = line.trim();
    Ok(Input::Prompt(match trimmed.strip_prefix("//") {
        Some(rest) => format!("/{rest}"),
        None => trimmed.to_string(),
    }))
}
