//! `safe-coder sessions`: sessions that still hold unsynced work, after an exit or a
//! crash: list, show, diff, sync, discard.

use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use safe_coder_core::session::{owner_alive, SessionFiles};
use safe_coder_history::sync::MergeOutcome;
use safe_coder_protocol::display::{escape_for_terminal, sync_finished_text};
use safe_coder_protocol::{Event, ReviewDecision, SyncOutcome};
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
    /// The unified diff of the changes a session still holds (one file with PATH).
    Diff { id: String, path: Option<String> },
    /// Apply a session's changes to the project.
    Sync {
        id: String,
        /// Sync every change without asking.
        #[arg(long)]
        accept_all: bool,
        /// Sync only these files; the others stay in the session (see --reject-rest).
        #[arg(long, num_args = 1.., value_name = "PATH")]
        files: Vec<String>,
        /// With --files: drop the changes to every other file.
        #[arg(long, requires = "files")]
        reject_rest: bool,
        /// Take the agent's version of these files, even where the file changed on the
        /// host since the session began (a conflict); your version is replaced.
        #[arg(long, num_args = 1.., value_name = "PATH")]
        theirs: Vec<String>,
        /// Keep your version of these files: the agent's change to them is dropped from
        /// the session (its history keeps it).
        #[arg(long, num_args = 1.., value_name = "PATH")]
        ours: Vec<String>,
        /// Merge your changes and the agent's to these files (a three-way merge from the
        /// session start) into the session's version, when they do not overlap; then see
        /// the result with `sessions diff` and take it with --theirs.
        #[arg(long, num_args = 1.., value_name = "PATH")]
        merge: Vec<String>,
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

/// A session's files for a command that changes them: refused while another process
/// has the session open.
fn open_session(store: &Arc<Mutex<Store>>, record: &SessionRecord) -> Result<SessionFiles> {
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
    Ok(SessionFiles::open(record, store.clone())?)
}

/// A session's files for reading (`show`, `diff`), or `None` when none are left.
fn read_session(store: &Arc<Mutex<Store>>, record: &SessionRecord) -> Result<Option<SessionFiles>> {
    if !std::path::Path::new(&record.session_dir).exists() {
        return Ok(None);
    }
    Ok(Some(SessionFiles::open(record, store.clone())?))
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
            let records: Vec<SessionRecord> = if all {
                records
            } else {
                records
                    .into_iter()
                    .filter(|r| holds_work(&store, r))
                    .collect()
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
            let changes = match read_session(&store, &record)? {
                Some(files) => Some(files.change_set()?),
                None => None,
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
                Some(_) => println!("No changes left to sync."),
                None => println!("{}", gone_text(&record)),
            }
        }
        SessionsCmd::Diff { id, path } => {
            let record = find(&store, &id)?;
            let Some(files) = read_session(&store, &record)? else {
                bail!("{}", gone_text(&record));
            };
            // The same pending set that `show` lists and `sync` would write.
            let changes = files.change_set()?;
            let wanted: Vec<&str> = match &path {
                Some(p) => {
                    if !changes.files.iter().any(|c| &c.path == p) {
                        bail!(
                            "{p} is not among the changes session {} still holds; `safe-coder sessions show {}` lists them",
                            record.id,
                            record.id
                        );
                    }
                    vec![p.as_str()]
                }
                None => changes.files.iter().map(|c| c.path.as_str()).collect(),
            };
            for p in wanted {
                print!("{}", escape_for_terminal(&files.diff(Some(p))?));
            }
        }
        SessionsCmd::Sync {
            id,
            accept_all,
            files,
            reject_rest,
            theirs,
            ours,
            merge,
        } => {
            let record = find(&store, &id)?;
            let session = open_session(&store, &record)?;
            // The one pending set `show` lists and `diff` shows; it is also what the
            // writes below are checked against (a file is written only as shown).
            let changes = session.change_set()?;
            if changes.is_empty() {
                session.review(&ReviewDecision::RejectAll, true)?;
                println!("Session {} has no changes left to sync.", record.id);
                return Ok(());
            }
            print!("{}", escape_for_terminal(&changes.summary_text()));
            let is_pending = |f: &String| changes.files.iter().any(|c| &c.path == f);
            for f in files.iter().chain(&theirs).chain(&ours).chain(&merge) {
                if !is_pending(f) {
                    bail!("{f} is not among the session's pending changes; `safe-coder sessions show {}` lists them", record.id);
                }
            }
            if let Some(both) = theirs.iter().find(|p| ours.contains(p)) {
                bail!("{both} is given to both --theirs and --ours: choose one");
            }
            for p in &merge {
                let shown = escape_for_terminal(p);
                match session.merge(p)? {
                    MergeOutcome::Merged => println!(
                        "{shown}: your changes and the agent's merged cleanly into the session's version; see it with `safe-coder sessions diff {id} {shown}`, take it with `safe-coder sessions sync {id} --theirs {shown}`",
                        id = record.id
                    ),
                    MergeOutcome::Conflicts(n) => println!(
                        "{shown}: {n} place(s) changed on both sides, so nothing was merged: take one side with --theirs or --ours"
                    ),
                    MergeOutcome::NotNeeded => {
                        println!("{shown}: not a conflict, so there is nothing to merge")
                    }
                }
            }
            // Settle the files the user named first; the rest follows the decision.
            let settled = session.resolve(&theirs, &ours)?;
            for (p, why) in &settled.reasons {
                println!("{}: {}", escape_for_terminal(p), escape_for_terminal(why));
            }
            let settled_any = !theirs.is_empty() || !ours.is_empty() || !merge.is_empty();
            let decision = if accept_all {
                ReviewDecision::AcceptAll
            } else if !files.is_empty() {
                ReviewDecision::Pick {
                    paths: files,
                    keep_rest: !reject_rest,
                }
            } else if settled_any {
                // Only the named files: everything else stays in the session.
                ReviewDecision::Pick {
                    paths: Vec::new(),
                    keep_rest: true,
                }
            } else if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                // Ask, as at the end of a chat.
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let input = crate::chat_line::LineInput::spawn();
                    let diffs = changes
                        .files
                        .iter()
                        .map(|f| {
                            (
                                f.path.clone(),
                                session.diff(Some(&f.path)).unwrap_or_default(),
                            )
                        })
                        .collect();
                    crate::chat_line::ask_review(&input, &changes, &diffs).await
                })
            } else {
                bail!("say what to sync: --accept-all, or --files PATH... (the other files stay in the session; add --reject-rest to drop them); for a conflict, --theirs PATH takes the agent's version, --ours PATH keeps yours, --merge PATH joins both when they do not overlap");
            };
            let outcome = match &decision {
                ReviewDecision::AcceptAll | ReviewDecision::Pick { .. } => SyncOutcome::Synced,
                ReviewDecision::RejectAll => SyncOutcome::Rejected,
                ReviewDecision::Keep => SyncOutcome::Kept,
            };
            let result = session.review(&decision, true)?;
            // Only what this sync wrote counts as synced, not files synced before; a
            // file kept with --ours was not synced either.
            let mut applied: Vec<String> = settled.applied;
            for p in result.report.applied {
                if is_pending(&p) && !applied.contains(&p) && !ours.contains(&p) {
                    applied.push(p);
                }
            }
            let finished = Event::SyncFinished {
                outcome,
                project: record.project.clone(),
                session_id: record.id.clone(),
                applied,
                conflicts: result.report.conflicts,
                held_back: result.held_back,
                not_written: result.report.reasons,
                session_kept: !result.finished,
            };
            println!("{}", sync_finished_text(&finished).unwrap_or_default());
            if !ours.is_empty() {
                println!(
                    "Kept your version of {} file(s); the agent's change to them is dropped from the session.",
                    ours.len()
                );
            }
            if !result.finished && outcome != SyncOutcome::Kept {
                println!(
                    "Still in session {id}: `safe-coder sessions show {id}` lists what is left.",
                    id = record.id
                );
            }
        }
        SessionsCmd::Discard { id } => {
            let record = find(&store, &id)?;
            let session = open_session(&store, &record)?;
            session.discard();
            if record.backend == safe_coder_sandbox::BackendKind::Docker.as_str() {
                discard_container(&dirs, &record);
            }
            println!("Discarded session {} and its unsynced work.", record.id);
        }
    }
    Ok(())
}

