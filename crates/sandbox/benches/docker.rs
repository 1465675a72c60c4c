//! What the `docker` backend costs, per engine and runtime: session start (the
//! container created, started and ready: `open` until it returns) and the per-command
//! overhead of `bash` through the exec API against plain `bash -c true` on the host.
//! Targets (issue 9): start ≤ 400 ms with runc, overhead ≤ 40 ms.
//!
//! Engines: `DOCKER_HOST` (or the default socket) with runc and runsc, and Podman at
//! `SAFE_CODER_TEST_PODMAN_HOST`. Image: `SAFE_CODER_TEST_DOCKER_IMAGE` or the default.
//! Run: `cargo bench -p safe-coder-sandbox --bench docker` (about a minute).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use safe_coder_sandbox::{
    BackendKind, CancellationToken, DockerSpec, ExecRequest, SandboxSpec, DEFAULT_DOCKER_IMAGE,
};

const STARTS: usize = 7;
const EXECS: usize = 30;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn bare() -> Duration {
    let mut runs = Vec::new();
    for _ in 0..EXECS {
        let start = Instant::now();
        let ok = Command::new("bash")
            .args(["-c", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "bash -c true failed");
        runs.push(start.elapsed());
    }
    median(runs)
}

fn measure(label: &str, docker: DockerSpec, bare: Duration) {
    if let Err(e) = safe_coder_sandbox::docker::runtime_for(&docker) {
        println!("{label:<28} skipped: {e}");
        return;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("no runtime: {e}");
            return;
        }
    };
    let Ok(dir) = tempfile::tempdir() else { return };
    let mut starts = Vec::new();
    let mut execs = Vec::new();
    for i in 0..STARTS {
        let mut spec = SandboxSpec::new(dir.path());
        spec.docker = docker.clone();
        let t = Instant::now();
        let sb = match safe_coder_sandbox::open(BackendKind::Docker, spec) {
            Ok(sb) => sb,
            Err(e) => {
                println!("{label:<28} failed: {e}");
                return;
            }
        };
        starts.push(t.elapsed());
        rt.block_on(async {
            // The first command of a container is not typical (the runtime warms up).
            let n = if i == 0 { EXECS + 1 } else { 4 };
            for j in 0..n {
                let t = Instant::now();
                let out = sb
                    .exec(
                        ExecRequest {
                            command: "true".into(),
                            timeout: Duration::from_secs(30),
                            max_output_bytes: 1024,
                        },
                        CancellationToken::new(),
                    )
                    .await;
                let took = t.elapsed();
                assert!(out.is_ok_and(|o| o.exit_code == Some(0)));
                if j > 0 {
                    execs.push(took);
                }
            }
            let _ = sb.stop().await;
        });
    }
    let start = median(starts);
    let exec = median(execs);
    println!(
        "{label:<28} start {:>6.0} ms   exec `true` {:>6.1} ms   overhead {:>6.1} ms",
        ms(start),
        ms(exec),
        ms(exec.saturating_sub(bare))
    );
}

fn main() {
    let image = std::env::var("SAFE_CODER_TEST_DOCKER_IMAGE")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_DOCKER_IMAGE.to_string());
    let spec = |host: Option<String>, runtime: Option<&str>| DockerSpec {
        host,
        runtime: runtime.map(str::to_string),
        image: image.clone(),
        ..DockerSpec::default()
    };
    let bare = bare();
    println!(
        "bare `bash -c true` on the host: {:.1} ms (median of {EXECS})",
        ms(bare)
    );
    println!("medians: start of {STARTS} containers, {EXECS}+ commands each engine");
    measure("docker runc", spec(None, Some("runc")), bare);
    measure("docker runsc (gVisor)", spec(None, Some("runsc")), bare);
    match std::env::var("SAFE_CODER_TEST_PODMAN_HOST") {
        Ok(h) if !h.is_empty() => measure("podman (default runtime)", spec(Some(h), None), bare),
        _ => {
            println!("podman                       skipped: SAFE_CODER_TEST_PODMAN_HOST is not set")
        }
    }
}
