//! What the durability tests share: users to submit as, keyed submits that
//! retry until a node acknowledges, and the checks of what a PostgreSQL
//! database holds afterwards.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

use super::{ADMIN_TOKEN, http, send};

/// What a client was told: the task of a key, and the prompt it sent.
#[derive(Debug, Clone)]
pub struct Acked {
    pub key: String,
    pub task_id: String,
    pub prompt: String,
}

/// `n` developers named `<prefix>-<i>@test`; their tokens.
pub async fn developers(base: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    for i in 0..n {
        let (status, body) = send(
            http()
                .post(format!("{base}/api/admin/users"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"user_id": format!("{prefix}-{i}@test"), "roles": ["developer"]})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        tokens.push(body["token"].as_str().unwrap().to_owned());
    }
    tokens
}

/// Submit `body` as `token` until a node acknowledges it, starting at node
/// `first` of `bases` and moving on after each failure. HTTP refusals are
/// recorded in `refusals`. The task id and how many tries it took.
pub async fn submit_until_acked(
    bases: &[String],
    first: usize,
    token: &str,
    body: &Value,
    refusals: &Mutex<Vec<(u16, Value)>>,
) -> (String, usize) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for tries in 1.. {
        let url = format!(
            "{}/api/runtime/tasks/submit",
            bases[(first + tries) % bases.len()]
        );
        if let Ok(resp) = client.post(url).bearer_auth(token).json(body).send().await {
            let status = resp.status().as_u16();
            let reply: Value = resp.json().await.unwrap_or(Value::Null);
            if status == 200 {
                return (reply["task_id"].as_str().unwrap().to_owned(), tries);
            }
            refusals.lock().unwrap().push((status, reply));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

/// What a PostgreSQL database holds: every acknowledged task with its exact
/// prompt and key (0 lost), exactly `tasks` keyed tasks (0 duplicates), and
/// every session's events 1..N.
pub async fn check_postgres(url: &str, acked: &[Acked], tasks: usize) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    for a in acked {
        let id: uuid::Uuid = a.task_id.parse().unwrap();
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT prompt, idempotency_key FROM tasks WHERE task_id = $1")
                .bind(id)
                .fetch_optional(&pool)
                .await
                .unwrap();
        let (prompt, key) = row.unwrap_or_else(|| panic!("acknowledged task {id} is lost"));
        assert!(
            prompt == a.prompt && key.as_deref() == Some(a.key.as_str()),
            "task {id} does not hold what was sent"
        );
    }
    let (count, keys): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT user_id || ' ' || idempotency_key) FROM tasks \
         WHERE idempotency_key IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((count, keys), (tasks as i64, count));
    let gaps: Vec<(uuid::Uuid, i64, i64)> = sqlx::query_as(
        "SELECT session_id, COUNT(*), MAX(seq) FROM events GROUP BY session_id \
         HAVING MIN(seq) <> 1 OR MAX(seq) <> COUNT(*)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(gaps.is_empty(), "sessions with a gap: {gaps:?}");
    pool.close().await;
}

/// Every session's events in a SQLite file are 1..N.
pub fn check_sqlite_streams(conn: &rusqlite::Connection) {
    let mut sessions = conn.prepare("SELECT sid FROM sessions").unwrap();
    let sids: Vec<i64> = sessions
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for sid in sids {
        let mut q = conn
            .prepare("SELECT seq FROM events WHERE sid = ? ORDER BY seq")
            .unwrap();
        let seqs: Vec<i64> = q
            .query_map([sid], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, expected, "session {sid} has a gap or a duplicate");
    }
}
