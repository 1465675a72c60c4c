//! Whether the `docker` backend works here (for `sandbox doctor` and `auto`): an engine
//! answers on a socket, it has the runtime asked for (`auto`: gVisor where offered), and
//! the image is there (or may be pulled). The reason names the engine, its runtimes
//! and the image, or the one thing missing and how to get it. A probe costs three
//! engine requests on the local socket (a few milliseconds); a socket that does not
//! answer is given up after [`PROBE_DEADLINE`].

use std::time::Duration;

use super::engine::{self, block_on, DockerError, EngineInfo};
use super::{image, limits};
use crate::select::BackendProbe;
use crate::{BackendKind, DockerSpec, Limits};

const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// The engine and runtime a sandbox of `spec` would get, or why there is none.
pub(crate) async fn check(spec: &DockerSpec) -> Result<(EngineInfo, String), DockerError> {
    let socket = engine::find_socket(spec.host.as_deref())?;
    let (docker, info) = engine::connect(&socket, PROBE_DEADLINE).await?;
    let runtime = info.pick_runtime(spec.runtime.as_deref())?;
    if !spec.auto_pull && !image::present(&docker, &spec.image).await? {
        return Err(DockerError::ImageMissing {
            image: spec.image.clone(),
            socket: socket.display().to_string(),
        });
    }
    Ok((info, runtime))
}

pub(crate) fn probe(spec: &DockerSpec) -> BackendProbe {
    let owned = spec.clone();
    let result = block_on(async move { check(&owned).await });
    let (available, reason) = match result {
        Ok(Ok((info, runtime))) => (true, describe(&info, &runtime, spec)),
        Ok(Err(e)) => (false, e.to_string()),
        Err(e) => (false, e.to_string()),
    };
    BackendProbe {
        kind: BackendKind::Docker,
        available,
        reason,
    }
}

fn describe(info: &EngineInfo, runtime: &str, spec: &DockerSpec) -> String {
    let gvisor = if runtime == "runsc" {
        " (gVisor: its own kernel in user space)"
    } else {
        ""
    };
    let commands = match (super::agent::find_binary(), super::agent::runtime_passes_sockets(runtime)) {
        (Some(_), true) => "commands through the resident agent",
        (Some(_), false) => "commands through the engine's exec (gVisor keeps the agent's socket inside)",
        (None, _) => "commands through the engine's exec (no static guest agent found; set SAFE_CODER_GUEST_AGENT)",
    };
    format!(
        "{} at {}; runtimes: {}; using {runtime}{gvisor}; {commands}; image {}; network {}; {}",
        info.product,
        info.socket.display(),
        info.runtimes.join(", "),
        spec.image,
        spec.network,
        limits::describe(Limits::default()),
    )
}
