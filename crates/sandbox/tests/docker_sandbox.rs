//! The `docker` backend against a real engine, for every engine and runtime here
//! (Docker with runc and with gVisor, Podman; see `docker_support`): files through the
//! bind mount, commands through the exec API, timeouts and cancels that kill the
//! command's whole tree, and the container's life with the session.
#![allow(clippy::unwrap_used)]

mod docker_support;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use docker_support::{targets, Target};
use safe_coder_sandbox::{
    BackendKind, CancellationToken, ExecOutput, ExecRequest, Sandbox, SandboxSpec, SandboxState,
};

fn open(target: &Target, dir: &std::path::Path) -> Arc<dyn Sandbox> {
    let mut spec = SandboxSpec::new(dir);
    spec.docker = target.spec.clone();
    spec.limits.memory_mb = 256;
    spec.limits.pids = 64;
    safe_coder_sandbox::open(BackendKind::Docker, spec)
        .unwrap_or_else(|e| panic!("{}: open: {e}", target.label))
}

async fn run(sb: &dyn Sandbox, command: &str, timeout: Duration) -> ExecOutput {
    sb.exec(
        ExecRequest {
            command: command.into(),
            timeout,
            max_output_bytes: 64 * 1024,
        },
        CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("exec {command}: {e}"))
}

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_commands_meet_in_workspace() {
    for target in targets() {
        eprintln!("== {}", target.label);
        let dir = tempfile::tempdir().unwrap();
        let sb = open(&target, dir.path());
        assert_eq!(sb.agent_root(), "/workspace");
        sb.write_file("src/a.txt", b"from the host\n")
            .await
            .unwrap();
        let out = run(
            &*sb,
            "pwd; cat src/a.txt; echo out; echo err >&2; echo made > b.txt; exit 3",
            T,
        )
        .await;
        assert_eq!(out.exit_code, Some(3), "{}: {out:?}", target.label);
        assert_eq!(
            out.output, "/workspace\nfrom the host\nout\nerr\n",
            "{}",
            target.label
        );
        // What the container wrote is on the host, owned by the host user.
        assert_eq!(sb.read_file("b.txt").await.unwrap(), b"made\n");
        let meta = std::fs::metadata(dir.path().join("b.txt")).unwrap();
        // SAFETY: getuid has no preconditions.
        assert_eq!(meta.uid(), unsafe { libc::getuid() }, "{}", target.label);
        // git, python and coreutils are in the image.
        let out = run(
            &*sb,
            "git --version && python3 -c 'print(6*7)' && sha256sum b.txt | cut -c1-8",
            T,
        )
        .await;
        assert_eq!(out.exit_code, Some(0), "{}: {}", target.label, out.output);
        assert!(out.output.contains("git version") && out.output.contains("42\n"));
        let status = sb.status().await;
        assert_eq!(status.backend, "docker");
        assert_eq!(status.state, SandboxState::Running, "{}", target.label);
        assert_eq!(status.memory_limit_mb, Some(256), "{}", target.label);
        sb.stop().await.unwrap();
        assert_eq!(sb.status().await.state, SandboxState::Stopped);
        assert!(sb
            .exec(
                ExecRequest {
                    command: "true".into(),
                    timeout: T,
                    max_output_bytes: 10
                },
                CancellationToken::new()
            )
            .await
            .is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_capped_and_counted() {
    for target in targets() {
        let dir = tempfile::tempdir().unwrap();
        let sb = open(&target, dir.path());
        let out = sb
            .exec(
                ExecRequest {
                    command: "head -c 100000 /dev/zero | tr '\\0' x".into(),
                    timeout: T,
                    max_output_bytes: 1000,
                },
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(out.output.len(), 1000, "{}", target.label);
        assert_eq!(out.total_output_bytes, 100_000, "{}", target.label);
        sb.stop().await.unwrap();
    }
}

/// A command that outlives its timeout dies with its children; the container goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_tree() {
    for target in targets() {
        let dir = tempfile::tempdir().unwrap();
        let sb = open(&target, dir.path());
        let out = run(
            &*sb,
            "(sleep 301 &); sleep 302 & bash -c 'sleep 303'; echo never",
            Duration::from_secs(2),
        )
        .await;
        assert!(out.timed_out, "{}: {out:?}", target.label);
        assert_eq!(out.exit_code, None);
        assert!(!out.output.contains("never"));
        let ps = run(&*sb, "ps -eo args", T).await;
        for s in ["sleep 301", "sleep 302", "sleep 303"] {
            assert!(
                !ps.output.contains(s),
                "{}: {s} survived:\n{}",
                target.label,
                ps.output
            );
        }
        // Cancel, the same way.
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            trigger.cancel();
        });
        let out = sb
            .exec(
                ExecRequest {
                    command: "sleep 304 & sleep 305".into(),
                    timeout: T,
                    max_output_bytes: 1000,
                },
                cancel,
            )
            .await
            .unwrap();
        assert!(out.cancelled, "{}: {out:?}", target.label);
        let ps = run(&*sb, "ps -eo args", T).await;
        assert!(
            !ps.output.contains("sleep 30"),
            "{}: {}",
            target.label,
            ps.output
        );
        // A background process that keeps the output open ends with its command.
        let out = run(&*sb, "echo started; sleep 306 &", T).await;
        assert_eq!(out.exit_code, Some(0), "{}: {out:?}", target.label);
        assert!(out.output.starts_with("started\n"), "{}", out.output);
        let ps = run(&*sb, "ps -eo args", T).await;
        assert!(
            !ps.output.contains("sleep 306"),
            "{}: {}",
            target.label,
            ps.output
        );
        sb.stop().await.unwrap();
    }
}

/// Under runc (Docker, Podman) commands go through the resident agent, the container's
/// PID 1, which is the command's parent; under gVisor through the engine's exec. A
/// timeout and a cancel kill the command's whole tree on either path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_go_through_the_resident_agent_where_it_can_be_reached() {
    if safe_coder_sandbox::docker::resident_agent().is_none() {
        assert!(
            !docker_support::required(),
            "the static guest agent must be built here: run scripts/build-guest-agent.sh \
             or set SAFE_CODER_GUEST_AGENT"
        );
        eprintln!("skipped: no static guest agent (scripts/build-guest-agent.sh builds it)");
        return;
    }
    for target in targets() {
        let (runtime, _) = safe_coder_sandbox::docker::runtime_for(&target.spec).unwrap();
        let through_agent = safe_coder_sandbox::docker::runtime_passes_sockets(&runtime);
        let dir = tempfile::tempdir().unwrap();
        let sb = open(&target, dir.path());
        let out = run(&*sb, "cat /proc/1/comm; echo ppid=$PPID; pwd", T).await;
        assert_eq!(out.exit_code, Some(0), "{}: {out:?}", target.label);
        assert_eq!(
            // The agent is bind-mounted as /.safe-coder/agent.
            out.output.starts_with("agent\nppid=1\n"),
            through_agent,
            "{} ({runtime}): {}",
            target.label,
            out.output
        );
        assert!(out.output.ends_with("/workspace\n"), "{}", out.output);
        let out = run(&*sb, "echo $HOME $TMPDIR; exit 7", T).await;
        assert_eq!(out.exit_code, Some(7), "{}: {out:?}", target.label);
        assert_eq!(out.output, "/tmp /tmp\n");
        let out = run(
            &*sb,
            "bash -c 'sleep 311' & (sleep 312 &); sleep 313",
            Duration::from_secs(1),
        )
        .await;
        assert!(out.timed_out, "{}: {out:?}", target.label);
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            trigger.cancel();
        });
        let out = sb
            .exec(
                ExecRequest {
                    command: "sleep 314 & bash -c 'sleep 315'".into(),
                    timeout: T,
                    max_output_bytes: 1000,
                },
                cancel,
            )
            .await
            .unwrap();
        assert!(out.cancelled, "{}: {out:?}", target.label);
        let ps = run(&*sb, "ps -eo args", T).await;
        assert!(
            !ps.output.contains("sleep 31"),
            "{}: {}",
            target.label,
            ps.output
        );
        sb.stop().await.unwrap();
    }
}

