//! Named crash points at the durability boundaries, for tests that kill the node exactly
//! where a crash hurts most.
//!
//! They exist only in builds with the `failpoints` feature; in other builds
//! `failpoint!` expands to nothing. A test build of the `perennial` binary has them (its
//! tests turn the feature on), a release build does not.
//!
//! A point is configured by the `FAILPOINTS` environment variable, read by [`setup`] at
//! start, with the syntax of the [`fail`](https://docs.rs/fail) crate:
//! `FAILPOINTS='commit.after=4*off->return'` lets the point pass four times and then takes
//! its `return` action, which here means **crash**: the process sends itself SIGKILL, so
//! nothing after the point runs, no destructor, no flush. Other actions of that crate
//! (`panic`, `sleep(ms)`, `pause`, `P%` probabilities) work as it documents them.
//!
//! The points, in the order a step meets them:
//!
//! | Point | Where the process dies |
//! |---|---|
//! | `commit.before` | a batch is built, nothing of it is stored |
//! | `commit.after` | a batch is durable; no reply has left, the dispatcher knows nothing of it |
//! | `commit.rows_written` | a batch that wrote timers, messages or effects is durable; none is delivered yet |
//! | `commit.rows_applied` | a batch whose steps applied delivered rows is durable; the dispatcher still counts them in flight |
//! | `commit.reply_kept` | a batch that kept idempotent replies is durable; those replies have not left |
//! | `dispatch.deliver` | a due timer or message is taken for delivery; its target has not run it |
//! | `effect.finished` | an effect's work is done; its result is not delivered |

/// Marks a named crash point (see the module's documentation).
#[cfg(feature = "failpoints")]
macro_rules! failpoint {
    ($name:literal) => {
        fail::fail_point!($name, |_| $crate::failpoint::crash($name))
    };
}

/// Marks a named crash point; builds without the `failpoints` feature have none.
#[cfg(not(feature = "failpoints"))]
macro_rules! failpoint {
    ($name:literal) => {};
}

pub(crate) use failpoint;

/// Reads the `FAILPOINTS` environment variable. Call it once at the start of a binary; in a
/// build without the `failpoints` feature it only warns when the variable is set.
///
/// # Errors
/// The variable does not parse as the `fail` crate's configuration.
pub fn setup() -> Result<(), String> {
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
pub(crate) fn crash(point: &str) -> ! {
    eprintln!("crash point {point}: SIGKILL");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    // SIGKILL cannot be caught; this only runs if sending it failed.
    std::process::abort()
}
