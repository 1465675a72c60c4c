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
//! The in-process mechanism has no mount namespace: mounts are reachable at their host
//! path (Landlock rules, read-only or read-write; one under the user's home also by a
//! symlink in the sandbox's home). The network allow-list works there too, without
//! binding anything in: the forwarder (the `safe-coder` binary at its host path) gets
//! one end of a socket pair (`__net-forward --stream-fd N`) and carries the command's
//! connections over it with `safe_coder_netproxy::mux`, whose host side connects each
//! to the proxy's socket.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
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

/// The command under the forwarder: `FORWARDER __net-forward --port P VIA -- CMD`, where
/// VIA is `--socket PATH` (the proxy's socket, bound in) or `--stream-fd N` (a stream
/// the host carries with `mux`). It listens on the sandbox's loopback and runs CMD as
/// its child.
fn forwarded_argv(forwarder: &Path, port: u16, via: [String; 2], argv: &[String]) -> Vec<String> {
    let mut out = vec![
        forwarder.display().to_string(),
        "__net-forward".to_string(),
        "--port".to_string(),
        port.to_string(),
    ];
    out.extend(via);
    out.push("--".to_string());
    out.extend(argv.iter().cloned());
    out
}

/// A socket pair for the in-process confiner's forwarder: the sandbox's end is passed
/// into the sandbox (its number on the command line), the host's end carried to the
/// proxy by `mux::serve_host`.
fn stream_pair() -> Result<(std::os::unix::net::UnixStream, OwnedFd), SandboxError> {
    let (host, guest) = std::os::unix::net::UnixStream::pair().map_err(|e| {
        SandboxError::Other(format!("could not open a stream for the network: {e}"))
    })?;
    Ok((host, OwnedFd::from(guest)))
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
        Ok(_) => {
            let why = format!(
                "{} already exists in the sandbox's home, so --mount cannot show {} there",
                rel.display(),
                target.display()
            );
            return Err(SandboxError::Unavailable(format!("{why}; remove it")));
        }
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
    let (mut cmd, session, stream) = match &confiner.confinement {
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
                    net.port,
                    [
                        "--socket".to_string(),
                        inside.join("net.sock").display().to_string(),
                    ],
                    &argv,
                );
            }
            for b in &binds {
                let flag = if b.read_only { "--ro-bind" } else { "--bind" };
                extra.push(flag.into());
                extra.push(b.host.clone().into_os_string());
                extra.push(b.inside.clone().into_os_string());
            }
            // bwrap runs the command itself (no shell in between: one exec less).
            let (argv, session): (Vec<OsString>, Session) = match (terminal.is_pty, util_setsid()) {
                (true, Some(setsid)) => (
                    [setsid, "--ctty", "--wait", "--"]
                        .into_iter()
                        .map(OsString::from)
                        .chain(argv.iter().map(OsString::from))
                        .collect(),
                    Session::LeaderOnly,
                ),
                _ => (
                    argv.iter().map(OsString::from).collect(),
                    Session::LeaderWithTerminal,
                ),
            };
            let cmd = bwrap::command_argv(
                info,
                &confiner.toolchains.dirs,
                Some(workdir),
                &argv,
                Some(setup),
                &extra,
            )?;
            (cmd, session, None)
        }
        Confinement::InProcess { support, tmp, .. } => {
            if !request.binds.is_empty() {
                return Err(SandboxError::Unavailable(
                    "the in-process confiner cannot bind paths into the sandbox; install bubblewrap (apt-get install bubblewrap)".into(),
                ));
            }
            let mut read_only = confiner.toolchains.dirs.clone();
            let mut rules = inprocess::RunRules::default();
            for m in &request.mounts {
                if m.read_only {
                    read_only.push(m.host.clone());
                } else {
                    rules.writable.push(m.host.clone());
                }
            }
            // No mount namespace: a mount is reachable at its host path (a Landlock
            // rule, read-only or read-write), and one under the user's home also through
            // a symlink at the same place in the sandbox's home (`~/.codex` →
            // `$HOME/.codex` inside, as under bubblewrap).
            let home = std::env::var_os("HOME").map(PathBuf::from);
            for m in &request.mounts {
                let inside = mount_target(&m.path, home.as_deref());
                if let Ok(rel) = inside.strip_prefix(SANDBOX_HOME) {
                    link_into_home(&tmp.path().join("home"), rel, &m.host)?;
                }
            }
            // The network allow-list: no mount namespace to bind the proxy's socket in,
            // and no `AF_UNIX` socket may be opened inside (seccomp). So the forwarder
            // (the safe-coder binary, readable and executable by a Landlock rule) gets
            // one end of a socket pair and carries its connections over it with `mux`;
            // Landlock lets the sandbox bind and connect to the forwarder's port on its
            // own loopback only (its network namespace has nothing else).
            let mut argv = request.argv.clone();
            let mut stream = None;
            if let Some(net) = &request.network {
                let (host_end, guest_end) = stream_pair()?;
                read_only.push(net.forwarder.clone());
                argv = forwarded_argv(
                    &net.forwarder,
                    net.port,
                    ["--stream-fd".to_string(), guest_end.as_raw_fd().to_string()],
                    &argv,
                );
                stream = Some((host_end, guest_end, net.proxy_socket.clone()));
                rules.loopback_port = Some(net.port);
            }
            // A ruleset of its own: the mounts and the network differ from the agent's
            // commands' rules.
            let rulesets = inprocess::RulesetCache::for_run(rules);
            let mut cmd = inprocess::command(
                support,
                workdir,
                confiner.writable_files(workdir),
                tmp.path(),
                &read_only,
                &format!("exec {}", shell_line(&argv)),
                &rulesets,
                Some(setup),
            )?;
            if let Some((_, guest_end, _)) = &stream {
                let fd = guest_end.as_raw_fd();
                // SAFETY: fcntl on a descriptor the child inherited (it stays open until
                // exec, where it must stay open: the forwarder reads its number).
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
            // The shim leads the group, so killing the group kills the sandbox.
            cmd.process_group(0);
            (cmd, Session::LeaderWithTerminal, stream)
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
    let (tasks, guest_end) = match stream {
        Some((host_end, guest_end, proxy_socket)) => (
            vec![carry_to_proxy(host_end, proxy_socket)?],
            Some(guest_end),
        ),
        None => (Vec::new(), None),
    };
    // On cgroup v1 the command is forked by the thread already in the sandbox's cgroup
    // (no attach on the start's path, see `cgroup.rs`); else it joins in its setup.
    let child = if confiner.limits.spawner_inside() {
        let runtime = tokio::runtime::Handle::current();
        confiner
            .limits
            .spawn_inside(move || {
                let _in_runtime = runtime.enter();
                spawn_host(cmd, terminal, tasks)
            })
            .map_err(|e| {
                SandboxError::Unavailable(format!(
                    "could not start the command in the sandbox: {e}"
                ))
            })?
    } else {
        spawn_host(cmd, terminal, tasks)
    };
    // Only the sandbox holds its end now: the stream ends when the sandbox does.
    drop(guest_end);
    child
}

/// Runs `mux::serve_host` on the host's end of the forwarder's stream; it ends with the
/// stream (the sandbox gone), or is aborted with the child.
fn carry_to_proxy(
    host_end: std::os::unix::net::UnixStream,
    proxy_socket: PathBuf,
) -> Result<tokio::task::AbortHandle, SandboxError> {
    let fail =
        |e: std::io::Error| SandboxError::Other(format!("could not carry the network stream: {e}"));
    host_end.set_nonblocking(true).map_err(fail)?;
    let stream = tokio::net::UnixStream::from_std(host_end).map_err(fail)?;
    let (from_guest, to_guest) = stream.into_split();
    let task = tokio::spawn(async move {
        if let Err(e) =
            safe_coder_netproxy::mux::serve_host(from_guest, to_guest, proxy_socket).await
        {
            log::warn!("the sandbox's network stream ended: {e}");
        }
    });
    Ok(task.abort_handle())
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
