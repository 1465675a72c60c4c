//! The in-process mechanism of the `process` backend (no bubblewrap: namespaces, Landlock
//! and seccomp applied by the child itself), against real processes. Skips with a
//! printed reason when the kernel has no Landlock.

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
    match ProcessConfiner::with_mechanism(limits, Mechanism::InProcess) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("skipped: the in-process mechanism is unavailable here: {e}");
            None
        }
    }
}

struct Run {
    code: Option<i32>,
    output: String,
}

fn run(conf: &ProcessConfiner, workdir: &Path, script: &str, timeout: Duration) -> Run {
    let mut cmd = conf.build(script, workdir).expect("build");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().expect("spawn");
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
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) of the process group this test created.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code(),
        output: format!(
            "{}{}",
            t_out.join().expect("stdout reader"),
            t_err.join().expect("stderr reader")
        ),
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
fn confines_files_network_and_processes() {
    let Some(conf) = confiner(ProcessLimits::default()) else {
        return;
    };
    eprintln!(
        "{}; {}",
        conf.describe_mechanism(),
        conf.enforcement().describe()
    );
    let (tmp, work) = workdir();
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let secret_dir = home.join(format!(".safe-coder-inproc-secret-{}", std::process::id()));
    std::fs::create_dir_all(&secret_dir).expect("secret dir");
    std::fs::write(secret_dir.join("credentials"), "INPROC-SECRET-77\n").expect("secret");
    let sibling = tmp.path().join("other");
    std::fs::create_dir(&sibling).expect("sibling");
    std::fs::write(sibling.join("notes.txt"), "INPROC-SIBLING-78\n").expect("sibling");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let escape = PathBuf::from(format!("/etc/sc-inproc-{}", std::process::id()));
    let host_tmp = PathBuf::from(format!("/tmp/sc-inproc-{}", std::process::id()));
    let me = std::process::id();

    let script = format!(
        "cat README.md {work}/README.md; echo made > new.txt; echo t > $TMPDIR/t && echo TMPOK; \
         echo h > $HOME/h && echo HOMEOK; \
         cat {secret}/credentials; cat {sibling}/notes.txt; cat /etc/shadow; \
         echo x > {escape}; echo x > {host_tmp}; echo x > {parent}/escaped; \
         if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo CONNECTED; else echo REFUSED; fi; \
         cat /proc/{me}/environ && echo ENVIRON; ls /proc >/dev/null 2>&1 && echo PROCLIST; \
         unshare --user true && echo UNSHARED; \
         seq 1 100000 | sort -n --parallel=2 -S 8M | tail -1",
        work = work.display(),
        secret = secret_dir.display(),
        sibling = sibling.display(),
        escape = escape.display(),
        host_tmp = host_tmp.display(),
        parent = tmp.path().display(),
    );
    let r = run(&conf, &work, &script, SHORT);
    let _ = std::fs::remove_dir_all(&secret_dir);
    let out = &r.output;
    assert_eq!(r.code, Some(0), "{out}");
    assert_eq!(out.matches("hello from the project").count(), 2, "{out}");
    assert_eq!(
        std::fs::read_to_string(work.join("new.txt")).expect("new.txt"),
        "made\n"
    );
    assert!(out.contains("TMPOK") && out.contains("HOMEOK"), "{out}");
    assert!(!out.contains("INPROC-SECRET-77"), "{out}");
    assert!(!out.contains("INPROC-SIBLING-78"), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("root:")), "{out}");
    assert!(!escape.exists() && !host_tmp.exists(), "{out}");
    assert!(!tmp.path().join("escaped").exists(), "{out}");
    assert!(
        out.contains("REFUSED") && !out.contains("CONNECTED"),
        "{out}"
    );
    assert!(listener.accept().is_err());
    assert!(
        !out.contains("ENVIRON") && !out.contains("PROCLIST"),
        "{out}"
    );
    assert!(!out.contains("UNSHARED"), "{out}");
    assert!(out.contains("100000"), "threads must work: {out}");
}

#[test]
fn a_fork_bomb_and_a_memory_hog_are_contained() {
    let limits = ProcessLimits {
        memory_mb: 256,
        pids: 64,
        ..ProcessLimits::default()
    };
    let Some(conf) = confiner(limits) else { return };
    let (_tmp, work) = workdir();
    let r = run(
        &conf,
        &work,
        "head -c 3G /dev/zero | tail >/dev/null; echo status=${PIPESTATUS[1]}",
        Duration::from_secs(120),
    );
    assert!(
        r.output.contains("status=") && !r.output.contains("status=0"),
        "{}",
        r.output
    );

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
    let _ = run(
        &conf,
        &work,
        ":(){ :|:& };: ; sleep 30",
        Duration::from_secs(4),
    );
    let most = watcher.join().expect("watcher");
    if conf.enforcement().pids != Enforcement::Rlimit {
        assert!(most <= 64, "{most} processes in a sandbox limited to 64");
    }
    // Without a PID namespace the group kill is what reaches the bomb's processes (they
    // never left the group); the cgroup shows them gone.
    if conf.process_count().is_some() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while conf.process_count() != Some(0) {
            assert!(
                Instant::now() < deadline,
                "the bomb survived the group kill"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(conf);
    assert!(std::process::Command::new("true")
        .status()
        .expect("host spawn")
        .success());
}
