//! Who is calling, over HTTP: with a caller key, every call carries a verified caller token
//! (or the client token of a service); the demo's poker table lets a player act only as
//! themselves and shows each caller only their own hole cards, in replies and watch streams.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use jsonwebtoken::{EncodingKey, Header, encode};
use perennial_gateway::{Access, CallerKey, Options};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{code, gateway_with};

const SECRET: &[u8] = b"the table's test secret, 32 bytes+";
const SERVICE: &str = "service-token-0123456789";

/// A caller token for `sub`, expiring `exp_in` seconds from now (in the past if negative).
fn token(sub: &str, exp_in: i64) -> String {
    let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap();
    let claims = json!({"sub": sub, "exp": now + exp_in, "aud": "poker"});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

async fn poker_node() -> (Router, perennial_core::Runtime) {
    let mut options = Options::default();
    options.callers = Some(CallerKey::secret(SECRET).audience("poker"));
    options.client = Access::Token(SERVICE.into());
    let (app, rt, _) = gateway_with(options).await;
    (app, rt)
}

/// Posts `body` to `uri` with `bearer` (and an idempotency key, if given).
async fn call(
    app: &Router,
    uri: &str,
    bearer: Option<&str>,
    key: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(Method::POST).uri(uri);
    if let Some(bearer) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let request = request.body(Body::from(body.to_string())).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Each seated player's hole cards in a view, as (player, number of cards).
fn cards(view: &Value) -> Vec<(String, usize)> {
    view["seats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let player = s["player"].as_str().unwrap().to_owned();
            (player, s["hole_cards"].as_array().unwrap().len())
        })
        .collect()
}

#[tokio::test]
async fn players_act_only_as_themselves_and_see_only_their_own_cards() {
    let (app, rt) = poker_node().await;
    let (alice, bob) = (token("alice", 600), token("bob", 600));
    let table = "/v1/table/t1";

    // No token, a bad one, an expired one, another audience's: 401, and nothing applied.
    let join = |player: &str| json!({"join": {"player": player, "chips": 1000}});
    let (status, body) = call(&app, table, None, None, join("alice")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (status, body) = call(
        &app,
        table,
        Some(&token("alice", -600)),
        None,
        join("alice"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
    let chess = encode(
        &Header::default(),
        &json!({"sub": "alice", "exp": 4_000_000_000u64, "aud": "chess"}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let (status, _) = call(&app, table, Some(&chess), None, join("alice")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Each player joins as themselves; joining as someone else is 403.
    let (status, _) = call(&app, table, Some(&alice), None, join("alice")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(&app, table, Some(&alice), None, join("mallory")).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "not_you"));
    let (status, _) = call(&app, table, Some(&bob), None, join("bob")).await;
    assert_eq!(status, StatusCode::OK);

    // A service (the client token) calls as nobody: it sees no hole cards.
    let (status, dealt) = call(&app, table, Some(SERVICE), None, json!("start_hand")).await;
    assert_eq!(status, StatusCode::OK, "{dealt}");
    assert_eq!(cards(&dealt), [("alice".into(), 0), ("bob".into(), 0)]);

    // Each player sees their own two cards and nobody else's.
    let (_, seen) = call(&app, table, Some(&alice), None, json!("view")).await;
    assert_eq!(cards(&seen), [("alice".into(), 2), ("bob".into(), 0)]);
    let (_, seen) = call(&app, table, Some(&bob), None, json!("view")).await;
    assert_eq!(cards(&seen), [("alice".into(), 0), ("bob".into(), 2)]);
    let peek = json!({"view_for": {"player": "bob"}});
    let (status, body) = call(&app, table, Some(&alice), None, peek).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "not_you"));

    // The player to act cannot be acted for by the other; acting as themselves shows their
    // own cards in the reply.
    let to_act = dealt["to_act"].as_str().unwrap().to_owned();
    let (me, other) = if to_act == "alice" {
        (&alice, &bob)
    } else {
        (&bob, &alice)
    };
    let fold = json!({"act": {"player": to_act, "action": "fold"}});
    let (status, body) = call(&app, table, Some(other), None, fold.clone()).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "not_you"));
    let (_, before) = call(&app, table, Some(me), None, json!("view")).await;
    assert_eq!(
        before["street"], dealt["street"],
        "the refused act changed nothing"
    );
    let (status, after) = call(&app, table, Some(me), None, fold).await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert!(
        after["last_result"].is_object(),
        "the fold ended the hand: {after}"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn idempotency_keys_are_per_caller_over_http() {
    let (app, rt) = poker_node().await;
    let (alice, bob) = (token("alice", 600), token("bob", 600));
    let add = json!({"add": 1});
    let (_, first) = call(&app, "/v1/counter/c", Some(&alice), Some("k"), add.clone()).await;
    let (_, other) = call(&app, "/v1/counter/c", Some(&bob), Some("k"), add.clone()).await;
    let (_, again) = call(&app, "/v1/counter/c", Some(&alice), Some("k"), add).await;
    assert_eq!(
        (first["value"].as_i64(), other["value"].as_i64()),
        (Some(1), Some(2))
    );
    assert_eq!(again, first, "alice's retry gets her reply, not bob's");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_tables_watchers_learn_that_it_changed_not_its_cards() {
    let (app, rt) = poker_node().await;
    let alice = token("alice", 600);
    let join = json!({"join": {"player": "alice", "chips": 1000}});
    call(&app, "/v1/table/w", Some(&alice), None, join).await;
    // A browser's EventSource sends no headers: the token rides in the query.
    let uri = format!("/v1/table/w/watch?access_token={alice}");
    let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let frame = tokio::time::timeout(std::time::Duration::from_secs(2), body.frame())
        .await
        .expect("the first event")
        .unwrap()
        .unwrap();
    let text = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
    assert!(
        text.contains("event: changed") && text.contains("data: null"),
        "{text}"
    );
    assert!(
        !text.contains("alice") && !text.contains("deck"),
        "no state leaks: {text}"
    );
    // Without a token, the stream is refused like a call.
    let request = Request::builder()
        .uri("/v1/table/w/watch")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    rt.shutdown().await;
}
