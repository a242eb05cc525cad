//! The few parts of the DNS message format (RFC 1035 §4) a refusing,
//! answer-only responder needs: read one question, write one reply.
//!
//! Strict on purpose: one question, no name compression in it, labels and
//! names within their limits, ASCII only. Anything else is malformed and
//! gets FORMERR (or nothing, if not even the header is there).

use std::net::IpAddr;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// Response codes (RFC 1035 §4.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NotImp = 4,
    Refused = 5,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Recursion desired, echoed back.
    rd: bool,
    /// Lower case, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass_in: bool,
    /// The question section as sent, echoed in the reply.
    question: Vec<u8>,
}

/// Why a message is not a query we answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Too short for a header: no reply possible.
    NoHeader,
    /// A reply, not a query: never answer those (reflection loops).
    NotAQuery,
    /// An opcode other than QUERY.
    NotImplemented { id: u16, rd: bool },
    /// A bad question: FORMERR.
    Bad { id: u16, rd: bool },
}

impl Malformed {
    /// The reply to send, if any.
    pub fn reply(&self) -> Option<Vec<u8>> {
        match *self {
            Malformed::NoHeader | Malformed::NotAQuery => None,
            Malformed::NotImplemented { id, rd } => Some(header_only(id, rd, Rcode::NotImp)),
            Malformed::Bad { id, rd } => Some(header_only(id, rd, Rcode::FormErr)),
        }
    }
}

const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

pub fn parse_query(msg: &[u8]) -> Result<Query, Malformed> {
    if msg.len() < 12 {
        return Err(Malformed::NoHeader);
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & 0x8000 != 0 {
        return Err(Malformed::NotAQuery);
    }
    let rd = flags & 0x0100 != 0;
    if (flags >> 11) & 0xF != 0 {
        return Err(Malformed::NotImplemented { id, rd });
    }
    let bad = Malformed::Bad { id, rd };
    let count = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]);
    // One question; no answers or authority in a query (EDNS's OPT in the
    // additional section is allowed and ignored).
    if count(4) != 1 || count(6) != 0 || count(8) != 0 {
        return Err(bad);
    }
    let mut pos = 12;
    let mut name = String::new();
    loop {
        let len = usize::from(*msg.get(pos).ok_or(Malformed::Bad { id, rd })?);
        pos += 1;
        if len == 0 {
            break;
        }
        // 0xC0: a compression pointer, which a question has no need for.
        if len > MAX_LABEL {
            return Err(bad);
        }
        let label = msg.get(pos..pos + len).ok_or(Malformed::Bad { id, rd })?;
        if !label.iter().all(|b| b.is_ascii_graphic()) || label.contains(&b'.') {
            return Err(bad);
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
        if name.len() > MAX_NAME {
            return Err(bad);
        }
        pos += len;
    }
    let tail = msg.get(pos..pos + 4).ok_or(Malformed::Bad { id, rd })?;
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    let qclass = u16::from_be_bytes([tail[2], tail[3]]);
    Ok(Query {
        id,
        rd,
        name,
        qtype,
        qclass_in: qclass == CLASS_IN,
        question: msg[12..pos + 4].to_vec(),
    })
}

/// A reply to `q`: its question, then one record per address (of the
/// question's type), each with `ttl`.
pub fn reply(q: &Query, rcode: Rcode, addrs: &[IpAddr], ttl: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + q.question.len() + addrs.len() * 28);
    let answers: Vec<&IpAddr> = addrs
        .iter()
        .filter(|a| match a {
            IpAddr::V4(_) => q.qtype == TYPE_A,
            IpAddr::V6(_) => q.qtype == TYPE_AAAA,
        })
        .collect();
    out.extend_from_slice(&q.id.to_be_bytes());
    out.extend_from_slice(&flags(q.rd, rcode).to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    let n = u16::try_from(answers.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&q.question);
    for a in answers.into_iter().take(usize::from(n)) {
        // A pointer to the question's name, at offset 12.
        out.extend_from_slice(&[0xC0, 0x0C]);
        let (ty, data): (u16, Vec<u8>) = match a {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        let len = u16::try_from(data.len()).unwrap_or(0);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&data);
    }
    out
}

fn header_only(id: u16, rd: bool, rcode: Rcode) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags(rd, rcode).to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// QR (a reply), RD echoed, RA (names we answer are resolved for the asker).
fn flags(rd: bool, rcode: Rcode) -> u16 {
    0x8000 | if rd { 0x0100 } else { 0 } | 0x0080 | rcode as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    #[test]
    fn a_query_is_read_in_lower_case() {
        let q = parse_query(&query("Api.OpenAI.com", TYPE_A)).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.name, "api.openai.com");
        assert_eq!(q.qtype, TYPE_A);
        assert!(q.qclass_in);
    }

    #[test]
    fn a_reply_carries_only_addresses_of_the_asked_type() {
        let q = parse_query(&query("a.test", TYPE_A)).unwrap();
        let addrs: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
        let r = reply(&q, Rcode::NoError, &addrs, 30);
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0F, 0, "rcode");
        assert_eq!(r[2] & 0x80, 0x80, "QR");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
        assert_eq!(&r[r.len() - 4..], &[10, 0, 0, 1]);
    }

    #[test]
    fn a_refusal_has_no_answers() {
        let q = parse_query(&query("exfil.example", TYPE_A)).unwrap();
        let r = reply(&q, Rcode::Refused, &[], 30);
        assert_eq!(r[3] & 0x0F, 5);
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 0);
    }

    #[test]
    fn replies_compression_and_bad_counts_are_not_answered_as_queries() {
        let mut reply_msg = query("a.test", TYPE_A);
        reply_msg[2] |= 0x80;
        assert_eq!(parse_query(&reply_msg), Err(Malformed::NotAQuery));
        assert!(Malformed::NotAQuery.reply().is_none());

        let mut compressed = query("a.test", TYPE_A);
        compressed[12] = 0xC0;
        assert!(matches!(
            parse_query(&compressed),
            Err(Malformed::Bad { .. })
        ));

        let mut two = query("a.test", TYPE_A);
        two[5] = 2;
        let err = parse_query(&two).unwrap_err();
        assert_eq!(err.reply().unwrap()[3] & 0x0F, 1, "FORMERR");

        assert_eq!(parse_query(&[0; 5]), Err(Malformed::NoHeader));
        let truncated = &query("a.test", TYPE_A)[..16];
        assert!(matches!(parse_query(truncated), Err(Malformed::Bad { .. })));
    }

    #[test]
    fn an_opcode_other_than_query_is_not_implemented() {
        let mut m = query("a.test", TYPE_A);
        m[2] |= 0x10; // opcode 2 (STATUS)
        assert_eq!(parse_query(&m).unwrap_err().reply().unwrap()[3] & 0x0F, 4);
    }
}
