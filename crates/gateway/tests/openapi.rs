//! `/openapi.json` describes every route, and every route it describes exists.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use perennial_gateway::{Access, Options, openapi};
use serde_json::Value;

use super::{gateway_with, send};

#[tokio::test]
async fn the_document_and_the_routes_agree() {
    let mut options = Options::default();
    options.admin = Access::Open;
    let (app, rt, _) = gateway_with(options).await;
    let (status, served) = send(&app, Method::GET, "/openapi.json", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(openapi::json()).unwrap();
    assert_eq!(served, doc);
    assert_eq!(doc["openapi"], "3.1.0");

    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in paths {
        let uri = path
            .replace("{kind}", "counter")
            .replace("{id}", "c1")
            .replace("{step}", "1")
            .replace("{seq}", "1");
        for method in methods.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            if uri.ends_with("/watch") || uri == "/metrics" {
                continue; // not JSON; their own tests cover them
            }
            let (status, body) = send(&app, method.clone(), &uri, Body::empty()).await;
            let missing = status == StatusCode::METHOD_NOT_ALLOWED
                || (status == StatusCode::NOT_FOUND && body["error"]["code"] == "not_found");
            assert!(
                !missing,
                "{method} {uri} is documented but not routed: {status} {body}"
            );
        }
    }
    // Every route the admin API declares is documented.
    let source = include_str!("../src/admin/mod.rs");
    for (at, _) in source.match_indices("\"/v1/admin") {
        let route = source[at + 1..].split('"').next().unwrap();
        assert!(
            paths.contains_key(route),
            "{route} is routed but not documented"
        );
    }
    for route in [
        "/v1/{kind}/{id}",
        "/v1/{kind}/{id}/watch",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(route), "{route} is not documented");
    }
    rt.shutdown().await;
}
