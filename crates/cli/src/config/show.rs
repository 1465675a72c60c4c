//! `safe-coder config --show`.

use std::fmt::Write as _;

use super::{mask, DockerSection, FileState, Resolved, VmSection};

fn describe_file(state: &FileState) -> String {
    match state {
        FileState::Missing => "not found".to_string(),
        FileState::Read => "read".to_string(),
        FileState::Refused(why) => format!("refused: {why}"),
    }
}

/// What `config --show` prints: which files were read, the configuration in force (the
/// key masked, each kind's source), and every warning.
pub fn show(resolved: &Resolved) -> String {
    let mut out = String::new();
    let (user_path, user_state) = &resolved.user_file;
    let (proj_path, proj_state) = &resolved.project_file;
    let _ = writeln!(
        out,
        "user config:    {} ({})",
        user_path.display(),
        describe_file(user_state)
    );
    let trust = if resolved.project_trusted {
        ", trusted"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "project config: {} ({}{trust})",
        proj_path.display(),
        describe_file(proj_state)
    );
    let r = resolved;
    let _ = writeln!(out, "[llm]");
    let _ = writeln!(out, "provider = {}", r.provider);
    let _ = writeln!(out, "model = {}", r.model);
    let _ = writeln!(out, "base_url = {}", r.base_url);
    let _ = writeln!(out, "max_tokens = {}", r.max_tokens);
    let key = r
        .api_key
        .as_deref()
        .map(mask)
        .unwrap_or_else(|| "(not set)".to_string());
    let _ = writeln!(out, "api_key = {key}");
    let _ = writeln!(out, "[isolation]");
    let _ = writeln!(
        out,
        "backend = {}    # {}",
        r.backend,
        r.backend_source.describe()
    );
    let _ = writeln!(out, "exclude = {:?}", r.exclude);
    let _ = writeln!(out, "memory_mb = {}", r.memory_mb);
    let _ = writeln!(out, "cpus = {}", r.cpus);
    let _ = writeln!(out, "max_file_mb = {}", r.max_file_mb);
    let _ = writeln!(out, "env_passthrough = {:?}", r.env_passthrough);
    if !r.network_allow.is_empty() {
        let _ = writeln!(out, "[network]\nallow = {:?}", r.network_allow);
    }
    if r.docker != DockerSection::default() {
        let _ = writeln!(out, "[docker]\n{:?}", r.docker);
    }
    if r.vm != VmSection::default() {
        let _ = writeln!(out, "[vm]\n{:?}", r.vm);
    }
    let _ = writeln!(out, "[agent]");
    let chosen = if r.approval_mode_source.is_explicit() {
        ""
    } else {
        ": `exec` picks its own when none is chosen"
    };
    let _ = writeln!(
        out,
        "approval_mode = {}    # {}{chosen}",
        r.approval_mode,
        r.approval_mode_source.describe()
    );
    let _ = writeln!(out, "max_turns = {}", r.max_turns);
    let _ = writeln!(out, "[context]");
    let _ = writeln!(out, "window_tokens = {}", r.context_window);
    let _ = writeln!(out, "compact_threshold = {}", r.compact_threshold);
    let _ = writeln!(out, "[ui]");
    let _ = writeln!(out, "theme = {}", r.theme.as_str());
    for w in &r.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}
