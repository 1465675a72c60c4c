//! Reading the agent's work tree from the host without following its symlinks.
//!
//! The host-side code that hashes the agent's files runs unconfined, while a process
//! the agent left running may swap any file or directory for a symlink to a host secret
//! between a check and a read. So files are opened one component at a time with
//! `openat(O_NOFOLLOW)` from the work tree's root, and what is hashed is what was read
//! through that descriptor, never a path looked up again.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// What sits at a path, opened without following symlinks.
pub(crate) enum Opened {
    /// A regular file, open for reading.
    File(File),
    /// A symlink, with its target.
    Link(Vec<u8>),
    /// A directory, a FIFO, a socket, a device.
    Other,
    /// Nothing (or a directory on the way is gone or not a directory).
    Gone,
    /// The file, or a directory on the way, may not be read (the agent ran `chmod 000`).
    Unreadable,
}

fn denied(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

fn cstr(part: &[u8]) -> io::Result<CString> {
    if part.is_empty() || part == b"." || part == b".." {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    CString::new(part).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn openat(dir: libc::c_int, name: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string; the result is checked.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
    )
}

/// Opens `rel` (`/`-separated, relative) under `root`, following no symlink on the way
/// (a directory on the way that is a symlink counts as [`Opened::Gone`]: the path is no
/// longer there as a path of the tree) and not the last component either.
pub(crate) fn open_beneath(root: &Path, rel: &[u8]) -> io::Result<Opened> {
    let root_c = CString::new(std::os::unix::ffi::OsStrExt::as_bytes(root.as_os_str()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut dir = openat(libc::AT_FDCWD, &root_c, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    let (last, dirs) = parts
        .split_last()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    for part in dirs {
        let name = cstr(part)?;
        dir = match openat(
            dir.as_raw_fd(),
            &name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        ) {
            Ok(fd) => fd,
            Err(e) if gone(&e) => return Ok(Opened::Gone),
            Err(e) if denied(&e) => return Ok(Opened::Unreadable),
            Err(e) => return Err(e),
        };
    }
    let name = cstr(last)?;
    match openat(
        dir.as_raw_fd(),
        &name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
    ) {
        Ok(fd) => {
            let file = File::from(fd);
            if file.metadata()?.is_file() {
                Ok(Opened::File(file))
            } else {
                Ok(Opened::Other)
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            match read_link_at(dir.as_raw_fd(), &name) {
                Ok(target) => Ok(Opened::Link(target)),
                // Not a link after all (swapped again): it is whatever it is now; the
                // next scan sees it.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) || gone(&e) => Ok(Opened::Gone),
                Err(e) => Err(e),
            }
        }
        Err(e) if gone(&e) => Ok(Opened::Gone),
        // A socket cannot be opened.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(Opened::Other),
        Err(e) if denied(&e) => {
            // Only a regular file that may not be read is worth reporting; a device we
            // may not open is not a file.
            let path =
                root.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(rel));
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.is_file() => Ok(Opened::Unreadable),
                _ => Ok(Opened::Other),
            }
        }
        Err(e) => Err(e),
    }
}

fn read_link_at(dir: libc::c_int, name: &CString) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `buf` is writable for `buf.len()` bytes; `name` is NUL-terminated.
        let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn links_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), "in").unwrap();
        std::fs::write(tmp.path().join("secret"), "secret").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), root.join("l")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), root.join("dl")).unwrap();
        assert!(matches!(
            open_beneath(&root, b"d/f").unwrap(),
            Opened::File(_)
        ));
        match open_beneath(&root, b"l").unwrap() {
            Opened::Link(t) => {
                assert_eq!(t, tmp.path().join("secret").as_os_str().as_encoded_bytes())
            }
            _ => panic!("a link is a link"),
        }
        assert!(matches!(
            open_beneath(&root, b"dl/secret").unwrap(),
            Opened::Gone
        ));
        assert!(matches!(open_beneath(&root, b"d").unwrap(), Opened::Other));
        assert!(matches!(
            open_beneath(&root, b"none").unwrap(),
            Opened::Gone
        ));
        assert!(open_beneath(&root, b"d/../l").is_err());
    }
}
