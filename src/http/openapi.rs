//! The OpenAPI 3.1 description of every REST route, generated from the
//! handlers' `#[utoipa::path]` attributes and the wire types in
//! [`crate::protocol`]. Its paths come from the same list that builds the
//! router ([`super::rest`]), so a route cannot be served undocumented.
//! Served without authentication at `GET /api/openapi.json` (it describes
//! the API, it reveals no data), and checked in at `protocol/openapi.json`
//! (the `schemas` test keeps the two equal).

use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

/// The document's frame: info, security, tags. The paths are added by
/// [`super::rest`].
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
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "health", description = "Liveness, readiness, metrics (no auth)"),
        (name = "meta", description = "This document (no auth)"),
        (name = "users", description = "The caller, users, roles, grants, tokens, presence"),
        (name = "admin", description = "Operating the node: storage figures"),
        (name = "devices", description = "Device registration, proof challenges and trust"),
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

/// The answers every authenticated operation can give whatever it does,
/// added to each so that no handler can forget them: `429` once an address
/// has failed to authenticate too often, and `503` while the store is not
/// answering.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let error = |description: &str| -> RefOr<Response> {
            let body = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorResponse")))
                .build();
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content("application/json", body)
                    .build(),
            )
        };
        for item in doc.paths.paths.values_mut() {
            for op in operations(item) {
                if is_public(op) {
                    continue;
                }
                let responses = &mut op.responses.responses;
                responses.entry("429".into()).or_insert_with(|| {
                    error("Too many failed authentications from this address; see Retry-After")
                });
                responses
                    .entry("503".into())
                    .or_insert_with(|| error("The store is not answering; try again shortly"));
            }
        }
    }
}

/// The operations of one path.
fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// Whether an operation needs no token (`security(())`).
fn is_public(op: &Operation) -> bool {
    op.security
        .as_ref()
        .is_some_and(|s| s.iter().all(|req| *req == Default::default()))
}

/// The document as pretty JSON with a final newline, exactly as checked in.
pub fn document() -> String {
    let mut doc = super::rest().into_openapi();
    CommonResponses.modify(&mut doc);
    let mut text = doc
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

static DOCUMENT: LazyLock<String> = LazyLock::new(document);

/// `GET /api/openapi.json`: this document; no token needed.
#[utoipa::path(
    get,
    operation_id = "get_openapi",
    path = "/openapi.json",
    tag = "meta",
    security(()),
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)
    )
)]
pub async fn serve() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT.as_str())
}
