#![allow(clippy::unwrap_used)]
//! The stat cache of a project without git: the second session's first snapshot takes
//! every unchanged file's blob id from the cache (the file is neither read nor hashed:
//! `SnapshotStats::hashed` counts the files that were), its objects are all present,
//! and its tree is the one a fresh hash of the project gives.

mod common;

use std::fs::{self, File, FileTimes};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;
use safe_coder_history::{SessionRepo, SnapshotStats};
use safe_coder_sandbox::overlay::Layers;

/// A project without git: nested files, an executable, two files with equal bytes, a
/// symlink and an empty file; every file modified `age` ago (so none is racy).
fn project(root: &Path) {
    write(root, "README.md", "# demo\n");
    write(root, "src/main.rs", "fn main() { println!(\"hi\"); }\n");
    write(root, "src/lib.rs", "pub fn f() -> u32 { 7 }\n");
    write(root, "src/deep/a/b/c.txt", "deep\n");
    write(root, "dup1.txt", "same bytes\n");
    write(root, "dup2.txt", "same bytes\n");
    write(root, "empty", "");
    write(root, "run.sh", "#!/bin/sh\necho run\n");
    set_exec(root, "run.sh", true);
    for i in 0..80 {
        write(root, &format!("many/f{i}.txt"), &format!("file {i}\n"));
    }
    std::os::unix::fs::symlink("README.md", root.join("link")).unwrap();
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            age(&e.path().to_path_buf(), 200);
        }
    }
}

/// Sets the file's modification time to `secs` seconds ago.
fn age(path: &PathBuf, secs: u64) {
    let t = SystemTime::now() - Duration::from_secs(secs);
    let f = File::options().write(true).open(path).unwrap();
    f.set_times(FileTimes::new().set_modified(t)).unwrap();
}

/// A copy session `n` of `tmp/project` with (or without) the stat cache in `tmp/data`.
fn start(tmp: &Path, n: &str, cached: bool) -> SessionRepo {
    let root = tmp.join("data/statcache");
    SessionRepo::create_sandbox_copy_cached(
        &tmp.join("project"),
        &tmp.join(format!("{n}/work")),
        Some(&tmp.join(format!("{n}/history.git"))),
        &[],
        true,
        cached.then_some(root.as_path()),
    )
    .unwrap()
}

fn stats(repo: &SessionRepo) -> SnapshotStats {
    repo.start_stats().unwrap()
}

fn tree(repo: &SessionRepo) -> String {
    git(
        repo.git_dir(),
        repo.work_tree(),
        &["rev-parse", "HEAD^{tree}"],
    )
    .trim()
    .to_string()
}

/// The repository is whole: every object reachable from HEAD is present and sound.
fn assert_complete(repo: &SessionRepo) {
    git(
        repo.git_dir(),
        repo.work_tree(),
        &["fsck", "--full", "--no-dangling", "--strict"],
    );
    let status = git(repo.git_dir(), repo.work_tree(), &["status", "--porcelain"]);
    assert_eq!(status, "", "the copy differs from its snapshot");
}

