//! Test-only fault injection: named **crash points** at the durability boundaries, and
//! **sabotage switches** that turn a safety mechanism off on purpose.
//!
//! Both exist only in builds with their feature (`failpoints`, `sabotage`); in other builds
//! [`failpoint!`] expands to nothing and [`sabotaged`] is a constant `false`, so release
//! builds carry neither. The test builds of the `perennial` binary have both (its tests turn
//! the features on).
//!
//! # Crash points
//!
//! A point is configured by the `FAILPOINTS` environment variable, read by [`setup`] at
//! start, with the syntax of the [`fail`](https://docs.rs/fail) crate:
//! `FAILPOINTS='commit.after=4*off->return'` lets the point pass four times and then takes
//! its `return` action, which here means **crash**: the process sends itself SIGKILL, so
//! nothing after the point runs, no destructor, no flush. Other actions of that crate
//! (`panic`, `sleep(ms)`, `pause`, `P%` probabilities) work as it documents them.
//!
//! The points, in the order a step meets them (each crate documents where its own sit):
//!
//! | Point | Where the process dies |
//! |---|---|
//! | `commit.before` | a batch is built, nothing of it is stored |
//! | `sqlite.written` / `pg.written` | every row of a batch is written inside its transaction, which is not committed |
//! | `sqlite.trim` | a batch's journal entries and snapshots are written, its journal trims not yet (same transaction) |
//! | `sqlite.delete` | a batch's writes are written and folded, its entity deletions not yet (same transaction) |
//! | `pg.commit.fenced` | a batch's shard epochs are checked and locked, nothing is written yet |
//! | `commit.after` | a batch is durable (fsync'd); no reply has left, the dispatcher knows nothing of it |
//! | `commit.rows_written` | a batch that wrote timers, messages or effects is durable; none is delivered yet |
//! | `commit.rows_applied` | a batch whose steps applied delivered rows is durable; the dispatcher still counts them in flight |
//! | `commit.reply_kept` | a batch that kept idempotent replies is durable; those replies have not left |
//! | `dispatch.deliver` | a due timer or message is taken for delivery; its target has not run it |
//! | `step.row_handled` | a delivered timer, message or effect result was handled; its step is not committed |
//! | `effect.finished` | an effect's work is done; its result is not delivered |
//! | `journal.replay` | an activation replayed a journal entry; the rest of the journal is not replayed |
//! | `passivate.unregister` | an idle entity's state was dropped; it is still in the registry |
//! | `cluster.renewed` | a node's shard leases were renewed in the database; its runtime was not told |
//!
//! # Sabotage
//!
//! `PERENNIAL_SABOTAGE=no-fence` (a comma-separated list of [`Sabotage`] names) switches
//! mechanisms off in a build with the `sabotage` feature. A test suite that stays green
//! under a sabotage cannot see the failure the mechanism prevents: CI runs the reliability
//! tests under each one and requires them to fail.

use std::fmt;

/// Marks a named crash point (see the [crate documentation](crate)).
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        $crate::fail::fail_point!($name, |_| $crate::crash($name))
    };
}

/// Marks a named crash point; builds without the `failpoints` feature have none.
#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {};
}

#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub use fail;

/// A safety mechanism that a sabotage build can switch off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Sabotage {
    /// `no-fence`: stores accept writes under any epoch, so a node that lost its shard
    /// overwrites the new owner.
    NoFence,
    /// `no-dedup`: calls with an idempotency key never find their kept reply, so a retry is
    /// applied again.
    NoDedup,
    /// `reply-before-durable`: the committer releases a batch's replies before the store
    /// made it durable, so a crash loses acknowledged steps.
    ReplyBeforeDurable,
    /// `stale-reads`: an entity answers from the state it activated under an older epoch of
    /// its shard, and releases replies of steps that wrote nothing after its node stopped
    /// serving the shard, so a read can miss what another node acknowledged.
    StaleReads,
}

impl Sabotage {
    /// Every sabotage, in the order CI runs them.
    pub const ALL: [Sabotage; 4] = [
        Sabotage::NoFence,
        Sabotage::NoDedup,
        Sabotage::ReplyBeforeDurable,
        Sabotage::StaleReads,
    ];

