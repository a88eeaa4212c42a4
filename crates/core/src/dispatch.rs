//! The dispatcher: fires due timers, delivers messages sent between entities, runs effects.
//!
//! Steps create pending rows (see [`perennial_storage::Pending`]) in their own commit. The
//! dispatcher keeps in memory only the rows due soon (see `due`), loaded by a scan of the
//! store every half of the lookahead (`LOOKAHEAD` on a node) (and at start, which is how rows survive restarts), plus the
//! rows that committed batches create meanwhile, when they fall inside that window. Millions
//! of pending timers therefore cost storage, not memory.
//!
//! A due row is delivered to its target entity as a message; the target's step that applies
//! it deletes the row **in the same transaction**, so a row is applied exactly once: before
//! that commit it is still stored and will be delivered again after a crash, after it the
//! row is gone. Within one node, each row has at most one delivery in flight, and the
//! messages from one entity to another go one at a time, in the order sent.
//!
//! An effect row is run first (its work, outside any handler), then its result is delivered
//! to its entity like a timer. If the node stops while the effect runs, the row is still
//! stored, and the effect runs again after the restart: effects run at least once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use perennial_faults::failpoint;
use perennial_storage::{DeadLetter, DeadLetterWrite, Pending, PendingClass, PendingDone};
use perennial_types::{EntityKey, Epoch, shard_of};

use crate::courier::{Applying, Delivery, Parcel};
use crate::due::RowId;
use crate::dyn_kind::DynKind;
use crate::engine::Engine;
use crate::process::ask::{AskBody, AskError, answer_message, asked_json};
use crate::process::effect::{
    Attempt, EffectBody, EffectCtx, EffectError, EffectFailure, EffectId, EffectVtable, Retrying,
};

/// How long a failed delivery waits before it is tried again, at first and at most.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The kinds by name, as the dispatcher delivers to them.
pub(crate) type Kinds = HashMap<&'static str, Arc<dyn DynKind>>;

/// The dispatcher task: scans the store for due rows and delivers them, until the runtime
/// closes.
pub(crate) async fn run(engine: Arc<Engine>, kinds: Arc<Kinds>) {
    let due_rows = Arc::clone(&engine.due);
    let mut next_scan = tokio::time::Instant::now();
    let mut next_expiry = tokio::time::Instant::now() + engine.config.reply_expiry_interval;
    loop {
        if engine.is_closing() {
            return;
        }
        let now = tokio::time::Instant::now();
        if now >= next_scan {
            next_scan = now + scan(&engine).await;
        }
        if now >= next_expiry {
            expire_replies(&engine);
            next_expiry = now + engine.config.reply_expiry_interval;
        }
        let (due, next_due) = due_rows.take_due(crate::clock::now_ms());
        for row in due {
            // Delivered under the epoch its owner's shard has now: if the shard is lost and
            // taken again meanwhile, another node may have applied the row in between.
            let shard = shard_of(&row.owner.kind, row.owner.id.as_str());
            match engine.shards.epoch(shard) {
                Some(epoch) => {
                    crate::task::spawn(deliver(
                        Arc::clone(&engine),
                        Arc::clone(&kinds),
                        row,
                        epoch,
                    ));
                }
                None => due_rows.finish(&row),
            }
        }
        let mut until = next_scan.min(next_expiry);
        if let Some(at) = next_due {
            let wait = u64::try_from(at - crate::clock::now_ms()).unwrap_or(0);
            until = until.min(tokio::time::Instant::now() + Duration::from_millis(wait));
        }
        let notified = due_rows.woken();
        tokio::select! {
            // In order, not at random: a simulation must take the same branch every run.
            biased;
            () = notified => {}
            // Shards granted: their rows are in storage only.
            () = engine.shards.granted.notified() => next_scan = tokio::time::Instant::now(),
            () = tokio::time::sleep_until(until) => {}
            () = engine.closed() => return,
        }
    }
}

