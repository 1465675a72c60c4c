//! The agent's tools over any [`Sandbox`], and the [`ToolRegistry`] that
//! is the only place the rest of Safe Coder learns about them.
//!
//! Each tool is one module ([`read_file`], [`write_file`], [`edit_file`], [`bash`])
//! holding everything about it: its name, description and JSON schema, its typed
//! arguments, its [`Effect`], its approval preview, the one-line summary front ends
//! show, and its run. Nothing outside a tool's module matches on its name: approval is
//! a function of the approval mode and the effect, and history scans the whole tree
//! after a call whose effect is [`Effect::RunsCommands`]. docs/tools.md says how to add
//! a tool.
//!
//! Every path is first normalised lexically by the shared
//! [`safe_coder_sandbox::normalize_in_root`] (relative, or absolute under the agent root;
//! `..` may not leave the root), then handed to the sandbox, which resolves symlinks
//! inside its own root. Every failure comes back as a [`ToolOutput`] with
//! `is_error: true` and a sentence telling the model how to fix its call, so the model
//! can correct itself; nothing here panics.

pub mod args;
pub mod bash;
pub mod edit_file;
pub mod read_file;
mod text;
pub mod write_file;

use async_trait::async_trait;
use safe_coder_protocol::{ApprovalMode, ApprovalSubject, Effect, ToolSpec};
use safe_coder_sandbox::{CancellationToken, Sandbox, SandboxError};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use bash::Bash;
pub use edit_file::EditFile;
pub use read_file::ReadFile;
pub use text::{apply_edit, head_tail, numbered_lines, EditError, EditResult};
pub use write_file::WriteFile;

/// What a tool needs to run.
pub struct ToolContext<'a> {
    pub sandbox: &'a dyn Sandbox,
    /// Fires when the user cancels the turn; a running command is killed.
    pub cancel: CancellationToken,
}

/// The result of one tool call, sent back to the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
    /// Project-relative files the call wrote or edited. Empty for a tool whose effect is
    /// [`Effect::RunsCommands`]: what a command changed is unknown, so history scans the
    /// whole tree after it.
    pub touched_paths: Vec<String>,
}

impl ToolOutput {
    pub fn ok(content: impl Into<String>) -> Self {
        ToolOutput {
            content: content.into(),
            is_error: false,
            touched_paths: Vec::new(),
        }
    }

    pub fn error(content: impl Into<String>) -> Self {
        ToolOutput {
            content: content.into(),
            is_error: true,
            touched_paths: Vec::new(),
        }
    }

    pub fn touched(content: impl Into<String>, path: String) -> Self {
        ToolOutput {
            content: content.into(),
            is_error: false,
            touched_paths: vec![path],
        }
    }
}

/// One tool, written once with typed arguments. Implement this in the tool's module and
/// add the type to [`ToolRegistry::builtin`]; the blanket impls make it a [`Tool`].
#[async_trait]
pub trait TypedTool: Send + Sync + 'static {
    /// The name the model calls it by.
    const NAME: &'static str;
    /// What a call can do; decides approval and how history records it.
    const EFFECT: Effect;
    /// The arguments' shape, quoted in every argument error the model receives
    /// (e.g. `{"path": string, "offset"?: integer}`).
    const USAGE: &'static str;
    /// The typed arguments, read leniently by [`args::parse`].
    type Args: DeserializeOwned + Send + Sync;

    /// Name, description and JSON schema, as offered to the model.
    fn spec() -> ToolSpec;

    /// One line saying what a call is about (the path, the command), for front ends.
    fn summary(args: &Self::Args) -> String;

    /// What the approval dialog shows before the call runs: the diff or the command.
    /// A tool whose effect is not [`Effect::ReadOnly`] must return `Some` (also when the
    /// call cannot apply: then the subject says why), or its calls are refused where the
    /// mode asks.
    async fn preview(_args: &Self::Args, _sandbox: &dyn Sandbox) -> Option<ApprovalSubject> {
        None
    }

    /// Runs the call. `Err` is the sentence the model receives as an error result.
    async fn run(args: &Self::Args, ctx: &ToolContext<'_>) -> Result<ToolOutput, String>;
}

/// A tool as the registry holds it (object-safe; every [`TypedTool`] is one).
pub trait Tool: Send + Sync {
    fn name(&self) -> &'static str;
    fn effect(&self) -> Effect;
    fn spec(&self) -> ToolSpec;
    /// Reads the call's arguments. `Err` is the sentence the model receives.
    fn prepare(&self, input: &Value) -> Result<Box<dyn ToolCall>, String>;
}

/// One call whose arguments were read: ready to summarise, preview and run.
#[async_trait]
pub trait ToolCall: Send + Sync {
    fn name(&self) -> &'static str;
    fn effect(&self) -> Effect;
    /// One line saying what the call is about, for front ends.
    fn summary(&self) -> String;
    /// See [`TypedTool::preview`].
    async fn preview(&self, sandbox: &dyn Sandbox) -> Option<ApprovalSubject>;
    /// Runs the call; failures are an error output, never a panic.
    async fn run(&self, ctx: &ToolContext<'_>) -> ToolOutput;
}

impl<T: TypedTool> Tool for T {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn effect(&self) -> Effect {
        T::EFFECT
    }

