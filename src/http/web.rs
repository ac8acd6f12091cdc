//! The dashboard: `web/` embedded at compile time.

use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

use crate::error::Error;

#[derive(RustEmbed)]
#[folder = "$CARGO_MANIFEST_DIR/web/"]
struct Assets;

fn serve(path: &str) -> Option<Response> {
    let file = Assets::get(path)?;
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    Some(
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, mime.as_ref().to_owned()),
                (header::CACHE_CONTROL, "no-cache".to_owned()),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            ],
            file.data.into_owned(),
        )
            .into_response(),
    )
}

/// `GET /`.
pub async fn index() -> Response {
    serve("index.html").unwrap_or_else(|| Error::not_found("the dashboard").into_response())
}

/// Any other path: a dashboard file, or 404.
pub async fn asset(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    serve(path)
        .unwrap_or_else(|| Error::NotFound(format!("no such page: {}", uri.path())).into_response())
}