/// Loads the rows due soon; returns when to scan again.
async fn scan(engine: &Engine) -> Duration {
    let horizon = crate::clock::now_ms().saturating_add(millis(engine.config.lookahead));
    let room = engine.due.scan_started(horizon).max(1);
    let rows = match engine.store.due(horizon, room).await {
        Ok(rows) => rows,
        Err(error) => {
            engine.due.scan_failed();
            tracing::warn!(%error, "cannot read the pending timers, messages and effects; retrying");
            return Duration::from_secs(1);
        }
    };
    // In a cluster, other nodes deliver the rows of the shards they own.
    let ours = |row: &Pending| {
        let shard = shard_of(&row.owner.kind, row.owner.id.as_str());
        engine.shards.epoch(shard).is_some()
    };
    if engine.due.scanned(rows, room, horizon, ours) {
        Duration::from_millis(200)
    } else {
        engine.config.lookahead / 2
    }
}

/// Deletes kept replies older than the idempotency window, a bounded number per batch, and
/// changes older than their feed keeps them.
fn expire_replies(engine: &Engine) {
    let window = millis(engine.config.reply_window);
    let before_ms = crate::clock::now_ms().saturating_sub(window);
    let now_ms = crate::clock::now_ms();
    engine.committer.chore(|batch| {
        batch.expire_replies = Some(perennial_storage::ExpireReplies {
            before_ms,
            limit: 10_000,
        });
        batch.expire_changes = engine
            .config
            .feeds
            .iter()
            .map(|(kind, keep)| perennial_storage::ExpireChanges {
                kind: (*kind).to_owned(),
                before_ms: now_ms.saturating_sub(millis(*keep)),
                limit: 10_000,
            })
            .collect();
    });
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Delivers one row, retrying until it is applied, refused or poison, or the runtime closes.
async fn deliver(engine: Arc<Engine>, kinds: Arc<Kinds>, row: Pending, epoch: Epoch) {
    // An effect's work runs once per delivery task; only its result's delivery is retried.
    let mut body = Arc::clone(&row.body);
    match row.class {
        PendingClass::Ask => return ask(&engine, &kinds, &row, epoch).await,
        PendingClass::Effect => match run_effect(&engine, &row).await {
            Ok(msg) => {
                failpoint!("effect.finished");
                body = Arc::from(msg);
            }
            Err(outcome) => return settle(&engine, &row, outcome),
        },
        PendingClass::Timer | PendingClass::Message => {}
    }
    failpoint!("dispatch.deliver");
    // In a cluster, a node that lost the owner's shard may still be delivering the row
    // while the new owner delivers it too: every delivery then keeps its reply under a
    // key made from the row's id, so whichever comes second is not applied again.
    let applying = if engine.shards.shared {
        Applying::KeyedRow
    } else {
        Applying::Row
    };
    let to = Target {
        key: &row.target,
        body,
        applying,
    };
    let outcome = attempt(&engine, &kinds, &row, epoch, to).await;
    settle(&engine, &row, outcome);
}

/// Where a delivery goes: the entity, the message (JSON), and how the entity applies it.
#[derive(Clone)]
struct Target<'a> {
    key: &'a EntityKey,
    body: Arc<str>,
    applying: Applying,
}

