//! Configuration: `~/.config/safe-coder/config.toml`, the project's
//! `.safe-coder/config.toml`, environment variables and flags.
//!
//! Precedence (DESIGN §1): flag > environment > project file > user file > default.
//! Files are parsed by hand from `toml::Value` so that a bad value is one error naming
//! the key and the file, and an unknown key is only a warning.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safe_coder_llm::ProviderKind;
use safe_coder_protocol::ApprovalMode;

/// Dollars per million tokens, for `/stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

/// Everything the config files can hold. `None` = not set at this layer.
#[derive(Clone, Debug, Default)]
pub struct FileConfig {
    pub provider: Option<String>,
    pub api_key: Option<String>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub max_tokens: Option<u32>,
    pub backend: Option<String>,
    pub exclude: Option<Vec<String>>,
    pub approval_mode: Option<ApprovalMode>,
    pub max_turns: Option<u32>,
    pub theme: Option<String>,
    pub context_window: Option<u64>,
    pub compact_threshold: Option<f64>,
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
    pub prices: BTreeMap<String, Price>,
    /// Warnings found while reading (unknown keys, ignored keys).
    pub warnings: Vec<String>,
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

/// Reads one config file. A missing file is an empty config.
pub fn read_file_config(path: &Path, is_project: bool) -> Result<FileConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileConfig::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    parse_file_config(&text, path, is_project)
}

fn type_err(path: &Path, key: &str, want: &str) -> anyhow::Error {
    anyhow::anyhow!("{}: `{key}` must be {want}", path.display())
}

