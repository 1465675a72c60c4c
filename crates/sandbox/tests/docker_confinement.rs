//! What a command in a `docker` sandbox cannot do, for every engine and runtime here:
//! see the user's home or host processes, write outside `/workspace` and `/tmp`, reach
//! the network, gain privileges; and the limits: a memory hog is killed at the memory
//! limit, a fork bomb stops at the process limit, and the container survives both.
#![allow(clippy::unwrap_used)]

mod docker_support;

use std::sync::Arc;
use std::time::Duration;

use docker_support::{targets, Target};
use safe_coder_sandbox::{
    BackendKind, CancellationToken, ExecOutput, ExecRequest, Sandbox, SandboxSpec,
};

fn open(target: &Target, dir: &std::path::Path, memory_mb: u64, pids: u64) -> Arc<dyn Sandbox> {
    let mut spec = SandboxSpec::new(dir);
    spec.docker = target.spec.clone();
    spec.limits.memory_mb = memory_mb;
    spec.limits.pids = pids;
    safe_coder_sandbox::open(BackendKind::Docker, spec)
        .unwrap_or_else(|e| panic!("{}: open: {e}", target.label))
}

async fn run(sb: &dyn Sandbox, command: &str, timeout: Duration) -> ExecOutput {
    sb.exec(
        ExecRequest {
            command: command.into(),
            timeout,
            max_output_bytes: 256 * 1024,
        },
        CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("exec {command}: {e}"))
}

const T: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_stays_out_of_reach() {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    // A file only the host has, in the user's home.
    let marker_dir = tempfile::tempdir_in(&home)
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    std::fs::write(marker_dir.path().join("secret.txt"), "host secret").unwrap();
    let marker = marker_dir.path().join("secret.txt");
    for target in targets() {
        eprintln!("== {}", target.label);
        let dir = tempfile::tempdir().unwrap();
        let sb = open(&target, dir.path(), 512, 128);
        let label = &target.label;

        // The user's files are not there.
        let out = run(
            &*sb,
            &format!("cat {} 2>&1; ls {home} 2>&1 | head -3", marker.display()),
            T,
        )
        .await;
        assert!(
            !out.output.contains("host secret"),
            "{label}: {}",
            out.output
        );

        // Writes: only /workspace and /tmp.
        let out = run(
            &*sb,
            "for p in /etc/x /usr/x /x /var/x /root/x /home/x; do \
               if touch $p 2>/dev/null; then echo WROTE $p; fi; done; \
             touch /tmp/ok && echo tmp-ok; touch /workspace/ok && echo ws-ok",
            T,
        )
        .await;
        assert!(!out.output.contains("WROTE"), "{label}: {}", out.output);
        assert!(out.output.contains("tmp-ok") && out.output.contains("ws-ok"));
        assert!(dir.path().join("ok").exists());

        // No network: only loopback, and nothing outside answers.
        let out = run(
            &*sb,
            r#"python3 - <<'EOF'
import socket
names = [n for _, n in socket.if_nameindex()]
print('interfaces', sorted(names))
for host in ('1.1.1.1', '8.8.8.8'):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, 53)); print('CONNECTED', host)
    except OSError as e:
        print('refused', host, e.errno)
EOF"#,
            T,
        )
        .await;
        assert!(!out.output.contains("CONNECTED"), "{label}: {}", out.output);
        assert!(out.output.contains("refused"), "{label}: {}", out.output);
        assert!(
            !out.output.contains("eth"),
            "{label}: a network interface: {}",
            out.output
        );

        // No host processes: this test's own process is not visible.
        let out = run(&*sb, "ps -eo pid,args", T).await;
        assert!(
            !out.output.contains("docker_confinement"),
            "{label}: {}",
            out.output
        );
        assert!(
            out.output.lines().count() < 12,
            "{label}: only the container's processes: {}",
            out.output
        );

        // No privileges: every capability dropped, no way up.
        let out = run(
            &*sb,
            "grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status; grep NoNewPrivs /proc/self/status",
            T,
        )
        .await;
        for line in out.output.lines().filter(|l| l.starts_with("Cap")) {
            assert!(
                line.ends_with("0000000000000000"),
                "{label}: a capability left: {line}"
            );
        }
        if !out.output.is_empty() && out.output.contains("NoNewPrivs") {
            assert!(
                out.output.contains("NoNewPrivs:\t1"),
                "{label}: {}",
                out.output
            );
        }
        sb.stop().await.unwrap();
    }
}

