#![allow(clippy::unwrap_used)]

mod support;

use safe_coder_interact::{
    help_text, load_custom_commands, parse, CustomCommands, MemoryCmd, SlashCommand, SlashError,
};
use safe_coder_protocol::ApprovalMode;
use support::write;

fn p(line: &str) -> Result<Option<SlashCommand>, SlashError> {
    parse(line, &CustomCommands::default())
}

fn ok(line: &str) -> SlashCommand {
    p(line).unwrap().unwrap()
}

fn err(line: &str) -> String {
    p(line).unwrap_err().to_string()
}

#[test]
fn parses_every_builtin() {
    assert_eq!(ok("/help"), SlashCommand::Help);
    assert_eq!(ok("  /clear  "), SlashCommand::Clear);
    assert_eq!(ok("/stats"), SlashCommand::Stats);
    assert_eq!(ok("/diff"), SlashCommand::Diff);
    assert_eq!(ok("/undo"), SlashCommand::Undo);
    assert_eq!(ok("/restore"), SlashCommand::Restore(None));
    assert_eq!(
        ok("/restore src/main.rs"),
        SlashCommand::Restore(Some("src/main.rs".into()))
    );
    assert_eq!(
        ok("/snapshot before refactor"),
        SlashCommand::Snapshot("before refactor".into())
    );
    assert_eq!(ok("/rollback"), SlashCommand::Rollback(None));
    assert_eq!(
        ok("/rollback v1"),
        SlashCommand::Rollback(Some("v1".into()))
    );
    assert_eq!(ok("/sync"), SlashCommand::Sync);
    assert_eq!(ok("/memory"), SlashCommand::Memory(MemoryCmd::Show));
    assert_eq!(ok("/memory show"), SlashCommand::Memory(MemoryCmd::Show));
    assert_eq!(
        ok("/memory refresh"),
        SlashCommand::Memory(MemoryCmd::Refresh)
    );
    assert_eq!(
        ok("/memory add  use tabs, not spaces "),
        SlashCommand::Memory(MemoryCmd::Add("use tabs, not spaces".into()))
    );
    assert_eq!(ok("/model"), SlashCommand::Model(None));
    assert_eq!(
        ok("/model gpt-4o"),
        SlashCommand::Model(Some("gpt-4o".into()))
    );
    assert_eq!(ok("/approval-mode"), SlashCommand::ApprovalMode(None));
    for mode in ApprovalMode::ALL {
        assert_eq!(
            ok(&format!("/approval-mode {mode}")),
            SlashCommand::ApprovalMode(Some(mode))
        );
    }
    assert_eq!(ok("/compress"), SlashCommand::Compress);
    assert_eq!(ok("/quit"), SlashCommand::Quit);
    assert_eq!(ok("/exit"), SlashCommand::Quit);
}

#[test]
fn not_slash_commands() {
    assert_eq!(p("hello /help").unwrap(), None);
    assert_eq!(p("").unwrap(), None);
    assert_eq!(p("/etc/hosts is missing a line").unwrap(), None);
    assert_eq!(p("//help me with slashes").unwrap(), None);
    assert_eq!(p("!ls").unwrap(), None);
}

#[test]
fn bad_arguments_are_one_clear_error() {
    let e = err("/snapshot");
    assert!(e.contains("/snapshot: needs a label"), "{e}");
    assert!(e.contains("usage: /snapshot LABEL"), "{e}");
    let e = err("/approval-mode nope");
    assert!(e.contains("unknown approval mode 'nope'"), "{e}");
    assert!(e.contains("plan, default, auto-edit or yolo"), "{e}");
    let e = err("/clear now");
    assert!(e.contains("/clear: takes no arguments"), "{e}");
    let e = err("/memory add");
    assert!(e.contains("needs the text"), "{e}");
    let e = err("/memory forget x");
    assert!(e.contains("unknown action 'forget'"), "{e}");
    let e = err("/model a b");
    assert!(e.contains("takes one model name"), "{e}");
    assert_eq!(p("/").unwrap_err(), SlashError::Empty);
}

