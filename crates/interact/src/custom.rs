//! Custom commands: Markdown files in `<config_dir>/commands/` (the user's) and
//! `<project>/.safe-coder/commands/` (the project's).
//!
//! `git/commit.md` becomes `/git:commit`. A file may start with front matter between
//! `---` lines holding simple `key: value` pairs (`description`, `argument-hint`); the
//! rest is the prompt template, expanded by [`expand_custom`]:
//! `{{args}}` → the arguments, `!{cmd}` → the command's output (run in the sandbox),
//! `@{file}` → the file's content (read from the sandbox).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use safe_coder_sandbox::{
    decode_text, normalize_in_root, CancellationToken, ExecRequest, Sandbox, SandboxError,
};

use crate::at_paths::listing;
use crate::memory::{read_guarded, Guarded};
use crate::text::human_size;

/// Where the project's custom commands live, relative to the project root.
pub const PROJECT_COMMANDS_DIR: &str = ".safe-coder/commands";

/// How deep namespaces may nest (`a/b/c.md` is depth 3); deeper files are ignored, which
/// also bounds a symlink loop.
const MAX_DEPTH: usize = 8;
/// A command file larger than this is refused with a warning (templates are short; a
/// link to a device or a huge file must not fill memory).
pub const MAX_COMMAND_FILE_BYTES: u64 = 64 * 1024;

/// Limits for `!{cmd}` and `@{file}` in a template.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
const EXEC_MAX_OUTPUT: usize = 256 * 1024;
const FILE_MAX_BYTES: u64 = 256 * 1024;

/// Whose command it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandScope {
    User,
    Project,
}

impl CommandScope {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandScope::User => "user",
            CommandScope::Project => "project",
        }
    }
}

/// One custom command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomCommand {
    /// `git:commit` for `git/commit.md`.
    pub name: String,
    /// From the front matter's `description`.
    pub front_description: Option<String>,
    /// From the front matter's `argument-hint` (shown by `/help`).
    pub argument_hint: Option<String>,
    /// The prompt template (the file without its front matter).
    pub template: String,
    pub path: PathBuf,
    pub scope: CommandScope,
}

impl CustomCommand {
    /// The front matter's description, else the template's first line (shortened).
    pub fn description(&self) -> String {
        if let Some(d) = &self.front_description {
            return d.clone();
        }
        let first = self
            .template
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("custom command");
        let first = first.trim_start_matches('#').trim();
        if first.chars().count() > 60 {
            let cut: String = first.chars().take(57).collect();
            format!("{cut}...")
        } else {
            first.to_string()
        }
    }
}

/// The loaded custom commands by name, and what could not be loaded.
#[derive(Clone, Debug, Default)]
pub struct CustomCommands {
    commands: BTreeMap<String, CustomCommand>,
    /// Files that were skipped and why (unreadable, bad name, shadowed by a built-in).
    pub warnings: Vec<String>,
}

impl CustomCommands {
    pub fn get(&self, name: &str) -> Option<&CustomCommand> {
        self.commands.get(name)
    }

