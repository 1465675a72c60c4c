//! The `firecracker` backend against a fake Firecracker (crates/test-support) that
//! follows Firecracker's published API and runs the real guest agent on the host behind
//! a hybrid vsock: the API client's exact request sequences and its error paths, then
//! the whole backend end to end except the VMM (boot, files in and out, exec with
//! timeout and cancel, status, stop, a second session restored from the snapshot),
//! an agent of another protocol version, and a VM that never becomes ready.

mod vmsupport;

use std::path::Path;
use std::time::Duration;

use safe_coder_sandbox::vm::fc_api::{FirecrackerApi, FirecrackerApiError};
use safe_coder_sandbox::{
    Accel, BackendKind, CancellationToken, ExecRequest, Sandbox, SandboxSpec, SandboxState, VmSpec,
};
use safe_coder_test_support::firecracker::{FakeFirecracker, FakeFirecrackerConfig};
use vmsupport::*;

fn files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let kernel = dir.join("vmlinux");
    let rootfs = dir.join("rootfs.ext4");
    std::fs::write(&kernel, "k").expect("kernel");
    std::fs::write(&rootfs, "r").expect("rootfs");
    (kernel, rootfs)
}

#[test]
fn boot_and_snapshot_sequences_are_exactly_the_published_api() {
    let dir = tempfile::tempdir().expect("tmp");
    let (kernel, rootfs) = files(dir.path());
    let sock = dir.path().join("api.sock");
    let fake = FakeFirecracker::start(&sock, FakeFirecrackerConfig::default()).expect("fake");
    let api = FirecrackerApi::new(&sock);
    api.machine_config(2, 512).expect("machine-config");
    api.boot_source(&kernel, None, "console=ttyS0")
        .expect("boot-source");
    api.drive("rootfs", &rootfs, true, true).expect("drive");
    api.vsock(3, &dir.path().join("v.sock")).expect("vsock");
    api.metrics(&dir.path().join("metrics.json"))
        .expect("metrics");
    api.instance_start().expect("start");
    api.action("FlushMetrics").expect("flush");
    api.pause().expect("pause");
    let (state, mem) = (dir.path().join("vmstate"), dir.path().join("mem"));
    api.snapshot_create(&state, &mem).expect("snapshot");
    api.resume().expect("resume");
    assert_eq!(
        fake.sequence(),
        [
            "PUT /machine-config 204",
            "PUT /boot-source 204",
            "PUT /drives/rootfs 204",
            "PUT /vsock 204",
            "PUT /metrics 204",
            "PUT /actions 204",
            "PUT /actions 204",
            "PATCH /vm 204",
            "PUT /snapshot/create 204",
            "PATCH /vm 204",
        ]
    );
    let bodies = fake.requests();
    assert_eq!(
        bodies[0].body,
        serde_json::json!({"vcpu_count": 2, "mem_size_mib": 512, "smt": false})
    );
    assert_eq!(bodies[2].body["is_read_only"], serde_json::json!(true));
    assert_eq!(
        bodies[5].body,
        serde_json::json!({"action_type": "InstanceStart"})
    );
    assert!(std::fs::read_to_string(dir.path().join("metrics.json"))
        .expect("metrics")
        .contains("utc_timestamp_ms"));

    // A fresh process loads it, with the session's own vsock socket.
    let sock2 = dir.path().join("api2.sock");
    let fake2 = FakeFirecracker::start(&sock2, FakeFirecrackerConfig::default()).expect("fake");
    let api2 = FirecrackerApi::new(&sock2);
    api2.snapshot_load(&state, &mem, &dir.path().join("v2.sock"))
        .expect("load");
    assert_eq!(fake2.sequence(), ["PUT /snapshot/load 204"]);
    assert_eq!(
        fake2.requests()[0].body["vsock_override"]["uds_path"],
        serde_json::json!(dir.path().join("v2.sock").display().to_string())
    );
    let info = api2.get("/").expect("describe");
    assert_eq!(info["state"], "Running");
}

