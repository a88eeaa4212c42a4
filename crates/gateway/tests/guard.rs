//! Tokens, limits and deadlines: refused requests get the right status, and the gateway
//! keeps serving; random input never makes it panic.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use perennial_gateway::{Access, Options};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{code, gateway_with, post};

/// Sends a request with optional bearer token; returns the status, the JSON body and the
/// `WWW-Authenticate` header.
async fn with_token(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Value, Option<String>) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Body::from(body.to_owned())).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value, challenge)
}

#[tokio::test]
async fn a_client_token_guards_calls_and_nothing_else() {
    let mut options = Options::default();
    options.client = Access::Token("client-secret".into());
    let (app, rt, _) = gateway_with(options).await;
    let call = |token| with_token(&app, Method::POST, "/v1/counter/c", token, r#"{"add":1}"#);
    let (status, body, challenge) = call(None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert_eq!(challenge.as_deref(), Some("Bearer"));
    let (status, body, _) = call(Some("client-secreT")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (status, body, _) = call(Some("client-secret")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"value": 1})));
    // Nothing was applied by the refused calls.
    let (_, body, _) = with_token(
        &app,
        Method::POST,
        "/v1/counter/c",
        Some("client-secret"),
        r#""get""#,
    )
    .await;
    assert_eq!(body, json!({"value": 1}));
    let (status, _, _) = with_token(&app, Method::GET, "/healthz", None, "").await;
    assert_eq!(status, StatusCode::OK);
    rt.shutdown().await;
}

#[tokio::test]
async fn the_admin_api_needs_its_own_token_and_is_closed_without_one() {
    let (app, rt, _) = gateway_with(Options::default()).await;
    let (status, body, _) = with_token(&app, Method::GET, "/v1/admin/kinds", None, "").await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "disabled"));

    let mut options = Options::default();
    options.client = Access::Token("client".into());
    options.admin = Access::Token("admin".into());
    let (app, rt2, _) = gateway_with(options).await;
    for token in [None, Some("client")] {
        let (status, body, _) = with_token(&app, Method::GET, "/v1/admin/kinds", token, "").await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
    }
    let (status, body, _) =
        with_token(&app, Method::GET, "/v1/admin/kinds", Some("admin"), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The admin token does not call entities.
    let (status, _, _) = with_token(&app, Method::POST, "/v1/counter/c", Some("admin"), "1").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    rt.shutdown().await;
    rt2.shutdown().await;
}

#[tokio::test]
async fn long_uris_and_too_many_headers_are_refused() {
    let (app, rt, _) = gateway_with(Options::default()).await;
    let long = format!("/v1/counter/{}", "x".repeat(5000));
    let (status, body, _) = with_token(&app, Method::POST, &long, None, "1").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::URI_TOO_LONG, "uri_too_long")
    );

    let mut request = Request::builder().method(Method::POST).uri("/v1/counter/h");
    for i in 0..100 {
        request = request.header(format!("x-h{i}"), "v");
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(r#"{"add":1}"#)).unwrap())
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/counter/h")
        .header("x-big", "v".repeat(20_000))
        .body(Body::from(r#"{"add":1}"#))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    // Still serving, and the refused calls applied nothing.
    assert_eq!(
        post(&app, "/v1/counter/h", json!("get")).await,
        (StatusCode::OK, json!({"value": 0}))
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_is_504() {
    let mut options = Options::default();
    options.request_timeout = Duration::from_millis(100);
    let (app, rt, _) = gateway_with(options).await;
    let (status, body) = post(&app, "/v1/fragile/s", json!("slow")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::GATEWAY_TIMEOUT, "timeout")
    );
    assert!(body.to_string().contains("Idempotency-Key"), "{body}");
    assert_eq!(
        post(&app, "/v1/fragile/other", json!("fine")).await,
        (StatusCode::OK, json!("fine"))
    );
    rt.shutdown().await;
}

/// Statuses the gateway may answer random input with.
const EXPECTED: [u16; 11] = [200, 201, 400, 401, 403, 404, 405, 409, 413, 414, 500];

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Random methods, paths, bodies and JSON never make the gateway panic, and each gets a
    /// documented status with a JSON error body.
    #[test]
    fn random_requests_get_documented_answers(
        method in prop::sample::select(vec![Method::GET, Method::POST, Method::PUT, Method::DELETE]),
        path in prop::collection::vec("[a-z%0-9._~-]{0,12}", 0..5),
        body in prop::collection::vec(any::<u8>(), 0..256),
        json_body in any::<bool>(),
        value in (any::<i64>(), "[a-z_]{0,8}"),
        filter in "\\PC{0,40}",
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut options = Options::default();
            options.admin = Access::Open;
            let (app, rt, _) = gateway_with(options).await;
            let uri = format!("/{}", path.join("/"));
            let body = if json_body {
                json!({ value.1.clone(): value.0 }).to_string().into_bytes()
            } else {
                body
            };
            // Random filters and paths, percent-encoded, at the query and index routes.
            let encoded: String = filter.bytes().map(|b| format!("%{b:02X}")).collect();
            let query = format!("/v1/admin/kinds/counter/query?filter={encoded}");
            let index = format!("/v1/admin/kinds/counter/indexes?path={encoded}");
            for uri in [uri.clone(), format!("/v1/counter{uri}"), format!("/v1/admin{uri}"), query, index] {
                let Ok(request) = Request::builder().method(method.clone()).uri(&uri).body(Body::from(body.clone())) else {
                    continue; // not a URI at all: the HTTP layer refuses it before the gateway
                };
                let response = app.clone().oneshot(request).await.unwrap();
                let status = response.status().as_u16();
                prop_assert!(EXPECTED.contains(&status), "{method} {uri}: {status}");
                if status != 200 {
                    let bytes = response.into_body().collect().await.unwrap().to_bytes();
                    let value: Value = serde_json::from_slice(&bytes).unwrap();
                    prop_assert!(value["error"]["code"].is_string(), "{value}");
                }
            }
            rt.shutdown().await;
            Ok(())
        })?;
    }
}
