//! Request paths in one canonical form (SPEC §3 step 5.2).
//!
//! A route for `/v1/files/*` must not be dodged by `/v1/%66iles/x`,
//! `/v1//files` or `/v1/./files`, and the upstream must see exactly the path
//! the policy matched. So the path is canonicalised once, before
//! classification: percent-escapes of unreserved characters are decoded, other
//! escapes are normalised to upper-case hex, and every form that different
//! servers resolve differently is refused outright rather than guessed at.

use std::borrow::Cow;
use std::fmt;

/// Why a path was refused. Each is answered with `400 bad_request`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `.` or `..` segment.
    DotSegment,
    /// An empty segment (`//`).
    EmptySegment,
    /// A backslash, raw or encoded.
    Backslash,
    /// An encoded `/` or `.`, which servers disagree about.
    EncodedSeparator,
    /// A `%` not followed by two hex digits, or an encoded control byte.
    BadEscape,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path must start with /",
            PathError::DotSegment => "the path has a . or .. segment",
            PathError::EmptySegment => "the path has an empty segment (//)",
            PathError::Backslash => "the path has a backslash",
            PathError::EncodedSeparator => "the path has an encoded / or .",
            PathError::BadEscape => "the path has a malformed or control-byte percent escape",
        })
    }
}

/// The canonical form of `path` (no query), or why it is refused.
pub fn canonicalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    let mut out: Option<String> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).and_then(|c| hex(*c)),
                    bytes.get(i + 2).and_then(|c| hex(*c)),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let decoded = h << 4 | l;
                match decoded {
                    b'/' | b'.' => return Err(PathError::EncodedSeparator),
                    b'\\' => return Err(PathError::Backslash),
                    0x00..=0x1f | 0x7f => return Err(PathError::BadEscape),
                    _ => {}
                }
                let o = out.get_or_insert_with(|| path[..i].to_owned());
                if is_unreserved(decoded) {
                    o.push(char::from(decoded));
                } else {
                    o.push('%');
                    o.push(char::from(HEX_UPPER[usize::from(h)]));
                    o.push(char::from(HEX_UPPER[usize::from(l)]));
                }
                i += 3;
                continue;
            }
            _ => {
                if let Some(o) = out.as_mut() {
                    // Only ASCII reaches here from a valid `http::Uri`; keep any other byte
                    // whole by copying its full character.
                    let ch_len = path[i..].chars().next().map_or(1, char::len_utf8);
                    o.push_str(&path[i..i + ch_len]);
                    i += ch_len;
                    continue;
                }
            }
        }
        i += 1;
    }
    let canonical = match out {
        Some(s) => Cow::Owned(s),
        None => Cow::Borrowed(path),
    };
    check_segments(&canonical)?;
    Ok(canonical)
}

/// Segment rules, on the decoded form: no `.`/`..` (also before a `;` parameter,
/// which some servers strip), and no empty segment except a trailing slash.
fn check_segments(path: &str) -> Result<(), PathError> {
    let rest = &path[1..];
    if rest.is_empty() {
        return Ok(());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        let bare = seg.split(';').next().unwrap_or(seg);
        if bare == "." || bare == ".." {
            return Err(PathError::DotSegment);
        }
        if seg.is_empty() && i != last {
            return Err(PathError::EmptySegment);
        }
    }
    Ok(())
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(canonicalize("/v1/%66iles/x").unwrap(), "/v1/files/x");
        assert_eq!(canonicalize("/v1/%6Dodels").unwrap(), "/v1/models");
        assert_eq!(canonicalize("/a%7eb").unwrap(), "/a~b");
        assert_eq!(canonicalize("/a%20b%3a").unwrap(), "/a%20b%3A");
        assert!(matches!(
            canonicalize("/v1/chat/completions").unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for (p, e) in [
            ("v1/x", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/v1//files", PathError::EmptySegment),
            ("//v1", PathError::EmptySegment),
            ("/v1/./files", PathError::DotSegment),
            ("/v1/../x", PathError::DotSegment),
            ("/v1/..;x/y", PathError::DotSegment),
            ("/v1/..", PathError::DotSegment),
            ("/v1/%2e%2e/files", PathError::EncodedSeparator),
            ("/v1/%2E/x", PathError::EncodedSeparator),
            ("/v1/a%2fb", PathError::EncodedSeparator),
            ("/v1/a%5cb", PathError::Backslash),
            ("/v1\\files", PathError::Backslash),
            ("/v1/%zz", PathError::BadEscape),
            ("/v1/%4", PathError::BadEscape),
            ("/v1/%00", PathError::BadEscape),
        ] {
            assert_eq!(canonicalize(p), Err(e), "{p}");
        }
    }

    #[test]
    fn root_and_trailing_slash_are_kept() {
        assert_eq!(canonicalize("/").unwrap(), "/");
        assert_eq!(canonicalize("/v1/models/").unwrap(), "/v1/models/");
    }

    #[test]
    fn decoding_cannot_create_a_dot_segment() {
        // `%2e` is unreserved but refused, so no escape can turn into `.` or `..`.
        assert!(canonicalize("/a/%2e").is_err());
        assert!(canonicalize("/a/.%2e/b").is_err());
    }
}
