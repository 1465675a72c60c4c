//! Live usage of a `process` sandbox: memory from its cgroup (all its processes, also
//! those that left the process group), else the resident memory of the running
//! commands' process groups from /proc; the limits that are really enforced.

use super::ProcessConfiner;
use crate::host::HostSandbox;
use crate::SandboxStatus;

pub(crate) async fn current(host: &HostSandbox, confiner: &ProcessConfiner) -> SandboxStatus {
    let mut status = host.base_status();
    status.memory_used_mb = match confiner.memory_used_mb() {
        Some(mb) => Some(mb),
        None => host.running_rss_mb().await,
    };
    status
}
