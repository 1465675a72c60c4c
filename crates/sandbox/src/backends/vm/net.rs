//! `--allow-net` on the microVMs (docs/run.md). The guest has no network device, only
//! its loopback (brought up by the agent at boot). The agent's own `net-forward`
//! subcommand, started as a second interactive exec with pipes (not a PTY), listens on
//! `127.0.0.1:PORT` in the guest and carries every connection over its stdin/stdout;
//! on the host [`safe_coder_netproxy::mux::serve_host`] connects each one to the
//! proxy's Unix socket, where the allow-list is enforced. Nothing else leaves the VM.

use std::sync::Arc;
use std::time::Duration;

use safe_coder_vm_protocol::{InteractiveExec, RequestId};
use tokio::sync::{mpsc, oneshot, watch};

use super::agent_client::AgentClient;
use super::interactive::{bridge, Output};
use crate::{NetworkAccess, SandboxError};
/// How long the forwarder may take to listen in the guest.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

/// The running forwarder: stopped with the command.
pub(super) struct Forwarder {
    id: RequestId,
    client: Arc<AgentClient>,
    mux: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    /// Kills the forwarder in the guest (its connections end) and the host side.
    pub async fn stop(self) {
        let req = safe_coder_vm_protocol::Request::Cancel { exec: self.id };
        let _ = self.client.done(&req, &[]).await;
        self.mux.abort();
    }
}

fn other(msg: String) -> SandboxError {
    SandboxError::Other(msg)
}

/// Starts the forwarder for `net` and returns once it listens in the guest.
pub(super) async fn start(
    client: &Arc<AgentClient>,
    env: &[(String, String)],
    net: &NetworkAccess,
) -> Result<Forwarder, SandboxError> {
    let exec = InteractiveExec {
        argv: vec![
            crate::vm::GUEST_AGENT.into(),
            "net-forward".into(),
            "--port".into(),
            net.port.to_string(),
        ],
        env: env.to_vec(),
        cwd: String::new(),
        terminal: None,
        merge_stderr: false,
    };
    let (id, _, frames) = client.exec_interactive(exec).await.map_err(|e| {
        other(format!(
            "could not start the network forwarder in the VM: {e}"
        ))
    })?;
    let (ours, theirs) = tokio::net::UnixStream::pair()
        .map_err(|e| other(format!("could not connect the network forwarder: {e}")))?;
    let (exit_tx, mut exit_rx) = oneshot::channel();
    // No resizes: the sender is dropped at once.
    let (_, resizes) = mpsc::unbounded_channel();
    let (said_tx, mut said) = watch::channel(String::new());
    tokio::spawn(bridge(
        client.clone(),
        id,
        frames,
        ours,
        false,
        Output::StdoutOnly(said_tx),
        resizes,
        exit_tx,
    ));
    let socket = net.proxy_socket.clone();
    let (from_guest, to_guest) = theirs.into_split();
    let mux = tokio::spawn(async move {
        if let Err(e) = safe_coder_netproxy::mux::serve_host(from_guest, to_guest, socket).await {
            log::warn!("the network forwarder's stream: {e}");
        }
    });
    let forwarder = Forwarder {
        id,
        client: client.clone(),
        mux,
    };
    // It says on stderr once it listens (before that, CMD's first connection could
    // find nothing there).
    let listening = async {
        loop {
            if said.borrow_and_update().contains("listening on") {
                return true;
            }
            tokio::select! {
                changed = said.changed() => if changed.is_err() { return false },
                _ = &mut exit_rx => return false,
            }
        }
    };
    let listening = tokio::time::timeout(LISTEN_TIMEOUT, listening)
        .await
        .unwrap_or(false);
    if !listening {
        let why = said.borrow().trim().to_string();
        forwarder.stop().await;
        return Err(other(format!(
            "the network forwarder did not start in the VM{}; rebuild the image with `safe-coder sandbox image build` if its agent is older than this safe-coder",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            }
        )));
    }
    Ok(forwarder)
}
