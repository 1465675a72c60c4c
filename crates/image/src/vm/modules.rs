//! Which kernel modules the initramfs carries, in load order. Debian's package ships no
//! `modules.dep` (depmod runs at install), and the host may have no kmod, so the
//! dependencies are read from each module's own `.modinfo` ELF section: `depends=`
//! (hard dependencies) and `softdep=pre:` (e.g. ext4 needs a `crc32c` provider, found
//! through the modules' `alias=` lines).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::ImageError;

/// What the guest needs: the virtio-mmio bus and its block, console and network
/// devices, ext4 and overlayfs for the root, vsock over virtio, and virtio-fs (with
/// fuse) for the shared workspace of `[vm] workspace = "shared"`.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "ext4",
    "overlay",
    "vmw_vsock_virtio_transport",
    "virtio_console",
    "virtio_net",
    "virtiofs",
];

/// One module file and what its `.modinfo` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub depends: Vec<String>,
    pub softdep_pre: Vec<String>,
    pub aliases: Vec<String>,
}

fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// Reads the `.modinfo` section of an ELF64 little-endian module.
pub fn read_modinfo(path: &Path) -> std::io::Result<ModInfo> {
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    let mut f = File::open(path)?;
    let mut eh = [0u8; 64];
    f.read_exact(&mut eh)?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64_at = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let shoff = u64_at(&eh, 0x28);
    let shentsize = u16_at(&eh, 0x3a);
    let shnum = u16_at(&eh, 0x3c);
    let shstrndx = u16_at(&eh, 0x3e);
    if shentsize < 64 || shnum == 0 || shstrndx >= shnum || shnum > 1 << 16 {
        return Err(bad("bad section headers"));
    }
    let mut sh = vec![0u8; shentsize * shnum];
    f.seek(SeekFrom::Start(shoff))?;
    f.read_exact(&mut sh)?;
    let section = |i: usize| {
        let s = &sh[i * shentsize..];
        (
            u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize,
            u64_at(s, 0x18),
            u64_at(s, 0x20),
        )
    };
    let read_at = |f: &mut File, off: u64, len: u64| -> std::io::Result<Vec<u8>> {
        if len > 64 << 20 {
            return Err(bad("a section too large"));
        }
        let mut buf = vec![0u8; len as usize];
        f.seek(SeekFrom::Start(off))?;
        f.read_exact(&mut buf)?;
        Ok(buf)
    };
    let (_, str_off, str_len) = section(shstrndx);
    let names = read_at(&mut f, str_off, str_len)?;
    let name_of = |off: usize| -> &[u8] {
        let rest = names.get(off..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    };
    let Some(idx) = (0..shnum).find(|&i| name_of(section(i).0) == b".modinfo") else {
        return Ok(ModInfo::default());
    };
    let (_, off, len) = section(idx);
    let data = read_at(&mut f, off, len)?;
    let mut info = ModInfo::default();
    for entry in data.split(|&b| b == 0).filter(|e| !e.is_empty()) {
        let entry = String::from_utf8_lossy(entry);
        if let Some(v) = entry.strip_prefix("depends=") {
            info.depends
                .extend(v.split(',').filter(|s| !s.is_empty()).map(norm));
        } else if let Some(v) = entry.strip_prefix("softdep=") {
            // "pre: a b post: c"
            let mut pre = false;
            for word in v.split_whitespace() {
                match word {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    w if pre => info.softdep_pre.push(norm(w)),
                    _ => {}
                }
            }
        } else if let Some(v) = entry.strip_prefix("alias=") {
            info.aliases.push(v.to_string());
        }
    }
    Ok(info)
}

/// The module files of a kernel's `lib/modules/<release>` tree, by module name.
fn index(modules_dir: &Path) -> Result<BTreeMap<String, PathBuf>, ImageError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![modules_dir.join("kernel")];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(ImageError::io(&dir))?;
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                out.insert(norm(name), p);
            }
        }
    }
    Ok(out)
}

/// Names built into the kernel (`modules.builtin`): nothing to load for them.
fn builtins(modules_dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            Path::new(l)
                .file_name()?
                .to_str()?
                .strip_suffix(".ko")
                .map(norm)
        })
        .collect()
}

/// Walks dependencies depth-first, appending each module after what it needs.
struct Resolver<'a> {
    files: &'a BTreeMap<String, PathBuf>,
    builtin: &'a BTreeSet<String>,
    infos: HashMap<String, ModInfo>,
    /// alias -> modules providing it, read from every module on first need.
    aliases: Option<HashMap<String, Vec<String>>>,
    order: Vec<String>,
    visiting: BTreeSet<String>,
}

