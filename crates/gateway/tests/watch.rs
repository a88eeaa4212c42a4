//! `GET /v1/{kind}/{id}/watch`: the current state, then each committed change, as
//! Server-Sent Events.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

use super::{code, gateway, post, send};

/// Reads the stream until `events` more events came; returns them as (id, data) pairs.
async fn events(body: &mut Body, events: usize) -> Vec<(Option<String>, String)> {
    let mut text = String::new();
    loop {
        let parsed: Vec<(Option<String>, String)> = text
            .split("\n\n")
            .filter(|e| e.contains("event: state"))
            .map(|e| {
                let field = |name: &str| {
                    e.lines()
                        .find_map(|l| l.strip_prefix(name).map(str::to_owned))
                };
                (field("id: "), field("data: ").unwrap_or_default())
            })
            .collect();
        if parsed.len() >= events && text.ends_with("\n\n") {
            return parsed;
        }
        let frame = tokio::time::timeout(Duration::from_secs(2), body.frame())
            .await
            .unwrap_or_else(|_| panic!("no event within two seconds; so far: {text:?}"))
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

#[tokio::test]
async fn a_client_follows_an_entity_live() {
    let (app, rt, _) = gateway().await;
    post(&app, "/v1/counter/w", json!({"add": 2})).await;
    let request = Request::builder()
        .uri("/v1/counter/w/watch")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body();
    assert_eq!(
        events(&mut body, 1).await,
        [(None, r#"{"value":2}"#.to_owned())]
    );
    post(&app, "/v1/counter/w", json!({"add": 3})).await;
    post(&app, "/v1/counter/w", json!({"add": 4})).await;
    assert_eq!(
        events(&mut body, 2).await,
        [
            (Some("2".to_owned()), r#"{"value":5}"#.to_owned()),
            (Some("3".to_owned()), r#"{"value":9}"#.to_owned())
        ]
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn only_stored_json_states_can_be_watched() {
    let (app, rt, _) = gateway().await;
    for (uri, status, error) in [
        ("/v1/nope/x/watch", StatusCode::NOT_FOUND, "unknown_kind"),
        (
            "/v1/house/h/watch",
            StatusCode::BAD_REQUEST,
            "not_watchable",
        ),
    ] {
        let (got, body) = send(&app, axum::http::Method::GET, uri, Body::empty()).await;
        assert_eq!((got, code(&body)), (status, error), "{uri}");
    }
    rt.shutdown().await;
}
