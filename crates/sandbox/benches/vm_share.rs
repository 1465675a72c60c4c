//! The `qemu` session start with the project copied into the guest (a restored snapshot,
//! then the first push) against the shared workspace (virtiofsd over the session's
//! overlay, a boot, nothing copied), for projects of several sizes, each measured to the
//! first command's answer (`find . -type f | wc -l`, which also reads every directory);
//! then, in each, the median of 5 `true` and one read of every file.
//! These figures set `[vm] workspace = "auto"`'s thresholds (docs/microvm.md).
//!
//! Run: `SAFE_CODER_TEST_VM_IMAGE=... cargo bench -p safe-coder-sandbox --bench vm_share
//! --profile dev` (the image must have the `virtiofs-workspace` feature, `virtiofsd`
//! must be installed; `SAFE_CODER_BENCH_FILES=500,2000,5000` picks the sizes).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use safe_coder_sandbox::overlay::{Layers, OverlayMount};
use safe_coder_sandbox::{
    Accel, BackendKind, CancellationToken, ExecRequest, SandboxSpec, VmSpec, VmWorkspace,
};

fn image() -> Option<PathBuf> {
    let var = PathBuf::from(std::env::var_os("SAFE_CODER_TEST_VM_IMAGE")?);
    let dir = if var.join("vm/vmlinux").is_file() {
        var.join("vm")
    } else {
        var
    };
    dir.join("vmlinux").is_file().then_some(dir)
}

fn spec(image: &Path, data: &Path, work: &Path) -> SandboxSpec {
    let mut spec = SandboxSpec::new(work);
    let initramfs = image.join("initramfs.cpio.gz");
    spec.vm = VmSpec {
        data_dir: data.to_path_buf(),
        kernel: Some(image.join("vmlinux")),
        rootfs: Some(image.join("rootfs.ext4")),
        initramfs: initramfs.is_file().then_some(initramfs),
        accel: Accel::Tcg,
        ..VmSpec::default()
    };
    spec
}

/// `files` source-sized files (2 KiB) in directories of 50.
fn project(root: &Path, files: usize) {
    let body = "x".repeat(2048);
    for i in 0..files {
        let d = root.join(format!("pkg{}", i / 50));
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(d.join(format!("f{i}.rs")), &body).expect("file");
    }
}

fn first_command(
    rt: &tokio::runtime::Runtime,
    sb: &Arc<dyn safe_coder_sandbox::Sandbox>,
    files: usize,
) {
    let out = rt
        .block_on(sb.exec(
            ExecRequest {
                command: "find . -type f | wc -l".into(),
                timeout: Duration::from_secs(300),
                max_output_bytes: 4096,
            },
            CancellationToken::new(),
        ))
        .expect("exec");
    assert_eq!(out.output.trim(), files.to_string(), "{}", out.output);
}

/// Wall time of `command` in the session (through the agent: push, run, pull).
fn timed(
    rt: &tokio::runtime::Runtime,
    sb: &Arc<dyn safe_coder_sandbox::Sandbox>,
    command: &str,
) -> Duration {
    let t = Instant::now();
    let out = rt
        .block_on(sb.exec(
            ExecRequest {
                command: command.into(),
                timeout: Duration::from_secs(300),
                max_output_bytes: 4096,
            },
            CancellationToken::new(),
        ))
        .expect("exec");
    assert_eq!(out.exit_code, Some(0), "{}", out.output);
    t.elapsed()
}

/// After the start: the median of 5 `true` (what a command costs beyond its own work)
/// and one `cat` of every file (reading the tree: tmpfs vs virtio-fs without cache).
fn per_command(
    rt: &tokio::runtime::Runtime,
    sb: &Arc<dyn safe_coder_sandbox::Sandbox>,
) -> (Duration, Duration) {
    let mut t: Vec<Duration> = (0..5).map(|_| timed(rt, sb, "true")).collect();
    t.sort();
    (t[2], timed(rt, sb, "find . -type f -exec cat {} + | wc -c"))
}

fn main() {
    let Some(image) = image() else {
        eprintln!(
            "set SAFE_CODER_TEST_VM_IMAGE to the guest image (scripts/ci/vm-image.sh builds it)"
        );
        return;
    };
    if safe_coder_sandbox::vm::share::find_virtiofsd().is_none() {
        eprintln!("virtiofsd is not installed (`cargo install --locked virtiofsd`)");
        return;
    }
    let sizes: Vec<usize> = std::env::var("SAFE_CODER_BENCH_FILES")
        .unwrap_or_else(|_| "500,2000,5000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    // The first copy-mode open boots and saves the snapshot the others restore.
    let warm = dir.path().join("warm");
    std::fs::create_dir_all(&warm).expect("warm");
    let sb = safe_coder_sandbox::open(BackendKind::Qemu, spec(&image, &data, &warm)).expect("open");
    rt.block_on(sb.stop()).expect("stop");
    for files in sizes {
        let base = dir.path().join(format!("p{files}"));
        let proj = base.join("project");
        project(&proj, files);

        let t = Instant::now();
        let sb = safe_coder_sandbox::open(BackendKind::Qemu, spec(&image, &data, &proj))
            .expect("open copy");
        first_command(&rt, &sb, files);
        let copy = t.elapsed();
        let (copy_true, copy_read) = per_command(&rt, &sb);
        rt.block_on(sb.stop()).expect("stop");

        let layers = Layers {
            lower: proj.clone(),
            upper: base.join("upper"),
            work: base.join("ovl-work"),
            merged: base.join("work"),
        };
        let t = Instant::now();
        let mount = Arc::new(OverlayMount::mount(layers).expect("overlay"));
        let mut s = spec(&image, &data, &base.join("work"));
        s.overlay = Some(mount);
        s.vm.workspace = VmWorkspace::Shared;
        let sb = safe_coder_sandbox::open(BackendKind::Qemu, s).expect("open shared");
        first_command(&rt, &sb, files);
        let shared = t.elapsed();
        let (shared_true, shared_read) = per_command(&rt, &sb);
        rt.block_on(sb.stop()).expect("stop");
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "RESULT files={files} copy_start_to_first_command_ms={:.0} shared_start_to_first_command_ms={:.0}",
            ms(copy),
            ms(shared)
        );
        println!(
            "RESULT files={files} true_ms copy={:.0} shared={:.0}; read_every_file_ms copy={:.0} shared={:.0}",
            ms(copy_true),
            ms(shared_true),
            ms(copy_read),
            ms(shared_read)
        );
        safe_coder_sandbox::overlay::remove_tree(&base);
    }
}
