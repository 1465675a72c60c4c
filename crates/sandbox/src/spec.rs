//! [`SandboxSpec`]: everything [`open`](crate::open) needs to build a sandbox of any
//! backend. One value, filled by the caller from settings, so that a new backend adds
//! fields here rather than a new constructor.

use std::path::PathBuf;

/// Resource limits of a sandbox, for all its commands together where the backend can
/// enforce them per sandbox (a cgroup, a VM), else per process (rlimits).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub memory_mb: u64,
    pub cpus: f64,
    /// The most processes (and threads) alive at once: a fork bomb stops there.
    pub pids: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 2048,
            cpus: 2.0,
            pids: 512,
        }
    }
}

/// How the `process` backend confines commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// bubblewrap: user, mount, PID, network, IPC and UTS namespaces + seccomp.
    /// Preferred.
    Bubblewrap,
    /// No bubblewrap: namespaces (where the host allows them), Landlock and seccomp
    /// applied by the child itself (see docs/sandbox-process.md for the differences).
    InProcess,
}

impl Mechanism {
    /// The name used in notes, `sandbox doctor` and `SAFE_CODER_EXPECT_CONFINER`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Bubblewrap => "bubblewrap",
            Mechanism::InProcess => "in-process",
        }
    }
}

/// What a sandbox is built from.
#[derive(Clone, Debug)]
pub struct SandboxSpec {
    /// The host directory the agent works in: the sandbox copy, or the project itself
    /// for `direct`. It must exist.
    pub workdir: PathBuf,
    pub limits: Limits,
    /// Names of further environment variables handed to the agent's commands on top of
    /// the fixed allow-list (`[isolation] env_passthrough`; see [`crate::env`]).
    pub env_passthrough: Vec<String>,
    /// `process`: show the user's toolchains under `$HOME` read-only (see
    /// `backends/process/toolchains.rs`). On by default.
    pub home_toolchains: bool,
    /// `process`: insist on one mechanism instead of the best that works here (tests
    /// and benchmarks compare both).
    pub mechanism: Option<Mechanism>,
    /// A mounted overlay workspace (`crate::overlay`): the work tree is its merged tree
    /// and `workdir` is not used. `copy` and `process` honour it; a container or VM
    /// backend can take the layers from [`crate::overlay::OverlayMount::layers`].
    pub overlay: Option<std::sync::Arc<crate::overlay::OverlayMount>>,
    /// `firecracker` and `qemu`: the guest image, the VM's size and the VMM binaries
    /// (`[vm]` in the config).
    pub vm: VmSpec,
    /// `docker`: the engine, runtime, image and network, and the session the container
    /// belongs to (`[docker]`; see docs/docker.md).
    pub docker: DockerSpec,
}

/// The image `[docker] image` defaults to: what `safe-coder sandbox image build` builds.
pub const DEFAULT_DOCKER_IMAGE: &str = "safe-coder-sandbox:bookworm";

/// What the `docker` backend needs beyond [`SandboxSpec`]'s common fields.
#[derive(Clone, Debug, PartialEq)]
pub struct DockerSpec {
    /// The engine's socket (`unix:///path` or a path); `None` finds it: `DOCKER_HOST`,
    /// `/var/run/docker.sock`, then Podman's sockets.
    pub host: Option<String>,
    /// The OCI runtime (`runc`, `runsc`, `crun`...); `None` is `auto`: gVisor (`runsc`)
    /// where the engine offers it, else the engine's default.
    pub runtime: Option<String>,
    /// The image the container runs (built locally by `safe-coder sandbox image build`).
    pub image: String,
    /// The container's network mode: `none` unless the user allows more.
    pub network: String,
    /// Pull a missing image from a registry (off: nothing assumes a registry).
    pub auto_pull: bool,
    /// `[docker]` limits that replace [`SandboxSpec::limits`]' for the container.
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    /// The session the container belongs to: its name and label. `None` (tests,
    /// benchmarks) gets a random name and the container is removed when the sandbox
    /// stops.
    pub session_id: Option<String>,
    /// The session's directory: while it exists a stopped container is kept for
    /// resume; once it is gone the container is removed.
    pub session_dir: Option<PathBuf>,
}

impl Default for DockerSpec {
    fn default() -> Self {
        DockerSpec {
            host: None,
            runtime: None,
            image: DEFAULT_DOCKER_IMAGE.to_string(),
            network: "none".to_string(),
            auto_pull: false,
            memory_mb: None,
            cpus: None,
            pids: None,
            session_id: None,
            session_dir: None,
        }
    }
}

impl SandboxSpec {
    /// A spec with the default limits, no passthrough variables, toolchains visible and
    /// the best mechanism.
    pub fn new(workdir: impl Into<PathBuf>) -> Self {
        SandboxSpec {
            workdir: workdir.into(),
            limits: Limits::default(),
            env_passthrough: Vec::new(),
            home_toolchains: true,
            mechanism: None,
            overlay: None,
            vm: VmSpec::default(),
            docker: DockerSpec::default(),
        }
    }
}

