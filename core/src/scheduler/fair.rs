//! Fair-time: which running job the next free worker serves.
//!
//! Owns: the choice ([`pick`]), the pass a new job starts from ([`entry_pass`]) and the
//! cost-proportional worker shares it realises ([`shares`], reported for C5).
//! The rule is stride scheduling over queries: every job carries a pass, the queries dispatched
//! to it (a batch whose lease lapses still counts, so a job whose batches keep failing cannot hog
//! the workers); a free worker gets a batch of the running job with pending inputs and the
//! lowest pass (ties: a job never served yet, then the lowest id). Dispatch
//! counts therefore stay level, so the jobs' query rates stay level whatever their per-query
//! cost: a job whose queries cost 20x more simply keeps ~20x more workers busy, which is the
//! share [`shares`] computes from the measured cost (EWMA of reported per-query times). A new
//! job starts at the lowest pass among running jobs and wins the tie, so it is served by the
//! very next lease request but cannot then starve the jobs already running.
//! Must never: look at anything but replicated job state, or let a job with pending inputs
//! wait forever (the lowest pass always wins, and every lease raises the pass it serves).

use std::collections::BTreeMap;

use super::JobId;
use super::job::Job;

/// The running job with pending inputs and the lowest (pass, served before, id), if any.
pub fn pick(jobs: &BTreeMap<JobId, Job>) -> Option<JobId> {
    jobs.values()
        .filter(|j| j.is_running() && !j.pending.is_empty())
        .min_by_key(|j| (j.pass, j.first_lease_at.is_some(), j.id))
        .map(|j| j.id)
}

/// The pass a newly submitted job starts with: the lowest among running jobs (0 when none).
pub fn entry_pass(jobs: &BTreeMap<JobId, Job>) -> u64 {
    jobs.values()
        .filter(|j| j.is_running())
        .map(|j| j.pass)
        .min()
        .unwrap_or(0)
}

/// Each running job's share of worker time that equal query rates need: its per-query cost
/// over the sum of costs (a job without a measurement counts at the mean of the measured ones,
/// or equal shares when none is measured). Shares sum to 1 when any job runs.
pub fn shares(jobs: &BTreeMap<JobId, Job>) -> Vec<(JobId, f64)> {
    let running: Vec<&Job> = jobs.values().filter(|j| j.is_running()).collect();
    let measured: Vec<u64> = running
        .iter()
        .filter(|j| j.cost_micros > 0)
        .map(|j| j.cost_micros)
        .collect();
    let fallback = if measured.is_empty() {
        1.0
    } else {
        measured.iter().sum::<u64>() as f64 / measured.len() as f64
    };
    let costs: Vec<f64> = running
        .iter()
        .map(|j| {
            if j.cost_micros > 0 {
                j.cost_micros as f64
            } else {
                fallback
            }
        })
        .collect();
    let total: f64 = costs.iter().sum();
    running
        .iter()
        .zip(costs)
        .map(|(j, c)| (j.id, c / total))
        .collect()
}
