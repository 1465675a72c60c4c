//! A real third-party agent CLI under `safe-coder run`: OpenAI's Codex CLI (installed
//! from npm by `scripts/ci/run-agents.sh`, which sets `SAFE_CODER_CODEX` to its
//! command) talks to the in-repo mock model server over the Responses API, through the
//! network allow-list (`--allow-net 127.0.0.1:PORT`); the scripted model makes it add,
//! edit and delete files with its own shell tool, inside the sandbox. Then the history,
//! the review and the sync are checked on the host, as for Safe Coder's own agent.
//!
//! Without `SAFE_CODER_CODEX` the test says why and skips (`./scripts/test.sh` on a
//! machine without the CLI); with it, nothing may be missing.

use safe_coder_test_support::{MockServer, Reply, Script, ToolCall, Wire};
use serde_json::{json, Value};

use crate::common::*;

fn codex() -> Option<String> {
    match std::env::var("SAFE_CODER_CODEX") {
        Ok(path) if !path.is_empty() => {
            assert!(
                std::path::Path::new(&path).exists(),
                "SAFE_CODER_CODEX={path} does not exist; run scripts/ci/run-agents.sh"
            );
            Some(path)
        }
        _ => {
            eprintln!(
                "skipped: SAFE_CODER_CODEX is not set (scripts/ci/run-agents.sh installs the Codex CLI and sets it)"
            );
            None
        }
    }
}

/// The commit messages of a kept session's history, newest first.
fn history(world: &World, id: &str) -> Vec<String> {
    let dir = world.data_dir().join("sessions").join(id);
    let git_dir = ["history.git", "work/.git", "shadow.git"]
        .iter()
        .map(|d| dir.join(d))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| panic!("no history in {}", dir.display()));
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(&git_dir)
        .args(["log", "--format=%s"])
        .output()
        .expect("git");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn codex_cli_runs_inside_and_its_changes_are_reviewed_and_synced() {
    let Some(codex) = codex() else {
        return;
    };
    if !bwrap_available("codex_cli_runs_inside_and_its_changes_are_reviewed_and_synced") {
        return;
    }
    let world = World::new();
    world.write("edit.txt", "one\ntwo\n");
    world.write("del.txt", "bye\n");
    let command = "mkdir -p new && echo made > new/file.txt && sed -i s/two/TWO/ edit.txt \
                   && rm del.txt && echo changed-by-codex";
    let server = MockServer::start(
        Wire::Responses,
        Script {
            delta_chars: 7,
            api_key: Some("sk-codex-mock".into()),
            ..Script::new(vec![
                Reply::text_and_tool_calls(
                    "Changing the files.",
                    vec![ToolCall::new("exec_command", json!({"cmd": command}))],
                ),
                Reply::text("All done."),
            ])
        },
    )
    .expect("mock server");
    let port = server.addr().port();
    // Codex's own config: a custom provider on the mock server, Responses API.
    let codex_home = world.home.join(".codex");
    std::fs::create_dir_all(&codex_home).expect("codex home");
    std::fs::write(
        codex_home.join("config.toml"),
        format!(
            "model = \"mock-model\"\nmodel_provider = \"mock\"\n\
             [model_providers.mock]\nname = \"Mock\"\nbase_url = \"{}\"\n\
             env_key = \"MOCK_API_KEY\"\nwire_api = \"responses\"\n\
             request_max_retries = 0\nstream_max_retries = 0\n",
            server.base_url()
        ),
    )
    .expect("config");
    // The CLI's install directory, shown read-only (its path does not depend on HOME).
    let install = std::path::Path::new(&codex)
        .canonicalize()
        .expect("codex path")
        .ancestors()
        .find(|p| p.ends_with("node_modules"))
        .and_then(|p| p.parent())
        .expect("an npm install dir")
        .to_path_buf();
    let out = world
        .cmd()
        .env("MOCK_API_KEY", "sk-codex-mock")
        .args(["run", "--json", "--sync", "keep", "--allow-net"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--no-preset", "--env", "MOCK_API_KEY", "--mount"])
        .arg(&codex_home)
        .arg("--mount")
        .arg(format!("{}:ro", install.display()))
        .args([
            "--",
            &codex,
            "exec",
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox",
            "change the files",
        ])
        .output()
        .expect("run");
    let err = stderr(&out);
    assert_ok(&out);
    assert!(err.contains("All done."), "codex printed its answer: {err}");

    // Codex ran the command in the sandbox and sent its output back to the model.
    let requests = server.model_requests();
    assert_eq!(requests.len(), 2, "{err}");
    let outputs: Vec<String> = requests[1].body["input"]
        .as_array()
        .expect("input items")
        .iter()
        .filter(|i| i["type"] == "function_call_output")
        .map(|i| i["output"].to_string())
        .collect();
    assert!(
        outputs.iter().any(|o| o.contains("changed-by-codex")),
        "{outputs:?}"
    );
    assert_eq!(
        requests[0].headers.get("authorization").map(String::as_str),
        Some("Bearer sk-codex-mock")
    );

    // Nothing reached the project; the history and the review have it all.
    assert_eq!(world.read("edit.txt").as_deref(), Some("one\ntwo\n"));
    assert!(world.project.join("del.txt").exists());
    let events: Vec<Value> = stdout(&out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let summary = events
        .iter()
        .find(|e| e["type"] == "change_summary")
        .expect("change summary");
    let mut files: Vec<(String, String)> = summary["changes"]["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap_or("").to_string(),
                f["kind"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec![
            ("del.txt".to_string(), "deleted".to_string()),
            ("edit.txt".to_string(), "modified".to_string()),
            ("new/file.txt".to_string(), "added".to_string()),
        ]
    );
    let ids: Vec<String> = {
        let o = world
            .cmd()
            .args(["sessions", "list", "--json"])
            .output()
            .expect("list");
        assert_ok(&o);
        let v: Value = serde_json::from_str(&stdout(&o)).expect("json");
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_string())
            .collect()
    };
    assert_eq!(ids.len(), 1);
    let log = history(&world, &ids[0]);
    assert!(
        log.iter().any(|m| m.starts_with("Agent executed: run ")),
        "{log:?}"
    );
    let sync = world
        .cmd()
        .args(["sessions", "sync", &ids[0], "--accept-all"])
        .output()
        .expect("sync");
    assert_ok(&sync);
    assert_eq!(world.read("new/file.txt").as_deref(), Some("made\n"));
    assert_eq!(world.read("edit.txt").as_deref(), Some("one\nTWO\n"));
    assert!(!world.project.join("del.txt").exists());
}
