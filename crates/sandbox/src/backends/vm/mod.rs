//! The microVM backends, `firecracker` and `qemu`: everything but the VMM is shared.
//!
//! A [`VmSandbox`] is a VM running the guest image, whose agent (`crates/guest-agent`,
//! protocol in docs/vm-protocol.md) runs the commands. The session's work tree stays on
//! the host, where the core commits it after each tool call and reviews and syncs it
//! like every other backend (`host_workdir()` is the host copy); the guest has its own
//! copy in `/workspace`, kept equal by [`sync`]: host changes go in before each command,
//! the files the agent reports changed come back after it. The file tools read and write
//! the host copy (no round trip into the VM; a write reaches the guest before the next
//! command).
//!
//! Files: `mod.rs` (this), `probe.rs`, `limits.rs`, `status.rs` as every backend; the
//! VMMs `qemu.rs` (+ `qmp.rs`, `snapshot.rs`) and `firecracker.rs` (+ `fc_api.rs`); the
//! shared parts `agent_client.rs`, `sync.rs`, `image.rs`, `supervised.rs`.
//! docs/microvm.md describes the design, docs/backends.md the user's view.

pub(crate) mod agent_client;
pub mod fc_api;
mod firecracker;
pub(crate) mod image;
mod interactive;
mod limits;
mod net;
pub(crate) mod probe;
mod qemu;
mod qmp;
pub mod share;
mod snapshot;
mod status;
mod supervised;
mod sync;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use safe_coder_vm_protocol::ExecRequest as AgentExec;

use self::agent_client::{AgentClient, Endpoint};
use self::sync::WorkspaceSync;
use crate::host::HostSandbox;
use crate::{
    BackendKind, CancellationToken, DirEntry, ExecOutput, ExecRequest, FileStat, Sandbox,
    SandboxError, SandboxSpec, SandboxState, SandboxStatus,
};

pub use image::{GuestImage, BUILD_COMMAND};

/// The guest agent's name: on the guest's `PATH` (`/usr/local/sbin` in the image), and
/// an interactive exec of this name runs the agent's own executable wherever it lives.
pub const GUEST_AGENT: &str = "safe-coder-guest-agent";
pub use limits::vm_limits;

/// How long a booting (or restoring) VM may take until its agent answers, unless
/// `SAFE_CODER_VM_READY_SECS` says otherwise. A cold boot under TCG on a busy machine
/// took up to 20 s; past this the session fails with what the guest printed last.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The longest the first upload of the project may take (a project of a few hundred MB
/// goes in well within it even under TCG; a guest that stopped answering is given up on).
const FIRST_PUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// How often a running command's changes are brought to the host tree.
const LIVE_PULL: Duration = Duration::from_secs(1);

