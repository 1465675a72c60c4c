//! CPU, memory and process-count limits through cgroups, where the machine lets us
//! create one: a child of the cgroup this process is in, on cgroup v2 (when the
//! controllers are delegated to it) or on each cgroup v1 hierarchy that is writable.
//!
//! One cgroup per confiner (that is, per sandbox): the limits hold for everything the
//! agent runs in the session together, as they would for a VM. Commands join it from
//! `pre_exec` by writing `0` to `cgroup.procs`; their children inherit it. Dropping the
//! confiner kills whatever is left inside and removes the directories.
//!
//! Joining costs time on cgroup v1: the kernel's attach waits for an RCU grace period
//! (7–17 ms per command on the CI host), in series before the command starts. So on v1
//! a [`Spawner`] thread of this process joins the cgroup's hierarchies once (v1 moves
//! single threads: `tasks`), right when the cgroup is made, and commands are forked
//! from that thread: a child starts in the cgroups of the thread that forked it, so it
//! runs no instruction outside them and pays no attach. Whether to join is decided in
//! the child itself: it inherits the forking thread's thread-locals, and skips the
//! join only when they say the thread is inside this very cgroup ([`INSIDE`]), so a
//! command forked anywhere else still joins. The thread is not a thread
//! group leader, so the memory cgroup's OOM killer (which scans leaders) never picks
//! this process, but v1 lists our pid in `cgroup.procs`: the count and the kill at
//! close skip it. Its memory is charged to this process (v1 charges the address
//! space's owner); it counts as one task for `pids.max`, which is raised by one to keep
//! the sandbox's allowance. The thread ends before the directories are removed.
//! The first cgroup is made by the backend probe (`limits_here`), which runs beside
//! the session's first snapshot, and is handed to the first sandbox ([`Cgroup::take_warm`]).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How one limit is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    CgroupV2,
    CgroupV1,
    /// A per-process `setrlimit` fallback (RLIMIT_DATA for memory, RLIMIT_NPROC for
    /// processes). Weaker: per process or per user rather than per sandbox.
    Rlimit,
    /// Not enforced on this machine.
    None,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::CgroupV2 => "cgroup v2",
            Enforcement::CgroupV1 => "cgroup v1",
            Enforcement::Rlimit => "setrlimit",
            Enforcement::None => "not enforced",
        }
    }
}

/// Which controllers a cgroup set enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupEnforcement {
    pub memory: Enforcement,
    pub cpu: Enforcement,
    pub pids: Enforcement,
}

impl CgroupEnforcement {
    const NONE: CgroupEnforcement = CgroupEnforcement {
        memory: Enforcement::None,
        cpu: Enforcement::None,
        pids: Enforcement::None,
    };
}

/// Where child cgroups can be created, found once per process.
#[derive(Clone, Debug, Default)]
struct Layout {
    /// cgroup v2 directory of this process whose `cgroup.subtree_control` lists
    /// controllers we can use, with those controllers.
    v2: Option<(PathBuf, Vec<String>)>,
    /// cgroup v1 directories of this process, per controller.
    v1_memory: Option<PathBuf>,
    v1_cpu: Option<PathBuf>,
    v1_pids: Option<PathBuf>,
}

fn layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| detect().unwrap_or_default())
}

struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    options: Vec<String>,
}

fn mounts() -> io::Result<Vec<Mount>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let fstype = right[0];
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        out.push(Mount {
            root: unescape(left[3]),
            point: PathBuf::from(unescape(left[4])),
            fstype: fstype.to_string(),
            options: right[2].split(',').map(str::to_string).collect(),
        });
    }
    Ok(out)
}

/// mountinfo escapes spaces and a few other bytes as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of cgroup `path` (from /proc/self/cgroup) under `mount`.
fn dir_in(mount: &Mount, path: &str) -> Option<PathBuf> {
    let rel = if mount.root == "/" {
        path
    } else {
        path.strip_prefix(mount.root.as_str())?
    };
    let rel = rel.trim_start_matches('/');
    Some(if rel.is_empty() {
        mount.point.clone()
    } else {
        mount.point.join(rel)
    })
}