    fn spec(&self) -> ToolSpec {
        T::spec()
    }

    fn prepare(&self, input: &Value) -> Result<Box<dyn ToolCall>, String> {
        let args = args::parse::<T::Args>(T::NAME, T::USAGE, input)?;
        Ok(Box::new(Prepared::<T> { args }))
    }
}

struct Prepared<T: TypedTool> {
    args: T::Args,
}

#[async_trait]
impl<T: TypedTool> ToolCall for Prepared<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn effect(&self) -> Effect {
        T::EFFECT
    }

    fn summary(&self) -> String {
        T::summary(&self.args)
    }

    async fn preview(&self, sandbox: &dyn Sandbox) -> Option<ApprovalSubject> {
        T::preview(&self.args, sandbox).await
    }

    async fn run(&self, ctx: &ToolContext<'_>) -> ToolOutput {
        T::run(&self.args, ctx)
            .await
            .unwrap_or_else(ToolOutput::error)
    }
}

/// A call to a tool the registry does not have.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown tool '{name}'; the available tools are {available}")]
pub struct UnknownTool {
    pub name: String,
    /// The registry's tool names, as a sentence (`a, b and c`).
    pub available: String,
}

/// The tools the agent has: what is offered to the model, and lookup by name.
pub struct ToolRegistry {
    tools: &'static [&'static dyn Tool],
}

static BUILTIN: ToolRegistry = ToolRegistry {
    tools: &[&ReadFile, &WriteFile, &EditFile, &Bash],
};

impl ToolRegistry {
    /// The four built-in tools, in the order they are offered.
    pub fn builtin() -> &'static ToolRegistry {
        &BUILTIN
    }

    pub fn tools(&self) -> impl Iterator<Item = &'static dyn Tool> + '_ {
        self.tools.iter().copied()
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.tools().map(|t| t.name())
    }

    /// The tools offered to the model in `mode`: those the mode can run at all (plan
    /// mode offers only read-only tools).
    pub fn specs(&self, mode: ApprovalMode) -> Vec<ToolSpec> {
        self.tools()
            .filter(|t| mode.offers(t.effect()))
            .map(|t| t.spec())
            .collect()
    }

    pub fn get(&self, name: &str) -> Result<&'static dyn Tool, UnknownTool> {
        self.tools().find(|t| t.name() == name).ok_or_else(|| {
            let names: Vec<&str> = self.names().collect();
            let available = match names.split_last() {
                None => "none".to_string(),
                Some((last, [])) => (*last).to_string(),
                Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            };
            UnknownTool {
                name: name.to_string(),
                available,
            }
        })
    }

    /// Looks the tool up and reads the call's arguments. `Err` is the sentence the model
    /// receives (unknown tool, or what is wrong with the arguments).
    pub fn prepare(&self, name: &str, input: &Value) -> Result<Box<dyn ToolCall>, String> {
        self.get(name).map_err(|e| e.to_string())?.prepare(input)
    }

    /// [`prepare`](Self::prepare) and run, for callers that need no approval in between.
    pub async fn run(&self, name: &str, input: &Value, ctx: &ToolContext<'_>) -> ToolOutput {
        match self.prepare(name, input) {
            Ok(call) => call.run(ctx).await,
            Err(why) => ToolOutput::error(why),
        }
    }
}

/// The first line of `text`, cut to 100 characters: how summaries stay one line.
pub fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() > 100 {
        format!("{}…", line.chars().take(100).collect::<String>())
    } else {
        line.to_string()
    }
}

/// A project-relative path for `raw` under the sandbox's root, or the sentence for the
/// model (the shared rule: [`safe_coder_sandbox::normalize_in_root`]).
pub(crate) fn project_path(sandbox: &dyn Sandbox, raw: &str) -> Result<String, String> {
    safe_coder_sandbox::normalize_in_root(&sandbox.agent_root(), raw).map_err(|e| e.to_string())
}

/// A sandbox failure on `path` as a sentence for the model.
pub(crate) fn sandbox_error(path: &str, err: SandboxError) -> String {
    match err {
        SandboxError::NotFound(_) => {
            format!("file not found: {path}; check the path (bash `ls` or `find` lists files)")
        }
        SandboxError::IsDirectory(_) => {
            format!("'{path}' is a directory, not a file; use bash `ls {path}` to list it")
        }
        other => other.to_string(),
    }
}

/// A unified diff from `old` (`None`: the file does not exist yet) to `new`.
pub fn unified_diff(path: &str, old: Option<&str>, new: &str) -> String {
    let old_header = if old.is_some() {
        format!("a/{path}")
    } else {
        "/dev/null".to_string()
    };
    let diff = similar::TextDiff::from_lines(old.unwrap_or(""), new);
    let text = diff
        .unified_diff()
        .context_radius(3)
        .header(&old_header, &format!("b/{path}"))
        .to_string();
    if text.is_empty() {
        format!("(no changes to {path})\n")
    } else {
        text
    }
}

