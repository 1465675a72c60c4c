//! The environment the agent's commands run with: an allow-list, never the parent's
//! environment minus what looks secret. A block-list always misses one (`MYSQL_PWD`,
//! `STRIPE_SK`, `SENTRY_DSN`, a proxy URL with a password...); an allow-list only ever
//! drops too much, and the user can name more variables in `[isolation]
//! env_passthrough`.
//!
//! Passed from the parent when set: [`ALLOWED`] (locale, terminal, time zone, user and
//! shell names, `PATH`, and where toolchains live), every `LC_*`, and the names in the
//! spec's `env_passthrough`. Then `SAFE_CODER=1`, `PAGER=cat`, `GIT_PAGER=cat` and
//! `GIT_TERMINAL_PROMPT=0` are set (commands cannot page or prompt: stdin is closed),
//! and `TERM=dumb` when `TERM` is unset. A sandboxing backend then sets `HOME` and
//! `TMPDIR` to its own directories on top.

/// Names passed through from the parent when set. None of them holds a credential.
pub const ALLOWED: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TERM",
    "COLORTERM",
    "NO_COLOR",
    "TZ",
    "TMPDIR",
    // Where toolchains live (paths only); the process backend shows them read-only.
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "PYENV_ROOT",
    "PYENV_VERSION",
    "GOROOT",
    "GOPATH",
    "JAVA_HOME",
    "NVM_DIR",
];

/// Names that every command gets set by Safe Coder itself (a parent's value is ignored).
const FIXED: &[(&str, &str)] = &[
    ("SAFE_CODER", "1"),
    ("PAGER", "cat"),
    ("GIT_PAGER", "cat"),
    ("GIT_TERMINAL_PROMPT", "0"),
];

/// Whether a variable of this name reaches the agent's commands (given the user's
/// passthrough names).
pub fn is_allowed(name: &str, passthrough: &[String]) -> bool {
    if FIXED.iter().any(|(k, _)| *k == name) {
        return false;
    }
    ALLOWED.contains(&name) || name.starts_with("LC_") || passthrough.iter().any(|p| p == name)
}

/// The environment of an agent command, from the given parent variables. Variables whose
/// name or value is not valid UTF-8 are dropped.
pub fn command_env_from<I>(parent: I, passthrough: &[String]) -> Vec<(String, String)>
where
    I: IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
{
    let mut env: Vec<(String, String)> = parent
        .into_iter()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| is_allowed(k, passthrough))
        .collect();
    if !env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".into(), "dumb".into()));
    }
    env.extend(FIXED.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// The environment of an agent command, from this process's environment. Commands run
/// with `env_clear()` and exactly this list (plus what the backend sets on top).
pub fn command_env(passthrough: &[String]) -> Vec<(String, String)> {
    command_env_from(std::env::vars_os(), passthrough)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)], passthrough: &[&str]) -> Vec<(String, String)> {
        let pass: Vec<String> = passthrough.iter().map(|s| s.to_string()).collect();
        command_env_from(vars.iter().map(|(k, v)| ((*k).into(), (*v).into())), &pass)
    }

    #[test]
    fn only_allowed_names_pass() {
        let env = env_of(
            &[
                ("PATH", "/usr/bin"),
                ("LC_ALL", "C.UTF-8"),
                ("MYSQL_PWD", "hunter2"),
                ("HTTPS_PROXY", "http://u:pw@proxy:3128"),
                ("ANTHROPIC_API_KEY", "sk-ant"),
                ("MY_TOOL_FLAGS", "-v"),
                ("PAGER", "less"),
            ],
            &["MY_TOOL_FLAGS"],
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some("/usr/bin"));
        assert_eq!(get("LC_ALL"), Some("C.UTF-8"));
        assert_eq!(get("MY_TOOL_FLAGS"), Some("-v"));
        assert_eq!(get("PAGER"), Some("cat"));
        assert_eq!(get("TERM"), Some("dumb"));
        assert_eq!(get("SAFE_CODER"), Some("1"));
        for k in ["MYSQL_PWD", "HTTPS_PROXY", "ANTHROPIC_API_KEY"] {
            assert_eq!(get(k), None, "{k} must not pass");
        }
        assert_eq!(env.iter().filter(|(k, _)| k == "PAGER").count(), 1);
    }
}
