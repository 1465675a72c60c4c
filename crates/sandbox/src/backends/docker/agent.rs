//! The resident agent: the guest agent of the microVMs (`crates/guest-agent`, a static
//! binary) as the container's PID 1, serving the protocol of `docs/vm-protocol.md` on a
//! Unix socket in a per-session host directory bind-mounted into the container. A
//! command through it costs a connect and a few frames on a local socket instead of the
//! engine's two exec API calls and a `runc exec` (about 80 ms with runc).
//!
//! Used only where a Unix socket made in the container can be reached from the host:
//! under runc (Docker and Podman). gVisor (`runsc`) keeps sockets inside its own
//! kernel, so there the container keeps the small bash init and commands go through the
//! engine's exec (`exec.rs`), as they also do when no static agent binary is found or
//! the agent does not answer.
//!
//! Each command opens its own connection (a connect and a handshake: well under a
//! millisecond), so the client never outlives the tokio runtime that made it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use safe_coder_vm_protocol::{ErrorKind, ExecRequest as AgentExec, FileKind, Request, Response};

use crate::backends::vm::agent_client::{AgentClient, AgentClientError, Endpoint};
use crate::{CancellationToken, DirEntry, ExecOutput, ExecRequest, FileStat, SandboxError};

/// Where the agent binary appears in the container (bind-mounted read-only).
pub(crate) const AGENT_IN_CONTAINER: &str = "/.safe-coder/agent";
/// Where the session's socket directory appears in the container.
pub(crate) const RUN_IN_CONTAINER: &str = "/.safe-coder/run";
/// The socket's name in that directory.
const SOCKET: &str = "agent.sock";
const AGENT_BINARY: &str = "safe-coder-guest-agent";
/// How long opening waits for a fresh agent to listen.
const READY_DEADLINE: Duration = Duration::from_secs(3);

/// Where the static agent binary is: `SAFE_CODER_GUEST_AGENT`, next to the running
/// executable, or where `scripts/build-guest-agent.sh` puts it in this `target/` (the
/// same places as `safe_coder_image::vm::agent_candidates`). Only a static executable
/// will do: the image's libc is unknown.
pub(crate) fn find_binary() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("SAFE_CODER_GUEST_AGENT") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(AGENT_BINARY));
        for up in [dir.parent(), dir.parent().and_then(Path::parent)]
            .into_iter()
            .flatten()
        {
            candidates.push(
                up.join("x86_64-unknown-linux-gnu/release")
                    .join(AGENT_BINARY),
            );
        }
    }
    candidates
        .into_iter()
        .find(|c| std::fs::read(c).is_ok_and(|b| is_static_elf(&b)))
}

/// Whether an ELF executable needs no dynamic loader (no `PT_INTERP` program header).
fn is_static_elf(bytes: &[u8]) -> bool {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let mut phoff = [0u8; 8];
    phoff.copy_from_slice(&bytes[0x20..0x28]);
    let phoff = u64::from_le_bytes(phoff) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        bytes
            .get(o..o + 4)
            .map(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]))
            != Some(3)
    })
}

/// Whether a runtime lets the host reach a Unix socket made inside the container.
pub(crate) fn runtime_passes_sockets(runtime: &str) -> bool {
    runtime != "runsc"
}

/// The session's socket directory on the host (mode 0700, the user's): stable per
/// container name, so a kept container started again finds it. `None` when it cannot
/// be made or its socket path would be too long for a Unix socket.
pub(crate) fn run_dir(container_name: &str) -> Option<PathBuf> {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let base = std::env::temp_dir().join(format!("safe-coder-{uid}"));
    let dir = base.join(container_name);
    if dir.join(SOCKET).as_os_str().len() >= 100 {
        return None;
    }
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    for d in [&base, &dir] {
        let _ = std::fs::DirBuilder::new().mode(0o700).create(d);
        let meta = std::fs::symlink_metadata(d).ok()?;
        // Someone else's directory (or a symlink) in a shared /tmp is not ours to use.
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
            return None;
        }
    }
    Some(dir)
}

/// Removes a session's socket directory (its container is gone).
pub(crate) fn remove_run_dir(container_name: &str) {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir()
        .join(format!("safe-coder-{uid}"))
        .join(container_name);
    let _ = std::fs::remove_dir_all(dir);
}

/// The agent's command line in the container.
pub(crate) fn command() -> Vec<String> {
    vec![
        AGENT_IN_CONTAINER.into(),
        "--listen".into(),
        format!("unix:{RUN_IN_CONTAINER}/{SOCKET}"),
        "--workspace".into(),
        super::container::WORKSPACE.into(),
    ]
}

/// The agent of a container, reached through its socket on the host.
#[derive(Clone, Debug)]
pub(crate) struct Resident {
    socket: PathBuf,
}

impl Resident {
    /// Waits until the agent in `dir` answers a ping; `None` when it does not in time
    /// (the container was made without it, or the socket is not reachable from here).
    pub async fn wait_ready(dir: &Path) -> Option<Resident> {
        let r = Resident {
            socket: dir.join(SOCKET),
        };
        r.answers().await.then_some(r)
    }

