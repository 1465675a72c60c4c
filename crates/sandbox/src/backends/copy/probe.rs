//! `copy` always works: it needs nothing but bash and room for the sandbox copy.

use crate::select::BackendProbe;
use crate::BackendKind;

pub(crate) fn probe() -> BackendProbe {
    BackendProbe {
        kind: BackendKind::Copy,
        available: true,
        reason: format!(
            "a sandbox copy without OS isolation: commands run on the host with the user's rights, {}",
            super::limits::describe()
        ),
    }
}
