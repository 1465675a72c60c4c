//! The agent's four tools (DESIGN §3): `read_file`, `write_file`, `edit_file` and
//! `bash`, over any [`Sandbox`].
//!
//! Every path is first normalised lexically by [`normalize_path`] (relative, or absolute
//! under the agent root; `..` may not leave the root), then handed to the sandbox, which
//! resolves symlinks inside its own root. Every failure comes back as a [`ToolOutput`]
//! with `is_error: true` and a sentence telling the model how to fix its call, so the
//! model can correct itself; [`run`] never panics.

mod text;

use safe_coder_protocol::{ApprovalSubject, ToolSpec};
use safe_coder_sandbox::{CancellationToken, ExecRequest, Sandbox, SandboxError};
use serde_json::{json, Value};
use std::time::Duration;

pub use text::{apply_edit, head_tail, numbered_lines, EditError, EditResult};

/// Tool names, as the model calls them.
pub const READ_FILE: &str = "read_file";
pub const WRITE_FILE: &str = "write_file";
pub const EDIT_FILE: &str = "edit_file";
pub const BASH: &str = "bash";

/// `read_file` refuses files larger than this (use `bash` with `head`/`sed` instead).
pub const MAX_READ_BYTES: u64 = 5 * 1024 * 1024;
/// Lines `read_file` returns when the call gives no `limit`.
pub const DEFAULT_READ_LIMIT: usize = 2000;
/// Characters of one line `read_file` shows before truncating it.
pub const MAX_LINE_CHARS: usize = 2000;
/// Bytes of numbered text one `read_file` call returns at most.
pub const MAX_READ_OUTPUT: usize = 256 * 1024;
/// `edit_file` refuses files larger than this.
pub const MAX_EDIT_BYTES: u64 = 10 * 1024 * 1024;
/// `bash` timeout when the call gives none.
pub const DEFAULT_BASH_TIMEOUT_MS: u64 = 120_000;
/// The longest `bash` timeout a call may ask for.
pub const MAX_BASH_TIMEOUT_MS: u64 = 600_000;
/// Bytes of command output the model sees: the head and the tail, with a note between.
pub const BASH_OUTPUT_LIMIT: usize = 30_000;
/// Bytes of command output the sandbox keeps before the head/tail cut.
pub const BASH_CAPTURE_LIMIT: usize = 1024 * 1024;

/// What a tool needs to run.
pub struct ToolContext<'a> {
    pub sandbox: &'a dyn Sandbox,
    /// Fires when the user cancels the turn; a running `bash` is killed.
    pub cancel: CancellationToken,
}

/// The result of one tool call, sent back to the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
    /// Project-relative files the call wrote or edited (empty for `bash`, whose effects
    /// are unknown: commit everything after it).
    pub touched_paths: Vec<String>,
}

impl ToolOutput {
    fn ok(content: impl Into<String>) -> Self {
        ToolOutput {
            content: content.into(),
            is_error: false,
            touched_paths: Vec::new(),
        }
    }

    fn error(content: impl Into<String>) -> Self {
        ToolOutput {
            content: content.into(),
            is_error: true,
            touched_paths: Vec::new(),
        }
    }

    fn touched(content: impl Into<String>, path: String) -> Self {
        ToolOutput {
            content: content.into(),
            is_error: false,
            touched_paths: vec![path],
        }
    }
}

