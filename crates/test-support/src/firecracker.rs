//! A fake Firecracker: its HTTP API on a Unix socket, as Firecracker's published
//! `firecracker.yaml` describes it (endpoints, bodies, `204 No Content` on success,
//! `400` with `{"fault_message": ...}` on a bad body or a call out of order), with a
//! "guest" that is the real guest agent running on the host.
//!
//! No Firecracker binary is in any package registry, so the `firecracker` backend is
//! tested against this. What it checks like the real one:
//! - bodies: JSON objects with known fields of the right types (unknown field, missing
//!   field and bad type are refused the way serde refuses them in Firecracker);
//! - order: pre-boot resources only before `InstanceStart`; `InstanceStart` needs a boot
//!   source; `/vm` pause/resume only after it; `/snapshot/create` only when paused;
//!   `/snapshot/load` only on a fresh process, with exactly one of `mem_file_path` and
//!   `mem_backend`; `/metrics` only once; files it is given must exist.
//!
//! The guest: on `InstanceStart` (or a snapshot load that resumes) the agent command is
//! started with `--listen unix:<dir>/agent.sock --workspace <dir>/workspace`, and the
//! vsock's `uds_path` is served as Firecracker's hybrid vsock (`CONNECT <port>\n` →
//! `OK <host port>\n`, then the bytes are spliced to the agent). Pausing the VM stops
//! the agent (`SIGSTOP`), resuming continues it; when the agent exits (the host asked it
//! to shut down) the fake exits, as Firecracker does when its guest powers off.
//! Every request is recorded (and appended as JSON lines to a log file when asked) so
//! tests can check the exact sequence.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::http::read_request;

/// One request as the fake saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct FcRequest {
    pub method: String,
    pub path: String,
    /// The JSON body (`Null` when there was none or it was not JSON).
    pub body: Value,
    pub status: u16,
}

/// How to run the guest agent on the host.
#[derive(Clone, Debug)]
pub struct FakeGuest {
    /// The agent binary and arguments before `--listen ... --workspace ...`.
    pub argv: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct FakeFirecrackerConfig {
    /// The guest agent; `None` = a VM whose guest never answers (nothing listens).
    pub guest: Option<FakeGuest>,
    /// Append every request as a JSON line here.
    pub log: Option<PathBuf>,
    /// Exit the process when the guest powers off (the binary; in-process fakes just
    /// stop serving the guest).
    pub exit_with_guest: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    NotStarted,
    Running,
    Paused,
    Off,
}

struct Guest {
    pid: i32,
    dir: PathBuf,
}

struct State {
    phase: Phase,
    machine: Value,
    boot: Option<Value>,
    drives: BTreeMap<String, Value>,
    vsock: Option<(u64, PathBuf)>,
    metrics: Option<PathBuf>,
    /// Something other than logger/metrics was configured (a snapshot load is refused).
    configured: bool,
    requests: Vec<FcRequest>,
    guest: Option<Guest>,
    next_host_port: u32,
}

/// A running fake Firecracker API.
pub struct FakeFirecracker {
    socket: PathBuf,
    state: Arc<Mutex<State>>,
    config: Arc<FakeFirecrackerConfig>,
}

struct Fault(u16, String);

fn fault(msg: impl Into<String>) -> Fault {
    Fault(400, msg.into())
}

const NOT_AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
const NOT_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";

fn deser_err(msg: String) -> Fault {
    fault(format!(
        "An error occurred when deserializing the json body of a request: {msg}."
    ))
}

/// The kind of a schema field.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    Obj,
}

