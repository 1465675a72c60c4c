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
    let d = Defaults::default();
    let never = |key: &str, why: &str, warnings: &mut Vec<String>| {
        warnings.push(format!(
            "{file}: `{key}` is ignored in a project config ({why})"
        ));
    };
    let llm = &mut proj.llm;
    if llm.api_key.take().is_some() {
        never(
            "llm.api_key",
            "keys belong in the user config or the environment",
            warnings,
        );
    }
    if llm.base_url.take().is_some() {
        never(
            "llm.base_url",
            "a project must not redirect your API key elsewhere",
            warnings,
        );
    }
    for p in ProviderKind::ALL {
        let s = llm.section_mut(p);
        if s.api_key.take().is_some() {
            never(
                &format!("llm.{p}.api_key"),
                "keys belong in the user config or the environment",
                warnings,
            );
        }
        if s.base_url.take().is_some() {
            never(
                &format!("llm.{p}.base_url"),
                "a project must not redirect your API key elsewhere",
                warnings,
            );
        }
    }
    if proj.trust.take().is_some() {
        never(
            "trust",
            "only your user config says which projects you trust",
            warnings,
        );
    }
    if trusted {
        return;
    }

    let refuse = |key: &str, value: String, why: String, warnings: &mut Vec<String>| {
        warnings.push(format!(
            "{file}: `{key} = {value}` is refused: {why}; run `safe-coder config --trust` in this project if you want it to decide"
        ));
    };
    let iso = &mut proj.isolation;
    let user_backend = user.isolation.backend.unwrap_or(d.backend);
    if let Some(b) = iso.backend {
        if b.isolation_rank() < user_backend.isolation_rank() {
            refuse(
                "isolation.backend",
                format!("\"{b}\""),
                format!("a project may not choose a weaker backend than yours ({user_backend})"),
                warnings,
            );
            iso.backend = None;
        }
    }
    let user_mode = user.agent.approval_mode.unwrap_or(d.approval_mode);
    if let Some(m) = proj.agent.approval_mode {
        if m > user_mode {
            refuse(
                "agent.approval_mode",
                format!("\"{m}\""),
                format!("a project may not loosen approvals beyond yours ({user_mode})"),
                warnings,
            );
            proj.agent.approval_mode = None;
        }
    }
    /// Refuses a project's `key = value`, with the reason.
    type Refuse<'a> = dyn Fn(&str, String, String, &mut Vec<String>) + 'a;
    fn cap<T: PartialOrd + Copy + fmt::Display>(
        key: &str,
        value: &mut Option<T>,
        limit: T,
        warnings: &mut Vec<String>,
        refuse: &Refuse<'_>,
    ) {
        if let Some(v) = *value {
            if v > limit {
                refuse(
                    key,
                    v.to_string(),
                    format!("a project may only lower this limit (yours is {limit})"),
                    warnings,
                );
                *value = None;
            }
        }
    }
    let user_mem = user.isolation.memory_mb.unwrap_or(d.memory_mb);
    let user_cpus = user.isolation.cpus.unwrap_or(d.cpus);
    cap(
        "isolation.memory_mb",
        &mut iso.memory_mb,
        user_mem,
        warnings,
        &refuse,
    );
    cap(
        "isolation.cpus",
        &mut iso.cpus,
        user_cpus,
        warnings,
        &refuse,
    );
    cap(
        "isolation.max_file_mb",
        &mut iso.max_file_mb,
        user.isolation.max_file_mb.unwrap_or(d.max_file_mb),
        warnings,
        &refuse,
    );
    cap(
        "docker.memory_mb",
        &mut proj.docker.memory_mb,
        user.docker.memory_mb.unwrap_or(user_mem),
        warnings,
        &refuse,
    );
    cap(
        "docker.cpus",
        &mut proj.docker.cpus,
        user.docker.cpus.unwrap_or(user_cpus),
        warnings,
        &refuse,
    );
    cap(
        "vm.mem_size_mib",
        &mut proj.vm.mem_size_mib,
        user.vm.mem_size_mib.unwrap_or(user_mem),
        warnings,
        &refuse,
    );
    let user_vcpus = user
        .vm
        .vcpu_count
        .unwrap_or(user_cpus.ceil().max(1.0) as u32);
    cap(
        "vm.vcpu_count",
        &mut proj.vm.vcpu_count,
        user_vcpus,
        warnings,
        &refuse,
    );

    if let Some(names) = &mut iso.env_passthrough {
        let allowed = user.isolation.env_passthrough.clone().unwrap_or_default();
        let (keep, drop): (Vec<String>, Vec<String>) =
            names.drain(..).partition(|n| allowed.contains(n));
        if !drop.is_empty() {
            refuse(
                "isolation.env_passthrough",
                format!("{drop:?}"),
                "a project may not hand more of your environment to the agent".into(),
                warnings,
            );
        }
        *names = keep;
    }
    let unsafe_paths = [
        (
            "vm.firecracker_bin",
            proj.vm
                .firecracker_bin
                .take()
                .map(|p| p.display().to_string()),
        ),
        (
            "vm.kernel_image",
            proj.vm.kernel_image.take().map(|p| p.display().to_string()),
        ),
        (
            "vm.rootfs_image",
            proj.vm.rootfs_image.take().map(|p| p.display().to_string()),
        ),
        ("docker.image", proj.docker.image.take()),
        ("docker.runtime", proj.docker.runtime.take()),
    ];
    for (key, v) in unsafe_paths {
        if let Some(v) = v {
            refuse(
                key,
                format!("{v:?}"),
                "a project may not choose what the sandbox runs".into(),
                warnings,
            );
        }
    }
    if let Some(pull) = proj.docker.auto_pull.take() {
        refuse(
            "docker.auto_pull",
            pull.to_string(),
            "a project may not choose what the sandbox runs".into(),
            warnings,
        );
    }
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