/// Delivers a message of `row` to `to` until it is applied, refused or poison, the owner's
/// shard is no longer served under `epoch` ([`Delivery::Skipped`]), or the runtime closes
/// ([`Delivery::Retry`]).
async fn attempt(
    engine: &Engine,
    kinds: &Kinds,
    row: &Pending,
    epoch: Epoch,
    mut to: Target<'_>,
) -> Delivery {
    let mut backoff = RETRY_FIRST;
    let owner_shard = shard_of(&row.owner.kind, row.owner.id.as_str());
    loop {
        // A paused or quarantined target gets nothing; the row waits, in memory and in
        // storage.
        engine.pauses.held(to.key, || engine.is_closing()).await;
        engine.quarantine.held(to.key, || engine.is_closing()).await;
        let row_id = RowId::of(row);
        if row.class == PendingClass::Ask && engine.due.is_cancelled(&row_id) {
            // Its asker was deleted meanwhile, and the ask with it.
            return Delivery::Skipped;
        }
        if engine.shards.epoch(owner_shard) != Some(epoch) {
            // Handed off, or the lease lapsed (and perhaps taken again, with a new epoch): the
            // row may have been applied elsewhere meanwhile. Whoever serves the shard now
            // reads it from storage, if it is still there.
            return Delivery::Skipped;
        }
        let Some(kind) = kinds.get(&*to.key.kind) else {
            return Delivery::Poison(format!("kind {:?} is not registered", to.key.kind));
        };
        let mut outcome = Arc::clone(kind)
            .deliver(to.key.id.clone(), Arc::clone(&to.body), row_id, to.applying)
            .await;
        if outcome == Delivery::NotServed && to.applying == Applying::KeyedAnswer {
            // The asker's shard moved since the epoch check: its new owner reads the row
            // from storage and delivers the ask again (answered from the kept reply).
            return Delivery::Skipped;
        }
        if outcome == Delivery::NotServed {
            // Another node serves the target: the cluster's courier carries the row there.
            outcome = match engine.courier.get() {
                Some(courier) => {
                    let (owner, target, body) =
                        (row.owner.clone(), to.key.clone(), Arc::clone(&to.body));
                    let parcel = match to.applying {
                        Applying::Ask { .. } => Parcel::ask(owner, row.seq, target, body),
                        Applying::Row | Applying::KeyedRow | Applying::KeyedAnswer => {
                            Parcel::new(owner, row.seq, target, body)
                        }
                    };
                    match courier.carry(parcel).await {
                        Delivery::NotServed => Delivery::Retry("the target moved".into()),
                        outcome => outcome,
                    }
                }
                None => Delivery::Retry("no node serves the target's shard now".into()),
            };
        }
        match outcome {
            Delivery::Retry(detail) => {
                if engine.is_closing() {
                    return Delivery::Retry(detail);
                }
                // The attempt may have been applied (its outcome is unknown): the next one
                // asks storage for a kept reply.
                if let Applying::Ask { fresh } = &mut to.applying {
                    *fresh = false;
                }
                tracing::debug!(owner = %row.owner, seq = row.seq, %detail, "delivery failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
            outcome => return outcome,
        }
    }
}

/// Delivers an ask (see `process::ask`): its message to the target, until the target
/// answered or the deadline passed; then the answer, made into the asker's message, to the
/// asker, whose step deletes the row.
async fn ask(engine: &Engine, kinds: &Kinds, row: &Pending, epoch: Epoch) {
    let body: AskBody<'_> = match serde_json::from_str(&row.body) {
        Ok(body) => body,
        Err(e) => {
            let detail = format!("the stored ask does not decode: {e}");
            return settle(engine, row, Delivery::Poison(detail));
        }
    };
    failpoint!("dispatch.deliver");
    let fresh = !engine.shards.shared && engine.due.take_fresh(&RowId::of(row));
    let to = Target {
        key: &row.target,
        body: Arc::from(body.msg.get()),
        applying: Applying::Ask { fresh },
    };
    let asked = attempt(engine, kinds, row, epoch, to);
    // `None`: the deadline passed first.
    let outcome = match body.deadline_ms {
        None => Some(asked.await),
        Some(deadline_ms) => match u64::try_from(deadline_ms - crate::clock::now_ms()) {
            Ok(left) if left > 0 => tokio::time::timeout(Duration::from_millis(left), asked)
                .await
                .ok(),
            _ => None,
        },
    };
    let result = match outcome {
        None => Err(AskError::TimedOut),
        Some(Delivery::Answered(reply)) => Ok(reply),
        Some(Delivery::Refused { code, message }) => Err(AskError::Refused { code, message }),
        Some(Delivery::Poison(detail)) => Err(AskError::Failed(detail)),
        Some(Delivery::Applied) => Err(AskError::Failed("the target did not reply".into())),
        // The owner's shard was lost, or the runtime closes: the row waits in storage.
        Some(Delivery::Skipped | Delivery::Retry(_) | Delivery::NotServed) => {
            return settle(engine, row, Delivery::Skipped);
        }
    };
    failpoint!("dispatch.asked");
    let answer = asked_json(row.seq, result.as_deref().map_err(Clone::clone))
        .and_then(|answer| answer_message(&body, answer));
    let answer = match answer {
        Ok(answer) => answer,
        Err(detail) => return settle(engine, row, Delivery::Poison(detail)),
    };
    // In a cluster, a commit's outcome may be unknown (the connection dropped during it):
    // the answer is then delivered again, and must not be applied twice.
    let applying = if engine.shards.shared {
        Applying::KeyedAnswer
    } else {
        Applying::Row
    };
    let to = Target {
        key: &row.owner,
        body: Arc::from(answer),
        applying,
    };
    let outcome = attempt(engine, kinds, row, epoch, to.clone()).await;
    if applying == Applying::Row && outcome == Delivery::Applied {
        forget_kept_reply(engine, row);
    }
    settle_as(engine, row, outcome, &to);
}

/// Deletes the reply the target of the ask `row` kept under the row's key, once the asker
/// applied the answer and deleted the row: on a single node, nothing can deliver the ask again
/// (in a cluster a node that lost the asker's shard still may, so there the reply waits for
/// the replies' window). Kept replies then stay few, and so does the B-tree they are kept in.
fn forget_kept_reply(engine: &Engine, row: &Pending) {
    let shard = shard_of(&row.target.kind, row.target.id.as_str());
    let Some(epoch) = engine.shards.epoch(shard) else {
        return;
    };
    let done = perennial_storage::ReplyDone {
        key: row.target.clone(),
        shard,
        epoch,
        idempotency_key: crate::courier::row_key(&row.owner, row.seq),
    };
    engine
        .committer
        .chore(|batch| batch.replies_done.push(done));
}

/// Runs an effect's attempts (see [`crate::Effect`]); returns the message for its entity
/// (JSON): the result of the first attempt that succeeds, or the failure's message once no
/// attempt is left. `Err`: nothing to deliver (the effect cannot run, was cancelled, or the
/// runtime closes).
async fn run_effect(engine: &Engine, row: &Pending) -> Result<String, Delivery> {
    let parsed: EffectBody<'_> = serde_json::from_str(&row.body)
        .map_err(|e| Delivery::Poison(format!("the stored effect does not decode: {e}")))?;
    let name: &str = &parsed.effect;
    let Some(effect) = engine.effects.get(&(&*row.owner.kind, name)).copied() else {
        return Err(Delivery::Poison(format!(
            "effect {name:?} of kind {:?} is not registered; add \
             .register_effect::<…>() to the runtime's builder",
            row.owner.kind
        )));
    };
    let input = parsed.input.get();
    let id = EffectId::new(row.owner.clone(), row.seq);
    let row_id = RowId::of(row);
    let outcome = attempts(engine, (input, effect), &id, &row_id).await;
    engine.effect_counters.retrying.lock().remove(&row_id);
    outcome
}

/// [`run_effect`]'s attempts, each failure recorded for operators.
async fn attempts(
    engine: &Engine,
    (input, effect): (&str, EffectVtable),
    id: &EffectId,
    row_id: &RowId,
) -> Result<String, Delivery> {
    let retry = (effect.retry)();
    let mut attempt = 1;
    loop {
        let cx = EffectCtx::new(id.clone(), attempt, Arc::clone(&engine.resources));
        let work = (effect.run)(input, cx).map_err(Delivery::Poison)?;
        let error = match attempt_effect(engine, row_id, work, retry.timeout).await? {
            Ok(msg) => return Ok(msg),
            Err(error) => error,
        };
        engine
            .effect_counters
            .failed_attempts
            .fetch_add(1, Ordering::Relaxed);
        let status = Retrying {
            failed_attempts: attempt,
            last_error: error.to_string(),
        };
        engine
            .effect_counters
            .retrying
            .lock()
            .insert(row_id.clone(), status);
        if error.is_permanent() || attempt >= retry.attempts {
            tracing::warn!(effect = %id, attempt, %error, "an effect failed for good");
            engine
                .effect_counters
                .failed
                .fetch_add(1, Ordering::Relaxed);
            let failure = EffectFailure {
                attempts: attempt,
                error: error.to_string(),
            };
            return (effect.failed)(input, failure).map_err(Delivery::Poison);
        }
        let wait = retry.wait_after(attempt, id);
        tracing::info!(effect = %id, attempt, %error, ?wait, "an effect's attempt failed; retrying");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = engine.closed() => return Err(Delivery::Retry("the runtime closes".into())),
        }
        if engine.due.is_cancelled(row_id) {
            return Err(Delivery::Skipped);
        }
        attempt += 1;
    }
}

