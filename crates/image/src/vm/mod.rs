//! The microVM guest image (docs/vm-image.md): into `<data_dir>/vm/`,
//!
//! - `vmlinux`: Debian's cloud kernel as an ELF ([`kernel`]),
//! - `initramfs.cpio.gz`: the guest agent as `/init` plus the modules it loads
//!   ([`modules`], [`cpio`]),
//! - `rootfs.ext4`: the debootstrap tree ([`crate::rootfs`]) with the agent inside, made
//!   by `mkfs.ext4 -d` (no mount, no loop device),
//! - `features` and `manifest.json`: what the image can do and what it was built from.
//!
//! Everything comes from the package registries (Debian's mirror for the kernel and
//! the root filesystem); the agent is this workspace's `safe-coder-guest-agent`, built
//! static. A build whose inputs did not change returns the existing image at once.

pub mod cpio;
pub mod kernel;
pub mod modules;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use crate::agents::{add_agents, AgentPlan, AgentRequest};
use crate::rootfs::{build_rootfs, COMPLETE_MARKER};
use crate::{ImageError, RootfsRequest};

/// The image's directory under the data dir.
pub const VM_DIR: &str = "vm";
pub const KERNEL_FILE: &str = "vmlinux";
pub const INITRAMFS_FILE: &str = "initramfs.cpio.gz";
pub const ROOTFS_FILE: &str = "rootfs.ext4";
/// What the image's agent can do, one word per line (read by the host backends).
pub const FEATURES_FILE: &str = "features";
pub const MANIFEST_FILE: &str = "manifest.json";
/// The command that builds the image, for messages.
pub const BUILD_COMMAND: &str = "safe-coder sandbox image build --backend qemu";
/// Where the agent lives in the root filesystem (the initramfs's `/init` execs it).
pub const AGENT_IN_ROOTFS: &str = "usr/local/sbin/safe-coder-guest-agent";
/// The agent binary's name, as `cargo build` and `scripts/build-guest-agent.sh` make it.
pub const AGENT_BINARY: &str = "safe-coder-guest-agent";
/// The features every image of this build has: `serial-agent`: the agent also serves
/// the protocol on the virtio-serial port `safe-coder.agent` (QEMU's snapshots cannot
/// carry a vhost-user vsock device); `virtiofs-workspace`: the initramfs has virtio-fs
/// and the agent mounts `safe_coder.workspace=virtiofs:<tag>` at `/workspace` (the
/// host's session tree shared, nothing copied).
pub const FEATURES: &[&str] = &["serial-agent", "virtiofs-workspace"];
/// Bumped when the image layout changes, so an older image is rebuilt.
pub const IMAGE_FORMAT: u32 = 1;

/// What to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmImageRequest {
    /// The output goes to `<data_dir>/vm/`.
    pub data_dir: PathBuf,
    /// Kernel packages and root filesystem trees are cached here (shared with the
    /// docker image's trees).
    pub cache_dir: PathBuf,
    pub rootfs: RootfsRequest,
    /// The static agent binary; `None`: see [`find_agent`].
    pub agent: Option<PathBuf>,
    /// A versioned kernel package (`linux-image-6.1.0-57-cloud-amd64`); `None`: the one
    /// `linux-image-cloud-amd64` depends on now.
    pub kernel_package: Option<String>,
    /// Free space in the root filesystem beyond its contents, in MiB.
    pub free_space_mb: u64,
    /// Agent CLIs to install under `/opt/safe-coder-agents` (crate::agents).
    pub agents: Vec<AgentRequest>,
}

impl VmImageRequest {
    /// The standard root filesystem, the current cloud kernel, 256 MiB free.
    pub fn new(data_dir: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        VmImageRequest {
            data_dir: data_dir.into(),
            cache_dir: cache_dir.into(),
            rootfs: RootfsRequest::standard(),
            agent: None,
            kernel_package: None,
            free_space_mb: 256,
            agents: Vec::new(),
        }
    }
}

