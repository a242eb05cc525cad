//! The request body, parsed once and strictly (SPEC §3 step 5.3).
//!
//! Classification, the detectors and narrowing all read the one [`Parsed`] value a
//! [`BodyView`] holds, so they cannot disagree about what the body says. A body that
//! looks like JSON (first non-whitespace byte `{` or `[`, a leading byte-order mark, or
//! a JSON `Content-Type`) is parsed strictly:
//!
//! - the whole body must be UTF-8;
//! - string escapes must be well formed: a lone surrogate (`"\ud800"`) is refused;
//! - a number must fit an `f64` (`1e400` is refused);
//! - nesting deeper than [`MAX_DEPTH`] is refused;
//! - a key given twice in one object is refused: a classifier reading the first `model`
//!   while the upstream reads the last would be a smuggling vector.
//!
//! serde_json alone is not enough: parsed into `Value` it keeps the last of duplicate
//! keys, and skipped as `RawValue` it checks neither escapes, numbers nor depth. So the
//! top-level members are split as `RawValue` (narrowing keeps their exact bytes) and
//! each is parsed into a `Value` by [`Strict`], which counts depth and refuses
//! duplicates.
//!
//! A body that looks like JSON but fails this is [`Parsed::Unparseable`]: a route that
//! inspects the body refuses it (`body_unparseable`) and nothing scans it as raw bytes
//! instead, where `\u`-escaped text would be invisible.

use std::cell::OnceCell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use crate::reason::Reason;

/// The deepest nesting of arrays and objects a body may have.
pub(crate) const MAX_DEPTH: usize = 128;

/// What the one parse of a body found.
#[derive(Debug)]
pub(crate) enum Parsed<'a> {
    /// Not read, or cut at `max_inspect_body`: nothing is known about it.
    Incomplete,
    /// Sent with a `Content-Encoding` other than `identity`: its bytes are not what the
    /// upstream will read, so they are not parsed.
    Encoded,
    /// Empty, or does not look like JSON: detectors read it as text.
    Opaque,
    /// Strict JSON.
    Json(Document<'a>),
    /// Looks like JSON, but does not parse strictly.
    Unparseable,
}

/// A strictly parsed JSON body.
/// A top-level member's key and the byte range of its value's text.
type MemberSpan = (String, std::ops::Range<usize>);

#[derive(Debug)]
pub(crate) struct Document<'a> {
    /// The whole body.
    pub(crate) value: Value,
    /// The body's text, already checked strictly.
    text: &'a str,
    /// For an object body, its members in body order, as byte ranges of `text`.
    /// Only narrowing needs them, so they are split out on first use.
    members: OnceCell<Option<Vec<MemberSpan>>>,
}

impl<'a> Document<'a> {
    /// The body is a JSON object.
    pub(crate) fn is_object(&self) -> bool {
        self.value.is_object()
    }

    /// The top-level members of an object body, in body order with their exact
    /// text (keys are unique). `None` for anything but an object.
    pub(crate) fn members(&self) -> Option<Vec<(&str, &'a str)>> {
        let text: &'a str = self.text;
        let ranges = self.members.get_or_init(|| {
            if !self.value.is_object() {
                return None;
            }
            let mut de = serde_json::Deserializer::from_str(text);
            let TopMembers(members) = TopMembers::deserialize(&mut de).ok()?;
            let base = text.as_ptr() as usize;
            Some(
                members
                    .into_iter()
                    .map(|(k, raw)| {
                        let start = raw.get().as_ptr() as usize - base;
                        (k, start..start + raw.get().len())
                    })
                    .collect(),
            )
        });
        Some(
            ranges
                .as_ref()?
                .iter()
                .filter_map(|(k, r)| Some((k.as_str(), text.get(r.clone())?)))
                .collect(),
        )
    }
}

/// The request body as the proxy read it, with its one parse done on first use.
pub(crate) struct BodyView<'a> {
    raw: Option<&'a [u8]>,
    truncated: bool,
    encoded: bool,
    json_type: bool,
    parsed: OnceCell<Parsed<'a>>,
}

