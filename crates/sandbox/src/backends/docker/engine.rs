//! Reaching the engine: which socket (`[docker] host`, `DOCKER_HOST`, Docker's default,
//! then Podman's), one client per use site, the API version both sides speak, what the
//! engine is (Docker or Podman, its version, its runtimes), and the backend's errors.
//!
//! The engine is reached only over its Unix socket with bollard (the Engine API), never
//! through the `docker` CLI. Podman answers the same API through
//! `podman system service`.
//!
//! A client is bound to the tokio runtime whose tasks drive its connections, so the
//! synchronous entry points (`open`, the probe, `Drop`) run their requests on a private
//! current-thread runtime in a thread of their own ([`block_on`]), and the sandbox's
//! async methods use a client of their own made for the caller's runtime.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::{ClientVersion, Docker};

use crate::SandboxError;

/// Seconds a single engine request may take (not a command: commands have their own
/// timeout and are streamed).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// The oldest API version we speak: Docker 20.10 (Debian bookworm's `docker.io`) and
/// Podman 4 both answer 1.41. A newer engine is asked for the version it offers.
const MIN_API: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// Errors of the `docker` backend. Each message is one sentence naming the fix.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("no container engine socket found (tried {tried}); start dockerd or `podman system service`, or set [docker] host or DOCKER_HOST")]
    NoSocket { tried: String },
    #[error("only unix:// engine sockets are supported, not '{0}'; set [docker] host or DOCKER_HOST to unix:///path/to/docker.sock")]
    NotUnix(String),
    #[error("the container engine at {socket} does not answer ({detail}); check that dockerd or `podman system service` is running")]
    Unreachable { socket: String, detail: String },
    #[error("the image '{image}' is not on the engine at {socket}; build it with `safe-coder sandbox image build` (or set [docker] auto_pull = true to pull it)")]
    ImageMissing { image: String, socket: String },
    #[error("the engine at {socket} has no runtime '{runtime}' (it offers {offered}); register it in the daemon config or set [docker] runtime to one of those")]
    NoRuntime {
        runtime: String,
        socket: String,
        offered: String,
    },
    #[error("the container engine failed to {action}: {detail}; see `safe-coder sandbox doctor`")]
    Engine { action: String, detail: String },
}

impl From<DockerError> for SandboxError {
    fn from(e: DockerError) -> Self {
        match e {
            DockerError::Engine { .. } => SandboxError::Other(e.to_string()),
            _ => SandboxError::Unavailable(e.to_string()),
        }
    }
}

/// Maps a bollard error of `action` ("create the container") to one sentence.
pub(crate) fn engine_error(action: &str, e: bollard::errors::Error) -> DockerError {
    let detail = match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    };
    DockerError::Engine {
        action: action.to_string(),
        detail,
    }
}

/// Whether a bollard error is the engine's 404.
pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The sockets tried, in order: `[docker] host`, `DOCKER_HOST`, Docker's default, then
/// Podman's rootless and rootful sockets. The first that exists is used.
pub(crate) fn candidate_sockets(configured: Option<&str>) -> Result<Vec<PathBuf>, DockerError> {
    if let Some(host) = configured.filter(|h| !h.is_empty()) {
        return Ok(vec![unix_path(host)?]);
    }
    if let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
        return Ok(vec![unix_path(&host)?]);
    }
    let mut out = vec![PathBuf::from("/var/run/docker.sock")];
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(xdg).join("podman/podman.sock"));
    }
    out.push(PathBuf::from("/run/podman/podman.sock"));
    Ok(out)
}

fn unix_path(host: &str) -> Result<PathBuf, DockerError> {
    if let Some(path) = host.strip_prefix("unix://") {
        Ok(PathBuf::from(path))
    } else if host.starts_with('/') {
        Ok(PathBuf::from(host))
    } else {
        Err(DockerError::NotUnix(host.to_string()))
    }
}