pub fn parse_file_config(text: &str, path: &Path, is_project: bool) -> Result<FileConfig> {
    let root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        anyhow::anyhow!("{}: invalid TOML: {}", path.display(), e.message())
    })?;
    let mut cfg = FileConfig::default();
    let file = path.display().to_string();
    let warn = |cfg: &mut FileConfig, msg: String| cfg.warnings.push(format!("{file}: {msg}"));

    for (section, value) in &root {
        let Some(table) = value.as_table() else {
            warn(&mut cfg, format!("unknown key `{section}` (ignored)"));
            continue;
        };
        for (key, v) in table {
            let full = format!("{section}.{key}");
            let s = || {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| type_err(path, &full, "a string"))
            };
            let uint = || {
                v.as_integer()
                    .filter(|n| *n > 0)
                    .map(|n| n as u64)
                    .ok_or_else(|| type_err(path, &full, "a positive whole number"))
            };
            let float = || {
                v.as_float()
                    .or_else(|| v.as_integer().map(|n| n as f64))
                    .filter(|f| *f > 0.0)
                    .ok_or_else(|| type_err(path, &full, "a positive number"))
            };
            match (section.as_str(), key.as_str()) {
                ("llm", "provider") => {
                    let p = s()?;
                    p.parse::<ProviderKind>().map_err(|_| {
                        anyhow::anyhow!("{}: `llm.provider` is '{p}': use anthropic, openai or ollama", path.display())
                    })?;
                    cfg.provider = Some(p);
                }
                ("llm", "api_key") if is_project => warn(
                    &mut cfg,
                    "`llm.api_key` is ignored in a project config (keys belong in the user config or the environment)".into(),
                ),
                ("llm", "base_url") if is_project => warn(
                    &mut cfg,
                    "`llm.base_url` is ignored in a project config (a project must not redirect your API key elsewhere)".into(),
                ),
                ("llm", "api_key") => cfg.api_key = Some(s()?),
                ("llm", "model") => cfg.model = Some(s()?),
                ("llm", "base_url") => cfg.base_url = Some(s()?),
                ("llm", "max_tokens") => {
                    cfg.max_tokens = Some(u32::try_from(uint()?).map_err(|_| type_err(path, &full, "at most 4294967295"))?)
                }
                ("isolation", "backend") => {
                    let b = s()?;
                    if b != "auto" && safe_coder_sandbox::BackendKind::parse(&b).is_none() {
                        bail!(
                            "{}: `isolation.backend` is '{b}': use auto, firecracker, qemu, docker, process, copy or direct",
                            path.display()
                        );
                    }
                    cfg.backend = Some(b);
                }
                ("isolation", "exclude") => {
                    let arr = v.as_array().ok_or_else(|| type_err(path, &full, "a list of glob strings"))?;
                    let mut globs = Vec::new();
                    for g in arr {
                        globs.push(g.as_str().ok_or_else(|| type_err(path, &full, "a list of glob strings"))?.to_string());
                    }
                    cfg.exclude = Some(globs);
                }
                ("isolation", "memory_mb") => cfg.memory_mb = Some(uint()?),
                ("isolation", "cpus") => cfg.cpus = Some(float()?),
                ("agent", "approval_mode") => {
                    let m = s()?;
                    cfg.approval_mode = Some(m.parse().map_err(|e: String| anyhow::anyhow!("{}: `agent.approval_mode`: {e}", path.display()))?);
                }
                ("agent", "max_turns") => {
                    cfg.max_turns = Some(u32::try_from(uint()?).map_err(|_| type_err(path, &full, "a smaller number"))?)
                }
                ("context", "window_tokens") => cfg.context_window = Some(uint()?),
                ("context", "compact_threshold") => {
                    let f = float()?;
                    if f >= 1.0 {
                        bail!("{}: `context.compact_threshold` must be between 0 and 1 (a fraction of the window)", path.display());
                    }
                    cfg.compact_threshold = Some(f);
                }
                ("ui", "theme") => {
                    let t = s()?;
                    if t != "cyberpunk" && t != "plain" {
                        bail!("{}: `ui.theme` is '{t}': use cyberpunk or plain", path.display());
                    }
                    cfg.theme = Some(t);
                }
                ("pricing", model) => {
                    let t = v.as_table().ok_or_else(|| type_err(path, &full, "a table with input_per_mtok and output_per_mtok"))?;
                    let num = |k: &str| -> Result<f64> {
                        match t.get(k) {
                            None => Ok(0.0),
                            Some(x) => x
                                .as_float()
                                .or_else(|| x.as_integer().map(|n| n as f64))
                                .filter(|f| *f >= 0.0)
                                .ok_or_else(|| type_err(path, &format!("{full}.{k}"), "a number of dollars")),
                        }
                    };
                    cfg.prices.insert(
                        model.to_string(),
                        Price { input_per_mtok: num("input_per_mtok")?, output_per_mtok: num("output_per_mtok")? },
                    );
                }
                // Sections of spec/01 for backends that are configured here but run elsewhere.
                ("vm", "firecracker_bin" | "kernel_image" | "rootfs_image" | "vcpu_count" | "mem_size_mib")
                | ("docker", "image" | "cpus" | "memory_mb" | "auto_pull" | "runtime") => {}
                _ => warn(&mut cfg, format!("unknown key `{full}` (ignored)")),
            }
        }
    }
    Ok(cfg)
}

/// Flags given on the command line (the highest layer).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    pub backend: Option<String>,
    pub approval_mode: Option<ApprovalMode>,
}

/// The configuration in force, after every layer was applied.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub provider: ProviderKind,
    pub api_key: Option<String>,
    pub model: String,
    pub base_url: String,
    pub max_tokens: u32,
    pub backend: String,
    pub exclude: Vec<String>,
    pub approval_mode: ApprovalMode,
    pub max_turns: u32,
    pub theme: String,
    pub context_window: u64,
    pub compact_threshold: f64,
    pub memory_mb: u64,
    pub cpus: f64,
    pub prices: BTreeMap<String, Price>,
    pub warnings: Vec<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
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

