//! Median time of one tool call over a `copy` sandbox (no confiner) (the `copy` and
//! `direct` backends): `bash` running `true`, and `write_file` / `read_file` /
//! `edit_file` on a small file. Run with `cargo bench -p safe-coder-tools`.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use safe_coder_sandbox::{BackendKind, CancellationToken, SandboxSpec};
use safe_coder_tools::{ToolContext, ToolRegistry};
use serde_json::{json, Value};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

async fn measure(
    ctx: &ToolContext<'_>,
    label: &str,
    name: &str,
    iterations: usize,
    input: impl Fn(usize) -> Value,
) {
    // Warm up (page cache, first process spawn).
    for i in 0..5 {
        let out = ToolRegistry::builtin().run(name, &input(i), ctx).await;
        assert!(!out.is_error, "{label}: {}", out.content);
    }
    let mut times = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let input = input(i + 5);
        let start = Instant::now();
        let out = ToolRegistry::builtin().run(name, &input, ctx).await;
        times.push(start.elapsed());
        assert!(!out.is_error, "{label}: {}", out.content);
    }
    times.sort();
    println!(
        "{label:<34} median {:>9.1} µs   p90 {:>9.1} µs   ({iterations} calls)",
        percentile(&times, 0.5).as_secs_f64() * 1e6,
        percentile(&times, 0.9).as_secs_f64() * 1e6,
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox =
        safe_coder_sandbox::open(BackendKind::Copy, SandboxSpec::new(dir.path())).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let body: String = (0..200)
        .map(|i| format!("line {i}: some source text\n"))
        .collect();
    runtime.block_on(async {
        let ctx = ToolContext {
            sandbox: &*sandbox,
            cancel: CancellationToken::new(),
        };
        println!("safe-coder-tools bench (copy sandbox, no confiner)");
        measure(
            &ctx,
            "bash `true`",
            "bash",
            200,
            |_| json!({"command": "true"}),
        )
        .await;
        measure(
            &ctx,
            "write_file (200 lines, 6 KiB)",
            "write_file",
            1000,
            |_| json!({"path": "src/bench.rs", "content": body}),
        )
        .await;
        measure(
            &ctx,
            "read_file (200 lines)",
            "read_file",
            1000,
            |_| json!({"path": "src/bench.rs"}),
        )
        .await;
        measure(&ctx, "edit_file (1 replacement)", "edit_file", 1000, |i| {
            let (old, new) = if i % 2 == 0 {
                ("line 100:", "LINE 100:")
            } else {
                ("LINE 100:", "line 100:")
            };
            json!({"path": "src/bench.rs", "old_string": old, "new_string": new})
        })
        .await;
    });
}
