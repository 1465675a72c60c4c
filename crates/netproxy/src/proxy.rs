//! The proxy outside the sandbox and its allow-list (see the crate docs).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The largest request head the proxy reads before refusing the request.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("'{0}' is not a valid network allow-list entry; write HOST, HOST:PORT, *.DOMAIN or [IPv6]:PORT")]
    BadEntry(String),
    #[error("could not listen on {path}: {source}; check that the session directory is writable")]
    Listen {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Which hosts a pattern matches.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    /// The host exactly (case-insensitive), a name or an IP address.
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (not `example.com` itself).
    Suffix(String),
}

/// One allow-list entry: a host pattern and a port. Without a port, 80 and 443.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    host: HostPattern,
    port: Option<u16>,
}

impl Rule {
    /// `HOST`, `HOST:PORT`, `*.DOMAIN[:PORT]`, `[IPv6]` or `[IPv6]:PORT`.
    pub fn parse(entry: &str) -> Result<Rule, ProxyError> {
        let bad = || ProxyError::BadEntry(entry.to_string());
        let e = entry.trim();
        if e.is_empty() || e.contains('/') || e.contains(char::is_whitespace) {
            return Err(bad());
        }
        let (host, port) = if let Some(rest) = e.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?),
            };
            (h.to_string(), port)
        } else if e.matches(':').count() > 1 {
            // A bare IPv6 address without a port.
            (e.to_string(), None)
        } else {
            match e.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (e.to_string(), None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?),
        };
        let host = host.to_ascii_lowercase();
        let pattern = if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(bad());
            }
            HostPattern::Suffix(format!(".{suffix}"))
        } else {
            if host.is_empty() || host.contains('*') {
                return Err(bad());
            }
            HostPattern::Exact(host)
        };
        Ok(Rule {
            host: pattern,
            port,
        })
    }

    fn allows(&self, host: &str, port: u16) -> bool {
        let port_ok = match self.port {
            Some(p) => p == port,
            None => port == 443 || port == 80,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host_ok = match &self.host {
            HostPattern::Exact(h) => h.eq_ignore_ascii_case(host),
            HostPattern::Suffix(s) => {
                host.len() > s.len() && host.to_ascii_lowercase().ends_with(s.as_str())
            }
        };
        port_ok && host_ok
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.host {
            HostPattern::Exact(h) if h.contains(':') => format!("[{h}]"),
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Suffix(s) => format!("*{s}"),
        };
        match self.port {
            Some(p) => write!(f, "{host}:{p}"),
            None => write!(f, "{host}"),
        }
    }
}

/// The destinations a sandboxed command may reach. Empty: none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList(Vec<Rule>);

impl AllowList {
    /// Parses entries; each may itself be a comma-separated list (`--allow-net a,b`).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, ProxyError> {
        let mut rules = Vec::new();
        for entry in entries {
            for part in entry.as_ref().split(',').filter(|p| !p.trim().is_empty()) {
                let rule = Rule::parse(part)?;
                if !rules.contains(&rule) {
                    rules.push(rule);
                }
            }
        }
        Ok(AllowList(rules))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.0.iter().any(|r| r.allows(host, port))
    }

    /// The entries as the user would write them.
    pub fn entries(&self) -> Vec<String> {
        self.0.iter().map(Rule::to_string).collect()
    }
}

/// A destination the proxy refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A running proxy on a Unix socket. Dropping it stops it and removes the socket.
pub struct Proxy {
    path: PathBuf,
    task: JoinHandle<()>,
    refusals: mpsc::UnboundedReceiver<Refusal>,
}

