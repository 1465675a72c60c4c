//! The overlay workspace in a container (`docker/share.rs`, docs/docker.md): the engine
//! mounts the session's layers as a volume, the file tools go through the agent in the
//! container, the history's own mount is made afresh before it looks, and a host write
//! through that mount restarts the container so the engine mounts the layers afresh.
//! On Docker with runc and on Podman; gVisor refuses it with one error.
#![allow(clippy::unwrap_used)]

mod docker_support;

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use docker_support::{targets, Target};
use safe_coder_sandbox::overlay::{Layers, OverlayMount};
use safe_coder_sandbox::{
    BackendKind, CancellationToken, ExecRequest, Sandbox, SandboxError, SandboxSpec,
};

fn layers(tmp: &Path) -> Layers {
    let project = tmp.join("project");
    fs::create_dir_all(project.join("src")).unwrap();
    fs::write(project.join("src/main.rs"), "fn main() {}\n").unwrap();
    fs::write(project.join("gone.txt"), "bye\n").unwrap();
    fs::write(project.join("a.txt"), "lower\n").unwrap();
    Layers {
        lower: project,
        upper: tmp.join("s/upper"),
        work: tmp.join("s/ovl-work"),
        merged: tmp.join("s/work"),
    }
}

fn open(target: &Target, mount: &Arc<OverlayMount>) -> Result<Arc<dyn Sandbox>, SandboxError> {
    let mut spec = SandboxSpec::new(mount.merged());
    spec.docker = target.spec.clone();
    spec.overlay = Some(mount.clone());
    safe_coder_sandbox::open(BackendKind::Docker, spec)
}

async fn sh(sb: &dyn Sandbox, command: &str) -> String {
    let out = sb
        .exec(
            ExecRequest {
                command: command.into(),
                timeout: Duration::from_secs(60),
                max_output_bytes: 64 * 1024,
            },
            CancellationToken::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("exec {command}: {e}"));
    out.output
}

/// Writes `data` at `path` as git's checkout does: a new file renamed over the old.
fn replace(path: &Path, data: &str) {
    let tmp = path.with_extension("tmp-write");
    fs::write(&tmp, data).unwrap();
    fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_and_the_history_share_the_layers_soundly() {
    for target in targets() {
        eprintln!("== {}", target.label);
        let tmp = tempfile::tempdir().unwrap();
        let mount = match OverlayMount::mount(layers(tmp.path())) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                assert!(!docker_support::required(), "overlay must work here: {e}");
                eprintln!("skipped: {e}");
                return;
            }
        };
        let runtime = safe_coder_sandbox::docker::runtime_for(&target.spec)
            .unwrap()
            .0;
        // What a new session would get, as the start line and the doctor say it.
        let decided = safe_coder_sandbox::docker::share::decide(&target.spec);
        let doctor = safe_coder_sandbox::docker::share::doctor_line(&target.spec);
        assert!(doctor.starts_with("docker workspace: "), "{doctor}");
        if !safe_coder_sandbox::docker::runtime_passes_sockets(&runtime) {
            assert!(
                !decided.shared && decided.why.contains(&runtime),
                "{decided:?}"
            );
            let err = open(&target, &mount).err().expect("gVisor must refuse");
            assert!(
                err.to_string().contains("SAFE_CODER_WORKSPACE=copy"),
                "{}: {err}",
                target.label
            );
            continue;
        }
        assert!(decided.shared, "{}: {decided:?}", target.label);
        assert!(doctor.contains("an overlay volume"), "{doctor}");
        let sb = open(&target, &mount).unwrap_or_else(|e| panic!("{}: {e}", target.label));
        let host = mount.host_root().to_path_buf();
        let upper = mount.layers().upper.clone();

        // The file tools go through the engine's mount.
        assert_eq!(sb.read_file("a.txt").await.unwrap(), b"lower\n");
        sb.write_file("src/new.rs", b"pub fn new() {}\n")
            .await
            .unwrap();
        assert!(sb.stat("src/new.rs").await.unwrap().is_some());
        let names: Vec<String> = sb
            .list_dir("src")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["main.rs", "new.rs"], "{}", target.label);
        assert!(matches!(
            sb.read_file("nothing.txt").await,
            Err(SandboxError::NotFound(_))
        ));
        assert!(matches!(
            sb.read_file("src").await,
            Err(SandboxError::IsDirectory(_))
        ));
        assert_eq!(
            fs::read(upper.join("src/new.rs")).unwrap(),
            b"pub fn new() {}\n"
        );

        // The history's mount reads a file, then the container changes it, deletes
        // one and looks up a file that is not there yet (the engine caches that).
        assert_eq!(fs::read(host.join("a.txt")).unwrap(), b"lower\n");
        let out = sh(
            &*sb,
            "cat src/new.rs; echo changed > a.txt; rm gone.txt; cat later.txt 2>/dev/null; cat src/main.rs",
        )
        .await;
        assert_eq!(out, "pub fn new() {}\nfn main() {}\n", "{}", target.label);
        // A deletion is a whiteout in the upper layer, the format the history reads.
        let gone = fs::symlink_metadata(upper.join("gone.txt")).unwrap();
        assert!(gone.file_type().is_char_device(), "{}", target.label);
        mount.refresh_if_shared().unwrap();
        assert_eq!(fs::read(host.join("a.txt")).unwrap(), b"changed\n");
        assert!(!host.join("gone.txt").exists());

        // A host write (a rollback): the container must see it, cached or not.
        replace(&host.join("src/main.rs"), "fn main() { rolled_back() }\n");
        fs::write(host.join("later.txt"), "now\n").unwrap();
        mount.note_host_write();
        let out = sh(&*sb, "cat later.txt src/main.rs").await;
        assert_eq!(
            out, "now\nfn main() { rolled_back() }\n",
            "{}: the container read what its mount had cached",
            target.label
        );
        assert_eq!(sb.read_file("later.txt").await.unwrap(), b"now\n");
        sb.stop().await.unwrap();
        // Nothing was copied: the project is untouched and the session holds only
        // what changed.
        assert_eq!(
            fs::read(tmp.path().join("project/a.txt")).unwrap(),
            b"lower\n"
        );
        assert!(tmp.path().join("project/gone.txt").exists());
    }
}
