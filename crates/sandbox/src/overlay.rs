//! The copy-free workspace: the user's project as the read-only lower layer of an
//! overlayfs, the session's writes in an upper directory of the session dir, and the
//! merged tree mounted at the session's work-tree path — inside a user and mount
//! namespace of its own, so no privilege is needed (Linux 5.11+ lets an unprivileged
//! user namespace mount overlayfs; bubblewrap gained overlay options only in 0.9, so
//! the mount is made here for every mechanism).
//!
//! The namespace is made once per session by a short-lived helper (`cat`, which only
//! waits for its stdin to close) and then kept alive by descriptors alone:
//! - [`OverlayMount::enter`] joins it in a child before `exec` (git, bubblewrap, the
//!   in-process confiner, plain bash), where the merged tree is at
//!   [`OverlayMount::merged`], the same absolute path the agent sees;
//! - [`OverlayMount::host_root`] reaches the merged tree from this process, which stays
//!   in the host's namespace (a `/proc/self/fd/N` path through a descriptor of the
//!   mounted directory: never canonicalize it, that would leave the mount).
//!
//! The upper directory is plain files: a killed session's writes are there after a
//! reboot, and mounting again (with the same layers) shows them again.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::SandboxError;

/// The layers of one overlay workspace (all absolute host paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layers {
    /// The user's project: read, never written.
    pub lower: PathBuf,
    /// The session's writes (new and changed files, whiteouts for deletions).
    pub upper: PathBuf,
    /// overlayfs's scratch directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// Where the merged tree is mounted (the session's work tree; an empty directory
    /// on the host).
    pub merged: PathBuf,
}

/// A mounted overlay workspace, held by descriptors (see the module docs).
#[derive(Debug)]
pub struct OverlayMount {
    layers: Layers,
    userns: OwnedFd,
    mntns: OwnedFd,
    root: OwnedFd,
    host_root: PathBuf,
    /// Bumped by [`Self::note_host_write`]: how many times this process wrote the
    /// merged tree in a way a second mount of the same layers cannot see.
    host_writes: std::sync::atomic::AtomicU64,
    /// Set by [`Self::share_with_engine`]: a second mount of these layers writes them.
    shared: std::sync::atomic::AtomicBool,
}

