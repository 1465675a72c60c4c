//! Slash commands: `/help`, `/stats`, `/memory add TEXT`, custom `/git:commit`, ...
//!
//! A line is a slash command when its first non-blank character is `/` and the word
//! after it contains no further `/` (so a prompt that starts with a path such as
//! `/etc/hosts is missing` is not mistaken for a command). `//text` sends `/text` as a
//! plain prompt: [`parse`] returns `None` for it and the caller strips one `/`.

use std::fmt::Write as _;

use safe_coder_protocol::ApprovalMode;

use crate::custom::CustomCommands;
use crate::text::edit_distance;

/// What `/memory` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemoryCmd {
    /// `/memory` or `/memory show`: print the loaded memory files.
    Show,
    /// `/memory add TEXT`: append a bullet to the project's `SAFECODER.md`.
    Add(String),
    /// `/memory refresh`: load the memory files again.
    Refresh,
}

/// A parsed slash command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlashCommand {
    Help,
    Clear,
    Stats,
    Diff,
    Undo,
    /// `/restore [file]`: one file, or everything, back to the last accepted state.
    Restore(Option<String>),
    /// `/snapshot LABEL`.
    Snapshot(String),
    /// `/rollback [snapshot]`.
    Rollback(Option<String>),
    Sync,
    Memory(MemoryCmd),
    /// `/model [NAME]`: show or switch the model.
    Model(Option<String>),
    /// `/approval-mode [MODE]`: show or switch the approval mode.
    ApprovalMode(Option<ApprovalMode>),
    Compress,
    /// `/quit` or `/exit`.
    Quit,
    /// A custom command from a Markdown file; `args` is the rest of the line, trimmed.
    Custom {
        name: String,
        args: String,
    },
}

/// Why a slash line could not be parsed. Each message is one sentence for the user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlashError {
    #[error("type a command after '/'; /help lists them")]
    Empty,
    #[error("unknown command /{name}{}", suggestion_suffix(.suggestion))]
    Unknown {
        name: String,
        suggestion: Option<String>,
    },
    #[error("/{command}: {message} (usage: {usage})")]
    BadArguments {
        command: &'static str,
        message: String,
        usage: &'static str,
    },
}

fn suggestion_suffix(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(": did you mean /{s}?"),
        None => "; /help lists the commands".to_string(),
    }
}

/// A built-in command for `/help` and suggestions.
#[derive(Clone, Copy, Debug)]
pub struct BuiltinCommand {
    pub name: &'static str,
    pub usage: &'static str,
    pub description: &'static str,
}

/// The built-in commands in the order `/help` shows them. `/exit` is an alias of `/quit`.
pub const BUILTIN_COMMANDS: &[BuiltinCommand] = &[
    BuiltinCommand {
        name: "help",
        usage: "/help",
        description: "list the commands",
    },
    BuiltinCommand {
        name: "clear",
        usage: "/clear",
        description: "start a fresh conversation (the sandbox and its changes stay)",
    },
    BuiltinCommand {
        name: "stats",
        usage: "/stats",
        description: "session statistics: duration, messages, tools, tokens, cost",
    },
    BuiltinCommand {
        name: "diff",
        usage: "/diff",
        description: "show the agent's changes not yet synced to your project",
    },
    BuiltinCommand {
        name: "undo",
        usage: "/undo",
        description: "undo the agent's last step",
    },
    BuiltinCommand {
        name: "restore",
        usage: "/restore [file]",
        description: "restore one file (or all) to how it was when the session started",
    },
    BuiltinCommand {
        name: "snapshot",
        usage: "/snapshot LABEL",
        description: "mark the current state with a label to roll back to",
    },
    BuiltinCommand {
        name: "rollback",
        usage: "/rollback [snapshot]",
        description: "go back to a snapshot, by label or commit id (the last snapshot by default)",
    },
    BuiltinCommand {
        name: "sync",
        usage: "/sync",
        description: "review the changes and apply the accepted ones to your project",
    },
    BuiltinCommand {
        name: "memory",
        usage: "/memory [show|add TEXT|refresh]",
        description: "show, add to or reload the memory files (SAFECODER.md, AGENTS.md)",
    },
    BuiltinCommand {
        name: "model",
        usage: "/model [NAME]",
        description: "show or switch the model",
    },
    BuiltinCommand {
        name: "approval-mode",
        usage: "/approval-mode [plan|default|auto-edit|yolo]",
        description: "show or switch what the agent may do without asking",
    },
    BuiltinCommand {
        name: "compress",
        usage: "/compress",
        description: "summarise the conversation now to free context",
    },
    BuiltinCommand {
        name: "quit",
        usage: "/quit",
        description: "end the session (also /exit)",
    },
];

