//! Wall time as the runtime reads it: the operating system's, or the simulation's when one is
//! installed on this thread (see `sim`). Steps, timers and kept replies take their time here.

use std::time::SystemTime;

/// Now, in microseconds since the Unix epoch (what a step's time is recorded as).
pub(crate) fn now_us() -> i64 {
    if let Some(since) = crate::sim::since_epoch() {
        return i64::try_from(since.as_micros()).unwrap_or(i64::MAX);
    }
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Now, in milliseconds since the Unix epoch (the clock of timers).
pub(crate) fn now_ms() -> i64 {
    now_us() / 1000
}

/// The time `us` microseconds after the Unix epoch (before it, if negative).
pub(crate) fn time_of(us: i64) -> SystemTime {
    let offset = std::time::Duration::from_micros(us.unsigned_abs());
    if us >= 0 {
        SystemTime::UNIX_EPOCH + offset
    } else {
        SystemTime::UNIX_EPOCH - offset
    }
}
