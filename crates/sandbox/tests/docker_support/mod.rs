//! What the `docker` backend's tests share: which engines and runtimes to test here, and
//! the rule for skipping. A test that finds no engine prints why and skips, unless CI
//! says the engine must be there (`SAFE_CODER_REQUIRE_SANDBOX=1` and
//! `SAFE_CODER_TEST_DOCKER=1`, both set by `scripts/ci/docker.sh`): then it fails. The
//! plain test run (`./scripts/test.sh`) sets only the first and may run without an
//! engine.
//!
//! - `DOCKER_HOST` (or the default socket): the Docker engine; runc is tested, and runsc
//!   wherever the engine offers it (required with `SAFE_CODER_TEST_DOCKER=1`).
//! - `SAFE_CODER_TEST_PODMAN_HOST`: Podman's Docker-compatible socket, tested too.
//! - `SAFE_CODER_TEST_DOCKER_IMAGE`: the image (default: what `sandbox image build`
//!   builds).
#![allow(dead_code)]

use safe_coder_sandbox::{DockerSpec, DEFAULT_DOCKER_IMAGE};

/// Whether the engine must be there (the CI step of scripts/ci/docker.sh).
pub fn required() -> bool {
    std::env::var_os("SAFE_CODER_REQUIRE_SANDBOX").is_some()
        && std::env::var("SAFE_CODER_TEST_DOCKER").is_ok_and(|v| v == "1")
}

fn image() -> String {
    std::env::var("SAFE_CODER_TEST_DOCKER_IMAGE")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_DOCKER_IMAGE.to_string())
}

/// One engine and runtime to test.
#[derive(Clone, Debug)]
pub struct Target {
    pub label: String,
    pub spec: DockerSpec,
}

fn spec(host: Option<String>, runtime: Option<&str>) -> DockerSpec {
    DockerSpec {
        host,
        runtime: runtime.map(str::to_string),
        image: image(),
        ..DockerSpec::default()
    }
}

/// Every engine/runtime pair to test here: Docker with runc, Docker with runsc, Podman.
/// A missing one is skipped with a printed reason, or fails the test when required.
pub fn targets() -> Vec<Target> {
    let mut out = Vec::new();
    let docker = spec(None, Some("runc"));
    match safe_coder_sandbox::docker::runtime_for(&docker) {
        Ok((_, product)) => {
            out.push(Target {
                label: format!("{product} runc"),
                spec: docker,
            });
            let gvisor = spec(None, Some("runsc"));
            match safe_coder_sandbox::docker::runtime_for(&gvisor) {
                Ok(_) => out.push(Target {
                    label: format!("{product} runsc"),
                    spec: gvisor,
                }),
                Err(e) => {
                    assert!(
                        !required(),
                        "gVisor must be registered with the engine: {e}"
                    );
                    eprintln!("skipped runsc: {e}");
                }
            }
        }
        Err(e) => {
            assert!(!required(), "the Docker engine must work here: {e}");
            eprintln!("skipped docker: {e}");
        }
    }
    match std::env::var("SAFE_CODER_TEST_PODMAN_HOST") {
        Ok(host) if !host.is_empty() => {
            let podman = spec(Some(host), None);
            match safe_coder_sandbox::docker::runtime_for(&podman) {
                Ok((runtime, product)) => out.push(Target {
                    label: format!("{product} {runtime}"),
                    spec: podman,
                }),
                Err(e) => {
                    assert!(!required(), "Podman must work here: {e}");
                    eprintln!("skipped podman: {e}");
                }
            }
        }
        _ => {
            assert!(
                !required(),
                "SAFE_CODER_TEST_PODMAN_HOST must name Podman's socket in the docker CI step"
            );
            eprintln!("skipped podman: SAFE_CODER_TEST_PODMAN_HOST is not set");
        }
    }
    out
}
