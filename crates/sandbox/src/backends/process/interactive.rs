//! Interactive commands on the `process` backend (`safe-coder run`, docs/run.md): the
//! same confinement as every command of the sandbox (bubblewrap, or the in-process
//! mechanism), with a terminal of its own and the request's binds and mounts.
//!
//! Under bubblewrap:
//! - `/dev/tty` is the command's terminal again (commands of the agent see
//!   `/dev/null` there);
//! - bwrap itself runs in a new session without a controlling terminal, and the command
//!   takes the PTY as its controlling terminal inside (`setsid --ctty`), so `Ctrl+C`
//!   typed by the user reaches the command (and what it started), never bwrap;
//! - binds appear at their exact path; a `--mount` under the user's home appears at the
//!   same place under the sandbox's home (`/tmp/home`), any other at its own path;
//! - the network allow-list ([`NetworkAccess`](crate::NetworkAccess)): the sandbox has
//!   only its own loopback; the proxy's socket and the `safe-coder` binary are bound at
//!   `/run/safe-coder/net.sock` and `/run/safe-coder/safe-coder`, and the command runs
//!   under `safe-coder __net-forward --port P --socket ... -- CMD`, which listens on
//!   `127.0.0.1:P` inside and carries each connection to the socket.
//!
//! The in-process mechanism has no mount namespace: read-only mounts are shown at their
//! host path (Landlock read rules); a writable mount or a bind (the network proxy) needs
//! bubblewrap, and saying so is the answer.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::confiner::{Confinement, ProcessConfiner};
use super::{bwrap, inprocess};
use crate::host::HostSandbox;
use crate::interactive::{self, prepare, shell_line, spawn_host, Session};
use crate::{Bind, InteractiveChild, InteractiveRequest, SandboxError};

/// The sandbox's home under bubblewrap (see `bwrap.rs`).
const SANDBOX_HOME: &str = "/tmp/home";
/// Where the proxy's socket and the forwarder appear under bubblewrap.
const INSIDE_DIR: &str = "/run/safe-coder";

/// The command under the forwarder: `FORWARDER __net-forward --port P --socket S -- CMD`
/// (it listens on the sandbox's loopback and runs CMD as its child).
fn forwarded_argv(forwarder: &Path, socket: &Path, port: u16, argv: &[String]) -> Vec<String> {
    let mut out = vec![
        forwarder.display().to_string(),
        "__net-forward".to_string(),
        "--port".to_string(),
        port.to_string(),
        "--socket".to_string(),
        socket.display().to_string(),
        "--".to_string(),
    ];
    out.extend(argv.iter().cloned());
    out
}

/// Where a `--mount` the user named `path` appears inside under bubblewrap, given the
/// user's home (as `HOME` spells it; its canonical form is tried too).
pub(crate) fn mount_target(path: &Path, home: Option<&Path>) -> PathBuf {
    let canonical = home.and_then(|h| h.canonicalize().ok());
    let rel = home
        .into_iter()
        .chain(canonical.as_deref())
        .find_map(|h| path.strip_prefix(h).ok());
    match rel {
        Some(rel) if !rel.as_os_str().is_empty() => Path::new(SANDBOX_HOME).join(rel),
        _ => path.to_path_buf(),
    }
}

/// Makes `home/rel` a symlink to `target` (replacing an old symlink, never anything
/// else), for the in-process confiner's mounts.
fn link_into_home(home: &Path, rel: &Path, target: &Path) -> Result<(), SandboxError> {
    let link = home.join(rel);
    let fail = |e: std::io::Error| {
        SandboxError::Other(format!(
            "could not show {} in the sandbox's home: {e}",
            target.display()
        ))
    };
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(&link).map_err(fail)?,
        Ok(_) => return Err(SandboxError::Unavailable(format!(
            "{} already exists in the sandbox's home, so --mount cannot show {} there; remove it",
            rel.display(),
            target.display()
        ))),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, &link).map_err(fail)
}

fn util_setsid() -> Option<&'static str> {
    ["/usr/bin/setsid", "/bin/setsid"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
}

