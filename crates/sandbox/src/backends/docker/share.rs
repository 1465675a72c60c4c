//! The overlay workspace in a container (issue 12): the engine mounts the session's
//! layers (the project read-only below, the session's `upper/` above) as an overlay
//! volume at `/workspace`, so nothing is copied.
//!
//! Two mounts of one upper layer are sound only if neither reads what it cached after
//! the other wrote, so the rules are (docs/docker.md):
//! - the file tools go through the resident agent, i.e. through the engine's mount;
//! - Safe Coder's own mount (the history's, `crate::overlay::OverlayMount`) is mounted
//!   afresh before each look (`OverlayMount::share_with_engine`);
//! - after the host wrote through its own mount (a rollback, a restore, a merge:
//!   `OverlayMount::note_host_write`) the container is restarted before it is used,
//!   which makes the engine mount the volume afresh;
//! - the engine gets an overlayfs work directory of its own (two mounts must not share
//!   one: mounting clears it).
//!
//! It needs the resident agent (runc, Docker or Podman) and a runtime that can use the
//! volume: under gVisor every directory's `stat` fails in it, so runsc keeps the copy.

use std::collections::HashMap;
use std::path::PathBuf;

use bollard::models::{Mount, MountType, MountVolumeOptions, VolumeCreateRequest};
use bollard::query_parameters::RemoveVolumeOptions;
use bollard::Docker;

use super::container::LABEL_SESSION;
use super::engine::{engine_error, DockerError};

use crate::overlay::{overlay_options, Layers};
use crate::vm::share::ShareDecision;
use crate::DockerSpec;

/// The engine's overlayfs work directory, beside the history's (`ovl-work`).
const ENGINE_WORK: &str = "ovl-work-engine";

/// Decides the workspace of a new `docker` session: an overlay volume where the
/// engine's runtime passes the agent's socket and the static agent is found, else the
/// copy. `why` is a clause for the start line.
pub fn decide(spec: &DockerSpec) -> ShareDecision {
    let no = |why: &str| ShareDecision {
        shared: false,
        why: format!("copied into the container ({why})"),
    };
    if crate::overlay::forced_copy() {
        return no("SAFE_CODER_WORKSPACE=copy");
    }
    if super::agent::find_binary().is_none() {
        return no("no static guest agent to write files through; see docs/docker.md");
    }
    match super::runtime_for(spec) {
        Ok((runtime, _)) if super::agent::runtime_passes_sockets(&runtime) => ShareDecision {
            shared: true,
            why: "an overlay volume in the container, nothing copied".into(),
        },
        Ok((runtime, _)) => no(&format!(
            "{runtime} cannot stat the directories of an overlay volume"
        )),
        Err(e) => no(&e.to_string()),
    }
}

/// The doctor's line on the workspace of `docker` sessions.
pub fn doctor_line(spec: &DockerSpec) -> String {
    format!("docker workspace: {}\n", decide(spec).why)
}

/// The layers as the engine mounts them: the history's, with a work directory of
/// the engine's own.
pub(crate) fn engine_layers(layers: &Layers) -> Layers {
    Layers {
        work: layers.work.with_file_name(ENGINE_WORK),
        ..layers.clone()
    }
}

/// The name of the volume of the container named `container` (a session's; the
/// containers of its runs use the same).
pub(crate) fn volume_name(container: &str) -> String {
    format!("{container}-workspace")
}

/// Makes (or finds, for a kept session) the named `local` volume of type overlay that
/// shows `layers`, labelled with the session, and creates the engine's work directory.
/// A named volume because Podman ignores the driver options of an anonymous one.
pub(crate) async fn ensure_volume(
    docker: &Docker,
    name: &str,
    session: &str,
    layers: &Layers,
) -> Result<(), DockerError> {
    let engine = engine_layers(layers);
    std::fs::create_dir_all(&engine.work).map_err(|e| DockerError::Engine {
        action: "mount the overlay workspace".into(),
        detail: format!(
            "its work directory {} cannot be made: {e}",
            engine.work.display()
        ),
    })?;
    let options: HashMap<String, String> = [
        ("type".to_string(), "overlay".to_string()),
        ("device".to_string(), "overlay".to_string()),
        ("o".to_string(), overlay_options(&engine)),
    ]
    .into_iter()
    .collect();
    if let Ok(v) = docker.inspect_volume(name).await {
        if v.options == options {
            return Ok(());
        }
        // The same name over other layers (a session directory moved): make it anew.
        let _ = docker
            .remove_volume(name, None::<RemoveVolumeOptions>)
            .await;
    }
    let labels = [(LABEL_SESSION.to_string(), session.to_string())]
        .into_iter()
        .collect();
    docker
        .create_volume(VolumeCreateRequest {
            name: Some(name.to_string()),
            driver: Some("local".to_string()),
            driver_opts: Some(options),
            labels: Some(labels),
            ..Default::default()
        })
        .await
        .map_err(|e| engine_error("create the overlay workspace's volume", e))?;
    Ok(())
}

/// The mount of volume `name` at `target`.
pub(crate) fn volume_mount(name: &str, target: &str) -> Mount {
    Mount {
        target: Some(target.to_string()),
        source: Some(name.to_string()),
        typ: Some(MountType::VOLUME),
        volume_options: Some(MountVolumeOptions {
            // Nothing of the image is copied into the volume (it would land in upper/).
            no_copy: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Removes the workspace volume of container `container` (its session is gone); one
/// still in use or already gone is left alone.
pub(crate) async fn remove_volume(docker: &Docker, container: &str) {
    let _ = docker
        .remove_volume(&volume_name(container), None::<RemoveVolumeOptions>)
        .await;
}

/// Where the engine's work directory of a session is (for cleanup).
pub fn engine_work_dir(session_dir: &std::path::Path) -> PathBuf {
    session_dir.join(ENGINE_WORK)
}
