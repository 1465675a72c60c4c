//! What the JSON frame encoding costs per message, against the ~40–90 ms a round trip
//! through vsock takes under TCG (docs/vm-protocol.md). `cargo bench -p safe-coder-vm-protocol`.

use std::io::Cursor;
use std::time::Instant;

use safe_coder_vm_protocol::*;

fn bench<T>(name: &str, iters: u32, body: &T, data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut buf = Vec::with_capacity(data.len() + 1024);
    let start = Instant::now();
    for i in 0..iters {
        buf.clear();
        write_frame(&mut buf, u64::from(i), body, data).expect("write");
        let f = read_frame::<_, T>(&mut Cursor::new(&buf))
            .expect("read")
            .expect("frame");
        std::hint::black_box(f);
    }
    let per = start.elapsed() / iters;
    println!(
        "{name:<40} {:>6} bytes  {:>9.2?} per encode+decode",
        buf.len(),
        per
    );
}

fn main() {
    let exec = Request::Exec(ExecRequest::shell(
        "cargo test --workspace 2>&1 | tail -n 50",
        (0..12)
            .map(|i| {
                (
                    format!("VAR_{i}"),
                    "/usr/local/bin:/usr/bin:/bin".to_string(),
                )
            })
            .collect(),
    ));
    bench("exec request (12 env vars)", 20_000, &exec, b"");
    let chunk = vec![b'x'; 64 * 1024];
    bench(
        "output chunk (64 KiB)",
        5_000,
        &Response::Output {
            stream: Stream::Stdout,
        },
        &chunk,
    );
    let file = vec![7u8; 1 << 20];
    bench(
        "file data (1 MiB)",
        500,
        &Response::FileData { mode: 0o644 },
        &file,
    );
    let changes = Response::Changes {
        changes: (0..1000)
            .map(|i| Change {
                path: format!("src/module_{i}/file_{i}.rs"),
                kind: ChangeKind::Written,
                stat: Some(FileStat {
                    kind: FileKind::File,
                    size: 1234,
                    mode: 0o644,
                    target: None,
                }),
            })
            .collect(),
        mark: Some(2),
    };
    bench("changes (1000 files)", 500, &changes, b"");
}
