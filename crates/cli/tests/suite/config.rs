//! `safe-coder config` and the precedence of flags, environment and files.

use safe_coder_test_support::{MockServer, Reply, Script, Wire};

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
