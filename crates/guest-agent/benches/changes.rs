//! What "changed files since a mark" costs, kept by inotify and by a full walk with
//! `lstat` (docs/vm-protocol.md has the figures). `cargo bench -p safe-coder-guest-agent`.

use std::path::Path;
use std::time::Instant;

use safe_coder_guest_agent::changes::Tracker;

fn tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("d{}/e{}", i % 50, i % 7));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(format!("f{i}.rs")), format!("fn f{i}() {{}}\n")).expect("file");
    }
}

fn main() {
    for files in [1_000, 10_000] {
        let dir = tempfile::tempdir().expect("tempdir");
        tree(dir.path(), files);
        // Let the files age past the racy window, as a project's files have.
        std::thread::sleep(std::time::Duration::from_millis(50));
        for (name, tracker) in [
            ("walk", Tracker::walking()),
            ("inotify", Tracker::default()),
        ] {
            let rounds = 10;
            let t = Instant::now();
            let mut mark = 0;
            for _ in 0..rounds {
                mark = tracker.set_mark(dir.path()).expect("mark");
            }
            let per_mark = t.elapsed() / rounds;
            for i in 0..10 {
                let p = dir.path().join(format!("d{i}/new-{name}-{i}.txt"));
                std::fs::write(p, b"x").expect("write");
            }
            let t = Instant::now();
            let mut n = 0;
            for _ in 0..rounds {
                n = tracker
                    .changes_since(dir.path(), mark, false)
                    .expect("changes")
                    .0
                    .len();
            }
            let per_diff = t.elapsed() / rounds;
            assert_eq!(n, 10);
            println!(
                "{files:>6} files, {name:<7}: set_mark {per_mark:>10.2?}  changes_since (10 changed) {per_diff:>10.2?}"
            );
        }
    }
}