pub(crate) fn spawn(
    host: &HostSandbox,
    confiner: &ProcessConfiner,
    request: &InteractiveRequest,
) -> Result<InteractiveChild, SandboxError> {
    if request.argv.is_empty() {
        return Err(SandboxError::Other("no command to run was given".into()));
    }
    // Where commands run (with an overlay workspace, the merged tree's path in its
    // namespace, which the confiner's child setup joins).
    let workdir = host.exec_dir();
    for m in &request.mounts {
        if !m.host.exists() {
            return Err(SandboxError::NotFound(format!(
                "{} (given with --mount)",
                m.path.display()
            )));
        }
    }
    let terminal = interactive::open_terminal(request.terminal)?;
    let setup = confiner.child_setup();
    let (mut cmd, session) = match &confiner.confinement {
        Confinement::Bwrap(info) => {
            let mut extra: Vec<OsString> = Vec::new();
            if terminal.is_pty {
                extra.extend(["--dev-bind", "/dev/tty", "/dev/tty"].map(OsString::from));
            }
            let home = std::env::var_os("HOME").map(PathBuf::from);
            for m in &request.mounts {
                let flag = if m.read_only { "--ro-bind" } else { "--bind" };
                extra.push(flag.into());
                extra.push(m.host.clone().into_os_string());
                extra.push(mount_target(&m.path, home.as_deref()).into_os_string());
            }
            let mut binds = request.binds.clone();
            let mut argv = request.argv.clone();
            if let Some(net) = &request.network {
                let inside = Path::new(INSIDE_DIR);
                binds.push(Bind {
                    host: net.proxy_socket.clone(),
                    inside: inside.join("net.sock"),
                    read_only: false,
                });
                binds.push(Bind {
                    host: net.forwarder.clone(),
                    inside: inside.join("safe-coder"),
                    read_only: true,
                });
                argv = forwarded_argv(
                    &inside.join("safe-coder"),
                    &inside.join("net.sock"),
                    net.port,
                    &argv,
                );
            }
            for b in &binds {
                let flag = if b.read_only { "--ro-bind" } else { "--bind" };
                extra.push(flag.into());
                extra.push(b.host.clone().into_os_string());
                extra.push(b.inside.clone().into_os_string());
            }
            let line = shell_line(&argv);
            let (script, session) = match (terminal.is_pty, util_setsid()) {
                (true, Some(setsid)) => (
                    format!("exec {setsid} --ctty --wait -- {line}"),
                    Session::LeaderOnly,
                ),
                _ => (format!("exec {line}"), Session::LeaderWithTerminal),
            };
            let cmd = bwrap::command_with(
                info,
                &confiner.toolchains.dirs,
                Some(workdir),
                &script,
                Some(setup),
                &extra,
            )?;
            (cmd, session)
        }
        Confinement::InProcess { support, tmp, .. } => {
            if !request.binds.is_empty() || request.network.is_some() {
                return Err(SandboxError::Unavailable(
                    "the network allow-list needs bubblewrap (the in-process confiner cannot bind the proxy into the sandbox); install bubblewrap (apt-get install bubblewrap)".into(),
                ));
            }
            if let Some(m) = request.mounts.iter().find(|m| !m.read_only) {
                return Err(SandboxError::Unavailable(format!(
                    "a writable --mount ({}) needs bubblewrap; install it (apt-get install bubblewrap) or mount it read-only with :ro",
                    m.path.display()
                )));
            }
            let mut read_only = confiner.toolchains.dirs.clone();
            read_only.extend(request.mounts.iter().map(|m| m.host.clone()));
            // No mount namespace: a mount is readable at its host path (Landlock), and
            // one under the user's home also through a symlink at the same place in the
            // sandbox's home (`~/.codex` → `$HOME/.codex` inside, as under bubblewrap).
            let home = std::env::var_os("HOME").map(PathBuf::from);
            for m in &request.mounts {
                if let Ok(rel) = mount_target(&m.path, home.as_deref()).strip_prefix(SANDBOX_HOME) {
                    link_into_home(&tmp.path().join("home"), rel, &m.host)?;
                }
            }
            // A ruleset of its own: the mounts differ from the agent's commands' rules.
            let rulesets = inprocess::RulesetCache::default();
            let mut cmd = inprocess::command(
                support,
                workdir,
                confiner.writable_files(workdir),
                tmp.path(),
                &read_only,
                &format!("exec {}", shell_line(&request.argv)),
                &rulesets,
                Some(setup),
            )?;
            // The shim leads the group, so killing the group kills the sandbox.
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            (cmd, Session::LeaderWithTerminal)
        }
    };
    cmd.envs(confiner.toolchains.env.iter().map(|(k, v)| (k, v)));
    // bwrap and the in-process shim already die with Safe Coder.
    prepare(
        &mut cmd,
        &terminal,
        host.env_passthrough(),
        &request.env_extra,
        session,
        false,
    )?;
    spawn_host(cmd, terminal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_under_home_land_in_the_sandbox_home() {
        let home = Path::new("/home/u");
        assert_eq!(
            mount_target(Path::new("/home/u/.codex"), Some(home)),
            Path::new("/tmp/home/.codex")
        );
        assert_eq!(
            mount_target(Path::new("/data/x"), Some(home)),
            Path::new("/data/x")
        );
        assert_eq!(mount_target(home, Some(home)), home);
    }
}
