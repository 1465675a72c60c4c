use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Preparing,
    Running,
    Stopped,
    Failed,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Preparing => "preparing",
            SandboxState::Running => "running",
            SandboxState::Stopped => "stopped",
            SandboxState::Failed => "failed",
        }
    }
}

/// What the status panel shows about a sandbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxStatus {
    /// `direct`, `copy`, `process`, `docker`, `qemu` or `firecracker`.
    pub backend: String,
    pub state: SandboxState,
    pub uptime_secs: u64,
    /// The memory limit, if the backend enforces one.
    pub memory_limit_mb: Option<u64>,
    /// The CPU limit, if the backend enforces one.
    pub cpus: Option<f64>,
    /// Live memory use of the sandbox's processes, where measurable.
    pub memory_used_mb: Option<u64>,
    /// Live CPU use in percent of one core, where measurable.
    pub cpu_percent: Option<f64>,
}
