//! `mock-model-server --wire anthropic|openai|ollama|responses --script FILE.json [--port N]`
//!
//! Serves a scripted conversation (see `safe_coder_test_support::Script`) until killed.
//! The first line on stdout is `listening on http://127.0.0.1:PORT`; the base URL to
//! configure follows on the second line (`base_url ...`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use safe_coder_test_support::{MockServer, Script, Wire};

const USAGE: &str =
    "usage: mock-model-server --wire anthropic|openai|ollama|responses --script FILE.json [--port N]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("mock-model-server: {msg}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut wire: Option<Wire> = None;
    let mut script: Option<PathBuf> = None;
    let mut port: u16 = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--wire" => wire = Some(value("--wire")?.parse()?),
            "--script" => script = Some(PathBuf::from(value("--script")?)),
            "--port" => {
                port = value("--port")?
                    .parse()
                    .map_err(|_| format!("--port needs a number\n{USAGE}"))?
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    let wire = wire.ok_or_else(|| format!("--wire is required\n{USAGE}"))?;
    let script_path = script.ok_or_else(|| format!("--script is required\n{USAGE}"))?;
    let script = Script::from_file(&script_path)
        .map_err(|e| format!("cannot load {}: {e}", script_path.display()))?;
    let server = MockServer::start_on(wire, script, port)
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on http://{}", server.addr()).map_err(|e| e.to_string())?;
    writeln!(out, "base_url {}", server.base_url()).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    drop(out);
    loop {
        std::thread::park();
    }
}
