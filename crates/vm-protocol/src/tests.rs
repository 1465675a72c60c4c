use std::io::{Cursor, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;

use super::*;

fn roundtrip<T>(id: RequestId, body: T, data: &[u8]) -> Frame<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut buf = Vec::new();
    write_frame(&mut buf, id, &body, data).expect("write");
    let mut r = Cursor::new(buf);
    let frame = read_frame::<_, T>(&mut r).expect("read").expect("a frame");
    assert!(
        read_frame::<_, T>(&mut r).expect("eof").is_none(),
        "nothing after the frame"
    );
    frame
}

fn all_requests() -> Vec<Request> {
    vec![
        Request::Ping,
        Request::Exec(ExecRequest {
            argv: vec!["bash".into(), "-c".into(), "echo 'a\"b' \u{e9}".into()],
            env: vec![("PATH".into(), "/usr/bin".into()), ("A".into(), "".into())],
            cwd: "src".into(),
            timeout_ms: Some(1500),
            merge_stderr: false,
            output_limit: Some(10),
        }),
        Request::Cancel { exec: 7 },
        Request::ReadFile { path: "a/b".into() },
        Request::WriteFile {
            path: "x".into(),
            mode: Some(0o755),
        },
        Request::WriteFile {
            path: "y".into(),
            mode: None,
        },
        Request::Stat { path: "".into() },
        Request::ListDir { path: ".".into() },
        Request::Remove { path: "d".into() },
        Request::SetMark,
        Request::ChangesSince {
            mark: 3,
            set_mark: true,
        },
        Request::Usage,
        Request::SetClock {
            unix_ms: 1_796_000_000_123,
        },
        Request::Shutdown,
        Request::Features,
        Request::ExecInteractive(InteractiveExec {
            argv: vec!["codex".into()],
            env: vec![("TERM".into(), "xterm".into())],
            cwd: String::new(),
            terminal: Some(TermSize { rows: 24, cols: 80 }),
            merge_stderr: false,
        }),
        Request::ExecInteractive(InteractiveExec {
            argv: vec!["cat".into()],
            env: vec![],
            cwd: "src".into(),
            terminal: None,
            merge_stderr: true,
        }),
        Request::Stdin { exec: 3 },
        Request::Resize {
            exec: 3,
            rows: 50,
            cols: 132,
        },
    ]
}

fn all_responses() -> Vec<Response> {
    let stat = FileStat {
        kind: FileKind::Symlink,
        size: 3,
        mode: 0o777,
        target: Some("../x".into()),
    };
    vec![
        Response::Pong,
        Response::Done,
        Response::ExecStarted { pid: 42 },
        Response::Output {
            stream: Stream::Stderr,
        },
        Response::Exited(ExecExit {
            code: None,
            signal: Some(9),
            timed_out: true,
            cancelled: false,
            output_bytes: 1 << 40,
            duration_ms: 5,
        }),
        Response::FileData { mode: 0o644 },
        Response::Stat { stat: None },
        Response::Stat {
            stat: Some(stat.clone()),
        },
        Response::Entries {
            entries: vec![DirEntry {
                name: "f".into(),
                kind: FileKind::File,
                size: 1,
                mode: 0o600,
            }],
        },
        Response::Marked { mark: 1 },
        Response::Changes {
            changes: vec![
                Change {
                    path: "a".into(),
                    kind: ChangeKind::Written,
                    stat: Some(stat),
                },
                Change {
                    path: "b".into(),
                    kind: ChangeKind::Deleted,
                    stat: None,
                },
            ],
            mark: Some(2),
        },
        Response::Usage(UsageReport {
            memory_total_bytes: 512 << 20,
            memory_available_bytes: 400 << 20,
            cpus: 2,
            cpu_busy_ms: 10,
            cpu_total_ms: 100,
            uptime_ms: 50,
            running_execs: 1,
        }),
        Response::Features {
            features: vec![FEATURE_INTERACTIVE.into()],
        },
        Response::Error(AgentError::new(ErrorKind::NotFound, "file not found: x")),
    ]
}

