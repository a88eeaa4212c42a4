//! [`Ctx`]: what a handler may ask of the world (its id, the time, randomness), and [`Rng`].

use std::fmt;
use std::marker::PhantomData;
use std::time::SystemTime;

use perennial_types::EntityId;
use rand_chacha::ChaCha8Rng;
use rand_core::{SeedableRng, TryRng};

use crate::Process;

/// The context of one step: the entity's id, the time the step started, randomness and ids.
///
/// Handlers take time, randomness and ids from here and nowhere else, so that a step depends
/// only on the state, the message and what the context handed it. For `Journal` kinds the
/// runtime records what it handed (the time and the random seed) with the message, and hands
/// the same again when it replays the step.
pub struct Ctx<'a, K: Process> {
    id: &'a EntityId,
    now: SystemTime,
    rng: Option<Rng>,
    seed: Seed,
    _kind: PhantomData<fn() -> K>,
}

/// Where a step's random seed comes from.
#[derive(Debug, Clone, Copy)]
enum Seed {
    /// A live step: drawn from the OS when first asked for, then kept to be recorded.
    Live(Option<[u8; 32]>),
    /// A replayed step: the recorded seed, if the live step drew one. `strayed` is set if the
    /// replayed step asks for randomness the live one never asked for.
    Replay {
        recorded: Option<[u8; 32]>,
        strayed: bool,
    },
}

impl<'a, K: Process> Ctx<'a, K> {
    /// The context of a live step that starts now.
    pub(crate) fn new(id: &'a EntityId) -> Self {
        Self::at(id, now_us())
    }

    /// The context of a live step at `at_us` microseconds since the Unix epoch.
    pub(crate) fn at(id: &'a EntityId, at_us: i64) -> Self {
        Self {
            id,
            now: time_of(at_us),
            rng: None,
            seed: Seed::Live(None),
            _kind: PhantomData,
        }
    }

    /// The context of a replayed step: the time and seed the live step was handed.
    pub(crate) fn replay(id: &'a EntityId, at_us: i64, seed: Option<[u8; 32]>) -> Self {
        Self {
            seed: Seed::Replay {
                recorded: seed,
                strayed: false,
            },
            ..Self::at(id, at_us)
        }
    }

    /// The seed this live step drew, if it asked for randomness.
    pub(crate) fn drawn_seed(&self) -> Option<[u8; 32]> {
        match self.seed {
            Seed::Live(seed) => seed,
            Seed::Replay { recorded, .. } => recorded,
        }
    }

    /// Whether this replayed step asked for randomness that its live run never asked for.
    pub(crate) fn strayed(&self) -> bool {
        matches!(self.seed, Seed::Replay { strayed: true, .. })
    }

    /// The id of the entity handling the message.
    pub fn id(&self) -> &EntityId {
        self.id
    }

    /// The name of the entity's kind.
    pub fn kind(&self) -> &'static str {
        K::KIND
    }

    /// The wall-clock time at which this step started, to the microsecond. It does not move
    /// during the step, and a replayed step gets the time of its live run.
    pub fn now(&self) -> SystemTime {
        self.now
    }

    /// A random number generator for this step, seeded from the operating system's secure
    /// source the first time the step asks for it (a replayed step gets the recorded seed).
    pub fn rng(&mut self) -> &mut Rng {
        let seed = &mut self.seed;
        self.rng.get_or_insert_with(|| {
            let seed = match seed {
                Seed::Live(drawn) => *drawn.get_or_insert_with(os_seed),
                Seed::Replay { recorded, strayed } => recorded.unwrap_or_else(|| {
                    *strayed = true;
                    [0; 32]
                }),
            };
            Rng::from_seed(seed)
        })
    }

    /// A new random id (a version 4 UUID, as text), drawn from [`rng`](Self::rng) so that a
    /// replayed step generates the same one.
    ///
    /// ```
    /// # use perennial_core::Rng;
    /// // The format, shown with a bare generator:
    /// let id = Rng::from_seed([9; 32]).uuid();
    /// assert_eq!(id.len(), 36);
    /// assert_eq!(&id[14..15], "4");
    /// ```
    pub fn new_id(&mut self) -> String {
        self.rng().uuid()
    }
}

