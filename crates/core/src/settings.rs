//! What a conversation needs to know, resolved by the front end from flags, the
//! environment and the config files. The core never reads a config file itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use safe_coder_llm::ProviderConfig;
use safe_coder_protocol::ApprovalMode;
use safe_coder_sandbox::BackendKind;

/// Dollars per million tokens, for `/stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

/// The settings of one conversation.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The user's project (already canonical).
    pub project: PathBuf,
    /// Where sessions and the store live (`$XDG_DATA_HOME/safe-coder`).
    pub data_dir: PathBuf,
    /// The user's config dir, for memory files and custom commands.
    pub config_dir: PathBuf,
    /// `None` = auto.
    pub backend: Option<BackendKind>,
    /// Globs left out of the sandbox copy.
    pub exclude: Vec<String>,
    pub memory_mb: u64,
    pub cpus: f64,
    /// Environment variables handed to the agent's commands beyond the allow-list.
    pub env_passthrough: Vec<String>,
    /// The largest file (MiB) a commit or a sync handles; larger ones are reported.
    pub max_file_mb: u64,
    /// `[vm]`: the microVM backends' image, size and binaries.
    pub vm: safe_coder_sandbox::VmSpec,
    /// `[docker]`: engine, runtime, image, network and limits of the `docker` backend.
    pub docker: safe_coder_sandbox::DockerSpec,
    /// The model provider, its model and its output token limit.
    pub provider: ProviderConfig,
    /// Model requests allowed in one user turn.
    pub max_turns: u32,
    pub approval_mode: ApprovalMode,
    /// The model's context window in tokens.
    pub context_window: u64,
    /// Compact when the conversation passes this fraction of the window.
    pub compact_threshold: f64,
    /// Per-model prices for `/stats`.
    pub prices: BTreeMap<String, Price>,
    /// Nobody can answer an approval (`exec`): a call that needs asking is refused
    /// with a result that names the flag to add.
    pub headless: bool,
    /// Send [`Event::Status`](safe_coder_protocol::Event::Status) this often (the TUI's
    /// sandbox panel); `None` sends none.
    pub status_interval: Option<Duration>,
}

/// Which session a conversation runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new session on a fresh sandbox.
    New,
    /// Resume a recorded session: by id (or id prefix), or the project's latest (`None`).
    Resume(Option<String>),
}
