//! The link protocol (`GET /link`): the frames between a node and a remote
//! agent host (`switchboard link`). `protocol/link.md` describes them for
//! people, with a full example exchange; `protocol/schema/link-*.json` are
//! generated from these types.
//!
//! Every frame is a JSON text frame with an `op`. The host speaks first
//! (`hello`); the node answers `welcome` or `error` (and closes). Then the
//! node sends `run`, `cancel`, `answer` and `ack`; the host sends `report`
//! and, when it leaves on purpose, `bye`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The version of the link protocol `welcome` answers with.
pub const LINK_PROTOCOL: u32 = 1;

/// One agent a host offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Offer {
    /// The name clients submit to (the host's config `name`).
    pub agent_type: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// Skills it provides.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// At most this many of its tasks run on the host at once (default 64).
    #[serde(default = "default_max")]
    pub max_concurrent: usize,
    /// Its kind on the host (`command`, `echo`, `openai`, ...).
    #[serde(default)]
    pub kind: String,
    /// When set, only users with one of these roles may submit to it.
    #[serde(default)]
    pub allowed_roles: Option<Vec<String>>,
}

fn default_max() -> usize {
    crate::agent::DEFAULT_MAX_CONCURRENT
}

#[cfg(test)]
impl Offer {
    /// An `echo`-kind offer of `agent_type`, at most `max_concurrent` at
    /// once, described by nothing else (for tests).
    pub(crate) fn echo(agent_type: &str, max_concurrent: usize) -> Offer {
        Offer {
            agent_type: agent_type.into(),
            description: String::new(),
            capabilities: Vec::new(),
            max_concurrent,
            kind: "echo".into(),
            allowed_roles: None,
        }
    }
}

/// A frame from the host.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HostFrame {
    /// The first frame: who the host is and what it offers.
    Hello(LinkHello),
    /// Something that happened to a task the node gave this host.
    Report(Report),
    /// The host is leaving on purpose (Ctrl-C): its unfinished tasks fail
    /// at once rather than after the grace period.
    Bye {},
}

/// `hello` fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LinkHello {
    /// A token whose user holds `agent:configure` (or the `Authorization`
    /// header of the upgrade).
    #[serde(default)]
    pub token: Option<String>,
    /// The host's name, unique among linked hosts: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// The host's device id (`host-<name>` by `switchboard link`).
    #[serde(default)]
    pub device_id: Option<String>,
    /// A nonce from `POST /api/devices/challenge`.
    #[serde(default)]
    pub device_nonce: Option<String>,
    /// Hex Ed25519 signature of the device proof message over that nonce.
    #[serde(default)]
    pub device_signature: Option<String>,
    /// The agents it offers.
    pub agents: Vec<Offer>,
    /// Tasks the host is still running from an earlier link (after a
    /// reconnect): the node says in `welcome` which of them it still wants.
    #[serde(default)]
    pub running: Vec<Uuid>,
}

/// What a host reports about one task. `n` numbers the reports of a task
/// from 1, without gaps; the node stores each once and acks it by number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Report {
    /// The task (one the node sent this host in `run`).
    pub task_id: Uuid,
    /// The report's number within the task: 1, 2, 3, ...
    pub n: u64,
    /// What happened.
    #[serde(flatten)]
    pub body: ReportBody,
}

/// The content of a report, by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReportBody {
    /// A chunk of output.
    Output {
        /// The text.
        chunk: String,
    },
    /// The agent waits for a person (approval or input): the task enters
    /// `waiting` with this message; the answer comes back as `answer`.
    Wait {
        /// What the person is asked.
        message: String,
    },
    /// The agent completed.
    Completed {
        /// The result.
        result: String,
    },
    /// The agent failed (or was stopped on the host).
    Failed {
        /// Why.
        error: String,
    },
}

impl ReportBody {
    /// Whether this report ends the task.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            ReportBody::Completed { .. } | ReportBody::Failed { .. }
        )
    }
}

/// A frame from the node.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum NodeFrame {
    /// The link is up.
    Welcome(Welcome),
    /// Run a task.
    Run(RunTask),
    /// Stop a task (cancelled, timed out, denied, or the node is stopping).
    Cancel {
        /// The task.
        task_id: Uuid,
        /// Why, for the host's log.
        reason: String,
    },
    /// A person's answer to a task that reported `wait`.
    Answer {
        /// The task.
        task_id: Uuid,
        /// Go on (true) or stop (false).
        approve: bool,
        /// Text for the agent.
        #[serde(default)]
        input: Option<String>,
    },
    /// Reports of a task up to `n` are stored: the host may forget them.
    Ack {
        /// The task.
        task_id: Uuid,
        /// The highest stored report number.
        n: u64,
    },
    /// A frame was refused. The link stays up unless a close follows.
    Error {
        /// The task the refused frame named, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_id: Option<Uuid>,
        /// What was wrong.
        error: LinkError,
    },
}