    /// The names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.commands.keys().map(String::as_str)
    }

    /// The commands, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &CustomCommand> {
        self.commands.values()
    }

    /// `(name, description)` pairs, sorted by name.
    pub fn descriptions(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|c| (c.name.clone(), c.description()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Adds or replaces a command (a later scope overrides an earlier one).
    pub fn insert(&mut self, command: CustomCommand) {
        self.commands.insert(command.name.clone(), command);
    }
}

/// Loads `<config_dir>/commands/**.md`, then `<project>/.safe-coder/commands/**.md`; a
/// project command replaces a user command of the same name. Reads only those two
/// directories. A missing directory is not an error.
///
/// A user command may be a symlink to anywhere (the user put it there); a project
/// command, folder or the commands directory itself may link only inside the project,
/// since the project may come from elsewhere or from an agent's accepted changes. Only
/// regular files up to [`MAX_COMMAND_FILE_BYTES`] are read; each refusal is a warning.
pub fn load_custom_commands(config_dir: &Path, project: &Path) -> CustomCommands {
    let mut out = CustomCommands::default();
    load_dir(
        &config_dir.join("commands"),
        CommandScope::User,
        None,
        &mut out,
    );
    let confine = fs::canonicalize(project).unwrap_or_else(|_| project.to_path_buf());
    load_dir(
        &project.join(PROJECT_COMMANDS_DIR),
        CommandScope::Project,
        Some(&confine),
        &mut out,
    );
    let shadowed: Vec<String> = out
        .names()
        .filter(|name| crate::slash::is_builtin(name))
        .map(|name| {
            format!("custom command /{name} is hidden by the built-in command of the same name")
        })
        .collect();
    out.warnings.extend(shadowed);
    out
}

/// Where `path` really is, if it may be read: `Err` (a warning) when it is a symlink
/// that cannot be followed or that leaves `confine`.
fn confined(path: &Path, confine: Option<&Path>) -> Result<(), String> {
    let Some(root) = confine else {
        return Ok(());
    };
    match fs::canonicalize(path) {
        Ok(real) if real.starts_with(root) => Ok(()),
        Ok(real) => Err(format!(
            "skipped {}: it links to {}, outside the project",
            path.display(),
            real.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("could not read {}: {e}", path.display())),
    }
}

fn load_dir(root: &Path, scope: CommandScope, confine: Option<&Path>, out: &mut CustomCommands) {
    if let Err(warning) = confined(root, confine) {
        out.warnings.push(warning);
        return;
    }
    let mut stack: Vec<(PathBuf, Vec<String>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, namespace)) = stack.pop() {
        let reader = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && namespace.is_empty() => continue,
            Err(e) => {
                out.warnings
                    .push(format!("could not read {}: {e}", dir.display()));
                continue;
            }
        };
        for entry in reader.flatten() {
            let path = entry.path();
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.starts_with('.') {
                continue;
            }
            // Symlinks are followed (a user command may be linked in from elsewhere),
            // but a project's links must stay inside the project.
            let is_link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
            if is_link {
                if let Err(warning) = confined(&path, confine) {
                    out.warnings.push(warning);
                    continue;
                }
            }
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if namespace.len() + 1 < MAX_DEPTH {
                    if !valid_name_part(&file_name) {
                        out.warnings.push(format!(
                            "skipped {}: folder names may hold only letters, digits, '-', '_' and '.'",
                            path.display()
                        ));
                        continue;
                    }
                    let mut ns = namespace.clone();
                    ns.push(file_name);
                    stack.push((path, ns));
                }
                continue;
            }
            let Some(stem) = file_name.strip_suffix(".md") else {
                continue;
            };
            if !valid_name_part(stem) {
                out.warnings.push(format!(
                    "skipped {}: command names may hold only letters, digits, '-', '_' and '.'",
                    path.display()
                ));
                continue;
            }
            let raw = match read_guarded(&path, confine, MAX_COMMAND_FILE_BYTES) {
                Ok(Guarded::Read {
                    truncated: true, ..
                }) => {
                    out.warnings.push(format!(
                        "skipped {}: it is over {} KiB",
                        path.display(),
                        MAX_COMMAND_FILE_BYTES / 1024
                    ));
                    continue;
                }
                Ok(Guarded::Read { data, .. }) => match String::from_utf8(data) {
                    Ok(raw) => raw,
                    Err(_) => {
                        out.warnings
                            .push(format!("skipped {}: it is not UTF-8 text", path.display()));
                        continue;
                    }
                },
                Ok(Guarded::Missing) => continue,
                Err(warning) => {
                    out.warnings.push(warning);
                    continue;
                }
            };
            let mut name = namespace.join(":");
            if !name.is_empty() {
                name.push(':');
            }
            name.push_str(stem);
            let (front, template) = split_front_matter(&raw);
            if front.is_none() && raw.trim_start_matches('\u{feff}').starts_with("---") {
                out.warnings.push(format!(
                    "{}: the front matter has no closing '---' line, so the whole file is the template",
                    path.display()
                ));
            }
            let front = front.unwrap_or_default();
            out.insert(CustomCommand {
                name,
                front_description: front.get("description").cloned(),
                argument_hint: front
                    .get("argument-hint")
                    .or_else(|| front.get("argument_hint"))
                    .cloned(),
                template: template.to_string(),
                path,
                scope,
            });
        }
    }
}

