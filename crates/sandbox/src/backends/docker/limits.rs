//! The `docker` backend's limits: the engine enforces them per container with its
//! cgroup: memory (and no swap beyond it), CPUs (`NanoCpus`), and the number of
//! processes (`PidsLimit`: a fork bomb stops there). All of them hold for everything
//! in the container together.
//!
//! Under gVisor the cgroup holds the sandbox's *host* tasks: the Sentry's own threads
//! (about 70 at rest, measured) and, on its ptrace platform, about nine per process
//! in the sandbox (measured with Debian's runsc 2022-12). The process limit given to the
//! engine is then [`GVISOR_BASE_TASKS`] + [`GVISOR_TASKS_PER_PROCESS`] × the limit, so a
//! fork bomb still stops near it; a limit of 64 host tasks would stop the Sentry
//! itself.

use bollard::models::{HostConfig, ResourcesUlimits};

use super::engine::Flavor;
use crate::Limits;

/// The smallest memory limit given to the engine: below that a container cannot start.
const MIN_MEMORY_MB: u64 = 16;

/// Host tasks of an idle gVisor sandbox, with room to spare.
pub(crate) const GVISOR_BASE_TASKS: u64 = 128;
/// Host tasks per process inside a gVisor sandbox (ptrace platform), rounded up.
pub(crate) const GVISOR_TASKS_PER_PROCESS: u64 = 10;

/// The engine's process limit for `pids` processes under `runtime`.
pub(crate) fn engine_pids(pids: u64, runtime: &str) -> i64 {
    let pids = pids.max(8);
    if runtime == "runsc" {
        (GVISOR_BASE_TASKS + GVISOR_TASKS_PER_PROCESS * pids) as i64
    } else {
        pids as i64
    }
}

/// Writes `limits` into the container's host config.
pub(crate) fn apply(host: &mut HostConfig, limits: Limits, flavor: Flavor, runtime: &str) {
    let memory = (limits.memory_mb.max(MIN_MEMORY_MB) * 1024 * 1024) as i64;
    host.memory = Some(memory);
    // Swap equal to memory: no swap on top of the limit, so a hog is killed at it.
    host.memory_swap = Some(memory);
    if limits.cpus > 0.0 {
        host.nano_cpus = Some((limits.cpus * 1e9) as i64);
    }
    host.pids_limit = Some(engine_pids(limits.pids, runtime));
    // The agent's commands are killed first when the host runs short.
    host.oom_score_adj = Some(1000);
    if flavor == Flavor::Podman {
        // Podman copies the host's rlimits into the container and fails to start when
        // it may not raise them (no CAP_SYS_RESOURCE); these are the values it can set.
        host.ulimits = Some(vec![
            ulimit("nofile", 1024),
            ulimit("nproc", limits.pids.max(8) as i64),
        ]);
    }
}

fn ulimit(name: &str, value: i64) -> ResourcesUlimits {
    ResourcesUlimits {
        name: Some(name.to_string()),
        soft: Some(value),
        hard: Some(value),
    }
}

/// What `sandbox doctor` says about limits.
pub(crate) fn describe(limits: Limits) -> String {
    format!(
        "memory {} MB, {} CPUs and {} processes per container (engine cgroup)",
        limits.memory_mb, limits.cpus, limits.pids
    )
}
