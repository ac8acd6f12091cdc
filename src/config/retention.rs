//! `[retention]`: how long the node keeps what it stores (CONTRACT
//! section 10). Every field is optional; an absent one keeps that kind of
//! data forever, and without the table nothing is ever removed.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// How often the pruner runs when `prune_every` is not given.
pub const DEFAULT_PRUNE_EVERY: Duration = Duration::from_secs(600);

/// `[retention]` of the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Stream events of tasks that ended longer ago than this.
    pub events: Option<Window>,
    /// Finished tasks (their row, result and remaining events) that ended
    /// longer ago than this.
    pub tasks: Option<Window>,
    /// Audit records older than this, and only those before the newest
    /// signed checkpoint old enough.
    pub audit: Option<Window>,
    /// Ended or idle sessions with no task left, inactive for this long.
    pub sessions_idle: Option<Window>,
    /// How often the pruner runs (default 10 minutes).
    pub prune_every: Option<Window>,
}

impl RetentionConfig {
    /// Whether anything is to be removed at all.
    pub fn enabled(&self) -> bool {
        self.events.is_some()
            || self.tasks.is_some()
            || self.audit.is_some()
            || self.sessions_idle.is_some()
    }

    /// The pause between two runs of the pruner.
    pub fn every(&self) -> Duration {
        self.prune_every.map_or(DEFAULT_PRUNE_EVERY, |w| w.0)
    }

    /// How long stream events are kept after their task ended: the shorter
    /// of `events` and `tasks` (removing a task removes its events).
    pub fn events_window(&self) -> Option<Duration> {
        match (self.events, self.tasks) {
            (Some(e), Some(t)) => Some(e.0.min(t.0)),
            (e, t) => e.or(t).map(|w| w.0),
        }
    }
}

/// A duration written `"10s"`, `"15m"`, `"12h"` or `"30d"`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Window(pub Duration);

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs())
    }
}

impl std::str::FromStr for Window {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{text}` is not a duration: write a whole number and a unit, \
                 like \"10s\", \"15m\", \"12h\" or \"30d\""
            )
        };
        let t = text.trim();
        let unit = t.chars().last().ok_or_else(bad)?;
        let secs: u64 = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = t[..t.len() - 1].parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(format!(
                "`{text}` is zero: leave the field out to keep forever"
            ));
        }
        let total = n.checked_mul(secs).ok_or_else(bad)?;
        Ok(Window(Duration::from_secs(total)))
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;

    /// Every unit parses; anything else is a clear error naming the line.
    #[test]
    fn durations_parse_and_bad_ones_are_named() {
        let w = |s: &str| s.parse::<Window>().map(|w| w.0.as_secs());
        assert_eq!(w("10s"), Ok(10));
        assert_eq!(w("15m"), Ok(900));
        assert_eq!(w("12h"), Ok(43_200));
        assert_eq!(w("30d"), Ok(2_592_000));
        for bad in ["", "10", "10x", "1.5h", "-3d", "d", "0s"] {
            assert!(w(bad).is_err(), "{bad} parsed");
        }
        let e = FileConfig::parse("[retention]\nevents = \"30 days\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("not a duration"), "{e}");
        let e = FileConfig::parse("[retention]\nevent = \"30d\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    /// Without the table nothing is pruned; `prune_every` defaults to 10 minutes.
    #[test]
    fn absent_means_forever() {
        let none = FileConfig::parse("").unwrap().retention;
        assert!(!none.enabled());
        let some = FileConfig::parse("[retention]\nevents = \"1d\"\ntasks = \"12h\"\n")
            .unwrap()
            .retention;
        assert!(some.enabled());
        assert_eq!(some.every(), DEFAULT_PRUNE_EVERY);
        assert_eq!(some.events_window(), Some(Duration::from_secs(43_200)));
        let only_every = FileConfig::parse("[retention]\nprune_every = \"1s\"\n")
            .unwrap()
            .retention;
        assert!(!only_every.enabled());
    }
}
