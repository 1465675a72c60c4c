//! The microVM backends end to end through the real binary: the same per-backend
//! scenarios as `process` (`suite/backends.rs`: keep then `sessions sync`,
//! accept/reject/conflict, SIGKILL then recovery) on `firecracker` (the fake Firecracker
//! of crates/test-support running the real guest agent on the host) and on `qemu` (a
//! real microVM under TCG with the guest image), plus, on `qemu`, confinement (no host
//! home, no network, no provider key) and a command timeout, and `sandbox doctor`.
//!
//! The qemu tests need the image: `SAFE_CODER_TEST_VM_IMAGE=<dir>` (scripts/ci/vm-image.sh
//! builds it; scripts/ci/vm.sh runs these with it). Without it, or without the fake and
//! agent binaries, a test says why and skips, unless `SAFE_CODER_REQUIRE_SANDBOX=1`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use safe_coder_test_support::{MockServer, Reply, Script, Wire};
use serde_json::json;

use super::backends::{accept_reject_conflict, keep_then_sync, sigkill_then_recover};
use crate::common::*;

fn required() -> bool {
    std::env::var_os("SAFE_CODER_REQUIRE_SANDBOX").is_some()
}

fn skip(test: &str, why: &str) -> bool {
    assert!(!required(), "{test}: required but unavailable: {why}");
    eprintln!("{test}: skipped: {why}");
    false
}

/// A binary built next to `safe-coder` (another package of the workspace).
fn sibling(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_BIN_EXE_safe-coder"))
        .parent()?
        .join(name);
    p.is_file().then_some(p)
}

fn write_config(world: &World, vm: &str) {
    let dir = world.config_dir();
    std::fs::create_dir_all(&dir).expect("config dir");
    std::fs::write(dir.join("config.toml"), format!("[vm]\n{vm}")).expect("config");
}

/// The fake Firecracker with the real agent, through a wrapper script per world.
fn firecracker_ready(test: &str) -> Option<(PathBuf, PathBuf)> {
    let (Some(fake), Some(agent)) = (
        sibling("fake-firecracker"),
        sibling("safe-coder-guest-agent"),
    ) else {
        skip(test, "fake-firecracker or safe-coder-guest-agent is not built (cargo build -p safe-coder-test-support -p safe-coder-guest-agent)");
        return None;
    };
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        skip(test, "/dev/kvm is not usable here: the firecracker backend refuses to start without it, fake or not");
        return None;
    }
    Some((fake, agent))
}

fn firecracker_world(fake: &Path, agent: &Path) -> impl Fn(&World) + 'static {
    let (fake, agent) = (fake.to_path_buf(), agent.to_path_buf());
    move |world: &World| {
        let script = world.root.path().join("firecracker");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nSAFE_CODER_FAKE_FC_AGENT='{}' exec '{}' \"$@\"\n",
                agent.display(),
                fake.display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let vm = world.data_dir().join("vm");
        std::fs::create_dir_all(&vm).expect("vm dir");
        std::fs::write(vm.join("vmlinux"), "fake kernel").expect("kernel");
        std::fs::write(vm.join("rootfs.ext4"), "fake rootfs").expect("rootfs");
        write_config(
            world,
            &format!(
                "firecracker_bin = \"{}\"\naccel = \"kvm\"\n",
                script.display()
            ),
        );
    }
}

/// The guest image from `SAFE_CODER_TEST_VM_IMAGE` (a data dir whose `vm/` holds it, as
/// scripts/ci/vm-image.sh exports, or the image directory). Unset: a skip even in CI's
/// whole-suite run, which has no image (scripts/ci/vm.sh sets it).
fn qemu_image(test: &str) -> Option<PathBuf> {
    let Some(var) = std::env::var_os("SAFE_CODER_TEST_VM_IMAGE").map(PathBuf::from) else {
        eprintln!("{test}: skipped: SAFE_CODER_TEST_VM_IMAGE is not set (scripts/ci/vm-image.sh builds the guest image; scripts/ci/vm.sh runs this with it)");
        return None;
    };
    let dir = if var.join("vm/vmlinux").is_file() {
        var.join("vm")
    } else {
        var
    };
    if !dir.join("vmlinux").is_file() || !dir.join("rootfs.ext4").is_file() {
        skip(test, &format!("{} holds no guest image", dir.display()));
        return None;
    }
    Some(dir)
}

