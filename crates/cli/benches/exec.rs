//! Whole-process benchmarks of the `safe-coder` binary against the in-repo mock model
//! server answering at once (issue 2's performance targets):
//!
//! - a 10-step `exec` scenario (write, read, edit, bash, three writes, edit, bash,
//!   final): wall time and peak RSS of the whole process, and the client time per turn
//!   (from the end of one response to the next request, minus the tools' own time);
//! - `safe-coder --version`: wall time and peak RSS;
//! - with the single argument `docker-workspace`, only the docker session's start over
//!   the overlay volume against the copy ([`bench_docker_workspace`]).
//!
//! Run: `cargo bench -p safe-coder-cli --bench exec` (add `-- direct copy process` to
//! pick backends; `SAFE_CODER_BENCH_RUNS=N` for more runs; `SAFE_CODER_BENCH_BIN=PATH`
//! measures another build of the binary, e.g. the previous commit's, side by side).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use safe_coder_test_support::{MockServer, Reply, Script, ToolCall, Wire};
use serde_json::json;

/// The binary under test: this build's, or `SAFE_CODER_BENCH_BIN` (to measure an older
/// build side by side with this one in the same run of the machine).
fn binary() -> String {
    std::env::var("SAFE_CODER_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_safe-coder").to_string())
}

fn scenario() -> Script {
    let c = ToolCall::new;
    Script::new(vec![
        Reply::tool_calls(vec![c(
            "write_file",
            json!({"path": "src/lib.rs", "content": "pub fn one() -> u32 { 1 }\n"}),
        )]),
        Reply::tool_calls(vec![c("read_file", json!({"path": "src/lib.rs"}))]),
        Reply::tool_calls(vec![c(
            "edit_file",
            json!({"path": "src/lib.rs", "old_string": "1 }", "new_string": "2 }"}),
        )]),
        Reply::tool_calls(vec![c("bash", json!({"command": "grep -c fn src/lib.rs"}))]),
        Reply::tool_calls(vec![c(
            "write_file",
            json!({"path": "a.txt", "content": "a\n"}),
        )]),
        Reply::tool_calls(vec![c(
            "write_file",
            json!({"path": "b.txt", "content": "b\n"}),
        )]),
        Reply::tool_calls(vec![c(
            "write_file",
            json!({"path": "c.txt", "content": "c\n"}),
        )]),
        Reply::tool_calls(vec![c(
            "edit_file",
            json!({"path": "a.txt", "old_string": "a", "new_string": "A"}),
        )]),
        Reply::tool_calls(vec![c("bash", json!({"command": "ls && cat a.txt"}))]),
        Reply::text("Done."),
    ])
}

struct Run {
    wall: Duration,
    max_rss_kb: i64,
    stdout: String,
}

/// Spawns and waits with wait4, so the child's own peak RSS is known.
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which std cannot do
fn run(cmd: &mut Command) -> Run {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child; status and usage are valid for writes.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    let wall = start.elapsed();
    let out = reader.join().unwrap_or_default();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "safe-coder failed: {out}"
    );
    Run {
        wall,
        max_rss_kb: usage.ru_maxrss,
        stdout: out,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn seed_project(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).expect("mkdir");
    std::fs::write(dir.join("README.md"), "# bench\n").expect("write");
    std::fs::write(dir.join("src/main.rs"), "fn main() {}\n").expect("write");
}