/// An error as the link carries it: `{"code","message"}`, the codes of
/// the REST API plus [`UNTRUSTED_CODE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LinkError {
    /// Stable snake_case code.
    pub code: String,
    /// A sentence for people.
    pub message: String,
}

impl From<&crate::error::Error> for LinkError {
    fn from(e: &crate::error::Error) -> Self {
        LinkError {
            code: e.code().to_owned(),
            message: e.to_string(),
        }
    }
}

/// `welcome` fields.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Welcome {
    /// The host's name.
    pub host: String,
    /// The user the token belongs to.
    pub user_id: String,
    /// The node it linked to.
    pub node_id: String,
    /// A host that loses the link keeps running its tasks for this long;
    /// relinking within it resumes them.
    pub grace_ms: u64,
    /// The node pings this often; a node silent for two periods is gone.
    pub heartbeat_ms: u64,
    /// The largest frame the node accepts.
    pub max_message_bytes: usize,
    /// Of the tasks the host said it runs, those the node still expects,
    /// each with the highest report number it has stored. The host resends
    /// what it reported after that and stops every other task it runs.
    pub resume: Vec<Resume>,
    /// [`LINK_PROTOCOL`].
    pub protocol: u32,
}

/// A task the node still expects from a relinking host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Resume {
    /// The task.
    pub task_id: Uuid,
    /// The highest report number stored (0: none).
    pub acked: u64,
}

/// `run` fields.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunTask {
    /// The task.
    pub task_id: Uuid,
    /// One of the agents the host offered.
    pub agent_type: String,
    /// The prompt.
    pub prompt: String,
    /// The submitter's parameters.
    #[serde(default)]
    pub params: Value,
    /// The submitter's context.
    #[serde(default)]
    pub context: Value,
}

/// Close codes of the link, besides the WebSocket ones (1001 going away,
/// 1009 too big).
pub mod close {
    /// The node is shutting down, or the host stopped answering pings.
    pub const GOING_AWAY: u16 = 1001;
    /// No valid token: do not retry with it.
    pub const UNAUTHORIZED: u16 = 4401;
    /// The token's user may not link hosts (`agent:configure`), or the
    /// device is revoked: do not retry.
    pub const FORBIDDEN: u16 = 4403;
    /// The device waits for an admin's approval (`device_trust = "require"`):
    /// retry later.
    pub const UNTRUSTED: u16 = 4412;
    /// No `hello` in time.
    pub const HELLO_TIMEOUT: u16 = 4408;
    /// Another connection took this host's place, or the host could not
    /// keep up with the node's frames.
    pub const REPLACED: u16 = 4409;
    /// Too many frames a second.
    pub const FLOOD: u16 = 4429;
    /// A bad `hello`.
    pub const BAD_HELLO: u16 = 4400;
}

/// The error code of the `error` frame sent to a host whose device waits
/// for approval.
pub const UNTRUSTED_CODE: &str = "device_untrusted";

/// Parse a host frame; junk is a `bad_request` with a readable message.
pub fn parse_host_frame(text: &str) -> Result<HostFrame, crate::error::Error> {
    serde_json::from_str(text)
        .map_err(|e| crate::error::Error::BadRequest(format!("bad link frame: {e}")))
}

/// Schema-only wrappers, for `protocol/schema/link-*.json`.
pub mod schema {
    use super::{HostFrame, NodeFrame};

    /// Every link frame schema, by file name under `protocol/schema/`.
    pub fn all() -> Vec<(&'static str, serde_json::Value)> {
        fn of<T: schemars::JsonSchema>() -> serde_json::Value {
            serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default()
        }
        vec![
            ("link-host-frame.json", of::<HostFrame>()),
            ("link-node-frame.json", of::<NodeFrame>()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Reports round-trip with their flattened `type`.
    #[test]
    fn reports_round_trip() {
        let text = r#"{"op":"report","task_id":"6f1c1a0e-7d7e-4c1e-9f43-2a4d8f7f0e11","n":3,"type":"output","chunk":"hi"}"#;
        let HostFrame::Report(r) = parse_host_frame(text).unwrap() else {
            panic!("not a report");
        };
        assert_eq!(r.n, 3);
        assert_eq!(r.body, ReportBody::Output { chunk: "hi".into() });
        let back = serde_json::to_value(HostFrame::Report(r)).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(text).unwrap());
    }

    /// Junk is a bad request, never a panic.
    #[test]
    fn junk_is_refused() {
        for text in [
            "",
            "[]",
            "{}",
            r#"{"op":"fly"}"#,
            r#"{"op":"report","n":1}"#,
        ] {
            let e = parse_host_frame(text).unwrap_err();
            assert_eq!(e.code(), "bad_request", "{text}");
        }
        let ok = parse_host_frame(&json!({"op":"hello","name":"h","agents":[]}).to_string());
        assert!(ok.is_ok());
    }
}
