//! Live usage: the resident memory of the commands running now (from /proc, by their
//! process groups). No limit is shown: none is enforced (see `limits.rs`).

use crate::host::HostSandbox;
use crate::SandboxStatus;

pub(crate) async fn current(host: &HostSandbox) -> SandboxStatus {
    let mut status = host.base_status();
    status.memory_used_mb = host.running_rss_mb().await;
    status
}
