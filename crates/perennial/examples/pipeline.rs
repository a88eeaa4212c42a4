//! A per-user pipeline: each user submits many jobs, at most 3 of a user's run at once, and
//! nothing is lost across restarts, `kill -9` included.
//!
//! `cargo run -p perennial --example pipeline [DIR]` keeps the queues in DIR (default: a new
//! temporary directory). Kill it while it runs and start it again on the same DIR: the jobs
//! that were running run again, the waiting ones start, none is counted twice.

use std::time::Duration;

use perennial::queue::{Job, JobQueue, QueueMsg, QueueReply};
use perennial::{EffectCtx, EffectError, Runtime, SqliteStore};
use serde::{Deserialize, Serialize};

/// One step of a user's pipeline: fetch a file, work on it, store the result.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Convert {
    file: String,
}

/// Stands in for an HTTP client or a database pool: given to the runtime's builder, reached
/// from every job's work.
struct Storage {
    latency: Duration,
}

impl Job for Convert {
    const KIND: &'static str = "pipeline";
    const CONCURRENCY: u32 = 3;
    type Output = u64;

    async fn run(self, cx: EffectCtx) -> Result<u64, EffectError> {
        let storage = cx.resource::<Storage>()?;
        // Real async work. `cx.id()` is the same on every attempt: an idempotency key.
        tokio::time::sleep(storage.latency).await;
        let bytes = self.file.len() as u64 * 1024;
        println!("  {} done ({bytes} bytes, job {})", self.file, cx.id());
        Ok(bytes)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temporary = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| temporary.path().to_path_buf(), Into::into);
    let builder = Runtime::builder()
        .store(SqliteStore::open(&dir)?)
        .resource(Storage {
            latency: Duration::from_millis(50),
        });
    let rt = JobQueue::<Convert>::register(builder).start().await?;

    for user in ["alice", "bob"] {
        let queue = rt.get::<JobQueue<Convert>>(user);
        for n in 0..6 {
            let job = Convert {
                file: format!("{user}-{n}.csv"),
            };
            queue.call(QueueMsg::submit(job)).await?;
        }
    }
    // Wait until both users' queues are drained.
    for user in ["alice", "bob"] {
        let queue = rt.get::<JobQueue<Convert>>(user);
        loop {
            let QueueReply::Status(status) = queue.call(QueueMsg::Status).await? else {
                unreachable!("a status is answered with the status");
            };
            if status.running == 0 && status.queued == 0 {
                println!(
                    "{user}: {} jobs done, {} failed",
                    status.done, status.failed
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    rt.shutdown().await;
    Ok(())
}
