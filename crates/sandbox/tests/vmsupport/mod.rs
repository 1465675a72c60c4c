//! Helpers shared by the microVM backends' test files.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Whether a missing sandbox must fail the test (CI) instead of skipping it.
pub fn required() -> bool {
    std::env::var_os("SAFE_CODER_REQUIRE_SANDBOX").is_some()
}

/// Says why the test cannot run; fails under `SAFE_CODER_REQUIRE_SANDBOX=1`.
pub fn skip(why: &str) {
    assert!(!required(), "required but unavailable: {why}");
    eprintln!("skipped: {why}");
}

/// A binary of another workspace package, built into the same target directory
/// (`cargo test --workspace` and scripts/ci/vm.sh build them; `cargo test -p` alone
/// may not).
pub fn built_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?; // target/<profile>/deps/<test> -> target/<profile>
    let p = dir.join(name);
    p.is_file().then_some(p)
}

pub fn agent_bin() -> Option<PathBuf> {
    built_binary("safe-coder-guest-agent")
}

pub fn fake_firecracker_bin() -> Option<PathBuf> {
    built_binary("fake-firecracker")
}

/// A `firecracker` for the backend: the fake, with its guest agent (or none) and a
/// request log, set through a wrapper script so each test has its own.
pub fn fake_firecracker(dir: &Path, agent: Option<(&Path, &str)>, log: &Path) -> Option<PathBuf> {
    let fake = fake_firecracker_bin()?;
    let (agent, args) = match agent {
        Some((a, args)) => (a.display().to_string(), args.to_string()),
        None => (String::new(), String::new()),
    };
    let script = dir.join("firecracker");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nSAFE_CODER_FAKE_FC_AGENT='{agent}' SAFE_CODER_FAKE_FC_AGENT_ARGS='{args}' SAFE_CODER_FAKE_FC_LOG='{}' exec '{}' \"$@\"\n",
            log.display(),
            fake.display()
        ),
    )
    .ok()?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).ok()?;
    Some(script)
}

/// Stand-in image files for the fake (it only checks that they exist).
pub fn dummy_image(data_dir: &Path) {
    let vm = data_dir.join("vm");
    std::fs::create_dir_all(&vm).expect("vm dir");
    std::fs::write(vm.join("vmlinux"), b"\x7fELF fake kernel").expect("kernel");
    std::fs::write(vm.join("rootfs.ext4"), b"fake rootfs").expect("rootfs");
}

/// The real guest image for QEMU, from `SAFE_CODER_TEST_VM_IMAGE`: a data dir whose
/// `vm/` holds it (what scripts/ci/vm-image.sh exports), or the image directory itself
/// (`vmlinux`, `rootfs.ext4`, optionally `initramfs.cpio.gz` and `features`).
///
/// Without the variable the test skips, also under `SAFE_CODER_REQUIRE_SANDBOX=1` (the
/// whole-suite run has no image; scripts/ci/vm.sh sets it); with it, a missing image
/// fails there.
pub fn real_image() -> Option<PathBuf> {
    let Some(var) = std::env::var_os("SAFE_CODER_TEST_VM_IMAGE") else {
        eprintln!("skipped: SAFE_CODER_TEST_VM_IMAGE is not set (scripts/ci/vm-image.sh builds the guest image; scripts/ci/vm.sh runs this with it)");
        return None;
    };
    let var = PathBuf::from(var);
    let dir = if var.join("vm/vmlinux").is_file() {
        var.join("vm")
    } else {
        var
    };
    if dir.join("vmlinux").is_file() && dir.join("rootfs.ext4").is_file() {
        Some(dir)
    } else {
        skip(&format!(
            "SAFE_CODER_TEST_VM_IMAGE={} holds no guest image",
            dir.display()
        ));
        None
    }
}

/// The request log of the fake: `METHOD path status` per line.
pub fn fc_log(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            format!(
                "{} {} {}",
                v["method"].as_str().unwrap_or(""),
                v["path"].as_str().unwrap_or(""),
                v["status"]
            )
        })
        .collect()
}

/// The runtime directory of VM `id` (as the backend makes it).
pub fn vm_run_dir(id: &str) -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir() && p.as_os_str().len() < 60)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join(format!("safe-coder-vm-{id}"))
}

/// The host end of an interactive command's terminal (a socket on the VM backends).
pub struct Term {
    pub stream: tokio::net::UnixStream,
    pub seen: Vec<u8>,
}

