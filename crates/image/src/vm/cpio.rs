//! A cpio archive in the "newc" format, the one the kernel unpacks as an initramfs.

use std::io::{self, Write};

/// Writes entries one after the other; [`CpioWriter::finish`] adds the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

/// What one entry is.
pub enum Kind<'a> {
    Dir,
    File(&'a [u8]),
    Symlink(&'a str),
    /// A character device (major, minor), e.g. `/dev/console`.
    CharDev(u32, u32),
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    fn header(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) -> io::Result<()> {
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0, // mtime: fixed, so the same inputs give the same archive
            size as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.ino += 1;
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    /// Adds `name` (relative, no leading `/`) with permission bits `perm`.
    pub fn add(&mut self, name: &str, perm: u32, kind: Kind<'_>) -> io::Result<()> {
        match kind {
            Kind::Dir => self.header(name, 0o040000 | perm, 0, (0, 0)),
            Kind::File(data) => {
                self.header(name, 0o100000 | perm, data.len(), (0, 0))?;
                self.put(data)?;
                self.pad()
            }
            Kind::Symlink(target) => {
                self.header(name, 0o120000 | 0o777, target.len(), (0, 0))?;
                self.put(target.as_bytes())?;
                self.pad()
            }
            Kind::CharDev(major, minor) => self.header(name, 0o020000 | perm, 0, (major, minor)),
        }
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses what the writer wrote, the way the kernel's unpacker reads it.
    fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut pos = 0usize;
        loop {
            assert_eq!(&b[..6], b"070701", "magic at {pos}");
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).expect("hex"),
                    16,
                )
                .expect("hex")
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = String::from_utf8(b[110..110 + namesize - 1].to_vec()).expect("name");
            let data_start = (110 + namesize).div_ceil(4) * 4;
            let data = b[data_start..data_start + size].to_vec();
            let next = (data_start + size).div_ceil(4) * 4;
            pos += next;
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn entries_round_trip_through_the_newc_layout() {
        let mut w = CpioWriter::new(Vec::new());
        w.add("dev", 0o755, Kind::Dir).expect("dir");
        w.add("dev/console", 0o600, Kind::CharDev(5, 1))
            .expect("dev");
        w.add("init", 0o755, Kind::File(b"#!x")).expect("file");
        w.add("lib/x.ko", 0o644, Kind::File(b"12345"))
            .expect("file");
        w.add("bin/sh", 0o777, Kind::Symlink("busybox"))
            .expect("link");
        let bytes = w.finish().expect("finish");
        assert_eq!(bytes.len() % 4, 0);
        let entries = parse(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "init", "lib/x.ko", "bin/sh"]);
        assert_eq!(entries[1].1, 0o020600);
        assert_eq!(
            (entries[2].1, entries[2].2.as_slice()),
            (0o100755, &b"#!x"[..])
        );
        assert_eq!(entries[3].2, b"12345");
        assert_eq!(
            (entries[4].1, entries[4].2.as_slice()),
            (0o120777, &b"busybox"[..])
        );
    }
}
