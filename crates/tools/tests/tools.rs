//! The four tools over a real `direct` sandbox in a temp dir, with real bash.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::symlink;
use std::time::Duration;

use safe_coder_protocol::ApprovalSubject;
use safe_coder_sandbox::{BackendKind, CancellationToken, Sandbox, SandboxSpec};
use safe_coder_tools::{ToolContext, ToolOutput, ToolRegistry};
use serde_json::{json, Value};

struct Fixture {
    dir: tempfile::TempDir,
    sandbox: std::sync::Arc<dyn Sandbox>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sandbox =
            safe_coder_sandbox::open(BackendKind::Direct, SandboxSpec::new(dir.path())).unwrap();
        Fixture { dir, sandbox }
    }

    async fn call(&self, name: &str, input: Value) -> ToolOutput {
        let ctx = ToolContext {
            sandbox: &self.sandbox,
            cancel: CancellationToken::new(),
        };
        ToolRegistry::builtin().run(name, &input, &ctx).await
    }

    fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(rel)).unwrap()
    }
}

fn assert_err(out: &ToolOutput, needle: &str) {
    assert!(out.is_error, "expected an error, got {:?}", out.content);
    assert!(
        out.content.contains(needle),
        "expected {needle:?} in {:?}",
        out.content
    );
}

/// What the approval dialog would show for a call (`None`: the tool previews nothing,
/// as read-only tools do).
async fn preview(name: &str, input: &Value, sandbox: &dyn Sandbox) -> Option<ApprovalSubject> {
    let call = ToolRegistry::builtin()
        .prepare(name, input)
        .unwrap_or_else(|e| panic!("{name} {input}: {e}"));
    call.preview(sandbox).await
}

#[tokio::test]
async fn read_file_happy_path_and_paging() {
    let f = Fixture::new();
    let body: String = (1..=3000).map(|i| format!("line {i}\n")).collect();
    f.write("big.txt", &body);
    let out = f.call("read_file", json!({"path": "big.txt"})).await;
    assert!(!out.is_error);
    assert!(out.content.starts_with("     1\tline 1\n     2\tline 2\n"));
    assert!(out.content.contains("  2000\tline 2000\n"));
    assert!(!out.content.contains("line 2001\n"));
    assert!(out.content.contains("offset=2001"));
    let out = f
        .call(
            "read_file",
            json!({"path": "big.txt", "offset": 2999, "limit": 5}),
        )
        .await;
    assert_eq!(out.content, "  2999\tline 2999\n  3000\tline 3000\n");
    // Numbers given as strings are accepted.
    let out = f
        .call(
            "read_file",
            json!({"path": "big.txt", "offset": "10", "limit": "1"}),
        )
        .await;
    assert!(
        out.content
            .starts_with("    10\tline 10\n\n[showing lines 10-10 of 3000"),
        "{}",
        out.content
    );
    let out = f
        .call("read_file", json!({"path": "big.txt", "offset": 5000}))
        .await;
    assert_err(&out, "past the end");
    // Absolute path under the root.
    let abs = format!("{}/big.txt", f.sandbox.agent_root());
    let out = f.call("read_file", json!({"path": abs, "limit": 1})).await;
    assert!(!out.is_error, "{}", out.content);
    // Long lines are cut with a note.
    f.write("long.txt", "x".repeat(5000));
    let out = f.call("read_file", json!({"path": "long.txt"})).await;
    assert!(out.content.contains("line truncated, 3000 more characters"));
    f.write("empty.txt", "");
    let out = f.call("read_file", json!({"path": "empty.txt"})).await;
    assert!(!out.is_error && out.content.contains("empty"));
}

#[tokio::test]
async fn read_file_refusals() {
    let f = Fixture::new();
    f.write("bin.dat", [0u8, 1, 2, 3, 255, 0]);
    assert_err(
        &f.call("read_file", json!({"path": "bin.dat"})).await,
        "binary",
    );
    f.write("latin.bin", vec![0xe9u8; 1000]);
    assert_err(
        &f.call("read_file", json!({"path": "latin.bin"})).await,
        "binary",
    );
    let huge = vec![b'a'; 6 * 1024 * 1024];
    f.write("huge.txt", &huge);
    let out = f.call("read_file", json!({"path": "huge.txt"})).await;
    assert_err(&out, "MiB");
    assert!(out.content.contains("sed -n"));
    std::fs::create_dir(f.dir.path().join("d")).unwrap();
    assert_err(&f.call("read_file", json!({"path": "d"})).await, "ls d");
    assert_err(
        &f.call("read_file", json!({"path": "nope.txt"})).await,
        "not found",
    );
    assert_err(
        &f.call("read_file", json!({})).await,
        "missing required argument 'path'",
    );
    assert_err(
        &f.call("read_file", json!({"path": 3})).await,
        "must be a string",
    );
    assert_err(&f.call("read_file", json!("x")).await, "JSON object");
    assert_err(&f.call("nope_tool", json!({})).await, "unknown tool");
}

