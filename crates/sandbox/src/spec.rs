//! [`SandboxSpec`]: everything [`open`](crate::open) needs to build a sandbox of any
//! backend. One value, filled by the caller from settings, so that a new backend adds
//! fields here rather than a new constructor.

use std::path::PathBuf;

/// Resource limits of a sandbox, for all its commands together where the backend can
/// enforce them per sandbox (a cgroup, a VM), else per process (rlimits).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub memory_mb: u64,
    pub cpus: f64,
    /// The most processes (and threads) alive at once: a fork bomb stops there.
    pub pids: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 2048,
            cpus: 2.0,
            pids: 512,
        }
    }
}

/// How the `process` backend confines commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// bubblewrap: user, mount, PID, network, IPC and UTS namespaces + seccomp.
    /// Preferred.
    Bubblewrap,
    /// No bubblewrap: namespaces (where the host allows them), Landlock and seccomp
    /// applied by the child itself (see docs/sandbox-process.md for the differences).
    InProcess,
}

impl Mechanism {
    /// The name used in notes, `sandbox doctor` and `SAFE_CODER_EXPECT_CONFINER`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Bubblewrap => "bubblewrap",
            Mechanism::InProcess => "in-process",
        }
    }
}

/// What a sandbox is built from.
#[derive(Clone, Debug)]
pub struct SandboxSpec {
    /// The host directory the agent works in: the sandbox copy, or the project itself
    /// for `direct`. It must exist.
    pub workdir: PathBuf,
    pub limits: Limits,
    /// Names of further environment variables handed to the agent's commands on top of
    /// the fixed allow-list (`[isolation] env_passthrough`; see [`crate::env`]).
    pub env_passthrough: Vec<String>,
    /// `process`: show the user's toolchains under `$HOME` read-only (see
    /// `backends/process/toolchains.rs`). On by default.
    pub home_toolchains: bool,
    /// `process`: insist on one mechanism instead of the best that works here (tests
    /// and benchmarks compare both).
    pub mechanism: Option<Mechanism>,
    /// A mounted overlay workspace (`crate::overlay`): the work tree is its merged tree
    /// and `workdir` is not used. `copy` and `process` honour it; a container or VM
    /// backend can take the layers from [`crate::overlay::OverlayMount::layers`].
    pub overlay: Option<std::sync::Arc<crate::overlay::OverlayMount>>,
}

impl SandboxSpec {
    /// A spec with the default limits, no passthrough variables, toolchains visible and
    /// the best mechanism.
    pub fn new(workdir: impl Into<PathBuf>) -> Self {
        SandboxSpec {
            workdir: workdir.into(),
            limits: Limits::default(),
            env_passthrough: Vec::new(),
            home_toolchains: true,
            mechanism: None,
            overlay: None,
        }
    }
}
