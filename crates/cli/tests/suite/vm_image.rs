//! `safe-coder sandbox image build --backend qemu|firecracker` refuses what cannot make
//! a bootable image, naming the fix, before it downloads or writes anything. (The real
//! build and boot: crates/image/tests/vm_boot.rs, run by scripts/ci/vm-image.sh.)

use crate::common::*;

#[test]
fn an_image_build_with_a_dynamic_or_missing_agent_names_the_fix_and_writes_nothing() {
    let world = World::new();
    // This test executable is linked dynamically, like a plain `cargo build` of the agent.
    let dynamic = std::env::current_exe().expect("exe");
    for backend in ["qemu", "firecracker"] {
        let out = world
            .cmd()
            .args(["sandbox", "image", "build", "--backend", backend, "--agent"])
            .arg(&dynamic)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{backend}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(err.contains("linked dynamically"), "{err}");
        assert!(err.contains("scripts/build-guest-agent.sh"), "{err}");
    }
    let out = world
        .cmd()
        .args([
            "sandbox",
            "image",
            "build",
            "--backend",
            "qemu",
            "--agent",
            "/nonexistent/agent",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no static guest agent binary found"), "{err}");
    assert!(err.contains("/nonexistent/agent"), "{err}");
    assert!(!world.data_dir().join("vm").exists(), "nothing written");
}
