//! A new user's first hour, end to end with the real binary (issue 14): picking files
//! to sync keeps the others, conflicts have a way forward (`--theirs`, `--ours`) on
//! which `show`, `diff` and `sync` agree, a bad path is an error, a killed session
//! without changes is not listed, and a session's title is its first prompt.

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use safe_coder_test_support::{MockServer, Reply, Script, Wire};
use serde_json::json;

use crate::common::*;

/// The agent edits `a.txt` and `b.txt` and adds `new.txt` and `other.txt`.
fn four_changes() -> Script {
    Script::new(vec![
        Reply::tool_calls(vec![
            call(
                "write_file",
                json!({"path": "a.txt", "content": "agent a\n"}),
            ),
            call(
                "write_file",
                json!({"path": "b.txt", "content": "agent b\n"}),
            ),
            call("write_file", json!({"path": "new.txt", "content": "new\n"})),
            call(
                "write_file",
                json!({"path": "other.txt", "content": "other\n"}),
            ),
        ]),
        Reply::text("changed four files"),
    ])
}

/// Runs `exec` (the changes kept in the session) and returns the session id.
fn kept_session(world: &World) -> String {
    world.write("a.txt", "base a\n");
    world.write("b.txt", "base b\n");
    let server = MockServer::start(Wire::Anthropic, four_changes()).expect("server");
    let out = world.exec(&server, &["--backend", "copy", "change things"]);
    assert_ok(&out);
    let ids = listed(world);
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

fn sessions(world: &World, args: &[&str]) -> Output {
    world
        .cmd()
        .arg("sessions")
        .args(args)
        .output()
        .expect("run safe-coder sessions")
}

/// Ids of the sessions `sessions list` shows (those holding unsynced work).
fn listed(world: &World) -> Vec<String> {
    let out = sessions(world, &["list", "--json"]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

/// The paths `sessions show --json` lists as pending, and which of them conflict.
fn pending(world: &World, id: &str) -> (Vec<String>, Vec<String>) {
    let out = sessions(world, &["show", id, "--json"]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    let files = v["changes"]["files"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let path = |f: &serde_json::Value| f["path"].as_str().expect("path").to_string();
    (
        files.iter().map(path).collect(),
        files
            .iter()
            .filter(|f| f["conflict"].as_bool() == Some(true))
            .map(path)
            .collect(),
    )
}

/// The files `sessions diff ID` shows a diff of.
fn diffed(world: &World, id: &str) -> Vec<String> {
    let out = sessions(world, &["diff", id]);
    assert_ok(&out);
    let mut files: Vec<String> = stdout(&out)
        .lines()
        .filter_map(|l| l.strip_prefix("+++ b/"))
        .map(str::to_string)
        .collect();
    files.sort();
    files
}

#[test]
fn sync_files_keeps_the_unpicked_files_unless_reject_rest() {
    let world = World::new();
    let id = kept_session(&world);

    let out = sessions(&world, &["sync", &id, "--files", "a.txt"]);
    assert_ok(&out);
    assert_eq!(world.read("a.txt").as_deref(), Some("agent a\n"));
    assert_eq!(world.read("b.txt").as_deref(), Some("base b\n"));
    assert!(world.read("new.txt").is_none());
    // The others wait in the session, and `show` says so.
    assert_eq!(listed(&world), vec![id.clone()]);
    assert_eq!(
        pending(&world, &id).0,
        vec!["b.txt", "new.txt", "other.txt"]
    );
    assert!(
        stdout(&out).contains(&format!("sessions show {id}")),
        "{}",
        stdout(&out)
    );

    let out = sessions(
        &world,
        &["sync", &id, "--files", "new.txt", "--reject-rest"],
    );
    assert_ok(&out);
    assert_eq!(world.read("new.txt").as_deref(), Some("new\n"));
    // Rejected: the host keeps its own version, and the session is done.
    assert_eq!(world.read("b.txt").as_deref(), Some("base b\n"));
    assert!(world.read("other.txt").is_none());
    assert!(listed(&world).is_empty());
}

#[test]
fn conflicts_are_settled_with_theirs_and_ours_and_every_view_agrees() {
    let world = World::new();
    let id = kept_session(&world);
    // The user edits both files the agent changed.
    world.write("a.txt", "user a\n");
    world.write("b.txt", "user b\n");

    let out = sessions(&world, &["sync", &id, "--accept-all"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("(2 file(s))"), "{text}");
    assert!(text.contains("--theirs a.txt"), "{text}");
    assert_eq!(world.read("new.txt").as_deref(), Some("new\n"));
    assert_eq!(world.read("a.txt").as_deref(), Some("user a\n"));

    // show, diff and a second sync name the same two files.
    assert_eq!(
        pending(&world, &id),
        (
            vec!["a.txt".to_string(), "b.txt".to_string()],
            vec!["a.txt".to_string(), "b.txt".to_string()]
        )
    );
    assert_eq!(diffed(&world, &id), vec!["a.txt", "b.txt"]);
    let out = sessions(&world, &["sync", &id, "--accept-all"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains("(0 file(s))"),
        "nothing is synced twice: {text}"
    );
    assert!(
        text.contains("⚠ a.txt") && text.contains("⚠ b.txt"),
        "{text}"
    );

    // Take the agent's a.txt.
    let out = sessions(&world, &["sync", &id, "--theirs", "a.txt"]);
    assert_ok(&out);
    assert_eq!(world.read("a.txt").as_deref(), Some("agent a\n"));
    assert_eq!(world.read("b.txt").as_deref(), Some("user b\n"));
    assert!(stdout(&out).contains("(1 file(s))"), "{}", stdout(&out));
    assert_eq!(pending(&world, &id).0, vec!["b.txt"]);
    assert_eq!(diffed(&world, &id), vec!["b.txt"]);

    // Keep the user's b.txt: the session has nothing left and is gone.
    let out = sessions(&world, &["sync", &id, "--ours", "b.txt"]);
    assert_ok(&out);
    assert_eq!(world.read("b.txt").as_deref(), Some("user b\n"));
    assert!(
        stdout(&out).contains("Kept your version"),
        "{}",
        stdout(&out)
    );
    assert!(listed(&world).is_empty());
    let out = sessions(&world, &["show", &id]);
    assert_ok(&out);
    assert!(stdout(&out).contains("was synced"), "{}", stdout(&out));
}

#[test]
fn theirs_or_ours_of_a_file_the_session_does_not_hold_is_an_error() {
    let world = World::new();
    let id = kept_session(&world);
    for flag in ["--theirs", "--ours", "--files"] {
        let out = sessions(&world, &["sync", &id, flag, "no-such.txt"]);
        assert!(!out.status.success(), "{flag}");
        assert!(
            stderr(&out).contains("no-such.txt is not among the session's pending changes"),
            "{flag}: {}",
            stderr(&out)
        );
    }
    let out = sessions(
        &world,
        &["sync", &id, "--theirs", "a.txt", "--ours", "a.txt"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("choose one"), "{}", stderr(&out));
    // Nothing was written.
    assert_eq!(world.read("a.txt").as_deref(), Some("base a\n"));
    assert_eq!(pending(&world, &id).0.len(), 4);
}

#[test]
fn diff_of_a_file_the_session_does_not_hold_is_an_error() {
    let world = World::new();
    let id = kept_session(&world);
    let out = sessions(&world, &["diff", &id, "no-such-file"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no-such-file is not among the changes") && err.contains("sessions show"),
        "{err}"
    );
    let out = sessions(&world, &["diff", &id, "a.txt"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("+agent a"), "{}", stdout(&out));
}

#[test]
fn a_killed_session_without_changes_is_not_listed() {
    let world = World::new();
    world.write("a.txt", "base a\n");
    let server = MockServer::start(Wire::Anthropic, Script::new(vec![])).expect("server");
    let mut c = world.cmd();
    c.args(["chat", "--no-tui", "--backend", "copy"])
        .args(provider_args(&server))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().expect("spawn");
    // Wait until the session is open (its owner file is written last).
    let sessions_dir = world.data_dir().join("sessions");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open = std::fs::read_dir(&sessions_dir)
            .ok()
            .and_then(|mut rd| rd.next())
            .and_then(|e| e.ok())
            .is_some_and(|e| e.path().join("owner.pid").exists());
        if open {
            break;
        }
        assert!(Instant::now() < deadline, "the session never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    assert!(listed(&world).is_empty(), "nothing unsynced to list");
    let out = sessions(&world, &["list"]);
    assert!(
        stdout(&out).contains("No sessions with unsynced work"),
        "{}",
        stdout(&out)
    );
    // `--all` still shows it, for the record.
    let out = sessions(&world, &["list", "--all", "--json"]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
}

#[test]
fn a_sessions_title_is_its_first_prompt_even_after_a_shell_command() {
    let world = World::new();
    let server = MockServer::start(Wire::Anthropic, Script::new(vec![Reply::text("hello")]))
        .expect("server");
    let mut c = world.cmd();
    c.args(["chat", "--no-tui", "--backend", "copy"])
        .args(provider_args(&server))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"!echo first-command\nsay hello to the team\nexit\n")
        .expect("type");
    let out = child.wait_with_output().expect("wait");
    assert_ok(&out);
    assert!(stdout(&out).contains("first-command"), "{}", stdout(&out));
    let out = sessions(&world, &["list", "--all", "--json"]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(v[0]["title"].as_str(), Some("say hello to the team"), "{v}");
}

#[test]
fn the_backend_note_is_one_short_line_and_doctor_has_the_reasons() {
    let world = World::new();
    let server = MockServer::start(
        Wire::Anthropic,
        Script::new(vec![Reply::text("hi"), Reply::text("hi")]),
    )
    .expect("server");
    let session_line = |out: &Output| -> String {
        let err = stderr(out);
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("Session ")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        lines[0].to_string()
    };
    // `auto` always passes over a backend (firecracker is not built in).
    let out = world.exec(&server, &["say hi"]);
    assert_ok(&out);
    let short = session_line(&out);
    assert!(!short.contains("passed over"), "{short}");
    assert!(short.chars().count() <= 120, "one short line: {short}");
    let out = world.exec(&server, &["-v", "say hi"]);
    assert_ok(&out);
    let long = session_line(&out);
    assert!(long.contains("passed over firecracker"), "{long}");
    // `sandbox doctor` gives every backend's reason.
    let out = world
        .cmd()
        .args(["sandbox", "doctor"])
        .output()
        .expect("run");
    assert_ok(&out);
    let doctor = stdout(&out);
    for b in [
        "firecracker",
        "qemu",
        "docker",
        "process",
        "copy",
        "direct",
        "auto →",
    ] {
        assert!(doctor.contains(b), "{b}: {doctor}");
    }
}

#[test]
fn merge_joins_both_sides_in_the_session_then_theirs_writes_it() {
    let world = World::new();
    world.write("notes.txt", "one\ntwo\nthree\nfour\nfive\n");
    world.write("same.txt", "a\nb\n");
    let script = Script::new(vec![
        Reply::tool_calls(vec![
            call(
                "edit_file",
                json!({"path": "notes.txt", "old_string": "one", "new_string": "ONE"}),
            ),
            call(
                "write_file",
                json!({"path": "same.txt", "content": "agent\nb\n"}),
            ),
        ]),
        Reply::text("edited"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    assert_ok(&world.exec(&server, &["--backend", "copy", "edit"]));
    let id = listed(&world).remove(0);
    world.write("notes.txt", "one\ntwo\nthree\nfour\nFIVE\n");
    world.write("same.txt", "user\nb\n");

    let out = sessions(&world, &["sync", &id, "--merge", "notes.txt", "same.txt"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains("notes.txt: your changes and the agent's merged cleanly"),
        "{text}"
    );
    assert!(
        text.contains("same.txt: 1 place(s) changed on both sides"),
        "{text}"
    );
    // Nothing reached the host yet; the session shows the merged file.
    assert_eq!(
        world.read("notes.txt").as_deref(),
        Some("one\ntwo\nthree\nfour\nFIVE\n")
    );
    assert_eq!(world.read("same.txt").as_deref(), Some("user\nb\n"));
    let out = sessions(&world, &["diff", &id, "notes.txt"]);
    assert!(
        stdout(&out).contains("+ONE") && stdout(&out).contains("+FIVE"),
        "{}",
        stdout(&out)
    );

    let out = sessions(
        &world,
        &["sync", &id, "--theirs", "notes.txt", "--ours", "same.txt"],
    );
    assert_ok(&out);
    assert_eq!(
        world.read("notes.txt").as_deref(),
        Some("ONE\ntwo\nthree\nfour\nFIVE\n")
    );
    assert_eq!(world.read("same.txt").as_deref(), Some("user\nb\n"));
    assert!(listed(&world).is_empty());
}
