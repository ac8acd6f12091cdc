//! The audit log part of the store suite, run against both backends by
//! `both!` in `tests/store.rs`: the chain, the queries, the timestamps.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::Duration;
use serde_json::json;
use switchboard::audit::{AuditRecord, NewAudit, kind};
use switchboard::auth::User;
use switchboard::event::now;
use switchboard::rbac::Role;
use switchboard::runtime::audit::verify_store;
use switchboard::session::Session;
use switchboard::store::{AuditQuery, Store};
use uuid::Uuid;

use super::fixtures::{insert, one, task};

/// Audit records chain across every kind of write, are queried newest
/// first with filters, and verify; the log refuses updates and deletes.
pub async fn audit_chain_appends_queries_and_verifies(store: Arc<dyn Store>) {
    let record = |t: &'static str, user: &str| {
        NewAudit::by(None, t, "act")
            .for_user(user)
            .detail("n", 1.5)
            .detail("nested", json!({"b": [1, "two"], "a": null}))
    };
    let u = User::new("a", [Role::Admin].into(), now());
    store
        .create_user(&u, "h", vec![record(kind::USER_CREATED, "a")])
        .await
        .unwrap();
    let s = Session::new("a", None, BTreeSet::new(), false, now());
    store
        .create_session(
            &s,
            vec![record(kind::SESSION_CREATED, "a").session(s.session_id)],
        )
        .await
        .unwrap();
    store
        .audit(vec![
            record(kind::AUTH_FAILED, "b"),
            record(kind::PERMISSION_DENIED, "b"),
        ])
        .await
        .unwrap();
    one(&store, insert(&task(&s, "echo", None))).await.unwrap();
    assert_eq!(store.audit_last_seq().await.unwrap(), 5);

    let all = store.audit_after(0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    for pair in all.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    assert_eq!(
        all[0].details["nested"],
        json!({"a": null, "b": [1, "two"]})
    );
    let v = verify_store(store.as_ref()).await.unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.checked, 5);
    assert_eq!(v.head, all[4].hash);

    let q = AuditQuery {
        user_id: Some("b".into()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(seqs(&store, &q).await, [4, 3]);
    let q = AuditQuery {
        session_id: Some(s.session_id),
        event_type: Some(kind::SESSION_CREATED.into()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(store.audit_query(&q).await.unwrap().len(), 1);
    let q = AuditQuery {
        before_seq: Some(3),
        since: Some(all[0].timestamp),
        until: Some(now() + Duration::seconds(1)),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(seqs(&store, &q).await, [2, 1]);
    assert_eq!(store.audit_after(3, 1).await.unwrap()[0].seq, 4);
}

/// The seqs of the records `q` finds, in the order found.
async fn seqs(store: &Arc<dyn Store>, q: &AuditQuery) -> Vec<i64> {
    let found = store.audit_query(q).await.unwrap();
    found.iter().map(|r| r.seq).collect()
}

/// Timestamps come back exactly as written, to the microsecond (audit
/// hashes cover them).
pub async fn timestamps_round_trip_at_microseconds(store: Arc<dyn Store>) {
    let at = chrono::DateTime::from_timestamp_micros(1_763_000_000_123_457).unwrap();
    let mut u = User::new("t", [Role::Guest].into(), at);
    u.created_at = at;
    store.create_user(&u, "h", vec![]).await.unwrap();
    assert_eq!(store.get_user("t").await.unwrap().unwrap().created_at, at);
    let mut r = NewAudit::by(None, kind::USER_CREATED, "x");
    r.timestamp = at;
    store.audit(vec![r]).await.unwrap();
    let stored = store.audit_after(0, 1).await.unwrap().remove(0);
    assert_eq!(stored.timestamp, at);
    assert_eq!(stored.compute_hash(), stored.hash);
}

/// More records than SQLite leaves without lookup keys (so that some are
/// found through the keys and some by the scan of the newest), paged
/// newest first by each key (every record is some user's), by two at once
/// and from a cursor: the pages together hold exactly the matching
/// records, in order, none twice.
pub async fn audit_pages_by_every_key(store: Arc<dyn Store>) {
    let sessions = [Uuid::now_v7(), Uuid::now_v7()];
    let types = [
        kind::AUTH_FAILED,
        kind::PERMISSION_DENIED,
        kind::USER_CREATED,
    ];
    let records = switchboard::store::sqlite::AUDIT_KEYS_MAX_TAIL as usize + 904;
    for chunk in 0..records / 100 {
        let records = (0..100).map(|i| {
            let n = chunk * 100 + i;
            let r = NewAudit::by(None, types[(n / 7) % 3], "act").for_user(&format!("u{}", n % 3));
            if n % 5 == 0 {
                r
            } else {
                r.session(sessions[n % 2])
            }
        });
        store.audit(records.collect()).await.unwrap();
    }
    let all = store.audit_after(0, 10_000).await.unwrap();
    assert_eq!(all.len(), records);
    let by = |f: fn(&mut AuditQuery)| {
        let mut q = AuditQuery::default();
        f(&mut q);
        q
    };
    let s0 = sessions[0];
    let queries = [
        AuditQuery {
            session_id: Some(s0),
            ..Default::default()
        },
        by(|q| q.user_id = Some("u0".into())),
        by(|q| q.user_id = Some("u1".into())),
        by(|q| q.user_id = Some("u2".into())),
        by(|q| q.event_type = Some(kind::PERMISSION_DENIED.into())),
        by(|q| {
            q.user_id = Some("u2".into());
            q.event_type = Some(kind::USER_CREATED.into());
        }),
        AuditQuery {
            session_id: Some(s0),
            user_id: Some("u0".into()),
            before_seq: Some(2000),
            ..Default::default()
        },
    ];
    for q in queries {
        let expected: Vec<i64> = all
            .iter()
            .rev()
            .filter(|r| matches(&q, r))
            .map(|r| r.seq)
            .collect();
        assert!(expected.len() > 100, "{q:?}");
        let mut page = AuditQuery {
            limit: 97,
            ..q.clone()
        };
        let mut got = Vec::new();
        loop {
            let found = seqs(&store, &page).await;
            let Some(&last) = found.last() else { break };
            page.before_seq = Some(last);
            got.extend(found);
        }
        assert_eq!(got, expected, "{q:?}");
    }
}

/// Whether `r` matches the filters of `q` that the test above uses.
fn matches(q: &AuditQuery, r: &AuditRecord) -> bool {
    q.session_id.is_none_or(|s| r.session_id == Some(s))
        && q.user_id
            .as_ref()
            .is_none_or(|u| r.user_id.as_ref() == Some(u))
        && q.event_type.as_ref().is_none_or(|t| &r.event_type == t)
        && q.before_seq.is_none_or(|b| r.seq < b)
}
