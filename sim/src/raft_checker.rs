//! The consensus checkers: each reads the Raft nodes from outside after every step of the
//! world (and every apply they report) and fails with a [`Violation`] the moment a safety
//! property breaks.
//!
//! Owns: the canonical committed log (the first time any node shows an index as committed, that
//! entry is canonical for ever), the leader of every term seen, each instance's apply position
//! and the result of every applied index.
//! Checks: `election_safety` (at most one leader per term), `leader_completeness` (a new
//! leader's log holds every entry committed before it was seen), `committed_never_changes`
//! (every node's committed prefix equals the canonical one), `log_matching` (two logs with an
//! entry of the same index and term are identical up to it; run every
//! [`LOG_MATCHING_EVERY_STEPS`] steps and in the final pass, as it is quadratic),
//! `state_machine_safety` (every instance applies indices 1, 2, 3... exactly once, each equal
//! to the canonical entry, and every node gets the same result at an index) and
//! `exactly_once_in_log` (no proposal id is committed twice).
//! Must never: change a node, or decide anything from a node's private state (only the public
//! observers of `Raft`).

use std::collections::{BTreeMap, BTreeSet};

use idunno_core::consensus::{Entry, Payload, Raft};
use idunno_core::time::Instant;

use crate::checker::Violation;

/// The quadratic log-matching check runs once every this many steps.
pub const LOG_MATCHING_EVERY_STEPS: u64 = 512;

/// One node as the checkers see it.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// Slot.
    pub index: usize,
    /// Generation of the instance.
    pub generation: u64,
    /// The machine.
    pub raft: &'a Raft,
}

/// All consensus checkers together. See the module docs.
#[derive(Debug, Default)]
pub struct RaftChecker {
    leaders: BTreeMap<u64, usize>,
    /// Canonical committed entries by index (entries compacted away everywhere before the
    /// checker saw them are absent).
    committed: BTreeMap<u64, Entry>,
    /// Commit index already checked per (slot, generation).
    commit_checked: BTreeMap<(usize, u64), u64>,
    /// Last index applied per (slot, generation).
    applied: BTreeMap<(usize, u64), u64>,
    /// Result of each applied index.
    results: BTreeMap<u64, Vec<u8>>,
    committed_ids: BTreeSet<u64>,
    steps: u64,
}

fn violation(checker: &'static str, at: Instant, detail: String) -> Violation {
    Violation {
        checker,
        at,
        detail,
    }
}

impl RaftChecker {
    /// The canonical committed log.
    pub fn committed(&self) -> &BTreeMap<u64, Entry> {
        &self.committed
    }

    /// Terms that had a leader, with its slot.
    pub fn leaders(&self) -> &BTreeMap<u64, usize> {
        &self.leaders
    }

    /// Highest index instance `(slot, generation)` applied.
    pub fn applied_by(&self, index: usize, generation: u64) -> u64 {
        self.applied.get(&(index, generation)).copied().unwrap_or(0)
    }

    /// Ids of committed commands.
    pub fn committed_ids(&self) -> &BTreeSet<u64> {
        &self.committed_ids
    }