#[test]
fn faults_come_back_with_firecrackers_message() {
    let dir = tempfile::tempdir().expect("tmp");
    let (kernel, _) = files(dir.path());
    let sock = dir.path().join("api.sock");
    let _fake = FakeFirecracker::start(&sock, FakeFirecrackerConfig::default()).expect("fake");
    let api = FirecrackerApi::new(&sock);
    let fault = |e: FirecrackerApiError| match e {
        FirecrackerApiError::Fault { status, fault, .. } => (status, fault),
        other => panic!("not a fault: {other}"),
    };
    let (status, msg) = fault(api.instance_start().expect_err("must fail"));
    assert_eq!(status, 400);
    assert!(msg.contains("without kernel configuration"), "{msg}");
    let (_, msg) = fault(api.machine_config(0, 512).expect_err("must fail"));
    assert!(msg.contains("vCPU number is invalid"), "{msg}");
    let (_, msg) = fault(
        api.boot_source(&dir.path().join("missing"), None, "")
            .expect_err("must fail"),
    );
    assert!(msg.contains("No such file"), "{msg}");
    // A snapshot load after configuring boot resources is refused.
    api.boot_source(&kernel, None, "").expect("boot-source");
    let e = api
        .snapshot_load(&kernel, &kernel, &dir.path().join("v.sock"))
        .expect_err("must fail");
    assert!(
        e.to_string().contains("not allowed after configuring"),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("Firecracker refused PUT /snapshot/load (400)"),
        "{e}"
    );
    let (_, msg) = fault(api.pause().expect_err("must fail"));
    assert!(msg.contains("before starting"), "{msg}");
    // No API at all: the error says so.
    let none = FirecrackerApi::new(dir.path().join("nothing.sock"));
    let e = none.instance_start().expect_err("must fail").to_string();
    assert!(e.contains("is firecracker running?"), "{e}");
}

struct Fc {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    work: std::path::PathBuf,
    log: std::path::PathBuf,
    bin: std::path::PathBuf,
}

