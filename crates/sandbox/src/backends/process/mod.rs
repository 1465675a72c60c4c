//! The `process` backend: the agent's commands run on the host, confined by bubblewrap
//! (Linux user, mount, PID, network, IPC and UTS namespaces), a seccomp filter and a
//! cgroup (or rlimits) for CPU, memory and process count. See docs/sandbox-process.md.
//!
//! What a command sees:
//! - `/usr` (and `/bin`, `/lib*`, `/sbin` as the host has them), `/etc` and `/opt`
//!   read-only, with host secrets in `/etc` (shadow files, SSH host keys, sudoers,
//!   private TLS keys) masked;
//! - the sandbox copy, read-write, at the same absolute path as on the host;
//! - a private tmpfs `/tmp` (with `HOME=/tmp/home`) and `/var/tmp`;
//! - its own `/proc` (PID namespace: no host process is visible), a minimal `/dev`
//!   where `/dev/tty` is `/dev/null`;
//! - no network but its own loopback;
//! - nothing else: the user's home, other projects, `/root`, `/home`, `/run`, `/var`
//!   and `/sys` are not mounted.
//!
//! - of the user's home, only the toolchains (`toolchains.rs`), read-only.
//!
//! Commands stay in the process group the caller gives them, so killing that group kills
//! them; bwrap's PID-namespace init dies with it (`--die-with-parent`), and the kernel
//! then kills whatever is left in the namespace, even processes that left the group.
//!
//! Without a working bwrap, [`Mechanism::InProcess`] confines the child itself
//! (namespaces, Landlock, seccomp; see `inprocess.rs`), with the same lifetime rule.
//!
//! Files: `mod.rs` (the backend and its `Sandbox` impl), `probe.rs`, `limits.rs`,
//! `status.rs` (as every backend), and the mechanism's parts: `confiner.rs`,
//! `bwrap.rs`, `inprocess.rs`, `seccomp.rs`, `cgroup.rs`, `toolchains.rs`, `userns.rs`.

mod bwrap;
mod cgroup;
mod confiner;
mod inprocess;
mod interactive;
mod limits;
pub(crate) mod probe;
mod probe_cache;
mod seccomp;
mod status;
mod toolchains;
mod userns;

use std::io;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

pub use cgroup::Enforcement;
pub use confiner::ProcessConfiner;
pub use limits::{limits_here, LimitEnforcement};

use crate::host::HostSandbox;
use crate::{
    BackendKind, CancellationToken, DirEntry, ExecOutput, ExecRequest, FileStat, Mechanism,
    Sandbox, SandboxError, SandboxSpec, SandboxStatus,
};

/// Work done in the child between fork and exec. Must be async-signal-safe: system
/// calls only, on memory prepared before the fork.
type ChildSetup = Box<dyn FnMut() -> io::Result<()> + Send + Sync>;

/// A `process` sandbox: a sandbox copy whose commands are confined.
pub(crate) struct ProcessSandbox {
    host: HostSandbox,
    confiner: Arc<ProcessConfiner>,
}

pub(crate) fn open(spec: SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError> {
    let confiner = match spec.mechanism {
        Some(m) => ProcessConfiner::with_mechanism(spec.limits, m)?,
        None => ProcessConfiner::new(spec.limits)?,
    };
    let confiner = if spec.home_toolchains {
        confiner.with_home_toolchains()
    } else {
        confiner
    };
    let confiner = Arc::new(confiner.with_overlay(spec.overlay.clone()));
    let host = HostSandbox::new(
        BackendKind::Process,
        spec.workdir,
        Some(confiner.clone()),
        spec.env_passthrough,
        spec.overlay,
    )?;
    Ok(Arc::new(ProcessSandbox { host, confiner }))
}

#[async_trait]
impl Sandbox for ProcessSandbox {
    fn backend(&self) -> BackendKind {
        self.host.backend()
    }

    fn agent_root(&self) -> String {
        self.host.agent_root()
    }

    fn host_workdir(&self) -> Option<&Path> {
        self.host.host_workdir()
    }

    fn mechanism(&self) -> Option<Mechanism> {
        Some(self.confiner.mechanism())
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        self.host.read_file(path).await
    }

    async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), SandboxError> {
        self.host.write_file(path, data).await
    }

    async fn stat(&self, path: &str) -> Result<Option<FileStat>, SandboxError> {
        self.host.stat(path).await
    }

    async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, SandboxError> {
        self.host.list_dir(path).await
    }

    async fn exec(
        &self,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecOutput, SandboxError> {
        self.host.exec(request, cancel).await
    }

    async fn status(&self) -> SandboxStatus {
        status::current(&self.host, &self.confiner).await
    }

    async fn stop(&self) -> Result<(), SandboxError> {
        self.host.stop().await
    }

    async fn spawn_interactive(
        &self,
        request: crate::InteractiveRequest,
    ) -> Result<crate::InteractiveChild, SandboxError> {
        interactive::spawn(&self.host, &self.confiner, &request)
    }
}
