//! Cutting a streamed response body into messages: SSE events or NDJSON
//! lines.

/// Largest line or event accepted from a stream.
const MAX_LINE: usize = 1 << 20;

/// How a stream is cut into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Server-sent events: `event:` and `data:` lines, blank-line separated.
    Sse,
    /// One JSON document per line.
    Ndjson,
}

/// Cuts a byte stream into messages.
pub struct Framer {
    framing: Framing,
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl Framer {
    /// A framer for `framing`.
    pub fn new(framing: Framing) -> Self {
        Framer {
            framing,
            buf: Vec::new(),
            event: None,
            data: Vec::new(),
        }
    }

    /// Feed bytes; returns the complete messages as (event name, data).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<(Option<String>, String)>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            self.line(line, &mut out);
        }
        if self.buf.len() > MAX_LINE || self.data.iter().map(String::len).sum::<usize>() > MAX_LINE
        {
            return Err("the server sent a line or event larger than 1 MiB".into());
        }
        Ok(out)
    }

    /// The end of the stream: whatever is left, as if a newline followed.
    pub fn finish(&mut self) -> Vec<(Option<String>, String)> {
        let mut out = Vec::new();
        if !self.buf.is_empty() {
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
            self.line(line.trim_end_matches('\r').to_owned(), &mut out);
        }
        if self.framing == Framing::Sse {
            self.line(String::new(), &mut out);
        }
        out
    }

    fn line(&mut self, line: String, out: &mut Vec<(Option<String>, String)>) {
        match self.framing {
            Framing::Ndjson => {
                if !line.trim().is_empty() {
                    out.push((None, line));
                }
            }
            Framing::Sse => {
                if line.is_empty() {
                    if !self.data.is_empty() {
                        out.push((self.event.take(), self.data.join("\n")));
                        self.data.clear();
                    }
                    self.event = None;
                } else if line.starts_with(':') {
                    // A comment (keep-alive).
                } else {
                    let (field, value) = line.split_once(':').unwrap_or((&line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "data" => self.data.push(value.to_owned()),
                        "event" => self.event = Some(value.to_owned()),
                        _ => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SSE events are assembled across arbitrary cuts, with CRLF, comments
    /// and multi-line data.
    #[test]
    fn sse_framing() {
        let text = ": keep-alive\r\nevent: a\r\ndata: {\"x\":1}\r\n\r\ndata: one\ndata: two\n\ndata: [DONE]\n\n";
        for cut in 0..text.len() {
            let mut f = Framer::new(Framing::Sse);
            let mut got = f.push(&text.as_bytes()[..cut]).unwrap();
            got.extend(f.push(&text.as_bytes()[cut..]).unwrap());
            got.extend(f.finish());
            assert_eq!(
                got,
                [
                    (Some("a".to_owned()), "{\"x\":1}".to_owned()),
                    (None, "one\ntwo".to_owned()),
                    (None, "[DONE]".to_owned()),
                ],
                "cut at {cut}"
            );
        }
    }

    /// NDJSON lines, the last one possibly without a newline.
    #[test]
    fn ndjson_framing() {
        let mut f = Framer::new(Framing::Ndjson);
        let mut got = f.push(b"{\"a\":1}\n\n{\"b\"").unwrap();
        got.extend(f.push(b":2}").unwrap());
        got.extend(f.finish());
        assert_eq!(
            got,
            [
                (None, "{\"a\":1}".to_owned()),
                (None, "{\"b\":2}".to_owned())
            ]
        );
    }
}