/// The socket to use: the first candidate that exists.
pub(crate) fn find_socket(configured: Option<&str>) -> Result<PathBuf, DockerError> {
    let candidates = candidate_sockets(configured)?;
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or_else(|| DockerError::NoSocket {
            tried: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Which engine answers on the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    Docker,
    Podman,
}

/// What the engine said about itself, once per sandbox (and per probe).
#[derive(Clone, Debug)]
pub(crate) struct EngineInfo {
    pub socket: PathBuf,
    pub version: ClientVersion,
    pub flavor: Flavor,
    /// e.g. "Docker Engine 20.10.24+dfsg1".
    pub product: String,
    /// Runtimes the engine offers, sorted.
    pub runtimes: Vec<String>,
    pub default_runtime: String,
}

impl EngineInfo {
    /// The runtime a container gets: the configured one (which must be offered), or for
    /// `auto` gVisor where Docker has it, else the engine's default. Podman lists runsc
    /// whenever the binary is installed, and under it the process limit was not
    /// enforced here (measured: 200 forks with a limit of 48), so `auto` keeps
    /// Podman's default; `runtime = "runsc"` still asks for it.
    pub(crate) fn pick_runtime(&self, configured: Option<&str>) -> Result<String, DockerError> {
        match configured.filter(|r| !r.is_empty() && *r != "auto") {
            Some(r) if self.runtimes.iter().any(|o| o == r) => Ok(r.to_string()),
            // Podman lists only the runtimes of its containers.conf; its default (crun or
            // runc) is always there even when unlisted.
            Some(r) if r == self.default_runtime => Ok(r.to_string()),
            Some(r) => Err(DockerError::NoRuntime {
                runtime: r.to_string(),
                socket: self.socket.display().to_string(),
                offered: self.runtimes.join(", "),
            }),
            None if self.flavor == Flavor::Docker && self.runtimes.iter().any(|o| o == "runsc") => {
                Ok("runsc".to_string())
            }
            None => Ok(self.default_runtime.clone()),
        }
    }
}

/// A client for `socket` speaking `version`. No I/O happens here.
pub(crate) fn client(socket: &Path, version: &ClientVersion) -> Result<Docker, DockerError> {
    let s = socket.display().to_string();
    Docker::connect_with_unix(&s, REQUEST_TIMEOUT_SECS, version).map_err(|e| {
        DockerError::Unreachable {
            socket: s.clone(),
            detail: e.to_string(),
        }
    })
}

/// Connects and asks the engine who it is (version, runtimes). `deadline` bounds the
/// whole exchange (the probe must stay fast when a socket is stale).
pub(crate) async fn connect(
    socket: &Path,
    deadline: Duration,
) -> Result<(Docker, EngineInfo), DockerError> {
    let s = socket.display().to_string();
    let unreachable = |detail: String| DockerError::Unreachable {
        socket: s.clone(),
        detail,
    };
    let work = async {
        let docker = client(socket, &MIN_API)?;
        let version = docker
            .version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // Speak the engine's own version when it is newer than ours (bollard's
        // newest at most), so newer fields are understood.
        let api = version
            .api_version
            .as_deref()
            .and_then(parse_api)
            .unwrap_or(MIN_API);
        let api = at_most_bollard(newest_of(api, MIN_API));
        let docker = client(socket, &api)?;
        let info = docker
            .info()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let podman = version
            .components
            .iter()
            .flatten()
            .any(|c| c.name.to_ascii_lowercase().contains("podman"))
            || version
                .platform
                .as_ref()
                .is_some_and(|p| p.name.to_ascii_lowercase().contains("podman"));
        let product = format!(
            "{} {}",
            if podman { "Podman" } else { "Docker Engine" },
            version.version.as_deref().unwrap_or("(unknown version)")
        );
        let mut runtimes: Vec<String> = info
            .runtimes
            .map(|r| r.into_keys().collect())
            .unwrap_or_default();
        runtimes.sort();
        let default_runtime = info.default_runtime.unwrap_or_else(|| "runc".to_string());
        if !runtimes.contains(&default_runtime) && !podman {
            runtimes.push(default_runtime.clone());
            runtimes.sort();
        }
        Ok((
            docker,
            EngineInfo {
                socket: socket.to_path_buf(),
                version: api,
                flavor: if podman {
                    Flavor::Podman
                } else {
                    Flavor::Docker
                },
                product,
                runtimes,
                default_runtime,
            },
        ))
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(r) => r,
        Err(_) => Err(unreachable(format!(
            "no answer within {} ms",
            deadline.as_millis()
        ))),
    }
}

fn parse_api(s: &str) -> Option<ClientVersion> {
    let (major, minor) = s.split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
}

fn newest_of(a: ClientVersion, b: ClientVersion) -> ClientVersion {
    if (a.major_version, a.minor_version) >= (b.major_version, b.minor_version) {
        a
    } else {
        b
    }
}

/// Never above the version bollard itself was written for.
fn at_most_bollard(v: ClientVersion) -> ClientVersion {
    let max = bollard::API_DEFAULT_VERSION;
    if (v.major_version, v.minor_version) > (max.major_version, max.minor_version) {
        *max
    } else {
        v
    }
}

/// Runs `fut` to completion on a private current-thread runtime in a thread of its own:
/// the synchronous entry points use it whether or not the caller is inside a runtime.
pub(crate) fn block_on<T, F>(fut: F) -> Result<T, SandboxError>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(fut))
    })
    .join()
    .map_err(|_| SandboxError::Other("the container engine request panicked".into()))?
    .map_err(|e| {
        SandboxError::Other(format!(
            "could not start a runtime for the container engine: {e}"
        ))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_unix_sockets() {
        assert_eq!(
            unix_path("unix:///run/x.sock").unwrap(),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(
            unix_path("/run/y.sock").unwrap(),
            PathBuf::from("/run/y.sock")
        );
        let e = unix_path("tcp://1.2.3.4:2375").unwrap_err().to_string();
        assert!(e.contains("unix://"), "{e}");
        assert_eq!(
            candidate_sockets(Some("unix:///a/b.sock")).unwrap(),
            vec![PathBuf::from("/a/b.sock")]
        );
    }

    #[test]
    fn auto_prefers_gvisor_and_a_named_runtime_must_exist() {
        let info = EngineInfo {
            socket: PathBuf::from("/s"),
            version: MIN_API,
            flavor: Flavor::Docker,
            product: "Docker Engine 20.10".into(),
            runtimes: vec!["runc".into(), "runsc".into()],
            default_runtime: "runc".into(),
        };
        assert_eq!(info.pick_runtime(None).unwrap(), "runsc");
        assert_eq!(info.pick_runtime(Some("auto")).unwrap(), "runsc");
        assert_eq!(info.pick_runtime(Some("runc")).unwrap(), "runc");
        let e = info.pick_runtime(Some("kata")).unwrap_err().to_string();
        assert!(e.contains("runc, runsc"), "{e}");
        let plain = EngineInfo {
            runtimes: vec!["runc".into()],
            ..info
        };
        assert_eq!(plain.pick_runtime(None).unwrap(), "runc");
        assert_eq!(
            parse_api("1.43").map(|v| v.minor_version),
            Some(43),
            "API versions parse"
        );
    }
}
