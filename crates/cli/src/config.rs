//! Configuration: the user's `config.toml`, the project's `.safe-coder/config.toml`,
//! environment variables and flags, resolved once into [`Resolved`].
//!
//! Precedence: flag > environment > project file > user file > default.
//!
//! - **Typed.** Each kind (provider, backend, approval mode, theme) is parsed once, where
//!   it enters: clap for flags, serde for files, `FromStr` for environment variables.
//!   Files are deserialised into [`FileConfig`]; a key nothing reads is a warning (through
//!   `serde_ignored`); a bad value is one error naming the file, its line and column, and
//!   the key (`serde_path_to_error` and the TOML span).
//! - **Per provider.** Key, base URL and model live in `[llm.anthropic]`, `[llm.openai]`,
//!   `[llm.ollama]`; `[llm] provider` chooses one. The old flat `[llm] api_key/base_url/
//!   model` are read as the settings of the provider named in the same file (else the
//!   default provider), with a warning; `safe-coder config` moves them. A key or URL for
//!   one provider is never sent to another.
//! - **Trust.** A project file is written by whoever wrote the project (a cloned
//!   repository, or the agent through an accepted sync). It may tighten settings but not
//!   loosen them ([`restrict_project`]) unless the user trusted the project once
//!   (`safe-coder config --trust`, recorded in the user file's `[trust] projects`). It
//!   never sets a key or a base URL, and it is read without following symlinks.
//! - **Defaults are written once**, most of them by the crate that owns the setting
//!   ([`Defaults`]).

//!
//! Layout: this file holds the kinds, the defaults and [`resolve`]; `file` the files'
//! shape and reading, `vm` the `[vm]` table, `trust` what a project file may say, `write` the `config` command's
//! edits, `show` `config --show`.

mod docker;
mod file;
mod show;
mod trust;
mod vm;
mod write;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Result};
use safe_coder_llm::{ProviderConfig, ProviderKind};
use safe_coder_protocol::ApprovalMode;
use safe_coder_sandbox::BackendKind;
use safe_coder_tui::Theme;
use serde::{Deserialize, Deserializer};

pub use file::*;
pub use show::show;
pub use trust::{is_trusted, restrict_project};
pub use vm::VmSection;
pub use write::{write_user_config, ConfigUpdate};

/// The default of every setting, in one place. Where another crate owns a setting its
/// default is taken from there, so nothing is written twice.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub provider: ProviderKind,
    pub max_tokens: u32,
    pub backend: BackendChoice,
    pub approval_mode: ApprovalMode,
    pub max_turns: u32,
    pub compact_threshold: f64,
    pub memory_mb: u64,
    pub cpus: f64,
    /// The largest file (MiB) a commit or a sync handles; a larger one is reported.
    pub max_file_mb: u64,
    pub theme: Theme,
}

impl Default for Defaults {
    fn default() -> Self {
        let limits = safe_coder_sandbox::Limits::default();
        let agent = safe_coder_core::AgentOptions::default();
        let provider = ProviderKind::Anthropic;
        Defaults {
            provider,
            max_tokens: ProviderConfig::new(provider).max_tokens,
            backend: BackendChoice::Auto,
            approval_mode: ApprovalMode::default(),
            max_turns: agent.max_turns,
            compact_threshold: agent.compact_threshold,
            memory_mb: limits.memory_mb,
            cpus: limits.cpus,
            max_file_mb: 100,
            theme: Theme::default(),
        }
    }
}

/// Default context window of well-known models, in tokens.
pub fn default_context_window(model: &str) -> u64 {
    if model.starts_with("claude") {
        200_000
    } else if model.starts_with("gpt-4.1") || model.starts_with("gpt-5") {
        400_000
    } else if model.starts_with("gpt-4o") || model.starts_with("o") {
        128_000
    } else {
        32_768
    }
}

// ---------------------------------------------------------------------------------------
// Kinds
// ---------------------------------------------------------------------------------------

/// `[isolation] backend` / `--backend`: `auto` or one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendChoice {
    /// The strongest backend that works here (decided when the session starts).
    #[default]
    Auto,
    Kind(BackendKind),
}

impl BackendChoice {
    /// `None` for `auto`, as `sandbox::choose` and the session take it.
    pub fn kind(self) -> Option<BackendKind> {
        match self {
            BackendChoice::Auto => None,
            BackendChoice::Kind(k) => Some(k),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Kind(k) => k.as_str(),
        }
    }