/// Checks `body` against a schema the way serde with `deny_unknown_fields` would.
fn check(body: &Value, fields: &[(&str, Ty, bool)]) -> Result<Map<String, Value>, Fault> {
    let Some(obj) = body.as_object() else {
        return Err(deser_err("invalid type: expected a JSON object".into()));
    };
    for k in obj.keys() {
        if !fields.iter().any(|(n, _, _)| n == k) {
            let expected: Vec<String> = fields.iter().map(|(n, _, _)| format!("`{n}`")).collect();
            return Err(deser_err(format!(
                "unknown field `{k}`, expected one of {}",
                expected.join(", ")
            )));
        }
    }
    for (name, ty, required) in fields {
        match obj.get(*name) {
            None if *required => return Err(deser_err(format!("missing field `{name}`"))),
            None => {}
            Some(v) => {
                let ok = match ty {
                    Ty::Str => v.is_string(),
                    Ty::Int => v.is_u64(),
                    Ty::Bool => v.is_boolean(),
                    Ty::Obj => v.is_object(),
                };
                if !ok {
                    return Err(deser_err(format!("invalid type for `{name}`: {v}")));
                }
            }
        }
    }
    Ok(obj.clone())
}

fn existing_file(path: &str, what: &str) -> Result<(), Fault> {
    if Path::new(path).is_file() {
        Ok(())
    } else {
        Err(fault(format!(
            "{what}: No such file or directory (os error 2): {path}"
        )))
    }
}

impl FakeFirecracker {
    /// Serves the API on `socket` from a background thread.
    pub fn start(socket: &Path, config: FakeFirecrackerConfig) -> io::Result<FakeFirecracker> {
        let listener = UnixListener::bind(socket)?;
        let fake = FakeFirecracker {
            socket: socket.to_path_buf(),
            state: Arc::new(Mutex::new(State {
                phase: Phase::NotStarted,
                machine: json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "track_dirty_pages": false}),
                boot: None,
                drives: BTreeMap::new(),
                vsock: None,
                metrics: None,
                configured: false,
                requests: Vec::new(),
                guest: None,
                next_host_port: 1_073_741_824,
            })),
            config: Arc::new(config),
        };
        let state = fake.state.clone();
        let config = fake.config.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let state = state.clone();
                let config = config.clone();
                std::thread::spawn(move || serve_connection(conn, &state, &config));
            }
        });
        Ok(fake)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<FcRequest> {
        self.state
            .lock()
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }

    /// `METHOD path` of every request so far, e.g. `PUT /machine-config 204`.
    pub fn sequence(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| format!("{} {} {}", r.method, r.path, r.status))
            .collect()
    }
}

impl Drop for FakeFirecracker {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            stop_guest(&mut s);
        }
    }
}

fn stop_guest(s: &mut State) {
    if let Some(g) = s.guest.take() {
        // SAFETY: kill(2) on our own child (SIGCONT first, in case it was paused); its
        // waiter thread reaps it.
        unsafe {
            libc_kill(g.pid, libc::SIGCONT);
            libc_kill(g.pid, libc::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&g.dir);
    }
}

/// kill(2).
///
/// # Safety
/// Plain system call; callers pass the pid of their own child.
unsafe fn libc_kill(pid: i32, sig: i32) -> i32 {
    // SAFETY: see above.
    unsafe { libc::kill(pid, sig) }
}

fn serve_connection(
    conn: UnixStream,
    state: &Arc<Mutex<State>>,
    config: &Arc<FakeFirecrackerConfig>,
) {
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let req = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            _ => return,
        };
        let body: Value = if req.body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(e) => Value::String(format!("<not JSON: {e}>")),
            }
        };
        let result = if let Value::String(s) = &body {
            if s.starts_with("<not JSON") {
                Err(deser_err(s.clone()))
            } else {
                handle(&req.method, &req.path, &body, state, config)
            }
        } else {
            handle(&req.method, &req.path, &body, state, config)
        };
        let (status, payload) = match result {
            Ok(None) => (204, None),
            Ok(Some(v)) => (200, Some(v)),
            Err(Fault(code, msg)) => (code, Some(json!({ "fault_message": msg }))),
        };
        let record = FcRequest {
            method: req.method.clone(),
            path: req.path.clone(),
            body,
            status,
        };
        if let Some(log) = &config.log {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
            {
                let line = json!({"method": record.method, "path": record.path, "body": record.body, "status": status});
                let _ = writeln!(f, "{line}");
            }
        }
        if let Ok(mut s) = state.lock() {
            s.requests.push(record);
        }
        let mut out = format!(
            "HTTP/1.1 {status} {}\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n",
            match status {
                200 => "OK",
                204 => "No Content",
                _ => "Bad Request",
            }
        );
        let bytes = payload.map(|p| p.to_string()).unwrap_or_default();
        if status != 204 {
            out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                bytes.len()
            ));
        }
        out.push_str("\r\n");
        out.push_str(&bytes);
        if writer.write_all(out.as_bytes()).is_err() || req.wants_close() {
            return;
        }
    }
}