fn qemu_world(image: &Path) -> impl Fn(&World) + 'static {
    let image = image.to_path_buf();
    move |world: &World| {
        let mut vm = format!(
            "kernel = \"{}\"\nrootfs = \"{}\"\naccel = \"tcg\"\n",
            image.join("vmlinux").display(),
            image.join("rootfs.ext4").display()
        );
        if image.join("initramfs.cpio.gz").is_file() {
            vm.push_str(&format!(
                "initramfs = \"{}\"\n",
                image.join("initramfs.cpio.gz").display()
            ));
        }
        write_config(world, &vm);
    }
}

#[test]
fn firecracker_keep_then_sessions_sync() {
    if let Some((fake, agent)) = firecracker_ready("firecracker_keep_then_sessions_sync") {
        with_world_setup(firecracker_world(&fake, &agent), || {
            keep_then_sync("firecracker")
        });
    }
}

#[test]
fn firecracker_accept_reject_conflict() {
    if let Some((fake, agent)) = firecracker_ready("firecracker_accept_reject_conflict") {
        with_world_setup(firecracker_world(&fake, &agent), || {
            accept_reject_conflict("firecracker")
        });
    }
}

#[test]
fn firecracker_sigkill_then_sessions_sync_recovers() {
    if let Some((fake, agent)) =
        firecracker_ready("firecracker_sigkill_then_sessions_sync_recovers")
    {
        with_world_setup(firecracker_world(&fake, &agent), || {
            sigkill_then_recover("firecracker")
        });
    }
}

#[test]
fn qemu_keep_then_sessions_sync() {
    if let Some(image) = qemu_image("qemu_keep_then_sessions_sync") {
        with_world_setup(qemu_world(&image), || keep_then_sync("qemu"));
    }
}

#[test]
fn qemu_accept_reject_conflict() {
    if let Some(image) = qemu_image("qemu_accept_reject_conflict") {
        with_world_setup(qemu_world(&image), || accept_reject_conflict("qemu"));
    }
}

#[test]
fn qemu_sigkill_then_sessions_sync_recovers() {
    if let Some(image) = qemu_image("qemu_sigkill_then_sessions_sync_recovers") {
        with_world_setup(qemu_world(&image), || sigkill_then_recover("qemu"));
    }
}