impl Proxy {
    /// Listens on the Unix socket `path` (replacing a stale one) and serves every
    /// connection in its own task. Needs a tokio runtime.
    pub fn serve_unix(path: &Path, allow: AllowList) -> Result<Proxy, ProxyError> {
        let listen_err = |source| ProxyError::Listen {
            path: path.display().to_string(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(listen_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(listen_err)?;
        // Only this user may use it (the sandbox runs as this user).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(listen_err)?;
        }
        let (tx, refusals) = mpsc::unbounded_channel();
        let allow = std::sync::Arc::new(allow);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let allow = allow.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, &allow, &tx).await;
                });
            }
        });
        Ok(Proxy {
            path: path.to_path_buf(),
            task,
            refusals,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next refusal (`None` once the proxy has stopped).
    pub async fn refused(&mut self) -> Option<Refusal> {
        self.refusals.recv().await
    }

    /// Refusals that arrived so far, without waiting.
    pub fn drain_refused(&mut self) -> Vec<Refusal> {
        let mut out = Vec::new();
        while let Ok(r) = self.refusals.try_recv() {
            out.push(r);
        }
        out
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What the client asked for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Connect {
        host: String,
        port: u16,
    },
    /// A plain HTTP request in absolute form; `head` is rewritten to origin form.
    Http {
        host: String,
        port: u16,
        head: Vec<u8>,
    },
}

/// Splits `host:port` (or `[v6]:port`); `default` when no port is given.
fn host_port(s: &str, default: Option<u16>) -> Option<(String, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default?,
            None => return None,
        };
        return Some((h.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => None,
        None => Some((s.to_string(), default?)),
    }
    .filter(|(h, _)| !h.is_empty())
}

/// Parses a request head (everything up to and including the blank line).
fn parse_head(head: &[u8]) -> Result<Request, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "the request head is not UTF-8")?;
    let (line, rest) = text.split_once("\r\n").ok_or("no request line")?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("a malformed request line");
    };
    if !version.starts_with("HTTP/1.") {
        return Err("only HTTP/1.x is spoken here");
    }
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = host_port(target, None).ok_or("CONNECT needs host:port")?;
        return Ok(Request::Connect { host, port });
    }
    let after = target
        .strip_prefix("http://")
        .ok_or("a proxy request needs an absolute http:// URL (use CONNECT for https)")?;
    let (authority, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = host_port(authority, Some(80)).ok_or("a bad host in the URL")?;
    let mut out = format!("{method} {path} {version}\r\n");
    for header in rest.split("\r\n") {
        if header.is_empty() {
            continue;
        }
        let name = header.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("proxy-connection")
            || name.eq_ignore_ascii_case("proxy-authorization")
            || name.eq_ignore_ascii_case("connection")
            || name.eq_ignore_ascii_case("keep-alive")
        {
            continue;
        }
        out.push_str(header);
        out.push_str("\r\n");
    }
    // One request per upstream connection: a later request on the same client
    // connection could name another host.
    out.push_str("Connection: close\r\n\r\n");
    Ok(Request::Http {
        host,
        port,
        head: out.into_bytes(),
    })
}

/// Reads a request head; returns it and whatever followed it in the same reads.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + i + 4;
            let rest = buf.split_off(end);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

async fn reply<S: AsyncWrite + Unpin>(s: &mut S, status: &str, body: &str) -> io::Result<()> {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(msg.as_bytes()).await?;
    s.shutdown().await
}

