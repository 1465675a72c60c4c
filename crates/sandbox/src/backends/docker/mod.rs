//! The `docker` backend: one container per session through the Docker Engine API
//! (Docker, or Podman's compatible service), under runc or gVisor (`runsc`). See
//! docs/docker.md.
//!
//! - The sandbox copy is bind-mounted at `/workspace`: the file tools act on it on the
//!   host (through [`HostSandbox`], with the same symlink and special-file rules as every
//!   host backend) and the agent sees it at `/workspace`; `bash` runs inside the
//!   container through the resident agent where its socket reaches the host
//!   (`agent.rs`), else through the exec API (`exec.rs`).
//! - The container is created (or a kept one started) when the sandbox opens, and on
//!   [`Sandbox::stop`] stopped while the session is kept (its directory exists) or removed
//!   once the session is gone. Containers a killed Safe Coder left are removed when the
//!   next sandbox opens (`container.rs`), and `sessions discard` removes its session's
//!   ([`discard_session`]).
//! - A dead engine mid-session is an error of the command that met it; the session's
//!   files live on the host and stay.
//!
//! Files: `mod.rs` (this), `probe.rs`, `limits.rs`, `status.rs` (as every backend), and
//! `engine.rs` (socket, client, errors), `container.rs` (shape, labels, leftovers),
//! `exec.rs` (commands through the exec API), `agent.rs` (commands through the resident
//! guest agent, PID 1 under runc), `interactive.rs` (`safe-coder run`), `net.rs` (its
//! network allow-list through the agent's `net-forward`), `image.rs` (presence, pull,
//! import).

mod agent;
mod container;
mod engine;
mod exec;
mod image;
mod interactive;
mod limits;
mod net;
pub(crate) mod probe;
pub mod share;
mod status;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::Docker;

pub use engine::DockerError;

use crate::env::command_env;
use crate::host::HostSandbox;
use crate::overlay::OverlayMount;
use crate::{
    BackendKind, CancellationToken, DirEntry, DockerSpec, ExecOutput, ExecRequest, FileStat,
    InteractiveChild, InteractiveRequest, Limits, Sandbox, SandboxError, SandboxSpec,
    SandboxStatus,
};

/// How long opening waits for the engine to answer its first request.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// Variables whose values are host paths that mean nothing in the container.
const HOST_PATHS: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "SHELL",
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

/// A `docker` sandbox: a session's container and the sandbox copy bind-mounted in it.
pub(crate) struct DockerSandbox {
    files: HostSandbox,
    docker: Docker,
    socket: PathBuf,
    version: bollard::ClientVersion,
    container: String,
    /// The container's name (its socket directory's name too).
    name: String,
    runtime: String,
    /// The resident agent commands go through; `None`: the engine's exec.
    resident: Option<agent::Resident>,
    /// The overlay workspace the engine mounts (`share.rs`); `None`: a bind-mounted
    /// copy, and the file tools act on it on the host.
    overlay: Option<Arc<OverlayMount>>,
    /// The overlay's host-write count when the engine last mounted it.
    mounted_at_writes: AtomicU64,
    /// Held while the container is restarted, so one restart serves all waiting.
    restarting: tokio::sync::Mutex<()>,
    /// What `safe-coder run` needs to make a container of its own (`--mount`).
    runs: interactive::RunShape,
    /// While this directory exists the session is kept, and `stop` keeps its container
    /// (stopped) for resume.
    keep_while: Option<PathBuf>,
    limits: Limits,
    env: Vec<String>,
    started: Instant,
    stopped: AtomicBool,
    cpu: status::CpuSample,
}

impl std::fmt::Debug for DockerSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerSandbox")
            .field("container", &self.container)
            .field("runtime", &self.runtime)
            .field("resident", &self.resident)
            .field("socket", &self.socket)
            .finish()
    }
}

/// The environment of the agent's commands in the container: the allow-list of every
/// backend, without the host's paths, with the container's own.
fn container_env(passthrough: &[String]) -> Vec<String> {
    let mut env: Vec<String> = command_env(passthrough)
        .into_iter()
        .filter(|(k, _)| !HOST_PATHS.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env.push("HOME=/tmp".into());
    env.push("TMPDIR=/tmp".into());
    env.push("SHELL=/bin/bash".into());
    env
}

fn random_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("tmp-{}-{:x}", std::process::id(), t & 0xffff_ffff)
}

