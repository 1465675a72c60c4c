//! The `process` backend through `sandbox::open` and the `Sandbox` trait: the path the
//! agent's bash tool takes. The hardening tests run with every mechanism that works
//! here (bubblewrap and the in-process fallback), so the fallback is held to the same
//! promises: no host Unix socket, no process outliving its command, the same read-only
//! toolchains and nothing else of the home. (Outliving Safe Coder: process_crash.rs.)

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{marker_processes, wait_until};
use safe_coder_sandbox::{
    BackendKind, CancellationToken, ExecOutput, ExecRequest, Mechanism, Sandbox, SandboxSpec,
};

fn request(command: &str, timeout: Duration) -> ExecRequest {
    ExecRequest {
        command: command.to_string(),
        timeout,
        max_output_bytes: 64 * 1024,
    }
}

/// A `process` sandbox over `dir` with mechanism `m` (`None`: the best here).
fn open(dir: &Path, m: Option<Mechanism>) -> Arc<dyn Sandbox> {
    let mut spec = SandboxSpec::new(dir);
    spec.mechanism = m;
    safe_coder_sandbox::open(BackendKind::Process, spec).expect("process sandbox")
}

/// The mechanisms that work here (see `common::each`).
fn mechanisms() -> Vec<Mechanism> {
    common::each(Default::default())
        .iter()
        .map(|c| c.mechanism())
        .collect()
}

async fn exec(sb: &dyn Sandbox, command: &str, timeout: Duration) -> ExecOutput {
    sb.exec(request(command, timeout), CancellationToken::new())
        .await
        .expect("exec")
}

