//! `safe-coder sandbox image build --backend qemu|firecracker`: the microVM guest image
//! (docs/vm-image.md), built by `safe_coder_image::vm` into `<data_dir>/vm/`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use safe_coder_image::agents::{parse_agents, AgentPlan};
use safe_coder_image::vm::{build as build_image, VmImageRequest};
use safe_coder_image::RootfsRequest;

use crate::config::Dirs;

#[derive(Args, Debug, Clone, Default)]
pub struct VmImageArgs {
    /// A smaller root filesystem without compilers (bash, coreutils, git, python3,
    /// procps, ca-certificates); the default adds build-essential.
    #[arg(long)]
    pub minimal: bool,
    /// Another Debian package for the root filesystem (repeatable).
    #[arg(long = "package", value_name = "PKG")]
    pub packages: Vec<String>,
    /// The static guest agent to put in the image (default: beside this executable, or
    /// $SAFE_CODER_GUEST_AGENT; `scripts/build-guest-agent.sh` builds it).
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// Agent CLIs to install in the image: codex, claude, gemini, aider, each optionally
    /// `@VERSION` (exact; default: the tested version), comma-separated or repeated.
    /// From the npm registry (with a Node.js 22 from there too) and PyPI.
    #[arg(
        long = "agent-cli",
        visible_alias = "cli",
        value_name = "CLI[@VERSION],..."
    )]
    pub agent_clis: Vec<String>,
    /// Where root filesystem trees, kernel packages and agent CLI layers are cached
    /// (default: $XDG_CACHE_HOME/safe-coder/images).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// The agent CLIs an image build installs, printed before it starts.
pub fn announce_agents(plan: &AgentPlan) {
    if plan.is_empty() {
        return;
    }
    println!("Agent CLIs (in /opt/safe-coder-agents, on PATH):");
    for line in plan.versions() {
        println!("  {line}");
    }
}

/// Where downloaded kernel packages and root filesystem trees are kept:
/// `$XDG_CACHE_HOME/safe-coder/images` (default `~/.cache/safe-coder/images`).
fn cache_dir() -> Result<PathBuf> {
    match std::env::var_os("XDG_CACHE_HOME").filter(|v| PathBuf::from(v).is_absolute()) {
        Some(dir) => Ok(PathBuf::from(dir).join("safe-coder/images")),
        None => {
            let home = std::env::var_os("HOME").context("neither $XDG_CACHE_HOME nor $HOME is set: set one so Safe Coder knows where to cache images")?;
            Ok(PathBuf::from(home).join(".cache/safe-coder/images"))
        }
    }
}

pub fn build(args: VmImageArgs) -> Result<()> {
    let dirs = Dirs::from_env()?;
    let cache = match &args.cache_dir {
        Some(d) => d.clone(),
        None => cache_dir()?,
    };
    let mut req = VmImageRequest::new(&dirs.data_dir, cache);
    req.rootfs = if args.minimal {
        RootfsRequest::minimal()
    } else {
        RootfsRequest::standard()
    }
    .with_packages(args.packages);
    req.agent = args.agent;
    req.agents = parse_agents(&args.agent_clis)?;
    announce_agents(&AgentPlan::new(&req.agents));
    let image = build_image(&req, &mut |line| eprintln!("  {line}"))?;
    println!(
        "✓ VM image in {} (kernel {}, protocol {}); the qemu and firecracker backends use it",
        image.dir.display(),
        image.manifest.kernel_release,
        image.manifest.protocol
    );
    if !image.manifest.agents.is_empty() {
        println!("  agent CLIs: {}", image.manifest.agents.join(", "));
    }
    Ok(())
}