pub(crate) fn ready_timeout(vm: &crate::VmSpec) -> Duration {
    if let Some(t) = vm.ready_timeout {
        return t;
    }
    std::env::var("SAFE_CODER_VM_READY_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(READY_TIMEOUT)
}

/// The VMM side of a running VM: QEMU or Firecracker and their helpers.
pub(crate) trait Vmm: Send + Sync {
    /// `Ok` while the VM runs; else why not, in one sentence.
    fn alive(&self) -> Result<(), String>;
    /// Waits up to `timeout` for the VM to power off by itself; true when it did.
    fn wait_exit(&self, timeout: Duration) -> bool;
    /// Kills whatever still runs.
    fn kill(&self);
    /// What the guest printed last (console), for error messages.
    fn console_tail(&self) -> String;
}

/// A VM that booted (or was restored) and whose agent answered.
pub(crate) struct Started {
    pub vmm: Box<dyn Vmm>,
    pub endpoint: Endpoint,
    /// The greeted connection to the agent (a duplicate fd): the sandbox keeps using it,
    /// since a virtio-serial port has no notion of a new connection.
    pub conn: std::os::fd::OwnedFd,
    /// E.g. "restored from a snapshot in 0.8 s" (shown in the backend note).
    pub how: String,
    /// The saved state this VM was restored from, if it was: a restored VM that then
    /// does not take the project is given up on, the state deleted, and a VM booted.
    pub restored_from: Option<PathBuf>,
}

/// Opens a `firecracker` or `qemu` sandbox over `spec.workdir`.
pub(crate) fn open(kind: BackendKind, spec: SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError> {
    Ok(Arc::new(VmSandbox::open(kind, spec)?))
}

/// The per-VM runtime directory (sockets, logs): short, since a Unix socket path has at
/// most 107 bytes, and private.
fn runtime_dir(id: &str) -> Result<PathBuf, SandboxError> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir() && p.as_os_str().len() < 60)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    sweep_stale(&base);
    let dir = base.join(format!("safe-coder-vm-{id}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|source| SandboxError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    let _ = std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string());
    Ok(dir)
}

/// The process that made a runtime directory.
const OWNER_FILE: &str = "owner.pid";

/// Removes the runtime directories of processes that are gone (a `kill -9` leaves its
/// sockets behind; its VM died with it).
fn sweep_stale(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .starts_with("safe-coder-vm-")
        {
            continue;
        }
        let owner = std::fs::read_to_string(e.path().join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let Some(pid) = owner else { continue };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn new_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // Nanoseconds, the pid and a per-process counter folded into 32 bits: unique among
    // the VMs of one machine in practice (the runtime directory's creation would fail
    // on a clash rather than share it).
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mixed = (t as u64) ^ u64::from(std::process::id()).rotate_left(20) ^ u64::from(n) << 40;
    format!("{:08x}", (mixed ^ (mixed >> 32)) as u32)
}

/// Runs `f` on a fresh current-thread runtime in a thread of its own, so that `open`
/// (synchronous) can use the async agent client from any context, also from inside
/// another runtime.
fn block_on_own_runtime<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>> + Send + 'static,
) -> Result<T, SandboxError> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(f()))
    })
    .join()
    .map_err(|_| SandboxError::Other("the VM start-up thread panicked".into()))?
    .map_err(|e| SandboxError::Other(format!("cannot start a runtime for the VM: {e}")))
}

/// The environment of a command in the guest: the allow-list of [`crate::env`] for the
/// names that mean the same there (locale, terminal, time zone, the user's passthrough
/// names), with the guest's own `PATH`, `HOME` and `TMPDIR`. Host paths (toolchain
/// homes) mean nothing in the guest and are left out.
pub(crate) fn guest_env(passthrough: &[String]) -> Vec<(String, String)> {
    const HOST_ONLY: &[&str] = &[
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "TMPDIR",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "PYENV_ROOT",
        "PYENV_VERSION",
        "GOROOT",
        "GOPATH",
        "JAVA_HOME",
        "NVM_DIR",
    ];
    let mut env: Vec<(String, String)> = crate::env::command_env(passthrough)
        .into_iter()
        .filter(|(k, _)| !HOST_ONLY.contains(&k.as_str()) || passthrough.contains(k))
        .collect();
    for (k, v) in [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/root"),
        ("USER", "root"),
        ("LOGNAME", "root"),
        ("SHELL", "/bin/bash"),
        ("TMPDIR", "/tmp"),
    ] {
        if !env.iter().any(|(n, _)| n == k) {
            env.push((k.to_string(), v.to_string()));
        }
    }
    env
}

/// A `firecracker` or `qemu` sandbox.
pub(crate) struct VmSandbox {
    kind: BackendKind,
    id: String,
    host: HostSandbox,
    endpoint: Endpoint,
    /// The agent connection made at start, kept open for the VM's life.
    conn: Mutex<Option<std::os::fd::OwnedFd>>,
    /// Shared with an interactive command's supervisor (it watches the VM too).
    vmm: Arc<Mutex<Option<Box<dyn Vmm>>>>,
    run_dir: PathBuf,
    /// The connection of the runtime that uses the sandbox (made on first use).
    client: tokio::sync::Mutex<Option<Arc<AgentClient>>>,
    /// Shared with an interactive command's supervisor (it pulls while it runs).
    sync: Arc<tokio::sync::Mutex<WorkspaceSync>>,
    started: Instant,
    state: Mutex<SandboxState>,
    memory_mb: u64,
    vcpus: u32,
    env: Vec<(String, String)>,
    last_usage: Mutex<Option<safe_coder_vm_protocol::UsageReport>>,
    how: String,
}

