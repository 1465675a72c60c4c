//! Store tests: real database files in temp dirs, real child processes for the crash test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};

use safe_coder_protocol::{ContentBlock, Message, Role, Usage};
use safe_coder_store::{
    make_title, ListFilter, NewSession, SessionState, Store, StoreError, SCHEMA_VERSION,
    TITLE_MAX_CHARS,
};
use serde_json::json;

fn new_session(id: &str, project: &str) -> NewSession {
    NewSession {
        id: id.to_string(),
        project: project.to_string(),
        backend: "copy".to_string(),
        session_dir: format!("/data/safe-coder/sessions/{id}"),
        base_commit: Some("0123abcd".to_string()),
        provider: "anthropic".to_string(),
        model: "claude-sonnet".to_string(),
        approval_mode: "default".to_string(),
    }
}

/// A conversation with every kind of content block, in a realistic order.
fn conversation() -> Vec<Message> {
    vec![
        Message::user_text("Fix the failing test in src/lib.rs, please"),
        Message {
            role: Role::Assistant,
            content: vec![
                ContentBlock::Text {
                    text: "Let me look.".to_string(),
                },
                ContentBlock::ToolUse {
                    id: "toolu_1".to_string(),
                    name: "read_file".to_string(),
                    input: json!({"path": "src/lib.rs", "offset": 1, "limit": 50}).into(),
                },
                ContentBlock::ToolUse {
                    id: "toolu_2".to_string(),
                    name: "bash".to_string(),
                    input: json!({"command": "cargo test 2>&1 | tail -n 5"}).into(),
                },
            ],
        },
        Message {
            role: Role::User,
            content: vec![
                ContentBlock::ToolResult {
                    tool_use_id: "toolu_1".to_string(),
                    content: "     1\tfn main() {}\n".to_string(),
                    is_error: false,
                },
                ContentBlock::ToolResult {
                    tool_use_id: "toolu_2".to_string(),
                    content: "error: unicode ✓ \"quotes\" \u{0}nul".to_string(),
                    is_error: true,
                },
            ],
        },
        Message::assistant_text("Fixed: the test now passes."),
    ]
}

fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[test]
fn store_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Store>();
}

#[test]
fn schema_is_created_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/safe-coder/sessions.db");
    {
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(store.path(), Some(path.as_path()));
        store.create_session(&new_session("s1", "/p")).unwrap();
    }
    let conn = raw(&path);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(conn);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let s = store.get_session("s1").unwrap().unwrap();
    assert_eq!(s.project, "/p");
    assert_eq!(s.state, SessionState::Active);
}

#[test]
fn migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let objects = |path: &Path| -> Vec<String> {
        let conn = raw(path);
        let mut stmt = conn
            .prepare("SELECT type || ' ' || name FROM sqlite_master ORDER BY name")
            .unwrap();
        let names = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<Vec<String>, _>>()
            .unwrap();
        names
    };
    let store = Store::open(&path).unwrap();
    store.create_session(&new_session("s1", "/p")).unwrap();
    let before = objects(&path);
    assert!(before.iter().any(|n| n == "table messages"), "{before:?}");
    store.migrate().unwrap();
    store.migrate().unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    store.migrate().unwrap();
    assert_eq!(objects(&path), before);
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert!(store.get_session("s1").unwrap().is_some());
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    drop(Store::open(&path).unwrap());
    raw(&path)
        .pragma_update(None, "user_version", SCHEMA_VERSION + 5)
        .unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, known } if found == SCHEMA_VERSION + 5 && known == SCHEMA_VERSION),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade safe-coder"), "{err}");
}