impl<'a> BodyView<'a> {
    /// `raw` is `None` when the body was not read; `headers` are the request's
    /// `(name, value)` pairs, read for `Content-Encoding` and `Content-Type`.
    pub(crate) fn new(
        raw: Option<&'a [u8]>,
        truncated: bool,
        headers: &[(&str, &[u8])],
    ) -> BodyView<'a> {
        BodyView {
            raw,
            truncated,
            encoded: is_encoded(headers),
            json_type: is_json_type(headers),
            parsed: OnceCell::new(),
        }
    }

    /// The bytes as read (possibly truncated).
    pub(crate) fn raw(&self) -> Option<&'a [u8]> {
        self.raw
    }

    /// The one parse, done on first use.
    pub(crate) fn parsed(&self) -> &Parsed<'a> {
        self.parsed.get_or_init(|| {
            let Some(raw) = self.raw.filter(|_| !self.truncated) else {
                return Parsed::Incomplete;
            };
            if self.encoded && !raw.is_empty() {
                return Parsed::Encoded;
            }
            if !(self.json_type && !raw.is_empty() || looks_like_json(raw)) {
                return Parsed::Opaque;
            }
            match parse_strict(raw) {
                Ok(doc) => Parsed::Json(doc),
                Err(_) => Parsed::Unparseable,
            }
        })
    }

    /// The parsed JSON body; `None` unless it is [`Parsed::Json`].
    pub(crate) fn json(&self) -> Option<&Value> {
        match self.parsed() {
            Parsed::Json(doc) => Some(&doc.value),
            _ => None,
        }
    }

    /// A top-level member of a JSON object body.
    pub(crate) fn member(&self, key: &str) -> Option<&Value> {
        self.json()?.as_object()?.get(key)
    }

    /// Why a route that inspects the body must refuse this one, if it must:
    /// `body_encoded`, `body_too_large` (not read or cut) or `body_unparseable`.
    pub(crate) fn refusal(&self) -> Option<Reason> {
        if self.encoded && self.raw != Some(&[]) {
            return Some(Reason::BodyEncoded);
        }
        match self.parsed() {
            Parsed::Incomplete => Some(Reason::BodyTooLarge),
            Parsed::Encoded => Some(Reason::BodyEncoded),
            Parsed::Unparseable => Some(Reason::BodyUnparseable),
            Parsed::Opaque | Parsed::Json(_) => None,
        }
    }
}

/// Any `Content-Encoding` token other than `identity`. A value that is not UTF-8
/// counts as encoded.
fn is_encoded(headers: &[(&str, &[u8])]) -> bool {
    headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("content-encoding"))
        .any(|(_, value)| match std::str::from_utf8(value) {
            Ok(value) => value
                .split(',')
                .map(str::trim)
                .any(|token| !token.is_empty() && !token.eq_ignore_ascii_case("identity")),
            Err(_) => true,
        })
}

/// A `Content-Type` of `application/json` or `…+json`.
fn is_json_type(headers: &[(&str, &[u8])]) -> bool {
    headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .any(|(_, value)| {
            let value = String::from_utf8_lossy(value);
            let media = value.split(';').next().unwrap_or_default().trim();
            media.eq_ignore_ascii_case("application/json")
                || media
                    .get(media.len().saturating_sub(5)..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case("+json"))
        })
}

