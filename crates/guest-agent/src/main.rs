//! `safe-coder-guest-agent`: see the crate docs and docs/vm-image.md.
//!
//! ```text
//! safe-coder-guest-agent                 as PID 1: stage 1 in the initramfs, else --init
//! safe-coder-guest-agent --init          set up the guest, serve on vsock port 1024
//! safe-coder-guest-agent --listen ADDR [--workspace DIR] [--protocol N]
//!     serve on ADDR (vsock:PORT, unix:PATH, tcp:HOST:PORT) without touching the system;
//!     --protocol makes it claim another protocol version (to test the host's check)
//! safe-coder-guest-agent net-forward --port P
//!     the network allow-list's forwarder over stdin/stdout (see `net_forward`)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use safe_coder_guest_agent::listen::{Address, Listener};
use safe_coder_guest_agent::server::Agent;
use safe_coder_guest_agent::{init, listen, reaper, SOFTWARE_NAME};
use safe_coder_vm_protocol::{software, Hello, AGENT_PORT, PROTOCOL_VERSION};

fn usage() -> ! {
    eprintln!(
        "usage: {SOFTWARE_NAME} [--init | --listen vsock:PORT|unix:PATH|tcp:HOST:PORT [--workspace DIR] [--protocol N]]"
    );
    std::process::exit(2)
}

fn serve(addr: &Address, workspace: &Path, protocol: u32, as_init: bool) -> anyhow::Result<()> {
    let hello = Hello {
        protocol,
        software: software(SOFTWARE_NAME),
    };
    let on_shutdown: Box<dyn Fn() + Send + Sync> = if as_init {
        Box::new(|| init::power_off())
    } else {
        Box::new(|| {
            // SAFETY: sync has no arguments.
            unsafe { libc::sync() };
            std::process::exit(0)
        })
    };
    let agent = Agent::new(workspace, hello, on_shutdown)
        .with_context(|| format!("workspace {}", workspace.display()))?;
    let agent = Arc::new(if as_init {
        agent.owning_the_clock()
    } else {
        agent
    });
    reaper::global();
    let listener = Listener::bind(addr).with_context(|| format!("cannot listen on {addr:?}"))?;
    if as_init {
        serve_serial_port(&agent);
    }
    println!("{}", init::READY_LINE);
    listener.serve(agent).context("accepting connections")?;
    Ok(())
}

/// In the guest, also serves the virtio-serial port `safe-coder.agent` when the host
/// gave one (its module is loaded by then, so the port is there or absent for good).
fn serve_serial_port(agent: &Arc<Agent>) {
    let Some(port) = listen::find_serial_port(listen::SERIAL_PORT_NAME) else {
        return;
    };
    let agent = Arc::clone(agent);
    let spawned = std::thread::Builder::new()
        .name("serial".into())
        .spawn(move || {
            if let Err(e) = listen::serve_serial(&port, agent) {
                eprintln!(
                    "{SOFTWARE_NAME}: virtio-serial port {}: {e}",
                    port.display()
                );
            }
        });
    if let Err(e) = spawned {
        eprintln!("{SOFTWARE_NAME}: cannot serve the virtio-serial port: {e}");
    }
}

fn run_init() -> anyhow::Result<()> {
    let workspace = init::stage2().context("setting up the guest")?;
    serve(
        &Address::Vsock(AGENT_PORT),
        Path::new(&workspace),
        PROTOCOL_VERSION,
        true,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // SAFETY: getpid has no arguments.
    let pid1 = unsafe { libc::getpid() } == 1;
    let result = if args.is_empty() && pid1 {
        if Path::new(init::INITRAMFS_MARKER).exists() {
            match init::stage1() {
                Ok(never) => match never {},
                Err(e) => Err(anyhow::Error::new(e).context("stage 1 (initramfs)")),
            }
        } else {
            run_init()
        }
    } else if args.first().map(String::as_str) == Some("--init") {
        run_init()
    } else if args.first().map(String::as_str) == Some("net-forward") {
        std::process::exit(safe_coder_guest_agent::net_forward::run(&args[1..]))
    } else if args.first().map(String::as_str) == Some("--version") {
        println!("{} (protocol {PROTOCOL_VERSION})", software(SOFTWARE_NAME));
        Ok(())
    } else {
        let mut addr = None;
        let mut workspace = PathBuf::from(safe_coder_vm_protocol::WORKSPACE);
        let mut protocol = PROTOCOL_VERSION;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().cloned().unwrap_or_else(|| usage());
            match a.as_str() {
                "--listen" => addr = Some(Address::parse(&value()).unwrap_or_else(|| usage())),
                "--workspace" => workspace = PathBuf::from(value()),
                "--protocol" => protocol = value().parse().unwrap_or_else(|_| usage()),
                _ => usage(),
            }
        }
        let Some(addr) = addr else { usage() };
        // Outside a VM: adopt what the commands orphan, so they are reaped and killable.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if pid1 {
            // PID 1 of a container (the docker backend's resident agent): the kernel
            // ignores signals PID 1 has no handler for, so `docker stop` would wait for
            // its SIGKILL. End at once; the kernel then kills the rest of the namespace.
            extern "C" fn on_term(_: libc::c_int) {
                // SAFETY: _exit is async-signal-safe.
                unsafe { libc::_exit(0) }
            }
            // SAFETY: installs a handler that only calls an async-signal-safe function.
            unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) };
        }
        serve(&addr, &workspace, protocol, false)
    };
    if let Err(e) = result {
        eprintln!("{SOFTWARE_NAME}: {e:#}");
        if pid1 {
            // A guest whose agent cannot run is useless: end the VM so the host notices
            // at once instead of waiting for a handshake that never comes.
            std::thread::sleep(std::time::Duration::from_millis(100));
            init::power_off();
        }
        std::process::exit(1);
    }
}
