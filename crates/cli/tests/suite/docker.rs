//! The `docker` backend end to end through the real binary, on every engine and
//! runtime here: Docker with runc, Docker with gVisor (runsc), and Podman
//! (`SAFE_CODER_TEST_PODMAN_HOST`). The same sessions as the other backends (keep then
//! sync, accept/reject/conflict, SIGKILL then recover), then what a command in the
//! container cannot reach, the limits, and the containers a killed Safe Coder leaves.
//!
//! Without an engine these print why and pass; with `SAFE_CODER_REQUIRE_SANDBOX=1` and
//! `SAFE_CODER_TEST_DOCKER=1` (scripts/ci/docker.sh) they fail instead. The plain CI
//! test run sets only the first and has no engine.

use std::time::{Duration, Instant};

use safe_coder_sandbox::DockerSpec;
use safe_coder_test_support::{MockServer, Reply, Script, Wire};
use serde_json::json;

use super::backends::{
    accept_reject_conflict_with, keep_then_sync_with, sigkill_then_recover_with,
};
use crate::common::*;

fn required() -> bool {
    std::env::var_os("SAFE_CODER_REQUIRE_SANDBOX").is_some()
        && std::env::var("SAFE_CODER_TEST_DOCKER").is_ok_and(|v| v == "1")
}

/// One engine and runtime: what goes into a world's `[docker]` table.
#[derive(Clone, Debug)]
struct Target {
    label: String,
    host: Option<String>,
    runtime: Option<&'static str>,
}

impl Target {
    fn spec(&self) -> DockerSpec {
        DockerSpec {
            host: self.host.clone(),
            runtime: self.runtime.map(str::to_string),
            image: image(),
            ..DockerSpec::default()
        }
    }

    /// A world whose user config points the docker backend at this engine and runtime.
    fn world(&self, extra: &str) -> World {
        let world = World::new();
        let mut text = format!("[docker]\nimage = {:?}\n", image());
        if let Some(h) = &self.host {
            text.push_str(&format!("host = {h:?}\n"));
        }
        if let Some(r) = self.runtime {
            text.push_str(&format!("runtime = {r:?}\n"));
        }
        text.push_str(extra);
        std::fs::create_dir_all(world.config_dir()).expect("config dir");
        std::fs::write(world.config_dir().join("config.toml"), text).expect("config");
        world
    }
}

fn image() -> String {
    std::env::var("SAFE_CODER_TEST_DOCKER_IMAGE")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| safe_coder_sandbox::DEFAULT_DOCKER_IMAGE.to_string())
}

fn usable(t: &Target) -> Result<String, String> {
    safe_coder_sandbox::docker::runtime_for(&t.spec())
        .map(|(runtime, product)| format!("{product} {runtime}"))
        .map_err(|e| e.to_string())
}

/// The target of one flavour, or `None` after saying why (a failure when required).
fn target(which: &str) -> Option<Target> {
    let t = match which {
        "runc" | "runsc" => Target {
            label: which.into(),
            host: None,
            runtime: Some(if which == "runc" { "runc" } else { "runsc" }),
        },
        _ => match std::env::var("SAFE_CODER_TEST_PODMAN_HOST") {
            Ok(h) if !h.is_empty() => Target {
                label: "podman".into(),
                host: Some(h),
                runtime: None,
            },
            _ => {
                assert!(
                    !required(),
                    "SAFE_CODER_TEST_PODMAN_HOST must name Podman's socket in the docker CI step"
                );
                eprintln!("skipped podman: SAFE_CODER_TEST_PODMAN_HOST is not set");
                return None;
            }
        },
    };
    match usable(&t) {
        Ok(label) => Some(Target { label, ..t }),
        Err(e) => {
            assert!(
                !required(),
                "{which}: the docker backend must work here: {e}"
            );
            eprintln!("skipped docker ({which}): {e}");
            None
        }
    }
}

fn run_bash(target: &Target, world: &World, commands: &[&str]) -> Vec<String> {
    let mut replies: Vec<Reply> = commands
        .iter()
        .map(|c| Reply::tool_calls(vec![call("bash", json!({ "command": c }))]))
        .collect();
    replies.push(Reply::text("ok"));
    let server = MockServer::start(Wire::Anthropic, Script::new(replies)).expect("server");
    let out = world.exec(
        &server,
        &["--backend", "docker", "--approval-mode", "yolo", "probe"],
    );
    assert_ok(&out);
    let all = server.model_requests();
    assert!(!all.is_empty(), "{}: no model request", target.label);
    tool_results(&server)
}

