//! `safe-coder`: the command line (README.md, "Commands").

mod chat_line;
mod chat_tui;
mod config;
mod exec;
mod logging;
mod render;
mod run;
mod sandbox_image;
mod sessions;
mod setup;
mod vm_image;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use safe_coder_llm::ProviderKind;
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
    /// How the agent is isolated from your system (default: `auto`, the strongest that
    /// works here; `safe-coder sandbox doctor` lists them).
    #[arg(long, value_name = "B", value_enum, ignore_case = true)]
    backend: Option<config::BackendChoice>,
    /// Try Safe Coder without a sandbox: the agent works on a plain copy of your project
    /// (your files still change only when you accept), but its commands can reach your
    /// system. Same as `--backend copy`.
    #[arg(long, conflicts_with = "backend")]
    demo: bool,
    /// Which model API to use.
    #[arg(long, value_name = "P", value_enum, ignore_case = true)]
    provider: Option<ProviderKind>,
    /// The model name, as the provider spells it (default: the provider's default).
    #[arg(long, value_name = "M")]
    model: Option<String>,
    /// The API's base URL (Anthropic without /v1, OpenAI with /v1, Ollama's host).
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
    /// API key (prefer the environment or `safe-coder config`: flags show in `ps`).
    #[arg(long, value_name = "K")]
    api_key: Option<String>,
    /// How much the agent may do without asking you.
    #[arg(long, value_name = "MODE", value_enum, ignore_case = true)]
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
    /// Write or show the configuration.
    ///
    /// With settings, writes them to the user config (`~/.config/safe-coder/config.toml`,
    /// mode 0600); key, model and base URL are stored for the provider given with
    /// `--provider` (or the one already chosen), so switching provider never sends one
    /// provider's key to another. Without settings, or with --show, prints the
    /// configuration in force, which files were read, and every warning.
    Config {
        /// Use this provider from now on; --api-key, --model and --base-url are its own.
        #[arg(long, value_name = "P", value_enum, ignore_case = true)]
        provider: Option<ProviderKind>,
        /// The provider's API key (stored only in the user config).
        #[arg(long, value_name = "K")]
        api_key: Option<String>,
        /// The provider's model.
        #[arg(long, value_name = "M")]
        model: Option<String>,
        /// The provider's base URL (Anthropic without /v1, OpenAI with /v1, Ollama's host).
        #[arg(long, value_name = "URL")]
        base_url: Option<String>,
        /// The isolation backend to use by default.
        #[arg(long, value_name = "B", value_enum, ignore_case = true)]
        backend: Option<config::BackendChoice>,
        /// The approval mode to use by default.
        #[arg(long, value_name = "MODE", value_enum, ignore_case = true)]
        approval_mode: Option<ApprovalMode>,
        /// Trust the project at --path (or the current directory): its own
        /// `.safe-coder/config.toml` may then choose a weaker backend, a looser approval
        /// mode and higher limits. Without it, a project may only tighten them.
        #[arg(long, conflicts_with = "untrust")]
        trust: bool,
        /// Stop trusting the project at --path (or the current directory).
        #[arg(long)]
        untrust: bool,
        /// Show the configuration in force (the key masked), after any change.
        #[arg(long)]
        show: bool,
        /// The project for --show, --trust and --untrust (default: the current directory).
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
    },
    /// Sessions that still hold unsynced work.
    Sessions {
        #[command(subcommand)]
        action: Option<sessions::SessionsCmd>,
    },
    /// Run any agent CLI (or command) in the sandbox, with the same history, review and
    /// sync: `safe-coder run -- codex`, `safe-coder run claude`.
    ///
    /// The command gets your terminal (a PTY: full-screen programs, resizes and Ctrl+C
    /// work), the project's sandbox copy as its working directory, no network unless
    /// --allow-net (or `[network] allow`) names hosts, and only the environment
    /// variables named with --env (besides the usual allow-list). The presets claude,
    /// codex, gemini and aider add their API hosts and key variables. When it exits you
    /// review and sync its changes. See docs/run.md.
    #[command(trailing_var_arg = true)]
    Run {
        /// The project directory (default: the current directory).
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
        /// The isolation backend (default: `auto`; interactive commands work on process,
        /// copy and direct).
        #[arg(long, value_name = "B", value_enum, ignore_case = true)]
        backend: Option<config::BackendChoice>,
        /// Hosts the command may reach through Safe Coder's proxy: HOST, HOST:PORT,
        /// *.DOMAIN (a HOST alone means ports 443 and 80). Repeat or separate with commas.
        #[arg(long, value_name = "HOST[:PORT],...")]
        allow_net: Vec<String>,
        /// Pass this environment variable to the command (e.g. an API key). Repeatable.
        #[arg(long = "env", value_name = "NAME")]
        env: Vec<String>,
        /// Show a host path inside (a path under your home appears under the sandbox's
        /// home); `:ro` makes it read-only. Repeatable.
        #[arg(long = "mount", value_name = "PATH[:ro]")]
        mounts: Vec<String>,
        /// Print one JSON event per line on stdout (the command's output goes to stderr).
        #[arg(long)]
        json: bool,
        /// Answer the review without asking (default: ask on a terminal, else keep).
        #[arg(long, value_enum)]
        sync: Option<SyncChoice>,
        /// Do not apply the preset of a known CLI (claude, codex, gemini, aider).
        #[arg(long)]
        no_preset: bool,
        /// The command and its arguments (after `--`), or a preset name.
        #[arg(required = true, num_args = 1.., value_name = "CMD")]
        command: Vec<String>,
    },
    /// Inside the sandbox: the network allow-list's forwarder (used by `run`).
    #[command(name = "__net-forward", hide = true)]
    NetForward {
        #[arg(long)]
        port: u16,
        /// The proxy's Unix socket (bound into the sandbox).
        #[arg(
            long,
            required_unless_present = "stream_fd",
            conflicts_with = "stream_fd"
        )]
        socket: Option<PathBuf>,
        /// Or an inherited stream the host carries to the proxy (`mux`).
        #[arg(long)]
        stream_fd: Option<i32>,
        #[arg(required = true, num_args = 1.., last = true)]
        command: Vec<String>,
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
    /// Images for the container and microVM backends, built from the package registries.
    Image {
        #[command(subcommand)]
        action: ImageCmd,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Build (or bring up to date) the image a backend runs.
    Build {
        /// The backend whose image to build.
        #[arg(long, value_enum, default_value = "docker")]
        backend: ImageBackend,
        #[command(flatten)]
        vm: vm_image::VmImageArgs,
        #[command(flatten)]
        docker: sandbox_image::DockerImageArgs,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ImageBackend {
    /// The container image: a Debian root filesystem imported into the engine.
    Docker,
    /// The microVM image (kernel, initramfs, root disk with the guest agent), shared by
    /// the `qemu` and `firecracker` backends.
    Qemu,
    /// The same microVM image: the firecracker backend boots it too.
    Firecracker,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        if let Ok(dirs) = config::Dirs::from_env() {
            logging::init(&dirs.data_dir);
        }
    }
    let result = match cli.command {
        Command::NetForward {
            port,
            socket,
            stream_fd,
            command,
        } => {
            let via = match (socket, stream_fd) {
                (Some(s), _) => run::ForwardVia::Socket(s),
                (None, Some(fd)) => run::ForwardVia::Stream(fd),
                (None, None) => return ExitCode::from(2),
            };
            return ExitCode::from(run::net_forward(port, via, command));
        }
        Command::Run {
            path,
            backend,
            allow_net,
            env,
            mounts,
            json,
            sync,
            no_preset,
            command,
        } => {
            let agent = AgentArgs {
                path,
                backend,
                demo: false,
                provider: None,
                model: None,
                base_url: None,
                api_key: None,
                approval_mode: None,
                verbose: false,
            };
            let args = run::RunArgs {
                agent,
                allow_net,
                env,
                mounts,
                json,
                sync,
                no_preset,
                command,
            };
            match runtime().and_then(|rt| rt.block_on(run::run(args))) {
                Ok(0) => return ExitCode::SUCCESS,
                Ok(code) => return ExitCode::from(code),
                Err(e) => Err(e),
            }
        }
        Command::Config {
            provider,
            api_key,
            model,
            base_url,
            backend,
            approval_mode,
            trust,
            untrust,
            show,
            path,
        } => config_command(
            config::ConfigUpdate {
                provider,
                api_key,
                model,
                base_url,
                backend,
                approval_mode,
                trust: None,
                untrust: None,
            },
            (trust, untrust),
            show,
            path,
        ),
        Command::Sandbox {
            action: SandboxCmd::Doctor,
        } => setup::doctor_report().map(|report| print!("{report}")),
        Command::Sandbox {
            action:
                SandboxCmd::Image {
                    action:
                        ImageCmd::Build {
                            backend,
                            vm,
                            docker,
                        },
                },
        } => match backend {
            ImageBackend::Docker => sandbox_image::build_docker(&vm, docker),
            ImageBackend::Qemu | ImageBackend::Firecracker => vm_image::build(vm),
        },
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
    mut update: config::ConfigUpdate,
    (trust, untrust): (bool, bool),
    show: bool,
    path: Option<PathBuf>,
) -> anyhow::Result<()> {
    let dirs = config::Dirs::from_env()?;
    let file = dirs.user_config_file();
    let project = match path {
        Some(p) => p,
        None => std::env::current_dir()?,
    };
    if trust || untrust {
        let canonical = project.canonicalize().map_err(|e| {
            anyhow::anyhow!(
                "cannot open the project directory {}: {e}",
                project.display()
            )
        })?;
        if trust {
            update.trust = Some(canonical);
        } else {
            update.untrust = Some(canonical);
        }
    }
    if !update.is_empty() {
        for note in config::write_user_config(&file, &update)? {
            println!("{note}");
        }
        println!("Saved {}", file.display());
        if let Some(p) = &update.trust {
            println!(
                "Trusted {}: its .safe-coder/config.toml may now loosen settings",
                p.display()
            );
        }
        if let Some(p) = &update.untrust {
            println!("No longer trusted: {}", p.display());
        }
    }
    if show || update.is_empty() {
        let resolved = config::resolve(&dirs, &project, &config::Overrides::default())?;
        print!("{}", config::show(&resolved));
    }
    Ok(())
}
