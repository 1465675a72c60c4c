//! The only `waitpid` in the agent. As PID 1 (or a child subreaper in tests) the agent
//! inherits every orphan, so one thread reaps every child (`waitpid(-1)`) and hands the
//! status of the ones it started to whoever registered them; the rest are zombies to
//! clear. Starting a child happens under the same lock, so its exit can never be reaped
//! before it is registered.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

type Callback = Box<dyn FnOnce(i32) + Send>;

pub struct Reaper {
    waiting: Mutex<State>,
    children: Condvar,
}

#[derive(Default)]
struct State {
    callbacks: HashMap<i32, Callback>,
    /// Children started so far: the reaper sleeps only if none was started since its
    /// last `waitpid` (else a start between its `ECHILD` and its sleep would be missed
    /// and the exit reported up to a second late).
    started: u64,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

/// The agent's reaper; the first call starts its thread.
pub fn global() -> &'static Reaper {
    let mut started = false;
    let r = REAPER.get_or_init(|| {
        started = true;
        Reaper {
            waiting: Mutex::new(State::default()),
            children: Condvar::new(),
        }
    });
    if started {
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(|| global().run())
            .map(drop)
            .unwrap_or_else(|e| eprintln!("safe-coder-guest-agent: cannot start the reaper: {e}"));
    }
    r
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, State> {
        match self.waiting.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Runs `start` (which forks and returns the child's pid) under the lock, and
    /// registers `on_exit` for that pid (called with the raw wait status).
    pub fn start<E>(
        &self,
        start: impl FnOnce() -> Result<i32, E>,
        on_exit: impl FnOnce(i32) + Send + 'static,
    ) -> Result<i32, E> {
        let mut waiting = self.lock();
        let pid = start()?;
        waiting.callbacks.insert(pid, Box::new(on_exit));
        waiting.started += 1;
        drop(waiting);
        self.children.notify_all();
        Ok(pid)
    }

    fn run(&self) {
        loop {
            let seen = self.lock().started;
            let mut status = 0;
            // SAFETY: waitpid with a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid > 0 {
                let callback = self.lock().callbacks.remove(&pid);
                if let Some(cb) = callback {
                    cb(status);
                }
                continue;
            }
            let errno = std::io::Error::last_os_error().raw_os_error();
            if errno == Some(libc::EINTR) {
                continue;
            }
            // ECHILD: no children now. Sleep until one is started; orphans adopted
            // meanwhile are cleared at the next wake-up.
            let guard = self.lock();
            if guard.started == seen {
                let _ = self.children.wait_timeout(guard, Duration::from_secs(1));
            }
        }
    }
}
