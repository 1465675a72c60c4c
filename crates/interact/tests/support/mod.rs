//! Test helpers: a real project in a tempdir and a real `direct` sandbox over it.
#![allow(dead_code)]

use std::fs;
use std::path::Path;

use std::sync::Arc;

use safe_coder_sandbox::{BackendKind, Sandbox, SandboxSpec};
use tempfile::TempDir;

/// Writes `content` to `root/rel`, creating parents.
pub fn write(root: &Path, rel: &str, content: impl AsRef<[u8]>) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent dirs");
    }
    fs::write(path, content).expect("write file");
}

/// A tempdir project and a direct sandbox over it.
pub fn project() -> (TempDir, Arc<dyn Sandbox>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sandbox = safe_coder_sandbox::open(BackendKind::Direct, SandboxSpec::new(dir.path()))
        .expect("direct sandbox");
    (dir, sandbox)
}

/// Whether bash is on this machine (the sandbox runs commands with it).
pub fn have_bash() -> bool {
    std::process::Command::new("bash")
        .arg("-c")
        .arg("true")
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
