//! What stands between the network and the runtime: bearer tokens, limits on the request
//! line and headers, and a deadline per request.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Who may use a group of routes.
#[derive(Clone, PartialEq, Eq)]
pub enum Access {
    /// Anyone who can reach the port.
    Open,
    /// Requests with `Authorization: Bearer <token>`.
    Token(String),
    /// Nobody: the routes answer `403 disabled`.
    Closed,
}

impl std::fmt::Debug for Access {
    // Tokens never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Open => f.write_str("Open"),
            Self::Token(_) => f.write_str("Token(…)"),
            Self::Closed => f.write_str("Closed"),
        }
    }
}

/// Refuses requests that [`Access`] does not let in: `401 unauthorized` without the right
/// token, `403 disabled` when the routes are closed.
pub(crate) async fn authorize(
    State(access): State<Arc<Access>>,
    request: Request,
    next: Next,
) -> Response {
    match refusal(&access, &request) {
        None => next.run(request).await,
        Some(refused) => refused,
    }
}

/// Why [`Access`] does not let `request` in, if it does not.
pub(crate) fn refusal(access: &Access, request: &Request) -> Option<Response> {
    match access {
        Access::Open => None,
        Access::Closed => Some(
            ApiError::new(
                StatusCode::FORBIDDEN,
                "disabled",
                "these routes are disabled on this node: start it with a token for them \
             (--admin-token or PERENNIAL_ADMIN_TOKEN)",
            )
            .into_response(),
        ),
        Access::Token(token) => {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match given {
                Some(given) if same(given.as_bytes(), token.as_bytes()) => None,
                _ => {
                    let mut response = ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "send the token as `Authorization: Bearer <token>`",
                    )
                    .into_response();
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    Some(response)
                }
            }
        }
    }
}

/// Compares in time that does not depend on where the bytes differ.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Limits on the request line and headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_uri_bytes: usize,
    pub(crate) max_headers: usize,
    pub(crate) max_header_bytes: usize,
    pub(crate) timeout: Duration,
}

/// Refuses a request whose URI or headers are over the limits (`414`, `431`), and answers
/// `504 timeout` when the request is not done within its deadline.
pub(crate) async fn limit(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    let uri = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri > limits.max_uri_bytes {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the path and query are {uri} bytes; at most {} are accepted",
                limits.max_uri_bytes
            ),
        )
        .into_response();
    }
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > limits.max_headers || bytes > limits.max_header_bytes {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "at most {} headers and {} bytes of headers are accepted",
                limits.max_headers, limits.max_header_bytes
            ),
        )
        .into_response();
    }
    match tokio::time::timeout(limits.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "the request did not finish within {} ms; a call may still be applied: \
                 retry it with the same Idempotency-Key to learn its outcome",
                limits.timeout.as_millis()
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn tokens_compare_equal_only_when_equal() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
