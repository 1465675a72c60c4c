//! The real debootstrap build, into the cache directory named by
//! `SAFE_CODER_TEST_ROOTFS_CACHE` (CI's image scripts set it to their cache, so a warm
//! run finds the tree and this test only checks it). Without the variable it skips and
//! says why: a cold build downloads ~60 MB and takes minutes.

use safe_coder_image::{build_rootfs, RootfsRequest};

#[test]
fn a_minimal_root_filesystem_has_a_shell_git_and_python_and_is_built_once() {
    let Some(cache) = std::env::var_os("SAFE_CODER_TEST_ROOTFS_CACHE") else {
        eprintln!("skipping: set SAFE_CODER_TEST_ROOTFS_CACHE=<dir> to build a real root filesystem with debootstrap");
        return;
    };
    let cache = std::path::PathBuf::from(cache);
    let request = RootfsRequest::minimal();
    let mut lines = Vec::new();
    let dir = build_rootfs(&request, &cache, &mut |l| lines.push(l.to_string())).expect("build");
    for needed in ["bin/bash", "usr/bin/git", "usr/bin/python3", "usr/bin/ps"] {
        assert!(
            dir.join(needed).exists(),
            "{needed} missing in {}",
            dir.display()
        );
    }
    let mut again = Vec::new();
    let second = build_rootfs(&request, &cache, &mut |l| again.push(l.to_string())).expect("reuse");
    assert_eq!(second, dir);
    assert_eq!(
        again.len(),
        1,
        "the second build must reuse the tree: {again:?}"
    );
}
