//! File layout of a ledger directory: segment file names, listing the segments, and
//! splitting a file into complete lines and a torn tail.

use std::io;
use std::path::{Path, PathBuf};

/// `segment-00000001.jsonl`.
pub fn segment_file_name(index: u64) -> String {
    format!("segment-{index:08}.jsonl")
}

/// The index in a canonical segment file name, or `None` for any other name.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".jsonl")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index: u64 = digits.parse().ok()?;
    (segment_file_name(index) == name).then_some(index)
}

/// The segment files in `dir`, by index.
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(index) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            out.push((index, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Split file bytes into complete lines (without `\n`) and the length of a trailing
/// partial line (0 when the file ends with a newline).
pub(crate) fn split_lines(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let lines = if complete == 0 {
        Vec::new()
    } else {
        bytes[..complete - 1].split(|b| *b == b'\n').collect()
    };
    (lines, bytes.len() - complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_file_names_round_trip_and_odd_names_are_ignored() {
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name("segment-42.jsonl"), None);
        assert_eq!(parse_segment_file_name("segment-00000042.jsonl.bak"), None);
    }

    #[test]
    fn split_lines_reports_a_torn_tail() {
        let (lines, torn) = split_lines(b"a\nbb\ncc");
        assert_eq!(lines, vec![&b"a"[..], &b"bb"[..]]);
        assert_eq!(torn, 2);
        let (lines, torn) = split_lines(b"abc");
        assert!(lines.is_empty());
        assert_eq!(torn, 3);
    }
}
