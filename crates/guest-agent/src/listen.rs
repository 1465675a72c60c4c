//! Where the agent listens: vsock in the VM; a Unix socket or TCP loopback for tests on
//! the host (the same server code either way). Every accepted connection becomes a
//! `File` over the socket's fd (read/write work on any stream socket).

use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use crate::server::{serve_connection, Agent};

/// A listening address, as given to `--listen`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `vsock:PORT` (any CID).
    Vsock(u32),
    /// `unix:PATH`.
    Unix(PathBuf),
    /// `tcp:HOST:PORT`.
    Tcp(String),
}

impl Address {
    pub fn parse(s: &str) -> Option<Address> {
        if let Some(p) = s.strip_prefix("vsock:") {
            return p.parse().ok().map(Address::Vsock);
        }
        if let Some(p) = s.strip_prefix("unix:") {
            return (!p.is_empty()).then(|| Address::Unix(PathBuf::from(p)));
        }
        s.strip_prefix("tcp:").map(|p| Address::Tcp(p.to_string()))
    }
}

pub enum Listener {
    Vsock(OwnedFd),
    Unix(UnixListener),
    Tcp(TcpListener),
}

fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket calls; the address is a fully initialised sockaddr_vm.
    unsafe {
        let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_vm = std::mem::zeroed();
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        if libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        ) != 0
            || libc::listen(fd.as_raw_fd(), 16) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

impl Listener {
    pub fn bind(addr: &Address) -> io::Result<Listener> {
        Ok(match addr {
            Address::Vsock(port) => Listener::Vsock(vsock_listen(*port)?),
            Address::Unix(path) => {
                let _ = std::fs::remove_file(path);
                Listener::Unix(UnixListener::bind(path)?)
            }
            Address::Tcp(a) => Listener::Tcp(TcpListener::bind(a)?),
        })
    }

    /// The next connection.
    pub fn accept(&self) -> io::Result<File> {
        let fd: OwnedFd = match self {
            Listener::Vsock(fd) => {
                // SAFETY: accept4 on our listening socket, no address wanted.
                let c = unsafe {
                    libc::accept4(
                        fd.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if c < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: a new fd owned by nobody else.
                unsafe { OwnedFd::from_raw_fd(c) }
            }
            Listener::Unix(l) => l.accept()?.0.into(),
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                s.into()
            }
        };
        Ok(File::from(fd))
    }

    /// Accepts connections forever, one thread each.
    pub fn serve(&self, agent: Arc<Agent>) -> io::Result<()> {
        loop {
            let conn = match self.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.raw_os_error() == Some(libc::EMFILE)
                        || e.raw_os_error() == Some(libc::ENFILE) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => return Err(e),
            };
            let agent = Arc::clone(&agent);
            std::thread::Builder::new()
                .name("connection".into())
                .spawn(move || serve_connection(agent, conn))?;
        }
    }
}

/// The name of the virtio-serial port the host may give the agent (QEMU's snapshot
/// mode: a vhost-user vsock device cannot be migrated, a virtio-serial port can).
pub const SERIAL_PORT_NAME: &str = "safe-coder.agent";

/// The `/dev/vportNpM` whose `/sys/class/virtio-ports/*/name` is `name` (there is no
/// udev in the guest to make `/dev/virtio-ports/<name>`).
pub fn find_serial_port(name: &str) -> Option<PathBuf> {
    let rd = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    for e in rd.flatten() {
        let port_name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if port_name.trim() == name {
            return Some(PathBuf::from("/dev").join(e.file_name()));
        }
    }
    None
}

/// Serves the protocol on a virtio-serial port, one host connection after another.
/// The port is a byte stream without connections: while no host is attached, reads
/// end at once and `poll` says `POLLHUP`, so the agent waits for `POLLIN` (a host that
/// attached and sent its hello), serves until the stream ends, and waits again.
pub fn serve_serial(path: &std::path::Path, agent: Arc<Agent>) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    loop {
        let mut pfd = libc::pollfd {
            fd: port.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if pfd.revents & libc::POLLIN != 0 {
            serve_connection(Arc::clone(&agent), port.try_clone()?);
        } else {
            // No host attached: look again shortly.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
