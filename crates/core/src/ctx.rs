//! [`Ctx`]: what a handler may ask of the world (its id, the time, randomness), and [`Rng`].

use std::fmt;
use std::marker::PhantomData;
use std::time::SystemTime;

use perennial_types::EntityId;
use rand_chacha::ChaCha8Rng;
use rand_core::{SeedableRng, TryRng};

use crate::Process;

/// The context of one step: the entity's id, the time the step started, and randomness.
///
/// Handlers take time and randomness from here and nowhere else, so that a step depends only
/// on the state, the message and what the context handed it.
pub struct Ctx<'a, K: Process> {
    id: &'a EntityId,
    now: SystemTime,
    rng: Option<Rng>,
    _kind: PhantomData<fn() -> K>,
}

impl<'a, K: Process> Ctx<'a, K> {
    pub(crate) fn new(id: &'a EntityId, now: SystemTime) -> Self {
        Self {
            id,
            now,
            rng: None,
            _kind: PhantomData,
        }
    }

    /// The id of the entity handling the message.
    pub fn id(&self) -> &EntityId {
        self.id
    }

    /// The name of the entity's kind.
    pub fn kind(&self) -> &'static str {
        K::KIND
    }

    /// The wall-clock time at which this step started. It does not move during the step.
    pub fn now(&self) -> SystemTime {
        self.now
    }

    /// A random number generator for this step, seeded from the operating system's secure
    /// source the first time the step asks for it.
    pub fn rng(&mut self) -> &mut Rng {
        self.rng.get_or_insert_with(Rng::from_os)
    }
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

    /// A generator seeded from the operating system's secure random source.
    pub(crate) fn from_os() -> Self {
        let mut seed = [0u8; 32];
        if let Err(e) = getrandom::fill(&mut seed) {
            // The OS source never fails on supported platforms; a weaker seed is still
            // better than refusing the step.
            tracing::warn!(error = %e, "the OS random source failed; seeding from the clock");
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            seed[..16].copy_from_slice(&nanos.to_le_bytes());
        }
        Self::from_seed(seed)
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
