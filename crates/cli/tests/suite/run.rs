//! `safe-coder run -- CMD` end to end with the real binary (docs/run.md): plain
//! commands write, edit and delete files in the sandbox, the history records it, the
//! review and sync bring it home; the network allow-list lets through only the named
//! host (through the proxy) and no direct connection; in a real terminal (tmux) the PTY
//! passes a resize and `Ctrl+C` reaches the command; a crash mid-run keeps the work.
//! A real third-party agent CLI (Codex) runs inside in `run_agents.rs`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

pub(super) fn seed(world: &World) {
    world.write("edit.txt", "one\ntwo\n");
    world.write("del.txt", "bye\n");
    world.write("keep.txt", "keep\n");
}

/// The script of a "third-party agent": adds, edits and deletes files.
pub(super) const CHANGES: &str = "mkdir -p new && echo made > new/file.txt && \
     sed -i s/two/TWO/ edit.txt && rm del.txt && echo done-changing";

pub(super) fn session_ids(world: &World) -> Vec<String> {
    let out = world
        .cmd()
        .args(["sessions", "list", "--json"])
        .output()
        .expect("run");
    assert_ok(&out);
    let v: Value = serde_json::from_str(&stdout(&out)).expect("json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

/// The commit messages of a kept session's history, newest first.
pub(super) fn history(world: &World, id: &str) -> Vec<String> {
    let dir = world.data_dir().join("sessions").join(id);
    let git_dir = ["history.git", "work/.git", "shadow.git"]
        .iter()
        .map(|d| dir.join(d))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| panic!("no history in {}", dir.display()));
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(&git_dir)
        .args(["log", "--format=%s"])
        .output()
        .expect("git");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

pub(super) fn json_events(out: &str) -> Vec<Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub(super) fn assert_changed_on_host(world: &World) {
    assert_eq!(world.read("new/file.txt").as_deref(), Some("made\n"));
    assert_eq!(world.read("edit.txt").as_deref(), Some("one\nTWO\n"));
    assert!(!world.project.join("del.txt").exists());
    assert_eq!(world.read("keep.txt").as_deref(), Some("keep\n"));
}

/// A plain command: its changes are committed as `Agent executed: run ...`, shown at the
/// review, kept for `sessions diff/sync`, and synced only then. Its exit code is run's.
#[test]
fn run_commits_keeps_and_syncs_a_commands_changes() {
    if !bwrap_available("run_commits_keeps_and_syncs_a_commands_changes") {
        return;
    }
    let world = World::new();
    seed(&world);
    let out = world
        .cmd()
        .args(["run", "--json", "--sync", "keep", "--", "bash", "-c"])
        .arg(format!("{CHANGES}; exit 3"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("done-changing"), "{}", stderr(&out));
    let events = json_events(&stdout(&out));
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    for k in [
        "session_started",
        "run_started",
        "run_finished",
        "change_summary",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let finished = events
        .iter()
        .find(|e| e["type"] == "run_finished")
        .expect("run_finished");
    assert_eq!(finished["exit_code"], 3);
    // Untouched until the user syncs.
    assert_eq!(world.read("edit.txt").as_deref(), Some("one\ntwo\n"));
    assert!(world.project.join("del.txt").exists());

    let ids = session_ids(&world);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let log = history(&world, &ids[0]);
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
    assert!(stdout(&diff).contains("+TWO"), "{}", stdout(&diff));
    let sync = world
        .cmd()
        .args(["sessions", "sync", &ids[0], "--accept-all"])
        .output()
        .expect("sync");
    assert_ok(&sync);
    assert_changed_on_host(&world);
}

/// `--mount` of paths reached through symlinks: each is shown where the user named it
/// (the canonical source behind it), so the command finds it by that name: a tool
/// directory named through a symlink, run by its symlink path, and a login directory in
/// the home that is a symlink to a dotfiles directory elsewhere (at `$HOME/...` inside).
#[test]
fn run_mount_through_a_symlink_keeps_the_users_path() {
    if !bwrap_available("run_mount_through_a_symlink_keeps_the_users_path") {
        return;
    }
    let world = World::new();
    let root = world.root.path();
    let real = root.join("tools-v2");
    std::fs::create_dir_all(real.join("bin")).expect("mkdir");
    let tool = real.join("bin/tool");
    std::fs::write(
        &tool,
        "#!/bin/sh\necho \"tool-ran-as-$0\"\ncat \"$HOME/.toolrc/setting\"\n",
    )
    .expect("tool");
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    std::os::unix::fs::symlink(&real, root.join("tools")).expect("symlink");
    let dotfiles = root.join("dotfiles/toolrc");
    std::fs::create_dir_all(&dotfiles).expect("mkdir");
    std::fs::write(dotfiles.join("setting"), "from-dotfiles\n").expect("setting");
    std::os::unix::fs::symlink(&dotfiles, world.home.join(".toolrc")).expect("symlink");
    let by_link = root.join("tools/bin/tool");
    let out = world
        .cmd()
        .args(["run", "--sync", "keep", "--mount"])
        .arg(format!("{}:ro", root.join("tools").display()))
        // Relative to the current directory (the project), `..` included.
        .args(["--mount", "../home/.toolrc:ro", "--"])
        .arg(&by_link)
        .output()
        .expect("run");
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("tool-ran-as-{}", by_link.display())),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(text.contains("from-dotfiles"), "{text}\n{}", stderr(&out));
}

/// `--sync accept` applies at once; the environment holds only what was named.
#[test]
fn run_syncs_on_accept_and_passes_only_named_variables() {
    if !bwrap_available("run_syncs_on_accept_and_passes_only_named_variables") {
        return;
    }
    let world = World::new();
    seed(&world);
    std::fs::write(world.home.join("secret.txt"), "host-secret").expect("write");
    let out = world
        .cmd()
        .env("RUN_TEST_KEY", "named-secret")
        .env("RUN_TEST_OTHER", "unnamed-secret")
        .args(["run", "--sync", "accept", "--env", "RUN_TEST_KEY", "--", "bash", "-c"])
        .arg(format!(
            "{CHANGES}; echo key=$RUN_TEST_KEY other=${{RUN_TEST_OTHER:-unset}} home=$HOME; cat {} 2>/dev/null || echo home-hidden",
            world.home.join("secret.txt").display()
        ))
        .output()
        .expect("run");
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("key=named-secret other=unset"), "{text}");
    assert!(text.contains("home-hidden"), "{text}");
    assert!(!text.contains("host-secret"), "{text}");
    assert!(
        !text.contains(&format!("home={}", world.home.display())),
        "{text}"
    );
    assert!(stderr(&out).contains("Changes synced"), "{}", stderr(&out));
    assert_changed_on_host(&world);
    assert!(session_ids(&world).is_empty());
}

/// Only the named host is reachable, through the proxy; another is refused (and shown:
/// a line at exit, a JSON event); a direct TCP connection fails.
#[test]
fn run_network_allow_list() {
    if !bwrap_available("run_network_allow_list") {
        return;
    }
    let allowed = http_server("hello-from-allowed");
    let other = http_server("hello-from-other");
    let world = World::new();
    // Plain bash over the forwarder: no curl needed. `ask HOST:PORT` sends a proxy
    // request and prints the status line and body.
    let script = format!(
        "ask() {{ exec 3<>/dev/tcp/127.0.0.1/${{HTTP_PROXY##*:}} || return; \
                  printf 'GET http://%s/ HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n' \"$1\" \"$1\" >&3; \
                  cat <&3 | tr -d '\\r'; echo; exec 3<&-; }}; \
         echo proxy=$HTTPS_PROXY; ask 127.0.0.1:{allowed}; ask 127.0.0.1:{other}; \
         if (exec 4<>/dev/tcp/127.0.0.1/{allowed}) 2>/dev/null; then echo direct-open; else echo direct-refused; fi"
    );
    let mut cmd = world.cmd();
    cmd.args(["run", "--sync", "keep", "--allow-net"])
        .arg(format!("127.0.0.1:{allowed}"))
        .args(["--", "bash", "-c", &script]);
    let out = cmd.output().expect("run");
    // The same on bubblewrap and on the in-process fallback (CI runs both).
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("proxy=http://127.0.0.1:"), "{text}");
    assert!(text.contains("hello-from-allowed"), "{text}");
    assert!(!text.contains("hello-from-other"), "{text}");
    assert!(text.contains("403 Forbidden"), "{text}");
    assert!(text.contains("direct-refused"), "{text}");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "refused 1 destination(s) not on the allow-list: 127.0.0.1:{other}"
        )),
        "{err}"
    );

    // The same with --json: the refusal is an event.
    let out = world
        .cmd()
        .args(["run", "--json", "--sync", "keep", "--allow-net"])
        .arg(format!("127.0.0.1:{allowed}"))
        .args(["--", "bash", "-c", &script])
        .output()
        .expect("run");
    assert_ok(&out);
    let events = json_events(&stdout(&out));
    let refused: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "network_refused")
        .collect();
    assert_eq!(refused.len(), 1, "{events:?}");
    assert_eq!(refused[0]["port"], other);
}

