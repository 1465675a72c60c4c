//! `[vm]`: the microVM backends (`firecracker`, `qemu`): the guest image, the VM's size,
//! the VMM binaries, network and acceleration. Read from the files only (no flag or
//! environment variable), merged project over user, and turned into the sandbox's
//! [`VmSpec`] by [`VmSection::spec`].
//!
//! Keys (the old Firecracker-style names are still read): `kernel` (`kernel_image`),
//! `rootfs` (`rootfs_image`), `initramfs`, `memory_mb` (`mem_size_mib`), `vcpus`
//! (`vcpu_count`), `network`, `firecracker_bin`, `vhost_vsock_bin`, `accel`
//! (`auto`, `kvm` or `tcg`), `workspace` (`auto`, `shared` or `copy`; qemu only).

use std::path::{Path, PathBuf};

use safe_coder_sandbox::{Accel, VmSpec, VmWorkspace};
use serde::{Deserialize, Deserializer};

use super::file::{positive_u32, positive_u64};

/// `[vm] accel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccelChoice(pub Accel);

impl<'de> Deserialize<'de> for AccelChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Accel::parse(&s)
            .map(AccelChoice)
            .ok_or_else(|| serde::de::Error::custom(format!("must be auto, kvm or tcg, not {s:?}")))
    }
}

/// `[vm] workspace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkspaceChoice(pub VmWorkspace);

impl<'de> Deserialize<'de> for WorkspaceChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        VmWorkspace::parse(&s).map(WorkspaceChoice).ok_or_else(|| {
            serde::de::Error::custom(format!("must be auto, shared or copy, not {s:?}"))
        })
    }
}

/// `[vm]` as one file says it. `None` = not set in this file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct VmSection {
    #[serde(alias = "kernel_image")]
    pub kernel: Option<PathBuf>,
    #[serde(alias = "rootfs_image")]
    pub rootfs: Option<PathBuf>,
    pub initramfs: Option<PathBuf>,
    #[serde(alias = "mem_size_mib", deserialize_with = "positive_u64")]
    pub memory_mb: Option<u64>,
    #[serde(alias = "vcpu_count", deserialize_with = "positive_u32")]
    pub vcpus: Option<u32>,
    /// Give the guest a network device. Off unless the user says so.
    pub network: Option<bool>,
    pub firecracker_bin: Option<PathBuf>,
    pub vhost_vsock_bin: Option<PathBuf>,
    pub accel: Option<AccelChoice>,
    pub workspace: Option<WorkspaceChoice>,
}

impl VmSection {
    /// The project's values over the user's.
    pub fn merged(proj: &VmSection, user: &VmSection) -> VmSection {
        fn pick<T: Clone>(p: &Option<T>, u: &Option<T>) -> Option<T> {
            p.clone().or_else(|| u.clone())
        }
        VmSection {
            kernel: pick(&proj.kernel, &user.kernel),
            rootfs: pick(&proj.rootfs, &user.rootfs),
            initramfs: pick(&proj.initramfs, &user.initramfs),
            memory_mb: pick(&proj.memory_mb, &user.memory_mb),
            vcpus: pick(&proj.vcpus, &user.vcpus),
            network: pick(&proj.network, &user.network),
            firecracker_bin: pick(&proj.firecracker_bin, &user.firecracker_bin),
            vhost_vsock_bin: pick(&proj.vhost_vsock_bin, &user.vhost_vsock_bin),
            accel: pick(&proj.accel, &user.accel),
            workspace: pick(&proj.workspace, &user.workspace),
        }
    }

    /// The sandbox's spec: these values over the defaults (512 MiB, 2 vCPUs, no network,
    /// `auto` acceleration), the image found under `data_dir` unless named.
    pub fn spec(&self, data_dir: &Path) -> VmSpec {
        let d = VmSpec::default();
        VmSpec {
            data_dir: data_dir.to_path_buf(),
            kernel: self.kernel.clone(),
            rootfs: self.rootfs.clone(),
            initramfs: self.initramfs.clone(),
            memory_mb: self.memory_mb.unwrap_or(d.memory_mb),
            vcpus: self.vcpus.unwrap_or(d.vcpus),
            network: self.network.unwrap_or(false),
            firecracker_bin: self.firecracker_bin.clone(),
            vhost_vsock_bin: self.vhost_vsock_bin.clone(),
            accel: self.accel.map_or(d.accel, |a| a.0),
            ready_timeout: None,
            workspace: self.workspace.map_or(d.workspace, |w| w.0),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::parse_file_config;

    #[test]
    fn new_and_old_keys_defaults_and_bad_values() {
        let mut w = Vec::new();
        let c = parse_file_config(
            "[vm]\nkernel = \"/k\"\nrootfs_image = \"/r\"\nmem_size_mib = 256\nvcpus = 1\naccel = \"tcg\"\nnetwork = true\n",
            Path::new("c.toml"),
            &mut w,
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        let spec = c.vm.spec(Path::new("/data"));
        assert_eq!(spec.kernel.as_deref(), Some(Path::new("/k")));
        assert_eq!(spec.rootfs.as_deref(), Some(Path::new("/r")));
        assert_eq!((spec.memory_mb, spec.vcpus), (256, 1));
        assert_eq!(spec.accel, Accel::Tcg);
        assert!(spec.network);
        assert_eq!(spec.data_dir, Path::new("/data"));

        let spec = VmSection::default().spec(Path::new("/data"));
        assert_eq!((spec.memory_mb, spec.vcpus, spec.network), (512, 2, false));
        assert_eq!(spec.accel, Accel::Auto);

        let e = parse_file_config("[vm]\naccel = \"fast\"\n", Path::new("c.toml"), &mut w)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vm.accel") && e.contains("auto, kvm or tcg"),
            "{e}"
        );
        let e = parse_file_config("[vm]\nmemory_mb = 0\n", Path::new("c.toml"), &mut w)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vm.memory_mb"), "{e}");

        assert_eq!(
            VmSection::default().spec(Path::new("/d")).workspace,
            VmWorkspace::Auto
        );
        let c = parse_file_config(
            "[vm]\nworkspace = \"shared\"\n",
            Path::new("c.toml"),
            &mut w,
        )
        .unwrap();
        assert_eq!(c.vm.spec(Path::new("/d")).workspace, VmWorkspace::Shared);
        let e = parse_file_config("[vm]\nworkspace = \"ram\"\n", Path::new("c.toml"), &mut w)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vm.workspace") && e.contains("auto, shared or copy"),
            "{e}"
        );
    }

    #[test]
    fn project_over_user() {
        let user = VmSection {
            memory_mb: Some(1024),
            vcpus: Some(4),
            ..VmSection::default()
        };
        let proj = VmSection {
            memory_mb: Some(256),
            ..VmSection::default()
        };
        let m = VmSection::merged(&proj, &user);
        assert_eq!((m.memory_mb, m.vcpus), (Some(256), Some(4)));
    }
}