/// Names accepted besides those in [`BUILTIN_COMMANDS`].
const ALIASES: &[(&str, &str)] = &[("exit", "quit")];

/// Parses one input line. `Ok(None)`: not a slash command (send it as a prompt).
pub fn parse(line: &str, custom: &CustomCommands) -> Result<Option<SlashCommand>, SlashError> {
    let trimmed = line.trim();
    let Some(rest) = trimmed.strip_prefix('/') else {
        return Ok(None);
    };
    if rest.starts_with('/') {
        return Ok(None);
    }
    let (name, args) = match rest.find(char::is_whitespace) {
        Some(i) => (&rest[..i], rest[i..].trim()),
        None => (rest, ""),
    };
    if name.is_empty() {
        return Err(SlashError::Empty);
    }
    if name.contains('/') {
        return Ok(None);
    }
    let canonical = ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, target)| target);
    if let Some(cmd) = parse_builtin(canonical, args)? {
        return Ok(Some(cmd));
    }
    if custom.get(name).is_some() {
        return Ok(Some(SlashCommand::Custom {
            name: name.to_string(),
            args: args.to_string(),
        }));
    }
    Err(SlashError::Unknown {
        name: name.to_string(),
        suggestion: closest_command(name, custom),
    })
}

fn parse_builtin(name: &str, args: &str) -> Result<Option<SlashCommand>, SlashError> {
    let Some(spec) = BUILTIN_COMMANDS.iter().find(|c| c.name == name) else {
        return Ok(None);
    };
    let bad = |message: String| SlashError::BadArguments {
        command: spec.name,
        message,
        usage: spec.usage,
    };
    let no_args = |cmd: SlashCommand| {
        if args.is_empty() {
            Ok(cmd)
        } else {
            Err(bad(format!("takes no arguments, got '{args}'")))
        }
    };
    let optional = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let cmd = match spec.name {
        "help" => no_args(SlashCommand::Help)?,
        "clear" => no_args(SlashCommand::Clear)?,
        "stats" => no_args(SlashCommand::Stats)?,
        "diff" => no_args(SlashCommand::Diff)?,
        "undo" => no_args(SlashCommand::Undo)?,
        "sync" => no_args(SlashCommand::Sync)?,
        "compress" => no_args(SlashCommand::Compress)?,
        "quit" => no_args(SlashCommand::Quit)?,
        "restore" => SlashCommand::Restore(optional(args)),
        "rollback" => SlashCommand::Rollback(optional(args)),
        "snapshot" => {
            if args.is_empty() {
                return Err(bad("needs a label".to_string()));
            }
            SlashCommand::Snapshot(args.to_string())
        }
        "memory" => {
            let (action, text) = match args.find(char::is_whitespace) {
                Some(i) => (&args[..i], args[i..].trim()),
                None => (args, ""),
            };
            match action {
                "" | "show" if text.is_empty() => SlashCommand::Memory(MemoryCmd::Show),
                "refresh" if text.is_empty() => SlashCommand::Memory(MemoryCmd::Refresh),
                "show" | "refresh" => {
                    return Err(bad(format!("'{action}' takes no text, got '{text}'")))
                }
                "add" if text.is_empty() => {
                    return Err(bad("'add' needs the text to remember".to_string()))
                }
                "add" => SlashCommand::Memory(MemoryCmd::Add(text.to_string())),
                other => {
                    return Err(bad(format!(
                        "unknown action '{other}': use show, add TEXT or refresh"
                    )))
                }
            }
        }
        "model" => {
            if args.split_whitespace().count() > 1 {
                return Err(bad(format!("takes one model name, got '{args}'")));
            }
            SlashCommand::Model(optional(args))
        }
        "approval-mode" => {
            if args.is_empty() {
                SlashCommand::ApprovalMode(None)
            } else {
                let mode = args.parse::<ApprovalMode>().map_err(bad)?;
                SlashCommand::ApprovalMode(Some(mode))
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(cmd))
}

/// The known command closest to `name`: the only one it is a prefix of, else the one
/// at the smallest edit distance when that distance is small for the name's length.
fn closest_command(name: &str, custom: &CustomCommands) -> Option<String> {
    let candidates: Vec<&str> = BUILTIN_COMMANDS
        .iter()
        .map(|c| c.name)
        .chain(ALIASES.iter().map(|(a, _)| *a))
        .chain(custom.names())
        .collect();
    let lower = name.to_lowercase();
    let prefixed: Vec<&str> = candidates
        .iter()
        .copied()
        .filter(|c| c.starts_with(&lower))
        .collect();
    if prefixed.len() == 1 {
        return Some(prefixed[0].to_string());
    }
    let threshold = (lower.chars().count() / 2).clamp(1, 3);
    candidates
        .iter()
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), *c))
        .filter(|(d, _)| *d <= threshold)
        .min_by_key(|(d, c)| (*d, c.len()))
        .map(|(_, c)| c.to_string())
}

