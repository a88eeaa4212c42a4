//! Queries on SQLite find exactly what the filter's own evaluator finds, for random states
//! and random filters, whether the states are still in the log or folded into the table.

use std::sync::Arc;

use perennial_storage::{Batch, Filter, Page, StateWrite, Store};
use perennial_storage_sqlite::SqliteStore;
use perennial_types::{EntityId, EntityKey, shard_of};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::all_shards;

fn json_state() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..4).prop_map(|n| json!(n)),
        Just(json!(1.5)),
        prop_oneof![Just("x"), Just("y"), Just(""), Just("it's")].prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("a".to_owned()),
                    Just("b".to_owned()),
                    Just("c".to_owned())
                ],
                inner,
                0..3
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn comparison() -> impl Strategy<Value = String> {
    let path = prop_oneof![
        Just("a"),
        Just("b"),
        Just("a.b"),
        Just("a[0]"),
        Just("a[*]"),
        Just("a[*].b"),
        Just("c[*][*]"),
        Just("state"),
        Just("b[1].c"),
        Just("state[*].a"),
    ];
    let ordered = prop_oneof![
        Just("="),
        Just("!="),
        Just("<"),
        Just("<="),
        Just(">"),
        Just(">=")
    ];
    let value = prop_oneof![
        (-3i64..4).prop_map(|n| n.to_string()),
        Just("1.5".to_owned()),
        Just("'x'".to_owned()),
        Just("'y'".to_owned()),
        Just("''".to_owned()),
        Just("'it''s'".to_owned()),
    ];
    let exact = prop_oneof![Just("true"), Just("false"), Just("null")];
    prop_oneof![
        (path.clone(), ordered, value).prop_map(|(p, o, v)| format!("{p} {o} {v}")),
        (path, prop_oneof![Just("="), Just("!=")], exact)
            .prop_map(|(p, o, v)| format!("{p} {o} {v}")),
    ]
}

fn filter() -> impl Strategy<Value = String> {
    comparison().prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) and ({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) or ({b})")),
            inner.prop_map(|a| format!("not ({a})")),
        ]
    })
}

async fn check(store: &SqliteStore, states: &[Value], filters: &[String]) -> Result<(), String> {
    for text in filters {
        let filter = Filter::parse(text).map_err(|e| format!("{text}: {e}"))?;
        let expected: Vec<String> = states
            .iter()
            .enumerate()
            .filter(|(_, s)| filter.matches(s))
            .map(|(i, _)| format!("e{i:02}"))
            .collect();
        let found = store
            .catalog()
            .query("t", &filter, Page::first(1000))
            .await
            .map_err(|e| format!("{text}: {e}"))?;
        let ids: Vec<String> = found.into_iter().map(|e| e.id).collect();
        if ids != expected {
            return Err(format!("`{text}`: found {ids:?}, expected {expected:?}"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn sql_and_the_evaluator_agree(
        states in prop::collection::vec(json_state(), 1..24),
        filters in prop::collection::vec(filter(), 1..16),
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let outcome = rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(dir.path()).unwrap();
            let epoch = store.claim("t", &all_shards()).await.unwrap();
            let writes = states
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let id = format!("e{i:02}");
                    StateWrite {
                        shard: shard_of("t", &id),
                        key: EntityKey::new("t", EntityId::new(&id).unwrap()),
                        epoch,
                        state: Arc::from(s.to_string()),
                        version: 1,
                        schema: 1,
                    }
                })
                .collect();
            store.commit(Batch { states: writes, ..Batch::default() }).unwrap();
            // In the log and in memory first; after a clean close, in the table.
            check(&store, &states, &filters).await?;
            store.close().await.unwrap();
            let store = SqliteStore::open(dir.path()).unwrap();
            check(&store, &states, &filters).await
        });
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}
