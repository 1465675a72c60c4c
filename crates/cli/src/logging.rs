//! `RUST_LOG=debug` (or `info`, `trace`, `target=level,...`): log records go to
//! `<data dir>/logs/safe-coder.log`, never to the screen (the TUI owns it), with secrets
//! redacted.
//!
//! A small `log::Log` of our own rather than a logging framework: the `log` facade is
//! already in the build (reqwest, rustls and mio log through it), so this costs no new
//! dependency. Without `RUST_LOG` nothing is installed and logging costs nothing.
//!
//! Redaction: every API key the configuration knows is registered with [`redact`] and
//! replaced wherever it appears; besides, values that look like keys (`sk-…`, `Bearer …`,
//! `x-api-key …`) are masked, for keys the configuration never saw.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The log file is renamed to `safe-coder.log.1` when it grows past this at start.
const ROTATE_BYTES: u64 = 10 * 1024 * 1024;

const REDACTED: &str = "[redacted]";

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers a secret: it is replaced by `[redacted]` in every later log line.
pub fn redact(secret: &str) {
    // Very short values would mask ordinary words; they are not real keys anyway.
    if secret.len() < 6 {
        return;
    }
    if let Ok(mut s) = SECRETS.write() {
        if !s.iter().any(|x| x == secret) {
            s.push(secret.to_string());
        }
    }
}

/// `RUST_LOG` parsed: a default level and per-target levels (the longest prefix wins).
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    default: LevelFilter,
    targets: Vec<(String, LevelFilter)>,
}

impl Filter {
    fn parse(spec: &str) -> Filter {
        let mut f = Filter {
            default: LevelFilter::Off,
            targets: Vec::new(),
        };
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((target, level)) => {
                    if let Ok(l) = level.trim().parse() {
                        f.targets.push((target.trim().replace('-', "_"), l));
                    }
                }
                None => {
                    if let Ok(l) = part.parse() {
                        f.default = l;
                    } else {
                        // A bare target name means "everything from it".
                        f.targets.push((part.replace('-', "_"), LevelFilter::Trace));
                    }
                }
            }
        }
        f.targets.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        f
    }

    fn level_for(&self, target: &str) -> LevelFilter {
        self.targets
            .iter()
            .find(|(t, _)| target.starts_with(t.as_str()))
            .map_or(self.default, |(_, l)| *l)
    }

    fn max(&self) -> LevelFilter {
        self.targets
            .iter()
            .map(|(_, l)| *l)
            .fold(self.default, std::cmp::max)
    }
}

struct FileLogger {
    filter: Filter,
    file: Mutex<File>,
}

impl Log for FileLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.filter.level_for(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let secrets = SECRETS.read().map(|s| s.clone()).unwrap_or_default();
        let text = scrub(&record.args().to_string(), &secrets);
        let line = format!(
            "{} {:5} {}: {}\n",
            timestamp(),
            level_name(record.level()),
            record.target(),
            text.replace('\n', "\n    ")
        );
        if let Ok(mut f) = self.file.lock() {
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {
        if let Ok(mut f) = self.file.lock() {
            let _ = f.flush();
        }
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Error => "ERROR",
        Level::Warn => "WARN",
        Level::Info => "INFO",
        Level::Debug => "DEBUG",
        Level::Trace => "TRACE",
    }
}

/// Seconds since the epoch with milliseconds (UTC): sortable, no time-zone lookup.
fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", now.as_secs(), now.subsec_millis())
}

/// Replaces known secrets, then anything that looks like a key.
fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    mask_key_shapes(&out)
}

/// Masks `sk-…`/`sk_…` tokens and the value after `Bearer`, `x-api-key` or `api_key`.
fn mask_key_shapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut mask_next = false;
    for piece in text.split_inclusive(|c: char| c.is_whitespace()) {
        let word = piece.trim_end();
        let tail = &piece[word.len()..];
        let bare = word.trim_matches(|c: char| "\"',;:=()[]{}".contains(c));
        let lower = bare.to_ascii_lowercase();
        let looks_like_key =
            (bare.starts_with("sk-") || bare.starts_with("sk_")) && bare.len() >= 12;
        if mask_next && (lower == "bearer" || lower == "basic") {
            // `authorization: Bearer TOKEN`: the scheme stays, the token goes.
            out.push_str(word);
        } else if (mask_next && !bare.is_empty()) || looks_like_key {
            out.push_str(&word.replace(bare, REDACTED));
            mask_next = false;
        } else if let Some((name, value)) = split_assignment(word) {
            // `api_key=VALUE` / `"x-api-key":"VALUE"` in one word.
            if is_key_name(name) && !value.is_empty() {
                out.push_str(&word.replace(value, REDACTED));
            } else {
                out.push_str(word);
                // `"x-api-key": "VALUE"`: the value is the next word.
                mask_next = is_key_name(name);
            }
        } else {
            out.push_str(word);
            if lower == "bearer" || is_key_name(&lower) {
                mask_next = true;
            }
        }
        out.push_str(tail);
    }
    out
}

