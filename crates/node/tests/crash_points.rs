//! Crash points: the binary kills itself (SIGKILL) at a named durability boundary while
//! clients append to probes (`probe` and `jprobe`), forward tokens between them, schedule
//! timers and start effects, every call recorded for the history checker. The node is
//! started again on the same store, the clients send every unanswered call again with its
//! idempotency key, and the checker must find nothing lost, doubled, reordered or split, and
//! every timer, message and effect applied exactly once.
//!
//! Each point runs on SQLite; the points of the commit path run on PostgreSQL too. The
//! points are listed in `perennial-faults`.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::node::{Http, Node, perennial};
use crate::probes::{ADMIN, Load};

/// Where a crash test's node keeps its state.
enum Store {
    Sqlite(tempfile::TempDir),
    Postgres {
        url: String,
        schema: perennial_storage_postgres::test_util::Schema,
    },
}

impl Store {
    async fn sqlite() -> Option<Store> {
        Some(Store::Sqlite(tempfile::tempdir().unwrap()))
    }

    /// A fresh schema, or `None` (after a loud skip) without PostgreSQL.
    async fn postgres() -> Option<Store> {
        let schema = perennial_storage_postgres::test_util::schema().await?;
        Some(Store::Postgres {
            url: perennial_storage_postgres::test_util::url(),
            schema,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "SQLite",
            Store::Postgres { .. } => "PostgreSQL",
        }
    }

    /// Starts a node on this store, its crash points armed with `failpoints`.
    fn start(&self, failpoints: Option<&str>, extra: &[&str]) -> Node {
        let mut command: Command = perennial();
        command.args(["serve", "--listen", "127.0.0.1:0"]);
        match self {
            Store::Sqlite(dir) => {
                command.arg("--data").arg(dir.path());
            }
            Store::Postgres { url, schema } => {
                command.args(["--store", url, "--store-schema", schema.name()]);
            }
        }
        command.args(extra);
        command.env("PERENNIAL_ADMIN_TOKEN", ADMIN);
        if let Some(failpoints) = failpoints {
            command.env("FAILPOINTS", failpoints);
        }
        Node::spawn(command)
    }
}

/// When a test arms its crash point.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arm {
    /// From the node's start.
    AtStart,
    /// After a first kill -9 and restart: for points on the path of recovery.
    AfterRestart,
}

/// Runs the probe load against a node armed to crash at `point` on its `hit`-th pass,
/// restarts it, and checks the history.
async fn crash_at(store: Option<Store>, point: &str, hit: u32, arm: Arm, extra: &[&str]) {
    let Some(store) = store else { return };
    let armed = format!("{point}={}*off->return", hit - 1);
    let mut node = store.start((arm == Arm::AtStart).then_some(armed.as_str()), extra);
    let http = Http::new();
    // Half `Journal` kinds, so journals, snapshots, trims and replay are on the path.
    let probes: Vec<String> = (0..16)
        .map(|i| format!("{}/c{i}", if i % 2 == 0 { "probe" } else { "jprobe" }))
        .collect();
    let load = Load::start(&http, vec![node.addr], 16, probes, true);
    if arm == Arm::AfterRestart {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        node.kill9();
        node = store.start(Some(&armed), extra);
        load.set_live(vec![node.addr]);
    }
    let crashed = wait_for_exit(&mut node, Duration::from_secs(30));
    assert!(
        crashed,
        "{} never crashed at {point} (hit {hit}): the point is not on this path",
        store.name()
    );
    drop(node);
    load.mark();
    let node = store.start(None, extra);
    load.set_live(vec![node.addr]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let name = format!("crash-{}-{point}", store.name().to_lowercase());
    let outcome = load.finish(&http, &[node.addr], &name).await;
    let first = outcome.firsts.iter().flatten().min().copied();
    println!(
        "crash at {point} (hit {hit}) on {}: {}; {} calls sent again; recovery (crash to the \
         first acknowledgement) {first:?}",
        store.name(),
        outcome.report,
        outcome.retries,
    );
    assert!(outcome.retries > 0, "the crash hit no call in flight");
    assert!(
        outcome.report.acknowledged > 100,
        "too little load to check: {}",
        outcome.report
    );
}

/// Waits until the node exits on its own; whether it did within `limit`.
fn wait_for_exit(node: &mut Node, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if node
            .child
            .try_wait()
            .expect("the child can be polled")
            .is_some()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

macro_rules! crash_point_tests {
    ($($test:ident: $store:ident, $point:literal at $hit:literal $(, $arm:ident)? $(, [$($extra:literal),*])?;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            #[allow(unused_mut, unused_assignments)]
            let mut arm = Arm::AtStart;
            $(arm = Arm::$arm;)?
            let extra: &[&str] = &[$($($extra),*)?];
            crash_at(Store::$store().await, $point, $hit, arm, extra).await;
        }
    )*};
}

crash_point_tests! {
    crash_before_a_commit: sqlite, "commit.before" at 150;
    crash_inside_a_transaction_before_its_commit: sqlite, "sqlite.written" at 150;
    crash_after_a_snapshot_before_its_journal_trim: sqlite, "sqlite.trim" at 20;
    crash_after_a_commit_before_any_reply: sqlite, "commit.after" at 150;
    crash_after_messages_are_written_before_delivery: sqlite, "commit.rows_written" at 40;
    crash_after_a_delivery_is_applied_before_the_dispatcher_hears: sqlite, "commit.rows_applied" at 40;
    crash_after_an_idempotent_reply_is_kept_before_it_is_sent: sqlite, "commit.reply_kept" at 80;
    crash_when_a_message_is_taken_for_delivery: sqlite, "dispatch.deliver" at 40;
    crash_after_a_timer_is_handled_before_its_step_commits: sqlite, "step.row_handled" at 40;
    crash_after_an_effect_finishes_before_its_result_is_delivered: sqlite, "effect.finished" at 10;
    crash_in_the_middle_of_a_replay: sqlite, "journal.replay" at 5, AfterRestart;
    crash_when_a_passivated_entity_is_not_yet_unregistered: sqlite, "passivate.unregister" at 40, ["--max-resident", "6"];
    postgres_crash_before_a_commit: postgres, "commit.before" at 150;
    postgres_crash_after_the_fence_check_before_any_write: postgres, "pg.commit.fenced" at 150;
    postgres_crash_inside_a_transaction_before_its_commit: postgres, "pg.written" at 150;
    postgres_crash_after_a_commit_before_any_reply: postgres, "commit.after" at 150;
    postgres_crash_after_messages_are_written_before_delivery: postgres, "commit.rows_written" at 40;
    postgres_crash_in_the_middle_of_a_replay: postgres, "journal.replay" at 5, AfterRestart;
}
