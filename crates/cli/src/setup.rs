//! What `chat` and `exec` share: the resolved configuration turned into the core's
//! [`Settings`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use safe_coder_core::session::store_path;
use safe_coder_core::{Price, Settings};
use safe_coder_llm::{ProviderConfig, RetryPolicy};
use safe_coder_sandbox::BackendKind;
use safe_coder_store::Store;

use crate::config::{self, Dirs, Overrides, Resolved};
use crate::AgentArgs;

/// An error and its causes on one line.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

pub struct Prepared {
    pub dirs: Dirs,
    pub project: PathBuf,
    pub resolved: Resolved,
}

pub fn prepare(args: &AgentArgs) -> Result<Prepared> {
    let dirs = Dirs::from_env()?;
    let project = match &args.path {
        Some(p) => p.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let project = project
        .canonicalize()
        .with_context(|| format!("cannot open the project directory {}", project.display()))?;
    if !project.is_dir() {
        anyhow::bail!("{} is not a directory", project.display());
    }
    let backend = if args.demo {
        Some(config::BackendChoice::Kind(BackendKind::Copy))
    } else {
        args.backend
    };
    let flags = Overrides {
        provider: args.provider,
        model: args.model.clone(),
        base_url: args.base_url.clone(),
        api_key: args.api_key.clone(),
        backend,
        approval_mode: args.approval_mode,
    };
    let resolved = config::resolve(&dirs, &project, &flags)?;
    for w in &resolved.warnings {
        eprintln!("warning: {w}");
    }
    Ok(Prepared {
        dirs,
        project,
        resolved,
    })
}

/// What `safe-coder sandbox doctor` prints, with `[vm]` as the config in force in the
/// current directory says (the user's file when the directory cannot be read).
pub fn doctor_report() -> Result<String> {
    let dirs = Dirs::from_env()?;
    let project = std::env::current_dir()
        .and_then(|d| d.canonicalize())
        .unwrap_or_else(|_| dirs.config_dir.clone());
    let resolved = config::resolve(&dirs, &project, &Overrides::default())?;
    let settings = safe_coder_sandbox::BackendSettings {
        vm: resolved.vm.spec(&dirs.data_dir),
        docker: resolved.docker.spec(),
    };
    Ok(safe_coder_sandbox::select::doctor_report_with(&settings))
}

/// The provider settings the model client is made from.
pub fn provider_config(resolved: &Resolved) -> ProviderConfig {
    ProviderConfig {
        kind: resolved.provider,
        base_url: resolved.base_url.clone(),
        api_key: resolved.api_key.clone(),
        model: resolved.model.clone(),
        max_tokens: resolved.max_tokens,
        retry: RetryPolicy::default(),
        ..ProviderConfig::new(resolved.provider)
    }
}

pub fn open_store(dirs: &Dirs) -> Result<Arc<Mutex<Store>>> {
    let path = store_path(&dirs.data_dir);
    let store = Store::open(&path)
        .with_context(|| format!("cannot open the session store {}", path.display()))?;
    Ok(Arc::new(Mutex::new(store)))
}

/// The backend the user asked for; `None` is auto.
pub fn requested_backend(p: &Prepared) -> Option<BackendKind> {
    p.resolved.backend.kind()
}

/// What the core needs for a conversation.
pub fn settings(p: &Prepared) -> Result<Settings> {
    let r = &p.resolved;
    Ok(Settings {
        project: p.project.clone(),
        data_dir: p.dirs.data_dir.clone(),
        config_dir: p.dirs.config_dir.clone(),
        backend: requested_backend(p),
        exclude: r.exclude.clone(),
        memory_mb: r.memory_mb,
        cpus: r.cpus,
        env_passthrough: r.env_passthrough.clone(),
        max_file_mb: r.max_file_mb,
        vm: r.vm.spec(&p.dirs.data_dir),
        docker: r.docker.spec(),
        provider: provider_config(r),
        max_turns: r.max_turns,
        approval_mode: r.approval_mode,
        context_window: r.context_window,
        compact_threshold: r.compact_threshold,
        prices: r
            .prices
            .iter()
            .map(|(m, p)| {
                (
                    m.clone(),
                    Price {
                        input_per_mtok: p.input_per_mtok,
                        output_per_mtok: p.output_per_mtok,
                    },
                )
            })
            .collect(),
        headless: false,
        status_interval: None,
    })
}

/// An error already shown to the user: `main` exits non-zero without printing it again.
#[derive(Debug)]
pub struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(reported)")
    }
}

impl std::error::Error for Reported {}