/// The guest sees no host file, no network, no provider key; a timeout kills the
/// command; the end of the session prints the VM's shutdown lines.
#[test]
fn qemu_bash_is_confined_and_times_out() {
    let Some(image) = qemu_image("qemu_bash_is_confined_and_times_out") else {
        return;
    };
    let world = World::new();
    qemu_world(&image)(&world);
    std::fs::write(world.home.join("secret.txt"), "home secret").expect("w");
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let probe = format!(
        "cat {home}/secret.txt; echo read=$?; \
         (exec 3<>/dev/tcp/10.0.2.2/{port}) 2>/dev/null; echo connect=$?; \
         ip -o link 2>/dev/null | grep -vc ' lo:' ; \
         env | grep -c test-key-123456; echo kernel=$(uname -r)",
        home = world.home.display()
    );
    let script = Script::new(vec![
        Reply::tool_calls(vec![call("bash", json!({ "command": probe }))]),
        Reply::tool_calls(vec![call(
            "bash",
            json!({"command": "echo started; sleep 60", "timeout_ms": 1500}),
        )]),
        Reply::text("ok"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let out = world.exec(
        &server,
        &["--backend", "qemu", "--approval-mode", "yolo", "probe"],
    );
    assert_ok(&out);
    let results = tool_results(&server);
    let r = &results[0];
    assert!(!r.contains("home secret") && r.contains("read=1"), "{r}");
    assert!(r.contains("connect=1"), "no network: {r}");
    let counts: Vec<&str> = r
        .lines()
        .filter(|l| l.trim().parse::<u32>().is_ok())
        .collect();
    assert_eq!(
        counts,
        ["0", "0"],
        "no network device, no key in the environment: {r}"
    );
    let t = &results[1];
    assert!(t.contains("started") && t.contains("timed out"), "{t}");
    let err = stderr(&out);
    assert!(err.contains("Stopping VM and cleaning up…"), "{err}");
    assert!(err.contains("✓ Stopped VM "), "{err}");
}

#[test]
fn doctor_names_what_each_vm_backend_lacks() {
    let world = World::new();
    write_config(&world, "firecracker_bin = \"/nonexistent/firecracker\"\nvhost_vsock_bin = \"/nonexistent/vhost-device-vsock\"\n");
    let out = world
        .cmd()
        .args(["sandbox", "doctor"])
        .output()
        .expect("run");
    assert_ok(&out);
    let text = stdout(&out);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("no {name} line: {text}"))
            .to_string()
    };
    let fc = line("firecracker");
    assert!(
        fc.starts_with('✗') && fc.contains("/nonexistent/firecracker does not exist"),
        "{fc}"
    );
    let q = line("qemu");
    assert!(q.starts_with('✗'), "{q}");
    assert!(
        q.contains("qemu-system-x86_64 is not installed")
            || q.contains("safe-coder sandbox image build --backend qemu"),
        "{q}"
    );
    assert!(
        !text.contains("auto → qemu") && !text.contains("auto → firecracker"),
        "{text}"
    );
    // How a qemu session would get the project: here copied, saying why (no image).
    let ws = text
        .lines()
        .find(|l| l.starts_with("qemu workspace: "))
        .unwrap_or_else(|| panic!("no qemu workspace line: {text}"));
    assert!(
        ws.contains("copied into the guest")
            && (ws.contains("virtiofsd is not installed") || ws.contains("image build")),
        "{ws}"
    );

    // With the binaries there, the missing image is named with the command that builds it.
    if let Some((fake, agent)) = sibling("fake-firecracker").zip(sibling("safe-coder-guest-agent"))
    {
        let world = World::new();
        firecracker_world(&fake, &agent)(&world);
        std::fs::remove_file(world.data_dir().join("vm/vmlinux")).expect("rm");
        let out = world
            .cmd()
            .args(["sandbox", "doctor"])
            .output()
            .expect("run");
        let text = stdout(&out);
        let fc = text
            .lines()
            .find(|l| l.contains(" firecracker "))
            .unwrap_or("")
            .to_string();
        if std::path::Path::new("/dev/kvm").exists() {
            assert!(
                fc.contains("safe-coder sandbox image build --backend qemu"),
                "{text}"
            );
        }
    }
}

/// The multi-turn tool scenario (write, read, edit, bash, final answer) with an
/// accepted sync: the file tools act on the host copy, bash in the guest sees them.
fn tool_scenario_then_accept(backend: &str) -> String {
    let world = World::new();
    world.write("README.md", "# demo\n");
    let server = MockServer::start(Wire::Anthropic, tool_scenario()).expect("server");
    let out = world.exec(
        &server,
        &[
            "--backend",
            backend,
            "--sync",
            "accept",
            "--approval-mode",
            "yolo",
            "make hello.txt",
        ],
    );
    assert_ok(&out);
    assert!(stdout(&out).contains("All done"), "{}", stdout(&out));
    assert_eq!(
        world.read("hello.txt").as_deref(),
        Some("hello safe coder\nsecond line\n")
    );
    let results = tool_results(&server);
    assert!(
        results[3].contains("hello safe coder") && results[3].contains("done-bash"),
        "bash in the guest sees the edit: {}",
        results[3]
    );
    format!("{}{}", stdout(&out), stderr(&out))
}

#[test]
fn firecracker_tool_scenario_then_accept() {
    if let Some((fake, agent)) = firecracker_ready("firecracker_tool_scenario_then_accept") {
        with_world_setup(firecracker_world(&fake, &agent), || {
            tool_scenario_then_accept("firecracker");
        });
    }
}

#[test]
fn qemu_tool_scenario_then_accept() {
    if let Some(image) = qemu_image("qemu_tool_scenario_then_accept") {
        with_world_setup(qemu_world(&image), || {
            tool_scenario_then_accept("qemu");
        });
    }
}

/// `safe-coder run` on a VM backend: a command writes, edits and deletes files in the
/// guest; while it runs (it waits for a line on its input) the change reaches the host
/// tree and is committed (a `committed` event before its end); after it, the history,
/// `sessions diff` and `sessions sync` bring everything home, and run exits with its code.
fn run_in_the_vm_keeps_history_and_syncs(backend: &str) {
    use std::io::{BufRead, Write};
    let world = World::new();
    super::run::seed(&world);
    let mut child = world
        .cmd()
        .args([
            "run",
            "--backend",
            backend,
            "--json",
            "--sync",
            "keep",
            "--",
        ])
        .args(["bash", "-c"])
        .arg(format!(
            "{}; read go; echo late-$go > late.txt; exit 3",
            super::run::CHANGES
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr_pipe, &mut s);
        s
    });
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut events = Vec::new();
    // The command waits for its line: a commit before that is a commit mid-run.
    for line in lines.by_ref() {
        let line = line.expect("line");
        let committed = line.contains("\"committed\"");
        events.push(line);
        if committed {
            break;
        }
    }
    assert!(
        events.iter().any(|l| l.contains("\"committed\"")),
        "no commit while the command ran: {events:?} {}",
        err_reader.join().unwrap_or_default()
    );
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("input");
    drop(stdin);
    events.extend(lines.map_while(Result::ok));
    let status = child.wait().expect("wait");
    let err = err_reader.join().unwrap_or_default();
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("done-changing"), "{err}");
    let finished = events
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["type"] == "run_finished")
        .expect("run_finished");
    assert_eq!(finished["exit_code"], 3);
    // Nothing reached the project yet.
    assert_eq!(world.read("edit.txt").as_deref(), Some("one\ntwo\n"));
    let ids = super::run::session_ids(&world);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let log = super::run::history(&world, &ids[0]);
    let runs = log
        .iter()
        .filter(|m| m.starts_with("Agent executed: run bash -c"))
        .count();
    assert!(runs >= 2, "a commit mid-run and one at the end: {log:?}");
    let diff = world
        .cmd()
        .args(["sessions", "diff", &ids[0]])
        .output()
        .expect("diff");
    assert_ok(&diff);
    let d = stdout(&diff);
    assert!(d.contains("+TWO") && d.contains("+late-go"), "{d}");
    let sync = world
        .cmd()
        .args(["sessions", "sync", &ids[0], "--accept-all"])
        .output()
        .expect("sync");
    assert_ok(&sync);
    super::run::assert_changed_on_host(&world);
    assert_eq!(world.read("late.txt").as_deref(), Some("late-go\n"));
}