fn bench_exec(backend: &str, runs: usize) {
    let bin = binary();
    let mut walls = Vec::new();
    let mut rss = Vec::new();
    let mut per_turn = Vec::new();
    for _ in 0..runs {
        let root = tempfile::tempdir().expect("tmp");
        let home = root.path().join("home");
        let project = root.path().join("project");
        std::fs::create_dir_all(&home).expect("home");
        seed_project(&project);
        let server = MockServer::start(Wire::Anthropic, scenario()).expect("server");
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home);
        // The docker backend's engine, when it is not at the default socket.
        if let Some(host) = std::env::var_os("DOCKER_HOST") {
            cmd.env("DOCKER_HOST", host);
        }
        cmd.args([
            "exec",
            "--json",
            "--provider",
            "anthropic",
            "--base-url",
            &server.base_url(),
        ])
        .args([
            "--api-key",
            "bench-key-123",
            "--model",
            "bench",
            "--approval-mode",
            "yolo",
        ])
        .args(["--backend", backend, "--sync", "reject", "--path"])
        .arg(&project)
        .arg("do the ten steps");
        let r = run(&mut cmd);
        walls.push(r.wall.as_secs_f64() * 1e3);
        rss.push(r.max_rss_kb as f64 / 1024.0);

        // Client time per turn: next request's arrival minus the previous response's
        // end, minus the tools run in between (their own duration, from the events).
        let mut tool_ms_per_turn: Vec<f64> = Vec::new();
        let mut current = 0.0;
        for line in r.stdout.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            match v["type"].as_str() {
                Some("tool_call_finished") => current += v["duration_ms"].as_f64().unwrap_or(0.0),
                Some("usage") => {
                    tool_ms_per_turn.push(current);
                    current = 0.0;
                }
                _ => {}
            }
        }
        let reqs = server.model_requests();
        assert_eq!(reqs.len(), 10, "ten model requests");
        for i in 1..reqs.len() {
            let gap_ms = (reqs[i].received_us as f64 - reqs[i - 1].responded_us as f64) / 1e3;
            let tools = tool_ms_per_turn.get(i).copied().unwrap_or(0.0);
            per_turn.push((gap_ms - tools).max(0.0));
        }
    }
    println!(
        "exec 10-step scenario, backend {backend:<8} runs {runs:>3}: wall median {:7.1} ms  p90 {:7.1} ms | peak RSS median {:5.1} MB max {:5.1} MB | client time per turn median {:5.2} ms p90 {:5.2} ms",
        median(&mut walls.clone()),
        percentile(&mut walls, 0.9),
        median(&mut rss.clone()),
        rss.iter().cloned().fold(0.0, f64::max),
        median(&mut per_turn.clone()),
        percentile(&mut per_turn, 0.9),
    );
}

fn bench_version(runs: usize) {
    let bin = binary();
    let mut walls = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        let r = run(Command::new(&bin).arg("--version"));
        walls.push(r.wall.as_secs_f64() * 1e3);
        rss.push(r.max_rss_kb as f64 / 1024.0);
    }
    println!(
        "safe-coder --version                  runs {runs:>3}: wall median {:6.2} ms  p90 {:6.2} ms | peak RSS median {:5.1} MB",
        median(&mut walls.clone()),
        percentile(&mut walls, 0.9),
        median(&mut rss)
    );
}

/// Seconds from spawning `chat --no-tui` to its first prompt (`> `), then `exit`.
fn time_to_prompt(cmd: &mut Command) -> f64 {
    use std::io::{Read, Write};
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chat");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let elapsed = loop {
        let n = stdout.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "chat ended before its prompt: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(3).any(|w| w == b"\n> ") {
            break start.elapsed().as_secs_f64();
        }
    };
    let mut stdin = child.stdin.take().expect("stdin");
    let _ = stdin.write_all(b"exit\n");
    drop(stdin);
    let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    let _ = child.wait();
    elapsed
}

/// `chat` start to prompt ready with 1,000 stored sessions, and resuming a session of
/// 1,000 messages (issue 5's targets: ≤ 50 ms and ≤ 100 ms).
fn bench_chat_start(runs: usize) {
    let bin = binary();
    let root = tempfile::tempdir().expect("tmp");
    let home = root.path().join("home");
    let project = root.path().join("project");
    std::fs::create_dir_all(&home).expect("home");
    seed_project(&project);
    let chat = |extra: &[&str]| {
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home)
            .args([
                "chat",
                "--no-tui",
                "--provider",
                "anthropic",
                "--base-url",
                "http://127.0.0.1:9",
            ])
            .args([
                "--api-key",
                "bench-key-123",
                "--model",
                "bench",
                "--backend",
                "copy",
                "--path",
            ])
            .arg(&project)
            .args(extra);
        cmd
    };
    // One real session, then 999 more records and 1,000 messages in the real one.
    time_to_prompt(&mut chat(&[]));
    let db = home.join(".local/share/safe-coder/sessions.db");
    let store = safe_coder_store::Store::open(&db).expect("store");
    let real = store
        .list_sessions(safe_coder_store::ListFilter::all())
        .expect("list")
        .remove(0);
    for i in 0..999 {
        store
            .create_session(&safe_coder_store::NewSession {
                id: format!("bench{i:05}"),
                project: format!("/elsewhere/project{i}"),
                backend: "copy".into(),
                session_dir: format!("/nonexistent/{i}"),
                base_commit: None,
                provider: "anthropic".into(),
                model: "bench".into(),
                approval_mode: "default".into(),
            })
            .expect("create");
        store
            .set_state(
                &format!("bench{i:05}"),
                safe_coder_store::SessionState::Ended,
            )
            .expect("state");
    }
    for i in 0..1000 {
        let m = if i % 2 == 0 {
            safe_coder_protocol::Message::user_text(format!(
                "question {i}: {}",
                "words ".repeat(40)
            ))
        } else {
            safe_coder_protocol::Message::assistant_text(format!(
                "answer {i}: {}",
                "words ".repeat(80)
            ))
        };
        store.append_message(&real.id, &m).expect("append");
    }
    store
        .set_state(&real.id, safe_coder_store::SessionState::Ended)
        .expect("state");
    drop(store);

    let mut start = Vec::new();
    let mut resume = Vec::new();
    for _ in 0..runs {
        start.push(time_to_prompt(&mut chat(&[])) * 1e3);
        resume.push(time_to_prompt(&mut chat(&["--resume", &real.id])) * 1e3);
    }
    println!(
        "chat start to prompt, 1,000 stored sessions  runs {runs:>3}: median {:6.1} ms  p90 {:6.1} ms",
        median(&mut start.clone()),
        percentile(&mut start, 0.9)
    );
    println!(
        "chat --resume of a 1,000-message session     runs {runs:>3}: median {:6.1} ms  p90 {:6.1} ms",
        median(&mut resume.clone()),
        percentile(&mut resume, 0.9)
    );
}