#[test]
fn the_interactive_requests_have_the_documented_shape() {
    let json = |r: &Request| serde_json::to_value(r).expect("json");
    assert_eq!(
        json(&Request::ExecInteractive(InteractiveExec {
            argv: vec!["sh".into()],
            env: vec![("A".into(), "b".into())],
            cwd: String::new(),
            terminal: Some(TermSize { rows: 24, cols: 80 }),
            merge_stderr: false,
        })),
        serde_json::json!({"op": "exec_interactive", "argv": ["sh"], "env": [["A", "b"]],
            "cwd": "", "terminal": {"rows": 24, "cols": 80}, "merge_stderr": false})
    );
    assert_eq!(
        json(&Request::Resize {
            exec: 4,
            rows: 1,
            cols: 2
        }),
        serde_json::json!({"op": "resize", "exec": 4, "rows": 1, "cols": 2})
    );
    assert_eq!(
        json(&Request::Stdin { exec: 4 }),
        serde_json::json!({"op": "stdin", "exec": 4})
    );
    assert_eq!(
        json(&Request::Features),
        serde_json::json!({"op": "features"})
    );
}

#[test]
fn every_message_survives_a_frame_with_and_without_data() {
    for (i, req) in all_requests().into_iter().enumerate() {
        let data = vec![i as u8; i * 5000];
        let f = roundtrip(i as u64 + 1, req.clone(), &data);
        assert_eq!(f, Frame::with_data(i as u64 + 1, req, data));
    }
    for (i, resp) in all_responses().into_iter().enumerate() {
        let f = roundtrip(u64::MAX - i as u64, resp.clone(), &[0, 255, 10]);
        assert_eq!(
            f,
            Frame::with_data(u64::MAX - i as u64, resp, vec![0, 255, 10])
        );
    }
}

#[test]
fn the_wire_format_is_the_documented_one() {
    let mut buf = Vec::new();
    write_frame(&mut buf, 5, &Request::ReadFile { path: "a".into() }, b"xy").expect("write");
    let header = br#"{"id":5,"body":{"op":"read_file","path":"a"}}"#;
    let mut want = Vec::new();
    want.extend_from_slice(&((4 + header.len() + 2) as u32).to_be_bytes());
    want.extend_from_slice(&(header.len() as u32).to_be_bytes());
    want.extend_from_slice(header);
    want.extend_from_slice(b"xy");
    assert_eq!(buf, want);
}

#[test]
fn a_frame_split_across_many_reads_is_reassembled() {
    /// A reader that hands out one byte per read.
    struct Trickle(Cursor<Vec<u8>>);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }
    let mut buf = Vec::new();
    write_frame(&mut buf, 1, &Request::Usage, b"abc").expect("write");
    write_frame(&mut buf, 2, &Request::Ping, b"").expect("write");
    let mut r = Trickle(Cursor::new(buf));
    let a = read_frame::<_, Request>(&mut r).expect("a").expect("frame");
    let b = read_frame::<_, Request>(&mut r).expect("b").expect("frame");
    assert_eq!((a.id, a.body, a.data), (1, Request::Usage, b"abc".to_vec()));
    assert_eq!((b.id, b.body), (2, Request::Ping));
}

#[test]
fn a_truncated_frame_is_an_error_not_a_clean_end() {
    let mut buf = Vec::new();
    write_frame(&mut buf, 1, &Request::Ping, b"data").expect("write");
    for cut in 1..buf.len() {
        let err = read_frame::<_, Request>(&mut Cursor::new(&buf[..cut]))
            .expect_err("a cut frame is an error");
        assert!(matches!(err, FrameError::Truncated), "cut at {cut}: {err}");
    }
}

#[test]
fn oversized_and_malformed_frames_are_refused_before_allocating() {
    let mut huge = Vec::new();
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    huge.extend_from_slice(&10u32.to_be_bytes());
    let err = read_frame::<_, Request>(&mut Cursor::new(huge)).expect_err("too large");
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");

    let mut bad = Vec::new();
    bad.extend_from_slice(&8u32.to_be_bytes());
    bad.extend_from_slice(&100u32.to_be_bytes());
    let err = read_frame::<_, Request>(&mut Cursor::new(bad)).expect_err("header > frame");
    assert!(matches!(err, FrameError::Malformed(_)), "{err}");

    let mut garbage = Vec::new();
    garbage.extend_from_slice(&9u32.to_be_bytes());
    garbage.extend_from_slice(&5u32.to_be_bytes());
    garbage.extend_from_slice(b"hello");
    let err = read_frame::<_, Request>(&mut Cursor::new(garbage)).expect_err("not json");
    assert!(matches!(err, FrameError::Malformed(_)), "{err}");
}

