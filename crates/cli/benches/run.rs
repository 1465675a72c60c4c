//! What `safe-coder run` adds to starting a command (issue 15: at most 20 ms on the
//! process backend): the time from launching until the command's first output line,
//! for `bash -c 'echo started'` run bare, and the same under `safe-coder run
//! --backend process` on a 50-file project (session dir, sandbox copy and first commit,
//! bubblewrap, the terminal pass-through). Median of many runs each; the whole run
//! (review and session teardown included) is shown too, and `--backend copy` (the same
//! session without bubblewrap) to tell the session's share from the sandbox's.
//!
//! A third series runs `process` with `SAFE_CODER_NO_PROBE_CACHE=1`: every process
//! tries bubblewrap again (three bwrap runs), as before the verdict was kept across
//! processes — the same binary, interleaved, so the difference is the cache's.
//!
//! A fourth runs `process` with `SAFE_CODER_NO_CGROUP_SPAWNER=1`: each command joins
//! the sandbox's cgroup itself between fork and exec (on cgroup v1 the kernel's attach
//! waits for an RCU grace period), as before commands were forked by a thread already
//! inside (`crates/sandbox/src/backends/process/cgroup.rs`).
//!
//! Run: `cargo bench -p safe-coder-cli --bench run` (`SAFE_CODER_BENCH_RUNS=N`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Time to the line `started` on stdout, and to the exit.
fn time(mut cmd: Command) -> (Duration, Duration) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let mut first = None;
    for line in BufReader::new(out).lines() {
        let line = line.expect("line");
        if line.trim() == "started" && first.is_none() {
            first = Some(start.elapsed());
        }
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    (
        first.expect("the command printed `started`"),
        start.elapsed(),
    )
}

fn main() {
    let runs: usize = std::env::var("SAFE_CODER_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let root = tempfile::tempdir().expect("tempdir");
    let project = root.path().join("project");
    for i in 0..50 {
        let dir = project.join(format!("src/m{}", i % 5));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join(format!("f{i}.rs")),
            format!("pub fn f{i}() {{}}\n").repeat(20),
        )
        .expect("write");
    }
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let bin = env!("CARGO_BIN_EXE_safe-coder");
    let bare = || {
        let mut c = Command::new("bash");
        c.args(["-c", "echo started"]).current_dir(&project);
        c
    };
    let run = |backend: &str| {
        let mut c = Command::new(bin);
        c.env_remove("SAFE_CODER_NO_PROBE_CACHE");
        c.env_remove("SAFE_CODER_NO_CGROUP_SPAWNER");
        c.args([
            "run",
            "--backend",
            backend,
            "--sync",
            "reject",
            "--",
            "bash",
            "-c",
            "echo started",
        ])
        .current_dir(&project)
        .env("HOME", &home)
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_CONFIG_HOME");
        c
    };
    let uncached = || {
        let mut c = run("process");
        c.env("SAFE_CODER_NO_PROBE_CACHE", "1");
        c
    };
    let joining = || {
        let mut c = run("process");
        c.env("SAFE_CODER_NO_CGROUP_SPAWNER", "1");
        c
    };
    for _ in 0..3 {
        time(bare());
        time(run("process"));
        time(run("copy"));
        time(uncached());
        time(joining());
    }
    let (mut b_first, mut r_first, mut r_total, mut c_first) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut u_first, mut j_first) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        b_first.push(time(bare()).0);
        let (f, t) = time(run("process"));
        r_first.push(f);
        r_total.push(t);
        c_first.push(time(run("copy")).0);
        u_first.push(time(uncached()).0);
        j_first.push(time(joining()).0);
    }
    let u = median(u_first);
    let j = median(j_first);
    let (b, r, t, c) = (
        median(b_first),
        median(r_first),
        median(r_total),
        median(c_first),
    );
    println!("{runs} runs each, median time to the command's first line:");
    println!("  bash -c 'echo started' bare          {:7.1} ms", ms(b));
    println!(
        "  the same under safe-coder run        {:7.1} ms  (+{:.1} ms)",
        ms(r),
        ms(r) - ms(b)
    );
    println!(
        "  the same with --backend copy         {:7.1} ms  (+{:.1} ms: the session alone)",
        ms(c),
        ms(c) - ms(b)
    );
    println!(
        "  process, probe not cached (before)   {:7.1} ms  (+{:.1} ms)",
        ms(u),
        ms(u) - ms(b)
    );
    println!(
        "  process, commands join the cgroup    {:7.1} ms  (+{:.1} ms)",
        ms(j),
        ms(j) - ms(b)
    );
    println!("  whole run (review, teardown)         {:7.1} ms", ms(t));
    println!(
        "target: at most 20 ms added to start: {}",
        if ms(r) - ms(b) <= 20.0 {
            "met"
        } else {
            "MISSED"
        }
    );
}
