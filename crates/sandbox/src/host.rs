//! [`HostSandbox`]: the machinery shared by the backends whose files are a directory on
//! the host: `direct` (the work tree is the user's project), `copy` (a sandbox copy) and
//! `process` (a sandbox copy, and every command confined by a [`CommandConfiner`]).
//! Each of those backends wraps one and implements [`Sandbox`] over it.
//!
//! Every path goes through [`resolve_in_root`](crate::paths::resolve_in_root), so
//! symlinks cannot lead a read or a write out of the work tree; files are opened with
//! `O_NOFOLLOW`, reads refuse anything but a regular file without blocking on it, and
//! writes go through a temp file and a rename. Commands run in their own process group
//! that is killed on timeout, cancel, or when the exec future is dropped.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::time::sleep_until;

use crate::env::command_env;
use crate::paths::resolve_in_canonical_root;
use crate::{
    BackendKind, CancellationToken, DirEntry, ExecOutput, ExecRequest, FileStat, SandboxError,
    SandboxState, SandboxStatus,
};

/// Builds the process that runs `bash -c <command>` in `workdir`, confined. The caller
/// ([`HostSandbox`]) then sets stdin to null, one pipe for stdout and stderr, a new
/// process group, the allow-listed environment (variables the confiner set explicitly
/// with `Command::env` are kept on top of it) and the kill handling.
pub trait CommandConfiner: Send + Sync + 'static {
    fn build(&self, command: &str, workdir: &Path) -> Result<std::process::Command, SandboxError>;

    /// Starts a command it built, and drops `cmd` (the `process` backend forks it on a
    /// thread already inside its cgroup where that saves the join: see
    /// `backends/process/cgroup.rs`).
    fn spawn(&self, mut cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
        cmd.spawn()
    }

    /// The memory limit the confiner enforces, for the status panel.
    fn memory_limit_mb(&self) -> Option<u64> {
        None
    }

    /// The CPU limit the confiner enforces, for the status panel.
    fn cpus(&self) -> Option<f64> {
        None
    }
}

/// How long to wait for the output pipe to close once the command itself has exited:
/// only background processes that still hold the pipe can keep it open that long, and
/// they are then killed (nothing outlives its command holding the output).
const EXIT_GRACE: Duration = Duration::from_millis(250);

/// How long to wait for the pipe to close after killing the process group. Something
/// that left the group (`setsid`) and still holds the pipe is abandoned after this.
const KILL_GRACE: Duration = Duration::from_millis(500);

const READ_CHUNK: usize = 64 * 1024;

/// Longer timeouts are treated as this (a year), which also keeps deadline arithmetic
/// from overflowing for `Duration::MAX`.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The shared part of a sandbox over a host directory.
pub(crate) struct HostSandbox {
    kind: BackendKind,
    /// Where this process reaches the work tree's files (with an overlay workspace, a
    /// `/proc/self/fd/N` path into the mount: see `overlay.rs`).
    workdir: PathBuf,
    /// Where commands run (the work tree as the agent sees it).
    exec_dir: PathBuf,
    /// The overlay workspace commands join, if the work tree is one.
    overlay: Option<Arc<crate::overlay::OverlayMount>>,
    agent_root: String,
    confiner: Option<Arc<dyn CommandConfiner>>,
    /// Extra variable names handed to commands (`SandboxSpec::env_passthrough`).
    env_passthrough: Vec<String>,
    started: Instant,
    stopped: AtomicBool,
    /// Process groups of the commands running now (for `stop` and the status panel).
    running: Mutex<HashSet<i32>>,
}

impl std::fmt::Debug for HostSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSandbox")
            .field("kind", &self.kind)
            .field("workdir", &self.workdir)
            .field("overlay", &self.overlay.is_some())
            .field("confined", &self.confiner.is_some())
            .finish()
    }
}

