#![allow(clippy::unwrap_used)]

mod support;

use safe_coder_interact::{expand_custom, load_custom_commands, CommandScope};
use support::{have_bash, project, write};

#[test]
fn loads_front_matter_namespaces_and_project_overrides() {
    let config = tempfile::tempdir().unwrap();
    let (proj, _sb) = project();
    write(
        config.path(),
        "commands/review.md",
        "---\ndescription: user review\nargument-hint: FILE\n---\nUser review of {{args}}\n",
    );
    write(
        config.path(),
        "commands/only-user.md",
        "# Explain the code\n\nExplain it.\n",
    );
    write(config.path(), "commands/git/commit.md", "commit");
    write(config.path(), "commands/a/b/c.md", "deep");
    write(config.path(), "commands/notes.txt", "not a command");
    write(
        proj.path(),
        ".safe-coder/commands/review.md",
        "---\ndescription: 'project review'\n---\nProject review of {{args}}\n",
    );
    write(proj.path(), ".safe-coder/commands/bad name.md", "x");
    let cmds = load_custom_commands(config.path(), proj.path());

    let names: Vec<&str> = cmds.names().collect();
    assert_eq!(names, ["a:b:c", "git:commit", "only-user", "review"]);
    let review = cmds.get("review").unwrap();
    assert_eq!(review.scope, CommandScope::Project);
    assert_eq!(review.description(), "project review");
    assert_eq!(review.template, "Project review of {{args}}\n");
    assert_eq!(review.argument_hint, None);
    assert_eq!(
        cmds.get("only-user").unwrap().description(),
        "Explain the code"
    );
    assert_eq!(cmds.get("git:commit").unwrap().scope, CommandScope::User);
    assert!(
        cmds.warnings.iter().any(|w| w.contains("bad name.md")),
        "{:?}",
        cmds.warnings
    );
    let descriptions = cmds.descriptions();
    assert_eq!(descriptions.len(), 4);
}

#[test]
fn missing_directories_are_fine() {
    let tmp = tempfile::tempdir().unwrap();
    let cmds = load_custom_commands(&tmp.path().join("none"), &tmp.path().join("nope"));
    assert!(cmds.is_empty());
    assert!(cmds.warnings.is_empty());
}

#[tokio::test]
async fn args_are_substituted_or_appended() {
    let config = tempfile::tempdir().unwrap();
    let (proj, sb) = project();
    write(
        config.path(),
        "commands/fix.md",
        "Fix {{args}} now; again: {{args}}\n",
    );
    write(
        config.path(),
        "commands/plain.md",
        "---\ndescription: d\n---\nDo the thing.\n\n",
    );
    let cmds = load_custom_commands(config.path(), proj.path());
    let fix = cmds.get("fix").unwrap();
    assert_eq!(
        expand_custom(fix, " issue 12 ", &sb).await.unwrap(),
        "Fix issue 12 now; again: issue 12\n"
    );
    let plain = cmds.get("plain").unwrap();
    assert_eq!(
        expand_custom(plain, "be quick", &sb).await.unwrap(),
        "Do the thing.\n\nbe quick"
    );
    assert_eq!(
        expand_custom(plain, "", &sb).await.unwrap(),
        "Do the thing.\n\n"
    );
}

#[tokio::test]
async fn shell_and_file_expansions_run_in_the_sandbox() {
    if !have_bash() {
        eprintln!("bash is not installed; skipping");
        return;
    }
    let config = tempfile::tempdir().unwrap();
    let (proj, sb) = project();
    write(proj.path(), "notes/todo.txt", "write tests\n");
    write(
        config.path(),
        "commands/status.md",
        "Files: !{ls notes}\nTodo:\n@{notes/todo.txt}\nAwk: !{echo a b | awk '{print $2}'}\nFail: !{echo oops; exit 3}\nArg: !{printf '%s' {{args}}}\n",
    );
    let cmds = load_custom_commands(config.path(), proj.path());
    let out = expand_custom(cmds.get("status").unwrap(), "x; touch pwned", &sb)
        .await
        .unwrap();
    assert_eq!(
        out,
        "Files: todo.txt\nTodo:\nwrite tests\nAwk: b\nFail: oops\n[exit code 3]\nArg: x; touch pwned\n"
    );
    assert!(
        !proj.path().join("pwned").exists(),
        "arguments are quoted inside !{{...}}"
    );
}

