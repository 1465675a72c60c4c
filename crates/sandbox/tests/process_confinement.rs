//! The `process` backend against real processes: what a confined command can and cannot
//! do, with the mechanism `auto` picks here (bubblewrap, or the in-process fallback when
//! CI hides bubblewrap; `SAFE_CODER_EXPECT_CONFINER` says which must run). Skips (with a
//! printed reason) only when no mechanism works and no sandbox is required.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use safe_coder_sandbox::process::{Enforcement, ProcessConfiner};
use safe_coder_sandbox::CommandConfiner;
use safe_coder_sandbox::{Limits as ProcessLimits, Mechanism};

fn confiner(limits: ProcessLimits) -> Option<ProcessConfiner> {
    common::best(limits)
}

fn bubblewrap(conf: &ProcessConfiner) -> bool {
    conf.mechanism() == Mechanism::Bubblewrap
}

struct Run {
    code: Option<i32>,
    output: String,
    killed: bool,
}

/// Runs `script` confined, as HostSandbox does (stdin null, own process group), killing
/// the group after `timeout`.
fn run(conf: &ProcessConfiner, workdir: &Path, script: &str, timeout: Duration) -> Run {
    let mut cmd = conf.build(script, workdir).expect("build");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().expect("spawn bwrap");
    drop(cmd);
    let pgid = child.id() as i32;
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) of the process group this test created.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            killed = true;
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = format!(
        "{}{}",
        t_out.join().expect("stdout reader"),
        t_err.join().expect("stderr reader")
    );
    Run {
        code: status.code(),
        output,
        killed,
    }
}

const SHORT: Duration = Duration::from_secs(20);

fn workdir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path().join("project");
    std::fs::create_dir(&work).expect("mkdir");
    std::fs::write(work.join("README.md"), "hello from the project\n").expect("write");
    let work = work.canonicalize().expect("canonicalize");
    (tmp, work)
}

#[test]
fn runs_commands_in_the_project_at_its_own_path() {
    let Some(conf) = confiner(ProcessLimits::default()) else {
        return;
    };
    let (_tmp, work) = workdir();
    let r = run(
        &conf,
        &work,
        &format!(
            "pwd; cat README.md; cat {}/README.md; echo home=$HOME; hostname; id -u",
            work.display()
        ),
        SHORT,
    );
    assert_eq!(r.code, Some(0), "{}", r.output);
    assert!(
        r.output.contains(&work.display().to_string()),
        "{}",
        r.output
    );
    assert_eq!(
        r.output.matches("hello from the project").count(),
        2,
        "{}",
        r.output
    );
    let home = r
        .output
        .lines()
        .find_map(|l| l.strip_prefix("home="))
        .unwrap_or("");
    if bubblewrap(&conf) {
        assert_eq!(home, "/tmp/home", "{}", r.output);
    } else {
        assert!(
            home.ends_with("/home") && home.contains("safe-coder-tmp-"),
            "{}",
            r.output
        );
    }
    assert!(r.output.contains("safe-coder"), "{}", r.output);
}

#[test]
fn cannot_read_home_or_other_projects() {
    let Some(conf) = confiner(ProcessLimits::default()) else {
        return;
    };
    let (tmp, work) = workdir();
    // A secret in the real home directory and a sibling project next to the work tree.
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let secret_dir = home.join(format!(".safe-coder-test-secret-{}", std::process::id()));
    std::fs::create_dir_all(&secret_dir).expect("secret dir");
    let secret = secret_dir.join("credentials");
    std::fs::write(&secret, "TOP-SECRET-VALUE-42\n").expect("secret");
    let sibling = tmp.path().join("other-project");
    std::fs::create_dir(&sibling).expect("sibling");
    std::fs::write(sibling.join("notes.txt"), "SIBLING-SECRET-43\n").expect("sibling file");

    let script = format!(
        "cat {} ; cat {}/notes.txt ; ls {} ; cat /etc/shadow ; ls -a {} ; true",
        secret.display(),
        sibling.display(),
        home.display(),
        home.display()
    );
    let r = run(&conf, &work, &script, SHORT);
    let _ = std::fs::remove_dir_all(&secret_dir);
    assert!(!r.output.contains("TOP-SECRET-VALUE-42"), "{}", r.output);
    assert!(!r.output.contains("SIBLING-SECRET-43"), "{}", r.output);
    let listed = secret_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    assert!(
        !r.output.lines().any(|l| l.trim() == listed),
        "the home directory is visible: {}",
        r.output
    );
    assert!(
        !r.output.lines().any(|l| l.starts_with("root:")),
        "/etc/shadow leaked: {}",
        r.output
    );
}

