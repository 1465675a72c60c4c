//! The `qemu` backend with the real guest image under TCG (`SAFE_CODER_TEST_VM_IMAGE`):
//! a session boots (or restores the saved state), the project goes in, commands run in
//! the guest with their changes coming back, timeout and cancel kill the whole tree, a
//! memory hog dies at the VM's size, status comes from the agent, and stop powers off.
//! A second session restores the snapshot the first saved.
//!
//! Without the image (or QEMU, or vhost-device-vsock) the tests say why and skip,
//! unless `SAFE_CODER_REQUIRE_SANDBOX=1`.

mod vmsupport;

use std::path::{Path, PathBuf};
use std::time::Duration;

use safe_coder_sandbox::{
    Accel, BackendKind, CancellationToken, ExecRequest, Sandbox, SandboxSpec, SandboxState, VmSpec,
};
use vmsupport::*;

fn image() -> Option<PathBuf> {
    let dir = real_image()?;
    if safe_coder_sandbox::find_executable("qemu-system-x86_64").is_none() {
        skip("qemu-system-x86_64 is not installed");
        return None;
    }
    Some(dir)
}

fn spec(image: &Path, data: &Path, work: &Path) -> SandboxSpec {
    let mut spec = SandboxSpec::new(work);
    let initramfs = image.join("initramfs.cpio.gz");
    spec.vm = VmSpec {
        data_dir: data.to_path_buf(),
        kernel: Some(image.join("vmlinux")),
        rootfs: Some(image.join("rootfs.ext4")),
        initramfs: initramfs.is_file().then_some(initramfs),
        accel: Accel::Tcg,
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
async fn qemu_session_runs_commands_in_the_guest_and_restores_from_a_snapshot() {
    let Some(image) = image() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("src")).expect("work");
    std::fs::write(work.join("src/main.py"), "print('hello from the guest')\n").expect("seed");
    std::fs::write(work.join("gone.txt"), "bye\n").expect("seed");
    let data = dir.path().join("data");

    let sb = safe_coder_sandbox::open(BackendKind::Qemu, spec(&image, &data, &work)).expect("open");
    eprintln!("first session: {}", sb.backend_detail().unwrap_or_default());
    assert_eq!(sb.agent_root(), "/workspace");

    let out = sb
        .exec(
            req(
                "python3 src/main.py && uname -r && pwd && echo made > made.txt && rm gone.txt && mkdir -p a/b && echo deep > a/b/c.txt && chmod +x src/main.py",
                60_000,
            ),
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    assert_eq!(out.exit_code, Some(0), "{}", out.output);
    assert!(
        out.output.contains("hello from the guest"),
        "{}",
        out.output
    );
    assert!(out.output.contains("/workspace"), "{}", out.output);
    assert_eq!(
        std::fs::read_to_string(work.join("made.txt")).expect("made"),
        "made\n"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("a/b/c.txt")).expect("deep"),
        "deep\n"
    );
    assert!(!work.join("gone.txt").exists());

    // Timeout and cancel kill the command's whole tree in the guest.
    let out = sb
        .exec(
            req(
                "(sleep 100; echo child-lived > child.txt) & sleep 100",
                1500,
            ),
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    assert!(out.timed_out, "{out:?}");
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        c2.cancel();
    });
    let out = sb
        .exec(req("sleep 100", 60_000), cancel)
        .await
        .expect("exec");
    assert!(out.cancelled, "{out:?}");
    let out = sb
        .exec(
            req("pgrep -c sleep || true", 30_000),
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    assert_eq!(out.output.trim(), "0", "nothing survives: {}", out.output);

    // A memory hog dies at the VM's size; the VM and the agent go on.
    let out = sb
        .exec(
            req(
                "python3 -c 'x = bytearray(2048 * 1024 * 1024); print(len(x))'",
                120_000,
            ),
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    assert_ne!(out.exit_code, Some(0), "{out:?}");
    let out = sb
        .exec(req("echo alive", 30_000), CancellationToken::new())
        .await
        .expect("exec");
    assert!(out.output.contains("alive"), "{out:?}");

    let status = sb.status().await;
    assert_eq!(status.state, SandboxState::Running);
    assert_eq!(status.memory_limit_mb, Some(512));
    let used = status.memory_used_mb.expect("memory from the agent");
    assert!(used > 0 && used < 512, "{status:?}");

    sb.stop().await.expect("stop");
    assert_eq!(sb.status().await.state, SandboxState::Stopped);

    // A second session: restored from the saved state when the image supports it.
    let work2 = dir.path().join("work2");
    std::fs::create_dir_all(&work2).expect("work2");
    std::fs::write(work2.join("x.txt"), "second\n").expect("seed");
    let sb2 =
        safe_coder_sandbox::open(BackendKind::Qemu, spec(&image, &data, &work2)).expect("open 2");
    let detail = sb2.backend_detail().unwrap_or_default();
    eprintln!("second session: {detail}");
    if std::fs::read_to_string(image.join("features"))
        .unwrap_or_default()
        .contains("serial-agent")
    {
        assert!(detail.contains("restored"), "{detail}");
    }
    let out = sb2
        .exec(req("cat x.txt; ls", 60_000), CancellationToken::new())
        .await
        .expect("exec");
    assert!(out.output.contains("second"), "{}", out.output);
    assert!(
        !out.output.contains("made.txt"),
        "a fresh workspace: {}",
        out.output
    );
    sb2.stop().await.expect("stop");
}

/// A VM that cannot boot (the kernel is not a kernel) fails the start with QEMU's own
/// words, at once; one whose guest never answers fails after the ready timeout. Either
/// way the work tree is untouched.
#[test]
fn a_vm_that_never_becomes_ready_fails_in_bounded_time() {
    let Some(image) = image() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
    std::fs::write(work.join("a.txt"), "mine\n").expect("seed");
    let data = dir.path().join("data");
    let bogus = dir.path().join("not-a-kernel");
    std::fs::write(&bogus, "this is not a kernel\n").expect("bogus");
    let mut s = spec(&image, &data, &work);
    s.vm.kernel = Some(bogus);
    s.vm.ready_timeout = Some(Duration::from_secs(20));
    let e = match safe_coder_sandbox::open(BackendKind::Qemu, s) {
        Ok(_) => panic!("a bogus kernel cannot boot"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("qemu exited") || e.contains("did not become ready"),
        "{e}"
    );

    // A kernel that boots but no agent ever answers: the root disk is not the image's.
    let empty_root = dir.path().join("empty.ext4");
    std::fs::write(&empty_root, vec![0u8; 1 << 20]).expect("empty");
    let mut s = spec(&image, &data, &work);
    s.vm.rootfs = Some(empty_root);
    s.vm.ready_timeout = Some(Duration::from_secs(15));
    let e = match safe_coder_sandbox::open(BackendKind::Qemu, s) {
        Ok(_) => panic!("a guest without the agent never becomes ready"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("did not become ready within 15 s") || e.contains("qemu exited"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("a.txt")).expect("kept"),
        "mine\n"
    );
}

/// `safe-coder run` on qemu: the interactive scenario of both VM backends (terminal,
/// resize, `Ctrl+C`, live and final pulls, pipes), a read-only `--mount` copied in, and
/// an interactive command killed with its whole group when its handle is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_runs_interactive_commands_in_the_guest() {
    let Some(image) = image() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
    let data = dir.path().join("data");
    let sb = safe_coder_sandbox::open(BackendKind::Qemu, spec(&image, &data, &work)).expect("open");
    interactive_scenario(&sb, &work).await;

    // A read-only mount is a copy in the guest at its own path (not under the home).
    let shown = dir.path().join("shown");
    std::fs::create_dir_all(shown.join("sub")).expect("shown");
    std::fs::write(shown.join("sub/conf.toml"), "key = 1\n").expect("conf");
    // Named through a symlink: shown where the user named it.
    let named = dir.path().join("named");
    std::os::unix::fs::symlink(&shown, &named).expect("symlink");
    let mut req = interactive(
        &format!(
            "cat {n}/sub/conf.toml; echo changed > {n}/sub/conf.toml",
            n = named.display()
        ),
        None,
    );
    req.mounts = vec![safe_coder_sandbox::Mount {
        host: shown.clone(),
        path: named.clone(),
        read_only: true,
    }];
    let child = sb.spawn_interactive(req).await.expect("spawn");
    let safe_coder_sandbox::InteractiveChild {
        terminal,
        mut control,
    } = child;
    let mut term = Term::new(terminal);
    term.read_to_end().await;
    let exit = control.wait().await.expect("wait");
    assert_eq!(exit.code, Some(0), "{}", term.text());
    assert_eq!(term.text(), "key = 1\n");
    assert_eq!(
        std::fs::read_to_string(shown.join("sub/conf.toml")).expect("conf"),
        "key = 1\n",
        "the host path never changes"
    );

    // Dropping the handle of a running command kills it and what it started.
    let child = sb
        .spawn_interactive(interactive(
            "sleep 300 & echo started; sleep 301",
            Some((24, 80)),
        ))
        .await
        .expect("spawn");
    let mut term = Term::new(child.terminal);
    term.until("started").await;
    drop(child.control);
    term.read_to_end().await;
    let out = sb
        .exec(req_pgrep(), CancellationToken::new())
        .await
        .expect("exec");
    assert_eq!(out.output.trim(), "0", "nothing survives: {}", out.output);
    sb.stop().await.expect("stop");
}

fn req_pgrep() -> ExecRequest {
    req("pgrep -c sleep || true", 30_000)
}

/// `[vm] workspace = "shared"`: the guest's `/workspace` is the session's overlay (the
/// project read-only below, the upper layer above) served by virtiofsd. Whatever the
/// guest does lands in the upper layer with nothing pulled, whatever the host writes is
/// seen by the guest's next command with nothing pushed, and the project never changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_shared_workspace_over_virtio_fs() {
    use safe_coder_sandbox::overlay::{Layers, OverlayMount};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let Some(image) = image() else { return };
    if safe_coder_sandbox::vm::share::find_virtiofsd().is_none() {
        skip("virtiofsd is not installed (`cargo install --locked virtiofsd`; scripts/ci/vm-image.sh does)");
        return;
    }
    let features = std::fs::read_to_string(image.join("features")).unwrap_or_default();
    if !features.contains("virtiofs-workspace") {
        skip("the guest image predates virtio-fs (rebuild it: scripts/ci/vm-image.sh)");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let project = dir.path().join("project");
    std::fs::create_dir_all(project.join("src")).expect("project");
    std::fs::write(project.join("src/main.py"), "print('v1')\n").expect("seed");
    std::fs::write(project.join("gone.txt"), "bye\n").expect("seed");
    std::fs::write(project.join("old-name.txt"), "moving\n").expect("seed");
    std::fs::write(project.join("run.sh"), "echo ran\n").expect("seed");
    let layers = Layers {
        lower: project.clone(),
        upper: dir.path().join("upper"),
        work: dir.path().join("ovl-work"),
        merged: dir.path().join("work"),
    };
    let mount = match OverlayMount::mount(layers.clone()) {
        Ok(m) => std::sync::Arc::new(m),
        Err(e) => {
            skip(&format!("no overlay workspace here: {e}"));
            return;
        }
    };
    let data = dir.path().join("data");
    let mut spec = spec(&image, &data, &layers.merged);
    spec.overlay = Some(mount.clone());
    spec.vm.workspace = safe_coder_sandbox::VmWorkspace::Shared;
    let sb = safe_coder_sandbox::open(BackendKind::Qemu, spec).expect("open");
    let detail = sb.backend_detail().unwrap_or_default();
    eprintln!("shared session: {detail}");
    assert!(detail.contains("shared over virtio-fs"), "{detail}");

    // A host-side write before the first command (the file tools write the host tree).
    sb.write_file("from-host.txt", b"host wrote this\n")
        .await
        .expect("host write");
    let out = sb
        .exec(
            req(
                "cat from-host.txt && python3 src/main.py && mount | grep ' /workspace ' && \
                 echo made > made.txt && echo \"print('v2')\" > src/main.py && rm gone.txt && \
                 mv old-name.txt new-name.txt && chmod +x run.sh && mkdir -p a/b && echo deep > a/b/c.txt && ls -l made.txt",
                60_000,
            ),
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    assert_eq!(out.exit_code, Some(0), "{}", out.output);
    assert!(out.output.contains("host wrote this"), "{}", out.output);
    assert!(out.output.contains("v1"), "{}", out.output);
    assert!(out.output.contains("virtiofs"), "{}", out.output);
    // The guest's uid is squashed to the user's, shown back as root.
    assert!(out.output.contains(" root root "), "{}", out.output);

    // Everything is in the upper layer already (nothing was pulled) ...
    let upper = &layers.upper;
    assert_eq!(
        std::fs::read_to_string(upper.join("made.txt")).expect("made"),
        "made\n"
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("src/main.py")).expect("edit"),
        "print('v2')\n"
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("a/b/c.txt")).expect("deep"),
        "deep\n"
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("new-name.txt")).expect("renamed"),
        "moving\n"
    );
    for whiteout in ["gone.txt", "old-name.txt"] {
        let m = std::fs::symlink_metadata(upper.join(whiteout)).expect("whiteout");
        assert!(m.file_type().is_char_device(), "{whiteout} is a whiteout");
    }
    let mode = std::fs::metadata(upper.join("run.sh"))
        .expect("chmod")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "{mode:o}");
    // ... and the merged tree the host's tools see is the guest's.
    let root = mount.host_root();
    assert!(!root.join("gone.txt").exists() && !root.join("old-name.txt").exists());
    assert_eq!(
        sb.read_file("new-name.txt").await.expect("read"),
        b"moving\n"
    );
    // The user's project is untouched.
    assert_eq!(
        std::fs::read_to_string(project.join("src/main.py")).expect("lower"),
        "print('v1')\n"
    );
    assert!(project.join("gone.txt").exists() && !project.join("made.txt").exists());
    let lower_mode = std::fs::metadata(project.join("run.sh"))
        .expect("lower")
        .permissions()
        .mode();
    assert_eq!(lower_mode & 0o111, 0, "{lower_mode:o}");

    // A host change between commands is seen by the next one (no stale cache).
    sb.write_file("made.txt", b"changed on the host\n")
        .await
        .expect("host write");
    sb.write_file("src/main.py", b"print('v3')\n")
        .await
        .expect("host write");
    let out = sb
        .exec(
            req("cat made.txt && python3 src/main.py", 60_000),
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    assert_eq!(out.exit_code, Some(0), "{}", out.output);
    assert!(
        out.output.contains("changed on the host") && out.output.contains("v3"),
        "{}",
        out.output
    );
    let id = detail
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    sb.stop().await.expect("stop");
    assert!(
        !vm_run_dir(&id).exists(),
        "the run dir (virtiofsd's socket) is gone"
    );
}
