//! The `Sandbox` trait: where the agent's tools read, write and run commands.
//!
//! Tools never touch host paths themselves. They hand a project-relative path (already
//! checked lexically by the tools crate) to a `Sandbox`, which resolves it inside its own
//! root. That keeps the tools the same whether files live on the host (`direct`, `copy`,
//! `process`), in a container, or inside a VM reached over a socket.
//!
//! [`open`] is the only way to build a sandbox: `open(kind, spec)` with a
//! [`BackendKind`] and a [`SandboxSpec`]. Each backend is a module under `backends/`
//! with the same files: `mod.rs` (the backend and its `Sandbox` impl), `probe.rs` (what
//! `sandbox doctor` and `auto` ask), `limits.rs` (what it enforces) and `status.rs`
//! (live usage). docs/backends.md describes them.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
pub use safe_coder_protocol::{SandboxState, SandboxStatus};
pub use tokio_util::sync::CancellationToken;

mod backends;
pub mod env;
mod host;
pub mod interactive;
pub mod overlay;
pub mod paths;
pub mod select;
mod spec;
pub mod text;
pub mod which;

pub use backends::{docker, process, vm};
pub use host::CommandConfiner;
pub use interactive::{
    Bind, ChildControl, InteractiveChild, InteractiveRequest, Mount, NetworkAccess, RunExit,
    TermSize,
};
pub use paths::{normalize_in_root, resolve_in_root, PathError};
pub use process::ProcessConfiner;
pub use select::{
    choose, choose_with, doctor_report, doctor_report_with, probe, probe_all, BackendProbe,
    BackendSettings,
};
pub use spec::{
    Accel, DockerSpec, Limits, Mechanism, SandboxSpec, VmSpec, VmWorkspace, DEFAULT_DOCKER_IMAGE,
};
pub use text::{decode_text, NotText};
pub use which::find_executable;

/// Builds a sandbox of backend `kind` over `spec.workdir`: the only constructor of a
/// sandbox. A backend that cannot run here (or is not built yet) is
/// [`SandboxError::Unavailable`] with one sentence saying why and what to do.
pub fn open(
    kind: BackendKind,
    spec: SandboxSpec,
) -> Result<std::sync::Arc<dyn Sandbox>, SandboxError> {
    backends::open(kind, spec)
}

/// The isolation backends (docs/backends.md). Serialised as its lower-case name (`as_str`);
/// `demo` is accepted for `copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Firecracker,
    Qemu,
    Docker,
    Process,
    #[serde(alias = "demo")]
    Copy,
    Direct,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Firecracker => "firecracker",
            BackendKind::Qemu => "qemu",
            BackendKind::Docker => "docker",
            BackendKind::Process => "process",
            BackendKind::Copy => "copy",
            BackendKind::Direct => "direct",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "firecracker" => BackendKind::Firecracker,
            "qemu" => BackendKind::Qemu,
            "docker" => BackendKind::Docker,
            "process" => BackendKind::Process,
            "copy" | "demo" => BackendKind::Copy,
            "direct" => BackendKind::Direct,
            _ => return None,
        })
    }

    /// Whether the agent works on a sandbox copy that is synced back (every backend but
    /// `direct`).
    pub fn uses_copy(self) -> bool {
        self != BackendKind::Direct
    }
}

/// Errors from sandbox operations. Each message is one sentence the model or the user
/// can act on; tools turn them into tool results so the model can correct itself.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The path resolves outside the project root (through `..`, an absolute path or a
    /// symlink).
    #[error("path '{0}' is outside the project root; use a path inside the project")]
    OutsideRoot(String),
    #[error("file not found: {0}")]
    NotFound(String),
    #[error("'{0}' is a directory, not a file")]
    IsDirectory(String),
    /// A FIFO, socket or device: reading it could block forever or never end.
    #[error("'{path}' is {what}, not a regular file; only regular files can be read")]
    NotRegularFile { path: String, what: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The backend cannot run here (missing binary, no KVM, ...). The text says why.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

/// Metadata of one file in the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStat {
    pub is_dir: bool,
    pub size: u64,
    pub executable: bool,
}

/// One directory entry, for listings (`@dir`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
}

/// A shell command to run in the sandbox's project root with `bash -c`.
#[derive(Clone, Debug)]
pub struct ExecRequest {
    pub command: String,
    pub timeout: Duration,
    /// Combined stdout+stderr beyond this many bytes is dropped (the total is reported).
    pub max_output_bytes: usize,
}

