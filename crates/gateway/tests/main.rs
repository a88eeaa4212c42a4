//! The gateway, driven in memory with `oneshot`: every status code the API documents.

mod admin;
mod callers;
mod feed;
mod guard;
mod metrics;
mod openapi;
mod watch;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use perennial_core::{Ctx, Process, Rejection, Runtime};
use perennial_gateway::{Options, app};
use perennial_storage::{FaultyStore, MemoryStore};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceExt;

/// A kind whose handler panics with a secret in the message.
#[derive(Default, Serialize, Deserialize)]
struct Fragile;

/// A kind that never refuses.
#[derive(Debug)]
enum NoError {}

impl std::fmt::Display for NoError {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}
impl std::error::Error for NoError {}
impl Rejection for NoError {
    fn code(&self) -> &str {
        match *self {}
    }
}

impl Process for Fragile {
    const KIND: &'static str = "fragile";
    type Msg = String;
    type Reply = String;
    type Error = NoError;

    fn handle(&mut self, msg: String, _: &mut Ctx<'_, Self>) -> Result<String, NoError> {
        if msg == "panic" {
            panic!("secret internal detail");
        }
        if msg == "slow" {
            std::thread::sleep(Duration::from_millis(400));
        }
        Ok(msg)
    }
}

async fn gateway() -> (Router, Runtime, FaultyStore<MemoryStore>) {
    gateway_with(Options::default()).await
}

/// A gateway over the demo kinds and `Fragile`, with `options` (a 4 KiB body limit).
async fn gateway_with(mut options: Options) -> (Router, Runtime, FaultyStore<MemoryStore>) {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = perennial_demo::register(Runtime::builder().store(store.clone()))
        .register_snapshot::<Fragile>()
        .max_inflight(4)
        .max_attempts(2)
        .start()
        .await
        .unwrap();
    options.max_body_bytes = 4096;
    (app(rt.clone(), &options), rt, store)
}

async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(body.into())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
    (status, value)
}

async fn post(app: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
    send(app, Method::POST, uri, body.to_string()).await
}

fn code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {v}"))
}