/// The tools offered to the model. `read_only` (plan mode) offers only `read_file`.
pub fn specs(read_only: bool) -> Vec<ToolSpec> {
    let read = ToolSpec {
        name: READ_FILE.into(),
        description: format!(
            "Read a text file in the project. Returns its lines numbered like `cat -n` \
             (line number, a tab, then the line); the numbers are not part of the file. \
             Reads at most {DEFAULT_READ_LIMIT} lines per call: use `offset` (1-based line \
             to start at) and `limit` for more. Paths are relative to the project root. \
             Binary files and files over {} MiB are refused: use bash for those, and bash \
             `ls` to list directories.",
            MAX_READ_BYTES / (1024 * 1024)
        ),
        input_schema: json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File path relative to the project root (e.g. \"src/main.rs\")."},
                "offset": {"type": "integer", "minimum": 1, "description": "1-based line number to start reading at. Default 1."},
                "limit": {"type": "integer", "minimum": 1, "description": "Maximum number of lines to return. Default 2000."}
            },
            "required": ["path"],
            "additionalProperties": false
        }),
    };
    if read_only {
        return vec![read];
    }
    vec![
        read,
        ToolSpec {
            name: WRITE_FILE.into(),
            description: "Create a file or replace its whole content. Parent directories are \
                          created. Prefer edit_file to change part of an existing file. \
                          Paths are relative to the project root."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path relative to the project root."},
                    "content": {"type": "string", "description": "The complete new content of the file."}
                },
                "required": ["path", "content"],
                "additionalProperties": false
            }),
        },
        ToolSpec {
            name: EDIT_FILE.into(),
            description: "Replace an exact piece of text in a file. `old_string` must match the \
                          file exactly, including whitespace and indentation (copy it from \
                          read_file output without the line-number prefix), and must be unique \
                          in the file unless `replace_all` is true: include enough surrounding \
                          lines to make it unique. Read the file before editing it."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path relative to the project root."},
                    "old_string": {"type": "string", "description": "The exact text to replace."},
                    "new_string": {"type": "string", "description": "The text to put in its place (must differ from old_string)."},
                    "replace_all": {"type": "boolean", "description": "Replace every occurrence instead of exactly one. Default false."}
                },
                "required": ["path", "old_string", "new_string"],
                "additionalProperties": false
            }),
        },
        ToolSpec {
            name: BASH.into(),
            description: format!(
                "Run a shell command with `bash -c` in the project root and return its \
                 combined stdout and stderr and its exit code. stdin is closed, so \
                 interactive commands fail: pass flags such as `-y` or `--no-pager`. Output \
                 over {BASH_OUTPUT_LIMIT} bytes keeps its beginning and end. The command is \
                 killed with all its child processes after `timeout_ms` (default \
                 {DEFAULT_BASH_TIMEOUT_MS}, max {MAX_BASH_TIMEOUT_MS}). Use it to list \
                 files, search (grep, find), build and run tests."
            ),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The command line to run."},
                    "timeout_ms": {"type": "integer", "minimum": 1, "maximum": MAX_BASH_TIMEOUT_MS, "description": "Timeout in milliseconds. Default 120000."}
                },
                "required": ["command"],
                "additionalProperties": false
            }),
        },
    ]
}

/// Whether a tool only reads (runs without approval, and in plan mode).
pub fn is_read_only(name: &str) -> bool {
    name == READ_FILE
}

/// Turns a path the model gave into a project-relative path with `/` separators
/// (`"."` for the root itself). Absolute paths are accepted when they lie under
/// `agent_root`; `..` may not climb above the root.
pub fn normalize_path(agent_root: &str, path: &str) -> Result<String, String> {
    let trimmed = path.trim();
    if trimmed.is_empty() {
        return Err("the path is empty; give a file path relative to the project root".into());
    }
    if trimmed.contains('\0') {
        return Err(format!("the path '{trimmed}' contains a NUL byte"));
    }
    if trimmed == "~" || trimmed.starts_with("~/") {
        return Err(format!(
            "'{trimmed}' points into a home directory, which is outside the project root \
             ({agent_root}); use a path relative to the project root"
        ));
    }
    let rest = if trimmed.starts_with('/') {
        let root = agent_root.trim_end_matches('/');
        if trimmed == root || (root.is_empty() && trimmed == "/") {
            ""
        } else if let Some(rest) = trimmed.strip_prefix(root).and_then(|r| r.strip_prefix('/')) {
            rest
        } else {
            return Err(format!(
                "the absolute path '{trimmed}' is outside the project root ({agent_root}); \
                 use a path relative to the project root"
            ));
        }
    } else {
        trimmed
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!(
                        "the path '{trimmed}' leaves the project root through '..'; \
                         use a path inside the project"
                    ));
                }
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        Ok(".".into())
    } else {
        Ok(parts.join("/"))
    }
}

