//! Store benchmarks (issue 3 item 5, issue 5 items 7 and 8).
//!
//! `cargo bench -p safe-coder-store` prints, against a database file in a temp dir:
//! - open + list the newest 20 of 1,000 sessions holding 50 messages each (target ≤ 10 ms);
//! - load a 1,000-message session (target ≤ 50 ms);
//! - append_message, per message (target median ≤ 0.3 ms);
//! - and a few neighbours (prefix lookup, stats, latest_for_project).

use std::time::{Duration, Instant};

use safe_coder_protocol::{ContentBlock, Message, Role, Usage};
use safe_coder_store::{ListFilter, NewSession, Store};
use serde_json::json;

const SESSIONS: usize = 1_000;
const MESSAGES_PER_SESSION: usize = 50;

fn session(i: usize) -> NewSession {
    let id = format!(
        "{:08x}-7d2c-4e1a-9b3f-{:012x}",
        i * 2_654_435_761 % 0xffff_ffff,
        i
    );
    NewSession {
        id: id.clone(),
        project: format!("/home/user/src/project-{}", i % 37),
        backend: "process".to_string(),
        session_dir: format!("/home/user/.local/share/safe-coder/sessions/{id}"),
        base_commit: Some(format!("{:040x}", i)),
        provider: "anthropic".to_string(),
        model: "claude-sonnet-4".to_string(),
        approval_mode: "auto-edit".to_string(),
    }
}

/// A realistic turn cycle: a prompt, a tool call, its (longer) result, an answer.
fn message(n: usize) -> Message {
    match n % 4 {
        0 => Message::user_text(format!(
            "Please refactor the parser in src/parse.rs so that it reports line numbers ({n})"
        )),
        1 => Message {
            role: Role::Assistant,
            content: vec![
                ContentBlock::Text {
                    text: "I'll read the file first to see how errors are built.".to_string(),
                },
                ContentBlock::ToolUse {
                    id: format!("toolu_{n:08}"),
                    name: "read_file".to_string(),
                    input: json!({"path": "src/parse.rs", "offset": 1, "limit": 200}).into(),
                },
            ],
        },
        2 => Message {
            role: Role::User,
            content: vec![ContentBlock::ToolResult {
                tool_use_id: format!("toolu_{:08}", n - 1),
                content: (1..=40)
                    .map(|l| format!("{l:6}\tlet token = lexer.next_token()?; // line {l}\n"))
                    .collect(),
                is_error: false,
            }],
        },
        _ => Message::assistant_text(
            "Done: every ParseError now carries a line and a column, and the tests pass. "
                .repeat(3),
        ),
    }
}

struct Figures(Vec<Duration>);

impl Figures {
    fn measure(iterations: usize, mut f: impl FnMut()) -> Figures {
        let mut v = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let t = Instant::now();
            f();
            v.push(t.elapsed());
        }
        v.sort();
        Figures(v)
    }

    fn at(&self, q: f64) -> f64 {
        let i = ((self.0.len() - 1) as f64 * q).round() as usize;
        self.0[i].as_secs_f64() * 1000.0
    }

    fn print(&self, what: &str, target_ms: Option<f64>) {
        let median = self.at(0.5);
        let verdict = match target_ms {
            Some(t) if median <= t => format!("  (target ≤ {t} ms: ok)"),
            Some(t) => format!("  (target ≤ {t} ms: MISSED)"),
            None => String::new(),
        };
        let mean =
            self.0.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / self.0.len() as f64;
        println!(
            "{what:<52} median {median:7.3} ms  mean {mean:7.3}  p95 {:7.3}  p99 {:7.3}  min {:7.3}{verdict}",
            self.at(0.95),
            self.at(0.99),
            self.at(0.0),
        );
    }
}

