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
