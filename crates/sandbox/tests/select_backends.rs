//! Backend probing, the `auto` choice and the doctor report.

use safe_coder_sandbox::select::{
    choose, choose_with, doctor_report, probe, probe_all, probe_with, AUTO_ORDER,
};
use safe_coder_sandbox::{BackendKind, BackendSettings, DockerSpec, SandboxError, SandboxSpec};

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
    // The microVM backends, asked with a data dir that has no guest image: unavailable,
    // naming what is missing (the VMM, KVM, or the image and the command that builds it).
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = safe_coder_sandbox::BackendSettings {
        vm: safe_coder_sandbox::VmSpec {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        },
        ..Default::default()
    };
    for kind in [BackendKind::Firecracker, BackendKind::Qemu] {
        let p = safe_coder_sandbox::select::probe_with(kind, &settings);
        assert!(!p.available, "{}", p.reason);
        assert!(
            p.reason
                .contains("safe-coder sandbox image build --backend qemu")
                || p.reason.contains("not installed")
                || p.reason.contains("/dev/kvm"),
            "{}",
            p.reason
        );
    }
}

/// Docker without an engine at the configured socket: unavailable, naming the fix; and
/// opening it is the same sentence.
#[test]
fn docker_without_an_engine_says_how_to_get_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let docker = DockerSpec {
        host: Some(format!("unix://{}/no.sock", dir.path().display())),
        ..DockerSpec::default()
    };
    let settings = BackendSettings {
        docker: docker.clone(),
        ..BackendSettings::default()
    };
    let p = probe_with(BackendKind::Docker, &settings);
    assert!(!p.available);
    assert!(
        p.reason.contains("no container engine socket"),
        "{}",
        p.reason
    );
    assert!(p.reason.contains("no.sock"), "{}", p.reason);
    let (kind, note) = choose_with(None, &settings).expect("auto");
    assert_ne!(kind, BackendKind::Docker);
    assert!(
        note.contains("docker (no container engine socket"),
        "{note}"
    );
    let mut spec = SandboxSpec::new(dir.path());
    spec.docker = docker.clone();
    match safe_coder_sandbox::open(BackendKind::Docker, spec) {
        Err(SandboxError::Unavailable(reason)) => {
            assert!(reason.contains("start dockerd"), "{reason}")
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("docker opened without an engine"),
    }
    let tcp = BackendSettings {
        docker: DockerSpec {
            host: Some("tcp://127.0.0.1:2375".into()),
            ..DockerSpec::default()
        },
        ..BackendSettings::default()
    };
    assert!(probe_with(BackendKind::Docker, &tcp)
        .reason
        .contains("unix://"));
}

#[test]
fn auto_picks_the_strongest_available_and_explains() {
    let (kind, note) = choose(None).expect("copy always works");
    assert_ne!(kind, BackendKind::Direct, "auto never chooses direct");
    // The first that works here, in order; each stronger one is named with its reason.
    let expected = AUTO_ORDER
        .into_iter()
        .find(|&k| k != BackendKind::Direct && probe(k).available)
        .expect("copy always works");
    assert_eq!(kind, expected, "{note}");
    assert!(
        note.starts_with(&format!("auto chose {}", kind.as_str())),
        "{note}"
    );
    for passed in AUTO_ORDER.into_iter().take_while(|&k| k != kind) {
        assert!(note.contains(&format!("{} (", passed.as_str())), "{note}");
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
    // Then the workspace lines (copy and process sessions, qemu, docker sessions).
    assert_eq!(lines.len(), AUTO_ORDER.len() + 4, "{report}");
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
    let qemu = lines[AUTO_ORDER.len() + 2];
    assert!(
        qemu.starts_with("qemu workspace: shared over virtio-fs")
            || qemu.starts_with("qemu workspace: copied into the guest"),
        "{report}"
    );
    let docker = lines[AUTO_ORDER.len() + 3];
    assert!(
        docker.starts_with("docker workspace: an overlay volume in the container")
            || docker.starts_with("docker workspace: copied into the container ("),
        "{report}"
    );
}

#[test]
fn opening_a_vm_without_its_image_names_the_command_that_builds_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
    for kind in [BackendKind::Firecracker, BackendKind::Qemu] {
        let mut spec = safe_coder_sandbox::SandboxSpec::new(&work);
        spec.vm.data_dir = dir.path().join("data");
        match safe_coder_sandbox::open(kind, spec) {
            Err(SandboxError::Unavailable(reason)) => {
                assert!(
                    reason.contains("safe-coder sandbox image build --backend qemu"),
                    "{reason}"
                );
            }
            Err(other) => panic!("{kind:?}: expected Unavailable, got {other}"),
            Ok(_) => panic!("{kind:?} opened without a guest image"),
        }
    }
}