#[test]
fn session_lifecycle() {
    let store = Store::open_in_memory().unwrap();
    let s = new_session("0a1b2c", "/home/u/proj");
    store.create_session(&s).unwrap();
    let err = store.create_session(&s).unwrap_err();
    assert!(
        matches!(err, StoreError::Duplicate(ref id) if id == "0a1b2c"),
        "{err}"
    );

    let rec = store.get_session("0a1b2c").unwrap().unwrap();
    assert_eq!(rec.state, SessionState::Active);
    assert_eq!(rec.owner_pid, Some(std::process::id()));
    assert!(rec.owner_alive());
    assert_eq!(rec.backend, "copy");
    assert_eq!(rec.base_commit.as_deref(), Some("0123abcd"));
    assert_eq!(rec.title, None);
    assert_eq!(rec.message_count, 0);
    assert!(rec.created_at > 1_600_000_000);
    assert!(rec.updated_at >= rec.created_at);

    store
        .set_title("0a1b2c", "  Add a\n --verbose flag  ")
        .unwrap();
    store.set_base_commit("0a1b2c", "feedbeef").unwrap();
    store.set_model("0a1b2c", "openai", "gpt-x").unwrap();
    store.set_approval_mode("0a1b2c", "yolo").unwrap();
    store.touch("0a1b2c").unwrap();
    let rec = store.get_session("0a1b2c").unwrap().unwrap();
    assert_eq!(rec.title.as_deref(), Some("Add a --verbose flag"));
    assert_eq!(rec.base_commit.as_deref(), Some("feedbeef"));
    assert_eq!(
        (rec.provider.as_str(), rec.model.as_str()),
        ("openai", "gpt-x")
    );
    assert_eq!(rec.approval_mode, "yolo");

    store.set_state("0a1b2c", SessionState::Ended).unwrap();
    let rec = store.get_session("0a1b2c").unwrap().unwrap();
    assert_eq!(rec.state, SessionState::Ended);
    assert_eq!(rec.owner_pid, None);
    assert!(!rec.owner_alive());
    assert_eq!(
        store.list_sessions(ListFilter::unsynced()).unwrap().len(),
        1
    );

    store.set_state("0a1b2c", SessionState::Active).unwrap();
    assert_eq!(
        store.get_session("0a1b2c").unwrap().unwrap().owner_pid,
        Some(std::process::id())
    );

    store.set_state("0a1b2c", SessionState::Synced).unwrap();
    assert!(store
        .list_sessions(ListFilter::unsynced())
        .unwrap()
        .is_empty());
    assert_eq!(store.list_sessions(ListFilter::all()).unwrap().len(), 1);
    store.set_state("0a1b2c", SessionState::Discarded).unwrap();
    assert_eq!(
        store.get_session("0a1b2c").unwrap().unwrap().state,
        SessionState::Discarded
    );

    store.delete_session("0a1b2c").unwrap();
    assert!(store.get_session("0a1b2c").unwrap().is_none());

    for err in [
        store.set_state("nope", SessionState::Ended).unwrap_err(),
        store.set_title("nope", "x").unwrap_err(),
        store.touch("nope").unwrap_err(),
        store.delete_session("nope").unwrap_err(),
        store
            .append_message("nope", &Message::user_text("x"))
            .unwrap_err(),
        store.load_messages("nope").unwrap_err(),
        store.replace_messages("nope", &[]).unwrap_err(),
        store.record_tool_call("nope", "bash", true, 1).unwrap_err(),
        store
            .record_usage("nope", "m", Usage::default())
            .unwrap_err(),
        store.stats("nope").unwrap_err(),
    ] {
        assert!(
            matches!(err, StoreError::NotFound(ref id) if id == "nope"),
            "{err}"
        );
        assert!(err.to_string().contains("sessions list"), "{err}");
    }
}

#[test]
fn session_state_names_roundtrip() {
    for state in SessionState::ALL {
        assert_eq!(state.as_str().parse::<SessionState>().unwrap(), state);
        assert_eq!(serde_json::to_value(state).unwrap(), json!(state.as_str()));
    }
    let err = "paused".parse::<SessionState>().unwrap_err();
    assert!(err.to_string().contains("\"paused\""), "{err}");
    assert!(SessionState::Ended.holds_unsynced_work());
    assert!(!SessionState::Synced.holds_unsynced_work());
}

