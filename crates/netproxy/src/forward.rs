//! The forwarder that runs **inside** the sandbox: it listens on the sandbox's loopback
//! (the only interface there) and carries each TCP connection to the proxy's Unix socket,
//! which Safe Coder bound into the sandbox. Plain threads and blocking I/O: it runs in a
//! small helper process next to the sandboxed command, with no runtime to start.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Accepts connections on `listener` forever, each carried to the Unix socket `socket`
/// on two threads (one per direction).
pub fn serve(listener: TcpListener, socket: &Path) {
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        let socket = socket.to_path_buf();
        std::thread::spawn(move || {
            let _ = carry(tcp, &socket);
        });
    }
}

fn carry(tcp: TcpStream, socket: &Path) -> io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let unix = UnixStream::connect(socket)?;
    let (mut tcp_r, mut unix_w) = (tcp.try_clone()?, unix.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut tcp_r, &mut unix_w);
        let _ = unix_w.shutdown(Shutdown::Write);
    });
    let (mut unix_r, mut tcp_w) = (unix, tcp);
    let _ = io::copy(&mut unix_r, &mut tcp_w);
    let _ = tcp_w.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}