/// How QEMU runs the guest's CPU (`[vm] accel`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Accel {
    /// KVM where a probe showed that a standard guest really runs on it, else TCG.
    #[default]
    Auto,
    /// KVM, even where the probe found it broken.
    Kvm,
    /// Software emulation (TCG): slow, but it runs everywhere.
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    pub fn parse(s: &str) -> Option<Accel> {
        Some(match s {
            "auto" => Accel::Auto,
            "kvm" => Accel::Kvm,
            "tcg" => Accel::Tcg,
            _ => return None,
        })
    }
}

/// What the microVM backends (`firecracker`, `qemu`) are built from: `[vm]` in the
/// config, and the data dir that holds the guest image (`<data_dir>/vm/`, built by
/// `safe-coder sandbox image build`) and the cached probe verdicts and snapshots.
#[derive(Clone, Debug, PartialEq)]
pub struct VmSpec {
    /// Safe Coder's data dir (`$XDG_DATA_HOME/safe-coder`).
    pub data_dir: PathBuf,
    /// The guest kernel (an ELF vmlinux); default `<data_dir>/vm/vmlinux`.
    pub kernel: Option<PathBuf>,
    /// The guest root filesystem (ext4 with the agent); default `<data_dir>/vm/rootfs.ext4`.
    pub rootfs: Option<PathBuf>,
    /// The guest initramfs; default `<data_dir>/vm/initramfs.cpio.gz`.
    pub initramfs: Option<PathBuf>,
    pub memory_mb: u64,
    pub vcpus: u32,
    /// Give the guest a network device (off by default: no network).
    pub network: bool,
    /// The Firecracker binary; default `firecracker` on `PATH`.
    pub firecracker_bin: Option<PathBuf>,
    /// The vhost-user vsock backend for QEMU where `/dev/vhost-vsock` is absent; default
    /// `vhost-device-vsock` on `PATH` or in `$SAFE_CODER_CACHE/cargo/bin`.
    pub vhost_vsock_bin: Option<PathBuf>,
    pub accel: Accel,
    /// How long a VM may take until its agent answers; `None` = 120 s (or
    /// `SAFE_CODER_VM_READY_SECS`). Tests shorten it.
    pub ready_timeout: Option<std::time::Duration>,
    /// `qemu`: how the guest gets the project (`[vm] workspace`; docs/microvm.md).
    pub workspace: VmWorkspace,
}

/// How a `qemu` guest gets the session's tree (`[vm] workspace`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VmWorkspace {
    /// Shared where virtiofsd and the image allow it, the VM runs under KVM, and the
    /// project is large enough that copying it in costs more than the boot a shared
    /// workspace needs; else the copy.
    #[default]
    Auto,
    /// The host's session tree (an overlay over the project) shared over virtio-fs:
    /// nothing copied; the VM boots (a vhost-user-fs device cannot be snapshotted).
    Shared,
    /// A copy pushed into the guest's RAM and pulled back after each command.
    Copy,
}

impl VmWorkspace {
    pub fn parse(s: &str) -> Option<VmWorkspace> {
        match s.trim() {
            "auto" => Some(VmWorkspace::Auto),
            "shared" => Some(VmWorkspace::Shared),
            "copy" => Some(VmWorkspace::Copy),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VmWorkspace::Auto => "auto",
            VmWorkspace::Shared => "shared",
            VmWorkspace::Copy => "copy",
        }
    }
}

impl VmSpec {
    /// The default VM size (the documents': 512 MiB, 2 vCPUs).
    pub const DEFAULT_MEMORY_MB: u64 = 512;
    pub const DEFAULT_VCPUS: u32 = 2;
}

impl Default for VmSpec {
    /// The defaults, with the data dir found as the command line finds it
    /// (`$XDG_DATA_HOME/safe-coder`, else `~/.local/share/safe-coder`).
    fn default() -> Self {
        VmSpec {
            data_dir: default_data_dir(),
            kernel: None,
            rootfs: None,
            initramfs: None,
            memory_mb: Self::DEFAULT_MEMORY_MB,
            vcpus: Self::DEFAULT_VCPUS,
            network: false,
            firecracker_bin: None,
            vhost_vsock_bin: None,
            accel: Accel::Auto,
            ready_timeout: None,
            workspace: VmWorkspace::Auto,
        }
    }
}

pub(crate) fn default_data_dir() -> PathBuf {
    match std::env::var_os("XDG_DATA_HOME") {
        Some(v) if !v.is_empty() && std::path::Path::new(&v).is_absolute() => {
            PathBuf::from(v).join("safe-coder")
        }
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(".local/share/safe-coder"),
    }
}
