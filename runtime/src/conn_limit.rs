//! Admission of accepted connections: at most a total number at once, and at most a smaller
//! number from any one peer address, so that one busy or misbehaving peer (a worker keeping
//! scheduler connections, a bench with many clients, a flood) cannot take every slot from the
//! others.
//!
//! Owns: [`ConnectionSlots`] and the [`ConnectionSlot`] guard that gives its slot back when
//! dropped.
//! Must never: block (admission is a yes or no at accept), or keep an entry for a peer that
//! holds no slot (the table is bounded by the total).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every slot is taken.
    #[error("{0} connections already open")]
    Full(usize),
    /// This peer address holds its share already.
    #[error("{0} connections already open from this address")]
    PeerFull(usize),
}

#[derive(Debug, Default)]
struct Table {
    total: usize,
    by_peer: BTreeMap<IpAddr, usize>,
}

/// Slots for accepted connections (cheap to clone: shared).
#[derive(Debug, Clone)]
pub struct ConnectionSlots {
    total_max: usize,
    per_peer_max: usize,
    table: Arc<Mutex<Table>>,
}

impl ConnectionSlots {
    /// At most `total_max` connections, at most `per_peer_max` of them from one address.
    pub fn new(total_max: usize, per_peer_max: usize) -> Self {
        ConnectionSlots {
            total_max,
            per_peer_max: per_peer_max.min(total_max),
            table: Arc::new(Mutex::new(Table::default())),
        }
    }

    /// A slot for a connection from `peer`, or why not.
    pub fn try_take(&self, peer: IpAddr) -> Result<ConnectionSlot, Refused> {
        // The table is only counters: a panic elsewhere cannot leave it inconsistent.
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.total >= self.total_max {
            return Err(Refused::Full(table.total));
        }
        let held = table.by_peer.get(&peer).copied().unwrap_or(0);
        if held >= self.per_peer_max {
            return Err(Refused::PeerFull(held));
        }
        table.total += 1;
        table.by_peer.insert(peer, held + 1);
        debug_assert!(table.by_peer.values().sum::<usize>() == table.total);
        Ok(ConnectionSlot {
            peer,
            table: Arc::clone(&self.table),
        })
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

/// One admitted connection's slot; given back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    peer: IpAddr,
    table: Arc<Mutex<Table>>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.total = table.total.saturating_sub(1);
        match table.by_peer.get_mut(&self.peer) {
            Some(held) if *held > 1 => *held -= 1,
            _ => {
                table.by_peer.remove(&self.peer);
            }
        }
        debug_assert!(table.by_peer.values().sum::<usize>() == table.total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn one_peer_cannot_take_every_slot() {
        let slots = ConnectionSlots::new(5, 2);
        let a1 = slots.try_take(ip(1)).expect("first");
        let _a2 = slots.try_take(ip(1)).expect("second");
        assert_eq!(slots.try_take(ip(1)).err(), Some(Refused::PeerFull(2)));
        let _b1 = slots.try_take(ip(2)).expect("another peer still gets in");
        drop(a1);
        let _a3 = slots
            .try_take(ip(1))
            .expect("a slot given back is reusable");
        assert_eq!(slots.open(), 3);
    }

    #[test]
    fn the_total_bounds_every_peer_together() {
        let slots = ConnectionSlots::new(3, 2);
        let held: Vec<ConnectionSlot> = (1..=3)
            .map(|i| slots.try_take(ip(i)).expect("room"))
            .collect();
        assert_eq!(slots.try_take(ip(9)).err(), Some(Refused::Full(3)));
        drop(held);
        assert_eq!(slots.open(), 0);
        assert!(
            slots
                .table
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .by_peer
                .is_empty(),
            "no entry outlives its slots"
        );
    }

    #[test]
    fn a_per_peer_bound_above_the_total_is_the_total() {
        let slots = ConnectionSlots::new(2, 10);
        let _a = slots.try_take(ip(1)).expect("one");
        let _b = slots.try_take(ip(1)).expect("two");
        assert_eq!(slots.try_take(ip(1)).err(), Some(Refused::Full(2)));
    }
}
