#![allow(clippy::unwrap_used)]
mod common;

use std::fs;

use common::*;
use safe_coder_history::{HistoryError, SessionRepo};
use safe_coder_protocol::ChangeKind;

fn sandbox(excludes: &[&str]) -> (tempfile::TempDir, std::path::PathBuf, SessionRepo) {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    fs::create_dir(&project).unwrap();
    sample_project(&project);
    let work = tmp.path().join("session/work");
    let ex: Vec<String> = excludes.iter().map(|s| s.to_string()).collect();
    let repo = SessionRepo::create_sandbox_copy(&project, &work, &ex).unwrap();
    (tmp, project, repo)
}

fn messages(repo: &SessionRepo) -> Vec<String> {
    repo.log().unwrap().into_iter().map(|c| c.message).collect()
}

#[test]
fn copy_excludes_git_and_globs_keeps_exec_and_symlinks() {
    need_git!();
    let (_tmp, _project, repo) = sandbox(&["node_modules", "*.log"]);
    let w = repo.work_tree();
    assert!(w.join("src/main.rs").is_file());
    assert!(w.join("a/b/c/deep.txt").is_file());
    assert!(!w.join("node_modules").exists());
    assert!(!w.join("logs/x.log").exists());
    // The project's .git is not copied; the session's own repository is there instead.
    assert!(w.join(".git/config").read_link().is_err());
    assert_ne!(
        fs::read_to_string(w.join(".git/HEAD")).unwrap(),
        "ref: refs/heads/master\n"
    );
    assert!(is_exec(w, "run.sh"));
    assert!(!is_exec(w, "README.md"));
    let link = fs::symlink_metadata(w.join("link-to-main")).unwrap();
    assert!(link.file_type().is_symlink());
    assert_eq!(
        fs::read_link(w.join("link-to-main")).unwrap().to_str(),
        Some("src/main.rs")
    );

    // A normal, clean git repository.
    let git_dir = repo.git_dir();
    assert_eq!(
        git(
            git_dir,
            w,
            &["status", "--porcelain", "--untracked-files=all"]
        ),
        ""
    );
    git(git_dir, w, &["fsck", "--strict", "--no-dangling"]);
    assert_eq!(messages(&repo), vec!["Initial snapshot - Safe Coder VM"]);
    assert_eq!(repo.base().unwrap(), repo.head().unwrap());
    let tree = git(git_dir, w, &["ls-tree", "-r", "HEAD"]);
    assert!(tree.contains("100755 blob") && tree.contains("run.sh"));
    assert!(tree.contains("120000 blob") && tree.contains("link-to-main"));
    assert!(!tree.contains("node_modules"));

    // The trees written by hand equal what git computes from scratch.
    let scratch = tempfile::tempdir().unwrap();
    let idx = scratch.path().join("index");
    let out = std::process::Command::new("git")
        .args(["add", "-A", "-f"])
        .env("GIT_DIR", git_dir)
        .env("GIT_WORK_TREE", w)
        .env("GIT_INDEX_FILE", &idx)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .current_dir(w)
        .output()
        .unwrap();
    assert!(out.status.success());
    let fresh = std::process::Command::new("git")
        .args(["write-tree"])
        .env("GIT_DIR", git_dir)
        .env("GIT_WORK_TREE", w)
        .env("GIT_INDEX_FILE", &idx)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    let head_tree = git(git_dir, w, &["rev-parse", "HEAD^{tree}"]);
    assert_eq!(String::from_utf8_lossy(&fresh.stdout), head_tree);
    // The cache tree in the index is right too.
    assert_eq!(git(git_dir, w, &["write-tree"]), head_tree);
}

