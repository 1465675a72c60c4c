//! The container of one session: its shape (what `docker run` flags it amounts to), its
//! labels, and finding and removing the containers a killed Safe Coder left behind.
//!
//! Shape: the sandbox copy bind-mounted at `/workspace` (the working directory), the
//! host user's uid:gid, network `none` (unless `[docker] network` says otherwise), the
//! limits of `limits.rs`, every capability dropped, `no-new-privileges`, a read-only
//! root filesystem with a private tmpfs `/tmp`. Its first process is a small bash loop
//! that only waits and reaps orphans (so a fork bomb's leftovers do not pile up as
//! zombies counted against the process limit) and ends on SIGTERM at once.
//!
//! A `safe-coder run` with `--mount` paths gets a container of its own (the session's
//! shape plus the mounts, labelled [`LABEL_RUN`]): a running container takes no new
//! mounts. It is removed when the run ends.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, Mount};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;

use super::engine::{engine_error, is_not_found, DockerError, EngineInfo};
use super::limits;
use crate::Limits;

/// Where the sandbox copy appears inside the container.
pub(crate) const WORKSPACE: &str = "/workspace";

/// Every container of Safe Coder carries this label (its value: the session id).
pub(crate) const LABEL_SESSION: &str = "dev.safe-coder.session";
/// The process that owns the container: `pid:starttime` (start time from
/// `/proc/PID/stat`, so a recycled pid is not taken for the owner).
pub(crate) const LABEL_OWNER: &str = "dev.safe-coder.owner";
/// The session's directory on the host: a stopped container is kept while it exists.
pub(crate) const LABEL_SESSION_DIR: &str = "dev.safe-coder.session-dir";
/// A container of one `safe-coder run` (with `--mount` paths): removed when the run
/// ends, and as a leftover as soon as its owner is dead, running or not.
pub(crate) const LABEL_RUN: &str = "dev.safe-coder.run";

/// PID 1 of the container: waits forever, reaps orphans, exits on SIGTERM.
const INIT: &str = "trap 'exit 0' TERM; while :; do sleep 86400 & wait $!; done";

/// The container's name for a session.
pub(crate) fn name_for(session: &str) -> String {
    let safe: String = session
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("safe-coder-{safe}")
}

/// `pid:starttime` of a process, when /proc says.
fn identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields after the command name: state(3) ... starttime(22).
    let start = after.split_whitespace().nth(19)?;
    Some(format!("{pid}:{start}"))
}

/// This process's owner label.
pub(crate) fn owner_label() -> String {
    identity(std::process::id()).unwrap_or_else(|| std::process::id().to_string())
}

/// Whether the process an owner label names is still alive (the same process, not a
/// recycled pid).
fn owner_alive(label: &str) -> bool {
    let Some(pid) = label.split(':').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    identity(pid).is_some_and(|now| now == label || !label.contains(':'))
}

/// What the container is made of.
pub(crate) struct Shape<'a> {
    pub name: &'a str,
    pub session: &'a str,
    pub session_dir: Option<&'a Path>,
    pub image: &'a str,
    pub runtime: &'a str,
    pub network: &'a str,
    pub workspace: Workspace<'a>,
    pub limits: Limits,
    pub agent: Agent<'a>,
    /// Host paths shown inside (`safe-coder run --mount`), as bind mounts.
    pub mounts: &'a [Mount],
    /// A container of one run (labelled [`LABEL_RUN`]), not the session's.
    pub run: bool,
}

/// What the container sees at [`WORKSPACE`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Workspace<'a> {
    /// The session's copy (or any host directory), bind-mounted.
    Bind(&'a Path),
    /// The session's overlay layers, mounted by the engine as the named volume
    /// (`share.rs`).
    Overlay {
        layers: &'a crate::overlay::Layers,
        volume: &'a str,
    },
}

/// [`Workspace`], owned (kept for the containers of runs).
#[derive(Clone, Debug)]
pub(crate) enum WorkspaceSource {
    Bind(std::path::PathBuf),
    Overlay {
        layers: crate::overlay::Layers,
        volume: String,
    },
}

impl WorkspaceSource {
    pub(crate) fn view(&self) -> Workspace<'_> {
        match self {
            WorkspaceSource::Bind(dir) => Workspace::Bind(dir),
            WorkspaceSource::Overlay { layers, volume } => Workspace::Overlay { layers, volume },
        }
    }
}

/// What of the static guest agent a container gets.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Agent<'a> {
    /// Its binary (read-only at `/.safe-coder/agent`) as PID 1, serving on a socket in
    /// the session's socket directory (`agent.rs`).
    Resident { binary: &'a Path, run_dir: &'a Path },
    /// Only its binary, for `net-forward` (`safe-coder run --allow-net`); PID 1 is the
    /// bash loop of [`INIT`] (gVisor, and the containers of runs).
    Binary(&'a Path),
    /// No static agent was found: the bash loop.
    None,
}