impl Term {
    pub fn new(fd: std::os::fd::OwnedFd) -> Term {
        let std = std::os::unix::net::UnixStream::from(fd);
        std.set_nonblocking(true).expect("nonblocking");
        Term {
            stream: tokio::net::UnixStream::from_std(std).expect("tokio stream"),
            seen: Vec::new(),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Reads until `want` has been printed (counting from the start); panics at the end
    /// of the output. Bounded only so a broken backend cannot hang the suite.
    pub async fn until(&mut self, want: &str) {
        use tokio::io::AsyncReadExt;
        let end = tokio::time::Instant::now() + std::time::Duration::from_secs(300);
        let mut buf = [0u8; 4096];
        while !self.text().contains(want) {
            match tokio::time::timeout_at(end, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    panic!("the terminal ended before {want:?}: {}", self.text())
                }
                Ok(Ok(n)) => self.seen.extend_from_slice(&buf[..n]),
                Err(_) => panic!("nothing like {want:?} in 300 s: {}", self.text()),
            }
        }
    }

    /// Reads to the end of the output.
    pub async fn read_to_end(&mut self) {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
            }
        }
    }

    pub async fn send(&mut self, data: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream
            .write_all(data)
            .await
            .expect("write the terminal");
    }
}

/// Waits (bounded, so a broken backend cannot hang the suite) until `cond` holds.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}");
}

/// An interactive request: `bash -c script`, with a terminal of `size` or pipes.
pub fn interactive(
    script: &str,
    size: Option<(u16, u16)>,
) -> safe_coder_sandbox::InteractiveRequest {
    safe_coder_sandbox::InteractiveRequest {
        argv: vec!["bash".into(), "-c".into(), script.into()],
        terminal: size.map(|(rows, cols)| safe_coder_sandbox::TermSize { rows, cols }),
        ..Default::default()
    }
}

/// The interactive scenario both VM backends pass: output through the terminal, input,
/// `stty size` after a resize, the guest's changes reaching the host tree while the
/// command runs and after it, `Ctrl+C` ending a `sleep`; then pipes with the end of
/// input and an exit code.
pub async fn interactive_scenario(sb: &dyn safe_coder_sandbox::Sandbox, work: &Path) {
    std::fs::write(work.join("seed.txt"), "from the host\n").expect("seed");
    std::fs::write(work.join("gone.txt"), "bye\n").expect("seed");
    let child = sb
        .spawn_interactive(interactive(
            "cat seed.txt; tty -s && echo is-a-tty; echo $TERM; stty size; echo live > live.txt; read line; echo got:$line; stty size; echo edited >> seed.txt; rm gone.txt; echo ready; sleep 300",
            Some((24, 80)),
        ))
        .await
        .expect("spawn");
    let safe_coder_sandbox::InteractiveChild {
        terminal,
        mut control,
    } = child;
    let mut term = Term::new(terminal);
    term.until("24 80").await;
    let t = term.text();
    assert!(t.contains("from the host") && t.contains("is-a-tty"), "{t}");
    // Written by the running command, on the host before it ends (the live pull).
    let live = work.join("live.txt");
    eventually("live.txt reaches the host while the command runs", || {
        std::fs::read_to_string(&live).is_ok_and(|s| s == "live\n")
    })
    .await;
    control
        .resize(safe_coder_sandbox::TermSize {
            rows: 40,
            cols: 100,
        })
        .expect("resize");
    // A resize reaches the guest before the input typed after it.
    term.send(b"hello\r").await;
    term.until("got:hello").await;
    term.until("ready").await;
    let after = term.text();
    let after = after.split("got:hello").nth(1).expect("after the line");
    assert!(
        after.contains("40 100"),
        "stty size after the resize: {after}"
    );
    term.send(b"\x03").await;
    let exit = control.wait().await.expect("wait");
    assert_eq!(
        exit.signal,
        Some(2),
        "Ctrl+C is SIGINT for the command: {exit:?}"
    );
    term.read_to_end().await;
    // The final pull happened before wait returned.
    assert_eq!(
        std::fs::read_to_string(work.join("seed.txt")).expect("seed"),
        "from the host\nedited\n"
    );
    assert!(!work.join("gone.txt").exists());

    // Without a terminal: a socket, the end of input reaches the command, exit code.
    let child = sb
        .spawn_interactive(interactive(
            "tty -s || echo no-tty; wc -c; echo to-stderr >&2; exit 3",
            None,
        ))
        .await
        .expect("spawn");
    let safe_coder_sandbox::InteractiveChild {
        terminal,
        mut control,
    } = child;
    let mut term = Term::new(terminal);
    term.send(b"12345678").await;
    term.stream.shutdown_write_half();
    term.read_to_end().await;
    let exit = control.wait().await.expect("wait");
    assert_eq!(exit.code, Some(3), "{exit:?}");
    assert_eq!(term.text(), "no-tty\n8\nto-stderr\n");
}

/// Ends the writing half of a stream (the command reads the end of its input).
pub trait ShutdownWrite {
    fn shutdown_write_half(&self);
}

impl ShutdownWrite for tokio::net::UnixStream {
    fn shutdown_write_half(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: shutdown on an open socket.
        unsafe { libc::shutdown(self.as_raw_fd(), libc::SHUT_WR) };
    }
}
