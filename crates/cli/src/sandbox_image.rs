//! `safe-coder sandbox image build [--backend B]`: builds the image a backend runs,
//! locally, from Debian's package mirror (docs/images.md). The dispatch is by backend;
//! `docker` imports a debootstrap'd root filesystem into the engine.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use safe_coder_image::{build_rootfs, RootfsRequest};
use safe_coder_sandbox::BackendKind;

use crate::config::{self, BackendChoice, Dirs, Overrides};

#[derive(Args, Debug, Clone)]
pub struct BuildArgs {
    /// The backend whose image to build.
    #[arg(
        long,
        value_name = "B",
        value_enum,
        ignore_case = true,
        default_value = "docker"
    )]
    backend: BackendChoice,
    /// Only a shell, coreutils, git and Python (faster to build; what the tests use).
    /// Without it the image also has compilers and make (build-essential).
    #[arg(long)]
    minimal: bool,
    /// Extra Debian packages to put in the image.
    #[arg(long = "package", value_name = "PKG")]
    packages: Vec<String>,
    /// The image name (default: `[docker] image`, else safe-coder-sandbox:bookworm).
    #[arg(long, value_name = "NAME")]
    image: Option<String>,
    /// Where root filesystems are cached (default: $XDG_CACHE_HOME/safe-coder/images).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Import again even when the engine has the image built from the same packages.
    #[arg(long)]
    force: bool,
}

pub fn build(args: BuildArgs) -> Result<()> {
    match args.backend {
        BackendChoice::Kind(BackendKind::Docker) => docker(args),
        other => bail!(
            "`sandbox image build` builds images for the docker backend here, not for {other}; \
             use --backend docker"
        ),
    }
}

fn cache_dir(args: &BuildArgs) -> Result<PathBuf> {
    if let Some(d) = &args.cache_dir {
        return Ok(d.clone());
    }
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").context("set $HOME or pass --cache-dir")?)
            .join(".cache"),
    };
    Ok(base.join("safe-coder").join("images"))
}

fn docker(args: BuildArgs) -> Result<()> {
    let dirs = Dirs::from_env()?;
    let here = std::env::current_dir().context("cannot read the current directory")?;
    let resolved = config::resolve(&dirs, &here, &Overrides::default())?;
    let spec = resolved.docker.spec();
    let image = args.image.clone().unwrap_or_else(|| spec.image.clone());
    let base = if args.minimal {
        RootfsRequest::minimal()
    } else {
        RootfsRequest::standard()
    };
    let request = base.with_packages(args.packages.iter().cloned());
    let key = request.cache_key();
    if !args.force {
        let built_from = safe_coder_sandbox::docker::image_rootfs_key(&spec, &image)?;
        if built_from.as_deref() == Some(key.as_str()) {
            println!("The image {image} is up to date (root filesystem {key}); --force imports it again.");
            return Ok(());
        }
    }
    let cache = cache_dir(&args)?;
    let rootfs = build_rootfs(&request, &cache, &mut |line| eprintln!("  {line}"))?;
    println!("Importing {} as {image}…", rootfs.display());
    let (engine, id) = safe_coder_sandbox::docker::import_rootfs(&spec, &rootfs, &image, &key)?;
    println!("Built {image} on {engine} ({id}).");
    println!(
        "Use it with `safe-coder chat --backend docker` (or [isolation] backend = \"docker\")."
    );
    Ok(())
}