/// The approval subject of a call that would change the file at `raw_path`: the
/// unified diff from the current content to what `new_text` makes of it (`None` when
/// the file does not exist). A call that cannot apply (a path outside the root, text not
/// found) still gets a subject, saying why, so a change is never approved blind.
pub(crate) async fn file_change_preview(
    sandbox: &dyn Sandbox,
    raw_path: &str,
    new_text: impl FnOnce(&str, Option<&str>) -> Result<String, String> + Send,
) -> ApprovalSubject {
    match file_change_diff(sandbox, raw_path, new_text).await {
        Ok((path, diff)) => ApprovalSubject::FileChange { path, diff },
        Err(why) => ApprovalSubject::FileChange {
            path: raw_path.to_string(),
            diff: format!("(no preview: {why})\n"),
        },
    }
}

/// The largest file a preview diffs.
const MAX_PREVIEW_BYTES: u64 = edit_file::MAX_EDIT_BYTES;

async fn file_change_diff(
    sandbox: &dyn Sandbox,
    raw_path: &str,
    new_text: impl FnOnce(&str, Option<&str>) -> Result<String, String> + Send,
) -> Result<(String, String), String> {
    let path = project_path(sandbox, raw_path)?;
    let old = match sandbox.stat(&path).await.map_err(|e| e.to_string())? {
        Some(stat) if stat.is_dir => return Err(format!("'{path}' is a directory")),
        Some(stat) if stat.size > MAX_PREVIEW_BYTES => {
            return Err(format!(
                "'{path}' is too large to diff ({} bytes)",
                stat.size
            ))
        }
        Some(_) => Some(sandbox.read_file(&path).await.map_err(|e| e.to_string())?),
        None => None,
    };
    let old_text = match &old {
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(s) => Some(s),
            Err(_) => {
                return Ok((
                    path.clone(),
                    format!("(binary file {path} would be changed; no text diff)\n"),
                ))
            }
        },
        None => None,
    };
    let new = new_text(&path, old_text)?;
    let diff = unified_diff(&path, old_text, &new);
    Ok((path, diff))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(specs: Vec<ToolSpec>) -> Vec<String> {
        specs.into_iter().map(|s| s.name).collect()
    }

    #[test]
    fn specs_per_mode() {
        let reg = ToolRegistry::builtin();
        let all = ["read_file", "write_file", "edit_file", "bash"];
        assert_eq!(names(reg.specs(ApprovalMode::Plan)), ["read_file"]);
        for mode in [
            ApprovalMode::Default,
            ApprovalMode::AutoEdit,
            ApprovalMode::Yolo,
        ] {
            assert_eq!(names(reg.specs(mode)), all, "{mode}");
        }
        for spec in reg.specs(ApprovalMode::Yolo) {
            assert_eq!(spec.input_schema["type"], "object", "{}", spec.name);
            assert!(spec.input_schema["required"].is_array(), "{}", spec.name);
            assert!(!spec.description.is_empty(), "{}", spec.name);
        }
    }

    #[test]
    fn effects_and_lookup() {
        let reg = ToolRegistry::builtin();
        let effect = |n: &str| reg.get(n).unwrap().effect();
        assert_eq!(effect("read_file"), Effect::ReadOnly);
        assert_eq!(effect("write_file"), Effect::WritesFiles);
        assert_eq!(effect("edit_file"), Effect::WritesFiles);
        assert_eq!(effect("bash"), Effect::RunsCommands);
        for tool in reg.tools() {
            assert_eq!(tool.spec().name, tool.name());
        }
    }

    #[test]
    fn unknown_tool_lists_the_names() {
        let reg = ToolRegistry::builtin();
        let err = reg.get("grep").err().unwrap();
        assert_eq!(
            err.to_string(),
            "unknown tool 'grep'; the available tools are read_file, write_file, edit_file and bash"
        );
        assert_eq!(
            reg.prepare("grep", &json!({})).err().unwrap(),
            err.to_string()
        );
    }

    #[test]
    fn prepared_calls_know_their_effect_and_summary() {
        let reg = ToolRegistry::builtin();
        let call = reg
            .prepare("bash", &json!({"command": "cargo test\n--more"}))
            .unwrap();
        assert_eq!(
            (call.name(), call.effect(), call.summary().as_str()),
            ("bash", Effect::RunsCommands, "cargo test")
        );
        let call = reg
            .prepare("read_file", &json!({"path": "src/a.rs", "limit": "5"}))
            .unwrap();
        assert_eq!(call.summary(), "src/a.rs");
        let err = reg
            .prepare("write_file", &json!({"path": "a"}))
            .err()
            .unwrap();
        assert!(err.contains("missing required argument 'content'"), "{err}");
    }

    #[test]
    fn summaries_stay_one_short_line() {
        assert_eq!(one_line("a\nb"), "a");
        let long = "x".repeat(150);
        let cut = one_line(&long);
        assert_eq!(cut.chars().count(), 101);
        assert!(cut.ends_with('…'));
        assert_eq!(one_line(""), "");
    }
}
