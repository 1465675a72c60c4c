//! The guest kernel: Debian's cloud kernel package (`linux-image-cloud-amd64`), fetched
//! with `apt-get download` into the cache, unpacked with `dpkg-deb`, and its ELF
//! `vmlinux` taken out of the bzImage (QEMU's microvm and Firecracker boot the ELF
//! directly, skipping the in-guest decompressor).
//!
//! Debian compresses the kernel with LZ4 ("legacy" frame format). The bzImage's setup
//! header says where the payload is (`payload_offset`, `payload_length`), and the build
//! appends the decompressed size as its last 4 bytes, so the result checks itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::ImageError;

/// The metapackage that always depends on the current cloud kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

fn kernel_error(msg: impl Into<String>) -> ImageError {
    ImageError::Kernel(msg.into())
}

fn run(cmd: &mut Command, what: &str) -> Result<String, ImageError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageError::Command {
            what: what.to_string(),
            status: "not started".into(),
            output: e.to_string(),
        })?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        return Err(ImageError::Command {
            what: what.to_string(),
            status: out.status.to_string(),
            output: text.trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The versioned kernel package the metapackage depends on now (e.g.
/// `linux-image-6.1.0-57-cloud-amd64`), from the local apt lists.
pub fn current_kernel_package() -> Result<String, ImageError> {
    let text = run(
        Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]),
        "apt-cache depends linux-image-cloud-amd64 (run `apt-get update` if the package is unknown)",
    )?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit))
        .map(str::to_string)
        .ok_or_else(|| {
            kernel_error(format!(
                "{KERNEL_METAPACKAGE} depends on no versioned kernel; run `apt-get update` and build again"
            ))
        })
}

/// The unpacked kernel package: where its files are and what version it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelPackage {
    pub package: String,
    /// The `.deb` file name (package, version, architecture).
    pub deb: String,
    /// `uname -r` of the kernel, the directory name under `lib/modules`.
    pub release: String,
    /// The unpacked package.
    pub root: PathBuf,
}

impl KernelPackage {
    pub fn bzimage(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.release))
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// Downloads (once) and unpacks (once) `package` under `cache_dir/vm-kernel`.
pub fn fetch(
    package: &str,
    cache_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<KernelPackage, ImageError> {
    let dir = cache_dir.join("vm-kernel");
    std::fs::create_dir_all(&dir).map_err(ImageError::io(&dir))?;
    let find_deb = || -> Option<String> {
        let prefix = format!("{package}_");
        let mut debs: Vec<String> = std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            .collect();
        debs.sort();
        debs.pop()
    };
    let deb = match find_deb() {
        Some(d) => d,
        None => {
            progress(&format!("downloading {package} (apt-get download)"));
            run(
                Command::new("apt-get")
                    .args(["download", "-qq", package])
                    .current_dir(&dir),
                &format!("apt-get download {package}"),
            )?;
            find_deb().ok_or_else(|| {
                kernel_error(format!(
                    "apt-get download {package} left no .deb in {}",
                    dir.display()
                ))
            })?
        }
    };
    let root = dir.join(deb.trim_end_matches(".deb"));
    let done = root.join(".unpacked");
    if !done.is_file() {
        progress(&format!("unpacking {deb}"));
        let partial = dir.join(format!(".{}.partial", deb.trim_end_matches(".deb")));
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(ImageError::io(&partial))?;
        }
        run(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(dir.join(&deb))
                .arg(&partial),
            &format!("dpkg-deb -x {deb}"),
        )?;
        std::fs::write(partial.join(".unpacked"), b"").map_err(ImageError::io(&partial))?;
        if root.exists() {
            std::fs::remove_dir_all(&root).map_err(ImageError::io(&root))?;
        }
        std::fs::rename(&partial, &root).map_err(ImageError::io(&root))?;
    }
    let modules = root.join("lib/modules");
    let release = std::fs::read_dir(&modules)
        .map_err(ImageError::io(&modules))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .next()
        .ok_or_else(|| kernel_error(format!("{deb} has no lib/modules/<release>")))?;
    Ok(KernelPackage {
        package: package.to_string(),
        deb,
        release,
        root,
    })
}

/// The ELF `vmlinux` inside a bzImage whose payload is LZ4-compressed.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, ImageError> {
    let u32_at = |off: usize| -> Option<u32> {
        bzimage
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return Err(kernel_error(
            "the kernel image is not a bzImage (no HdrS header)",
        ));
    }
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let (Some(offset), Some(length)) = (u32_at(0x248), u32_at(0x24c)) else {
        return Err(kernel_error("the bzImage header is truncated"));
    };
    let start = pm_start + offset as usize;
    let payload = bzimage
        .get(start..start + length as usize)
        .ok_or_else(|| kernel_error("the bzImage payload lies outside the file"))?;
    if payload.len() < 8 || payload[..4] != LZ4_LEGACY_MAGIC {
        return Err(kernel_error(
            "the kernel payload is not LZ4-compressed; use Debian's cloud kernel (linux-image-cloud-amd64)",
        ));
    }
    let (stream, size) = payload.split_at(payload.len() - 4);
    let expected = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize;
    let out = lz4_legacy(stream, expected)?;
    if out.len() != expected {
        return Err(kernel_error(format!(
            "the kernel decompressed to {} bytes, not the {expected} its image announces",
            out.len()
        )));
    }
    if !out.starts_with(b"\x7fELF") {
        return Err(kernel_error("the decompressed kernel is not an ELF file"));
    }
    Ok(out)
}

