//! File operations of the host backends (`copy` here) on real files.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{symlink, PermissionsExt};

use std::sync::Arc;

use safe_coder_sandbox::{BackendKind, Sandbox, SandboxError, SandboxSpec, SandboxState};

fn sandbox() -> (tempfile::TempDir, Arc<dyn Sandbox>) {
    let dir = tempfile::tempdir().unwrap();
    let sb = safe_coder_sandbox::open(BackendKind::Copy, SandboxSpec::new(dir.path())).unwrap();
    (dir, sb)
}

#[tokio::test]
async fn write_read_stat_list() {
    let (dir, sb) = sandbox();
    sb.write_file("a/b/c.txt", b"hello").await.unwrap();
    assert_eq!(sb.read_file("a/b/c.txt").await.unwrap(), b"hello");
    let st = sb.stat("a/b/c.txt").await.unwrap().unwrap();
    assert_eq!((st.is_dir, st.size, st.executable), (false, 5, false));
    assert!(sb.stat("a/b").await.unwrap().unwrap().is_dir);
    assert_eq!(sb.stat("nope").await.unwrap(), None);
    assert_eq!(sb.stat("a/b/c.txt/x").await.unwrap(), None);
    let entries = sb.list_dir("a/b").await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, "c.txt");
    // No temp files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path().join("a/b"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1);
    assert!(matches!(
        sb.read_file("missing").await,
        Err(SandboxError::NotFound(_))
    ));
    assert!(matches!(
        sb.read_file("a").await,
        Err(SandboxError::IsDirectory(_))
    ));
    assert!(matches!(
        sb.write_file("a", b"x").await,
        Err(SandboxError::IsDirectory(_))
    ));
    assert_eq!(
        sb.host_workdir().unwrap(),
        std::fs::canonicalize(dir.path()).unwrap()
    );
}

#[tokio::test]
async fn write_keeps_executable_bit() {
    let (dir, sb) = sandbox();
    let script = dir.path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    sb.write_file("run.sh", b"#!/bin/sh\necho hi\n")
        .await
        .unwrap();
    let mode = std::fs::metadata(&script).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
    assert!(sb.stat("run.sh").await.unwrap().unwrap().executable);
    assert_eq!(
        std::fs::read_to_string(&script).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
}

#[tokio::test]
async fn symlink_escapes_are_refused() {
    let (dir, sb) = sandbox();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "s").unwrap();
    symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
    symlink(outside.path(), dir.path().join("outdir")).unwrap();
    assert!(matches!(
        sb.read_file("link").await,
        Err(SandboxError::OutsideRoot(_))
    ));
    assert!(matches!(
        sb.write_file("link", b"x").await,
        Err(SandboxError::OutsideRoot(_))
    ));
    assert!(matches!(
        sb.write_file("outdir/new", b"x").await,
        Err(SandboxError::OutsideRoot(_))
    ));
    assert!(matches!(
        sb.read_file("../x").await,
        Err(SandboxError::OutsideRoot(_))
    ));
    assert_eq!(
        std::fs::read_to_string(outside.path().join("secret")).unwrap(),
        "s"
    );
    assert!(!outside.path().join("new").exists());
}

#[tokio::test]
async fn status_and_stop() {
    let (_dir, sb) = sandbox();
    let st = sb.status().await;
    assert_eq!(st.backend, "copy");
    assert_eq!(st.state, SandboxState::Running);
    sb.stop().await.unwrap();
    assert_eq!(sb.status().await.state, SandboxState::Stopped);
}

#[test]
fn open_refuses_a_missing_dir() {
    assert!(safe_coder_sandbox::open(
        BackendKind::Direct,
        SandboxSpec::new("/nonexistent/safe-coder-x")
    )
    .is_err());
}

/// `read_file` on a FIFO, a socket or a device is refused at once: without the check
/// the FIFO's open would wait forever for a writer. The read runs on a thread and the
/// test gives it a generous bound, so a regression fails instead of hanging CI.
#[test]
fn reading_a_fifo_socket_or_device_is_refused_without_blocking() {
    let (dir, sb) = sandbox();
    let fifo = dir.path().join("pipe");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let _listener = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
    symlink("/dev/zero", dir.path().join("zero")).unwrap();

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let results: Vec<(String, Result<Vec<u8>, SandboxError>)> = rt.block_on(async {
            let mut out = Vec::new();
            for name in ["pipe", "sock", "zero"] {
                out.push((name.to_string(), sb.read_file(name).await));
            }
            out
        });
        let _ = tx.send(results);
    });
    let results = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("read_file blocked on a FIFO (no answer within 60 s)");
    for (name, result) in results {
        match result {
            Err(SandboxError::NotRegularFile { what, .. }) => {
                eprintln!("{name}: refused as {what}");
            }
            // /dev/zero is outside the root: refused before anything is opened.
            Err(SandboxError::OutsideRoot(_)) if name == "zero" => {}
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
    }
    // The message names the thing and says what can be read.
    let text = SandboxError::NotRegularFile {
        path: "pipe".into(),
        what: "a FIFO (named pipe)",
    }
    .to_string();
    assert!(
        text.contains("FIFO") && text.contains("regular files"),
        "{text}"
    );
}
