//! Many TCP connections over one byte stream, for sandboxes that cannot see a host Unix
//! socket (a container, a microVM): inside, [`serve_guest`] accepts on the sandbox's
//! loopback and carries each connection over the stream (say, the stdin/stdout of
//! `safe-coder-guest-agent net-forward` run in the sandbox); outside, [`serve_host`]
//! connects each one to the proxy's Unix socket.
//!
//! # The frames
//!
//! Every frame is `kind: u8`, `id: u32`, `len: u32` (big-endian), then `len` bytes:
//!
//! | kind | name | from | payload | meaning |
//! |---|---|---|---|---|
//! | 1 | `OPEN` | guest | none | a new connection `id` (ids are never reused) |
//! | 2 | `DATA` | both | 1..=[`MAX_DATA`] bytes | bytes of connection `id` |
//! | 3 | `EOF` | both | none | the sender will send no more bytes on `id` (half-close) |
//! | 4 | `CLOSE` | both | none | `id` is over both ways (refused, reset, or a broken rule) |
//! | 5 | `WINDOW` | both | `u32` | the receiver wrote that many bytes of `id` out: credit |
//!
//! # Bounded memory
//!
//! Each side may have at most [`WINDOW`] bytes of a connection sent and not yet
//! acknowledged by a `WINDOW` frame, and the receiver acknowledges bytes only once it
//! wrote them to the connection's local socket. So a slow reader on one side makes the
//! other side stop reading its socket, instead of making anybody buffer without limit;
//! and the stream's reader never blocks on one connection (it only queues what the
//! window allows), so one slow connection does not stall the others. The host does not
//! trust the guest (it is the sandbox): a guest that sends past its window, acknowledges
//! bytes it never got, or opens more than [`MAX_CONNECTIONS`] at once gets `CLOSE`; a
//! malformed frame ends the stream.
//!
//! The guest side is std only (threads, blocking I/O), so the static guest agent links
//! it without a runtime; the host side (feature `host`) runs on tokio.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};

/// How many bytes of one connection may be in flight (sent, not yet acknowledged) each
/// way.
pub const WINDOW: u32 = 128 * 1024;
/// The largest `DATA` payload.
pub const MAX_DATA: usize = 16 * 1024;
/// How many connections the host carries at once; more are answered `CLOSE`.
pub const MAX_CONNECTIONS: usize = 256;

const OPEN: u8 = 1;
const DATA: u8 = 2;
const EOF: u8 = 3;
const CLOSE: u8 = 4;
const CREDIT: u8 = 5;
const HEADER: usize = 9;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Frame {
    Open(u32),
    Data(u32, Vec<u8>),
    Eof(u32),
    Close(u32),
    Window(u32, u32),
}

impl Frame {
    fn encode(&self) -> Vec<u8> {
        let credit;
        let (kind, id, payload): (u8, u32, &[u8]) = match self {
            Frame::Open(id) => (OPEN, *id, &[]),
            Frame::Data(id, d) => (DATA, *id, d),
            Frame::Eof(id) => (EOF, *id, &[]),
            Frame::Close(id) => (CLOSE, *id, &[]),
            Frame::Window(id, n) => {
                credit = n.to_be_bytes();
                (CREDIT, *id, &credit)
            }
        };
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.push(kind);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the network stream is corrupt: {what}"),
    )
}

/// Checks a header; returns kind, id and payload length.
fn parse_header(h: &[u8; HEADER]) -> io::Result<(u8, u32, usize)> {
    let kind = h[0];
    let id = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    let len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize;
    let ok = match kind {
        OPEN | EOF | CLOSE => len == 0,
        DATA => (1..=MAX_DATA).contains(&len),
        CREDIT => len == 4,
        _ => return Err(invalid(&format!("unknown frame kind {kind}"))),
    };
    if !ok {
        return Err(invalid(&format!("frame kind {kind} with {len} bytes")));
    }
    Ok((kind, id, len))
}

fn frame(kind: u8, id: u32, payload: Vec<u8>) -> Frame {
    match kind {
        OPEN => Frame::Open(id),
        DATA => Frame::Data(id, payload),
        EOF => Frame::Eof(id),
        CLOSE => Frame::Close(id),
        _ => Frame::Window(
            id,
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]),
        ),
    }
}