const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];

/// Decodes an LZ4 legacy-format stream: the magic, then blocks of (u32 LE compressed
/// size, LZ4 block), each decompressing to at most 8 MiB on its own.
fn lz4_legacy(stream: &[u8], size_hint: usize) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::with_capacity(size_hint);
    let mut i = 0;
    while i < stream.len() {
        if stream.get(i..i + 4) == Some(&LZ4_LEGACY_MAGIC[..]) {
            i += 4;
            continue;
        }
        let len = stream
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| kernel_error("the LZ4 stream is truncated"))?;
        i += 4;
        let block = stream
            .get(i..i + len)
            .ok_or_else(|| kernel_error("an LZ4 block runs past the end of the payload"))?;
        lz4_block(block, &mut out)
            .map_err(|e| kernel_error(format!("the LZ4 payload is corrupt ({e})")))?;
        i += len;
    }
    Ok(out)
}

/// Decodes one LZ4 block, appending to `out`. Matches may reach only into this block.
fn lz4_block(src: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    let base = out.len();
    let mut i = 0;
    let byte = |i: usize| src.get(i).copied().ok_or("truncated block");
    loop {
        let token = byte(i)?;
        i += 1;
        let mut literals = usize::from(token >> 4);
        if literals == 15 {
            loop {
                let b = byte(i)?;
                i += 1;
                literals += usize::from(b);
                if b != 255 {
                    break;
                }
            }
        }
        let lit = src.get(i..i + literals).ok_or("literals past the end")?;
        out.extend_from_slice(lit);
        i += literals;
        if i == src.len() {
            return Ok(());
        }
        let offset = usize::from(byte(i)?) | usize::from(byte(i + 1)?) << 8;
        i += 2;
        if offset == 0 || offset > out.len() - base {
            return Err("a match before the start of the block");
        }
        let mut len = usize::from(token & 15);
        if len == 15 {
            loop {
                let b = byte(i)?;
                i += 1;
                len += usize::from(b);
                if b != 255 {
                    break;
                }
            }
        }
        len += 4;
        let from = out.len() - offset;
        if offset >= len {
            out.extend_from_within(from..from + len);
        } else {
            // Overlapping: the match repeats bytes it is writing.
            for k in 0..len {
                let b = out[from + k];
                out.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lz4_blocks_decode_literals_matches_and_overlaps() {
        // "abcabcabcabcX": literals "abc", then a 9-byte match at offset 3
        // (overlapping), then the last literal "X".
        let block = [0x35, b'a', b'b', b'c', 3, 0, 0x10, b'X'];
        let mut out = Vec::new();
        lz4_block(&block, &mut out).expect("decodes");
        assert_eq!(out, b"abcabcabcabcX");
        // Long literal run (15 + 255 + 2 = 272 bytes) and a long match.
        let mut block = vec![0xff, 255, 2];
        block.extend(std::iter::repeat_n(b'z', 272));
        block.extend([1, 0, 10]); // offset 1, match length 15 + 10 + 4 = 29
        block.push(0x10);
        block.push(b'!');
        let mut out = Vec::new();
        lz4_block(&block, &mut out).expect("decodes");
        assert_eq!(out.len(), 272 + 29 + 1);
        assert!(out[..301].iter().all(|&b| b == b'z') && out[301] == b'!');
    }

    #[test]
    fn corrupt_lz4_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        assert!(
            lz4_block(&[0x15, b'a', 9, 0], &mut out).is_err(),
            "offset past start"
        );
        assert!(
            lz4_block(&[0xf0], &mut Vec::new()).is_err(),
            "truncated length"
        );
        assert!(
            lz4_block(&[0x50, b'a'], &mut Vec::new()).is_err(),
            "short literals"
        );
    }

    fn bzimage_with(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 2 * 512];
        img[0x1f1] = 1; // one setup sector: protected-mode code at 1024
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend(std::iter::repeat_n(0u8, 16));
        img.extend_from_slice(payload);
        img.extend_from_slice(b"trailing setup data");
        img
    }

    #[test]
    fn a_bzimage_payload_is_found_by_its_header_and_checked_by_its_size() {
        let elf = b"\x7fELFhello";
        let mut block = vec![0x90];
        block.extend_from_slice(elf);
        let mut payload = LZ4_LEGACY_MAGIC.to_vec();
        payload.extend((block.len() as u32).to_le_bytes());
        payload.extend(&block);
        payload.extend((elf.len() as u32).to_le_bytes());
        assert_eq!(
            extract_vmlinux(&bzimage_with(&payload)).expect("extracts"),
            elf
        );

        let n = payload.len();
        payload[n - 4..].copy_from_slice(&100u32.to_le_bytes());
        let err = extract_vmlinux(&bzimage_with(&payload)).expect_err("size mismatch");
        assert!(err.to_string().contains("not the 100"), "{err}");
        assert!(extract_vmlinux(b"not a kernel at all, far too short........").is_err());
    }
}
