//! Deleting an entity through the real binary: a crash inside the deleting transaction
//! deletes nothing, and an acknowledged deletion survives kill -9 (no state comes back from
//! the log the store had not folded yet).

use crate::node::{Http, Node, perennial, post, start_with_admin, stop};
use crate::probes::ADMIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_is_all_or_nothing_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let http = Http::new();
    let bearer = format!("Bearer {ADMIN}");
    let auth = [("authorization", bearer.as_str())];
    let path = "/v1/admin/entities/counter/c1";

    // Armed: the first deleting transaction kills the node before it commits.
    let mut command = perennial();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .env("PERENNIAL_ADMIN_TOKEN", ADMIN)
        .env("FAILPOINTS", "sqlite.delete=return");
    let mut node = Node::spawn(command);
    post(&http, &node, "/v1/counter/c1", r#"{"add": 7}"#).await;
    let answer = http.send(node.addr, "DELETE", path, &auth, "").await;
    assert!(
        answer.is_err(),
        "the node died in the transaction: {answer:?}"
    );
    let status = node.child.wait().unwrap();
    assert!(!status.success(), "killed, not stopped: {status:?}");
    drop(node);

    let node = start_with_admin(dir.path());
    assert_eq!(
        http.counter(node.addr, "c1").await,
        7,
        "nothing was deleted"
    );
    let (status, body) = http
        .send(node.addr, "DELETE", path, &auth, "")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    node.kill9();

    let node = start_with_admin(dir.path());
    let (status, body) = http.send(node.addr, "GET", path, &auth, "").await.unwrap();
    assert_eq!(status, 404, "still deleted after kill -9: {body}");
    let (_, body) = http
        .post(node.addr, "/v1/counter/c1", r#"{"add": 1}"#)
        .await
        .unwrap();
    assert_eq!(body["value"], 1, "a new life");
    stop(node);
}
