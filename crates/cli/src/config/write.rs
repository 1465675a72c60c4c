//! `safe-coder config`: comment-preserving, atomic, mode-0600 edits of the user file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use safe_coder_llm::ProviderKind;
use safe_coder_protocol::ApprovalMode;

use super::{parse_file_config, BackendChoice, Defaults};

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
