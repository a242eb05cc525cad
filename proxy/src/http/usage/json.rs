//! An incremental JSON tokenizer that reads only the integers at known key paths.

use super::*;

/// Containers deeper than this stop the scan, as serde_json's own limit does.
pub(super) const MAX_NEST: usize = 128;
/// Path levels remembered; every target is shallower.
pub(super) const MAX_PATH: usize = 8;
/// Longest member name kept (`amazon-bedrock-invocationMetrics` is 32).
pub(super) const MAX_KEY: usize = 40;
/// Longest number kept; longer ones cannot be a u64 anyway.
pub(super) const MAX_NUM: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// A value must come next.
    Value,
    /// Just after `[`: a value or `]`.
    ValueOrClose,
    /// Just after `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object.
    Key,
    Colon,
    /// After a value: `,`, a closer, or (at the top) another value.
    After,
    Str,
    Esc,
    /// Inside `\uXXXX`: digits read and the code unit so far.
    Unicode(u8, u16),
    Num,
    /// Inside `true`, `false` or `null`: the word and bytes matched.
    Lit(&'static [u8], u8),
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Text {
    Key,
    Skip,
    Capture,
}

/// A streaming JSON tokenizer that counts integers at target paths. It also
/// accepts a sequence of top-level values (NDJSON, Cohere v1 streams).
pub(super) struct Scanner {
    pub(super) state: State,
    pub(super) depth: usize,
    /// Bit `d` set: the container at depth `d + 1` is an object.
    pub(super) objects: u128,
    /// The member name (or `Elem`) at each of the first levels.
    pub(super) path: [Key; MAX_PATH],
    pub(super) text: Text,
    pub(super) key: [u8; MAX_KEY],
    pub(super) key_len: usize,
    pub(super) key_long: bool,
    pub(super) num: [u8; MAX_NUM],
    pub(super) num_len: usize,
    pub(super) num_long: bool,
    pub(super) num_act: Option<Act>,
    pub(super) capture: Vec<u8>,
    pub(super) capture_long: bool,
    pub(super) captured: bool,
    /// At least one top-level value ended.
    pub(super) ended_value: bool,
}

impl Default for Scanner {
    fn default() -> Scanner {
        Scanner {
            state: State::Value,
            depth: 0,
            objects: 0,
            path: [Key::Other; MAX_PATH],
            text: Text::Skip,
            key: [0; MAX_KEY],
            key_len: 0,
            key_long: false,
            num: [0; MAX_NUM],
            num_len: 0,
            num_long: false,
            num_act: None,
            capture: Vec::new(),
            capture_long: false,
            captured: false,
            ended_value: false,
        }
    }
}

pub(super) fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

impl Scanner {
    /// Back to the start, keeping the capture buffer's allocation.
    pub(super) fn reset(&mut self) {
        let mut capture = std::mem::take(&mut self.capture);
        capture.clear();
        *self = Scanner {
            capture,
            ..Scanner::default()
        };
    }

    pub(super) fn feed(&mut self, input: &[u8], targets: &[Target], tally: &mut Tally) {
        let mut i = 0;
        while let Some(&c) = input.get(i) {
            match self.state {
                State::Error => return,
                State::Str => {
                    // Strings are most of the bytes: take the run up to the
                    // next quote or backslash at once.
                    let rest = input.get(i..).unwrap_or_default();
                    let run = rest
                        .iter()
                        .position(|&b| b == b'"' || b == b'\\')
                        .unwrap_or(rest.len());
                    self.text_bytes(rest.get(..run).unwrap_or_default());
                    i += run + 1;
                    match rest.get(run) {
                        Some(b'"') => self.end_string(),
                        Some(_) => self.state = State::Esc,
                        None => {}
                    }
                }
                _ => {
                    if self.step(c, targets, tally) {
                        i += 1;
                    }
                }
            }
        }
    }

    /// Reads one byte outside a string's plain run; false when the byte
    /// ended a number and must be read again in the next state.
    pub(super) fn step(&mut self, c: u8, targets: &[Target], tally: &mut Tally) -> bool {
        match self.state {
            State::Value | State::ValueOrClose => {
                if c == b']' && self.state == State::ValueOrClose {
                    self.close();
                } else if !is_ws(c) {
                    self.begin_value(c, targets);
                }
            }
            State::KeyOrClose | State::Key => {
                if c == b'"' {
                    self.begin_text(Text::Key);
                } else if c == b'}' && self.state == State::KeyOrClose {
                    self.close();
                } else if !is_ws(c) {
                    self.state = State::Error;
                }
            }
            State::Colon => {
                if c == b':' {
                    self.state = State::Value;
                } else if !is_ws(c) {
                    self.state = State::Error;
                }
            }
            State::After => {
                if is_ws(c) {
                    return true;
                }
                if self.depth == 0 {
                    // Another top-level value follows.
                    self.state = State::Value;
                    return false;
                }
                let object = self.in_object();
                match c {
                    b',' if object => self.state = State::Key,
                    b',' => self.state = State::Value,
                    b'}' if object => self.close(),
                    b']' if !object => self.close(),
                    _ => self.state = State::Error,
                }
            }
            State::Str => match c {
                b'"' => self.end_string(),
                b'\\' => self.state = State::Esc,
                _ => self.text_bytes(&[c]),
            },
            State::Esc => {
                let decoded = match c {
                    b'"' | b'\\' | b'/' => c,
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        self.state = State::Unicode(0, 0);
                        return true;
                    }
                    _ => {
                        self.state = State::Error;
                        return true;
                    }
                };
                self.text_bytes(&[decoded]);
                self.state = State::Str;
            }
            State::Unicode(n, unit) => {
                let Some(digit) = (c as char).to_digit(16) else {
                    self.state = State::Error;
                    return true;
                };
                let unit = (unit << 4) | digit as u16;
                if n == 3 {
                    // No name or base64 we read is outside ASCII; anything
                    // else only has to keep a key from matching.
                    self.text_bytes(&[u8::try_from(unit)
                        .ok()
                        .filter(u8::is_ascii)
                        .unwrap_or(0xff)]);
                    self.state = State::Str;
                } else {
                    self.state = State::Unicode(n + 1, unit);
                }
            }
            State::Num => {
                if matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                    self.push_num(c);
                } else {
                    self.end_number(tally);
                    return false;
                }
            }
            State::Lit(word, n) => {
                let n = usize::from(n);
                if word.get(n) != Some(&c) {
                    self.state = State::Error;
                } else if n + 1 == word.len() {
                    self.after_value();
                } else {
                    self.state = State::Lit(word, (n + 1) as u8);
                }
            }
            State::Error => {}
        }
        true
    }

    pub(super) fn begin_value(&mut self, c: u8, targets: &[Target]) {
        match c {
            b'{' => self.open(true),
            b'[' => self.open(false),
            b'"' => {
                let text = match self.lookup(targets) {
                    Some(Act::Capture) => Text::Capture,
                    _ => Text::Skip,
                };
                self.begin_text(text);
            }
            b'-' | b'0'..=b'9' => {
                self.num_act = self.lookup(targets);
                self.num_len = 0;
                self.num_long = false;
                self.push_num(c);
                self.state = State::Num;
            }
            b't' => self.state = State::Lit(b"true", 1),
            b'f' => self.state = State::Lit(b"false", 1),
            b'n' => self.state = State::Lit(b"null", 1),
            _ => self.state = State::Error,
        }
    }

    /// What to do with the value that starts here. A top-level array is
    /// looked through, so each element of Gemini's streamed array is a root.
    pub(super) fn lookup(&self, targets: &[Target]) -> Option<Act> {
        let mut path = self.path.get(..self.depth)?;
        if let [Key::Elem, rest @ ..] = path {
            path = rest;
        }
        targets.iter().find(|t| t.path == path).map(|t| t.act)
    }

    pub(super) fn open(&mut self, object: bool) {
        if self.depth >= MAX_NEST {
            self.state = State::Error;
            return;
        }
        let bit = 1u128 << self.depth;
        if object {
            self.objects |= bit;
        } else {
            self.objects &= !bit;
        }
        if let Some(slot) = self.path.get_mut(self.depth) {
            *slot = if object { Key::Other } else { Key::Elem };
        }
        self.depth += 1;
        self.state = if object {
            State::KeyOrClose
        } else {
            State::ValueOrClose
        };
    }

    pub(super) fn close(&mut self) {
        self.depth = self.depth.saturating_sub(1);
        self.after_value();
    }

    pub(super) fn in_object(&self) -> bool {
        self.depth > 0 && self.objects & (1u128 << (self.depth - 1)) != 0
    }

    pub(super) fn after_value(&mut self) {
        self.state = State::After;
        if self.depth == 0 {
            self.ended_value = true;
        }
    }

    pub(super) fn begin_text(&mut self, text: Text) {
        self.text = text;
        match text {
            Text::Key => {
                self.key_len = 0;
                // Names below the remembered levels are never compared.
                self.key_long = self.depth > MAX_PATH;
            }
            Text::Capture => {
                self.capture.clear();
                self.capture_long = false;
                self.captured = false;
            }
            Text::Skip => {}
        }
        self.state = State::Str;
    }

    pub(super) fn text_bytes(&mut self, bytes: &[u8]) {
        match self.text {
            Text::Skip => {}
            Text::Key => {
                if self.key_long {
                    return;
                }
                let end = self.key_len + bytes.len();
                match self.key.get_mut(self.key_len..end) {
                    Some(dst) => {
                        dst.copy_from_slice(bytes);
                        self.key_len = end;
                    }
                    None => self.key_long = true,
                }
            }
            Text::Capture => {
                if self.capture.len() + bytes.len() > MAX_EVENT {
                    self.capture_long = true;
                } else if !self.capture_long {
                    self.capture.extend_from_slice(bytes);
                }
            }
        }
    }

    pub(super) fn end_string(&mut self) {
        match self.text {
            Text::Key => {
                let key = match self.key.get(..self.key_len) {
                    Some(name) if !self.key_long => Key::intern(name),
                    _ => Key::Other,
                };
                if let Some(slot) = self.depth.checked_sub(1).and_then(|d| self.path.get_mut(d)) {
                    *slot = key;
                }
                self.state = State::Colon;
            }
            Text::Capture => {
                self.captured = !self.capture_long;
                self.after_value();
            }
            Text::Skip => self.after_value(),
        }
    }

    pub(super) fn push_num(&mut self, c: u8) {
        match self.num.get_mut(self.num_len) {
            Some(slot) => {
                *slot = c;
                self.num_len += 1;
            }
            None => self.num_long = true,
        }
    }

    pub(super) fn end_number(&mut self, tally: &mut Tally) {
        let act = self.num_act.take();
        let value = match self.num.get(..self.num_len) {
            Some(digits) if !self.num_long => parse_count(digits),
            _ => None,
        };
        if let Some(value) = value {
            match act {
                Some(Act::Input(rank)) => tally.input.offer(value, rank),
                Some(Act::Output(rank)) => tally.output.offer(value, rank),
                _ => {}
            }
        }
        self.after_value();
    }

    /// Ends the input: a number at the very end has no terminator.
    pub(super) fn end(&mut self) {
        if self.state == State::Num {
            let mut ignored = Tally::default();
            self.end_number(&mut ignored);
        }
    }

    /// The input so far is one or more whole JSON values.
    pub(super) fn complete(&self) -> bool {
        self.state == State::After && self.depth == 0 && self.ended_value
    }

    pub(super) fn captured(&self) -> Option<&[u8]> {
        self.captured.then_some(self.capture.as_slice())
    }
}

/// A token count: a non-negative JSON integer that fits a u64.
pub(super) fn parse_count(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}
