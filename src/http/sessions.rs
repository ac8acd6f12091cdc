//! `/api/runtime/sessions/*`, including the live SSE event stream.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::ACCEPT;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Principal;
use crate::bus::Cursor;
use crate::error::Result;
use crate::event::StreamKey;
use crate::http::extract::{Json, OptionalJson, Path, Query};
use crate::http::responses::{BadRequest, Forbidden, NotFound, TooLarge, Unauthorized};
use crate::protocol::{CreateSessionRequest, EventList, EventsQuery, SessionView};

/// `POST /api/runtime/sessions`: fields from the JSON body or the query.
#[utoipa::path(
    post,
    operation_id = "create_session",
    path = "/runtime/sessions",
    tag = "sessions",
    params(crate::protocol::CreateSessionRequest), request_body(content = Option<crate::protocol::CreateSessionRequest>, description = "Optional; the same fields as the query"),
    responses(
        (status = 200, description = "The new session", body = crate::protocol::SessionView),
        BadRequest, Unauthorized, Forbidden, TooLarge
    )
)]
pub async fn create(
    State(s): State<AppState>,
    p: Principal,
    Query(query): Query<CreateSessionRequest>,
    OptionalJson(body): OptionalJson<CreateSessionRequest>,
) -> Result<Json<SessionView>> {
    let req = CreateSessionRequest {
        user_id: body.user_id.or(query.user_id),
        device_id: body.device_id.or(query.device_id),
    };
    Ok(Json(s.runtime.create_session(&p, req).await?))
}

/// `GET /api/runtime/sessions`.
#[utoipa::path(
    get,
    operation_id = "list_sessions",
    path = "/runtime/sessions",
    tag = "sessions",
    responses(
        (status = 200, description = "Sessions", body = Vec<crate::protocol::SessionView>),
        Unauthorized, Forbidden
    )
)]
pub async fn list(State(s): State<AppState>, p: Principal) -> Result<Json<Vec<SessionView>>> {
    Ok(Json(s.runtime.list_sessions(&p).await?))
}

/// `GET /api/runtime/sessions/{id}`.
#[utoipa::path(
    get,
    operation_id = "get_session",
    path = "/runtime/sessions/{session_id}",
    tag = "sessions",
    params(("session_id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "The session", body = crate::protocol::SessionView),
        BadRequest, Unauthorized, Forbidden, NotFound
    )
)]
pub async fn get(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<SessionView>> {
    Ok(Json(s.runtime.get_session(&p, id).await?))
}

/// `DELETE /api/runtime/sessions/{id}`.
#[utoipa::path(
    delete,
    operation_id = "end_session",
    path = "/runtime/sessions/{session_id}",
    tag = "sessions",
    params(("session_id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "The ended session", body = crate::protocol::SessionView),
        BadRequest, Unauthorized, Forbidden, NotFound
    )
)]
pub async fn end(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<SessionView>> {
    Ok(Json(s.runtime.end_session(&p, id).await?))
}

/// `GET /api/runtime/sessions/{id}/events`: stored events as JSON, or with
/// `Accept: text/event-stream` a live SSE stream whose `id:` is the seq,
/// resuming after `Last-Event-ID` (or `after_seq`).
#[utoipa::path(
    get,
    operation_id = "session_events",
    path = "/runtime/sessions/{session_id}/events",
    tag = "sessions",
    params(("session_id" = uuid::Uuid, Path), crate::protocol::EventsQuery, ("Last-Event-ID" = Option<i64>, Header, nullable = false, description = "SSE: resume after this seq")),
    responses(
        (status = 200, description = "Stored events (JSON), or with `Accept: text/event-stream` a live SSE stream whose `data:` lines are WebSocket event frames", content((crate::protocol::EventList = "application/json"), (String = "text/event-stream"))),
        BadRequest, Unauthorized, Forbidden, NotFound
    )
)]
pub async fn events(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    let wants_sse = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !wants_sse {
        let list: EventList = s
            .runtime
            .session_events(&p, id, q.after_seq.unwrap_or(0), q.limit)
            .await?;
        return Ok(Json(list).into_response());
    }
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(crate::protocol::parse_last_event_id(v.as_bytes())?),
        None => None,
    };
    let after = last_event_id.or(q.after_seq).unwrap_or(0);
    let (cursor, _, earliest) = s
        .runtime
        .subscribe(&p, StreamKey::Session(id), Some(after))
        .await?;
    // Events asked for were pruned: say so first (`event: pruned`).
    let first = earliest.map(pruned_event);
    let stream = stream::iter(first.map(Ok)).chain(sse_stream(cursor, s.shutdown.clone()));
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn sse_stream(
    cursor: Cursor,
    shutdown: tokio_util::sync::CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold((cursor, shutdown), |(mut cursor, shutdown)| async move {
        let next = tokio::select! {
            next = cursor.next() => next,
            _ = shutdown.cancelled() => return None,
        };
        match next {
            Ok(Some(d)) if d.seq == 0 => {
                // The follower's `stream.pruned` notice: a prune overtook
                // this reader. The next event it sends is the earliest.
                let earliest = serde_json::from_str::<serde_json::Value>(d.frame.payload_str())
                    .ok()
                    .and_then(|v| v["data"]["earliest_seq"].as_i64())
                    .unwrap_or(0);
                Some((Ok(pruned_event(earliest)), (cursor, shutdown)))
            }
            Ok(Some(d)) => {
                metrics::counter!("switchboard_events_delivered_total", "transport" => "sse")
                    .increment(1);
                let event = Event::default()
                    .id(d.seq.to_string())
                    .data(d.frame.payload_str());
                Some((Ok(event), (cursor, shutdown)))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "SSE stream ended by a store error");
                None
            }
        }
    })
}

/// The SSE message for "events before `earliest_seq` were pruned": named
/// `pruned`, so `EventSource.onmessage` does not take it for an event, and
/// without an `id:`, so the client's `Last-Event-ID` stays what it was.
fn pruned_event(earliest_seq: i64) -> Event {
    Event::default()
        .event("pruned")
        .data(serde_json::json!({ "earliest_seq": earliest_seq }).to_string())
}
