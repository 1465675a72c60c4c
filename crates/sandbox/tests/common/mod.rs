//! Helpers shared by the `process` backend's test files.
#![allow(dead_code)]

use safe_coder_sandbox::process::ProcessConfiner;
use safe_coder_sandbox::{Limits, Mechanism};

/// Whether a missing sandbox must fail the test (CI) instead of skipping it.
pub fn required() -> bool {
    std::env::var_os("SAFE_CODER_REQUIRE_SANDBOX").is_some()
}

/// The mechanism CI says `auto` must pick here (`SAFE_CODER_EXPECT_CONFINER` =
/// `bubblewrap` or `in-process`): the run with bubblewrap hidden sets `in-process`.
pub fn expected() -> Option<Mechanism> {
    match std::env::var("SAFE_CODER_EXPECT_CONFINER").ok()?.as_str() {
        "bubblewrap" => Some(Mechanism::Bubblewrap),
        "in-process" => Some(Mechanism::InProcess),
        other => panic!("SAFE_CODER_EXPECT_CONFINER={other}: use bubblewrap or in-process"),
    }
}

/// The best confiner here, checked against the expected mechanism; `None` (after
/// saying why) when no mechanism works and nothing requires one.
pub fn best(limits: Limits) -> Option<ProcessConfiner> {
    match ProcessConfiner::new(limits) {
        Ok(c) => {
            eprintln!("confiner: {}", c.describe_mechanism());
            if let Some(want) = expected() {
                assert_eq!(c.mechanism(), want, "{}", c.describe_mechanism());
            }
            Some(c)
        }
        Err(e) => {
            assert!(!required(), "the process backend must work here: {e}");
            eprintln!("skipped: the process backend does not work here: {e}");
            None
        }
    }
}

/// Every mechanism that works here, each as a confiner (with the user's toolchains).
/// Bubblewrap may be missing only when CI hid it on purpose (expecting `in-process`);
/// the in-process mechanism must work wherever a sandbox is required.
pub fn each(limits: Limits) -> Vec<ProcessConfiner> {
    let mut out = Vec::new();
    for m in [Mechanism::Bubblewrap, Mechanism::InProcess] {
        match ProcessConfiner::with_mechanism(limits, m) {
            Ok(c) => out.push(c.with_home_toolchains()),
            Err(e) => {
                let may_miss = m == Mechanism::Bubblewrap
                    && (expected() == Some(Mechanism::InProcess) || !required());
                assert!(may_miss || !required(), "{}: {e}", m.as_str());
                eprintln!("skipped {}: {e}", m.as_str());
            }
        }
    }
    out
}

/// Processes whose command line contains `marker`.
pub fn marker_processes(marker: &str) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(marker) {
                n += 1;
            }
        }
    }
    n
}

/// Polls `f` until it holds or `limit` passes (a bound, not a timing assertion).
pub fn wait_until(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    f()
}
