//! Whether the `process` backend works here, and with which mechanism (for `sandbox
//! doctor` and `auto`): bubblewrap when its trial sandbox runs, else the in-process
//! mechanism when Landlock is there. When bubblewrap fails because the host restricts
//! user namespaces (Ubuntu's AppArmor switch), the reason says so with the fix.

use std::sync::OnceLock;

use super::limits::limits_here;
use super::{bwrap, inprocess};
use crate::select::BackendProbe;
use crate::{BackendKind, Mechanism};

/// The mechanism a new `process` sandbox gets here, or why none works. Cached: the
/// first call runs bwrap (and maybe the in-process trial) once; later calls are free.
pub(crate) fn best_mechanism() -> Result<(Mechanism, String), String> {
    static BEST: OnceLock<Result<(Mechanism, String), String>> = OnceLock::new();
    BEST.get_or_init(|| {
        let bwrap_result = bwrap::bwrap().map_err(|e| e.to_string()).and_then(|info| {
            bwrap::filters().map_err(|e| e.to_string())?;
            Ok(info)
        });
        match bwrap_result {
            Ok(info) => Ok((
                Mechanism::Bubblewrap,
                format!(
                    "{} ({}) runs a namespaced sandbox with seccomp",
                    info.version,
                    info.path.display()
                ),
            )),
            Err(bwrap_err) => match inprocess::support() {
                Ok(support) => {
                    let mut why =
                        format!("{bwrap_err}, so the weaker {} is used", support.describe());
                    // Without namespaces there is no PID namespace either: say why.
                    if !support.namespaces && !bwrap_err.contains("AppArmor") {
                        if let Some(r) = super::userns::restriction(std::path::Path::new(
                            super::userns::PROC_SYS,
                        )) {
                            why.push_str("; ");
                            why.push_str(r.explain());
                        }
                    }
                    Ok((Mechanism::InProcess, why))
                }
                Err(e) => Err(format!("{bwrap_err}; and without it: {e}")),
            },
        }
    })
    .clone()
}

/// `data_dir` keeps the trials' verdict across processes (`probe_cache.rs`).
pub(crate) fn probe(data_dir: &std::path::Path) -> BackendProbe {
    super::probe_cache::set_data_dir(data_dir);
    let (available, reason) = match best_mechanism() {
        Ok((mechanism, why)) => (
            true,
            format!(
                "confiner: {}; {why}; {}",
                mechanism.as_str(),
                limits_here().describe()
            ),
        ),
        Err(why) => (false, why),
    };
    BackendProbe {
        kind: BackendKind::Process,
        available,
        reason,
    }
}
