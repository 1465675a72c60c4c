//! What the user types besides plain prompts: slash commands, `@path` references, `!cmd`
//! shell lines, custom commands and memory files.
//!
//! The crate is the parsing and expansion logic only; the turn loop and the front ends
//! (line mode, TUI) decide what to do with the results. Anything the agent's files are
//! read from goes through a [`Sandbox`](safe_coder_sandbox::Sandbox), because those files
//! may live in a VM; memory files and custom command definitions are the user's own
//! instructions and are read from the host.

pub mod at_paths;
pub mod custom;
pub mod input;
pub mod memory;
pub mod shell;
pub mod slash;

mod text;

pub use at_paths::{complete_at_path, expand_at_paths, AtError, AtLimits, Expanded};
pub use custom::{
    expand_custom, load_custom_commands, CommandScope, CustomCommand, CustomCommands, CustomError,
};
pub use input::{classify, Input};
pub use memory::{
    add_to_project_memory, load_memory, user_config_dir, Memory, MemoryError, MEMORY_FILE_NAMES,
};
pub use shell::{format_shell_for_model, parse_shell};
pub use slash::{
    complete_slash, help_text, parse, MemoryCmd, SlashCommand, SlashError, BUILTIN_COMMANDS,
};
