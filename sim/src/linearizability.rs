//! The linearizability checker of the key-value workload: a client history (when each write
//! and each ReadIndex read was invoked and answered, and what each read returned) checked
//! against the canonical committed log.
//!
//! Owns: [`History`] and its check. Writes are totally ordered by their log index, so the
//! search is not exponential: a read of key `k` that returned `v` must be placed at a log
//! index `j` such that the state after `j` has `k = v`, `j` is at or after every write that
//! completed before the read was invoked, `j` is before every entry proposed after the read
//! was answered, and reads ordered in real time get non-decreasing `j`. Placing each read (in
//! invocation order) at the smallest such `j` is optimal, so a read with no `j` is a violation.
//! A write completes when the node it was proposed to applies it.
//! Must never: trust what a node says about the order (only the canonical committed log and
//! the times the client saw), or accept a gap in the committed log it replays.

use std::collections::BTreeMap;

use idunno_core::cluster::{ClusterCommand, ClusterOp, ClusterResult, ClusterState};
use idunno_core::consensus::{Entry, KvCommand, KvResult, Payload, StateMachine};
use idunno_core::time::Instant;

use crate::checker::Violation;

#[derive(Debug, Clone)]
struct Write {
    slot: usize,
    generation: u64,
    invoked: Instant,
    completed: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Read {
    key: String,
    invoked: Instant,
    answer: Option<(Instant, Option<Vec<u8>>)>,
}

/// What the client did and saw. See the module docs.
#[derive(Debug, Default, Clone)]
pub struct History {
    writes: BTreeMap<u64, Write>,
    reads: BTreeMap<u64, Read>,
}

fn violation(at: Instant, detail: String) -> Violation {
    Violation {
        checker: "linearizability",
        at,
        detail,
    }
}

impl History {
    /// Proposal `id` was accepted by the leader in `(slot, generation)` at `now`.
    pub fn write_invoked(&mut self, id: u64, slot: usize, generation: u64, now: Instant) {
        self.writes.insert(
            id,
            Write {
                slot,
                generation,
                invoked: now,
                completed: None,
            },
        );
    }

    /// `(slot, generation)` applied proposal `id` at `now` (completes it if it is the proposer).
    pub fn applied(&mut self, id: u64, slot: usize, generation: u64, now: Instant) {
        if let Some(write) = self.writes.get_mut(&id)
            && write.slot == slot
            && write.generation == generation
            && write.completed.is_none()
        {
            write.completed = Some(now);
        }
    }

    /// Read `id` of `key` was sent at `now`.
    pub fn read_invoked(&mut self, id: u64, key: String, now: Instant) {
        self.reads.insert(
            id,
            Read {
                key,
                invoked: now,
                answer: None,
            },
        );
    }

    /// Read `id` was answered with `value` at `now`.
    pub fn read_done(&mut self, id: u64, value: Option<Vec<u8>>, now: Instant) {
        if let Some(read) = self.reads.get_mut(&id)
            && read.answer.is_none()
        {
            read.answer = Some((now, value));
        }
    }

    /// Reads answered.
    pub fn reads_served(&self) -> u64 {
        self.reads.values().filter(|r| r.answer.is_some()).count() as u64
    }

    /// Reads never answered (failed, lost with a crash, or sent to a non-leader).
    pub fn reads_unanswered(&self) -> u64 {
        self.reads.values().filter(|r| r.answer.is_none()).count() as u64
    }