#[test]
fn an_unknown_op_is_a_decode_error_that_keeps_the_request_id() {
    let mut buf = Vec::new();
    let body = serde_json::json!({"op": "teleport", "where": "mars"});
    write_frame(&mut buf, 77, &body, b"").expect("write");
    let err = read_frame::<_, Request>(&mut Cursor::new(buf)).expect_err("unknown op");
    match err {
        FrameError::Decode { id, .. } => assert_eq!(id, Some(77)),
        other => panic!("expected a decode error, got {other}"),
    }
}

#[test]
fn an_unknown_error_kind_from_a_newer_agent_decodes_as_other() {
    let body = serde_json::json!({"reply": "error", "kind": "quota_exceeded", "message": "m"});
    let mut buf = Vec::new();
    write_frame(&mut buf, 1, &body, b"").expect("write");
    let f = read_frame::<_, Response>(&mut Cursor::new(buf))
        .expect("decodes")
        .expect("frame");
    assert_eq!(
        f.body,
        Response::Error(AgentError::new(ErrorKind::Other, "m"))
    );
}

#[test]
fn a_frame_over_the_limit_is_refused_when_writing() {
    let data = vec![0u8; MAX_FRAME_BYTES];
    let err = write_frame(&mut Vec::new(), 1, &Request::Ping, &data).expect_err("too big");
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
}

fn handshake_pair(
    host_version: u32,
    agent_version: u32,
) -> (Result<Hello, HandshakeError>, Result<Hello, HandshakeError>) {
    let (mut h, mut a) = UnixStream::pair().expect("pair");
    let agent = thread::spawn(move || {
        let ours = Hello {
            protocol: agent_version,
            software: "agent-x".into(),
        };
        agent_handshake(&mut a, &ours)
    });
    let ours = Hello {
        protocol: host_version,
        software: "host-y".into(),
    };
    let host = host_handshake(&mut h, &ours);
    (host, agent.join().expect("agent thread"))
}

#[test]
fn the_handshake_succeeds_between_equal_versions() {
    let (host, agent) = handshake_pair(PROTOCOL_VERSION, PROTOCOL_VERSION);
    assert_eq!(host.expect("host side").software, "agent-x");
    assert_eq!(agent.expect("agent side").software, "host-y");
}

#[test]
fn a_version_mismatch_names_both_versions_on_both_sides() {
    let (host, agent) = handshake_pair(1, 9);
    for (side, result) in [("host", host), ("agent", agent)] {
        let err = result.expect_err("mismatch");
        let text = err.to_string();
        assert!(
            matches!(
                err,
                HandshakeError::VersionMismatch {
                    host: 1,
                    agent: 9,
                    ..
                }
            ),
            "{side}: {text}"
        );
        assert!(text.contains("version 9 (agent-x)"), "{side}: {text}");
        assert!(text.contains("version 1 (host-y)"), "{side}: {text}");
        assert!(text.contains("sandbox image build"), "{side}: {text}");
    }
}

#[test]
fn a_peer_that_closes_or_skips_the_hello_is_reported() {
    let (mut h, a) = UnixStream::pair().expect("pair");
    drop(a);
    let err = host_handshake(&mut h, &hello("host")).expect_err("closed");
    assert!(
        matches!(
            err,
            HandshakeError::Closed | HandshakeError::Frame(FrameError::Io(_))
        ),
        "{err}"
    );

    let (mut h, mut a) = UnixStream::pair().expect("pair");
    write_frame(&mut a, 3, &hello("agent"), b"").expect("write");
    let err = host_handshake(&mut h, &hello("host")).expect_err("not hello");
    assert!(matches!(err, HandshakeError::NotHello(3)), "{err}");
}

/// A stand-in for vhost-device-vsock's host socket: answers `CONNECT` as given.
fn fake_hybrid(
    reply: &'static [u8],
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    thread::JoinHandle<String>,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let t = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).expect("read") == 1 {
            line.push(b[0]);
            if b[0] == b'\n' {
                break;
            }
        }
        s.write_all(reply).expect("reply");
        if reply.starts_with(b"OK") {
            // then the stream is the guest's: echo one frame back
            let f = read_frame::<_, Request>(&mut s)
                .expect("frame")
                .expect("some");
            write_frame(&mut s, f.id, &Response::Pong, b"").expect("pong");
        }
        String::from_utf8(line).expect("utf8")
    });
    (dir, path, t)
}