fn detect() -> io::Result<Layout> {
    let mounts = mounts()?;
    let membership = fs::read_to_string("/proc/self/cgroup")?;
    let mut layout = Layout::default();
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            let Some(mount) = mounts.iter().find(|m| m.fstype == "cgroup2") else {
                continue;
            };
            let Some(dir) = dir_in(mount, path) else {
                continue;
            };
            let enabled =
                fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
            let usable: Vec<String> = enabled
                .split_whitespace()
                .filter(|c| matches!(*c, "memory" | "cpu" | "pids"))
                .map(str::to_string)
                .collect();
            if !usable.is_empty() && is_writable_dir(&dir) {
                layout.v2 = Some((dir, usable));
            }
            continue;
        }
        for controller in controllers.split(',') {
            let slot = match controller {
                "memory" => &mut layout.v1_memory,
                "cpu" => &mut layout.v1_cpu,
                "pids" => &mut layout.v1_pids,
                _ => continue,
            };
            let Some(mount) = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == controller))
            else {
                continue;
            };
            if let Some(dir) = dir_in(mount, path) {
                if is_writable_dir(&dir) {
                    *slot = Some(dir);
                }
            }
        }
    }
    Ok(layout)
}

fn is_writable_dir(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path.
    dir.is_dir() && unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0
}

/// A cgroup (one directory per hierarchy) that sandboxed commands join.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of every directory, ready for `pre_exec` (no allocation there).
    procs: Vec<CString>,
    enforcement: CgroupEnforcement,
    /// This cgroup's id for [`INSIDE`].
    id: u64,
    /// Where each limit is written (to apply new values to a warm cgroup).
    v2: Option<PathBuf>,
    v1_memory: Option<PathBuf>,
    v1_pids: Option<PathBuf>,
    v1_cpu: Option<PathBuf>,
    /// The sandbox's process limit (`pids.max` holds one more while the spawner
    /// thread is inside).
    pids: AtomicU64,
    /// On cgroup v1: the thread commands are forked from (see the module docs).
    spawner: Option<Spawner>,
}

