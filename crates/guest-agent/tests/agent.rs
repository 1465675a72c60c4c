//! The real agent binary, serving on a Unix socket on the host (the same server code as
//! on vsock in the VM), driven through the real client of `safe-coder-vm-protocol`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use safe_coder_vm_protocol::client::{AgentClient, ClientError, ExecEvent};
use safe_coder_vm_protocol::{
    hello, ChangeKind, ErrorKind, ExecRequest, FileKind, HandshakeError, Stream, PROTOCOL_VERSION,
};
use tokio::net::UnixStream;

struct Agent {
    child: Child,
    socket: PathBuf,
    ws: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Agent {
        Self::start_speaking(PROTOCOL_VERSION)
    }

    fn start_speaking(protocol: u32) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let ws = tempfile::tempdir().expect("workspace");
        let socket = dir.path().join("agent.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_safe-coder-guest-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--workspace")
            .arg(ws.path())
            .arg("--protocol")
            .arg(protocol.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the agent");
        // The agent prints its ready line once it listens (the socket file alone
        // appears a moment before `listen`).
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("ready line");
        assert_eq!(line.trim(), safe_coder_guest_agent::init::READY_LINE);
        Agent {
            child,
            socket,
            ws,
            _dir: dir,
        }
    }

    fn root(&self) -> &Path {
        self.ws.path()
    }

    async fn client(&self) -> AgentClient<UnixStream> {
        let s = UnixStream::connect(&self.socket).await.expect("connect");
        AgentClient::connect(s, &hello("safe-coder-test"))
            .await
            .expect("handshake")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env() -> Vec<(String, String)> {
    vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("HOME".into(), "/tmp".into()),
    ]
}

fn shell(cmd: &str) -> ExecRequest {
    ExecRequest::shell(cmd, env())
}

/// Whether a process with this pid still runs (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Waits (bounded) until `pid` is gone; the bound only keeps a broken agent from hanging
/// the test. Async, so the runtime can close what the test dropped meanwhile.
async fn gone(pid: i32) -> bool {
    for _ in 0..1000 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn exec_streams_stdout_and_stderr_and_reports_the_exit_code() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut req = shell("echo out; echo err >&2; printf '%s' \"$FOO\"; pwd; exit 3");
    req.merge_stderr = false;
    req.env.push(("FOO".into(), "bar baz".into()));
    let (out, err, exit) = c
        .exec(req)
        .await
        .expect("exec")
        .collect()
        .await
        .expect("collect");
    let root = std::fs::canonicalize(agent.root()).expect("canonical");
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("out\nbar baz{}\n", root.display())
    );
    assert_eq!(String::from_utf8_lossy(&err), "err\n");
    assert_eq!(exit.code, Some(3));
    assert_eq!(
        (exit.signal, exit.timed_out, exit.cancelled),
        (None, false, false)
    );
    assert_eq!(exit.output_bytes, out.len() as u64 + err.len() as u64);
}

#[tokio::test]
async fn exec_gives_exactly_the_environment_asked_for_and_closes_stdin() {
    let agent = Agent::start();
    let c = agent.client().await;
    // `env` prints the whole environment; `cat` must see EOF at once.
    let (out, _, exit) = c
        .exec(shell("cat; env | sort"))
        .await
        .expect("exec")
        .collect()
        .await
        .expect("collect");
    let text = String::from_utf8_lossy(&out);
    let names: Vec<&str> = text.lines().filter_map(|l| l.split('=').next()).collect();
    // bash adds PWD, SHLVL and _ itself; nothing of the agent's environment leaks.
    for name in &names {
        assert!(
            ["HOME", "PATH", "PWD", "SHLVL", "_"].contains(name),
            "unexpected variable {name} in {text}"
        );
    }
    assert!(text.contains("HOME=/tmp"), "{text}");
    assert_eq!(exit.code, Some(0));
}