fn handle(
    method: &str,
    path: &str,
    body: &Value,
    state: &Arc<Mutex<State>>,
    config: &Arc<FakeFirecrackerConfig>,
) -> Result<Option<Value>, Fault> {
    let mut s = state
        .lock()
        .map_err(|_| Fault(500, "the fake's state is poisoned".into()))?;
    let pre_boot = |s: &State| {
        if s.phase == Phase::NotStarted {
            Ok(())
        } else {
            Err(fault(NOT_AFTER_START))
        }
    };
    match (method, path) {
        ("GET", "/") => Ok(Some(json!({
            "app_name": "Firecracker",
            "id": "anonymous-instance",
            "state": match s.phase { Phase::NotStarted => "Not started", Phase::Paused => "Paused", _ => "Running" },
            "vmm_version": "1.7.0-fake",
        }))),
        ("GET", "/version") => Ok(Some(json!({"firecracker_version": "1.7.0-fake"}))),
        ("GET", "/machine-config") => Ok(Some(s.machine.clone())),
        ("PUT", "/machine-config") => {
            pre_boot(&s)?;
            let o = check(
                body,
                &[
                    ("vcpu_count", Ty::Int, true),
                    ("mem_size_mib", Ty::Int, true),
                    ("smt", Ty::Bool, false),
                    ("track_dirty_pages", Ty::Bool, false),
                    ("cpu_template", Ty::Str, false),
                    ("huge_pages", Ty::Str, false),
                ],
            )?;
            let vcpus = o["vcpu_count"].as_u64().unwrap_or(0);
            if !(1..=32).contains(&vcpus) {
                return Err(fault("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled."));
            }
            if o["mem_size_mib"].as_u64().unwrap_or(0) == 0 {
                return Err(fault("The memory size (MiB) is invalid."));
            }
            s.machine = Value::Object(o);
            s.configured = true;
            Ok(None)
        }
        ("PUT", "/boot-source") => {
            pre_boot(&s)?;
            let o = check(
                body,
                &[
                    ("kernel_image_path", Ty::Str, true),
                    ("initrd_path", Ty::Str, false),
                    ("boot_args", Ty::Str, false),
                ],
            )?;
            existing_file(
                o["kernel_image_path"].as_str().unwrap_or(""),
                "Cannot open kernel image",
            )?;
            if let Some(i) = o.get("initrd_path").and_then(|v| v.as_str()) {
                existing_file(i, "Cannot open initrd image")?;
            }
            s.boot = Some(Value::Object(o));
            s.configured = true;
            Ok(None)
        }
        ("PUT", p) if p.starts_with("/drives/") => {
            pre_boot(&s)?;
            let id = &p["/drives/".len()..];
            let o = check(
                body,
                &[
                    ("drive_id", Ty::Str, true),
                    ("is_root_device", Ty::Bool, true),
                    ("path_on_host", Ty::Str, false),
                    ("is_read_only", Ty::Bool, false),
                    ("partuuid", Ty::Str, false),
                    ("cache_type", Ty::Str, false),
                    ("io_engine", Ty::Str, false),
                    ("rate_limiter", Ty::Obj, false),
                    ("socket", Ty::Str, false),
                ],
            )?;
            if o["drive_id"].as_str() != Some(id) {
                return Err(fault(
                    "The id from the path does not match the id from the body!",
                ));
            }
            existing_file(
                o.get("path_on_host").and_then(|v| v.as_str()).unwrap_or(""),
                "Unable to open the block device backing file",
            )?;
            let root = o["is_root_device"].as_bool() == Some(true);
            if root
                && s.drives
                    .iter()
                    .any(|(d, v)| d != id && v["is_root_device"] == json!(true))
            {
                return Err(fault("A root block device already exists!"));
            }
            s.drives.insert(id.to_string(), Value::Object(o));
            s.configured = true;
            Ok(None)
        }
        ("PUT", "/vsock") => {
            pre_boot(&s)?;
            let o = check(
                body,
                &[
                    ("guest_cid", Ty::Int, true),
                    ("uds_path", Ty::Str, true),
                    ("vsock_id", Ty::Str, false),
                ],
            )?;
            let cid = o["guest_cid"].as_u64().unwrap_or(0);
            if cid < 3 {
                return Err(fault(format!(
                    "Invalid guest CID {cid}: CIDs 0, 1 and 2 are reserved."
                )));
            }
            s.vsock = Some((cid, PathBuf::from(o["uds_path"].as_str().unwrap_or(""))));
            s.configured = true;
            Ok(None)
        }
        ("PUT", "/metrics") => {
            let o = check(body, &[("metrics_path", Ty::Str, true)])?;
            if s.metrics.is_some() {
                return Err(fault("Reinitialization of metrics not allowed."));
            }
            let p = PathBuf::from(o["metrics_path"].as_str().unwrap_or(""));
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| fault(format!("Cannot open the metrics file: {e}")))?;
            s.metrics = Some(p);
            Ok(None)
        }
        ("PUT", "/logger") => {
            check(
                body,
                &[
                    ("level", Ty::Str, false),
                    ("log_path", Ty::Str, false),
                    ("show_level", Ty::Bool, false),
                    ("show_log_origin", Ty::Bool, false),
                    ("module", Ty::Str, false),
                ],
            )?;
            Ok(None)
        }
        ("PUT", "/actions") => {
            let o = check(body, &[("action_type", Ty::Str, true)])?;
            match o["action_type"].as_str().unwrap_or("") {
                "InstanceStart" => {
                    pre_boot(&s)?;
                    if s.boot.is_none() {
                        return Err(fault("Cannot start microvm without kernel configuration."));
                    }
                    start_guest(&mut s, state, config)?;
                    s.phase = Phase::Running;
                    Ok(None)
                }
                "FlushMetrics" => {
                    let Some(p) = s.metrics.clone() else {
                        return Err(fault("The metrics system is not initialized."));
                    };
                    let line = json!({"utc_timestamp_ms": now_ms(), "api_server": {"process_startup_time_us": 1}, "vmm": {"panic_count": 0}});
                    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(p) {
                        let _ = writeln!(f, "{line}");
                    }
                    Ok(None)
                }
                "SendCtrlAltDel" => {
                    if s.phase == Phase::NotStarted {
                        return Err(fault(NOT_BEFORE_START));
                    }
                    stop_guest(&mut s);
                    s.phase = Phase::Off;
                    if config.exit_with_guest {
                        std::process::exit(0);
                    }
                    Ok(None)
                }
                other => Err(deser_err(format!(
                    "unknown variant `{other}`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel`"
                ))),
            }
        }
        ("PATCH", "/vm") => {
            let o = check(body, &[("state", Ty::Str, true)])?;
            if s.phase == Phase::NotStarted {
                return Err(fault(NOT_BEFORE_START));
            }
            let sig = match o["state"].as_str().unwrap_or("") {
                "Paused" => {
                    s.phase = Phase::Paused;
                    libc::SIGSTOP
                }
                "Resumed" => {
                    s.phase = Phase::Running;
                    libc::SIGCONT
                }
                other => {
                    return Err(deser_err(format!(
                        "unknown variant `{other}`, expected `Paused` or `Resumed`"
                    )))
                }
            };
            if let Some(g) = &s.guest {
                // SAFETY: kill(2) on our own child.
                unsafe {
                    libc_kill(g.pid, sig);
                }
            }
            Ok(None)
        }
        ("PUT", "/snapshot/create") => {
            let o = check(
                body,
                &[
                    ("snapshot_path", Ty::Str, true),
                    ("mem_file_path", Ty::Str, true),
                    ("snapshot_type", Ty::Str, false),
                ],
            )?;
            if s.phase != Phase::Paused {
                return Err(fault("Cannot create a snapshot: the microVM is not paused. Pause it with PATCH /vm first."));
            }
            let state_json = json!({
                "fake_firecracker_snapshot": 1,
                "machine": s.machine,
                "boot": s.boot,
                "drives": s.drives,
                "vsock_cid": s.vsock.as_ref().map(|v| v.0),
                "vsock_uds": s.vsock.as_ref().map(|v| v.1.display().to_string()),
            });
            std::fs::write(
                o["snapshot_path"].as_str().unwrap_or(""),
                state_json.to_string(),
            )
            .map_err(|e| fault(format!("Cannot write the snapshot file: {e}")))?;
            // The guest's memory: the fake's guests are snapshotted with an empty
            // workspace, so the memory file only says so.
            std::fs::write(
                o["mem_file_path"].as_str().unwrap_or(""),
                b"fake-firecracker guest memory\n",
            )
            .map_err(|e| fault(format!("Cannot write the memory file: {e}")))?;
            Ok(None)
        }
        ("PUT", "/snapshot/load") => {
            let o = check(
                body,
                &[
                    ("snapshot_path", Ty::Str, true),
                    ("mem_file_path", Ty::Str, false),
                    ("mem_backend", Ty::Obj, false),
                    ("enable_diff_snapshots", Ty::Bool, false),
                    ("track_dirty_pages", Ty::Bool, false),
                    ("resume_vm", Ty::Bool, false),
                    ("network_overrides", Ty::Obj, false),
                    ("vsock_override", Ty::Obj, false),
                    ("clock_realtime", Ty::Bool, false),
                ],
            )?;
            if s.phase != Phase::NotStarted || s.configured {
                return Err(fault("Loading a microVM snapshot not allowed after configuring boot-specific resources."));
            }
            let mem = match (o.get("mem_file_path"), o.get("mem_backend")) {
                (Some(p), None) => p.as_str().unwrap_or("").to_string(),
                (None, Some(b)) => {
                    let b = check(
                        b,
                        &[
                            ("backend_type", Ty::Str, true),
                            ("backend_path", Ty::Str, true),
                        ],
                    )?;
                    if b["backend_type"] != json!("File") {
                        return Err(fault("The fake supports only the File memory backend."));
                    }
                    b["backend_path"].as_str().unwrap_or("").to_string()
                }
                _ => {
                    return Err(fault(
                        "Either mem_file_path or mem_backend must be specified, and not both.",
                    ))
                }
            };
            existing_file(&mem, "Cannot open the memory file")?;
            let snap_path = o["snapshot_path"].as_str().unwrap_or("").to_string();
            let text = std::fs::read_to_string(&snap_path)
                .map_err(|e| fault(format!("Cannot open the snapshot file: {e}")))?;
            let snap: Value = serde_json::from_str(&text)
                .map_err(|e| fault(format!("The snapshot file is not a microVM state: {e}")))?;
            if snap.get("fake_firecracker_snapshot").is_none() {
                return Err(fault("The snapshot file is not a microVM state."));
            }
            s.machine = snap["machine"].clone();
            s.boot = Some(snap["boot"].clone());
            s.drives = serde_json::from_value(snap["drives"].clone()).unwrap_or_default();
            let mut uds = snap["vsock_uds"].as_str().map(PathBuf::from);
            if let Some(v) = o.get("vsock_override") {
                let v = check(v, &[("uds_path", Ty::Str, true)])?;
                uds = v["uds_path"].as_str().map(PathBuf::from);
            }
            if let (Some(cid), Some(uds)) = (snap["vsock_cid"].as_u64(), uds) {
                s.vsock = Some((cid, uds));
            }
            s.configured = true;
            start_guest(&mut s, state, config)?;
            if o.get("resume_vm") == Some(&json!(true)) {
                s.phase = Phase::Running;
            } else {
                s.phase = Phase::Paused;
                if let Some(g) = &s.guest {
                    // SAFETY: kill(2) on our own child.
                    unsafe {
                        libc_kill(g.pid, libc::SIGSTOP);
                    }
                }
            }
            Ok(None)
        }
        (m, p) => Err(fault(format!(
            "Invalid request method and/or path: {m} {p}."
        ))),
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Starts the agent and serves the vsock's hybrid socket.
fn start_guest(
    s: &mut State,
    state: &Arc<Mutex<State>>,
    config: &Arc<FakeFirecrackerConfig>,
) -> Result<(), Fault> {
    let Some((_, uds)) = s.vsock.clone() else {
        // A VM without vsock: it runs, nothing can reach it.
        return Ok(());
    };
    let _ = std::fs::remove_file(&uds);
    let listener = UnixListener::bind(&uds).map_err(|e| {
        fault(format!(
            "Cannot create the vsock backend at {}: {e}",
            uds.display()
        ))
    })?;
    let dir = PathBuf::from(format!("{}.guest", uds.display()));
    let agent_sock = dir.join("agent.sock");
    if let Some(g) = &config.guest {
        let ws = dir.join("workspace");
        std::fs::create_dir_all(&ws).map_err(|e| fault(format!("Cannot create the guest: {e}")))?;
        let mut cmd = Command::new(&g.argv[0]);
        cmd.args(&g.argv[1..])
            .arg("--listen")
            .arg(format!("unix:{}", agent_sock.display()))
            .arg("--workspace")
            .arg(&ws)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe; the agent dies with the fake, as a guest
        // dies with its VMM.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        // The child is spawned and waited for by a thread of its own: PDEATHSIG is tied
        // to the thread that forks, and the API's connection threads are short-lived.
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter_state = state.clone();
        let exit = config.exit_with_guest;
        std::thread::spawn(move || {
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let pid = child.id() as i32;
            let _ = tx.send(Ok(pid));
            let _ = child.wait();
            // The guest powered off.
            if let Ok(mut s) = waiter_state.lock() {
                if s.guest.as_ref().map(|g| g.pid) == Some(pid) {
                    s.guest = None;
                    s.phase = Phase::Off;
                }
            }
            if exit {
                std::process::exit(0);
            }
        });
        let pid = rx
            .recv()
            .map_err(|_| fault("The guest agent's waiter died."))?
            .map_err(|e| fault(format!("Cannot start the guest agent {}: {e}", g.argv[0])))?;
        s.guest = Some(Guest {
            pid,
            dir: dir.clone(),
        });
    }
    let state = state.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let port = {
                let Ok(mut s) = state.lock() else { return };
                s.next_host_port += 1;
                s.next_host_port
            };
            let agent_sock = agent_sock.clone();
            std::thread::spawn(move || hybrid(conn, &agent_sock, port));
        }
    });
    Ok(())
}