/// The single cache file under `tmp/data/statcache/<key>/cache`.
fn cache_file(tmp: &Path) -> PathBuf {
    let mut found = Vec::new();
    for e in fs::read_dir(tmp.join("data/statcache")).unwrap() {
        let p = e.unwrap().path().join("cache");
        if p.is_file() {
            found.push(p);
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found.pop().unwrap()
}

#[test]
fn second_session_reads_no_unchanged_file() {
    if !git_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    project(&tmp.path().join("project"));
    let first = start(tmp.path(), "s1", true);
    let s1 = stats(&first);
    assert_eq!((s1.files, s1.cached, s1.hashed), (88, 0, 88));
    let cache = cache_file(tmp.path());
    assert_eq!(
        fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let before = (
        fs::read(&cache).unwrap(),
        fs::metadata(&cache).unwrap().modified().unwrap(),
    );
    let second = start(tmp.path(), "s2", true);
    let s2 = stats(&second);
    assert_eq!((s2.files, s2.cached, s2.hashed), (88, 88, 0));
    // Nothing new: the cache is left as it was (no rewrite, no fsync at start).
    let after = (
        fs::read(&cache).unwrap(),
        fs::metadata(&cache).unwrap().modified().unwrap(),
    );
    assert!(before == after, "the cache was rewritten");
    let fresh = start(tmp.path(), "fresh", false);
    assert_eq!(stats(&fresh).hashed, 88);
    assert_eq!(tree(&second), tree(&fresh));
    assert_eq!(tree(&second), tree(&first));
    assert_complete(&second);
    assert_eq!(read(second.work_tree(), "dup2.txt"), "same bytes\n");
    assert!(is_exec(second.work_tree(), "run.sh"));

    // The first session's history can go: the second owns its objects.
    fs::remove_dir_all(tmp.path().join("s1")).unwrap();
    let third = start(tmp.path(), "s3", true);
    assert_eq!(stats(&third).hashed, 0);
    fs::remove_dir_all(tmp.path().join("s2")).unwrap();
    assert_complete(&third);
}

#[test]
fn changed_file_of_same_size_is_hashed_again() {
    if !git_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path().join("project");
    project(&proj);
    start(tmp.path(), "s1", true);
    // Same size, new bytes, an older-than-the-cache but different mtime.
    write(&proj, "src/lib.rs", "pub fn f() -> u32 { 8 }\n");
    age(&proj.join("src/lib.rs"), 100);
    write(&proj, "new.txt", "new\n");
    age(&proj.join("new.txt"), 100);
    fs::remove_file(proj.join("many/f3.txt")).unwrap();

    let second = start(tmp.path(), "s2", true);
    let s = stats(&second);
    assert_eq!((s.files, s.cached, s.hashed), (88, 86, 2));
    let fresh = start(tmp.path(), "fresh", false);
    assert_eq!(tree(&second), tree(&fresh));
    assert_complete(&second);
    let blob = git(
        second.git_dir(),
        second.work_tree(),
        &["show", "HEAD:src/lib.rs"],
    );
    assert_eq!(blob, "pub fn f() -> u32 { 8 }\n");

    // The rewritten cache knows the new bytes: nothing is hashed next time.
    let third = start(tmp.path(), "s3", true);
    assert_eq!(stats(&third).hashed, 0);
    assert_complete(&third);
}

#[test]
fn corrupt_or_foreign_cache_is_ignored() {
    if !git_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    project(&tmp.path().join("project"));
    let first = start(tmp.path(), "s1", true);
    let cache = cache_file(tmp.path());
    let good = fs::read(&cache).unwrap();

    // One flipped bit in the middle (a path or a blob id): the checksum fails.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    fs::write(&cache, &bad).unwrap();
    let second = start(tmp.path(), "s2", true);
    let s = stats(&second);
    assert_eq!((s.cached, s.hashed), (0, 88));
    assert_eq!(tree(&second), tree(&first));
    assert_complete(&second);

    // Something else entirely, and a truncated file.
    for junk in [
        b"not a cache at all\n".to_vec(),
        good[..good.len() - 7].to_vec(),
    ] {
        fs::write(&cache, &junk).unwrap();
        let name = format!("junk{}", junk.len());
        let repo = start(tmp.path(), &name, true);
        assert_eq!(stats(&repo).hashed, 88);
        assert_eq!(tree(&repo), tree(&first));
    }

    // Each of those sessions wrote a sound cache again.
    let last = start(tmp.path(), "s3", true);
    assert_eq!(stats(&last).hashed, 0);
    assert_complete(&last);

    // A cache naming a pack the store no longer has is not trusted either.
    for e in fs::read_dir(cache.parent().unwrap().join("pack")).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    let after = start(tmp.path(), "s4", true);
    assert_eq!(stats(&after).hashed, 88);
    assert_complete(&after);
}

#[test]
fn racy_entry_is_hashed_again() {
    if !git_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path().join("project");
    project(&proj);
    age(&proj.join("src/main.rs"), 100);
    start(tmp.path(), "s1", true);
    // The cache claims to be written in the very instant `src/main.rs` was modified:
    // a change within that instant would not show in its stat data.
    let cache = cache_file(tmp.path());
    let mtime = fs::metadata(proj.join("src/main.rs"))
        .unwrap()
        .modified()
        .unwrap();
    File::options()
        .write(true)
        .open(&cache)
        .unwrap()
        .set_times(FileTimes::new().set_modified(mtime))
        .unwrap();
    let second = start(tmp.path(), "s2", true);
    let s = stats(&second);
    assert_eq!((s.cached, s.hashed), (87, 1));
    assert_complete(&second);
}

#[test]
fn overlay_session_reuses_the_cache() {
    if !git_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    project(&tmp.path().join("project"));
    let root = tmp.path().join("data/statcache");
    let mut trees = Vec::new();
    for n in ["o1", "o2"] {
        let layers = Layers {
            lower: tmp.path().join("project"),
            upper: tmp.path().join(format!("{n}/upper")),
            work: tmp.path().join(format!("{n}/ovl-work")),
            merged: tmp.path().join(format!("{n}/work")),
        };
        let git_dir = tmp.path().join(format!("{n}/history.git"));
        let repo = match SessionRepo::create_overlay_cached(&layers, &git_dir, &[], Some(&root)) {
            Ok(r) => r,
            Err(e) => {
                let required = std::env::var_os("SAFE_CODER_REQUIRE_SANDBOX").is_some();
                assert!(!required, "the overlay workspace must work here: {e}");
                eprintln!("skipped: {e}");
                return;
            }
        };
        let s = stats(&repo);
        let want = if n == "o1" { (0, 88) } else { (88, 0) };
        assert_eq!((s.cached, s.hashed), want);
        git(
            repo.git_dir(),
            Path::new("/"),
            &["fsck", "--full", "--no-dangling"],
        );
        trees.push(git(
            repo.git_dir(),
            Path::new("/"),
            &["rev-parse", "HEAD^{tree}"],
        ));
    }
    assert_eq!(trees[0], trees[1]);
}

/// SHA-1 of `data` (with the system's `sha1sum`), as bytes.
fn sha1(data: &[u8]) -> Vec<u8> {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    fs::write(tmp.path(), data).unwrap();
    let out = std::process::Command::new("sha1sum")
        .arg(tmp.path())
        .output()
        .unwrap();
    let hex = String::from_utf8(out.stdout).unwrap();
    (0..20)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn entry_naming_a_blob_the_store_lacks_is_not_used() {
    if !git_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    project(&tmp.path().join("project"));
    let first = start(tmp.path(), "s1", true);
    let cache = cache_file(tmp.path());
    let raw = fs::read(&cache).unwrap();
    let mut body = raw[..raw.len() - 20].to_vec();
    // A well-formed, correctly summed cache whose README.md entry names another blob.
    let key = b"\tREADME.md\0";
    let at = body.windows(key.len()).position(|w| w == key).unwrap();
    body[at - 40..at].copy_from_slice(b"0123456789abcdef0123456789abcdef01234567");
    let sum = sha1(&body);
    body.extend_from_slice(&sum);
    fs::write(&cache, &body).unwrap();
    let second = start(tmp.path(), "s2", true);
    let s = stats(&second);
    assert_eq!((s.cached, s.hashed), (87, 1));
    assert_eq!(tree(&second), tree(&first));
    assert_complete(&second);
}

#[test]
fn direct_session_reuses_the_cache() {
    if !git_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path().join("project");
    project(&proj);
    let root = tmp.path().join("data/statcache");
    let shadow = |n: &str| {
        SessionRepo::create_shadow_cached(&proj, &tmp.path().join(n), &[], true, Some(&root))
            .unwrap()
    };
    let first = shadow("d1.git");
    assert_eq!(stats(&first).hashed, 88);
    write(&proj, "README.md", "# DEMO\n");
    age(&proj.join("README.md"), 100);
    let second = shadow("d2.git");
    let s = stats(&second);
    assert_eq!((s.cached, s.hashed), (87, 1));
    git(
        second.git_dir(),
        &proj,
        &["fsck", "--full", "--no-dangling"],
    );
    let status = git(second.git_dir(), &proj, &["status", "--porcelain"]);
    assert_eq!(status, "");
    let fresh =
        SessionRepo::create_shadow_cached(&proj, &tmp.path().join("f.git"), &[], true, None)
            .unwrap();
    assert_eq!(tree(&second), tree(&fresh));
}

#[test]
fn git_project_borrows_and_keeps_no_stat_cache() {
    if !git_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path().join("project");
    project(&proj);
    for args in [
        &["init", "-q"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "x",
        ],
    ] {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(&proj)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    for n in ["s1", "s2"] {
        let s = stats(&start(tmp.path(), n, true));
        assert_eq!((s.borrowed, s.cached, s.hashed), (88, 0, 0));
    }
    assert!(!tmp.path().join("data/statcache").exists());
}

/// The store directory of `project` under `root` (found by the path it records).
fn store_of(root: &Path, project: &Path) -> PathBuf {
    let want = fs::canonicalize(project).unwrap();
    for e in fs::read_dir(root).unwrap() {
        let dir = e.unwrap().path();
        if fs::read(dir.join("project")).ok().as_deref()
            == Some(want.as_os_str().as_encoded_bytes())
        {
            return dir;
        }
    }
    panic!("no store records {}", want.display());
}

/// A cached copy session of `tmp/<name>` in `tmp/<name>-s<n>`.
fn start_of(tmp: &Path, name: &str, n: usize) -> SessionRepo {
    let root = tmp.join("data/statcache");
    SessionRepo::create_sandbox_copy_cached(
        &tmp.join(name),
        &tmp.join(format!("{name}-s{n}/work")),
        Some(&tmp.join(format!("{name}-s{n}/history.git"))),
        &[],
        true,
        Some(&root),
    )
    .unwrap()
}

/// Sets every file's modification time in `dir` to `secs` seconds ago.
fn age_all(dir: &Path, secs: u64) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            age(&p, secs);
        }
    }
}

#[test]
fn prune_removes_the_stores_of_gone_projects_and_idle_ones() {
    if !git_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data/statcache");
    for name in ["live", "gone", "idle", "busy"] {
        project(&tmp.path().join(name));
        start_of(tmp.path(), name, 1);
    }
    let (live, gone, idle, busy) = (
        store_of(&root, &tmp.path().join("live")),
        store_of(&root, &tmp.path().join("gone")),
        store_of(&root, &tmp.path().join("idle")),
        store_of(&root, &tmp.path().join("busy")),
    );
    fs::remove_dir_all(tmp.path().join("gone")).unwrap();
    age_all(&idle, 40 * 24 * 3600);
    // A session holds the store of a project that is gone too: it is left alone.
    fs::remove_dir_all(tmp.path().join("busy")).unwrap();
    let held = File::open(busy.join("lock")).unwrap();
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor the test owns.
        assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_SH) }, 0);
    }

    let report = safe_coder_history::prune_stat_cache(
        &root,
        safe_coder_history::STORE_MAX_IDLE,
        SystemTime::now(),
    );
    assert_eq!(
        (report.project_gone, report.idle, report.kept),
        (1, 1, 2),
        "{report:?}"
    );
    assert!(live.join("cache").is_file());
    assert!(!gone.exists() && !idle.exists());
    assert!(busy.join("cache").is_file());
    drop(held);

    // The live project's next session still reads nothing.
    let again = start_of(tmp.path(), "live", 2);
    assert_eq!(stats(&again).hashed, 0);
    // The idle project starts over: every file hashed once, a new store.
    let fresh = start_of(tmp.path(), "idle", 2);
    assert_eq!(stats(&fresh).hashed, 88);
    assert!(store_of(&root, &tmp.path().join("idle"))
        .join("cache")
        .is_file());
}

