//! `[docker]`: the container backend's settings (docs/docker.md), how the user's and
//! the project's files merge, what a project file may say, and the
//! [`DockerSpec`](safe_coder_sandbox::DockerSpec) they become.
//!
//! ```toml
//! [docker]
//! host = "unix:///run/podman/podman.sock"   # default: DOCKER_HOST, Docker's socket, Podman's
//! runtime = "runsc"                          # default "auto": gVisor where the engine has it
//! image = "safe-coder-sandbox:bookworm"      # what `safe-coder sandbox image build` builds
//! network = "none"                           # the container's network mode
//! auto_pull = false                          # pull a missing image from a registry
//! memory_mb = 1024                           # default: [isolation] memory_mb
//! cpus = 1.0                                 # default: [isolation] cpus
//! pids = 256                                 # processes at once (a fork bomb stops there)
//! ```
//!
//! A project file may only tighten: lower limits, `network = "none"`, `runtime =
//! "runsc"` (gVisor is the stronger runtime). It may not choose the engine, the image,
//! another network, another runtime, or pulling; those stay the user's unless the user
//! trusted the project.

use serde::Deserialize;

use super::file::{positive_f64, positive_u64};

/// `[docker]` as a file says it. `None` = not set in this file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DockerSection {
    pub host: Option<String>,
    pub runtime: Option<String>,
    pub image: Option<String>,
    pub network: Option<String>,
    pub auto_pull: Option<bool>,
    #[serde(deserialize_with = "positive_f64")]
    pub cpus: Option<f64>,
    #[serde(deserialize_with = "positive_u64")]
    pub memory_mb: Option<u64>,
    #[serde(deserialize_with = "positive_u64")]
    pub pids: Option<u64>,
}

impl DockerSection {
    /// The project's value where it set one, else the user's.
    pub fn merge(proj: &DockerSection, user: &DockerSection) -> DockerSection {
        DockerSection {
            host: proj.host.clone().or_else(|| user.host.clone()),
            runtime: proj.runtime.clone().or_else(|| user.runtime.clone()),
            image: proj.image.clone().or_else(|| user.image.clone()),
            network: proj.network.clone().or_else(|| user.network.clone()),
            auto_pull: proj.auto_pull.or(user.auto_pull),
            cpus: proj.cpus.or(user.cpus),
            memory_mb: proj.memory_mb.or(user.memory_mb),
            pids: proj.pids.or(user.pids),
        }
    }

    /// What the sandbox is opened with (the session fills in its id and directory).
    pub fn spec(&self) -> safe_coder_sandbox::DockerSpec {
        let d = safe_coder_sandbox::DockerSpec::default();
        safe_coder_sandbox::DockerSpec {
            host: self.host.clone().filter(|h| !h.is_empty()),
            runtime: self
                .runtime
                .clone()
                .filter(|r| !r.is_empty() && r != "auto"),
            image: self.image.clone().unwrap_or(d.image),
            network: self.network.clone().unwrap_or(d.network),
            auto_pull: self.auto_pull.unwrap_or(d.auto_pull),
            memory_mb: self.memory_mb,
            cpus: self.cpus,
            pids: self.pids,
            session_id: None,
            session_dir: None,
        }
    }
}

/// Drops from an untrusted project's `[docker]` what would loosen the sandbox or choose
/// what it runs, calling `refuse(key, value, why)` for each. Limits are capped by the
/// caller with the user's values.
pub(super) fn restrict(proj: &mut DockerSection, mut refuse: impl FnMut(&str, String, &str)) {
    const CHOICE: &str = "a project may not choose what the sandbox runs";
    if let Some(h) = proj.host.take() {
        refuse("docker.host", format!("{h:?}"), CHOICE);
    }
    if let Some(i) = proj.image.take() {
        refuse("docker.image", format!("{i:?}"), CHOICE);
    }
    if let Some(p) = proj.auto_pull.take() {
        refuse("docker.auto_pull", p.to_string(), CHOICE);
    }
    if let Some(r) = proj.runtime.take() {
        if r == "runsc" {
            proj.runtime = Some(r);
        } else {
            refuse(
                "docker.runtime",
                format!("{r:?}"),
                "a project may only ask for gVisor (\"runsc\")",
            );
        }
    }
    if let Some(n) = proj.network.take() {
        if n == "none" {
            proj.network = Some(n);
        } else {
            refuse(
                "docker.network",
                format!("{n:?}"),
                "a project may not give the sandbox a network",
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_project_may_ask_for_gvisor_and_no_network_only() {
        let mut proj = DockerSection {
            host: Some("unix:///evil.sock".into()),
            runtime: Some("runsc".into()),
            network: Some("host".into()),
            image: Some("evil".into()),
            auto_pull: Some(true),
            ..Default::default()
        };
        let mut refused = Vec::new();
        restrict(&mut proj, |k, _, _| refused.push(k.to_string()));
        assert_eq!(proj.runtime.as_deref(), Some("runsc"));
        assert_eq!(proj.network, None);
        assert_eq!(
            refused,
            [
                "docker.host",
                "docker.image",
                "docker.auto_pull",
                "docker.network"
            ]
        );
        let mut proj = DockerSection {
            runtime: Some("runc".into()),
            network: Some("none".into()),
            ..Default::default()
        };
        let mut refused = Vec::new();
        restrict(&mut proj, |k, _, _| refused.push(k.to_string()));
        assert_eq!(proj.network.as_deref(), Some("none"));
        assert_eq!(refused, ["docker.runtime"]);
    }

    #[test]
    fn the_spec_takes_defaults_and_auto() {
        let spec = DockerSection {
            runtime: Some("auto".into()),
            pids: Some(100),
            ..Default::default()
        }
        .spec();
        assert_eq!(spec.runtime, None);
        assert_eq!(spec.image, safe_coder_sandbox::DEFAULT_DOCKER_IMAGE);
        assert_eq!(spec.network, "none");
        assert_eq!(spec.pids, Some(100));
    }
}
