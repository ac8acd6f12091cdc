//! Claims of single submitted tasks, committed together.
//!
//! A task submitted while its agent has no free slot on this node is stored
//! unclaimed (any node with the agent may take it) and then claimed by this
//! node, to run when a slot frees up. At a thousand submits a second, one
//! transaction per claim is a thousand WAL flushes a second competing with
//! the append batches; here every claim queued while the previous one
//! commits shares one statement and one commit (the group commit of
//! [`crate::store::writer`], for claims).
//!
//! Rows are locked in task id order, as every writer does
//! ([`super::lock`]), so that claims and append batches cannot deadlock.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Most claims committed in one statement.
const MAX_CLAIMS: usize = 1024;
/// Most claims waiting for the committer.
const QUEUE: usize = 4096;

/// One claim: the task, who claims it for how long, and who waits.
struct Claim {
    task_id: Uuid,
    node_id: String,
    lease: Duration,
    done: oneshot::Sender<Result<bool>>,
}

/// The queue into the claim committer; cheap to clone. The committer ends
/// when every handle is dropped.
#[derive(Clone)]
pub(super) struct Claims(mpsc::Sender<Claim>);

impl Claims {
    /// Start the committer on `pool`.
    pub(super) fn spawn(pool: PgPool) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, rx));
        Claims(tx)
    }

    /// Claim `task_id` for `node_id` if it is still pending and unclaimed;
    /// whether it was.
    pub(super) async fn claim(
        &self,
        task_id: Uuid,
        node_id: &str,
        lease: Duration,
    ) -> Result<bool> {
        let (done, answer) = oneshot::channel();
        let claim = Claim {
            task_id,
            node_id: node_id.to_owned(),
            lease,
            done,
        };
        self.0.send(claim).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

fn gone() -> Error {
    Error::Unavailable("the node is shutting down".into())
}

async fn run(pool: PgPool, mut rx: mpsc::Receiver<Claim>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, MAX_CLAIMS).await > 0 {
        // Claims by one node and lease (in practice, all of them) share a
        // statement.
        while !batch.is_empty() {
            let (node_id, lease) = (batch[0].node_id.clone(), batch[0].lease);
            let (same, rest): (Vec<_>, Vec<_>) = batch
                .drain(..)
                .partition(|c| c.node_id == node_id && c.lease == lease);
            batch = rest;
            commit(&pool, same, &node_id, lease).await;
        }
    }
}

/// Claim `claims` in one statement and answer each.
async fn commit(pool: &PgPool, claims: Vec<Claim>, node_id: &str, lease: Duration) {
    let mut ids: Vec<Uuid> = claims.iter().map(|c| c.task_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let claimed: Result<Vec<Uuid>> = sqlx::query_scalar(CLAIM)
        .bind(&ids)
        .bind(node_id)
        .bind(lease.as_secs_f64())
        .fetch_all(pool)
        .await
        .map_err(Error::from);
    match claimed {
        Ok(claimed) => {
            let claimed: HashSet<Uuid> = claimed.into_iter().collect();
            for c in claims {
                let _ = c.done.send(Ok(claimed.contains(&c.task_id)));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not claim submitted tasks");
            for c in claims {
                let _ = c
                    .done
                    .send(Err(Error::Unavailable("could not claim the task".into())));
            }
        }
    }
}

/// Claim the pending, unclaimed tasks among `$1`, locking them in id order.
const CLAIM: &str = "UPDATE tasks SET node_id = $2, lease_until = now() + make_interval(secs => $3) \
    WHERE task_id IN (SELECT task_id FROM tasks WHERE task_id = ANY($1) AND node_id IS NULL \
    AND state = 'pending' ORDER BY task_id FOR UPDATE) RETURNING task_id";
