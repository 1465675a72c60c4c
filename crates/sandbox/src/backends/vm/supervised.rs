//! The VMM's helper processes (QEMU, `vhost-device-vsock`, Firecracker), each spawned by
//! a thread of its own that then waits for it. The child is spawned with
//! `PR_SET_PDEATHSIG = SIGKILL`, which the kernel ties to the *thread* that forked it:
//! because that thread lives exactly as long as the child, a VM never outlives Safe
//! Coder, even after a `kill -9`, and never dies early because a short-lived tokio
//! blocking thread that happened to spawn it went away.

use std::io;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

#[derive(Default)]
struct Exit {
    status: Mutex<Option<ExitStatus>>,
    changed: Condvar,
}

/// A child process watched by its own thread.
pub(crate) struct Supervised {
    pid: i32,
    name: String,
    exit: Arc<Exit>,
}

impl Supervised {
    /// Spawns `cmd` (in a new process group, killed when Safe Coder dies).
    pub(crate) fn spawn(name: &str, mut cmd: Command) -> io::Result<Supervised> {
        // SAFETY: prctl and setpgid are async-signal-safe system calls on no shared memory.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let exit = Arc::new(Exit::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let watcher = exit.clone();
        std::thread::Builder::new()
            .name(format!("vm-{name}"))
            .spawn(move || {
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(child.id() as i32));
                let status = child.wait();
                if let Ok(mut s) = watcher.status.lock() {
                    *s = status.ok().or_else(|| {
                        // `wait` failing means the child is gone; record a kill.
                        use std::os::unix::process::ExitStatusExt;
                        Some(ExitStatus::from_raw(libc::SIGKILL))
                    });
                }
                watcher.changed.notify_all();
            })?;
        let pid = rx
            .recv()
            .map_err(|_| io::Error::other(format!("the {name} watcher thread died")))??;
        Ok(Supervised {
            pid,
            name: name.to_string(),
            exit,
        })
    }

    /// `None` while it runs.
    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        self.exit.status.lock().ok().and_then(|s| *s)
    }

    /// `Ok` while it runs, else a sentence saying how it ended.
    pub(crate) fn alive(&self) -> Result<(), String> {
        match self.exit_status() {
            None => Ok(()),
            Some(s) => Err(format!("{} exited ({s})", self.name)),
        }
    }

    /// Waits up to `timeout` for the process to end by itself.
    pub(crate) fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.exit.status.lock().ok()?;
        loop {
            if let Some(s) = *guard {
                return Some(s);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            guard = self
                .exit
                .changed
                .wait_timeout(guard, deadline - now)
                .ok()?
                .0;
        }
    }

    /// SIGKILLs its process group and waits for the watcher to see it go.
    pub(crate) fn kill(&self) {
        if self.exit_status().is_none() {
            // SAFETY: plain kill(2) on the group we created.
            unsafe {
                libc::kill(-self.pid, libc::SIGKILL);
            }
            let _ = self.wait_timeout(Duration::from_secs(5));
        }
    }
}

/// Whether a Unix socket at `path` is listening (not just bound). A server creates the
/// socket file at `bind` and accepts only after `listen`; a connect in between is
/// refused. `/proc/net/unix` shows the listening state (`__SO_ACCEPTCON`, flags
/// `00010000`) without connecting, which matters for a server that treats a connection
/// as its one client (`vhost-device-vsock`).
pub(crate) fn is_listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return path.exists();
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8 && f[7] == want && f[3] == "00010000"
    })
}

/// Waits until `proc`'s socket at `path` listens; `what` names it in the error.
pub(crate) fn wait_listening(
    proc: &Supervised,
    path: &Path,
    what: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !is_listening(path) {
        proc.alive()?;
        if Instant::now() >= deadline {
            return Err(format!(
                "{what} did not listen on {} within {} s",
                path.display(),
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reports_exit_and_kills() {
        let mut c = Command::new("sh");
        c.args(["-c", "exit 3"]);
        let s = Supervised::spawn("sh", c).unwrap();
        assert_eq!(
            s.wait_timeout(Duration::from_secs(10)).unwrap().code(),
            Some(3)
        );
        assert!(s.alive().unwrap_err().contains("sh exited"));

        let mut c = Command::new("sleep");
        c.arg("60");
        let s = Supervised::spawn("sleep", c).unwrap();
        assert!(s.alive().is_ok());
        s.kill();
        assert!(s.exit_status().is_some());
        assert!(Supervised::spawn("nope", Command::new("/nonexistent/x")).is_err());
    }

    #[test]
    fn a_bound_socket_is_not_listening_until_listen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        assert!(!is_listening(&p));
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        assert!(is_listening(&p));
        drop(l);
        assert!(!is_listening(&p), "the file stays, nobody listens");
    }
}
