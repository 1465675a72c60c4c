//! `safe-coder sandbox image build --agent-cli …` (docs/images.md): third-party agent
//! CLIs installed from the npm registry and PyPI into the docker and VM images, then run
//! there — in a container through `safe-coder run --backend docker`, in the microVM
//! through Safe Coder's own agent over the guest agent, with the VM sized by `[vm]`.
//!
//! The builds need root, the package registries and a cache with the root filesystem
//! tree: `SAFE_CODER_TEST_IMAGE_AGENTS=<cache dir>` (scripts/ci/images-agents.sh sets it
//! to the CI image cache). Unset, the tests that build print why and pass, also in CI's
//! whole-suite run; with it and `SAFE_CODER_REQUIRE_SANDBOX=1`, a missing engine, QEMU or
//! vhost-device-vsock fails them.
//!
//! - `SAFE_CODER_TEST_AGENTS_IMAGE`: the docker image tag to build (default
//!   `safe-coder-sandbox:agents-test`; never the backend's default image)
//! - `SAFE_CODER_TEST_IMAGE_AGENT_CLIS`: the CLIs of the docker image (default
//!   `codex,gemini,aider`: a native binary from npm, a Node 20+ CLI, a pip venv)
//! - `SAFE_CODER_TEST_AGENTS_VM_DATA`: a data dir to keep the VM image with Codex in
//!   (default: the test's temporary home, removed after)

use std::path::PathBuf;

use safe_coder_test_support::{MockServer, Reply, Script, Wire};
use serde_json::json;

use crate::common::*;

fn required() -> bool {
    std::env::var("SAFE_CODER_REQUIRE_SANDBOX").is_ok_and(|v| v == "1")
}

