//! The driver's timer queue.
//!
//! Owns: [`TimerQueue`], the timers a machine asked for, ordered by (deadline, arming order) so
//! timers due at the same instant come back in the order they were armed (as in sim/).
//! Must never: read a clock, cancel or deduplicate timers (the machine ignores stale ones by
//! token), or reorder timers with equal deadlines.

use std::collections::BTreeMap;

use idunno_core::time::Instant;

/// Most timers held at once. The membership machine keeps a handful armed plus one per suspect,
/// and superseded timers drain as they come due; reaching this is a bug in a machine.
pub const TIMERS_MAX: usize = 1 << 16;

/// The queue was full; the timer was not armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timer queue full ({TIMERS_MAX} timers)")]
pub struct QueueFull;

/// Timers ordered by deadline, then by arming order.
#[derive(Debug)]
pub struct TimerQueue<T> {
    entries: BTreeMap<(Instant, u64), T>,
    next_seq: u64,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        TimerQueue {
            entries: BTreeMap::new(),
            next_seq: 0,
        }
    }
}

impl<T> TimerQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Arms `timer` for `at`.
    pub fn push(&mut self, at: Instant, timer: T) -> Result<(), QueueFull> {
        if self.entries.len() >= TIMERS_MAX {
            return Err(QueueFull);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let previous = self.entries.insert((at, seq), timer);
        debug_assert!(previous.is_none(), "sequence numbers are unique");
        Ok(())
    }

    /// The earliest deadline, if any timer is armed.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.keys().next().map(|&(at, _)| at)
    }

    /// Removes and returns the earliest timer if it is due at `now` (deadline <= now).
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, T)> {
        let entry = self.entries.first_entry()?;
        let (at, _) = *entry.key();
        if at > now {
            return None;
        }
        let timer = entry.remove();
        debug_assert!(self.next_deadline().is_none_or(|next| next >= at));
        Some((at, timer))
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(micros: u64) -> Instant {
        Instant::from_micros(micros)
    }

    #[test]
    fn pops_in_deadline_order_then_arming_order() {
        let mut q = TimerQueue::new();
        q.push(at(30), "c").expect("room");
        q.push(at(10), "a1").expect("room");
        q.push(at(20), "b").expect("room");
        q.push(at(10), "a2").expect("room");
        assert_eq!(q.next_deadline(), Some(at(10)));
        let mut popped = Vec::new();
        while let Some((_, t)) = q.pop_due(at(100)) {
            popped.push(t);
        }
        assert_eq!(popped, ["a1", "a2", "b", "c"]);
        assert!(q.is_empty());
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn nothing_pops_before_its_deadline() {
        let mut q = TimerQueue::new();
        q.push(at(50), 1).expect("room");
        q.push(at(60), 2).expect("room");
        assert_eq!(q.pop_due(at(49)), None);
        assert_eq!(q.pop_due(at(50)), Some((at(50), 1)));
        assert_eq!(q.pop_due(at(59)), None);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop_due(at(1000)), Some((at(60), 2)));
    }

    #[test]
    fn the_never_deadline_is_kept_and_ordered_last() {
        let mut q = TimerQueue::new();
        q.push(Instant::MAX, "never").expect("room");
        q.push(at(1), "soon").expect("room");
        assert_eq!(q.pop_due(at(5)), Some((at(1), "soon")));
        assert_eq!(q.pop_due(at(u64::MAX - 1)), None);
        assert_eq!(q.next_deadline(), Some(Instant::MAX));
    }

    #[test]
    fn a_full_queue_refuses_instead_of_growing() {
        let mut q = TimerQueue::new();
        for i in 0..TIMERS_MAX {
            q.push(at(i as u64), i).expect("room");
        }
        assert_eq!(q.push(at(0), 0), Err(QueueFull));
        assert_eq!(q.len(), TIMERS_MAX);
        assert!(q.pop_due(at(0)).is_some());
        assert_eq!(q.push(at(0), 0), Ok(()));
    }
}
