//! Interactive commands (`Sandbox::spawn_interactive`, docs/run.md) on the `process`
//! backend with every mechanism that works here, and on `copy`: a real PTY as the
//! controlling terminal, `Ctrl+C` delivered to the command, a resize reaching it, the
//! allow-listed environment plus what was asked for, and no network.

mod common;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use safe_coder_sandbox::{
    BackendKind, InteractiveChild, InteractiveRequest, Mechanism, Mount, RunExit, Sandbox,
    SandboxSpec, TermSize,
};

fn open(kind: BackendKind, dir: &Path, m: Option<Mechanism>) -> Arc<dyn Sandbox> {
    let mut spec = SandboxSpec::new(dir);
    spec.mechanism = m;
    safe_coder_sandbox::open(kind, spec).expect("sandbox")
}

fn mechanisms() -> Vec<Mechanism> {
    common::each(Default::default())
        .iter()
        .map(|c| c.mechanism())
        .collect()
}

/// The terminal's output, read on a thread.
struct Screen {
    rx: mpsc::Receiver<Vec<u8>>,
    seen: String,
    writer: std::fs::File,
}

impl Screen {
    fn new(fd: OwnedFd) -> Screen {
        let file = std::fs::File::from(fd);
        let writer = file.try_clone().expect("dup");
        let mut reader = file;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Screen {
            rx,
            seen: String::new(),
            writer,
        }
    }

    /// Waits (at most 20 s, a bound against hanging) until `text` has been printed.
    fn wait_for(&mut self, text: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !self.seen.contains(text) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(b) => self.seen.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => panic!("never printed {text:?}; the screen so far:\n{}", self.seen),
            }
        }
    }

    fn type_bytes(&mut self, b: &[u8]) {
        self.writer.write_all(b).expect("write to the terminal");
    }
}

async fn start(
    sb: &dyn Sandbox,
    script: &str,
    terminal: Option<TermSize>,
) -> (Screen, Box<dyn safe_coder_sandbox::ChildControl>) {
    let InteractiveChild { terminal, control } = sb
        .spawn_interactive(InteractiveRequest {
            argv: vec!["bash".into(), "-c".into(), script.into()],
            env_extra: vec![("RUN_EXTRA".into(), "passed".into())],
            terminal,
            ..Default::default()
        })
        .await
        .expect("spawn_interactive");
    (Screen::new(terminal), control)
}

const SIZE: TermSize = TermSize { rows: 30, cols: 90 };

#[tokio::test]
async fn a_pty_that_takes_ctrl_c_and_resizes() {
    if common::best(Default::default()).is_none() {
        return;
    }
    // As when Safe Coder is started as a background job of a non-interactive shell:
    // SIGINT ignored. The command must still get it by default (else bash's `trap`
    // below is refused and Ctrl+C does nothing).
    // SAFETY: setting a signal to SIG_IGN has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    for m in mechanisms() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sb = open(BackendKind::Process, tmp.path(), Some(m));
        let script = "trap 'echo got-int; exit 3' INT; trap 'echo size=$(stty size)' WINCH; \
             test -t 0 && echo is-a-tty; echo start=$(stty size) extra=$RUN_EXTRA home=$HOME; \
             echo ready; while :; do sleep 0.05; done";
        let (mut screen, mut control) = start(&*sb, script, Some(SIZE)).await;
        screen.wait_for("ready");
        assert!(screen.seen.contains("is-a-tty"), "{m:?}: {}", screen.seen);
        assert!(
            screen.seen.contains("start=30 90 extra=passed"),
            "{m:?}: {}",
            screen.seen
        );
        assert!(
            !screen.seen.contains("home=/root"),
            "{m:?}: {}",
            screen.seen
        );
        control
            .resize(TermSize {
                rows: 41,
                cols: 101,
            })
            .expect("resize");
        screen.wait_for("size=41 101");
        // Ctrl+C as the user types it: the terminal turns it into SIGINT for the command.
        screen.type_bytes(b"\x03");
        screen.wait_for("got-int");
        let exit = control.wait().await.expect("wait");
        assert_eq!(
            exit,
            RunExit {
                code: Some(3),
                signal: None
            },
            "{m:?}"
        );
    }
}

