//! The demo kinds that `perennial serve` hosts, and that the benchmark drives.
//!
//! # Layout
//! - [`counter`]: kind `counter`, an `i64` that messages add to.
//! - [`cart`]: kind `cart`, a shopping cart whose state changed shape three times: its
//!   migrations show state versions (`Snapshot`); its checkout asks each line's inventory.
//! - [`inventory`]: kind `inventory`, one product's stock, which carts ask to reserve items
//!   (`Snapshot`).
//! - [`table`]: kind `table`, a no-limit Texas hold'em table as a persistent process
//!   (`Journal`, with snapshots: its shuffles replay identically).
//! - [`cache`]: kind `cache`, a hot cache of megabytes updated by tiny messages (`Journal`:
//!   a step costs the same however big it is).
//! - [`queue`]: kind `queue`, a per-key job queue that runs at most N jobs at once, each as
//!   an effect: a [`perennial_queue::JobQueue`] of jobs that sleep.
//! - [`house`]: kind `house`, a betting house whose payout rule is a closure (`Journal`,
//!   no serde in its state).
//! - [`probe`]: kinds `probe` (`Snapshot`) and `jprobe` (`Journal`, with snapshots), append-only
//!   lists of tokens whose every reply is the whole list: what the reliability suite's
//!   histories are about.
//! - [`poker`]: the pure hold'em engine behind `table` (cards, hand ranking, betting, pots),
//!   with no knowledge of the runtime.

pub mod cache;
pub mod cart;
pub mod counter;
pub mod house;
pub mod inventory;
pub mod poker;
pub mod probe;
pub mod queue;
pub mod table;

pub use cache::Cache;
pub use cart::Cart;
pub use counter::Counter;
pub use house::House;
pub use inventory::Inventory;
pub use probe::{JournalProbe, Probe};
pub use queue::Queue;
pub use table::PokerTable;

use std::time::Duration;

use perennial_core::{Builder, Snapshots};

/// How long the demo's change feeds keep a change: a week.
pub const FEED_KEEPS: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Registers every demo kind, each with the persistence it is meant to show: `counter`,
/// `cart` and `inventory` as `Snapshot`, `table` as `Journal` with a snapshot every [`table::SNAPSHOT_EVERY`] steps,
/// `probe` as `Snapshot` and `jprobe` as `Journal` with a snapshot every
/// [`probe::JOURNAL_SNAPSHOT_EVERY`] steps (each with its effect [`probe::Echo`]), `house` as
/// `Journal` without snapshots, `cache` as `Journal` with a snapshot every
/// [`cache::SNAPSHOT_EVERY`] steps, `queue` as a [`perennial_queue::JobQueue`] (with the effect
/// of release 1's queue, [`queue::RetiredWork`]).
/// `cart` and `inventory` keep a change feed for [`FEED_KEEPS`].
pub fn register(builder: Builder) -> Builder {
    Queue::register(builder)
        .register_snapshot::<Counter>()
        .register_snapshot::<Cart>()
        .change_feed::<Cart>(FEED_KEEPS)
        .register_snapshot::<Inventory>()
        .change_feed::<Inventory>(FEED_KEEPS)
        .register_snapshot::<Probe>()
        .register_effect::<probe::Echo<Probe>>()
        .register_journal_with_snapshots::<JournalProbe>(Snapshots::every(
            probe::JOURNAL_SNAPSHOT_EVERY,
        ))
        .register_effect::<probe::Echo<JournalProbe>>()
        .register_effect::<queue::RetiredWork>()
        .register_journal_with_snapshots::<PokerTable>(
            Snapshots::every(table::SNAPSHOT_EVERY).keep_history(table::HISTORY_STEPS),
        )
        .register_journal::<House>()
        .register_journal_with_snapshots::<Cache>(Snapshots::every(cache::SNAPSHOT_EVERY))
}
