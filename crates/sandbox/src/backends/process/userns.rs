//! Detecting hosts that restrict unprivileged user namespaces, where bubblewrap (and the
//! namespaces of the in-process mechanism) cannot work: Ubuntu 23.10+ through AppArmor
//! (`kernel.apparmor_restrict_unprivileged_userns=1`), older Debian kernels
//! (`kernel.unprivileged_userns_clone=0`), and `user.max_user_namespaces=0`.
//!
//! The sysctl directory is a parameter so the logic can be tested on a fake tree.

use std::path::Path;

/// Where the sysctls live on a real host.
pub(crate) const PROC_SYS: &str = "/proc/sys";

/// Why unprivileged user namespaces are unavailable here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Restriction {
    /// `kernel.apparmor_restrict_unprivileged_userns=1` (Ubuntu 23.10 and later).
    AppArmor,
    /// `kernel.unprivileged_userns_clone=0` (Debian's patch, older kernels).
    DebianSysctl,
    /// `user.max_user_namespaces=0`.
    MaxZero,
}

impl Restriction {
    /// One sentence: what restricts, and the fix.
    pub(crate) fn explain(self) -> &'static str {
        match self {
            Restriction::AppArmor => {
                "AppArmor restricts unprivileged user namespaces on this host \
                 (kernel.apparmor_restrict_unprivileged_userns=1); to use bubblewrap, allow \
                 them with `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` \
                 (persist it in /etc/sysctl.d/) or give bwrap an AppArmor profile with \
                 `userns,` (see docs/sandbox-process.md)"
            }
            Restriction::DebianSysctl => {
                "unprivileged user namespaces are disabled on this host \
                 (kernel.unprivileged_userns_clone=0); enable them with \
                 `sudo sysctl -w kernel.unprivileged_userns_clone=1`"
            }
            Restriction::MaxZero => {
                "user namespaces are disabled on this host (user.max_user_namespaces=0); \
                 enable them with `sudo sysctl -w user.max_user_namespaces=15000`"
            }
        }
    }
}

fn read_number(proc_sys: &Path, rel: &str) -> Option<i64> {
    std::fs::read_to_string(proc_sys.join(rel))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The restriction in force under `proc_sys` (normally [`PROC_SYS`]), if any. The
/// AppArmor switch does not bind a process with CAP_SYS_ADMIN (root); the caller
/// decides whether it matters by whether bwrap actually failed.
pub(crate) fn restriction(proc_sys: &Path) -> Option<Restriction> {
    if read_number(proc_sys, "kernel/apparmor_restrict_unprivileged_userns") == Some(1) {
        return Some(Restriction::AppArmor);
    }
    if read_number(proc_sys, "kernel/unprivileged_userns_clone") == Some(0) {
        return Some(Restriction::DebianSysctl);
    }
    if read_number(proc_sys, "user/max_user_namespaces") == Some(0) {
        return Some(Restriction::MaxZero);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (rel, value) in files {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, value).expect("write");
        }
        dir
    }

    #[test]
    fn detects_the_apparmor_restriction_of_ubuntu() {
        let d = fake(&[
            ("kernel/apparmor_restrict_unprivileged_userns", "1\n"),
            ("user/max_user_namespaces", "63569\n"),
        ]);
        let r = restriction(d.path());
        assert_eq!(r, Some(Restriction::AppArmor));
        let text = r.map(|r| r.explain()).unwrap_or_default();
        assert!(
            text.contains("sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
            "{text}"
        );
    }

    #[test]
    fn an_unrestricted_host_has_no_restriction() {
        let d = fake(&[
            ("kernel/apparmor_restrict_unprivileged_userns", "0\n"),
            ("kernel/unprivileged_userns_clone", "1\n"),
            ("user/max_user_namespaces", "63569\n"),
        ]);
        assert_eq!(restriction(d.path()), None);
        // A host without any of these files (no AppArmor, mainline kernel).
        let empty = fake(&[]);
        assert_eq!(restriction(empty.path()), None);
    }

    #[test]
    fn detects_the_other_switches() {
        let d = fake(&[("kernel/unprivileged_userns_clone", "0")]);
        assert_eq!(restriction(d.path()), Some(Restriction::DebianSysctl));
        let d = fake(&[("user/max_user_namespaces", "0")]);
        assert_eq!(restriction(d.path()), Some(Restriction::MaxZero));
    }
}
