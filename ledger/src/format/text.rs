//! The record's fixed-shape text: timestamps and hex, written by hand because they are
//! part of every record's cost.

use time::{OffsetDateTime, UtcOffset};

/// UTC, millisecond precision, fixed width: `2025-01-31T23:59:59.123Z`.
pub fn format_ts(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    // By hand: `format!` was a visible share of every record's cost.
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            // invariant: i < 24 for every call below; `v % 10` is one digit.
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    // A year outside 0..=9999 does not fit the shape; a clock that far off is broken, and
    // clamping keeps the line well-formed.
    put(0, 4, t.year().clamp(0, 9999).unsigned_abs());
    put(5, 2, u32::from(u8::from(t.month())));
    put(8, 2, u32::from(t.day()));
    put(11, 2, u32::from(t.hour()));
    put(14, 2, u32::from(t.minute()));
    put(17, 2, u32::from(t.second()));
    put(20, 3, u32::from(t.millisecond()));
    // Only ASCII digits and separators were written, so this never falls back.
    std::str::from_utf8(&b)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// Lowercase hex of `bytes`, without the per-char iterator of `hex::encode`.
pub fn hex_string(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Does `ts` have the exact shape [`format_ts`] writes?
pub fn is_valid_ts(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_shape_is_checked() {
        assert!(is_valid_ts("2025-01-31T23:59:59.123Z"));
        assert!(!is_valid_ts("2025-01-31 23:59:59.123Z"));
        assert!(!is_valid_ts("2025-01-31T23:59:59Z"));
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789)
            .expect("valid timestamp");
        assert_eq!(format_ts(t), "2023-11-14T22:13:20.123Z");
    }
    #[test]
    fn format_ts_writes_what_the_format_string_wrote_across_years_and_millis() {
        // A deterministic spread from 1970 to 2200, including sub-second values that end
        // in zeros, compared with the `format!` it replaced.
        let mut nanos: i128 = 0;
        for step in 0..5_000i128 {
            nanos += 1_439_999_999_937 * 1_000 + step * 1_000_000;
            let t = OffsetDateTime::from_unix_timestamp_nanos(nanos).expect("in range");
            let old = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            );
            assert_eq!(format_ts(t), old);
            assert!(is_valid_ts(&old), "{old}");
        }
    }
    #[test]
    fn hex_string_matches_hex_encode() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        assert_eq!(hex_string(&bytes), hex::encode(&bytes));
        assert_eq!(hex_string(&[]), "");
    }
}