#[tokio::test]
async fn exec_runs_confined_and_timeouts_kill_the_sandbox() {
    if common::best(Default::default()).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let sb = open(tmp.path(), None);
    assert_eq!(sb.backend(), BackendKind::Process);
    let mechanism = sb.mechanism().expect("a process sandbox has a mechanism");
    if let Some(want) = common::expected() {
        assert_eq!(mechanism, want, "auto picked the wrong confiner");
    }

    let out = exec(
        &*sb,
        "echo made > f.txt; echo home=$HOME",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(out.exit_code, Some(0), "{}", out.output);
    let real_home = std::env::var("HOME").unwrap_or_default();
    assert!(out.output.contains("home="), "{}", out.output);
    assert!(
        !out.output.contains(&format!("home={real_home}\n")),
        "{}",
        out.output
    );
    assert_eq!(sb.read_file("f.txt").await.expect("read"), b"made\n");

    let out = sb
        .exec(
            request("sleep 8675301 & sleep 8675302", Duration::from_millis(500)),
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    assert!(out.timed_out);
    assert!(
        wait_until(Duration::from_secs(10), || marker_processes("867530") == 0),
        "processes survived the timeout"
    );
}

/// A host Unix socket listener (as tmux, Docker, D-Bus or an agent run): reachable
/// without the sandbox, refused from inside with every mechanism.
#[tokio::test]
async fn a_host_unix_socket_is_unreachable() {
    // perl (in every Debian/Ubuntu base system) is the Unix-socket client.
    if !Path::new("/usr/bin/perl").is_file() {
        assert!(!common::required(), "/usr/bin/perl is needed for this test");
        eprintln!("skipped: /usr/bin/perl is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("project");
    std::fs::create_dir(&work).expect("mkdir");
    let socket = dir.path().join("host.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let client = format!(
        "/usr/bin/perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Peer => $ARGV[0]) \
         or die \"REFUSED: $!\\n\"; print \"CONNECTED\\n\"' {}",
        socket.display()
    );
    // Without the sandbox the client reaches the listener: the test can fail.
    let host = std::process::Command::new("bash")
        .arg("-c")
        .arg(&client)
        .output()
        .expect("run the client on the host");
    assert!(
        String::from_utf8_lossy(&host.stdout).contains("CONNECTED"),
        "the client cannot connect even without a sandbox: {}",
        String::from_utf8_lossy(&host.stderr)
    );
    assert!(listener.accept().is_ok());

    for m in mechanisms() {
        let sb = open(&work, Some(m));
        let out = exec(&*sb, &format!("{client} 2>&1"), Duration::from_secs(20)).await;
        eprintln!("{}: {}", m.as_str(), out.output.trim());
        assert!(
            !out.output.contains("CONNECTED"),
            "{}: {}",
            m.as_str(),
            out.output
        );
        assert!(
            out.output.contains("REFUSED"),
            "{}: {}",
            m.as_str(),
            out.output
        );
        assert!(
            listener.accept().is_err(),
            "{}: a connection reached the host listener",
            m.as_str()
        );
    }
}

/// Daemons, double forks and `setsid` end with the command, as under bubblewrap.
#[tokio::test]
async fn every_process_of_a_command_dies_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for m in mechanisms() {
        let base = 7_100_000 + std::process::id() % 100_000;
        let marker = format!("{base}{}", m as u8);
        let script = format!(
            "setsid sleep {marker}1 > /dev/null 2>&1 & \
             (sleep {marker}2 > /dev/null 2>&1 &) ; \
             nohup sleep {marker}3 > /dev/null 2>&1 & \
             setsid bash -c 'sleep {marker}4 & sleep {marker}5' > /dev/null 2>&1 & \
             sleep 0.3; echo started"
        );
        let sb = open(dir.path(), Some(m));
        let out = exec(&*sb, &script, Duration::from_secs(20)).await;
        assert!(
            out.output.contains("started"),
            "{}: {}",
            m.as_str(),
            out.output
        );
        assert!(
            wait_until(Duration::from_secs(10), || marker_processes(&marker) == 0),
            "{}: {} processes outlived their command",
            m.as_str(),
            marker_processes(&marker)
        );
    }
}

/// The toolchains under `$HOME` on PATH (here rustup's `rustc`) run with every
/// mechanism, while the rest of the home stays hidden.
#[tokio::test]
async fn home_toolchains_run_read_only_and_nothing_else_of_home_shows() {
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        eprintln!("skipped: no HOME");
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let Some(rustc) = std::env::split_paths(&path)
        .map(|d| d.join("rustc"))
        .find(|p| p.is_file())
        .filter(|p| p.starts_with(&home))
    else {
        eprintln!("skipped: no toolchain under $HOME on PATH (rustc is elsewhere or absent)");
        return;
    };
    let secret = home.join(format!(
        ".safe-coder-toolchain-secret-{}",
        std::process::id()
    ));
    std::fs::write(&secret, "HOME-SECRET-91\n").expect("secret");
    let dir = tempfile::tempdir().expect("tempdir");
    let tool_dir = rustc.parent().expect("bin dir").to_path_buf();
    for m in mechanisms() {
        let sb = open(dir.path(), Some(m));
        let script = format!(
            "rustc --version; echo rc=$?; cat {secret}; ls -a {home}; \
             touch {tool}/sc-write-test && echo WROTE; true",
            secret = secret.display(),
            home = home.display(),
            tool = tool_dir.display()
        );
        let out = exec(&*sb, &script, Duration::from_secs(60)).await;
        eprintln!("{}: {}", m.as_str(), out.output);
        assert!(
            out.output.contains("rc=0"),
            "{}: {}",
            m.as_str(),
            out.output
        );
        assert!(
            out.output.contains("rustc "),
            "{}: {}",
            m.as_str(),
            out.output
        );
        assert!(
            !out.output.contains("HOME-SECRET-91"),
            "{}: {}",
            m.as_str(),
            out.output
        );
        let listed = secret.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(
            !out.output.lines().any(|l| l.trim() == listed),
            "{}: the home is listable: {}",
            m.as_str(),
            out.output
        );
        assert!(
            !out.output.contains("WROTE"),
            "{}: {}",
            m.as_str(),
            out.output
        );
        assert!(!tool_dir.join("sc-write-test").exists());
    }
    let _ = std::fs::remove_file(&secret);
}

/// The sandbox's memory limit holds for the agent's commands on every mechanism (on
/// cgroup v1 they are forked by a thread already inside the cgroup instead of joining
/// it: see `backends/process/cgroup.rs`): a hog that would hold 512 MB is stopped at
/// 64 MB, twice (the second command is forked the same way as the first).
#[tokio::test]
async fn the_memory_limit_holds_for_every_command() {
    if common::best(Default::default()).is_none() {
        return;
    }
    for m in mechanisms() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut spec = SandboxSpec::new(tmp.path());
        spec.mechanism = Some(m);
        spec.limits.memory_mb = 64;
        let sb = safe_coder_sandbox::open(BackendKind::Process, spec).expect("sandbox");
        for _ in 0..2 {
            // tail keeps a newline-free stream in memory: it grows until a limit stops it.
            let out = exec(
                &*sb,
                "head -c 512M /dev/zero | tail >/dev/null; echo status=${PIPESTATUS[1]}",
                Duration::from_secs(120),
            )
            .await;
            assert!(out.output.contains("status="), "{m:?}: {}", out.output);
            assert!(
                !out.output.contains("status=0"),
                "{m:?}: the hog was not stopped: {}",
                out.output
            );
        }
    }
}
