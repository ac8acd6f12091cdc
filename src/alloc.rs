//! Giving freed memory back to the OS.
//!
//! The binary allocates with mimalloc (`main.rs`). mimalloc keeps what a
//! thread freed in that thread's heap, partly used pages included, until
//! the heap is collected; a node whose connections came in a burst and
//! went away kept most of that memory (measured: 10,000 sessions connected,
//! ran a task each and closed; RSS stayed at 89 MB against 20 MB at
//! start). Each thread that allocates for connections therefore collects
//! its heap when it runs out of work, at most once a second: the runtime's
//! worker threads when they park, the SQLite writer when its queue is
//! empty (RSS after the same run: 50 MB), the blocking threads after a
//! store read. There are at most a few of the last (`main.rs`): every
//! thread that ever ran keeps a heap, and rounds of 3,000 sessions had
//! grown the blocking pool to 20 to 37 threads whose heaps were never
//! collected (RSS after eight rounds: 41 MiB, 36.8 MiB with both).

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The allocator's collection of the calling thread's heap, installed by
/// the binary (this library has no unsafe code, and tests run on the
/// system allocator: without it, collecting does nothing).
static COLLECT: OnceLock<fn()> = OnceLock::new();

/// The C library's trim of its heap (where SQLite's page caches live),
/// installed by the binary like [`COLLECT`].
static TRIM: OnceLock<fn()> = OnceLock::new();

/// Install the allocator's collection and the C heap's trim (once; later
/// calls are ignored).
pub fn install(collect: fn(), trim: fn()) {
    let _ = COLLECT.set(collect);
    let _ = TRIM.set(trim);
}

/// Give the C heap's free pages back to the OS (every thread's arena).
/// Costs a walk of that heap: for a thread that has just gone idle, not
/// for a hot path.
pub fn trim_c_heap() {
    if let Some(trim) = TRIM.get() {
        trim();
    }
}

/// How often one thread collects at most.
const EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Collect this thread's heap unless it did so within the last second.
/// Cheap when it does nothing (a clock read).
pub fn collect_when_idle() {
    let Some(collect) = COLLECT.get() else {
        return;
    };
    LAST.with(|last| {
        let now = Instant::now();
        if last.get().is_none_or(|t| now.duration_since(t) >= EVERY) {
            last.set(Some(now));
            collect();
        }
    });
}