#[test]
fn commits_changes_with_messages_and_no_empty_commits() {
    need_git!();
    let (_tmp, _project, repo) = sandbox(&[]);
    let w = repo.work_tree().to_path_buf();
    assert_eq!(
        repo.commit_changes("Agent executed: bash", None).unwrap(),
        None
    );
    write(&w, "src/new.rs", "new\n");
    let c1 = repo
        .commit_changes(
            "Agent executed: write_file",
            Some(&["src/new.rs".to_string()]),
        )
        .unwrap();
    assert!(c1.is_some());
    assert_eq!(repo.head().unwrap(), c1.unwrap());
    assert_eq!(
        repo.commit_changes(
            "Agent executed: write_file",
            Some(&["src/new.rs".to_string()])
        )
        .unwrap(),
        None
    );
    // Absolute paths inside the work tree are fine; bash needs the full scan.
    write(&w, "src/lib.rs", "pub fn b() {}\n");
    let abs = w.join("src/lib.rs").to_string_lossy().into_owned();
    assert!(repo
        .commit_changes("Agent executed: edit_file", Some(&[abs]))
        .unwrap()
        .is_some());
    fs::remove_file(w.join("README.md")).unwrap();
    write(&w, "gen/out.txt", "generated\n");
    assert!(repo
        .commit_changes("Agent executed: write_file, bash", None)
        .unwrap()
        .is_some());
    // A directory as a touched path falls back to the scan.
    write(&w, "gen/more.txt", "more\n");
    assert!(repo
        .commit_changes("Agent executed: bash", Some(&["gen".to_string()]))
        .unwrap()
        .is_some());
    let snap = repo.snapshot("before-refactor").unwrap();
    assert_eq!(repo.head().unwrap(), snap);
    repo.snapshot("").unwrap();
    assert_eq!(
        messages(&repo),
        vec![
            "🔒 Snapshot:",
            "🔒 Snapshot: before-refactor",
            "Agent executed: bash",
            "Agent executed: write_file, bash",
            "Agent executed: edit_file",
            "Agent executed: write_file",
            "Initial snapshot - Safe Coder VM",
        ]
    );
    let log = repo.log().unwrap();
    assert_eq!(log[0].short_id, &log[0].id[..7]);
    assert!(log[0].time > 1_600_000_000);
    assert_eq!(git(repo.git_dir(), &w, &["status", "--porcelain"]), "");
    git(repo.git_dir(), &w, &["fsck", "--strict", "--no-dangling"]);
    let author = git(
        repo.git_dir(),
        &w,
        &["log", "-1", "--format=%an <%ae>|%cn <%ce>"],
    );
    assert_eq!(
        author.trim(),
        "Safe Coder <safe-coder@localhost>|Safe Coder <safe-coder@localhost>"
    );
}

#[test]
fn change_set_kinds_and_diff() {
    need_git!();
    let (_tmp, _project, repo) = sandbox(&[]);
    let w = repo.work_tree().to_path_buf();
    write(
        &w,
        "src/main.rs",
        "fn main() {\n    println!(\"bye\");\n}\n// end\n",
    );
    write(&w, "added.txt", "one\ntwo\n");
    fs::remove_file(w.join("src/lib.rs")).unwrap();
    set_exec(&w, "README.md", true);
    repo.commit_changes("Agent executed: bash", None).unwrap();
    // Uncommitted changes count too.
    write(&w, "uncommitted.txt", "x\n");
    let cs = repo.change_set().unwrap();
    let kinds: Vec<(&str, ChangeKind)> =
        cs.files.iter().map(|f| (f.path.as_str(), f.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            ("README.md", ChangeKind::ModeChanged),
            ("added.txt", ChangeKind::Added),
            ("src/lib.rs", ChangeKind::Deleted),
            ("src/main.rs", ChangeKind::Modified),
            ("uncommitted.txt", ChangeKind::Added),
        ]
    );
    let main = cs.files.iter().find(|f| f.path == "src/main.rs").unwrap();
    assert_eq!((main.additions, main.deletions), (2, 1));
    assert!(
        cs.files
            .iter()
            .find(|f| f.path == "README.md")
            .unwrap()
            .executable
    );
    assert!(cs.files.iter().all(|f| !f.conflict));
    assert!(cs.summary_text().starts_with("Changed 5 file(s):\n"));
    // change_set does not commit.
    assert_eq!(messages(&repo).len(), 2);

    let d = repo.diff(Some("src/main.rs")).unwrap();
    assert!(d.contains("--- a/src/main.rs") && d.contains("+++ b/src/main.rs"));
    assert!(d.contains("-    println!(\"hi\");") && d.contains("+    println!(\"bye\");"));
    let all = repo.diff(None).unwrap();
    assert!(all.contains("uncommitted.txt") && all.contains("deleted file mode"));
    assert!(matches!(
        repo.diff(Some("../etc/passwd")),
        Err(HistoryError::BadPath(_))
    ));
}

