//! The container's image: is it on the engine, pull it (only with `[docker] auto_pull`),
//! and import a root filesystem directory as an image (`safe-coder sandbox image build`):
//! nothing assumes a registry.
//!
//! The import streams `tar --numeric-owner -c .` of the directory to the engine's image
//! create API (`fromSrc=-`, what `docker import` does), so a tree of a few hundred MB
//! never sits in memory.

use std::path::Path;
use std::process::Stdio;

use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use super::engine::{engine_error, is_not_found, DockerError};

/// Whether `image` is on the engine.
pub(crate) async fn present(docker: &Docker, image: &str) -> Result<bool, DockerError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(engine_error("look up the image", e)),
    }
}

/// Makes sure `image` is there: present, or pulled when `auto_pull` allows it; else the
/// error says how to build it.
pub(crate) async fn ensure(
    docker: &Docker,
    socket: &Path,
    image: &str,
    auto_pull: bool,
) -> Result<(), DockerError> {
    if present(docker, image).await? {
        return Ok(());
    }
    let missing = || DockerError::ImageMissing {
        image: image.to_string(),
        socket: socket.display().to_string(),
    };
    if !auto_pull {
        return Err(missing());
    }
    let options = CreateImageOptionsBuilder::default()
        .from_image(image)
        .build();
    let mut stream = docker.create_image(Some(options), None, None);
    while let Some(item) = stream.next().await {
        item.map_err(|e| engine_error(&format!("pull the image '{image}'"), e))?;
    }
    if present(docker, image).await? {
        Ok(())
    } else {
        Err(missing())
    }
}

/// The label an imported image carries: what its root filesystem was built from (the
/// image crate's cache key), so a warm `sandbox image build` can skip the import.
pub(crate) const LABEL_ROOTFS: &str = "dev.safe-coder.rootfs";

/// The [`LABEL_ROOTFS`] of `image`, when it is there and has one.
pub(crate) async fn rootfs_label(
    docker: &Docker,
    image: &str,
) -> Result<Option<String>, DockerError> {
    match docker.inspect_image(image).await {
        Ok(i) => Ok(i
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(LABEL_ROOTFS).cloned())),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(engine_error("look up the image", e)),
    }
}

/// Imports the root filesystem at `rootfs` as `image` (`name:tag`), labelled with
/// `rootfs_key`. Returns the engine's answer (the new image's id).
pub(crate) async fn import_rootfs(
    docker: &Docker,
    rootfs: &Path,
    image: &str,
    rootfs_key: &str,
) -> Result<String, DockerError> {
    let mut tar = tokio::process::Command::new("tar")
        .arg("--numeric-owner")
        .arg("-C")
        .arg(rootfs)
        .arg("-cf")
        .arg("-")
        .arg(".")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| DockerError::Engine {
            action: "read the root filesystem".into(),
            detail: format!("could not run tar: {e}"),
        })?;
    let stdout = tar.stdout.take().ok_or_else(|| DockerError::Engine {
        action: "read the root filesystem".into(),
        detail: "tar has no output".into(),
    })?;
    let chunks = futures_util::stream::unfold(stdout, |mut out| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match out.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), out))
            }
            Err(e) => Some((Err(e), out)),
        }
    });
    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        // The whole name with its tag as `repo`: Podman ignores `tag` on import.
        .repo(image)
        .message("safe-coder sandbox image build")
        // One change only: Podman joins several into one value.
        .changes(vec![format!("LABEL {LABEL_ROOTFS}={rootfs_key}")])
        .build();
    let mut stream =
        docker.create_image(Some(options), Some(bollard::body_try_stream(chunks)), None);
    let mut id = String::new();
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| engine_error(&format!("import the image '{image}'"), e))?;
        if let Some(status) = info.status {
            id = status;
        }
    }
    let waited = tar
        .wait_with_output()
        .await
        .map_err(|e| DockerError::Engine {
            action: "read the root filesystem".into(),
            detail: e.to_string(),
        })?;
    if !waited.status.success() {
        return Err(DockerError::Engine {
            action: "read the root filesystem".into(),
            detail: format!(
                "tar failed: {}",
                String::from_utf8_lossy(&waited.stderr).trim()
            ),
        });
    }
    Ok(id.trim().to_string())
}