#[tokio::test]
async fn output_is_streamed_while_the_command_runs() {
    let agent = Agent::start();
    let c = agent.client().await;
    let marker = agent.root().join("go");
    let cmd = format!(
        "echo first; while [ ! -e '{}' ]; do sleep 0.01; done; echo second",
        marker.display()
    );
    let mut h = c.exec(shell(&cmd)).await.expect("exec");
    // The first line arrives although the command cannot end before we create the file.
    match h.next().await.expect("event") {
        Some(ExecEvent::Output(Stream::Stdout, d)) => assert_eq!(d, b"first\n"),
        other => panic!("expected the first line, got {other:?}"),
    }
    std::fs::write(&marker, b"").expect("marker");
    let (out, _, exit) = h.collect().await.expect("rest");
    assert_eq!(out, b"second\n");
    assert_eq!(exit.code, Some(0));
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_tree() {
    let agent = Agent::start();
    let c = agent.client().await;
    let pids = agent.root().join("pids");
    // A child in the group, a grandchild that made its own process group (still in
    // the session), both sleeping far past the timeout.
    let cmd = format!(
        "sleep 300 & echo $! > '{p}'; setsid -w true; (set -m; sleep 301 & echo $! >> '{p}'; wait) & wait",
        p = pids.display()
    );
    let mut req = shell(&cmd);
    req.timeout_ms = Some(700);
    let (_, _, exit) = c
        .exec(req)
        .await
        .expect("exec")
        .collect()
        .await
        .expect("collect");
    assert!(exit.timed_out, "{exit:?}");
    assert_eq!((exit.code, exit.signal), (None, Some(9)));
    let text = std::fs::read_to_string(&pids).expect("pids");
    let pids: Vec<i32> = text
        .lines()
        .map(|l| l.trim().parse().expect("pid"))
        .collect();
    assert_eq!(pids.len(), 2, "{text}");
    for pid in pids {
        assert!(gone(pid).await, "process {pid} outlived the timeout");
    }
}

#[tokio::test]
async fn a_cancel_reaches_a_running_exec_and_kills_its_group() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut h = c
        .exec(shell("echo started; sleep 300 & sleep 300; echo never"))
        .await
        .expect("exec");
    match h.next().await.expect("event") {
        Some(ExecEvent::Output(_, d)) => assert_eq!(d, b"started\n"),
        other => panic!("expected output, got {other:?}"),
    }
    let leader = h.pid as i32;
    c.cancel(h.id).await.expect("cancel");
    let (out, _, exit) = h.collect().await.expect("collect");
    assert!(exit.cancelled && !exit.timed_out, "{exit:?}");
    assert_eq!(exit.signal, Some(9));
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert!(gone(leader).await);
    // A cancel for an exec that is not running is not an error.
    c.cancel(9_999).await.expect("late cancel");
}

#[tokio::test]
async fn background_processes_holding_the_output_are_killed_after_the_exit() {
    let agent = Agent::start();
    let c = agent.client().await;
    let pidfile = agent.root().join("bg");
    let cmd = format!("sleep 300 & echo $! > '{}'; echo done", pidfile.display());
    let (out, _, exit) = c
        .exec(shell(&cmd))
        .await
        .expect("exec")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out, b"done\n");
    assert_eq!(exit.code, Some(0), "the command itself exited normally");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    assert!(gone(pid).await, "the background sleep was killed");
}

#[tokio::test]
async fn output_beyond_the_limit_is_counted_not_sent() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut req = shell("head -c 200000 /dev/zero");
    req.output_limit = Some(1000);
    let (out, _, exit) = c
        .exec(req)
        .await
        .expect("exec")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out.len(), 1000);
    assert_eq!(exit.output_bytes, 200_000);
}

#[tokio::test]
async fn a_program_that_cannot_start_is_an_error_not_an_exit() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut req = shell("true");
    req.argv = vec!["no-such-program-xyz".into()];
    match c.exec(req).await {
        Err(ClientError::Agent(e)) => {
            assert_eq!(e.kind, ErrorKind::SpawnFailed);
            assert!(e.message.contains("no-such-program-xyz"), "{e}");
        }
        Err(e) => panic!("expected spawn_failed, got {e}"),
        Ok(_) => panic!("expected spawn_failed, got a running exec"),
    }
    let mut req = shell("true");
    req.cwd = "missing/dir".into();
    assert!(
        matches!(c.exec(req).await, Err(ClientError::Agent(e)) if e.kind == ErrorKind::SpawnFailed)
    );
    let mut req = shell("true");
    req.cwd = "../..".into();
    assert!(
        matches!(c.exec(req).await, Err(ClientError::Agent(e)) if e.kind == ErrorKind::OutsideWorkspace)
    );
}

