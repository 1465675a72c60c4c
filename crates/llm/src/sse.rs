//! An incremental Server-Sent Events decoder (the WHATWG `text/event-stream` rules).
//!
//! Bytes are pushed as they arrive, split anywhere (inside a line, inside a UTF-8
//! character, between the CR and LF of a CRLF); complete events are pulled out with
//! [`SseDecoder::next_event`]. Lines end in LF, CRLF or CR; `data:` lines of one event are
//! joined with `\n`; comments (`:` lines), `id:` and `retry:` are skipped; an event is
//! dispatched at a blank line and only if it had data.

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, empty when the event had none.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    pos: usize,
    /// The last line of the previous push ended in CR: a LF starting the next push
    /// belongs to it.
    skip_lf: bool,
    started: bool,
    event: String,
    data: String,
    has_data: bool,
}

impl SseDecoder {
    pub fn new() -> Self {
        SseDecoder::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, if the bytes pushed so far hold one.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if self.skip_lf && self.pos < self.buf.len() {
                if self.buf[self.pos] == b'\n' {
                    self.pos += 1;
                }
                self.skip_lf = false;
            }
            if !self.started {
                let rest = &self.buf[self.pos..];
                if rest.len() < 3 && b"\xEF\xBB\xBF".starts_with(rest) {
                    return None;
                }
                if rest.starts_with(b"\xEF\xBB\xBF") {
                    self.pos += 3;
                }
                self.started = true;
            }
            let rest = &self.buf[self.pos..];
            let end = rest.iter().position(|&b| b == b'\n' || b == b'\r')?;
            let line_start = self.pos;
            let line_end = self.pos + end;
            self.pos = line_end + 1;
            if self.buf[line_end] == b'\r' {
                if self.pos < self.buf.len() {
                    if self.buf[self.pos] == b'\n' {
                        self.pos += 1;
                    }
                } else {
                    self.skip_lf = true;
                }
            }
            if let Some(event) = self.line(line_start, line_end) {
                return Some(event);
            }
        }
    }

    fn line(&mut self, start: usize, end: usize) -> Option<SseEvent> {
        if start == end {
            if !self.has_data {
                self.event.clear();
                return None;
            }
            self.has_data = false;
            if self.data.ends_with('\n') {
                self.data.pop();
            }
            return Some(SseEvent {
                event: std::mem::take(&mut self.event),
                data: std::mem::take(&mut self.data),
            });
        }
        let line = &self.buf[start..end];
        if line[0] == b':' {
            return None;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
                self.has_data = true;
            }
            b"event" => {
                self.event = String::from_utf8_lossy(value).into_owned();
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(dec: &mut SseDecoder) -> Vec<SseEvent> {
        std::iter::from_fn(|| dec.next_event()).collect()
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    const STREAM: &str = "event: message_start\ndata: {\"a\":1}\n\n: comment\n\nevent: ping\r\ndata: {}\r\n\r\ndata: line one\ndata:line two\nid: 7\nretry: 100\n\ndata: é😀ü\r\rdata: [DONE]\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            ev("message_start", "{\"a\":1}"),
            ev("ping", "{}"),
            ev("", "line one\nline two"),
            ev("", "é😀ü"),
            ev("", "[DONE]"),
        ]
    }

    #[test]
    fn whole_stream() {
        let mut dec = SseDecoder::new();
        dec.push(STREAM.as_bytes());
        assert_eq!(all(&mut dec), expected());
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let bytes = STREAM.as_bytes();
        for cut in 0..=bytes.len() {
            let mut dec = SseDecoder::new();
            dec.push(&bytes[..cut]);
            let mut got = all(&mut dec);
            dec.push(&bytes[cut..]);
            got.extend(all(&mut dec));
            assert_eq!(got, expected(), "split at byte {cut}");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut dec = SseDecoder::new();
        let mut got = Vec::new();
        for b in STREAM.as_bytes() {
            dec.push(std::slice::from_ref(b));
            got.extend(all(&mut dec));
        }
        assert_eq!(got, expected());
    }

    #[test]
    fn crlf_split_between_cr_and_lf_is_one_line_end() {
        let mut dec = SseDecoder::new();
        dec.push(b"data: a\r");
        assert_eq!(dec.next_event(), None);
        dec.push(b"\n\r");
        assert_eq!(dec.next_event(), Some(ev("", "a")));
        dec.push(b"\ndata: b\n\n");
        assert_eq!(all(&mut dec), vec![ev("", "b")]);
    }

    #[test]
    fn unterminated_event_is_not_dispatched() {
        let mut dec = SseDecoder::new();
        dec.push(b"data: {\"partial\": tr");
        assert_eq!(dec.next_event(), None);
        dec.push(b"ue}\n");
        assert_eq!(dec.next_event(), None);
    }

    #[test]
    fn event_without_data_resets_the_name() {
        let mut dec = SseDecoder::new();
        dec.push(b"event: lonely\n\ndata: x\n\n");
        assert_eq!(all(&mut dec), vec![ev("", "x")]);
    }

    #[test]
    fn leading_bom_is_skipped_even_when_split() {
        let mut dec = SseDecoder::new();
        dec.push(b"\xEF\xBB");
        assert_eq!(dec.next_event(), None);
        dec.push(b"\xBFdata: x\n\n");
        assert_eq!(all(&mut dec), vec![ev("", "x")]);
    }

    #[test]
    fn empty_data_field_and_no_colon() {
        let mut dec = SseDecoder::new();
        dec.push(b"data\n\ndata:\ndata:\n\n");
        assert_eq!(all(&mut dec), vec![ev("", ""), ev("", "\n")]);
    }
}
