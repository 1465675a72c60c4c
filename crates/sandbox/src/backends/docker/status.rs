//! Live status of a `docker` sandbox from the engine: the container's state (inspect)
//! and its memory and CPU use (the stats API, one sample per call). CPU use is the
//! change of the container's CPU time over the host's between two calls, as `docker
//! stats` computes it; the first call has no CPU figure yet.

use std::sync::Mutex;

use bollard::query_parameters::StatsOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;

use crate::{Limits, SandboxState, SandboxStatus};

/// The previous CPU sample: (container CPU time, host CPU time), in nanoseconds.
#[derive(Debug, Default)]
pub(crate) struct CpuSample(Mutex<Option<(u64, u64)>>);

pub(crate) async fn current(
    docker: &Docker,
    container: &str,
    limits: Limits,
    uptime_secs: u64,
    stopped: bool,
    previous: &CpuSample,
) -> SandboxStatus {
    let mut status = SandboxStatus {
        backend: "docker".to_string(),
        state: SandboxState::Stopped,
        uptime_secs,
        memory_limit_mb: Some(limits.memory_mb),
        cpus: Some(limits.cpus),
        memory_used_mb: None,
        cpu_percent: None,
    };
    if stopped {
        return status;
    }
    status.state = match docker.inspect_container(container, None).await {
        Ok(c) => match c.state.and_then(|s| s.running) {
            Some(true) => SandboxState::Running,
            _ => SandboxState::Stopped,
        },
        Err(_) => SandboxState::Failed,
    };
    if status.state != SandboxState::Running {
        return status;
    }
    let options = StatsOptionsBuilder::default()
        .stream(false)
        .one_shot(true)
        .build();
    let Some(Ok(stats)) = docker.stats(container, Some(options)).next().await else {
        return status;
    };
    if let Some(mem) = stats.memory_stats {
        // What `docker stats` shows: usage without the page cache it could drop.
        let cache = mem
            .stats
            .as_ref()
            .and_then(|s| {
                s.get("total_inactive_file")
                    .or_else(|| s.get("inactive_file"))
            })
            .copied()
            .unwrap_or(0);
        status.memory_used_mb = mem.usage.map(|u| u.saturating_sub(cache) / (1024 * 1024));
        if let Some(limit) = mem.limit.filter(|&l| l > 0 && l < u64::MAX / 2) {
            status.memory_limit_mb = Some(limit / (1024 * 1024));
        }
    }
    if let Some(cpu) = stats.cpu_stats {
        let used = cpu.cpu_usage.and_then(|u| u.total_usage);
        let system = cpu.system_cpu_usage;
        let online = cpu.online_cpus.unwrap_or(1).max(1) as f64;
        if let (Some(used), Some(system)) = (used, system) {
            let mut prev = match previous.0.lock() {
                Ok(p) => p,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some((pu, ps)) = *prev {
                let du = used.saturating_sub(pu) as f64;
                let ds = system.saturating_sub(ps) as f64;
                if ds > 0.0 {
                    status.cpu_percent = Some(du / ds * online * 100.0);
                }
            }
            *prev = Some((used, system));
        }
    }
    status
}