/// The cache to build in, or `None` after saying why.
fn cache(test: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("SAFE_CODER_TEST_IMAGE_AGENTS").map(PathBuf::from) else {
        eprintln!("{test}: skipped: SAFE_CODER_TEST_IMAGE_AGENTS is not set (scripts/ci/images-agents.sh sets it to the image cache)");
        return None;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(!required(), "{test}: building images needs root");
        eprintln!("{test}: skipped: building images needs root");
        return None;
    }
    Some(dir)
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn build(world: &World, args: &[&str]) -> std::process::Output {
    world
        .cmd()
        .args(["sandbox", "image", "build"])
        .args(args)
        .output()
        .expect("run safe-coder")
}

#[test]
fn an_unknown_cli_or_a_version_range_is_refused_before_anything_is_built() {
    let world = World::new();
    for backend in ["docker", "qemu"] {
        for (spec, needle) in [
            ("codex,cursor", "unknown agent CLI `cursor`"),
            ("codex@latest", "not an exact version"),
            ("aider@0.86.1,aider@0.86.2", "asked for twice"),
        ] {
            let out = build(
                &world,
                &[
                    "--backend",
                    backend,
                    "--agent-cli",
                    spec,
                    "--cache-dir",
                    "/nonexistent/cache",
                ],
            );
            assert!(!out.status.success(), "{backend} {spec}: {}", stdout(&out));
            let err = stderr(&out);
            assert!(err.contains(needle), "{backend} {spec}: {err}");
        }
    }
    assert!(!world.data_dir().join("vm").exists(), "nothing written");
    assert!(!std::path::Path::new("/nonexistent/cache").exists());
}

#[test]
fn docker_image_with_agent_clis_runs_them_under_safe_coder_run() {
    let test = "docker_image_with_agent_clis_runs_them_under_safe_coder_run";
    let Some(cache) = cache(test) else { return };
    let tag = std::env::var("SAFE_CODER_TEST_AGENTS_IMAGE")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "safe-coder-sandbox:agents-test".into());
    assert_ne!(
        tag,
        safe_coder_sandbox::DEFAULT_DOCKER_IMAGE,
        "a tag of its own"
    );
    let clis = std::env::var("SAFE_CODER_TEST_IMAGE_AGENT_CLIS")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "codex,gemini,aider".into());
    // The engine answers (the image itself may not be there yet).
    let spec = safe_coder_sandbox::DockerSpec::default();
    if let Err(e) = safe_coder_sandbox::docker::image_rootfs_key(&spec, &tag) {
        assert!(!required(), "{test}: the docker engine must work here: {e}");
        eprintln!("{test}: skipped: {e}");
        return;
    }
    let world = World::new();
    let cache_arg = cache.display().to_string();
    let args = [
        "--backend",
        "docker",
        "--minimal",
        "--agent-cli",
        clis.as_str(),
        "--image",
        tag.as_str(),
        "--cache-dir",
        cache_arg.as_str(),
    ];
    let out = build(&world, &args);
    assert_ok(&out);
    let text = stdout(&out);
    // Node 22 from the npm registry whenever an npm CLI is asked for; pinned versions shown.
    for needle in ["node 22.", "codex 0.171.0 (npm @openai/codex)"] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    // The same set again: nothing installed, nothing imported.
    let again = build(&world, &args);
    assert_ok(&again);
    assert!(
        stdout(&again).contains("is up to date"),
        "{}",
        stdout(&again)
    );

    // Inside the container, through the user's path: `safe-coder run --backend docker`.
    std::fs::create_dir_all(world.config_dir()).expect("config dir");
    std::fs::write(
        world.config_dir().join("config.toml"),
        format!("[docker]\nimage = {tag:?}\n"),
    )
    .expect("config");
    let mut probe = String::from("node --version; command -v codex; codex --version");
    let wants_gemini = clis.contains("gemini");
    let wants_aider = clis.contains("aider");
    if wants_gemini {
        probe.push_str("; gemini --version");
    }
    if wants_aider {
        probe.push_str("; aider --version");
    }
    let out = world
        .cmd()
        .args(["run", "--backend", "docker", "--sync", "reject", "--"])
        .args(["sh", "-c", &probe])
        .output()
        .expect("run");
    assert_ok(&out);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("v22."), "Node 22 inside: {all}");
    assert!(all.contains("/usr/local/bin/codex"), "{all}");
    assert!(all.contains("codex-cli 0.171.0"), "{all}");
    if wants_gemini {
        assert!(all.contains("\n0.61.0"), "gemini --version: {all}");
    }
    if wants_aider {
        assert!(all.contains("aider 0.86.2"), "{all}");
    }

    // A registry that cannot be reached: one sentence naming it and the fix; the layer
    // that could not be installed is not cached.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let registry = format!("http://127.0.0.1:{dead}/");
    let out = world
        .cmd()
        .env("SAFE_CODER_NPM_REGISTRY", &registry)
        .args([
            "sandbox",
            "image",
            "build",
            "--backend",
            "docker",
            "--minimal",
        ])
        .args(["--agent-cli", "codex@0.170.0", "--image"])
        .arg(format!("{tag}-unreachable"))
        .args(["--cache-dir", cache_arg.as_str()])
        .output()
        .expect("run");
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "the package registry {registry} cannot be reached"
        )),
        "{err}"
    );
    assert!(err.contains("SAFE_CODER_NPM_REGISTRY"), "{err}");
    let cached_codex_0170 = std::fs::read_dir(cache.join("agents"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|base| base.path().join("codex-0.170.0").exists());
    assert!(!cached_codex_0170, "a failed layer is not cached");

    // A version the registry does not publish: said so, with the fix.
    let out = build(
        &world,
        &[
            "--backend",
            "docker",
            "--minimal",
            "--agent-cli",
            "codex@0.0.1-none",
            "--image",
            &format!("{tag}-unpublished"),
            "--cache-dir",
            cache_arg.as_str(),
        ],
    );
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("@openai/codex@0.0.1-none is not in the registry"),
        "{err}"
    );
}