/// Now, in microseconds since the Unix epoch (what a step's time is recorded as).
pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
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

/// 32 bytes from the operating system's secure random source.
fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut seed) {
        // The OS source never fails on supported platforms; a weaker seed is still better
        // than refusing the step.
        tracing::warn!(error = %e, "the OS random source failed; seeding from the clock");
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        seed[..16].copy_from_slice(&nanos.to_le_bytes());
    }
    seed
}

impl<K: Process> fmt::Debug for Ctx<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("kind", &K::KIND)
            .field("id", self.id)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// A seedable, portable random number generator (ChaCha8).
///
/// The same seed gives the same numbers on every platform and in every version of
/// Perennial: [`below`](Rng::below) and [`shuffle`](Rng::shuffle) are defined here, not
/// borrowed from a library whose algorithms may change. It also implements
/// [`rand_core::Rng`], so the `rand` crate's helpers work on it.
///
/// ```
/// use perennial_core::Rng;
///
/// let mut a = Rng::from_seed([7; 32]);
/// let mut b = Rng::from_seed([7; 32]);
/// let mut deck: Vec<u32> = (0..52).collect();
/// let mut same: Vec<u32> = (0..52).collect();
/// a.shuffle(&mut deck);
/// b.shuffle(&mut same);
/// assert_eq!(deck, same);
/// assert!(a.below(6) < 6);
/// ```
#[derive(Clone)]
pub struct Rng(ChaCha8Rng);

impl Rng {
    /// A generator from a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(ChaCha8Rng::from_seed(seed))
    }

    /// A random version 4 UUID, as lowercase hyphenated text.
    pub fn uuid(&mut self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        rand_core::Rng::next_u64(&mut self.0)
    }

    /// A uniformly random number in `0..n`, without bias. Returns 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Reject the top, incomplete stretch of the 64-bit range so every result is
        // equally likely.
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Shuffles a slice uniformly (Fisher–Yates, from the end).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

impl fmt::Debug for Rng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rng(ChaCha8)")
    }
}

impl TryRng for Rng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(rand_core::Rng::next_u32(&mut self.0))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(rand_core::Rng::next_u64(&mut self.0))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        rand_core::Rng::fill_bytes(&mut self.0, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator is a replay format: these values must never change, whatever the
    /// versions of the crates behind it. (Recorded from ChaCha8 with this crate's `below` and
    /// `shuffle` when they were written.)
    #[test]
    fn rng_output_is_pinned() {
        let mut rng = Rng::from_seed([1; 32]);
        let draws: Vec<u64> = (0..4).map(|_| rng.below(1000)).collect();
        assert_eq!(draws, [45, 20, 188, 997]);
        let mut deck: Vec<u8> = (0..10).collect();
        Rng::from_seed([2; 32]).shuffle(&mut deck);
        assert_eq!(deck, [5, 1, 6, 7, 2, 3, 4, 9, 8, 0]);
        let id = Rng::from_seed([3; 32]).uuid();
        assert_eq!(id, PINNED_UUID);
    }

    /// Recorded from [`Rng::uuid`] with seed `[3; 32]` when it was written.
    const PINNED_UUID: &str = "3923bcf0-8ab4-4dff-9da7-6ddb100df2fa";

    #[test]
    fn time_round_trips_through_microseconds() {
        for us in [0, 1, 1_700_000_000_123_456, -5] {
            let t = time_of(us);
            let back = match t.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => i64::try_from(d.as_micros()).unwrap(),
                Err(e) => -i64::try_from(e.duration().as_micros()).unwrap(),
            };
            assert_eq!(back, us);
        }
    }

    #[test]
    fn below_is_roughly_uniform() {
        let mut rng = Rng::from_seed([3; 32]);
        let mut counts = [0u32; 6];
        for _ in 0..60_000 {
            counts[rng.below(6) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }
}
