//! The messages: what the host asks ([`Request`]) and what the agent answers
//! ([`Response`]). Every frame carries one of them plus an optional binary tail (file
//! contents, command output) that is never JSON-encoded; see [`crate::frame`].

use serde::{Deserialize, Serialize};

/// Identifies a request; every response frame carries the id of the request it answers.
/// The host picks ids (unique among the requests in flight); id 0 is the handshake.
pub type RequestId = u64;

/// The first frame each side sends (id 0). Its shape never changes between versions, so
/// any two versions can tell each other apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`crate::PROTOCOL_VERSION`] of the sender.
    pub protocol: u32,
    /// Free text naming the sender, e.g. `safe-coder-guest-agent 0.1.0`.
    pub software: String,
}

/// What the host asks the agent. Paths are relative to [`crate::WORKSPACE`] with `/`
/// separators (an absolute path inside it is accepted too); a path that leaves it,
/// through `..` or a symlink, is refused with [`ErrorKind::OutsideWorkspace`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Answered by [`Response::Pong`]: a round trip, nothing else.
    Ping,
    /// Run a program. Answered by [`Response::ExecStarted`], then any number of
    /// [`Response::Output`] frames, then one [`Response::Exited`] — or by a single
    /// [`Response::Error`] when it could not start.
    Exec(ExecRequest),
    /// Kill the whole process group (and session) of the exec started by request `exec`.
    /// Answered by [`Response::Done`] (also when it had already ended); the exec itself
    /// then ends with an [`ExecExit`] whose `cancelled` is true.
    Cancel { exec: RequestId },
    /// Answered by [`Response::FileData`] with the contents in the frame's data.
    ReadFile { path: String },
    /// The contents are the frame's data. Creates missing parent directories; writes a
    /// temp file and renames it. `mode` (permission bits) when given, else an existing
    /// file's mode is kept (so its executable bit survives), else 0644.
    /// Answered by [`Response::Done`].
    WriteFile {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// Answered by [`Response::Stat`] (`None` when nothing is there). Does not follow a
    /// final symlink.
    Stat { path: String },
    /// Answered by [`Response::Entries`], sorted by name.
    ListDir { path: String },
    /// Removes a file, a symlink or a directory tree; nothing there is not an error.
    /// Answered by [`Response::Done`].
    Remove { path: String },
    /// Records the state of the workspace now. Answered by [`Response::Marked`].
    SetMark,
    /// Which files were written, deleted or changed mode since `mark`. With `set_mark`,
    /// a new mark is recorded in the same step (nothing can slip between the report and
    /// the next mark). Answered by [`Response::Changes`].
    ChangesSince {
        mark: u64,
        #[serde(default)]
        set_mark: bool,
    },
    /// Memory and CPU use of the guest. Answered by [`Response::Usage`].
    Usage,
    /// Sets the guest's wall clock (QEMU's microvm has no RTC, and a VM restored from a
    /// snapshot wakes at the time of the snapshot). Answered by [`Response::Done`]; an
    /// agent that is not the VM's init (tests on the host) refuses it, so it never
    /// changes a host's clock. Added after version 1 shipped without a version bump:
    /// an agent that predates it answers `invalid_request`.
    SetClock { unix_ms: u64 },
    /// Answered by [`Response::Done`]; then the agent kills every command, syncs the
    /// disks and powers the VM off (or exits, when it is not PID 1).
    Shutdown,
    /// What this agent can do beyond version 1's requests. Answered by
    /// [`Response::Features`]; an agent that predates it answers `invalid_request`,
    /// which means "none". Added after version 1 shipped, without a version bump.
    Features,
    /// Run a program that talks to the host while it runs (`safe-coder run`): with
    /// `terminal`, a PTY of that size is its stdin, stdout, stderr and controlling
    /// terminal; without, its stdin is a pipe fed by [`Request::Stdin`] and its output
    /// comes back as with [`Request::Exec`]. Answered like `exec`: [`Response::ExecStarted`],
    /// [`Response::Output`] frames (the PTY's bytes are all `stdout`), then
    /// [`Response::Exited`]. [`Request::Cancel`] kills its whole process group and
    /// session, as does the end of the connection. Needs the feature
    /// [`FEATURE_INTERACTIVE`].
    ExecInteractive(InteractiveExec),
    /// Bytes for the stdin of the interactive exec started by request `exec` (the
    /// frame's data); empty data ends its input (without a PTY: the pipe is closed).
    /// Answered by [`Response::Done`] once the bytes were written, so the host can bound
    /// what is in flight. Needs [`FEATURE_INTERACTIVE`].
    Stdin { exec: RequestId },
    /// Sets the size of the PTY of the interactive exec `exec` (its foreground process
    /// group gets `SIGWINCH`). Answered by [`Response::Done`]; a no-op without a PTY.
    /// Needs [`FEATURE_INTERACTIVE`].
    Resize {
        exec: RequestId,
        rows: u16,
        cols: u16,
    },
}

/// The feature word of [`Request::ExecInteractive`], [`Request::Stdin`] and
/// [`Request::Resize`] in [`Response::Features`].
pub const FEATURE_INTERACTIVE: &str = "exec_interactive";

/// The size of a terminal, in character cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
}

/// A program to run with its input streamed from the host
/// ([`Request::ExecInteractive`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InteractiveExec {
    /// As [`ExecRequest::argv`].
    pub argv: Vec<String>,
    /// Exactly the environment the program gets, as [`ExecRequest::env`].
    pub env: Vec<(String, String)>,
    /// The working directory, under the workspace; `""` is the workspace itself.
    #[serde(default)]
    pub cwd: String,
    /// A PTY of this size; `None`: pipes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<TermSize>,
    /// Without a PTY: stderr goes into stdout's pipe (all chunks `stdout`). With one,
    /// everything is the terminal's anyway.
    #[serde(default)]
    pub merge_stderr: bool,
}

