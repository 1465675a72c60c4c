#![allow(clippy::unwrap_used)]
mod common;

use std::fs;
use std::path::PathBuf;

use common::*;
use safe_coder_history::sync::{mark_conflicts, pending, sync_back, sync_back_with};
use safe_coder_history::SessionRepo;

struct Fixture {
    _tmp: tempfile::TempDir,
    project: PathBuf,
    repo: SessionRepo,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    fs::create_dir(&project).unwrap();
    sample_project(&project);
    let repo = SessionRepo::create_sandbox_copy(&project, &tmp.path().join("work"), &[]).unwrap();
    Fixture {
        _tmp: tmp,
        project,
        repo,
    }
}

/// The agent writes, edits, deletes, chmods, adds a symlink and a nested file.
fn agent_changes(f: &Fixture) {
    let w = f.repo.work_tree();
    write(w, "src/main.rs", "fn main() { agent(); }\n");
    write(w, "new/dir/added.rs", "added\n");
    fs::remove_file(w.join("src/lib.rs")).unwrap();
    fs::remove_dir_all(w.join("a")).unwrap();
    set_exec(w, "README.md", true);
    set_exec(w, "run.sh", false);
    write(w, "tool.sh", "#!/bin/sh\n");
    set_exec(w, "tool.sh", true);
    std::os::unix::fs::symlink("new/dir/added.rs", w.join("added-link")).unwrap();
    f.repo.commit_changes("Agent executed: bash", None).unwrap();
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn host_is_untouched_until_sync_then_gets_exactly_the_changes() {
    need_git!();
    let f = fixture();
    let before = tree_snapshot(&f.project);
    agent_changes(&f);
    assert_eq!(tree_snapshot(&f.project), before);

    let report = sync_back(&f.repo, &f.project, None).unwrap();
    assert!(
        report.conflicts.is_empty() && report.skipped.is_empty(),
        "{report:?}"
    );
    assert_eq!(report.applied.len(), 8, "{report:?}");
    let p = &f.project;
    assert_eq!(read(p, "src/main.rs"), "fn main() { agent(); }\n");
    assert_eq!(read(p, "new/dir/added.rs"), "added\n");
    assert!(!p.join("src/lib.rs").exists());
    assert!(!p.join("a").exists(), "the emptied directories go too");
    assert!(is_exec(p, "README.md") && !is_exec(p, "run.sh") && is_exec(p, "tool.sh"));
    assert_eq!(
        fs::read_link(p.join("added-link")).unwrap().to_str(),
        Some("new/dir/added.rs")
    );
    // The project's own .git is untouched and nothing else appeared.
    assert_eq!(read(p, ".git/HEAD"), "ref: refs/heads/master\n");
    let mut host = tree_snapshot(p);
    host.retain(|k, _| {
        !k.starts_with(".git") && !k.starts_with("node_modules") && !k.starts_with("logs")
    });
    let mut work = tree_snapshot(f.repo.work_tree());
    work.retain(|k, _| {
        !k.starts_with(".git") && !k.starts_with("node_modules") && !k.starts_with("logs")
    });
    assert_eq!(
        host.keys().collect::<Vec<_>>(),
        work.keys().collect::<Vec<_>>()
    );
    for (k, (data, mode)) in &work {
        assert_eq!(&host[k].0, data, "{k}");
        assert_eq!(host[k].1 & 0o100, mode & 0o100, "{k}");
    }

    // Idempotent: a second run changes nothing and reports everything applied.
    let snap = tree_snapshot(p);
    let again = sync_back(&f.repo, &f.project, None).unwrap();
    assert_eq!(sorted(again.applied), sorted(report.applied));
    assert!(again.conflicts.is_empty());
    assert_eq!(tree_snapshot(p), snap);
    assert!(pending(&f.repo, &f.project).unwrap().is_empty());
}

#[test]
fn pick_files() {
    need_git!();
    let f = fixture();
    agent_changes(&f);
    let pick = vec![
        "src/main.rs".to_string(),
        "src/lib.rs".to_string(),
        "not/changed.txt".to_string(),
    ];
    let report = sync_back(&f.repo, &f.project, Some(&pick)).unwrap();
    assert_eq!(sorted(report.applied), vec!["src/lib.rs", "src/main.rs"]);
    assert!(report.skipped.contains(&"new/dir/added.rs".to_string()));
    assert!(report.skipped.contains(&"not/changed.txt".to_string()));
    assert!(!f.project.join("new").exists());
    assert!(!f.project.join("src/lib.rs").exists());
    assert!(f.project.join("a/b/c/deep.txt").exists());
    assert!(!is_exec(&f.project, "README.md"));
    assert_eq!(pending(&f.repo, &f.project).unwrap().len(), 6);
}

#[test]
fn conflicting_host_edit_survives() {
    need_git!();
    let f = fixture();
    agent_changes(&f);
    // The user edits files on the host meanwhile.
    write(&f.project, "src/main.rs", "fn main() { user(); }\n");
    write(&f.project, "src/lib.rs", "user kept working here\n");
    write(&f.project, "new/dir/added.rs", "user made the same file\n");
    // ...and one edit that happens to equal the agent's version: not a conflict.
    set_exec(&f.project, "run.sh", false);

    let mut cs = f.repo.change_set().unwrap();
    mark_conflicts(&f.repo, &f.project, &mut cs).unwrap();
    let conflicted: Vec<&str> = cs
        .files
        .iter()
        .filter(|c| c.conflict)
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(
        conflicted,
        vec!["new/dir/added.rs", "src/lib.rs", "src/main.rs"]
    );
    assert!(cs
        .summary_text()
        .contains("src/main.rs (modified, CONFLICT"));

    let report = sync_back(&f.repo, &f.project, None).unwrap();
    assert_eq!(
        sorted(report.conflicts),
        vec!["new/dir/added.rs", "src/lib.rs", "src/main.rs"]
    );
    assert!(report.applied.contains(&"run.sh".to_string()));
    assert_eq!(read(&f.project, "src/main.rs"), "fn main() { user(); }\n");
    assert_eq!(read(&f.project, "src/lib.rs"), "user kept working here\n");
    assert_eq!(
        read(&f.project, "new/dir/added.rs"),
        "user made the same file\n"
    );
    // The agent's version stays in the session.
    assert_eq!(
        read(f.repo.work_tree(), "src/main.rs"),
        "fn main() { agent(); }\n"
    );
    assert_eq!(
        pending(&f.repo, &f.project).unwrap(),
        vec!["new/dir/added.rs", "src/lib.rs", "src/main.rs"]
    );
}

#[test]
fn forcing_a_conflict_takes_the_agents_version_and_nothing_else() {
    need_git!();
    let f = fixture();
    agent_changes(&f);
    write(&f.project, "src/main.rs", "fn main() { user(); }\n");
    write(&f.project, "src/lib.rs", "user kept working here\n");

    // Forced but not accepted: nothing is written.
    let only = vec!["README.md".to_string()];
    let force = vec!["src/main.rs".to_string()];
    let r = sync_back_with(&f.repo, &f.project, Some(&only), &force).unwrap();
    assert_eq!(r.applied, vec!["README.md"]);
    assert_eq!(read(&f.project, "src/main.rs"), "fn main() { user(); }\n");

    // Forced and accepted: the agent's version replaces the user's; the other
    // conflict still stands.
    let r = sync_back_with(&f.repo, &f.project, None, &force).unwrap();
    assert!(r.applied.contains(&"src/main.rs".to_string()), "{r:?}");
    assert_eq!(r.conflicts, vec!["src/lib.rs"]);
    assert_eq!(read(&f.project, "src/main.rs"), "fn main() { agent(); }\n");
    assert_eq!(read(&f.project, "src/lib.rs"), "user kept working here\n");
    assert_eq!(pending(&f.repo, &f.project).unwrap(), vec!["src/lib.rs"]);
}

#[test]
fn interrupted_sync_finishes_when_run_again() {
    need_git!();
    let f = fixture();
    agent_changes(&f);
    // Simulate a sync killed half-way: some files applied, a temp file left behind.
    fs::copy(
        f.repo.work_tree().join("src/main.rs"),
        f.project.join("src/main.rs"),
    )
    .unwrap();
    fs::remove_file(f.project.join("src/lib.rs")).unwrap();
    write(&f.project, "src/.lib.rs.safe-coder-sync", "partial");
    write(&f.project, "new/dir/.added.rs.safe-coder-sync", "partial");
    let report = sync_back(&f.repo, &f.project, None).unwrap();
    assert!(report.conflicts.is_empty(), "{report:?}");
    assert_eq!(report.applied.len(), 8);
    assert!(!f.project.join("src/.lib.rs.safe-coder-sync").exists());
    assert!(!f.project.join("new/dir/.added.rs.safe-coder-sync").exists());
    assert_eq!(read(&f.project, "new/dir/added.rs"), "added\n");
    assert!(pending(&f.repo, &f.project).unwrap().is_empty());
}

#[test]
fn uncommitted_agent_work_is_synced_and_nothing_escapes_the_project() {
    need_git!();
    let f = fixture();
    let w = f.repo.work_tree();
    // Not committed (a crash before the auto-commit): still part of the change set.
    write(w, "late.txt", "late\n");
    // A host directory replaced by a symlink pointing outside: refused.
    let outside = f._tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    write(w, "a/b/escape.txt", "nope\n");
    fs::remove_dir_all(f.project.join("a/b")).unwrap();
    std::os::unix::fs::symlink(&outside, f.project.join("a/b")).unwrap();
    let report = sync_back(&f.repo, &f.project, None).unwrap();
    assert!(report.applied.contains(&"late.txt".to_string()));
    assert!(
        report.skipped.contains(&"a/b/escape.txt".to_string()),
        "{report:?}"
    );
    assert!(!outside.join("escape.txt").exists());
    assert_eq!(read(&f.project, "late.txt"), "late\n");
    // `.git` paths are never accepted.
    let evil = vec![".git/config".to_string(), "../x".to_string()];
    let r = sync_back(&f.repo, &f.project, Some(&evil)).unwrap();
    assert!(r.applied.is_empty());
    assert_eq!(read(&f.project, ".git/config"), "[core]\n");
}

#[test]
fn a_three_way_merge_goes_into_the_session_only_when_clean() {
    use safe_coder_history::sync::{merge_into_session, MergeOutcome};
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    fs::create_dir(&project).unwrap();
    write(&project, "notes.txt", "one\ntwo\nthree\nfour\nfive\n");
    write(&project, "same.txt", "a\nb\n");
    write(&project, "quiet.txt", "q\n");
    let repo = SessionRepo::create_sandbox_copy(&project, &tmp.path().join("work"), &[]).unwrap();
    let w = repo.work_tree().to_path_buf();
    write(&w, "notes.txt", "ONE\ntwo\nthree\nfour\nfive\n");
    write(&w, "same.txt", "agent\nb\n");
    write(&w, "quiet.txt", "agent q\n");
    repo.commit_changes("Agent executed: write_file", None)
        .unwrap();
    // The user changes other lines of notes.txt, and the same line of same.txt.
    write(&project, "notes.txt", "one\ntwo\nthree\nfour\nFIVE\n");
    write(&project, "same.txt", "user\nb\n");

    assert_eq!(
        merge_into_session(&repo, &project, "notes.txt").unwrap(),
        MergeOutcome::Merged
    );
    // In the session only; the host waits for a sync that the user asks for.
    assert_eq!(read(&w, "notes.txt"), "ONE\ntwo\nthree\nfour\nFIVE\n");
    assert_eq!(read(&project, "notes.txt"), "one\ntwo\nthree\nfour\nFIVE\n");
    let force = vec!["notes.txt".to_string()];
    let _ = repo.change_set().unwrap();
    sync_back_with(&repo, &project, Some(&force), &force).unwrap();
    assert_eq!(read(&project, "notes.txt"), "ONE\ntwo\nthree\nfour\nFIVE\n");

    assert_eq!(
        merge_into_session(&repo, &project, "same.txt").unwrap(),
        MergeOutcome::Conflicts(1)
    );
    assert_eq!(read(&w, "same.txt"), "agent\nb\n");
    assert_eq!(read(&project, "same.txt"), "user\nb\n");
    assert_eq!(
        merge_into_session(&repo, &project, "quiet.txt").unwrap(),
        MergeOutcome::NotNeeded
    );
}
