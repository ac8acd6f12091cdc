//! One op, one runtime call, one result. Ops that change the connection
//! itself (`hello`, `subscribe`, `unsubscribe`, `ping`) are handled by the
//! connection loop; everything else comes here.

use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::protocol::ws::ClientOp;
use crate::runtime::{AckTo, Runtime, TaskQuery};

fn to_value<T: Serialize>(v: T) -> Result<Value> {
    serde_json::to_value(v).map_err(Error::internal)
}

/// Run one op for `p`, whose connection is attached to `session_id`:
/// its result, or `None` when the reply went through `ack` (a submit's,
/// pushed by the committer with the task's first events).
pub async fn dispatch(
    rt: &Runtime,
    p: &Principal,
    session_id: Uuid,
    op: ClientOp,
    ack: AckTo,
) -> Result<Option<Value>> {
    match op {
        ClientOp::TaskSubmit(mut req) => {
            // Over a socket, tasks go to the connection's session by default.
            req.session_id.get_or_insert(session_id);
            rt.submit_acked(p, req, Some(ack))
                .await?
                .map(to_value)
                .transpose()
        }
        other => answer(rt, p, other).await.map(Some),
    }
}

/// The result of any other op.
async fn answer(rt: &Runtime, p: &Principal, op: ClientOp) -> Result<Value> {
    match op {
        ClientOp::TaskCancel { task_id } => {
            let r = rt.cancel(p, task_id).await?;
            Ok(json!({"task_id": r.task_id, "state": r.state, "success": r.success}))
        }
        ClientOp::TaskRespond { task_id, respond } => {
            to_value(rt.respond(p, task_id, respond).await?)
        }
        ClientOp::TaskGet { task_id } => to_value(rt.task_detail(p, task_id).await?),
        ClientOp::TaskList {
            state,
            limit,
            agent_type,
            session_id,
            after,
        } => {
            let q = TaskQuery {
                session_id,
                state,
                agent_type,
                limit,
                after,
            };
            Ok(json!({ "tasks": rt.list_tasks(p, q).await? }))
        }
        ClientOp::AgentsList {} => to_value(rt.agents(p).await?),
        ClientOp::SkillsList {} => to_value(rt.skills(p).await?),
        ClientOp::Ping {} => Ok(json!({"pong": true})),
        ClientOp::DevicesList {} => to_value(rt.list_devices(p).await?),
        ClientOp::DeviceApprove { device_id } => to_value(rt.approve_device(p, &device_id).await?),
        ClientOp::DeviceRevoke { device_id } => to_value(rt.revoke_device(p, &device_id).await?),
        ClientOp::PresenceList {} => to_value(rt.presence_list(p).await?),
        ClientOp::Hello(_)
        | ClientOp::Subscribe { .. }
        | ClientOp::Unsubscribe { .. }
        | ClientOp::TaskSubmit(_) => Err(Error::BadRequest(
            "this op is handled by the connection".into(),
        )),
    }
}
