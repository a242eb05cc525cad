//! How a check stops: a [`Finding`] of tampering, or a [`Halt`] that also carries I/O and
//! usage errors.

use crate::error::LedgerError;
use crate::tamper::TamperKind;
use crate::verify::report::Location;

/// A tampering verdict on one place in the ledger.
pub(super) struct Finding {
    pub(super) location: Location,
    pub(super) kind: TamperKind,
    pub(super) why: String,
}

/// Why a chain walk stopped: tampering (a verdict) or an error (no verdict).
pub(super) enum Halt {
    Tampered(Finding),
    Error(LedgerError),
}

impl From<LedgerError> for Halt {
    fn from(e: LedgerError) -> Self {
        Halt::Error(e)
    }
}

impl From<Finding> for Halt {
    fn from(f: Finding) -> Self {
        Halt::Tampered(f)
    }
}

pub(super) fn bad(location: &Location, kind: TamperKind, why: impl Into<String>) -> Halt {
    Halt::Tampered(Finding {
        location: location.clone(),
        kind,
        why: why.into(),
    })
}
