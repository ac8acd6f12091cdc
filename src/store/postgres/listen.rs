//! The notification listener of one node: stored events of every node
//! reach the local bus, and signals (pending work, control) reach the
//! engine.
//!
//! Notifications are transient: those sent while the connection is down are
//! lost. So after every reconnect the listener republishes, for each stream
//! someone here subscribes to, the newest stored events; a subscriber's
//! [`crate::bus::Cursor`] sees the gap and reads the rest from the store.
//! That also wakes a subscriber that waits with no further events coming.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use super::{CONTROL_CHANNEL, EVENTS_CHANNEL, PostgresStore, TASKS_CHANNEL, notify};
use crate::bus::Backlog;
use crate::event::StreamKey;
use crate::protocol::ws::tasks_lagged_frame;
use crate::store::Signal;

/// Most events republished per stream after a reconnect.
const CATCH_UP: i64 = 64;
/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The `application_name` of a node's listener connection, so operators (and
/// tests) can find it in `pg_stat_activity`.
pub fn listener_application_name(node_id: &str) -> String {
    // PostgreSQL truncates application names at 63 bytes.
    let mut name = format!("switchboard-listener {node_id}");
    name.truncate(63);
    name
}

impl PostgresStore {
    /// Listen until `stop` fires, reconnecting whenever the connection drops.
    pub(super) async fn listen(self, node_id: String, stop: CancellationToken) {
        let app = listener_application_name(&node_id);
        let mut backoff = Duration::from_millis(50);
        let mut connected_before = false;
        loop {
            let connect = async {
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect_with(self.options.clone().application_name(&app))
                    .await?;
                let mut listener = PgListener::connect_with(&pool).await?;
                listener
                    .listen_all([EVENTS_CHANNEL, TASKS_CHANNEL, CONTROL_CHANNEL])
                    .await?;
                Ok::<_, sqlx::Error>((pool, listener))
            };
            let connected = tokio::select! {
                c = connect => c,
                _ = stop.cancelled() => return,
            };
            let (pool, mut listener) = match connected {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "notification listener cannot connect; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            if connected_before {
                tracing::info!("notification listener reconnected; catching up from the store");
                self.catch_up().await;
                let _ = self.signals.send(Signal::Reconnected);
            }
            connected_before = true;
            loop {
                let next = tokio::select! {
                    n = listener.try_recv() => n,
                    _ = stop.cancelled() => return,
                };
                match next {
                    Ok(Some(n)) => self.on_notification(n.channel(), n.payload()).await,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "notification connection lost");
                        break;
                    }
                }
            }
            drop(listener);
            pool.close().await;
            metrics::counter!("switchboard_listener_reconnects_total").increment(1);
        }
    }

    /// Handle one notification.
    async fn on_notification(&self, channel: &str, payload: &str) {
        match channel {
            EVENTS_CHANNEL => {
                for (key, from, to) in notify::parse(payload) {
                    if let Err(e) = self.publish_range(key, from, to).await {
                        tracing::warn!(error = %e, stream = %key, "could not read notified events");
                    }
                }
            }
            TASKS_CHANNEL => {
                let _ = self.signals.send(Signal::Pending {
                    agent_type: payload.to_owned(),
                });
            }
            CONTROL_CHANNEL => match serde_json::from_str::<Signal>(payload) {
                Ok(signal) => {
                    let _ = self.signals.send(signal);
                }
                Err(e) => tracing::warn!(error = %e, "unreadable control notification"),
            },
            _ => {}
        }
    }

    /// Publish the stored events `from..=to` of `key` not yet published here.
    async fn publish_range(&self, key: StreamKey, from: i64, to: i64) -> crate::error::Result<()> {
        if !self.fanout.listened(key) {
            return Ok(());
        }
        let after = match self.fanout.last(&key) {
            Some(last) if last >= to => return Ok(()),
            Some(last) if last >= from - 1 => last,
            _ => from - 1,
        };
        self.publish_after(key, after, to - after).await
    }

    /// Read up to `limit` stored events of `key` after `after` and publish them.
    async fn publish_after(
        &self,
        key: StreamKey,
        after: i64,
        limit: i64,
    ) -> crate::error::Result<()> {
        if let StreamKey::Session(id) = key {
            let events = self.events_after(id, after, limit.max(1)).await?;
            self.fanout.publish(&events, &[]);
            return Ok(());
        }
        for d in self.stored_after(key, after, limit.max(1)).await? {
            if self.fanout.claim(key, d.seq) {
                self.fanout.bus.publish(key, d.seq, || d.frame.clone());
            }
        }
        Ok(())
    }

    /// After a reconnect: republish the newest events of every stream with
    /// local subscribers.
    async fn catch_up(&self) {
        self.fanout
            .bus
            .publish(StreamKey::Tasks, 0, tasks_lagged_frame);
        for key in self.fanout.bus.keys() {
            if !self.fanout.bus.has_subscribers(&key) {
                continue;
            }
            let newest = match key {
                StreamKey::Tasks => continue, // live only: its subscribers reload
                StreamKey::Session(id) => self
                    .get_session(id)
                    .await
                    .map(|s| s.map_or(0, |s| s.last_seq)),
                StreamKey::Audit => self.audit_last_seq().await,
            };
            let newest = match newest {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, stream = %key, "catch-up failed");
                    continue;
                }
            };
            let after = match self.fanout.last(&key) {
                Some(last) => last.max(newest - CATCH_UP),
                None => newest - 1,
            }
            .max(0);
            if newest > after {
                if let Err(e) = self.publish_after(key, after, newest - after).await {
                    tracing::warn!(error = %e, stream = %key, "catch-up failed");
                }
            }
        }
    }
}