impl Resolver<'_> {
    fn providers(&mut self, alias: &str) -> Vec<String> {
        let files = self.files;
        let map = self.aliases.get_or_insert_with(|| {
            let mut map: HashMap<String, Vec<String>> = HashMap::new();
            for (module, path) in files {
                if let Ok(info) = read_modinfo(path) {
                    for a in &info.aliases {
                        map.entry(norm(a)).or_default().push(module.clone());
                    }
                }
            }
            map
        });
        map.get(alias).cloned().unwrap_or_default()
    }

    fn visit(&mut self, name: &str, required: bool) -> Result<(), ImageError> {
        let name = norm(name);
        if self.order.contains(&name)
            || self.builtin.contains(&name)
            || self.visiting.contains(&name)
        {
            return Ok(());
        }
        let Some(path) = self.files.get(&name).cloned() else {
            // Maybe an alias (softdeps name algorithms, e.g. `crc32c`). Prefer the
            // portable implementation (`crc32c_generic` over `crc32c_intel`).
            let providers = self.providers(&name);
            let pick = providers
                .iter()
                .find(|p| p.ends_with("_generic"))
                .or(providers.first())
                .cloned();
            return match pick {
                Some(p) => self.visit(&p, required),
                None if required => Err(ImageError::Kernel(format!(
                    "the kernel has no module `{name}` and does not build it in"
                ))),
                None => Ok(()),
            };
        };
        self.visiting.insert(name.clone());
        let info = match self.infos.get(&name) {
            Some(i) => i.clone(),
            None => {
                let i = read_modinfo(&path).map_err(ImageError::io(&path))?;
                self.infos.insert(name.clone(), i.clone());
                i
            }
        };
        for d in &info.depends {
            self.visit(d, true)?;
        }
        for d in &info.softdep_pre {
            self.visit(d, false)?;
        }
        self.visiting.remove(&name);
        self.order.push(name);
        Ok(())
    }
}

/// The module files to load for `wanted`, each after its dependencies. A name that is
/// built in is skipped; one that is neither built in nor a module is an error.
pub fn resolve(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>, ImageError> {
    let files = index(modules_dir)?;
    let builtin = builtins(modules_dir);
    let mut r = Resolver {
        files: &files,
        builtin: &builtin,
        infos: HashMap::new(),
        aliases: None,
        order: Vec::new(),
        visiting: BTreeSet::new(),
    };
    for w in wanted {
        r.visit(w, true)?;
    }
    Ok(r.order
        .iter()
        .filter_map(|n| files.get(n).cloned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 relocatable with a `.modinfo` section holding `entries`.
    fn fake_module(entries: &[&str]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.modinfo\0".to_vec();
        let mut modinfo = Vec::new();
        for e in entries {
            modinfo.extend_from_slice(e.as_bytes());
            modinfo.push(0);
        }
        let mut out = vec![0u8; 64];
        out[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let str_off = out.len() as u64;
        out.extend(&shstrtab);
        let info_off = out.len() as u64;
        out.extend(&modinfo);
        let shoff = out.len() as u64;
        out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        out[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        let mut sh = |name: u32, off: u64, len: u64| {
            let mut s = vec![0u8; 64];
            s[..4].copy_from_slice(&name.to_le_bytes());
            s[0x18..0x20].copy_from_slice(&off.to_le_bytes());
            s[0x20..0x28].copy_from_slice(&len.to_le_bytes());
            out.extend(s);
        };
        sh(0, 0, 0);
        sh(1, str_off, shstrtab.len() as u64);
        sh(11, info_off, modinfo.len() as u64);
        out
    }

    #[test]
    fn dependencies_softdeps_through_aliases_and_builtins_resolve_in_load_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = dir.path().join("kernel/fs");
        std::fs::create_dir_all(&kernel).expect("dirs");
        let put = |name: &str, entries: &[&str]| {
            std::fs::write(kernel.join(format!("{name}.ko")), fake_module(entries))
                .expect("module");
        };
        put(
            "ext4",
            &[
                "license=GPL",
                "depends=jbd2,mbcache,crc16",
                "softdep=pre: crc32c",
            ],
        );
        put("jbd2", &["depends="]);
        put("mbcache", &["depends="]);
        put(
            "crc32c_generic",
            &["alias=crypto-crc32c", "alias=crc32c", "depends="],
        );
        put("crc32c-intel", &["alias=crc32c", "depends="]);
        put("virtio_blk", &["depends=virtio,virtio_ring"]);
        put("virtio_ring", &["depends="]);
        put("virtio", &["depends="]);
        // crc16 is built in.
        std::fs::write(dir.path().join("modules.builtin"), "kernel/lib/crc16.ko\n")
            .expect("builtin");

        let info = read_modinfo(&kernel.join("ext4.ko")).expect("modinfo");
        assert_eq!(info.depends, ["jbd2", "mbcache", "crc16"]);
        assert_eq!(info.softdep_pre, ["crc32c"]);

        let order = resolve(dir.path(), &["virtio_blk", "ext4"]).expect("resolve");
        let names: Vec<String> = order
            .iter()
            .map(|p| {
                p.file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "virtio",
                "virtio_ring",
                "virtio_blk",
                "jbd2",
                "mbcache",
                "crc32c_generic",
                "ext4"
            ]
        );

        let err = resolve(dir.path(), &["nonexistent_module"]).expect_err("missing");
        assert!(err.to_string().contains("nonexistent_module"), "{err}");
    }
}