/// The first non-whitespace byte opens an object or array, or the body starts with a
/// UTF-8 byte-order mark (which strict JSON refuses).
fn looks_like_json(raw: &[u8]) -> bool {
    if raw.starts_with(b"\xEF\xBB\xBF") {
        return true;
    }
    matches!(
        raw.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

/// Why a body is not strict JSON. The message never quotes the body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StrictError(String);

impl fmt::Display for StrictError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parse `raw` strictly (see the module docs).
pub(crate) fn parse_strict(raw: &[u8]) -> Result<Document<'_>, StrictError> {
    let text = std::str::from_utf8(raw).map_err(|_| StrictError("not UTF-8".to_owned()))?;
    let err = |e: serde_json::Error| StrictError(e.to_string());
    match text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .as_bytes()
        .first()
    {
        // One strict pass builds the value; an object's raw members are split out
        // later, and only if narrowing asks for them.
        Some(_) => Ok(Document {
            value: parse_nested(text, 0)?,
            text,
            members: OnceCell::new(),
        }),
        None => Err(err(serde_json::Error::io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "empty body",
        )))),
    }
}

/// Parse one value found inside `depth` containers.
fn parse_nested(text: &str, depth: usize) -> Result<Value, StrictError> {
    let err = |e: serde_json::Error| StrictError(e.to_string());
    let mut de = serde_json::Deserializer::from_str(text);
    // `Strict` bounds the depth itself (at MAX_DEPTH, one more than serde_json's
    // own limit allows in a single pass), so the stack stays bounded.
    de.disable_recursion_limit();
    let value = Strict { depth }.deserialize(&mut de).map_err(err)?;
    de.end().map_err(err)?;
    Ok(value)
}

/// The members of the top-level object, unparsed, refusing a repeated key.
struct TopMembers<'a>(Vec<(String, &'a RawValue)>);

impl<'de> TopMembers<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;

        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = TopMembers<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // Keys were already checked unique by the strict pass.
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: &'de RawValue = map.next_value()?;
                    out.push((key, value));
                }
                Ok(TopMembers(out))
            }
        }

        deserializer.deserialize_map(MembersVisitor)
    }
}

/// A `Value`, refusing repeated keys and nesting deeper than [`MAX_DEPTH`]. serde_json
/// itself refuses lone surrogates, invalid UTF-8 and numbers out of `f64` range when it
/// builds strings and numbers (but not when it skips them).
#[derive(Clone, Copy)]
struct Strict {
    /// Containers around the value being read.
    depth: usize,
}

impl Strict {
    fn inner<E: serde::de::Error>(self) -> Result<Strict, E> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(E::custom(format!("nesting deeper than {MAX_DEPTH}")));
        }
        Ok(Strict { depth })
    }
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number is out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.inner()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.inner()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(A::Error::custom("an object key is given twice"));
            }
            let value = map.next_value_seed(inner)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// JSON string escapes decoded wherever they appear, leniently (a lone surrogate
