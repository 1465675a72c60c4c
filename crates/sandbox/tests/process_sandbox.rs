//! The `process` backend through the `Sandbox` trait (HostSandbox + ProcessConfiner):
//! the path the agent's bash tool takes.

use std::path::PathBuf;
use std::time::Duration;

use safe_coder_sandbox::process::{open_process_sandbox, ProcessLimits};
use safe_coder_sandbox::{BackendKind, CancellationToken, ExecRequest, Sandbox};

fn bwrap_present() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .any(|d| d.join("bwrap").is_file())
}

fn request(command: &str, timeout: Duration) -> ExecRequest {
    ExecRequest {
        command: command.to_string(),
        timeout,
        max_output_bytes: 64 * 1024,
    }
}

#[tokio::test]
async fn exec_runs_confined_and_timeouts_kill_the_sandbox() {
    if !bwrap_present() {
        eprintln!("skipped: bubblewrap (bwrap) is not installed");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let sb = open_process_sandbox(tmp.path().to_path_buf(), ProcessLimits::default())
        .expect("process sandbox");
    assert_eq!(sb.backend(), BackendKind::Process);

    let out = sb
        .exec(
            request(
                "echo made > f.txt; echo home=$HOME; ls /proc | grep -cE '^[0-9]+$'",
                Duration::from_secs(20),
            ),
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    assert_eq!(out.exit_code, Some(0), "{}", out.output);
    assert!(out.output.contains("home=/tmp/home"), "{}", out.output);
    assert_eq!(sb.read_file("f.txt").await.expect("read"), b"made\n");

    let out = sb
        .exec(
            request("sleep 8675301 & sleep 8675302", Duration::from_millis(500)),
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    assert!(out.timed_out);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let alive = std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains("867530"))
                    .unwrap_or(false)
            })
            .count();
        if alive == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{alive} processes survived the timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