pub(crate) fn open(spec: SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError> {
    let overlay = spec.overlay.clone();
    let files = HostSandbox::new(
        BackendKind::Docker,
        spec.workdir.clone(),
        None,
        spec.env_passthrough.clone(),
        overlay.clone(),
    )?;
    let d = spec.docker.clone();
    let session = d.session_id.clone().unwrap_or_else(random_id);
    let name = container::name_for(&session);
    let workspace = match &overlay {
        Some(mount) => container::WorkspaceSource::Overlay {
            layers: mount.layers().clone(),
            volume: share::volume_name(&name),
        },
        None => container::WorkspaceSource::Bind(
            files
                .host_workdir()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| spec.workdir.clone()),
        ),
    };
    let limits = Limits {
        memory_mb: d.memory_mb.unwrap_or(spec.limits.memory_mb),
        cpus: d.cpus.unwrap_or(spec.limits.cpus),
        pids: d.pids.unwrap_or(spec.limits.pids),
    };
    // The agent's binary goes into every container (`net-forward` for `run
    // --allow-net`); it is PID 1 where its socket reaches the host (runc).
    let binary = agent::find_binary();
    if overlay.is_some() && binary.is_none() {
        return Err(SandboxError::Unavailable(
            "an overlay workspace in a container needs the static guest agent, and none was found; build it with scripts/build-guest-agent.sh (or set SAFE_CODER_GUEST_AGENT), or set SAFE_CODER_WORKSPACE=copy".into(),
        ));
    }
    if let Some(mount) = &overlay {
        // From now on the engine writes the layers too: the history's own mount is
        // made afresh before each look.
        mount.share_with_engine();
    }
    let (info, runtime, id, resident, has_agent) = engine::block_on({
        let d = d.clone();
        let name = name.clone();
        let session = session.clone();
        let workspace = workspace.clone();
        let binary = binary.clone();
        let layered = overlay.is_some();
        async move {
            let socket = engine::find_socket(d.host.as_deref())?;
            let (docker, info) = engine::connect(&socket, CONNECT_DEADLINE).await?;
            let runtime = info.pick_runtime(d.runtime.as_deref())?;
            if layered && !agent::runtime_passes_sockets(&runtime) {
                return Err(DockerError::Engine {
                    action: "run over an overlay workspace".into(),
                    detail: format!(
                        "{runtime} cannot use an overlay volume; set SAFE_CODER_WORKSPACE=copy"
                    ),
                });
            }
            image::ensure(&docker, &socket, &d.image, d.auto_pull).await?;
            container::remove_leftovers(&docker).await;
            let run_dir = binary
                .as_ref()
                .filter(|_| agent::runtime_passes_sockets(&runtime))
                .and_then(|_| agent::run_dir(&name));
            let agent = match (&binary, &run_dir) {
                (Some(binary), Some(run_dir)) => container::Agent::Resident { binary, run_dir },
                (Some(binary), None) => container::Agent::Binary(binary),
                (None, _) => container::Agent::None,
            };
            let (id, has_agent) = container::create_and_start(
                &docker,
                &info,
                &container::Shape {
                    name: &name,
                    session: &session,
                    session_dir: d.session_dir.as_deref(),
                    image: &d.image,
                    runtime: &runtime,
                    network: &d.network,
                    workspace: workspace.view(),
                    limits,
                    agent,
                    mounts: &[],
                    run: false,
                },
            )
            .await?;
            // A kept container made without the agent, or a socket this runtime does not
            // let out: commands go through the engine's exec.
            let resident = match &run_dir {
                Some(dir) => agent::Resident::wait_ready(dir).await,
                None => None,
            };
            if layered && resident.is_none() {
                // The file tools must go through the engine's mount (share.rs).
                let _ = container::stop(&docker, &id).await;
                return Err(DockerError::Engine {
                    action: "reach the agent in the container".into(),
                    detail: "it did not answer on its socket, and an overlay workspace needs it; set SAFE_CODER_WORKSPACE=copy to use a copy".into(),
                });
            }
            Ok::<_, DockerError>((info, runtime, id, resident, has_agent))
        }
    })??;
    // A client of its own for the caller's runtime (see engine.rs).
    let docker = engine::client(&info.socket, &info.version)?;
    Ok(Arc::new(DockerSandbox {
        files,
        docker,
        socket: info.socket.clone(),
        version: info.version,
        container: id,
        name: name.clone(),
        runtime: runtime.clone(),
        resident,
        mounted_at_writes: AtomicU64::new(overlay.as_ref().map_or(0, |m| m.host_writes())),
        overlay,
        restarting: tokio::sync::Mutex::new(()),
        runs: interactive::RunShape {
            engine: info.clone(),
            session,
            session_dir: d.session_dir.clone(),
            name,
            image: d.image.clone(),
            runtime,
            network: d.network.clone(),
            workspace,
            limits,
            agent: binary,
            session_has_agent: has_agent,
        },
        keep_while: d.session_dir.clone(),
        limits,
        env: container_env(&spec.env_passthrough),
        started: Instant::now(),
        stopped: AtomicBool::new(false),
        cpu: status::CpuSample::default(),
    }))
}

