//! Decoding a program's output, which arrives in arbitrary pieces.

/// Decodes UTF-8 arriving in arbitrary pieces, holding back a character
/// split across two reads. Invalid bytes become U+FFFD.
#[derive(Default)]
pub(super) struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub(super) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let keep = incomplete_suffix(&self.pending);
        let rest = self.pending.split_off(self.pending.len() - keep);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }

    pub(super) fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// How many trailing bytes of `b` start a character that is not complete yet.
fn incomplete_suffix(b: &[u8]) -> usize {
    for back in 1..=b.len().min(3) {
        let byte = b[b.len() - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: look further back
        }
        let len = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if len > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A character split across reads comes out whole.
    #[test]
    fn utf8_split_across_reads() {
        let bytes = "héllo→ 🎉!".as_bytes();
        for cut in 0..bytes.len() {
            let mut d = Utf8Stream::default();
            let mut s = d.push(&bytes[..cut]);
            s += &d.push(&bytes[cut..]);
            s += &d.finish();
            assert_eq!(s, "héllo→ 🎉!", "cut at {cut}");
        }
    }
}
