//! The admin API, in memory: listing, state and history, passivation, dead letters.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, StatusCode};
use perennial_gateway::{Access, Options};
use serde_json::{Value, json};

use super::{code, gateway_with, post, send};

async fn admin() -> (Router, perennial_core::Runtime) {
    let mut options = Options::default();
    options.admin = Access::Open;
    let (app, rt, _) = gateway_with(options).await;
    (app, rt)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    send(app, Method::GET, uri, Body::empty()).await
}

async fn post_empty(app: &Router, uri: &str) -> (StatusCode, Value) {
    send(app, Method::POST, uri, Body::empty()).await
}

#[tokio::test]
async fn entities_are_listed_in_pages_with_their_residency() {
    let (app, rt) = admin().await;
    for id in ["c3", "c1", "c2"] {
        post(&app, &format!("/v1/counter/{id}"), json!({"add": 2})).await;
    }
    let (status, kinds) = get(&app, "/v1/admin/kinds").await;
    assert_eq!(status, StatusCode::OK);
    let counter = kinds["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "counter")
        .unwrap();
    assert_eq!(
        (
            counter["resident"].as_u64(),
            counter["persistence"].as_str()
        ),
        (Some(3), Some("snapshot"))
    );

    let (status, page) = get(&app, "/v1/admin/kinds/counter/entities?limit=2").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ids: Vec<&str> = page["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c1", "c2"]);
    assert_eq!(page["next"], "c2");
    assert_eq!(page["entities"][0]["resident"], true);
    let (_, last) = get(&app, "/v1/admin/kinds/counter/entities?limit=2&after=c2").await;
    assert_eq!(last["entities"].as_array().unwrap().len(), 1);
    assert_eq!(last["next"], Value::Null);

    let (status, body) = get(&app, "/v1/admin/kinds/nope/entities").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "unknown_kind")
    );
    let (status, body) = get(&app, "/v1/admin/kinds/counter/entities?limit=x").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "bad_query")
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn an_entitys_state_history_and_past_are_shown() {
    let (app, rt) = admin().await;
    post(&app, "/v1/counter/c", json!({"add": 4})).await;
    let (status, state) = get(&app, "/v1/admin/entities/counter/c").await;
    assert_eq!(status, StatusCode::OK, "{state}");
    assert_eq!(state["state"], json!({"value": 4}));

    // `table` is a Journal kind: it has a history and past states.
    for player in ["alice", "bob"] {
        post(
            &app,
            "/v1/table/t",
            json!({"join": {"player": player, "chips": 100}}),
        )
        .await;
    }
    let (status, history) = get(&app, "/v1/admin/entities/table/t/history").await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let steps = history["history"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(
        steps[1]["message"],
        json!({"join": {"player": "bob", "chips": 100}})
    );
    let (status, past) = get(&app, "/v1/admin/entities/table/t/at/1").await;
    assert_eq!(status, StatusCode::OK, "{past}");
    let seated = |state: &Value| {
        let seats = state["seats"].as_array().unwrap();
        seats.iter().filter(|s| !s.is_null()).count()
    };
    assert_eq!(seated(&past["state"]), 1, "{past}");
    let (_, now) = get(&app, "/v1/admin/entities/table/t").await;
    assert_eq!(seated(&now["state"]), 2, "{now}");

    let (status, body) = get(&app, "/v1/admin/entities/counter/c/history").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "no_history"));
    let (status, body) = get(&app, "/v1/admin/entities/table/t/at/zero").await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "bad_path"));
    rt.shutdown().await;
}