/// `/help`: the built-in commands, then the custom ones, one line each.
pub fn help_text(custom: &CustomCommands) -> String {
    let custom_rows: Vec<(String, String)> = custom
        .iter()
        .filter(|c| !is_builtin(&c.name))
        .map(|c| {
            let usage = match &c.argument_hint {
                Some(hint) => format!("/{} {hint}", c.name),
                None => format!("/{}", c.name),
            };
            (usage, format!("{} ({})", c.description(), c.scope.as_str()))
        })
        .collect();
    let width = BUILTIN_COMMANDS
        .iter()
        .map(|c| c.usage.len())
        .chain(custom_rows.iter().map(|(u, _)| u.len()))
        .max()
        .unwrap_or(0);
    let mut out = String::from("Commands:\n");
    for c in BUILTIN_COMMANDS {
        let _ = writeln!(out, "  {:<width$}  {}", c.usage, c.description);
    }
    if !custom_rows.is_empty() {
        out.push_str("Custom commands:\n");
        for (usage, description) in &custom_rows {
            let _ = writeln!(out, "  {usage:<width$}  {description}");
        }
    }
    out.push_str(
        "Also: @path puts a file, directory or glob into your message; !cmd runs a command in the sandbox.\n",
    );
    out
}

/// Completions for a `/` prefix typed so far (with or without the `/`): the built-in
/// and custom command names that start with it, each with its leading `/`, sorted.
pub fn complete_slash(prefix: &str, custom: &CustomCommands) -> Vec<String> {
    let prefix = prefix.strip_prefix('/').unwrap_or(prefix);
    let mut out: Vec<String> = BUILTIN_COMMANDS
        .iter()
        .map(|c| c.name)
        .chain(ALIASES.iter().map(|(a, _)| *a))
        .chain(custom.names().filter(|n| !is_builtin(n)))
        .filter(|n| n.starts_with(prefix))
        .map(|n| format!("/{n}"))
        .collect();
    out.sort();
    out
}

/// Whether `name` is a built-in command or alias (those win over custom commands).
pub(crate) fn is_builtin(name: &str) -> bool {
    BUILTIN_COMMANDS.iter().any(|c| c.name == name) || ALIASES.iter().any(|(a, _)| *a == name)
}