#[test]
fn firecracker_run_keeps_history_and_syncs() {
    if let Some((fake, agent)) = firecracker_ready("firecracker_run_keeps_history_and_syncs") {
        with_world_setup(firecracker_world(&fake, &agent), || {
            run_in_the_vm_keeps_history_and_syncs("firecracker")
        });
    }
}

#[test]
fn qemu_run_keeps_history_and_syncs() {
    if let Some(image) = qemu_image("qemu_run_keeps_history_and_syncs") {
        with_world_setup(qemu_world(&image), || {
            run_in_the_vm_keeps_history_and_syncs("qemu")
        });
    }
}

/// `--allow-net` in a VM: the allowed host (a server on the host's loopback) answers
/// through the proxy, another is refused (403, and named at exit); in a real VM a
/// direct connection has no route (the fake Firecracker's "guest" is a host process,
/// so there it is not checked).
fn run_network_allow_list_in_the_vm(backend: &str, isolated: bool) {
    let allowed = http_server("hello-from-allowed");
    let other = http_server("hello-from-other");
    let world = World::new();
    let script = format!(
        "ask() {{ exec 3<>/dev/tcp/127.0.0.1/${{HTTP_PROXY##*:}} || return; \
                  printf 'GET http://%s/ HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n' \"$1\" \"$1\" >&3; \
                  cat <&3 | tr -d '\\r'; echo; exec 3<&-; }}; \
         echo proxy=$HTTPS_PROXY; ask 127.0.0.1:{allowed}; ask 127.0.0.1:{other}; \
         if (exec 4<>/dev/tcp/127.0.0.1/{allowed}) 2>/dev/null; then echo direct-open; else echo direct-refused; fi"
    );
    let out = world
        .cmd()
        .args(["run", "--backend", backend, "--sync", "keep", "--allow-net"])
        .arg(format!("127.0.0.1:{allowed}"))
        .args(["--", "bash", "-c", &script])
        .output()
        .expect("run");
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("proxy=http://127.0.0.1:"), "{text}");
    assert!(text.contains("hello-from-allowed"), "{text}");
    assert!(!text.contains("hello-from-other"), "{text}");
    assert!(text.contains("403 Forbidden"), "{text}");
    if isolated {
        assert!(text.contains("direct-refused"), "{text}");
    }
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "refused 1 destination(s) not on the allow-list: 127.0.0.1:{other}"
        )),
        "{err}"
    );
}

