//! `/metrics`: call latency by kind and outcome, and the runtime's counters, in the
//! Prometheus text format.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use perennial_gateway::{Access, Options};
use serde_json::json;
use tower::ServiceExt;

use super::{gateway, gateway_with, post};

async fn scrape(app: &Router, token: Option<&str>) -> (StatusCode, String) {
    let mut request = Request::builder().uri("/metrics");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// The value of the sample named exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

#[tokio::test]
async fn calls_and_the_runtime_are_measured() {
    let (app, rt, _) = gateway().await;
    for _ in 0..3 {
        post(&app, "/v1/counter/c1", json!({"add": 1})).await;
    }
    post(&app, "/v1/counter/c2", json!("nonsense")).await;
    post(&app, "/v1/no-such-kind/x", json!(1)).await;
    post(&app, "/v1/fragile/f", json!("panic")).await;
    post(&app, "/v1/fragile/f", json!("panic")).await;

    let (status, text) = scrape(&app, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.ends_with("# EOF\n"), "{text}");
    let calls = |kind: &str, outcome: &str| {
        sample(
            &text,
            &format!("perennial_call_seconds_count{{kind=\"{kind}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(calls("counter", "ok"), 3.0);
    assert_eq!(calls("counter", "bad_message"), 1.0);
    assert_eq!(calls("unknown", "unknown_kind"), 1.0);
    assert_eq!(calls("fragile", "dead_lettered"), 1.0);
    // The message to c2 did not decode: c2 was never activated.
    assert_eq!(
        sample(&text, "perennial_activations_total{kind=\"counter\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "perennial_resident_entities{kind=\"counter\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "perennial_dead_letters_total{kind=\"fragile\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "perennial_restarts_total{kind=\"fragile\"}"),
        2.0
    );
    let commits = sample(&text, "perennial_commits_total");
    assert!(commits >= 3.0, "{text}");
    assert_eq!(
        sample(&text, "perennial_commit_durable_seconds_count"),
        commits
    );
    assert_eq!(
        sample(&text, "perennial_commit_steps_bucket{le=\"+Inf\"}"),
        commits
    );
    assert!(sample(&text, "perennial_committed_steps_total") >= 3.0);
    assert_eq!(sample(&text, "perennial_paused_entities"), 0.0);
    assert!(sample(&text, "perennial_resident_bytes") > 0.0);
    rt.shutdown().await;
}

#[tokio::test]
async fn metrics_can_need_a_token() {
    let mut options = Options::default();
    options.metrics = Access::Token("metrics-token-0123456789".into());
    let (app, rt, _) = gateway_with(options).await;
    assert_eq!(scrape(&app, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        scrape(&app, Some("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        scrape(&app, Some("metrics-token-0123456789")).await.0,
        StatusCode::OK
    );
    rt.shutdown().await;
}