#[tokio::test]
async fn path_escapes_are_refused() {
    let f = Fixture::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "top secret").unwrap();
    symlink(
        outside.path().join("secret.txt"),
        f.dir.path().join("link.txt"),
    )
    .unwrap();
    symlink(outside.path(), f.dir.path().join("outdir")).unwrap();

    for path in ["../secret.txt", "a/../../secret.txt"] {
        assert_err(&f.call("read_file", json!({"path": path})).await, "'..'");
        assert_err(
            &f.call("write_file", json!({"path": path, "content": "x"}))
                .await,
            "'..'",
        );
    }
    let abs = outside.path().join("secret.txt").display().to_string();
    assert_err(
        &f.call("read_file", json!({"path": abs})).await,
        "outside the project root",
    );
    assert_err(
        &f.call("write_file", json!({"path": abs, "content": "x"}))
            .await,
        "outside the project root",
    );
    // Through symlinks: read and write both refused, the outside file untouched.
    assert_err(
        &f.call("read_file", json!({"path": "link.txt"})).await,
        "outside the project root",
    );
    assert_err(
        &f.call(
            "write_file",
            json!({"path": "link.txt", "content": "pwned"}),
        )
        .await,
        "outside the project root",
    );
    assert_err(
        &f.call(
            "edit_file",
            json!({"path": "link.txt", "old_string": "top", "new_string": "x"}),
        )
        .await,
        "outside the project root",
    );
    assert_err(
        &f.call(
            "write_file",
            json!({"path": "outdir/new.txt", "content": "x"}),
        )
        .await,
        "outside the project root",
    );
    assert_eq!(
        std::fs::read_to_string(outside.path().join("secret.txt")).unwrap(),
        "top secret"
    );
    assert!(!outside.path().join("new.txt").exists());
}

#[tokio::test]
async fn write_file_creates_parents_and_reports_bytes() {
    let f = Fixture::new();
    let out = f
        .call(
            "write_file",
            json!({"path": "src/deep/a.rs", "content": "fn main() {}\n"}),
        )
        .await;
    assert!(!out.is_error, "{}", out.content);
    assert!(
        out.content.starts_with("Wrote 13 bytes to src/deep/a.rs"),
        "{}",
        out.content
    );
    assert_eq!(out.touched_paths, ["src/deep/a.rs"]);
    assert_eq!(f.read("src/deep/a.rs"), "fn main() {}\n");
    let out = f
        .call(
            "write_file",
            json!({"path": "src/deep/a.rs", "content": ""}),
        )
        .await;
    assert!(out.content.contains("Wrote 0 bytes") && out.content.contains("overwrote"));
    assert_err(
        &f.call("write_file", json!({"path": "x"})).await,
        "'content'",
    );
    assert_err(
        &f.call("write_file", json!({"path": "src", "content": "x"}))
            .await,
        "directory",
    );
}

#[tokio::test]
async fn edit_file_cases() {
    let f = Fixture::new();
    f.write("a.rs", "fn a() {\n    1\n}\nfn b() {\n    1\n}\n");
    let edit = |old: &str, new: &str, all: Option<bool>| {
        let mut v = json!({"path": "a.rs", "old_string": old, "new_string": new});
        if let Some(all) = all {
            v["replace_all"] = json!(all);
        }
        v
    };
    let out = f
        .call(
            "edit_file",
            edit("fn a() {\n    1", "fn a() {\n    2", None),
        )
        .await;
    assert!(!out.is_error, "{}", out.content);
    assert!(out.content.contains("1 replacement"));
    assert_eq!(out.touched_paths, ["a.rs"]);
    assert_eq!(f.read("a.rs"), "fn a() {\n    2\n}\nfn b() {\n    1\n}\n");

    let out = f.call("edit_file", edit("}\n", "};\n", None)).await;
    assert_err(&out, "matches 2 places");
    assert!(out.content.contains("replace_all"));
    let out = f.call("edit_file", edit("}\n", "};\n", Some(true))).await;
    assert!(out.content.contains("2 replacements"), "{}", out.content);
    assert_eq!(f.read("a.rs"), "fn a() {\n    2\n};\nfn b() {\n    1\n};\n");

    let out = f.call("edit_file", edit("fn c()", "fn d()", None)).await;
    assert_err(&out, "not found");
    assert!(out.content.contains("whitespace") && out.content.contains("read_file"));
    assert_err(
        &f.call("edit_file", edit("fn a", "fn a", None)).await,
        "identical",
    );
    assert_err(&f.call("edit_file", edit("", "x", None)).await, "empty");
    assert_err(
        &f.call(
            "edit_file",
            json!({"path": "missing.rs", "old_string": "a", "new_string": "b"}),
        )
        .await,
        "write_file",
    );
    assert_err(
        &f.call("edit_file", json!({"path": "a.rs", "old_string": "a"}))
            .await,
        "new_string",
    );
}

