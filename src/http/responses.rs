//! The error answers of REST routes, one type per status, named in the
//! handlers' `#[utoipa::path(responses(..))]` lists so that each is
//! described once. Every one carries an [`ErrorResponse`] body.

use utoipa::IntoResponses;

use crate::error::ErrorResponse;

/// `400`: the request is malformed.
#[derive(IntoResponses)]
#[response(status = 400, description = "Bad request")]
pub struct BadRequest(pub ErrorResponse);

/// `401`: no valid token.
#[derive(IntoResponses)]
#[response(status = 401, description = "No valid token")]
pub struct Unauthorized(pub ErrorResponse);

/// `403`: the caller lacks a permission the route needs.
#[derive(IntoResponses)]
#[response(status = 403, description = "Missing permission")]
pub struct Forbidden(pub ErrorResponse);

/// `404`: what the route names does not exist (or is not the caller's).
#[derive(IntoResponses)]
#[response(status = 404, description = "Not found")]
pub struct NotFound(pub ErrorResponse);

/// `409`: the change clashes with the stored state.
#[derive(IntoResponses)]
#[response(status = 409, description = "Conflict")]
pub struct Conflict(pub ErrorResponse);

/// `413`: the body is over the size limit.
#[derive(IntoResponses)]
#[response(status = 413, description = "Payload too large")]
pub struct TooLarge(pub ErrorResponse);

/// `429`: too many attempts; see `Retry-After`.
#[derive(IntoResponses)]
#[response(status = 429, description = "Rate limited")]
pub struct RateLimited(pub ErrorResponse);