impl DockerSandbox {
    /// Whether the session is kept, so its container is stopped rather than removed.
    fn kept(&self) -> bool {
        self.keep_while.as_deref().is_some_and(Path::exists)
    }

    /// Over an overlay workspace, before the container is used: when the host wrote
    /// the layers through its own mount since the engine mounted them (a rollback, a
    /// restore), restarts the container so the engine mounts them afresh and nothing in
    /// it reads what its mount cached (`share.rs`). Commands still running in it end.
    async fn fresh_mount(&self) -> Result<(), SandboxError> {
        let Some(mount) = &self.overlay else {
            return Ok(());
        };
        let _one = self.restarting.lock().await;
        let now = mount.host_writes();
        if self.mounted_at_writes.load(Ordering::SeqCst) == now {
            return Ok(());
        }
        container::stop(&self.docker, &self.container).await?;
        self.start_container().await?;
        self.mounted_at_writes.store(now, Ordering::SeqCst);
        Ok(())
    }

    /// Starts the (stopped) container and waits for its agent.
    async fn start_container(&self) -> Result<(), SandboxError> {
        match self.docker.start_container(&self.container, None).await {
            Ok(()) => {}
            // 304: already running.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(e) => return Err(engine::engine_error("start the container", e).into()),
        }
        if let Some(resident) = &self.resident {
            if !resident.answers().await {
                return Err(SandboxError::Unavailable(
                    "the agent in the container did not answer after a restart; run `safe-coder sandbox doctor`".into(),
                ));
            }
        }
        Ok(())
    }

    /// The agent a file operation over the overlay goes through: the resident one,
    /// started again when the container stopped (a limit, a run's own container).
    async fn file_agent(&self) -> Result<&agent::Resident, SandboxError> {
        self.fresh_mount().await?;
        let Some(resident) = &self.resident else {
            return Err(SandboxError::Unavailable(
                "the overlay workspace's files are reached through the agent in the container, and it is not running".into(),
            ));
        };
        if !resident.answers_now().await {
            let _one = self.restarting.lock().await;
            self.start_container().await?;
        }
        Ok(resident)
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn backend(&self) -> BackendKind {
        BackendKind::Docker
    }

    fn agent_root(&self) -> String {
        container::WORKSPACE.to_string()
    }

    fn host_workdir(&self) -> Option<&Path> {
        self.files.host_workdir()
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        if self.overlay.is_some() {
            return self.file_agent().await?.read_file(path).await;
        }
        self.files.read_file(path).await
    }

    async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), SandboxError> {
        if self.overlay.is_some() {
            return self.file_agent().await?.write_file(path, data).await;
        }
        self.files.write_file(path, data).await
    }

    async fn stat(&self, path: &str) -> Result<Option<FileStat>, SandboxError> {
        if self.overlay.is_some() {
            return self.file_agent().await?.stat(path).await;
        }
        self.files.stat(path).await
    }

    async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, SandboxError> {
        if self.overlay.is_some() {
            return self.file_agent().await?.list_dir(path).await;
        }
        self.files.list_dir(path).await
    }

    async fn exec(
        &self,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecOutput, SandboxError> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(SandboxError::Unavailable(
                "the sandbox has been stopped and runs no more commands".into(),
            ));
        }
        self.fresh_mount().await?;
        if let Some(resident) = &self.resident {
            if let Some(out) = resident
                .exec(&self.env, request.clone(), cancel.clone())
                .await?
            {
                return Ok(out);
            }
        }
        exec::run(
            &self.docker,
            &self.container,
            self.env.clone(),
            request,
            cancel,
        )
        .await
    }

    async fn spawn_interactive(
        &self,
        request: InteractiveRequest,
    ) -> Result<InteractiveChild, SandboxError> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(SandboxError::Unavailable(
                "the sandbox has been stopped and runs no more commands".into(),
            ));
        }
        self.fresh_mount().await?;
        interactive::spawn(
            &self.docker,
            &self.container,
            &self.runs,
            &self.env,
            &request,
        )
        .await
    }

    async fn status(&self) -> SandboxStatus {
        status::current(
            &self.docker,
            &self.container,
            self.limits,
            self.started.elapsed().as_secs(),
            self.stopped.load(Ordering::SeqCst),
            &self.cpu,
        )
        .await
    }

    async fn stop(&self) -> Result<(), SandboxError> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if self.kept() {
            container::stop(&self.docker, &self.container).await?;
        } else {
            container::remove(&self.docker, &self.container).await?;
            agent::remove_run_dir(&self.name);
            share::remove_volume(&self.docker, &self.name).await;
        }
        Ok(())
    }
}

