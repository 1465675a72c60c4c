//! A Debian root filesystem made by debootstrap from Debian's package mirror, cached by
//! what it contains: the same request on the same machine is built once.
//!
//! The tree is written under a temporary name and renamed into place only when
//! debootstrap succeeded, so an interrupted build is never mistaken for a finished one;
//! the next build removes the leftover and starts again. Downloaded packages are kept
//! in a shared `debs/` directory beside the trees, so a second package set re-downloads
//! only what it adds.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha1::{Digest, Sha1};

use crate::ImageError;

/// The file in a finished tree that says it is complete and what it was built from.
pub const COMPLETE_MARKER: &str = ".safe-coder-rootfs";

/// What goes into a root filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootfsRequest {
    /// Debian release, e.g. `bookworm`.
    pub suite: String,
    /// Package mirror, e.g. `http://deb.debian.org/debian`.
    pub mirror: String,
    /// Packages on top of debootstrap's `minbase` variant.
    pub packages: Vec<String>,
}

/// What the agent's commands need in every image: a shell, coreutils, git and Python.
const MINIMAL_PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "git",
    "python3",
    "procps",
    "ca-certificates",
];

impl RootfsRequest {
    /// A shell, coreutils, git, Python and procps: enough for the agent's tools and the
    /// test suites, and quick to build.
    pub fn minimal() -> Self {
        RootfsRequest {
            suite: default_suite(),
            mirror: "http://deb.debian.org/debian".into(),
            packages: MINIMAL_PACKAGES.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// [`minimal`](Self::minimal) plus compilers and make (`build-essential`): what a
    /// project's build usually needs. The default for users.
    pub fn standard() -> Self {
        let mut request = Self::minimal();
        request.packages.push("build-essential".into());
        request
    }

    /// Adds packages (deduplicated); the order never changes the result.
    pub fn with_packages<I, S>(mut self, extra: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for p in extra {
            let p = p.into();
            if !self.packages.contains(&p) {
                self.packages.push(p);
            }
        }
        self
    }

    /// A short, stable name for this content: the same suite, mirror and package set
    /// (in any order) give the same key.
    pub fn cache_key(&self) -> String {
        let mut packages = self.packages.clone();
        packages.sort();
        packages.dedup();
        let mut hasher = Sha1::new();
        hasher.update(self.suite.as_bytes());
        hasher.update(b"\0");
        hasher.update(self.mirror.as_bytes());
        for p in &packages {
            hasher.update(b"\0");
            hasher.update(p.as_bytes());
        }
        let digest = hasher.finalize();
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn describe(&self) -> String {
        let mut packages = self.packages.clone();
        packages.sort();
        packages.dedup();
        format!(
            "suite={}\nmirror={}\npackages={}\n",
            self.suite,
            self.mirror,
            packages.join(",")
        )
    }
}

/// The host's Debian release when it is Debian (so the image matches the host's
/// packages), else bookworm.
fn default_suite() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            let is_debian = text.lines().any(|l| l.trim() == "ID=debian");
            let codename = text
                .lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
                .map(|c| c.trim_matches('"').to_string());
            codename.filter(|c| is_debian && !c.is_empty())
        })
        .unwrap_or_else(|| "bookworm".into())
}

/// Where the tree for `request` lives (or will) under `cache_dir`.
pub fn rootfs_dir(request: &RootfsRequest, cache_dir: &Path) -> PathBuf {
    cache_dir.join(format!("rootfs-{}", request.cache_key()))
}

/// The finished tree for `request` if it was built already.
pub fn find_rootfs(request: &RootfsRequest, cache_dir: &Path) -> Option<PathBuf> {
    let dir = rootfs_dir(request, cache_dir);
    dir.join(COMPLETE_MARKER).is_file().then_some(dir)
}

