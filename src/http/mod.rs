//! REST (and SSE) over the runtime: one file per resource; each handler
//! decodes, calls one runtime method, encodes.

mod admin;
mod audit;
mod devices;
pub mod extract;
mod health;
pub mod openapi;
mod phase1_tasks;
mod projects;
mod sessions;
mod tasks;
mod web;

use std::any::Any;

use axum::Router;
use axum::extract::{DefaultBodyLimit, OriginalUri};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::app::AppState;
use crate::auth::Principal;
use crate::error::Error;

/// The whole HTTP surface of a node.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/openapi.json", get(openapi::serve))
        .route("/me", get(admin::me))
        .route(
            "/admin/users",
            post(admin::create_user).get(admin::list_users),
        )
        .route("/admin/users/{user_id}/roles", post(admin::assign_role))
        .route(
            "/admin/users/{user_id}/roles/{role}",
            delete(admin::revoke_role),
        )
        .route(
            "/admin/users/{user_id}/permissions",
            post(admin::adjust_permission),
        )
        .route(
            "/admin/users/{user_id}/tokens",
            post(admin::issue_token).delete(admin::revoke_tokens),
        )
        .route("/presence", get(admin::presence))
        .route("/devices", post(devices::register).get(devices::list))
        .route("/devices/challenge", post(devices::challenge))
        .route("/devices/{device_id}/approve", post(devices::approve))
        .route("/devices/{device_id}/revoke", post(devices::revoke))
        .route(
            "/runtime/sessions",
            post(sessions::create).get(sessions::list),
        )
        .route(
            "/runtime/sessions/{session_id}",
            get(sessions::get).delete(sessions::end),
        )
        .route(
            "/runtime/sessions/{session_id}/events",
            get(sessions::events),
        )
        .route("/runtime/tasks/submit", post(tasks::submit))
        .route("/runtime/tasks", get(tasks::list))
        .route("/runtime/tasks/{task_id}", get(tasks::detail))
        .route("/runtime/tasks/{task_id}/state", get(tasks::state))
        .route("/runtime/tasks/{task_id}/cancel", post(tasks::cancel))
        .route("/runtime/tasks/{task_id}/respond", post(tasks::respond))
        .route("/runtime/agents", get(tasks::agents))
        .route("/runtime/skills", get(tasks::skills))
        .route("/audit/events", get(audit::events))
        .route("/audit/users/{user_id}/activity", get(audit::user_activity))
        .route(
            "/audit/sessions/{session_id}/activity",
            get(audit::session_activity),
        )
        .route("/audit/verify", get(audit::verify))
        .route("/projects", get(projects::list).post(projects::create))
        .route(
            "/projects/{id}",
            get(projects::get)
                .patch(projects::update)
                .delete(projects::delete),
        )
        .route("/tasks", get(phase1_tasks::list).post(phase1_tasks::create))
        .route("/tasks/execute", post(phase1_tasks::execute))
        .route(
            "/tasks/{id}",
            get(phase1_tasks::get)
                .patch(phase1_tasks::update)
                .delete(phase1_tasks::delete),
        )
        .route("/agents/available", get(phase1_tasks::agents_available))
        .route("/agents/types", get(phase1_tasks::agent_types))
        .fallback(api_not_found)
        .method_not_allowed_fallback(method_not_allowed);

    let max_body = state.runtime.limits().max_body_bytes;
    Router::new()
        .route("/healthz", get(health::health))
        .route("/health", get(health::health_alias))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/ws", get(crate::ws::upgrade))
        .nest("/api", api)
        .route("/", get(web::index))
        .fallback(web::asset)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Unknown `/api` paths answer 404 only to an authenticated caller: every
/// `/api/*` call needs a token, so without one it is 401 like the rest.
async fn api_not_found(_: Principal, OriginalUri(uri): OriginalUri) -> Error {
    Error::NotFound(format!("no such endpoint: {}", uri.path()))
}

async fn method_not_allowed(
    _: Principal,
    method: Method,
    OriginalUri(uri): OriginalUri,
) -> Response {
    let body = Error::BadRequest(format!("{method} is not allowed on {}", uri.path()));
    let mut resp = body.into_response();
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp
}

fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    Error::Internal.into_response()
}
