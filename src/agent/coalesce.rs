//! Output coalescing: many small token deltas become few output chunks.
//!
//! A fast model can emit hundreds of deltas per second; storing and
//! publishing each one would flood the store and every subscriber. Every
//! agent kind pushes its deltas through an [`Output`], which keeps the whole
//! text (the task's `result`) and emits a chunk at most every
//! [`FLUSH_INTERVAL`], or sooner once [`FLUSH_BYTES`] are buffered.

use std::time::Duration;

use tokio::time::Instant;

use crate::agent::{Context, Stopped};

/// Longest a delta waits in the buffer before it is sent.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// A buffer this large is sent at once.
pub const FLUSH_BYTES: usize = 4096;

/// The pure part: what is buffered, what was sent, and when the next chunk
/// is due. No I/O, so it is tested with plain instants.
#[derive(Debug)]
pub struct Coalescer {
    buf: String,
    full: String,
    last_flush: Instant,
    interval: Duration,
    max_bytes: usize,
}

impl Coalescer {
    /// A coalescer that considers `now` the time of the last flush.
    pub fn new(now: Instant, interval: Duration, max_bytes: usize) -> Self {
        Coalescer {
            buf: String::new(),
            full: String::new(),
            last_flush: now,
            interval,
            max_bytes: max_bytes.max(1),
        }
    }

    /// Buffer a delta. Returns a chunk when one should be sent now.
    pub fn push(&mut self, delta: &str, now: Instant) -> Option<String> {
        self.buf.push_str(delta);
        self.full.push_str(delta);
        if self.buf.len() >= self.max_bytes || now >= self.last_flush + self.interval {
            self.take(now)
        } else {
            None
        }
    }

    /// Take whatever is buffered (`None` when nothing is).
    pub fn take(&mut self, now: Instant) -> Option<String> {
        if self.buf.is_empty() {
            return None;
        }
        self.last_flush = now;
        Some(std::mem::take(&mut self.buf))
    }

    /// When the buffered text must be sent, if anything is buffered.
    pub fn due(&self) -> Option<Instant> {
        (!self.buf.is_empty()).then(|| self.last_flush + self.interval)
    }

    /// Everything pushed so far.
    pub fn full_text(&self) -> &str {
        &self.full
    }

    /// Everything pushed so far, consuming the coalescer.
    pub fn into_full_text(self) -> String {
        self.full
    }
}

/// A [`Coalescer`] wired to a task's [`Context`].
pub struct Output<'a> {
    ctx: &'a Context,
    c: Coalescer,
}

impl<'a> Output<'a> {
    /// Output of the task behind `ctx`, with the default limits.
    pub fn new(ctx: &'a Context) -> Self {
        Output {
            ctx,
            c: Coalescer::new(Instant::now(), FLUSH_INTERVAL, FLUSH_BYTES),
        }
    }

    /// Add a delta; sends a chunk when one is due.
    pub async fn push(&mut self, delta: &str) -> Result<(), Stopped> {
        if delta.is_empty() {
            return Ok(());
        }
        match self.c.push(delta, Instant::now()) {
            Some(chunk) => self.ctx.output(chunk).await,
            None => Ok(()),
        }
    }

    /// Send whatever is buffered.
    pub async fn flush(&mut self) -> Result<(), Stopped> {
        match self.c.take(Instant::now()) {
            Some(chunk) => self.ctx.output(chunk).await,
            None => Ok(()),
        }
    }

    /// Resolves when buffered text is due; never while nothing is buffered.
    /// Select on it next to the source of deltas, then call [`Output::flush`].
    pub async fn due(&self) {
        match self.c.due() {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Everything pushed so far.
    pub fn text(&self) -> &str {
        self.c.full_text()
    }

    /// Send the rest and return the whole text.
    pub async fn finish(mut self) -> Result<String, Stopped> {
        self.flush().await?;
        Ok(self.c.into_full_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Deltas within the interval are held, then sent together.
    #[test]
    fn deltas_are_held_until_the_interval() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(t0, ms(50), 4096);
        assert_eq!(c.push("a", t0 + ms(1)), None);
        assert_eq!(c.push("b", t0 + ms(10)), None);
        assert_eq!(c.due(), Some(t0 + ms(50)));
        assert_eq!(c.push("c", t0 + ms(50)).as_deref(), Some("abc"));
        assert_eq!(c.due(), None);
        assert_eq!(c.push("d", t0 + ms(60)), None);
        assert_eq!(c.due(), Some(t0 + ms(100)));
        assert_eq!(c.take(t0 + ms(100)).as_deref(), Some("d"));
        assert_eq!(c.take(t0 + ms(101)), None);
        assert_eq!(c.into_full_text(), "abcd");
    }

    /// A full buffer is sent at once, whatever the time.
    #[test]
    fn a_full_buffer_is_sent_at_once() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(t0, ms(50), 8);
        assert_eq!(c.push("1234", t0), None);
        assert_eq!(c.push("5678", t0).as_deref(), Some("12345678"));
        assert_eq!(c.push("9", t0), None);
        assert_eq!(c.full_text(), "123456789");
    }

    /// A thousand deltas in a burst become a handful of chunks, and the
    /// chunks add up to the whole text.
    #[test]
    fn a_burst_becomes_few_chunks() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(t0, ms(50), 4096);
        let mut chunks = Vec::new();
        for i in 0..1000u64 {
            // 1000 deltas over 100 ms.
            if let Some(ch) = c.push("tok ", t0 + Duration::from_micros(i * 100)) {
                chunks.push(ch);
            }
        }
        chunks.extend(c.take(t0 + ms(200)));
        assert!(chunks.len() <= 4, "{} chunks", chunks.len());
        assert_eq!(chunks.concat(), "tok ".repeat(1000));
        assert_eq!(c.full_text(), "tok ".repeat(1000));
    }
}