#[test]
fn cannot_write_outside_the_sandbox() {
    let Some(conf) = confiner(ProcessLimits::default()) else {
        return;
    };
    let (tmp, work) = workdir();
    let tag = format!("sc-escape-{}", std::process::id());
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let targets: Vec<PathBuf> = vec![
        PathBuf::from("/etc").join(&tag),
        PathBuf::from("/usr").join(&tag),
        PathBuf::from("/").join(&tag),
        home.join(&tag),
        tmp.path().join(&tag),
        work.parent().expect("parent").join(&tag),
    ];
    let script: String = targets
        .iter()
        .map(|t| format!("echo x > {} ; ", t.display()))
        .collect::<String>()
        + "true";
    let r = run(&conf, &work, &script, SHORT);
    for t in &targets {
        assert!(
            !t.exists(),
            "the sandbox wrote {} on the host: {}",
            t.display(),
            r.output
        );
    }
    let refusal = if bubblewrap(&conf) {
        "Read-only file system"
    } else {
        "Permission denied"
    };
    assert!(r.output.contains(refusal), "{}", r.output);
}

#[test]
fn writes_land_in_the_project_and_tmp_is_private() {
    let Some(conf) = confiner(ProcessLimits::default()) else {
        return;
    };
    let (_tmp, work) = workdir();
    let host_tmp = PathBuf::from(format!("/tmp/sc-private-{}", std::process::id()));
    let script = format!(
        "mkdir -p src && echo made > src/new.txt && echo t > {} && cat {} && echo h > $HOME/x && cat $HOME/x",
        host_tmp.display(),
        host_tmp.display()
    );
    let r = run(&conf, &work, &script, SHORT);
    // In-process, the host's /tmp is not replaced but closed: the write is refused.
    if bubblewrap(&conf) {
        assert_eq!(r.code, Some(0), "{}", r.output);
    }
    assert_eq!(
        std::fs::read_to_string(work.join("src/new.txt")).expect("written file"),
        "made\n"
    );
    assert!(
        !host_tmp.exists(),
        "the sandbox's /tmp is visible on the host"
    );
}

#[test]
fn cannot_connect_to_a_host_port() {
    let Some(conf) = confiner(ProcessLimits::default()) else {
        return;
    };
    let (_tmp, work) = workdir();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let script = format!(
        "if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo CONNECTED; else echo REFUSED; fi; \
         if (exec 3<>/dev/tcp/1.1.1.1/80) 2>/dev/null; then echo OUTSIDE; fi; cat /proc/net/dev"
    );
    let r = run(&conf, &work, &script, SHORT);
    assert!(r.output.contains("REFUSED"), "{}", r.output);
    assert!(!r.output.contains("CONNECTED"), "{}", r.output);
    assert!(!r.output.contains("OUTSIDE"), "{}", r.output);
    assert!(
        listener.accept().is_err(),
        "a connection reached the host listener"
    );
}

#[test]
fn cannot_see_host_processes() {
    let Some(conf) = confiner(ProcessLimits::default()) else {
        return;
    };
    let (_tmp, work) = workdir();
    let me = std::process::id();
    let r = run(
        &conf,
        &work,
        &format!("ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '; echo; test -e /proc/{me}/cmdline && grep -a process_confinement /proc/{me}/cmdline && echo VISIBLE; true"),
        SHORT,
    );
    assert_eq!(r.code, Some(0), "{}", r.output);
    let first = r.output.lines().next().unwrap_or("");
    let pids: Vec<u32> = first
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if bubblewrap(&conf) {
        assert!(!pids.is_empty() && pids.len() < 10, "pids inside: {first}");
    } else {
        // No mount namespace: /proc is closed by Landlock rather than replaced.
        assert!(pids.is_empty(), "host pids visible: {first}");
    }
    assert!(!r.output.contains("VISIBLE"), "{}", r.output);
}

