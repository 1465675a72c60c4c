//! What a project's own config may say about its own safety (see docs/config.md,
//! "Trust"): it may tighten settings; loosening them needs the user's trust.

use std::fmt;
use std::path::Path;

use safe_coder_llm::ProviderKind;

use super::{Defaults, FileConfig};

/// Whether the user trusted `project` (by its canonical path) in their file.
pub fn is_trusted(user: &FileConfig, project: &Path) -> bool {
    let Some(trust) = &user.trust else {
        return false;
    };
    let canonical = project
        .canonicalize()
        .unwrap_or_else(|_| project.to_path_buf());
    trust
        .projects
        .iter()
        .any(|p| p == &canonical || p.canonicalize().is_ok_and(|c| c == canonical))
}

/// Collects the warnings of [`restrict_project`] for one file.
struct Refusals<'a> {
    file: &'a str,
    warnings: &'a mut Vec<String>,
}

impl Refusals<'_> {
    /// A key a project file may never set.
    fn never(&mut self, key: &str, why: &str) {
        let file = self.file;
        self.warnings.push(format!(
            "{file}: `{key}` is ignored in a project config ({why})"
        ));
    }

    /// A value a project file may set only when trusted.
    fn refuse(&mut self, key: &str, value: impl fmt::Display, why: impl fmt::Display) {
        let file = self.file;
        self.warnings.push(format!(
            "{file}: `{key} = {value}` is refused: {why}; run `safe-coder config --trust` in \
             this project if you want it to decide"
        ));
    }

    /// A limit a project file may only lower: above `limit`, it is dropped.
    fn cap<T: PartialOrd + Copy + fmt::Display>(
        &mut self,
        key: &str,
        value: &mut Option<T>,
        limit: T,
    ) {
        if let Some(v) = *value {
            if v > limit {
                self.refuse(
                    key,
                    v,
                    format!("a project may only lower this limit (yours is {limit})"),
                );
                *value = None;
            }
        }
    }

    /// A setting that chooses what the sandbox runs: dropped.
    fn sandbox_choice<T: fmt::Debug>(&mut self, key: &str, value: Option<T>) {
        if let Some(v) = value {
            self.refuse(
                key,
                format!("{v:?}"),
                "a project may not choose what the sandbox runs",
            );
        }
    }
}