#[test]
fn prefix_lookup_and_ambiguity() {
    let store = Store::open_in_memory().unwrap();
    for id in ["abc123", "abd456", "abc", "xyz789"] {
        store.create_session(&new_session(id, "/p")).unwrap();
    }
    // An exact id wins over the longer ids it prefixes.
    assert_eq!(store.get_session("abc").unwrap().unwrap().id, "abc");
    assert_eq!(store.get_session("abc1").unwrap().unwrap().id, "abc123");
    assert_eq!(store.get_session("abd").unwrap().unwrap().id, "abd456");
    assert_eq!(store.get_session("x").unwrap().unwrap().id, "xyz789");
    assert!(store.get_session("q").unwrap().is_none());
    assert!(store.get_session("").unwrap().is_none());
    assert!(store.get_session("  ").unwrap().is_none());
    // Not a LIKE pattern.
    assert!(store.get_session("a%").unwrap().is_none());
    assert!(store.get_session("a_c").unwrap().is_none());

    let err = store.get_session("ab").unwrap_err();
    match &err {
        StoreError::Ambiguous { prefix, candidates } => {
            assert_eq!(prefix, "ab");
            assert_eq!(candidates, &["abc", "abc123", "abd456"]);
        }
        other => panic!("expected Ambiguous, got {other}"),
    }
    let text = err.to_string();
    assert!(text.contains("abc123") && text.contains("abd456"), "{text}");

    for i in 0..15 {
        store
            .create_session(&new_session(&format!("dup{i:02}"), "/p"))
            .unwrap();
    }
    match store.get_session("dup").unwrap_err() {
        StoreError::Ambiguous { candidates, .. } => {
            assert_eq!(candidates.len(), 11);
            assert_eq!(candidates.last().unwrap(), "…");
        }
        other => panic!("expected Ambiguous, got {other}"),
    }
}

#[test]
fn messages_roundtrip_in_order_with_every_block_kind() {
    let store = Store::open_in_memory().unwrap();
    store.create_session(&new_session("s", "/p")).unwrap();
    let messages = conversation();
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(store.append_message("s", m).unwrap(), i as i64);
    }
    assert_eq!(store.load_messages("s").unwrap(), messages);
    let rec = store.get_session("s").unwrap().unwrap();
    assert_eq!(rec.message_count, messages.len() as i64);
    // The first user message became the title.
    assert_eq!(
        rec.title.as_deref(),
        Some("Fix the failing test in src/lib.rs, please")
    );

    // Messages of other sessions stay apart.
    store.create_session(&new_session("t", "/p")).unwrap();
    store
        .append_message("t", &Message::user_text("other"))
        .unwrap();
    assert_eq!(store.load_messages("s").unwrap(), messages);
    assert_eq!(store.load_messages("t").unwrap().len(), 1);
    assert!(store.load_messages("s").unwrap().len() == 4);
}

#[test]
fn title_comes_from_the_first_user_text_unless_set() {
    let store = Store::open_in_memory().unwrap();
    store.create_session(&new_session("s", "/p")).unwrap();
    // Tool results and assistant text never make a title.
    store.append_message("s", &conversation()[2]).unwrap();
    store
        .append_message("s", &Message::assistant_text("hello"))
        .unwrap();
    assert_eq!(store.get_session("s").unwrap().unwrap().title, None);
    store
        .append_message("s", &Message::user_text("first prompt"))
        .unwrap();
    store
        .append_message("s", &Message::user_text("second prompt"))
        .unwrap();
    assert_eq!(
        store.get_session("s").unwrap().unwrap().title.as_deref(),
        Some("first prompt")
    );

    store.create_session(&new_session("u", "/p")).unwrap();
    store.set_title("u", "typed by the user").unwrap();
    store
        .append_message("u", &Message::user_text("expanded @file text"))
        .unwrap();
    assert_eq!(
        store.get_session("u").unwrap().unwrap().title.as_deref(),
        Some("typed by the user")
    );
}