#[test]
fn hybrid_connect_sends_connect_and_hands_over_the_stream() {
    let (_dir, path, t) = fake_hybrid(b"OK 1073741824\n");
    let mut s = hybrid::connect(&path, AGENT_PORT).expect("connect");
    write_frame(&mut s, 9, &Request::Ping, b"").expect("ping");
    let f = read_frame::<_, Response>(&mut s)
        .expect("read")
        .expect("frame");
    assert_eq!((f.id, f.body), (9, Response::Pong));
    assert_eq!(t.join().expect("server"), format!("CONNECT {AGENT_PORT}\n"));
}

#[test]
fn hybrid_connect_reports_no_listener_and_bad_replies() {
    let (_dir, path, t) = fake_hybrid(b"");
    let err = hybrid::connect(&path, 5).expect_err("no listener");
    assert!(matches!(err, HybridError::NoListener { port: 5 }), "{err}");
    t.join().expect("server");

    let (_dir, path, t) = fake_hybrid(b"NOPE\n");
    let err = hybrid::connect(&path, 5).expect_err("bad reply");
    assert!(err.to_string().contains("NOPE"), "{err}");
    t.join().expect("server");

    let err =
        hybrid::connect(std::path::Path::new("/nonexistent/v.sock"), 5).expect_err("no socket");
    assert!(matches!(err, HybridError::Connect { .. }), "{err}");
}

#[test]
fn usage_reports_compute_memory_and_cpu_percent() {
    let a = UsageReport {
        memory_total_bytes: 100,
        memory_available_bytes: 30,
        cpus: 2,
        cpu_busy_ms: 100,
        cpu_total_ms: 1000,
        ..Default::default()
    };
    let b = UsageReport {
        cpu_busy_ms: 600,
        cpu_total_ms: 2000,
        ..a.clone()
    };
    assert_eq!(a.memory_used_bytes(), 70);
    assert_eq!(b.cpu_percent_since(&a), Some(100.0));
    assert_eq!(a.cpu_percent_since(&a), None);
    assert_eq!(a.cpu_percent_since(&b), None);
}

#[cfg(feature = "tokio")]
mod async_tests {
    use super::*;

    #[tokio::test]
    async fn async_frames_and_handshake_interoperate_with_blocking_ones() {
        let (h, a) = UnixStream::pair().expect("pair");
        let agent = thread::spawn(move || {
            let mut a = a;
            agent_handshake(&mut a, &hello("agent")).expect("agent handshake");
            let f = read_frame::<_, Request>(&mut a)
                .expect("read")
                .expect("frame");
            write_frame(&mut a, f.id, &Response::FileData { mode: 0o600 }, &f.data).expect("write");
        });
        h.set_nonblocking(true).expect("nonblocking");
        let mut h = tokio::net::UnixStream::from_std(h).expect("tokio stream");
        let agent_hello = nonblocking::host_handshake(&mut h, &hello("host"))
            .await
            .expect("handshake");
        assert!(agent_hello.software.starts_with("agent"));
        let big = vec![7u8; 100_000];
        nonblocking::write_frame(&mut h, 3, &Request::Ping, &big)
            .await
            .expect("write");
        let f = nonblocking::read_frame::<_, Response>(&mut h)
            .await
            .expect("read")
            .expect("frame");
        assert_eq!(
            (f.id, f.body, f.data),
            (3, Response::FileData { mode: 0o600 }, big)
        );
        agent.join().expect("agent");
        assert!(nonblocking::read_frame::<_, Response>(&mut h)
            .await
            .expect("eof")
            .is_none());
    }

    #[tokio::test]
    async fn async_hybrid_connect() {
        let (_dir, path, t) = fake_hybrid(b"OK 12\n");
        let mut s = nonblocking::connect_hybrid(&path, 1024)
            .await
            .expect("connect");
        nonblocking::write_frame(&mut s, 4, &Request::Ping, b"")
            .await
            .expect("write");
        let f = nonblocking::read_frame::<_, Response>(&mut s)
            .await
            .expect("read")
            .expect("frame");
        assert_eq!(f.body, Response::Pong);
        t.join().expect("server");
    }
}
