//! `!cmd`: the user runs a command in the sandbox themselves.

use safe_coder_sandbox::ExecOutput;

use crate::text::human_size;

/// The command of a `!cmd` line, trimmed; `None` when the line does not start with `!`
/// (leading blanks allowed). `Some("")` for a bare `!`, which the caller should answer
/// with a hint rather than run.
pub fn parse_shell(line: &str) -> Option<&str> {
    line.trim_start().strip_prefix('!').map(str::trim)
}

/// What the conversation gets after a `!cmd`, so the model sees what the user ran and
/// what came out: the command, its output, and how it ended.
pub fn format_shell_for_model(cmd: &str, output: &ExecOutput) -> String {
    let mut text = format!("I ran this command in the sandbox myself:\n$ {cmd}\n");
    let body = output.output.trim_end_matches('\n');
    if body.is_empty() {
        text.push_str("(no output)\n");
    } else {
        text.push_str(body);
        text.push('\n');
    }
    if output.total_output_bytes > output.output.len() as u64 {
        text.push_str(&format!(
            "[output truncated: {} of {} shown]\n",
            human_size(output.output.len() as u64),
            human_size(output.total_output_bytes)
        ));
    }
    let status = if output.timed_out {
        format!(
            "timed out after {:.1} s and was killed",
            output.duration.as_secs_f64()
        )
    } else if output.cancelled {
        "cancelled".to_string()
    } else {
        match output.exit_code {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".to_string(),
        }
    };
    text.push_str(&format!("[{status}]"));
    text
}
