//! The figures: what each connection counts, their sum, the printed report
//! and process samples from `/proc`.

use tokio::time::Instant;

use super::Args;

/// The figures one connection collects.
#[derive(Default)]
pub(super) struct Stats {
    pub(super) submitted: u64,
    pub(super) acked: u64,
    pub(super) rejected: u64,
    pub(super) completed: u64,
    pub(super) failed: u64,
    pub(super) unfinished: u64,
    pub(super) events: u64,
    pub(super) own_events: u64,
    /// Microseconds from submit to the task's first event.
    pub(super) first_us: Vec<u32>,
    /// Microseconds from submit to its terminal event.
    pub(super) done_us: Vec<u32>,
    pub(super) last_event: Option<Instant>,
    pub(super) error: Option<String>,
}

/// Add one connection's figures to the total.
pub(super) fn merge(total: &mut Stats, s: Stats) {
    total.submitted += s.submitted;
    total.acked += s.acked;
    total.rejected += s.rejected;
    total.completed += s.completed;
    total.failed += s.failed;
    total.unfinished += s.unfinished;
    total.events += s.events;
    total.own_events += s.own_events;
    total.first_us.extend(s.first_us);
    total.done_us.extend(s.done_us);
    total.last_event = total.last_event.max(s.last_event);
    if total.error.is_none() {
        total.error = s.error;
    }
}

pub(super) fn report(
    args: &Args,
    t: &mut Stats,
    start: Instant,
    server: (Option<ProcSample>, Option<ProcSample>),
    me: (ProcSample, ProcSample),
) {
    let window = t
        .last_event
        .map_or(0.0, |l| l.saturating_duration_since(start).as_secs_f64())
        .max(1e-9);
    println!(
        "submitted        {} ({} acknowledged, {} refused)",
        t.submitted, t.acked, t.rejected
    );
    println!(
        "completed        {} tasks ({} failed, {} unfinished) in {window:.2} s: {:.0} tasks/s",
        t.completed,
        t.failed,
        t.unfinished,
        t.completed as f64 / window
    );
    println!(
        "events           {} delivered to clients: {:.0} events/s ({} on the connections' own session streams, {} through --fanout subscriptions)",
        t.events,
        t.events as f64 / window,
        t.own_events,
        t.events - t.own_events
    );
    t.first_us.sort_unstable();
    t.done_us.sort_unstable();
    println!("submit -> first  {}", percentiles(&t.first_us));
    println!("submit -> done   {}", percentiles(&t.done_us));
    if let (Some(before), Some(after)) = server {
        println!(
            "server           RSS {:.1} MiB; CPU {:.1} s over {window:.1} s ({:.2} cores)",
            after.rss_kib as f64 / 1024.0,
            after.cpu_secs - before.cpu_secs,
            (after.cpu_secs - before.cpu_secs) / window
        );
    }
    let (before, after) = me;
    println!(
        "loadgen          CPU {:.1} s ({:.2} cores), RSS {:.1} MiB",
        after.cpu_secs - before.cpu_secs,
        (after.cpu_secs - before.cpu_secs) / window,
        after.rss_kib as f64 / 1024.0
    );
    if let Some(e) = &t.error {
        println!("first error      {e}");
    }
    if args.rate > 0.0 && t.acked > 0 {
        let offered = args.rate * args.duration as f64;
        println!(
            "offered          {offered:.0} submits; sent {} ({:.0}%)",
            t.submitted,
            100.0 * t.submitted as f64 / offered
        );
    }
}

/// `p50 .. p99 .. max ..` in milliseconds, from sorted microseconds.
fn percentiles(sorted: &[u32]) -> String {
    if sorted.is_empty() {
        return "no samples".into();
    }
    let at = |q: f64| {
        let rank = (sorted.len() as f64 * q).ceil() as usize;
        sorted[rank.saturating_sub(1).min(sorted.len() - 1)] as f64 / 1000.0
    };
    format!(
        "p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms   ({} samples)",
        at(0.50),
        at(0.99),
        at(1.0),
        sorted.len()
    )
}

/// Resident memory and CPU time of a process, from `/proc`.
pub(super) struct ProcSample {
    pub(super) rss_kib: u64,
    cpu_secs: f64,
}

impl ProcSample {
    pub(super) fn take(pid: u32) -> Self {
        Self::read(&pid.to_string())
    }

    pub(super) fn take_self() -> Self {
        Self::read("self")
    }

    fn read(pid: &str) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        // utime and stime are fields 14 and 15, in clock ticks (100 per
        // second on Linux); the command name before them may hold spaces.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ticks: u64 = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|v| v.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        ProcSample {
            rss_kib,
            cpu_secs: ticks as f64 / 100.0,
        }
    }
}