    /// Its name in `PERENNIAL_SABOTAGE`.
    pub fn name(self) -> &'static str {
        match self {
            Sabotage::NoFence => "no-fence",
            Sabotage::NoDedup => "no-dedup",
            Sabotage::ReplyBeforeDurable => "reply-before-durable",
            Sabotage::StaleReads => "stale-reads",
        }
    }

    /// The sabotage called `name`.
    pub fn from_name(name: &str) -> Option<Sabotage> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Sabotage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether `what` is switched off in this process: only in a build with the `sabotage`
/// feature, and only if `PERENNIAL_SABOTAGE` names it.
#[cfg(feature = "sabotage")]
pub fn sabotaged(what: Sabotage) -> bool {
    sabotages().contains(&what)
}

/// Whether `what` is switched off in this process: never, in a build without the
/// `sabotage` feature.
#[cfg(not(feature = "sabotage"))]
#[inline(always)]
pub const fn sabotaged(what: Sabotage) -> bool {
    let _ = what;
    false
}

/// The sabotages `PERENNIAL_SABOTAGE` names, read once; unknown names are ignored here
/// ([`setup`] refuses them).
#[cfg(feature = "sabotage")]
fn sabotages() -> &'static [Sabotage] {
    static ACTIVE: std::sync::OnceLock<Vec<Sabotage>> = std::sync::OnceLock::new();
    ACTIVE.get_or_init(|| {
        parse_sabotages(&std::env::var("PERENNIAL_SABOTAGE").unwrap_or_default())
            .unwrap_or_default()
    })
}

/// Parses a comma-separated list of sabotage names.
fn parse_sabotages(list: &str) -> Result<Vec<Sabotage>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            Sabotage::from_name(name).ok_or_else(|| {
                let known: Vec<&str> = Sabotage::ALL.iter().map(|s| s.name()).collect();
                format!(
                    "PERENNIAL_SABOTAGE names {name:?}, which is none of {}",
                    known.join(", ")
                )
            })
        })
        .collect()
}

/// Reads `FAILPOINTS` and `PERENNIAL_SABOTAGE`. Call it once at the start of a binary; in a
/// build without the features it only warns when the variables are set.
///
/// # Errors
/// A variable does not parse: `FAILPOINTS` as the `fail` crate's configuration, or
/// `PERENNIAL_SABOTAGE` as a list of [`Sabotage`] names.
pub fn setup() -> Result<(), String> {
    if let Ok(list) = std::env::var("PERENNIAL_SABOTAGE") {
        let named = parse_sabotages(&list)?;
        if !cfg!(feature = "sabotage") {
            tracing::warn!("PERENNIAL_SABOTAGE is set, but this build has no sabotage switches");
        } else {
            for sabotage in named {
                tracing::warn!(%sabotage, "SABOTAGE: a safety mechanism is off on purpose");
            }
        }
    }
    let Ok(config) = std::env::var("FAILPOINTS") else {
        return Ok(());
    };
    if !cfg!(feature = "failpoints") {
        tracing::warn!(
            "FAILPOINTS is set, but this build has no crash points (feature `failpoints`)"
        );
        return Ok(());
    }
    configure(&config)
}

#[cfg(feature = "failpoints")]
fn configure(config: &str) -> Result<(), String> {
    for entry in config.split(';').filter(|e| !e.trim().is_empty()) {
        let (name, actions) = entry
            .split_once('=')
            .ok_or_else(|| format!("FAILPOINTS entry {entry:?} is not `name=actions`"))?;
        fail::cfg(name.trim(), actions.trim())
            .map_err(|e| format!("FAILPOINTS entry {entry:?}: {e}"))?;
        tracing::warn!(
            point = name.trim(),
            actions = actions.trim(),
            "crash point armed"
        );
    }
    Ok(())
}

#[cfg(not(feature = "failpoints"))]
fn configure(_config: &str) -> Result<(), String> {
    Ok(())
}

/// Kills this process with SIGKILL, as `kill -9` would.
#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub fn crash(point: &str) -> ! {
    eprintln!("crash point {point}: SIGKILL");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    // SIGKILL cannot be caught; this only runs if sending it failed.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sabotage_names_round_trip_and_unknown_ones_are_refused() {
        for s in Sabotage::ALL {
            assert_eq!(Sabotage::from_name(s.name()), Some(s));
        }
        assert_eq!(
            parse_sabotages(" no-fence, no-dedup ,"),
            Ok(vec![Sabotage::NoFence, Sabotage::NoDedup])
        );
        let error = parse_sabotages("no-fsync").unwrap_err();
        assert!(
            error.contains("\"no-fsync\"") && error.contains("no-fence"),
            "{error}"
        );
    }
}