/// Reads one frame; `None` at an end between frames (EOF, or a reset: a socket's other
/// side closed with our last frames unread, which ends the stream just the same).
fn read_frame<R: Read>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Err(e) if got == 0 && e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let (kind, id, len) = parse_header(&h)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some(frame(kind, id, payload)))
}

/// What the stream's reader hands a connection's local writer.
enum ToLocal {
    Data(Vec<u8>),
    Eof,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------
// The guest side: std only.

/// One connection inside.
struct GuestConn {
    /// How many bytes we may still send to the host.
    credit: Mutex<u32>,
    credit_changed: Condvar,
    /// Bytes from the host not yet written to the local socket.
    unacked: AtomicU32,
    /// Over both ways: the reader stops, nothing more is sent.
    closed: AtomicBool,
    /// Our reader sent `EOF` / the host sent `EOF` (guarded by the map's lock).
    local_done: AtomicBool,
    peer_done: AtomicBool,
}

impl GuestConn {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _guard = lock(&self.credit);
        self.credit_changed.notify_all();
    }
}

struct GuestEntry {
    tx: mpsc::Sender<ToLocal>,
    conn: Arc<GuestConn>,
    /// To shut the socket down from the stream's reader (a `CLOSE`).
    tcp: TcpStream,
}

type GuestMap = Arc<Mutex<HashMap<u32, GuestEntry>>>;

/// The stream to the host, shared by the connections' threads (a frame is written
/// whole under the lock).
struct Out<W>(Mutex<W>);

impl<W: Write> Out<W> {
    fn send(&self, f: &Frame) -> io::Result<()> {
        let mut w = lock(&self.0);
        w.write_all(&f.encode())?;
        w.flush()
    }
}

/// Takes `id` off the map once both ways are done.
fn retire(map: &GuestMap, id: u32, conn: &GuestConn, local: bool) {
    let mut m = lock(map);
    let flag = if local {
        &conn.local_done
    } else {
        &conn.peer_done
    };
    flag.store(true, Ordering::SeqCst);
    if conn.local_done.load(Ordering::SeqCst) && conn.peer_done.load(Ordering::SeqCst) {
        m.remove(&id);
    }
}

/// Ends `id` at once: removes it, wakes its threads, shuts its socket down.
fn abort_guest(map: &GuestMap, id: u32) {
    if let Some(e) = lock(map).remove(&id) {
        e.conn.close();
        let _ = e.tcp.shutdown(Shutdown::Both);
    }
}

/// Guest side (blocking, std only): accepts on `listener` and carries every connection
/// over the stream. Returns when `from_host` reaches EOF (every connection is then shut
/// down); an error when the stream is corrupt.
pub fn serve_guest<R, W>(listener: TcpListener, from_host: R, to_host: W) -> io::Result<()>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let out = Arc::new(Out(Mutex::new(to_host)));
    let map: GuestMap = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = listener.local_addr()?;
    let acceptor = {
        let (out, map, stop) = (out.clone(), map.clone(), stop.clone());
        std::thread::Builder::new()
            .name("net-accept".into())
            .spawn(move || accept_loop(listener, out, map, stop))?
    };
    let result = demux_guest(io::BufReader::new(from_host), &map);
    // The stream is over: no connection can go on.
    stop.store(true, Ordering::SeqCst);
    let ids: Vec<u32> = lock(&map).keys().copied().collect();
    for id in ids {
        abort_guest(&map, id);
    }
    // Joined only when it could be woken (else it stays blocked in `accept`, holding
    // nothing but the listener, until the process ends).
    if wake(addr) {
        let _ = acceptor.join();
    }
    // A connection accepted while the stream ended.
    let ids: Vec<u32> = lock(&map).keys().copied().collect();
    for id in ids {
        abort_guest(&map, id);
    }
    result
}

/// Wakes the acceptor blocked in `accept` (it then sees `stop`); whether it could.
fn wake(addr: SocketAddr) -> bool {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    TcpStream::connect(addr).is_ok()
}

