//! `safe-coder-guest-agent net-forward`: the real binary, its stdin/stdout carried by the
//! host side of the multiplexer to the real proxy, reached by plain clients inside.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Stdio;

use safe_coder_netproxy::{mux, AllowList, Proxy};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A local HTTP server answering every request with `hello from upstream`.
async fn upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let body = "hello from upstream";
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    port
}

fn ask(port: u16, request: String) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect to the forwarder");
    c.write_all(request.as_bytes()).expect("send");
    c.shutdown(Shutdown::Write).expect("half-close");
    let mut answer = String::new();
    c.read_to_string(&mut answer).expect("answer");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_forward_carries_connections_to_the_proxy_and_ends_with_its_stdin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = upstream().await;
    let socket = dir.path().join("net.sock");
    let allow = AllowList::parse(&[format!("127.0.0.1:{up}")]).expect("allow-list");
    let mut proxy = Proxy::serve_unix(&socket, allow).expect("proxy");

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_safe-coder-guest-agent"))
        .args(["net-forward", "--port", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start net-forward");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).await.expect("ready line");
    let port: u16 = line
        .trim()
        .strip_prefix("net-forward: listening on 127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a ready line: {line:?}"));
    assert_ne!(port, 0);
    let from_guest = child.stdout.take().expect("stdout");
    let to_guest = child.stdin.take().expect("stdin");
    let host = tokio::spawn(mux::serve_host(from_guest, to_guest, socket));

    let answers = tokio::task::spawn_blocking(move || {
        let allowed = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    ask(
                        port,
                        format!(
                            "GET http://127.0.0.1:{up}/ HTTP/1.1\r\nHost: 127.0.0.1:{up}\r\n\r\n"
                        ),
                    )
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("client"))
            .collect::<Vec<_>>();
        let refused = ask(port, "CONNECT github.com:443 HTTP/1.1\r\n\r\n".to_string());
        (allowed, refused)
    })
    .await
    .expect("clients");
    for a in &answers.0 {
        assert!(
            a.starts_with("HTTP/1.1 200") && a.ends_with("hello from upstream"),
            "{a}"
        );
    }
    assert!(answers.1.starts_with("HTTP/1.1 403"), "{}", answers.1);
    assert_eq!(
        proxy.refused().await.expect("a refusal").to_string(),
        "github.com:443"
    );

    // The host side goes away (its pipe to the forwarder's stdin closes): it exits, 0.
    host.abort();
    let _ = host.await;
    let status = child.wait().await.expect("wait");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn net_forward_wants_a_port() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_safe-coder-guest-agent"))
        .args(["net-forward"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("net-forward --port PORT"));
}
