//! `chat --no-tui` end to end: approvals, slash commands, @files, !cmd, memory, custom
//! commands, compaction, resume and /stats, checking what the model server received.

use std::io::Write;
use std::process::{Output, Stdio};

use safe_coder_test_support::{MockServer, Reply, Script, Wire};
use serde_json::json;

use crate::common::*;

/// Runs `chat --no-tui` with `input` typed on stdin.
pub(crate) fn chat(world: &World, server: &MockServer, args: &[&str], input: &str) -> Output {
    let mut c = world.cmd();
    c.arg("chat")
        .arg("--no-tui")
        .args(provider_args(server))
        .args(args);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("type");
    child.wait_with_output().expect("wait")
}

fn last_user_text(server: &MockServer) -> String {
    let req = server.model_requests().last().cloned().expect("a request");
    body_text(&req.body)
}

#[test]
fn default_mode_asks_and_respects_yes_no_always() {
    let world = World::new();
    let script = Script::new(vec![
        Reply::tool_calls(vec![call(
            "write_file",
            json!({"path": "a.txt", "content": "A"}),
        )]),
        Reply::tool_calls(vec![call(
            "write_file",
            json!({"path": "b.txt", "content": "B"}),
        )]),
        Reply::tool_calls(vec![call("bash", json!({"command": "echo ran > c.txt"}))]),
        Reply::tool_calls(vec![call("bash", json!({"command": "echo ran > d.txt"}))]),
        Reply::text("done"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    // a.txt: yes; b.txt: no; first bash: always; second bash runs without asking.
    let out = chat(
        &world,
        &server,
        &["--backend", "copy"],
        "make files\ny\nn\na\na\n",
    );
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("+A"), "the approval shows the diff: {text}");
    assert!(
        text.contains("$ echo ran > c.txt"),
        "the approval shows the command: {text}"
    );
    let results = tool_results(&server);
    assert!(results[0].contains("Wrote"), "{results:?}");
    assert!(results[1].contains("refused"), "{results:?}");
    assert!(!results[3].contains("refused"), "{results:?}");
    // Exactly three approvals were asked (the fourth call was allowed by "always").
    assert_eq!(text.matches("Allow? [y]es").count(), 3, "{text}");
    // The review at exit on closed input keeps the work for later; the host is untouched.
    assert!(!world.project.join("a.txt").exists());
}

#[test]
fn memory_files_reach_the_system_prompt_in_order() {
    let world = World::new();
    std::fs::create_dir_all(world.config_dir()).expect("dir");
    std::fs::write(world.config_dir().join("SAFECODER.md"), "USER-MEMORY-LINE").expect("w");
    world.write("SAFECODER.md", "PROJECT-MEMORY-LINE");
    world.write("AGENTS.md", "AGENTS-MEMORY-LINE");
    let server =
        MockServer::start(Wire::OpenAi, Script::new(vec![Reply::text("ok")])).expect("server");
    let out = chat(&world, &server, &["--backend", "direct"], "hello\n");
    assert_ok(&out);
    let system = system_prompt(&server.model_requests()[0].body);
    let u = system.find("USER-MEMORY-LINE").expect("user memory");
    let p = system.find("PROJECT-MEMORY-LINE").expect("project memory");
    assert!(system.contains("AGENTS-MEMORY-LINE"));
    assert!(u < p, "user memory first");
}

#[test]
fn at_file_and_shell_output_reach_the_model() {
    let world = World::new();
    world.write("src/lib.rs", "fn answer() -> u32 { 42 }\n");
    let server = MockServer::start(
        Wire::Anthropic,
        Script::new(vec![Reply::text("seen"), Reply::text("seen too")]),
    )
    .expect("server");
    let out = chat(
        &world,
        &server,
        &["--backend", "copy"],
        "!echo shell-said-hi > out.txt; cat out.txt\nexplain @src/lib.rs please\n",
    );
    assert_ok(&out);
    let reqs = server.model_requests();
    assert_eq!(reqs.len(), 1);
    let body = body_text(&reqs[0].body);
    assert!(
        body.contains("fn answer() -> u32 { 42 }"),
        "@file content: {body}"
    );
    assert!(body.contains("src/lib.rs"), "{body}");
    assert!(
        body.contains("shell-said-hi"),
        "!cmd output in the next request: {body}"
    );
    assert!(stdout(&out).contains("shell-said-hi"), "{}", stdout(&out));
}

#[test]
fn custom_command_expands_args() {
    let world = World::new();
    std::fs::create_dir_all(world.project.join(".safe-coder/commands/git")).expect("dir");
    world.write(".safe-coder/commands/git/commit.md", "---\ndescription: Write a commit message\n---\nWrite a commit message about {{args}} now.\n");
    let server =
        MockServer::start(Wire::Anthropic, Script::new(vec![Reply::text("msg")])).expect("server");
    let out = chat(
        &world,
        &server,
        &["--backend", "direct"],
        "/help\n/git:commit the parser fix\n",
    );
    assert_ok(&out);
    assert!(
        stdout(&out).contains("/git:commit"),
        "help lists it: {}",
        stdout(&out)
    );
    assert!(last_user_text(&server).contains("Write a commit message about the parser fix now."));
}

#[test]
fn unknown_slash_command_names_the_closest() {
    let world = World::new();
    let server = MockServer::start(Wire::Anthropic, Script::new(vec![])).expect("server");
    let out = chat(&world, &server, &["--backend", "direct"], "/stat\n");
    assert_ok(&out);
    assert!(stdout(&out).contains("/stats"), "{}", stdout(&out));
    assert!(server.model_requests().is_empty());
}

#[test]
fn compaction_fires_past_the_threshold_and_the_next_request_carries_the_summary() {
    let world = World::new();
    std::fs::create_dir_all(world.project.join(".safe-coder")).expect("dir");
    world.write(
        ".safe-coder/config.toml",
        "[context]\nwindow_tokens = 2000\ncompact_threshold = 0.5\n",
    );
    let big = "word ".repeat(1200);
    let script = Script::new(vec![
        Reply::text(big.clone()),
        Reply::text("SUMMARY-OF-EVERYTHING"),
        Reply::text("after compaction"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let out = chat(
        &world,
        &server,
        &["--backend", "direct"],
        "first question\nsecond question\n",
    );
    assert_ok(&out);
    let reqs = server.model_requests();
    assert_eq!(reqs.len(), 3, "turn, summary request, turn");
    let last = body_text(&reqs[2].body);
    assert!(last.contains("SUMMARY-OF-EVERYTHING"), "{last}");
    assert!(!last.contains(&big[..200]), "old turns are gone");
    assert!(last.contains("second question"));
}

#[test]
fn slash_compress_stats_and_restore_in_direct_mode() {
    let world = World::new();
    world.write("f.txt", "original\n");
    let script = Script::new(vec![
        Reply::tool_calls(vec![call(
            "write_file",
            json!({"path": "f.txt", "content": "agent version\n"}),
        )]),
        Reply::text("changed it"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let out = chat(
        &world,
        &server,
        &["--backend", "direct", "--approval-mode", "yolo"],
        "change f\n/stats\n/restore f.txt\n",
    );
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("Tool Calls: 1"), "{text}");
    assert!(text.contains("write_file"), "{text}");
    assert!(text.contains("100.0% ok"), "{text}");
    assert_eq!(
        world.read("f.txt").as_deref(),
        Some("original\n"),
        "/restore brought it back"
    );
}

#[test]
fn resume_restores_the_history_after_a_kill() {
    let world = World::new();
    let server = MockServer::start(
        Wire::Anthropic,
        Script::new(vec![
            Reply::text("first answer"),
            Reply::text("second answer"),
        ]),
    )
    .expect("server");
    // First process: one exchange, then it is killed (no clean exit).
    let mut c = world.cmd();
    c.arg("chat")
        .arg("--no-tui")
        .args(provider_args(&server))
        .args(["--backend", "copy"]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = c.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"remember the word PINEAPPLE\n")
        .expect("type");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while server.model_requests().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().expect("kill");
    let _ = child.wait();

    let out = chat(
        &world,
        &server,
        &["--backend", "copy", "--resume"],
        "what was the word?\n",
    );
    assert_ok(&out);
    let reqs = server.model_requests();
    assert_eq!(reqs.len(), 2);
    let body = body_text(&reqs[1].body);
    assert!(
        body.contains("PINEAPPLE") && body.contains("first answer"),
        "{body}"
    );
}

#[test]
fn resume_after_a_clean_exit_continues_the_conversation_on_a_fresh_copy() {
    let world = World::new();
    let server = MockServer::start(
        Wire::OpenAi,
        Script::new(vec![Reply::text("noted"), Reply::text("it was MANGO")]),
    )
    .expect("server");
    let out = chat(
        &world,
        &server,
        &["--backend", "copy"],
        "the word is MANGO\nexit\n",
    );
    assert_ok(&out);
    let out = chat(
        &world,
        &server,
        &["--backend", "copy", "--resume"],
        "what was the word?\n",
    );
    assert_ok(&out);
    assert!(
        stdout(&out).contains("Resumed with 2 message(s)"),
        "{}",
        stdout(&out)
    );
    let body = body_text(&server.model_requests()[1].body);
    assert!(body.contains("MANGO") && body.contains("noted"), "{body}");
}

#[test]
fn review_at_exit_picks_files() {
    let world = World::new();
    let script = Script::new(vec![
        Reply::tool_calls(vec![
            call(
                "write_file",
                json!({"path": "take.txt", "content": "take\n"}),
            ),
            call(
                "write_file",
                json!({"path": "leave.txt", "content": "leave\n"}),
            ),
        ]),
        Reply::text("wrote two"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    // Exit, then pick: the files are offered in the change set's order (sorted).
    let out = chat(
        &world,
        &server,
        &["--backend", "copy", "--approval-mode", "yolo"],
        "write\nexit\np\nn\ny\n",
    );
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("Changed 2 file(s):"), "{text}");
    assert_eq!(world.read("take.txt").as_deref(), Some("take\n"), "{text}");
    assert!(!world.project.join("leave.txt").exists(), "{text}");
    // Nothing unsynced remains: the rejected file was dropped.
    let out = world
        .cmd()
        .args(["sessions", "list", "--json"])
        .output()
        .expect("run");
    assert_eq!(stdout(&out).trim(), "[]");
}

#[test]
fn snapshot_then_rollback_undoes_the_agents_work() {
    let world = World::new();
    world.write("f.txt", "v1\n");
    let script = Script::new(vec![
        Reply::tool_calls(vec![call(
            "write_file",
            json!({"path": "f.txt", "content": "v2\n"}),
        )]),
        Reply::text("now v2"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let out = chat(
        &world,
        &server,
        &["--backend", "direct", "--approval-mode", "yolo"],
        "/snapshot before-change\nwrite v2\n/rollback\n",
    );
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("Snapshot: before-change"), "{text}");
    assert!(text.contains("Rolled back to"), "{text}");
    assert_eq!(world.read("f.txt").as_deref(), Some("v1\n"));
}

#[test]
fn a_mid_session_sync_is_not_offered_again_at_exit() {
    let world = World::new();
    let script = Script::new(vec![
        Reply::tool_calls(vec![call(
            "write_file",
            json!({"path": "first.txt", "content": "1\n"}),
        )]),
        Reply::text("first"),
        Reply::tool_calls(vec![call(
            "write_file",
            json!({"path": "second.txt", "content": "2\n"}),
        )]),
        Reply::text("second"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let out = chat(
        &world,
        &server,
        &["--backend", "copy", "--approval-mode", "yolo"],
        "one\n/sync\na\ntwo\nexit\na\n",
    );
    assert_ok(&out);
    let text = stdout(&out);
    assert_eq!(world.read("first.txt").as_deref(), Some("1\n"), "{text}");
    assert_eq!(world.read("second.txt").as_deref(), Some("2\n"), "{text}");
    let last_summary = text.rsplit("Changed ").next().unwrap_or("");
    assert!(last_summary.starts_with("1 file(s):"), "{text}");
    assert!(!last_summary.contains("first.txt"), "{text}");
}

/// Every session id in this world, synced or not.
fn all_session_ids(world: &World) -> Vec<String> {
    let out = world
        .cmd()
        .args(["sessions", "list", "--all", "--json"])
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

/// Issue 8: line mode and `exec` say the same thing about a session's start, its
/// changes and its sync, because both render the same events with the same words.
#[test]
fn line_mode_and_exec_report_a_session_in_the_same_words() {
    let script = || {
        Script::new(vec![
            Reply::tool_calls(vec![call(
                "write_file",
                json!({"path": "same.txt", "content": "s\n"}),
            )]),
            Reply::text("wrote it"),
        ])
    };
    // The lines that describe the session, with its id and project made neutral.
    let lines = |text: &str, world: &World| -> Vec<String> {
        let id = all_session_ids(world).pop().expect("a session");
        let project = world
            .project
            .canonicalize()
            .expect("project")
            .display()
            .to_string();
        // A question answered from a pipe leaves no newline: look inside lines too.
        text.lines()
            .filter_map(|l| match l.find("✓ Changes synced") {
                Some(at) => Some(&l[at..]),
                None if l.starts_with("Session ")
                    || l.starts_with("Changed ")
                    || l.starts_with("  - ") =>
                {
                    Some(l)
                }
                None => None,
            })
            .map(|l| l.replace(&id, "ID").replace(&project, "PROJECT"))
            .collect()
    };

    let world = World::new();
    let server = MockServer::start(Wire::Anthropic, script()).expect("server");
    let out = world.exec(
        &server,
        &["--backend", "copy", "--sync", "accept", "write same"],
    );
    assert_ok(&out);
    let exec_lines = lines(&stderr(&out), &world);

    let world = World::new();
    let server = MockServer::start(Wire::Anthropic, script()).expect("server");
    let out = chat(
        &world,
        &server,
        &["--backend", "copy", "--approval-mode", "yolo"],
        "write same\nexit\na\n",
    );
    assert_ok(&out);
    let chat_lines = lines(&stdout(&out), &world);

    assert_eq!(exec_lines.len(), 4, "{exec_lines:#?}");
    assert_eq!(exec_lines, chat_lines);
}
