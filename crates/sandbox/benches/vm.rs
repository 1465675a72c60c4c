//! The microVM backends' start and per-command cost, with the real guest image
//! (`SAFE_CODER_TEST_VM_IMAGE`, as for the tests) under the acceleration `[vm] accel`
//! would pick here (`SAFE_CODER_BENCH_ACCEL=kvm|tcg`, default tcg):
//! - a cold boot to a ready agent (no snapshot: the VM boots with vsock),
//! - a restore of the saved state to a ready agent (the default path of a session),
//! - a command round trip through the agent (`true`): host wall time, and what it adds
//!   over the same command run in the guest (measured by the guest's clock).
//!
//! Run: `SAFE_CODER_TEST_VM_IMAGE=... cargo bench -p safe-coder-sandbox --bench vm`
//! (`--profile dev` gives the same figures: the time is QEMU's and the guest's).
//! Targets (issue 10): ready ≤ 1 s from a snapshot under TCG; ≤ 50 ms per command over
//! the bare command.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use safe_coder_sandbox::{Accel, BackendKind, CancellationToken, ExecRequest, SandboxSpec, VmSpec};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn image() -> Option<PathBuf> {
    let var = PathBuf::from(std::env::var_os("SAFE_CODER_TEST_VM_IMAGE")?);
    let dir = if var.join("vm/vmlinux").is_file() {
        var.join("vm")
    } else {
        var
    };
    dir.join("vmlinux").is_file().then_some(dir)
}

fn spec(image: &Path, data: &Path, work: &Path, accel: Accel) -> SandboxSpec {
    let mut spec = SandboxSpec::new(work);
    let initramfs = image.join("initramfs.cpio.gz");
    spec.vm = VmSpec {
        data_dir: data.to_path_buf(),
        kernel: Some(image.join("vmlinux")),
        rootfs: Some(image.join("rootfs.ext4")),
        initramfs: initramfs.is_file().then_some(initramfs),
        accel,
        ..VmSpec::default()
    };
    spec
}

fn main() {
    let Some(image) = image() else {
        eprintln!(
            "set SAFE_CODER_TEST_VM_IMAGE to the guest image (scripts/ci/vm-image.sh builds it)"
        );
        return;
    };
    let accel = match std::env::var("SAFE_CODER_BENCH_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        _ => Accel::Tcg,
    };
    let dir = tempfile::tempdir().expect("tmp");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
    std::fs::write(work.join("README.md"), "a project\n").expect("seed");
    let data = dir.path().join("data");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let open = |snapshot: bool| {
        // Boot mode by the documented switch; restore mode is the default.
        if snapshot {
            std::env::remove_var("SAFE_CODER_VM_SNAPSHOT");
        } else {
            std::env::set_var("SAFE_CODER_VM_SNAPSHOT", "0");
        }
        let t = Instant::now();
        let sb = safe_coder_sandbox::open(BackendKind::Qemu, spec(&image, &data, &work, accel))
            .expect("open");
        (t.elapsed(), sb)
    };

    let mut boots = Vec::new();
    for _ in 0..3 {
        let (t, sb) = open(false);
        eprintln!(
            "boot: {:.0} ms ({})",
            ms(t),
            sb.backend_detail().unwrap_or_default()
        );
        boots.push(t);
        rt.block_on(sb.stop()).expect("stop");
    }
    // The first snapshot-mode open saves a state when none is there yet.
    let (_, sb) = open(true);
    rt.block_on(sb.stop()).expect("stop");
    let mut restores = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let (t, sb) = open(true);
        eprintln!(
            "restore: {:.0} ms ({})",
            ms(t),
            sb.backend_detail().unwrap_or_default()
        );
        restores.push(t);
        if let Some(prev) = last.replace(sb) {
            rt.block_on(safe_coder_sandbox::Sandbox::stop(&prev))
                .expect("stop");
        }
    }
    let sb = last.expect("a session");
    let mut round = Vec::new();
    let guest_bare = rt.block_on(async {
        for i in 0..25 {
            let t = Instant::now();
            let out = sb
                .exec(
                    ExecRequest {
                        command: "true".into(),
                        timeout: Duration::from_secs(30),
                        max_output_bytes: 4096,
                    },
                    CancellationToken::new(),
                )
                .await
                .expect("exec");
            let wall = t.elapsed();
            assert_eq!(out.exit_code, Some(0));
            if i >= 5 {
                round.push(wall);
            }
        }
        // The bare command's own cost in the guest, measured by the guest's clock.
        let out = sb
            .exec(
                ExecRequest {
                    command: "s=$(date +%s%N); for i in $(seq 20); do bash -c true; done; e=$(date +%s%N); echo $(( (e - s) / 20000 ))".into(),
                    timeout: Duration::from_secs(60),
                    max_output_bytes: 4096,
                },
                CancellationToken::new(),
            )
            .await
            .expect("exec");
        sb.stop().await.expect("stop");
        Duration::from_micros(out.output.trim().parse().unwrap_or(0))
    });
    let bare = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let _ = tokio::process::Command::new("bash")
                .args(["-c", "true"])
                .status()
                .await;
            v.push(t.elapsed());
        }
        median(v)
    });
    println!(
        "| microVM ({}) | median |",
        if accel == Accel::Kvm { "KVM" } else { "TCG" }
    );
    println!("|---|---|");
    println!(
        "| cold boot to a ready agent (3 runs) | {:.0} ms |",
        ms(median(boots))
    );
    println!(
        "| restore of the saved state to a ready agent (5 runs) | {:.0} ms |",
        ms(median(restores))
    );
    let round = median(round);
    println!(
        "| `true` through the agent, host wall (20 runs) | {:.1} ms |",
        ms(round)
    );
    println!(
        "| `bash -c true` alone in the guest (guest clock) | {:.1} ms |",
        ms(guest_bare)
    );
    println!(
        "| what the agent path adds per command | {:.1} ms |",
        ms(round.saturating_sub(guest_bare))
    );
    println!(
        "| `bash -c true` on the host, for scale | {:.1} ms |",
        ms(bare)
    );
}
