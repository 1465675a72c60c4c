//! What watching the work tree costs while `safe-coder run` runs a command: one
//! fingerprint (an `lstat` of every entry) of a tree of 1,000 and of 10,000 files,
//! taken every 500 ms (docs/run.md). Median of 30 runs each, warm cache.
//!
//! Run: `cargo bench -p safe-coder-core --bench watch`.

use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    for files in [1_000usize, 10_000] {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..files {
            let sub = dir.path().join(format!("d{}/e{}", i % 50, i % 7));
            std::fs::create_dir_all(&sub).expect("mkdir");
            std::fs::write(sub.join(format!("f{i}.txt")), "x").expect("write");
        }
        safe_coder_core::work_tree_fingerprint(dir.path());
        let times: Vec<Duration> = (0..30)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(safe_coder_core::work_tree_fingerprint(dir.path()));
                t.elapsed()
            })
            .collect();
        let m = median(times);
        println!(
            "{files:>6} files: {:6.2} ms per look ({:.1}% of one core at one look per 500 ms)",
            m.as_secs_f64() * 1000.0,
            m.as_secs_f64() * 100.0 / 0.5
        );
    }
}