    /// Runs the per-step checkers over every running node.
    pub fn on_step(&mut self, now: Instant, nodes: &[Observed<'_>]) -> Result<(), Violation> {
        self.steps += 1;
        for node in nodes {
            self.check_commit(now, node)?;
        }
        for node in nodes {
            self.check_leader(now, node)?;
        }
        if self.steps.is_multiple_of(LOG_MATCHING_EVERY_STEPS) {
            check_log_matching(now, nodes)?;
        }
        Ok(())
    }

    /// Final pass: log matching over everyone, and every committed entry agreed.
    pub fn final_pass(&mut self, now: Instant, nodes: &[Observed<'_>]) -> Result<(), Violation> {
        self.on_step(now, nodes)?;
        check_log_matching(now, nodes)
    }

    fn check_leader(&mut self, now: Instant, node: &Observed<'_>) -> Result<(), Violation> {
        if !node.raft.is_leader() {
            return Ok(());
        }
        let term = node.raft.term();
        match self.leaders.get(&term) {
            Some(&slot) if slot != node.index => {
                return Err(violation(
                    "election_safety",
                    now,
                    format!(
                        "term {term} has two leaders: slots {slot} and {}",
                        node.index
                    ),
                ));
            }
            Some(_) => return Ok(()),
            None => {}
        }
        self.leaders.insert(term, node.index);
        let first = node.raft.first_index();
        for entry in self.committed.range(first..).map(|(_, e)| e) {
            if node.raft.entry(entry.index) != Some(entry) {
                return Err(violation(
                    "leader_completeness",
                    now,
                    format!(
                        "slot {} leads term {term} without committed entry {} (term {}): has {:?}",
                        node.index,
                        entry.index,
                        entry.term,
                        node.raft.entry(entry.index)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_commit(&mut self, now: Instant, node: &Observed<'_>) -> Result<(), Violation> {
        let key = (node.index, node.generation);
        let checked = self.commit_checked.get(&key).copied().unwrap_or(0);
        let commit = node.raft.commit_index();
        if commit < checked {
            return Err(violation(
                "committed_never_changes",
                now,
                format!("slot {} commit went back {checked} -> {commit}", node.index),
            ));
        }
        for index in (checked + 1).max(node.raft.first_index())..=commit {
            let Some(entry) = node.raft.entry(index) else {
                return Err(violation(
                    "committed_never_changes",
                    now,
                    format!("slot {} committed {index} beyond its log", node.index),
                ));
            };
            self.learn_committed(now, node.index, entry)?;
        }
        self.commit_checked.insert(key, commit);
        Ok(())
    }

    fn learn_committed(
        &mut self,
        now: Instant,
        slot: usize,
        entry: &Entry,
    ) -> Result<(), Violation> {
        if let Some(canonical) = self.committed.get(&entry.index) {
            if canonical != entry {
                return Err(violation(
                    "committed_never_changes",
                    now,
                    format!(
                        "slot {slot} has {entry:?} committed where {canonical:?} was committed"
                    ),
                ));
            }
            return Ok(());
        }
        if let Payload::Command { id, .. } = entry.payload
            && !self.committed_ids.insert(id)
        {
            return Err(violation(
                "exactly_once_in_log",
                now,
                format!("proposal {id} committed twice (again at {})", entry.index),
            ));
        }
        self.committed.insert(entry.index, entry.clone());
        Ok(())
    }

    /// Instance `(slot, generation)` replaced its state machine with a snapshot up to `index`
    /// (at start, from its durable snapshot, or installed from a leader).
    pub fn on_restore(
        &mut self,
        now: Instant,
        slot: usize,
        generation: u64,
        index: u64,
    ) -> Result<(), Violation> {
        let last = self.applied.entry((slot, generation)).or_insert(0);
        if index < *last {
            return Err(violation(
                "state_machine_safety",
                now,
                format!("slot {slot} gen {generation} restored {index} after applying {last}"),
            ));
        }
        *last = index;
        Ok(())
    }

    /// An instance reported applying `entry` with `result`.
    pub fn on_apply(
        &mut self,
        now: Instant,
        slot: usize,
        generation: u64,
        entry: &Entry,
        result: &[u8],
    ) -> Result<(), Violation> {
        let last = self.applied.entry((slot, generation)).or_insert(0);
        if entry.index != *last + 1 {
            return Err(violation(
                "state_machine_safety",
                now,
                format!(
                    "slot {slot} gen {generation} applied {} after {}",
                    entry.index, *last
                ),
            ));
        }
        *last = entry.index;
        self.learn_committed(now, slot, entry)?;
        match self.results.get(&entry.index) {
            Some(expected) if expected != result => Err(violation(
                "state_machine_safety",
                now,
                format!("slot {slot} got another result at index {}", entry.index),
            )),
            Some(_) => Ok(()),
            None => {
                self.results.insert(entry.index, result.to_vec());
                Ok(())
            }
        }
    }
}

/// Log matching over every pair: if two logs hold an entry with the same index and term, they
/// are identical up to it.
pub fn check_log_matching(now: Instant, nodes: &[Observed<'_>]) -> Result<(), Violation> {
    for (i, a) in nodes.iter().enumerate() {
        for b in &nodes[i + 1..] {
            let (ra, rb) = (a.raft, b.raft);
            let low = ra.first_index().max(rb.first_index());
            let high = ra.last_index().min(rb.last_index());
            let term = |r: &Raft, i: u64| r.entry(i).map(|e| e.term);
            let Some(top) = (low..=high).rev().find(|&i| term(ra, i) == term(rb, i)) else {
                continue;
            };
            if let Some(first) = (low..=top).find(|&i| ra.entry(i) != rb.entry(i)) {
                return Err(violation(
                    "log_matching",
                    now,
                    format!(
                        "slots {} and {} agree on ({top}, term {:?}) but differ at index {first}",
                        a.index,
                        b.index,
                        term(ra, top),
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use idunno_core::consensus::{Config, HardState, PersistedState, VoterId};

    fn entry(term: u64, index: u64, id: u64) -> Entry {
        Entry {
            term,
            index,
            payload: Payload::Command {
                id,
                bytes: vec![id as u8],
            },
        }
    }

    fn raft(id: u64, entries: Vec<Entry>) -> Raft {
        let voters = (0..3).map(VoterId).collect();
        let persisted = PersistedState {
            snapshot: None,
            hard_state: HardState {
                term: 9,
                vote: None,
            },
            entries,
        };
        Raft::restore(
            Config::lan(),
            VoterId(id),
            voters,
            persisted,
            0,
            Instant::ZERO,
        )
        .expect("valid log")
    }

    #[test]
    fn log_matching_catches_divergence_below_a_shared_entry() {
        let a = raft(0, vec![entry(1, 1, 1), entry(2, 2, 2), entry(3, 3, 3)]);
        let b = raft(1, vec![entry(1, 1, 1), entry(2, 2, 9), entry(3, 3, 3)]);
        let c = raft(2, vec![entry(1, 1, 1), entry(2, 2, 2), entry(4, 3, 4)]);
        let obs = |index, raft| Observed {
            index,
            generation: 1,
            raft,
        };
        assert!(check_log_matching(Instant::ZERO, &[obs(0, &a), obs(2, &c)]).is_ok());
        let err =
            check_log_matching(Instant::ZERO, &[obs(0, &a), obs(1, &b)]).expect_err("diverge");
        assert_eq!(err.checker, "log_matching");
    }

    #[test]
    fn applies_must_be_in_order_once_and_agree() {
        let mut checker = RaftChecker::default();
        let now = Instant::ZERO;
        checker
            .on_apply(now, 0, 1, &entry(1, 1, 1), b"r")
            .expect("first");
        checker
            .on_apply(now, 1, 1, &entry(1, 1, 1), b"r")
            .expect("same on another node");
        let twice = checker.on_apply(now, 0, 1, &entry(1, 1, 1), b"r");
        assert_eq!(twice.expect_err("twice").checker, "state_machine_safety");
        // A restarted instance applies from 1 again.
        checker
            .on_apply(now, 0, 2, &entry(1, 1, 1), b"r")
            .expect("new instance");
        let other_result = checker.on_apply(now, 2, 1, &entry(1, 1, 1), b"x");
        assert_eq!(
            other_result.expect_err("result").checker,
            "state_machine_safety"
        );
        let other_entry = checker.on_apply(now, 0, 3, &entry(2, 1, 5), b"r");
        assert_eq!(
            other_entry.expect_err("entry").checker,
            "committed_never_changes"
        );
        let duplicate = checker.on_apply(now, 1, 1, &entry(1, 2, 1), b"r");
        assert_eq!(duplicate.expect_err("dup").checker, "exactly_once_in_log");
    }
}
