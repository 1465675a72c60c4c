//! `write_file`: create a file or replace its whole content.

use async_trait::async_trait;
use safe_coder_protocol::{ApprovalSubject, Effect, ToolSpec};
use safe_coder_sandbox::Sandbox;
use serde::Deserialize;
use serde_json::json;

use crate::{
    file_change_preview, one_line, project_path, sandbox_error, ToolContext, ToolOutput, TypedTool,
};

pub struct WriteFile;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct WriteFileArgs {
    pub path: String,
    /// The complete new content.
    pub content: String,
}

#[async_trait]
impl TypedTool for WriteFile {
    const NAME: &'static str = "write_file";
    const EFFECT: Effect = Effect::WritesFiles;
    const USAGE: &'static str = r#"{"path": string, "content": string}"#;
    type Args = WriteFileArgs;

    fn spec() -> ToolSpec {
        ToolSpec {
            name: Self::NAME.into(),
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
        }
    }

    fn summary(args: &WriteFileArgs) -> String {
        one_line(&args.path)
    }

    /// The diff from the current file (or `/dev/null`) to `content`.
    async fn preview(args: &WriteFileArgs, sandbox: &dyn Sandbox) -> Option<ApprovalSubject> {
        Some(file_change_preview(sandbox, &args.path, |_, _| Ok(args.content.clone())).await)
    }

    async fn run(args: &WriteFileArgs, ctx: &ToolContext<'_>) -> Result<ToolOutput, String> {
        let path = project_path(ctx.sandbox, &args.path)?;
        if path == "." {
            return Err("write_file needs a file path, not the project root".into());
        }
        let existed = matches!(ctx.sandbox.stat(&path).await, Ok(Some(_)));
        ctx.sandbox
            .write_file(&path, args.content.as_bytes())
            .await
            .map_err(|e| sandbox_error(&path, e))?;
        let what = if existed { "overwrote" } else { "new file" };
        Ok(ToolOutput::touched(
            format!("Wrote {} bytes to {path} ({what})", args.content.len()),
            path,
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::args::parse;
    use serde_json::Value;

    fn p(input: Value) -> Result<WriteFileArgs, String> {
        parse(WriteFile::NAME, WriteFile::USAGE, &input)
    }

    #[test]
    fn arguments() {
        assert_eq!(
            p(json!({"path": "a.rs", "content": ""})).unwrap(),
            WriteFileArgs {
                path: "a.rs".into(),
                content: String::new()
            }
        );
        assert_eq!(
            p(json!({"path": "a.rs"})).unwrap_err(),
            "write_file: missing required argument 'content'; expected arguments \
             {\"path\": string, \"content\": string}"
        );
        // Content is never coerced: a number is not file content.
        assert!(p(json!({"path": "a.rs", "content": 12}))
            .unwrap_err()
            .starts_with("write_file: 'content' must be a string, not a number;"));
        assert!(p(json!({"path": ["a"], "content": "x"}))
            .unwrap_err()
            .starts_with("write_file: 'path' must be a string, not an array;"));
    }
}