impl HostSandbox {
    /// A sandbox over `workdir` (canonicalized; it must be an existing directory).
    /// With a `confiner`, every command is built by it (the `process` backend). With an
    /// `overlay`, the work tree is its merged tree (`workdir` is ignored): files are
    /// reached through the mount and commands join its namespace.
    pub(crate) fn new(
        kind: BackendKind,
        workdir: PathBuf,
        confiner: Option<Arc<dyn CommandConfiner>>,
        env_passthrough: Vec<String>,
        overlay: Option<Arc<crate::overlay::OverlayMount>>,
    ) -> Result<Self, SandboxError> {
        if let Some(mount) = overlay {
            return Ok(HostSandbox {
                kind,
                agent_root: mount.merged().display().to_string(),
                workdir: mount.host_root().to_path_buf(),
                exec_dir: mount.merged().to_path_buf(),
                overlay: Some(mount),
                confiner,
                env_passthrough,
                started: Instant::now(),
                stopped: AtomicBool::new(false),
                running: Mutex::new(HashSet::new()),
            });
        }
        let canonical = fs::canonicalize(&workdir).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                SandboxError::NotFound(workdir.display().to_string())
            } else {
                SandboxError::Io {
                    path: workdir.display().to_string(),
                    source,
                }
            }
        })?;
        if !canonical.is_dir() {
            return Err(SandboxError::Other(format!(
                "the work tree '{}' is not a directory",
                canonical.display()
            )));
        }
        Ok(HostSandbox {
            kind,
            agent_root: canonical.display().to_string(),
            exec_dir: canonical.clone(),
            workdir: canonical,
            overlay: None,
            confiner,
            env_passthrough,
            started: Instant::now(),
            stopped: AtomicBool::new(false),
            running: Mutex::new(HashSet::new()),
        })
    }

    /// The process groups of the commands running now.
    pub(crate) fn running_groups(&self) -> Vec<i32> {
        match self.running.lock() {
            Ok(set) => set.iter().copied().collect(),
            Err(poisoned) => poisoned.into_inner().iter().copied().collect(),
        }
    }

    fn build_command(&self, command: &str) -> Result<std::process::Command, SandboxError> {
        let mut cmd = match &self.confiner {
            // A confiner joins the overlay itself (before its own namespaces).
            Some(confiner) => confiner.build(command, &self.exec_dir)?,
            None => {
                let mut cmd = std::process::Command::new("bash");
                cmd.arg("-c").arg(command);
                match &self.overlay {
                    Some(mount) => {
                        cmd.current_dir("/");
                        mount.enter(&mut cmd);
                    }
                    None => {
                        cmd.current_dir(&self.workdir);
                    }
                }
                cmd
            }
        };
        // The confiner's explicit variables win over the scrubbed parent environment.
        let explicit: Vec<(std::ffi::OsString, Option<std::ffi::OsString>)> = cmd
            .get_envs()
            .map(|(k, v)| (k.to_os_string(), v.map(|v| v.to_os_string())))
            .collect();
        cmd.env_clear();
        cmd.envs(command_env(&self.env_passthrough));
        for (k, v) in explicit {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.stdin(Stdio::null());
        cmd.process_group(0);
        Ok(cmd)
    }

    async fn blocking<T, F>(&self, rel: &str, f: F) -> Result<T, SandboxError>
    where
        T: Send + 'static,
        F: FnOnce(PathBuf, String) -> Result<T, SandboxError> + Send + 'static,
    {
        let root = self.workdir.clone();
        let rel = rel.to_string();
        tokio::task::spawn_blocking(move || {
            let path = resolve_in_canonical_root(&root, &rel)?;
            f(path, rel)
        })
        .await
        .map_err(|e| SandboxError::Other(format!("a file operation failed to complete: {e}")))?
    }
}

fn io_error(rel: &str, source: io::Error) -> SandboxError {
    match source.kind() {
        io::ErrorKind::NotFound => SandboxError::NotFound(rel.to_string()),
        _ if source.raw_os_error() == Some(libc::ENOTDIR) => {
            SandboxError::NotFound(rel.to_string())
        }
        _ if source.raw_os_error() == Some(libc::EISDIR) => {
            SandboxError::IsDirectory(rel.to_string())
        }
        _ => SandboxError::Io {
            path: rel.to_string(),
            source,
        },
    }
}

fn read_host_file(path: &Path, rel: &str) -> Result<Vec<u8>, SandboxError> {
    // A FIFO would block the open (and then the read) until a writer comes, a device can
    // stream forever: refuse anything but a regular file, before opening it...
    let meta = fs::symlink_metadata(path).map_err(|e| io_error(rel, e))?;
    refuse_special(&meta, rel)?;
    // ...and again on what was opened, in case it was swapped after the check.
    // O_NONBLOCK: opening a FIFO swapped in meanwhile returns at once instead of
    // waiting for a writer. O_NOFOLLOW: the path is fully resolved, so a symlink here
    // means it was swapped in after the check; refuse rather than follow it.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io_error(rel, e))?;
    let meta = file.metadata().map_err(|e| io_error(rel, e))?;
    refuse_special(&meta, rel)?;
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut data).map_err(|e| io_error(rel, e))?;
    Ok(data)
}

