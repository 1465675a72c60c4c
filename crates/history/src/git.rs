//! Running the git CLI, isolated from the user's configuration.
//!
//! Every invocation: no system or global config (`GIT_CONFIG_NOSYSTEM`,
//! `GIT_CONFIG_GLOBAL=/dev/null`), no inherited `GIT_*` variables, a fixed author and
//! committer, literal pathspecs, no hooks, no signing, no line-ending conversion, no
//! fsmonitor, no user-level ignore or attributes files.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::HistoryError;
use crate::{AUTHOR_EMAIL, AUTHOR_NAME};

/// `-c` options given to every git command (they override the repository's config,
/// which the agent could edit from inside the sandbox).
const CONFIG: &[&str] = &[
    "core.hooksPath=/dev/null",
    "core.autocrlf=false",
    "core.safecrlf=false",
    "core.eol=lf",
    "core.fsmonitor=false",
    "core.untrackedCache=true",
    "core.preloadIndex=true",
    "core.excludesFile=/dev/null",
    "core.attributesFile=/dev/null",
    "core.quotePath=false",
    "core.symlinks=true",
    "core.fileMode=true",
    "core.ignoreCase=false",
    "core.precomposeUnicode=false",
    // Larger files are streamed into their own objects (never held in memory whole)
    // and shown as binary in diffs.
    "core.bigFileThreshold=32m",
    "core.looseCompression=1",
    "commit.gpgSign=false",
    "gc.auto=0",
    "maintenance.auto=false",
    "safe.directory=*",
    "diff.noprefix=false",
    "diff.mnemonicPrefix=false",
    "color.ui=false",
];

pub(crate) struct Git<'a> {
    pub git_dir: &'a Path,
    /// The work tree as git sees it (with an overlay workspace, inside its namespace).
    pub work_tree: &'a Path,
    /// The work tree as this process reads it (the same path, or an overlay's
    /// `/proc/self/fd/N`).
    pub files: &'a Path,
    /// The overlay workspace git joins before it runs.
    pub overlay: Option<&'a safe_coder_sandbox::overlay::OverlayMount>,
    /// An alternative index file (`GIT_INDEX_FILE`).
    pub index: Option<&'a Path>,
}

impl Git<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GIT_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("GIT_DIR", self.git_dir)
            .env("GIT_WORK_TREE", self.work_tree)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", AUTHOR_NAME)
            .env("GIT_AUTHOR_EMAIL", AUTHOR_EMAIL)
            .env("GIT_COMMITTER_NAME", AUTHOR_NAME)
            .env("GIT_COMMITTER_EMAIL", AUTHOR_EMAIL)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_NO_REPLACE_OBJECTS", "1")
            .env("GIT_PAGER", "cat")
            .env("LC_ALL", "C");
        if let Some(index) = self.index {
            cmd.env("GIT_INDEX_FILE", index);
        }
        // `check-ignore` refuses every pathspec magic, `literal` included; its callers
        // keep names that start with `:` away from it.
        if args.first() != Some(&"check-ignore") {
            cmd.env("GIT_LITERAL_PATHSPECS", "1");
        }
        for c in CONFIG {
            cmd.arg("-c").arg(c);
        }
        cmd.args(args);
        match self.overlay {
            Some(mount) => {
                cmd.current_dir("/");
                mount.enter(&mut cmd);
            }
            None => {
                cmd.current_dir(self.work_tree);
            }
        }
        cmd
    }

    /// Runs git and returns its stdout; a non-zero exit is an error carrying stderr.
    pub fn run(&self, args: &[&str]) -> Result<Vec<u8>, HistoryError> {
        self.run_with_input(args, None)
    }

    pub fn run_with_input(
        &self,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<Vec<u8>, HistoryError> {
        let (ok, stdout, stderr) = self.run_status(args, input)?;
        if ok {
            Ok(stdout)
        } else {
            Err(HistoryError::Git {
                command: args.first().copied().unwrap_or_default().to_string(),
                stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
            })
        }
    }

    /// Runs git and returns (success, stdout, stderr) without judging the exit code.
    pub fn run_status(
        &self,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<(bool, Vec<u8>, Vec<u8>), HistoryError> {
        let mut cmd = self.command(args);
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let writer = match (input, child.stdin.take()) {
            (Some(data), Some(mut stdin)) => {
                let data = data.to_vec();
                Some(std::thread::spawn(move || {
                    // A broken pipe means git stopped reading; its exit status says why.
                    let _ = stdin.write_all(&data);
                }))
            }
            _ => None,
        };
        let mut stderr_pipe = child.stderr.take();
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(pipe) = stderr_pipe.as_mut() {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        });
        let mut stdout = Vec::new();
        if let Some(mut pipe) = child.stdout.take() {
            pipe.read_to_end(&mut stdout)
                .map_err(|e| HistoryError::io("cannot read git's output", e))?;
        }
        let status = child
            .wait()
            .map_err(|e| HistoryError::io("cannot wait for git", e))?;
        if let Some(w) = writer {
            let _ = w.join();
        }
        let stderr = err_reader.join().unwrap_or_default();
        Ok((status.success(), stdout, stderr))
    }

    /// [`Self::run`] with git's stdout and stderr going to anonymous memory files
    /// instead of pipes, read once git has exited: a large output (`ls-files` of a
    /// 50,000-file project is 1.2 MB) never makes git wait for this process to read
    /// it (on a busy machine its reader may not be scheduled), and no reader thread
    /// runs beside. Falls back to pipes where memory files cannot be made.
    pub fn run_buffered(&self, args: &[&str]) -> Result<Vec<u8>, HistoryError> {
        let (Some(out), Some(err)) = (memory_file(c"git-stdout"), memory_file(c"git-stderr"))
        else {
            return self.run(args);
        };
        let sink = |f: &std::fs::File| {
            f.try_clone()
                .map(Stdio::from)
                .map_err(|e| HistoryError::io("cannot pass a file to git", e))
        };
        let status = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(sink(&out)?)
            .stderr(sink(&err)?)
            .status()
            .map_err(spawn_error)?;
        let read_back = |mut f: std::fs::File| -> Result<Vec<u8>, HistoryError> {
            use std::io::Seek;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            f.rewind()
                .and_then(|_| f.read_to_end(&mut buf))
                .map_err(|e| HistoryError::io("cannot read git's output", e))?;
            Ok(buf)
        };
        if status.success() {
            read_back(out)
        } else {
            Err(HistoryError::Git {
                command: args.first().copied().unwrap_or_default().to_string(),
                stderr: String::from_utf8_lossy(&read_back(err)?).trim().to_string(),
            })
        }
    }

    /// Starts a long-running git (such as `cat-file --batch`) with stdin and stdout
    /// piped and stderr discarded.
    pub fn spawn(&self, args: &[&str]) -> Result<std::process::Child, HistoryError> {
        self.command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(spawn_error)
    }

    /// Runs git and returns the first line of stdout, trimmed.
    pub fn line(&self, args: &[&str]) -> Result<String, HistoryError> {
        let out = self.run(args)?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string())
    }
}

