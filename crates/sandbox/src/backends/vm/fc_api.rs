//! A client of Firecracker's HTTP API on its Unix socket (`--api-sock`), as published in
//! Firecracker's `firecracker.yaml`: every configuration call is a `PUT` (or `PATCH`) of
//! a JSON body answered `204 No Content`, and every refusal is a 4xx/5xx whose body is
//! `{"fault_message": "..."}`. Blocking and one connection per call: a boot is a handful
//! of calls, and each is answered in microseconds.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

/// What a call to the API can end in.
#[derive(Debug, thiserror::Error)]
pub enum FirecrackerApiError {
    #[error("cannot reach the Firecracker API at {socket}: {source}; is firecracker running?")]
    Connect {
        socket: String,
        #[source]
        source: io::Error,
    },
    #[error("the Firecracker API call {method} {path} failed: {source}")]
    Io {
        method: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// Firecracker refused the call; `fault` is its `fault_message`.
    #[error("Firecracker refused {method} {path} ({status}): {fault}")]
    Fault {
        method: &'static str,
        path: String,
        status: u16,
        fault: String,
    },
    #[error("Firecracker answered {method} {path} with something that is not HTTP: {detail}")]
    BadResponse {
        method: &'static str,
        path: String,
        detail: String,
    },
}

/// One answered call.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The API of one Firecracker process.
#[derive(Clone, Debug)]
pub struct FirecrackerApi {
    socket: PathBuf,
    timeout: Duration,
}

impl FirecrackerApi {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        FirecrackerApi {
            socket: socket.into(),
            timeout: Duration::from_secs(10),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// One HTTP/1.1 exchange on a fresh connection.
    pub fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse, FirecrackerApiError> {
        let io_err = |source| FirecrackerApiError::Io {
            method,
            path: path.to_string(),
            source,
        };
        let mut s =
            UnixStream::connect(&self.socket).map_err(|source| FirecrackerApiError::Connect {
                socket: self.socket.display().to_string(),
                source,
            })?;
        s.set_read_timeout(Some(self.timeout)).map_err(io_err)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io_err)?;
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n"
        );
        if body.is_some() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                payload.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(&payload);
        s.write_all(req.as_bytes()).map_err(io_err)?;
        let bad = |detail: String| FirecrackerApiError::BadResponse {
            method,
            path: path.to_string(),
            detail,
        };
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).map_err(io_err)?;
        let status: u16 = line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| line.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| bad(format!("status line {:?}", line.trim_end())))?;
        let mut length: Option<usize> = None;
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(io_err)? == 0 {
                return Err(bad("the connection closed inside the headers".into()));
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                if name.trim().eq_ignore_ascii_case("content-length") {
                    length = Some(
                        value
                            .trim()
                            .parse()
                            .map_err(|_| bad(format!("Content-Length {value:?}")))?,
                    );
                }
            }
        }
        let mut body = Vec::new();
        match length {
            Some(n) => {
                body.resize(n, 0);
                r.read_exact(&mut body).map_err(io_err)?;
            }
            None if status == 204 => {}
            None => {
                r.read_to_end(&mut body).map_err(io_err)?;
            }
        }
        Ok(ApiResponse { status, body })
    }

    /// A call that must be answered `204 No Content`; anything else is a
    /// [`FirecrackerApiError::Fault`] with Firecracker's `fault_message`.
    fn expect_no_content(
        &self,
        method: &'static str,
        path: &str,
        body: &Value,
    ) -> Result<(), FirecrackerApiError> {
        let resp = self.call(method, path, Some(body))?;
        if resp.status == 204 {
            return Ok(());
        }
        Err(fault(method, path, &resp))
    }

    pub fn put(&self, path: &str, body: &Value) -> Result<(), FirecrackerApiError> {
        self.expect_no_content("PUT", path, body)
    }

    pub fn patch(&self, path: &str, body: &Value) -> Result<(), FirecrackerApiError> {
        self.expect_no_content("PATCH", path, body)
    }

    /// `GET path`, which must be answered `200` with JSON.
    pub fn get(&self, path: &str) -> Result<Value, FirecrackerApiError> {
        let resp = self.call("GET", path, None)?;
        if resp.status != 200 {
            return Err(fault("GET", path, &resp));
        }
        serde_json::from_slice(&resp.body).map_err(|e| FirecrackerApiError::BadResponse {
            method: "GET",
            path: path.to_string(),
            detail: format!("the body is not JSON: {e}"),
        })
    }

    pub fn machine_config(&self, vcpus: u32, mem_mib: u64) -> Result<(), FirecrackerApiError> {
        self.put(
            "/machine-config",
            &json!({"vcpu_count": vcpus, "mem_size_mib": mem_mib, "smt": false}),
        )
    }

    pub fn boot_source(
        &self,
        kernel: &Path,
        initrd: Option<&Path>,
        boot_args: &str,
    ) -> Result<(), FirecrackerApiError> {
        let mut body = json!({
            "kernel_image_path": kernel.display().to_string(),
            "boot_args": boot_args,
        });
        if let Some(i) = initrd {
            body["initrd_path"] = json!(i.display().to_string());
        }
        self.put("/boot-source", &body)
    }

    pub fn drive(
        &self,
        id: &str,
        path: &Path,
        root: bool,
        read_only: bool,
    ) -> Result<(), FirecrackerApiError> {
        self.put(
            &format!("/drives/{id}"),
            &json!({
                "drive_id": id,
                "path_on_host": path.display().to_string(),
                "is_root_device": root,
                "is_read_only": read_only,
            }),
        )
    }

    pub fn vsock(&self, guest_cid: u32, uds: &Path) -> Result<(), FirecrackerApiError> {
        self.put(
            "/vsock",
            &json!({"guest_cid": guest_cid, "uds_path": uds.display().to_string()}),
        )
    }

    pub fn metrics(&self, path: &Path) -> Result<(), FirecrackerApiError> {
        self.put(
            "/metrics",
            &json!({"metrics_path": path.display().to_string()}),
        )
    }

    pub fn action(&self, action_type: &str) -> Result<(), FirecrackerApiError> {
        self.put("/actions", &json!({"action_type": action_type}))
    }

    pub fn instance_start(&self) -> Result<(), FirecrackerApiError> {
        self.action("InstanceStart")
    }

    pub fn pause(&self) -> Result<(), FirecrackerApiError> {
        self.patch("/vm", &json!({"state": "Paused"}))
    }

    pub fn resume(&self) -> Result<(), FirecrackerApiError> {
        self.patch("/vm", &json!({"state": "Resumed"}))
    }

    pub fn snapshot_create(&self, state: &Path, mem: &Path) -> Result<(), FirecrackerApiError> {
        self.put(
            "/snapshot/create",
            &json!({
                "snapshot_type": "Full",
                "snapshot_path": state.display().to_string(),
                "mem_file_path": mem.display().to_string(),
            }),
        )
    }

    /// Loads a snapshot into a fresh Firecracker process and resumes it, with the vsock
    /// socket moved to `uds` (each session has its own).
    pub fn snapshot_load(
        &self,
        state: &Path,
        mem: &Path,
        uds: &Path,
    ) -> Result<(), FirecrackerApiError> {
        self.put(
            "/snapshot/load",
            &json!({
                "snapshot_path": state.display().to_string(),
                "mem_backend": {"backend_type": "File", "backend_path": mem.display().to_string()},
                "resume_vm": true,
                "vsock_override": {"uds_path": uds.display().to_string()},
            }),
        )
    }
}

fn fault(method: &'static str, path: &str, resp: &ApiResponse) -> FirecrackerApiError {
    let fault = serde_json::from_slice::<Value>(&resp.body)
        .ok()
        .and_then(|v| {
            v.get("fault_message")
                .and_then(|m| m.as_str())
                .map(String::from)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&resp.body).trim().to_string());
    FirecrackerApiError::Fault {
        method,
        path: path.to_string(),
        status: resp.status,
        fault: if fault.is_empty() {
            "no fault message".into()
        } else {
            fault
        },
    }
}
