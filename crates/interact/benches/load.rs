//! Finding and loading memory files and custom commands in a 50,000-file project
//! (issue 5: ≤ 5 ms). Prints the figures; no criterion.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use safe_coder_interact::{load_custom_commands, load_memory};

const FILES: usize = 50_000;
const PER_DIR: usize = 100;

fn write(path: &Path, content: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create dirs");
    }
    fs::write(path, content).expect("write");
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("repo");
    let project = repo.join("services").join("api");
    let config = tmp.path().join("config").join("safe-coder");
    let started = Instant::now();
    fs::create_dir_all(repo.join(".git")).expect("git dir");
    for i in 0..FILES {
        let dir = project.join(format!("src/m{:03}", i / PER_DIR));
        if i % PER_DIR == 0 {
            fs::create_dir_all(&dir).expect("module dir");
        }
        fs::write(dir.join(format!("f{i}.rs")), "pub fn f() {}\n").expect("file");
    }
    // Memory at every level and a realistic set of custom commands.
    write(&config.join("SAFECODER.md"), "- user rule\n");
    write(&repo.join("AGENTS.md"), "- repo rule\n");
    write(&repo.join("services/SAFECODER.md"), "- services rule\n");
    write(&project.join("SAFECODER.md"), "- project rule\n");
    for i in 0..10 {
        write(
            &config.join(format!("commands/user{i}.md")),
            "---\ndescription: a user command\n---\nDo {{args}}\n",
        );
        write(
            &project.join(format!(".safe-coder/commands/ns{}/cmd{i}.md", i % 3)),
            "---\ndescription: a project command\n---\nRun !{git status} on {{args}}\n",
        );
    }
    println!(
        "generated a {FILES}-file project in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut times: Vec<Duration> = Vec::new();
    let iterations = 2_000;
    let mut check = (0, 0);
    for _ in 0..iterations {
        let t = Instant::now();
        let memory = load_memory(&config, &project);
        let commands = load_custom_commands(&config, &project);
        times.push(t.elapsed());
        check = (memory.files.len(), commands.len());
    }
    assert_eq!(check, (4, 20), "memory files and commands found");
    times.sort();
    let mean = times.iter().sum::<Duration>() / iterations;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "load_memory + load_custom_commands ({} memory files, {} commands), {iterations} runs:",
        check.0, check.1
    );
    println!(
        "  mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (target <= 5 ms)",
        ms(mean),
        ms(times[times.len() / 2]),
        ms(times[times.len() * 99 / 100]),
        ms(times[times.len() - 1])
    );
}