#[test]
fn vm_image_with_codex_boots_sized_by_vm_config_and_runs_it() {
    let test = "vm_image_with_codex_boots_sized_by_vm_config_and_runs_it";
    let Some(cache) = cache(test) else { return };
    let vhost = std::env::var_os("SAFE_CODER_VHOST_DEVICE_VSOCK")
        .map(PathBuf::from)
        .or_else(|| which("vhost-device-vsock"));
    if which("qemu-system-x86_64").is_none() || vhost.is_none() {
        let why = "needs qemu-system-x86_64 and vhost-device-vsock";
        assert!(!required(), "{test}: {why}");
        eprintln!("{test}: skipped: {why}");
        return;
    }
    // The image goes to this world's data dir (a temporary directory, removed after),
    // or to $SAFE_CODER_TEST_AGENTS_VM_DATA (CI keeps it there: a warm run finds it up
    // to date).
    let world = World::new();
    let kept = std::env::var_os("SAFE_CODER_TEST_AGENTS_VM_DATA").map(PathBuf::from);
    let mut command = world.cmd();
    if let Some(dir) = &kept {
        command.env("XDG_DATA_HOME", dir);
    }
    let out = command
        .args(["sandbox", "image", "build"])
        .args([
            "--backend",
            "qemu",
            "--minimal",
            "--agent-cli",
            "codex",
            "--cache-dir",
            &cache.display().to_string(),
        ])
        .output()
        .expect("run safe-coder");
    assert_ok(&out);
    assert!(
        stdout(&out).contains("agent CLIs: node 22.") && stdout(&out).contains("codex 0.171.0"),
        "{}",
        stdout(&out)
    );
    let image = match &kept {
        Some(dir) => dir.join("safe-coder/vm"),
        None => world.data_dir().join("vm"),
    };
    let manifest = std::fs::read_to_string(image.join("manifest.json")).expect("manifest");
    assert!(manifest.contains("codex 0.171.0"), "{manifest}");

    // The VM's size comes from [vm], as the document's FC_VCPU/FC_MEM did.
    let mut vm = String::from("accel = \"tcg\"\nvcpus = 1\nmemory_mb = 640\n");
    if kept.is_some() {
        for (key, file) in [
            ("kernel", "vmlinux"),
            ("rootfs", "rootfs.ext4"),
            ("initramfs", "initramfs.cpio.gz"),
        ] {
            vm.push_str(&format!(
                "{key} = {:?}\n",
                image.join(file).display().to_string()
            ));
        }
    }
    if let Some(v) = vhost {
        vm.push_str(&format!(
            "vhost_vsock_bin = {:?}\n",
            v.display().to_string()
        ));
    }
    std::fs::create_dir_all(world.config_dir()).expect("config dir");
    std::fs::write(
        world.config_dir().join("config.toml"),
        format!("[vm]\n{vm}"),
    )
    .expect("config");
    let server = MockServer::start(
        Wire::Anthropic,
        Script::new(vec![
            Reply::tool_calls(vec![call(
                "bash",
                json!({"command": "codex --version; echo cpus=$(nproc); grep MemTotal /proc/meminfo",
                       "timeout_ms": 120000}),
            )]),
            Reply::text("checked"),
        ]),
    )
    .expect("server");
    let out = world.exec(
        &server,
        &["--backend", "qemu", "--approval-mode", "yolo", "probe"],
    );
    assert_ok(&out);
    let results = tool_results(&server);
    let result = results.first().expect("one tool result");
    assert!(result.contains("codex-cli 0.171.0"), "{result}");
    assert!(result.contains("cpus=1"), "{result}");
    let kb: u64 = result
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal: {result}"));
    // The guest kernel keeps some for itself: between 80 % and 100 % of 640 MiB.
    assert!(
        (640 * 1024 * 8 / 10..=640 * 1024).contains(&kb),
        "MemTotal {kb} kB for memory_mb = 640: {result}"
    );
}