impl VmSandbox {
    fn open(kind: BackendKind, spec: SandboxSpec) -> Result<VmSandbox, SandboxError> {
        let workdir = std::fs::canonicalize(&spec.workdir).map_err(|source| SandboxError::Io {
            path: spec.workdir.display().to_string(),
            source,
        })?;
        let image = GuestImage::locate(&spec.vm).map_err(SandboxError::Unavailable)?;
        match Self::open_once(kind, &spec, &workdir, &image) {
            Err((e, Some(state))) => {
                // A restored VM that did not take the project: that saved state is bad.
                log::warn!(
                    "a VM restored from {} failed ({e}); deleting it and booting",
                    state.display()
                );
                let _ = std::fs::remove_dir_all(&state);
                Self::open_once(kind, &spec, &workdir, &image).map_err(|(e, _)| e)
            }
            r => r.map_err(|(e, _)| e),
        }
    }

    /// One start: the VM, then the first push. On failure, the error and, when the VM
    /// had been restored, the saved state it came from.
    fn open_once(
        kind: BackendKind,
        spec: &SandboxSpec,
        workdir: &Path,
        image: &GuestImage,
    ) -> Result<VmSandbox, (SandboxError, Option<PathBuf>)> {
        let workdir = workdir.to_path_buf();
        let id = new_id();
        let run_dir = runtime_dir(&id).map_err(|e| (e, None))?;
        // A `qemu` session over an overlay shares it (`share.rs`; the core mounts the
        // overlay for `qemu` only where `share::decide` said so): nothing is copied.
        let shared = match kind {
            BackendKind::Qemu => spec.overlay.clone(),
            _ => None,
        };
        let started = match (kind, &shared) {
            (BackendKind::Firecracker, _) => firecracker::start(&spec.vm, image, &run_dir),
            (_, Some(overlay)) => probe::decide_accel(&spec.vm, image)
                .map_err(SandboxError::Unavailable)
                .and_then(|kvm| share::boot(&spec.vm, image, &run_dir, kvm, overlay)),
            _ => qemu_start(&spec.vm, image, &run_dir),
        };
        let started = match started {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err((e, None));
            }
        };
        let restored_from = started.restored_from.clone();
        // The first upload of the work tree, on a runtime of its own (see
        // `block_on_own_runtime`); the index and mark it leaves are plain data.
        let conn = match started.conn.try_clone() {
            Ok(c) => c,
            Err(e) => {
                started.vmm.kill();
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err((
                    SandboxError::Other(format!("cannot keep the agent's connection: {e}")),
                    None,
                ));
            }
        };
        let root = workdir.clone();
        let is_shared = shared.is_some();
        let pushed = block_on_own_runtime(move || {
            Box::pin(async move {
                let client = Arc::new(
                    AgentClient::from_fd(&conn).map_err(|e| SandboxError::Other(e.to_string()))?,
                );
                if is_shared {
                    return Ok(WorkspaceSync::shared(root));
                }
                let mut sync = WorkspaceSync::new(root);
                // A VM that dies closes the connection (the push fails at once); one
                // that hangs (a failed KVM pauses it) is given up on after this.
                tokio::time::timeout(FIRST_PUSH_TIMEOUT, sync.push(&client))
                    .await
                    .map_err(|_| {
                        SandboxError::Other(format!(
                            "the guest did not take the project within {} s",
                            FIRST_PUSH_TIMEOUT.as_secs()
                        ))
                    })??;
                Ok::<_, SandboxError>(sync)
            })
        });
        let sync = match pushed.and_then(|r| r) {
            Ok(s) => s,
            Err(e) => {
                started.vmm.kill();
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err((
                    SandboxError::Other(format!(
                        "the project could not be copied into the VM: {e}"
                    )),
                    restored_from,
                ));
            }
        };
        let host = HostSandbox::new(kind, workdir, None, spec.env_passthrough.clone(), shared)
            .map_err(|e| (e, None))?;
        Ok(VmSandbox {
            kind,
            id,
            host,
            endpoint: started.endpoint,
            conn: Mutex::new(Some(started.conn)),
            vmm: Arc::new(Mutex::new(Some(started.vmm))),
            run_dir,
            client: tokio::sync::Mutex::new(None),
            sync: Arc::new(tokio::sync::Mutex::new(sync)),
            started: Instant::now(),
            state: Mutex::new(SandboxState::Running),
            memory_mb: spec.vm.memory_mb,
            vcpus: spec.vm.vcpus,
            env: guest_env(&spec.env_passthrough),
            last_usage: Mutex::new(None),
            how: started.how,
        })
    }

    fn vm_alive(&self) -> Result<(), String> {
        match self.vmm.lock() {
            Ok(g) => match g.as_ref() {
                Some(v) => v.alive(),
                None => Err("the VM was stopped".into()),
            },
            Err(_) => Err("the VM's state is poisoned".into()),
        }
    }

    fn set_state(&self, s: SandboxState) {
        if let Ok(mut g) = self.state.lock() {
            *g = s;
        }
    }

    fn state(&self) -> SandboxState {
        self.state
            .lock()
            .map(|g| *g)
            .unwrap_or(SandboxState::Failed)
    }

    /// The agent connection of this runtime, made (again) when there is none.
    async fn client(&self) -> Result<Arc<AgentClient>, SandboxError> {
        if self.state() == SandboxState::Stopped {
            return Err(SandboxError::Unavailable(format!(
                "the VM {} was stopped; start a new session",
                self.id
            )));
        }
        let mut g = self.client.lock().await;
        if let Some(c) = g.as_ref() {
            if !c.is_gone() {
                return Ok(c.clone());
            }
        }
        self.vm_alive().map_err(|e| self.failed(e))?;
        if g.is_some() {
            // The kept connection broke while the VM runs: the agent died.
            return Err(self.failed("the guest agent closed its connection".into()));
        }
        let kept = self
            .conn
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(AgentClient::from_fd));
        let c = match kept {
            Some(c) => c.map_err(|e| self.failed(e.to_string()))?,
            None => {
                let connect = AgentClient::connect(&self.endpoint, true);
                tokio::time::timeout(Duration::from_secs(10), connect)
                    .await
                    .map_err(|_| self.failed("the guest agent did not answer in 10 s".into()))?
                    .map_err(|e| self.failed(e.to_string()))?
                    .0
            }
        };
        let c = Arc::new(c);
        *g = Some(c.clone());
        Ok(c)
    }

    /// Marks the VM failed and turns `why` into the error the caller returns.
    fn failed(&self, why: String) -> SandboxError {
        self.set_state(SandboxState::Failed);
        let tail = self
            .vmm
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|v| v.console_tail()))
            .unwrap_or_default();
        let console = if tail.is_empty() {
            String::new()
        } else {
            format!(" (the guest printed last: {tail})")
        };
        SandboxError::Other(format!(
            "the VM {} cannot run commands: {why}{console}; the session's files are kept, start a new session to go on",
            self.id
        ))
    }

    /// An error that came with the agent's connection gone (the agent or the VM died) is
    /// the VM failing, said as such; other errors (a command that could not start, a
    /// file the host could not write) pass through.
    fn lost_agent<T>(
        &self,
        client: &AgentClient,
        r: Result<T, SandboxError>,
    ) -> Result<T, SandboxError> {
        match r {
            Err(e) if client.is_gone() && self.state() != SandboxState::Failed => {
                Err(self.failed(e.to_string()))
            }
            r => r,
        }
    }

    /// Waits for `fut`, but gives up as soon as the VMM dies (checked twice a second),
    /// so a VM that crashed or hangs in a failed KVM never hangs the session.
    async fn watched<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, SandboxError>>,
    ) -> Result<T, SandboxError> {
        tokio::pin!(fut);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                r = &mut fut => return r,
                _ = tick.tick() => {
                    if let Err(e) = self.vm_alive() {
                        return Err(self.failed(e));
                    }
                }
            }
        }
    }
}

