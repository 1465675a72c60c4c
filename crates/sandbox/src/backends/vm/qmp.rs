//! A QMP (QEMU Machine Protocol) client on QEMU's `-qmp unix:PATH,server=on,wait=off`
//! socket: the greeting, `qmp_capabilities`, then one command at a time, skipping the
//! asynchronous events QEMU interleaves (`{"event": ...}`). Blocking: it is used to save
//! a snapshot (`stop`, `migrate`, `query-migrate`), to resume a restored one (`cont`)
//! and to end a VM (`quit`).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot talk to QEMU's QMP socket: {0}")]
    Io(#[from] io::Error),
    #[error("QEMU refused `{command}`: {desc}")]
    Refused { command: String, desc: String },
    #[error("QEMU's QMP socket sent something that is not QMP: {0}")]
    Protocol(String),
}

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects and negotiates capabilities; retries the connection until `deadline`
    /// (QEMU creates the socket early in its start-up).
    pub fn connect(path: &Path, deadline: Instant) -> Result<Qmp, QmpError> {
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let writer = stream.try_clone()?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(QmpError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "QEMU closed the QMP socket",
            )));
        }
        serde_json::from_str(&line).map_err(|e| QmpError::Protocol(format!("{e}: {line}")))
    }

    /// Runs one command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut msg = json!({"execute": command});
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer.write_all(text.as_bytes())?;
        loop {
            let reply = self.read_message()?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                return Err(QmpError::Refused {
                    command: command.to_string(),
                    desc: e
                        .get("desc")
                        .and_then(|d| d.as_str())
                        .unwrap_or("no description")
                        .to_string(),
                });
            }
            return Err(QmpError::Protocol(reply.to_string()));
        }
    }

    /// `query-status`'s `status` (`running`, `paused`, `inmigrate`, `postmigrate`, ...).
    pub fn status(&mut self) -> Result<String, QmpError> {
        let r = self.execute("query-status", None)?;
        Ok(r.get("status")
            .and_then(|s| s.as_str())
            .unwrap_or("unknown")
            .to_string())
    }

    /// Pauses the VM and writes its whole state (devices and RAM) to `file` through
    /// `exec:` migration (QEMU 7.2 has no `file:` URI), waiting until it completes.
    pub fn save_to_file(&mut self, file: &Path, deadline: Instant) -> Result<(), QmpError> {
        self.execute("stop", None)?;
        let uri = format!("exec:cat > {}", shell_quote(&file.display().to_string()));
        self.execute("migrate", Some(json!({"uri": uri})))?;
        loop {
            let r = self.execute("query-migrate", None)?;
            match r.get("status").and_then(|s| s.as_str()).unwrap_or("") {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    return Err(QmpError::Refused {
                        command: "migrate".into(),
                        desc: r
                            .get("error-desc")
                            .and_then(|d| d.as_str())
                            .unwrap_or("the migration failed")
                            .to_string(),
                    })
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                let _ = self.execute("migrate_cancel", None);
                return Err(QmpError::Protocol(
                    "saving the VM state did not finish in time".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for an incoming migration (`-incoming`) to finish, then runs the VM.
    pub fn finish_restore(&mut self, deadline: Instant) -> Result<(), QmpError> {
        loop {
            let status = self.status()?;
            match status.as_str() {
                "running" => return Ok(()),
                "paused" | "postmigrate" => {
                    self.execute("cont", None)?;
                    return Ok(());
                }
                "inmigrate" | "prelaunch" | "restore-vm" => {}
                other => {
                    return Err(QmpError::Protocol(format!(
                        "the restored VM is {other}, not running"
                    )))
                }
            }
            if Instant::now() >= deadline {
                return Err(QmpError::Protocol(
                    "restoring the VM state did not finish in time".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Single-quotes `s` for `/bin/sh` (QEMU runs `exec:` URIs with it).
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn negotiates_skips_events_and_reports_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let l = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut seen = Vec::new();
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 0 {
                let v: Value = serde_json::from_str(&line).unwrap();
                let cmd = v["execute"].as_str().unwrap().to_string();
                line.clear();
                let reply = match cmd.as_str() {
                    "qmp_capabilities" => "{\"return\": {}}\n".to_string(),
                    "query-status" => "{\"event\": \"RESUME\", \"timestamp\": {}}\n{\"return\": {\"status\": \"running\", \"running\": true}}\n".to_string(),
                    _ => "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}\n".to_string(),
                };
                seen.push(cmd);
                w.write_all(reply.as_bytes()).unwrap();
            }
            seen
        });
        let mut q = Qmp::connect(&path, Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(q.status().unwrap(), "running");
        let e = q.execute("nope", None).unwrap_err().to_string();
        assert!(e.contains("has not been found"), "{e}");
        drop(q);
        assert_eq!(
            server.join().unwrap(),
            ["qmp_capabilities", "query-status", "nope"]
        );
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }
}