#[tokio::test]
async fn files_are_written_read_listed_and_removed_under_the_workspace() {
    let agent = Agent::start();
    let c = agent.client().await;
    c.write_file("a/b/c.txt", b"hello", None)
        .await
        .expect("write creates parents");
    assert_eq!(
        std::fs::read(agent.root().join("a/b/c.txt")).expect("on disk"),
        b"hello"
    );
    assert_eq!(
        c.read_file("a/b/c.txt").await.expect("read"),
        (b"hello".to_vec(), 0o644)
    );
    assert_eq!(
        c.read_file("/workspace/a/b/c.txt")
            .await
            .expect("absolute")
            .0,
        b"hello"
    );

    // The executable bit survives a rewrite; an explicit mode wins.
    let script = agent.root().join("run.sh");
    std::fs::write(&script, b"#!/bin/sh\n").expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    c.write_file("run.sh", b"#!/bin/sh\necho hi\n", None)
        .await
        .expect("rewrite");
    let st = c.stat("run.sh").await.expect("stat").expect("exists");
    assert!(
        st.is_executable() && st.kind == FileKind::File && st.size == 18,
        "{st:?}"
    );
    c.write_file("run.sh", b"x", Some(0o600))
        .await
        .expect("mode");
    assert_eq!(
        c.stat("run.sh").await.expect("stat").expect("exists").mode,
        0o600
    );

    assert_eq!(c.stat("nope").await.expect("stat"), None);
    assert_eq!(c.stat("nope/deeper").await.expect("stat"), None);
    let names: Vec<(String, FileKind)> = c
        .list_dir("")
        .await
        .expect("list")
        .into_iter()
        .map(|e| (e.name, e.kind))
        .collect();
    assert_eq!(
        names,
        vec![
            ("a".into(), FileKind::Dir),
            ("run.sh".into(), FileKind::File)
        ]
    );

    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    c.write_file("big.bin", &big, None)
        .await
        .expect("big write");
    assert_eq!(c.read_file("big.bin").await.expect("big read").0, big);

    c.remove("a").await.expect("remove tree");
    assert!(!agent.root().join("a").exists());
    c.remove("a").await.expect("removing nothing is fine");
}

#[tokio::test]
async fn paths_cannot_leave_the_workspace() {
    let agent = Agent::start();
    let c = agent.client().await;
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(outside.path().join("secret"), b"s").expect("secret");
    std::os::unix::fs::symlink(outside.path(), agent.root().join("escape")).expect("symlink");
    std::os::unix::fs::symlink("inside.txt", agent.root().join("link")).expect("symlink");
    std::fs::write(agent.root().join("inside.txt"), b"in").expect("inside");
    for path in [
        "../x",
        "/etc/passwd",
        "a/../../x",
        "escape/secret",
        "/workspacex/y",
    ] {
        match c.read_file(path).await {
            Err(ClientError::Agent(e)) => {
                assert_eq!(e.kind, ErrorKind::OutsideWorkspace, "{path}: {e}")
            }
            other => panic!("{path}: expected outside_workspace, got {other:?}"),
        }
    }
    assert!(matches!(
        c.write_file("escape/new", b"x", None).await,
        Err(ClientError::Agent(e)) if e.kind == ErrorKind::OutsideWorkspace
    ));
    assert!(!outside.path().join("new").exists());
    // A symlink inside is followed for reads, and reported as a symlink by stat.
    assert_eq!(c.read_file("link").await.expect("read via link").0, b"in");
    let st = c.stat("link").await.expect("stat").expect("exists");
    assert_eq!(
        (st.kind, st.target.as_deref()),
        (FileKind::Symlink, Some("inside.txt"))
    );
}

