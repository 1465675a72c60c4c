//! Root filesystems and images the `docker` and microVM backends run, assembled on this
//! machine from what the package registries serve: no container registry, no download
//! from anywhere else (docs/images.md).
//!
//! [`rootfs`] builds a Debian tree with debootstrap, once per package set; the docker
//! backend imports it into the engine, and the microVM image turns it into an ext4 disk
//! with the guest agent inside ([`vm`]: kernel, initramfs and root disk of the microVM
//! backends).

pub mod rootfs;
pub mod vm;

pub use rootfs::{build_rootfs, RootfsRequest};

use std::path::PathBuf;

/// Why an image could not be built. Each message is one sentence naming the fix.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("`{tool}` is not installed; install the Debian package `{package}` (apt-get install {package}) and build the image again")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("building a root filesystem needs root (debootstrap creates device nodes and chroots); run `sudo safe-coder sandbox image build`")]
    NeedsRoot,
    #[error("{what} failed ({status}); its last output was:\n{output}")]
    Command {
        what: String,
        status: String,
        output: String,
    },
    #[error("no static guest agent binary found (looked at {searched}); build it with `scripts/build-guest-agent.sh` or set SAFE_CODER_GUEST_AGENT to its path")]
    AgentNotFound { searched: String },
    #[error("the guest agent {} is linked dynamically, but it runs as the initramfs's /init where no libc exists; build it with `scripts/build-guest-agent.sh` (crt-static)", path.display())]
    AgentNotStatic { path: PathBuf },
    #[error("the guest kernel could not be prepared: {0}")]
    Kernel(String),
    #[error("no VM image in {} yet; build it with `safe-coder sandbox image build --backend qemu`", dir.display())]
    VmImageMissing { dir: PathBuf },
    #[error("the VM image in {} has an agent speaking protocol {image_protocol}, but this safe-coder speaks {protocol}; rebuild it with `safe-coder sandbox image build --backend qemu`", dir.display())]
    VmImageStale {
        dir: PathBuf,
        image_protocol: u32,
        protocol: u32,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { path, source }
    }
}