/// Builds (or finds) the root filesystem for `request` under `cache_dir` and returns
/// its directory. `progress` receives debootstrap's output lines as they come.
pub fn build_rootfs(
    request: &RootfsRequest,
    cache_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, ImageError> {
    if let Some(done) = find_rootfs(request, cache_dir) {
        progress(&format!("using the root filesystem in {}", done.display()));
        return Ok(done);
    }
    let debootstrap = find_tool("debootstrap").ok_or(ImageError::ToolMissing {
        tool: "debootstrap",
        package: "debootstrap",
    })?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ImageError::NeedsRoot);
    }
    std::fs::create_dir_all(cache_dir).map_err(ImageError::io(cache_dir))?;
    let cache_dir = cache_dir
        .canonicalize()
        .map_err(ImageError::io(cache_dir))?;
    let dest = rootfs_dir(request, &cache_dir);
    let partial = cache_dir.join(format!(".rootfs-{}.partial", request.cache_key()));
    if partial.exists() {
        progress(&format!(
            "removing an unfinished build in {}",
            partial.display()
        ));
        std::fs::remove_dir_all(&partial).map_err(ImageError::io(&partial))?;
    }
    let debs = cache_dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(ImageError::io(&debs))?;

    let mut packages = request.packages.clone();
    packages.sort();
    packages.dedup();
    let mut command = Command::new(debootstrap);
    command
        .arg("--variant=minbase")
        .arg(format!("--cache-dir={}", debs.display()));
    if !packages.is_empty() {
        command.arg(format!("--include={}", packages.join(",")));
    }
    command
        .arg(&request.suite)
        .arg(&partial)
        .arg(&request.mirror)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    progress(&format!(
        "debootstrap {} from {} with {} (a few minutes, once)",
        request.suite,
        request.mirror,
        packages.join(", ")
    ));
    let what = format!(
        "debootstrap of {} into {}",
        request.suite,
        partial.display()
    );
    let mut child = command.spawn().map_err(ImageError::io(&partial))?;
    let mut tail: Vec<String> = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            progress(&line);
            tail.push(line);
            if tail.len() > 20 {
                tail.remove(0);
            }
        }
    }
    let status = child.wait().map_err(ImageError::io(&partial))?;
    if !status.success() {
        // debootstrap keeps its own log inside the target; its end says why.
        if let Ok(log) = std::fs::read_to_string(partial.join("debootstrap/debootstrap.log")) {
            let lines: Vec<&str> = log.lines().collect();
            let start = lines.len().saturating_sub(10);
            tail.extend(lines[start..].iter().map(|l| l.to_string()));
        }
        return Err(ImageError::Command {
            what,
            status: status.to_string(),
            output: tail.join("\n"),
        });
    }
    // The packages are cached beside the trees already; a copy inside each tree only
    // makes images bigger.
    let archives = partial.join("var/cache/apt/archives");
    if let Ok(entries) = std::fs::read_dir(&archives) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "deb") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let marker = partial.join(COMPLETE_MARKER);
    std::fs::write(&marker, request.describe()).map_err(ImageError::io(&marker))?;
    if dest.exists() {
        // A tree without its marker: an older interrupted layout. Replace it.
        std::fs::remove_dir_all(&dest).map_err(ImageError::io(&dest))?;
    }
    std::fs::rename(&partial, &dest).map_err(ImageError::io(&dest))?;
    progress(&format!("root filesystem ready in {}", dest.display()));
    Ok(dest)
}

/// A copy of the tree `src` at `dst` made of hard links (no data copied), or a real copy
/// (`cp -a`) when the two are on different filesystems. New files may be added to the
/// copy freely; a file that must change is unlinked first, or the cached tree changes too.
pub(crate) fn link_tree(src: &Path, dst: &Path) -> Result<(), ImageError> {
    let linked = Command::new("cp")
        .arg("-a")
        .arg("-l")
        .arg(src)
        .arg(dst)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if linked {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(dst);
    let out = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .stdin(Stdio::null())
        .output()
        .map_err(ImageError::io(dst))?;
    if out.status.success() {
        return Ok(());
    }
    Err(ImageError::Command {
        what: format!("copying {} to {}", src.display(), dst.display()),
        status: out.status.to_string(),
        output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_ignores_package_order_and_duplicates() {
        let a = RootfsRequest::minimal().with_packages(["jq", "make"]);
        let b = RootfsRequest::minimal().with_packages(["make", "jq", "make"]);
        assert_eq!(a.cache_key(), b.cache_key());
        assert_ne!(a.cache_key(), RootfsRequest::minimal().cache_key());
        assert_ne!(
            RootfsRequest::minimal().cache_key(),
            RootfsRequest::standard().cache_key()
        );
    }

    #[test]
    fn a_finished_tree_is_reused_without_running_debootstrap() {
        let cache = tempfile::tempdir().expect("tempdir");
        let request = RootfsRequest::minimal();
        let dir = rootfs_dir(&request, cache.path());
        std::fs::create_dir_all(dir.join("etc")).expect("mkdir");
        std::fs::write(dir.join(COMPLETE_MARKER), request.describe()).expect("marker");
        let mut lines = Vec::new();
        let found = build_rootfs(&request, cache.path(), &mut |l| lines.push(l.to_string()))
            .expect("reused");
        assert_eq!(found, dir);
        assert!(
            lines[0].starts_with("using the root filesystem"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_tree_without_its_marker_is_not_finished() {
        let cache = tempfile::tempdir().expect("tempdir");
        let request = RootfsRequest::minimal();
        std::fs::create_dir_all(rootfs_dir(&request, cache.path()).join("etc")).expect("mkdir");
        assert_eq!(find_rootfs(&request, cache.path()), None);
    }

    #[test]
    fn the_suite_is_a_debian_codename() {
        let suite = RootfsRequest::minimal().suite;
        assert!(
            !suite.is_empty() && suite.chars().all(|c| c.is_ascii_lowercase()),
            "{suite}"
        );
    }
}
