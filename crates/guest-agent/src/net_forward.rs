//! `safe-coder-guest-agent net-forward --port P`: the network allow-list's forwarder in
//! a sandbox that cannot see a host Unix socket (a docker container, a microVM).
//!
//! It listens on `127.0.0.1:P` (where the command's `HTTPS_PROXY` points) and carries
//! every connection over its own stdin/stdout with `safe_coder_netproxy::mux`; the host
//! runs `mux::serve_host` on the other end of those pipes, which connects each one to
//! the proxy (where the allow-list is enforced). Once listening it writes one line,
//! `net-forward: listening on 127.0.0.1:P`, to stderr, so the host can wait for it
//! before starting the command (`--port 0` takes a free port, named in that line); it
//! exits when its stdin closes.

use std::io;
use std::net::TcpListener;
use std::os::fd::AsFd;

/// Runs the subcommand with its arguments (after `net-forward`); returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let port = match args {
        [flag, p] if flag == "--port" => p.parse::<u16>().ok(),
        _ => None,
    };
    let Some(port) = port else {
        eprintln!("usage: {} net-forward --port PORT", crate::SOFTWARE_NAME);
        return 2;
    };
    match serve(port) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{} net-forward: {e}", crate::SOFTWARE_NAME);
            1
        }
    }
}

fn serve(port: u16) -> io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("could not listen on 127.0.0.1:{port}: {e}"),
        )
    })?;
    // The raw descriptors: std's stdout is line-buffered, which the frames do not want.
    let stdin = std::fs::File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let stdout = std::fs::File::from(io::stdout().as_fd().try_clone_to_owned()?);
    // The bound port (another than P when P is 0).
    let bound = listener.local_addr()?.port();
    eprintln!("net-forward: listening on 127.0.0.1:{bound}");
    safe_coder_netproxy::mux::serve_guest(listener, stdin, stdout)
}