    /// How strongly the agent is isolated, for "may a project file choose this": a VM
    /// above a container above the process sandbox above a plain copy above working in
    /// place. `auto` counts as the process sandbox: it never picks less where a sandbox
    /// works, and a project may still ask for a VM or a container.
    pub fn isolation_rank(self) -> u8 {
        match self {
            BackendChoice::Kind(BackendKind::Direct) => 0,
            BackendChoice::Kind(BackendKind::Copy) => 1,
            BackendChoice::Auto | BackendChoice::Kind(BackendKind::Process) => 2,
            BackendChoice::Kind(BackendKind::Docker) => 3,
            BackendChoice::Kind(BackendKind::Qemu | BackendKind::Firecracker) => 4,
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a backend name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownBackend(pub String);

impl fmt::Display for UnknownBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown backend `{}`: use auto, firecracker, qemu, docker, process, copy or direct",
            self.0
        )
    }
}

impl std::error::Error for UnknownBackend {}

impl FromStr for BackendChoice {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            other => BackendKind::parse(other)
                .map(BackendChoice::Kind)
                .ok_or_else(|| UnknownBackend(s.to_string())),
        }
    }
}

impl<'de> Deserialize<'de> for BackendChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl clap::ValueEnum for BackendChoice {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            BackendChoice::Auto,
            BackendChoice::Kind(BackendKind::Firecracker),
            BackendChoice::Kind(BackendKind::Qemu),
            BackendChoice::Kind(BackendKind::Docker),
            BackendChoice::Kind(BackendKind::Process),
            BackendChoice::Kind(BackendKind::Copy),
            BackendChoice::Kind(BackendKind::Direct),
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use clap::builder::PossibleValue;
        let v = PossibleValue::new(self.as_str());
        Some(match self {
            BackendChoice::Auto => v.help("the strongest that works here (the default)"),
            BackendChoice::Kind(BackendKind::Firecracker) => v.help("a Firecracker microVM (KVM)"),
            BackendChoice::Kind(BackendKind::Qemu) => v.help("a QEMU microVM"),
            BackendChoice::Kind(BackendKind::Docker) => v.help("a Docker or Podman container"),
            BackendChoice::Kind(BackendKind::Process) => {
                v.help("a confined process: no network, only the copy writable")
            }
            BackendChoice::Kind(BackendKind::Copy) => v
                .alias("demo")
                .help("a copy of the project, no isolation from your system"),
            BackendChoice::Kind(BackendKind::Direct) => {
                v.help("no copy, no isolation: the agent edits your project itself")
            }
        })
    }
}

/// Where a setting in force came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    UserFile,
    ProjectFile,
    Env,
    Flag,
}

impl Source {
    /// Whether the user (or their project) chose the value, rather than the default.
    pub fn is_explicit(self) -> bool {
        self != Source::Default
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::UserFile => "user config",
            Source::ProjectFile => "project config",
            Source::Env => "environment",
            Source::Flag => "flag",
        }
    }
}

/// The directories Safe Coder uses, honouring `$XDG_CONFIG_HOME` and `$XDG_DATA_HOME`.
#[derive(Clone, Debug)]
pub struct Dirs {
    pub config_dir: PathBuf,
    pub data_dir: PathBuf,
}

impl Dirs {
    pub fn from_env() -> Result<Dirs> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let xdg = |var: &str, fallback: &str| -> Result<PathBuf> {
            match std::env::var_os(var) {
                Some(v) if !v.is_empty() && Path::new(&v).is_absolute() => Ok(PathBuf::from(v)),
                _ => match &home {
                    Some(h) => Ok(h.join(fallback)),
                    None => bail!("neither ${var} nor $HOME is set: set one so Safe Coder knows where to keep its files"),
                },
            }
        };
        Ok(Dirs {
            config_dir: xdg("XDG_CONFIG_HOME", ".config")?.join("safe-coder"),
            data_dir: xdg("XDG_DATA_HOME", ".local/share")?.join("safe-coder"),
        })
    }

    pub fn user_config_file(&self) -> PathBuf {
        self.config_dir.join("config.toml")
    }
}

/// Flags given on the command line (the highest layer), already typed by clap.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub provider: Option<ProviderKind>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    pub backend: Option<BackendChoice>,
    pub approval_mode: Option<ApprovalMode>,
}

