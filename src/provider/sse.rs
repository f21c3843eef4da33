//! A small server-sent-events parser (the WHATWG event-stream format), fed
//! with body chunks as they arrive.
//!
//! Chunks split anywhere (mid-line, mid-UTF-8 character, between `\r` and
//! `\n`), so bytes are buffered until a line ends. Comments (`: keep-alive`,
//! OpenRouter's `: OPENROUTER PROCESSING`) and unknown fields are ignored.

/// The longest line or event the parser buffers; a provider sending more
/// without a line break is broken, and we refuse to grow memory without bound.
const MAX_PENDING: usize = 8 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field; empty when the stream named none.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental parser state.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    started: bool,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub(crate) fn new() -> SseParser {
        SseParser::default()
    }

    /// Feed a chunk; complete events are appended to `out`.
    pub(crate) fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), String> {
        self.buf.extend_from_slice(chunk);
        if !self.started {
            if self.buf.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.buf) {
                return Ok(()); // maybe a BOM still arriving
            }
            if self.buf.starts_with(b"\xEF\xBB\xBF") {
                self.buf.drain(..3);
            }
            self.started = true;
        }
        let mut pos = 0;
        loop {
            let rest = &self.buf[pos..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                break;
            };
            let term_len = if rest[nl] == b'\r' {
                match rest.get(nl + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    // `\r` at the end: wait, a `\n` may follow in the next chunk.
                    None => break,
                }
            } else {
                1
            };
            let line = std::str::from_utf8(&rest[..nl])
                .map_err(|_| "invalid UTF-8 in the event stream".to_string())?
                .to_string();
            pos += nl + term_len;
            self.line(&line, out)?;
        }
        self.buf.drain(..pos);
        if self.buf.len() > MAX_PENDING {
            return Err("an event-stream line exceeds 8 MiB".to_string());
        }
        Ok(())
    }

    /// The stream ended: handle a last unterminated line and event. The spec
    /// drops an event without its blank line; we keep it, because some
    /// OpenAI-compatible servers end with `data: [DONE]` and no blank line.
    pub(crate) fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<(), String> {
        let rest = std::mem::take(&mut self.buf);
        let rest = rest.strip_suffix(b"\r").unwrap_or(&rest);
        if !rest.is_empty() {
            let line = std::str::from_utf8(rest)
                .map_err(|_| "invalid UTF-8 in the event stream".to_string())?;
            self.line(line, out)?;
        }
        self.line("", out)
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) -> Result<(), String> {
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent {
                    event: std::mem::take(&mut self.event),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
                if self.data.len() > MAX_PENDING {
                    return Err("an event exceeds 8 MiB".to_string());
                }
            }
            "event" => self.event = value.to_string(),
            _ => {} // id, retry, unknown: irrelevant here
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out).unwrap();
        }
        p.finish(&mut out).unwrap();
        out
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn basic_events_and_comments() {
        let out =
            parse_chunks(&[b": OPENROUTER PROCESSING\n\ndata: {\"a\":1}\n\nevent: ping\ndata: {}\n\ndata: [DONE]\n\n"]);
        assert_eq!(
            out,
            vec![ev("", "{\"a\":1}"), ev("ping", "{}"), ev("", "[DONE]")]
        );
    }

    #[test]
    fn any_split_gives_the_same_events() {
        let text = "\u{feff}event: message_start\r\ndata: {\"t\":\"h\u{e9}llo\"}\r\n\r\ndata:line1\ndata: line2\r\rdata: x\n\n";
        let whole = parse_chunks(&[text.as_bytes()]);
        assert_eq!(
            whole,
            vec![
                ev("message_start", "{\"t\":\"h\u{e9}llo\"}"),
                ev("", "line1\nline2"),
                ev("", "x")
            ]
        );
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            for j in i..bytes.len() {
                let got = parse_chunks(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                assert_eq!(got, whole, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn unterminated_last_event_is_kept() {
        assert_eq!(parse_chunks(&[b"data: [DONE]"]), vec![ev("", "[DONE]")]);
        assert_eq!(parse_chunks(&[b"data: [DONE]\r"]), vec![ev("", "[DONE]")]);
    }

    #[test]
    fn empty_data_blocks_are_not_dispatched() {
        assert_eq!(parse_chunks(&[b"event: x\n\n\n\n"]), vec![]);
        assert_eq!(parse_chunks(&[b"data\n\n"]), vec![ev("", "")]);
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        assert!(p.push(b"data: \xff\xfe\n\n", &mut out).is_err());
    }
}
