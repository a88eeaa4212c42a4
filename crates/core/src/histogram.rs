//! Histograms with fixed buckets, recorded without locks on hot paths (the committer
//! thread) and read as [`Histogram`] snapshots, for `/metrics` and [`Stats`](crate::Stats).

use std::sync::atomic::{AtomicU64, Ordering};

/// The steps one commit carried: 1, 2, 4, … 4096.
pub(crate) const BATCH_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// How long a commit took to be durable, in seconds: 50 µs to 2.5 s.
pub(crate) const SECONDS_BOUNDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// A histogram at one moment.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Histogram {
    /// The buckets' upper bounds (inclusive), in increasing order.
    pub bounds: &'static [f64],
    /// How many values fell in each bucket (not cumulative); one more than `bounds`, the
    /// last for values above every bound.
    pub counts: Vec<u64>,
    /// The sum of the values.
    pub sum: f64,
    /// How many values were recorded.
    pub count: u64,
}

/// Records values into a [`Histogram`].
#[derive(Debug)]
pub(crate) struct Recorder {
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    /// The sum in units of `1 / scale`, so it fits an integer.
    sum: AtomicU64,
    scale: f64,
}

impl Recorder {
    /// A recorder over `bounds`, summing values to a precision of `1 / scale`.
    pub(crate) fn new(bounds: &'static [f64], scale: f64) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    pub(crate) fn record(&self, value: f64) {
        let bucket = self.bounds.partition_point(|b| *b < value);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        // Saturating float-to-int conversion: a negative or NaN value adds nothing.
        self.sum
            .fetch_add((value * self.scale) as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Histogram {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        Histogram {
            bounds: self.bounds,
            count: counts.iter().sum(),
            counts,
            sum: self.sum.load(Ordering::Relaxed) as f64 / self.scale,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_fall_in_the_first_bucket_whose_bound_holds_them() {
        let r = Recorder::new(&[1.0, 10.0], 1000.0);
        for v in [0.5, 1.0, 1.5, 10.0, 11.0, 1e9] {
            r.record(v);
        }
        let h = r.snapshot();
        assert_eq!(h.counts, [2, 2, 2]);
        assert_eq!(h.count, 6);
        assert!((h.sum - (0.5 + 1.0 + 1.5 + 10.0 + 11.0 + 1e9)).abs() < 1e-3);
    }
}