/// The result of a command. A timeout or cancellation has killed the command's whole
/// process group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// `None` when the command was killed by a signal, a timeout or a cancellation.
    pub exit_code: Option<i32>,
    /// stdout and stderr interleaved as they arrived, capped at `max_output_bytes`,
    /// lossily decoded as UTF-8.
    pub output: String,
    /// Total bytes the command printed (more than `output.len()` when capped).
    pub total_output_bytes: u64,
    pub timed_out: bool,
    pub cancelled: bool,
    pub duration: Duration,
}

/// Where the agent's tools act. Paths are relative to the project root with `/`
/// separators and no `..` components (the tools crate normalises them); a backend still
/// refuses any path that resolves outside its root, e.g. through a symlink.
#[async_trait]
pub trait Sandbox: Send + Sync {
    fn backend(&self) -> BackendKind;

    /// The project root as the agent sees it (shown in the system prompt; absolute paths
    /// under it are accepted by the tools).
    fn agent_root(&self) -> String;

    /// The host directory that holds the work tree, when the files live on the host
    /// (`direct`, `copy`, `process`, `docker` bind mounts); `None` inside a VM.
    fn host_workdir(&self) -> Option<&Path>;

    /// How the `process` backend confines this sandbox's commands; `None` for the other
    /// backends.
    fn mechanism(&self) -> Option<Mechanism> {
        None
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError>;

    /// Creates parent directories. Keeps the executable bit of an existing file.
    async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), SandboxError>;

    /// `Ok(None)` when nothing exists at `path`.
    async fn stat(&self, path: &str) -> Result<Option<FileStat>, SandboxError>;

    async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, SandboxError>;

    /// Run `bash -c command` in the project root: stdin closed, an allow-listed
    /// environment (see [`env`]), the whole process group killed on timeout or when
    /// `cancel` fires.
    async fn exec(
        &self,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecOutput, SandboxError>;

    async fn status(&self) -> SandboxStatus;

    /// Stop whatever runs in the sandbox (VM, container). Files stay for sync.
    async fn stop(&self) -> Result<(), SandboxError>;

    /// The two lines shown around [`Sandbox::stop`] at the end of a session (before,
    /// after), for backends whose stop is worth telling (a VM); `None` shows nothing.
    fn stop_lines(&self) -> Option<(String, String)> {
        None
    }

    /// What the backend note of the session adds about this sandbox (e.g. a VM's id and
    /// whether it was booted or restored).
    fn backend_detail(&self) -> Option<String> {
        None
    }

    /// Starts one long-running program in the sandbox's project root with a terminal of
    /// its own (`safe-coder run`; the contract is in docs/run.md): the allow-listed
    /// environment plus `env_extra`, no network but the sandbox's loopback, the
    /// request's binds and mounts shown, nothing else of the home directory. A backend
    /// that cannot do this keeps this default.
    async fn spawn_interactive(
        &self,
        request: InteractiveRequest,
    ) -> Result<InteractiveChild, SandboxError> {
        let _ = request;
        Err(SandboxError::Unavailable(format!(
            "the {} backend does not support interactive commands (safe-coder run) yet; use --backend process",
            self.backend().as_str()
        )))
    }
}

/// A shared sandbox is a sandbox: `&Arc<dyn Sandbox>` goes wherever `&dyn Sandbox` or a
/// generic `S: Sandbox` is expected.
#[async_trait]
impl<S: Sandbox + ?Sized> Sandbox for std::sync::Arc<S> {
    fn backend(&self) -> BackendKind {
        (**self).backend()
    }

    fn agent_root(&self) -> String {
        (**self).agent_root()
    }

    fn host_workdir(&self) -> Option<&Path> {
        (**self).host_workdir()
    }

    fn mechanism(&self) -> Option<Mechanism> {
        (**self).mechanism()
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        (**self).read_file(path).await
    }

    async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), SandboxError> {
        (**self).write_file(path, data).await
    }

    async fn stat(&self, path: &str) -> Result<Option<FileStat>, SandboxError> {
        (**self).stat(path).await
    }

    async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, SandboxError> {
        (**self).list_dir(path).await
    }

    async fn exec(
        &self,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecOutput, SandboxError> {
        (**self).exec(request, cancel).await
    }

    async fn status(&self) -> SandboxStatus {
        (**self).status().await
    }

    async fn stop(&self) -> Result<(), SandboxError> {
        (**self).stop().await
    }

    fn stop_lines(&self) -> Option<(String, String)> {
        (**self).stop_lines()
    }

    fn backend_detail(&self) -> Option<String> {
        (**self).backend_detail()
    }

    async fn spawn_interactive(
        &self,
        request: InteractiveRequest,
    ) -> Result<InteractiveChild, SandboxError> {
        (**self).spawn_interactive(request).await
    }
}
