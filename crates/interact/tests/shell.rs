#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use safe_coder_interact::{format_shell_for_model, parse_shell};
use safe_coder_sandbox::{CancellationToken, ExecRequest, Sandbox};
use support::{have_bash, project, write};

#[test]
fn parsing() {
    assert_eq!(parse_shell("!ls -la"), Some("ls -la"));
    assert_eq!(parse_shell("  ! cargo test  "), Some("cargo test"));
    assert_eq!(parse_shell("!"), Some(""));
    assert_eq!(parse_shell("run ls"), None);
    assert_eq!(parse_shell("/help"), None);
}

#[tokio::test]
async fn real_command_output_for_the_model() {
    if !have_bash() {
        eprintln!("bash is not installed; skipping");
        return;
    }
    let (dir, sb) = project();
    write(dir.path(), "a.txt", "hello\n");
    let run = |command: &str| ExecRequest {
        command: command.to_string(),
        timeout: Duration::from_secs(30),
        max_output_bytes: 64 * 1024,
    };
    let cmd = parse_shell("!cat a.txt").unwrap();
    let out = sb.exec(run(cmd), CancellationToken::new()).await.unwrap();
    assert_eq!(
        format_shell_for_model(cmd, &out),
        "I ran this command in the sandbox myself:\n$ cat a.txt\nhello\n[exit code 0]"
    );
    let cmd = "echo bad >&2; exit 2";
    let out = sb.exec(run(cmd), CancellationToken::new()).await.unwrap();
    assert!(
        format_shell_for_model(cmd, &out).ends_with("$ echo bad >&2; exit 2\nbad\n[exit code 2]")
    );
    let cmd = "true";
    let out = sb.exec(run(cmd), CancellationToken::new()).await.unwrap();
    assert!(format_shell_for_model(cmd, &out).ends_with("(no output)\n[exit code 0]"));
    let cmd = "head -c 100000 /dev/zero | tr '\\0' x";
    let mut req = run(cmd);
    req.max_output_bytes = 1000;
    let out = sb.exec(req, CancellationToken::new()).await.unwrap();
    assert!(
        format_shell_for_model(cmd, &out).contains("[output truncated: 1000 B of 97.7 KiB shown]")
    );
}
