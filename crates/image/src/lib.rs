//! Root filesystems and images the `docker` and microVM backends run, assembled on this
//! machine from what the package registries serve: no container registry, no download
//! from anywhere else (docs/images.md).
//!
//! [`rootfs`] builds a Debian tree with debootstrap, once per package set; the docker
//! backend imports it into the engine, and the microVM image turns it into an ext4 disk
//! with the guest agent inside ([`vm`]: kernel, initramfs and root disk of the microVM
//! backends). [`agents`] adds third-party agent CLIs (Codex, Claude Code, Gemini CLI,
//! Aider) from the npm registry and PyPI to either.

pub mod agents;
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
    #[error("unknown agent CLI `{name}`; choose from codex, claude, gemini, aider (e.g. --agent-cli codex,aider)")]
    AgentUnknown { name: String },
    #[error("`{spec}`: `{version}` is not an exact version; give one (e.g. {example}) or the name alone for the tested version")]
    AgentVersion {
        spec: String,
        version: String,
        example: String,
    },
    #[error("{name} is asked for twice, at {a} and at {b}; name one version")]
    AgentTwice {
        name: &'static str,
        a: String,
        b: String,
    },
    #[error("the package registry {registry} cannot be reached ({detail}); check the network, or point the build at a mirror with SAFE_CODER_NPM_REGISTRY (npm) or PIP_INDEX_URL (PyPI), and build again")]
    RegistryUnreachable { registry: String, detail: String },
    #[error("{what} is not in the registry ({url} has no such version); name a version it publishes, or the CLI alone for the tested one")]
    NotPublished { what: String, url: String },
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