#[tokio::test]
async fn entities_are_passivated_on_request() {
    let (app, rt) = admin().await;
    for id in ["a", "b"] {
        post(&app, &format!("/v1/counter/{id}"), json!({"add": 1})).await;
    }
    let (status, body) = post_empty(&app, "/v1/admin/entities/counter/a/passivate").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"outcome": "passivated"}))
    );
    let (_, body) = post_empty(&app, "/v1/admin/entities/counter/a/passivate").await;
    assert_eq!(body, json!({"outcome": "not_resident"}));
    let (_, body) = post_empty(&app, "/v1/admin/kinds/counter/passivate").await;
    assert_eq!(body, json!({"passivated": 1, "busy": 0}));
    let (_, page) = get(&app, "/v1/admin/kinds/counter/entities").await;
    assert!(
        page["entities"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["resident"] == false)
    );
    // Nothing was lost.
    assert_eq!(
        post(&app, "/v1/counter/b", json!("get")).await.1,
        json!({"value": 1})
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn dead_letters_are_listed_shown_retried_and_discarded() {
    let (app, rt) = admin().await;
    // `fragile` panics on "panic"; two attempts set it aside.
    post(&app, "/v1/fragile/f", json!("panic")).await;
    let (status, body) = post(&app, "/v1/fragile/f", json!("panic")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::INTERNAL_SERVER_ERROR, "dead_lettered")
    );

    let (status, list) = get(&app, "/v1/admin/dead-letters?kind=fragile").await;
    assert_eq!(status, StatusCode::OK);
    let letters = list["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1);
    let seq = letters[0]["seq"].as_u64().unwrap();
    let (status, letter) = get(&app, &format!("/v1/admin/dead-letters/{seq}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (letter["kind"].as_str(), letter["id"].as_str()),
        (Some("fragile"), Some("f"))
    );
    assert_eq!(letter["message"], "panic");
    assert_eq!(letter["attempts"], 2);
    // The operator sees the panic text; callers never do.
    assert!(
        letter["error"]
            .as_str()
            .unwrap()
            .contains("secret internal detail")
    );

    // Still panics: the retry fails and the letter stays (replaced after two attempts).
    let (status, body) = post_empty(&app, &format!("/v1/admin/dead-letters/{seq}/retry")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::INTERNAL_SERVER_ERROR, "handler_panicked")
    );
    let (_, list) = get(&app, "/v1/admin/dead-letters").await;
    assert_eq!(list["dead_letters"].as_array().unwrap().len(), 1);

    let (status, body) = post_empty(&app, &format!("/v1/admin/dead-letters/{seq}/discard")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"discarded": seq})));
    let (status, body) = post_empty(&app, &format!("/v1/admin/dead-letters/{seq}/discard")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "no_such_letter")
    );
    let (status, body) = post_empty(&app, &format!("/v1/admin/dead-letters/{seq}/retry")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "no_such_letter")
    );
    let (status, body) = get(&app, "/v1/admin/dead-letters/x").await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "bad_path"));
    rt.shutdown().await;
}

fn ids(page: &Value) -> Vec<&str> {
    page["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn entities_are_queried_by_state_with_and_without_an_index() {
    let (app, rt) = admin().await;
    for (id, n) in [("a", 5), ("b", 500), ("c", 150), ("d", 150)] {
        post(&app, &format!("/v1/counter/{id}"), json!({"add": n})).await;
    }
    let (status, page) = get(
        &app,
        "/v1/admin/kinds/counter/query?filter=value%20%3E%20100",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(ids(&page), ["b", "c", "d"]);
    assert_eq!(page["entities"][0]["state"], json!({"value": 500}));
    assert_eq!(page["entities"][0]["version"], 1);
    let (_, page) = get(
        &app,
        "/v1/admin/kinds/counter/query?filter=value=150&limit=1",
    )
    .await;
    assert_eq!((ids(&page), &page["next"]), (vec!["c"], &json!("c")));
    let (_, page) = get(
        &app,
        "/v1/admin/kinds/counter/query?filter=value=150&after=c",
    )
    .await;
    assert_eq!((ids(&page), &page["next"]), (vec!["d"], &Value::Null));

    let (status, body) = send(
        &app,
        Method::POST,
        "/v1/admin/kinds/counter/indexes",
        Body::from(r#"{"path": "value"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, list) = get(&app, "/v1/admin/kinds/counter/indexes").await;
    assert_eq!(list["indexes"], json!(["value"]));
    let (_, page) = get(&app, "/v1/admin/kinds/counter/query?filter=value%20=%20150").await;
    assert_eq!(ids(&page), ["c", "d"]);
    let uri = "/v1/admin/kinds/counter/indexes/value";
    let (status, body) = get(&app, uri).await;
    assert_eq!((status, &body["path"]), (StatusCode::OK, &json!("value")));
    let (status, _) = send(&app, Method::DELETE, uri, Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    for method in [Method::DELETE, Method::GET] {
        let (status, body) = send(&app, method, uri, Body::empty()).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::NOT_FOUND, "no_such_index")
        );
    }
    // A path with brackets, percent-encoded in the URL.
    let nested = "/v1/admin/kinds/counter/indexes/seats%5B0%5D.player";
    let (status, body) = send(&app, Method::DELETE, nested, Body::empty()).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "no_such_index"),
        "{body}"
    );

    for (uri, status_code, error) in [
        (
            "/v1/admin/kinds/counter/query?filter=value%20%3E",
            400,
            "bad_filter",
        ),
        ("/v1/admin/kinds/counter/query", 400, "bad_query"),
        ("/v1/admin/kinds/nope/query?filter=a=1", 404, "unknown_kind"),
        ("/v1/admin/kinds/counter/indexes/a%5B", 400, "bad_path"),
    ] {
        let method = if uri.contains("indexes") {
            Method::DELETE
        } else {
            Method::GET
        };
        let (status, body) = send(&app, method, uri, Body::empty()).await;
        assert_eq!(
            (status.as_u16(), code(&body)),
            (status_code, error),
            "{uri}: {body}"
        );
    }
    let (status, body) = send(
        &app,
        Method::POST,
        "/v1/admin/kinds/counter/indexes",
        Body::from(r#"{"path": "items[*].name"}"#),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "not_indexable")
    );
    let (status, body) = send(
        &app,
        Method::POST,
        "/v1/admin/kinds/counter/indexes",
        Body::from("not json"),
    )
    .await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "bad_body"));
    rt.shutdown().await;
}