/// Runs one attempt of an effect on a task of its own (a panic is a failed attempt), for at
/// most `timeout`. `Err`: the effect was cancelled meanwhile, or the runtime closes.
async fn attempt_effect(
    engine: &Engine,
    row: &RowId,
    work: Attempt,
    timeout: Duration,
) -> Result<Result<String, EffectError>, Delivery> {
    let mut task = crate::task::spawn(work);
    let deadline = tokio::time::Instant::now() + timeout;
    let outcome = loop {
        tokio::select! {
            joined = &mut task => break joined,
            () = tokio::time::sleep_until(deadline) => {
                task.abort();
                return Ok(Err(EffectError::new(format!(
                    "the attempt took longer than its timeout of {timeout:?}"
                ))));
            }
            // A step may cancel the effect while it runs: it is stopped.
            () = tokio::time::sleep(CANCEL_CHECK) => {
                if engine.due.is_cancelled(row) {
                    task.abort();
                    return Err(Delivery::Skipped);
                }
            }
            () = engine.closed() => {
                task.abort();
                return Err(Delivery::Retry("the runtime closes".into()));
            }
        }
    };
    Ok(match outcome {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(EffectError::new(format!(
            "the attempt panicked: {}",
            crate::guard::panic_message(e.into_panic())
        ))),
        Err(e) => Err(EffectError::new(e.to_string())),
    })
}