fn main() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("no temp dir: {e}");
            return;
        }
    };
    let path = dir.path().join("safe-coder/sessions.db");
    let run = || -> Result<(), safe_coder_store::StoreError> {
        // --- fill: 1,000 sessions × 50 messages, each appended as in a real chat
        let store = Store::open(&path)?;
        let t = Instant::now();
        let mut n = 0usize;
        for i in 0..SESSIONS {
            let s = session(i);
            store.create_session(&s)?;
            for _ in 0..MESSAGES_PER_SESSION {
                store.append_message(&s.id, &message(n))?;
                n += 1;
            }
            store.record_tool_call(&s.id, "read_file", true, 3)?;
            store.record_usage(
                &s.id,
                "claude-sonnet-4",
                Usage {
                    input_tokens: 1200,
                    output_tokens: 300,
                },
            )?;
        }
        let fill = t.elapsed();
        println!(
            "fill: {SESSIONS} sessions × {MESSAGES_PER_SESSION} messages in {:.2} s ({:.1} µs per message)",
            fill.as_secs_f64(),
            fill.as_secs_f64() * 1e6 / n as f64
        );
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("database: {:.1} MB (+ WAL)", size as f64 / 1e6);
        drop(store);

        // --- chat start / `sessions list`: open a fresh connection and list the newest 20
        let mut listed = 0;
        Figures::measure(50, || {
            if let Ok(store) = Store::open(&path) {
                listed = store
                    .list_sessions(ListFilter::all().limit(20))
                    .map_or(0, |v| v.len());
            }
        })
        .print(
            "open + list newest 20 (alone: close checkpoints)",
            Some(10.0),
        );
        assert_eq!(listed, 20);

        // The same while a chat holds the database open, as in practice.
        let chat = Store::open(&path)?;
        Figures::measure(50, || {
            if let Ok(store) = Store::open(&path) {
                listed = store
                    .list_sessions(ListFilter::all().limit(20))
                    .map_or(0, |v| v.len());
            }
        })
        .print(
            "open + list newest 20 (another connection open)",
            Some(10.0),
        );
        Figures::measure(50, || {
            if let Ok(store) = Store::open(&path) {
                listed = store
                    .list_sessions(ListFilter::unsynced())
                    .map_or(0, |v| v.len());
            }
        })
        .print("open + list all 1,000 unsynced (`sessions list`)", None);
        Figures::measure(200, || {
            let _ = chat.list_sessions(ListFilter::all().limit(20));
        })
        .print("list newest 20 (open connection)", None);
        Figures::measure(200, || {
            let _ = chat.latest_for_project("/home/user/src/project-5");
        })
        .print("latest_for_project", None);
        let prefix = &session(500).id[..8];
        Figures::measure(200, || {
            let _ = chat.get_session(prefix);
        })
        .print("get_session by 8-char prefix", None);

        // --- append on the turn path
        let big = session(SESSIONS + 1);
        chat.create_session(&big)?;
        let mut k = 0usize;
        Figures::measure(1_000, || {
            let _ = chat.append_message(&big.id, &message(k));
            k += 1;
        })
        .print("append_message (synchronous=NORMAL, WAL)", Some(0.3));
        Figures::measure(500, || {
            let _ = chat.record_tool_call(&big.id, "bash", true, 42);
        })
        .print("record_tool_call", None);

        // --- resume: load the 1,000-message session
        let mut loaded = 0;
        Figures::measure(30, || {
            loaded = chat.load_messages(&big.id).map_or(0, |v| v.len());
        })
        .print("load_messages, 1,000 messages", Some(50.0));
        assert_eq!(loaded, 1_000);
        Figures::measure(30, || {
            if let Ok(store) = Store::open(&path) {
                let _ = store.get_session(&big.id);
                loaded = store.load_messages(&big.id).map_or(0, |v| v.len());
            }
        })
        .print(
            "open + get_session + load 1,000 messages (resume)",
            Some(50.0),
        );

        let mut compacted: Vec<Message> = (0..20).map(message).collect();
        compacted.truncate(20);
        Figures::measure(20, || {
            let _ = chat.stats(&big.id);
        })
        .print("stats", None);
        Figures::measure(5, || {
            let _ = chat.replace_messages(&session(7).id, &compacted);
        })
        .print("replace_messages with 20", None);
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1);
    }
}