#[test]
fn titles_are_truncated_on_char_boundaries() {
    assert_eq!(make_title(" \n\t "), None);
    assert_eq!(make_title("a\n\nb  c").as_deref(), Some("a b c"));
    let long = "é".repeat(200);
    let t = make_title(&long).unwrap();
    assert_eq!(t.chars().count(), TITLE_MAX_CHARS);
    assert!(t.ends_with('…'));
    let exact = "x".repeat(TITLE_MAX_CHARS);
    assert_eq!(make_title(&exact).unwrap(), exact);
    let words = "word ".repeat(40);
    let t = make_title(&words).unwrap();
    assert!(t.chars().count() <= TITLE_MAX_CHARS);
    assert!(t.ends_with("word…") || t.ends_with("wor…") || t.ends_with('…'));
    assert!(!t.contains(" …"));
}

#[test]
fn replace_messages_swaps_the_conversation_atomically() {
    let store = Store::open_in_memory().unwrap();
    store.create_session(&new_session("s", "/p")).unwrap();
    for m in conversation() {
        store.append_message("s", &m).unwrap();
    }
    let compacted = vec![
        Message::user_text("Summary of the conversation so far: the test was fixed."),
        Message::assistant_text("Understood."),
    ];
    store.replace_messages("s", &compacted).unwrap();
    assert_eq!(store.load_messages("s").unwrap(), compacted);
    assert_eq!(store.get_session("s").unwrap().unwrap().message_count, 2);
    // Appending continues after the replacement.
    assert_eq!(
        store
            .append_message("s", &Message::user_text("next"))
            .unwrap(),
        2
    );
    // Lifetime counts are not lowered by compaction.
    let stats = store.stats("s").unwrap();
    assert_eq!(stats.messages.in_context, 3);
    assert_eq!(stats.messages.user, 2);
    assert_eq!(stats.messages.assistant, 2);
    assert_eq!(stats.messages.tool_results, 1);

    // /clear
    store.replace_messages("s", &[]).unwrap();
    assert!(store.load_messages("s").unwrap().is_empty());
    assert_eq!(store.get_session("s").unwrap().unwrap().message_count, 0);
}

#[test]
fn a_second_connection_sees_messages_after_an_unclean_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let writer = Store::open(&path).unwrap();
    let reader = Store::open(&path).unwrap();
    writer.create_session(&new_session("s", "/p")).unwrap();
    let messages = conversation();
    for m in &messages[..2] {
        writer.append_message("s", m).unwrap();
    }
    // Visible to another open connection at once, without closing anything.
    assert_eq!(reader.load_messages("s").unwrap(), messages[..2]);
    for m in &messages[2..] {
        writer.append_message("s", m).unwrap();
    }
    // Leak the writer: its connection is never closed, the WAL never checkpointed.
    std::mem::forget(writer);
    drop(reader);
    let again = Store::open(&path).unwrap();
    assert_eq!(again.load_messages("s").unwrap(), messages);
    assert_eq!(again.get_session("s").unwrap().unwrap().message_count, 4);
}

/// Runs only as the child of `sigkill_mid_session_loses_nothing`: writes, reports, waits
/// to be killed.
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var("SAFE_CODER_STORE_CRASH_DB") else {
        return;
    };
    let store = Store::open(Path::new(&path)).unwrap();
    store.create_session(&new_session("crash", "/p")).unwrap();
    for m in conversation() {
        store.append_message("crash", &m).unwrap();
    }
    store.record_tool_call("crash", "bash", true, 12).unwrap();
    store
        .record_usage(
            "crash",
            "m",
            Usage {
                input_tokens: 10,
                output_tokens: 2,
            },
        )
        .unwrap();
    println!("WRITTEN");
    std::thread::sleep(std::time::Duration::from_secs(120));
}