impl Agent<'_> {
    /// Whether the container has the agent's binary (for `net-forward`).
    pub(crate) fn has_binary(&self) -> bool {
        !matches!(self, Agent::None)
    }
}

/// The user the agent's commands run as: the host user, so files stay theirs.
pub(crate) fn host_user() -> String {
    // SAFETY: getuid/getgid cannot fail and have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    format!("{uid}:{gid}")
}

fn body(shape: &Shape<'_>, engine: &EngineInfo) -> ContainerCreateBody {
    let mut labels = HashMap::new();
    labels.insert(LABEL_SESSION.to_string(), shape.session.to_string());
    labels.insert(LABEL_OWNER.to_string(), owner_label());
    if let Some(dir) = shape.session_dir {
        labels.insert(LABEL_SESSION_DIR.to_string(), dir.display().to_string());
    }
    let mut tmpfs = HashMap::new();
    // The container's only writable place besides /workspace; its size counts against
    // the memory limit.
    tmpfs.insert("/tmp".to_string(), "rw,nosuid,nodev,mode=1777".to_string());
    if shape.run {
        labels.insert(LABEL_RUN.to_string(), "1".to_string());
    }
    let mut binds = Vec::new();
    let mut mounts: Vec<Mount> = shape.mounts.to_vec();
    match shape.workspace {
        Workspace::Bind(dir) => binds.push(format!("{}:{WORKSPACE}:rw", dir.display())),
        Workspace::Overlay { volume, .. } => {
            mounts.push(super::share::volume_mount(volume, WORKSPACE))
        }
    }
    let agent_bind = |binary: &Path| {
        format!(
            "{}:{}:ro",
            binary.display(),
            super::agent::AGENT_IN_CONTAINER
        )
    };
    let cmd = match shape.agent {
        Agent::Resident { binary, run_dir } => {
            binds.push(agent_bind(binary));
            binds.push(format!(
                "{}:{}:rw",
                run_dir.display(),
                super::agent::RUN_IN_CONTAINER
            ));
            super::agent::command()
        }
        Agent::Binary(binary) => {
            binds.push(agent_bind(binary));
            vec!["/bin/bash".into(), "-c".into(), INIT.into()]
        }
        Agent::None => vec!["/bin/bash".into(), "-c".into(), INIT.into()],
    };
    // The user's paths as typed mounts (a path may hold `:` or `,`, which the `binds`
    // strings cannot carry).
    let mut host = HostConfig {
        binds: Some(binds),
        mounts: (!mounts.is_empty()).then_some(mounts),
        network_mode: Some(shape.network.to_string()),
        cap_drop: Some(vec!["ALL".to_string()]),
        security_opt: Some(vec!["no-new-privileges".to_string()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        runtime: Some(shape.runtime.to_string()),
        ..Default::default()
    };
    limits::apply(&mut host, shape.limits, engine.flavor, shape.runtime);
    ContainerCreateBody {
        image: Some(shape.image.to_string()),
        cmd: Some(cmd),
        user: Some(host_user()),
        working_dir: Some(WORKSPACE.to_string()),
        env: Some(vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            "HOME=/tmp".to_string(),
        ]),
        network_disabled: Some(shape.network == "none"),
        labels: Some(labels),
        host_config: Some(host),
        ..Default::default()
    }
}

/// Makes the overlay workspace's volume when the container shows one.
async fn prepare_workspace(docker: &Docker, shape: &Shape<'_>) -> Result<(), DockerError> {
    if let Workspace::Overlay { layers, volume } = shape.workspace {
        super::share::ensure_volume(docker, volume, shape.session, layers).await?;
    }
    Ok(())
}

/// Creates and starts the container, or starts the stopped one a kept session left.
/// Returns its id and whether it has the agent's binary (a kept container may have been
/// made without it).
pub(crate) async fn create_and_start(
    docker: &Docker,
    engine: &EngineInfo,
    shape: &Shape<'_>,
) -> Result<(String, bool), DockerError> {
    // A container of the same name: a kept session's (stopped: start it again) or one a
    // killed Safe Coder left running for this session (remove it: its processes are
    // the dead session's).
    if let Ok(existing) = docker.inspect_container(shape.name, None).await {
        let running = existing
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false);
        let has_agent = existing
            .mounts
            .iter()
            .flatten()
            .any(|m| m.destination.as_deref() == Some(super::agent::AGENT_IN_CONTAINER));
        let id = existing.id.unwrap_or_else(|| shape.name.to_string());
        if !running && docker.start_container(&id, None).await.is_ok() {
            return Ok((id, has_agent));
        }
        // Running (its processes are a dead session's) or not startable: start afresh.
        let _ = remove(docker, &id).await;
    }
    prepare_workspace(docker, shape).await?;
    let options = CreateContainerOptionsBuilder::default()
        .name(shape.name)
        .build();
    let created = docker
        .create_container(Some(options), body(shape, engine))
        .await
        .map_err(|e| engine_error("create the container", e))?;
    if let Err(e) = docker.start_container(&created.id, None).await {
        let _ = remove(docker, &created.id).await;
        return Err(engine_error("start the container", e));
    }
    Ok((created.id, shape.agent.has_binary()))
}

