//! `safe-coder`: the command line (DESIGN §1).

mod chat_line;
mod chat_tui;
mod config;
mod exec;
mod render;
mod sessions;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use safe_coder_protocol::ApprovalMode;

#[derive(Parser, Debug)]
#[command(
    name = "safe-coder",
    version,
    about = "An AI coding agent that works on a sandboxed copy of your project",
    long_about = "Safe Coder is a terminal AI coding agent. It works on a sandboxed copy of your project, \
                  records every step as a git commit you can inspect and roll back, and changes your files \
                  only when you accept its changes."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by `chat` and `exec`.
#[derive(Args, Debug, Clone)]
struct AgentArgs {
    /// The project directory (default: the current directory).
    #[arg(long, value_name = "DIR")]
    path: Option<PathBuf>,
    /// Isolation backend: auto, firecracker, qemu, docker, process, copy or direct.
    #[arg(long, value_name = "B")]
    backend: Option<String>,
    /// Same as `--backend copy` (the documents' demo mode).
    #[arg(long)]
    demo: bool,
    /// Model provider: anthropic, openai or ollama.
    #[arg(long, value_name = "P")]
    provider: Option<String>,
    #[arg(long, value_name = "M")]
    model: Option<String>,
    /// The API's base URL (Anthropic without /v1, OpenAI with /v1, Ollama's host).
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
    /// API key (prefer the environment or `safe-coder config`).
    #[arg(long, value_name = "K")]
    api_key: Option<String>,
    /// plan, default, auto-edit or yolo.
    #[arg(long, value_name = "MODE")]
    approval_mode: Option<ApprovalMode>,
    /// Say more: why this backend was chosen over the others.
    #[arg(long, short = 'v')]
    verbose: bool,
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
enum SyncChoice {
    /// Sync every change (conflicting files stay in the session).
    Accept,
    /// Drop the agent's changes.
    Reject,
    /// Keep the changes in the session for `safe-coder sessions sync`.
    Keep,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Interactive session (TUI by default).
    Chat {
        #[command(flatten)]
        agent: AgentArgs,
        /// Line-mode REPL instead of the TUI.
        #[arg(long)]
        no_tui: bool,
        /// Resume a session (the latest for this project without an ID).
        #[arg(long, value_name = "ID", num_args = 0..=1, default_missing_value = "")]
        resume: Option<String>,
    },
    /// Run one task headless and exit.
    Exec {
        #[command(flatten)]
        agent: AgentArgs,
        /// Print one JSON event per line.
        #[arg(long)]
        json: bool,
        /// What to do with the agent's changes at the end.
        #[arg(long, value_enum, default_value = "keep")]
        sync: SyncChoice,
        /// The task.
        #[arg(required = true, num_args = 1.., value_name = "PROMPT")]
        prompt: Vec<String>,
    },
    /// Write or show the user configuration.
    Config {
        #[arg(long, value_name = "P")]
        provider: Option<String>,
        #[arg(long, value_name = "K")]
        api_key: Option<String>,
        #[arg(long, value_name = "M")]
        model: Option<String>,
        #[arg(long, value_name = "URL")]
        base_url: Option<String>,
        #[arg(long, value_name = "B")]
        backend: Option<String>,
        /// Show the configuration in force (the key masked).
        #[arg(long)]
        show: bool,
        /// The project whose `.safe-coder/config.toml` counts for --show.
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
    },
    /// Sessions that still hold unsynced work.
    Sessions {
        #[command(subcommand)]
        action: Option<sessions::SessionsCmd>,
    },
    /// Isolation backends.
    Sandbox {
        #[command(subcommand)]
        action: SandboxCmd,
    },
}

#[derive(Subcommand, Debug)]
enum SandboxCmd {
    /// Which backends work on this machine, and why the others do not.
    Doctor,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Config {
            provider,
            api_key,
            model,
            base_url,
            backend,
            show,
            path,
        } => config_command(
            config::ConfigUpdate {
                provider,
                api_key,
                model,
                base_url,
                backend,
            },
            show,
            path,
        ),
        Command::Sandbox {
            action: SandboxCmd::Doctor,
        } => {
            print!("{}", safe_coder_sandbox::select::doctor_report());
            Ok(())
        }
        Command::Sessions { action } => {
            sessions::run(action.unwrap_or(sessions::SessionsCmd::List {
                json: false,
                all: false,
            }))
        }
        Command::Exec {
            agent,
            json,
            sync,
            prompt,
        } => runtime().and_then(|rt| rt.block_on(exec::run(agent, json, sync, prompt.join(" ")))),
        Command::Chat {
            agent,
            no_tui,
            resume,
        } => runtime().and_then(|rt| {
            if no_tui || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                rt.block_on(chat_line::run(agent, resume))
            } else {
                rt.block_on(chat_tui::run(agent, resume))
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Already shown to the user.
        Err(e) if e.is::<setup::Reported>() => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {}", setup::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn config_command(
    update: config::ConfigUpdate,
    show: bool,
    path: Option<PathBuf>,
) -> anyhow::Result<()> {
    let dirs = config::Dirs::from_env()?;
    let file = dirs.user_config_file();
    if !update.is_empty() {
        config::write_user_config(&file, &update)?;
        println!("Saved {}", file.display());
    }
    if show || update.is_empty() {
        let project = match path {
            Some(p) => p,
            None => std::env::current_dir()?,
        };
        let resolved = config::resolve(&dirs, &project, &config::Overrides::default())?;
        print!("{}", config::show(&resolved, &dirs, &project));
    }
    Ok(())
}