/// Serves one client connection.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: S,
    allow: &AllowList,
    refusals: &mpsc::UnboundedSender<Refusal>,
) -> io::Result<()> {
    let Some((head, rest)) = read_head(&mut client).await? else {
        return Ok(());
    };
    let request = match parse_head(&head) {
        Ok(r) => r,
        Err(why) => {
            return reply(
                &mut client,
                "400 Bad Request",
                &format!("safe-coder proxy: {why}\n"),
            )
            .await
        }
    };
    let (host, port) = match &request {
        Request::Connect { host, port } | Request::Http { host, port, .. } => (host.clone(), *port),
    };
    if !allow.allows(&host, port) {
        let refusal = Refusal { host, port };
        let body = format!(
            "safe-coder: {refusal} is not on the network allow-list; add it with --allow-net {refusal}\n"
        );
        let _ = refusals.send(refusal);
        return reply(&mut client, "403 Forbidden", &body).await;
    }
    let mut upstream = match TcpStream::connect((host.as_str(), port)).await {
        Ok(s) => s,
        Err(e) => {
            return reply(
                &mut client,
                "502 Bad Gateway",
                &format!("safe-coder proxy: could not connect to {host}:{port}: {e}\n"),
            )
            .await
        }
    };
    let _ = upstream.set_nodelay(true);
    match request {
        Request::Connect { .. } => {
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await?;
        }
        Request::Http { head, .. } => upstream.write_all(&head).await?,
    }
    if !rest.is_empty() {
        upstream.write_all(&rest).await?;
    }
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_entries() {
        let list =
            AllowList::parse(&["api.openai.com", "127.0.0.1:8080,*.example.com:8443"]).unwrap();
        assert!(list.allows("api.openai.com", 443));
        assert!(list.allows("API.OpenAI.com", 80));
        assert!(!list.allows("api.openai.com", 8443));
        assert!(!list.allows("evil-api.openai.com", 443));
        assert!(list.allows("127.0.0.1", 8080));
        assert!(!list.allows("127.0.0.1", 8081));
        assert!(list.allows("a.b.example.com", 8443));
        assert!(!list.allows("example.com", 8443));
        assert!(!list.allows("notexample.com", 8443));
        assert_eq!(
            list.entries(),
            vec!["api.openai.com", "127.0.0.1:8080", "*.example.com:8443"]
        );
        let v6 = AllowList::parse(&["[::1]:9000", "::1"]).unwrap();
        assert!(v6.allows("::1", 9000));
        assert!(v6.allows("[::1]", 443));
        for bad in [
            "", "a:b", "host:0", "http://x", "*", "a b", "[::1", "*.x*.y",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn request_heads() {
        assert_eq!(
            parse_head(b"CONNECT api.x.com:443 HTTP/1.1\r\nHost: api.x.com:443\r\n\r\n"),
            Ok(Request::Connect {
                host: "api.x.com".into(),
                port: 443
            })
        );
        assert_eq!(
            parse_head(b"CONNECT [::1]:8080 HTTP/1.1\r\n\r\n"),
            Ok(Request::Connect {
                host: "::1".into(),
                port: 8080
            })
        );
        let Ok(Request::Http { host, port, head }) = parse_head(
            b"POST http://127.0.0.1:9/v1/x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nProxy-Connection: keep-alive\r\nContent-Length: 2\r\n\r\n",
        ) else {
            panic!("not parsed")
        };
        assert_eq!((host.as_str(), port), ("127.0.0.1", 9));
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /v1/x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
        assert!(parse_head(b"GET /relative HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_head(b"GET https://x/ HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_head(b"CONNECT x HTTP/1.1\r\n\r\n").is_err());
    }

    async fn upstream_http() -> (std::net::SocketAddr, JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let Ok(Some((head, _))) = read_head(&mut s).await else {
                        return;
                    };
                    let line = String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let body = format!("upstream saw: {line}");
                    let _ = reply(&mut s, "200 OK", &body).await;
                });
            }
        });
        (addr, task)
    }

    async fn ask(sock: &Path, request: &str) -> String {
        let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Through the Unix socket: an allowed plain request and CONNECT tunnel reach the
    /// upstream; another port is refused with 403 and reported.
    #[tokio::test]
    async fn serves_allowed_and_refuses_the_rest() {
        let (addr, _up) = upstream_http().await;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("net.sock");
        let allow = AllowList::parse(&[format!("127.0.0.1:{}", addr.port())]).unwrap();
        let mut proxy = Proxy::serve_unix(&sock, allow).unwrap();

        let plain = ask(
            &sock,
            &format!("GET http://{addr}/hello HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        )
        .await;
        assert!(plain.starts_with("HTTP/1.1 200 OK"), "{plain}");
        assert!(
            plain.ends_with("upstream saw: GET /hello HTTP/1.1"),
            "{plain}"
        );

        let tunnel = ask(
            &sock,
            &format!("CONNECT {addr} HTTP/1.1\r\n\r\nGET /in-tunnel HTTP/1.1\r\n\r\n"),
        )
        .await;
        assert!(
            tunnel.starts_with("HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK"),
            "{tunnel}"
        );
        assert!(
            tunnel.ends_with("upstream saw: GET /in-tunnel HTTP/1.1"),
            "{tunnel}"
        );

        let other = addr.port().wrapping_add(1).max(1);
        let refused = ask(
            &sock,
            &format!("CONNECT 127.0.0.1:{other} HTTP/1.1\r\n\r\n"),
        )
        .await;
        assert!(refused.starts_with("HTTP/1.1 403 Forbidden"), "{refused}");
        assert!(
            refused.contains("not on the network allow-list"),
            "{refused}"
        );
        let refused = ask(
            &sock,
            "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
        )
        .await;
        assert!(refused.starts_with("HTTP/1.1 403 Forbidden"), "{refused}");
        assert_eq!(
            proxy.refused().await,
            Some(Refusal {
                host: "127.0.0.1".into(),
                port: other
            })
        );
        assert_eq!(
            proxy.refused().await.map(|r| r.to_string()),
            Some("example.com:80".to_string())
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only this user may use the proxy");
        drop(proxy);
        assert!(!sock.exists(), "the socket is removed with the proxy");
    }

    /// The forwarder carries a TCP connection on loopback to the proxy's socket.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_forwarder_reaches_the_proxy() {
        let (addr, _up) = upstream_http().await;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("net.sock");
        let allow = AllowList::parse(&[format!("127.0.0.1:{}", addr.port())]).unwrap();
        let _proxy = Proxy::serve_unix(&sock, allow).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let s = sock.clone();
        std::thread::spawn(move || crate::forward::serve(listener, &s));
        let out = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(local).unwrap();
            c.write_all(format!("GET http://{addr}/fwd HTTP/1.1\r\n\r\n").as_bytes())
                .unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert!(out.ends_with("upstream saw: GET /fwd HTTP/1.1"), "{out}");
    }
}