/// The configuration in force, after every layer was applied.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub provider: ProviderKind,
    /// Only ever the chosen provider's key.
    pub api_key: Option<String>,
    pub model: String,
    /// The chosen provider's URL, without a trailing `/`.
    pub base_url: String,
    pub max_tokens: u32,
    pub backend: BackendChoice,
    pub backend_source: Source,
    pub exclude: Vec<String>,
    pub approval_mode: ApprovalMode,
    /// Whether the user chose the approval mode (flag, environment, a file) or it is the
    /// default: headless runs pick their own default when nobody chose.
    pub approval_mode_source: Source,
    pub max_turns: u32,
    pub theme: Theme,
    pub context_window: u64,
    pub compact_threshold: f64,
    pub memory_mb: u64,
    pub cpus: f64,
    /// `[isolation] max_file_mb`: the largest file a commit or sync handles.
    pub max_file_mb: u64,
    /// `[isolation] env_passthrough`: variables handed to the agent's commands besides
    /// the built-in allow-list.
    pub env_passthrough: Vec<String>,
    /// `[network] allow`: hosts `safe-coder run` lets a command reach (docs/run.md).
    pub network_allow: Vec<String>,
    pub vm: VmSection,
    pub docker: DockerSection,
    pub prices: BTreeMap<String, Price>,
    pub user_file: (PathBuf, FileState),
    pub project_file: (PathBuf, FileState),
    /// The user trusted this project (`config --trust`): its file may loosen settings.
    pub project_trusted: bool,
    /// Unknown keys, refused project settings, old-style keys: shown, never fatal.
    pub warnings: Vec<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// An environment variable parsed as `T`; a bad value is an error naming the variable.
fn env_parsed<T: FromStr>(name: &str) -> Result<Option<T>>
where
    T::Err: fmt::Display,
{
    match env(name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("${name}: {e}")),
    }
}

/// The first value set, from the highest layer down, and where it came from.
fn layered<T>(
    flag: Option<T>,
    env: Option<T>,
    proj: Option<T>,
    user: Option<T>,
) -> Option<(T, Source)> {
    flag.map(|v| (v, Source::Flag))
        .or_else(|| env.map(|v| (v, Source::Env)))
        .or_else(|| proj.map(|v| (v, Source::ProjectFile)))
        .or_else(|| user.map(|v| (v, Source::UserFile)))
}

fn files_only<T: Clone>(proj: &Option<T>, user: &Option<T>) -> Option<T> {
    proj.clone().or_else(|| user.clone())
}

/// `OLLAMA_HOST` is often `host:port` without a scheme.
fn with_scheme(url: String) -> String {
    if url.starts_with("http://") || url.starts_with("https://") {
        url
    } else {
        format!("http://{url}")
    }
}

