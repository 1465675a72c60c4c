//! Sandboxed sessions end to end, per backend: the host changes only through sync.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use safe_coder_test_support::{MockServer, Reply, Script, Wire};
use serde_json::json;

use crate::common::*;

fn seed(world: &World) {
    world.write("keep.txt", "keep\n");
    world.write("edit.txt", "one\ntwo\n");
    world.write("del.txt", "delete me\n");
    world.write("script.sh", "#!/bin/sh\necho hi\n");
}

fn changes_script() -> Script {
    Script::new(vec![
        Reply::tool_calls(vec![
            call(
                "write_file",
                json!({"path": "new/dir/new.txt", "content": "brand new\n"}),
            ),
            call(
                "edit_file",
                json!({"path": "edit.txt", "old_string": "two", "new_string": "TWO"}),
            ),
        ]),
        Reply::tool_calls(vec![call(
            "bash",
            json!({"command": "rm del.txt && chmod +x script.sh"}),
        )]),
        Reply::text("changed four files"),
    ])
}

fn is_exec(p: &std::path::Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn assert_host_untouched(world: &World) {
    assert_eq!(world.read("edit.txt").as_deref(), Some("one\ntwo\n"));
    assert_eq!(world.read("del.txt").as_deref(), Some("delete me\n"));
    assert!(!world.project.join("new").exists());
    assert!(!is_exec(&world.project.join("script.sh")));
}

fn assert_host_has_agent_changes(world: &World) {
    assert_eq!(
        world.read("new/dir/new.txt").as_deref(),
        Some("brand new\n")
    );
    assert_eq!(world.read("edit.txt").as_deref(), Some("one\nTWO\n"));
    assert!(!world.project.join("del.txt").exists());
    assert!(is_exec(&world.project.join("script.sh")));
    assert_eq!(world.read("keep.txt").as_deref(), Some("keep\n"));
}

fn session_ids(world: &World) -> Vec<String> {
    let out = world
        .cmd()
        .args(["sessions", "list", "--json"])
        .output()
        .expect("run");
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

pub(crate) fn keep_then_sync(backend: &str) {
    keep_then_sync_with(&World::new, backend);
}

/// [`keep_then_sync`] in worlds made by `new_world` (the docker suite configures the
/// engine and runtime in each world's user config).
pub(crate) fn keep_then_sync_with(new_world: &dyn Fn() -> World, backend: &str) {
    let world = new_world();
    seed(&world);
    let server = MockServer::start(Wire::Anthropic, changes_script()).expect("server");
    let out = world.exec(
        &server,
        &[
            "--backend",
            backend,
            "--approval-mode",
            "yolo",
            "change things",
        ],
    );
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains("Changed 4 file(s):"), "{err}");
    // The start line says which workspace the session got, and it is the one on disk:
    // an overlay keeps the agent's writes in `upper/`, a copy in `work/`.
    let ids = session_ids(&world);
    let dir = world.data_dir().join("sessions").join(&ids[0]);
    let start = err
        .lines()
        .find(|l| l.starts_with("Session "))
        .unwrap_or("");
    if err.contains(", overlay workspace") {
        assert!(dir.join("upper/edit.txt").is_file(), "{start}");
        assert!(!dir.join("work/edit.txt").exists(), "{start}");
    } else {
        assert!(start.contains(", copy workspace"), "{start}");
        assert!(dir.join("work/edit.txt").is_file(), "{start}");
    }
    if std::env::var("SAFE_CODER_WORKSPACE").is_ok_and(|v| v == "copy") {
        assert!(start.contains(", copy workspace"), "{start}");
    }
    for f in [
        "new/dir/new.txt (added)",
        "edit.txt (modified)",
        "del.txt (deleted)",
        "script.sh (mode changed)",
    ] {
        assert!(err.contains(f), "summary lists {f}: {err}");
    }
    // keep is the default: the host is untouched until `sessions sync`.
    assert_host_untouched(&world);
    let ids = session_ids(&world);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let out = world
        .cmd()
        .args(["sessions", "diff", &ids[0]])
        .output()
        .expect("run");
    assert_ok(&out);
    assert!(
        stdout(&out).contains("+one\n+TWO") || stdout(&out).contains("+TWO"),
        "{}",
        stdout(&out)
    );
    let out = world
        .cmd()
        .args(["sessions", "sync", &ids[0], "--accept-all"])
        .output()
        .expect("run");
    assert_ok(&out);
    assert_host_has_agent_changes(&world);
    assert!(session_ids(&world).is_empty(), "nothing unsynced remains");
}

pub(crate) fn accept_reject_conflict(backend: &str) {
    accept_reject_conflict_with(&World::new, backend);
}

/// [`accept_reject_conflict`] in worlds made by `new_world`.
pub(crate) fn accept_reject_conflict_with(new_world: &dyn Fn() -> World, backend: &str) {
    // accept
    let world = new_world();
    seed(&world);
    let server = MockServer::start(Wire::OpenAi, changes_script()).expect("server");
    let out = world.exec(
        &server,
        &[
            "--backend",
            backend,
            "--approval-mode",
            "yolo",
            "--sync",
            "accept",
            "go",
        ],
    );
    assert_ok(&out);
    assert_host_has_agent_changes(&world);
    let tree_after: Vec<String> = snapshot_tree(&world.project).into_keys().collect();
    assert_eq!(
        tree_after,
        vec!["edit.txt", "keep.txt", "new/dir/new.txt", "script.sh"]
    );

    // reject
    let world = new_world();
    seed(&world);
    let before = snapshot_tree(&world.project);
    let server = MockServer::start(Wire::OpenAi, changes_script()).expect("server");
    let out = world.exec(
        &server,
        &[
            "--backend",
            backend,
            "--approval-mode",
            "yolo",
            "--sync",
            "reject",
            "go",
        ],
    );
    assert_ok(&out);
    assert_eq!(snapshot_tree(&world.project), before);
    assert!(session_ids(&world).is_empty());

    // conflict: the user edits edit.txt while the session holds the agent's version
    let world = new_world();
    seed(&world);
    let server = MockServer::start(Wire::Ollama, changes_script()).expect("server");
    let out = world.exec(
        &server,
        &["--backend", backend, "--approval-mode", "yolo", "go"],
    );
    assert_ok(&out);
    world.write("edit.txt", "the user's own edit\n");
    let id = session_ids(&world).remove(0);
    let out = world
        .cmd()
        .args(["sessions", "sync", &id, "--accept-all"])
        .output()
        .expect("run");
    assert_ok(&out);
    assert!(
        stdout(&out).contains("edit.txt"),
        "conflict reported: {}",
        stdout(&out)
    );
    assert_eq!(
        world.read("edit.txt").as_deref(),
        Some("the user's own edit\n"),
        "host edit survives"
    );
    assert_eq!(
        world.read("new/dir/new.txt").as_deref(),
        Some("brand new\n")
    );
    assert!(!world.project.join("del.txt").exists());
    // The agent's version stays in the session.
    assert_eq!(session_ids(&world), vec![id.clone()]);
    let out = world
        .cmd()
        .args(["sessions", "diff", &id, "edit.txt"])
        .output()
        .expect("run");
    assert!(stdout(&out).contains("+TWO"), "{}", stdout(&out));
}

pub(crate) fn sigkill_then_recover(backend: &str) {
    sigkill_then_recover_with(&World::new, backend);
}

/// [`sigkill_then_recover`] in a world made by `new_world`.
pub(crate) fn sigkill_then_recover_with(new_world: &dyn Fn() -> World, backend: &str) {
    let world = new_world();
    seed(&world);
    let script = Script::new(vec![
        Reply::tool_calls(vec![call(
            "write_file",
            json!({"path": "work.txt", "content": "precious work\n"}),
        )]),
        Reply::tool_calls(vec![call(
            "bash",
            json!({"command": "echo more > more.txt; sleep 60"}),
        )]),
        Reply::text("never reached"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let mut c = world.cmd();
    c.arg("exec").args(provider_args(&server)).args([
        "--backend",
        backend,
        "--approval-mode",
        "yolo",
        "work",
    ]);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().expect("spawn");
    // Wait until the agent's bash has written more.txt inside the session.
    let sessions = world.data_dir().join("sessions");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = std::fs::read_dir(&sessions)
            .ok()
            .and_then(|mut rd| rd.next())
            .and_then(|e| e.ok())
            // In the upper layer of an overlay workspace, or in the copy.
            .map(|e| {
                e.path().join("upper/more.txt").exists() || e.path().join("work/more.txt").exists()
            })
            .unwrap_or(false);
        if found {
            break;
        }
        assert!(Instant::now() < deadline, "the session never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    let ids = session_ids(&world);
    assert_eq!(ids.len(), 1);
    let out = world
        .cmd()
        .args(["sessions", "list"])
        .output()
        .expect("run");
    assert!(stdout(&out).contains("interrupted"), "{}", stdout(&out));
    assert_host_untouched(&world);
    let out = world
        .cmd()
        .args(["sessions", "sync", &ids[0], "--accept-all"])
        .output()
        .expect("run");
    assert_ok(&out);
    assert_eq!(world.read("work.txt").as_deref(), Some("precious work\n"));
    assert_eq!(world.read("more.txt").as_deref(), Some("more\n"));
}

#[test]
fn copy_keep_then_sessions_sync() {
    keep_then_sync("copy");
}

#[test]
fn copy_accept_reject_conflict() {
    accept_reject_conflict("copy");
}

#[test]
fn copy_sigkill_then_sessions_sync_recovers() {
    sigkill_then_recover("copy");
}

#[test]
fn process_keep_then_sessions_sync() {
    if bwrap_available("process_keep_then_sessions_sync") {
        keep_then_sync("process");
    }
}

#[test]
fn process_accept_reject_conflict() {
    if bwrap_available("process_accept_reject_conflict") {
        accept_reject_conflict("process");
    }
}

#[test]
fn process_sigkill_then_sessions_sync_recovers() {
    if bwrap_available("process_sigkill_then_sessions_sync_recovers") {
        sigkill_then_recover("process");
    }
}

#[test]
fn process_bash_is_confined() {
    if !bwrap_available("process_bash_is_confined") {
        return;
    }
    let world = World::new();
    std::fs::write(world.home.join("secret.txt"), "home secret").expect("w");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let outside = world.root.path().join("outside");
    std::fs::create_dir_all(&outside).expect("dir");
    let cmd = format!(
        "cat {home}/secret.txt; echo read=$?; echo x > {outside}/x; echo write=$?; \
         (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; echo connect=$?; \
         echo confined-home=$HOME; ls /proc | grep -c '^[0-9]'",
        home = world.home.display(),
        outside = outside.display()
    );
    let script = Script::new(vec![
        Reply::tool_calls(vec![call("bash", json!({ "command": cmd }))]),
        Reply::text("ok"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let mut c = world.cmd();
    c.arg("exec").args(provider_args(&server)).args([
        "--backend",
        "process",
        "--approval-mode",
        "yolo",
        "probe",
    ]);
    let out = c.output().expect("run");
    assert_ok(&out);
    let r = &tool_results(&server)[0];
    assert!(!r.contains("home secret"), "{r}");
    assert!(!r.contains("read=0"), "{r}");
    assert!(!r.contains("write=0"), "{r}");
    assert!(!r.contains("connect=0"), "{r}");
    assert!(!outside.join("x").exists());
    let procs: u32 = r
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
        .unwrap_or(999);
    assert!(procs < 10, "sees only its own processes, saw {procs}: {r}");
    // Which confiner ran: bubblewrap's HOME is /tmp/home, the in-process fallback's is
    // in its private temp dir. CI names the one that must have run.
    let home = r
        .lines()
        .find_map(|l| l.strip_prefix("confined-home="))
        .unwrap_or("");
    let ran = if home == "/tmp/home" {
        "bubblewrap"
    } else {
        "in-process"
    };
    eprintln!("confiner that ran: {ran} (HOME={home})");
    if let Ok(want) = std::env::var("SAFE_CODER_EXPECT_CONFINER") {
        assert_eq!(ran, want, "{r}");
    }
}

#[test]
fn direct_leaves_the_users_git_byte_identical() {
    let world = World::new();
    seed(&world);
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&world.project)
            .env("GIT_AUTHOR_NAME", "u")
            .env("GIT_AUTHOR_EMAIL", "u@x")
            .env("GIT_COMMITTER_NAME", "u")
            .env("GIT_COMMITTER_EMAIL", "u@x")
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "user commit"]);
    git(&["branch", "feature"]);
    world.write("staged.txt", "staged\n");
    git(&["add", "staged.txt"]);
    let before = snapshot_tree(&world.project.join(".git"));

    let server = MockServer::start(Wire::Anthropic, changes_script()).expect("server");
    let out = world.exec(
        &server,
        &["--backend", "direct", "--approval-mode", "yolo", "go"],
    );
    assert_ok(&out);
    // direct: the agent works in the project itself.
    assert_host_has_agent_changes(&world);
    assert_eq!(
        snapshot_tree(&world.project.join(".git")),
        before,
        "the user's .git is untouched"
    );
}

#[test]
fn the_agent_cannot_reach_the_session_history_from_its_work_tree() {
    let world = World::new();
    seed(&world);
    let script = Script::new(vec![
        Reply::tool_calls(vec![call(
            "write_file",
            json!({"path": "a.txt", "content": "A\n"}),
        )]),
        Reply::tool_calls(vec![call(
            "bash",
            json!({"command": "git log --oneline 2>&1 | head -1; ls -a; rm -rf .git; echo b > b.txt"}),
        )]),
        Reply::text("done"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let out = world.exec(
        &server,
        &["--backend", "copy", "--approval-mode", "yolo", "go"],
    );
    assert_ok(&out);
    let r = &tool_results(&server)[1];
    assert!(
        !r.contains("Agent executed"),
        "the history is not in the work tree: {r}"
    );
    let id = session_ids(&world).remove(0);
    let out = world
        .cmd()
        .args(["sessions", "sync", &id, "--accept-all"])
        .output()
        .expect("run");
    assert_ok(&out);
    assert_eq!(world.read("a.txt").as_deref(), Some("A\n"));
    assert_eq!(world.read("b.txt").as_deref(), Some("b\n"));
}

/// The sandbox's hardening through the real binary on the process backend (bubblewrap,
/// and the in-process fallback in CI's run with bubblewrap hidden): secrets in Safe
/// Coder's environment do not reach a command, a host Unix socket is unreachable, and a
/// daemon a command starts does not outlive it.
#[test]
fn process_bash_gets_no_secrets_no_host_socket_and_leaves_no_daemon() {
    if !bwrap_available("process_bash_gets_no_secrets_no_host_socket_and_leaves_no_daemon") {
        return;
    }
    if !std::path::Path::new("/usr/bin/perl").is_file() {
        eprintln!("skipped: /usr/bin/perl (the Unix-socket client) is not installed");
        return;
    }
    let world = World::new();
    let socket = world.root.path().join("host.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let marker = format!("{}", 7_700_000 + std::process::id() % 100_000);
    let cmd = format!(
        "env; /usr/bin/perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Peer => $ARGV[0]) \
         or die \"REFUSED\\n\"; print \"CONNECTED\\n\"' {sock} 2>&1; \
         setsid sleep {marker} > /dev/null 2>&1 & echo spawned",
        sock = socket.display()
    );
    let script = Script::new(vec![
        Reply::tool_calls(vec![call("bash", json!({ "command": cmd }))]),
        Reply::text("ok"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let secrets = [
        ("MYSQL_PWD", "e2e-mysql-pwd-1"),
        ("DB_PASS", "e2e-db-pass-2"),
        ("STRIPE_SK", "e2e-stripe-3"),
        ("SENTRY_DSN", "https://e2e-sentry-4@sentry.example/1"),
        ("SLACK_WEBHOOK_URL", "https://hooks.example/e2e-slack-5"),
        ("NPM_CONFIG__AUTH", "e2e-npm-6"),
        ("HTTPS_PROXY", "http://u:e2e-proxy-7@proxy.example:3128"),
    ];
    let mut c = world.cmd();
    c.arg("exec").args(provider_args(&server)).args([
        "--backend",
        "process",
        "--approval-mode",
        "yolo",
        "probe",
    ]);
    for (k, v) in secrets {
        c.env(k, v);
    }
    let out = c.output().expect("run");
    assert_ok(&out);
    let r = &tool_results(&server)[0];
    for (k, v) in secrets {
        assert!(!r.contains(v), "{k} reached the command: {r}");
    }
    assert!(r.contains("SAFE_CODER=1"), "{r}");
    assert!(r.contains("REFUSED") && !r.contains("CONNECTED"), "{r}");
    assert!(
        listener.accept().is_err(),
        "a connection reached the host socket"
    );
    assert!(r.contains("spawned"), "{r}");
    let alive = || {
        std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        std::fs::read(e.path().join("cmdline"))
                            .map(|c| String::from_utf8_lossy(&c).contains(&marker))
                            .unwrap_or(false)
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive() > 0 {
        assert!(Instant::now() < deadline, "the daemon outlived its command");
        std::thread::sleep(Duration::from_millis(20));
    }
}
