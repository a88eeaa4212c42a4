//! Asks through the real binary: a cart's checkout asks each line's inventory to reserve it,
//! and kill -9 at each point of an ask's way (before its delivery, after the inventory
//! answered but before the cart applied the answer) reserves once and answers once, with no
//! pending row left behind.

use std::path::Path;

use crate::node::{Http, Node, perennial, post, stop, wait_for};

/// How many pending rows the data directory holds (the node is stopped).
fn pending_rows(data: &Path) -> i64 {
    let db = rusqlite::Connection::open(data.join("perennial.db")).unwrap();
    db.query_row("SELECT count(*) FROM all_pending", [], |row| row.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_reserves_once_across_kill_9_at_every_point_of_an_ask() {
    for failpoint in ["dispatch.deliver", "dispatch.asked"] {
        let dir = tempfile::tempdir().unwrap();
        let http = Http::new();
        let node = Node::start(dir.path());
        post(&http, &node, "/v1/inventory/tea", r#"{"restock": 5}"#).await;
        post(&http, &node, "/v1/inventory/jam", r#"{"restock": 1}"#).await;
        stop(node);

        // Armed: the node kills itself at the crash point, after the checkout's step is
        // durable (its reply is sent) and the asks are on their way.
        let mut command = perennial();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path())
            .env("FAILPOINTS", format!("{failpoint}=return"));
        let mut node = Node::spawn(command);
        for line in [
            r#"{"add": {"sku": "tea", "qty": 2, "cents": 250}}"#,
            r#"{"add": {"sku": "jam", "qty": 1, "cents": 400}}"#,
        ] {
            post(&http, &node, "/v1/cart/c1", line).await;
        }
        // The reply may or may not leave before the node dies: the step is durable first.
        let _ = http.post(node.addr, "/v1/cart/c1", r#""checkout""#).await;
        let status = node.child.wait().unwrap();
        assert!(!status.success(), "{failpoint}: killed, not stopped");
        drop(node);

        let node = Node::start(dir.path());
        let cart = wait_for(&http, &node, "/v1/cart/c1", r#""view""#, |v| {
            v["cart"]["checkout"]["status"] == "reserved"
        })
        .await;
        let mut reserved: Vec<&str> = cart["cart"]["checkout"]["reserved"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|sku| sku.as_str())
            .collect();
        reserved.sort_unstable();
        assert_eq!(reserved, ["jam", "tea"], "{failpoint}: {cart}");
        let tea = post(&http, &node, "/v1/inventory/tea", r#""view""#).await;
        assert_eq!(
            (tea["available"].as_u64(), tea["reserved"]["c1"].as_u64()),
            (Some(3), Some(2)),
            "{failpoint}: reserved once: {tea}"
        );
        let jam = post(&http, &node, "/v1/inventory/jam", r#""view""#).await;
        assert_eq!(jam["available"], 0, "{failpoint}: {jam}");
        stop(node);
        assert_eq!(pending_rows(dir.path()), 0, "{failpoint}: no row left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_line_fails_the_checkout_and_releases_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let http = Http::new();
    let node = Node::start(dir.path());
    post(&http, &node, "/v1/inventory/tea", r#"{"restock": 5}"#).await;
    for line in [
        r#"{"add": {"sku": "tea", "qty": 2, "cents": 250}}"#,
        r#"{"add": {"sku": "gold", "qty": 1, "cents": 99900}}"#,
    ] {
        post(&http, &node, "/v1/cart/c2", line).await;
    }
    let started = post(&http, &node, "/v1/cart/c2", r#""checkout""#).await;
    assert_eq!(started["cart"]["checkout"]["status"], "reserving");
    let cart = wait_for(&http, &node, "/v1/cart/c2", r#""view""#, |v| {
        v["cart"]["checkout"]["status"] == "failed"
    })
    .await;
    let why = cart["cart"]["checkout"]["refused"]["gold"]
        .as_str()
        .unwrap();
    assert!(why.contains("out_of_stock"), "{cart}");
    wait_for(&http, &node, "/v1/inventory/tea", r#""view""#, |v| {
        v["available"] == 5
    })
    .await;
    // A client cannot answer for an inventory: an answer to no ask of the cart changes
    // nothing.
    let forged = r#"{"reserved": {"sku": "gold", "answer": {"id": 1, "result": {"Ok": {"available": 0, "reserved": {}}}}}}"#;
    let after = post(&http, &node, "/v1/cart/c2", forged).await;
    assert_eq!(after["cart"]["checkout"]["status"], "failed", "{after}");
    stop(node);
}
