//! `direct` always works: it needs nothing but bash. `auto` never chooses it.

use crate::select::BackendProbe;
use crate::BackendKind;

pub(crate) fn probe() -> BackendProbe {
    BackendProbe {
        kind: BackendKind::Direct,
        available: true,
        reason: format!(
            "no isolation: the agent works in the project itself, {} (auto never chooses it)",
            super::limits::describe()
        ),
    }
}