/// How often a running effect checks whether a step cancelled it.
const CANCEL_CHECK: Duration = Duration::from_millis(50);

/// Ends a delivery: the row leaves memory, and a refused or poison row is deleted.
fn settle(engine: &Engine, row: &Pending, outcome: Delivery) {
    let to = Target {
        key: &row.target,
        body: Arc::clone(&row.body),
        applying: Applying::Row,
    };
    settle_as(engine, row, outcome, &to);
}

/// [`settle`]s a row whose last delivery went `to`: a poison one becomes a dead letter for
/// that entity, with that message (an ask's answer, for an ask).
fn settle_as(engine: &Engine, row: &Pending, outcome: Delivery, to: &Target<'_>) {
    match &outcome {
        Delivery::Applied | Delivery::Answered(_) => {
            engine.due.count_fired();
        }
        Delivery::Skipped | Delivery::Retry(_) | Delivery::NotServed => {}
        Delivery::Refused {
            message: detail, ..
        }
        | Delivery::Poison(detail) => {
            engine.due.count_fired();
            let poison = matches!(outcome, Delivery::Poison(_));
            if poison {
                tracing::error!(owner = %row.owner, seq = row.seq, target = %to.key, %detail,
                    "a timer, message or effect cannot be applied; it is kept as a dead letter");
            } else {
                tracing::info!(owner = %row.owner, seq = row.seq, target = %to.key, %detail,
                    "the target refused a timer or message; it is dropped");
            }
            // Written under the row owner's shard: this node serves it (it delivers the row).
            let shard = shard_of(&row.owner.kind, row.owner.id.as_str());
            let Some(epoch) = engine.shards.epoch(shard) else {
                engine.due.finish(row);
                return;
            };
            let letter = poison.then(|| DeadLetterWrite {
                shard,
                epoch,
                letter: DeadLetter {
                    key: to.key.clone(),
                    message: to.body.to_string(),
                    error: detail.clone(),
                    attempts: 1,
                    at_ms: crate::clock::now_ms(),
                },
            });
            let done = PendingDone {
                shard,
                epoch,
                owner: row.owner.clone(),
                seq: row.seq,
            };
            engine.committer.chore(|batch| {
                batch.done.push(done);
                batch.dead_letters.extend(letter);
            });
        }
    }
    engine.due.finish(row);
    engine.due.wake();
}