impl OverlayMount {
    /// Mounts `layers` in a new user and mount namespace. `upper`, `work` and `merged`
    /// are created if missing. Fails (saying why) where the kernel, the filesystem or a
    /// path does not allow it: the caller then falls back to a copy.
    pub fn mount(layers: Layers) -> Result<OverlayMount, SandboxError> {
        let fail = |why: String| SandboxError::Unavailable(format!("no overlay workspace: {why}"));
        for p in [&layers.lower, &layers.upper, &layers.work, &layers.merged] {
            let b = p.as_os_str().as_bytes();
            if !p.is_absolute() || b.iter().any(|c| matches!(c, b',' | b':' | b'\\' | 0)) {
                return Err(fail(format!(
                    "the path {} cannot be given to overlayfs (it must be absolute, without `,`, `:` or `\\`)",
                    p.display()
                )));
            }
        }
        for p in [&layers.upper, &layers.work, &layers.merged] {
            std::fs::create_dir_all(p)
                .map_err(|e| fail(format!("cannot create {}: {e}", p.display())))?;
        }
        let cstr = |s: &[u8]| CString::new(s).map_err(|_| fail("a path holds a NUL byte".into()));
        let opts = cstr(overlay_options(&layers).as_bytes())?;
        let target = cstr(layers.merged.as_os_str().as_bytes())?;
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let uid_map = format!("{uid} {uid} 1");
        let gid_map = format!("{gid} {gid} 1");
        let mut cmd = Command::new(helper_binary().map_err(fail)?);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir("/");
        // SAFETY: the closure makes only async-signal-safe system calls (unshare, open,
        // write, close, mount) on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                    return Err(io::Error::last_os_error());
                }
                write_proc(c"/proc/self/setgroups", b"deny")?;
                write_proc(c"/proc/self/uid_map", uid_map.as_bytes())?;
                write_proc(c"/proc/self/gid_map", gid_map.as_bytes())?;
                if libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                mount_overlay(&target, &opts)
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            fail(format!(
                "mounting overlayfs in a user namespace failed ({e}); the kernel may be older than 5.11 or forbid unprivileged user namespaces"
            ))
        })?;
        let pid = child.id();
        let open = |p: &Path, flags: libc::c_int| open_fd(p, flags).map_err(fail);
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let rel = layers.merged.strip_prefix("/").unwrap_or(&layers.merged);
        let opened = (|| {
            Ok::<_, SandboxError>((
                open(&proc.join("ns/user"), libc::O_RDONLY)?,
                open(&proc.join("ns/mnt"), libc::O_RDONLY)?,
                open(
                    &proc.join("root").join(rel),
                    libc::O_PATH | libc::O_DIRECTORY,
                )?,
            ))
        })();
        // The helper's work is done: closing its stdin ends it.
        drop(child.stdin.take());
        let _ = child.wait();
        let (userns, mntns, root) = opened?;
        let host_root = PathBuf::from(format!("/proc/self/fd/{}", root.as_raw_fd()));
        Ok(OverlayMount {
            layers,
            userns,
            mntns,
            root,
            host_root,
            host_writes: Default::default(),
            shared: Default::default(),
        })
    }

    /// Mounts the layers afresh in the same namespace, in place of the mount there.
    ///
    /// Needed only when a second mount of the same layers writes them (the docker
    /// backend's engine-made overlay volume, docs/docker.md): overlayfs caches what
    /// it looked up, so after the other mount copied a file up, this one would keep
    /// reading the lower file. A fresh mount looks everything up again. The old mount
    /// is detached (it lives on only for descriptors still open in it);
    /// [`Self::host_root`] keeps its path, and every process that enters the namespace
    /// from now on sees the new mount.
    pub fn refresh(&self) -> Result<(), SandboxError> {
        let fail = |why: String| {
            SandboxError::Unavailable(format!("cannot mount the overlay workspace again: {why}"))
        };
        let opts = CString::new(overlay_options(&self.layers))
            .map_err(|_| fail("a path holds a NUL byte".into()))?;
        let target = CString::new(self.layers.merged.as_os_str().as_bytes())
            .map_err(|_| fail("a path holds a NUL byte".into()))?;
        let mut cmd = Command::new(helper_binary().map_err(fail)?);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir("/");
        let mut enter = self.enter_setup();
        // SAFETY: the closure makes only async-signal-safe system calls (setns, chdir,
        // umount2, mount) on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                enter()?;
                if libc::chdir(c"/".as_ptr()) != 0
                    || libc::umount2(target.as_ptr(), libc::MNT_DETACH) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                mount_overlay(&target, &opts)
            });
        }
        let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
        let rel = self
            .layers
            .merged
            .strip_prefix("/")
            .unwrap_or(&self.layers.merged);
        let path = PathBuf::from(format!("/proc/{}/root", child.id())).join(rel);
        let opened = open_fd(&path, libc::O_PATH | libc::O_DIRECTORY).map_err(fail);
        drop(child.stdin.take());
        let _ = child.wait();
        let fresh = opened?;
        // The same descriptor number now names the new mount, so `host_root` holds.
        // SAFETY: both descriptors are open; dup3 replaces `root` atomically.
        if unsafe { libc::dup3(fresh.as_raw_fd(), self.root.as_raw_fd(), libc::O_CLOEXEC) } < 0 {
            return Err(fail(format!("dup3: {}", io::Error::last_os_error())));
        }
        Ok(())
    }

    /// Records that this process wrote the merged tree (a rollback, a restore): a
    /// second mount of the same layers must be made afresh before it is used again
    /// (see [`Self::refresh`]; the docker backend restarts its container).
    pub fn note_host_write(&self) {
        self.host_writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Records that a second mount of these layers (a container engine's) writes them
    /// from now on, so readers must call [`Self::refresh_if_shared`] before they look.
    pub fn share_with_engine(&self) {
        self.shared.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether [`Self::share_with_engine`] was called.
    pub fn is_shared(&self) -> bool {
        self.shared.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// [`Self::refresh`] when the layers are shared with another mount; nothing
    /// otherwise (the common case: every writer goes through this mount).
    pub fn refresh_if_shared(&self) -> Result<(), SandboxError> {
        if self.is_shared() {
            self.refresh()?;
        }
        Ok(())
    }

    /// How many host writes [`Self::note_host_write`] has recorded.
    pub fn host_writes(&self) -> u64 {
        self.host_writes.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn layers(&self) -> &Layers {
        &self.layers
    }

    /// The merged tree's path inside the namespace (what the agent sees).
    pub fn merged(&self) -> &Path {
        &self.layers.merged
    }

    /// The merged tree as this process reaches it (`/proc/self/fd/N`). Use it for file
    /// access only; it is meaningless to another process and must not be canonicalized.
    pub fn host_root(&self) -> &Path {
        &self.host_root
    }

    /// Makes `cmd` join the namespace before it runs, in `merged()` as its working
    /// directory. Register it before any other setup that makes namespaces.
    pub fn enter(&self, cmd: &mut Command) {
        let setup = self.enter_setup();
        // SAFETY: the closure is async-signal-safe (setns, chdir).
        unsafe {
            cmd.pre_exec(setup);
        }
    }

    /// The child-side half of [`Self::enter`], for callers that compose their own
    /// `pre_exec` chain: setns into the user then the mount namespace, then chdir.
    pub fn enter_setup(&self) -> Box<dyn FnMut() -> io::Result<()> + Send + Sync> {
        let user = self.userns.as_raw_fd();
        let mnt = self.mntns.as_raw_fd();
        let dir = CString::new(self.layers.merged.as_os_str().as_bytes()).unwrap_or_default();
        Box::new(move || {
            // SAFETY: setns/chdir on descriptors and a string owned by the closure.
            unsafe {
                if libc::setns(user, libc::CLONE_NEWUSER) != 0
                    || libc::setns(mnt, libc::CLONE_NEWNS) != 0
                    || libc::chdir(dir.as_ptr()) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        })
    }

    /// The descriptor of the merged directory (kept for [`Self::host_root`]).
    pub fn root_fd(&self) -> &OwnedFd {
        &self.root
    }
}

/// Mounts overlayfs with `opts` at `target` (async-signal-safe: for `pre_exec`).
fn mount_overlay(target: &std::ffi::CStr, opts: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: two valid C strings; the result is checked.
    let r = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens `p` (close-on-exec) with `flags`; `Err` says what failed.
fn open_fd(p: &Path, flags: libc::c_int) -> Result<OwnedFd, String> {
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|_| "a path holds a NUL byte".to_string())?;
    // SAFETY: a valid C string; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "cannot open {}: {}",
            p.display(),
            io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The mount options of `layers` (`userxattr`: the layers are written by an
/// unprivileged user, and a privileged mount of them reads the same attributes).
pub fn overlay_options(layers: &Layers) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        layers.lower.display(),
        layers.upper.display(),
        layers.work.display()
    )
}

/// The namespace's short-lived holder: `cat`, which only waits for its stdin to close.
fn helper_binary() -> Result<&'static str, String> {
    ["/usr/bin/cat", "/bin/cat"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| "cat is not installed in /usr/bin or /bin".into())
}

/// Writes `data` to a /proc file in one `write` (async-signal-safe).
fn write_proc(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: open/write/close with a valid path and buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = io::Error::last_os_error();
        libc::close(fd);
        if n != data.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}

/// Whether `SAFE_CODER_WORKSPACE=copy` asks for the copy workspace even where an
/// overlay works (tests exercise both; a user can rule the overlay out).
pub fn forced_copy() -> bool {
    std::env::var("SAFE_CODER_WORKSPACE").is_ok_and(|v| v.trim() == "copy")
}

/// Whether an overlay workspace can be mounted here, tried once per process in a
/// temporary directory under `scratch` (the data dir, so the upper layer's filesystem
/// is the one sessions use). `Err` says why not.
pub fn overlay_probe(scratch: &Path) -> Result<(), String> {
    let dir = scratch.join(format!(".overlay-probe-{}", std::process::id()));
    let lower = dir.join("lower");
    let made = std::fs::create_dir_all(&lower)
        .map_err(|e| format!("cannot create {}: {e}", lower.display()))
        .and_then(|_| {
            OverlayMount::mount(Layers {
                lower: lower.clone(),
                upper: dir.join("upper"),
                work: dir.join("work"),
                merged: dir.join("merged"),
            })
            .map(drop)
            .map_err(|e| e.to_string())
        });
    remove_tree(&dir);
    made
}

/// Removes a session's overlay directories, including overlayfs's `work/work`, which
/// it leaves without permissions, and which a container engine's mount leaves owned by
/// root (`ovl-work-engine/work`): empty, it can still be removed from its parent.
pub fn remove_tree(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_ok() {
        return;
    }
    let dirs = walk_dirs(dir);
    for entry in &dirs {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(entry, std::fs::Permissions::from_mode(0o700));
    }
    if std::fs::remove_dir_all(dir).is_ok() {
        return;
    }
    // Deepest first: what can be listed is emptied, every directory is removed.
    for entry in dirs.iter().rev() {
        if let Ok(rd) = std::fs::read_dir(entry) {
            for e in rd.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(entry);
    }
}

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}