/// Creates and starts the container of one run (a fresh name; never reused). Returns
/// its id.
pub(crate) async fn create_run(
    docker: &Docker,
    engine: &EngineInfo,
    shape: &Shape<'_>,
) -> Result<String, DockerError> {
    prepare_workspace(docker, shape).await?;
    let options = CreateContainerOptionsBuilder::default()
        .name(shape.name)
        .build();
    let created = docker
        .create_container(Some(options), body(shape, engine))
        .await
        .map_err(|e| engine_error("create the command's container", e))?;
    if let Err(e) = docker.start_container(&created.id, None).await {
        let _ = remove(docker, &created.id).await;
        return Err(engine_error("start the command's container", e));
    }
    Ok(created.id)
}

/// Removes a container and whatever runs in it. A container already gone is fine.
pub(crate) async fn remove(docker: &Docker, id: &str) -> Result<(), DockerError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // "removal already in progress"
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(e) => Err(engine_error("remove the container", e)),
    }
}

/// Stops a container (kept for resume). PID 1 ends on SIGTERM at once; the engine
/// kills it after a second otherwise.
pub(crate) async fn stop(docker: &Docker, id: &str) -> Result<(), DockerError> {
    let options = StopContainerOptionsBuilder::default().t(1).build();
    match docker.stop_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // 304: already stopped.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 304, ..
        }) => Ok(()),
        Err(e) => Err(engine_error("stop the container", e)),
    }
}

/// The containers of Safe Coder on this engine: (id, labels, running).
pub(crate) async fn ours(docker: &Docker) -> Vec<(String, HashMap<String, String>, bool)> {
    let mut filters = HashMap::new();
    filters.insert("label".to_string(), vec![LABEL_SESSION.to_string()]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(options))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| {
            let running = matches!(c.state, Some(ContainerSummaryStateEnum::RUNNING));
            Some((c.id?, c.labels.unwrap_or_default(), running))
        })
        .collect()
}

/// Removes what a killed Safe Coder left: containers still running whose owner is
/// dead, and stopped ones whose session directory is gone (the session was synced or
/// discarded while the engine was down). A stopped container of a kept session stays.
/// Returns how many were removed.
pub(crate) async fn remove_leftovers(docker: &Docker) -> usize {
    let mut removed = 0;
    for (id, labels, running) in ours(docker).await {
        let owner = labels.get(LABEL_OWNER).map(String::as_str).unwrap_or("");
        if owner_alive(owner) {
            continue;
        }
        let dir_gone = labels
            .get(LABEL_SESSION_DIR)
            .is_none_or(|d| !Path::new(d).exists());
        let run = labels.contains_key(LABEL_RUN);
        if (running || dir_gone || run) && remove(docker, &id).await.is_ok() {
            if let (Some(session), false) = (labels.get(LABEL_SESSION), run) {
                super::agent::remove_run_dir(&name_for(session));
                if dir_gone {
                    super::share::remove_volume(docker, &name_for(session)).await;
                }
            }
            removed += 1;
        }
    }
    removed
}

/// Removes the container of `session` (`sessions discard`, and a session that ended
/// with nothing left to sync). Returns whether one was there.
pub(crate) async fn remove_session(docker: &Docker, session: &str) -> Result<bool, DockerError> {
    let mut found = false;
    for (id, labels, _) in ours(docker).await {
        if labels.get(LABEL_SESSION).map(String::as_str) == Some(session) {
            remove(docker, &id).await?;
            super::agent::remove_run_dir(&name_for(session));
            super::share::remove_volume(docker, &name_for(session)).await;
            found = true;
        }
    }
    Ok(found)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_owners() {
        assert_eq!(name_for("19a2f/x y"), "safe-coder-19a2f-x-y");
        let me = owner_label();
        assert!(owner_alive(&me), "{me}");
        // Same pid, another start time: a recycled pid is not the owner.
        let pid = std::process::id();
        assert!(!owner_alive(&format!("{pid}:1")));
        assert!(!owner_alive("not-a-pid"));
    }
}
