//! Leases: which worker holds which inputs of which job until when.
//!
//! Owns: [`Lease`] and [`LeaseTable`] (leases by id, plus two ordered indices: by expiry, so
//! expiring is a range scan, and by worker, so a failed worker's leases are found at once).
//! Expiry is judged only against the replicated clock (the leader's stamps).
//! Must never: let the indices disagree with the table, or decide anything by a clock it reads.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{JobId, LeaseId};
use crate::membership::NodeId;
use crate::time::Instant;

/// A batch handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Its id (never reused).
    pub id: LeaseId,
    /// The job.
    pub job: JobId,
    /// The input indices it holds.
    pub inputs: Vec<u32>,
    /// Who holds it.
    pub worker: NodeId,
    /// When it was granted.
    pub granted_at: Instant,
    /// When it lapses unless renewed or completed.
    pub expires_at: Instant,
}

/// The live leases and their indices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTable {
    leases: BTreeMap<LeaseId, Lease>,
    by_expiry: BTreeSet<(Instant, LeaseId)>,
    by_worker: BTreeSet<(NodeId, LeaseId)>,
}

impl LeaseTable {
    /// Live leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether no lease is live.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// A live lease.
    pub fn get(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Every live lease, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// The live leases of `worker`, by id.
    pub fn of_worker(&self, worker: NodeId) -> impl Iterator<Item = LeaseId> + '_ {
        self.by_worker
            .range((worker, LeaseId(0))..=(worker, LeaseId(u64::MAX)))
            .map(|(_, id)| *id)
    }

    pub(super) fn insert(&mut self, lease: Lease) {
        debug_assert!(!self.leases.contains_key(&lease.id));
        self.by_expiry.insert((lease.expires_at, lease.id));
        self.by_worker.insert((lease.worker, lease.id));
        self.leases.insert(lease.id, lease);
        self.check();
    }

    pub(super) fn remove(&mut self, id: LeaseId) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.by_expiry.remove(&(lease.expires_at, id));
        self.by_worker.remove(&(lease.worker, id));
        self.check();
        Some(lease)
    }

    pub(super) fn extend(&mut self, id: LeaseId, expires_at: Instant) -> Option<Instant> {
        let lease = self.leases.get_mut(&id)?;
        self.by_expiry.remove(&(lease.expires_at, id));
        lease.expires_at = lease.expires_at.max(expires_at);
        self.by_expiry.insert((lease.expires_at, id));
        Some(lease.expires_at)
    }

    /// Removes and returns every lease with `expires_at <= now`, earliest first.
    /// Whether some lease expires at or before `now`.
    pub fn any_expired(&self, now: Instant) -> bool {
        self.by_expiry
            .range(..=(now, LeaseId(u64::MAX)))
            .next()
            .is_some()
    }

    pub(super) fn take_expired(&mut self, now: Instant) -> Vec<Lease> {
        let due: Vec<LeaseId> = self
            .by_expiry
            .range(..=(now, LeaseId(u64::MAX)))
            .map(|(_, id)| *id)
            .collect();
        due.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    fn check(&self) {
        debug_assert_eq!(self.leases.len(), self.by_expiry.len());
        debug_assert_eq!(self.leases.len(), self.by_worker.len());
    }
}