#[test]
fn seccomp_refuses_new_namespaces_but_threads_work() {
    let Some(conf) = confiner(ProcessLimits::default()) else {
        return;
    };
    let (_tmp, work) = workdir();
    let r = run(
        &conf,
        &work,
        "unshare --user --map-root-user true && echo UNSHARED; \
         seq 1 200000 | sort -n --parallel=4 -S 8M | tail -1",
        SHORT,
    );
    assert!(!r.output.contains("UNSHARED"), "{}", r.output);
    assert!(r.output.contains("200000"), "{}", r.output);
}

use common::{marker_processes, wait_until};

#[test]
fn killing_the_process_group_kills_everything_inside() {
    let Some(conf) = confiner(ProcessLimits::default()) else {
        return;
    };
    let (_tmp, work) = workdir();
    let marker = format!("{}", 8_600_000 + std::process::id() % 100_000);
    // One child in the group, one that leaves it with setsid, one in the foreground.
    let script = format!("sleep {marker}1 & setsid sleep {marker}2 & sleep {marker}3");
    let mut cmd = conf.build(&script, &work).expect("build");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn().expect("spawn");
    assert!(
        wait_until(Duration::from_secs(10), || marker_processes(&marker) >= 3),
        "the sleeps never started"
    );
    // SAFETY: kill(2) of the process group this test created.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    child.wait().expect("wait");
    assert!(
        wait_until(Duration::from_secs(10), || marker_processes(&marker) == 0),
        "{} sandboxed processes survived the kill",
        marker_processes(&marker)
    );
}

#[test]
fn a_fork_bomb_hits_the_process_limit_and_the_host_is_fine() {
    let limits = ProcessLimits {
        pids: 64,
        ..ProcessLimits::default()
    };
    let Some(conf) = confiner(limits) else { return };
    let (_tmp, work) = workdir();
    eprintln!("limits enforced by: {}", conf.enforcement().describe());
    // SAFETY: getuid cannot fail.
    if conf.enforcement().pids == Enforcement::Rlimit && unsafe { libc::getuid() } == 0 {
        // Root ignores RLIMIT_NPROC: without a pids cgroup nothing would bound the bomb.
        eprintln!("skipped the fork bomb: no pids cgroup here and root ignores RLIMIT_NPROC");
        return;
    }
    let conf = std::sync::Arc::new(conf);
    let watcher = {
        let conf = conf.clone();
        std::thread::spawn(move || {
            let mut most = 0;
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                most = most.max(conf.process_count().unwrap_or(0));
                std::thread::sleep(Duration::from_millis(50));
            }
            most
        })
    };
    let r = run(
        &conf,
        &work,
        ":(){ :|:& };: ; sleep 30",
        Duration::from_secs(4),
    );
    let most = watcher.join().expect("watcher");
    eprintln!(
        "at most {most} processes in the sandbox; killed at timeout: {}",
        r.killed
    );
    if conf.enforcement().pids != Enforcement::Rlimit {
        assert!(most <= 64, "{most} processes in a sandbox limited to 64");
        assert!(
            wait_until(Duration::from_secs(10), || conf.process_count() == Some(0)),
            "the bomb's processes survived the kill"
        );
    }
    // The host still starts processes.
    let ok = std::process::Command::new("true")
        .status()
        .expect("host spawn");
    assert!(ok.success());
    let after = run(&conf, &work, "echo alive", SHORT);
    assert!(after.output.contains("alive"), "{}", after.output);
}

#[test]
fn a_memory_hog_is_stopped_and_the_host_is_fine() {
    let limits = ProcessLimits {
        memory_mb: 256,
        ..ProcessLimits::default()
    };
    let Some(conf) = confiner(limits) else { return };
    let (_tmp, work) = workdir();
    eprintln!("limits enforced by: {}", conf.enforcement().describe());
    // tail keeps a newline-free stream in memory: it grows until a limit stops it.
    let r = run(
        &conf,
        &work,
        "head -c 3G /dev/zero | tail >/dev/null; echo status=${PIPESTATUS[1]}",
        Duration::from_secs(120),
    );
    assert!(
        !r.killed,
        "the hog ran until the test's timeout: {}",
        r.output
    );
    assert!(r.output.contains("status="), "{}", r.output);
    assert!(
        !r.output.contains("status=0"),
        "the hog was not stopped: {}",
        r.output
    );
    let after = run(&conf, &work, "echo alive", SHORT);
    assert!(after.output.contains("alive"), "{}", after.output);
}
