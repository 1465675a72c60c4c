//! `edit_file`: replace an exact piece of text in a file.

use async_trait::async_trait;
use safe_coder_protocol::{ApprovalSubject, Effect, ToolSpec};
use safe_coder_sandbox::{Sandbox, SandboxError};
use serde::Deserialize;
use serde_json::json;

use crate::{
    apply_edit, file_change_preview, one_line, project_path, sandbox_error, ToolContext,
    ToolOutput, TypedTool,
};

/// `edit_file` refuses files larger than this.
pub const MAX_EDIT_BYTES: u64 = 10 * 1024 * 1024;

pub struct EditFile;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct EditFileArgs {
    pub path: String,
    pub old_string: String,
    pub new_string: String,
    /// Replace every occurrence instead of exactly one (default false).
    pub replace_all: Option<bool>,
}

#[async_trait]
impl TypedTool for EditFile {
    const NAME: &'static str = "edit_file";
    const EFFECT: Effect = Effect::WritesFiles;
    const USAGE: &'static str =
        r#"{"path": string, "old_string": string, "new_string": string, "replace_all"?: boolean}"#;
    type Args = EditFileArgs;

    fn spec() -> ToolSpec {
        ToolSpec {
            name: Self::NAME.into(),
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
        }
    }

    fn summary(args: &EditFileArgs) -> String {
        one_line(&args.path)
    }

    /// The diff the edit would apply; an edit that cannot apply says why.
    async fn preview(args: &EditFileArgs, sandbox: &dyn Sandbox) -> Option<ApprovalSubject> {
        Some(
            file_change_preview(sandbox, &args.path, |path, current| {
                let current = current.ok_or_else(|| format!("file not found: {path}"))?;
                apply_edit(
                    current,
                    &args.old_string,
                    &args.new_string,
                    args.replace_all.unwrap_or(false),
                )
                .map(|edit| edit.content)
                .map_err(|e| e.message(path))
            })
            .await,
        )
    }

    async fn run(args: &EditFileArgs, ctx: &ToolContext<'_>) -> Result<ToolOutput, String> {
        let path = project_path(ctx.sandbox, &args.path)?;
        let stat = ctx
            .sandbox
            .stat(&path)
            .await
            .map_err(|e| sandbox_error(&path, e))?
            .ok_or_else(|| {
                format!("file not found: {path}; to create a new file use write_file")
            })?;
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
            format!(
                "{path} is not valid UTF-8 text, so edit_file cannot edit it safely; use bash \
                 (e.g. sed)"
            )
        })?;
        let edit = apply_edit(
            &current,
            &args.old_string,
            &args.new_string,
            args.replace_all.unwrap_or(false),
        )
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::args::parse;
    use serde_json::Value;

    fn p(input: Value) -> Result<EditFileArgs, String> {
        parse(EditFile::NAME, EditFile::USAGE, &input)
    }

    #[test]
    fn arguments() {
        let a = p(json!({"path": "a", "old_string": "x", "new_string": "y"})).unwrap();
        assert_eq!(a.replace_all, None);
        for (given, wanted) in [
            (json!(true), true),
            (json!("true"), true),
            (json!("False"), false),
            (json!(false), false),
        ] {
            let a =
                p(json!({"path": "a", "old_string": "x", "new_string": "y", "replace_all": given}))
                    .unwrap();
            assert_eq!(a.replace_all, Some(wanted));
        }
        assert_eq!(
            p(json!({"path": "a", "old_string": "x"})).unwrap_err(),
            "edit_file: missing required argument 'new_string'; expected arguments {\"path\": \
             string, \"old_string\": string, \"new_string\": string, \"replace_all\"?: boolean}"
        );
        assert!(p(
            json!({"path": "a", "old_string": "x", "new_string": "y", "replace_all": "always"})
        )
        .unwrap_err()
        .starts_with("edit_file: 'replace_all' must be true or false, not \"always\";"));
        assert!(
            p(json!({"path": "a", "old_string": true, "new_string": "y"}))
                .unwrap_err()
                .starts_with("edit_file: 'old_string' must be a string, not a boolean;")
        );
    }
}
