//! Backend probing, the `auto` choice and the doctor report.

use safe_coder_sandbox::select::{choose, doctor_report, probe, probe_all, AUTO_ORDER};
use safe_coder_sandbox::{BackendKind, SandboxError};

#[test]
fn probes_come_in_auto_order_with_reasons() {
    let all = probe_all();
    let kinds: Vec<BackendKind> = all.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, AUTO_ORDER.to_vec());
    for p in &all {
        assert!(!p.reason.is_empty(), "{:?} has no reason", p.kind);
    }
    assert!(probe(BackendKind::Copy).available);
    assert!(probe(BackendKind::Direct).available);
    // Not built in this version: unavailable, saying so and what the machine has.
    for kind in [
        BackendKind::Firecracker,
        BackendKind::Qemu,
        BackendKind::Docker,
    ] {
        let p = probe(kind);
        assert!(!p.available);
        assert!(p.reason.contains("not built yet"), "{}", p.reason);
    }
    assert!(probe(BackendKind::Qemu).reason.contains("/dev/kvm"));
}

#[test]
fn auto_picks_the_strongest_available_and_explains() {
    let (kind, note) = choose(None).expect("copy always works");
    assert_ne!(kind, BackendKind::Direct, "auto never chooses direct");
    let process = probe(BackendKind::Process);
    if process.available {
        assert_eq!(kind, BackendKind::Process, "{note}");
    } else {
        eprintln!("process unavailable here: {}", process.reason);
        assert_eq!(kind, BackendKind::Copy, "{note}");
    }
    assert!(
        note.starts_with(&format!("auto chose {}", kind.as_str())),
        "{note}"
    );
    for passed in ["firecracker", "qemu", "docker"] {
        assert!(note.contains(passed), "{note}");
    }
}

#[test]
fn an_unavailable_requested_backend_is_an_error_with_the_reason() {
    match choose(Some(BackendKind::Firecracker)) {
        Err(SandboxError::Unavailable(reason)) => {
            assert!(reason.contains("firecracker"), "{reason}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let (kind, _) = choose(Some(BackendKind::Copy)).expect("copy");
    assert_eq!(kind, BackendKind::Copy);
    let (kind, _) = choose(Some(BackendKind::Direct)).expect("direct");
    assert_eq!(kind, BackendKind::Direct);
}

#[test]
fn doctor_prints_every_backend_and_the_auto_choice() {
    let report = doctor_report();
    print!("{report}");
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), AUTO_ORDER.len() + 2, "{report}");
    for (line, kind) in lines.iter().zip(AUTO_ORDER) {
        assert!(line.starts_with('✓') || line.starts_with('✗'), "{line}");
        assert!(line.contains(kind.as_str()), "{line}");
    }
    assert!(lines[AUTO_ORDER.len()].starts_with("auto → "), "{report}");
    // Which workspace copy and process sessions get: the overlay, or why a copy.
    let workspace = lines[AUTO_ORDER.len() + 1];
    assert!(
        workspace.starts_with("workspace: overlay (") || workspace.starts_with("workspace: copy"),
        "{report}"
    );
}

#[test]
fn opening_a_backend_that_is_not_built_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    for kind in [
        BackendKind::Firecracker,
        BackendKind::Qemu,
        BackendKind::Docker,
    ] {
        match safe_coder_sandbox::open(kind, safe_coder_sandbox::SandboxSpec::new(dir.path())) {
            Err(SandboxError::Unavailable(reason)) => {
                assert!(reason.contains("not built yet"), "{reason}");
                assert!(reason.contains(kind.as_str()), "{reason}");
            }
            Err(other) => panic!("{kind:?}: expected Unavailable, got {other}"),
            Ok(_) => panic!("{kind:?} opened, but it is not built"),
        }
    }
}
