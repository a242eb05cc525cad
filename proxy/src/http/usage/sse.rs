//! Server-sent events: lines into events, each event's data into the tokenizer.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Line {
    Start,
    Field,
    /// After `data:`: one optional space, then the value.
    DataSpace,
    Data,
    /// A comment or a field other than `data`.
    Ignore,
}

/// SSE framing (WHATWG): lines end in CR, LF or CRLF; a blank line ends an
/// event; `data:` lines are joined with LF. The data goes straight into the
/// tokenizer, which counts into `pending`; the event is committed only if it
/// ends as whole JSON within [`MAX_EVENT`] (`[DONE]` is not JSON, so it just
/// drops out).
pub(super) struct Sse {
    pub(super) scanner: Scanner,
    pub(super) line: Line,
    pub(super) field: [u8; 4],
    pub(super) field_len: usize,
    pub(super) field_long: bool,
    /// The last byte was CR, so an LF next is the same line end.
    pub(super) cr: bool,
    pub(super) has_data: bool,
    pub(super) data_len: usize,
    pub(super) pending: Tally,
}

impl Default for Sse {
    fn default() -> Sse {
        Sse {
            scanner: Scanner::default(),
            line: Line::Start,
            field: [0; 4],
            field_len: 0,
            field_long: false,
            cr: false,
            has_data: false,
            data_len: 0,
            pending: Tally::default(),
        }
    }
}

impl Sse {
    pub(super) fn push(&mut self, chunk: &[u8], targets: &[Target], tally: &mut Tally) {
        let mut i = 0;
        while let Some(&c) = chunk.get(i) {
            if self.cr {
                self.cr = false;
                if c == b'\n' {
                    i += 1;
                    continue;
                }
            }
            match self.line {
                _ if c == b'\r' || c == b'\n' => {
                    self.cr = c == b'\r';
                    match self.line {
                        Line::Start => self.dispatch(tally),
                        // A bare `data` line is an empty data line.
                        Line::Field if self.is_data() => self.begin_data(targets),
                        _ => {}
                    }
                    self.line = Line::Start;
                    i += 1;
                }
                Line::Start => {
                    if c == b':' {
                        self.line = Line::Ignore;
                    } else {
                        self.field_len = 0;
                        self.field_long = false;
                        self.line = Line::Field;
                        self.field_byte(c);
                    }
                    i += 1;
                }
                Line::Field => {
                    if c == b':' {
                        if self.is_data() {
                            self.begin_data(targets);
                            self.line = Line::DataSpace;
                        } else {
                            self.line = Line::Ignore;
                        }
                    } else {
                        self.field_byte(c);
                    }
                    i += 1;
                }
                Line::DataSpace => {
                    self.line = Line::Data;
                    if c == b' ' {
                        i += 1;
                    }
                }
                Line::Data | Line::Ignore => {
                    let rest = chunk.get(i..).unwrap_or_default();
                    let run = rest
                        .iter()
                        .position(|&b| b == b'\r' || b == b'\n')
                        .unwrap_or(rest.len());
                    if self.line == Line::Data {
                        self.data(rest.get(..run).unwrap_or_default(), targets);
                    }
                    // The line end itself is read by the first arm.
                    i += run;
                }
            }
        }
    }

    pub(super) fn field_byte(&mut self, c: u8) {
        match self.field.get_mut(self.field_len) {
            Some(slot) => {
                *slot = c;
                self.field_len += 1;
            }
            None => self.field_long = true,
        }
    }

    pub(super) fn is_data(&self) -> bool {
        !self.field_long && self.field.get(..self.field_len) == Some(b"data".as_slice())
    }

    pub(super) fn begin_data(&mut self, targets: &[Target]) {
        if self.has_data {
            self.data(b"\n", targets);
        }
        self.has_data = true;
    }

    pub(super) fn data(&mut self, bytes: &[u8], targets: &[Target]) {
        self.data_len = self.data_len.saturating_add(bytes.len());
        // Past the cap the event is dropped, so stop reading it.
        if self.data_len <= MAX_EVENT {
            self.scanner.feed(bytes, targets, &mut self.pending);
        }
    }

    /// Ends the current event: commit what it counted if it was whole JSON
    /// within the cap, else forget it.
    pub(super) fn dispatch(&mut self, tally: &mut Tally) {
        if self.has_data {
            self.scanner.end();
            if self.data_len <= MAX_EVENT && self.scanner.complete() {
                *tally = self.pending;
            }
            self.scanner.reset();
        }
        self.pending = *tally;
        self.has_data = false;
        self.data_len = 0;
    }
}
