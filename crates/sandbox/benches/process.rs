//! What the `process` backend adds to a command: median wall time of `true` run through
//! the ProcessConfiner (bubblewrap + seccomp + cgroup) against plain `bash -c true`.
//! Target (issue 3): at most 10 ms more. Run: `cargo bench -p safe-coder-sandbox --bench process`.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use safe_coder_sandbox::process::ProcessConfiner;
use safe_coder_sandbox::select;
use safe_coder_sandbox::CommandConfiner;
use safe_coder_sandbox::{Limits as ProcessLimits, Mechanism};

const RUNS: usize = 60;

fn time(mut cmd: Command) -> Duration {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let start = Instant::now();
    let status = cmd.status();
    let elapsed = start.elapsed();
    match status {
        Ok(s) if s.success() => elapsed,
        other => {
            eprintln!("command failed: {other:?}");
            std::process::exit(1);
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let first_probe = Instant::now();
    let probe = select::probe(safe_coder_sandbox::BackendKind::Process);
    let first_probe = first_probe.elapsed();
    if !probe.available {
        eprintln!(
            "skipped: the process backend is unavailable: {}",
            probe.reason
        );
        return;
    }
    let cached = Instant::now();
    let all = select::probe_all();
    let cached = cached.elapsed();
    let tmp = match tempfile::tempdir() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("no temp dir: {e}");
            return;
        }
    };
    let work = tmp.path().to_path_buf();
    let setup = Instant::now();
    let confiner = match ProcessConfiner::new(ProcessLimits::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("confiner: {e}");
            return;
        }
    };
    let setup = setup.elapsed();

    let inprocess =
        ProcessConfiner::with_mechanism(ProcessLimits::default(), Mechanism::InProcess).ok();
    let mut plain = Vec::with_capacity(RUNS);
    let mut confined = Vec::with_capacity(RUNS);
    let mut in_proc = Vec::with_capacity(RUNS);
    for i in 0..RUNS + 5 {
        let mut bash = Command::new("bash");
        bash.arg("-c").arg("true").current_dir(&work);
        let p = time(bash);
        let c = match confiner.build("true", &work) {
            Ok(cmd) => time(cmd),
            Err(e) => {
                eprintln!("build: {e}");
                return;
            }
        };
        let ip = inprocess
            .as_ref()
            .and_then(|conf| conf.build("true", &work).ok())
            .map(time);
        if i >= 5 {
            plain.push(p);
            confined.push(c);
            if let Some(ip) = ip {
                in_proc.push(ip);
            }
        }
    }
    let (p, c) = (median(plain), median(confined));
    println!("process backend overhead ({RUNS} runs, medians)");
    println!("  bash -c true              {:8.2} ms", ms(p));
    println!("  confined bash -c true     {:8.2} ms", ms(c));
    println!(
        "  added by process          {:8.2} ms (target ≤ 10 ms)",
        ms(c.saturating_sub(p))
    );
    if !in_proc.is_empty() {
        let ip = median(in_proc);
        println!(
            "  in-process mechanism      {:8.2} ms (+{:.2} ms; used without bwrap)",
            ms(ip),
            ms(ip.saturating_sub(p))
        );
    }
    println!(
        "  mechanism                 {}",
        confiner.describe_mechanism()
    );
    println!(
        "  limits                    {}",
        confiner.enforcement().describe()
    );
    println!("  confiner setup (cgroup)   {:8.2} ms", ms(setup));
    println!("  first probe (runs bwrap)  {:8.2} ms", ms(first_probe));
    println!(
        "  probe_all, cached         {:8.3} ms ({} backends)",
        ms(cached),
        all.len()
    );
}
