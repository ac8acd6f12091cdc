//! Local publishing of committed events, once per seq.

use std::sync::Arc;

use dashmap::DashMap;

use crate::audit::AuditRecord;
use crate::bus::Bus;
use crate::event::{EventBody, StoredEvent, StreamKey};
use crate::protocol::ws::{audit_event_frame, event_data, publish_session_event};

/// Publishes stored events to the local bus at most once per seq, whether
/// they come from this node's commits or from another node's notification.
pub(crate) struct Fanout {
    /// The node's bus.
    pub(super) bus: Arc<Bus>,
    /// The highest seq published per stream.
    published: DashMap<StreamKey, i64>,
}

impl Fanout {
    /// A fanout onto `bus`, nothing published yet.
    pub(super) fn new(bus: Arc<Bus>) -> Self {
        Fanout {
            bus,
            published: DashMap::new(),
        }
    }

    /// Claim `seq` of `key` for publishing; false when it already was.
    pub(super) fn claim(&self, key: StreamKey, seq: i64) -> bool {
        let mut last = self.published.entry(key).or_insert(0);
        if seq <= *last {
            return false;
        }
        *last = seq;
        true
    }

    /// Whether anyone on this node listens to `key`'s events: its own
    /// subscribers, or for a session those of the `tasks` stream.
    pub(super) fn listened(&self, key: StreamKey) -> bool {
        self.bus.has_subscribers(&key)
            || (matches!(key, StreamKey::Session(_)) && self.bus.has_subscribers(&StreamKey::Tasks))
    }

    /// The highest seq published for `key`, if any.
    pub(super) fn last(&self, key: &StreamKey) -> Option<i64> {
        self.published.get(key).map(|s| *s)
    }

    /// Publish committed events and audit records not yet published.
    pub(super) fn publish(&self, events: &[StoredEvent], audit: &[AuditRecord]) {
        let tasks = self.bus.has_subscribers(&StreamKey::Tasks);
        for e in events {
            let key = StreamKey::Session(e.session_id);
            let state = tasks && matches!(e.body, EventBody::State(_));
            if (state || self.bus.has_subscribers(&key)) && self.claim(key, e.seq) {
                publish_session_event(&self.bus, e, &event_data(e));
            }
        }
        for r in audit {
            if self.bus.has_subscribers(&StreamKey::Audit) && self.claim(StreamKey::Audit, r.seq) {
                self.bus
                    .publish(StreamKey::Audit, r.seq, || audit_event_frame(r));
            }
        }
    }
}
