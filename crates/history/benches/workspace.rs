#![allow(clippy::unwrap_used)]
//! Copy-free sessions (issue 12): session start on the overlay workspace, the copy
//! fallback and `direct`, each side by side with `cp -a` of the same tree in the same
//! run; the auto-commit after a one-file change; the disk a session uses; sync of 100
//! changed files.
//!
//! cargo bench -p safe-coder-history --bench workspace [-- 5k 50k commit sync nogit]
//!
//! The git projects (5,000 files / 100 MB and 50,000 files / 1 GB, committed) are made
//! once under `WORKSPACE_BENCH_TREES` (default: `<tmp>/safe-coder-bench-trees`) and
//! reused by later runs; sessions go to a temporary directory on the same filesystem.
//!
//! `direct` is measured twice per run, interleaved: as it starts, and with
//! `SAFE_CODER_DIRECT_SERIAL_LISTING=1` (git lists the project first, then every file is
//! stat'ed: before the user's index's files were stat'ed beside git's listing).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use safe_coder_history::sync::sync_back;
use safe_coder_history::SessionRepo;
use safe_coder_sandbox::overlay::Layers;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args([
            "-c",
            "user.name=Bench",
            "-c",
            "user.email=bench@localhost",
            "-c",
            "core.looseCompression=1",
            "-c",
            "gc.auto=0",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .current_dir(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

/// A committed git project of `files` files and about `total` bytes (made once).
fn project(trees: &Path, name: &str, files: usize, total: usize) -> PathBuf {
    let root = trees.join(name);
    if root.join(".ready").exists() {
        return root;
    }
    let _ = fs::remove_dir_all(&root);
    eprintln!(
        "making {} ({files} files, {} MB) once...",
        root.display(),
        total >> 20
    );
    let mut rng = Rng(files as u64);
    let avg = total / files;
    for i in 0..files {
        let rel = file_rel(i);
        let dir = root.join(Path::new(&rel).parent().unwrap());
        if i % 100 < 3 {
            fs::create_dir_all(&dir).unwrap();
        }
        let size = avg / 2 + (rng.next() as usize % avg.max(1));
        let mut data = Vec::with_capacity(size + 80);
        while data.len() < size {
            let n = rng.next();
            data.extend_from_slice(
                format!("let value_{n:x} = compute({}) + {};\n", n % 977, n % 13).as_bytes(),
            );
        }
        data.truncate(size);
        fs::write(root.join(&rel), &data).unwrap();
    }
    git(&root, &["init", "-q"]);
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "bench tree"]);
    // A dirty tree, as users have: a few modified and untracked files.
    for i in 0..20 {
        fs::write(root.join(file_rel(i * 3)), format!("modified {i}\n")).unwrap();
        fs::write(root.join(format!("untracked{i}.txt")), "new\n").unwrap();
    }
    fs::write(root.join(".ready"), "").unwrap();
    root
}

/// The path of the project's file number `k`.
fn file_rel(k: usize) -> String {
    format!("dir{:03}/sub{}/file{k}.rs", k / 100, k % 3)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "median {:.1} ms (min {:.1}, max {:.1}, {} runs)",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1]),
        v.len()
    )
}

/// CPU time (user + system) of this process and its waited-for children so far: on a
/// shared machine the wall time of a start depends on the others' load, its CPU time
/// much less, so both are shown.
fn cpu() -> Duration {
    let used = |who| {
        // SAFETY: getrusage fills the struct it is given.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut r) };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(r.ru_utime) + tv(r.ru_stime)
    };
    used(libc::RUSAGE_SELF) + used(libc::RUSAGE_CHILDREN)
}

fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(200));
}