#[test]
fn sigkill_mid_session_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "crash_child_writer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SAFE_CODER_STORE_CRASH_DB", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut written = false;
    for line in BufReader::new(stdout).lines() {
        if line.unwrap().contains("WRITTEN") {
            written = true;
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(written, "the child writer did not finish writing: {status}");
    assert!(!status.success());

    let store = Store::open(&path).unwrap();
    let rec = store.get_session("crash").unwrap().unwrap();
    assert_eq!(rec.state, SessionState::Active);
    assert!(!rec.owner_alive(), "the killed owner still looks alive");
    assert_eq!(store.load_messages("crash").unwrap(), conversation());
    let stats = store.stats("crash").unwrap();
    assert_eq!(stats.tool_calls, 1);
    assert_eq!(stats.tokens.input_tokens, 10);
    assert_eq!(
        store.list_sessions(ListFilter::unsynced()).unwrap().len(),
        1
    );
}

#[test]
fn stats_count_everything() {
    let store = Store::open_in_memory().unwrap();
    store.create_session(&new_session("s", "/p")).unwrap();
    store.create_session(&new_session("other", "/p")).unwrap();
    for m in conversation() {
        store.append_message("s", &m).unwrap();
    }
    store
        .append_message("s", &Message::user_text("and now?"))
        .unwrap();
    store.record_tool_call("s", "bash", true, 100).unwrap();
    store.record_tool_call("s", "bash", false, 50).unwrap();
    store.record_tool_call("s", "bash", true, 30).unwrap();
    store.record_tool_call("s", "read_file", true, 2).unwrap();
    store.record_tool_call("other", "bash", true, 999).unwrap();
    let u = |i, o| Usage {
        input_tokens: i,
        output_tokens: o,
    };
    store.record_usage("s", "big-model", u(1000, 200)).unwrap();
    store.record_usage("s", "small-model", u(10, 5)).unwrap();
    store.record_usage("s", "big-model", u(1500, 300)).unwrap();
    store.record_usage("other", "big-model", u(7, 7)).unwrap();

    let stats = store.stats("s").unwrap();
    assert_eq!(stats.session_id, "s");
    assert_eq!(stats.messages.user, 2);
    assert_eq!(stats.messages.assistant, 2);
    assert_eq!(stats.messages.tool_results, 1);
    assert_eq!(stats.messages.in_context, 5);

    assert_eq!(stats.tool_calls, 4);
    assert_eq!(stats.tool_successes, 3);
    assert_eq!(stats.tools.len(), 2);
    let bash = &stats.tools[0];
    assert_eq!(bash.tool, "bash");
    assert_eq!((bash.calls, bash.successes), (3, 2));
    assert_eq!((bash.total_ms, bash.avg_ms), (180, 60));
    assert!((bash.success_rate() - 2.0 / 3.0).abs() < 1e-9);
    let read = &stats.tools[1];
    assert_eq!(
        (read.tool.as_str(), read.calls, read.total_ms),
        ("read_file", 1, 2)
    );

    assert_eq!(stats.models.len(), 2);
    assert_eq!(stats.models[0].model, "big-model");
    assert_eq!(stats.models[0].requests, 2);
    assert_eq!(stats.models[0].input_tokens, 2500);
    assert_eq!(stats.models[0].output_tokens, 500);
    assert_eq!(stats.models[1].model, "small-model");
    assert_eq!(stats.tokens, u(2510, 505));
    assert!(stats.started_at <= stats.last_activity);
    assert!(stats.duration_secs() >= 0);

    let empty = store.stats("other").unwrap();
    assert_eq!(empty.messages.in_context, 0);
    assert_eq!(empty.tool_calls, 1);

    // Deleting a session takes its statistics with it.
    store.delete_session("s").unwrap();
    let conn_check = store.stats("other").unwrap();
    assert_eq!(conn_check.tools[0].total_ms, 999);
}

#[test]
fn list_orders_by_activity_and_filters() {
    let store = Store::open_in_memory().unwrap();
    for (id, project) in [("a", "/one"), ("b", "/two"), ("c", "/one"), ("d", "/two")] {
        store.create_session(&new_session(id, project)).unwrap();
    }
    let ids = |f: ListFilter| -> Vec<String> {
        store
            .list_sessions(f)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect()
    };
    assert_eq!(ids(ListFilter::all()), ["d", "c", "b", "a"]);
    // Activity within the same second still orders exactly.
    store
        .append_message("a", &Message::user_text("hi"))
        .unwrap();
    assert_eq!(ids(ListFilter::all()), ["a", "d", "c", "b"]);
    store.touch("b").unwrap();
    assert_eq!(ids(ListFilter::all()), ["b", "a", "d", "c"]);
    assert_eq!(ids(ListFilter::all().limit(2)), ["b", "a"]);
    assert_eq!(ids(ListFilter::all().project("/one")), ["a", "c"]);
    assert_eq!(
        ids(ListFilter::all().project("/nowhere")),
        Vec::<String>::new()
    );

    store.set_state("a", SessionState::Synced).unwrap();
    store.set_state("d", SessionState::Discarded).unwrap();
    store.set_state("c", SessionState::Ended).unwrap();
    // set_state is activity too.
    assert_eq!(ids(ListFilter::unsynced()), ["c", "b"]);
    assert_eq!(ids(ListFilter::unsynced().project("/two")), ["b"]);
    assert_eq!(
        ids(ListFilter::unsynced().project("/two").limit(0)),
        Vec::<String>::new()
    );

    assert_eq!(store.latest_for_project("/one").unwrap().unwrap().id, "c");
    assert_eq!(store.latest_for_project("/two").unwrap().unwrap().id, "d");
    assert!(store.latest_for_project("/three").unwrap().is_none());

    let listed = store.list_sessions(ListFilter::all()).unwrap();
    let json = serde_json::to_value(&listed).unwrap();
    assert_eq!(ids(ListFilter::all()), ["c", "d", "a", "b"]);
    assert_eq!(json[0]["id"], "c");
    assert_eq!(json[0]["state"], "ended");
    assert_eq!(json[1]["state"], "discarded");
    assert!(json[0]["created_at"].is_i64());
    let a = listed.iter().find(|s| s.id == "a").unwrap();
    assert_eq!(a.message_count, 1);
    assert_eq!(a.title.as_deref(), Some("hi"));
}

#[test]
fn two_stores_open_the_same_file_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let path = Arc::new(dir.path().join("fresh/sessions.db"));
    let threads = 4;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let path = Arc::clone(&path);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                // All create the file and the schema at the same moment.
                let store = Store::open(&path).unwrap();
                let id = format!("thread-{t}");
                store.create_session(&new_session(&id, "/p")).unwrap();
                for i in 0..50 {
                    store
                        .append_message(&id, &Message::user_text(format!("{t}:{i}")))
                        .unwrap();
                    if i % 10 == 0 {
                        store.list_sessions(ListFilter::all().limit(20)).unwrap();
                    }
                }
                store
            })
        })
        .collect();
    let stores: Vec<Store> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for store in &stores {
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(
            store.list_sessions(ListFilter::all()).unwrap().len(),
            threads
        );
        for t in 0..threads {
            let messages = store.load_messages(&format!("thread-{t}")).unwrap();
            let texts: Vec<String> = messages.iter().map(Message::text).collect();
            let expected: Vec<String> = (0..50).map(|i| format!("{t}:{i}")).collect();
            assert_eq!(texts, expected);
        }
    }
}

#[test]
fn a_corrupt_message_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let store = Store::open(&path).unwrap();
    store.create_session(&new_session("s", "/p")).unwrap();
    store
        .append_message("s", &Message::user_text("ok"))
        .unwrap();
    store
        .append_message("s", &Message::assistant_text("fine"))
        .unwrap();
    raw(&path)
        .execute(
            "UPDATE messages SET body = '{\"role\":\"robot\"}' WHERE seq = 1",
            [],
        )
        .unwrap();
    let err = store.load_messages("s").unwrap_err();
    assert!(
        matches!(err, StoreError::CorruptMessage { ref session_id, seq: 1, .. } if session_id == "s"),
        "{err}"
    );
    assert!(err.to_string().contains("message 1 of session s"), "{err}");
}

#[test]
fn a_file_that_is_not_a_database_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    std::fs::write(
        &path,
        "this is not SQLite, just some text that is long enough ".repeat(50),
    )
    .unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("could not open the session database"),
        "{text}"
    );
    assert!(text.contains(&path.display().to_string()), "{text}");
}
