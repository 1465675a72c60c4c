//! The bubblewrap and in-process trials, remembered across processes: each costs one or
//! more sandboxed runs of `true` (5–40 ms, more on a busy machine), which every
//! `safe-coder` process paid once on its session's start path. A verdict that the
//! mechanism works is kept in `<data_dir>/cache/process-probe.json` under a key of
//! everything it depends on; a process whose key matches skips the trial.
//!
//! The key: the `bwrap` and `bash` binaries (path, device, inode, size, mtime), this
//! Safe Coder binary (so a rebuild or upgrade tries again), the kernel release and boot
//! id (a reboot tries again), the effective uid and gid, and the sysctls that switch
//! unprivileged user namespaces on and off. Only a working mechanism is remembered: a
//! failure is tried again by the next process (and a failure is also what a stale
//! verdict could at worst lead to — bubblewrap refusing a command — never a weaker
//! sandbox). The file is written with mode 0600 by a rename and read only when the
//! current user owns it.

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Bump when what the trial checks changes without the binary changing (never, in a
/// released build: the binary's own identity is part of the key).
const FORMAT: &str = "safe-coder process probe 1";

static DATA_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Sets the data dir the verdict is kept in (the first caller wins; the default is the
/// one the command line uses, `$XDG_DATA_HOME/safe-coder`).
pub(crate) fn set_data_dir(dir: &Path) {
    let _ = DATA_DIR.set(dir.to_path_buf());
}

fn file() -> Option<PathBuf> {
    if std::env::var_os("SAFE_CODER_NO_PROBE_CACHE").is_some() {
        return None;
    }
    let dir = DATA_DIR.get_or_init(crate::spec::default_data_dir);
    Some(dir.join("cache").join("process-probe.json"))
}

fn identity(out: &mut String, path: &Path) {
    match std::fs::metadata(path) {
        Ok(m) => {
            let _ = write!(
                out,
                "{}:{}:{}:{}:{}.{}:{:o};",
                path.display(),
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.mode()
            );
        }
        Err(_) => {
            let _ = write!(out, "{}:missing;", path.display());
        }
    }
}

/// Everything a verdict depends on, as one string (cheap: a few `stat`s and small
/// /proc reads, no process).
pub(crate) fn key(binaries: &[&Path]) -> String {
    let mut k = String::from(FORMAT);
    k.push('|');
    for b in binaries {
        identity(&mut k, b);
    }
    if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
        identity(&mut k, &exe);
    }
    for p in [
        "/proc/sys/kernel/osrelease",
        "/proc/sys/kernel/random/boot_id",
        "/proc/sys/user/max_user_namespaces",
        "/proc/sys/kernel/unprivileged_userns_clone",
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        "/proc/sys/kernel/landlock_restrict_self",
    ] {
        let v = std::fs::read_to_string(p).unwrap_or_default();
        let _ = write!(k, "{}={};", p, v.trim());
    }
    // SAFETY: geteuid/getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let _ = write!(k, "uid={uid};gid={gid}");
    k
}

/// The remembered verdict of `mechanism` (`"bwrap"`, `"inprocess"`) under `key`.
pub(crate) fn load(mechanism: &str, key: &str) -> Option<serde_json::Value> {
    load_from(&file()?, mechanism, key)
}

fn load_from(path: &Path, mechanism: &str, key: &str) -> Option<serde_json::Value> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if !meta.is_file() || meta.uid() != uid || meta.len() > 64 * 1024 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let entry = v.get(mechanism)?;
    (entry.get("key")?.as_str()? == key).then(|| entry.get("value").cloned())?
}

/// Remembers that `mechanism` works under `key`, with what the trial found (`value`).
/// Best effort: a verdict that cannot be written costs the next process a trial.
pub(crate) fn store(mechanism: &str, key: &str, value: serde_json::Value) {
    if let Some(path) = file() {
        store_at(&path, mechanism, key, value);
    }
}

fn store_at(path: &Path, mechanism: &str, key: &str, value: serde_json::Value) {
    use std::io::Write;
    let Some(dir) = path.parent() else {
        return;
    };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    // Keep the other mechanism's verdict.
    let mut all = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter(|v| v.is_object())
        .unwrap_or_else(|| serde_json::json!({}));
    all[mechanism] = serde_json::json!({ "key": key, "value": value });
    let tmp = dir.join(format!(
        ".process-probe.{}.{}.tmp",
        std::process::id(),
        next_suffix()
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(all.to_string().as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// A per-call suffix so two threads of one process never share a temporary name.
fn next_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_verdict_is_used_only_under_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cache/process-probe.json");
        assert_eq!(load_from(&f, "bwrap", "k1"), None);
        store_at(
            &f,
            "bwrap",
            "k1",
            serde_json::json!({"version": "bubblewrap 0.8.0"}),
        );
        store_at(&f, "inprocess", "k1", serde_json::json!({"abi": 4}));
        assert_eq!(
            load_from(&f, "bwrap", "k1").unwrap()["version"],
            "bubblewrap 0.8.0"
        );
        assert_eq!(load_from(&f, "inprocess", "k1").unwrap()["abi"], 4);
        assert_eq!(load_from(&f, "bwrap", "k2"), None);
        // Damaged: ignored, never trusted.
        std::fs::write(&f, "{\"bwrap\": {\"key\": \"k1\", \"value\": ").unwrap();
        assert_eq!(load_from(&f, "bwrap", "k1"), None);
        // Rewritten over a damaged file.
        store_at(&f, "bwrap", "k1", serde_json::json!({"version": "b"}));
        assert_eq!(load_from(&f, "bwrap", "k1").unwrap()["version"], "b");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&f).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the verdict file is private");
    }

    #[test]
    fn the_key_changes_with_the_binaries() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "one").unwrap();
        let k1 = key(&[&a]);
        assert_eq!(k1, key(&[&a]));
        std::fs::write(&a, "other bytes").unwrap();
        assert_ne!(k1, key(&[&a]));
        assert!(k1.contains("osrelease="));
    }
}