fn qemu_start(
    vm: &crate::VmSpec,
    image: &GuestImage,
    run_dir: &Path,
) -> Result<Started, SandboxError> {
    let accel = probe::decide_accel(vm, image).map_err(SandboxError::Unavailable)?;
    snapshot::start(vm, image, run_dir, accel)
}

#[async_trait]
impl Sandbox for VmSandbox {
    fn backend(&self) -> BackendKind {
        self.kind
    }

    fn agent_root(&self) -> String {
        safe_coder_vm_protocol::WORKSPACE.to_string()
    }

    fn host_workdir(&self) -> Option<&Path> {
        self.host.host_workdir()
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
        let client = self.client().await?;
        let mut sync = self.sync.lock().await;
        let begun = Instant::now();
        let pushed = self.watched(sync.push(&client)).await;
        self.lost_agent(&client, pushed)?;
        let mut req = AgentExec::shell(request.command.clone(), self.env.clone());
        req.timeout_ms = Some(request.timeout.as_millis().min(u128::from(u64::MAX)) as u64);
        req.output_limit = Some(request.max_output_bytes as u64);
        req.merge_stderr = true;
        // While the command runs, what it wrote so far comes back every second, so the
        // host tree (and a crash) never lags a long command by more than that.
        let ran = self
            .watched(async {
                let run = client.exec(req, request.max_output_bytes, &cancel);
                tokio::pin!(run);
                let mut tick = tokio::time::interval(LIVE_PULL);
                tick.tick().await;
                loop {
                    tokio::select! {
                        r = &mut run => break r.map_err(|e| SandboxError::Other(e.to_string())),
                        _ = tick.tick() => { sync.pull(&client).await?; }
                    }
                }
            })
            .await;
        // Whatever the command did before it ended (also on timeout or cancel) comes back.
        let pulled = self.watched(sync.pull(&client)).await;
        let ran = self.lost_agent(&client, ran)?;
        self.lost_agent(&client, pulled)?;
        Ok(ExecOutput {
            exit_code: if ran.exit.signal.is_some() {
                None
            } else {
                ran.exit.code
            },
            output: String::from_utf8_lossy(&ran.output).into_owned(),
            total_output_bytes: ran.exit.output_bytes,
            timed_out: ran.exit.timed_out,
            cancelled: ran.exit.cancelled,
            duration: begun.elapsed(),
        })
    }