/// The sandbox's memory limit holds for a `run` command on every mechanism (on cgroup
/// v1 the command is forked inside the cgroup rather than joining it: see
/// `backends/process/cgroup.rs`): a hog that would hold 512 MB is stopped at 64 MB.
#[tokio::test]
async fn the_memory_limit_holds_for_run() {
    if common::best(Default::default()).is_none() {
        return;
    }
    for m in mechanisms() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut spec = SandboxSpec::new(tmp.path());
        spec.mechanism = Some(m);
        spec.limits.memory_mb = 64;
        let sb = safe_coder_sandbox::open(BackendKind::Process, spec).expect("sandbox");
        // tail keeps a newline-free stream in memory: it grows until a limit stops it.
        let script = "head -c 512M /dev/zero | tail >/dev/null; echo status=${PIPESTATUS[1]}";
        let (mut screen, mut control) = start(&*sb, script, None).await;
        let exit = control.wait().await.expect("wait");
        screen.wait_for("status=");
        assert!(
            !screen.seen.contains("status=0"),
            "{m:?}: the hog was not stopped ({exit:?}): {}",
            screen.seen
        );
    }
}

/// No terminal: a socket pair carries stdin and the output; no network inside.
#[tokio::test]
async fn without_a_pty_and_without_network() {
    if common::best(Default::default()).is_none() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    for m in mechanisms() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sb = open(BackendKind::Process, tmp.path(), Some(m));
        let script = format!(
            "test -t 0 || echo not-a-tty; read line; echo \"read=$line\"; \
             if (echo hi > /dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo tcp-open; else echo tcp-refused; fi; \
             echo made > out.txt; exit 5"
        );
        let (mut screen, mut control) = start(&*sb, &script, None).await;
        screen.type_bytes(b"hello\n");
        screen.wait_for("read=hello");
        let exit = control.wait().await.expect("wait");
        screen.wait_for("tcp-");
        assert!(screen.seen.contains("not-a-tty"), "{m:?}: {}", screen.seen);
        assert!(
            screen.seen.contains("tcp-refused"),
            "{m:?}: {}",
            screen.seen
        );
        assert_eq!(exit.code, Some(5));
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("out.txt")).expect("written"),
            "made\n"
        );
    }
}

/// `--mount`: nothing of the home is visible unless mounted; a mount under the home
/// shows up under the sandbox's home (bubblewrap), read-only when asked.
#[tokio::test]
async fn mounts_show_a_home_directory() {
    let Some(c) = common::best(Default::default()) else {
        return;
    };
    if c.mechanism() != Mechanism::Bubblewrap {
        eprintln!("skipped: home mounts move only under bubblewrap");
        return;
    }
    let Some(home) = std::env::var_os("HOME").map(std::path::PathBuf::from) else {
        return;
    };
    let shown = tempfile::Builder::new()
        .prefix(".safe-coder-mount-test")
        .tempdir_in(&home)
        .expect("a directory in the home");
    std::fs::write(shown.path().join("token"), "abc").expect("write");
    let name = shown
        .path()
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let tmp = tempfile::tempdir().expect("tempdir");
    let sb = open(BackendKind::Process, tmp.path(), None);
    let script = format!(
        "cat \"$HOME/{name}/token\"; echo; \
         (echo x > \"$HOME/{name}/w\") 2>/dev/null && echo writable || echo read-only; \
         ls {home}/{name} 2>/dev/null || echo host-path-hidden",
        home = home.display()
    );
    let InteractiveChild {
        terminal,
        mut control,
    } = sb
        .spawn_interactive(InteractiveRequest {
            argv: vec!["bash".into(), "-c".into(), script],
            terminal: None,
            mounts: vec![Mount {
                host: shown.path().to_path_buf(),
                path: shown.path().to_path_buf(),
                read_only: true,
            }],
            ..Default::default()
        })
        .await
        .expect("spawn");
    let mut screen = Screen::new(terminal);
    control.wait().await.expect("wait");
    screen.wait_for("host-path-hidden");
    assert!(screen.seen.contains("abc"), "{}", screen.seen);
    assert!(screen.seen.contains("read-only"), "{}", screen.seen);
    assert!(!shown.path().join("w").exists());
}

/// `copy` runs the command as a host process in the copy, with a PTY too.
#[tokio::test]
async fn copy_runs_interactive_commands() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sb = open(BackendKind::Copy, tmp.path(), None);
    let (mut screen, mut control) = start(
        &*sb,
        "test -t 1 && echo tty=$(stty size); echo $RUN_EXTRA; pwd",
        Some(SIZE),
    )
    .await;
    let exit = control.wait().await.expect("wait");
    screen.wait_for("passed");
    assert!(screen.seen.contains("tty=30 90"), "{}", screen.seen);
    assert_eq!(exit.code, Some(0));
}