#[test]
fn rollback_undo_restore() {
    need_git!();
    let (_tmp, _project, repo) = sandbox(&[]);
    let w = repo.work_tree().to_path_buf();
    let base = repo.base().unwrap();
    write(&w, "src/main.rs", "v1\n");
    let c1 = repo
        .commit_changes("Agent executed: write_file", None)
        .unwrap()
        .unwrap();
    write(&w, "src/main.rs", "v2\n");
    write(&w, "later.txt", "later\n");
    repo.commit_changes("Agent executed: write_file", None)
        .unwrap()
        .unwrap();

    let rb = repo.rollback(&c1).unwrap();
    assert_eq!(read(&w, "src/main.rs"), "v1\n");
    assert!(!w.join("later.txt").exists());
    assert_eq!(repo.head().unwrap(), rb);
    assert_eq!(messages(&repo)[0], format!("Rollback to {}", &c1[..7]));
    assert!(matches!(
        repo.rollback("no-such-commit"),
        Err(HistoryError::UnknownCommit(_))
    ));

    // Undo steps back one change at a time.
    write(&w, "src/main.rs", "v3\n");
    repo.commit_changes("Agent executed: edit_file", None)
        .unwrap()
        .unwrap();
    assert!(repo.undo().unwrap().is_some());
    assert_eq!(read(&w, "src/main.rs"), "v1\n");
    assert!(repo.undo().unwrap().is_some());
    assert_eq!(read(&w, "src/main.rs"), "v2\n");
    assert!(w.join("later.txt").exists());

    // Restore one file, then everything.
    write(&w, "src/lib.rs", "changed\n");
    fs::remove_file(w.join("README.md")).unwrap();
    let restored = repo.restore(Some("src/main.rs")).unwrap();
    assert_eq!(restored, vec!["src/main.rs"]);
    assert_eq!(
        read(&w, "src/main.rs"),
        "fn main() {\n    println!(\"hi\");\n}\n"
    );
    assert_eq!(read(&w, "src/lib.rs"), "changed\n");
    let mut all = repo.restore(None).unwrap();
    all.sort();
    assert_eq!(all, vec!["README.md", "later.txt", "src/lib.rs"]);
    assert!(!w.join("later.txt").exists());
    assert_eq!(read(&w, "README.md"), "# Demo\n\nline two\n");
    assert!(repo.change_set().unwrap().is_empty());
    assert_eq!(messages(&repo)[0], "Restore all files to the session start");
    // The full history is kept.
    assert!(repo
        .log()
        .unwrap()
        .iter()
        .any(|c| c.message.starts_with("Undo ")));
    assert_eq!(repo.log().unwrap().last().unwrap().id, base);
    assert_eq!(git(repo.git_dir(), &w, &["status", "--porcelain"]), "");

    // Undo back to the start, then nothing more to undo.
    let fresh = sandbox(&[]);
    write(fresh.2.work_tree(), "x.txt", "x\n");
    fresh
        .2
        .commit_changes("Agent executed: write_file", None)
        .unwrap();
    assert!(fresh.2.undo().unwrap().is_some());
    assert!(!fresh.2.work_tree().join("x.txt").exists());
    assert_eq!(fresh.2.undo().unwrap(), None);
}

