//! Limits of this backend: none. Its commands are ordinary processes of the user, so
//! `SandboxSpec::limits` are not enforced (no cgroup, no rlimit), and the status panel
//! shows no memory or CPU limit.

/// What `sandbox doctor` says about limits here.
pub(crate) fn describe() -> &'static str {
    "no memory, CPU or process limits"
}
