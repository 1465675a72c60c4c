//! What `chat` and `exec` share: configuration, the model client, the store, the session
//! and the agent.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use safe_coder_core::session::{store_path, Session, SessionConfig};
use safe_coder_core::{Agent, AgentOptions};
use safe_coder_llm::{ModelClient, ProviderConfig, RetryPolicy};
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
        Some("copy".to_string())
    } else {
        args.backend.clone()
    };
    let flags = Overrides {
        provider: args.provider.clone(),
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

pub fn client(resolved: &Resolved) -> Result<Box<dyn ModelClient>> {
    let config = ProviderConfig {
        kind: resolved.provider,
        base_url: resolved.base_url.clone(),
        api_key: resolved.api_key.clone(),
        model: resolved.model.clone(),
        max_tokens: resolved.max_tokens,
        retry: RetryPolicy::default(),
        ..ProviderConfig::new(resolved.provider)
    };
    Ok(safe_coder_llm::client(config)?)
}

pub fn open_store(dirs: &Dirs) -> Result<Arc<Mutex<Store>>> {
    let path = store_path(&dirs.data_dir);
    let store = Store::open(&path)
        .with_context(|| format!("cannot open the session store {}", path.display()))?;
    Ok(Arc::new(Mutex::new(store)))
}

pub fn session_config(p: &Prepared) -> Result<SessionConfig> {
    let backend = match p.resolved.backend.as_str() {
        "auto" => None,
        name => {
            Some(BackendKind::parse(name).with_context(|| format!("unknown backend '{name}'"))?)
        }
    };
    Ok(SessionConfig {
        project: p.project.clone(),
        data_dir: p.dirs.data_dir.clone(),
        backend,
        exclude: p.resolved.exclude.clone(),
        memory_mb: p.resolved.memory_mb,
        cpus: p.resolved.cpus,
        provider: p.resolved.provider.as_str().to_string(),
        model: p.resolved.model.clone(),
        approval_mode: p.resolved.approval_mode.to_string(),
    })
}

pub fn agent_options(p: &Prepared, memory: String) -> AgentOptions {
    AgentOptions {
        model: p.resolved.model.clone(),
        max_tokens: p.resolved.max_tokens,
        max_turns: p.resolved.max_turns,
        approval_mode: p.resolved.approval_mode,
        memory,
        context_window: p.resolved.context_window,
        compact_threshold: p.resolved.compact_threshold,
        ..AgentOptions::default()
    }
}

pub fn build_agent(p: &Prepared, session: &Session, memory: String) -> Result<Agent> {
    let client = client(&p.resolved)?;
    Ok(
        Agent::new(client, session.sandbox.clone(), agent_options(p, memory))
            .with_history(session.repo.clone())
            .with_store(session.store.clone(), session.id.clone()),
    )
}

/// A cancellation token fired by SIGINT or SIGTERM.
pub fn cancel_on_signals() -> safe_coder_sandbox::CancellationToken {
    let token = safe_coder_sandbox::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        t.cancel();
    });
    token
}