/// A kept session's container is stopped, started again when the session reopens, and
/// removed once the session is gone; `discard_session` removes it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_lives_with_the_session() {
    for target in targets() {
        let dir = tempfile::tempdir().unwrap();
        let session_dir = tempfile::tempdir().unwrap();
        let id = format!("t{}-{}", std::process::id(), fastrand_id());
        let mut spec = target.spec.clone();
        spec.session_id = Some(id.clone());
        spec.session_dir = Some(session_dir.path().to_path_buf());
        let mine = |spec: &safe_coder_sandbox::DockerSpec| {
            safe_coder_sandbox::docker::session_containers(spec)
                .unwrap()
                .into_iter()
                .filter(|c| c.session_id == id)
                .collect::<Vec<_>>()
        };
        let target2 = Target {
            label: target.label.clone(),
            spec: spec.clone(),
        };
        let sb = open(&target2, dir.path());
        assert_eq!(run(&*sb, "echo one", T).await.output, "one\n");
        assert!(mine(&spec).iter().all(|c| c.running) && mine(&spec).len() == 1);
        sb.stop().await.unwrap();
        drop(sb);
        let kept = mine(&spec);
        assert_eq!(kept.len(), 1, "{}: kept, stopped", target.label);
        assert!(!kept[0].running, "{}", target.label);
        // Resume: the same container runs again.
        let sb = open(&target2, dir.path());
        assert_eq!(run(&*sb, "echo two", T).await.output, "two\n");
        assert!(mine(&spec)[0].running);
        sb.stop().await.unwrap();
        // Discard removes it.
        assert!(safe_coder_sandbox::docker::discard_session(&spec, &id).unwrap());
        assert!(mine(&spec).is_empty(), "{}", target.label);
        // A session that is gone (synced) has its container removed at stop.
        let sb = open(&target2, dir.path());
        drop(session_dir);
        sb.stop().await.unwrap();
        assert!(mine(&spec).is_empty(), "{}: removed", target.label);
    }
}

fn fastrand_id() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.subsec_nanos()
}