/// Without --allow-net there is no network at all, not even the proxy.
#[test]
fn run_without_allow_net_has_no_network() {
    if !bwrap_available("run_without_allow_net_has_no_network") {
        return;
    }
    let port = http_server("nope");
    let world = World::new();
    let out = world
        .cmd()
        .args(["run", "--sync", "keep", "--", "bash", "-c"])
        .arg(format!(
            "echo proxy=${{HTTPS_PROXY:-none}}; if (exec 4<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo direct-open; else echo direct-refused; fi"
        ))
        .output()
        .expect("run");
    assert_ok(&out);
    assert!(stdout(&out).contains("proxy=none"), "{}", stdout(&out));
    assert!(stdout(&out).contains("direct-refused"), "{}", stdout(&out));
    assert!(stderr(&out).contains("network: none"), "{}", stderr(&out));
}

/// `kill -9` of Safe Coder mid-run: the command dies with it, the work committed while
/// it ran stays in the session, and `sessions sync` brings it home.
#[test]
fn a_crash_mid_run_keeps_the_work() {
    if !bwrap_available("a_crash_mid_run_keeps_the_work") {
        return;
    }
    let world = World::new();
    seed(&world);
    let marker = format!("{}", 7_700_000 + std::process::id() % 100_000);
    let mut child = world
        .cmd()
        .args(["run", "--json", "--sync", "accept", "--", "bash", "-c"])
        .arg(format!("{CHANGES}; sleep {marker}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    // Wait for the commit made after the quiet period (the run is still going).
    let mut committed = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.contains("\"committed\"") && line.contains("Agent executed: run") {
            committed = true;
            break;
        }
    }
    assert!(committed, "no commit while the command ran");
    child.kill().expect("kill -9");
    let _ = child.wait();
    assert!(
        wait_until(Duration::from_secs(10), || marker_processes(&marker) == 0),
        "the command outlived Safe Coder"
    );
    assert_eq!(world.read("edit.txt").as_deref(), Some("one\ntwo\n"));
    let ids = session_ids(&world);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let sync = world
        .cmd()
        .args(["sessions", "sync", &ids[0], "--accept-all"])
        .output()
        .expect("sync");
    assert_ok(&sync);
    assert_changed_on_host(&world);
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn marker_processes(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).contains(marker))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A tmux server of its own, running `safe-coder ARGS` in a 100×30 pane.
pub(super) struct Tmux {
    socket: String,
}

impl Tmux {
    pub(super) fn start(world: &World, args: &[String]) -> Option<Tmux> {
        let ok = Command::new("tmux")
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            assert!(
                std::env::var_os("SAFE_CODER_REQUIRE_SANDBOX").is_none(),
                "tmux is missing, and SAFE_CODER_REQUIRE_SANDBOX is set"
            );
            eprintln!("skipped: tmux is not installed");
            return None;
        }
        let tmux = Tmux {
            socket: format!(
                "safe-coder-run-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let command = format!(
            "cd {} && {} {}; echo run-exit=$?; sleep 30",
            world.project.display(),
            env!("CARGO_BIN_EXE_safe-coder"),
            args.join(" ")
        );
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "e2e",
            "-x",
            "100",
            "-y",
            "30",
            "-e",
            &format!("HOME={}", world.home.display()),
            "-e",
            "TERM=xterm-256color",
            &command,
        ]);
        Some(tmux)
    }

    pub(super) fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(super) fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.run(&["capture-pane", "-p", "-t", "e2e", "-S", "-100"]);
            if s.contains(text) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "never showed {text:?}; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

