//! Live status of a VM for the TUI's sandbox panel: the state and uptime from the host,
//! memory used and CPU use from the agent's `usage` report (CPU as the difference between
//! two reports, in percent of one core), the limits from the VM's size.

use std::time::Duration;

use super::VmSandbox;
use crate::{SandboxState, SandboxStatus};

pub(crate) async fn current(vm: &VmSandbox) -> SandboxStatus {
    let state = vm.state();
    let mut status = SandboxStatus {
        backend: vm.kind.as_str().to_string(),
        state,
        uptime_secs: vm.started.elapsed().as_secs(),
        memory_limit_mb: Some(vm.memory_mb),
        cpus: Some(f64::from(vm.vcpus)),
        memory_used_mb: None,
        cpu_percent: None,
    };
    if state != SandboxState::Running {
        return status;
    }
    if let Err(e) = vm.vm_alive() {
        log_failure(vm, &e);
        status.state = SandboxState::Failed;
        return status;
    }
    let Ok(client) = vm.client().await else {
        return status;
    };
    // Never let the panel wait on a busy guest.
    let Ok(Ok(usage)) = tokio::time::timeout(Duration::from_secs(2), client.usage()).await else {
        return status;
    };
    status.memory_used_mb = Some(usage.memory_used_bytes() / (1024 * 1024));
    if let Ok(mut last) = vm.last_usage.lock() {
        status.cpu_percent = last.as_ref().and_then(|l| usage.cpu_percent_since(l));
        *last = Some(usage);
    }
    status
}

fn log_failure(vm: &VmSandbox, why: &str) {
    let _ = vm.failed(why.to_string());
}