#[tokio::test]
async fn bash_happy_path_and_exit_codes() {
    let f = Fixture::new();
    f.write("hello.txt", "hi");
    let out = f
        .call(
            "bash",
            json!({"command": "cat hello.txt; echo; echo err >&2"}),
        )
        .await;
    assert!(!out.is_error, "{}", out.content);
    assert_eq!(out.content, "hi\nerr\nexit code: 0");
    let out = f.call("bash", json!({"command": "exit 7"})).await;
    assert!(out.is_error);
    assert_eq!(out.content, "(no output)\nexit code: 7");
    assert_err(&f.call("bash", json!({"command": "  "})).await, "empty");
    assert_err(&f.call("bash", json!({})).await, "'command'");
}

#[tokio::test]
async fn bash_output_is_capped_with_head_and_tail() {
    let f = Fixture::new();
    let out = f
        .call(
            "bash",
            json!({"command": "echo START; head -c 100000 /dev/zero | tr '\\0' x; echo; echo END"}),
        )
        .await;
    assert!(out.content.starts_with("START\n"));
    assert!(out.content.contains("bytes omitted"));
    assert!(
        out.content.ends_with("END\nexit code: 0"),
        "{}",
        &out.content[out.content.len() - 100..]
    );
    assert!(out.content.len() < 31_000);
}

fn sleepers(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .count()
}

async fn wait_no_sleepers(marker: &str) -> usize {
    for _ in 0..100 {
        if sleepers(marker) == 0 {
            return 0;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sleepers(marker)
}

#[tokio::test]
async fn bash_timeout_kills_grandchild() {
    let f = Fixture::new();
    let marker = format!("300.{}7", std::process::id());
    let out = f
        .call(
            "bash",
            json!({"command": format!("(sleep {marker} &) ; sleep {marker}"), "timeout_ms": 500}),
        )
        .await;
    assert_err(&out, "timed out after 500 ms");
    assert_eq!(wait_no_sleepers(&marker).await, 0);
}

#[tokio::test]
async fn bash_cancel_kills_the_command() {
    let f = Fixture::new();
    let marker = format!("300.{}8", std::process::id());
    let cancel = CancellationToken::new();
    let ctx = ToolContext {
        sandbox: &f.sandbox,
        cancel: cancel.clone(),
    };
    let input = json!({"command": format!("(sleep {marker} &) ; sleep {marker}")});
    let trigger = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    };
    let (out, ()) = tokio::join!(ToolRegistry::builtin().run("bash", &input, &ctx), trigger);
    assert_err(&out, "cancelled");
    assert_eq!(wait_no_sleepers(&marker).await, 0);
}

#[tokio::test]
async fn bash_does_not_see_api_keys() {
    std::env::set_var("ANTHROPIC_API_KEY", "sk-ant-tools-test");
    std::env::set_var("OPENAI_API_KEY", "sk-openai-tools-test");
    let f = Fixture::new();
    let out = f
        .call(
            "bash",
            json!({"command": "env; echo \"[${ANTHROPIC_API_KEY}][${OPENAI_API_KEY}]\""}),
        )
        .await;
    assert!(!out.is_error);
    assert!(!out.content.contains("sk-ant-tools-test"));
    assert!(!out.content.contains("sk-openai-tools-test"));
    assert!(out.content.contains("[][]"));
}

#[tokio::test]
async fn previews() {
    let f = Fixture::new();
    f.write("a.txt", "one\ntwo\n");
    let p = preview(
        "edit_file",
        &json!({"path": "a.txt", "old_string": "two", "new_string": "2"}),
        &f.sandbox,
    )
    .await;
    match p {
        Some(ApprovalSubject::FileChange { path, diff }) => {
            assert_eq!(path, "a.txt");
            assert!(
                diff.contains("--- a/a.txt") && diff.contains("+++ b/a.txt"),
                "{diff}"
            );
            assert!(diff.contains("-two\n+2\n"), "{diff}");
        }
        other => panic!("{other:?}"),
    }
    let p = preview(
        "write_file",
        &json!({"path": "new.txt", "content": "x\n"}),
        &f.sandbox,
    )
    .await;
    match p {
        Some(ApprovalSubject::FileChange { diff, .. }) => {
            assert!(
                diff.contains("--- /dev/null") && diff.contains("+x"),
                "{diff}"
            )
        }
        other => panic!("{other:?}"),
    }
    let p = preview("bash", &json!({"command": "ls -la"}), &f.sandbox).await;
    assert_eq!(
        p,
        Some(ApprovalSubject::Command {
            command: "ls -la".into()
        })
    );
    assert_eq!(
        preview("read_file", &json!({"path": "a.txt"}), &f.sandbox).await,
        None
    );
    // A call that cannot apply still asks, saying why.
    match preview(
        "edit_file",
        &json!({"path": "a.txt", "old_string": "zzz", "new_string": "y"}),
        &f.sandbox,
    )
    .await
    {
        Some(ApprovalSubject::FileChange { diff, .. }) => {
            assert!(diff.contains("not found"), "{diff}")
        }
        other => panic!("{other:?}"),
    }
    // Previews change nothing.
    assert_eq!(f.read("a.txt"), "one\ntwo\n");
    assert!(!f.dir.path().join("new.txt").exists());
}
