//! Helpers shared by the microVM backends' test files.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Whether a missing sandbox must fail the test (CI) instead of skipping it.
pub fn required() -> bool {
    std::env::var_os("SAFE_CODER_REQUIRE_SANDBOX").is_some()
}

/// Says why the test cannot run; fails under `SAFE_CODER_REQUIRE_SANDBOX=1`.
pub fn skip(why: &str) {
    assert!(!required(), "required but unavailable: {why}");
    eprintln!("skipped: {why}");
}

/// A binary of another workspace package, built into the same target directory
/// (`cargo test --workspace` and scripts/ci/vm.sh build them; `cargo test -p` alone
/// may not).
pub fn built_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?; // target/<profile>/deps/<test> -> target/<profile>
    let p = dir.join(name);
    p.is_file().then_some(p)
}

pub fn agent_bin() -> Option<PathBuf> {
    built_binary("safe-coder-guest-agent")
}

pub fn fake_firecracker_bin() -> Option<PathBuf> {
    built_binary("fake-firecracker")
}

/// A `firecracker` for the backend: the fake, with its guest agent (or none) and a
/// request log, set through a wrapper script so each test has its own.
pub fn fake_firecracker(dir: &Path, agent: Option<(&Path, &str)>, log: &Path) -> Option<PathBuf> {
    let fake = fake_firecracker_bin()?;
    let (agent, args) = match agent {
        Some((a, args)) => (a.display().to_string(), args.to_string()),
        None => (String::new(), String::new()),
    };
    let script = dir.join("firecracker");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nSAFE_CODER_FAKE_FC_AGENT='{agent}' SAFE_CODER_FAKE_FC_AGENT_ARGS='{args}' SAFE_CODER_FAKE_FC_LOG='{}' exec '{}' \"$@\"\n",
            log.display(),
            fake.display()
        ),
    )
    .ok()?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).ok()?;
    Some(script)
}

/// Stand-in image files for the fake (it only checks that they exist).
pub fn dummy_image(data_dir: &Path) {
    let vm = data_dir.join("vm");
    std::fs::create_dir_all(&vm).expect("vm dir");
    std::fs::write(vm.join("vmlinux"), b"\x7fELF fake kernel").expect("kernel");
    std::fs::write(vm.join("rootfs.ext4"), b"fake rootfs").expect("rootfs");
}

/// The real guest image for QEMU, from `SAFE_CODER_TEST_VM_IMAGE`: a data dir whose
/// `vm/` holds it (what scripts/ci/vm-image.sh exports), or the image directory itself
/// (`vmlinux`, `rootfs.ext4`, optionally `initramfs.cpio.gz` and `features`).
///
/// Without the variable the test skips, also under `SAFE_CODER_REQUIRE_SANDBOX=1` (the
/// whole-suite run has no image; scripts/ci/vm.sh sets it); with it, a missing image
/// fails there.
pub fn real_image() -> Option<PathBuf> {
    let Some(var) = std::env::var_os("SAFE_CODER_TEST_VM_IMAGE") else {
        eprintln!("skipped: SAFE_CODER_TEST_VM_IMAGE is not set (scripts/ci/vm-image.sh builds the guest image; scripts/ci/vm.sh runs this with it)");
        return None;
    };
    let var = PathBuf::from(var);
    let dir = if var.join("vm/vmlinux").is_file() {
        var.join("vm")
    } else {
        var
    };
    if dir.join("vmlinux").is_file() && dir.join("rootfs.ext4").is_file() {
        Some(dir)
    } else {
        skip(&format!(
            "SAFE_CODER_TEST_VM_IMAGE={} holds no guest image",
            dir.display()
        ));
        None
    }
}

/// The request log of the fake: `METHOD path status` per line.
pub fn fc_log(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            format!(
                "{} {} {}",
                v["method"].as_str().unwrap_or(""),
                v["path"].as_str().unwrap_or(""),
                v["status"]
            )
        })
        .collect()
}
