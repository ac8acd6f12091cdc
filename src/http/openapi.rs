//! The OpenAPI 3.1 description of every REST route, generated from the
//! handlers' `#[utoipa::path]` attributes and the wire types in
//! [`crate::protocol`]. Served without authentication at
//! `GET /api/openapi.json` (it describes the API, it reveals no data), and
//! checked in at `protocol/openapi.json` (the `schemas` test keeps the two
//! equal).

use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, audit, health, phase1_tasks, projects, sessions, tasks};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard",
        description = "A WebSocket-first real-time server for AI agent work. REST and SSE are \
                       described here; the WebSocket protocol v1 (`GET /ws`) frames have JSON \
                       Schemas in `protocol/schema/`. Every `/api/*` route but this document \
                       needs `Authorization: Bearer <token>`.",
        license(name = "Apache-2.0")
    ),
    paths(
        health::health,
        health::health_alias,
        health::ready,
        health::metrics,
        admin::me,
        admin::create_user,
        admin::list_users,
        admin::assign_role,
        admin::revoke_role,
        admin::adjust_permission,
        admin::issue_token,
        admin::revoke_tokens,
        admin::presence,
        sessions::create,
        sessions::list,
        sessions::get,
        sessions::end,
        sessions::events,
        tasks::submit,
        tasks::list,
        tasks::detail,
        tasks::state,
        tasks::cancel,
        tasks::respond,
        tasks::agents,
        tasks::skills,
        audit::events,
        audit::user_activity,
        audit::session_activity,
        audit::verify,
        projects::list,
        projects::create,
        projects::get,
        projects::update,
        projects::delete,
        phase1_tasks::list,
        phase1_tasks::create,
        phase1_tasks::execute,
        phase1_tasks::get,
        phase1_tasks::update,
        phase1_tasks::delete,
        phase1_tasks::agents_available,
        phase1_tasks::agent_types,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "health", description = "Liveness, readiness, metrics (no auth)"),
        (name = "users", description = "The caller, users, roles, grants, tokens, presence"),
        (name = "sessions", description = "Runtime sessions and their event streams"),
        (name = "tasks", description = "Runtime (Phase 2) tasks"),
        (name = "agents", description = "Agent and skill discovery"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "phase1", description = "The original Phase 1 API: projects, project tasks, execute"),
    )
)]
pub struct ApiDoc;

/// Adds the bearer token scheme that `security(("bearer" = []))` names.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as pretty JSON with a final newline, exactly as checked in.
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

static DOCUMENT: LazyLock<String> = LazyLock::new(document);

/// `GET /api/openapi.json`: no token needed.
pub async fn serve() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT.as_str())
}