#[test]
fn unknown_command_names_the_closest() {
    assert_eq!(err("/stat"), "unknown command /stat: did you mean /stats?");
    assert_eq!(err("/hlep"), "unknown command /hlep: did you mean /help?");
    assert_eq!(
        err("/approval"),
        "unknown command /approval: did you mean /approval-mode?"
    );
    assert_eq!(err("/qiut"), "unknown command /qiut: did you mean /quit?");
    assert_eq!(
        err("/xyzzyplugh"),
        "unknown command /xyzzyplugh; /help lists the commands"
    );
}

#[test]
fn custom_commands_parse_suggest_and_show_in_help() {
    let config = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    write(
        config.path(),
        "commands/review.md",
        "---\ndescription: Review the code\n---\nReview {{args}}\n",
    );
    write(
        config.path(),
        "commands/git/commit.md",
        "Write a commit message\n",
    );
    write(
        config.path(),
        "commands/help.md",
        "shadowed by the built-in\n",
    );
    let custom = load_custom_commands(config.path(), project.path());

    assert_eq!(
        parse("/review src/lib.rs carefully", &custom).unwrap(),
        Some(SlashCommand::Custom {
            name: "review".into(),
            args: "src/lib.rs carefully".into()
        })
    );
    assert_eq!(
        parse("/git:commit", &custom).unwrap(),
        Some(SlashCommand::Custom {
            name: "git:commit".into(),
            args: String::new()
        })
    );
    // Built-ins win over a custom command of the same name.
    assert_eq!(parse("/help", &custom).unwrap(), Some(SlashCommand::Help));
    assert!(custom
        .warnings
        .iter()
        .any(|w| w.contains("/help is hidden")));

    let e = parse("/git:comit", &custom).unwrap_err().to_string();
    assert_eq!(e, "unknown command /git:comit: did you mean /git:commit?");
    let e = parse("/reveiw", &custom).unwrap_err().to_string();
    assert_eq!(e, "unknown command /reveiw: did you mean /review?");

    let help = help_text(&custom);
    for name in [
        "/help",
        "/clear",
        "/stats",
        "/diff",
        "/undo",
        "/restore",
        "/snapshot",
        "/rollback",
        "/sync",
        "/memory",
        "/model",
        "/approval-mode",
        "/compress",
        "/quit",
    ] {
        assert!(help.contains(name), "help lacks {name}:\n{help}");
    }
    assert!(
        help.contains("/review") && help.contains("Review the code (user)"),
        "{help}"
    );
    assert!(help.contains("/git:commit") && help.contains("Write a commit message (user)"));
    assert!(!help.contains("shadowed by the built-in"));
    // One line per command.
    let lines = help
        .lines()
        .filter(|l| l.trim_start().starts_with('/'))
        .count();
    assert_eq!(lines, 14 + 2, "{help}");
}

#[test]
fn classify_and_complete() {
    use safe_coder_interact::{classify, complete_slash, Input};
    let config = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    write(config.path(), "commands/git/commit.md", "commit");
    let custom = load_custom_commands(config.path(), project.path());
    assert_eq!(
        classify("/stats", &custom).unwrap(),
        Input::Slash(SlashCommand::Stats)
    );
    assert_eq!(
        classify(" !ls -la", &custom).unwrap(),
        Input::Shell("ls -la".into())
    );
    assert_eq!(
        classify("fix @src/a.rs", &custom).unwrap(),
        Input::Prompt("fix @src/a.rs".into())
    );
    assert_eq!(
        classify("//usr is a dir", &custom).unwrap(),
        Input::Prompt("/usr is a dir".into())
    );
    assert!(classify("/stat", &custom).is_err());
    assert_eq!(
        complete_slash("/s", &custom),
        ["/snapshot", "/stats", "/sync"]
    );
    assert_eq!(complete_slash("g", &custom), ["/git:commit"]);
    assert_eq!(complete_slash("/e", &custom), ["/exit"]);
}
