//! The one error type of every operation, with stable snake_case codes and
//! one status mapping, rendered the same over REST, WebSocket and SSE.
//!
//! Internal causes (database, I/O) are logged once where they are converted
//! and never shown to clients.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::task::state::InvalidTransition;

/// Everything an operation can answer instead of a result.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: bad JSON, missing or invalid fields.
    #[error("{0}")]
    BadRequest(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The thing does not exist, or the caller may not know that it does.
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// The task state machine forbids this.
    #[error("{0}")]
    InvalidTransition(String),
    /// A body, frame or field is larger than the node accepts.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The agent does not exist or cannot run here.
    #[error("{0}")]
    UnknownAgent(String),
    /// A device failed to prove its identity (wrong or replayed signature).
    #[error("{0}")]
    DeviceProof(String),
    /// Too many requests; try again after the given number of seconds.
    #[error("{message}")]
    RateLimited {
        /// What was limited.
        message: String,
        /// Seconds until a retry may succeed.
        retry_after: u64,
    },
    /// The store or another dependency is down.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; details are in the log only.
    #[error("internal error")]
    Internal,
}

impl Error {
    /// The same error again (for answering several callers with one
    /// failure).
    pub fn same(&self) -> Error {
        match self {
            Error::BadRequest(m) => Error::BadRequest(m.clone()),
            Error::Unauthorized(m) => Error::Unauthorized(m.clone()),
            Error::Forbidden(m) => Error::Forbidden(m.clone()),
            Error::NotFound(m) => Error::NotFound(m.clone()),
            Error::Conflict(m) => Error::Conflict(m.clone()),
            Error::InvalidTransition(m) => Error::InvalidTransition(m.clone()),
            Error::PayloadTooLarge(m) => Error::PayloadTooLarge(m.clone()),
            Error::UnknownAgent(m) => Error::UnknownAgent(m.clone()),
            Error::DeviceProof(m) => Error::DeviceProof(m.clone()),
            Error::RateLimited {
                message,
                retry_after,
            } => Error::RateLimited {
                message: message.clone(),
                retry_after: *retry_after,
            },
            Error::Unavailable(m) => Error::Unavailable(m.clone()),
            Error::Internal => Error::Internal,
        }
    }

    /// The stable snake_case code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::InvalidTransition(_) => "invalid_transition",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::UnknownAgent(_) => "unknown_agent",
            Error::DeviceProof(_) => "device_proof_failed",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable(_) => "unavailable",
            Error::Internal => "internal",
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) | Error::UnknownAgent(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) | Error::DeviceProof(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) | Error::InvalidTransition(_) => StatusCode::CONFLICT,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The wire body: `{"code","message"}`.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code(),
            message: self.to_string(),
        }
    }

    /// Shorthand for a `not_found` naming what was looked for.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Error::NotFound(format!("{what} not found"))
    }

    /// Log an unexpected failure once, here, and hide it from the client.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Error::Internal
    }
}

impl From<InvalidTransition> for Error {
    fn from(e: InvalidTransition) -> Self {
        Error::InvalidTransition(format!(
            "task is {} and cannot change that way",
            e.from.as_str()
        ))
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Error::Conflict("it already exists".into())
            }
            sqlx::Error::Database(db) if db.code().is_some_and(|c| is_unavailable_code(&c)) => {
                tracing::error!(error = %e, "store unavailable");
                Error::Unavailable("the store is not answering; try again shortly".into())
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => {
                tracing::error!(error = %e, "store unavailable");
                Error::Unavailable("the store is not answering; try again shortly".into())
            }
            _ => Error::internal(e),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::ConstraintViolation) => Error::Conflict("it already exists".into()),
            Some(ErrorCode::DiskFull) => {
                tracing::error!(error = %e, "the database's disk is full");
                Error::Unavailable("the node's disk is full; nothing was stored".into())
            }
            Some(
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::ReadOnly,
            ) => {
                tracing::error!(error = %e, "store unavailable");
                Error::Unavailable("the store is not answering; try again shortly".into())
            }
            _ => Error::internal(e),
        }
    }
}

/// SQLSTATE codes that mean "the database is (temporarily) not there",
/// not "the request is wrong": connection exceptions (08), operator
/// intervention such as a shutdown or a terminated backend (57P0x), too many
/// connections (53300), and a lost serialization race or deadlock (40001,
/// 40P01), which a retry resolves.
fn is_unavailable_code(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("57P0")
        || matches!(code, "53300" | "40001" | "40P01")
}

/// `{"code","message"}`, the inner object of every error.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema, schemars::JsonSchema)]
pub struct ErrorBody {
    /// Stable snake_case code.
    #[schema(value_type = String)]
    pub code: &'static str,
    /// A sentence for people.
    pub message: String,
}

/// `{"error":{"code","message"}}`: the body of every REST error.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = ErrorResponse { error: self.body() };
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if let Error::RateLimited { retry_after, .. } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        resp
    }
}

/// Shorthand for results of operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
