//! State versions: states stored by older code are migrated when read and written back by
//! the next step; states from newer code, and states a migration refuses, are quarantined
//! untouched; a migration pass rewrites dormant entities (and resumes by running again);
//! a snapshot pass leaves nothing to replay; and `verify_replay` names the entities a new
//! handler would diverge on.

use std::sync::atomic::{AtomicBool, Ordering};

use perennial_core::{
    CallError, Ctx, Migrate, Migration, MigrationError, Process, Progress, Runtime, Snapshots,
    schema_version,
};
use perennial_storage::{JournalEntry, MemoryStore, Record, Store};
use perennial_types::EntityKey;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A cart at schema version 3: lines with prices in cents, and a currency.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cart {
    lines: Vec<Line>,
    currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    sku: String,
    cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CartMsg {
    Add { sku: String, cents: u64 },
    View,
}

/// Version 1: `{"items": {"sku": dollars}}`; version 2: `{"lines": [{"sku", "price"}]}`.
fn items_to_lines(mut v1: Value) -> Result<Value, MigrationError> {
    let items = v1["items"].take();
    let items = items
        .as_object()
        .ok_or_else(|| MigrationError::new("a version 1 cart has `items`"))?;
    let lines: Vec<Value> = items
        .iter()
        .map(|(sku, price)| json!({"sku": sku, "price": price}))
        .collect();
    Ok(json!({ "lines": lines }))
}

/// Version 2 to 3: dollars to cents, and a currency. Refuses a negative price.
fn dollars_to_cents(mut v2: Value) -> Result<Value, MigrationError> {
    let lines = v2["lines"]
        .as_array_mut()
        .ok_or_else(|| MigrationError::new("a version 2 cart has `lines`"))?;
    for line in lines {
        let dollars = line["price"].as_f64().unwrap_or(-1.0);
        if dollars < 0.0 {
            return Err(MigrationError::new(format!(
                "a bad price: {}",
                line["price"]
            )));
        }
        let object = line.as_object_mut().expect("a line is an object");
        object.remove("price");
        object.insert("cents".into(), json!((dollars * 100.0).round() as u64));
    }
    v2["currency"] = json!("USD");
    Ok(v2)
}

impl Process for Cart {
    const KIND: &'static str = "cart";
    const MIGRATIONS: &'static [Migration] = &[items_to_lines, dollars_to_cents];
    type Msg = CartMsg;
    type Reply = Cart;
    type Error = std::convert::Infallible;

    fn handle(&mut self, msg: CartMsg, _ctx: &mut Ctx<'_, Self>) -> Result<Cart, Self::Error> {
        if let CartMsg::Add { sku, cents } = msg {
            self.lines.push(Line { sku, cents });
        }
        Ok(self.clone())
    }

    fn is_read_only(msg: &CartMsg) -> bool {
        matches!(msg, CartMsg::View)
    }
}

/// The same cart kept by its journal, with snapshots. With `REPRICED`, a kind of its own
/// whose handler changes when [`NEW_PRICING`] is set (a "new build").
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
struct JournalCart<const REPRICED: bool = false>(Cart);

/// The kind whose handler a test changes.
type RepricedCart = JournalCart<true>;

impl<const REPRICED: bool> Process for JournalCart<REPRICED> {
    const KIND: &'static str = if REPRICED { "rcart" } else { "jcart" };
    const MIGRATIONS: &'static [Migration] = Cart::MIGRATIONS;
    type Msg = CartMsg;
    type Reply = Cart;
    type Error = std::convert::Infallible;

    fn handle(&mut self, msg: CartMsg, ctx: &mut Ctx<'_, Self>) -> Result<Cart, Self::Error> {
        if let CartMsg::Add { sku, cents } = msg {
            // The "new build" charges a cent more: replaying old steps with it diverges.
            let extra = u64::from(REPRICED && NEW_PRICING.load(Ordering::SeqCst));
            self.0.lines.push(Line {
                sku,
                cents: cents + extra,
            });
        }
        let _ = ctx;
        Ok(self.0.clone())
    }

    fn is_read_only(msg: &CartMsg) -> bool {
        matches!(msg, CartMsg::View)
    }
}

/// Switches `JournalCart` to its "new build" handler.
static NEW_PRICING: AtomicBool = AtomicBool::new(false);

fn key(kind: &str, id: &str) -> EntityKey {
    EntityKey::new(kind, id.parse().unwrap())
}

fn record(state: Value, version: u64, schema: u32) -> Record {
    Record {
        state: state.to_string(),
        version,
        schema,
    }
}

async fn carts(store: &MemoryStore) -> Runtime {
    Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Cart>()
        .register_journal_with_snapshots::<JournalCart>(Snapshots::every(1000))
        .register_journal_with_snapshots::<RepricedCart>(Snapshots::every(1000))
        .start()
        .await
        .unwrap()
}

fn add_tea() -> CartMsg {
    CartMsg::Add {
        sku: "tea".into(),
        cents: 250,
    }
}

fn v1_cart() -> Value {
    json!({"items": {"tea": 2.5}})
}

fn v3_cart() -> Cart {
    Cart {
        lines: vec![Line {
            sku: "tea".into(),
            cents: 250,
        }],
        currency: "USD".into(),
    }
}

#[tokio::test]
async fn an_old_state_is_migrated_when_read_and_written_back_by_the_next_step() {
    assert_eq!(schema_version::<Cart>(), 3);
    let store = MemoryStore::new();
    store.put_record(key("cart", "c1"), record(v1_cart(), 4, 1));
    store.put_record(key("cart", "c2"), record(v1_cart(), 4, 1));
    let rt = carts(&store).await;
    // A step that changes nothing still writes the state back, at the new version.
    let view = rt.get::<Cart>("c1").call(CartMsg::View).await.unwrap();
    assert_eq!(view, v3_cart());
    let stored = store.load(&key("cart", "c1")).await.unwrap().unwrap();
    assert_eq!((stored.schema, stored.version), (3, 5));
    assert_eq!(
        serde_json::from_str::<Cart>(&stored.state).unwrap(),
        v3_cart()
    );
    // And a step that changes it writes the new state at the new version.
    let add = CartMsg::Add {
        sku: "jam".into(),
        cents: 400,
    };
    let after = rt.get::<Cart>("c2").call(add).await.unwrap();
    assert_eq!(after.lines.len(), 2);
    let stored = store.load(&key("cart", "c2")).await.unwrap().unwrap();
    assert_eq!(stored.schema, 3);
    // A second read of an up-to-date state writes nothing.
    rt.get::<Cart>("c1").call(CartMsg::View).await.unwrap();
    assert_eq!(
        store
            .load(&key("cart", "c1"))
            .await
            .unwrap()
            .unwrap()
            .version,
        5
    );
    // New entities are born at the new version.
    rt.get::<Cart>("new").call(CartMsg::View).await.unwrap();
    let add = CartMsg::Add {
        sku: "x".into(),
        cents: 1,
    };
    rt.get::<Cart>("new").call(add).await.unwrap();
    assert_eq!(
        store
            .load(&key("cart", "new"))
            .await
            .unwrap()
            .unwrap()
            .schema,
        3
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_state_from_newer_code_is_refused_quarantined_and_left_untouched() {
    let store = MemoryStore::new();
    let newer = record(json!({"lines": [], "currency": "EUR", "tax": 7}), 9, 4);
    store.put_record(key("cart", "future"), newer.clone());
    let rt = carts(&store).await;
    let cart = rt.get::<Cart>("future");
    let first = cart.call(CartMsg::View).await.unwrap_err();
    assert!(
        matches!(
            first,
            CallError::StateTooNew {
                schema: 4,
                supported: 3,
                ..
            }
        ),
        "{first:?}"
    );
    assert!(first.to_string().contains("cart/future"), "{first}");
    assert_eq!(first.code(), "state_too_new");
    assert!(matches!(
        cart.call(CartMsg::View).await,
        Err(CallError::Quarantined(_))
    ));
    let listed = rt.admin().quarantined();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].code, "state_too_new");
    assert_eq!(
        store.load(&key("cart", "future")).await.unwrap(),
        Some(newer)
    );
    // A migration pass refuses it too, and writes nothing.
    let report = rt
        .admin()
        .migrate("cart", Migrate::new(), &Progress::default())
        .await
        .unwrap();
    assert_eq!((report.failed, report.changed), (1, 0));
    assert_eq!(report.failures[0].code, "state_too_new");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_failing_migration_quarantines_until_the_bytes_are_fixed_and_released() {
    let store = MemoryStore::new();
    let bad = record(json!({"lines": [{"sku": "tea", "price": -3}]}), 2, 2);
    store.put_record(key("cart", "bad"), bad.clone());
    let rt = carts(&store).await;
    let cart = rt.get::<Cart>("bad");
    let error = cart.call(CartMsg::View).await.unwrap_err();
    assert!(
        matches!(&error, CallError::MigrationFailed { from: 2, detail, .. } if detail.contains("a bad price")),
        "{error:?}"
    );
    assert_eq!(rt.admin().quarantined()[0].code, "migration_failed");
    assert_eq!(store.load(&key("cart", "bad")).await.unwrap(), Some(bad));
    // A state that migrates but then does not decode is a failed migration too.
    store.put_record(
        key("cart", "odd"),
        record(json!({"lines": [], "extra": 1}), 2, 2),
    );
    let odd = rt.get::<Cart>("odd").call(CartMsg::View).await.unwrap_err();
    assert!(
        matches!(&odd, CallError::MigrationFailed { detail, .. } if detail.contains("does not decode")),
        "{odd:?}"
    );
    // The operator fixes the bytes and releases it.
    store.put_record(
        key("cart", "bad"),
        record(json!({"lines": [{"sku": "tea", "price": 3}]}), 2, 2),
    );
    assert!(rt.admin().release("cart", "bad").unwrap());
    let fixed = cart.call(CartMsg::View).await.unwrap();
    assert_eq!(fixed.lines[0].cents, 300);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_journal_kind_migrates_its_snapshot_and_refuses_entries_from_newer_code() {
    let store = MemoryStore::new();
    // A snapshot at step 2 of version 1, and a step 3 journaled by version 1 code.
    let k = key("jcart", "j1");
    store.put_record(k.clone(), record(v1_cart(), 2, 1));
    let add = r#"{"add":{"sku":"jam","cents":400}}"#;
    let entry = |step: u64, text: String| JournalEntry {
        step,
        at_us: 1_000_000,
        entry: text.into(),
    };
    let digest_of = |cart: &Cart| {
        // The digest replay recomputes: the reply as JSON, hashed as the runtime does.
        let json = serde_json::to_string(cart).unwrap();
        xxhash_rust::xxh3::xxh3_64(json.as_bytes())
    };
    let mut after = v3_cart();
    after.lines.push(Line {
        sku: "jam".into(),
        cents: 400,
    });
    let digest = digest_of(&after);
    store.put_journal(
        k.clone(),
        vec![entry(
            3,
            format!(r#"{{"msg":{add},"reply":"{digest:016x}"}}"#),
        )],
    );
    let rt = carts(&store).await;
    let view = rt
        .get::<JournalCart>("j1")
        .call(CartMsg::View)
        .await
        .unwrap();
    assert_eq!(view, after);
    // The next journaled step writes a snapshot at the new version, early.
    let more = CartMsg::Add {
        sku: "milk".into(),
        cents: 90,
    };
    rt.get::<JournalCart>("j1").call(more).await.unwrap();
    let snapshot = store.load(&k).await.unwrap().unwrap();
    assert_eq!((snapshot.schema, snapshot.version), (3, 4));
    assert!(
        store.journal(&k, 0, 10).await.unwrap().is_empty(),
        "trimmed by it"
    );
    // Later entries record the version that wrote them.
    rt.get::<JournalCart>("j1").call(add_tea()).await.unwrap();
    let entries = store.journal(&k, 0, 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert!(
        entries[0].entry.contains(r#""v":3"#),
        "{}",
        entries[0].entry
    );
    rt.shutdown().await;

    // An entry written by newer code is refused, untouched.
    let k2 = key("jcart", "j2");
    let future = format!(r#"{{"msg":{add},"reply":"0","v":5,"init":{{"at_us":1}}}}"#);
    store.put_journal(k2.clone(), vec![entry(1, future)]);
    let rt = carts(&store).await;
    let error = rt
        .get::<JournalCart>("j2")
        .call(CartMsg::View)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            CallError::StateTooNew {
                schema: 5,
                supported: 3,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(store.journal(&k2, 0, 10).await.unwrap().len(), 1);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_migration_pass_rewrites_dormant_entities_and_resumes_by_running_again() {
    let store = MemoryStore::new();
    for n in 0..150 {
        let schema = if n % 3 == 0 { 2 } else { 1 };
        let state = if schema == 1 {
            v1_cart()
        } else {
            json!({"lines": [{"sku": "tea", "price": 2.5}]})
        };
        store.put_record(key("cart", &format!("c{n:03}")), record(state, 1, schema));
    }
    store.put_record(
        key("cart", "c200-bad"),
        record(json!({"lines": [{"sku": "x", "price": -1}]}), 1, 2),
    );
    let rt = carts(&store).await;
    // A dry run writes nothing, and says what would change and what fails.
    let progress = Progress::default();
    let dry = rt
        .admin()
        .migrate("cart", Migrate::new().dry_run(), &progress)
        .await
        .unwrap();
    assert_eq!((dry.changed, dry.failed, dry.examined), (150, 1, 151));
    assert_eq!(dry.failures[0].id, "c200-bad");
    assert_eq!(dry.failures[0].code, "migration_failed");
    assert_eq!(progress.total(), 151);
    let c0 = store.load(&key("cart", "c000")).await.unwrap().unwrap();
    assert_eq!(c0.schema, 2, "a dry run writes nothing");
    // Live traffic meanwhile: c001 is resident and stays so.
    rt.get::<Cart>("c001").call(CartMsg::View).await.unwrap();
    let progress = Progress::default();
    let report = rt
        .admin()
        .migrate("cart", Migrate::new().batch(16), &progress)
        .await
        .unwrap();
    // c001 was written back by its own call.
    assert_eq!((report.changed, report.failed), (149, 1), "{report:?}");
    assert_eq!((progress.examined(), progress.changed()), (151, 149));
    for n in 0..150 {
        let stored = store
            .load(&key("cart", &format!("c{n:03}")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.schema, 3, "c{n:03}");
        assert_eq!(
            serde_json::from_str::<Cart>(&stored.state).unwrap(),
            v3_cart()
        );
    }
    let listed = rt.admin().entities("cart", None, 1000).await.unwrap();
    let resident: Vec<&str> = listed
        .iter()
        .filter(|e| e.resident)
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(resident, ["c001"], "the pass passivates what it activated");
    // Running it again changes nothing: a pass cut short is resumed this way.
    let again = rt
        .admin()
        .migrate("cart", Migrate::new(), &Progress::default())
        .await
        .unwrap();
    assert_eq!((again.changed, again.unchanged, again.failed), (0, 150, 1));
    rt.shutdown().await;
}

#[tokio::test]
async fn a_snapshot_pass_leaves_no_step_to_replay_and_verify_replay_names_divergent_entities() {
    let store = MemoryStore::new();
    let rt = carts(&store).await;
    for id in ["a", "b", "c"] {
        for n in 0..3 {
            let add = CartMsg::Add {
                sku: format!("s{n}"),
                cents: 100,
            };
            rt.get::<RepricedCart>(id).call(add).await.unwrap();
        }
    }
    // With the old build, everything replays.
    let clean = rt
        .admin()
        .verify_replay("rcart", &Progress::default())
        .await
        .unwrap();
    assert_eq!((clean.checked, clean.failed), (3, 0));
    // The new build's handler would diverge on every journaled step.
    NEW_PRICING.store(true, Ordering::SeqCst);
    let diverged = rt
        .admin()
        .verify_replay("rcart", &Progress::default())
        .await
        .unwrap();
    NEW_PRICING.store(false, Ordering::SeqCst);
    assert_eq!(diverged.failed, 3);
    let ids: Vec<&str> = diverged.failures.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert!(
        diverged
            .failures
            .iter()
            .all(|f| f.code == "replay_diverged")
    );
    // So the old build snapshots them all first: nothing is left to replay.
    let snap = rt
        .admin()
        .migrate("rcart", Migrate::new().snapshot(), &Progress::default())
        .await
        .unwrap();
    assert_eq!(snap.changed, 3);
    for id in ["a", "b", "c"] {
        let k = key("rcart", id);
        assert_eq!(store.load(&k).await.unwrap().unwrap().version, 4);
        assert!(store.journal(&k, 0, 10).await.unwrap().is_empty(), "{id}");
    }
    rt.shutdown().await;
    // And the new build activates them with nothing to replay.
    NEW_PRICING.store(true, Ordering::SeqCst);
    let rt = carts(&store).await;
    let after = rt
        .admin()
        .verify_replay("rcart", &Progress::default())
        .await
        .unwrap();
    let view = rt.get::<RepricedCart>("b").call(CartMsg::View).await;
    NEW_PRICING.store(false, Ordering::SeqCst);
    assert_eq!(after.failed, 0, "{after:?}");
    assert_eq!(view.unwrap().lines.len(), 3);
    rt.shutdown().await;
}

/// The same kind as build "N" knew it: schema version 2 (`{"lines": [{"sku", "price"}]}`),
/// one migration. Build "N + 1" is [`Cart`].
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct CartV2 {
    lines: Vec<Value>,
}

impl Process for CartV2 {
    const KIND: &'static str = "cart";
    const MIGRATIONS: &'static [Migration] = &[items_to_lines];
    type Msg = Value;
    type Reply = usize;
    type Error = std::convert::Infallible;

    fn handle(&mut self, line: Value, _ctx: &mut Ctx<'_, Self>) -> Result<usize, Self::Error> {
        if !line.is_null() {
            self.lines.push(line);
        }
        Ok(self.lines.len())
    }
}

/// During a rolling upgrade (or a rollback) an entity moves between builds N and N + 1 on
/// one store: the old build refuses what the new one wrote and leaves it as it is; the new
/// build migrates what the old one wrote; nothing is ever corrupted.
#[tokio::test]
async fn an_entity_moving_between_old_and_new_builds_is_never_corrupted() {
    let store = MemoryStore::new();
    let old = |store: &MemoryStore| {
        Runtime::builder()
            .store(store.clone())
            .register_snapshot::<CartV2>()
            .start()
    };
    // Build N writes at version 2.
    let rt = old(&store).await.unwrap();
    let line = json!({"sku": "tea", "price": 2.5});
    assert_eq!(rt.get::<CartV2>("e").call(line).await.unwrap(), 1);
    rt.shutdown().await;
    assert_eq!(
        store.load(&key("cart", "e")).await.unwrap().unwrap().schema,
        2
    );
    // Build N + 1 reads it, migrates it and writes it at version 3.
    let rt = carts(&store).await;
    let cart = rt.get::<Cart>("e").call(add_tea()).await.unwrap();
    assert_eq!(cart.lines.len(), 2);
    assert_eq!(cart.lines[0].cents, 250);
    rt.shutdown().await;
    let written = store.load(&key("cart", "e")).await.unwrap().unwrap();
    assert_eq!(written.schema, 3);
    // The entity moves back to build N: refused, untouched, its other entities fine.
    let rt = old(&store).await.unwrap();
    let refused = rt.get::<CartV2>("e").call(Value::Null).await.unwrap_err();
    assert!(
        matches!(
            refused,
            CallError::StateTooNew {
                schema: 3,
                supported: 2,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(
        rt.get::<CartV2>("other").call(Value::Null).await.unwrap(),
        0
    );
    rt.shutdown().await;
    assert_eq!(store.load(&key("cart", "e")).await.unwrap(), Some(written));
    // And build N + 1 goes on where it was.
    let rt = carts(&store).await;
    let view = rt.get::<Cart>("e").call(CartMsg::View).await.unwrap();
    assert_eq!(view.lines.len(), 2);
    rt.shutdown().await;
}
