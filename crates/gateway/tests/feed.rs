//! `GET /v1/{kind}/changes`: a kind's committed changes as Server-Sent Events, from a cursor
//! (`?after=` or `Last-Event-ID`), then live.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{code, gateway, post, send};

/// Opens the feed at `uri` (with `last_event_id`) and reads `n` change events: (cursor, data).
async fn read(
    app: &axum::Router,
    uri: &str,
    last_event_id: Option<&str>,
    n: usize,
) -> Vec<(u64, Value)> {
    let mut request = Request::builder().uri(uri);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut text = String::new();
    loop {
        let events: Vec<(u64, Value)> = text
            .split("\n\n")
            .filter(|e| e.contains("event: change"))
            .filter_map(|e| {
                let field = |name: &str| e.lines().find_map(|l| l.strip_prefix(name));
                Some((
                    field("id: ")?.parse().ok()?,
                    serde_json::from_str(field("data: ")?).ok()?,
                ))
            })
            .collect();
        if events.len() >= n && text.ends_with("\n\n") {
            return events;
        }
        let frame = tokio::time::timeout(Duration::from_secs(3), body.frame())
            .await
            .unwrap_or_else(|_| panic!("no event within three seconds; so far: {text:?}"))
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

fn add(sku: &str) -> Value {
    json!({"add": {"sku": sku, "qty": 1, "cents": 100}})
}

#[tokio::test]
async fn a_kinds_changes_stream_from_a_cursor_and_then_live() {
    let (app, rt, _) = gateway().await;
    post(&app, "/v1/cart/c1", add("tea")).await;
    post(&app, "/v1/cart/c2", add("jam")).await;
    post(&app, "/v1/cart/c1", add("jam")).await;
    let all = read(&app, "/v1/cart/changes", None, 3).await;
    let seen: Vec<(&str, u64)> = all
        .iter()
        .map(|(_, c)| (c["id"].as_str().unwrap(), c["version"].as_u64().unwrap()))
        .collect();
    assert_eq!(seen, [("c1", 1), ("c2", 1), ("c1", 2)]);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "cursors increase");
    assert_eq!(all[2].1["state"]["lines"].as_array().map(Vec::len), Some(2));
    assert_eq!(all[2].1["deleted"], false);

    // From a cursor, by the query or by the header an EventSource sends when it reconnects.
    let after_first = format!("/v1/cart/changes?after={}", all[0].0);
    assert_eq!(read(&app, &after_first, None, 2).await, all[1..]);
    let cursor = all[1].0.to_string();
    assert_eq!(
        read(&app, "/v1/cart/changes", Some(&cursor), 1).await,
        all[2..]
    );

    // Live: a stream that has caught up gets the next change once it is committed.
    let last = all[2].0;
    let live = {
        let app = app.clone();
        tokio::spawn(
            async move { read(&app, &format!("/v1/cart/changes?after={last}"), None, 1).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    post(&app, "/v1/cart/c2", add("tea")).await;
    let next = live.await.unwrap();
    assert_eq!(
        (next[0].1["id"].as_str(), next[0].1["version"].as_u64()),
        (Some("c2"), Some(2))
    );
    assert!(next[0].0 > last);
    rt.shutdown().await;
}

#[tokio::test]
async fn feeds_refuse_what_they_cannot_serve_and_an_entity_may_be_named_changes() {
    let (app, rt, _) = gateway().await;
    let get = |uri: &'static str| send(&app, axum::http::Method::GET, uri, Body::empty());
    let (status, body) = get("/v1/counter/changes").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "no_change_feed")
    );
    let (status, body) = get("/v1/nope/changes").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "unknown_kind")
    );
    let (status, _) = get("/v1/cart/changes?after=-1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let request = Request::builder()
        .uri("/v1/cart/changes")
        .header("last-event-id", "yesterday")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // A POST to `/v1/{kind}/changes` is a call to the entity named `changes`.
    let (status, body) = post(&app, "/v1/counter/changes", json!({"add": 2})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"value": 2})));
    rt.shutdown().await;
}
