//! What the network allow-list adds to one request on loopback (issue 15: at most 1 ms):
//! a fresh connection and one small HTTP request/response, direct to a local server,
//! against the same through the whole path a sandboxed command takes (TCP to the
//! forwarder, the forwarder to the proxy's Unix socket, the proxy to the server), as a
//! plain proxied request and as a CONNECT tunnel, and the tunnel once more over the
//! multiplexed stream (`mux`: docker, the VMs, the in-process fallback). Median of many
//! runs each.
//!
//! Run: `cargo bench -p safe-coder-netproxy --bench proxy`
//! (`SAFE_CODER_BENCH_RUNS=N` for more runs).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use safe_coder_netproxy::{forward, mux, AllowList, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A local HTTP server answering every request with a small body, then closing.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

fn request(to: SocketAddr, first: Option<String>, req: &str) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(to).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    if let Some(connect) = first {
        s.write_all(connect.as_bytes()).expect("write");
        // Read the tunnel's "200 Connection established" head.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).expect("tunnel head");
            head.push(b[0]);
        }
    }
    s.write_all(req.as_bytes()).expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    assert!(out.ends_with(b"ok"), "{}", String::from_utf8_lossy(&out));
    start.elapsed()
}

fn main() {
    let runs: usize = std::env::var("SAFE_CODER_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("net.sock");
    let (up, _proxy) = rt.block_on(async {
        let up = upstream().await;
        let allow = AllowList::parse(&[format!("127.0.0.1:{}", up.port())]).expect("allow");
        (up, Proxy::serve_unix(&sock, allow).expect("proxy"))
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("forwarder");
    let fwd = listener.local_addr().expect("addr");
    let s = sock.clone();
    std::thread::spawn(move || forward::serve(listener, &s));

    // The multiplexed path (docker, the VMs, the in-process fallback): the guest side on
    // a socket pair, the host side carrying its connections to the same proxy.
    let (guest_end, host_end) = std::os::unix::net::UnixStream::pair().expect("pair");
    let mux_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("mux forwarder");
    let muxed = mux_listener.local_addr().expect("addr");
    let guest_read = guest_end.try_clone().expect("clone");
    std::thread::spawn(move || mux::serve_guest(mux_listener, guest_read, guest_end));
    host_end.set_nonblocking(true).expect("nonblocking");
    let s = sock.clone();
    let _host = rt.spawn(async move {
        let (r, w) = tokio::net::UnixStream::from_std(host_end)
            .expect("stream")
            .into_split();
        mux::serve_host(r, w, s).await
    });

    let direct_req = format!("GET / HTTP/1.1\r\nHost: {up}\r\n\r\n");
    let proxied_req = format!("GET http://{up}/ HTTP/1.1\r\nHost: {up}\r\n\r\n");
    let connect = format!("CONNECT {up} HTTP/1.1\r\nHost: {up}\r\n\r\n");
    // Warm up every path.
    for _ in 0..20 {
        request(up, None, &direct_req);
        request(fwd, None, &proxied_req);
        request(fwd, Some(connect.clone()), &direct_req);
        request(muxed, Some(connect.clone()), &direct_req);
    }
    let (mut direct, mut proxied, mut tunnel, mut multiplexed) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        direct.push(request(up, None, &direct_req));
        proxied.push(request(fwd, None, &proxied_req));
        tunnel.push(request(fwd, Some(connect.clone()), &direct_req));
        multiplexed.push(request(muxed, Some(connect.clone()), &direct_req));
    }
    let (d, p, t, m) = (
        median(direct),
        median(proxied),
        median(tunnel),
        median(multiplexed),
    );
    println!("{runs} requests each, a fresh connection per request, median:");
    println!("  direct to the server          {:8.1} µs", us(d));
    println!(
        "  through forwarder + proxy     {:8.1} µs  (+{:.1} µs)",
        us(p),
        us(p) - us(d)
    );
    println!(
        "  CONNECT tunnel, same path     {:8.1} µs  (+{:.1} µs)",
        us(t),
        us(t) - us(d)
    );
    println!(
        "  CONNECT tunnel over mux       {:8.1} µs  (+{:.1} µs)",
        us(m),
        us(m) - us(d)
    );
    let worst = (us(p) - us(d)).max(us(t) - us(d)).max(us(m) - us(d));
    println!(
        "target: at most 1000 µs added per request: {}",
        if worst <= 1000.0 { "met" } else { "MISSED" }
    );
}