#[tokio::test]
async fn a_paused_entity_answers_409_until_it_is_resumed() {
    let (app, rt) = admin().await;
    post(&app, "/v1/counter/p", json!({"add": 1})).await;
    let (status, body) = post_empty(&app, "/v1/admin/entities/counter/p/pause").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"paused": true, "changed": true}))
    );
    let (_, body) = post_empty(&app, "/v1/admin/entities/counter/p/pause").await;
    assert_eq!(body, json!({"paused": true, "changed": false}));
    let (status, body) = post(&app, "/v1/counter/p", json!({"add": 1})).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "paused"));
    // Other entities are not affected.
    assert_eq!(
        post(&app, "/v1/counter/q", json!({"add": 1})).await.0,
        StatusCode::OK
    );
    let (_, list) = get(&app, "/v1/admin/paused").await;
    assert_eq!(list, json!({"paused": [{"kind": "counter", "id": "p"}]}));
    let (_, page) = get(&app, "/v1/admin/kinds/counter/entities").await;
    assert_eq!(page["entities"][0]["paused"], true);

    let (_, body) = post_empty(&app, "/v1/admin/entities/counter/p/resume").await;
    assert_eq!(body, json!({"paused": false, "changed": true}));
    let (status, body) = post(&app, "/v1/counter/p", json!({"add": 1})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"value": 2})));
    let (status, body) = post_empty(&app, "/v1/admin/entities/nope/p/pause").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "unknown_kind")
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn an_entity_is_deleted_and_its_next_call_starts_it_afresh() {
    let (app, rt) = admin().await;
    post(&app, "/v1/counter/d1", json!({"add": 5})).await;
    let (status, body) = send(
        &app,
        Method::DELETE,
        "/v1/admin/entities/counter/d1",
        Body::empty(),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"kind": "counter", "id": "d1", "deleted": true})
        )
    );
    let (status, body) = get(&app, "/v1/admin/entities/counter/d1").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (_, page) = get(&app, "/v1/admin/kinds/counter/entities").await;
    assert_eq!(page["entities"], json!([]));
    let (status, body) = post(&app, "/v1/counter/d1", json!({"add": 1})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"value": 1})));
    // `force` is a boolean; anything else is a bad query.
    let uri = "/v1/admin/entities/counter/d1?force=true";
    assert_eq!(
        send(&app, Method::DELETE, uri, Body::empty()).await.0,
        StatusCode::OK
    );
    let uri = "/v1/admin/entities/counter/d1?force=maybe";
    let (status, body) = send(&app, Method::DELETE, uri, Body::empty()).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "bad_query")
    );
    let uri = "/v1/admin/entities/nope/d1";
    let (status, body) = send(&app, Method::DELETE, uri, Body::empty()).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "unknown_kind")
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_migration_batch_is_an_integer_as_json_schema_means_it() {
    let (app, rt) = admin().await;
    // JSON Schema's `integer` admits a zero fraction; `/openapi.json` promises an integer.
    for (batch, accepted) in [
        ("64", true),
        ("64.0", true),
        ("null", true),
        ("0", true),
        ("64.5", false),
        ("-1", false),
        ("18446744073709551616", false),
        ("1.8446744073709552e19", false),
        ("\"64\"", false),
    ] {
        let body = Body::from(format!(r#"{{"dry_run": true, "batch": {batch}}}"#));
        let (status, reply) =
            send(&app, Method::POST, "/v1/admin/kinds/counter/migrate", body).await;
        if accepted {
            assert_eq!(status, StatusCode::ACCEPTED, "batch {batch}: {reply}");
            // One pass at a time: wait for this one to end before the next.
            for _ in 0..200 {
                let (_, status) = get(&app, "/v1/admin/kinds/counter/migrate").await;
                if status["running"] == false {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "batch {batch}: {reply}");
            assert_eq!(reply["error"]["code"], "bad_body", "batch {batch}");
        }
    }
    rt.shutdown().await;
}