macro_rules! each_runtime {
    ($($name:ident: $which:literal),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[test]
            fn keep_then_sessions_sync() {
                if let Some(t) = target($which) {
                    keep_then_sync_with(&|| t.world(""), "docker");
                }
            }

            #[test]
            fn accept_reject_conflict() {
                if let Some(t) = target($which) {
                    accept_reject_conflict_with(&|| t.world(""), "docker");
                }
            }

            #[test]
            fn sigkill_then_sessions_sync_recovers() {
                if let Some(t) = target($which) {
                    sigkill_then_recover_with(&|| t.world(""), "docker");
                }
            }

            #[test]
            fn rollback_and_file_tools_over_the_workspace() {
                if let Some(t) = target($which) {
                    rollback_in_chat(&t);
                }
            }

            #[test]
            fn renames_and_directories_replaced_by_files_and_back_sync() {
                if let Some(t) = target($which) {
                    shapes_sync(&t);
                }
            }

            #[test]
            fn bash_is_confined() {
                if let Some(t) = target($which) {
                    confined(&t);
                }
            }

            #[test]
            fn limits_hold() {
                if let Some(t) = target($which) {
                    limits(&t);
                }
            }

            #[test]
            fn a_killed_safe_coder_leaves_no_container() {
                if let Some(t) = target($which) {
                    leftovers(&t);
                }
            }

            #[test]
            fn run_syncs_a_commands_changes() {
                if let Some(t) = target($which) {
                    run_command(&t);
                }
            }

            #[test]
            fn run_shows_mounts_in_a_container_of_its_own() {
                if let Some(t) = target($which) {
                    run_with_mounts(&t);
                }
            }

            #[test]
            fn a_killed_run_leaves_no_container() {
                if let Some(t) = target($which) {
                    run_leftovers(&t);
                }
            }

            #[test]
            fn run_network_allow_list() {
                if let Some(t) = target($which) {
                    run_network(&t);
                }
            }

            #[test]
            fn run_in_a_terminal_resize_and_ctrl_c() {
                if let Some(t) = target($which) {
                    run_in_terminal(&t);
                }
            }
        }
    )*};
}

each_runtime! {
    runc: "runc",
    runsc: "runsc",
    podman: "podman",
}

