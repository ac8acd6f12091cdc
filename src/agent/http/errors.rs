//! Reading failures of an HTTP agent's server: `Retry-After`, error
//! bodies and the root cause of transport errors.

use std::time::Duration;

use serde_json::Value;

/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The `Retry-After` of a response: seconds, or an HTTP date (as long as
/// it is from now; a date past is no wait). At most [`MAX_RETRY_AFTER`].
pub(super) fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let value = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    parse_retry_after(value, std::time::SystemTime::now())
}

fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return None,
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or_default(),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// A short reason from an error response body: the API's `error.message`
/// (OpenAI, Anthropic) or `error` (Ollama) when there is one.
pub(super) async fn error_text(resp: reqwest::Response) -> String {
    let body = tokio::time::timeout(Duration::from_secs(5), resp.text())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    if let Ok(v) = serde_json::from_str::<Value>(&body) {
        if let Some(m) = error_message(&v) {
            return m;
        }
    }
    let body = body.trim();
    if body.is_empty() {
        "(no body)".into()
    } else {
        body.chars().take(300).collect()
    }
}

/// `error.message`, `error` as a string, or `message`, of an error document.
pub fn error_message(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    e.get("message")
        .and_then(Value::as_str)
        .or_else(|| e.as_str())
        .map(str::to_owned)
        .or_else(|| Some(e.to_string()))
}

/// The innermost cause of an error, which says the most.
pub(super) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if std::ptr::addr_eq(cur, e) {
        e.to_string()
    } else {
        format!("{e}: {cur}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// `Retry-After` in seconds or as an HTTP date, capped, and a date past
    /// is no wait.
    #[test]
    fn retry_after_seconds_and_dates() {
        use std::time::{Duration, SystemTime};
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 3 ", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("3600", now), Some(MAX_RETRY_AFTER));
    }

    /// Error documents of each API give their message.
    #[test]
    fn error_messages() {
        let openai = json!({"error": {"message": "Rate limit", "type": "x"}});
        assert_eq!(error_message(&openai).unwrap(), "Rate limit");
        let ollama = json!({"error": "model not found"});
        assert_eq!(error_message(&ollama).unwrap(), "model not found");
        assert_eq!(error_message(&json!({"ok": 1})), None);
    }
}