fn du_kib(path: &Path) -> u64 {
    let out = Command::new("du").arg("-sk").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn remove(p: &Path) {
    safe_coder_sandbox::overlay::remove_tree(p);
}

fn layers(project: &Path, s: &Path) -> Layers {
    Layers {
        lower: project.to_path_buf(),
        upper: s.join("upper"),
        work: s.join("ovl-work"),
        merged: s.join("work"),
    }
}

/// One `direct` start (its wall and CPU time pushed).
fn direct_only(
    project: &Path,
    tmp: &Path,
    run: usize,
    wall: &mut Vec<Duration>,
    cpu_time: &mut Vec<Duration>,
) {
    let g = tmp.join(format!("shadow{run}.git"));
    settle();
    let (t, c) = (Instant::now(), cpu());
    SessionRepo::create_shadow(project, &g, &[]).unwrap();
    wall.push(t.elapsed());
    cpu_time.push(cpu() - c);
    remove(&g);
}

/// Session start on each workspace, interleaved with `cp -a` of the same tree.
fn bench_start(project: &Path, tmp: &Path, label: &str, runs: usize, with_copy: bool) {
    let mut cp = Vec::new();
    let mut overlay = Vec::new();
    let mut direct = Vec::new();
    let mut direct_serial = Vec::new();
    let (mut overlay_cpu, mut direct_cpu) = (Vec::new(), Vec::new());
    let mut copy = Vec::new();
    let mut overlay_disk = 0;
    // Profiling: `WORKSPACE_BENCH_NO_CP=1` leaves `cp -a` out, `WORKSPACE_BENCH_RUNS=N`
    // sets the runs (the figures in docs/benchmarks.md are measured with `cp -a`).
    let no_cp = std::env::var_os("WORKSPACE_BENCH_NO_CP").is_some();
    // `WORKSPACE_BENCH_ONLY=overlay` leaves `direct` and the copy out,
    // `WORKSPACE_BENCH_ONLY=direct` the overlay, the copy and the serial listing
    // (profiling).
    let only = std::env::var("WORKSPACE_BENCH_ONLY").ok();
    let runs = std::env::var("WORKSPACE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(runs);
    for run in 0..runs {
        if !no_cp {
            let dest = tmp.join(format!("cp{run}"));
            settle();
            let t = Instant::now();
            let ok = Command::new("cp")
                .arg("-a")
                .arg(project)
                .arg(&dest)
                .status()
                .unwrap()
                .success();
            cp.push(t.elapsed());
            assert!(ok);
            remove(&dest);
        }

        let s = tmp.join(format!("ov{run}"));
        if only.as_deref() == Some("direct") {
            direct_only(project, tmp, run, &mut direct, &mut direct_cpu);
            continue;
        }
        settle();
        let (t, c) = (Instant::now(), cpu());
        let repo =
            SessionRepo::create_overlay(&layers(project, &s), &s.join("history.git"), &[]).unwrap();
        overlay.push(t.elapsed());
        overlay_cpu.push(cpu() - c);
        if run == 0 {
            let st = repo.start_stats().unwrap();
            println!(
                "  ({label}: {} files, {} borrowed from the user's git)",
                st.files, st.borrowed
            );
        }
        // The index is written beside the start: count it too.
        let _ = repo.git_dir();
        overlay_disk = du_kib(&s);
        drop(repo);
        remove(&s);

        if only.as_deref() == Some("overlay") {
            continue;
        }
        direct_only(project, tmp, run, &mut direct, &mut direct_cpu);

        // The same with git's listing in series before the stats (as before the
        // index's files were stat'ed beside it), interleaved.
        let g = tmp.join(format!("shadow{run}.git"));
        std::env::set_var("SAFE_CODER_DIRECT_SERIAL_LISTING", "1");
        settle();
        let t = Instant::now();
        SessionRepo::create_shadow(project, &g, &[]).unwrap();
        direct_serial.push(t.elapsed());
        std::env::remove_var("SAFE_CODER_DIRECT_SERIAL_LISTING");
        remove(&g);

        if with_copy && run < 3 {
            let s = tmp.join(format!("copy{run}"));
            settle();
            let t = Instant::now();
            SessionRepo::create_sandbox_copy_at(
                project,
                &s.join("work"),
                Some(&s.join("history.git")),
                &[],
            )
            .unwrap();
            copy.push(t.elapsed());
            if run == 0 {
                println!("  copy workspace's session dir: {} MiB", du_kib(&s) >> 10);
            }
            remove(&s);
        }
    }
    let median = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    let share = |v: &[Duration]| -> String {
        if cp.is_empty() || v.is_empty() {
            String::new()
        } else {
            format!(
                " = {:.1} % of `cp -a`",
                100.0 * ms(median(v)) / ms(median(&cp))
            )
        }
    };
    let (overlay_share, direct_share) = (share(&overlay), share(&direct));
    let serial_share = share(&direct_serial);
    if !cp.is_empty() {
        println!(
            "{label}: `cp -a` of the project (with its .git): {}",
            stats(cp)
        );
    }
    if !overlay.is_empty() {
        println!(
            "{label}: overlay workspace start: {}{overlay_share}",
            stats(overlay)
        );
        println!(
            "{label}:   its CPU time (all threads, git and helpers): {}",
            stats(overlay_cpu)
        );
        println!("{label}: overlay session dir right after start: {overlay_disk} KiB");
    }
    if direct.is_empty() {
        return;
    }
    println!(
        "{label}: direct start (shadow, snapshot in place): {}{direct_share}",
        stats(direct)
    );
    println!(
        "{label}:   its CPU time (all threads, git and helpers): {}",
        stats(direct_cpu)
    );
    if !direct_serial.is_empty() {
        println!(
            "{label}: direct start, git's listing in series (before): {}{serial_share}",
            stats(direct_serial)
        );
    }
    if !copy.is_empty() {
        println!("{label}: copy workspace start (fallback): {}", stats(copy));
    }
}

/// Start of a project without git (the 5k project's files, no `.git`) on the overlay
/// workspace with the stat cache: the first session (empty cache: every file hashed)
/// beside the second (cache written by the first: only changed files hashed).
fn bench_nogit(p5k: &Path, trees: &Path, tmp: &Path) {
    let project = trees.join("p5k-nogit");
    if !project.join(".ready").exists() {
        remove(&project);
        let ok = Command::new("cp")
            .arg("-a")
            .arg(p5k)
            .arg(&project)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        remove(&project.join(".git"));
        // Old enough that no file is racy against the cache.
        let ok = Command::new("find")
            .arg(&project)
            .args([
                "-type",
                "f",
                "-exec",
                "touch",
                "-d",
                "2026-01-01",
                "{}",
                "+",
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        fs::write(project.join(".ready"), "").unwrap();
    }
    let cache = tmp.join("statcache");
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for run in 0..3 {
        remove(&cache);
        for (i, out) in [&mut first, &mut second].into_iter().enumerate() {
            let s = tmp.join(format!("ng{run}-{i}"));
            settle();
            let t = Instant::now();
            let repo = SessionRepo::create_overlay_cached(
                &layers(&project, &s),
                &s.join("history.git"),
                &[],
                Some(&cache),
            )
            .unwrap();
            out.push(t.elapsed());
            if run == 0 {
                let st = repo.start_stats().unwrap();
                println!(
                    "  (nogit session {}: {} files, {} hashed, {} from the stat cache)",
                    i + 1,
                    st.files,
                    st.hashed,
                    st.cached
                );
            }
            drop(repo);
            remove(&s);
        }
    }
    println!(
        "5k without git: overlay start, first session (hash all, write the cache): {}",
        stats(first)
    );
    println!(
        "5k without git: overlay start, second session (stat cache): {}",
        stats(second)
    );
}

/// Auto-commit after a `bash` call that changed one file, on the overlay workspace.
fn bench_commit(project: &Path, tmp: &Path) {
    let s = tmp.join("commit");
    let repo =
        SessionRepo::create_overlay(&layers(project, &s), &s.join("history.git"), &[]).unwrap();
    let mut times = Vec::new();
    for i in 0..30 {
        let rel = file_rel(1000 + i * 997);
        fs::write(repo.files().join(&rel), format!("changed {i}\n")).unwrap();
        let t = Instant::now();
        let c = repo.commit_changes("Agent executed: bash", None).unwrap();
        times.push(t.elapsed());
        assert!(c.is_some());
    }
    println!(
        "50k: auto-commit after a bash call that changed one file (overlay, upper layer): {}",
        stats(times)
    );
    let t = Instant::now();
    let changes = repo.change_set().unwrap();
    println!(
        "50k: change set of those 30 files (overlay): {:.1} ms",
        ms(t.elapsed())
    );
    assert_eq!(changes.files.len(), 30);
    println!(
        "50k: session dir after 30 one-line changes: {} KiB",
        du_kib(&s)
    );
    drop(repo);
    remove(&s);
}

/// Sync of 100 changed files from the overlay workspace (the project is put back with
/// git afterwards).
fn bench_sync(project: &Path, tmp: &Path) {
    let mut times = Vec::new();
    for run in 0..5 {
        let s = tmp.join(format!("sync{run}"));
        let repo =
            SessionRepo::create_overlay(&layers(project, &s), &s.join("history.git"), &[]).unwrap();
        for i in 0..100 {
            let rel = file_rel(100 + i * 47);
            fs::write(
                repo.files().join(&rel),
                format!("agent version {run} {i}\n"),
            )
            .unwrap();
        }
        repo.commit_changes("Agent executed: bash", None).unwrap();
        let t = Instant::now();
        let report = sync_back(&repo, project, None).unwrap();
        times.push(t.elapsed());
        assert_eq!(report.applied.len(), 100, "{report:?}");
        drop(repo);
        remove(&s);
        // Put the project back (and its index's stat data) for the next run.
        let _ = Command::new("git")
            .args(["checkout", "-q", "--", "."])
            .current_dir(project)
            .status();
        let _ = Command::new("git")
            .args(["clean", "-q", "-f", "--", "dir*"])
            .current_dir(project)
            .status();
        let _ = Command::new("git")
            .args(["update-index", "-q", "--refresh"])
            .current_dir(project)
            .status();
    }
    println!(
        "5k: sync back of 100 changed files (overlay): {}",
        stats(times)
    );
}

fn main() {
    let trees = std::env::var_os("WORKSPACE_BENCH_TREES")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("safe-coder-bench-trees"));
    fs::create_dir_all(&trees).unwrap();
    let tmp = tempfile::tempdir_in(&trees).unwrap();
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| filter.is_empty() || filter.iter().any(|f| f == name);
    if let Err(e) = safe_coder_sandbox::overlay::overlay_probe(tmp.path()) {
        println!("no overlay workspace here: {e}");
        return;
    }
    let p5k = project(&trees, "p5k", 5_000, 100 << 20);
    if want("5k") {
        bench_start(&p5k, tmp.path(), "5k", 5, true);
    }
    if want("sync") {
        bench_sync(&p5k, tmp.path());
    }
    if want("nogit") {
        bench_nogit(&p5k, &trees, tmp.path());
    }
    if want("50k") || want("commit") {
        let p50k = project(&trees, "p50k", 50_000, 1 << 30);
        if want("50k") {
            bench_start(&p50k, tmp.path(), "50k", 3, false);
        }
        if want("commit") {
            bench_commit(&p50k, tmp.path());
        }
    }
}