fn accept_loop<W: Write + Send + 'static>(
    listener: TcpListener,
    out: Arc<Out<W>>,
    map: GuestMap,
    stop: Arc<AtomicBool>,
) {
    let mut next_id: u32 = 0;
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let tcp = match conn {
            Ok(tcp) => tcp,
            Err(_) => {
                // Out of descriptors, say: do not spin; connections wait in the backlog.
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (Ok(reader), Ok(writer), Ok(shut)) =
            (tcp.try_clone(), tcp.try_clone(), tcp.try_clone())
        else {
            continue;
        };
        next_id = next_id.wrapping_add(1);
        let id = next_id;
        let conn = Arc::new(GuestConn {
            credit: Mutex::new(WINDOW),
            credit_changed: Condvar::new(),
            unacked: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            local_done: AtomicBool::new(false),
            peer_done: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        lock(&map).insert(
            id,
            GuestEntry {
                tx,
                conn: conn.clone(),
                tcp: shut,
            },
        );
        // OPEN goes before any DATA of this connection: it is sent before its reader
        // starts.
        if out.send(&Frame::Open(id)).is_err() {
            abort_guest(&map, id);
            continue;
        }
        let spawned = {
            let (out, map, conn) = (out.clone(), map.clone(), conn.clone());
            std::thread::Builder::new()
                .name(format!("net-up-{id}"))
                .spawn(move || guest_up(id, reader, &conn, &out, &map))
        };
        let spawned = spawned.and_then(|_| {
            let (out, map) = (out.clone(), map.clone());
            std::thread::Builder::new()
                .name(format!("net-down-{id}"))
                .spawn(move || guest_down(id, writer, rx, &conn, &out, &map))
        });
        if spawned.is_err() {
            let _ = out.send(&Frame::Close(id));
            abort_guest(&map, id);
        }
    }
}

/// The local socket → the host, within the credit the host gave.
fn guest_up<W: Write>(id: u32, mut tcp: TcpStream, conn: &GuestConn, out: &Out<W>, map: &GuestMap) {
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        let allowed = {
            let mut credit = lock(&conn.credit);
            while *credit == 0 && !conn.closed.load(Ordering::SeqCst) {
                credit = conn
                    .credit_changed
                    .wait(credit)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if conn.closed.load(Ordering::SeqCst) {
                return;
            }
            (*credit as usize).min(MAX_DATA)
        };
        match tcp.read(&mut buf[..allowed]) {
            Ok(0) => {
                if !conn.closed.load(Ordering::SeqCst) && out.send(&Frame::Eof(id)).is_ok() {
                    retire(map, id, conn, true);
                } else {
                    abort_guest(map, id);
                }
                return;
            }
            Ok(n) => {
                {
                    let mut credit = lock(&conn.credit);
                    *credit = credit.saturating_sub(n as u32);
                }
                if conn.closed.load(Ordering::SeqCst) {
                    return;
                }
                if out.send(&Frame::Data(id, buf[..n].to_vec())).is_err() {
                    abort_guest(map, id);
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                if !conn.closed.load(Ordering::SeqCst) {
                    let _ = out.send(&Frame::Close(id));
                }
                abort_guest(map, id);
                return;
            }
        }
    }
}

/// The host's bytes → the local socket, acknowledging each write.
fn guest_down<W: Write>(
    id: u32,
    mut tcp: TcpStream,
    rx: mpsc::Receiver<ToLocal>,
    conn: &GuestConn,
    out: &Out<W>,
    map: &GuestMap,
) {
    // Ends when the entry is gone (both ways done, a CLOSE, or the stream's end).
    for msg in rx {
        match msg {
            ToLocal::Data(d) => {
                if tcp.write_all(&d).is_err() {
                    if !conn.closed.load(Ordering::SeqCst) {
                        let _ = out.send(&Frame::Close(id));
                    }
                    abort_guest(map, id);
                    return;
                }
                conn.unacked.fetch_sub(d.len() as u32, Ordering::SeqCst);
                if !conn.closed.load(Ordering::SeqCst) {
                    let _ = out.send(&Frame::Window(id, d.len() as u32));
                }
            }
            ToLocal::Eof => {
                let _ = tcp.shutdown(Shutdown::Write);
            }
        }
    }
    let _ = tcp.shutdown(Shutdown::Both);
}

/// Reads the host's frames and hands each to its connection; never blocks on one.
fn demux_guest<R: Read>(mut from_host: R, map: &GuestMap) -> io::Result<()> {
    while let Some(f) = read_frame(&mut from_host)? {
        match f {
            Frame::Data(id, d) => {
                let m = lock(map);
                let Some(e) = m.get(&id) else { continue };
                let n = d.len() as u32;
                let before = e.conn.unacked.fetch_add(n, Ordering::SeqCst);
                if before.saturating_add(n) > WINDOW {
                    drop(m);
                    abort_guest(map, id);
                    continue;
                }
                let _ = e.tx.send(ToLocal::Data(d));
            }
            Frame::Eof(id) => {
                let conn = {
                    let m = lock(map);
                    let Some(e) = m.get(&id) else { continue };
                    let _ = e.tx.send(ToLocal::Eof);
                    e.conn.clone()
                };
                retire(map, id, &conn, false);
            }
            Frame::Close(id) => abort_guest(map, id),
            Frame::Window(id, n) => {
                let m = lock(map);
                let Some(e) = m.get(&id) else { continue };
                let mut credit = lock(&e.conn.credit);
                *credit = credit.saturating_add(n).min(WINDOW);
                e.conn.credit_changed.notify_all();
            }
            Frame::Open(_) => return Err(invalid("the host opened a connection")),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The host side: tokio.

#[cfg(feature = "host")]
pub use host::serve_host;

#[cfg(feature = "host")]
mod host {
    use std::path::{Path, PathBuf};

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
    use tokio::net::UnixStream;
    use tokio::sync::{mpsc, Notify};
    use tokio::task::AbortHandle;

    use super::*;

    /// What a connection's task and the stream's reader share.
    struct Shared {
        /// How many bytes we may still send to the guest.
        credit: AtomicU32,
        credit_added: Notify,
        /// Bytes from the guest not yet written to the proxy.
        unacked: AtomicU32,
    }

    struct Entry {
        tx: mpsc::UnboundedSender<ToLocal>,
        shared: Arc<Shared>,
        task: AbortHandle,
    }

    type HostMap = Arc<Mutex<HashMap<u32, Entry>>>;

    /// Aborts every task when `serve_host` returns or is dropped.
    struct Guard {
        map: HostMap,
        writer: AbortHandle,
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            for (_, e) in lock(&self.map).drain() {
                e.task.abort();
            }
            self.writer.abort();
        }
    }

    async fn read_frame_async<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
        let mut h = [0u8; HEADER];
        match r.read(&mut h[..1]).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e),
        }
        r.read_exact(&mut h[1..]).await?;
        let (kind, id, len) = parse_header(&h)?;
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await?;
        Ok(Some(frame(kind, id, payload)))
    }

    async fn write_frames<W: AsyncWrite + Unpin>(to_guest: W, mut rx: mpsc::Receiver<Frame>) {
        let mut w = BufWriter::new(to_guest);
        while let Some(f) = rx.recv().await {
            if w.write_all(&f.encode()).await.is_err() {
                return;
            }
            while let Ok(f) = rx.try_recv() {
                if w.write_all(&f.encode()).await.is_err() {
                    return;
                }
            }
            if w.flush().await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    }

    /// Host side: for each connection the guest side opens, connects to the proxy's Unix
    /// socket and copies bytes both ways. Returns when the stream ends (every connection
    /// is then closed); an error when the stream is corrupt.
    pub async fn serve_host<R, W>(
        from_guest: R,
        to_guest: W,
        proxy_socket: PathBuf,
    ) -> io::Result<()>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (out, out_rx) = mpsc::channel::<Frame>(256);
        let writer = tokio::spawn(write_frames(to_guest, out_rx));
        let map: HostMap = Arc::new(Mutex::new(HashMap::new()));
        let _guard = Guard {
            map: map.clone(),
            writer: writer.abort_handle(),
        };
        let mut from_guest = BufReader::with_capacity(64 * 1024, from_guest);
        while let Some(f) = read_frame_async(&mut from_guest).await? {
            // What to send back, decided under the lock and sent without it.
            let mut reply = None;
            match f {
                Frame::Open(id) => {
                    let mut m = lock(&map);
                    if m.contains_key(&id) {
                        return Err(invalid("a connection id was opened twice"));
                    }
                    if m.len() >= MAX_CONNECTIONS {
                        reply = Some(Frame::Close(id));
                    } else {
                        let shared = Arc::new(Shared {
                            credit: AtomicU32::new(WINDOW),
                            credit_added: Notify::new(),
                            unacked: AtomicU32::new(0),
                        });
                        let (tx, rx) = mpsc::unbounded_channel();
                        let task = tokio::spawn(connection(
                            id,
                            proxy_socket.clone(),
                            rx,
                            shared.clone(),
                            out.clone(),
                            map.clone(),
                        ));
                        m.insert(
                            id,
                            Entry {
                                tx,
                                shared,
                                task: task.abort_handle(),
                            },
                        );
                    }
                }
                Frame::Data(id, d) => {
                    let mut m = lock(&map);
                    if let Some(e) = m.get(&id) {
                        let n = d.len() as u32;
                        let before = e.shared.unacked.fetch_add(n, Ordering::SeqCst);
                        if before.saturating_add(n) > WINDOW {
                            // Past its window: the guest broke the rule.
                            if let Some(e) = m.remove(&id) {
                                e.task.abort();
                            }
                            reply = Some(Frame::Close(id));
                        } else {
                            let _ = e.tx.send(ToLocal::Data(d));
                        }
                    }
                }
                Frame::Eof(id) => {
                    if let Some(e) = lock(&map).get(&id) {
                        let _ = e.tx.send(ToLocal::Eof);
                    }
                }
                Frame::Close(id) => {
                    // Dropping the task drops its socket: the proxy sees the end.
                    if let Some(e) = lock(&map).remove(&id) {
                        e.task.abort();
                    }
                }
                Frame::Window(id, n) => {
                    let mut m = lock(&map);
                    if let Some(e) = m.get(&id) {
                        let before = e.shared.credit.fetch_add(n, Ordering::SeqCst);
                        if before.saturating_add(n) > WINDOW {
                            // Acknowledged bytes it was never sent.
                            if let Some(e) = m.remove(&id) {
                                e.task.abort();
                            }
                            reply = Some(Frame::Close(id));
                        } else {
                            e.shared.credit_added.notify_one();
                        }
                    }
                }
            }
            if let Some(r) = reply {
                if out.send(r).await.is_err() {
                    // The way back is broken: nothing more can be carried.
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// One connection: the proxy's socket, both ways.
    async fn connection(
        id: u32,
        socket: PathBuf,
        rx: mpsc::UnboundedReceiver<ToLocal>,
        shared: Arc<Shared>,
        out: mpsc::Sender<Frame>,
        map: HostMap,
    ) {
        if carry(id, &socket, rx, &shared, &out).await.is_err() {
            let _ = out.send(Frame::Close(id)).await;
        }
        lock(&map).remove(&id);
    }

    async fn carry(
        id: u32,
        socket: &Path,
        mut rx: mpsc::UnboundedReceiver<ToLocal>,
        shared: &Shared,
        out: &mpsc::Sender<Frame>,
    ) -> io::Result<()> {
        let stream = UnixStream::connect(socket).await?;
        let (mut r, mut w) = stream.into_split();
        let gone = || io::Error::from(io::ErrorKind::BrokenPipe);
        let up = async {
            while let Some(msg) = rx.recv().await {
                match msg {
                    ToLocal::Data(d) => {
                        w.write_all(&d).await?;
                        let n = d.len() as u32;
                        shared.unacked.fetch_sub(n, Ordering::SeqCst);
                        out.send(Frame::Window(id, n)).await.map_err(|_| gone())?;
                    }
                    ToLocal::Eof => {
                        w.shutdown().await?;
                        return Ok(());
                    }
                }
            }
            Err(gone())
        };
        let down = async {
            let mut buf = vec![0u8; MAX_DATA];
            loop {
                while shared.credit.load(Ordering::SeqCst) == 0 {
                    shared.credit_added.notified().await;
                }
                let allowed = (shared.credit.load(Ordering::SeqCst) as usize).min(MAX_DATA);
                let n = r.read(&mut buf[..allowed]).await?;
                if n == 0 {
                    out.send(Frame::Eof(id)).await.map_err(|_| gone())?;
                    return Ok::<(), io::Error>(());
                }
                shared.credit.fetch_sub(n as u32, Ordering::SeqCst);
                out.send(Frame::Data(id, buf[..n].to_vec()))
                    .await
                    .map_err(|_| gone())?;
            }
        };
        tokio::try_join!(up, down)?;
        Ok(())
    }
}

#[cfg(all(test, feature = "host"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::net::UnixStream as StdUnix;
    use std::path::{Path, PathBuf};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        for f in [
            Frame::Open(7),
            Frame::Data(1, b"abc".to_vec()),
            Frame::Eof(u32::MAX),
            Frame::Close(0),
            Frame::Window(3, WINDOW),
        ] {
            let bytes = f.encode();
            assert_eq!(read_frame(&mut &bytes[..]).unwrap(), Some(f));
        }
        assert_eq!(read_frame(&mut &b""[..]).unwrap(), None);
        // Cut inside a header, inside a payload.
        assert!(read_frame(&mut &Frame::Open(1).encode()[..4]).is_err());
        let data = Frame::Data(1, vec![9; 10]).encode();
        assert!(read_frame(&mut &data[..12]).is_err());
        // Unknown kind, an empty DATA, an oversized one, a WINDOW without its count.
        for h in [
            [9u8, 0, 0, 0, 1, 0, 0, 0, 0],
            [DATA, 0, 0, 0, 1, 0, 0, 0, 0],
            [DATA, 0, 0, 0, 1, 0, 1, 0, 1],
            [CREDIT, 0, 0, 0, 1, 0, 0, 0, 0],
            [OPEN, 0, 0, 0, 1, 0, 0, 0, 1],
        ] {
            assert_eq!(
                read_frame(&mut &h[..]).unwrap_err().kind(),
                io::ErrorKind::InvalidData,
                "{h:?}"
            );
        }
    }

    /// A server on a Unix socket (the proxy's place) that reads everything the client
    /// sends until its EOF, and only then answers with the bytes reversed and closes.
    fn reversing_server(path: &Path) -> tokio::task::JoinHandle<()> {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    if s.read_to_end(&mut got).await.is_err() {
                        return;
                    }
                    got.reverse();
                    let _ = s.write_all(&got).await;
                    let _ = s.shutdown().await;
                });
            }
        })
    }

    /// The two ends of the stream: the guest's (std) and the host's (tokio), a real
    /// socket pair.
    fn stream() -> (
        (StdUnix, StdUnix),
        (
            tokio::net::unix::OwnedReadHalf,
            tokio::net::unix::OwnedWriteHalf,
        ),
    ) {
        let (g, h) = StdUnix::pair().unwrap();
        h.set_nonblocking(true).unwrap();
        let h = tokio::net::UnixStream::from_std(h).unwrap();
        ((g.try_clone().unwrap(), g), h.into_split())
    }

    /// Starts both sides; returns the guest's port, the guest thread and the host task.
    fn start(
        socket: PathBuf,
    ) -> (
        u16,
        std::thread::JoinHandle<io::Result<()>>,
        tokio::task::JoinHandle<io::Result<()>>,
        StdUnix,
    ) {
        let ((g_read, g_write), (h_read, h_write)) = stream();
        let keep = g_read.try_clone().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let guest = std::thread::spawn(move || serve_guest(listener, g_read, g_write));
        let host = tokio::spawn(serve_host(h_read, h_write, socket));
        (port, guest, host, keep)
    }

    /// Sends `data`, half-closes, reads the answer to its end.
    fn exchange(port: u16, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut c = TcpStream::connect(("127.0.0.1", port))?;
        c.write_all(data)?;
        c.shutdown(Shutdown::Write)?;
        let mut back = Vec::new();
        c.read_to_end(&mut back)?;
        Ok(back)
    }

    fn pattern(seed: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 31 + seed * 7) % 251) as u8)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_connections_at_once_each_half_closed_get_their_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        let _server = reversing_server(&socket);
        let (port, guest, host, _keep) = start(socket);
        // More than the window each way (so credit must flow), many at once.
        let clients: Vec<_> = (0..48)
            .map(|i| {
                std::thread::spawn(move || {
                    let data = pattern(i, 100_000 + i * 5_000);
                    let back = exchange(port, &data).unwrap();
                    let mut want = data;
                    want.reverse();
                    assert!(back == want, "connection {i} got the wrong bytes");
                })
            })
            .collect();
        tokio::task::spawn_blocking(move || {
            for c in clients {
                c.join().unwrap();
            }
        })
        .await
        .unwrap();
        // An empty request: EOF at once, an empty answer.
        let back = tokio::task::spawn_blocking(move || exchange(port, b""))
            .await
            .unwrap()
            .unwrap();
        assert!(back.is_empty());
        host.abort();
        tokio::task::spawn_blocking(move || guest.join().unwrap())
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_the_proxy_refuses_is_closed_and_the_others_go_on() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens there: connecting to it fails on the host.
        let (port, _guest, _host, _keep) = start(dir.path().join("absent.sock"));
        let back = tokio::task::spawn_blocking(move || {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut back = Vec::new();
            // The host answers CLOSE: the client's connection ends without a byte (an
            // end or a reset, both are an end here).
            let _ = c.read_to_end(&mut back);
            back
        })
        .await
        .unwrap();
        assert!(back.is_empty());

        // The real proxy refusing a destination: its 403 comes through.
        let socket = dir.path().join("proxy.sock");
        let allow = crate::AllowList::parse(&["127.0.0.1:9"]).unwrap();
        let mut proxy = crate::Proxy::serve_unix(&socket, allow).unwrap();
        let (port, _guest, _host, _keep) = start(socket);
        let answer = tokio::task::spawn_blocking(move || {
            exchange(port, b"CONNECT not-listed.example:443 HTTP/1.1\r\n\r\n").unwrap()
        })
        .await
        .unwrap();
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        let refusal = proxy.refused().await.unwrap();
        assert_eq!(refusal.to_string(), "not-listed.example:443");
    }

    /// A Unix server that greets each connection and reports when its reading ends.
    fn greeting_server(path: &Path) -> tokio::sync::mpsc::UnboundedReceiver<()> {
        let listener = UnixListener::bind(path).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = s.write_all(b"hi").await;
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink).await;
                    let _ = tx.send(());
                });
            }
        });
        rx
    }

    fn connect_and_greet(port: u16) -> TcpStream {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"unfinished").unwrap();
        let mut hi = [0u8; 2];
        c.read_exact(&mut hi).unwrap();
        assert_eq!(&hi, b"hi");
        c
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_host_going_away_mid_connection_ends_everything_inside() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        let mut ended = greeting_server(&socket);
        let (port, guest, host, _keep) = start(socket);
        let mut c = tokio::task::spawn_blocking(move || connect_and_greet(port))
            .await
            .unwrap();
        // The host side stops (its end of the stream closes): the guest returns, the
        // open connection inside ends, and the proxy's side of it too.
        host.abort();
        let _ = host.await;
        tokio::task::spawn_blocking(move || {
            guest.join().unwrap().unwrap();
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest);
            assert!(rest.is_empty());
        })
        .await
        .unwrap();
        ended.recv().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_guest_going_away_mid_connection_ends_the_host_side() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        let mut ended = greeting_server(&socket);
        let (port, _guest, host, keep) = start(socket);
        let _c = tokio::task::spawn_blocking(move || connect_and_greet(port))
            .await
            .unwrap();
        // The guest's end of the stream is cut (as when the exec inside is killed).
        keep.shutdown(Shutdown::Both).unwrap();
        host.await.unwrap().unwrap();
        ended.recv().await.unwrap();
    }

    /// Reads frames until `want` bytes of DATA arrived; returns them (and checks ids).
    fn take_data<R: Read>(r: &mut R, id: u32, want: usize) -> usize {
        let mut got = 0;
        while got < want {
            match read_frame(r).unwrap().unwrap() {
                Frame::Data(i, d) => {
                    assert_eq!(i, id);
                    got += d.len();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        got
    }

    #[test]
    fn the_guest_sends_no_more_than_the_window_until_credit_comes() {
        // A scripted host on the other end of the stream.
        let (g, mut h) = StdUnix::pair().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let g2 = g.try_clone().unwrap();
        let guest = std::thread::spawn(move || serve_guest(listener, g2, g));
        let writer = std::thread::spawn(move || {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            // Far more than the window; blocks once the window is spent.
            let _ = c.write_all(&vec![5u8; 4 * WINDOW as usize]);
        });
        let Frame::Open(id) = read_frame(&mut h).unwrap().unwrap() else {
            panic!("no OPEN first")
        };
        assert_eq!(take_data(&mut h, id, WINDOW as usize), WINDOW as usize);
        // Exactly the window was sent; one byte of credit lets exactly one byte more.
        h.write_all(&Frame::Window(id, 1).encode()).unwrap();
        assert_eq!(read_frame(&mut h).unwrap(), Some(Frame::Data(id, vec![5])));
        h.write_all(&Frame::Window(id, 3 * WINDOW).encode())
            .unwrap();
        drop(h);
        guest.join().unwrap().unwrap();
        writer.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_host_sends_no_more_than_the_window_until_credit_comes() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        // A server that sends far more than the window at once.
        let listener = UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.write_all(&vec![7u8; 4 * WINDOW as usize]).await;
        });
        let (g, h) = StdUnix::pair().unwrap();
        h.set_nonblocking(true).unwrap();
        let (hr, hw) = tokio::net::UnixStream::from_std(h).unwrap().into_split();
        let host = tokio::spawn(serve_host(hr, hw, socket));
        // A scripted guest.
        tokio::task::spawn_blocking(move || {
            let mut g = g;
            g.write_all(&Frame::Open(1).encode()).unwrap();
            assert_eq!(take_data(&mut g, 1, WINDOW as usize), WINDOW as usize);
            g.write_all(&Frame::Window(1, 1).encode()).unwrap();
            assert_eq!(read_frame(&mut g).unwrap(), Some(Frame::Data(1, vec![7])));
        })
        .await
        .unwrap();
        host.await.unwrap().unwrap();
    }

    /// A Unix server that accepts and then never reads.
    fn deaf_server(path: &Path) {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_guest_breaking_the_rules_gets_close_and_bad_frames_end_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        deaf_server(&socket);
        let (g, h) = StdUnix::pair().unwrap();
        h.set_nonblocking(true).unwrap();
        let (hr, hw) = tokio::net::UnixStream::from_std(h).unwrap().into_split();
        let host = tokio::spawn(serve_host(hr, hw, socket));
        tokio::task::spawn_blocking(move || {
            let mut r = g.try_clone().unwrap();
            let mut w = g;
            // Sending past the window to a proxy that does not read.
            w.write_all(&Frame::Open(1).encode()).unwrap();
            let flood = std::thread::spawn(move || {
                let chunk = Frame::Data(1, vec![1; MAX_DATA]).encode();
                for _ in 0..(64 * WINDOW as usize / MAX_DATA) {
                    if w.write_all(&chunk).is_err() {
                        break;
                    }
                }
                w
            });
            loop {
                match read_frame(&mut r).unwrap().unwrap() {
                    Frame::Close(1) => break,
                    Frame::Window(1, _) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            let mut w = flood.join().unwrap();
            // More connections than allowed at once: the one past the limit is closed.
            for id in 2..(2 + MAX_CONNECTIONS as u32 + 1) {
                w.write_all(&Frame::Open(id).encode()).unwrap();
            }
            loop {
                match read_frame(&mut r).unwrap().unwrap() {
                    Frame::Close(id) => {
                        assert_eq!(id, 2 + MAX_CONNECTIONS as u32);
                        break;
                    }
                    Frame::Window(1, _) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            // Credit for bytes never sent.
            w.write_all(&Frame::Window(2, 1).encode()).unwrap();
            loop {
                match read_frame(&mut r).unwrap().unwrap() {
                    Frame::Close(2) => break,
                    Frame::Window(1, _) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            // A malformed frame.
            w.write_all(&[42, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        })
        .await
        .unwrap();
        let err = host.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
