//! The environment the agent's commands run with: the parent's, minus secrets.
//!
//! A variable is dropped when its upper-cased name
//! - contains one of [`SECRET_WORDS`] (`API_KEY`, `TOKEN`, `SECRET`, `PASSWORD`, ...), or
//! - starts with one of [`SECRET_PREFIXES`] (provider and cloud variables: `ANTHROPIC_`,
//!   `OPENAI_`, `OLLAMA_`, `AWS_`, `GOOGLE_`, `AZURE_`, `SAFE_CODER_`, ...), or
//! - is one of [`SECRET_NAMES`] (host credentials such as `SSH_AUTH_SOCK`).
//!
//! Then `SAFE_CODER=1`, `PAGER=cat`, `GIT_PAGER=cat` and `GIT_TERMINAL_PROMPT=0` are set
//! (commands cannot page or prompt: stdin is closed), and `TERM=dumb` when `TERM` is
//! unset. Dropping too much is harmless; dropping too little leaks a key.

/// Parts of a name that mark it as a secret wherever they appear.
pub const SECRET_WORDS: &[&str] = &[
    "API_KEY",
    "APIKEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "PRIVATE_KEY",
    "ACCESS_KEY",
    "AUTH_KEY",
];

/// Prefixes of provider, cloud and Safe Coder variables.
pub const SECRET_PREFIXES: &[&str] = &[
    "ANTHROPIC_",
    "CLAUDE_",
    "OPENAI_",
    "OPENROUTER_",
    "OLLAMA_",
    "GEMINI_",
    "MISTRAL_",
    "GROQ_",
    "DEEPSEEK_",
    "COHERE_",
    "AWS_",
    "GOOGLE_",
    "GCLOUD_",
    "GCP_",
    "CLOUDSDK_",
    "AZURE_",
    "HF_",
    "HUGGING_FACE_",
    "HUGGINGFACE_",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "GH_ENTERPRISE_TOKEN",
    "GITLAB_",
    "NPM_TOKEN",
    "NODE_AUTH_TOKEN",
    "CARGO_REGISTRY_TOKEN",
    "TWINE_",
    "DOCKER_AUTH",
    "SAFE_CODER_",
];

/// Exact names of host credentials that carry no secret-looking word.
pub const SECRET_NAMES: &[&str] = &[
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "GPG_AGENT_INFO",
    "KUBECONFIG",
    "DATABASE_URL",
    "NETRC",
    "VAULT_ADDR",
];

/// Whether a variable of this name is kept away from the agent's commands.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|w| upper.contains(w))
        || SECRET_PREFIXES.iter().any(|p| upper.starts_with(p))
        || SECRET_NAMES.contains(&upper.as_str())
}

/// The parent's environment without secrets, plus the variables every agent command
/// gets. Commands run with `env_clear()` and exactly this list. Variables whose name or
/// value is not valid UTF-8 are dropped.
pub fn scrubbed_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| !is_secret_name(k))
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "SAFE_CODER" | "PAGER" | "GIT_PAGER" | "GIT_TERMINAL_PROMPT"
            )
        })
        .collect();
    if !env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".into(), "dumb".into()));
    }
    for (k, v) in [
        ("SAFE_CODER", "1"),
        ("PAGER", "cat"),
        ("GIT_PAGER", "cat"),
        ("GIT_TERMINAL_PROMPT", "0"),
    ] {
        env.push((k.into(), v.into()));
    }
    env
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        for name in [
            "ANTHROPIC_API_KEY",
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
            "OLLAMA_HOST",
            "AWS_SECRET_ACCESS_KEY",
            "GITHUB_TOKEN",
            "GH_TOKEN",
            "HF_TOKEN",
            "MY_SERVICE_PASSWORD",
            "SAFE_CODER_API_KEY",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "SSH_AUTH_SOCK",
            "some_api_key",
        ] {
            assert!(is_secret_name(name), "{name} should be scrubbed");
        }
        for name in ["PATH", "HOME", "LANG", "CARGO_HOME", "RUSTUP_HOME", "USER"] {
            assert!(!is_secret_name(name), "{name} should be kept");
        }
    }
}
