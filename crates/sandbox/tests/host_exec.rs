//! `exec` of the host backends (`direct` here) with real bash processes.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use safe_coder_sandbox::{BackendKind, CancellationToken, ExecRequest, Sandbox, SandboxSpec};

fn sandbox() -> (tempfile::TempDir, Arc<dyn Sandbox>) {
    let dir = tempfile::tempdir().unwrap();
    let sb = safe_coder_sandbox::open(BackendKind::Direct, SandboxSpec::new(dir.path())).unwrap();
    (dir, sb)
}

fn req(command: &str, timeout_ms: u64) -> ExecRequest {
    ExecRequest {
        command: command.to_string(),
        timeout: Duration::from_millis(timeout_ms),
        max_output_bytes: 64 * 1024,
    }
}

/// A `sleep` argument unique to this test process and call site, to find it in /proc.
fn marker(n: u32) -> String {
    format!("3000.{}{n}", std::process::id())
}

fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) {
                found.push(format!(
                    "{}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    found
}

/// Waits (a bounded while, for the kernel to finish the kills) until no process carries
/// `marker`; returns what is left.
async fn wait_gone(marker: &str) -> Vec<String> {
    for _ in 0..100 {
        let left = processes_with(marker);
        if left.is_empty() {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    processes_with(marker)
}

#[tokio::test]
async fn runs_in_workdir_with_exit_code_and_merged_output() {
    let (dir, sb) = sandbox();
    std::fs::write(dir.path().join("f.txt"), "x").unwrap();
    let out = sb
        .exec(
            req("echo one; echo two >&2; echo three; ls; exit 3", 10_000),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(3));
    assert_eq!(out.output, "one\ntwo\nthree\nf.txt\n");
    assert_eq!(out.total_output_bytes, out.output.len() as u64);
    assert!(!out.timed_out && !out.cancelled);
}

#[tokio::test]
async fn stdin_is_closed() {
    let (_dir, sb) = sandbox();
    let out = sb
        .exec(req("cat; echo done", 10_000), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out.output, "done\n");
    assert_eq!(out.exit_code, Some(0));
}

#[tokio::test]
async fn output_is_capped_but_counted() {
    let (_dir, sb) = sandbox();
    let mut r = req("head -c 200000 /dev/zero | tr '\\0' a; echo", 10_000);
    r.max_output_bytes = 1000;
    let out = sb.exec(r, CancellationToken::new()).await.unwrap();
    assert_eq!(out.output.len(), 1000);
    assert_eq!(out.total_output_bytes, 200_001);
    assert_eq!(out.exit_code, Some(0));
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let (_dir, sb) = sandbox();
    let m1 = marker(1);
    let m2 = marker(2);
    let out = sb
        .exec(
            req(&format!("echo started; (sleep {m1} &) ; sleep {m2}"), 500),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert!(out.timed_out);
    assert_eq!(out.exit_code, None);
    assert_eq!(out.output, "started\n");
    assert_eq!(wait_gone(&m1).await, Vec::<String>::new());
    assert_eq!(wait_gone(&m2).await, Vec::<String>::new());
}

#[tokio::test]
async fn cancel_kills_the_whole_process_group() {
    let (_dir, sb) = sandbox();
    let m = marker(3);
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let out = sb
        .exec(req(&format!("(sleep {m} &); sleep {m}"), 60_000), cancel)
        .await
        .unwrap();
    assert!(out.cancelled);
    assert!(!out.timed_out);
    assert_eq!(wait_gone(&m).await, Vec::<String>::new());
}

#[tokio::test]
async fn background_process_holding_the_output_does_not_block() {
    let (_dir, sb) = sandbox();
    let m = marker(4);
    let out = sb
        .exec(
            req(&format!("sleep {m} & echo hi"), 60_000),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert!(out.output.starts_with("hi\n"), "{}", out.output);
    assert_eq!(wait_gone(&m).await, Vec::<String>::new());
    // With its output redirected, a background process is left alone.
    let m = marker(5);
    let out = sb
        .exec(
            req(&format!("sleep {m} > /dev/null 2>&1 & echo hi"), 60_000),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(out.output, "hi\n");
    let left = processes_with(&m);
    assert_eq!(left.len(), 1);
    // The sandbox no longer tracks it; end it by its id.
    let pid = left[0].split(':').next().unwrap();
    std::process::Command::new("kill")
        .arg("-9")
        .arg(pid)
        .status()
        .ok();
}

/// The environment is an allow-list: secrets that no block-list names do not reach a
/// command, a name the user passes through does.
#[tokio::test]
async fn environment_is_an_allow_list() {
    let secrets = [
        ("MYSQL_PWD", "mysql-pwd-secret-1"),
        ("DB_PASS", "db-pass-secret-2"),
        ("STRIPE_SK", "sk_live_secret_3"),
        ("SENTRY_DSN", "https://key4@sentry.example/1"),
        ("SLACK_WEBHOOK_URL", "https://hooks.slack.example/secret5"),
        ("NPM_CONFIG__AUTH", "npm-auth-secret-6"),
        ("HTTPS_PROXY", "http://user:proxy-pass-7@proxy.example:3128"),
        ("ANTHROPIC_API_KEY", "sk-ant-test-secret-8"),
    ];
    for (k, v) in secrets {
        std::env::set_var(k, v);
    }
    std::env::set_var("HOST_EXEC_PASSED_VAR", "passed-through");
    std::env::set_var("HOST_EXEC_OTHER_VAR", "not-listed");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = SandboxSpec::new(dir.path());
    spec.env_passthrough = vec!["HOST_EXEC_PASSED_VAR".into()];
    let sb = safe_coder_sandbox::open(BackendKind::Copy, spec).unwrap();
    let out = sb
        .exec(req("env", 10_000), CancellationToken::new())
        .await
        .unwrap();
    for (k, v) in secrets {
        assert!(!out.output.contains(v), "{k} leaked: {}", out.output);
        assert!(!out.output.contains(&format!("{k}=")), "{}", out.output);
    }
    assert!(!out.output.contains("not-listed"), "{}", out.output);
    assert!(out.output.contains("HOST_EXEC_PASSED_VAR=passed-through\n"));
    assert!(out.output.contains("PATH="), "{}", out.output);
    assert!(out.output.contains("SAFE_CODER=1\n"));
    assert!(out.output.contains("GIT_PAGER=cat\n"));
}

#[tokio::test]
async fn stopped_sandbox_runs_nothing() {
    let (_dir, sb) = sandbox();
    sb.stop().await.unwrap();
    assert!(sb
        .exec(req("true", 1000), CancellationToken::new())
        .await
        .is_err());
}

#[tokio::test]
async fn huge_timeout_does_not_overflow() {
    let (_dir, sb) = sandbox();
    let mut r = req("echo x", 0);
    r.timeout = Duration::MAX;
    let out = sb.exec(r, CancellationToken::new()).await.unwrap();
    assert_eq!((out.output.as_str(), out.exit_code), ("x\n", Some(0)));
}

#[tokio::test]
async fn status_reports_memory_of_running_commands() {
    let (_dir, sb) = sandbox();
    let cancel = CancellationToken::new();
    let runner = {
        let sb = sb.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { sb.exec(req("sleep 60", 60_000), cancel).await })
    };
    let mut seen = None;
    for _ in 0..200 {
        let used = sb.status().await.memory_used_mb;
        if used.unwrap_or(0) > 0 {
            seen = used;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    let out = runner.await.unwrap().unwrap();
    assert!(out.cancelled);
    assert!(seen.is_some(), "no memory use seen while the command ran");
    assert_eq!(sb.status().await.memory_used_mb, Some(0));
}