/// Removes a discarded docker session's container (kept stopped since the session
/// ended), on the engine the user's config names for that project.
fn discard_container(dirs: &Dirs, record: &SessionRecord) {
    let project = std::path::PathBuf::from(&record.project);
    let spec = crate::config::resolve(dirs, &project, &crate::config::Overrides::default())
        .map(|r| r.docker.spec())
        .unwrap_or_default();
    if let Err(e) = safe_coder_sandbox::docker::discard_session(&spec, &record.id) {
        eprintln!("warning: the session's container could not be removed: {e}");
    }
}

/// Whether a session listed as unsynced really holds work. A session that ended
/// normally was reviewed, so it does, and a running one is its owner's business (its
/// history is not touched from here); one left behind by a crash or a kill may have
/// changed nothing, which only its change set can tell. Only those are checked, so
/// the list stays cheap; when in doubt it is listed.
fn holds_work(store: &Arc<Mutex<Store>>, record: &SessionRecord) -> bool {
    let dir = std::path::Path::new(&record.session_dir);
    if record.state.as_str() != "active" || owner_alive(dir) {
        return true;
    }
    if !dir.exists() {
        return false;
    }
    SessionFiles::open(record, store.clone())
        .and_then(|f| {
            if f.workspace.syncs_back() {
                f.change_set().map(|c| !c.is_empty())
            } else {
                Ok(true)
            }
        })
        .unwrap_or(true)
}

/// Why a session has no files left, in the user's words.
fn gone_text(record: &SessionRecord) -> String {
    match record.state.as_str() {
        "synced" => format!(
            "Session {} was synced; nothing is left to review.",
            record.id
        ),
        "discarded" => format!("Session {} was discarded.", record.id),
        _ => format!(
            "Session {} has no work left on disk ({} is gone).",
            record.id, record.session_dir
        ),
    }
}