/// What an image was built from (`manifest.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmManifest {
    pub format: u32,
    /// The VM protocol version of the agent inside.
    pub protocol: u32,
    /// The agent's `--version` line.
    pub agent: String,
    pub agent_sha1: String,
    pub kernel_package: String,
    pub kernel_deb: String,
    /// `uname -r` in the guest.
    pub kernel_release: String,
    /// Module files in the initramfs, in load order.
    pub modules: Vec<String>,
    pub rootfs_key: String,
    pub suite: String,
    pub packages: Vec<String>,
    pub rootfs_bytes: u64,
    pub features: Vec<String>,
    pub built_at_unix: u64,
    /// The agent CLIs in `/opt/safe-coder-agents`, `name version (registry package)`.
    #[serde(default)]
    pub agents: Vec<String>,
}

/// A built image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmImage {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
    pub manifest: VmManifest,
}

impl VmImage {
    /// The image under `<data_dir>/vm/`, checked: all files there, and an agent that
    /// speaks this build's protocol version.
    pub fn locate(data_dir: &Path) -> Result<VmImage, ImageError> {
        let dir = data_dir.join(VM_DIR);
        let missing = || ImageError::VmImageMissing { dir: dir.clone() };
        let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).map_err(|_| missing())?;
        let manifest: VmManifest = serde_json::from_str(&text).map_err(|_| missing())?;
        let image = VmImage {
            kernel: dir.join(KERNEL_FILE),
            initramfs: dir.join(INITRAMFS_FILE),
            rootfs: dir.join(ROOTFS_FILE),
            dir: dir.clone(),
            manifest,
        };
        if ![&image.kernel, &image.initramfs, &image.rootfs]
            .iter()
            .all(|p| p.is_file())
        {
            return Err(missing());
        }
        let protocol = safe_coder_vm_protocol::PROTOCOL_VERSION;
        if image.manifest.protocol != protocol || image.manifest.format != IMAGE_FORMAT {
            return Err(ImageError::VmImageStale {
                dir,
                image_protocol: image.manifest.protocol,
                protocol,
            });
        }
        Ok(image)
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn need(tool: &'static str, package: &'static str) -> Result<PathBuf, ImageError> {
    which(tool).ok_or(ImageError::ToolMissing { tool, package })
}

/// Where the agent binary is looked for, in order: `explicit`, `$SAFE_CODER_GUEST_AGENT`,
/// beside the running executable, and where `scripts/build-guest-agent.sh` puts it
/// relative to a `target/<profile>/` executable.
pub fn agent_candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_path_buf());
        return out;
    }
    if let Some(p) = std::env::var_os("SAFE_CODER_GUEST_AGENT") {
        out.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.push(dir.join(AGENT_BINARY));
        // target/{debug,release}/safe-coder -> target/x86_64-unknown-linux-gnu/release/
        if let Some(target) = dir.parent() {
            out.push(
                target
                    .join("x86_64-unknown-linux-gnu/release")
                    .join(AGENT_BINARY),
            );
        }
        // target/debug/deps/<test> -> the same, one level up
        if let Some(target) = dir.parent().and_then(Path::parent) {
            out.push(
                target
                    .join("x86_64-unknown-linux-gnu/release")
                    .join(AGENT_BINARY),
            );
        }
    }
    out
}

/// Whether an ELF executable needs no dynamic loader (no `PT_INTERP` program header).
pub fn is_static_elf(bytes: &[u8]) -> bool {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let mut phoff = [0u8; 8];
    phoff.copy_from_slice(&bytes[0x20..0x28]);
    let phoff = u64::from_le_bytes(phoff) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        bytes
            .get(o..o + 4)
            .map(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]))
            != Some(3)
    })
}

/// The static agent binary to put in the image, or why none was found.
pub fn find_agent(explicit: Option<&Path>) -> Result<PathBuf, ImageError> {
    let candidates = agent_candidates(explicit);
    let mut dynamic = None;
    for c in &candidates {
        if let Ok(bytes) = std::fs::read(c) {
            if is_static_elf(&bytes) {
                return Ok(c.clone());
            }
            dynamic.get_or_insert(c.clone());
        }
    }
    Err(match dynamic {
        Some(path) => ImageError::AgentNotStatic { path },
        None => ImageError::AgentNotFound {
            searched: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        },
    })
}