#[test]
fn firecracker_run_network_allow_list() {
    if let Some((fake, agent)) = firecracker_ready("firecracker_run_network_allow_list") {
        with_world_setup(firecracker_world(&fake, &agent), || {
            run_network_allow_list_in_the_vm("firecracker", false)
        });
    }
}

#[test]
fn qemu_run_network_allow_list() {
    if let Some(image) = qemu_image("qemu_run_network_allow_list") {
        with_world_setup(qemu_world(&image), || {
            run_network_allow_list_in_the_vm("qemu", true)
        });
    }
}

/// `kill -9` of Safe Coder while a command runs in the VM: the VM dies with it, the work
/// committed while the command ran stays in the session, and `sessions sync` brings it
/// home.
fn a_crash_mid_run_in_the_vm_keeps_the_work(backend: &str) {
    use std::io::BufRead;
    let world = World::new();
    super::run::seed(&world);
    let marker = format!("{}", 6_600_000 + std::process::id() % 100_000);
    let mut child = world
        .cmd()
        .args([
            "run",
            "--backend",
            backend,
            "--json",
            "--sync",
            "accept",
            "--",
        ])
        .args(["bash", "-c"])
        .arg(format!("{}; sleep {marker}", super::run::CHANGES))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut committed = false;
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.contains("\"committed\"") && line.contains("Agent executed: run") {
            committed = true;
            break;
        }
    }
    assert!(committed, "no commit while the command ran");
    child.kill().expect("kill -9");
    let _ = child.wait();
    if backend == "firecracker" {
        // The fake's "guest" is processes on the host: its agent dies with the fake,
        // but what the command started is orphaned here (a real VM dies whole).
        let _ = std::process::Command::new("pkill")
            .args(["-KILL", "-f", &format!("^sleep {marker}$")])
            .status();
    }
    assert_eq!(world.read("edit.txt").as_deref(), Some("one\ntwo\n"));
    let ids = super::run::session_ids(&world);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let sync = world
        .cmd()
        .args(["sessions", "sync", &ids[0], "--accept-all"])
        .output()
        .expect("sync");
    assert_ok(&sync);
    super::run::assert_changed_on_host(&world);
}

#[test]
fn firecracker_a_crash_mid_run_keeps_the_work() {
    if let Some((fake, agent)) = firecracker_ready("firecracker_a_crash_mid_run_keeps_the_work") {
        with_world_setup(firecracker_world(&fake, &agent), || {
            a_crash_mid_run_in_the_vm_keeps_the_work("firecracker")
        });
    }
}

#[test]
fn qemu_a_crash_mid_run_keeps_the_work() {
    if let Some(image) = qemu_image("qemu_a_crash_mid_run_keeps_the_work") {
        with_world_setup(qemu_world(&image), || {
            a_crash_mid_run_in_the_vm_keeps_the_work("qemu")
        });
    }
}

/// The image and virtiofsd a shared `qemu` workspace needs (`[vm] workspace = "shared"`).
fn qemu_shared_ready(test: &str) -> Option<PathBuf> {
    let image = qemu_image(test)?;
    let features = std::fs::read_to_string(image.join("features")).unwrap_or_default();
    if !features.contains("virtiofs-workspace") {
        skip(
            test,
            "the guest image predates virtio-fs (scripts/ci/vm-image.sh rebuilds it)",
        );
        return None;
    }
    if safe_coder_sandbox::vm::share::find_virtiofsd().is_none() {
        skip(test, "virtiofsd is not installed (`cargo install --locked virtiofsd`; scripts/ci/vm-image.sh does)");
        return None;
    }
    Some(image)
}

