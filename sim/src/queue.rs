//! The simulator's agenda: every future happening (a datagram arriving, a timer firing),
//! ordered by `(time, sequence number)`.
//!
//! Owns: [`EventQueue`], a min-heap whose ties on time are broken by the order of insertion, so
//! two runs that insert the same events in the same order pop them in the same order.
//! Must never: grow without bound (callers check [`EventQueue::is_full`] and count a drop), or
//! order by anything that is not part of the key (payloads are never compared).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use idunno_core::time::Instant;

/// The default capacity: enough for a 1000-node cluster at 30% loss with room to spare.
pub const QUEUE_EVENTS_MAX: usize = 1 << 22;

/// One scheduled happening with its ordering key.
#[derive(Debug)]
struct Scheduled<P> {
    at: Instant,
    seq: u64,
    payload: P,
}

impl<P> PartialEq for Scheduled<P> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<P> Eq for Scheduled<P> {}

impl<P> PartialOrd for Scheduled<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<P> Ord for Scheduled<P> {
    /// Reversed, so `BinaryHeap` (a max-heap) pops the earliest `(at, seq)` first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A bounded priority queue of `P`, earliest `(time, sequence number)` first.
#[derive(Debug)]
pub struct EventQueue<P> {
    heap: BinaryHeap<Scheduled<P>>,
    next_seq: u64,
    capacity: usize,
}

impl<P> EventQueue<P> {
    /// An empty queue holding at most `capacity` events (`capacity` >= 1).
    pub fn with_capacity_max(capacity: usize) -> Self {
        assert!(capacity >= 1, "an event queue must hold at least one event");
        EventQueue {
            heap: BinaryHeap::new(),
            next_seq: 0,
            capacity,
        }
    }

    /// Number of pending events.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Whether a push would exceed the capacity.
    pub fn is_full(&self) -> bool {
        self.heap.len() >= self.capacity
    }

    /// Schedules `payload` at `at` and returns its sequence number. The caller checks
    /// [`EventQueue::is_full`] first; pushing into a full queue is a bug.
    pub fn push(&mut self, at: Instant, payload: P) -> u64 {
        debug_assert!(
            !self.is_full(),
            "event queue over capacity {}",
            self.capacity
        );
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Scheduled { at, seq, payload });
        seq
    }

    /// The time of the earliest pending event.
    pub fn peek_time(&self) -> Option<Instant> {
        self.heap.peek().map(|s| s.at)
    }

    /// Removes and returns the earliest pending event with its time and sequence number.
    pub fn pop(&mut self) -> Option<(Instant, u64, P)> {
        let popped = self.heap.pop().map(|s| (s.at, s.seq, s.payload));
        if let (Some((at, _, _)), Some(next)) = (&popped, self.heap.peek()) {
            debug_assert!(next.at >= *at, "the queue pops in time order");
        }
        popped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_by_time_then_insertion_order() {
        let mut q = EventQueue::with_capacity_max(16);
        q.push(Instant::from_micros(20), "late");
        q.push(Instant::from_micros(10), "first");
        q.push(Instant::from_micros(10), "second");
        q.push(Instant::from_micros(5), "earliest");
        let order: Vec<&str> = std::iter::from_fn(|| q.pop().map(|(_, _, p)| p)).collect();
        assert_eq!(order, ["earliest", "first", "second", "late"]);
        assert!(q.is_empty());
    }

    #[test]
    fn reports_full_at_capacity() {
        let mut q = EventQueue::with_capacity_max(2);
        assert!(!q.is_full());
        q.push(Instant::ZERO, 1);
        q.push(Instant::ZERO, 2);
        assert!(q.is_full());
        assert_eq!(q.len(), 2);
        assert_eq!(q.peek_time(), Some(Instant::ZERO));
    }
}