impl Drop for DockerSandbox {
    /// A sandbox dropped without `stop` (an error path, a test) does not leave its
    /// container running.
    fn drop(&mut self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let socket = self.socket.clone();
        let version = self.version;
        let id = self.container.clone();
        let name = self.name.clone();
        let kept = self.kept();
        if !kept {
            agent::remove_run_dir(&self.name);
        }
        let _ = engine::block_on(async move {
            if let Ok(docker) = engine::client(&socket, &version) {
                if kept {
                    let _ = container::stop(&docker, &id).await;
                } else {
                    let _ = container::remove(&docker, &id).await;
                    share::remove_volume(&docker, &name).await;
                }
            }
        });
    }
}

/// Removes the container of session `session_id` (`sessions discard`). `Ok(false)` when
/// it had none; no engine at all is `Ok(false)` too (nothing can be left on it).
pub fn discard_session(spec: &DockerSpec, session_id: &str) -> Result<bool, SandboxError> {
    let host = spec.host.clone();
    let session = session_id.to_string();
    engine::block_on(async move {
        let Ok(socket) = engine::find_socket(host.as_deref()) else {
            return Ok(false);
        };
        let (docker, _) = match engine::connect(&socket, CONNECT_DEADLINE).await {
            Ok(c) => c,
            Err(_) => return Ok(false),
        };
        container::remove_session(&docker, &session).await
    })?
    .map_err(SandboxError::from)
}

/// Imports the root filesystem directory `rootfs` into the engine of `spec` as `image`
/// (`safe-coder sandbox image build`), labelled with `rootfs_key` (what the tree was
/// built from). Returns the engine's description and the new image's id.
pub fn import_rootfs(
    spec: &DockerSpec,
    rootfs: &Path,
    image: &str,
    rootfs_key: &str,
) -> Result<(String, String), SandboxError> {
    let host = spec.host.clone();
    let rootfs = rootfs.to_path_buf();
    let image = image.to_string();
    let key = rootfs_key.to_string();
    engine::block_on(async move {
        let socket = engine::find_socket(host.as_deref())?;
        let (docker, info) = engine::connect(&socket, CONNECT_DEADLINE).await?;
        let id = image::import_rootfs(&docker, &rootfs, &image, &key).await?;
        Ok::<_, DockerError>((format!("{} at {}", info.product, info.socket.display()), id))
    })?
    .map_err(SandboxError::from)
}

/// What the image `image` on the engine of `spec` was built from (its root filesystem's
/// key), `None` when it is missing or was not built by Safe Coder: a warm
/// `sandbox image build` skips the import when the key is the same.
pub fn image_rootfs_key(spec: &DockerSpec, image: &str) -> Result<Option<String>, SandboxError> {
    let host = spec.host.clone();
    let image = image.to_string();
    engine::block_on(async move {
        let socket = engine::find_socket(host.as_deref())?;
        let (docker, _) = engine::connect(&socket, CONNECT_DEADLINE).await?;
        image::rootfs_label(&docker, &image).await
    })?
    .map_err(SandboxError::from)
}

/// The runtime a sandbox of `spec` would run under, and the engine's description; or
/// why the backend cannot run (for tests and benchmarks that pick a runtime).
pub fn runtime_for(spec: &DockerSpec) -> Result<(String, String), SandboxError> {
    let owned = spec.clone();
    engine::block_on(async move {
        probe::check(&owned)
            .await
            .map(|(info, runtime)| (runtime, info.product))
    })?
    .map_err(SandboxError::from)
}

/// The static guest agent the backend would run in its containers (`agent.rs`), if one
/// is found: `SAFE_CODER_GUEST_AGENT`, next to the executable, or where
/// `scripts/build-guest-agent.sh` builds it.
pub fn resident_agent() -> Option<PathBuf> {
    agent::find_binary()
}

/// Whether commands under `runtime` can go through the resident agent (its socket
/// reaches the host): not under gVisor.
pub fn runtime_passes_sockets(runtime: &str) -> bool {
    agent::runtime_passes_sockets(runtime)
}

/// A container of Safe Coder on the engine: its session and whether it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionContainer {
    pub session_id: String,
    pub running: bool,
}

/// The containers of Safe Coder on the engine of `spec` (labelled with their session).
pub fn session_containers(spec: &DockerSpec) -> Result<Vec<SessionContainer>, SandboxError> {
    let host = spec.host.clone();
    engine::block_on(async move {
        let socket = engine::find_socket(host.as_deref())?;
        let (docker, _) = engine::connect(&socket, CONNECT_DEADLINE).await?;
        Ok::<_, DockerError>(
            container::ours(&docker)
                .await
                .into_iter()
                .map(|(_, labels, running)| SessionContainer {
                    session_id: labels
                        .get(container::LABEL_SESSION)
                        .cloned()
                        .unwrap_or_default(),
                    running,
                })
                .collect(),
        )
    })?
    .map_err(SandboxError::from)
}