/// Runs one tool call. Unknown tools and bad arguments give an error output that tells
/// the model how to fix its call.
pub async fn run(name: &str, input: &Value, ctx: &ToolContext<'_>) -> ToolOutput {
    let result = match name {
        READ_FILE => read_file(input, ctx).await,
        WRITE_FILE => write_file(input, ctx).await,
        EDIT_FILE => edit_file(input, ctx).await,
        BASH => bash(input, ctx).await,
        other => Err(format!(
            "unknown tool '{other}'; the available tools are read_file, write_file, \
             edit_file and bash"
        )),
    };
    result.unwrap_or_else(ToolOutput::error)
}

/// What the approval dialog shows before a write, edit or bash runs: the unified diff
/// the call would apply (with the file path in its header) or the command. `None` for
/// read-only and unknown tools. A call that cannot be previewed (bad arguments, a path
/// outside the root, text not found) still gets a subject that says why, so a mutating
/// call is never run unasked.
pub async fn preview(name: &str, input: &Value, sandbox: &dyn Sandbox) -> Option<ApprovalSubject> {
    match name {
        WRITE_FILE | EDIT_FILE => {
            let raw_path = input
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("(no path given)")
                .to_string();
            Some(match file_change_preview(name, input, sandbox).await {
                Ok((path, diff)) => ApprovalSubject::FileChange { path, diff },
                Err(why) => ApprovalSubject::FileChange {
                    path: raw_path,
                    diff: format!("(no preview: {why})\n"),
                },
            })
        }
        BASH => Some(ApprovalSubject::Command {
            command: match input.get("command") {
                Some(Value::String(c)) => c.clone(),
                Some(other) => other.to_string(),
                None => "(no command given)".into(),
            },
        }),
        _ => None,
    }
}

async fn file_change_preview(
    name: &str,
    input: &Value,
    sandbox: &dyn Sandbox,
) -> Result<(String, String), String> {
    let obj = object(name, input)?;
    let path = normalize_path(&sandbox.agent_root(), &req_str(obj, name, "path")?)?;
    let old = match sandbox.stat(&path).await.map_err(|e| e.to_string())? {
        Some(stat) if stat.is_dir => return Err(format!("'{path}' is a directory")),
        Some(stat) if stat.size > MAX_EDIT_BYTES => {
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
            Ok(s) => Some(s.to_string()),
            Err(_) => {
                return Ok((
                    path.clone(),
                    format!("(binary file {path} would be changed; no text diff)\n"),
                ))
            }
        },
        None => None,
    };
    let new_text = if name == WRITE_FILE {
        req_str(obj, name, "content")?
    } else {
        let Some(current) = &old_text else {
            return Err(format!("file not found: {path}"));
        };
        let old_string = req_str(obj, name, "old_string")?;
        let new_string = req_str(obj, name, "new_string")?;
        let replace_all = opt_bool(obj, name, "replace_all")?.unwrap_or(false);
        apply_edit(current, &old_string, &new_string, replace_all)
            .map_err(|e| e.message(&path))?
            .content
    };
    Ok((
        path.clone(),
        unified_diff(&path, old_text.as_deref(), &new_text),
    ))
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

// ---- argument helpers -------------------------------------------------------------

fn usage(tool: &str) -> &'static str {
    match tool {
        READ_FILE => r#"{"path": string, "offset"?: integer, "limit"?: integer}"#,
        WRITE_FILE => r#"{"path": string, "content": string}"#,
        EDIT_FILE => {
            r#"{"path": string, "old_string": string, "new_string": string, "replace_all"?: boolean}"#
        }
        _ => r#"{"command": string, "timeout_ms"?: integer}"#,
    }
}

fn object<'v>(tool: &str, input: &'v Value) -> Result<&'v serde_json::Map<String, Value>, String> {
    input.as_object().ok_or_else(|| {
        format!(
            "{tool} expects a JSON object as arguments, like {}",
            usage(tool)
        )
    })
}

fn req_str(obj: &serde_json::Map<String, Value>, tool: &str, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "{tool}: '{key}' must be a string, not {}; expected arguments {}",
            type_name(other),
            usage(tool)
        )),
        None => Err(format!(
            "{tool}: missing required argument '{key}'; expected arguments {}",
            usage(tool)
        )),
    }
}

