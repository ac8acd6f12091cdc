//! REST (and SSE) over the runtime: one file per resource; each handler
//! decodes, calls one runtime method, encodes.

mod admin;
mod audit;
mod devices;
pub mod extract;
mod health;
mod hosts;
pub mod openapi;
mod phase1_tasks;
mod projects;
pub mod responses;
pub mod serve;
mod sessions;
mod tasks;
mod web;

use std::any::Any;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, OriginalUri, Request, State};
use axum::http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::Principal;
use crate::error::Error;

/// The whole HTTP surface of a node: the REST routes of [`rest`], and
/// beside them what is not REST: the WebSocket upgrade (its frames are
/// described by `protocol/schema/`) and the dashboard's files.
pub fn router(state: AppState) -> Router {
    let (rest, _) = rest().split_for_parts();
    let max_body = state.runtime.limits().max_body_bytes;
    rest.route("/ws", get(crate::ws::upgrade))
        .route("/link", get(hosts::upgrade))
        .route("/", get(web::index))
        .fallback(web::asset)
        .layer(middleware::from_fn_with_state(max_body, read_body_first))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Every REST route with its OpenAPI description. The router and the
/// document ([`openapi::document`]) are both built from this one list, so
/// no route is served undocumented or documented but not served: add
/// routes here, with `routes!` only (one path per call: `routes!` serves
/// all its handlers on every path they name).
pub(crate) fn rest() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::health_alias))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .nest("/api", api())
}

/// The `/api` routes (paths relative to it), each needing a token but the
/// document itself.
fn api() -> OpenApiRouter<AppState> {
    let documented = OpenApiRouter::new()
        .routes(routes!(openapi::serve))
        .routes(routes!(admin::me))
        .routes(routes!(admin::create_user, admin::list_users))
        .routes(routes!(admin::assign_role))
        .routes(routes!(admin::revoke_role))
        .routes(routes!(admin::adjust_permission))
        .routes(routes!(admin::issue_token, admin::revoke_tokens))
        .routes(routes!(admin::storage))
        .routes(routes!(admin::presence))
        .routes(routes!(devices::register, devices::list))
        .routes(routes!(devices::challenge))
        .routes(routes!(devices::approve))
        .routes(routes!(devices::revoke))
        .routes(routes!(sessions::create, sessions::list))
        .routes(routes!(sessions::get, sessions::end))
        .routes(routes!(sessions::events))
        .routes(routes!(tasks::submit))
        .routes(routes!(tasks::list))
        .routes(routes!(hosts::counts))
        .routes(routes!(tasks::detail))
        .routes(routes!(tasks::state))
        .routes(routes!(tasks::cancel))
        .routes(routes!(tasks::respond))
        .routes(routes!(tasks::agents))
        .routes(routes!(hosts::list))
        .routes(routes!(tasks::skills))
        .routes(routes!(audit::events))
        .routes(routes!(audit::user_activity))
        .routes(routes!(audit::session_activity))
        .routes(routes!(audit::verify))
        .routes(routes!(projects::list, projects::create))
        .routes(routes!(projects::get, projects::update, projects::delete))
        .routes(routes!(phase1_tasks::list, phase1_tasks::create))
        .routes(routes!(phase1_tasks::execute))
        .routes(routes!(
            phase1_tasks::get,
            phase1_tasks::update,
            phase1_tasks::delete
        ))
        .routes(routes!(phase1_tasks::agents_available))
        .routes(routes!(phase1_tasks::agent_types));
    // Our error body for unknown paths and methods; the fallbacks are not
    // routes, so they change nothing in the document.
    let (router, doc) = documented.split_for_parts();
    let router = router
        .fallback(api_not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let mut api = OpenApiRouter::from(router);
    *api.get_openapi_mut() = doc;
    api
}

/// Read a request's whole body (up to `limit` bytes) before anything
/// answers it.
///
/// hyper keeps a keep-alive connection open only once the request's body has
/// been read. An answer given before a handler reads it (a `401`, an unknown
/// route or method, a bad path parameter) would otherwise close the
/// connection after the response, without a `Connection: close`, and the
/// client's next request on it would fail. Bodies here are JSON documents
/// that handlers read whole anyway, so nothing streams. (HTTP/2 bodies
/// without a length pass through, bounded by [`DefaultBodyLimit`].)
async fn read_body_first(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if !headers.contains_key(TRANSFER_ENCODING) && declared.unwrap_or(0) == 0 {
        return next.run(req).await;
    }
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) if is_length_limit(&e) => too_large(),
        Err(_) => Error::BadRequest("the request body could not be read".into()).into_response(),
    }
}

/// `413 payload_too_large`, ending the connection: the rest of the body is
/// never read, so the client must not reuse it.
fn too_large() -> Response {
    let mut resp =
        Error::PayloadTooLarge("the request body is larger than this node accepts".into())
            .into_response();
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Whether a body error, or one of its causes, is the length limit.
fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
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