    /// Whether the agent answers a ping within the time a fresh agent gets to start.
    pub async fn answers(&self) -> bool {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if self.answers_now().await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the agent answers a ping now (a stopped container's does not).
    pub async fn answers_now(&self) -> bool {
        if !self.socket.exists() {
            return false;
        }
        match tokio::time::timeout(Duration::from_secs(2), self.connect()).await {
            Ok(Ok(c)) => c.ping().await.is_ok(),
            _ => false,
        }
    }

    /// One file request (`docker/share.rs`: over an overlay workspace the file tools go
    /// through the agent, so through the engine's mount), its error as the host's
    /// file operations would say it.
    async fn file_call(
        &self,
        path: &str,
        req: Request,
        data: &[u8],
    ) -> Result<(Response, Vec<u8>), SandboxError> {
        let client = self.connect().await?;
        match client.call(&req, data).await {
            Ok(frame) => Ok((frame.body, frame.data)),
            Err(e) => Err(file_error(path, e)),
        }
    }

    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        let req = Request::ReadFile {
            path: path.to_string(),
        };
        // The contents come in the frame's data, not its body.
        match self.file_call(path, req, &[]).await? {
            (Response::FileData { .. }, data) => Ok(data),
            (other, _) => Err(unexpected("read", &other)),
        }
    }

    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), SandboxError> {
        // No mode: an existing file keeps its own, a new one gets 0644.
        let req = Request::WriteFile {
            path: path.to_string(),
            mode: None,
        };
        match self.file_call(path, req, data).await?.0 {
            Response::Done => Ok(()),
            other => Err(unexpected("write", &other)),
        }
    }

    pub async fn stat(&self, path: &str) -> Result<Option<FileStat>, SandboxError> {
        let req = Request::Stat {
            path: path.to_string(),
        };
        match self.file_call(path, req, &[]).await?.0 {
            Response::Stat { stat } => Ok(stat.map(|s| FileStat {
                is_dir: s.kind == FileKind::Dir,
                size: s.size,
                executable: s.mode & 0o111 != 0,
            })),
            other => Err(unexpected("stat", &other)),
        }
    }

    pub async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, SandboxError> {
        let req = Request::ListDir {
            path: path.to_string(),
        };
        match self.file_call(path, req, &[]).await?.0 {
            Response::Entries { entries } => Ok(entries
                .into_iter()
                .map(|e| DirEntry {
                    name: e.name,
                    is_dir: e.kind == FileKind::Dir,
                    size: e.size,
                })
                .collect()),
            other => Err(unexpected("list", &other)),
        }
    }

    /// A plain Unix socket: the client's `Serial` endpoint is exactly that (a connect,
    /// no vsock `CONNECT` line).
    async fn connect(&self) -> Result<AgentClient, SandboxError> {
        AgentClient::connect(&Endpoint::Serial(self.socket.clone()), true)
            .await
            .map(|(c, _fd)| c)
            .map_err(|e| SandboxError::Other(e.to_string()))
    }

    /// Runs `request` through the agent: `bash -c` in /workspace with exactly `env`,
    /// stderr merged into stdout, the timeout and cancel killing the command's process
    /// group (the agent gives each command a session of its own).
    ///
    /// `Ok(None)` when the command was not started: the agent does not answer (the
    /// container died: at a limit, `docker stop`) or could not start it (its process
    /// limit is full). The caller runs it through the engine's exec then, which starts
    /// a dead container again (and the agent with it) or restarts a full one.
    pub async fn exec(
        &self,
        env: &[String],
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<Option<ExecOutput>, SandboxError> {
        let begun = Instant::now();
        let Ok(Ok(client)) = tokio::time::timeout(READY_DEADLINE, self.connect()).await else {
            return Ok(None);
        };
        let env = env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut req = AgentExec::shell(request.command, env);
        req.timeout_ms = Some(request.timeout.as_millis().min(u128::from(u64::MAX)) as u64);
        req.output_limit = Some(request.max_output_bytes as u64);
        req.merge_stderr = true;
        let ran = match client.exec(req, request.max_output_bytes, &cancel).await {
            Ok(ran) => ran,
            // The agent's answer instead of `exec_started`: nothing ran.
            Err(AgentClientError::Agent(_)) => return Ok(None),
            Err(e) => return Err(SandboxError::Other(e.to_string())),
        };
        Ok(Some(ExecOutput {
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
        }))
    }
}

/// An agent's refusal of a file request, as the host's file operations say it.
fn file_error(path: &str, e: AgentClientError) -> SandboxError {
    match e {
        AgentClientError::Agent(e) => match e.kind {
            ErrorKind::NotFound => SandboxError::NotFound(path.to_string()),
            ErrorKind::IsDirectory => SandboxError::IsDirectory(path.to_string()),
            ErrorKind::OutsideWorkspace => SandboxError::OutsideRoot(path.to_string()),
            _ => SandboxError::Other(e.message),
        },
        e => SandboxError::Other(e.to_string()),
    }
}

fn unexpected(what: &str, got: &Response) -> SandboxError {
    SandboxError::Other(format!(
        "the agent in the container answered a {what} request with {got:?}; its binary may be older than this Safe Coder, rebuild it with scripts/build-guest-agent.sh"
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_a_static_agent_and_a_private_run_dir_will_do() {
        // This test executable is linked dynamically: not usable in an unknown image.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(
            b"#!/bin/sh\necho not an ELF file at all, long enough to parse........"
        ));
        assert!(!runtime_passes_sockets("runsc"));
        assert!(runtime_passes_sockets("runc"));
        let name = format!("safe-coder-unit-{}", std::process::id());
        let dir = run_dir(&name).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        remove_run_dir(&name);
        assert!(!dir.exists());
        assert!(run_dir(&"x".repeat(120)).is_none());
    }
}
