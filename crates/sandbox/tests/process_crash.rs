//! A SIGKILL of Safe Coder (no destructor runs) takes its commands' processes with it,
//! daemons included, with every mechanism that has a PID namespace. Alone in its test
//! binary: a sandbox created meanwhile in the same process would reap the dead owner's
//! cgroup (the crash recovery, tested in `cgroup.rs`) and hide a failure here.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{marker_processes, wait_until};
use safe_coder_sandbox::{
    BackendKind, CancellationToken, ExecRequest, Mechanism, Sandbox, SandboxSpec,
};

fn open(dir: &Path, m: Mechanism) -> Arc<dyn Sandbox> {
    let mut spec = SandboxSpec::new(dir);
    spec.mechanism = Some(m);
    safe_coder_sandbox::open(BackendKind::Process, spec).expect("process sandbox")
}

/// A stand-in for Safe Coder that a test SIGKILLs: it runs a command that starts a
/// daemon, and blocks. Only acts when `SC_CRASH_VICTIM` names the marker.
#[tokio::test]
#[ignore = "run by a_sigkill_of_safe_coder_kills_the_commands, not on its own"]
async fn crash_victim() {
    let (Ok(marker), Ok(m)) = (
        std::env::var("SC_CRASH_VICTIM"),
        std::env::var("SC_CRASH_MECHANISM"),
    ) else {
        return;
    };
    let m = if m == "bubblewrap" {
        Mechanism::Bubblewrap
    } else {
        Mechanism::InProcess
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let sb = open(dir.path(), m);
    let script = format!("setsid sleep {marker}1 > /dev/null 2>&1 & sleep {marker}2");
    let request = ExecRequest {
        command: script,
        timeout: Duration::from_secs(600),
        max_output_bytes: 1024,
    };
    let _ = sb.exec(request, CancellationToken::new()).await;
}

/// When Safe Coder dies by SIGKILL (no destructor runs), its commands' processes die
/// too, daemons included.
#[test]
fn a_sigkill_of_safe_coder_kills_the_commands() {
    for m in common::each(Default::default())
        .iter()
        .map(|c| c.mechanism())
    {
        let marker = format!("{}{}", 7_300_000 + std::process::id() % 100_000, m as u8);
        let mut victim = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", "crash_victim", "--ignored", "--nocapture"])
            .env("SC_CRASH_VICTIM", &marker)
            .env("SC_CRASH_MECHANISM", m.as_str())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the victim");
        // Both sleeps running (the daemon and the foreground one): bwrap's own processes
        // carry the marker in their arguments too, and a kill while the sandbox is still
        // being set up tests bubblewrap's start, not the commands' fate.
        let started = wait_until(Duration::from_secs(60), || sleeps_running(&marker) == 2);
        // SAFETY: kill(2) of the child this test started.
        unsafe {
            libc::kill(victim.id() as i32, libc::SIGKILL);
        }
        victim.wait().expect("wait");
        assert!(
            started,
            "{}: the victim's command never started",
            m.as_str()
        );
        assert!(
            wait_until(Duration::from_secs(10), || marker_processes(&marker) == 0),
            "{}: {} processes outlived a SIGKILL of their owner",
            m.as_str(),
            marker_processes(&marker)
        );
    }
}

/// How many `sleep <marker>N` processes run.
fn sleeps_running(marker: &str) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.first() == Some(&&b"sleep"[..])
                && args
                    .get(1)
                    .is_some_and(|a| String::from_utf8_lossy(a).starts_with(marker))
            {
                n += 1;
            }
        }
    }
    n
}
