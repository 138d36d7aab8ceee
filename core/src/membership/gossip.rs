//! The dissemination queue: updates waiting to be piggybacked, each sent a bounded number of
//! times (SWIM's infection-style dissemination with memberlist's transmit-limited queue).
//!
//! Owns: at most one pending [`Update`] per member (a newer one replaces the older), its
//! transmit count, and the choice of which updates fill the spare bytes of a packet
//! (fewest transmissions first, then newest).
//! Must never: grow past [`QUEUE_ITEMS_MAX`] or hand out an update more often than the limit.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::msg::{NodeId, Update};
use crate::wire;

/// Hard cap on queued updates; beyond it the most-transmitted ones are dropped.
pub const QUEUE_ITEMS_MAX: usize = 8192;

/// Ordering key: fewest transmits first, then the most recently queued.
type Key = (u32, Reverse<u64>);

#[derive(Debug, Default)]
pub(crate) struct BroadcastQueue {
    /// Each pending update with its encoded size, computed once when queued.
    by_priority: BTreeMap<Key, (Update, usize)>,
    by_node: BTreeMap<NodeId, Key>,
    next_id: u64,
    /// Updates dropped because the queue was full.
    pub(crate) dropped_full: u64,
}

impl BroadcastQueue {
    pub(crate) fn len(&self) -> usize {
        debug_assert_eq!(self.by_priority.len(), self.by_node.len());
        self.by_node.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `update`, replacing any pending update about the same member.
    pub(crate) fn push(&mut self, update: Update) {
        let node = update.node();
        if let Some(old) = self.by_node.remove(&node) {
            self.by_priority.remove(&old);
        }
        if self.by_node.len() >= QUEUE_ITEMS_MAX {
            // Drop the update that has already been sent the most.
            if let Some((&key, &(old, _))) = self.by_priority.iter().next_back() {
                self.by_priority.remove(&key);
                self.by_node.remove(&old.node());
                self.dropped_full += 1;
            }
        }
        self.next_id += 1;
        let key = (0, Reverse(self.next_id));
        let len = wire::encoded_len(&update).unwrap_or(usize::MAX);
        self.by_priority.insert(key, (update, len));
        self.by_node.insert(node, key);
        debug_assert_eq!(self.by_priority.len(), self.by_node.len());
    }

    /// Takes updates that fit in `bytes_free` (their encoded sizes), counting one
    /// transmission for each and retiring those that reached `limit`.
    pub(crate) fn take(&mut self, mut bytes_free: usize, limit: u32, out: &mut Vec<Update>) {
        let mut sent: Vec<(Key, Update, usize)> = Vec::new();
        let mut misfits = 0;
        for (&key, &(update, len)) in &self.by_priority {
            if bytes_free < MIN_UPDATE_BYTES || misfits >= MISFITS_MAX {
                break;
            }
            if len > bytes_free {
                misfits += 1;
                continue;
            }
            bytes_free -= len;
            out.push(update);
            sent.push((key, update, len));
        }
        for (key, update, len) in sent {
            self.by_priority.remove(&key);
            let transmits = key.0 + 1;
            if transmits >= limit {
                self.by_node.remove(&update.node());
            } else {
                let new_key = (transmits, key.1);
                self.by_priority.insert(new_key, (update, len));
                self.by_node.insert(update.node(), new_key);
            }
        }
        debug_assert_eq!(self.by_priority.len(), self.by_node.len());
    }
}

/// Updates skipped for not fitting before a packet counts as full (bounds the scan).
const MISFITS_MAX: usize = 8;
/// No encoded update is smaller than this; stops the scan early once a packet is full.
const MIN_UPDATE_BYTES: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn node(i: u16) -> NodeId {
        NodeId::new(SocketAddr::from(([127, 0, 0, 1], 7000 + i)), 1)
    }

    #[test]
    fn newer_update_replaces_older_and_limit_retires() {
        let mut q = BroadcastQueue::default();
        q.push(Update::Alive {
            node: node(1),
            incarnation: 0,
        });
        q.push(Update::Alive {
            node: node(1),
            incarnation: 1,
        });
        assert_eq!(q.len(), 1);
        let mut out = Vec::new();
        q.take(1000, 2, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].incarnation(), 1);
        out.clear();
        q.take(1000, 2, &mut out);
        assert_eq!(out.len(), 1);
        assert!(q.is_empty(), "retired after 2 transmissions");
    }

    #[test]
    fn respects_byte_budget_and_prefers_fresh_updates() {
        let mut q = BroadcastQueue::default();
        for i in 0..100 {
            q.push(Update::Alive {
                node: node(i),
                incarnation: 0,
            });
        }
        let mut out = Vec::new();
        q.take(200, 10, &mut out);
        let total: usize = out.iter().map(|u| wire::encoded_len(u).unwrap_or(0)).sum();
        assert!(total <= 200);
        assert!(!out.is_empty());
        // The newest update goes first.
        assert_eq!(out[0].node(), node(99));
        // Next time, never-sent updates come before the ones just sent.
        let mut again = Vec::new();
        q.take(200, 10, &mut again);
        assert!(again.iter().all(|u| !out.contains(u)));
    }
}
