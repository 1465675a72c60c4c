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

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use safe_coder_llm::{ProviderConfig, ProviderKind};
use safe_coder_protocol::ApprovalMode;
use safe_coder_sandbox::BackendKind;
use safe_coder_tui::Theme;
use serde::{Deserialize, Deserializer};

/// The largest project config file that is read; a larger one is refused with a warning.
pub const MAX_PROJECT_CONFIG_BYTES: u64 = 64 * 1024;

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
        let limits = safe_coder_sandbox::ProcessLimits::default();
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

    fn describe(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::UserFile => "user config",
            Source::ProjectFile => "project config",
            Source::Env => "environment",
            Source::Flag => "flag",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

/// Dollars per million tokens, for `/stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Price {
    #[serde(deserialize_with = "dollars")]
    pub input_per_mtok: f64,
    #[serde(deserialize_with = "dollars")]
    pub output_per_mtok: f64,
}

/// What one provider's table holds (`[llm.anthropic]`, `[llm.openai]`, `[llm.ollama]`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ProviderSection {
    pub api_key: Option<String>,
    pub base_url: Option<String>,
    pub model: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct LlmSection {
    pub provider: Option<ProviderKind>,
    #[serde(deserialize_with = "positive_u32")]
    pub max_tokens: Option<u32>,
    /// The old flat keys: read as the settings of [`LlmSection::flat_owner`].
    pub api_key: Option<String>,
    pub base_url: Option<String>,
    pub model: Option<String>,
    pub anthropic: ProviderSection,
    pub openai: ProviderSection,
    pub ollama: ProviderSection,
}

impl LlmSection {
    fn section(&self, p: ProviderKind) -> &ProviderSection {
        match p {
            ProviderKind::Anthropic => &self.anthropic,
            ProviderKind::OpenAi => &self.openai,
            ProviderKind::Ollama => &self.ollama,
        }
    }

    fn section_mut(&mut self, p: ProviderKind) -> &mut ProviderSection {
        match p {
            ProviderKind::Anthropic => &mut self.anthropic,
            ProviderKind::OpenAi => &mut self.openai,
            ProviderKind::Ollama => &mut self.ollama,
        }
    }

    /// The provider the old flat keys belong to: the one named in the same file, else the
    /// default provider.
    pub fn flat_owner(&self) -> ProviderKind {
        self.provider.unwrap_or(Defaults::default().provider)
    }

    fn flat_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.api_key.is_some() {
            keys.push("api_key");
        }
        if self.base_url.is_some() {
            keys.push("base_url");
        }
        if self.model.is_some() {
            keys.push("model");
        }
        keys
    }

    /// What this file says for provider `p`: its table, and the flat keys when they are
    /// `p`'s (the table wins).
    pub fn for_provider(&self, p: ProviderKind) -> ProviderSection {
        let mut s = self.section(p).clone();
        if self.flat_owner() == p {
            s.api_key = s.api_key.or_else(|| self.api_key.clone());
            s.base_url = s.base_url.or_else(|| self.base_url.clone());
            s.model = s.model.or_else(|| self.model.clone());
        }
        s
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct IsolationSection {
    pub backend: Option<BackendChoice>,
    pub exclude: Option<Vec<String>>,
    #[serde(deserialize_with = "positive_u64")]
    pub memory_mb: Option<u64>,
    #[serde(deserialize_with = "positive_f64")]
    pub cpus: Option<f64>,
    #[serde(deserialize_with = "positive_u64")]
    pub max_file_mb: Option<u64>,
    /// Names of environment variables handed to the agent's commands besides the
    /// built-in allow-list.
    pub env_passthrough: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct AgentSection {
    pub approval_mode: Option<ApprovalMode>,
    #[serde(deserialize_with = "positive_u32")]
    pub max_turns: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ContextSection {
    #[serde(deserialize_with = "positive_u64")]
    pub window_tokens: Option<u64>,
    #[serde(deserialize_with = "fraction")]
    pub compact_threshold: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct UiSection {
    pub theme: Option<Theme>,
}

/// `[vm]`: for the microVM backends.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct VmSection {
    pub firecracker_bin: Option<PathBuf>,
    pub kernel_image: Option<PathBuf>,
    pub rootfs_image: Option<PathBuf>,
    #[serde(deserialize_with = "positive_u32")]
    pub vcpu_count: Option<u32>,
    #[serde(deserialize_with = "positive_u64")]
    pub mem_size_mib: Option<u64>,
}

/// `[docker]`: for the container backend.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DockerSection {
    pub image: Option<String>,
    #[serde(deserialize_with = "positive_f64")]
    pub cpus: Option<f64>,
    #[serde(deserialize_with = "positive_u64")]
    pub memory_mb: Option<u64>,
    pub auto_pull: Option<bool>,
    pub runtime: Option<String>,
}

/// `[trust]` (user file only): projects whose own config may loosen settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct TrustSection {
    pub projects: Vec<PathBuf>,
}

/// Everything a config file can hold. `None` = not set in this file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct FileConfig {
    pub llm: LlmSection,
    pub isolation: IsolationSection,
    pub agent: AgentSection,
    pub context: ContextSection,
    pub ui: UiSection,
    pub pricing: BTreeMap<String, Price>,
    pub vm: VmSection,
    pub docker: DockerSection,
    pub trust: Option<TrustSection>,
}

fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn number<'de, D: Deserializer<'de>>(
    d: D,
    want: &str,
    ok: impl Fn(f64) -> bool,
) -> Result<f64, D::Error> {
    let v = toml::Value::deserialize(d)?;
    let n = match &v {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        _ => None,
    };
    match n {
        Some(n) if ok(n) => Ok(n),
        _ => Err(serde::de::Error::custom(format!(
            "must be {want}, not {}",
            value_text(&v)
        ))),
    }
}

fn whole<'de, D: Deserializer<'de>>(d: D, max: u64) -> Result<u64, D::Error> {
    let v = toml::Value::deserialize(d)?;
    match v.as_integer() {
        Some(i) if i > 0 && (i as u64) <= max => Ok(i as u64),
        Some(i) if i > 0 => Err(serde::de::Error::custom(format!(
            "must be at most {max}, not {i}"
        ))),
        _ => Err(serde::de::Error::custom(format!(
            "must be a positive whole number, not {}",
            value_text(&v)
        ))),
    }
}

fn positive_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    whole(d, i64::MAX as u64).map(Some)
}

fn positive_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    whole(d, u64::from(u32::MAX)).map(|n| Some(n as u32))
}

fn positive_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    number(d, "a positive number", |n| n > 0.0 && n.is_finite()).map(Some)
}

fn fraction<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    number(
        d,
        "a fraction between 0 and 1 (of the context window)",
        |n| n > 0.0 && n < 1.0,
    )
    .map(Some)
}

fn dollars<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    number(d, "a number of dollars", |n| n >= 0.0 && n.is_finite())
}