/// One host connection through the hybrid vsock: `CONNECT 1024\n` → `OK <port>\n`.
fn hybrid(mut host: UnixStream, agent_sock: &Path, host_port: u32) {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        match host.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&line);
    let port: Option<u32> = text
        .strip_prefix("CONNECT ")
        .and_then(|p| p.trim().parse().ok());
    if port != Some(1024) {
        return; // nothing listens on that guest port: the connection is closed
    }
    // The agent may still be starting: like a guest that has not bound its port yet,
    // the connection is closed until it listens.
    let deadline = Instant::now() + Duration::from_millis(200);
    let guest = loop {
        match UnixStream::connect(agent_sock) {
            Ok(g) => break g,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return,
        }
    };
    if host
        .write_all(format!("OK {host_port}\n").as_bytes())
        .is_err()
    {
        return;
    }
    let (Ok(mut h2), Ok(mut g2)) = (host.try_clone(), guest.try_clone()) else {
        return;
    };
    let mut guest = guest;
    let t = std::thread::spawn(move || {
        let _ = io::copy(&mut h2, &mut guest);
        let _ = guest.shutdown(std::net::Shutdown::Write);
    });
    let _ = io::copy(&mut g2, &mut host);
    let _ = host.shutdown(std::net::Shutdown::Both);
    let _ = t.join();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn call(sock: &Path, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut s = UnixStream::connect(sock).unwrap();
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            payload.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status: u16 = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    #[test]
    fn faults_for_bad_bodies_and_order_like_firecracker() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let fc = FakeFirecracker::start(&sock, FakeFirecrackerConfig::default()).unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, "k").unwrap();

        let (st, b) = call(
            &sock,
            "PUT",
            "/actions",
            Some(json!({"action_type": "InstanceStart"})),
        );
        assert_eq!(st, 400);
        assert!(b["fault_message"]
            .as_str()
            .unwrap()
            .contains("without kernel configuration"));
        let (st, b) = call(
            &sock,
            "PUT",
            "/machine-config",
            Some(json!({"vcpu_count": 2})),
        );
        assert_eq!(st, 400);
        assert!(
            b["fault_message"]
                .as_str()
                .unwrap()
                .contains("missing field `mem_size_mib`"),
            "{b}"
        );
        let (st, b) = call(
            &sock,
            "PUT",
            "/machine-config",
            Some(json!({"vcpu_count": 2, "mem_size_mib": 512, "bogus": 1})),
        );
        assert_eq!(st, 400);
        assert!(
            b["fault_message"]
                .as_str()
                .unwrap()
                .contains("unknown field `bogus`"),
            "{b}"
        );
        let (st, _) = call(
            &sock,
            "PUT",
            "/machine-config",
            Some(json!({"vcpu_count": 2, "mem_size_mib": 512})),
        );
        assert_eq!(st, 204);
        let (st, b) = call(
            &sock,
            "PUT",
            "/drives/rootfs",
            Some(json!({"drive_id": "other", "is_root_device": true, "path_on_host": kernel})),
        );
        assert_eq!(st, 400);
        assert!(
            b["fault_message"]
                .as_str()
                .unwrap()
                .contains("does not match"),
            "{b}"
        );
        let (st, _) = call(
            &sock,
            "PUT",
            "/boot-source",
            Some(json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0"})),
        );
        assert_eq!(st, 204);
        let (st, b) = call(&sock, "PATCH", "/vm", Some(json!({"state": "Paused"})));
        assert_eq!(st, 400, "{b}");
        let (st, _) = call(
            &sock,
            "PUT",
            "/actions",
            Some(json!({"action_type": "InstanceStart"})),
        );
        assert_eq!(st, 204);
        let (st, b) = call(
            &sock,
            "PUT",
            "/machine-config",
            Some(json!({"vcpu_count": 1, "mem_size_mib": 256})),
        );
        assert_eq!(
            (st, b["fault_message"].as_str().unwrap()),
            (400, NOT_AFTER_START)
        );
        let (st, b) = call(
            &sock,
            "PUT",
            "/snapshot/create",
            Some(
                json!({"snapshot_path": dir.path().join("s"), "mem_file_path": dir.path().join("m")}),
            ),
        );
        assert_eq!(st, 400, "not paused: {b}");
        let (st, b) = call(&sock, "GET", "/", None);
        assert_eq!((st, b["state"].as_str()), (200, Some("Running")));
        let (st, b) = call(&sock, "PUT", "/nope", Some(json!({})));
        assert_eq!(st, 400);
        assert!(b["fault_message"]
            .as_str()
            .unwrap()
            .contains("Invalid request method and/or path"));
        assert_eq!(fc.sequence().len(), 12);
    }
}