/// The fake Firecracker with the real guest agent, or `None` (after saying why).
fn setup(agent_args: &str, with_agent: bool) -> Option<Fc> {
    if !Path::new("/bin/bash").exists() {
        skip("no bash");
        return None;
    }
    let Some(agent) = agent_bin() else {
        skip("safe-coder-guest-agent is not built (cargo build -p safe-coder-guest-agent)");
        return None;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
    dummy_image(&data);
    let log = dir.path().join("fc.log");
    let Some(bin) = fake_firecracker(
        dir.path(),
        with_agent.then_some((agent.as_path(), agent_args)),
        &log,
    ) else {
        skip("fake-firecracker is not built (cargo build -p safe-coder-test-support)");
        return None;
    };
    Some(Fc {
        _dir: dir,
        data,
        work,
        log,
        bin,
    })
}

fn spec(fc: &Fc) -> SandboxSpec {
    let mut spec = SandboxSpec::new(&fc.work);
    spec.vm = VmSpec {
        data_dir: fc.data.clone(),
        firecracker_bin: Some(fc.bin.clone()),
        accel: Accel::Kvm,
        ready_timeout: Some(Duration::from_secs(30)),
        ..VmSpec::default()
    };
    spec
}

fn req(command: &str, timeout_ms: u64) -> ExecRequest {
    ExecRequest {
        command: command.into(),
        timeout: Duration::from_millis(timeout_ms),
        max_output_bytes: 1 << 20,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_backend_end_to_end_with_snapshot_restore() {
    let Some(fc) = setup("", true) else { return };
    std::fs::write(fc.work.join("a.txt"), "from the host\n").expect("seed");
    std::fs::create_dir_all(fc.work.join("src")).expect("seed");
    std::fs::write(fc.work.join("src/lib.rs"), "fn x() {}\n").expect("seed");
    std::fs::write(fc.work.join("del.txt"), "bye\n").expect("seed");
    std::fs::write(fc.work.join("run.sh"), "#!/bin/sh\necho ran\n").expect("seed");

    let sb = safe_coder_sandbox::open(BackendKind::Firecracker, spec(&fc)).expect("open");
    assert_eq!(sb.backend(), BackendKind::Firecracker);
    assert_eq!(
        sb.host_workdir(),
        Some(fc.work.canonicalize().expect("canon").as_path())
    );
    let detail = sb.backend_detail().expect("detail");
    assert!(detail.contains("booted by Firecracker"), "{detail}");
    let seq = fc_log(&fc.log);
    assert_eq!(
        &seq[..6],
        [
            "PUT /machine-config 204",
            "PUT /boot-source 204",
            "PUT /drives/rootfs 204",
            "PUT /vsock 204",
            "PUT /metrics 204",
            "PUT /actions 204",
        ],
        "{seq:?}"
    );
    // Then the snapshot for the next session.
    assert_eq!(
        &seq[6..9],
        ["PATCH /vm 204", "PUT /snapshot/create 204", "PATCH /vm 204"]
    );

    // The project went in; the command's changes come back to the host tree.
    let out = sb
        .exec(
            req(
                "cat a.txt src/lib.rs && echo new > b.txt && mkdir -p d/e && echo deep > d/e/f.txt && rm del.txt && chmod +x run.sh && ln -s a.txt link && pwd",
                30_000,
            ),
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    assert_eq!(out.exit_code, Some(0), "{}", out.output);
    assert!(
        out.output.contains("from the host") && out.output.contains("fn x()"),
        "{}",
        out.output
    );
    assert_eq!(
        std::fs::read_to_string(fc.work.join("b.txt")).expect("b"),
        "new\n"
    );
    assert_eq!(
        std::fs::read_to_string(fc.work.join("d/e/f.txt")).expect("f"),
        "deep\n"
    );
    assert!(!fc.work.join("del.txt").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(fc.work.join("run.sh"))
        .expect("run.sh")
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "{mode:o}");
    assert_eq!(
        std::fs::read_link(fc.work.join("link")).expect("link"),
        Path::new("a.txt")
    );

    // A file tool writes the host copy; the next command sees it.
    sb.write_file("tool.txt", b"written by a tool\n")
        .await
        .expect("write");
    let out = sb
        .exec(
            req("cat tool.txt; echo $HOME $PATH", 30_000),
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    assert!(out.output.contains("written by a tool"), "{}", out.output);
    // The host edits the tree behind the backend's back (a /rollback): pushed too.
    std::fs::write(fc.work.join("a.txt"), "rolled back\n").expect("edit");
    std::fs::remove_file(fc.work.join("b.txt")).expect("rm");
    let out = sb
        .exec(
            req(
                "cat a.txt; test -e b.txt && echo still-there || echo gone",
                30_000,
            ),
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    assert!(
        out.output.contains("rolled back") && out.output.contains("gone"),
        "{}",
        out.output
    );

    // Exit codes, timeout, cancel.
    let out = sb
        .exec(req("exit 7", 30_000), CancellationToken::new())
        .await
        .expect("exec");
    assert_eq!(out.exit_code, Some(7));
    let out = sb
        .exec(req("echo before; sleep 30", 300), CancellationToken::new())
        .await
        .expect("exec");
    assert!(out.timed_out && out.exit_code.is_none(), "{out:?}");
    assert!(out.output.contains("before"), "{out:?}");
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c2.cancel();
    });
    let out = sb
        .exec(req("sleep 30", 60_000), cancel)
        .await
        .expect("exec");
    assert!(out.cancelled && out.exit_code.is_none(), "{out:?}");

    // Status from the agent.
    let status = sb.status().await;
    assert_eq!(status.state, SandboxState::Running);
    assert_eq!(status.memory_limit_mb, Some(512));
    assert_eq!(status.cpus, Some(2.0));
    assert!(status.memory_used_mb.is_some(), "{status:?}");

    // Stop: the agent powers the "guest" off, the fake exits.
    let (before, after) = sb.stop_lines().expect("lines");
    assert_eq!(before, "Stopping VM and cleaning up…");
    assert!(after.starts_with("✓ Stopped VM "), "{after}");
    sb.stop().await.expect("stop");
    assert_eq!(sb.status().await.state, SandboxState::Stopped);
    assert!(sb
        .exec(req("true", 1000), CancellationToken::new())
        .await
        .is_err());

    // The next session is restored from the snapshot the first one saved.
    let before = fc_log(&fc.log).len();
    let sb2 = safe_coder_sandbox::open(BackendKind::Firecracker, spec(&fc)).expect("open 2");
    let detail = sb2.backend_detail().expect("detail");
    assert!(
        detail.contains("restored from a Firecracker snapshot"),
        "{detail}"
    );
    assert_eq!(fc_log(&fc.log)[before..], ["PUT /snapshot/load 204"]);
    let out = sb2
        .exec(req("cat a.txt tool.txt", 30_000), CancellationToken::new())
        .await
        .expect("exec");
    assert!(
        out.output.contains("rolled back") && out.output.contains("written by a tool"),
        "{}",
        out.output
    );
    sb2.stop().await.expect("stop");
}

#[test]
fn an_agent_of_another_protocol_version_is_named() {
    let Some(fc) = setup("--protocol 99", true) else {
        return;
    };
    let e = match safe_coder_sandbox::open(BackendKind::Firecracker, spec(&fc)) {
        Ok(_) => panic!("a version mismatch must fail"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("version 99") && e.contains("rebuild"), "{e}");
}

#[test]
fn a_vm_that_never_becomes_ready_fails_in_bounded_time() {
    let Some(fc) = setup("", false) else { return };
    let mut spec = spec(&fc);
    spec.vm.ready_timeout = Some(Duration::from_secs(2));
    let e = match safe_coder_sandbox::open(BackendKind::Firecracker, spec) {
        Ok(_) => panic!("a guest that never answers must fail"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("did not become ready within 2 s"), "{e}");
    // The host tree is untouched.
    assert!(fc.work.exists());
}

/// Processes whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            // Arguments are NUL-separated: compare them joined by spaces.
            let cmd: Vec<u8> = cmd.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
            if String::from_utf8_lossy(&cmd).contains(marker) {
                out.push(pid);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_agent_fails_the_next_command_clearly_and_keeps_the_files() {
    let Some(fc) = setup("", true) else { return };
    std::fs::write(fc.work.join("keep.txt"), "mine\n").expect("seed");
    let sb = safe_coder_sandbox::open(BackendKind::Firecracker, spec(&fc)).expect("open");
    let out = sb
        .exec(
            req("echo made > made.txt", 30_000),
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    assert_eq!(out.exit_code, Some(0));
    // The "guest" dies: its agent is killed (the fake then powers off, as Firecracker
    // does when its guest dies).
    let detail = sb.backend_detail().expect("detail");
    let id = detail.split_whitespace().nth(1).expect("id").to_string();
    let agents = pids_with(&format!("safe-coder-vm-{id}/vsock.sock.guest"));
    assert!(!agents.is_empty(), "the agent of VM {id} runs");
    for pid in agents {
        // SAFETY: kill(2) of a process this test started (through the backend).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let e = sb
        .exec(req("echo never", 30_000), CancellationToken::new())
        .await
        .expect_err("a dead VM cannot run commands");
    let e = e.to_string();
    assert!(
        e.contains("cannot run commands") && e.contains("start a new session"),
        "{e}"
    );
    assert_eq!(sb.status().await.state, SandboxState::Failed);
    assert_eq!(
        std::fs::read_to_string(fc.work.join("keep.txt")).expect("kept"),
        "mine\n"
    );
    assert_eq!(
        std::fs::read_to_string(fc.work.join("made.txt")).expect("pulled"),
        "made\n"
    );
    sb.stop().await.expect("stop after a failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_commands_run_through_the_agent_with_a_terminal_or_pipes() {
    let Some(fc) = setup("", true) else { return };
    let sb = safe_coder_sandbox::open(BackendKind::Firecracker, spec(&fc)).expect("open");
    interactive_scenario(&sb, &fc.work).await;

    // A read-write --mount is refused with one clear error; a read-only one is a copy.
    let home = fc.data.join("not-home");
    std::fs::create_dir_all(&home).expect("dir");
    let mut req = interactive("true", None);
    req.mounts = vec![safe_coder_sandbox::Mount {
        host: home.clone(),
        path: home.clone(),
        read_only: false,
    }];
    let e = match sb.spawn_interactive(req).await {
        Ok(_) => panic!("a writable mount cannot be shown in a VM"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains(":ro") && e.contains("--backend process"), "{e}");

    // A dropped connection kills the agent's interactive execs (whole group).
    let detail = sb.backend_detail().expect("detail");
    let id = detail.split_whitespace().nth(1).expect("id").to_string();
    let uds = vm_run_dir(&id).join("vsock.sock");
    let stream = safe_coder_vm_protocol::nonblocking::connect_hybrid(
        &uds,
        safe_coder_vm_protocol::AGENT_PORT,
    )
    .await
    .expect("connect");
    // The connection itself, to cut it below the client (as a crashed host would).
    let cut = std::os::fd::AsFd::as_fd(&stream)
        .try_clone_to_owned()
        .expect("dup");
    let c = safe_coder_vm_protocol::client::AgentClient::connect(
        stream,
        &safe_coder_vm_protocol::hello("vm-test"),
    )
    .await
    .expect("handshake");
    let marker = format!("sleep 3{}", std::process::id() % 1000 + 1000);
    let h = c
        .exec_interactive(safe_coder_vm_protocol::InteractiveExec {
            argv: vec![
                "bash".into(),
                "-c".into(),
                format!("{marker} & {marker}; wait"),
            ],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: String::new(),
            terminal: Some(safe_coder_vm_protocol::TermSize { rows: 24, cols: 80 }),
            merge_stderr: true,
        })
        .await
        .expect("start");
    // bash and its two sleeps.
    eventually("both sleeps run", || pids_with(&marker).len() >= 3).await;
    // SAFETY: shutdown on a socket this test owns.
    unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&cut), libc::SHUT_RDWR) };
    drop((h, c, cut));
    eventually("the sleeps die with their connection", || {
        pids_with(&marker).is_empty()
    })
    .await;
    sb.stop().await.expect("stop");
}
