//! The `copy` backend (the documents' "demo mode"): the agent works on a sandbox copy of
//! the project, but without OS isolation. Its commands run on the host with the user's
//! rights, in the copy, with the allow-listed environment; the project changes only
//! through sync.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use crate::host::HostSandbox;
use crate::{
    BackendKind, CancellationToken, DirEntry, ExecOutput, ExecRequest, FileStat, Sandbox,
    SandboxError, SandboxSpec, SandboxStatus,
};

mod limits;
mod probe;
mod status;

pub(crate) use probe::probe;

/// A `copy` sandbox over `spec.workdir`.
pub(crate) struct CopySandbox {
    host: HostSandbox,
}

pub(crate) fn open(spec: SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError> {
    let host = HostSandbox::new(
        BackendKind::Copy,
        spec.workdir,
        None,
        spec.env_passthrough,
        spec.overlay,
    )?;
    Ok(Arc::new(CopySandbox { host }))
}

#[async_trait]
impl Sandbox for CopySandbox {
    fn backend(&self) -> BackendKind {
        self.host.backend()
    }

    fn agent_root(&self) -> String {
        self.host.agent_root()
    }

    fn host_workdir(&self) -> Option<&Path> {
        self.host.host_workdir()
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        self.host.read_file(path).await
    }

    async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), SandboxError> {
        self.host.write_file(path, data).await
    }

    async fn stat(&self, path: &str) -> Result<Option<FileStat>, SandboxError> {
        self.host.stat(path).await
    }

    async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, SandboxError> {
        self.host.list_dir(path).await
    }

    async fn exec(
        &self,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecOutput, SandboxError> {
        self.host.exec(request, cancel).await
    }

    async fn status(&self) -> SandboxStatus {
        status::current(&self.host).await
    }

    async fn stop(&self) -> Result<(), SandboxError> {
        self.host.stop().await
    }

    async fn spawn_interactive(
        &self,
        request: crate::InteractiveRequest,
    ) -> Result<crate::InteractiveChild, SandboxError> {
        crate::interactive::spawn_unconfined(&self.host, &request)
    }
}