#[test]
fn reopen_after_restart() {
    need_git!();
    let (_tmp, _project, repo) = sandbox(&[]);
    write(repo.work_tree(), "kept.txt", "kept\n");
    let again = SessionRepo::open(repo.work_tree(), repo.git_dir()).unwrap();
    assert_eq!(again.base().unwrap(), repo.base().unwrap());
    assert_eq!(again.change_set().unwrap().files.len(), 1);
    assert!(matches!(
        SessionRepo::open(repo.work_tree(), &repo.work_tree().join("nope")),
        Err(HistoryError::NotARepo(_))
    ));
}

#[test]
fn shadow_repo_never_touches_the_users_git() {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    fs::create_dir(&project).unwrap();
    write(&project, "src/main.rs", "fn main() {}\n");
    write(&project, "README.md", "readme\n");
    write(&project, ".gitignore", "target/\n");
    write(&project, "target/debug/bin", "binary\n");
    // A real user repository with a commit, a branch and an index.
    let user_git = project.join(".git");
    let plain = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&project)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "U")
            .env("GIT_AUTHOR_EMAIL", "u@x")
            .env("GIT_COMMITTER_NAME", "U")
            .env("GIT_COMMITTER_EMAIL", "u@x")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    plain(&["init", "-q", "-b", "trunk"]);
    plain(&["add", "-A"]);
    plain(&["commit", "-qm", "user commit"]);
    plain(&["branch", "feature"]);
    write(&project, "README.md", "readme, staged edit\n");
    plain(&["add", "README.md"]);
    let before = tree_snapshot(&user_git);

    let shadow = tmp.path().join("data/session/shadow.git");
    let repo = SessionRepo::create_shadow(&project, &shadow, &["*.tmp".to_string()]).unwrap();
    assert_eq!(messages(&repo), vec!["Snapshot: Session start"]);
    let tracked = git(repo.git_dir(), &project, &["ls-files"]);
    assert!(tracked.contains("src/main.rs") && tracked.contains(".gitignore"));
    assert!(!tracked.contains(".git/") && !tracked.contains("target/"));
    assert_eq!(
        git(repo.git_dir(), &project, &["status", "--porcelain"]),
        ""
    );
    git(
        repo.git_dir(),
        &project,
        &["fsck", "--strict", "--no-dangling"],
    );

    for i in 0..5 {
        write(&project, &format!("gen{i}.rs"), "x\n");
        write(&project, "scratch.tmp", "ignored\n");
        repo.commit_changes("Agent executed: write_file", Some(&[format!("gen{i}.rs")]))
            .unwrap()
            .unwrap();
        write(&project, "src/main.rs", &format!("fn main() {{ {i} }}\n"));
        repo.commit_changes("Agent executed: bash", None)
            .unwrap()
            .unwrap();
    }
    repo.snapshot("mid").unwrap();
    repo.undo().unwrap().unwrap();
    let restored = repo.restore(Some("src/main.rs")).unwrap();
    assert_eq!(restored, vec!["src/main.rs"]);
    assert_eq!(read(&project, "src/main.rs"), "fn main() {}\n");
    repo.restore(None).unwrap();
    assert!(!project.join("gen0.rs").exists());
    assert!(project.join("target/debug/bin").exists());
    let cs = repo.change_set().unwrap();
    assert!(cs.is_empty(), "{cs:?}");
    let _ = repo.diff(None).unwrap();

    assert_eq!(tree_snapshot(&user_git), before, "the user's .git changed");
    assert_eq!(read(&project, "README.md"), "readme, staged edit\n");
}