thread_local! {
    /// The id of the cgroup this thread is inside ([`Spawner`]), else 0. Read in the
    /// child between fork and exec: a const thread-local without destructor is a plain
    /// memory read there.
    static INSIDE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Ids of cgroups (for [`INSIDE`]), from 1.
static IDS: AtomicU64 = AtomicU64::new(1);

/// A cgroup's part of a child's setup: its `cgroup.procs` files (prepared before the
/// fork: no allocation there) and its id.
#[derive(Debug, Clone)]
pub struct Joiner {
    procs: Vec<CString>,
    id: u64,
}

/// A job for the spawner thread.
type Job = Box<dyn FnOnce() + Send>;

/// A thread of this process that sits in the cgroup's v1 hierarchies; children forked
/// from it start inside (see the module docs).
#[derive(Debug)]
struct Spawner {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// The attach's outcome, until first read.
    attached_rx: Mutex<Option<mpsc::Receiver<bool>>>,
    attached: OnceLock<bool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Spawner {
    /// Starts the thread, which joins `tasks` of every directory, then runs jobs.
    fn start(dirs: &[PathBuf], id: u64) -> Option<Spawner> {
        let tasks: Vec<PathBuf> = dirs.iter().map(|d| d.join("tasks")).collect();
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sandbox-spawner".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() }.to_string();
                let ok = tasks.iter().all(|t| fs::write(t, &tid).is_ok());
                if ok {
                    INSIDE.with(|c| c.set(id));
                }
                let _ = ready_tx.send(ok);
                for job in jobs_rx {
                    job();
                }
            })
            .ok()?;
        Some(Spawner {
            jobs: Mutex::new(Some(jobs_tx)),
            attached_rx: Mutex::new(Some(ready_rx)),
            attached: OnceLock::new(),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Whether the thread is in every hierarchy (waits for its attach the first time).
    fn attached(&self) -> bool {
        *self.attached.get_or_init(|| {
            let rx = self.attached_rx.lock().ok().and_then(|mut r| r.take());
            rx.and_then(|rx| rx.recv().ok()).unwrap_or(false)
        })
    }

    /// Runs `f` on the thread and returns what it returned.
    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> io::Result<R> {
        let gone = || io::Error::other("the sandbox's spawner thread is gone");
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .lock()
            .map_err(|_| gone())?
            .as_ref()
            .ok_or_else(gone)?
            .send(job)
            .map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())
    }

    /// Ends the thread (it leaves the cgroup as it exits).
    fn stop(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// The cgroup `limits_here` made, kept for the first sandbox (see the module docs).
static WARM: Mutex<Option<Cgroup>> = Mutex::new(None);

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn new_name() -> String {
    format!(
        "safe-coder-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Cgroup {
    /// Creates the cgroup with the given limits, using whatever this machine allows.
    /// `None` when no controller can be used (the caller falls back to rlimits).
    pub fn create(memory_bytes: u64, cpus: f64, pids: u64) -> Option<Cgroup> {
        let layout = layout();
        let name = new_name();
        let mut cg = Cgroup {
            dirs: Vec::new(),
            procs: Vec::new(),
            enforcement: CgroupEnforcement::NONE,
            id: IDS.fetch_add(1, Ordering::Relaxed),
            v2: None,
            v1_memory: None,
            v1_pids: None,
            v1_cpu: None,
            pids: AtomicU64::new(pids),
            spawner: None,
        };
        let quota = cpu_quota(cpus);
        if let Some((parent, controllers)) = &layout.v2 {
            remove_stale(parent);
            let dir = parent.join(&name);
            if fs::create_dir(&dir).is_ok() {
                let has = |c: &str| controllers.iter().any(|x| x == c);
                if has("memory") && write(&dir, "memory.max", &memory_bytes.to_string()) {
                    let _ = write(&dir, "memory.swap.max", "0");
                    cg.enforcement.memory = Enforcement::CgroupV2;
                }
                if has("pids") && write(&dir, "pids.max", &pids.to_string()) {
                    cg.enforcement.pids = Enforcement::CgroupV2;
                }
                if has("cpu") && write(&dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}")) {
                    cg.enforcement.cpu = Enforcement::CgroupV2;
                }
                cg.v2 = Some(dir.clone());
                cg.add_dir(dir);
            }
        }
        if cg.enforcement.memory == Enforcement::None {
            if let Some(parent) = &layout.v1_memory {
                cg.try_v1(parent, &name, |dir| {
                    let ok = write(dir, "memory.limit_in_bytes", &memory_bytes.to_string());
                    if ok {
                        let _ = write(
                            dir,
                            "memory.memsw.limit_in_bytes",
                            &memory_bytes.to_string(),
                        );
                    }
                    ok
                })
                .then(|| {
                    cg.enforcement.memory = Enforcement::CgroupV1;
                    cg.v1_memory = cg.dirs.last().cloned();
                });
            }
        }
        if cg.enforcement.pids == Enforcement::None {
            if let Some(parent) = &layout.v1_pids {
                cg.try_v1(parent, &name, |dir| {
                    write(dir, "pids.max", &pids.to_string())
                })
                .then(|| {
                    cg.enforcement.pids = Enforcement::CgroupV1;
                    cg.v1_pids = cg.dirs.last().cloned();
                });
            }
        }
        if cg.enforcement.cpu == Enforcement::None {
            if let Some(parent) = &layout.v1_cpu {
                cg.try_v1(parent, &name, |dir| {
                    write(dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())
                        && write(dir, "cpu.cfs_quota_us", &quota.to_string())
                })
                .then(|| {
                    cg.enforcement.cpu = Enforcement::CgroupV1;
                    cg.v1_cpu = cg.dirs.last().cloned();
                });
            }
        }
        if cg.enforcement == CgroupEnforcement::NONE {
            drop(cg);
            return None;
        }
        // v1 only: a v2 cgroup holds whole processes, not one thread of ours.
        // `SAFE_CODER_NO_CGROUP_SPAWNER=1`: every command joins from `pre_exec` (the
        // run benchmark's "before" series).
        if cg.v2.is_none() && std::env::var_os("SAFE_CODER_NO_CGROUP_SPAWNER").is_none() {
            let room = cg
                .v1_pids
                .as_ref()
                .is_none_or(|d| write(d, "pids.max", &pids.saturating_add(1).to_string()));
            if room {
                cg.spawner = Spawner::start(&cg.dirs, cg.id);
            }
        }
        Some(cg)
    }

    /// Keeps `cg` for the first sandbox of this process (its spawner thread joins the
    /// cgroup meanwhile). Only one is kept.
    pub fn keep_warm(cg: Cgroup) {
        if let Ok(mut warm) = WARM.lock() {
            if warm.is_none() {
                *warm = Some(cg);
            }
        }
    }

    /// The kept cgroup with these limits written, if there is one and they could be.
    pub fn take_warm(memory_bytes: u64, cpus: f64, pids: u64) -> Option<Cgroup> {
        let cg = WARM.lock().ok()?.take()?;
        cg.apply(memory_bytes, cpus, pids).then_some(cg)
    }

    /// Writes new limits where this cgroup enforces them.
    fn apply(&self, memory_bytes: u64, cpus: f64, pids: u64) -> bool {
        let mem = memory_bytes.to_string();
        let quota = cpu_quota(cpus);
        let mut ok = true;
        if let Some(d) = &self.v2 {
            let e = self.enforcement;
            ok &= e.memory != Enforcement::CgroupV2 || write(d, "memory.max", &mem);
            ok &= e.pids != Enforcement::CgroupV2 || write(d, "pids.max", &pids.to_string());
            ok &= e.cpu != Enforcement::CgroupV2
                || write(d, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"));
        }
        if let Some(d) = &self.v1_memory {
            // memsw must stay >= the memory limit: raise in the order that keeps it so.
            let _ = write(d, "memory.memsw.limit_in_bytes", &mem);
            ok &= write(d, "memory.limit_in_bytes", &mem);
            let _ = write(d, "memory.memsw.limit_in_bytes", &mem);
        }
        self.pids.store(pids, Ordering::Relaxed);
        if let Some(d) = &self.v1_pids {
            let extra = u64::from(self.spawner.is_some());
            ok &= write(d, "pids.max", &pids.saturating_add(extra).to_string());
        }
        if let Some(d) = &self.v1_cpu {
            ok &= write(d, "cpu.cfs_quota_us", &quota.to_string());
        }
        ok
    }

    /// Whether commands forked on the spawner thread ([`Cgroup::spawn_inside`]) start
    /// inside this cgroup (and skip joining it). Waits for the thread's attach the
    /// first time; when it failed, `pids.max` gets its own value back.
    pub fn spawner_inside(&self) -> bool {
        let Some(s) = &self.spawner else {
            return false;
        };
        let inside = s.attached();
        if !inside {
            if let Some(d) = &self.v1_pids {
                let _ = write(
                    d,
                    "pids.max",
                    &self.pids.load(Ordering::Relaxed).to_string(),
                );
            }
        }
        inside
    }

    /// Runs `f` (which forks the command) on the spawner thread; fails (and runs
    /// nothing) unless [`Cgroup::spawner_inside`].
    pub fn spawn_inside<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> io::Result<R> {
        match &self.spawner {
            Some(s) if s.attached() => s.run(f),
            _ => Err(io::Error::other(
                "the sandbox's spawner thread is not in its cgroup",
            )),
        }
    }

    fn try_v1(&mut self, parent: &Path, name: &str, setup: impl Fn(&Path) -> bool) -> bool {
        remove_stale(parent);
        let dir = parent.join(name);
        if fs::create_dir(&dir).is_err() {
            return false;
        }
        if setup(&dir) {
            self.add_dir(dir);
            true
        } else {
            let _ = fs::remove_dir(&dir);
            false
        }
    }

    fn add_dir(&mut self, dir: PathBuf) {
        if let Ok(c) = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()) {
            self.procs.push(c);
        }
        self.dirs.push(dir);
    }

    pub fn enforcement(&self) -> CgroupEnforcement {
        self.enforcement
    }

    /// The directories of this cgroup, one per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.clone()
    }

    /// What the child needs to join, for `pre_exec` ([`Cgroup::join_from_child`]).
    pub fn joiner(&self) -> Joiner {
        Joiner {
            procs: self.procs.clone(),
            id: self.id,
        }
    }

    /// The number of processes currently in the cgroup (for tests and status).
    pub fn process_count(&self) -> usize {
        self.dirs
            .first()
            .and_then(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .map(|s| {
                let me = std::process::id().to_string();
                s.lines()
                    .filter(|l| !l.trim().is_empty() && l.trim() != me)
                    .count()
            })
            .unwrap_or(0)
    }

    /// Memory the sandbox uses now, in bytes, when the memory controller is ours.
    pub fn memory_usage(&self) -> Option<u64> {
        let file = match self.enforcement.memory {
            Enforcement::CgroupV2 => "memory.current",
            Enforcement::CgroupV1 => "memory.usage_in_bytes",
            _ => return None,
        };
        self.dirs.iter().find_map(|d| {
            fs::read_to_string(d.join(file))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        })
    }

    /// Joins the calling process to the cgroup, unless it was forked by the spawner
    /// thread inside it (then it already is). Runs between fork and exec: only
    /// async-signal-safe calls (open, write, close) and a thread-local read.
    pub fn join_from_child(joiner: &Joiner) -> io::Result<()> {
        if INSIDE.with(|c| c.get()) == joiner.id {
            return Ok(());
        }
        for file in &joiner.procs {
            // SAFETY: `file` is a valid C string; the buffer outlives the call.
            unsafe {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
        }
        Ok(())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The spawner thread leaves the cgroup as it ends (and must, for rmdir).
        if let Some(s) = &self.spawner {
            s.stop();
        }
        for dir in &self.dirs {
            kill_and_remove(dir);
        }
    }
}

/// Kills every process in the cgroup at `dir` and removes it (waiting up to two
/// seconds for the processes to go).
fn kill_and_remove(dir: &Path) {
    let _ = write(dir, "cgroup.kill", "1");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            let me = std::process::id() as i32;
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if pid == me {
                    // Never this process (its spawner thread may be inside).
                    continue;
                }
                // SAFETY: plain kill(2) of a process inside a cgroup of ours.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if fs::remove_dir(dir).is_ok() || !dir.exists() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

const CPU_PERIOD_US: u64 = 100_000;

fn cpu_quota(cpus: f64) -> u64 {
    let cpus = if cpus.is_finite() && cpus > 0.0 {
        cpus
    } else {
        1.0
    };
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1_000)
}

fn write(dir: &Path, file: &str, value: &str) -> bool {
    fs::write(dir.join(file), value).is_ok()
}

/// Reaps the `safe-coder-PID-N` cgroups of a Safe Coder that no longer runs (a crash or
/// SIGKILL skips `Drop`): whatever still runs in them is killed, then they are removed.
/// Runs whenever a sandbox's cgroup is created, so the next start cleans up.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("safe-coder-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !owner_alive(pid) {
            kill_and_remove(&entry.path());
        }
    }
}

/// Whether the process that made a cgroup still runs. A pid reused by another program
/// counts as alive (its cgroup is then left alone): only a dead owner is reaped.
fn owner_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    /// A cgroup left by a Safe Coder that was SIGKILLed, with a process still in it, is
    /// reaped by the next sandbox: the process is killed and the directory removed.
    #[test]
    fn the_next_start_reaps_what_a_crash_left() {
        let layout = layout();
        let parent = layout
            .v2
            .as_ref()
            .map(|(dir, _)| dir.clone())
            .or_else(|| layout.v1_pids.clone())
            .or_else(|| layout.v1_memory.clone());
        let Some(parent) = parent else {
            if std::env::var_os("SAFE_CODER_REQUIRE_SANDBOX").is_some() {
                panic!("no writable cgroup here, and SAFE_CODER_REQUIRE_SANDBOX is set");
            }
            eprintln!("skipped: no writable cgroup on this machine");
            return;
        };
        // A pid that no longer runs: a finished child's.
        let mut gone = std::process::Command::new("true").spawn().expect("spawn");
        let dead = gone.id();
        gone.wait().expect("wait");
        let stale = parent.join(format!("safe-coder-{dead}-0"));
        fs::create_dir(&stale).expect("stale cgroup");
        let mut leftover = std::process::Command::new("sleep")
            .arg("8675309")
            .spawn()
            .expect("spawn sleep");
        fs::write(stale.join("cgroup.procs"), leftover.id().to_string()).expect("join");
        let fresh = Cgroup::create(64 * 1024 * 1024, 1.0, 16);
        let status = leftover.wait().expect("wait for the leftover");
        assert!(!status.success(), "the leftover was killed: {status}");
        assert!(!stale.exists(), "the stale cgroup was removed");
        drop(fresh);
    }

    /// On cgroup v1 a child forked by the spawner thread is in every hierarchy of the
    /// cgroup without joining (it never ran outside); this process (listed by v1 for
    /// its thread) is not counted, and `pids.max` leaves the sandbox its whole
    /// allowance.
    #[test]
    fn children_of_the_spawner_start_inside() {
        let Some(cg) = Cgroup::create(64 * 1024 * 1024, 1.0, 16) else {
            if std::env::var_os("SAFE_CODER_REQUIRE_SANDBOX").is_some() {
                panic!("no writable cgroup here, and SAFE_CODER_REQUIRE_SANDBOX is set");
            }
            eprintln!("skipped: no writable cgroup on this machine");
            return;
        };
        if cg.v2.is_some() {
            assert!(!cg.spawner_inside(), "no spawner thread on cgroup v2");
            eprintln!("skipped: cgroup v2 (commands join it from pre_exec)");
            return;
        }
        assert!(
            cg.spawner_inside(),
            "the spawner thread joined {:?}",
            cg.dirs
        );
        let mut child = cg
            .spawn_inside(|| std::process::Command::new("sleep").arg("8675309").spawn())
            .expect("spawner")
            .expect("spawn sleep");
        let pid = child.id().to_string();
        for dir in &cg.dirs {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).expect("procs");
            let listed: Vec<&str> = procs.lines().map(str::trim).collect();
            assert!(
                listed.contains(&pid.as_str()),
                "{pid} in {dir:?}: {listed:?}"
            );
        }
        assert_eq!(cg.process_count(), 1);
        if let Some(d) = &cg.v1_pids {
            let max = fs::read_to_string(d.join("pids.max")).expect("pids.max");
            assert_eq!(
                max.trim(),
                "17",
                "16 for the sandbox, 1 for the spawner thread"
            );
        }
        let _ = child.kill();
        let _ = child.wait();
        let dirs = cg.dirs();
        drop(cg);
        for dir in dirs {
            assert!(
                !dir.exists(),
                "{dir:?} removed with the spawner thread gone"
            );
        }
    }

    #[test]
    fn quota_is_sane() {
        assert_eq!(cpu_quota(2.0), 200_000);
        assert_eq!(cpu_quota(0.0), 100_000);
        assert_eq!(cpu_quota(0.001), 1_000);
    }
}
