//! Root filesystems and images the `docker` and microVM backends run, assembled on this
//! machine from what the package registries serve: no container registry, no download
//! from anywhere else (docs/images.md).
//!
//! [`rootfs`] builds a Debian tree with debootstrap, once per package set; the docker
//! backend imports it into the engine, and the microVM image turns it into an ext4 disk
//! with the guest agent inside.

pub mod rootfs;

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