    /// Checks every answered read against `committed` (which must have no gaps).
    pub fn check_linearizable(
        &self,
        now: Instant,
        committed: &BTreeMap<u64, Entry>,
    ) -> Result<(), Violation> {
        let replay = Replay::new(now, committed)?;
        // Log index of every committed proposal, and the real-time bounds it gives.
        let mut completed_writes: Vec<(Instant, u64)> = Vec::new();
        let mut invoked_writes: Vec<(Instant, u64)> = Vec::new();
        for (id, write) in &self.writes {
            let Some(&index) = replay.index_of.get(id) else {
                continue;
            };
            invoked_writes.push((write.invoked, index));
            if let Some(done) = write.completed {
                completed_writes.push((done, index));
            }
        }
        let last_index = committed.keys().next_back().copied().unwrap_or(0);
        let mut answered: Vec<(u64, &Read, Instant, &Option<Vec<u8>>)> = self
            .reads
            .iter()
            .filter_map(|(id, r)| r.answer.as_ref().map(|(t, v)| (*id, r, *t, v)))
            .collect();
        answered.sort_by_key(|(id, r, _, _)| (r.invoked, *id));
        let mut placed: Vec<(Instant, u64)> = Vec::new();
        for (id, read, answered_at, value) in answered {
            let after_writes = completed_writes
                .iter()
                .filter(|(done, _)| *done < read.invoked)
                .map(|(_, index)| *index)
                .max()
                .unwrap_or(0);
            let after_reads = placed
                .iter()
                .filter(|(done, _)| *done < read.invoked)
                .map(|(_, j)| *j)
                .max()
                .unwrap_or(0);
            let low = after_writes.max(after_reads);
            let high = invoked_writes
                .iter()
                .filter(|(invoked, _)| *invoked > answered_at)
                .map(|(_, index)| index.saturating_sub(1))
                .min()
                .unwrap_or(last_index);
            let Some(j) = replay.first_index_with(&read.key, value, low, high) else {
                return Err(violation(
                    now,
                    format!(
                        "read {id} of {:?} (invoked t={}us, answered t={}us) returned {value:?}, \
                         which the key never held between log indices {low} and {high}",
                        read.key,
                        read.invoked.as_micros(),
                        answered_at.as_micros()
                    ),
                ));
            };
            placed.push((answered_at, j));
        }
        Ok(())
    }
}

/// A key's values over the log: `(index, value from that index on)`, ascending.
type ValueHistory = Vec<(u64, Option<Vec<u8>>)>;

/// The committed log replayed through a reference key-value store.
struct Replay {
    /// Proposal id -> log index.
    index_of: BTreeMap<u64, u64>,
    /// Key -> (index, value from that index on), starting with (0, None).
    values: BTreeMap<String, ValueHistory>,
}

impl Replay {
    fn new(now: Instant, committed: &BTreeMap<u64, Entry>) -> Result<Self, Violation> {
        let mut state = ClusterState::default();
        let mut index_of = BTreeMap::new();
        let mut values: BTreeMap<String, ValueHistory> = BTreeMap::new();
        for (expected, (&index, entry)) in (1u64..).zip(committed) {
            if index != expected {
                return Err(violation(
                    now,
                    format!("committed log has a gap at {expected}"),
                ));
            }
            let Payload::Command { id, bytes } = &entry.payload else {
                continue;
            };
            index_of.insert(*id, index);
            let result = ClusterResult::decode(&state.apply(index, bytes));
            let command = ClusterCommand::decode(bytes).map(|c| c.op);
            let changed = match (command, result) {
                (
                    Ok(ClusterOp::Kv(KvCommand::Put { key, .. })),
                    Ok(ClusterResult::Kv(KvResult::Done)),
                )
                | (
                    Ok(ClusterOp::Kv(KvCommand::Cas { key, .. })),
                    Ok(ClusterResult::Kv(KvResult::Cas { swapped: true, .. })),
                ) => Some(key),
                _ => None,
            };
            if let Some(key) = changed {
                let value = state.kv().get(&key).map(<[u8]>::to_vec);
                values
                    .entry(key)
                    .or_insert_with(|| vec![(0, None)])
                    .push((index, value));
            }
        }
        Ok(Replay { index_of, values })
    }

    /// The smallest `j` in `low..=high` after which `key` holds `value`.
    fn first_index_with(
        &self,
        key: &str,
        value: &Option<Vec<u8>>,
        low: u64,
        high: u64,
    ) -> Option<u64> {
        if low > high {
            return None;
        }
        let history = self.values.get(key);
        let none = [(0, None)];
        let history: &[(u64, Option<Vec<u8>>)] = history.map_or(&none, Vec::as_slice);
        // The value in force at `low`, then every change up to `high`.
        let at_low = history.iter().rposition(|(i, _)| *i <= low).unwrap_or(0);
        if &history[at_low].1 == value {
            return Some(low);
        }
        history[at_low + 1..]
            .iter()
            .take_while(|(i, _)| *i <= high)
            .find(|(_, v)| v == value)
            .map(|(i, _)| *i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(index: u64, id: u64, key: &str, value: u8) -> (u64, Entry) {
        let put = KvCommand::Put {
            key: key.into(),
            value: vec![value],
        };
        let bytes = ClusterCommand::new(Instant::ZERO, ClusterOp::Kv(put))
            .encode()
            .expect("encodes");
        (
            index,
            Entry {
                term: 1,
                index,
                payload: Payload::Command { id, bytes },
            },
        )
    }

    fn t(micros: u64) -> Instant {
        Instant::from_micros(micros)
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let committed: BTreeMap<u64, Entry> =
            [put(1, 1, "a", 1), put(2, 2, "a", 2)].into_iter().collect();
        let mut h = History::default();
        h.write_invoked(1, 0, 1, t(0));
        h.applied(1, 0, 1, t(10));
        h.write_invoked(2, 0, 1, t(20));
        h.applied(2, 0, 1, t(30));
        // Concurrent with write 2: either value is fine.
        h.read_invoked(10, "a".into(), t(15));
        h.read_done(10, Some(vec![1]), t(25));
        assert!(h.check_linearizable(t(100), &committed).is_ok());
        // After write 2 completed, the old value is stale.
        h.read_invoked(11, "a".into(), t(40));
        h.read_done(11, Some(vec![1]), t(45));
        let err = h.check_linearizable(t(100), &committed).expect_err("stale");
        assert_eq!(err.checker, "linearizability");
    }

    #[test]
    fn reads_ordered_in_real_time_cannot_go_back() {
        let committed: BTreeMap<u64, Entry> =
            [put(1, 1, "a", 1), put(2, 2, "a", 2)].into_iter().collect();
        let mut h = History::default();
        h.write_invoked(1, 0, 1, t(0));
        h.write_invoked(2, 0, 1, t(1));
        // Both writes are concurrent with both reads, but the second read follows the first.
        h.read_invoked(10, "a".into(), t(2));
        h.read_done(10, Some(vec![2]), t(3));
        h.read_invoked(11, "a".into(), t(4));
        h.read_done(11, Some(vec![1]), t(5));
        assert!(h.check_linearizable(t(100), &committed).is_err());
        // A value never written is caught too.
        let mut h = History::default();
        h.read_invoked(12, "a".into(), t(2));
        h.read_done(12, Some(vec![9]), t(3));
        assert!(h.check_linearizable(t(100), &committed).is_err());
    }
}