/// A memory hog is killed at the limit; the container goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_killed_at_the_limit() {
    for target in targets() {
        let dir = tempfile::tempdir().unwrap();
        let sb = open(&target, dir.path(), 128, 128);
        let label = &target.label;
        let out = run(
            &*sb,
            "python3 -c 'b = []\nwhile True: b.append(bytearray(8 << 20))'; echo exit=$?",
            T,
        )
        .await;
        // SIGKILL from the OOM killer: 137 from bash. Under gVisor the OOM killer takes
        // the whole sandbox (the Sentry holds the hog's memory): the command dies with
        // it, and the next command starts the container again.
        let gvisor = target.spec.runtime.as_deref() == Some("runsc");
        assert!(
            out.output.contains("exit=137") || (gvisor && !out.output.contains("exit=")),
            "{label}: the hog was not killed: {}",
            out.output
        );
        let out = run(&*sb, "echo alive", T).await;
        assert!(out.output.ends_with("alive\n"), "{label}: {}", out.output);
        let status = sb.status().await;
        assert_eq!(status.memory_limit_mb, Some(128), "{label}: {status:?}");
        sb.stop().await.unwrap();
    }
}

/// A fork bomb stops at the process limit and dies with its command's timeout; the
/// container goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_stops_at_the_process_limit() {
    for target in targets() {
        let dir = tempfile::tempdir().unwrap();
        let sb = open(&target, dir.path(), 512, 48);
        let label = &target.label;
        let count = |out: ExecOutput| -> usize { out.output.trim().parse().unwrap_or(0) };
        // At rest: PID 1, its sleep, the command's wrapper, its shell, ps and wc.
        let baseline = count(run(&*sb, "ps -e --no-headers | wc -l", T).await);
        assert!(baseline > 0 && baseline < 10, "{label}: {baseline}");
        // Fork far more long sleepers than the limit allows: forking fails at it.
        let out = run(
            &*sb,
            r#"python3 - <<'EOF'
import os, time
n = 0
for i in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    n += 1
print('started', n, flush=True)
EOF"#,
            T,
        )
        .await;
        let gvisor = target.spec.runtime.as_deref() == Some("runsc");
        match out
            .output
            .lines()
            .find_map(|l| l.strip_prefix("started "))
            .and_then(|n| n.trim().parse::<usize>().ok())
        {
            Some(started) => {
                // Under gVisor the engine's limit counts the sandbox's host tasks
                // (limits.rs), so the count is near the limit rather than at it.
                let most = if gvisor { 72 } else { 48 };
                assert!(
                    started < most,
                    "{label}: {started} processes forked with a limit of 48: {}",
                    out.output
                );
                assert!(
                    started >= 8,
                    "{label}: only {started} forked: {}",
                    out.output
                );
            }
            // Under gVisor the Sentry itself may hit the limit and take the sandbox
            // down: the bomb stops with it, and the next command starts it again.
            None => assert!(
                gvisor
                    && (out.output.contains("the container stopped")
                        || out.output.contains("WaitPID")),
                "{label}: {}",
                out.output
            ),
        }
        let out = run(
            &*sb,
            "bomb() { bomb | bomb & }; bomb; sleep 30",
            Duration::from_secs(5),
        )
        .await;
        assert!(
            out.timed_out || (gvisor && out.output.contains("the container stopped")),
            "{label}: {out:?}"
        );
        let out = run(&*sb, "ps -e --no-headers | wc -l", T).await;
        let left = count(out.clone());
        assert!(
            left <= baseline,
            "{label}: {left} processes left (at rest: {baseline}): {}",
            out.output
        );
        sb.stop().await.unwrap();
    }
}
