//! `safe-coder sessions`: sessions that still hold unsynced work, after an exit or a
//! crash: list, show, diff, sync, discard.

use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use safe_coder_core::session::{owner_alive, Review, Session};
use safe_coder_store::{ListFilter, SessionRecord, Store};

use crate::config::Dirs;
use crate::setup;

#[derive(Subcommand, Debug)]
pub enum SessionsCmd {
    /// Sessions holding unsynced work (all sessions with --all).
    List {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        all: bool,
    },
    /// One session: its record and its change summary.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// The unified diff of a session's changes (one file with PATH).
    Diff { id: String, path: Option<String> },
    /// Apply a session's changes to the project.
    Sync {
        id: String,
        /// Sync every change without asking.
        #[arg(long)]
        accept_all: bool,
        /// Sync only these files (the others are rejected).
        #[arg(long, num_args = 1.., value_name = "PATH")]
        files: Vec<String>,
    },
    /// Drop a session and its unsynced work.
    Discard { id: String },
}

fn state_label(r: &SessionRecord) -> String {
    let state = r.state.as_str();
    if state == "active" {
        if owner_alive(std::path::Path::new(&r.session_dir)) {
            "running".into()
        } else {
            "interrupted".into()
        }
    } else {
        state.to_string()
    }
}

fn ago(ts: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(ts);
    let d = (now - ts).max(0);
    match d {
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        3600..=86399 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

fn open_store(dirs: &Dirs) -> Result<Arc<Mutex<Store>>> {
    setup::open_store(dirs)
}

fn find(store: &Arc<Mutex<Store>>, id: &str) -> Result<SessionRecord> {
    let s = store
        .lock()
        .map_err(|_| anyhow::anyhow!("the session store is poisoned"))?;
    s.get_session(id)?
        .with_context(|| format!("no session '{id}': see `safe-coder sessions list --all`"))
}

fn open_session(store: &Arc<Mutex<Store>>, record: &SessionRecord) -> Result<Session> {
    if record.state.as_str() == "active" && owner_alive(std::path::Path::new(&record.session_dir)) {
        bail!(
            "session {} is still open in another safe-coder process (pid in {}/owner.pid)",
            record.id,
            record.session_dir
        );
    }
    if !std::path::Path::new(&record.session_dir).exists() {
        bail!(
            "session {} has no work left on disk ({} is gone)",
            record.id,
            record.session_dir
        );
    }
    Ok(Session::open(record, store.clone(), 2048, 2.0)?)
}

pub fn run(cmd: SessionsCmd) -> Result<()> {
    let dirs = Dirs::from_env()?;
    let store = open_store(&dirs)?;
    match cmd {
        SessionsCmd::List { json, all } => {
            let records = {
                let s = store
                    .lock()
                    .map_err(|_| anyhow::anyhow!("the session store is poisoned"))?;
                s.list_sessions(if all {
                    ListFilter::all()
                } else {
                    ListFilter::unsynced()
                })?
            };
            if json {
                let rows: Vec<serde_json::Value> = records
                    .iter()
                    .map(|r| {
                        let mut v = serde_json::to_value(r).unwrap_or_default();
                        if let Some(o) = v.as_object_mut() {
                            o.insert("status".into(), serde_json::Value::String(state_label(r)));
                        }
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if records.is_empty() {
                println!(
                    "No sessions with unsynced work{}.",
                    if all {
                        ""
                    } else {
                        " (--all lists every session)"
                    }
                );
                return Ok(());
            }
            println!(
                "{:<16} {:<12} {:<8} {:<10} {:<40} TITLE",
                "ID", "STATE", "BACKEND", "ACTIVITY", "PROJECT"
            );
            for r in &records {
                println!(
                    "{:<16} {:<12} {:<8} {:<10} {:<40} {}",
                    r.id,
                    state_label(r),
                    r.backend,
                    ago(r.updated_at),
                    r.project,
                    r.title.as_deref().unwrap_or("")
                );
            }
        }
        SessionsCmd::Show { id, json } => {
            let record = find(&store, &id)?;
            let changes = if std::path::Path::new(&record.session_dir).exists() {
                Session::open(&record, store.clone(), 2048, 2.0)
                    .ok()
                    .and_then(|s| s.change_set().ok())
            } else {
                None
            };
            if json {
                let mut v = serde_json::to_value(&record)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "status".into(),
                        serde_json::Value::String(state_label(&record)),
                    );
                    o.insert("changes".into(), serde_json::to_value(&changes)?);
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("Session:  {}", record.id);
            println!("Title:    {}", record.title.as_deref().unwrap_or(""));
            println!("Project:  {}", record.project);
            println!("Backend:  {}", record.backend);
            println!("State:    {}", state_label(&record));
            println!("Model:    {} ({})", record.model, record.provider);
            println!("Messages: {}", record.message_count);
            println!("Activity: {}", ago(record.updated_at));
            println!("Base:     {}", record.base_commit.as_deref().unwrap_or("-"));
            match changes {
                Some(c) if !c.is_empty() => print!("{}", c.summary_text()),
                Some(_) => println!("No changes."),
                None => println!("No work left on disk."),
            }
        }
        SessionsCmd::Diff { id, path } => {
            let record = find(&store, &id)?;
            let session = Session::open(&record, store.clone(), 2048, 2.0)?;
            print!("{}", session.diff(path.as_deref())?);
        }
        SessionsCmd::Sync {
            id,
            accept_all,
            files,
        } => {
            let record = find(&store, &id)?;
            let session = open_session(&store, &record)?;
            let changes = session.change_set()?;
            if changes.is_empty() {
                session.review(Review::RejectAll, true)?;
                println!("Session {} has no changes to sync.", record.id);
                return Ok(());
            }
            print!("{}", changes.summary_text());
            let review = if accept_all {
                Review::AcceptAll
            } else if !files.is_empty() {
                for f in &files {
                    if !changes.files.iter().any(|c| &c.path == f) {
                        bail!("{f} is not among the session's changed files");
                    }
                }
                Review::Pick(files)
            } else if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                // Ask, as at the end of a chat.
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                return rt.block_on(async {
                    let input = crate::chat_line::LineInput::spawn();
                    crate::chat_line::review(&session, &input, true).await
                });
            } else {
                bail!("say what to sync: --accept-all, or --files PATH... (the other files are rejected)");
            };
            let (report, finished) = session.review(review, true)?;
            println!(
                "✓ Changes synced to host: {} ({} file(s))",
                record.project,
                report.applied.len()
            );
            for c in &report.conflicts {
                println!("⚠ {c}: changed on the host since the session began; the agent's version stays in the session");
            }
            if !finished {
                println!("Session {} keeps the unsynced work.", record.id);
            }
        }
        SessionsCmd::Discard { id } => {
            let record = find(&store, &id)?;
            let session = open_session(&store, &record)?;
            session.discard();
            println!("Discarded session {}.", record.id);
        }
    }
    Ok(())
}
