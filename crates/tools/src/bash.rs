//! `bash`: run a command in the sandbox.

use std::time::Duration;

use async_trait::async_trait;
use safe_coder_protocol::{ApprovalSubject, Effect, ToolSpec};
use safe_coder_sandbox::{ExecRequest, Sandbox};
use serde::Deserialize;
use serde_json::json;

use crate::{head_tail, one_line, ToolContext, ToolOutput, TypedTool};

/// Timeout when the call gives none.
pub const DEFAULT_BASH_TIMEOUT_MS: u64 = 120_000;
/// The longest timeout a call may ask for.
pub const MAX_BASH_TIMEOUT_MS: u64 = 600_000;
/// Bytes of command output the model sees: the head and the tail, with a note between.
pub const BASH_OUTPUT_LIMIT: usize = 30_000;
/// Bytes of command output the sandbox keeps before the head/tail cut.
pub const BASH_CAPTURE_LIMIT: usize = 1024 * 1024;

pub struct Bash;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct BashArgs {
    pub command: String,
    /// Milliseconds; 0 or absent means the default, more than the maximum is capped.
    pub timeout_ms: Option<u64>,
}

#[async_trait]
impl TypedTool for Bash {
    const NAME: &'static str = "bash";
    const EFFECT: Effect = Effect::RunsCommands;
    const USAGE: &'static str = r#"{"command": string, "timeout_ms"?: integer}"#;
    type Args = BashArgs;

    fn spec() -> ToolSpec {
        ToolSpec {
            name: Self::NAME.into(),
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
        }
    }

    fn summary(args: &BashArgs) -> String {
        one_line(&args.command)
    }

    /// The command, exactly as it will run.
    async fn preview(args: &BashArgs, _sandbox: &dyn Sandbox) -> Option<ApprovalSubject> {
        Some(ApprovalSubject::Command {
            command: args.command.clone(),
        })
    }

    async fn run(args: &BashArgs, ctx: &ToolContext<'_>) -> Result<ToolOutput, String> {
        if args.command.trim().is_empty() {
            return Err("bash: 'command' is empty; give the command line to run".into());
        }
        let timeout_ms = match args.timeout_ms {
            None | Some(0) => DEFAULT_BASH_TIMEOUT_MS,
            Some(ms) => ms.min(MAX_BASH_TIMEOUT_MS),
        };
        let request = ExecRequest {
            command: args.command.clone(),
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
            content.push_str(
                "Command cancelled by the user; it was killed with all its child processes.",
            );
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::args::parse;
    use serde_json::Value;

    fn p(input: Value) -> Result<BashArgs, String> {
        parse(Bash::NAME, Bash::USAGE, &input)
    }

    #[test]
    fn arguments() {
        let a = p(json!({"command": "ls", "timeout_ms": "1500"})).unwrap();
        assert_eq!(
            a,
            BashArgs {
                command: "ls".into(),
                timeout_ms: Some(1500)
            }
        );
        assert_eq!(
            p(json!({"command": "ls", "timeout_ms": null}))
                .unwrap()
                .timeout_ms,
            None
        );
        assert_eq!(
            p(json!({"cmd": "ls"})).unwrap_err(),
            "bash: missing required argument 'command'; expected arguments \
             {\"command\": string, \"timeout_ms\"?: integer}"
        );
        assert!(p(json!({"command": ["ls", "-la"]}))
            .unwrap_err()
            .starts_with("bash: 'command' must be a string, not an array;"));
        assert!(p(json!({"command": "ls", "timeout_ms": -5}))
            .unwrap_err()
            .starts_with("bash: 'timeout_ms' must be a non-negative integer, not -5;"));
        assert!(p(json!({"command": "ls", "timeout_ms": "soon"}))
            .unwrap_err()
            .starts_with("bash: 'timeout_ms' must be a non-negative integer, not \"soon\";"));
    }
}
