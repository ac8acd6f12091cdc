//! Stream events: what is stored per session and delivered live, in `seq` order.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::task::TaskState;

/// A stream a client can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKey {
    /// `session:<id>`: the task events of one session.
    Session(Uuid),
    /// `audit`: the audit log.
    Audit,
    /// `tasks`: the state changes of every task on every session, live only
    /// (an operator's wall screen). Its events name their session and that
    /// session's seq; it has no seq of its own and no replay.
    Tasks,
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamKey::Session(id) => write!(f, "session:{id}"),
            StreamKey::Audit => f.write_str("audit"),
            StreamKey::Tasks => f.write_str("tasks"),
        }
    }
}

impl FromStr for StreamKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "audit" => return Ok(StreamKey::Audit),
            "tasks" => return Ok(StreamKey::Tasks),
            _ => {}
        }
        s.strip_prefix("session:")
            .and_then(|id| Uuid::parse_str(id).ok())
            .map(StreamKey::Session)
            .ok_or_else(|| {
                format!("unknown stream `{s}`: expected `session:<uuid>`, `audit` or `tasks`")
            })
    }
}

/// What happened, as carried in an event's `type` and `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum EventBody {
    /// A task changed state.
    #[serde(rename = "task.state")]
    State(StateChange),
    /// A task produced output.
    #[serde(rename = "task.output")]
    Output(OutputChunk),
}

impl EventBody {
    /// The `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventBody::State(_) => "task.state",
            EventBody::Output(_) => "task.output",
        }
    }
}

/// `data` of a `task.state` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StateChange {
    /// The new state.
    pub state: TaskState,
    /// The state before; `null` for the first (`pending`) event.
    pub prev_state: Option<TaskState>,
    /// Why, for people.
    pub message: String,
    /// The agent, on the first event of a task, so live views can show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
}

/// `data` of a `task.output` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OutputChunk {
    /// A piece of the agent's output, in order.
    pub chunk: String,
}

/// One stored event of a session stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// The session whose stream it belongs to.
    pub session_id: Uuid,
    /// Its position in that stream: 1, 2, 3, ... without gaps.
    pub seq: i64,
    /// The task it concerns.
    pub task_id: Uuid,
    /// When it was stored.
    pub at: DateTime<Utc>,
    /// What happened.
    pub body: EventBody,
}

/// The current time, truncated to microseconds so that it survives a round
/// trip through either store unchanged (audit hashes depend on that).
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// RFC 3339 UTC with microseconds, the one text form of our timestamps.
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    let buf = rfc3339_bytes(t);
    String::from_utf8_lossy(&buf).into_owned()
}

/// [`rfc3339`] as bytes, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, written by hand:
/// chrono's general formatter cost several percent of the writer thread,
/// which formats a timestamp for every event it publishes.
pub fn rfc3339_bytes(t: &DateTime<Utc>) -> [u8; 27] {
    use chrono::{Datelike, Timelike};
    fn put(buf: &mut [u8], mut n: u32) {
        for b in buf.iter_mut().rev() {
            *b = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    put(&mut b[0..4], t.year().clamp(0, 9999) as u32);
    put(&mut b[5..7], t.month());
    put(&mut b[8..10], t.day());
    put(&mut b[11..13], t.hour());
    put(&mut b[14..16], t.minute());
    put(&mut b[17..19], t.second());
    put(&mut b[20..26], t.timestamp_subsec_micros().min(999_999));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stream names round-trip and junk is refused.
    #[test]
    fn stream_keys_parse() {
        let id = Uuid::new_v4();
        let key: StreamKey = format!("session:{id}").parse().unwrap();
        assert_eq!(key, StreamKey::Session(id));
        assert_eq!(key.to_string(), format!("session:{id}"));
        assert_eq!("audit".parse::<StreamKey>().unwrap(), StreamKey::Audit);
        assert!("session:nope".parse::<StreamKey>().is_err());
        assert_eq!("tasks".parse::<StreamKey>().unwrap(), StreamKey::Tasks);
        assert!("task".parse::<StreamKey>().is_err());
    }

    /// The hand-written formatter agrees with chrono's.
    #[test]
    fn timestamps_format_like_chrono() {
        for micros in [
            0i64,
            1_700_000_000_123_456,
            951_782_400_000_001,
            253_402_300_799_999_999,
        ] {
            let t = DateTime::from_timestamp_micros(micros).unwrap();
            assert_eq!(
                rfc3339(&t),
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            );
        }
    }

    /// Bodies serialize as `type` + `data`.
    #[test]
    fn bodies_have_type_and_data() {
        let body = EventBody::Output(OutputChunk { chunk: "hi".into() });
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"task.output","data":{"chunk":"hi"}})
        );
    }
}