#[tokio::test]
async fn directories_and_fifos_are_refused_by_read_file() {
    let agent = Agent::start();
    let c = agent.client().await;
    std::fs::create_dir(agent.root().join("d")).expect("dir");
    let fifo = agent.root().join("fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status.success());
    assert!(
        matches!(c.read_file("d").await, Err(ClientError::Agent(e)) if e.kind == ErrorKind::IsDirectory)
    );
    assert!(
        matches!(c.read_file("fifo").await, Err(ClientError::Agent(e)) if e.kind == ErrorKind::NotRegularFile)
    );
    assert!(
        matches!(c.read_file("missing").await, Err(ClientError::Agent(e)) if e.kind == ErrorKind::NotFound)
    );
}

#[tokio::test]
async fn changes_since_a_mark_list_written_deleted_and_mode_changed_files() {
    let agent = Agent::start();
    let c = agent.client().await;
    let root = agent.root();
    std::fs::create_dir_all(root.join("src/old")).expect("dirs");
    for f in [
        "keep.txt",
        "edit.txt",
        "chmod.sh",
        "src/old/gone.rs",
        "same-size.txt",
    ] {
        std::fs::write(root.join(f), b"v1\n").expect("file");
    }
    let mark = c.set_mark().await.expect("mark");
    let (none, _) = c.changes_since(mark, false).await.expect("no changes");
    assert!(none.is_empty(), "{none:?}");

    // Same size, written right after the mark (the racy case), through a command.
    let cmd = "printf 'v2\\n' > same-size.txt; echo more >> edit.txt; chmod +x chmod.sh; \
               rm -r src/old; mkdir -p new/dir; echo n > new/dir/file; ln -s keep.txt new/link";
    let (_, _, exit) = c
        .exec(shell(cmd))
        .await
        .expect("exec")
        .collect()
        .await
        .expect("collect");
    assert_eq!(exit.code, Some(0));
    let (changes, new_mark) = c.changes_since(mark, true).await.expect("changes");
    let got: Vec<(&str, ChangeKind)> = changes
        .iter()
        .map(|ch| (ch.path.as_str(), ch.kind))
        .collect();
    assert_eq!(
        got,
        vec![
            ("chmod.sh", ChangeKind::ModeChanged),
            ("edit.txt", ChangeKind::Written),
            ("new/dir/file", ChangeKind::Written),
            ("new/link", ChangeKind::Written),
            ("same-size.txt", ChangeKind::Written),
            ("src/old/gone.rs", ChangeKind::Deleted),
        ]
    );
    let link = changes
        .iter()
        .find(|ch| ch.path == "new/link")
        .expect("link");
    assert_eq!(
        link.stat.as_ref().and_then(|s| s.target.as_deref()),
        Some("keep.txt")
    );
    assert!(changes
        .iter()
        .find(|ch| ch.path == "chmod.sh")
        .and_then(|ch| ch.stat.as_ref())
        .expect("stat")
        .is_executable());

    // The new mark starts from here; the old one still answers the same.
    let new_mark = new_mark.expect("a new mark");
    assert!(c
        .changes_since(new_mark, false)
        .await
        .expect("nothing new")
        .0
        .is_empty());
    c.write_file("keep.txt", b"v2\n", None)
        .await
        .expect("write");
    let (after, _) = c.changes_since(new_mark, false).await.expect("changes");
    assert_eq!(
        after.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(),
        vec!["keep.txt"]
    );
    assert_eq!(
        c.changes_since(mark, false)
            .await
            .expect("old mark")
            .0
            .len(),
        7
    );

    match c.changes_since(12345, false).await {
        Err(ClientError::Agent(e)) => assert_eq!(e.kind, ErrorKind::UnknownMark),
        other => panic!("expected unknown_mark, got {other:?}"),
    }
}

#[tokio::test]
async fn requests_run_concurrently_on_one_connection() {
    let agent = Agent::start();
    let c = std::sync::Arc::new(agent.client().await);
    let marker = agent.root().join("release");
    let cmd = format!(
        "while [ ! -e '{}' ]; do sleep 0.01; done; echo released",
        marker.display()
    );
    let h = c.exec(shell(&cmd)).await.expect("exec");
    // While the exec waits, other requests are answered, including a write that
    // releases it.
    c.ping().await.expect("ping");
    let usage = c.usage().await.expect("usage");
    assert_eq!(usage.running_execs, 1);
    assert!(usage.memory_total_bytes > 0 && usage.cpus >= 1);
    c.write_file("release", b"", None).await.expect("write");
    let (out, _, _) = h.collect().await.expect("collect");
    assert_eq!(out, b"released\n");
}

#[tokio::test]
async fn a_host_of_another_version_gets_both_versions_named() {
    let agent = Agent::start_speaking(PROTOCOL_VERSION + 1);
    let s = UnixStream::connect(&agent.socket).await.expect("connect");
    match AgentClient::connect(s, &hello("safe-coder-test")).await {
        Err(ClientError::Handshake(HandshakeError::VersionMismatch { host, agent, .. })) => {
            assert_eq!((host, agent), (PROTOCOL_VERSION, PROTOCOL_VERSION + 1));
        }
        Err(e) => panic!("expected a version mismatch, got {e}"),
        Ok(_) => panic!("expected a version mismatch, got a connection"),
    }
    let s = UnixStream::connect(&agent.socket).await.expect("connect");
    let err = AgentClient::connect(s, &hello("safe-coder-test"))
        .await
        .err()
        .expect("error");
    let text = err.to_string();
    assert!(
        text.contains(&format!("version {}", PROTOCOL_VERSION + 1)),
        "{text}"
    );
    assert!(
        text.contains(&format!("version {PROTOCOL_VERSION}")),
        "{text}"
    );
    assert!(text.contains("safe-coder-guest-agent"), "{text}");
}

#[tokio::test]
async fn an_unknown_request_gets_an_error_and_the_connection_goes_on() {
    use safe_coder_vm_protocol::nonblocking::{host_handshake, read_frame, write_frame};
    use safe_coder_vm_protocol::{Request, Response};
    let agent = Agent::start();
    let mut s = UnixStream::connect(&agent.socket).await.expect("connect");
    host_handshake(&mut s, &hello("raw"))
        .await
        .expect("handshake");
    write_frame(&mut s, 5, &serde_json::json!({"op": "teleport"}), b"")
        .await
        .expect("write");
    let f = read_frame::<_, Response>(&mut s)
        .await
        .expect("read")
        .expect("frame");
    match f.body {
        Response::Error(e) => assert_eq!((f.id, e.kind), (5, ErrorKind::InvalidRequest)),
        other => panic!("expected an error, got {other:?}"),
    }
    write_frame(&mut s, 6, &Request::Ping, b"")
        .await
        .expect("write");
    let f = read_frame::<_, Response>(&mut s)
        .await
        .expect("read")
        .expect("frame");
    assert_eq!((f.id, f.body), (6, Response::Pong));
}

#[tokio::test]
async fn a_lost_connection_kills_its_running_commands() {
    let agent = Agent::start();
    let c = agent.client().await;
    let h = c.exec(shell("sleep 300")).await.expect("exec");
    let pid = h.pid as i32;
    assert!(alive(pid));
    drop(h);
    drop(c);
    assert!(gone(pid).await, "the command outlived its connection");
}

#[tokio::test]
async fn shutdown_answers_then_kills_commands_and_ends_the_agent() {
    let mut agent = Agent::start();
    let c = agent.client().await;
    let h = c.exec(shell("sleep 300")).await.expect("exec");
    let pid = h.pid as i32;
    c.shutdown().await.expect("shutdown acknowledged");
    let status = agent.child.wait().expect("agent exits");
    assert!(status.success(), "{status}");
    assert!(gone(pid).await);
    assert!(matches!(
        c.ping().await,
        Err(ClientError::Closed | ClientError::Frame(_))
    ));
}

#[tokio::test]
async fn an_agent_that_is_not_the_vms_init_leaves_the_clock_alone() {
    let agent = Agent::start();
    let c = agent.client().await;
    match c.set_clock(0).await {
        Err(ClientError::Agent(e)) => assert_eq!(e.kind, ErrorKind::InvalidRequest, "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(now > 1_600_000_000, "the host clock was not set to 1970");
}

/// Reads an exec's output until `want` appears in it (or the exec ends).
async fn output_until(h: &mut safe_coder_vm_protocol::client::ExecHandle, want: &str) -> String {
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(want) {
        match h.next().await.expect("event") {
            Some(ExecEvent::Output(_, d)) => seen.extend_from_slice(&d),
            Some(ExecEvent::Exited(exit)) => panic!(
                "ended ({exit:?}) before printing {want:?}: {}",
                String::from_utf8_lossy(&seen)
            ),
            None => panic!("the stream ended before {want:?}"),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Reads the rest of an exec: its output and how it ended.
async fn finish(
    h: &mut safe_coder_vm_protocol::client::ExecHandle,
) -> (String, safe_coder_vm_protocol::ExecExit) {
    let mut seen = Vec::new();
    loop {
        match h.next().await.expect("event") {
            Some(ExecEvent::Output(_, d)) => seen.extend_from_slice(&d),
            Some(ExecEvent::Exited(exit)) => {
                return (String::from_utf8_lossy(&seen).into_owned(), exit)
            }
            None => panic!("the stream ended without an exit"),
        }
    }
}

fn interactive(cmd: &str, terminal: Option<(u16, u16)>) -> safe_coder_vm_protocol::InteractiveExec {
    let mut env = env();
    env.push(("TERM".into(), "xterm".into()));
    safe_coder_vm_protocol::InteractiveExec {
        argv: vec!["bash".into(), "-c".into(), cmd.into()],
        env,
        cwd: String::new(),
        terminal: terminal.map(|(rows, cols)| safe_coder_vm_protocol::TermSize { rows, cols }),
        merge_stderr: false,
    }
}

#[tokio::test]
async fn the_agent_says_it_has_interactive_execs() {
    let agent = Agent::start();
    let c = agent.client().await;
    assert_eq!(
        c.features().await.expect("features"),
        [safe_coder_vm_protocol::FEATURE_INTERACTIVE]
    );
}

#[tokio::test]
async fn an_interactive_exec_has_a_terminal_that_takes_input_resizes_and_ctrl_c() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut h = c
        .exec_interactive(interactive(
            "tty -s && echo is-a-tty; stty size; read line; echo got:$line; read line; stty size; echo ready; sleep 300",
            Some((24, 80)),
        ))
        .await
        .expect("start");
    let seen = output_until(&mut h, "24 80").await;
    assert!(seen.contains("is-a-tty"), "{seen}");
    c.stdin(h.id, b"hello\r").await.expect("stdin");
    output_until(&mut h, "got:hello").await;
    c.resize(h.id, 40, 100).await.expect("resize");
    c.stdin(h.id, b"\r").await.expect("stdin");
    output_until(&mut h, "40 100").await;
    output_until(&mut h, "ready").await;
    // Ctrl+C through the terminal: SIGINT for the foreground group (bash and its sleep).
    c.stdin(h.id, b"\x03").await.expect("ctrl-c");
    let (_, exit) = finish(&mut h).await;
    assert_eq!(exit.signal, Some(SIGINT), "{exit:?}");
    assert!(!exit.cancelled, "{exit:?}");
}

const SIGINT: i32 = 2;

#[tokio::test]
async fn an_interactive_exec_without_a_terminal_uses_pipes_and_reads_to_the_end_of_input() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut h = c
        .exec_interactive(interactive(
            "tty -s || echo no-tty; wc -c; echo oops >&2; exit 7",
            None,
        ))
        .await
        .expect("start");
    c.stdin(h.id, b"12345").await.expect("stdin");
    c.stdin(h.id, b"678").await.expect("stdin");
    c.stdin(h.id, b"").await.expect("end of input");
    let (mut out, mut err) = (String::new(), String::new());
    let exit = loop {
        match h.next().await.expect("event") {
            Some(ExecEvent::Output(Stream::Stdout, d)) => {
                out.push_str(&String::from_utf8_lossy(&d))
            }
            Some(ExecEvent::Output(Stream::Stderr, d)) => {
                err.push_str(&String::from_utf8_lossy(&d))
            }
            Some(ExecEvent::Exited(exit)) => break exit,
            None => panic!("no exit"),
        }
    };
    assert_eq!(out, "no-tty\n8\n");
    assert_eq!(err, "oops\n");
    assert_eq!(exit.code, Some(7));
    // Input to an exec that ended is refused, not lost silently.
    let e = c.stdin(h.id, b"late").await.expect_err("ended");
    assert!(e.to_string().contains("no interactive exec"), "{e}");
}

#[tokio::test]
async fn an_interactive_exec_dies_with_its_whole_group_on_cancel_and_on_a_lost_connection() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut h = c
        .exec_interactive(interactive("sleep 300 & echo $!; wait", Some((24, 80))))
        .await
        .expect("start");
    let seen = output_until(&mut h, "\n").await;
    let child: i32 = seen.trim().parse().expect("pid");
    assert!(alive(child));
    c.cancel(h.id).await.expect("cancel");
    let (_, exit) = finish(&mut h).await;
    assert!(exit.cancelled && exit.signal == Some(9), "{exit:?}");
    assert!(
        gone(child).await,
        "the background sleep outlived the cancel"
    );

    let c2 = agent.client().await;
    let mut h = c2
        .exec_interactive(interactive("sleep 300 & echo $!; wait", None))
        .await
        .expect("start");
    let seen = output_until(&mut h, "\n").await;
    let child: i32 = seen.trim().parse().expect("pid");
    let leader = h.pid as i32;
    drop(h);
    drop(c2);
    assert!(gone(child).await, "the command outlived its connection");
    assert!(gone(leader).await, "the command outlived its connection");
}

#[tokio::test]
async fn the_agent_runs_itself_by_name_wherever_it_lives() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut req = interactive("", None);
    req.argv = vec!["safe-coder-guest-agent".into(), "--version".into()];
    let mut h = c.exec_interactive(req).await.expect("start");
    let (out, exit) = finish(&mut h).await;
    assert_eq!(exit.code, Some(0), "{out}");
    assert!(out.starts_with("safe-coder-guest-agent "), "{out}");
}
