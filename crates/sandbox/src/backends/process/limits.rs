//! The `process` backend's limits: one cgroup per sandbox where this machine lets us
//! create one (see `cgroup.rs`), per-process rlimits otherwise, and the child's part of
//! it (join the cgroup, set rlimits, volunteer for the OOM killer) that runs between
//! fork and exec.

use std::io;
use std::sync::{Arc, OnceLock};

use super::cgroup::{self, Cgroup, Enforcement};
use super::ChildSetup;
use crate::Limits;

/// How each limit is enforced on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitEnforcement {
    pub memory: Enforcement,
    pub cpus: Enforcement,
    pub pids: Enforcement,
}

impl LimitEnforcement {
    /// One line for `sandbox doctor` and the logs, e.g. `memory: cgroup v1, cpus: not
    /// enforced, processes: setrlimit`.
    pub fn describe(&self) -> String {
        format!(
            "memory: {}, cpus: {}, processes: {}",
            self.memory.as_str(),
            self.cpus.as_str(),
            self.pids.as_str()
        )
    }

    /// What a cgroup gives, with rlimits standing in for memory and processes where it
    /// gives nothing (CPU has no rlimit equivalent).
    fn from_cgroup(cg: Option<cgroup::CgroupEnforcement>) -> Self {
        let or_rlimit = |e: Option<Enforcement>| match e {
            Some(Enforcement::None) | None => Enforcement::Rlimit,
            Some(e) => e,
        };
        LimitEnforcement {
            memory: or_rlimit(cg.map(|c| c.memory)),
            cpus: cg.map(|c| c.cpu).unwrap_or(Enforcement::None),
            pids: or_rlimit(cg.map(|c| c.pids)),
        }
    }
}

/// How limits would be enforced for a new sandbox here (cached: it creates a probe
/// cgroup once, and keeps it for the first sandbox: see `cgroup.rs`).
pub fn limits_here() -> LimitEnforcement {
    static HERE: OnceLock<LimitEnforcement> = OnceLock::new();
    *HERE.get_or_init(|| {
        let cg = Cgroup::create(256 * 1024 * 1024, 1.0, 64);
        let enforcement = LimitEnforcement::from_cgroup(cg.as_ref().map(|c| c.enforcement()));
        if let Some(cg) = cg {
            Cgroup::keep_warm(cg);
        }
        enforcement
    })
}

/// The limits of one sandbox and what enforces them.
#[derive(Debug)]
pub(crate) struct SandboxLimits {
    limits: Limits,
    cgroup: Option<Arc<Cgroup>>,
    enforcement: LimitEnforcement,
}

impl SandboxLimits {
    /// Creates the sandbox's cgroup (when possible) with these limits.
    pub(crate) fn create(limits: Limits) -> Self {
        let memory_bytes = limits.memory_mb.max(16).saturating_mul(1024 * 1024);
        let pids = limits.pids.max(8);
        let cgroup = Cgroup::take_warm(memory_bytes, limits.cpus, pids)
            .or_else(|| Cgroup::create(memory_bytes, limits.cpus, pids));
        let enforcement = LimitEnforcement::from_cgroup(cgroup.as_ref().map(|c| c.enforcement()));
        SandboxLimits {
            limits,
            cgroup: cgroup.map(Arc::new),
            enforcement,
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    pub(crate) fn enforcement(&self) -> LimitEnforcement {
        self.enforcement
    }

    /// The memory limit as the status panel shows it (when something enforces it).
    pub(crate) fn memory_limit_mb(&self) -> Option<u64> {
        (self.enforcement.memory != Enforcement::None).then_some(self.limits.memory_mb)
    }

    /// The CPU limit as the status panel shows it (when a cgroup enforces it).
    pub(crate) fn cpus(&self) -> Option<f64> {
        (self.enforcement.cpus != Enforcement::None).then_some(self.limits.cpus)
    }

    /// Memory used now by everything in the sandbox, when a cgroup measures it.
    pub(crate) fn memory_used_mb(&self) -> Option<u64> {
        self.cgroup
            .as_ref()
            .and_then(|c| c.memory_usage())
            .map(|b| b / (1024 * 1024))
    }

    /// Processes alive in the sandbox's cgroup now (`None` without a cgroup).
    pub(crate) fn process_count(&self) -> Option<usize> {
        self.cgroup.as_ref().map(|c| c.process_count())
    }

    /// The cgroup directories of this sandbox (empty without a cgroup).
    pub(crate) fn cgroup_dirs(&self) -> Vec<std::path::PathBuf> {
        self.cgroup.as_ref().map(|c| c.dirs()).unwrap_or_default()
    }

    /// Whether a command forked by [`Self::spawn_inside`] starts in the sandbox's cgroup
    /// (cgroup v1, see `cgroup.rs`): its child setup then skips the join.
    pub(crate) fn spawner_inside(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|c| c.spawner_inside())
    }

    /// Runs `f`, which forks a command, on the thread inside the cgroup. Fails (running
    /// nothing) unless [`Self::spawner_inside`].
    pub(crate) fn spawn_inside<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> io::Result<R> {
        match &self.cgroup {
            Some(c) => c.spawn_inside(f),
            None => Err(io::Error::other("the sandbox has no cgroup")),
        }
    }

    /// The child's part: join the cgroup (unless forked by the spawner thread, already
    /// in it: see `cgroup.rs`), set rlimits, volunteer for the OOM killer. Runs first,
    /// before any namespace is entered.
    pub(crate) fn child_setup(&self) -> ChildSetup {
        let joiner = self.cgroup.as_ref().map(|c| c.joiner());
        let mut rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)> =
            vec![(libc::RLIMIT_CORE, 0)];
        if self.enforcement.memory == Enforcement::Rlimit {
            let bytes = self.limits.memory_mb.max(16).saturating_mul(1024 * 1024);
            rlimits.push((libc::RLIMIT_DATA, bytes as libc::rlim_t));
        }
        if self.enforcement.pids == Enforcement::Rlimit {
            rlimits.push((libc::RLIMIT_NPROC, self.limits.pids.max(8) as libc::rlim_t));
        }
        Box::new(move || {
            if let Some(joiner) = &joiner {
                Cgroup::join_from_child(joiner)?;
            }
            for &(resource, value) in &rlimits {
                let lim = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                // SAFETY: setrlimit with a valid struct.
                if unsafe { libc::setrlimit(resource, &lim) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Under memory pressure the kernel kills sandboxed processes first.
            // SAFETY: open/write/close of a constant path.
            unsafe {
                let fd = libc::open(
                    c"/proc/self/oom_score_adj".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                if fd >= 0 {
                    libc::write(fd, b"1000".as_ptr().cast(), 4);
                    libc::close(fd);
                }
            }
            Ok(())
        })
    }
}
