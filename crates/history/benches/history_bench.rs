#![allow(clippy::unwrap_used)]
//! Benchmarks for the performance targets; prints figures (no criterion).
//!
//! cargo bench -p safe-coder-history --bench history_bench
//!
//! - session start: copy-in + git init + initial commit, 5,000 files / 100 MB (≤ 300 ms)
//! - auto-commit after a one-file change in a 50,000-file project (≤ 30 ms)
//! - sync back of 100 changed files (≤ 100 ms)

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use safe_coder_history::sync::sync_back;
use safe_coder_history::SessionRepo;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `files` files in directories of 100, sizes spread around `total / files`.
fn make_project(root: &Path, files: usize, total: usize, seed: u64) {
    let mut rng = Rng(seed);
    let avg = total / files;
    let mut line = Vec::new();
    for i in 0..files {
        let dir = root.join(format!("dir{:03}/sub{}", i / 100, i % 3));
        if i % 100 == 0 || !dir.exists() {
            fs::create_dir_all(&dir).unwrap();
        }
        let size = if avg == 0 {
            0
        } else {
            (avg / 2 + (rng.next() as usize % avg.max(1))).max(1)
        };
        let mut data = Vec::with_capacity(size + 80);
        while data.len() < size {
            line.clear();
            let n = rng.next();
            line.extend_from_slice(
                format!("let value_{n:x} = compute({}) + {};\n", n % 977, n % 13).as_bytes(),
            );
            data.extend_from_slice(&line);
        }
        data.truncate(size);
        fs::write(dir.join(format!("file{i}.rs")), &data).unwrap();
    }
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "min {:.1} ms, median {:.1} ms, max {:.1} ms ({} runs)",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1]),
        v.len()
    )
}

fn git_ok(repo: &SessionRepo, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .env("GIT_DIR", repo.git_dir())
        .env("GIT_WORK_TREE", repo.work_tree())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .current_dir(repo.work_tree())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Flushes dirty pages and the discards of the previous run, outside the timing: on
/// a shared VM disk, 200 MB of writeback from the last run otherwise lands in the next.
fn settle() {
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(300));
}

fn bench_session_start(tmp: &Path) {
    let project = tmp.join("p5k");
    make_project(&project, 5000, 100 << 20, 7);
    settle();
    let mut times = Vec::new();
    for run in 0..7 {
        let work = tmp.join(format!("start{run}"));
        let t = Instant::now();
        let repo = SessionRepo::create_sandbox_copy(&project, &work, &[]).unwrap();
        times.push(t.elapsed());
        if run == 0 {
            assert_eq!(git_ok(&repo, &["status", "--porcelain"]), "");
            git_ok(&repo, &["fsck", "--strict", "--no-dangling"]);
        }
        fs::remove_dir_all(&work).unwrap();
        settle();
    }
    println!(
        "session start, 5,000 files / 100 MB (copy + init + initial commit): {}",
        stats(times)
    );
    // What this filesystem needs just to copy the same files, for comparison.
    let mut times = Vec::new();
    for run in 0..3 {
        let dest = tmp.join(format!("cp{run}"));
        let t = Instant::now();
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(&project)
            .arg(&dest)
            .status()
            .is_ok_and(|s| s.success());
        times.push(t.elapsed());
        if ok {
            let _ = fs::remove_dir_all(&dest);
        }
        settle();
    }
    println!(
        "  baseline: `cp -a` of the same project on the same filesystem: {}",
        stats(times)
    );

    let mut times = Vec::new();
    for run in 0..5 {
        let git_dir = tmp.join(format!("shadow{run}.git"));
        let t = Instant::now();
        SessionRepo::create_shadow(&project, &git_dir, &[]).unwrap();
        times.push(t.elapsed());
        fs::remove_dir_all(&git_dir).unwrap();
        settle();
    }
    println!(
        "direct backend start (shadow repo, snapshot in place), same project: {}",
        stats(times)
    );
    fs::remove_dir_all(&project).unwrap();
}

fn bench_commit(tmp: &Path) {
    let project = tmp.join("p50k");
    make_project(&project, 50_000, 50_000 * 300, 11);
    let work = tmp.join("w50k");
    let t = Instant::now();
    let repo = SessionRepo::create_sandbox_copy(&project, &work, &[]).unwrap();
    println!(
        "(50,000-file sandbox created in {:.0} ms)",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let rel = "dir250/sub1/file25001.rs";
    let mut touched_times = Vec::new();
    for i in 0..15 {
        fs::write(work.join(rel), format!("changed {i}\n")).unwrap();
        let t = Instant::now();
        let id = repo
            .commit_changes("Agent executed: write_file", Some(&[rel.to_string()]))
            .unwrap();
        touched_times.push(t.elapsed());
        assert!(id.is_some());
    }
    println!(
        "auto-commit, one-file change, 50,000 files, touched paths: {}",
        stats(touched_times)
    );
    let mut scan_times = Vec::new();
    for i in 0..7 {
        fs::write(work.join(rel), format!("scanned {i}\n")).unwrap();
        let t = Instant::now();
        let id = repo.commit_changes("Agent executed: bash", None).unwrap();
        scan_times.push(t.elapsed());
        assert!(id.is_some());
    }
    println!(
        "auto-commit, one-file change, 50,000 files, full scan (after bash): {}",
        stats(scan_times)
    );
    let mut none_times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        assert!(repo
            .commit_changes("Agent executed: bash", None)
            .unwrap()
            .is_none());
        none_times.push(t.elapsed());
    }
    println!(
        "auto-commit, nothing changed, 50,000 files, full scan: {}",
        stats(none_times)
    );
    let t = Instant::now();
    let cs = repo.change_set().unwrap();
    println!(
        "change set, 50,000 files: {:.1} ms ({} file)",
        t.elapsed().as_secs_f64() * 1000.0,
        cs.files.len()
    );
    assert_eq!(git_ok(&repo, &["status", "--porcelain"]), "");
    fs::remove_dir_all(&work).unwrap();
    fs::remove_dir_all(&project).unwrap();
}

fn bench_sync(tmp: &Path) {
    let mut times = Vec::new();
    for run in 0..7 {
        let project = tmp.join(format!("ps{run}"));
        make_project(&project, 1000, 1000 * 4000, 3 + run);
        let repo =
            SessionRepo::create_sandbox_copy(&project, &tmp.join(format!("ws{run}")), &[]).unwrap();
        for i in 0..100 {
            let rel = format!(
                "dir{:03}/sub{}/file{}.rs",
                (i * 10) / 100,
                (i * 10) % 3,
                i * 10
            );
            fs::write(repo.work_tree().join(&rel), format!("agent version {i}\n")).unwrap();
        }
        repo.commit_changes("Agent executed: bash", None).unwrap();
        let t = Instant::now();
        let report = sync_back(&repo, &project, None).unwrap();
        times.push(t.elapsed());
        assert_eq!(report.applied.len(), 100);
        fs::remove_dir_all(&project).unwrap();
        fs::remove_dir_all(repo.work_tree()).unwrap();
    }
    println!(
        "sync back, 100 changed files (project of 1,000): {}",
        stats(times)
    );
}

fn main() {
    if std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("git is not installed: no benchmarks");
        return;
    }
    let base = std::env::var_os("HISTORY_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(base).unwrap();
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if want("start") {
        bench_session_start(tmp.path());
    }
    if want("commit") {
        bench_commit(tmp.path());
    }
    if want("sync") {
        bench_sync(tmp.path());
    }
}