#[tokio::test]
async fn counter_calls_answer_with_the_reply() {
    let (app, rt, _) = gateway().await;
    assert_eq!(
        post(&app, "/v1/counter/c1", json!({"add": 5})).await,
        (StatusCode::OK, json!({"value": 5}))
    );
    assert_eq!(
        post(&app, "/v1/counter/c1", json!({"add": -2})).await,
        (StatusCode::OK, json!({"value": 3}))
    );
    assert_eq!(
        post(&app, "/v1/counter/c1", json!("get")).await,
        (StatusCode::OK, json!({"value": 3}))
    );
    // Percent-encoded ids are decoded.
    assert_eq!(
        post(&app, "/v1/counter/caf%C3%A9", json!({"add": 1}))
            .await
            .0,
        StatusCode::OK
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn refusals_are_400_with_the_kinds_code_and_change_nothing() {
    let (app, rt, _) = gateway().await;
    post(&app, "/v1/counter/big", json!({"add": i64::MAX})).await;
    let (status, body) = post(&app, "/v1/counter/big", json!({"add": 1})).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "overflow"));
    assert_eq!(
        post(&app, "/v1/counter/big", json!("get")).await.1,
        json!({"value": i64::MAX})
    );

    for player in ["alice", "bob"] {
        let (status, _) = post(
            &app,
            "/v1/table/t1",
            json!({"join": {"player": player, "chips": 1000}}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, view) = post(&app, "/v1/table/t1", json!("start_hand")).await;
    assert_eq!(status, StatusCode::OK);
    let to_act = view["to_act"].as_str().unwrap().to_owned();
    let other = if to_act == "alice" { "bob" } else { "alice" };
    let (status, body) = post(
        &app,
        "/v1/table/t1",
        json!({"act": {"player": other, "action": "call"}}),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "not_your_turn")
    );
    assert_eq!(post(&app, "/v1/table/t1", json!("view")).await.1, view);
    rt.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_typed_errors() {
    let (app, rt, _) = gateway().await;
    let cases: Vec<(Method, String, Body, StatusCode, &str)> = vec![
        (
            Method::POST,
            "/v1/nope/x".into(),
            Body::from("1"),
            StatusCode::NOT_FOUND,
            "unknown_kind",
        ),
        (
            Method::POST,
            "/v1/counter/x".into(),
            Body::from("{not json"),
            StatusCode::BAD_REQUEST,
            "bad_message",
        ),
        (
            Method::POST,
            "/v1/counter/x".into(),
            Body::from(r#"{"subtract": 1}"#),
            StatusCode::BAD_REQUEST,
            "bad_message",
        ),
        (
            Method::POST,
            "/v1/counter/x".into(),
            Body::empty(),
            StatusCode::BAD_REQUEST,
            "bad_message",
        ),
        (
            Method::POST,
            format!("/v1/counter/{}", "x".repeat(300)),
            Body::from(r#""get""#),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            Method::POST,
            "/v1/counter/a%00b".into(),
            Body::from(r#""get""#),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            Method::POST,
            "/v1/counter/x".into(),
            Body::from(vec![b' '; 5000]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            Method::GET,
            "/v1/counter/x".into(),
            Body::empty(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/nowhere".into(),
            Body::empty(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (method, uri, body, status, expected) in cases {
        let (got, value) = send(&app, method.clone(), &uri, body).await;
        assert_eq!((got, code(&value)), (status, expected), "{method} {uri}");
        assert!(
            value["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // The node still serves.
    assert_eq!(
        post(&app, "/v1/counter/x", json!({"add": 1})).await.0,
        StatusCode::OK
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_panic_is_500_without_internal_detail() {
    let (app, rt, _) = gateway().await;
    let (status, body) = post(&app, "/v1/fragile/f", json!("panic")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::INTERNAL_SERVER_ERROR, "handler_panicked")
    );
    assert!(!body.to_string().contains("secret"), "{body}");
    assert_eq!(
        post(&app, "/v1/fragile/f", json!("fine")).await,
        (StatusCode::OK, json!("fine"))
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_503_with_retry_after() {
    let (app, rt, store) = gateway().await;
    store.hold_commits();
    let held: Vec<_> = (0..4)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                post(&app, &format!("/v1/counter/h{i}"), json!({"add": 1})).await
            })
        })
        .collect();
    let started = std::time::Instant::now();
    while rt.stats().inflight < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the four calls never got in flight"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let request = Request::post("/v1/counter/late")
        .body(Body::from(r#""get""#))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    store.release_commits();
    for h in held {
        assert_eq!(h.await.unwrap().0, StatusCode::OK);
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn healthz_answers() {
    let (app, rt, _) = gateway().await;
    assert_eq!(
        send(&app, Method::GET, "/healthz", Body::empty()).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    rt.shutdown().await;
}

/// Ready while it serves shards and its store answers; not ready (but alive) before it
/// serves any, when its store cannot be read, and once it shuts down.
#[tokio::test]
async fn readyz_says_whether_the_node_can_serve_calls() {
    let (app, rt, store) = gateway().await;
    assert_eq!(
        send(&app, Method::GET, "/readyz", Body::empty()).await,
        (StatusCode::OK, json!({"status": "ready", "shards": 1024}))
    );
    perennial_storage::Store::close(store.inner())
        .await
        .unwrap();
    let (status, body) = send(&app, Method::GET, "/readyz", Body::empty()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("store cannot be read"),
        "{body}"
    );
    assert_eq!(
        send(&app, Method::GET, "/healthz", Body::empty()).await.0,
        StatusCode::OK,
        "alive all the same"
    );
    rt.shutdown().await;
    let (status, body) = send(&app, Method::GET, "/readyz", Body::empty()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("shutting down"),
        "{body}"
    );

    // A cluster node that has not leased a shard yet.
    let rt = perennial_demo::register(Runtime::builder().store(MemoryStore::new()))
        .start_unclaimed()
        .await
        .unwrap();
    let app = perennial_gateway::app(rt.clone(), &Options::default());
    let (status, body) = send(&app, Method::GET, "/readyz", Body::empty()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["shards"], 0);
    assert!(
        body["reason"].as_str().unwrap().contains("no shard"),
        "{body}"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_return_the_first_reply() {
    let (app, rt, _) = gateway().await;
    let call = |key: &'static str, add: i64| {
        let app = app.clone();
        async move {
            let request = Request::builder()
                .method(Method::POST)
                .uri("/v1/counter/pay")
                .header("Idempotency-Key", key)
                .body(Body::from(json!({ "add": add }).to_string()))
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(bytes.to_vec()).unwrap())
        }
    };
    let first = call("k-1", 5).await;
    assert_eq!(first, (StatusCode::OK, r#"{"value":5}"#.to_owned()));
    assert_eq!(
        call("k-1", 5).await,
        first,
        "byte for byte, not applied again"
    );
    assert_eq!(call("k-2", 5).await.1, r#"{"value":10}"#);
    let (status, body) = call("", 1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("invalid_idempotency_key"), "{body}");
    rt.shutdown().await;
}