pub fn resolve(dirs: &Dirs, project: &Path, flags: &Overrides) -> Result<Resolved> {
    let user = read_file_config(&dirs.user_config_file(), false)?;
    let proj = read_file_config(&project_config_file(project), true)?;
    let mut warnings = user.warnings.clone();
    warnings.extend(proj.warnings.iter().cloned());

    // Pick the layered value: flag > env > project > user.
    fn pick<T: Clone>(
        flag: Option<T>,
        env: Option<T>,
        proj: &Option<T>,
        user: &Option<T>,
    ) -> Option<T> {
        flag.or(env)
            .or_else(|| proj.clone())
            .or_else(|| user.clone())
    }

    let provider_name = pick(
        flags.provider.clone(),
        env("SAFE_CODER_PROVIDER"),
        &proj.provider,
        &user.provider,
    )
    .unwrap_or_else(|| "anthropic".to_string());
    let provider: ProviderKind = provider_name.parse().map_err(|_| {
        anyhow::anyhow!("unknown provider '{provider_name}': use anthropic, openai or ollama")
    })?;

    let key_env = match provider {
        ProviderKind::Anthropic => env("ANTHROPIC_API_KEY"),
        ProviderKind::OpenAi => env("OPENAI_API_KEY"),
        ProviderKind::Ollama => None,
    };
    let base_env = match provider {
        ProviderKind::OpenAi => env("OPENAI_BASE_URL"),
        ProviderKind::Ollama => env("OLLAMA_HOST").map(|h| {
            if h.starts_with("http://") || h.starts_with("https://") {
                h
            } else {
                format!("http://{h}")
            }
        }),
        ProviderKind::Anthropic => env("ANTHROPIC_BASE_URL"),
    };
    // A key or URL in a file written for another provider must not leak to this one.
    let same_provider =
        |c: &FileConfig| c.provider.as_deref().is_none_or(|p| p == provider.as_str());
    let user_key = if same_provider(&user) {
        user.api_key.clone()
    } else {
        None
    };
    let user_url = if same_provider(&user) {
        user.base_url.clone()
    } else {
        None
    };
    let user_model = if same_provider(&user) {
        user.model.clone()
    } else {
        None
    };
    let proj_model = if same_provider(&proj) {
        proj.model.clone()
    } else {
        None
    };

    let api_key = pick(flags.api_key.clone(), key_env, &None, &user_key);
    let base_url = pick(flags.base_url.clone(), base_env, &None, &user_url)
        .unwrap_or_else(|| provider.default_base_url().to_string());
    let model = pick(
        flags.model.clone(),
        env("SAFE_CODER_MODEL"),
        &proj_model,
        &user_model,
    )
    .unwrap_or_else(|| provider.default_model().to_string());
    let backend = pick(
        flags.backend.clone(),
        env("SAFE_CODER_BACKEND"),
        &proj.backend,
        &user.backend,
    )
    .unwrap_or_else(|| "auto".to_string());
    if backend != "auto" && safe_coder_sandbox::BackendKind::parse(&backend).is_none() {
        bail!("unknown backend '{backend}': use auto, firecracker, qemu, docker, process, copy or direct");
    }
    let approval_mode = pick(
        flags.approval_mode,
        None,
        &proj.approval_mode,
        &user.approval_mode,
    )
    .unwrap_or_default();
    let mut prices = user.prices.clone();
    prices.extend(proj.prices.clone());
    let context_window = pick(None, None, &proj.context_window, &user.context_window)
        .unwrap_or_else(|| default_context_window(&model));
    let theme = if env("NO_COLOR").is_some() {
        "plain".to_string()
    } else {
        pick(None, None, &proj.theme, &user.theme).unwrap_or_else(|| "cyberpunk".to_string())
    };
    Ok(Resolved {
        provider,
        api_key,
        model,
        base_url: base_url.trim_end_matches('/').to_string(),
        max_tokens: pick(None, None, &proj.max_tokens, &user.max_tokens).unwrap_or(8192),
        backend,
        exclude: pick(None, None, &proj.exclude, &user.exclude).unwrap_or_default(),
        approval_mode,
        max_turns: pick(None, None, &proj.max_turns, &user.max_turns).unwrap_or(100),
        theme,
        context_window,
        compact_threshold: pick(None, None, &proj.compact_threshold, &user.compact_threshold)
            .unwrap_or(0.8),
        memory_mb: pick(None, None, &proj.memory_mb, &user.memory_mb).unwrap_or(2048),
        cpus: pick(None, None, &proj.cpus, &user.cpus).unwrap_or(2.0),
        prices,
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

/// What `config` may set in the user file.
#[derive(Clone, Debug, Default)]
pub struct ConfigUpdate {
    pub provider: Option<String>,
    pub api_key: Option<String>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub backend: Option<String>,
}

impl ConfigUpdate {
    pub fn is_empty(&self) -> bool {
        self.provider.is_none()
            && self.api_key.is_none()
            && self.model.is_none()
            && self.base_url.is_none()
            && self.backend.is_none()
    }
}

/// Writes the given values into the user config, keeping everything else in it, with
/// mode 0600 (written to a temp file that is renamed over the old one).
pub fn write_user_config(path: &Path, update: &ConfigUpdate) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    // Validate the existing file first: never rewrite a file we cannot understand.
    parse_file_config(&text, path, false)?;
    let mut root: toml::Table = text.parse().unwrap_or_default();
    if let Some(p) = &update.provider {
        p.parse::<ProviderKind>().map_err(|_| {
            anyhow::anyhow!("unknown provider '{p}': use anthropic, openai or ollama")
        })?;
    }
    if let Some(b) = &update.backend {
        if b != "auto" && safe_coder_sandbox::BackendKind::parse(b).is_none() {
            bail!("unknown backend '{b}': use auto, firecracker, qemu, docker, process, copy or direct");
        }
    }
    let mut set = |section: &str, key: &str, value: &Option<String>| {
        if let Some(v) = value {
            let entry = root
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(t) = entry.as_table_mut() {
                t.insert(key.to_string(), toml::Value::String(v.clone()));
            }
        }
    };
    set("llm", "provider", &update.provider);
    set("llm", "api_key", &update.api_key);
    set("llm", "model", &update.model);
    set("llm", "base_url", &update.base_url);
    set("isolation", "backend", &update.backend);
    let out = toml::to_string_pretty(&root).context("cannot serialise the config")?;

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
    Ok(())
}

/// What `config --show` prints: the configuration in force, with the key masked.
pub fn show(resolved: &Resolved, dirs: &Dirs, project: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "user config:    {}", dirs.user_config_file().display());
    let _ = writeln!(
        out,
        "project config: {}",
        project_config_file(project).display()
    );
    let _ = writeln!(out, "[llm]");
    let _ = writeln!(out, "provider = {}", resolved.provider.as_str());
    let _ = writeln!(out, "model = {}", resolved.model);
    let _ = writeln!(out, "base_url = {}", resolved.base_url);
    let _ = writeln!(out, "max_tokens = {}", resolved.max_tokens);
    let _ = writeln!(
        out,
        "api_key = {}",
        resolved
            .api_key
            .as_deref()
            .map(mask)
            .unwrap_or_else(|| "(not set)".to_string())
    );
    let _ = writeln!(out, "[isolation]");
    let _ = writeln!(out, "backend = {}", resolved.backend);
    let _ = writeln!(out, "exclude = {:?}", resolved.exclude);
    let _ = writeln!(out, "[agent]");
    let _ = writeln!(out, "approval_mode = {}", resolved.approval_mode);
    let _ = writeln!(out, "max_turns = {}", resolved.max_turns);
    let _ = writeln!(out, "[ui]");
    let _ = writeln!(out, "theme = {}", resolved.theme);
    for w in &resolved.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}
