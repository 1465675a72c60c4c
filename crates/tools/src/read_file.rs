//! `read_file`: numbered lines of a text file.

use async_trait::async_trait;
use safe_coder_protocol::{Effect, ToolSpec};
use safe_coder_sandbox::{decode_text, SandboxError};
use serde::Deserialize;
use serde_json::json;

use crate::{
    numbered_lines, one_line, project_path, sandbox_error, ToolContext, ToolOutput, TypedTool,
};

/// `read_file` refuses files larger than this (use `bash` with `head`/`sed` instead).
pub const MAX_READ_BYTES: u64 = 5 * 1024 * 1024;
/// Lines `read_file` returns when the call gives no `limit`.
pub const DEFAULT_READ_LIMIT: usize = 2000;
/// Characters of one line `read_file` shows before truncating it.
pub const MAX_LINE_CHARS: usize = 2000;
/// Bytes of numbered text one `read_file` call returns at most.
pub const MAX_READ_OUTPUT: usize = 256 * 1024;

pub struct ReadFile;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ReadFileArgs {
    pub path: String,
    /// 1-based line to start at (0 is read as 1).
    pub offset: Option<u64>,
    /// Lines to return; at least 1.
    pub limit: Option<u64>,
}

#[async_trait]
impl TypedTool for ReadFile {
    const NAME: &'static str = "read_file";
    const EFFECT: Effect = Effect::ReadOnly;
    const USAGE: &'static str = r#"{"path": string, "offset"?: integer, "limit"?: integer}"#;
    type Args = ReadFileArgs;

    fn spec() -> ToolSpec {
        ToolSpec {
            name: Self::NAME.into(),
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
        }
    }

    fn summary(args: &ReadFileArgs) -> String {
        one_line(&args.path)
    }

    async fn run(args: &ReadFileArgs, ctx: &ToolContext<'_>) -> Result<ToolOutput, String> {
        let path = project_path(ctx.sandbox, &args.path)?;
        let offset = args.offset.unwrap_or(1).max(1).min(usize::MAX as u64) as usize;
        let limit = match args.limit {
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
        let text = decode_text(&bytes).map_err(|why| {
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::args::parse;
    use serde_json::Value;

    fn p(input: Value) -> Result<ReadFileArgs, String> {
        parse(ReadFile::NAME, ReadFile::USAGE, &input)
    }

    #[test]
    fn arguments() {
        assert_eq!(
            p(json!({"path": "a.rs"})).unwrap(),
            ReadFileArgs {
                path: "a.rs".into(),
                offset: None,
                limit: None
            }
        );
        // Models send numbers as strings, and floats with no fraction.
        let a = p(json!({"path": "a.rs", "offset": "10", "limit": 5.0})).unwrap();
        assert_eq!((a.offset, a.limit), (Some(10), Some(5)));
        assert_eq!(
            p(json!({})).unwrap_err(),
            "read_file: missing required argument 'path'; expected arguments \
             {\"path\": string, \"offset\"?: integer, \"limit\"?: integer}"
        );
        assert!(p(json!({"path": 3}))
            .unwrap_err()
            .starts_with("read_file: 'path' must be a string, not a number;"));
        assert!(p(json!({"path": "a", "offset": "ten"}))
            .unwrap_err()
            .starts_with("read_file: 'offset' must be a non-negative integer, not \"ten\";"));
        assert!(p(json!("a.rs"))
            .unwrap_err()
            .starts_with("read_file expects a JSON object as arguments, like {"));
    }
}