/// In a real terminal: the command has a TTY of the pane's size, a resize reaches it,
/// `Ctrl+C` goes to it (Safe Coder goes on to the review), and "keep" keeps the work.
#[test]
fn run_in_a_terminal_resize_ctrl_c_and_review() {
    if !bwrap_available("run_in_a_terminal_resize_ctrl_c_and_review") {
        return;
    }
    let world = World::new();
    seed(&world);
    let script_path: PathBuf = world.root.path().join("agent.sh");
    std::fs::write(
        &script_path,
        "trap 'echo got-int; exit 130' INT\n\
         trap 'echo size=$(stty size)' WINCH\n\
         echo work > work.txt\n\
         echo start=$(stty size)\n\
         while :; do sleep 0.1; done\n",
    )
    .expect("script");
    // The script is outside the project: show it read-only.
    let args = vec![
        "run".to_string(),
        "--mount".to_string(),
        format!("{}:ro", script_path.display()),
        "--".to_string(),
        "bash".to_string(),
        script_path.display().to_string(),
    ];
    let Some(tmux) = Tmux::start(&world, &args) else {
        return;
    };
    tmux.wait_for("start=30 100");
    tmux.run(&["resize-window", "-t", "e2e", "-x", "90", "-y", "25"]);
    tmux.wait_for("size=25 90");
    tmux.run(&["send-keys", "-t", "e2e", "C-c"]);
    tmux.wait_for("got-int");
    tmux.wait_for("exited with code 130");
    tmux.wait_for("Sync to the host?");
    tmux.run(&["send-keys", "-t", "e2e", "k", "Enter"]);
    let screen = tmux.wait_for("run-exit=");
    assert!(screen.contains("work.txt (added)"), "{screen}");
    assert!(screen.contains("Changes kept in session"), "{screen}");
    assert!(screen.contains("run-exit=130"), "{screen}");
    assert!(!world.project.join("work.txt").exists());
    let ids = session_ids(&world);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let _ = std::io::stdout().flush();
}