fn sha1_hex(bytes: &[u8]) -> String {
    Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The agent's `--version` line and the protocol version in it.
fn agent_version(agent: &Path) -> Result<(String, u32), ImageError> {
    let out = Command::new(agent)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(ImageError::io(agent))?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let protocol = line
        .rsplit_once("(protocol ")
        .and_then(|(_, rest)| rest.trim_end_matches(')').parse().ok());
    match protocol {
        Some(p) if out.status.success() => Ok((line, p)),
        _ => Err(ImageError::AgentNotFound {
            searched: format!("{} (it printed {line:?} for --version)", agent.display()),
        }),
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, data).map_err(ImageError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(ImageError::io(path))
}

fn run(cmd: &mut Command, what: &str) -> Result<(), ImageError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageError::Command {
            what: what.to_string(),
            status: "not started".into(),
            output: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(ImageError::Command {
        what: what.to_string(),
        status: out.status.to_string(),
        output: text.trim().to_string(),
    })
}

/// The initramfs: `/init` (the agent, which does stage 1 when it finds
/// `/safe-coder-initramfs`), the modules and their load order, gzip-compressed.
pub fn initramfs(agent: &[u8], modules: &[PathBuf]) -> Result<Vec<u8>, ImageError> {
    let mut w = cpio::CpioWriter::new(Vec::new());
    let io = |e: std::io::Error| ImageError::Io {
        path: PathBuf::from(INITRAMFS_FILE),
        source: e,
    };
    for d in [
        "dev",
        "proc",
        "sys",
        "newroot",
        "lower",
        "rw",
        "etc",
        "lib",
        "lib/modules",
    ] {
        w.add(d, 0o755, cpio::Kind::Dir).map_err(io)?;
    }
    // The kernel opens /dev/console for init before anything is mounted.
    w.add("dev/console", 0o600, cpio::Kind::CharDev(5, 1))
        .map_err(io)?;
    w.add("init", 0o755, cpio::Kind::File(agent)).map_err(io)?;
    w.add("safe-coder-initramfs", 0o644, cpio::Kind::File(b""))
        .map_err(io)?;
    let mut list = String::new();
    for m in modules {
        let name = m.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let data = std::fs::read(m).map_err(ImageError::io(m))?;
        let dest = format!("lib/modules/{name}");
        w.add(&dest, 0o644, cpio::Kind::File(&data)).map_err(io)?;
        list.push('/');
        list.push_str(&dest);
        list.push('\n');
    }
    w.add(
        "etc/safe-coder-modules",
        0o644,
        cpio::Kind::File(list.as_bytes()),
    )
    .map_err(io)?;
    let raw = w.finish().map_err(io)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).map_err(io)?;
    gz.finish().map_err(io)
}

/// Disk space a tree takes (blocks of each inode once).
fn tree_bytes(root: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            if seen.insert((md.dev(), md.ino())) {
                total += md.blocks() * 512;
            }
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// The root filesystem image: the tree hard-linked into a staging directory (the
/// cached tree itself is never changed), the agent and a few files added, then
/// `mkfs.ext4 -d`.
fn rootfs_image(
    tree: &Path,
    agent: &[u8],
    cache_dir: &Path,
    out: &Path,
    free_space_mb: u64,
    progress: &mut dyn FnMut(&str),
) -> Result<u64, ImageError> {
    let mkfs = need("mkfs.ext4", "e2fsprogs")?;
    let staging = cache_dir.join(format!(".vm-staging-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(ImageError::io(&staging))?;
    }
    progress("assembling the root filesystem");
    crate::rootfs::link_tree(tree, &staging)?;
    let result = (|| {
        // New files only (or unlink first): a hard-linked file is the cached tree's too.
        let replace = |rel: &str, data: &[u8], mode: u32| -> Result<(), ImageError> {
            let p = staging.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(ImageError::io(parent))?;
            }
            let _ = std::fs::remove_file(&p);
            std::fs::write(&p, data).map_err(ImageError::io(&p))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .map_err(ImageError::io(&p))
        };
        let _ = std::fs::remove_file(staging.join(COMPLETE_MARKER));
        replace(AGENT_IN_ROOTFS, agent, 0o755)?;
        replace("etc/hostname", b"safe-coder\n", 0o644)?;
        replace(
            "etc/hosts",
            b"127.0.0.1\tlocalhost safe-coder\n::1\tlocalhost ip6-localhost ip6-loopback\n",
            0o644,
        )?;
        let ws = staging.join("workspace");
        std::fs::create_dir_all(&ws).map_err(ImageError::io(&ws))?;
        let used = tree_bytes(&staging);
        // ext4's own metadata (inode tables, journal) needs room beyond the data.
        let size = (used + used / 5 + (64 << 20) + (free_space_mb << 20)).div_ceil(1 << 20) << 20;
        let partial = out.with_extension("partial");
        let _ = std::fs::remove_file(&partial);
        let f = std::fs::File::create(&partial).map_err(ImageError::io(&partial))?;
        f.set_len(size).map_err(ImageError::io(&partial))?;
        drop(f);
        progress(&format!(
            "mkfs.ext4 -d ({} MiB, {} MiB used)",
            size >> 20,
            used >> 20
        ));
        run(
            Command::new(&mkfs)
                .args([
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-L",
                    "safe-coder-root",
                    "-m",
                    "0",
                    "-d",
                ])
                .arg(&staging)
                .arg(&partial),
            "mkfs.ext4 -d of the root filesystem",
        )?;
        std::fs::rename(&partial, out).map_err(ImageError::io(out))?;
        Ok(size)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Builds the image (or finds it up to date) and returns it. Needs root for the root
/// filesystem (debootstrap, and files owned by root in the ext4 image).
pub fn build(req: &VmImageRequest, progress: &mut dyn FnMut(&str)) -> Result<VmImage, ImageError> {
    let agent_path = find_agent(req.agent.as_deref())?;
    let agent = std::fs::read(&agent_path).map_err(ImageError::io(&agent_path))?;
    let (agent_line, protocol) = agent_version(&agent_path)?;
    let agent_sha1 = sha1_hex(&agent);
    let package = match &req.kernel_package {
        Some(p) => p.clone(),
        None => kernel::current_kernel_package()?,
    };
    let plan = AgentPlan::new(&req.agents);
    let rootfs_key = plan.tree_key(&req.rootfs.cache_key());
    let mut features: Vec<String> = FEATURES.iter().map(|f| f.to_string()).collect();
    features.sort();

    let dir = req.data_dir.join(VM_DIR);
    if let Ok(existing) = VmImage::locate(&req.data_dir) {
        let m = &existing.manifest;
        if m.agent_sha1 == agent_sha1
            && m.kernel_package == package
            && m.rootfs_key == rootfs_key
            && m.features == features
        {
            progress(&format!("the VM image in {} is up to date", dir.display()));
            return Ok(existing);
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ImageError::NeedsRoot);
    }
    need("dpkg-deb", "dpkg")?;
    need("apt-get", "apt")?;
    std::fs::create_dir_all(&dir).map_err(ImageError::io(&dir))?;
    std::fs::create_dir_all(&req.cache_dir).map_err(ImageError::io(&req.cache_dir))?;
    let cache_dir = req
        .cache_dir
        .canonicalize()
        .map_err(ImageError::io(&req.cache_dir))?;
    // Whatever happens next, the old manifest no longer describes the files.
    let _ = std::fs::remove_file(dir.join(MANIFEST_FILE));

    progress(&format!("agent: {agent_line} ({})", agent_path.display()));
    let kpkg = kernel::fetch(&package, &cache_dir, progress)?;
    progress(&format!("kernel {} ({})", kpkg.release, kpkg.deb));
    let bz = std::fs::read(kpkg.bzimage()).map_err(ImageError::io(kpkg.bzimage()))?;
    let vmlinux = kernel::extract_vmlinux(&bz)?;
    write_atomic(&dir.join(KERNEL_FILE), &vmlinux)?;
    let modules = modules::resolve(&kpkg.modules_dir(), modules::GUEST_MODULES)?;
    let module_names: Vec<String> = modules
        .iter()
        .filter_map(|m| m.file_name()?.to_str().map(str::to_string))
        .collect();
    progress(&format!(
        "initramfs: the agent and {} modules",
        modules.len()
    ));
    write_atomic(&dir.join(INITRAMFS_FILE), &initramfs(&agent, &modules)?)?;

    let tree = build_rootfs(&req.rootfs, &cache_dir, progress)?;
    let (tree, _) = add_agents(&tree, &req.rootfs.cache_key(), &plan, &cache_dir, progress)?;
    let rootfs_bytes = rootfs_image(
        &tree,
        &agent,
        &cache_dir,
        &dir.join(ROOTFS_FILE),
        req.free_space_mb,
        progress,
    )?;

    let mut packages = req.rootfs.packages.clone();
    packages.sort();
    packages.dedup();
    let manifest = VmManifest {
        format: IMAGE_FORMAT,
        protocol,
        agent: agent_line,
        agent_sha1,
        kernel_package: package,
        kernel_deb: kpkg.deb.clone(),
        kernel_release: kpkg.release.clone(),
        modules: module_names,
        rootfs_key,
        suite: req.rootfs.suite.clone(),
        packages,
        rootfs_bytes,
        features: features.clone(),
        built_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        agents: plan.versions(),
    };
    write_atomic(
        &dir.join(FEATURES_FILE),
        format!("{}\n", features.join("\n")).as_bytes(),
    )?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ImageError::Io {
        path: dir.join(MANIFEST_FILE),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&dir.join(MANIFEST_FILE), &json)?;
    progress(&format!("VM image ready in {}", dir.display()));
    VmImage::locate(&req.data_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_check_reads_program_headers() {
        let this = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        // Test binaries are linked dynamically.
        assert!(!is_static_elf(&this));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        // A minimal ELF64 header with no program headers needs no loader.
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        assert!(is_static_elf(&elf));
    }

    #[test]
    fn locate_says_how_to_build_a_missing_image_and_refuses_a_stale_one() {
        let data = tempfile::tempdir().expect("tempdir");
        let err = VmImage::locate(data.path()).expect_err("missing");
        assert!(err.to_string().contains(BUILD_COMMAND), "{err}");

        let dir = data.path().join(VM_DIR);
        std::fs::create_dir_all(&dir).expect("dir");
        for f in [KERNEL_FILE, INITRAMFS_FILE, ROOTFS_FILE] {
            std::fs::write(dir.join(f), b"x").expect("file");
        }
        let mut manifest = VmManifest {
            format: IMAGE_FORMAT,
            protocol: safe_coder_vm_protocol::PROTOCOL_VERSION,
            agent: "safe-coder-guest-agent 0.1.0 (protocol 1)".into(),
            agent_sha1: "00".into(),
            kernel_package: "linux-image-x".into(),
            kernel_deb: "x.deb".into(),
            kernel_release: "6.1.0".into(),
            modules: vec![],
            rootfs_key: "k".into(),
            suite: "bookworm".into(),
            packages: vec![],
            rootfs_bytes: 1,
            features: vec!["serial-agent".into()],
            built_at_unix: 0,
            agents: vec![],
        };
        std::fs::write(
            dir.join(MANIFEST_FILE),
            serde_json::to_vec(&manifest).expect("json"),
        )
        .expect("manifest");
        let image = VmImage::locate(data.path()).expect("found");
        assert_eq!(image.rootfs, dir.join(ROOTFS_FILE));

        manifest.protocol += 1;
        std::fs::write(
            dir.join(MANIFEST_FILE),
            serde_json::to_vec(&manifest).expect("json"),
        )
        .expect("manifest");
        let err = VmImage::locate(data.path()).expect_err("stale");
        assert!(matches!(err, ImageError::VmImageStale { .. }), "{err}");
        assert!(err.to_string().contains(BUILD_COMMAND), "{err}");
    }

    #[test]
    fn the_initramfs_holds_init_the_marker_and_the_module_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = dir.path().join("virtio_blk.ko");
        std::fs::write(&m, b"module").expect("module");
        let gz = initramfs(b"\x7fELFagent", &[m]).expect("initramfs");
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw)
            .expect("gunzip");
        let text = String::from_utf8_lossy(&raw);
        for needle in [
            "init\0",
            "safe-coder-initramfs\0",
            "dev/console\0",
            "lib/modules/virtio_blk.ko\0",
            "/lib/modules/virtio_blk.ko\n",
        ] {
            assert!(text.contains(needle), "{needle:?} missing");
        }
    }
}