fn qemu_shared_world(image: &Path) -> impl Fn(&World) + 'static {
    let plain = qemu_world(image);
    move |world: &World| {
        plain(world);
        let cfg = world.config_dir().join("config.toml");
        let mut text = std::fs::read_to_string(&cfg).expect("config");
        text.push_str("workspace = \"shared\"\n");
        std::fs::write(&cfg, text).expect("config");
    }
}

/// The shared workspace through the real binary: the start line says so, the file
/// tools' write on the host is what bash in the guest reads, and the accepted sync
/// brings it home.
#[test]
fn qemu_shared_tool_scenario_then_accept() {
    if let Some(image) = qemu_shared_ready("qemu_shared_tool_scenario_then_accept") {
        with_world_setup(qemu_shared_world(&image), || {
            let out = tool_scenario_then_accept("qemu");
            assert!(out.contains("shared over virtio-fs"), "{out}");
        });
    }
}

/// A command in the guest writes, edits, deletes, renames and changes a mode on the
/// shared workspace: everything lands in the session's upper layer (nothing pulled),
/// the history and `sessions diff` show it, the project is untouched until
/// `sessions sync`, which then applies all of it.
#[test]
fn qemu_shared_run_keeps_history_and_syncs() {
    let Some(image) = qemu_shared_ready("qemu_shared_run_keeps_history_and_syncs") else {
        return;
    };
    with_world_setup(qemu_shared_world(&image), || {
        let world = World::new();
        world.write("edit.txt", "one\n");
        world.write("del.txt", "bye\n");
        world.write("old.txt", "moving\n");
        world.write("tool.sh", "echo tool\n");
        let out = world
            .cmd()
            .args(["run", "--backend", "qemu", "--json", "--sync", "keep", "--"])
            .args(["bash", "-c"])
            .arg(
                "grep -q ' /workspace virtiofs ' /proc/mounts && echo two >> edit.txt && rm del.txt && \
                 mv old.txt new.txt && chmod +x tool.sh && mkdir -p d && echo made > d/f.txt && exit 4",
            )
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        // The project is untouched; the session's upper layer has the work.
        assert_eq!(world.read("edit.txt").as_deref(), Some("one\n"));
        assert!(world.project.join("old.txt").exists() && world.project.join("del.txt").exists());
        let ids = super::run::session_ids(&world);
        assert_eq!(ids.len(), 1, "{ids:?}");
        let upper = world
            .data_dir()
            .join("sessions")
            .join(&ids[0])
            .join("upper");
        assert_eq!(
            std::fs::read_to_string(upper.join("d/f.txt"))
                .ok()
                .as_deref(),
            Some("made\n"),
            "the guest wrote into the upper layer"
        );
        let log = super::run::history(&world, &ids[0]);
        assert!(
            log.iter()
                .any(|m| m.starts_with("Agent executed: run bash -c")),
            "{log:?}"
        );
        let diff = world
            .cmd()
            .args(["sessions", "diff", &ids[0]])
            .output()
            .expect("diff");
        assert_ok(&diff);
        let d = stdout(&diff);
        assert!(
            d.contains("+two") && d.contains("new.txt") && d.contains("+made"),
            "{d}"
        );
        let sync = world
            .cmd()
            .args(["sessions", "sync", &ids[0], "--accept-all"])
            .output()
            .expect("sync");
        assert_ok(&sync);
        assert_eq!(world.read("edit.txt").as_deref(), Some("one\ntwo\n"));
        assert_eq!(world.read("new.txt").as_deref(), Some("moving\n"));
        assert_eq!(world.read("d/f.txt").as_deref(), Some("made\n"));
        assert!(!world.project.join("old.txt").exists() && !world.project.join("del.txt").exists());
        let mode = std::fs::metadata(world.project.join("tool.sh"))
            .expect("tool.sh")
            .permissions()
            .mode();
        assert_eq!(mode & 0o100, 0o100, "the mode change is synced: {mode:o}");
    });
}