#[test]
fn refuses_a_non_empty_target_and_missing_project() {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("p");
    fs::create_dir(&project).unwrap();
    write(tmp.path(), "busy/x", "x");
    assert!(matches!(
        SessionRepo::create_sandbox_copy(&project, &tmp.path().join("busy"), &[]),
        Err(HistoryError::NotEmpty(_))
    ));
    assert!(matches!(
        SessionRepo::create_sandbox_copy(&tmp.path().join("nope"), &tmp.path().join("w"), &[]),
        Err(HistoryError::NoProject(_))
    ));
    // An empty project works.
    let repo = SessionRepo::create_sandbox_copy(&project, &tmp.path().join("w"), &[]).unwrap();
    assert!(repo.change_set().unwrap().is_empty());
    git(repo.git_dir(), repo.work_tree(), &["fsck", "--strict"]);
}

#[test]
fn work_tree_inside_the_project_is_not_copied_into_itself() {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "file.txt", "x\n");
    let work = tmp.path().join(".local/share/safe-coder/s1/work");
    let repo = SessionRepo::create_sandbox_copy(tmp.path(), &work, &[]).unwrap();
    assert!(work.join("file.txt").is_file());
    assert!(!work.join(".local/share/safe-coder/s1/work").exists());
    assert_eq!(
        git(repo.git_dir(), repo.work_tree(), &["status", "--porcelain"]),
        ""
    );
}