/// `chat` start to prompt on the docker backend (runc, or `SAFE_CODER_BENCH_RUNTIME`)
/// over a git project of `SAFE_CODER_BENCH_FILES` files of 20 KB (default 5,000: 100
/// MB): the overlay volume against the copy (`SAFE_CODER_WORKSPACE=copy`), side by
/// side with `cp -a` of the same tree, interleaved run by run (issue 12).
fn bench_docker_workspace(runs: usize) {
    let bin = binary();
    let files: usize = std::env::var("SAFE_CODER_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let runtime = std::env::var("SAFE_CODER_BENCH_RUNTIME").unwrap_or_else(|_| "runc".into());
    let root = tempfile::tempdir().expect("tmp");
    let home = root.path().join("home");
    let project = root.path().join("project");
    let config = home.join(".config/safe-coder");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(
        config.join("config.toml"),
        format!("[docker]\nruntime = {runtime:?}\n"),
    )
    .expect("config");
    let body = "x".repeat(20 * 1024);
    for i in 0..files {
        let dir = project.join(format!("d{:03}", i / 100));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(format!("f{i}.txt")), format!("{i}\n{body}")).expect("write");
    }
    let git = |args: &[&str]| {
        let ok = Command::new("git")
            .args(["-c", "user.name=b", "-c", "user.email=b@b"])
            .args(args)
            .current_dir(&project)
            .stdout(Stdio::null())
            .status()
            .expect("git")
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "bench"]);
    let chat = |copy: bool| {
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home);
        for var in ["DOCKER_HOST", "SAFE_CODER_GUEST_AGENT"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        if copy {
            cmd.env("SAFE_CODER_WORKSPACE", "copy");
        }
        cmd.args(["chat", "--no-tui", "--provider", "anthropic"])
            .args([
                "--base-url",
                "http://127.0.0.1:9",
                "--api-key",
                "bench-key-123",
            ])
            .args(["--model", "bench", "--backend", "docker", "--path"])
            .arg(&project);
        cmd
    };
    let (mut overlay, mut copied, mut cp) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        overlay.push(time_to_prompt(&mut chat(false)) * 1e3);
        copied.push(time_to_prompt(&mut chat(true)) * 1e3);
        let target = root.path().join("cp-target");
        let t = Instant::now();
        let ok = Command::new("cp")
            .arg("-a")
            .arg(&project)
            .arg(&target)
            .status()
            .expect("cp")
            .success();
        cp.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(ok, "cp -a");
        let _ = std::fs::remove_dir_all(&target);
    }
    println!(
        "docker ({runtime}) chat start to prompt, {files} files: overlay median {:7.1} ms | copy median {:7.1} ms | cp -a median {:7.1} ms | runs {runs} | load {}",
        median(&mut overlay),
        median(&mut copied),
        median(&mut cp),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
}

fn bwrap_works() -> bool {
    Command::new("bwrap")
        .args(["--ro-bind", "/", "/", "--unshare-all", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn main() {
    let runs: usize = std::env::var("SAFE_CODER_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let backends: Vec<String> = if args.is_empty() {
        vec!["direct".into(), "copy".into(), "process".into()]
    } else {
        args
    };
    if backends == ["docker-workspace"] {
        bench_docker_workspace(runs);
        return;
    }
    bench_version(runs * 4);
    bench_chat_start(runs);
    for b in &backends {
        if b == "process" && !bwrap_works() {
            println!("exec backend process: skipped, bubblewrap does not run here");
            continue;
        }
        bench_exec(b, runs);
    }
}
