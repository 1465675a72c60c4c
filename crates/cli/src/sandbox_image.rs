//! `safe-coder sandbox image build --backend docker`: the container image, built locally
//! from Debian's package mirror (docs/images.md, docs/docker.md): a debootstrap'd root
//! filesystem (`crates/image`, cached by package set) imported into the engine.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use safe_coder_image::agents::{add_agents, parse_agents, AgentPlan};
use safe_coder_image::{build_rootfs, RootfsRequest};

use crate::config::{self, Dirs, Overrides};
use crate::vm_image::{announce_agents, VmImageArgs};

/// The docker image's own options (`--minimal` and `--package` are shared with the VM
/// image).
#[derive(Args, Debug, Clone, Default)]
pub struct DockerImageArgs {
    /// docker: the image name (default: `[docker] image`, else safe-coder-sandbox:bookworm).
    #[arg(long, value_name = "NAME")]
    image: Option<String>,
    /// docker: import again even when the engine has the image built from the same packages.
    #[arg(long)]
    force: bool,
}

fn cache_dir(common: &VmImageArgs) -> Result<PathBuf> {
    if let Some(d) = &common.cache_dir {
        return Ok(d.clone());
    }
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").context("set $HOME or pass --cache-dir")?)
            .join(".cache"),
    };
    Ok(base.join("safe-coder").join("images"))
}

pub fn build_docker(common: &VmImageArgs, args: DockerImageArgs) -> Result<()> {
    let dirs = Dirs::from_env()?;
    let here = std::env::current_dir().context("cannot read the current directory")?;
    let resolved = config::resolve(&dirs, &here, &Overrides::default())?;
    let spec = resolved.docker.spec();
    let image = args.image.clone().unwrap_or_else(|| spec.image.clone());
    let base = if common.minimal {
        RootfsRequest::minimal()
    } else {
        RootfsRequest::standard()
    };
    let request = base.with_packages(common.packages.iter().cloned());
    let plan = AgentPlan::new(&parse_agents(&common.agent_clis)?);
    announce_agents(&plan);
    let base_key = request.cache_key();
    let key = plan.tree_key(&base_key);
    if !args.force {
        let built_from = safe_coder_sandbox::docker::image_rootfs_key(&spec, &image)?;
        if built_from.as_deref() == Some(key.as_str()) {
            println!(
                "The image {image} is up to date (root filesystem {key}); --force imports it again."
            );
            return Ok(());
        }
    }
    let cache = cache_dir(common)?;
    let rootfs = build_rootfs(&request, &cache, &mut |line| eprintln!("  {line}"))?;
    let (rootfs, key) = add_agents(&rootfs, &base_key, &plan, &cache, &mut |line| {
        eprintln!("  {line}")
    })?;
    println!("Importing {} as {image}…", rootfs.display());
    let (engine, id) = safe_coder_sandbox::docker::import_rootfs(&spec, &rootfs, &image, &key)?;
    println!("Built {image} on {engine} ({id}).");
    println!(
        "Use it with `safe-coder chat --backend docker` (or [isolation] backend = \"docker\")."
    );
    Ok(())
}
