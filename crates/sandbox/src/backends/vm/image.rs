//! The guest image as the host side needs it: the kernel, the initramfs and the root
//! filesystem, found where `[vm]` names them or under `<data_dir>/vm/` (where
//! `safe-coder sandbox image build --backend qemu` puts them).

use std::path::{Path, PathBuf};

use crate::VmSpec;

/// File names under `<data_dir>/vm/`.
pub const KERNEL_FILE: &str = "vmlinux";
pub const INITRAMFS_FILE: &str = "initramfs.cpio.gz";
pub const ROOTFS_FILE: &str = "rootfs.ext4";
pub const FEATURES_FILE: &str = "features";

/// The command that builds the image, for messages.
pub const BUILD_COMMAND: &str = "safe-coder sandbox image build --backend qemu";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub rootfs: PathBuf,
    /// What the image's agent can do beyond vsock, one word per line of the file
    /// `features` beside the root filesystem (written by the image build): e.g.
    /// `serial-agent` (it also serves a virtio-serial port, which QEMU's snapshot
    /// mode needs).
    pub features: Vec<String>,
}

/// The directory the image is built into.
pub fn image_dir(vm: &VmSpec) -> PathBuf {
    vm.data_dir.join("vm")
}

/// Where saved VM states live: beside the image's root filesystem when that directory
/// is writable (so every data dir using one image, e.g. the test suites', shares them),
/// else `<data_dir>/vm/snapshots`.
pub fn snapshots_dir(vm: &VmSpec, image: &GuestImage) -> PathBuf {
    if let Some(dir) = image.rootfs.parent() {
        let s = dir.join("snapshots");
        if std::fs::create_dir_all(&s).is_ok() && writable(&s) {
            return s;
        }
    }
    image_dir(vm).join("snapshots")
}

/// Keeps the `keep` most recently saved states of one VMM (`prefix`: `qemu-`,
/// `firecracker-`) in `dir` and removes the rest: states of an image that was rebuilt,
/// or of a VM size no longer used, would otherwise pile up (~70 MB each).
pub fn prune_snapshots(dir: &Path, prefix: &str, keep: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut all: Vec<(std::time::SystemTime, PathBuf)> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    all.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, p) in all.into_iter().skip(keep) {
        let _ = std::fs::remove_dir_all(p);
    }
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

impl GuestImage {
    /// The image in force, or one sentence saying what is missing and how to build it.
    pub fn locate(vm: &VmSpec) -> Result<GuestImage, String> {
        let dir = image_dir(vm);
        let kernel = vm.kernel.clone().unwrap_or_else(|| dir.join(KERNEL_FILE));
        let rootfs = vm.rootfs.clone().unwrap_or_else(|| dir.join(ROOTFS_FILE));
        let initramfs = match &vm.initramfs {
            Some(p) => Some(p.clone()),
            None => Some(dir.join(INITRAMFS_FILE)).filter(|p| p.is_file()),
        };
        let missing = |what: &str, p: &Path, named: bool| {
            if named {
                format!(
                    "the guest {what} {} named in [vm] does not exist",
                    p.display()
                )
            } else {
                format!(
                    "no guest image in {} yet (no {what}); build it with `{BUILD_COMMAND}`",
                    dir.display()
                )
            }
        };
        if !kernel.is_file() {
            return Err(missing("kernel", &kernel, vm.kernel.is_some()));
        }
        if !rootfs.is_file() {
            return Err(missing("root filesystem", &rootfs, vm.rootfs.is_some()));
        }
        if let Some(i) = &initramfs {
            if !i.is_file() {
                return Err(missing("initramfs", i, true));
            }
        }
        let features = rootfs
            .parent()
            .and_then(|d| std::fs::read_to_string(d.join(FEATURES_FILE)).ok())
            .map(|t| t.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        Ok(GuestImage {
            kernel,
            initramfs,
            rootfs,
            features,
        })
    }

    pub fn has_feature(&self, name: &str) -> bool {
        self.features.iter().any(|f| f == name)
    }

    /// What identifies this image for caches (probe verdicts, snapshots): the files'
    /// paths, sizes and modification times.
    pub fn fingerprint(&self) -> String {
        let mut parts = Vec::new();
        for p in [
            Some(&self.kernel),
            self.initramfs.as_ref(),
            Some(&self.rootfs),
        ]
        .into_iter()
        .flatten()
        {
            let (len, mtime) = std::fs::metadata(p)
                .map(|m| {
                    let t = m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos());
                    (m.len(), t)
                })
                .unwrap_or((0, 0));
            parts.push(format!("{}:{len}:{mtime}", p.display()));
        }
        parts.join("|")
    }
}