/// A program to run in the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The program and its arguments; `argv[0]` is looked up in the `PATH` of `env`
    /// (or `/usr/sbin:/usr/bin:/sbin:/bin` when `env` has none). The host sends
    /// `["bash", "-c", command]` for a shell command.
    pub argv: Vec<String>,
    /// Exactly the environment the program gets: nothing of the agent's is inherited.
    pub env: Vec<(String, String)>,
    /// The working directory, under the workspace; `""` is the workspace itself.
    #[serde(default)]
    pub cwd: String,
    /// After this long the process group is killed and the exit says `timed_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// stderr goes into the same pipe as stdout (every chunk is [`Stream::Stdout`]), so
    /// the output keeps the order the program wrote it in.
    #[serde(default)]
    pub merge_stderr: bool,
    /// At most this many output bytes are sent; the rest is read and counted only
    /// (see [`ExecExit::output_bytes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_limit: Option<u64>,
}

impl ExecRequest {
    /// `bash -c command` in the workspace root with the given environment.
    pub fn shell(command: impl Into<String>, env: Vec<(String, String)>) -> Self {
        ExecRequest {
            argv: vec!["bash".into(), "-c".into(), command.into()],
            env,
            cwd: String::new(),
            timeout_ms: None,
            merge_stderr: true,
            output_limit: None,
        }
    }
}

/// Which pipe a chunk of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How an exec ended. Stdin was closed (`/dev/null`) throughout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecExit {
    /// The exit code, when the program exited by itself.
    pub code: Option<i32>,
    /// The signal that killed it (also set after a timeout or cancel: `SIGKILL`).
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub cancelled: bool,
    /// Everything the program printed (stdout + stderr), also beyond `output_limit`.
    pub output_bytes: u64,
    /// From start to the end of its output, in milliseconds (guest clock).
    pub duration_ms: u64,
}

/// What kind of thing a path is (never following a final symlink).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

/// Metadata of one path in the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`0o7777` part of `st_mode`).
    pub mode: u32,
    /// A symlink's target, as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl FileStat {
    /// Any executable bit set.
    pub fn is_executable(&self) -> bool {
        self.mode & 0o111 != 0
    }
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    pub mode: u32,
}

/// One path that changed since a mark. Only files and symlinks are reported (git tracks
/// nothing else): a directory tree removed shows up as each of its files deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Relative to the workspace, `/`-separated.
    pub path: String,
    pub kind: ChangeKind,
    /// What is there now; `None` for [`ChangeKind::Deleted`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat: Option<FileStat>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Created, or its contents (or its kind, or a symlink's target) changed.
    Written,
    Deleted,
    /// Only the permission bits changed.
    ModeChanged,
}

/// The guest's memory and CPU use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    pub memory_total_bytes: u64,
    /// `MemAvailable` of `/proc/meminfo`.
    pub memory_available_bytes: u64,
    /// Online CPUs.
    pub cpus: u32,
    /// CPU time since boot over all CPUs, busy (user, nice, system, irq, softirq, steal)
    /// and in total (busy + idle + iowait), in milliseconds.
    pub cpu_busy_ms: u64,
    pub cpu_total_ms: u64,
    pub uptime_ms: u64,
    /// Execs running now.
    pub running_execs: u32,
}

impl UsageReport {
    pub fn memory_used_bytes(&self) -> u64 {
        self.memory_total_bytes
            .saturating_sub(self.memory_available_bytes)
    }

    /// CPU use between `earlier` and this report, in percent of one core (200 = two
    /// cores busy), as the status panel shows it. `None` when no time passed.
    pub fn cpu_percent_since(&self, earlier: &UsageReport) -> Option<f64> {
        let total = self.cpu_total_ms.checked_sub(earlier.cpu_total_ms)?;
        let busy = self.cpu_busy_ms.checked_sub(earlier.cpu_busy_ms)?;
        if total == 0 {
            return None;
        }
        Some(busy as f64 / total as f64 * f64::from(self.cpus.max(1)) * 100.0)
    }
}

/// What the agent answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    Pong,
    /// The request was carried out (write, remove, cancel, shutdown).
    Done,
    /// The exec's process (and process group, and session) id in the guest.
    ExecStarted {
        pid: u32,
    },
    /// A chunk of output; the bytes are the frame's data.
    Output {
        stream: Stream,
    },
    Exited(ExecExit),
    /// A file's contents (the frame's data) and its permission bits.
    FileData {
        mode: u32,
    },
    Stat {
        #[serde(default)]
        stat: Option<FileStat>,
    },
    Entries {
        entries: Vec<DirEntry>,
    },
    Marked {
        mark: u64,
    },
    Changes {
        changes: Vec<Change>,
        /// The new mark, when `set_mark` was asked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mark: Option<u64>,
    },
    Usage(UsageReport),
    /// The answer to [`Request::Features`]: feature words such as
    /// [`FEATURE_INTERACTIVE`].
    Features {
        features: Vec<String>,
    },
    Error(AgentError),
}

/// A request that failed in the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    pub kind: ErrorKind,
    /// One sentence for the user or the model.
    pub message: String,
}

impl AgentError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        AgentError {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    IsDirectory,
    /// A FIFO, socket or device where a regular file was expected.
    NotRegularFile,
    OutsideWorkspace,
    /// The program could not be started (not found, not executable, bad cwd).
    SpawnFailed,
    /// A mark the agent does not know (it keeps the last few).
    UnknownMark,
    /// The request could not be decoded (e.g. an op this agent does not know).
    InvalidRequest,
    Io,
    /// A kind a newer agent sent that this side does not know.
    #[serde(other)]
    Other,
}