/// becomes U+FFFD, anything malformed stays as written). Only for scanning a body that
/// failed the strict parse for vault keys, which happens on every route.
pub(crate) fn unescape_lenient(raw: &[u8]) -> Vec<u8> {
    fn hex4(bytes: &[u8]) -> Option<u32> {
        let digits = std::str::from_utf8(bytes.get(..4)?).ok()?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(digits, 16).ok()
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let byte = raw[i];
        if byte != b'\\' {
            out.push(byte);
            i += 1;
            continue;
        }
        let simple = match raw.get(i + 1) {
            Some(b'"') => Some(b'"'),
            Some(b'\\') => Some(b'\\'),
            Some(b'/') => Some(b'/'),
            Some(b'b') => Some(0x08),
            Some(b'f') => Some(0x0c),
            Some(b'n') => Some(b'\n'),
            Some(b'r') => Some(b'\r'),
            Some(b't') => Some(b'\t'),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            i += 2;
            continue;
        }
        let Some(unit) = (raw.get(i + 1) == Some(&b'u'))
            .then(|| raw.get(i + 2..).and_then(hex4))
            .flatten()
        else {
            out.push(byte);
            i += 1;
            continue;
        };
        i += 6;
        let mut code = unit;
        if (0xD800..0xDC00).contains(&unit) && raw.get(i..i + 2) == Some(b"\\u") {
            if let Some(low) = raw.get(i + 2..).and_then(hex4) {
                if (0xDC00..0xE000).contains(&low) {
                    code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                    i += 6;
                }
            }
        }
        let c = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejects(body: &[u8]) -> bool {
        parse_strict(body).is_err()
    }

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    fn nested_in_object(depth: usize) -> String {
        format!(
            "{{\"a\":{}{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    }

    #[test]
    fn strict_parse_rejects_lone_surrogates_anywhere() {
        assert!(rejects(br#"{"a":"\ud800"}"#));
        assert!(rejects(br#"{"a":"\udc00x"}"#));
        assert!(rejects(br#"{"\ud800":1}"#));
        assert!(rejects(br#"[{"a":["\ud800"]}]"#));
        assert!(!rejects(br#"{"a":"\ud83d\ude00"}"#));
    }

    #[test]
    fn strict_parse_rejects_numbers_out_of_f64_range() {
        assert!(rejects(br#"{"a":1e400}"#));
        assert!(rejects(br#"{"a":[-1e400]}"#));
        assert!(rejects(br#"[1e400]"#));
        assert!(!rejects(
            br#"{"a":1e300,"b":123456789012345678901234567890}"#
        ));
    }

    #[test]
    fn strict_parse_rejects_nesting_deeper_than_128() {
        assert!(!rejects(nested(MAX_DEPTH).as_bytes()));
        assert!(rejects(nested(MAX_DEPTH + 1).as_bytes()));
        assert!(!rejects(nested_in_object(MAX_DEPTH).as_bytes()));
        assert!(rejects(nested_in_object(MAX_DEPTH + 1).as_bytes()));
        assert!(rejects(nested(100_000).as_bytes()));
    }

    #[test]
    fn strict_parse_rejects_invalid_utf8_in_strings_keys_and_whitespace() {
        assert!(rejects(b"{\"a\":\"\xff\"}"));
        assert!(rejects(b"{\"\xc3\":1}"));
        assert!(rejects(b"{\"a\":1}\xff"));
    }

    #[test]
    fn strict_parse_rejects_duplicate_keys_at_every_level() {
        assert!(rejects(br#"{"model":"a","model":"b"}"#));
        assert!(rejects(br#"{"m":{"x":1,"x":2}}"#));
        assert!(rejects(br#"[{"x":1,"x":1}]"#));
        // The same key in sibling objects is fine.
        assert!(!rejects(br#"[{"x":1},{"x":2}]"#));
    }

    #[test]
    fn strict_parse_keeps_member_text_and_order() {
        let doc = parse_strict(br#"{"b": 1.50, "a" : [ 1 ]}"#).unwrap_or_else(|e| panic!("{e}"));
        let members: Vec<(&str, &str)> = doc.members().unwrap_or_default();
        assert_eq!(members, [("b", "1.50"), ("a", "[ 1 ]")]);
        assert_eq!(doc.value["a"][0], 1);
    }

    #[test]
    fn strict_parse_rejects_trailing_bytes_and_a_byte_order_mark() {
        assert!(rejects(br#"{"a":1} {"#));
        assert!(rejects(b"\xEF\xBB\xBF{\"a\":1}"));
    }

    #[test]
    fn content_encoding_identity_is_not_encoded_and_anything_else_is() {
        assert!(!is_encoded(&[("Content-Encoding", b"identity")]));
        assert!(!is_encoded(&[("content-type", b"gzip")]));
        assert!(is_encoded(&[("CONTENT-ENCODING", b"gzip")]));
        assert!(is_encoded(&[("content-encoding", b"identity, br")]));
        assert!(is_encoded(&[("content-encoding", b"\xff")]));
    }

    #[test]
    fn lenient_unescape_decodes_pairs_and_keeps_malformed_escapes() {
        assert_eq!(
            unescape_lenient(br#"\u0069gnore \ud83d\ude00 \ud800 \x \u12"#),
            "ignore \u{1F600} \u{FFFD} \\x \\u12".as_bytes()
        );
    }
}