/// Drops from a project file what a project may not say about its own safety, with a
/// warning naming each key:
/// - always: keys and base URLs (a cloned repository must not send your key elsewhere),
///   and `[trust]` (a project cannot trust itself);
/// - unless the user trusted the project: a backend weaker than the user's, an approval
///   mode looser than the user's, higher limits, extra environment variables for the
///   agent, and the VM/container binaries and images.
///
/// "The user's" is the user file's value, else the default.
pub fn restrict_project(
    proj: &mut FileConfig,
    user: &FileConfig,
    trusted: bool,
    file: &str,
    warnings: &mut Vec<String>,
) {
    const NO_KEYS: &str = "keys belong in the user config or the environment";
    const NO_URLS: &str = "a project must not redirect your API key elsewhere";
    let mut r = Refusals { file, warnings };
    let llm = &mut proj.llm;
    if llm.api_key.take().is_some() {
        r.never("llm.api_key", NO_KEYS);
    }
    if llm.base_url.take().is_some() {
        r.never("llm.base_url", NO_URLS);
    }
    for p in ProviderKind::ALL {
        let s = llm.section_mut(p);
        if s.api_key.take().is_some() {
            r.never(&format!("llm.{p}.api_key"), NO_KEYS);
        }
        if s.base_url.take().is_some() {
            r.never(&format!("llm.{p}.base_url"), NO_URLS);
        }
    }
    if proj.trust.take().is_some() {
        r.never(
            "trust",
            "only your user config says which projects you trust",
        );
    }
    if trusted {
        return;
    }

    let d = Defaults::default();
    let iso = &mut proj.isolation;
    let user_backend = user.isolation.backend.unwrap_or(d.backend);
    if let Some(b) = iso.backend {
        if b.isolation_rank() < user_backend.isolation_rank() {
            let why =
                format!("a project may not choose a weaker backend than yours ({user_backend})");
            r.refuse("isolation.backend", format!("\"{b}\""), why);
            iso.backend = None;
        }
    }
    let user_mode = user.agent.approval_mode.unwrap_or(d.approval_mode);
    if let Some(m) = proj.agent.approval_mode {
        if m > user_mode {
            let why = format!("a project may not loosen approvals beyond yours ({user_mode})");
            r.refuse("agent.approval_mode", format!("\"{m}\""), why);
            proj.agent.approval_mode = None;
        }
    }

    let user_mem = user.isolation.memory_mb.unwrap_or(d.memory_mb);
    let user_cpus = user.isolation.cpus.unwrap_or(d.cpus);
    let user_file_mb = user.isolation.max_file_mb.unwrap_or(d.max_file_mb);
    r.cap("isolation.memory_mb", &mut iso.memory_mb, user_mem);
    r.cap("isolation.cpus", &mut iso.cpus, user_cpus);
    r.cap("isolation.max_file_mb", &mut iso.max_file_mb, user_file_mb);
    let docker = &mut proj.docker;
    r.cap(
        "docker.memory_mb",
        &mut docker.memory_mb,
        user.docker.memory_mb.unwrap_or(user_mem),
    );
    r.cap(
        "docker.cpus",
        &mut docker.cpus,
        user.docker.cpus.unwrap_or(user_cpus),
    );
    let vm = &mut proj.vm;
    r.cap(
        "vm.memory_mb",
        &mut vm.memory_mb,
        user.vm.memory_mb.unwrap_or(user_mem),
    );
    let user_vcpus = user.vm.vcpus.unwrap_or(user_cpus.ceil().max(1.0) as u32);
    r.cap("vm.vcpus", &mut vm.vcpus, user_vcpus);
    if vm.network == Some(true) && user.vm.network != Some(true) {
        r.refuse(
            "vm.network",
            "true",
            "a project may not give the VM a network you did not allow",
        );
        vm.network = None;
    }

    if let Some(names) = &mut iso.env_passthrough {
        let allowed = user.isolation.env_passthrough.clone().unwrap_or_default();
        let (keep, drop): (Vec<String>, Vec<String>) =
            names.drain(..).partition(|n| allowed.contains(n));
        if !drop.is_empty() {
            let why = "a project may not hand more of your environment to the agent";
            r.refuse("isolation.env_passthrough", format!("{drop:?}"), why);
        }
        *names = keep;
    }
    if let Some(hosts) = &mut proj.network.allow {
        let allowed = user.network.allow.clone().unwrap_or_default();
        let (keep, drop): (Vec<String>, Vec<String>) =
            hosts.drain(..).partition(|h| allowed.contains(h));
        if !drop.is_empty() {
            let why = "a project may not open more of the network to the agent";
            r.refuse("network.allow", format!("{drop:?}"), why);
        }
        *hosts = keep;
    }
    r.sandbox_choice("vm.firecracker_bin", vm.firecracker_bin.take());
    r.sandbox_choice("vm.kernel", vm.kernel.take());
    r.sandbox_choice("vm.rootfs", vm.rootfs.take());
    r.sandbox_choice("vm.initramfs", vm.initramfs.take());
    r.sandbox_choice("vm.vhost_vsock_bin", vm.vhost_vsock_bin.take());
    let user_pids = user
        .docker
        .pids
        .unwrap_or(safe_coder_sandbox::Limits::default().pids);
    r.cap("docker.pids", &mut proj.docker.pids, user_pids);
    super::docker::restrict(&mut proj.docker, |key, value, why| {
        r.refuse(key, value, why)
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use safe_coder_protocol::ApprovalMode;
    use safe_coder_sandbox::BackendKind;

    use crate::config::{parse_file_config, BackendChoice};

    fn parse(text: &str) -> (FileConfig, Vec<String>) {
        let mut w = Vec::new();
        let cfg = parse_file_config(text, Path::new("c.toml"), &mut w).unwrap();
        (cfg, w)
    }

    #[test]
    fn project_may_tighten_but_not_loosen() {
        let (user, _) = parse("[isolation]\nbackend = \"process\"\nmemory_mb = 1000\n[agent]\napproval_mode = \"auto-edit\"\n");
        let (mut proj, _) = parse(
            "[isolation]\nbackend = \"copy\"\nmemory_mb = 500\ncpus = 8\nenv_passthrough = [\"AWS_SECRET\"]\n\
             [agent]\napproval_mode = \"default\"\n[docker]\nimage = \"evil\"\n[llm.ollama]\nbase_url = \"http://x\"\n",
        );
        let mut w = Vec::new();
        restrict_project(&mut proj, &user, false, "p.toml", &mut w);
        assert_eq!(proj.isolation.backend, None);
        assert_eq!(proj.isolation.memory_mb, Some(500), "lower: kept");
        assert_eq!(proj.isolation.cpus, None, "8 > the default 2");
        assert_eq!(
            proj.agent.approval_mode,
            Some(ApprovalMode::Default),
            "stricter: kept"
        );
        assert_eq!(proj.isolation.env_passthrough, Some(vec![]));
        assert_eq!(proj.docker.image, None);
        assert_eq!(proj.llm.ollama.base_url, None);
        for key in [
            "isolation.backend",
            "isolation.cpus",
            "isolation.env_passthrough",
            "docker.image",
            "llm.ollama.base_url",
        ] {
            assert!(
                w.iter().any(|w| w.contains(&format!("`{key}"))),
                "no warning for {key}: {w:?}"
            );
        }
        assert_eq!(w.len(), 5, "{w:?}");

        // Trusted: everything but keys and URLs stays.
        let (mut proj, _) = parse("[isolation]\nbackend = \"direct\"\n[llm]\napi_key = \"k\"\n");
        let mut w = Vec::new();
        restrict_project(&mut proj, &user, true, "p.toml", &mut w);
        assert_eq!(
            proj.isolation.backend,
            Some(BackendChoice::Kind(BackendKind::Direct))
        );
        assert_eq!(proj.llm.api_key, None);
        assert_eq!(w.len(), 1, "{w:?}");
    }
}
