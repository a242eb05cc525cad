//! Why a ledger is not intact: the stable codes shared by line parsing (`format`) and the
//! chain checks (`verify`).

use std::fmt;

/// Why a ledger is not intact. [`TamperKind::code`] gives a stable snake_case code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TamperKind {
    /// A line is not a JSON record ending with its `hash`.
    Parse,
    /// A field outside the allowlist, a missing field, an unknown kind or a malformed `ts`.
    Schema,
    /// The bytes are not the canonical encoding of the record.
    NonCanonical,
    /// A record's hash does not match its content: it was edited.
    HashMismatch,
    /// `seq` is not contiguous: records were deleted, duplicated or reordered.
    Sequence,
    /// `prev` is not the hash of the record before.
    BrokenLink,
    /// A checkpoint signature does not verify under the public key.
    BadSignature,
    /// A checkpoint's fields disagree with its place in the chain.
    Checkpoint,
    /// `checkpoints.log` disagrees with the checkpoints in the chain.
    CheckpointLog,
    /// The chain is shorter than a checkpoint in `checkpoints.log` says.
    Truncated,
    /// The last line is torn, but a checkpoint already covered it: not a crash.
    TornTailCovered,
    /// The chain does not contain the trusted checkpoint: rolled back or rewritten.
    RolledBack,
    /// A segment does not continue the previous one (replaced, spliced or misnumbered).
    SegmentSplice,
    /// A segment file is missing from the sequence.
    SegmentMissing,
    /// `--strict`: records after the last checkpoint.
    Unanchored,
    /// `--strict`: the last line is torn (a crash not yet recovered).
    TornTail,
}

impl TamperKind {
    pub fn code(self) -> &'static str {
        match self {
            TamperKind::Parse => "parse",
            TamperKind::Schema => "schema",
            TamperKind::NonCanonical => "non_canonical",
            TamperKind::HashMismatch => "hash_mismatch",
            TamperKind::Sequence => "sequence",
            TamperKind::BrokenLink => "broken_link",
            TamperKind::BadSignature => "bad_signature",
            TamperKind::Checkpoint => "checkpoint",
            TamperKind::CheckpointLog => "checkpoint_log",
            TamperKind::Truncated => "truncated",
            TamperKind::TornTailCovered => "torn_tail_covered",
            TamperKind::RolledBack => "rolled_back",
            TamperKind::SegmentSplice => "segment_splice",
            TamperKind::SegmentMissing => "segment_missing",
            TamperKind::Unanchored => "unanchored",
            TamperKind::TornTail => "torn_tail",
        }
    }
}

impl fmt::Display for TamperKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
