//! [`ProcessConfiner`]: builds every confined command of one `process` sandbox, with
//! bubblewrap or the in-process mechanism, the sandbox's limits, and the user's
//! toolchains shown read-only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::limits::{LimitEnforcement, SandboxLimits};
use super::toolchains::{self, Toolchains};
use super::{bwrap, inprocess};
use crate::host::CommandConfiner;
use crate::overlay::OverlayMount;
use crate::{Limits, Mechanism, SandboxError};

#[derive(Debug)]
pub(super) enum Confinement {
    Bwrap(&'static bwrap::Bwrap),
    InProcess {
        support: inprocess::Support,
        tmp: inprocess::PrivateTmp,
        rulesets: inprocess::RulesetCache,
    },
}

/// Builds confined commands for the `process` backend (see the module docs). One
/// confiner per sandbox: its cgroup holds every command of the session.
#[derive(Debug)]
pub struct ProcessConfiner {
    pub(super) confinement: Confinement,
    pub(super) limits: SandboxLimits,
    pub(super) toolchains: Toolchains,
    /// The overlay workspace every command joins first (`crate::overlay`).
    pub(super) overlay: Option<Arc<OverlayMount>>,
}

impl ProcessConfiner {
    /// A confiner with these limits: bubblewrap when it works here, else the in-process
    /// mechanism. Fails with [`SandboxError::Unavailable`] (saying why) when neither does.
    /// No part of the home is shown (see [`Self::with_home_toolchains`]).
    pub fn new(limits: Limits) -> Result<Self, SandboxError> {
        match Self::with_mechanism(limits, Mechanism::Bubblewrap) {
            Ok(c) => Ok(c),
            Err(bwrap_err) => Self::with_mechanism(limits, Mechanism::InProcess).map_err(|e| {
                SandboxError::Unavailable(format!("{bwrap_err}; and without it: {e}"))
            }),
        }
    }

    /// A confiner that uses `mechanism` (tests and benchmarks compare both).
    pub fn with_mechanism(limits: Limits, mechanism: Mechanism) -> Result<Self, SandboxError> {
        let confinement = match mechanism {
            Mechanism::Bubblewrap => {
                let bwrap = bwrap::bwrap()?;
                bwrap::filters()?;
                Confinement::Bwrap(bwrap)
            }
            Mechanism::InProcess => {
                let support = inprocess::support().map_err(SandboxError::Unavailable)?;
                let tmp = inprocess::PrivateTmp::create().map_err(|e| {
                    SandboxError::Other(format!(
                        "could not create the sandbox's temp directory: {e}"
                    ))
                })?;
                Confinement::InProcess {
                    support,
                    tmp,
                    rulesets: inprocess::RulesetCache::default(),
                }
            }
        };
        Ok(ProcessConfiner {
            confinement,
            limits: SandboxLimits::create(limits),
            toolchains: Toolchains::default(),
            overlay: None,
        })
    }

    /// Shows the toolchains of this user's home read-only (both mechanisms alike), and
    /// sets the variables that tell them where they live (see `toolchains.rs`).
    pub fn with_home_toolchains(mut self) -> Self {
        self.toolchains = toolchains::of_this_user();
        self
    }

    /// Runs every command in this overlay workspace: the child joins its namespace
    /// (after joining the cgroup, before bubblewrap or the in-process mechanism make
    /// their own), so the merged tree is at the work-tree path they bind.
    pub fn with_overlay(mut self, overlay: Option<Arc<OverlayMount>>) -> Self {
        self.overlay = overlay;
        self
    }

    /// The home directories shown read-only inside (the toolchains).
    pub fn read_only_home_dirs(&self) -> &[PathBuf] {
        &self.toolchains.dirs
    }

    pub fn limits(&self) -> Limits {
        self.limits.limits()
    }

    /// How each limit is enforced here.
    pub fn enforcement(&self) -> LimitEnforcement {
        self.limits.enforcement()
    }

    pub fn mechanism(&self) -> Mechanism {
        match self.confinement {
            Confinement::Bwrap(_) => Mechanism::Bubblewrap,
            Confinement::InProcess { .. } => Mechanism::InProcess,
        }
    }

    /// What confines, e.g. `bubblewrap 0.8.0 (/usr/bin/bwrap)`.
    pub fn describe_mechanism(&self) -> String {
        match &self.confinement {
            Confinement::Bwrap(b) => format!("{} ({})", b.version, b.path.display()),
            Confinement::InProcess { support, .. } => support.describe(),
        }
    }

    /// Memory used now by everything in the sandbox, when a cgroup measures it.
    pub fn memory_used_mb(&self) -> Option<u64> {
        self.limits.memory_used_mb()
    }

    /// Processes alive in the sandbox's cgroup now (`None` without a cgroup).
    pub fn process_count(&self) -> Option<usize> {
        self.limits.process_count()
    }

    /// The sandbox's cgroup directories (empty without a cgroup).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.limits.cgroup_dirs()
    }

    /// What every confined child runs before it executes: the limits, then joining the
    /// overlay workspace's namespace when there is one.
    pub(super) fn child_setup(&self) -> super::ChildSetup {
        let mut setup = self.limits.child_setup();
        if let Some(mount) = &self.overlay {
            let mut enter = mount.enter_setup();
            let mut limits = setup;
            setup = Box::new(move || {
                limits()?;
                enter()
            });
        }
        setup
    }

    /// The host directory whose files the in-process confiner lets a command write: the
    /// overlay's host root, or the work tree itself.
    pub(super) fn writable_files<'a>(&'a self, workdir: &'a Path) -> &'a Path {
        self.overlay.as_ref().map_or(workdir, |m| m.host_root())
    }

    /// The confined `bash -c command` with `workdir` (an absolute path) as the
    /// writable project directory. The caller sets stdio, environment and process group.
    pub fn command(&self, command: &str, workdir: &Path) -> Result<Command, SandboxError> {
        if !workdir.is_absolute() {
            return Err(SandboxError::Other(format!(
                "the work tree '{}' must be an absolute path",
                workdir.display()
            )));
        }
        let setup = self.child_setup();
        let mut cmd = match &self.confinement {
            Confinement::Bwrap(info) => bwrap::command(
                info,
                &self.toolchains.dirs,
                Some(workdir),
                command,
                Some(setup),
            )?,
            Confinement::InProcess {
                support,
                tmp,
                rulesets,
            } => inprocess::command(
                support,
                workdir,
                self.writable_files(workdir),
                tmp.path(),
                &self.toolchains.dirs,
                command,
                rulesets,
                Some(setup),
            )?,
        };
        cmd.envs(self.toolchains.env.iter().map(|(k, v)| (k, v)));
        Ok(cmd)
    }
}

impl CommandConfiner for ProcessConfiner {
    fn build(&self, command: &str, workdir: &Path) -> Result<Command, SandboxError> {
        self.command(command, workdir)
    }

    /// On cgroup v1, forks on the thread already inside the sandbox's cgroup (the child
    /// then skips the join, see `cgroup.rs`).
    fn spawn(&self, mut cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if self.limits.spawner_inside() => self.limits.spawn_inside(move || {
                let _in_runtime = runtime.enter();
                cmd.spawn()
            })?,
            _ => cmd.spawn(),
        }
    }

    fn memory_limit_mb(&self) -> Option<u64> {
        self.limits.memory_limit_mb()
    }

    fn cpus(&self) -> Option<f64> {
        self.limits.cpus()
    }
}
