//! Online backups: a copy taken while commits go on holds every commit acknowledged before it
//! began, comes back whole in a new data directory, and bad files are refused with typed
//! errors.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use perennial_storage::{Batch, Error, Store};
use perennial_storage_sqlite::{SqliteStore, backup, check_backup, restore};

use crate::{all_shards, counter};

/// Counters written one commit at a time, each commit adding one to one counter.
const KEYS: usize = 40;

fn add(key: usize, value: u64, epoch: perennial_types::Epoch) -> Batch {
    let id = format!("c{key}");
    Batch {
        states: vec![crate::write(
            "counter",
            &id,
            &format!(r#"{{"value":{value}}}"#),
            value,
            epoch,
        )],
        ..Batch::default()
    }
}

async fn value_of(store: &SqliteStore, key: usize) -> u64 {
    store
        .load(&counter(&format!("c{key}")))
        .await
        .unwrap()
        .map_or(0, |r| {
            let state: serde_json::Value = serde_json::from_str(&r.state).unwrap();
            state["value"].as_u64().unwrap()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_holds_every_commit_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = SqliteStore::open(&data).unwrap();
    let epoch = store.claim("n1", &all_shards()).await.unwrap();
    // `issued`: the highest value each counter was sent; `acked`: the highest committed.
    let issued = Arc::new(Mutex::new(vec![0u64; KEYS]));
    let acked = Arc::new(Mutex::new(vec![0u64; KEYS]));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, issued, acked, stop) =
            (store.clone(), issued.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0usize;
            // Bounded: at most 20,000 commits, or until told to stop.
            while n < 20_000 && !stop.load(Ordering::Relaxed) {
                let key = n % KEYS;
                let value = {
                    let mut issued = issued.lock();
                    issued[key] += 1;
                    issued[key]
                };
                store.commit(add(key, value, epoch)).unwrap();
                acked.lock()[key] = value;
                n += 1;
            }
            n
        })
    };
    // Let the load run, then back up in the middle of it.
    while acked.lock().iter().sum::<u64>() < 500 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before = acked.lock().clone();
    let file = dir.path().join("backup.db");
    let (from, to) = (data.clone(), file.clone());
    let report = tokio::task::spawn_blocking(move || backup(from, to))
        .await
        .unwrap()
        .unwrap();
    // Commits went on during the copy and after it.
    let during = acked.lock().iter().sum::<u64>();
    while acked.lock().iter().sum::<u64>() < during + 200 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let commits = writer.join().unwrap();
    assert!(commits > 700, "{commits} commits");
    assert_eq!(report.file, file);
    assert!(
        report.bytes > 0 && report.snapshot_us <= report.took_us,
        "{report:?}"
    );
    let summary = check_backup(&file).unwrap();
    assert_eq!(summary.entities, KEYS as u64);

    let restored = dir.path().join("restored");
    restore(&file, &restored).unwrap();
    let copy = SqliteStore::open(&restored).unwrap();
    let issued = issued.lock().clone();
    for key in 0..KEYS {
        let value = value_of(&copy, key).await;
        assert!(
            before[key] <= value && value <= issued[key],
            "c{key}: {value} in the copy, {} acknowledged before the backup, {} issued",
            before[key],
            issued[key]
        );
    }
    // The copy is a store of its own: it takes commits, and the original is untouched.
    let epoch = copy.claim("n2", &all_shards()).await.unwrap();
    copy.commit(add(0, 1_000_000, epoch)).unwrap();
    assert_eq!(value_of(&copy, 0).await, 1_000_000);
    assert_eq!(value_of(&store, 0).await, issued[0]);
    copy.close().await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test]