/// A chat session: the start line says how the workspace was made (an overlay volume
/// on runc and Podman, the copy under gVisor); the file tools and bash see each other's
/// writes; `/rollback` (a host write) reaches a command that had already read the file
/// (the container is restarted over an overlay); the project changes only at the sync.
fn rollback_in_chat(t: &Target) {
    let label = &t.label;
    let world = t.world("");
    world.write("f.txt", "v1\n");
    let script = Script::new(vec![
        Reply::tool_calls(vec![call(
            "write_file",
            json!({"path": "tool.txt", "content": "from the tool\n"}),
        )]),
        Reply::tool_calls(vec![call(
            "bash",
            json!({"command": "cat tool.txt; echo v2 > f.txt; cat f.txt later.txt 2>&1"}),
        )]),
        Reply::text("did"),
        Reply::tool_calls(vec![call(
            "bash",
            json!({"command": "cat f.txt; test -e tool.txt && echo tool-still-there; echo kept > later.txt"}),
        )]),
        Reply::tool_calls(vec![call("read_file", json!({"path": "later.txt"}))]),
        Reply::text("checked"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let out = super::interactive::chat(
        &world,
        &server,
        &["--backend", "docker", "--approval-mode", "yolo"],
        "/snapshot start\nfirst\n/rollback\nsecond\nexit\na\n",
    );
    assert_ok(&out);
    let text = stdout(&out);
    let overlay = t.runtime != Some("runsc");
    let said = if overlay {
        "an overlay volume in the container"
    } else {
        "copied into the container"
    };
    assert!(text.contains(said), "{label}: {text}");
    assert!(text.contains("Rolled back to"), "{label}: {text}");
    let results = tool_results(&server);
    let n = results.len();
    assert!(n >= 3, "{label}: {results:?}");
    assert!(
        results[n - 3].contains("from the tool\nv2"),
        "{label}: bash did not see the tool's file and its own write: {results:?}"
    );
    assert!(
        results[n - 2].starts_with("v1\n") && !results[n - 2].contains("tool-still-there"),
        "{label}: the rollback did not reach the container: {results:?}"
    );
    assert!(results[n - 1].contains("kept"), "{label}: {results:?}");
    assert_eq!(world.read("f.txt").as_deref(), Some("v1\n"), "{label}");
    assert_eq!(
        world.read("later.txt").as_deref(),
        Some("kept\n"),
        "{label}: {text}"
    );
    assert!(world.read("tool.txt").is_none(), "{label}");
}

/// The shapes of change an upper layer holds in special ways (a rename, a directory
/// replaced by a file and a file by a directory, a directory removed and made again,
/// which the engine's overlay marks opaque) reach the project at an accepted sync.
fn shapes_sync(t: &Target) {
    let label = &t.label;
    let world = t.world("");
    world.write("a.txt", "a\n");
    world.write("dir1/x.txt", "x\n");
    world.write("file2", "f\n");
    world.write("sub/y.txt", "y\n");
    world.write("sub/deeper/w.txt", "w\n");
    let script = Script::new(vec![
        Reply::tool_calls(vec![call(
            "bash",
            json!({"command": "mv a.txt renamed.txt && rm -r dir1 && echo now-a-file > dir1 && rm file2 && mkdir file2 && echo inside > file2/x && rm -r sub && mkdir sub && echo fresh > sub/z.txt"}),
        )]),
        Reply::text("reshaped"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let out = world.exec(
        &server,
        &[
            "--backend",
            "docker",
            "--approval-mode",
            "yolo",
            "--sync",
            "accept",
            "reshape",
        ],
    );
    assert_ok(&out);
    let results = tool_results(&server);
    assert!(!results.is_empty(), "{label}: {results:?}");
    assert_eq!(world.read("renamed.txt").as_deref(), Some("a\n"), "{label}");
    assert!(!world.project.join("a.txt").exists(), "{label}");
    assert_eq!(
        world.read("dir1").as_deref(),
        Some("now-a-file\n"),
        "{label}"
    );
    assert_eq!(
        world.read("file2/x").as_deref(),
        Some("inside\n"),
        "{label}"
    );
    assert_eq!(
        world.read("sub/z.txt").as_deref(),
        Some("fresh\n"),
        "{label}"
    );
    assert!(
        !world.project.join("sub/y.txt").exists(),
        "{label}: opaque directory"
    );
    assert!(
        !world.project.join("sub/deeper").exists(),
        "{label}: opaque directory"
    );
}

/// No `$HOME`, no writes outside `/workspace`, no network, no host processes, no
/// provider key.
fn confined(t: &Target) {
    let world = t.world("");
    std::fs::write(world.home.join("secret.txt"), "home secret").expect("w");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let outside = world.root.path().join("outside");
    std::fs::create_dir_all(&outside).expect("dir");
    let cmd = format!(
        "cat {home}/secret.txt; echo read=$?; echo x > {outside}/x; echo write=$?; \
         echo y > /etc/y; echo etc=$?; echo z > /workspace/z; echo ws=$?; \
         (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; echo local=$?; \
         (exec 3<>/dev/tcp/1.1.1.1/53) 2>/dev/null; echo internet=$?; \
         env; echo procs=$(ps -e --no-headers | wc -l)",
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
        "docker",
        "--approval-mode",
        "yolo",
        "probe",
    ]);
    c.env("ANTHROPIC_API_KEY", "sk-ant-e2e-docker-secret")
        .env("OPENAI_API_KEY", "sk-openai-e2e-docker-secret");
    let out = c.output().expect("run");
    assert_ok(&out);
    let r = &tool_results(&server)[0];
    let label = &t.label;
    assert!(!r.contains("home secret"), "{label}: {r}");
    for bad in ["read=0", "write=0", "etc=0", "local=0", "internet=0"] {
        assert!(!r.contains(bad), "{label}: {bad}: {r}");
    }
    assert!(r.contains("ws=0"), "{label}: {r}");
    assert!(!outside.join("x").exists());
    for secret in [
        "sk-ant-e2e-docker-secret",
        "sk-openai-e2e-docker-secret",
        "test-key-123456",
    ] {
        assert!(
            !r.contains(secret),
            "{label}: a provider key reached the command: {r}"
        );
    }
    assert!(r.contains("SAFE_CODER=1"), "{label}: {r}");
    let procs: u32 = r
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(999);
    assert!(
        procs < 10,
        "{label}: sees only its own processes, saw {procs}: {r}"
    );
    assert!(listener.set_nonblocking(true).is_ok() && listener.accept().is_err());
}

/// Forks sleepers until forking fails, and says how many started.
const FORKS: &str = r#"python3 - <<'EOF'
import os, time
n = 0
for i in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    n += 1
print('started', n, flush=True)
EOF"#;

/// A memory hog is killed at `[isolation] memory_mb`; a fork bomb stops at `[docker]
/// pids`; a command that outlives its timeout dies with its children.
fn limits(t: &Target) {
    let world = t.world("pids = 48\n[isolation]\nmemory_mb = 128\n");
    let script = Script::new(vec![
        Reply::tool_calls(vec![call(
            "bash",
            json!({"command": "python3 -c 'b = []\nwhile True: b.append(bytearray(8 << 20))'; echo hog=$?"}),
        )]),
        Reply::tool_calls(vec![call(
            "bash",
            json!({"command": FORKS, "timeout_ms": 60000}),
        )]),
        Reply::tool_calls(vec![call(
            "bash",
            json!({"command": "(sleep 401 &); sleep 402 & sleep 403; echo never", "timeout_ms": 2000}),
        )]),
        Reply::tool_calls(vec![call("bash", json!({"command": "ps -eo args"}))]),
        Reply::text("ok"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let out = world.exec(
        &server,
        &["--backend", "docker", "--approval-mode", "yolo", "limits"],
    );
    assert_ok(&out);
    let r = tool_results(&server);
    let label = &t.label;
    assert_eq!(r.len(), 4, "{label}: {r:?}");
    eprintln!("{label}: {r:#?}");
    let gvisor = t.label.ends_with("runsc");
    // Under gVisor a limit may take the whole sandbox down: the result says so (or
    // carries runsc's own error when the engine noticed late).
    let sandbox_died = |r: &str| r.contains("the container stopped") || r.contains("WaitPID");
    assert!(
        r[0].contains("hog=137") || (gvisor && sandbox_died(&r[0])),
        "{label}: the hog was not killed: {}",
        r[0]
    );
    let started: Option<usize> = r[1]
        .lines()
        .find_map(|l| l.strip_prefix("started "))
        .and_then(|n| n.trim().parse().ok());
    // Under gVisor the limit counts the sandbox's host tasks, so forking stops near 48
    // rather than at it, or the Sentry itself hits it and the sandbox stops.
    let most = if gvisor { 72 } else { 48 };
    assert!(
        started.is_some_and(|n| n < most) || (gvisor && sandbox_died(&r[1])),
        "{label}: the fork loop never hit the limit: {}",
        r[1]
    );
    assert!(!r[2].contains("never"), "{label}: {}", r[2]);
    assert!(
        r[2].to_lowercase().contains("timed out"),
        "{label}: {}",
        r[2]
    );
    for s in ["sleep 401", "sleep 402", "sleep 403", "python3 -"] {
        assert!(!r[3].contains(s), "{label}: {s} survived: {}", r[3]);
    }
}

/// A `kill -9` of Safe Coder leaves its container running; the next session's start
/// removes it, and `sessions discard` removes a kept one.
fn leftovers(t: &Target) {
    let world = t.world("");
    world.write("a.txt", "a\n");
    let script = Script::new(vec![
        Reply::tool_calls(vec![call(
            "bash",
            json!({"command": "echo started > started.txt; sleep 120"}),
        )]),
        Reply::text("never reached"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let mut c = world.cmd();
    c.arg("exec").args(provider_args(&server)).args([
        "--backend",
        "docker",
        "--approval-mode",
        "yolo",
        "work",
    ]);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().expect("spawn");
    let sessions = world.data_dir().join("sessions");
    let deadline = Instant::now() + Duration::from_secs(120);
    let id = loop {
        let found = std::fs::read_dir(&sessions)
            .ok()
            .and_then(|mut rd| rd.next())
            .and_then(|e| e.ok())
            .filter(|e| session_wrote(&e.path(), "started.txt"))
            .map(|e| e.file_name().to_string_lossy().into_owned());
        if let Some(id) = found {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the session never got going",
            t.label
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let spec = t.spec();
    let of = |id: &str| {
        safe_coder_sandbox::docker::session_containers(&spec)
            .expect("list")
            .into_iter()
            .filter(|c| c.session_id == id)
            .collect::<Vec<_>>()
    };
    // Left running, unless another test's session on this engine has swept it
    // already (tests run in parallel, and every session start sweeps).
    assert!(
        of(&id).len() <= 1,
        "{}: the killed session's container",
        t.label
    );
    // The next session removes it (its owner is dead) and keeps its own, stopped.
    let r = run_bash(t, &world, &["echo second | tee b.txt"]);
    assert!(r[0].contains("second"), "{}: {r:?}", t.label);
    assert!(
        of(&id).is_empty(),
        "{}: the leftover was not removed",
        t.label
    );
    // The second session was kept (exec's default): its container is stopped, and
    // `sessions discard` removes it.
    let out = world
        .cmd()
        .args(["sessions", "list", "--json"])
        .output()
        .expect("run");
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    for s in list.as_array().expect("array") {
        let sid = s["id"].as_str().expect("id").to_string();
        if sid == id {
            continue;
        }
        let kept = of(&sid);
        assert_eq!(kept.len(), 1, "{}: kept session {sid}", t.label);
        assert!(!kept[0].running, "{}: a kept container is stopped", t.label);
        let out = world
            .cmd()
            .args(["sessions", "discard", &sid])
            .output()
            .expect("run");
        assert_ok(&out);
        assert!(
            of(&sid).is_empty(),
            "{}: discard removes the container",
            t.label
        );
    }
}

/// `auto` takes docker where it works (before `process`), and the container sees the
/// project: the session's workspace is a copy, not the overlay `process` runs over.
#[test]
fn auto_takes_docker_and_the_container_sees_the_project() {
    let Some(t) = target("runc") else { return };
    let world = t.world("");
    world.write("a.txt", "from the project\n");
    let script = Script::new(vec![
        Reply::tool_calls(vec![call(
            "bash",
            json!({"command": "cat a.txt; pwd; echo made > b.txt"}),
        )]),
        Reply::text("ok"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let out = world.exec(
        &server,
        &["-v", "--approval-mode", "yolo", "--sync", "accept", "look"],
    );
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains("auto chose docker"), "{err}");
    let r = &tool_results(&server)[0];
    assert!(
        r.contains("from the project") && r.contains("/workspace"),
        "{r}"
    );
    assert_eq!(world.read("b.txt").as_deref(), Some("made\n"));
}

/// `safe-coder run --backend docker`: CMD runs in the container at `/workspace` with the
/// allow-listed environment and the named variables, its changes are committed as
/// `Agent executed: run …` and reach the host on an accepted sync, its exit code is
/// run's.
fn run_command(t: &Target) {
    use super::run::{assert_changed_on_host, history, json_events, seed, session_ids, CHANGES};
    let world = t.world("");
    seed(&world);
    let out = world
        .cmd()
        .env("RUN_TEST_KEY", "named-secret")
        .env("RUN_TEST_OTHER", "unnamed-secret")
        .args(["run", "--backend", "docker", "--json", "--sync", "keep"])
        .args(["--env", "RUN_TEST_KEY", "--", "bash", "-c"])
        .arg(format!(
            "{CHANGES}; echo where=$(pwd) key=$RUN_TEST_KEY other=${{RUN_TEST_OTHER:-unset}}; \
             test -e /.dockerenv -o -e /run/.containerenv && echo in-container; exit 3"
        ))
        .output()
        .expect("run");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(3), "{}: {text}", t.label);
    assert!(text.contains("done-changing"), "{}: {text}", t.label);
    assert!(
        text.contains("where=/workspace key=named-secret other=unset"),
        "{}: {text}",
        t.label
    );
    let events = json_events(&stdout(&out));
    let finished = events
        .iter()
        .find(|e| e["type"] == "run_finished")
        .unwrap_or_else(|| panic!("{}: no run_finished: {text}", t.label));
    assert_eq!(finished["exit_code"], 3, "{}", t.label);
    // Kept, not synced: the project is untouched.
    assert_eq!(world.read("edit.txt").as_deref(), Some("one\ntwo\n"));
    let ids = session_ids(&world);
    assert_eq!(ids.len(), 1, "{}: {ids:?}", t.label);
    let log = history(&world, &ids[0]);
    assert!(
        log.iter()
            .any(|m| m.starts_with("Agent executed: run bash -c")),
        "{}: {log:?}",
        t.label
    );
    let sync = world
        .cmd()
        .args(["sessions", "sync", &ids[0], "--accept-all"])
        .output()
        .expect("sync");
    assert_ok(&sync);
    assert_changed_on_host(&world);

    // `--sync accept` applies at once.
    world.write("edit.txt", "one\ntwo\n");
    world.write("del.txt", "bye\n");
    std::fs::remove_dir_all(world.project.join("new")).expect("rm new");
    let out = world
        .cmd()
        .args(["run", "--backend", "docker", "--json", "--sync", "accept"])
        .args(["--", "bash", "-c", CHANGES])
        .output()
        .expect("run");
    assert_ok(&out);
    assert_changed_on_host(&world);
}

/// `--mount`: a path under the home appears under the container's home, read-only with
/// `:ro` (a symlink there: its target, where it was named); another path at its own
/// place, writable; the run's container is removed when
/// it ends (the session's own stays, stopped, for the kept session); the workspace is the
/// session's as without mounts.
fn run_with_mounts(t: &Target) {
    use super::run::session_ids;
    let world = t.world("");
    let tool = world.home.join(".tool");
    std::fs::create_dir_all(&tool).expect("tool dir");
    std::fs::write(tool.join("config"), "from-home\n").expect("config");
    let shared = world.root.path().join("shared dir");
    std::fs::create_dir_all(&shared).expect("shared dir");
    // A symlink under the home into a directory elsewhere (a dotfiles repository):
    // shown where it was named.
    let dotfiles = world.root.path().join("dotfiles-linked");
    std::fs::create_dir_all(&dotfiles).expect("dotfiles");
    std::fs::write(dotfiles.join("settings"), "linked-settings\n").expect("settings");
    std::os::unix::fs::symlink(&dotfiles, world.home.join(".linked")).expect("symlink");
    // A single file (as `~/.claude.json`).
    std::fs::write(world.home.join(".tool.json"), "{\"file\": \"mounted\"}\n").expect("file");
    let script = format!(
        "cat \"$HOME/.tool.json\"; cat \"$HOME/.linked/settings\"; cat \"$HOME/.tool/config\"; echo x > \"$HOME/.tool/new\" 2>/dev/null && echo ro-written-$((1+1)); \
         echo made > {shared:?}/out.txt && echo rw-ok-$((1+1)); echo in-ws > ws.txt",
        shared = shared.display().to_string()
    );
    let out = world
        .cmd()
        .args(["run", "--backend", "docker", "--json", "--sync", "keep"])
        .arg("--mount")
        .arg(format!("{}:ro", tool.display()))
        .arg("--mount")
        .arg(&shared)
        .arg("--mount")
        .arg(format!("{}:ro", world.home.join(".linked").display()))
        .arg("--mount")
        .arg(format!("{}:ro", world.home.join(".tool.json").display()))
        .args(["--", "bash", "-c", &script])
        .output()
        .expect("run");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    let label = &t.label;
    assert_ok(&out);
    assert!(text.contains("from-home"), "{label}: {text}");
    assert!(text.contains("linked-settings"), "{label}: {text}");
    assert!(text.contains(r#"{"file": "mounted"}"#), "{label}: {text}");
    // (The command line is in the output too: the markers are computed.)
    assert!(!text.contains("ro-written-2"), "{label}: {text}");
    assert!(!tool.join("new").exists(), "{label}");
    assert!(text.contains("rw-ok-2"), "{label}: {text}");
    assert_eq!(
        std::fs::read_to_string(shared.join("out.txt"))
            .ok()
            .as_deref(),
        Some("made\n"),
        "{label}"
    );
    // The command's change is in the session, not yet in the project.
    assert!(!world.project.join("ws.txt").exists());
    let ids = session_ids(&world);
    assert_eq!(ids.len(), 1, "{label}: {ids:?}");
    let containers: Vec<_> = safe_coder_sandbox::docker::session_containers(&t.spec())
        .expect("list")
        .into_iter()
        .filter(|c| c.session_id == ids[0])
        .collect();
    assert_eq!(
        containers.len(),
        1,
        "{label}: the run's own container was not removed: {containers:?}"
    );
    let sync = world
        .cmd()
        .args(["sessions", "sync", &ids[0], "--accept-all"])
        .output()
        .expect("sync");
    assert_ok(&sync);
    assert_eq!(world.read("ws.txt").as_deref(), Some("in-ws\n"), "{label}");
    // A missing path is one clear error, and nothing runs.
    let out = world
        .cmd()
        .args(["run", "--backend", "docker", "--sync", "reject"])
        .args([
            "--mount",
            "/no/such/dir",
            "--",
            "bash",
            "-c",
            "echo ran > ran.txt",
        ])
        .output()
        .expect("run");
    assert!(
        stderr(&out).contains("/no/such/dir"),
        "{label}: {}",
        stderr(&out)
    );
    assert!(!world.project.join("ran.txt").exists());
}

/// Starts `safe-coder run --mount <dir> -- bash -c "<marker>; sleep 300"` and returns
/// the child and its session id once the marker file is in the session's work tree.
// The child is handed to the caller, who waits for it.
#[allow(clippy::zombie_processes)]
/// Whether the session in `dir` holds `name` written by the agent: in its upper layer
/// (an overlay workspace, runc and Podman) or its copy (gVisor).
fn session_wrote(dir: &std::path::Path, name: &str) -> bool {
    dir.join("upper").join(name).exists() || dir.join("work").join(name).exists()
}

// The child is returned to the caller, which waits for it.
#[allow(clippy::zombie_processes)]
fn start_long_run(t: &Target, world: &World, marker: &str) -> (std::process::Child, String) {
    let shown = world.root.path().join("shown");
    std::fs::create_dir_all(&shown).expect("dir");
    let mut c = world.cmd();
    c.args(["run", "--backend", "docker", "--sync", "keep", "--mount"])
        .arg(&shown)
        .args(["--", "bash", "-c"])
        .arg(format!("echo started > {marker}; sleep 300"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().expect("spawn");
    let sessions = world.data_dir().join("sessions");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let found = std::fs::read_dir(&sessions)
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| session_wrote(&e.path(), marker))
            .map(|e| e.file_name().to_string_lossy().into_owned());
        if let Some(id) = found {
            return (child, id);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{}: the run never started", t.label);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stopping a run with `--mount`: SIGTERM kills CMD (the run's own container is
/// removed, the session's stays for the kept session); a `kill -9` of Safe Coder leaves
/// the run's running (CMD with it), and the next docker session removes every running
/// one (over an overlay workspace the session's was stopped for the run, and stays as a
/// kept session's); the work CMD did is in the kept sessions either way.
fn run_leftovers(t: &Target) {
    let label = &t.label;
    let world = t.world("");
    let spec = t.spec();
    let of = |id: &str| {
        safe_coder_sandbox::docker::session_containers(&spec)
            .expect("list")
            .into_iter()
            .filter(|c| c.session_id == id)
            .collect::<Vec<_>>()
    };

    let (mut child, id) = start_long_run(t, &world, "first.txt");
    // The session's container and the run's own (its owner is alive: nobody sweeps them).
    assert_eq!(of(&id).len(), 2, "{label}: {:?}", of(&id));
    // SAFETY: kill on a child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(137),
        "{label}: CMD was killed: {status:?}"
    );
    let left = of(&id);
    assert!(
        left.len() == 1 && !left[0].running,
        "{label}: only the kept session's container, stopped: {left:?}"
    );

    let (mut child, id) = start_long_run(t, &world, "second.txt");
    assert_eq!(of(&id).len(), 2, "{label}: {:?}", of(&id));
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let r = run_bash(t, &world, &["echo next"]);
    assert!(r[0].contains("next"), "{label}: {r:?}");
    // Over an overlay workspace the session's container rested (stopped) while the
    // run's had the workspace, and a stopped container of a kept session stays.
    let left = of(&id);
    assert!(
        left.len() <= 1 && left.iter().all(|c| !c.running),
        "{label}: the killed run's containers were not removed: {left:?}"
    );
    let show = world
        .cmd()
        .args(["sessions", "diff", &id])
        .output()
        .expect("diff");
    assert!(
        stdout(&show).contains("second.txt"),
        "{label}: {}",
        stdout(&show)
    );
}

/// A body of every byte value, 1 MiB: large and binary, so that any mistake in the
/// engine's stream framing or the multiplexer shows.
fn binary_body() -> Vec<u8> {
    (0..(1usize << 20)).map(|i| (i % 251) as u8).collect()
}

/// The checksum the container computes with Python (see `run_network`): the sum of
/// each byte times its 1-based position, modulo 2^61 (order matters, unlike a plain
/// sum).
fn position_sum(data: &[u8]) -> u64 {
    let m: u128 = 1 << 61;
    let mut sum: u128 = 0;
    for (i, b) in data.iter().enumerate() {
        sum = (sum + (i as u128 + 1) * u128::from(*b)) % m;
    }
    sum as u64
}

/// An HTTP server on the host's loopback that reads each request's body and answers
/// with its length and [`position_sum`]: what the command sent, as the host got it.
fn checksum_server() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let mut got = Vec::new();
                let end = loop {
                    if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut body = got[end..].to_vec();
                while body.len() < len {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => body.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!("got={} {:x}", body.len(), position_sum(&body));
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            });
        }
    });
    port
}

/// `--allow-net` on docker: the allowed hosts (the in-repo mock model server, a server
/// of 1 MiB of binary data, one that checks a 1 MiB upload) answer through
/// `HTTP_PROXY`, to a real client (Python's urllib) and to raw bytes on a socket; a host not on the list gets 403 and
/// is reported (a line at exit, a JSON event); a direct TCP connection fails, to the
/// host's loopback and to the internet. The container keeps `--network none`: the
/// connections leave it as the bytes of the guest agent's `net-forward` exec.
fn run_network(t: &Target) {
    let label = &t.label;
    let world = t.world("");
    let model = MockServer::start(
        Wire::Anthropic,
        Script::new(vec![Reply::text("hello-through-the-proxy")]),
    )
    .expect("server");
    let big = binary_body();
    let expected = format!("{:x}", position_sum(&big));
    let data = http_server(big);
    let other = http_server(b"hello-from-other".to_vec());
    let sink = checksum_server();
    let model_port = model.addr().port();
    let script = format!(
        r#"echo proxy=$HTTPS_PROXY
python3 - <<'PY'
import json, urllib.request, urllib.error
req = urllib.request.Request("http://127.0.0.1:{model_port}/v1/messages", method="POST",
    headers={{"content-type": "application/json", "x-api-key": "k", "anthropic-version": "2023-06-01"}},
    data=json.dumps({{"model": "m", "max_tokens": 10, "messages": [{{"role": "user", "content": "hi"}}]}}).encode())
print("model:", urllib.request.urlopen(req, timeout=30).read().decode()[:2000])
try:
    urllib.request.urlopen("http://127.0.0.1:{other}/", timeout=30).read()
    print("other-" + "answered")
except urllib.error.HTTPError as e:
    print("other-status", e.code)
up = bytes((i * 7 + 3) % 256 for i in range(1 << 20))
print("upload:", urllib.request.urlopen(urllib.request.Request(
    "http://127.0.0.1:{sink}/", data=up, method="POST"), timeout=60).read().decode())
PY
exec 3<>/dev/tcp/127.0.0.1/${{HTTP_PROXY##*:}}
printf 'GET http://127.0.0.1:{data}/ HTTP/1.1\r\nHost: 127.0.0.1:{data}\r\n\r\n' >&3
cat <&3 > /tmp/resp; exec 3<&-
echo data=$(tail -c 1048576 /tmp/resp | python3 -c 'import sys; d=sys.stdin.buffer.read(); print(len(d), format(sum((i+1)*b for i, b in enumerate(d)) % (1<<61), "x"))')
if (exec 4<>/dev/tcp/127.0.0.1/{model_port}) 2>/dev/null; then echo direct-$((0))open; else echo direct-refused; fi
if (exec 4<>/dev/tcp/1.1.1.1/80) 2>/dev/null; then echo internet-$((0))open; else echo internet-refused; fi
"#
    );
    let out = world
        .cmd()
        .args([
            "run",
            "--backend",
            "docker",
            "--sync",
            "reject",
            "--allow-net",
        ])
        .arg(format!(
            "127.0.0.1:{model_port},127.0.0.1:{data},127.0.0.1:{sink}"
        ))
        .args(["--", "bash", "-c", &script])
        .output()
        .expect("run");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_ok(&out);
    assert!(text.contains("proxy=http://127.0.0.1:"), "{label}: {text}");
    assert!(text.contains("hello-through-the-proxy"), "{label}: {text}");
    assert!(
        !model.model_requests().is_empty(),
        "{label}: the mock server got no request"
    );
    assert!(text.contains("other-status 403"), "{label}: {text}");
    // (The script is echoed too: its markers are built at run time.)
    assert!(!text.contains("other-answered"), "{label}: {text}");
    assert!(
        text.contains(&format!("data=1048576 {expected}")),
        "{label}: the 1 MiB body did not arrive intact: {text}"
    );
    let up: Vec<u8> = (0..(1usize << 20))
        .map(|i| ((i * 7 + 3) % 256) as u8)
        .collect();
    assert!(
        text.contains(&format!("upload: got=1048576 {:x}", position_sum(&up))),
        "{label}: the 1 MiB upload did not arrive intact: {text}"
    );
    assert!(
        text.contains("direct-refused") && !text.contains("direct-0open"),
        "{label}: {text}"
    );
    assert!(
        text.contains("internet-refused") && !text.contains("internet-0open"),
        "{label}: {text}"
    );
    assert!(
        stderr(&out).contains(&format!(
            "refused 1 destination(s) not on the allow-list: 127.0.0.1:{other}"
        )),
        "{label}: {}",
        stderr(&out)
    );

    // With --json the refusal is an event.
    let probe = format!(
        "import urllib.request as u\ntry:\n    u.urlopen('http://127.0.0.1:{other}/', timeout=30)\nexcept Exception as e:\n    print('refused', e)\n"
    );
    let out = world
        .cmd()
        .args(["run", "--backend", "docker", "--json", "--sync", "reject"])
        .args(["--allow-net", &format!("127.0.0.1:{model_port}")])
        .args(["--", "python3", "-c", &probe])
        .output()
        .expect("run");
    assert_ok(&out);
    let events = super::run::json_events(&stdout(&out));
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "network_refused")
        .collect();
    assert_eq!(refused.len(), 1, "{label}: {events:?}");
    assert_eq!(refused[0]["port"], other, "{label}");
}

/// In a real terminal (tmux): CMD in the container has a TTY of the pane's size, a
/// resize reaches it, `Ctrl+C` goes to it, and Safe Coder goes on to the review.
fn run_in_terminal(t: &Target) {
    use super::run::{seed, session_ids, Tmux};
    let world = t.world("");
    seed(&world);
    // In the project: the container sees only the workspace.
    world.write(
        "agent.sh",
        "trap 'echo got-int; exit 130' INT\n\
         trap 'echo size=$(stty size)' WINCH\n\
         echo work > work.txt\n\
         echo start=$(stty size)\n\
         while :; do sleep 0.1; done\n",
    );
    let args: Vec<String> = ["run", "--backend", "docker", "--", "bash", "agent.sh"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let Some(tmux) = Tmux::start(&world, &args) else {
        return;
    };
    // `stty size` needs a terminal: it is one, of the pane's size.
    tmux.wait_for("start=30 100");
    tmux.run(&["resize-window", "-t", "e2e", "-x", "90", "-y", "25"]);
    tmux.wait_for("size=25 90");
    tmux.run(&["send-keys", "-t", "e2e", "C-c"]);
    tmux.wait_for("got-int");
    tmux.wait_for("exited with code 130");
    tmux.wait_for("Sync to the host?");
    tmux.run(&["send-keys", "-t", "e2e", "k", "Enter"]);
    let screen = tmux.wait_for("run-exit=");
    assert!(screen.contains("work.txt (added)"), "{}: {screen}", t.label);
    assert!(screen.contains("run-exit=130"), "{}: {screen}", t.label);
    assert!(!world.project.join("work.txt").exists());
    assert_eq!(session_ids(&world).len(), 1);
}