/// Line and column (1-based) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Parses one config file's text. A bad value or bad TOML is one error naming the file,
/// line, column and key; an unknown key is a warning in `warnings`.
pub fn parse_file_config(
    text: &str,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<FileConfig> {
    let file = path.display().to_string();
    let mut unknown = Vec::new();
    let de = toml::Deserializer::new(text);
    let mut on_unknown = |p: serde_ignored::Path<'_>| unknown.push(dotted(&p.to_string()));
    let de = serde_ignored::Deserializer::new(de, &mut on_unknown);
    let parsed: Result<FileConfig, _> = serde_path_to_error::deserialize(de);
    let cfg = match parsed {
        Ok(cfg) => cfg,
        Err(e) => {
            let key = e
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(".");
            let inner = e.into_inner();
            let at = inner
                .span()
                .map(|s| {
                    let (l, c) = line_col(text, s.start);
                    format!(":{l}:{c}")
                })
                .unwrap_or_default();
            let msg = inner.message().trim().replace('\n', "; ");
            if key.is_empty() {
                bail!("{file}{at}: invalid TOML: {msg}");
            }
            let sep = if msg.starts_with("must ") { " " } else { ": " };
            bail!("{file}{at}: `{key}`{sep}{msg}");
        }
    };
    if !unknown.is_empty() {
        // serde_ignored reports an unknown table as a whole: name its keys instead.
        let table: toml::Table = text.parse().unwrap_or_default();
        for key in unknown {
            let mut leaves = Vec::new();
            let value = key
                .split('.')
                .try_fold(None::<&toml::Value>, |v, k| match v {
                    None => table.get(k).map(Some),
                    Some(v) => v.get(k).map(Some),
                });
            match value {
                Some(Some(v)) => leaf_keys(&key, v, &mut leaves),
                _ => leaves.push(key),
            }
            for k in leaves {
                warnings.push(format!("{file}: unknown key `{k}` (ignored)"));
            }
        }
    }
    let flat = cfg.llm.flat_keys();
    if !flat.is_empty() {
        let owner = cfg.llm.flat_owner();
        let keys = flat
            .iter()
            .map(|k| format!("`llm.{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        warnings.push(format!(
            "{file}: {keys} read as [llm.{owner}]'s settings; move them under [llm.{owner}] \
             (`safe-coder config` does it when it writes the file)"
        ));
    }
    Ok(cfg)
}

/// The keys under `prefix` that hold values (a table's leaves, else `prefix` itself).
fn leaf_keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
    match v.as_table() {
        Some(t) if !t.is_empty() => {
            for (k, v) in t {
                leaf_keys(&format!("{prefix}.{k}"), v, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// `a.?.b` (serde_ignored's spelling of an optional level) as `a.b`.
fn dotted(path: &str) -> String {
    path.split('.')
        .filter(|s| *s != "?")
        .collect::<Vec<_>>()
        .join(".")
}

/// What happened when a config file was looked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileState {
    Missing,
    Read,
    /// Not read, for this reason (a symlink, not a regular file, too large).
    Refused(String),
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

pub fn project_config_file(project: &Path) -> PathBuf {
    project.join(".safe-coder").join("config.toml")
}

/// Reads the user's config file. A missing file is an empty config.
pub fn read_user_config(
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<(FileConfig, FileState)> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((parse_file_config(&text, path, warnings)?, FileState::Read)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok((FileConfig::default(), FileState::Missing))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Reads a project's `.safe-coder/config.toml` the careful way: neither the directory nor
/// the file may be a symlink (a link to a home secret or `/dev/zero` must not be read),
/// the file must be a regular file of at most [`MAX_PROJECT_CONFIG_BYTES`]. Anything else
/// is refused with a warning and the project file counts as empty.
pub fn read_project_config(
    project: &Path,
    warnings: &mut Vec<String>,
) -> Result<(FileConfig, FileState)> {
    let path = project_config_file(project);
    let refuse = |warnings: &mut Vec<String>, why: String| {
        warnings.push(format!(
            "{}: {why}; the project config is ignored",
            path.display()
        ));
        Ok((FileConfig::default(), FileState::Refused(why)))
    };
    let dir = project.join(".safe-coder");
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.file_type().is_symlink() => {
            return refuse(warnings, "`.safe-coder` is a symlink".into())
        }
        Ok(m) if !m.is_dir() => return refuse(warnings, "`.safe-coder` is not a directory".into()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((FileConfig::default(), FileState::Missing))
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
    use std::os::unix::fs::OpenOptionsExt;
    // O_NOFOLLOW: a symlink fails to open (ELOOP) instead of being followed, even if it
    // appeared after a check; O_NONBLOCK: a FIFO does not block the open.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((FileConfig::default(), FileState::Missing))
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return refuse(warnings, "it is a symlink".into())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        return refuse(warnings, "it is not a regular file".into());
    }
    if meta.len() > MAX_PROJECT_CONFIG_BYTES {
        return refuse(
            warnings,
            format!("it is larger than {} KiB", MAX_PROJECT_CONFIG_BYTES / 1024),
        );
    }
    let mut bytes = Vec::new();
    file.take(MAX_PROJECT_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > MAX_PROJECT_CONFIG_BYTES {
        return refuse(
            warnings,
            format!("it is larger than {} KiB", MAX_PROJECT_CONFIG_BYTES / 1024),
        );
    }
    let Ok(text) = String::from_utf8(bytes) else {
        return refuse(warnings, "it is not UTF-8 text".into());
    };
    Ok((parse_file_config(&text, &path, warnings)?, FileState::Read))
}

/// Whether the user trusted `project` (by its canonical path) in their file.
pub fn is_trusted(user: &FileConfig, project: &Path) -> bool {
    let Some(trust) = &user.trust else {
        return false;
    };
    let canonical = project
        .canonicalize()
        .unwrap_or_else(|_| project.to_path_buf());
    trust
        .projects
        .iter()
        .any(|p| p == &canonical || p.canonicalize().is_ok_and(|c| c == canonical))
}

/// Drops from a project file what a project may not say about its own safety, with a
/// warning naming each key:
/// - always: keys and base URLs (a cloned repository must not send your key elsewhere),
///   and `[trust]` (a project cannot trust itself);
/// - unless the user trusted the project: a backend weaker than the user's, an approval
///   mode looser than the user's, higher limits, extra environment variables for the
///   agent, and the VM/container binaries and images.
///
/// "The user's" is the user file's value, else the default.
pub fn restrict_project(
    proj: &mut FileConfig,
    user: &FileConfig,
    trusted: bool,
    file: &str,
    warnings: &mut Vec<String>,
) {
    let d = Defaults::default();
    let never = |key: &str, why: &str, warnings: &mut Vec<String>| {
        warnings.push(format!(
            "{file}: `{key}` is ignored in a project config ({why})"
        ));
    };
    let llm = &mut proj.llm;
    if llm.api_key.take().is_some() {
        never(
            "llm.api_key",
            "keys belong in the user config or the environment",
            warnings,
        );
    }
    if llm.base_url.take().is_some() {
        never(
            "llm.base_url",
            "a project must not redirect your API key elsewhere",
            warnings,
        );
    }
    for p in ProviderKind::ALL {
        let s = llm.section_mut(p);
        if s.api_key.take().is_some() {
            never(
                &format!("llm.{p}.api_key"),
                "keys belong in the user config or the environment",
                warnings,
            );
        }
        if s.base_url.take().is_some() {
            never(
                &format!("llm.{p}.base_url"),
                "a project must not redirect your API key elsewhere",
                warnings,
            );
        }
    }
    if proj.trust.take().is_some() {
        never(
            "trust",
            "only your user config says which projects you trust",
            warnings,
        );
    }
    if trusted {
        return;
    }

    let refuse = |key: &str, value: String, why: String, warnings: &mut Vec<String>| {
        warnings.push(format!(
            "{file}: `{key} = {value}` is refused: {why}; run `safe-coder config --trust` in this project if you want it to decide"
        ));
    };
    let iso = &mut proj.isolation;
    let user_backend = user.isolation.backend.unwrap_or(d.backend);
    if let Some(b) = iso.backend {
        if b.isolation_rank() < user_backend.isolation_rank() {
            refuse(
                "isolation.backend",
                format!("\"{b}\""),
                format!("a project may not choose a weaker backend than yours ({user_backend})"),
                warnings,
            );
            iso.backend = None;
        }
    }
    let user_mode = user.agent.approval_mode.unwrap_or(d.approval_mode);
    if let Some(m) = proj.agent.approval_mode {
        if m > user_mode {
            refuse(
                "agent.approval_mode",
                format!("\"{m}\""),
                format!("a project may not loosen approvals beyond yours ({user_mode})"),
                warnings,
            );
            proj.agent.approval_mode = None;
        }
    }
    /// Refuses a project's `key = value`, with the reason.
    type Refuse<'a> = dyn Fn(&str, String, String, &mut Vec<String>) + 'a;
    fn cap<T: PartialOrd + Copy + fmt::Display>(
        key: &str,
        value: &mut Option<T>,
        limit: T,
        warnings: &mut Vec<String>,
        refuse: &Refuse<'_>,
    ) {
        if let Some(v) = *value {
            if v > limit {
                refuse(
                    key,
                    v.to_string(),
                    format!("a project may only lower this limit (yours is {limit})"),
                    warnings,
                );
                *value = None;
            }
        }
    }
    let user_mem = user.isolation.memory_mb.unwrap_or(d.memory_mb);
    let user_cpus = user.isolation.cpus.unwrap_or(d.cpus);
    cap(
        "isolation.memory_mb",
        &mut iso.memory_mb,
        user_mem,
        warnings,
        &refuse,
    );
    cap(
        "isolation.cpus",
        &mut iso.cpus,
        user_cpus,
        warnings,
        &refuse,
    );
    cap(
        "isolation.max_file_mb",
        &mut iso.max_file_mb,
        user.isolation.max_file_mb.unwrap_or(d.max_file_mb),
        warnings,
        &refuse,
    );
    cap(
        "docker.memory_mb",
        &mut proj.docker.memory_mb,
        user.docker.memory_mb.unwrap_or(user_mem),
        warnings,
        &refuse,
    );
    cap(
        "docker.cpus",
        &mut proj.docker.cpus,
        user.docker.cpus.unwrap_or(user_cpus),
        warnings,
        &refuse,
    );
    cap(
        "vm.mem_size_mib",
        &mut proj.vm.mem_size_mib,
        user.vm.mem_size_mib.unwrap_or(user_mem),
        warnings,
        &refuse,
    );
    let user_vcpus = user
        .vm
        .vcpu_count
        .unwrap_or(user_cpus.ceil().max(1.0) as u32);
    cap(
        "vm.vcpu_count",
        &mut proj.vm.vcpu_count,
        user_vcpus,
        warnings,
        &refuse,
    );

    if let Some(names) = &mut iso.env_passthrough {
        let allowed = user.isolation.env_passthrough.clone().unwrap_or_default();
        let (keep, drop): (Vec<String>, Vec<String>) =
            names.drain(..).partition(|n| allowed.contains(n));
        if !drop.is_empty() {
            refuse(
                "isolation.env_passthrough",
                format!("{drop:?}"),
                "a project may not hand more of your environment to the agent".into(),
                warnings,
            );
        }
        *names = keep;
    }
    let unsafe_paths = [
        (
            "vm.firecracker_bin",
            proj.vm
                .firecracker_bin
                .take()
                .map(|p| p.display().to_string()),
        ),
        (
            "vm.kernel_image",
            proj.vm.kernel_image.take().map(|p| p.display().to_string()),
        ),
        (
            "vm.rootfs_image",
            proj.vm.rootfs_image.take().map(|p| p.display().to_string()),
        ),
        ("docker.image", proj.docker.image.take()),
        ("docker.runtime", proj.docker.runtime.take()),
    ];
    for (key, v) in unsafe_paths {
        if let Some(v) = v {
            refuse(
                key,
                format!("{v:?}"),
                "a project may not choose what the sandbox runs".into(),
                warnings,
            );
        }
    }
    if let Some(pull) = proj.docker.auto_pull.take() {
        refuse(
            "docker.auto_pull",
            pull.to_string(),
            "a project may not choose what the sandbox runs".into(),
            warnings,
        );
    }
}

// ---------------------------------------------------------------------------------------
// Resolution
// ---------------------------------------------------------------------------------------

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

    let merge_vm = VmSection {
        firecracker_bin: files_only(&proj.vm.firecracker_bin, &user.vm.firecracker_bin),
        kernel_image: files_only(&proj.vm.kernel_image, &user.vm.kernel_image),
        rootfs_image: files_only(&proj.vm.rootfs_image, &user.vm.rootfs_image),
        vcpu_count: files_only(&proj.vm.vcpu_count, &user.vm.vcpu_count),
        mem_size_mib: files_only(&proj.vm.mem_size_mib, &user.vm.mem_size_mib),
    };
    let merge_docker = DockerSection {
        image: files_only(&proj.docker.image, &user.docker.image),
        cpus: files_only(&proj.docker.cpus, &user.docker.cpus),
        memory_mb: files_only(&proj.docker.memory_mb, &user.docker.memory_mb),
        auto_pull: files_only(&proj.docker.auto_pull, &user.docker.auto_pull),
        runtime: files_only(&proj.docker.runtime, &user.docker.runtime),
    };

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

// ---------------------------------------------------------------------------------------
// Writing the user file
// ---------------------------------------------------------------------------------------

/// What `safe-coder config` may change in the user file.
#[derive(Clone, Debug, Default)]
pub struct ConfigUpdate {
    /// Switches to this provider; the key, model and URL below are its settings.
    pub provider: Option<ProviderKind>,
    pub api_key: Option<String>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub backend: Option<BackendChoice>,
    pub approval_mode: Option<ApprovalMode>,
    /// Adds this (canonical) project directory to `[trust] projects`.
    pub trust: Option<PathBuf>,
    /// Removes this project directory from `[trust] projects`.
    pub untrust: Option<PathBuf>,
}

impl ConfigUpdate {
    pub fn is_empty(&self) -> bool {
        self.provider.is_none()
            && self.api_key.is_none()
            && self.model.is_none()
            && self.base_url.is_none()
            && self.backend.is_none()
            && self.approval_mode.is_none()
            && self.trust.is_none()
            && self.untrust.is_none()
    }
}

/// The table at `key` in `parent`, made (as a `[section]`) when absent.
fn table_in<'a>(
    parent: &'a mut dyn toml_edit::TableLike,
    key: &str,
    path: &Path,
) -> Result<&'a mut dyn toml_edit::TableLike> {
    parent
        .entry(key)
        .or_insert(toml_edit::Item::Table(toml_edit::Table::new()))
        .as_table_like_mut()
        .with_context(|| {
            format!(
                "{}: `{key}` is not a table; fix or remove it first",
                path.display()
            )
        })
}

/// Writes `update` into the user config, keeping everything else in it (comments too),
/// with mode 0600 (a temp file renamed over the old one). Old flat `[llm]` keys are moved
/// into their provider's table first. Returns notes for the user (what was moved).
pub fn write_user_config(path: &Path, update: &ConfigUpdate) -> Result<Vec<String>> {
    // A user file that is a symlink (dotfiles kept elsewhere) is updated where it points,
    // not replaced by a plain file.
    let resolved_path = std::fs::canonicalize(path).ok();
    let path = resolved_path.as_deref().unwrap_or(path);
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    // Validate the existing file first: never rewrite a file we cannot understand.
    let current = parse_file_config(&text, path, &mut Vec::new())?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{}: invalid TOML", path.display()))?;
    let mut notes = Vec::new();
    let root = doc.as_table_mut();

    let llm = table_in(root, "llm", path)?;
    // The old flat keys belong to the provider the file named: move them into its table
    // before the provider changes, so they never become another provider's.
    let owner = current.llm.flat_owner();
    let mut moved = Vec::new();
    for key in ["api_key", "base_url", "model"] {
        if let Some(item) = llm.remove(key) {
            let section = table_in(llm, owner.as_str(), path)?;
            if !section.contains_key(key) {
                section.insert(key, item);
            }
            moved.push(key);
        }
    }
    if !moved.is_empty() {
        notes.push(format!(
            "Moved [llm] {} into [llm.{owner}]",
            moved.join(", ")
        ));
    }
    if let Some(p) = update.provider {
        llm.insert("provider", toml_edit::value(p.as_str()));
    }
    let target = update
        .provider
        .or(current.llm.provider)
        .unwrap_or(Defaults::default().provider);
    for (key, value) in [
        ("api_key", &update.api_key),
        ("model", &update.model),
        ("base_url", &update.base_url),
    ] {
        if let Some(v) = value {
            table_in(llm, target.as_str(), path)?.insert(key, toml_edit::value(v.as_str()));
        }
    }
    if llm.is_empty() {
        root.remove("llm");
    }
    if let Some(b) = update.backend {
        table_in(root, "isolation", path)?.insert("backend", toml_edit::value(b.as_str()));
    }
    if let Some(m) = update.approval_mode {
        table_in(root, "agent", path)?.insert("approval_mode", toml_edit::value(m.as_str()));
    }
    if update.trust.is_some() || update.untrust.is_some() {
        let trust = table_in(root, "trust", path)?;
        let list = trust
            .entry("projects")
            .or_insert(toml_edit::value(toml_edit::Array::new()))
            .as_array_mut()
            .with_context(|| {
                format!(
                    "{}: `trust.projects` is not a list; fix it first",
                    path.display()
                )
            })?;
        let as_text = |p: &Path| p.display().to_string();
        if let Some(gone) = &update.untrust {
            list.retain(|v| v.as_str() != Some(as_text(gone).as_str()));
        }
        if let Some(p) = &update.trust {
            if !list.iter().any(|v| v.as_str() == Some(as_text(p).as_str())) {
                list.push(as_text(p));
            }
        }
    }
    let out = doc.to_string();
    // What we write must read back (and never carry a key where it does not belong).
    parse_file_config(&out, path, &mut Vec::new())?;

    let dir = path
        .parent()
        .context("config path has no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".config.toml.{}.tmp", std::process::id()));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(out.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(notes)
}

// ---------------------------------------------------------------------------------------
// Showing
// ---------------------------------------------------------------------------------------

fn describe_file(state: &FileState) -> String {
    match state {
        FileState::Missing => "not found".to_string(),
        FileState::Read => "read".to_string(),
        FileState::Refused(why) => format!("refused: {why}"),
    }
}

/// What `config --show` prints: which files were read, the configuration in force (the
/// key masked, each kind's source), and every warning.
pub fn show(resolved: &Resolved) -> String {
    let mut out = String::new();
    let (user_path, user_state) = &resolved.user_file;
    let (proj_path, proj_state) = &resolved.project_file;
    let _ = writeln!(
        out,
        "user config:    {} ({})",
        user_path.display(),
        describe_file(user_state)
    );
    let trust = if resolved.project_trusted {
        ", trusted"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "project config: {} ({}{trust})",
        proj_path.display(),
        describe_file(proj_state)
    );
    let r = resolved;
    let _ = writeln!(out, "[llm]");
    let _ = writeln!(out, "provider = {}", r.provider);
    let _ = writeln!(out, "model = {}", r.model);
    let _ = writeln!(out, "base_url = {}", r.base_url);
    let _ = writeln!(out, "max_tokens = {}", r.max_tokens);
    let key = r
        .api_key
        .as_deref()
        .map(mask)
        .unwrap_or_else(|| "(not set)".to_string());
    let _ = writeln!(out, "api_key = {key}");
    let _ = writeln!(out, "[isolation]");
    let _ = writeln!(
        out,
        "backend = {}    # {}",
        r.backend,
        r.backend_source.describe()
    );
    let _ = writeln!(out, "exclude = {:?}", r.exclude);
    let _ = writeln!(out, "memory_mb = {}", r.memory_mb);
    let _ = writeln!(out, "cpus = {}", r.cpus);
    let _ = writeln!(out, "max_file_mb = {}", r.max_file_mb);
    let _ = writeln!(out, "env_passthrough = {:?}", r.env_passthrough);
    if r.docker != DockerSection::default() {
        let _ = writeln!(out, "[docker]\n{:?}", r.docker);
    }
    if r.vm != VmSection::default() {
        let _ = writeln!(out, "[vm]\n{:?}", r.vm);
    }
    let _ = writeln!(out, "[agent]");
    let chosen = if r.approval_mode_source.is_explicit() {
        ""
    } else {
        ": `exec` picks its own when none is chosen"
    };
    let _ = writeln!(
        out,
        "approval_mode = {}    # {}{chosen}",
        r.approval_mode,
        r.approval_mode_source.describe()
    );
    let _ = writeln!(out, "max_turns = {}", r.max_turns);
    let _ = writeln!(out, "[context]");
    let _ = writeln!(out, "window_tokens = {}", r.context_window);
    let _ = writeln!(out, "compact_threshold = {}", r.compact_threshold);
    let _ = writeln!(out, "[ui]");
    let _ = writeln!(out, "theme = {}", r.theme.as_str());
    for w in &r.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (FileConfig, Vec<String>) {
        let mut w = Vec::new();
        let cfg = parse_file_config(text, Path::new("c.toml"), &mut w).unwrap();
        (cfg, w)
    }

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col("abc", 0), (1, 1));
        assert_eq!(line_col("a\nbcd", 4), (2, 3));
        assert_eq!(line_col("a\n", 99), (2, 1));
    }

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

    #[test]
    fn flat_keys_belong_to_the_provider_named_in_the_same_file() {
        let (cfg, w) =
            parse("[llm]\nprovider = \"openai\"\napi_key = \"k1\"\n[llm.openai]\nmodel = \"m\"\n");
        assert_eq!(
            cfg.llm
                .for_provider(ProviderKind::OpenAi)
                .api_key
                .as_deref(),
            Some("k1")
        );
        assert_eq!(
            cfg.llm.for_provider(ProviderKind::OpenAi).model.as_deref(),
            Some("m")
        );
        assert_eq!(
            cfg.llm.for_provider(ProviderKind::Anthropic),
            ProviderSection::default()
        );
        assert!(w.iter().any(|w| w.contains("[llm.openai]")), "{w:?}");
        // No provider named: the default provider's.
        let (cfg, _) = parse("[llm]\napi_key = \"k2\"\n");
        assert_eq!(
            cfg.llm
                .for_provider(ProviderKind::Anthropic)
                .api_key
                .as_deref(),
            Some("k2")
        );
        assert_eq!(cfg.llm.for_provider(ProviderKind::Ollama).api_key, None);
    }

    #[test]
    fn project_may_tighten_but_not_loosen() {
        let (user, _) = parse("[isolation]\nbackend = \"process\"\nmemory_mb = 1000\n[agent]\napproval_mode = \"auto-edit\"\n");
        let (mut proj, _) = parse(
            "[isolation]\nbackend = \"copy\"\nmemory_mb = 500\ncpus = 8\nenv_passthrough = [\"AWS_SECRET\"]\n\
             [agent]\napproval_mode = \"default\"\n[docker]\nimage = \"evil\"\n[llm.ollama]\nbase_url = \"http://x\"\n",
        );
        let mut w = Vec::new();
        restrict_project(&mut proj, &user, false, "p.toml", &mut w);
        assert_eq!(proj.isolation.backend, None);
        assert_eq!(proj.isolation.memory_mb, Some(500), "lower: kept");
        assert_eq!(proj.isolation.cpus, None, "8 > the default 2");
        assert_eq!(
            proj.agent.approval_mode,
            Some(ApprovalMode::Default),
            "stricter: kept"
        );
        assert_eq!(proj.isolation.env_passthrough, Some(vec![]));
        assert_eq!(proj.docker.image, None);
        assert_eq!(proj.llm.ollama.base_url, None);
        for key in [
            "isolation.backend",
            "isolation.cpus",
            "isolation.env_passthrough",
            "docker.image",
            "llm.ollama.base_url",
        ] {
            assert!(
                w.iter().any(|w| w.contains(&format!("`{key}"))),
                "no warning for {key}: {w:?}"
            );
        }
        assert_eq!(w.len(), 5, "{w:?}");

        // Trusted: everything but keys and URLs stays.
        let (mut proj, _) = parse("[isolation]\nbackend = \"direct\"\n[llm]\napi_key = \"k\"\n");
        let mut w = Vec::new();
        restrict_project(&mut proj, &user, true, "p.toml", &mut w);
        assert_eq!(
            proj.isolation.backend,
            Some(BackendChoice::Kind(BackendKind::Direct))
        );
        assert_eq!(proj.llm.api_key, None);
        assert_eq!(w.len(), 1, "{w:?}");
    }

    #[test]
    fn unknown_tables_are_reported_by_their_keys() {
        let (_, w) = parse("[extra]\na = 1\n[extra.deep]\nb = 2\n[llm]\nmodle = \"x\"\n");
        for key in ["extra.a", "extra.deep.b", "llm.modle"] {
            assert!(
                w.iter().any(|w| w.contains(&format!("`{key}`"))),
                "{key}: {w:?}"
            );
        }
    }
}