fn valid_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Splits `---\nkey: value\n---\nbody` into the pairs and the body. `(None, raw)` when
/// there is no complete front matter block.
pub fn split_front_matter(raw: &str) -> (Option<BTreeMap<String, String>>, &str) {
    let text = raw.strip_prefix('\u{feff}').unwrap_or(raw);
    let Some(after_open) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        return (None, raw);
    };
    let mut offset = 0;
    let mut pairs = BTreeMap::new();
    for line in after_open.split_inclusive('\n') {
        offset += line.len();
        let content = line.trim_end_matches(['\n', '\r']);
        if content.trim_end() == "---" {
            let body = &after_open[offset..];
            return (Some(pairs), body);
        }
        let trimmed = content.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some((key, value)) = trimmed.split_once(':') {
            pairs.insert(key.trim().to_lowercase(), unquote(value.trim()).to_string());
        }
    }
    (None, raw)
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

/// Why a custom command could not be expanded.
#[derive(Debug, thiserror::Error)]
pub enum CustomError {
    #[error("/{command}: the '{{' after '{marker}' at byte {offset} is never closed with '}}'")]
    Unclosed {
        command: String,
        marker: &'static str,
        offset: usize,
    },
    #[error("/{command}: could not run '!{{{shell}}}': {source}")]
    Exec {
        command: String,
        shell: String,
        #[source]
        source: SandboxError,
    },
    #[error("/{command}: could not insert '@{{{path}}}': {reason}")]
    File {
        command: String,
        path: String,
        reason: String,
    },
}

enum Segment<'a> {
    Text(&'a str),
    Shell(&'a str),
    File(&'a str),
}

const ARGS: &str = "{{args}}";

/// Expands a custom command's template with the user's arguments. `{{args}}` inside
/// `!{...}` is replaced shell-quoted (so the arguments cannot inject commands), elsewhere
/// as typed. Command output and file contents are inserted as they are: nothing in them
/// is expanded again. Commands run in the sandbox (60 s timeout, 256 KiB of output);
/// a failing command inserts its output and `[exit code N]`.
pub async fn expand_custom(
    cmd: &CustomCommand,
    args: &str,
    sandbox: &dyn Sandbox,
) -> Result<String, CustomError> {
    let args = args.trim();
    let segments =
        split_template(&cmd.template).map_err(|(marker, offset)| CustomError::Unclosed {
            command: cmd.name.clone(),
            marker,
            offset,
        })?;
    let mut out = String::with_capacity(cmd.template.len() + args.len());
    for segment in segments {
        match segment {
            Segment::Text(t) => out.push_str(&t.replace(ARGS, args)),
            Segment::Shell(s) => {
                let command = s.replace(ARGS, &shell_quote(args));
                out.push_str(&run_shell(cmd, &command, sandbox).await?);
            }
            Segment::File(p) => {
                let path = p.replace(ARGS, args);
                out.push_str(&read_template_file(cmd, path.trim(), sandbox).await?);
            }
        }
    }
    if !cmd.template.contains(ARGS) && !args.is_empty() {
        let trimmed_len = out.trim_end().len();
        out.truncate(trimmed_len);
        out.push_str("\n\n");
        out.push_str(args);
    }
    Ok(out)
}

/// Splits the template at `!{...}` and `@{...}` (braces inside may nest, as in
/// `!{awk '{print $1}' f}`). Err: the marker and offset of an unclosed block.
fn split_template(template: &str) -> Result<Vec<Segment<'_>>, (&'static str, usize)> {
    let bytes = template.as_bytes();
    let mut segments = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        let marker = match (bytes[i], bytes[i + 1]) {
            (b'!', b'{') => "!",
            (b'@', b'{') => "@",
            _ => {
                i += 1;
                continue;
            }
        };
        let open = i + 1;
        let mut depth = 0usize;
        let mut close = None;
        for (j, &b) in bytes.iter().enumerate().skip(open) {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(j);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(close) = close else {
            return Err((marker, i));
        };
        if text_start < i {
            segments.push(Segment::Text(&template[text_start..i]));
        }
        let inner = &template[open + 1..close];
        segments.push(if marker == "!" {
            Segment::Shell(inner)
        } else {
            Segment::File(inner)
        });
        i = close + 1;
        text_start = i;
    }
    if text_start < template.len() {
        segments.push(Segment::Text(&template[text_start..]));
    }
    Ok(segments)
}

/// Single-quotes `s` for bash.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

async fn run_shell(
    cmd: &CustomCommand,
    command: &str,
    sandbox: &dyn Sandbox,
) -> Result<String, CustomError> {
    let request = ExecRequest {
        command: command.to_string(),
        timeout: EXEC_TIMEOUT,
        max_output_bytes: EXEC_MAX_OUTPUT,
    };
    let result = sandbox
        .exec(request, CancellationToken::new())
        .await
        .map_err(|source| CustomError::Exec {
            command: cmd.name.clone(),
            shell: command.to_string(),
            source,
        })?;
    let mut out = result.output.trim_end_matches('\n').to_string();
    let mut note = |s: String| {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&s);
    };
    if result.total_output_bytes > result.output.len() as u64 {
        note(format!(
            "[output truncated: {} of {} shown]",
            human_size(result.output.len() as u64),
            human_size(result.total_output_bytes)
        ));
    }
    if result.timed_out {
        note(format!(
            "[timed out after {} s and was killed]",
            EXEC_TIMEOUT.as_secs()
        ));
    } else if result.cancelled {
        note("[cancelled]".to_string());
    } else {
        match result.exit_code {
            Some(0) => {}
            Some(code) => note(format!("[exit code {code}]")),
            None => note("[killed by a signal]".to_string()),
        }
    }
    Ok(out)
}

