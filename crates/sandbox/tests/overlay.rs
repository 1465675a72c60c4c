#![allow(clippy::unwrap_used)]
//! The overlay workspace: the project read-only below, the session's writes in the upper
//! layer, the merged tree where the agent works — through the file operations of the
//! `Sandbox` trait and through commands, on `copy` and on each `process` mechanism.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use safe_coder_sandbox::overlay::{Layers, OverlayMount};
use safe_coder_sandbox::{
    BackendKind, CancellationToken, ExecRequest, Mechanism, Sandbox, SandboxSpec,
};

fn layers(tmp: &Path) -> Layers {
    let project = tmp.join("project");
    fs::create_dir_all(project.join("src")).unwrap();
    fs::write(project.join("src/main.rs"), "fn main() {}\n").unwrap();
    fs::write(project.join("gone.txt"), "bye\n").unwrap();
    fs::write(project.join("run.sh"), "echo run\n").unwrap();
    Layers {
        lower: project,
        upper: tmp.join("s/upper"),
        work: tmp.join("s/ovl-work"),
        merged: tmp.join("s/work"),
    }
}

fn mount(tmp: &Path) -> Option<Arc<OverlayMount>> {
    match OverlayMount::mount(layers(tmp)) {
        Ok(m) => Some(Arc::new(m)),
        Err(e) => {
            assert!(!common::required(), "overlay must work here: {e}");
            eprintln!("skipped: {e}");
            None
        }
    }
}

async fn exercise(sb: &dyn Sandbox, l: &Layers) {
    assert_eq!(sb.agent_root(), l.merged.display().to_string());
    assert_eq!(
        sb.read_file("src/main.rs").await.unwrap(),
        b"fn main() {}\n"
    );
    sb.write_file("src/new.rs", b"pub fn new() {}\n")
        .await
        .unwrap();
    let out = sb
        .exec(
            ExecRequest {
                command: "pwd; cat src/new.rs; rm gone.txt; chmod +x run.sh; echo more >> src/main.rs; ls"
                    .into(),
                timeout: Duration::from_secs(30),
                max_output_bytes: 1 << 20,
            },
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        out.exit_code,
        Some(0),
        "{:?}: {}",
        sb.mechanism(),
        out.output
    );
    assert!(
        out.output.starts_with(&format!("{}\n", l.merged.display())),
        "{}",
        out.output
    );
    assert!(out.output.contains("pub fn new() {}"), "{}", out.output);
    assert!(!out.output.contains("gone.txt"), "{}", out.output);
    assert_eq!(
        sb.read_file("src/main.rs").await.unwrap(),
        b"fn main() {}\nmore\n"
    );
    assert!(sb.stat("gone.txt").await.unwrap().is_none());
    assert!(sb.stat("run.sh").await.unwrap().unwrap().executable);
    // The project is untouched; the upper layer holds exactly the session's writes.
    assert_eq!(
        fs::read(l.lower.join("src/main.rs")).unwrap(),
        b"fn main() {}\n"
    );
    assert!(l.lower.join("gone.txt").exists());
    assert!(!l.lower.join("src/new.rs").exists());
    assert_eq!(
        fs::metadata(l.lower.join("run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o111,
        0
    );
    assert_eq!(
        fs::read(l.upper.join("src/new.rs")).unwrap(),
        b"pub fn new() {}\n"
    );
    let whiteout = fs::symlink_metadata(l.upper.join("gone.txt")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    assert!(
        fs::metadata(l.upper.join("run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o100
            != 0
    );
    // On the host the mount point stays an empty directory.
    assert_eq!(fs::read_dir(&l.merged).unwrap().count(), 0);
}

#[tokio::test]
async fn copy_backend_over_an_overlay() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(m) = mount(tmp.path()) else { return };
    let mut spec = SandboxSpec::new(tmp.path());
    spec.overlay = Some(m.clone());
    let sb = safe_coder_sandbox::open(BackendKind::Copy, spec).unwrap();
    exercise(sb.as_ref(), m.layers()).await;
}

#[tokio::test]
async fn process_backend_over_an_overlay_with_each_mechanism() {
    for mechanism in [Mechanism::Bubblewrap, Mechanism::InProcess] {
        let tmp = tempfile::tempdir().unwrap();
        let Some(m) = mount(tmp.path()) else { return };
        let mut spec = SandboxSpec::new(tmp.path());
        spec.overlay = Some(m.clone());
        spec.mechanism = Some(mechanism);
        let sb = match safe_coder_sandbox::open(BackendKind::Process, spec) {
            Ok(sb) => sb,
            Err(e) => {
                let may_miss = mechanism == Mechanism::Bubblewrap
                    && (common::expected() == Some(Mechanism::InProcess) || !common::required());
                assert!(
                    may_miss || !common::required(),
                    "{}: {e}",
                    mechanism.as_str()
                );
                eprintln!("skipped {}: {e}", mechanism.as_str());
                continue;
            }
        };
        exercise(sb.as_ref(), m.layers()).await;
    }
}

#[test]
fn a_remount_shows_the_upper_layer_again() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(m) = mount(tmp.path()) else { return };
    let l = m.layers().clone();
    fs::write(m.host_root().join("kept.txt"), "kept\n").unwrap();
    drop(m);
    let again = OverlayMount::mount(l.clone()).unwrap();
    assert_eq!(
        fs::read(again.host_root().join("kept.txt")).unwrap(),
        b"kept\n"
    );
    assert_eq!(fs::read(l.upper.join("kept.txt")).unwrap(), b"kept\n");
    assert!(!l.lower.join("kept.txt").exists());
}

/// A second mount of the same layers (as the docker backend's engine makes) writes a
/// file this mount had already read: after `refresh` this mount reads the new contents
/// and sees the new file, through the same `host_root` path and in git's namespace.
#[test]
fn a_refreshed_mount_sees_what_a_second_mount_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(ours) = mount(tmp.path()) else {
        return;
    };
    let root = ours.host_root().to_path_buf();
    assert_eq!(
        fs::read(root.join("src/main.rs")).unwrap(),
        b"fn main() {}\n"
    );
    let mut second = ours.layers().clone();
    second.work = tmp.path().join("s/ovl-work-2");
    second.merged = tmp.path().join("s/work-2");
    let other = OverlayMount::mount(second).unwrap();
    fs::write(other.host_root().join("src/main.rs"), "changed\n").unwrap();
    fs::write(other.host_root().join("added.txt"), "new\n").unwrap();
    fs::remove_file(other.host_root().join("gone.txt")).unwrap();
    drop(other);

    ours.refresh().unwrap();
    assert_eq!(ours.host_root(), root);
    assert_eq!(fs::read(root.join("src/main.rs")).unwrap(), b"changed\n");
    assert_eq!(fs::read(root.join("added.txt")).unwrap(), b"new\n");
    assert!(!root.join("gone.txt").exists());
    let mut cat = std::process::Command::new("cat");
    cat.arg("src/main.rs");
    ours.enter(&mut cat);
    assert_eq!(cat.output().unwrap().stdout, b"changed\n");
    // Refreshing again (nothing changed) is harmless.
    ours.refresh().unwrap();
    assert_eq!(fs::read(root.join("src/main.rs")).unwrap(), b"changed\n");
}

#[test]
fn host_writes_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(ours) = mount(tmp.path()) else {
        return;
    };
    assert_eq!(ours.host_writes(), 0);
    ours.note_host_write();
    ours.note_host_write();
    assert_eq!(ours.host_writes(), 2);
}