#[tokio::test]
async fn bad_file_or_unclosed_block_is_an_error() {
    let config = tempfile::tempdir().unwrap();
    let (proj, sb) = project();
    write(config.path(), "commands/missing.md", "See @{nope.txt}");
    write(config.path(), "commands/open.md", "Run !{ls");
    write(proj.path(), "blob.bin", [0u8, 1, 2]);
    write(config.path(), "commands/bin.md", "@{blob.bin}");
    let cmds = load_custom_commands(config.path(), proj.path());
    let e = expand_custom(cmds.get("missing").unwrap(), "", &sb)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "/missing: could not insert '@{nope.txt}': no such file in the project"
    );
    let e = expand_custom(cmds.get("open").unwrap(), "", &sb)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("never closed"), "{e}");
    let e = expand_custom(cmds.get("bin").unwrap(), "", &sb)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("binary"), "{e}");
}

#[tokio::test]
async fn args_can_name_the_file_to_insert() {
    let config = tempfile::tempdir().unwrap();
    let (proj, sb) = project();
    write(proj.path(), "src/lib.rs", "pub fn x() {}\n");
    write(config.path(), "commands/show.md", "Look:\n@{{{args}}}\n");
    let cmds = load_custom_commands(config.path(), proj.path());
    let out = expand_custom(cmds.get("show").unwrap(), "src/lib.rs", &sb)
        .await
        .unwrap();
    assert_eq!(out, "Look:\npub fn x() {}\n");
}

/// Project commands that link out of the project (to a home secret), to a device, or
/// that are too big are refused with a warning; links inside the project work.
#[cfg(unix)]
#[test]
fn project_commands_are_read_defensively() {
    use std::os::unix::fs::symlink;
    let config = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let (proj, _sb) = project();
    write(
        home.path(),
        ".aws/credentials",
        "aws_secret_access_key=SECRET",
    );
    write(proj.path(), "docs/ok.md", "inside the project");
    let dir = proj.path().join(".safe-coder/commands");
    std::fs::create_dir_all(&dir).unwrap();
    symlink(home.path().join(".aws/credentials"), dir.join("steal.md")).unwrap();
    symlink(home.path().join(".aws"), dir.join("aws")).unwrap();
    symlink("/dev/zero", dir.join("zero.md")).unwrap();
    symlink(proj.path().join("docs/ok.md"), dir.join("linked.md")).unwrap();
    write(
        proj.path(),
        ".safe-coder/commands/big.md",
        "y".repeat(65 * 1024),
    );
    let cmds = load_custom_commands(config.path(), proj.path());
    let names: Vec<&str> = cmds.names().collect();
    assert_eq!(names, ["linked"], "{:?}", cmds.warnings);
    assert_eq!(cmds.get("linked").unwrap().template, "inside the project");
    for needle in ["steal.md", "aws", "zero.md", "big.md"] {
        assert!(
            cmds.warnings.iter().any(|w| w.contains(needle)),
            "{needle}: {:?}",
            cmds.warnings
        );
    }
    assert!(cmds.iter().all(|c| !c.template.contains("SECRET")));
}

/// The user's own commands may link anywhere, but never to a device.
#[cfg(unix)]
#[test]
fn user_commands_may_link_out_but_not_to_devices() {
    let config = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let (proj, _sb) = project();
    write(elsewhere.path(), "mine.md", "my shared command");
    std::fs::create_dir_all(config.path().join("commands")).unwrap();
    std::os::unix::fs::symlink(
        elsewhere.path().join("mine.md"),
        config.path().join("commands/mine.md"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/dev/zero", config.path().join("commands/zero.md")).unwrap();
    let cmds = load_custom_commands(config.path(), proj.path());
    let names: Vec<&str> = cmds.names().collect();
    assert_eq!(names, ["mine"]);
    assert!(cmds
        .warnings
        .iter()
        .any(|w| w.contains("not a regular file")));
}
