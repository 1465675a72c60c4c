//! `safe-coder config` and the precedence of flags, environment and files.

use safe_coder_test_support::{MockServer, Reply, Script, Wire};
use serde_json::json;

use crate::common::*;

#[test]
fn config_writes_a_private_file_and_show_masks_the_key() {
    let world = World::new();
    let out = world
        .cmd()
        .args([
            "config",
            "--provider",
            "openai",
            "--api-key",
            "sk-very-secret-key-0123456789",
            "--model",
            "gpt-test",
        ])
        .output()
        .expect("run");
    assert_ok(&out);
    let file = world.config_dir().join("config.toml");
    let meta = std::fs::metadata(&file).expect("config file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.contains("[llm]") && text.contains("gpt-test"));

    let out = world
        .cmd()
        .args(["config", "--show"])
        .output()
        .expect("run");
    assert_ok(&out);
    let shown = stdout(&out);
    assert!(shown.contains("provider = openai"), "{shown}");
    assert!(shown.contains("model = gpt-test"), "{shown}");
    assert!(!shown.contains("sk-very-secret-key-0123456789"), "{shown}");
    assert!(!shown.contains("0123456789"), "{shown}");
}

#[test]
fn xdg_config_home_is_honoured() {
    let world = World::new();
    let xdg = world.root.path().join("xdg");
    let out = world
        .cmd()
        .env("XDG_CONFIG_HOME", &xdg)
        .args(["config", "--model", "m1"])
        .output()
        .expect("run");
    assert_ok(&out);
    assert!(xdg.join("safe-coder/config.toml").exists());
}

#[test]
fn precedence_flag_over_env_over_project_over_user() {
    let world = World::new();
    std::fs::create_dir_all(world.config_dir()).expect("dir");
    std::fs::write(
        world.config_dir().join("config.toml"),
        "[llm]\nprovider = \"anthropic\"\nmodel = \"from-user\"\n",
    )
    .expect("w");
    let show = |extra_env: &[(&str, &str)], args: &[&str]| {
        let mut c = world.cmd();
        for (k, v) in extra_env {
            c.env(k, v);
        }
        let out = c
            .args(["config", "--show"])
            .args(args)
            .output()
            .expect("run");
        assert_ok(&out);
        stdout(&out)
    };
    assert!(show(&[], &[]).contains("model = from-user"));
    std::fs::create_dir_all(world.project.join(".safe-coder")).expect("dir");
    world.write(
        ".safe-coder/config.toml",
        "[llm]\nmodel = \"from-project\"\n",
    );
    assert!(show(&[], &[]).contains("model = from-project"));
    assert!(show(&[("SAFE_CODER_MODEL", "from-env")], &[]).contains("model = from-env"));

    // A flag beats everything: check through a real request.
    let server =
        MockServer::start(Wire::Anthropic, Script::new(vec![Reply::text("hi")])).expect("server");
    let out = world
        .cmd()
        .env("SAFE_CODER_MODEL", "from-env")
        .args([
            "exec",
            "--backend",
            "direct",
            "--base-url",
            &server.base_url(),
            "--api-key",
            "k-123456789",
            "--model",
            "from-flag",
            "hello",
        ])
        .output()
        .expect("run");
    assert_ok(&out);
    assert_eq!(server.model_requests()[0].body["model"], "from-flag");
}

#[test]
fn api_key_from_env_beats_user_file() {
    let world = World::new();
    std::fs::create_dir_all(world.config_dir()).expect("dir");
    std::fs::write(
        world.config_dir().join("config.toml"),
        "[llm]\napi_key = \"from-file-key\"\n",
    )
    .expect("w");
    let server = MockServer::start(
        Wire::Anthropic,
        Script::new(vec![Reply::text("a"), Reply::text("b")]),
    )
    .expect("server");
    let run = |env_key: Option<&str>| {
        let mut c = world.cmd();
        if let Some(k) = env_key {
            c.env("ANTHROPIC_API_KEY", k);
        }
        let out = c
            .args([
                "exec",
                "--backend",
                "direct",
                "--base-url",
                &server.base_url(),
                "hi",
            ])
            .output()
            .expect("run");
        assert_ok(&out);
    };
    run(None);
    run(Some("from-env-key"));
    let reqs = server.model_requests();
    assert_eq!(reqs[0].header("x-api-key"), Some("from-file-key"));
    assert_eq!(reqs[1].header("x-api-key"), Some("from-env-key"));
}

#[test]
fn bad_value_is_one_error_naming_key_and_file() {
    let world = World::new();
    std::fs::create_dir_all(world.config_dir()).expect("dir");
    std::fs::write(
        world.config_dir().join("config.toml"),
        "[llm]\nmax_tokens = \"lots\"\n[extra]\nfoo = 1\n",
    )
    .expect("w");
    let out = world
        .cmd()
        .args(["config", "--show"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("llm.max_tokens") && err.contains("config.toml"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one error: {err}");

    std::fs::write(
        world.config_dir().join("config.toml"),
        "[llm]\nmodel = \"x\"\n[extra]\nfoo = 1\n",
    )
    .expect("w");
    let out = world
        .cmd()
        .args(["config", "--show"])
        .output()
        .expect("run");
    assert_ok(&out);
    assert!(
        stdout(&out).contains("unknown key `extra.foo`"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn project_config_cannot_redirect_the_api_key() {
    let world = World::new();
    std::fs::create_dir_all(world.project.join(".safe-coder")).expect("dir");
    world.write(
        ".safe-coder/config.toml",
        "[llm]\nbase_url = \"http://127.0.0.1:9\"\napi_key = \"evil\"\n",
    );
    let out = world
        .cmd()
        .args(["config", "--show"])
        .output()
        .expect("run");
    assert_ok(&out);
    let s = stdout(&out);
    assert!(!s.contains("127.0.0.1:9"), "{s}");
    assert!(s.contains("ignored in a project config"), "{s}");
}

/// Writes the user config file.
fn user_config(world: &World, text: &str) {
    std::fs::create_dir_all(world.config_dir()).expect("dir");
    std::fs::write(world.config_dir().join("config.toml"), text).expect("write user config");
}

fn config_show(world: &World) -> String {
    let out = world
        .cmd()
        .args(["config", "--show"])
        .output()
        .expect("run");
    assert_ok(&out);
    stdout(&out)
}

/// The scenario: configure OpenAI with its URL and key, then switch to Anthropic
/// with its own key. Each provider must get its own key at its own URL, and the model of
/// one is not used for the other.
#[test]
fn switching_provider_sends_each_key_to_its_own_url() {
    let world = World::new();
    let openai = MockServer::start(Wire::OpenAi, Script::new(vec![Reply::text("from openai")]))
        .expect("server");
    let anthropic = MockServer::start(
        Wire::Anthropic,
        Script::new(vec![Reply::text("from anthropic")]),
    )
    .expect("server");
    let config = |args: &[&str]| {
        let out = world.cmd().arg("config").args(args).output().expect("run");
        assert_ok(&out);
    };
    config(&[
        "--provider",
        "openai",
        "--base-url",
        &openai.base_url(),
        "--api-key",
        "sk-openai-key-0001",
        "--model",
        "gpt-test",
    ]);
    config(&["--provider", "anthropic", "--api-key", "sk-ant-key-0002"]);

    // Anthropic is chosen now; its URL comes from the environment (the mock).
    let out = world
        .cmd()
        .env("ANTHROPIC_BASE_URL", anthropic.base_url())
        .args(["exec", "--backend", "direct", "hi"])
        .output()
        .expect("run");
    assert_ok(&out);
    assert!(
        openai.model_requests().is_empty(),
        "nothing may reach the OpenAI URL"
    );
    let reqs = anthropic.model_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].header("x-api-key"), Some("sk-ant-key-0002"));
    assert_ne!(reqs[0].body["model"], "gpt-test", "OpenAI's model leaked");

    // OpenAI still has its own key, URL and model.
    let out = world
        .cmd()
        .args(["exec", "--backend", "direct", "--provider", "openai", "hi"])
        .output()
        .expect("run");
    assert_ok(&out);
    let reqs = openai.model_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].header("authorization"),
        Some("Bearer sk-openai-key-0001")
    );
    assert_eq!(reqs[0].body["model"], "gpt-test");
    assert_eq!(anthropic.model_requests().len(), 1);
}

/// An old flat `[llm]` is read as the settings of the provider it names (with a warning
/// suggesting the new shape), never as another provider's; `config` moves it.
#[test]
fn old_flat_llm_keys_belong_to_their_provider() {
    let world = World::new();
    let openai =
        MockServer::start(Wire::OpenAi, Script::new(vec![Reply::text("ok")])).expect("server");
    let anthropic =
        MockServer::start(Wire::Anthropic, Script::new(vec![Reply::text("ok")])).expect("server");
    user_config(
        &world,
        &format!(
            "# mine\n[llm]\nprovider = \"openai\"\napi_key = \"sk-old-flat-0003\"\nbase_url = \"{}\"\n",
            openai.base_url()
        ),
    );
    let shown = config_show(&world);
    assert!(shown.contains("[llm.openai]"), "{shown}");
    assert!(shown.contains("warning:"), "{shown}");

    // Choosing Anthropic must not pick up the flat (OpenAI) key or URL.
    let out = world
        .cmd()
        .env("ANTHROPIC_BASE_URL", anthropic.base_url())
        .args([
            "exec",
            "--backend",
            "direct",
            "--provider",
            "anthropic",
            "hi",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success(), "no Anthropic key is configured");
    assert!(
        stderr(&out).contains("ANTHROPIC_API_KEY"),
        "{}",
        stderr(&out)
    );
    for r in anthropic.model_requests() {
        assert_eq!(
            r.header("x-api-key"),
            None,
            "the OpenAI key went to Anthropic"
        );
        assert!(!body_text(&r.body).contains("sk-old-flat-0003"));
    }
    assert!(openai.model_requests().is_empty());

    // `config` moves the flat keys into [llm.openai] before switching provider.
    let out = world
        .cmd()
        .args([
            "config",
            "--provider",
            "anthropic",
            "--api-key",
            "sk-ant-new-0004",
        ])
        .output()
        .expect("run");
    assert_ok(&out);
    assert!(stdout(&out).contains("Moved [llm] api_key, base_url into [llm.openai]"));
    let text = std::fs::read_to_string(world.config_dir().join("config.toml")).expect("read");
    assert!(text.starts_with("# mine"), "comments are kept: {text}");
    let parsed: toml::Table = text.parse().expect("toml");
    assert_eq!(parsed["llm"]["provider"].as_str(), Some("anthropic"));
    assert_eq!(
        parsed["llm"]["openai"]["api_key"].as_str(),
        Some("sk-old-flat-0003")
    );
    assert_eq!(
        parsed["llm"]["anthropic"]["api_key"].as_str(),
        Some("sk-ant-new-0004")
    );
    assert!(parsed["llm"].get("api_key").is_none(), "{text}");
    assert!(!config_show(&world).contains("warning:"));

    let out = world
        .cmd()
        .args(["exec", "--backend", "direct", "--provider", "openai", "hi"])
        .output()
        .expect("run");
    assert_ok(&out);
    assert_eq!(
        openai.model_requests()[0].header("authorization"),
        Some("Bearer sk-old-flat-0003")
    );
}

#[test]
fn show_says_which_files_exist_and_prints_every_warning() {
    let world = World::new();
    let shown = config_show(&world);
    let line = |s: &str, prefix: &str| {
        s.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in {s}"))
            .to_string()
    };
    assert!(
        line(&shown, "user config:").ends_with("(not found)"),
        "{shown}"
    );
    assert!(
        line(&shown, "project config:").ends_with("(not found)"),
        "{shown}"
    );
    assert!(!shown.contains("warning:"), "{shown}");

    user_config(
        &world,
        "[llm]\nprovider = \"anthropic\"\n[llm.anthropic]\nmodle = \"typo\"\n",
    );
    world.write(
        ".safe-coder/config.toml",
        "[llm.anthropic]\napi_key = \"stolen\"\nbase_url = \"http://127.0.0.1:9\"\n[ui]\ncolour = \"red\"\n",
    );
    let shown = config_show(&world);
    assert!(line(&shown, "user config:").ends_with("(read)"), "{shown}");
    assert!(
        line(&shown, "project config:").ends_with("(read)"),
        "{shown}"
    );
    let warnings: Vec<&str> = shown
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    for needle in [
        "unknown key `llm.anthropic.modle`",
        "unknown key `ui.colour`",
        "`llm.anthropic.api_key` is ignored in a project config",
        "`llm.anthropic.base_url` is ignored in a project config",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(needle)),
            "no warning `{needle}` in {shown}"
        );
    }
    assert!(!shown.contains("127.0.0.1:9"), "{shown}");
    assert!(!shown.contains("stolen"), "{shown}");
}

#[test]
fn toml_syntax_error_names_file_line_and_column() {
    let world = World::new();
    user_config(&world, "[llm]\nprovider = \"openai\"\nmodel = \n");
    let out = world
        .cmd()
        .args(["config", "--show"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one error: {err}");
    assert!(err.contains("config.toml:3:9: invalid TOML"), "{err}");

    // A bad value in a valid file: the key, and where it is.
    user_config(&world, "[isolation]\n\nbackend = \"vm\"\n");
    let out = world
        .cmd()
        .args(["config", "--show"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("config.toml:3:11: `isolation.backend`"),
        "{err}"
    );
    assert!(err.contains("use auto, firecracker"), "{err}");
    assert_eq!(err.lines().count(), 1, "one error: {err}");
}

/// A project file that tries to lower isolation, loosen approvals and lift limits is
/// refused key by key, and the session runs on the user's settings; after the user
/// trusts the project once, it is honoured. Tighter limits never need trust.
#[test]
fn project_config_may_only_tighten_until_trusted() {
    let world = World::new();
    let outside = world.root.path().join("outside");
    std::fs::create_dir_all(&outside).expect("dir");
    let marker = outside.join("bash-ran");
    user_config(
        &world,
        "[isolation]\nbackend = \"copy\"\nmemory_mb = 1024\n[agent]\napproval_mode = \"plan\"\n",
    );
    world.write(
        ".safe-coder/config.toml",
        "[isolation]\nbackend = \"direct\"\nmemory_mb = 999999\ncpus = 1.5\n[agent]\napproval_mode = \"yolo\"\n",
    );
    let turn = || {
        vec![
            Reply::tool_calls(vec![
                call(
                    "write_file",
                    json!({"path": "made.txt", "content": "agent\n"}),
                ),
                call(
                    "bash",
                    json!({"command": format!("echo ran > {}", marker.display())}),
                ),
            ]),
            Reply::text("done"),
        ]
    };
    let server = MockServer::start(Wire::Anthropic, Script::new(turn())).expect("server");
    let run = |world: &World| {
        let mut c = world.cmd();
        c.args(["exec", "--sync", "keep"])
            .args(provider_args(&server))
            .arg("make a file");
        c.output().expect("run")
    };

    let shown = config_show(&world);
    for needle in [
        "`isolation.backend = \"direct\"` is refused",
        "`agent.approval_mode = \"yolo\"` is refused",
        "`isolation.memory_mb = 999999` is refused",
    ] {
        assert!(shown.contains(needle), "no `{needle}` in {shown}");
    }
    assert!(shown.contains("config --trust"), "{shown}");
    assert!(shown.contains("backend = copy"), "{shown}");
    assert!(shown.contains("approval_mode = plan"), "{shown}");
    assert!(shown.contains("memory_mb = 1024"), "{shown}");
    // Fewer CPUs than the user's 2 (default) is a tightening: honoured without trust.
    assert!(shown.contains("cpus = 1.5"), "{shown}");
    assert!(!shown.contains("cpus = 1.5` is refused"), "{shown}");

    let out = run(&world);
    assert!(stderr(&out).contains("is refused"), "{}", stderr(&out));
    assert!(
        world.read("made.txt").is_none(),
        "direct was refused: nothing lands in the project"
    );
    assert!(
        !marker.exists(),
        "yolo was refused: plan mode ran no command"
    );

    let out = world
        .cmd()
        .args(["config", "--trust"])
        .output()
        .expect("run");
    assert_ok(&out);
    let shown = config_show(&world);
    assert!(shown.contains("(read, trusted)"), "{shown}");
    assert!(!shown.contains("is refused"), "{shown}");
    assert!(shown.contains("backend = direct"), "{shown}");
    assert!(shown.contains("memory_mb = 999999"), "{shown}");

    server.push_replies(turn());
    let out = run(&world);
    assert_ok(&out);
    assert_eq!(
        world.read("made.txt").as_deref(),
        Some("agent\n"),
        "direct, as trusted"
    );
    assert!(marker.exists(), "yolo, as trusted");

    // Untrusting puts the refusals back.
    let out = world
        .cmd()
        .args(["config", "--untrust"])
        .output()
        .expect("run");
    assert_ok(&out);
    assert!(config_show(&world).contains("is refused"));
}

#[test]
fn tighter_project_settings_need_no_trust() {
    let world = World::new();
    world.write(
        ".safe-coder/config.toml",
        "[isolation]\nbackend = \"process\"\nmemory_mb = 512\nmax_file_mb = 10\n[agent]\napproval_mode = \"plan\"\n",
    );
    let shown = config_show(&world);
    assert!(!shown.contains("warning:"), "{shown}");
    for needle in [
        "backend = process",
        "memory_mb = 512",
        "max_file_mb = 10",
        "approval_mode = plan",
    ] {
        assert!(shown.contains(needle), "no `{needle}` in {shown}");
    }
}

#[test]
fn symlinked_project_config_is_refused() {
    let world = World::new();
    let elsewhere = world.root.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("dir");
    std::fs::write(
        elsewhere.join("config.toml"),
        "[llm]\nmodel = \"from-symlink\"\n",
    )
    .expect("write");

    // The file is a symlink.
    std::fs::create_dir_all(world.project.join(".safe-coder")).expect("dir");
    std::os::unix::fs::symlink(
        elsewhere.join("config.toml"),
        world.project.join(".safe-coder/config.toml"),
    )
    .expect("symlink");
    let shown = config_show(&world);
    assert!(!shown.contains("from-symlink"), "{shown}");
    assert!(shown.contains("refused: it is a symlink"), "{shown}");
    assert!(
        shown.contains("warning:") && shown.contains("symlink"),
        "{shown}"
    );

    // The directory is a symlink.
    std::fs::remove_dir_all(world.project.join(".safe-coder")).expect("rm");
    std::os::unix::fs::symlink(&elsewhere, world.project.join(".safe-coder")).expect("symlink");
    let shown = config_show(&world);
    assert!(!shown.contains("from-symlink"), "{shown}");
    assert!(shown.contains("`.safe-coder` is a symlink"), "{shown}");

    // A FIFO is not a regular file, and reading it must not block.
    std::fs::remove_file(world.project.join(".safe-coder")).expect("rm");
    std::fs::create_dir_all(world.project.join(".safe-coder")).expect("dir");
    let fifo = std::ffi::CString::new(
        world
            .project
            .join(".safe-coder/config.toml")
            .to_str()
            .expect("utf-8")
            .as_bytes(),
    )
    .expect("cstring");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let shown = config_show(&world);
    assert!(shown.contains("not a regular file"), "{shown}");

    // Too large.
    std::fs::remove_file(world.project.join(".safe-coder/config.toml")).expect("rm");
    world.write(
        ".safe-coder/config.toml",
        &format!("[llm]\nmodel = \"big\"\n# {}\n", "x".repeat(100 * 1024)),
    );
    let shown = config_show(&world);
    assert!(shown.contains("larger than"), "{shown}");
    assert!(!shown.contains("model = big"), "{shown}");
}

/// Every flag of the commands a new user meets has a description, and `--demo` says
/// what it means for them.
#[test]
fn every_flag_has_a_description() {
    let world = World::new();
    for cmd in [
        &["chat"][..],
        &["exec"],
        &["config"],
        &["sandbox", "doctor"],
    ] {
        let out = world.cmd().args(cmd).arg("-h").output().expect("run");
        assert_ok(&out);
        let help = stdout(&out);
        for l in help.lines() {
            let t = l.trim_start();
            if !t.starts_with('-') {
                continue;
            }
            // "--flag <VALUE>  Description": a flag alone on its line has none.
            let described = t
                .split_once("  ")
                .is_some_and(|(_, d)| !d.trim().is_empty());
            assert!(described, "{cmd:?}: `{t}` has no description\n{help}");
        }
    }
    let out = world.cmd().args(["chat", "-h"]).output().expect("run");
    let help = stdout(&out);
    let demo = help.lines().find(|l| l.contains("--demo")).expect("--demo");
    assert!(
        demo.contains("without a sandbox") && demo.contains("accept"),
        "{demo}"
    );
}

/// `RUST_LOG=debug` writes a log file in the data dir, not to the screen, and no key
/// appears in it.
#[test]
fn rust_log_writes_a_redacted_file_not_the_screen() {
    let world = World::new();
    let server = MockServer::start(
        Wire::Anthropic,
        Script::new(vec![Reply::text("hi"), Reply::text("again")]),
    )
    .expect("server");
    let log = world.data_dir().join("logs/safe-coder.log");

    let out = world.exec(&server, &["--backend", "direct", "hello"]);
    assert_ok(&out);
    assert!(!log.exists(), "no RUST_LOG, no log file");

    let mut c = world.cmd();
    c.env("RUST_LOG", "debug")
        .env("OPENAI_API_KEY", "sk-other-provider-secret-77")
        .arg("exec")
        .args(provider_args(&server))
        .args(["--backend", "direct", "hello"]);
    let out = c.output().expect("run");
    assert_ok(&out);
    let text = std::fs::read_to_string(&log).expect("log file in the data dir");
    assert!(text.contains("DEBUG"), "{text}");
    assert!(text.contains(&server.base_url()), "{text}");
    assert!(
        !text.contains("test-key-123456"),
        "the key leaked into the log:\n{text}"
    );
    assert!(!text.contains("sk-other-provider-secret-77"), "{text}");
    for stream in [stdout(&out), stderr(&out)] {
        assert!(
            !stream.contains("DEBUG"),
            "a log line reached the screen: {stream}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log).expect("meta").permissions().mode();
    assert_eq!(mode & 0o077, 0, "the log is private");
}