/// Refuses a directory, FIFO, socket or device with an error naming what it is.
fn refuse_special(meta: &fs::Metadata, rel: &str) -> Result<(), SandboxError> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        return Err(SandboxError::IsDirectory(rel.to_string()));
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symbolic link that changed while it was read"
    } else {
        "not a regular file"
    };
    Err(SandboxError::NotRegularFile {
        path: rel.to_string(),
        what,
    })
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `data` to `path` through a temporary file in the same directory and a rename,
/// keeping the mode of an existing file. The temporary file is removed on any failure.
fn write_host_file(path: &Path, rel: &str, data: &[u8]) -> Result<(), SandboxError> {
    let existing_mode = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => return Err(SandboxError::IsDirectory(rel.to_string())),
        Ok(meta) => Some(meta.permissions().mode() & 0o7777),
        Err(_) => None,
    };
    let parent = path
        .parent()
        .ok_or_else(|| SandboxError::IsDirectory(rel.to_string()))?;
    fs::create_dir_all(parent).map_err(|source| SandboxError::Io {
        path: rel.to_string(),
        source,
    })?;
    let temp = parent.join(format!(
        ".safe-coder-tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(existing_mode.unwrap_or(0o666))
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)?;
        file.write_all(data)?;
        if let Some(mode) = existing_mode {
            // The umask may have stripped bits at creation.
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        drop(file);
        fs::rename(&temp, path)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&temp);
        return Err(io_error(rel, source));
    }
    Ok(())
}

fn stat_host(path: &Path, rel: &str) -> Result<Option<FileStat>, SandboxError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(FileStat {
            is_dir: meta.is_dir(),
            size: meta.len(),
            executable: !meta.is_dir() && meta.permissions().mode() & 0o111 != 0,
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(source) => Err(SandboxError::Io {
            path: rel.to_string(),
            source,
        }),
    }
}

