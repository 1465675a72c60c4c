//! `fake-firecracker --api-sock PATH [other firecracker flags, ignored]`
//!
//! Serves a fake Firecracker API on PATH (see `safe_coder_test_support::firecracker`)
//! until its guest powers off or it is killed. The guest agent to run is named by
//! `SAFE_CODER_FAKE_FC_AGENT` (a path; without it the guest never answers) with the
//! words of `SAFE_CODER_FAKE_FC_AGENT_ARGS` before `--listen ...`; requests
//! are appended as JSON lines to `SAFE_CODER_FAKE_FC_LOG` when set.

use std::path::PathBuf;
use std::process::ExitCode;

use safe_coder_test_support::firecracker::{FakeFirecracker, FakeFirecrackerConfig, FakeGuest};

fn main() -> ExitCode {
    let mut api: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--api-sock" {
            api = args.next().map(PathBuf::from);
        }
    }
    let Some(api) = api else {
        eprintln!("usage: fake-firecracker --api-sock PATH");
        return ExitCode::from(2);
    };
    let config = FakeFirecrackerConfig {
        guest: std::env::var("SAFE_CODER_FAKE_FC_AGENT")
            .ok()
            .filter(|a| !a.is_empty())
            .map(|a| {
                let mut argv = vec![a];
                if let Ok(extra) = std::env::var("SAFE_CODER_FAKE_FC_AGENT_ARGS") {
                    argv.extend(extra.split_whitespace().map(String::from));
                }
                FakeGuest { argv }
            }),
        log: std::env::var_os("SAFE_CODER_FAKE_FC_LOG").map(PathBuf::from),
        exit_with_guest: true,
    };
    let _fake = match FakeFirecracker::start(&api, config) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fake-firecracker: cannot listen on {}: {e}", api.display());
            return ExitCode::from(1);
        }
    };
    loop {
        std::thread::park();
    }
}