pub fn resolve(dirs: &Dirs, project: &Path, flags: &Overrides) -> Result<Resolved> {
    let d = Defaults::default();
    let mut warnings = Vec::new();
    let user_path = dirs.user_config_file();
    let proj_path = project_config_file(project);
    let (user, user_state) = read_user_config(&user_path, &mut warnings)?;
    let (mut proj, proj_state) = read_project_config(project, &mut warnings)?;
    let trusted = is_trusted(&user, project);
    restrict_project(
        &mut proj,
        &user,
        trusted,
        &proj_path.display().to_string(),
        &mut warnings,
    );

    let (provider, _) = layered(
        flags.provider,
        env_parsed::<ProviderKind>("SAFE_CODER_PROVIDER")?,
        proj.llm.provider,
        user.llm.provider,
    )
    .unwrap_or((d.provider, Source::Default));

    // Only the chosen provider's settings are read: a key or URL written for another
    // provider is never sent to this one.
    let user_p = user.llm.for_provider(provider);
    let proj_p = proj.llm.for_provider(provider);
    let api_key = flags
        .api_key
        .clone()
        .or_else(|| provider.api_key_env().and_then(env))
        .or(user_p.api_key);
    let base_url = flags
        .base_url
        .clone()
        .or_else(|| provider.base_url_env().and_then(env).map(with_scheme))
        .or(user_p.base_url)
        .unwrap_or_else(|| provider.default_base_url().to_string());
    let model = flags
        .model
        .clone()
        .or_else(|| env("SAFE_CODER_MODEL"))
        .or(proj_p.model)
        .or(user_p.model)
        .unwrap_or_else(|| provider.default_model().to_string());

    // Every key this run could know of is masked in the debug log.
    for p in ProviderKind::ALL {
        let keys = [
            user.llm.for_provider(p).api_key,
            p.api_key_env().and_then(env),
        ];
        for k in keys.iter().flatten() {
            crate::logging::redact(k);
        }
    }
    if let Some(k) = &flags.api_key {
        crate::logging::redact(k);
    }

    let (backend, backend_source) = layered(
        flags.backend,
        env_parsed::<BackendChoice>("SAFE_CODER_BACKEND")?,
        proj.isolation.backend,
        user.isolation.backend,
    )
    .unwrap_or((d.backend, Source::Default));
    let (approval_mode, approval_mode_source) = layered(
        flags.approval_mode,
        env_parsed::<ApprovalMode>("SAFE_CODER_APPROVAL_MODE")?,
        proj.agent.approval_mode,
        user.agent.approval_mode,
    )
    .unwrap_or((d.approval_mode, Source::Default));

    let theme = if env("NO_COLOR").is_some() {
        Theme::Plain
    } else {
        files_only(&proj.ui.theme, &user.ui.theme).unwrap_or(d.theme)
    };
    let mut prices = user.pricing.clone();
    prices.extend(proj.pricing.clone());
    let context_window = files_only(&proj.context.window_tokens, &user.context.window_tokens)
        .unwrap_or_else(|| default_context_window(&model));

    let merge_vm = VmSection::merged(&proj.vm, &user.vm);
    let merge_docker = DockerSection::merge(&proj.docker, &user.docker);

    log::debug!(
        "config: provider {provider}, model {model}, base URL {base_url}, key {}, backend {backend} ({backend_source:?}), approval {approval_mode} ({approval_mode_source:?}), project file {:?}, trusted {trusted}",
        if api_key.is_some() { "set" } else { "not set" },
        proj_state
    );
    for w in &warnings {
        log::debug!("config warning: {w}");
    }
    Ok(Resolved {
        provider,
        api_key,
        model,
        base_url: base_url.trim_end_matches('/').to_string(),
        max_tokens: files_only(&proj.llm.max_tokens, &user.llm.max_tokens).unwrap_or(d.max_tokens),
        backend,
        backend_source,
        exclude: files_only(&proj.isolation.exclude, &user.isolation.exclude).unwrap_or_default(),
        approval_mode,
        approval_mode_source,
        max_turns: files_only(&proj.agent.max_turns, &user.agent.max_turns).unwrap_or(d.max_turns),
        theme,
        context_window,
        compact_threshold: files_only(
            &proj.context.compact_threshold,
            &user.context.compact_threshold,
        )
        .unwrap_or(d.compact_threshold),
        memory_mb: files_only(&proj.isolation.memory_mb, &user.isolation.memory_mb)
            .unwrap_or(d.memory_mb),
        cpus: files_only(&proj.isolation.cpus, &user.isolation.cpus).unwrap_or(d.cpus),
        max_file_mb: files_only(&proj.isolation.max_file_mb, &user.isolation.max_file_mb)
            .unwrap_or(d.max_file_mb),
        env_passthrough: files_only(
            &proj.isolation.env_passthrough,
            &user.isolation.env_passthrough,
        )
        .unwrap_or_default(),
        network_allow: files_only(&proj.network.allow, &user.network.allow).unwrap_or_default(),
        vm: merge_vm,
        docker: merge_docker,
        prices,
        user_file: (user_path, user_state),
        project_file: (proj_path, proj_state),
        project_trusted: trusted,
        warnings,
    })
}

/// Masks a secret for display: the first 4 characters (when long enough) and a count.
pub fn mask(secret: &str) -> String {
    let n = secret.chars().count();
    if n <= 8 {
        "********".to_string()
    } else {
        let head: String = secret.chars().take(4).collect();
        format!("{head}…({n} chars, hidden)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse_once_with_demo_as_copy() {
        assert_eq!("auto".parse(), Ok(BackendChoice::Auto));
        assert_eq!("demo".parse(), Ok(BackendChoice::Kind(BackendKind::Copy)));
        assert!("vm".parse::<BackendChoice>().is_err());
        for v in <BackendChoice as clap::ValueEnum>::value_variants() {
            assert_eq!(v.as_str().parse(), Ok(*v));
        }
        let rank = |s: &str| s.parse::<BackendChoice>().unwrap().isolation_rank();
        assert!(rank("direct") < rank("copy") && rank("copy") < rank("auto"));
        assert!(rank("process") < rank("docker") && rank("docker") < rank("firecracker"));
    }
}