/// An optional non-negative integer; numeric strings such as "10" are accepted too.
fn opt_u64(
    obj: &serde_json::Map<String, Value>,
    tool: &str,
    key: &str,
) -> Result<Option<u64>, String> {
    let bad = |v: &Value| {
        format!(
            "{tool}: '{key}' must be a non-negative integer, not {v}; expected arguments {}",
            usage(tool)
        )
    };
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => Ok(Some(u)),
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < 1e15 => Ok(Some(f as u64)),
            _ => Err(bad(v)),
        },
        Some(v @ Value::String(s)) => s.trim().parse::<u64>().map(Some).map_err(|_| bad(v)),
        Some(v) => Err(bad(v)),
    }
}

/// An optional boolean; "true"/"false" strings are accepted too.
fn opt_bool(
    obj: &serde_json::Map<String, Value>,
    tool: &str,
    key: &str,
) -> Result<Option<bool>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(v) => Err(format!(
            "{tool}: '{key}' must be true or false, not {v}; expected arguments {}",
            usage(tool)
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn sandbox_error(path: &str, err: SandboxError) -> String {
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

// ---- the tools ----------------------------------------------------------------------

async fn read_file(input: &Value, ctx: &ToolContext<'_>) -> Result<ToolOutput, String> {
    let obj = object(READ_FILE, input)?;
    let path = normalize_path(&ctx.sandbox.agent_root(), &req_str(obj, READ_FILE, "path")?)?;
    let offset = opt_u64(obj, READ_FILE, "offset")?.unwrap_or(1).max(1) as usize;
    let limit = match opt_u64(obj, READ_FILE, "limit")? {
        Some(0) => return Err("read_file: 'limit' must be at least 1".into()),
        Some(n) => n.min(usize::MAX as u64) as usize,
        None => DEFAULT_READ_LIMIT,
    };
    let stat = ctx
        .sandbox
        .stat(&path)
        .await
        .map_err(|e| sandbox_error(&path, e))?
        .ok_or_else(|| sandbox_error(&path, SandboxError::NotFound(path.clone())))?;
    if stat.is_dir {
        return Err(sandbox_error(
            &path,
            SandboxError::IsDirectory(path.clone()),
        ));
    }
    if stat.size > MAX_READ_BYTES {
        return Err(format!(
            "{path} is {} bytes, over the {} MiB read_file limit; read parts of it with bash \
             (e.g. `head -n 200 {path}`, `sed -n '1000,1200p' {path}` or `grep -n PATTERN {path}`)",
            stat.size,
            MAX_READ_BYTES / (1024 * 1024)
        ));
    }
    let bytes = ctx
        .sandbox
        .read_file(&path)
        .await
        .map_err(|e| sandbox_error(&path, e))?;
    let text = text::decode_text(&bytes).map_err(|why| {
        format!(
            "{path} looks like a binary file ({why}, {} bytes); read_file only reads text. \
             Inspect it with bash (e.g. `file {path}` or `xxd {path} | head`)",
            bytes.len()
        )
    })?;
    if text.is_empty() {
        return Ok(ToolOutput::ok(format!("({path} is empty)")));
    }
    numbered_lines(&text, offset, limit, MAX_LINE_CHARS, MAX_READ_OUTPUT)
        .map(ToolOutput::ok)
        .map_err(|total| {
            format!(
                "offset {offset} is past the end of {path}, which has {total} line(s); \
                 use an offset between 1 and {total}"
            )
        })
}

async fn write_file(input: &Value, ctx: &ToolContext<'_>) -> Result<ToolOutput, String> {
    let obj = object(WRITE_FILE, input)?;
    let path = normalize_path(
        &ctx.sandbox.agent_root(),
        &req_str(obj, WRITE_FILE, "path")?,
    )?;
    let content = req_str(obj, WRITE_FILE, "content")?;
    if path == "." {
        return Err("write_file needs a file path, not the project root".into());
    }
    let existed = matches!(ctx.sandbox.stat(&path).await, Ok(Some(_)));
    ctx.sandbox
        .write_file(&path, content.as_bytes())
        .await
        .map_err(|e| sandbox_error(&path, e))?;
    let what = if existed { "overwrote" } else { "new file" };
    Ok(ToolOutput::touched(
        format!("Wrote {} bytes to {path} ({what})", content.len()),
        path,
    ))
}

async fn edit_file(input: &Value, ctx: &ToolContext<'_>) -> Result<ToolOutput, String> {
    let obj = object(EDIT_FILE, input)?;
    let path = normalize_path(&ctx.sandbox.agent_root(), &req_str(obj, EDIT_FILE, "path")?)?;
    let old_string = req_str(obj, EDIT_FILE, "old_string")?;
    let new_string = req_str(obj, EDIT_FILE, "new_string")?;
    let replace_all = opt_bool(obj, EDIT_FILE, "replace_all")?.unwrap_or(false);
    let stat = ctx
        .sandbox
        .stat(&path)
        .await
        .map_err(|e| sandbox_error(&path, e))?
        .ok_or_else(|| format!("file not found: {path}; to create a new file use write_file"))?;
    if stat.is_dir {
        return Err(sandbox_error(
            &path,
            SandboxError::IsDirectory(path.clone()),
        ));
    }
    if stat.size > MAX_EDIT_BYTES {
        return Err(format!(
            "{path} is {} bytes, too large for edit_file; change it with bash (e.g. sed)",
            stat.size
        ));
    }
    let bytes = ctx
        .sandbox
        .read_file(&path)
        .await
        .map_err(|e| sandbox_error(&path, e))?;
    let current = String::from_utf8(bytes).map_err(|_| {
        format!("{path} is not valid UTF-8 text, so edit_file cannot edit it safely; use bash (e.g. sed)")
    })?;
    let edit = apply_edit(&current, &old_string, &new_string, replace_all)
        .map_err(|e| e.message(&path))?;
    ctx.sandbox
        .write_file(&path, edit.content.as_bytes())
        .await
        .map_err(|e| sandbox_error(&path, e))?;
    let noun = if edit.replacements == 1 {
        "replacement"
    } else {
        "replacements"
    };
    Ok(ToolOutput::touched(
        format!(
            "Edited {path}: {} {noun} (first at line {})",
            edit.replacements, edit.first_line
        ),
        path,
    ))
}

async fn bash(input: &Value, ctx: &ToolContext<'_>) -> Result<ToolOutput, String> {
    let obj = object(BASH, input)?;
    let command = req_str(obj, BASH, "command")?;
    if command.trim().is_empty() {
        return Err("bash: 'command' is empty; give the command line to run".into());
    }
    let timeout_ms = match opt_u64(obj, BASH, "timeout_ms")? {
        None | Some(0) => DEFAULT_BASH_TIMEOUT_MS,
        Some(ms) => ms.min(MAX_BASH_TIMEOUT_MS),
    };
    let request = ExecRequest {
        command,
        timeout: Duration::from_millis(timeout_ms),
        max_output_bytes: BASH_CAPTURE_LIMIT,
    };
    let out = ctx
        .sandbox
        .exec(request, ctx.cancel.clone())
        .await
        .map_err(|e| format!("bash could not run the command: {e}"))?;
    let mut content = head_tail(&out.output, out.total_output_bytes, BASH_OUTPUT_LIMIT);
    if content.is_empty() {
        content.push_str("(no output)");
    }
    if !content.ends_with('\n') {
        content.push('\n');
    }
    let is_error;
    if out.timed_out {
        content.push_str(&format!(
            "Command timed out after {timeout_ms} ms and was killed with all its child \
             processes. Use a larger timeout_ms (max {MAX_BASH_TIMEOUT_MS}) or run less at once."
        ));
        is_error = true;
    } else if out.cancelled {
        content
            .push_str("Command cancelled by the user; it was killed with all its child processes.");
        is_error = true;
    } else {
        match out.exit_code {
            Some(code) => {
                content.push_str(&format!("exit code: {code}"));
                is_error = code != 0;
            }
            None => {
                content.push_str("exit code: none (the command was killed by a signal)");
                is_error = true;
            }
        }
    }
    Ok(ToolOutput {
        content,
        is_error,
        touched_paths: Vec::new(),
    })
}