async fn backups_and_restores_never_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = SqliteStore::open(&data).unwrap();
    let file = dir.path().join("backup.db");
    backup(&data, &file).unwrap();
    let again = backup(&data, &file).unwrap_err();
    assert!(
        matches!(&again, Error::Io(m) if m.contains("exists already")),
        "{again}"
    );
    // Restoring into a directory that holds data is refused; the data is untouched.
    let into_data = restore(&file, &data).unwrap_err();
    assert!(
        matches!(&into_data, Error::Io(m) if m.contains("exists already")),
        "{into_data}"
    );
    store.close().await.unwrap();
    let none = backup(dir.path().join("nothing"), dir.path().join("b2.db")).unwrap_err();
    assert!(
        matches!(&none, Error::Io(m) if m.contains("holds no Perennial data")),
        "{none}"
    );
}

/// A backup, `dir/backup.db`, of `dir/data` holding counters `c0` … `c{n-1}` at `value`.
async fn backup_of_counters(dir: &std::path::Path, n: usize, value: u64) -> std::path::PathBuf {
    let data = dir.join("data");
    let store = SqliteStore::open(&data).unwrap();
    let epoch = store.claim("n1", &all_shards()).await.unwrap();
    for key in 0..n {
        store.commit(add(key, value, epoch)).unwrap();
    }
    store.close().await.unwrap();
    let file = dir.join("backup.db");
    backup(&data, &file).unwrap();
    file
}

#[tokio::test]
async fn a_file_that_is_not_a_whole_backup_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = backup_of_counters(dir.path(), 200, 7).await;
    let mut cases: HashMap<&str, Vec<u8>> = HashMap::new();
    cases.insert("text", b"not a database at all".to_vec());
    let whole = std::fs::read(&file).unwrap();
    cases.insert("truncated", whole[..whole.len() / 2].to_vec());
    let mut flipped = whole.clone();
    // Past the header and the schema: the data pages.
    for byte in &mut flipped[whole.len() / 2..whole.len() / 2 + 4096] {
        *byte ^= 0x5a;
    }
    cases.insert("flipped", flipped);
    for (name, bytes) in cases {
        let bad = dir.path().join(format!("{name}.db"));
        std::fs::write(&bad, bytes).unwrap();
        let error = check_backup(&bad).unwrap_err();
        assert!(matches!(error, Error::Corrupt(_)), "{name}: {error}");
        let restored = dir.path().join(format!("restored-{name}"));
        assert!(restore(&bad, &restored).is_err(), "{name}");
        assert!(!restored.join("perennial.db").exists(), "{name}");
    }
    assert!(matches!(
        check_backup(dir.path().join("missing.db")),
        Err(Error::Io(_))
    ));
}

/// A backup taken by the previous format (7, before the recent tables) checks, restores, and
/// opens as this format, its pending rows counted and kept.
#[tokio::test]
async fn a_backup_of_the_previous_format_restores_and_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let file = backup_of_counters(dir.path(), 20, 3).await;
    // Make it a format 7 file, with a pending row where format 7 kept them.
    let conn = rusqlite::Connection::open(&file).unwrap();
    conn.execute_batch(
        "DROP VIEW all_pending; DROP TABLE recent_pending; DROP TABLE recent_replies;
         INSERT INTO pending (kind, id, seq, due, class, target_kind, target_id, body)
             VALUES ('counter', 'c1', 1048576, 0, 0, 'counter', 'c1', '{\"add\":1}');
         PRAGMA user_version = 7;",
    )
    .unwrap();
    drop(conn);
    let summary = check_backup(&file).unwrap();
    assert_eq!(
        (summary.format, summary.entities, summary.pending),
        (7, 20, 1)
    );
    let restored = dir.path().join("restored");
    restore(&file, &restored).unwrap();
    let store = SqliteStore::open(&restored).unwrap();
    assert_eq!(value_of(&store, 5).await, 3);
    assert_eq!(store.due(i64::MAX, 10).await.unwrap().len(), 1);
    store.close().await.unwrap();
    let summary = check_backup(restored.join("perennial.db")).unwrap();
    assert_eq!(
        (summary.format, summary.pending),
        (perennial_storage_sqlite::schema::FORMAT_VERSION, 1)
    );
}
