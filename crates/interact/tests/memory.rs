#![allow(clippy::unwrap_used)]

mod support;

use std::fs;

use safe_coder_interact::{add_to_project_memory, load_memory, MemoryError};
use support::write;

#[test]
fn order_is_user_then_repo_root_down_to_the_project() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    let outside = tmp.path().join("outside");
    let repo = outside.join("repo");
    let project = repo.join("pkg").join("app");
    fs::create_dir_all(repo.join(".git")).unwrap();
    fs::create_dir_all(&project).unwrap();
    write(&config, "SAFECODER.md", "user safecoder");
    write(&config, "AGENTS.md", "user agents");
    // Above the repository root: not loaded.
    write(&outside, "SAFECODER.md", "outside the repo");
    write(&repo, "AGENTS.md", "repo agents");
    write(&repo, "pkg/SAFECODER.md", "pkg safecoder");
    write(&project, "SAFECODER.md", "project safecoder");
    write(&project, "AGENTS.md", "project agents");

    let memory = load_memory(&config, &project);
    let contents: Vec<&str> = memory.files.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(
        contents,
        [
            "user safecoder",
            "user agents",
            "repo agents",
            "pkg safecoder",
            "project safecoder",
            "project agents"
        ]
    );
    assert_eq!(memory.files[2].0, repo.join("AGENTS.md"));

    let section = memory.system_prompt_section();
    let user = section
        .find(&format!(
            "## From {}",
            config.join("SAFECODER.md").display()
        ))
        .unwrap();
    let proj = section
        .find(&format!("## From {}", project.join("AGENTS.md").display()))
        .unwrap();
    assert!(user < proj);
    assert!(section.contains("project agents"));
    assert!(!section.contains("outside the repo"));
}

#[test]
fn without_a_repository_only_the_project_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    let parent = tmp.path().join("parent");
    let project = parent.join("project");
    fs::create_dir_all(&project).unwrap();
    write(&parent, "SAFECODER.md", "parent");
    write(&project, "SAFECODER.md", "project");
    let memory = load_memory(&config, &project);
    let contents: Vec<&str> = memory.files.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(contents, ["project"]);
}

#[test]
fn project_is_the_repo_root_and_a_git_file_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    let project = tmp.path().join("wt");
    write(&project, ".git", "gitdir: /elsewhere/.git/worktrees/wt\n");
    write(tmp.path(), "SAFECODER.md", "above");
    write(&project, "AGENTS.md", "here");
    let memory = load_memory(&config, &project);
    assert_eq!(memory.files.len(), 1);
    assert_eq!(memory.files[0].1, "here");
}

#[test]
fn no_memory_files_no_section() {
    let tmp = tempfile::tempdir().unwrap();
    let memory = load_memory(&tmp.path().join("config"), tmp.path());
    assert!(memory.is_empty());
    assert_eq!(memory.system_prompt_section(), "");
}

#[cfg(unix)]
#[test]
fn a_linked_file_is_loaded_once() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "SAFECODER.md", "rules");
    std::os::unix::fs::symlink("SAFECODER.md", tmp.path().join("AGENTS.md")).unwrap();
    let memory = load_memory(&tmp.path().join("config"), tmp.path());
    assert_eq!(memory.files.len(), 1);
}

#[test]
fn memory_add_creates_then_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let path = add_to_project_memory(tmp.path(), "  use tabs  ").unwrap();
    assert_eq!(path, tmp.path().join("SAFECODER.md"));
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "# Safe Coder memory\n\n- use tabs\n"
    );
    add_to_project_memory(tmp.path(), "run tests\nwith --release").unwrap();
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "# Safe Coder memory\n\n- use tabs\n- run tests\n  with --release\n"
    );

    // An existing file without a final newline.
    let other = tempfile::tempdir().unwrap();
    write(other.path(), "SAFECODER.md", "Existing notes");
    add_to_project_memory(other.path(), "more").unwrap();
    assert_eq!(
        fs::read_to_string(other.path().join("SAFECODER.md")).unwrap(),
        "Existing notes\n- more\n"
    );
    assert!(matches!(
        add_to_project_memory(other.path(), "  "),
        Err(MemoryError::Empty)
    ));

    // What was added shows up on the next load.
    let memory = load_memory(&tmp.path().join("config"), tmp.path());
    assert!(memory.system_prompt_section().contains("- run tests"));
}

/// A cloned repository (or an accepted agent change) links a memory file to a secret
/// outside the repository: the secret must not reach the prompt.
#[cfg(unix)]
#[test]
fn a_link_to_a_secret_outside_the_project_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let project = tmp.path().join("project");
    write(
        &home,
        ".ssh/id_ed25519",
        "-----BEGIN OPENSSH PRIVATE KEY----- secret",
    );
    write(&project, "SAFECODER.md", "real rules");
    std::os::unix::fs::symlink(home.join(".ssh/id_ed25519"), project.join("AGENTS.md")).unwrap();
    let memory = load_memory(&tmp.path().join("config"), &project);
    assert_eq!(memory.files.len(), 1, "{:?}", memory.files);
    assert!(!memory.system_prompt_section().contains("PRIVATE KEY"));
    assert!(
        memory
            .warnings
            .iter()
            .any(|w| w.contains("AGENTS.md") && w.contains("outside")),
        "{:?}",
        memory.warnings
    );
}

/// A link to a device (or a FIFO) is refused without reading it: `/dev/zero` would
/// never end, a FIFO would block the start.
#[cfg(unix)]
#[test]
fn devices_and_fifos_are_refused_without_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    fs::create_dir_all(&config).unwrap();
    // In the user's own config dir links may go anywhere, but only to regular files.
    std::os::unix::fs::symlink("/dev/zero", config.join("SAFECODER.md")).unwrap();
    let fifo = config.join("AGENTS.md");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc_mkfifo(c.as_ptr(), 0o600) }, 0);
    let project = tmp.path().join("project");
    fs::create_dir_all(&project).unwrap();
    std::os::unix::fs::symlink("/dev/zero", project.join("SAFECODER.md")).unwrap();
    let memory = load_memory(&config, &project);
    assert!(memory.files.is_empty(), "{:?}", memory.files);
    assert_eq!(memory.warnings.len(), 3, "{:?}", memory.warnings);
    assert!(memory
        .warnings
        .iter()
        .any(|w| w.contains("not a regular file")));
}

/// A huge memory file is cut at the cap, with a warning; only the cap is read.
#[test]
fn a_huge_memory_file_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "SAFECODER.md", "x".repeat(3 << 20));
    let memory = load_memory(&tmp.path().join("config"), tmp.path());
    assert_eq!(memory.files.len(), 1);
    assert!(memory.files[0].1.len() < 200 * 1024);
    assert!(memory.files[0].1.ends_with("KiB]"));
    assert!(memory.warnings.iter().any(|w| w.contains("only the start")));
}

extern "C" {
    #[link_name = "mkfifo"]
    fn libc_mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
}
