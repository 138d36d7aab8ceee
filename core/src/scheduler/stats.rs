//! Per-job statistics: query rate and count over a sliding window (C1) and processing-time
//! distribution over a bounded ring of recent samples (C2).
//!
//! Owns: [`JobStatsState`] (the replicated, bounded counters: 100 ms buckets covering the last
//! [`RATE_WINDOW`], a ring of the last [`SAMPLES_KEPT`] per-query times, totals) and
//! [`TimeSummary`] / [`summarize`] (mean, std-dev, nearest-rank percentiles).
//! Must never: grow without bound, use floating point in replicated state (floats appear only
//! in computed read-outs), or read a clock (`now` is the replicated stamp).

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::Instant;

/// The query-rate window (C1).
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Width of one rate bucket.
pub const BUCKET: Duration = Duration::from_millis(100);
/// Buckets kept: the window plus one partially filled bucket.
const BUCKETS_MAX: usize = 101;
/// Per-query processing times kept for the distribution (C2).
pub const SAMPLES_KEPT: usize = 1024;

/// Replicated statistics of one job. Integer-only so the state stays `Eq` and bit-exact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatsState {
    /// (bucket number, queries completed in it), oldest first, at most [`BUCKETS_MAX`].
    buckets: VecDeque<(u64, u64)>,
    /// The last [`SAMPLES_KEPT`] per-query times in microseconds (a ring).
    samples: Vec<u64>,
    /// Where the next sample goes once the ring is full.
    next_sample: usize,
    /// Queries completed (successful or failed) since submission.
    completed: u64,
}

fn bucket_of(now: Instant) -> u64 {
    now.as_micros() / BUCKET.as_micros() as u64
}

impl JobStatsState {
    /// Records `queries` completions at `now`, each with its processing time.
    pub fn record(&mut self, now: Instant, elapsed_micros: &[u64]) {
        let bucket = bucket_of(now);
        let queries = elapsed_micros.len() as u64;
        match self.buckets.back_mut() {
            // The replicated clock never goes back, so the newest bucket is the last one.
            Some((b, count)) if *b >= bucket => *count += queries,
            _ => self.buckets.push_back((bucket, queries)),
        }
        self.trim(now);
        for &micros in elapsed_micros {
            if self.samples.len() < SAMPLES_KEPT {
                self.samples.push(micros);
            } else {
                self.samples[self.next_sample] = micros;
                self.next_sample = (self.next_sample + 1) % SAMPLES_KEPT;
            }
        }
        self.completed += queries;
        debug_assert!(self.samples.len() <= SAMPLES_KEPT);
        debug_assert!(self.buckets.len() <= BUCKETS_MAX);
    }

    fn trim(&mut self, now: Instant) {
        let oldest = bucket_of(now).saturating_sub(BUCKETS_MAX as u64 - 1);
        while self.buckets.front().is_some_and(|(b, _)| *b < oldest)
            || self.buckets.len() > BUCKETS_MAX
        {
            self.buckets.pop_front();
        }
    }

    /// Queries completed in the window ending at `now` (the last 100 buckets plus the current).
    pub fn in_window(&self, now: Instant) -> u64 {
        let newest = bucket_of(now);
        let first = newest.saturating_sub(BUCKETS_MAX as u64 - 2);
        self.buckets
            .iter()
            .filter(|(b, _)| *b >= first && *b <= newest)
            .map(|(_, c)| c)
            .sum()
    }

    /// Queries per second over the window ending at `now`; a job younger than the window is
    /// measured over its age (at least one bucket).
    pub fn rate_per_sec(&self, now: Instant, started: Instant) -> f64 {
        let span = (now - started).clamp(BUCKET, RATE_WINDOW);
        self.in_window(now) as f64 / span.as_secs_f64()
    }

    /// Queries completed since submission.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// The processing-time distribution of the kept samples.
    pub fn times(&self) -> TimeSummary {
        summarize(&self.samples)
    }
}

/// Processing time per query (C2), in microseconds, over the kept samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TimeSummary {
    /// Samples summarized.
    pub samples: usize,
    /// Mean.
    pub mean: f64,
    /// Population standard deviation.
    pub std_dev: f64,
    /// Median (nearest rank).
    pub median: u64,
    /// 90th percentile (nearest rank).
    pub p90: u64,
    /// 95th percentile (nearest rank).
    pub p95: u64,
    /// 99th percentile (nearest rank).
    pub p99: u64,
}

/// The nearest-rank `pct` percentile of ascending `sorted` (0 when empty).
pub fn percentile(sorted: &[u64], pct: u64) -> u64 {
    debug_assert!(pct <= 100);
    debug_assert!(sorted.windows(2).all(|w| w[0] <= w[1]));
    if sorted.is_empty() {
        return 0;
    }
    // Rank ceil(p/100 * n), 1-based, clamped to [1, n].
    let n = sorted.len() as u64;
    let rank = (pct * n).div_ceil(100).clamp(1, n);
    sorted[(rank - 1) as usize]
}

/// Mean, standard deviation and percentiles of `samples` (any order).
pub fn summarize(samples: &[u64]) -> TimeSummary {
    if samples.is_empty() {
        return TimeSummary::default();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let n = sorted.len() as f64;
    let mean = sorted.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = sorted
        .iter()
        .map(|&x| (x as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    TimeSummary {
        samples: sorted.len(),
        mean,
        std_dev: var.sqrt(),
        median: percentile(&sorted, 50),
        p90: percentile(&sorted, 90),
        p95: percentile(&sorted, 95),
        p99: percentile(&sorted, 99),
    }
}