async fn read_template_file(
    cmd: &CustomCommand,
    raw_path: &str,
    sandbox: &dyn Sandbox,
) -> Result<String, CustomError> {
    let fail = |reason: String| CustomError::File {
        command: cmd.name.clone(),
        path: raw_path.to_string(),
        reason,
    };
    let path =
        normalize_in_root(&sandbox.agent_root(), raw_path).map_err(|e| fail(e.to_string()))?;
    let stat = sandbox
        .stat(&path)
        .await
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail("no such file in the project".to_string()))?;
    if stat.is_dir {
        let (text, _) = listing(sandbox, &path, 500)
            .await
            .map_err(|e| fail(e.to_string()))?;
        return Ok(text.trim_end().to_string());
    }
    if stat.size > FILE_MAX_BYTES {
        return Err(fail(format!(
            "it is {}, over the {} limit",
            human_size(stat.size),
            human_size(FILE_MAX_BYTES)
        )));
    }
    let data = sandbox
        .read_file(&path)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let text = decode_text(&data).map_err(|why| fail(format!("it is a binary file ({why})")))?;
    Ok(text.trim_end_matches('\n').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter() {
        let (front, body) =
            split_front_matter("---\ndescription: \"Hi there\"\n# c\nx: 1\n---\nBody {{args}}\n");
        let front = front.unwrap_or_default();
        assert_eq!(
            front.get("description").map(String::as_str),
            Some("Hi there")
        );
        assert_eq!(front.get("x").map(String::as_str), Some("1"));
        assert_eq!(body, "Body {{args}}\n");
        let (front, body) = split_front_matter("no front\n---\n");
        assert!(front.is_none());
        assert_eq!(body, "no front\n---\n");
        let (front, _) = split_front_matter("---\ndescription: x\nnever closed\n");
        assert!(front.is_none());
    }

    #[test]
    fn template_segments() {
        let segs = split_template("a !{awk '{print $1}' f} b @{x.txt} c").unwrap_or_default();
        let kinds: Vec<String> = segs
            .iter()
            .map(|s| match s {
                Segment::Text(t) => format!("T{t}"),
                Segment::Shell(t) => format!("S{t}"),
                Segment::File(t) => format!("F{t}"),
            })
            .collect();
        assert_eq!(
            kinds,
            ["Ta ", "Sawk '{print $1}' f", "T b ", "Fx.txt", "T c"]
        );
        assert!(split_template("x !{never").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
