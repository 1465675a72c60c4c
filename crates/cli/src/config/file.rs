//! Config files: their typed shape ([`FileConfig`]), parsing with warnings and
//! located errors, and reading the user's and a project's file.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safe_coder_llm::ProviderKind;
use safe_coder_protocol::ApprovalMode;
use safe_coder_tui::Theme;
use serde::{Deserialize, Deserializer};

pub use super::docker::DockerSection;
use super::vm::VmSection;
use super::{BackendChoice, Defaults};

/// The largest project config file that is read; a larger one is refused with a warning.
pub const MAX_PROJECT_CONFIG_BYTES: u64 = 64 * 1024;

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

    pub(crate) fn section_mut(&mut self, p: ProviderKind) -> &mut ProviderSection {
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

/// `[network]`: what `safe-coder run` lets a command reach (docs/run.md).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct NetworkSection {
    /// Hosts (`HOST[:PORT]`, `*.DOMAIN`) reachable through Safe Coder's proxy.
    pub allow: Option<Vec<String>>,
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
    pub network: NetworkSection,
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

pub(super) fn positive_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    whole(d, i64::MAX as u64).map(Some)
}

pub(super) fn positive_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    whole(d, u64::from(u32::MAX)).map(|n| Some(n as u32))
}

pub(super) fn positive_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
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