    async fn status(&self) -> SandboxStatus {
        status::current(self).await
    }

    async fn stop(&self) -> Result<(), SandboxError> {
        if self.state() == SandboxState::Stopped {
            return Ok(());
        }
        // A clean power-off first (the agent syncs and powers the guest off), then
        // whatever is left is killed.
        let client = self.client.lock().await.take();
        if let Some(c) = client.filter(|c| !c.is_gone()) {
            let _ = tokio::time::timeout(Duration::from_secs(3), c.shutdown()).await;
        }
        let vmm = self.vmm.lock().ok().and_then(|mut g| g.take());
        if let Some(v) = vmm {
            let _ = tokio::task::spawn_blocking(move || {
                if !v.wait_exit(Duration::from_secs(5)) {
                    v.kill();
                }
            })
            .await;
        }
        if let Ok(mut c) = self.conn.lock() {
            c.take();
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        self.set_state(SandboxState::Stopped);
        Ok(())
    }

    fn stop_lines(&self) -> Option<(String, String)> {
        Some((
            "Stopping VM and cleaning up…".to_string(),
            format!("✓ Stopped VM {}", self.id),
        ))
    }

    fn backend_detail(&self) -> Option<String> {
        Some(format!("VM {} {}", self.id, self.how))
    }

    async fn spawn_interactive(
        &self,
        request: crate::InteractiveRequest,
    ) -> Result<crate::InteractiveChild, SandboxError> {
        interactive::spawn(self, request).await
    }
}

impl Drop for VmSandbox {
    fn drop(&mut self) {
        if let Ok(mut g) = self.vmm.lock() {
            if let Some(v) = g.take() {
                v.kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}