/// Runs itself in a child process whose PATH holds no git.
#[test]
fn git_missing_is_one_clear_error() {
    if std::env::var_os("HISTORY_TEST_NO_GIT").is_some() {
        let tmp = tempfile::tempdir().unwrap();
        let err =
            SessionRepo::create_sandbox_copy(tmp.path(), &tmp.path().join("w"), &[]).unwrap_err();
        assert!(matches!(err, HistoryError::GitMissing));
        assert_eq!(
            err.to_string(),
            "git is not installed; Safe Coder needs git to track the agent's changes: install it (e.g. apt-get install git)"
        );
        let err = SessionRepo::create_shadow(tmp.path(), &tmp.path().join("g"), &[]).unwrap_err();
        assert!(matches!(err, HistoryError::GitMissing));
        return;
    }
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "git_missing_is_one_clear_error", "--nocapture"])
        .env("HISTORY_TEST_NO_GIT", "1")
        .env("PATH", empty.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

#[test]
fn touched_fast_path_builds_the_same_trees_as_git() {
    need_git!();
    let (_tmp, _project, repo) = sandbox(&[]);
    let w = repo.work_tree().to_path_buf();
    type Step<'a> = (Box<dyn Fn() + 'a>, Vec<&'static str>);
    let steps: Vec<Step> = vec![
        (
            Box::new(|| write(&w, "a/b/c/deep.txt", "changed deep\n")),
            vec!["a/b/c/deep.txt"],
        ),
        (
            Box::new(|| write(&w, "x/y/z/new.txt", "new nested\n")),
            vec!["x/y/z/new.txt"],
        ),
        (
            Box::new(|| fs::remove_file(w.join("a/b/c/deep.txt")).unwrap()),
            vec!["a/b/c/deep.txt"],
        ),
        (
            Box::new(|| set_exec(&w, "src/lib.rs", true)),
            vec!["./src/lib.rs"],
        ),
        (
            Box::new(|| std::os::unix::fs::symlink("x/y", w.join("a.link")).unwrap()),
            vec!["a.link", "a.link"],
        ),
        (
            Box::new(|| {
                write(&w, "a-b", "sorts before a/\n");
                write(&w, "a0", "sorts after a/\n");
                fs::remove_file(w.join("empty.txt")).unwrap();
            }),
            vec!["a-b", "a0", "empty.txt"],
        ),
    ];
    for (step, paths) in steps {
        step();
        let paths: Vec<String> = paths.into_iter().map(String::from).collect();
        assert!(repo
            .commit_changes("Agent executed: write_file", Some(&paths))
            .unwrap()
            .is_some());
        // What git computes from scratch for the work tree.
        let scratch = tempfile::tempdir().unwrap();
        let env = |c: &mut std::process::Command| {
            c.env("GIT_DIR", repo.git_dir())
                .env("GIT_WORK_TREE", &w)
                .env("GIT_INDEX_FILE", scratch.path().join("i"))
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .current_dir(&w);
        };
        let mut add = std::process::Command::new("git");
        add.args(["add", "-A"]);
        env(&mut add);
        assert!(add.output().unwrap().status.success());
        let mut wt = std::process::Command::new("git");
        wt.arg("write-tree");
        env(&mut wt);
        let fresh = String::from_utf8(wt.output().unwrap().stdout).unwrap();
        assert_eq!(
            fresh,
            git(repo.git_dir(), &w, &["rev-parse", "HEAD^{tree}"])
        );
    }
    // Nothing changed: no commit; an untouched change is not seen by the fast path but by the scan.
    assert_eq!(
        repo.commit_changes("Agent executed: write_file", Some(&["a-b".to_string()]))
            .unwrap(),
        None
    );
    git(repo.git_dir(), &w, &["fsck", "--strict", "--no-dangling"]);
    assert_eq!(
        repo.commit_changes("Agent executed: bash", None).unwrap(),
        None
    );
    assert_eq!(git(repo.git_dir(), &w, &["status", "--porcelain"]), "");
}

#[test]
fn history_outside_the_work_tree_survives_the_agent_deleting_dot_git() {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    fs::create_dir(&project).unwrap();
    sample_project(&project);
    let work = tmp.path().join("session/work");
    let git_dir = tmp.path().join("session/history.git");
    let repo = SessionRepo::create_sandbox_copy_at(&project, &work, Some(&git_dir), &[]).unwrap();
    assert!(
        !work.join(".git").exists(),
        "no repository inside the work tree"
    );
    fs::write(work.join("new.txt"), "new\n").unwrap();
    repo.commit_changes("Agent executed: write_file", Some(&["new.txt".to_string()]))
        .unwrap()
        .unwrap();
    // What an agent's `git init` / `rm -rf .git` in the work tree does cannot reach it.
    fs::create_dir_all(work.join(".git")).unwrap();
    fs::remove_dir_all(work.join(".git")).unwrap();
    fs::write(work.join("more.txt"), "more\n").unwrap();
    repo.commit_changes("Agent executed: bash", None)
        .unwrap()
        .unwrap();
    let reopened = SessionRepo::open(&work, &git_dir).unwrap();
    assert_eq!(
        messages(&reopened),
        vec![
            "Agent executed: bash",
            "Agent executed: write_file",
            "Initial snapshot - Safe Coder VM"
        ]
    );
    let changes = reopened.change_set().unwrap();
    let paths: Vec<&str> = changes.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, vec!["more.txt", "new.txt"]);
    let fsck = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(&git_dir)
        .args(["fsck", "--strict"])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
}

#[test]
fn a_session_whose_index_was_never_written_still_commits_exactly_its_changes() {
    need_git!();
    // The first snapshot writes its index on a thread of its own; a crash before that
    // leaves none. The history must not care: git re-reads the files instead.
    let (_tmp, _project, repo) = sandbox(&[]);
    let (work, git_dir) = (repo.work_tree().to_path_buf(), repo.git_dir().to_path_buf());
    let base = repo.base().unwrap();
    drop(repo);
    fs::remove_file(git_dir.join("index")).unwrap();
    let again = SessionRepo::open(&work, &git_dir).unwrap();
    assert_eq!(again.base().unwrap(), base);
    write(&work, "src/lib.rs", "pub fn changed() {}\n");
    let changes = again.change_set().unwrap();
    let paths: Vec<&str> = changes.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["src/lib.rs"]);
    assert!(again
        .commit_changes("Agent executed: bash", None)
        .unwrap()
        .is_some());
    assert_eq!(again.change_set().unwrap().files.len(), 1);
    assert!(again
        .commit_changes("Agent executed: bash", None)
        .unwrap()
        .is_none());
}