/// An anonymous file in memory (`memfd_create`), or `None` where the kernel has none.
fn memory_file(name: &std::ffi::CStr) -> Option<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: `name` is a valid C string; a non-negative result is a new descriptor
    // that nothing else owns.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    // SAFETY: see above: the descriptor is fresh and owned by the returned file.
    (fd >= 0).then(|| unsafe { std::fs::File::from_raw_fd(fd) })
}

fn spawn_error(e: std::io::Error) -> HistoryError {
    if e.kind() == std::io::ErrorKind::NotFound {
        HistoryError::GitMissing
    } else {
        HistoryError::io("cannot run git", e)
    }
}

/// Fails with [`HistoryError::GitMissing`] when no `git` is on `PATH`. A lookup, not a
/// run: session start is on the user's critical path, and a `git` that is found but
/// cannot start still fails the first real call with the same clear error.
pub(crate) fn ensure_git() -> Result<(), HistoryError> {
    match safe_coder_sandbox::find_executable("git") {
        Some(_) => Ok(()),
        None => Err(HistoryError::GitMissing),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Through memory files git says what it says through pipes: an output larger
    /// than a pipe holds (which would stall git if nobody read it) and, on failure,
    /// its error message.
    #[test]
    fn buffered_runs_match_piped_runs() {
        if safe_coder_sandbox::find_executable("git").is_none() {
            eprintln!("git is not installed: skipping");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        let git_dir = tmp.path().join("history.git");
        crate::snapshot::init_git_dir(&git_dir, &[], Some(&work)).unwrap();
        for i in 0..3000 {
            let dir = work.join(format!("directory-{:03}", i / 30));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("a-file-with-a-long-name-{i}.txt")), "x").unwrap();
        }
        let g = Git {
            git_dir: &git_dir,
            work_tree: &work,
            files: &work,
            overlay: None,
            index: None,
        };
        let args = ["ls-files", "--others", "--exclude-standard", "-z"];
        let buffered = g.run_buffered(&args).unwrap();
        assert!(buffered.len() > 1 << 17, "{}", buffered.len());
        assert_eq!(buffered, g.run(&args).unwrap());
        match g.run_buffered(&["rev-parse", "--verify", "no-such-ref"]) {
            Err(HistoryError::Git { command, stderr }) => {
                assert_eq!(command, "rev-parse");
                assert!(stderr.contains("fatal"), "{stderr}");
            }
            other => panic!("{other:?}"),
        }
    }
}