fn is_key_name(name: &str) -> bool {
    let n = name
        .trim_matches(|c: char| "\"' :={[(".contains(c))
        .to_ascii_lowercase()
        .replace('-', "_");
    n == "x_api_key" || n == "api_key" || n == "authorization" || n == "apikey"
}

/// `name=value` or `name:value` (quotes allowed) within one word.
fn split_assignment(word: &str) -> Option<(&str, &str)> {
    let idx = word.find(['=', ':'])?;
    let (name, rest) = word.split_at(idx);
    let value = rest[1..].trim_matches(|c: char| "\"',;{}()[]".contains(c));
    Some((name, value))
}

fn log_file(data_dir: &Path) -> PathBuf {
    data_dir.join("logs").join("safe-coder.log")
}

/// Installs the file logger when `RUST_LOG` asks for it. Returns the log file's path, or
/// `None` when logging is off or the file cannot be opened (then nothing is logged: a
/// log must never end up on the screen instead).
pub fn init(data_dir: &Path) -> Option<PathBuf> {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())?;
    let filter = Filter::parse(&spec);
    if filter.max() == LevelFilter::Off {
        return None;
    }
    let path = log_file(data_dir);
    let dir = path.parent()?;
    std::fs::create_dir_all(dir).ok()?;
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > ROTATE_BYTES) {
        let _ = std::fs::rename(&path, path.with_extension("log.1"));
    }
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .ok()?;
    // A key given as a flag is known before the configuration is read.
    let args: Vec<String> = std::env::args().collect();
    for (i, a) in args.iter().enumerate() {
        if let Some(k) = a.strip_prefix("--api-key=") {
            redact(k);
        } else if a == "--api-key" {
            if let Some(k) = args.get(i + 1) {
                redact(k);
            }
        }
    }
    let max = filter.max();
    let logger = FileLogger {
        filter,
        file: Mutex::new(file),
    };
    // Leaked once per process: `set_logger` wants a `'static` (the `std` feature's
    // `set_boxed_logger` would rebuild every crate that logs).
    log::set_logger(Box::leak(Box::new(logger))).ok()?;
    log::set_max_level(max);
    log::info!(
        "safe-coder {} started: {}",
        env!("CARGO_PKG_VERSION"),
        args.join(" ")
    );
    Some(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn filter_levels_and_targets() {
        let f = Filter::parse("debug");
        assert_eq!(f.level_for("reqwest::connect"), LevelFilter::Debug);
        let f = Filter::parse("warn,safe_coder=trace,rustls=off");
        assert_eq!(f.level_for("safe_coder::config"), LevelFilter::Trace);
        assert_eq!(f.level_for("rustls::client"), LevelFilter::Off);
        assert_eq!(f.level_for("hyper"), LevelFilter::Warn);
        assert_eq!(f.max(), LevelFilter::Trace);
        assert_eq!(Filter::parse("").max(), LevelFilter::Off);
        assert_eq!(Filter::parse("off").max(), LevelFilter::Off);
    }

    #[test]
    fn known_secrets_and_key_shapes_are_redacted() {
        let secrets = vec!["my-private-token-42".to_string()];
        let s = scrub("sending my-private-token-42 to the server", &secrets);
        assert_eq!(s, "sending [redacted] to the server");
        let s = scrub("authorization: Bearer abcdef123456", &[]);
        assert!(!s.contains("abcdef123456"), "{s}");
        let s = scrub("headers {\"x-api-key\": \"qwertyuiop\"}", &[]);
        assert!(!s.contains("qwertyuiop"), "{s}");
        let s = scrub("key sk-ant-api03-abcdefghijkl in a line", &[]);
        assert!(!s.contains("abcdefghijkl"), "{s}");
        let s = scrub("api_key=zxcvbnmasdf,", &[]);
        assert!(!s.contains("zxcvbnmasdf"), "{s}");
        // Ordinary text is left alone.
        let s = scrub("GET /v1/messages 200 in 12 ms", &[]);
        assert_eq!(s, "GET /v1/messages 200 in 12 ms");
    }
}