#[test]
fn a_session_start_prunes_in_the_background_once_a_day() {
    if !git_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data/statcache");
    for name in ["a", "b"] {
        project(&tmp.path().join(name));
        start_of(tmp.path(), name, 1);
    }
    let b = store_of(&root, &tmp.path().join("b"));
    fs::remove_dir_all(tmp.path().join("b")).unwrap();
    // The first starts stamped a round today: nothing is pruned yet.
    assert!(root.join(".pruned").is_file());
    start_of(tmp.path(), "a", 2);
    assert!(b.exists(), "pruned twice in a day");
    // A day later the next start prunes (on a thread of its own).
    age(&root.join(".pruned"), 25 * 3600);
    start_of(tmp.path(), "a", 3);
    let mut waited = 0;
    while b.exists() && waited < 600 {
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
    }
    assert!(!b.exists(), "the store of a gone project was kept");
    assert!(store_of(&root, &tmp.path().join("a"))
        .join("cache")
        .is_file());
}

#[test]
fn concurrent_starts_of_one_project_leave_a_sound_cache() {
    if !git_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    project(&dir);
    // Changes keep each file's size (100 + n bytes: no other file has it) and replace
    // it whole by a rename, so a session reading it meanwhile reads one version or the
    // other, never a torn one.
    let change = |n: usize, round: usize| {
        let tmp = tmp.path().join(format!("f{n}.new"));
        let text = format!("round {round} session {n}");
        fs::write(&tmp, format!("{text:<width$}\n", width = 99 + n)).unwrap();
        age(&tmp, 100);
        fs::rename(&tmp, dir.join(format!("many/f{n}.txt"))).unwrap();
    };
    for n in 0..6 {
        change(n, 9);
    }
    for round in 0..6 {
        // Six sessions start at once, each just after changing a file of its own: each
        // sees another project, hashes what changed, and writes the cache with a pack
        // the others lack (while they prune what their cache does not name).
        std::thread::scope(|s| {
            for n in 0..6 {
                let (tmp, change) = (tmp.path(), &change);
                s.spawn(move || {
                    change(n, round);
                    // In place (`direct`): a file the others replace meanwhile is
                    // read as it is then, where a copy would stop at the change.
                    SessionRepo::create_shadow_cached(
                        &tmp.join("p"),
                        &tmp.join(format!("d{round}-{n}.git")),
                        &[],
                        true,
                        Some(&tmp.join("data/statcache")),
                    )
                    .unwrap()
                });
            }
        });
        // Whoever wrote last, the cache names only packs the store holds: the next
        // session hashes at most the six files changed in this round (a cache naming
        // a removed pack would not be used at all: 88 hashed), and its history is whole.
        let next = start_of(tmp.path(), "p", round * 10 + 9);
        let st = stats(&next);
        assert!(st.files == 88 && st.hashed <= 6, "round {round}: {st:?}");
        assert_complete(&next);
    }
}