fn list_host_dir(path: &Path, rel: &str) -> Result<Vec<DirEntry>, SandboxError> {
    let reader = fs::read_dir(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTDIR) {
            SandboxError::Other(format!("'{rel}' is a file, not a directory"))
        } else {
            io_error(rel, e)
        }
    })?;
    let mut entries = Vec::new();
    for entry in reader {
        let entry = entry.map_err(|e| io_error(rel, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(_) => continue,
        };
        entries.push(DirEntry {
            name,
            is_dir: meta.is_dir(),
            size: if meta.is_dir() { 0 } else { meta.len() },
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// One pipe for stdout and stderr, so the output arrives in the order it was written.
fn output_pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(SandboxError::Other(format!(
            "could not create the output pipe for the command: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn kill_group(pgid: i32) {
    if pgid > 0 {
        // SAFETY: kill has no memory-safety preconditions; a negative pid names a group.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Registers a running process group and kills it if the exec future is dropped before
/// the command was reaped (e.g. the turn was aborted).
struct GroupGuard<'a> {
    running: &'a Mutex<HashSet<i32>>,
    pgid: i32,
    armed: bool,
}

impl<'a> GroupGuard<'a> {
    fn new(running: &'a Mutex<HashSet<i32>>, pgid: i32) -> Self {
        match running.lock() {
            Ok(mut set) => set.insert(pgid),
            Err(poisoned) => poisoned.into_inner().insert(pgid),
        };
        GroupGuard {
            running,
            pgid,
            armed: true,
        }
    }
}

impl Drop for GroupGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            kill_group(self.pgid);
        }
        match self.running.lock() {
            Ok(mut set) => set.remove(&self.pgid),
            Err(poisoned) => poisoned.into_inner().remove(&self.pgid),
        };
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Killed {
    TimedOut,
    Cancelled,
    Leftovers,
}

/// Sums the resident memory of every process in the given process groups, from /proc.
fn groups_rss_mb(groups: &[i32]) -> Option<u64> {
    if groups.is_empty() {
        return Some(0);
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = if page > 0 { page as u64 } else { 4096 };
    let mut pages = 0u64;
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = fs::read_to_string(format!("/proc/{name}/stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        // Fields after the command name: state(3) ppid(4) pgrp(5) ... rss(24).
        let fields: Vec<&str> = after.split_whitespace().collect();
        let (Some(pgrp), Some(rss)) = (fields.get(2), fields.get(21)) else {
            continue;
        };
        if let (Ok(pgrp), Ok(rss)) = (pgrp.parse::<i32>(), rss.parse::<u64>()) {
            if groups.contains(&pgrp) {
                pages += rss;
            }
        }
    }
    Some(pages * page / (1024 * 1024))
}

/// The operations of the `Sandbox` trait; each host backend's impl calls these.
impl HostSandbox {
    pub(crate) fn backend(&self) -> BackendKind {
        self.kind
    }

    pub(crate) fn agent_root(&self) -> String {
        self.agent_root.clone()
    }

    pub(crate) fn host_workdir(&self) -> Option<&Path> {
        Some(&self.workdir)
    }

    /// Where commands run: the work tree as a confined child sees it (inside an overlay
    /// workspace's namespace, its merged path; not the `/proc/self/fd/N` path this
    /// process uses for files).
    pub(crate) fn exec_dir(&self) -> &Path {
        &self.exec_dir
    }

    /// The overlay workspace commands join, if the work tree is one.
    pub(crate) fn overlay(&self) -> Option<&Arc<crate::overlay::OverlayMount>> {
        self.overlay.as_ref()
    }

    /// The extra variable names commands get (for interactive commands).
    pub(crate) fn env_passthrough(&self) -> &[String] {
        &self.env_passthrough
    }

    pub(crate) async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        self.blocking(path, |p, rel| read_host_file(&p, &rel)).await
    }

    pub(crate) async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), SandboxError> {
        let data = data.to_vec();
        self.blocking(path, move |p, rel| write_host_file(&p, &rel, &data))
            .await
    }

    pub(crate) async fn stat(&self, path: &str) -> Result<Option<FileStat>, SandboxError> {
        self.blocking(path, |p, rel| stat_host(&p, &rel)).await
    }

    pub(crate) async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, SandboxError> {
        self.blocking(path, |p, rel| list_host_dir(&p, &rel)).await
    }

    pub(crate) async fn exec(
        &self,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecOutput, SandboxError> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(SandboxError::Unavailable(
                "the sandbox has been stopped and runs no more commands".into(),
            ));
        }
        let started = Instant::now();
        let mut std_cmd = self.build_command(&request.command)?;
        let (read_end, write_end) = output_pipe()?;
        let write_err = write_end.try_clone().map_err(|e| {
            SandboxError::Other(format!("could not duplicate the output pipe: {e}"))
        })?;
        std_cmd.stdout(Stdio::from(write_end));
        std_cmd.stderr(Stdio::from(write_err));
        let mut cmd = tokio::process::Command::from(std_cmd);
        // Our copies of the pipe's write end go with `cmd`, or EOF would never come.
        let spawned = match &self.confiner {
            Some(confiner) => confiner.spawn(cmd),
            None => {
                let spawned = cmd.spawn();
                drop(cmd);
                spawned
            }
        };
        let mut child = spawned.map_err(|e| {
            SandboxError::Unavailable(format!("could not start the command with bash: {e}"))
        })?;
        let pgid = child.id().map(|id| id as i32).unwrap_or(0);
        let mut guard = GroupGuard::new(&self.running, pgid);
        let mut reader =
            tokio::net::unix::pipe::Receiver::from_owned_fd(read_end).map_err(|e| {
                SandboxError::Other(format!("could not read the command's output: {e}"))
            })?;

        let cap = request.max_output_bytes;
        let mut captured: Vec<u8> = Vec::with_capacity(cap.min(READ_CHUNK));
        let mut total: u64 = 0;
        let mut buf = vec![0u8; READ_CHUNK];
        // Clamped so that adding it to "now" cannot overflow.
        let timeout = request.timeout.min(MAX_TIMEOUT);
        let deadline = tokio::time::Instant::now() + timeout;
        let far = deadline + MAX_TIMEOUT;
        let mut status: Option<ExitStatus> = None;
        let mut eof = false;
        let mut killed: Option<Killed> = None;
        let mut grace: Option<tokio::time::Instant> = None;

        loop {
            if eof && status.is_some() {
                break;
            }
            let running = killed.is_none() && status.is_none();
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if running => {
                    kill_group(pgid);
                    killed = Some(Killed::Cancelled);
                    grace = Some(tokio::time::Instant::now() + KILL_GRACE);
                }
                _ = sleep_until(deadline), if running => {
                    kill_group(pgid);
                    killed = Some(Killed::TimedOut);
                    grace = Some(tokio::time::Instant::now() + KILL_GRACE);
                }
                read = reader.read(&mut buf), if !eof => match read {
                    Ok(0) | Err(_) => eof = true,
                    Ok(n) => {
                        total += n as u64;
                        let room = cap.saturating_sub(captured.len());
                        captured.extend_from_slice(&buf[..n.min(room)]);
                    }
                },
                waited = child.wait(), if status.is_none() => {
                    let exit = waited.map_err(|e| SandboxError::Other(format!(
                        "could not wait for the command: {e}"
                    )))?;
                    status = Some(exit);
                    if !eof && grace.is_none() {
                        grace = Some(tokio::time::Instant::now() + EXIT_GRACE);
                    }
                }
                _ = sleep_until(grace.unwrap_or(far)), if grace.is_some() => {
                    if killed.is_none() && status.is_some() {
                        // The command is done but background processes still hold its
                        // output: kill them, then wait a little for the pipe to close.
                        kill_group(pgid);
                        killed = Some(Killed::Leftovers);
                        grace = Some(tokio::time::Instant::now() + KILL_GRACE);
                    } else {
                        break;
                    }
                }
            }
        }
        if status.is_some() && killed != Some(Killed::Leftovers) {
            guard.armed = false;
        }
        drop(guard);

        let mut output = String::from_utf8_lossy(&captured).into_owned();
        if killed == Some(Killed::Leftovers) {
            if !output.is_empty() && !output.ends_with('\n') {
                output.push('\n');
            }
            // A confined command's processes all end with it (PID namespace), so the
            // redirect advice only holds without a confiner.
            output.push_str(if self.confiner.is_some() {
                "[background processes that still held the output were killed; \
                 in this sandbox every process of a command ends with it]"
            } else {
                "[background processes that still held the output were killed; \
                 redirect a background command's output (cmd > log 2>&1 &) to keep it running]"
            });
        }
        let timed_out = killed == Some(Killed::TimedOut);
        let cancelled = killed == Some(Killed::Cancelled);
        let exit_code = if timed_out || cancelled {
            None
        } else {
            status.and_then(|s| s.code())
        };
        Ok(ExecOutput {
            exit_code,
            output,
            total_output_bytes: total,
            timed_out,
            cancelled,
            duration: started.elapsed(),
        })
    }

    /// The status without live usage: backend, state, uptime and the confiner's limits.
    /// Each backend's `status.rs` adds what it can measure.
    pub(crate) fn base_status(&self) -> SandboxStatus {
        SandboxStatus {
            backend: self.kind.as_str().to_string(),
            state: if self.stopped.load(Ordering::SeqCst) {
                SandboxState::Stopped
            } else {
                SandboxState::Running
            },
            uptime_secs: self.started.elapsed().as_secs(),
            memory_limit_mb: self.confiner.as_ref().and_then(|c| c.memory_limit_mb()),
            cpus: self.confiner.as_ref().and_then(|c| c.cpus()),
            memory_used_mb: None,
            cpu_percent: None,
        }
    }

    /// Resident memory of the commands running now, summed from /proc.
    pub(crate) async fn running_rss_mb(&self) -> Option<u64> {
        let groups = self.running_groups();
        if groups.is_empty() {
            return Some(0);
        }
        tokio::task::spawn_blocking(move || groups_rss_mb(&groups))
            .await
            .ok()
            .flatten()
    }

    pub(crate) async fn stop(&self) -> Result<(), SandboxError> {
        self.stopped.store(true, Ordering::SeqCst);
        for pgid in self.running_groups() {
            kill_group(pgid);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct EnvConfiner;

    impl CommandConfiner for EnvConfiner {
        fn build(
            &self,
            command: &str,
            workdir: &Path,
        ) -> Result<std::process::Command, SandboxError> {
            let mut cmd = std::process::Command::new("bash");
            cmd.arg("-c")
                .arg(command)
                .current_dir(workdir)
                .env("CONFINED_BY", "test")
                .env("SAFE_CODER", "overridden");
            Ok(cmd)
        }
        fn memory_limit_mb(&self) -> Option<u64> {
            Some(512)
        }
    }

    /// The confiner builds the command, and its explicit variables win over the
    /// allow-listed environment.
    #[tokio::test]
    async fn the_confiner_builds_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let sb = HostSandbox::new(
            BackendKind::Process,
            dir.path().to_path_buf(),
            Some(Arc::new(EnvConfiner)),
            Vec::new(),
            None,
        )
        .unwrap();
        let out = sb
            .exec(
                ExecRequest {
                    command: "echo $CONFINED_BY $SAFE_CODER".into(),
                    timeout: Duration::from_secs(10),
                    max_output_bytes: 1024,
                },
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(out.output, "test overridden\n");
        let status = sb.base_status();
        assert_eq!(status.backend, "process");
        assert_eq!(status.memory_limit_mb, Some(512));
    }
}
