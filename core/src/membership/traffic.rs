//! Traffic accounting by purpose: what the membership machine's bytes are spent on.
//!
//! Owns: [`Traffic`], the per-kind datagram and byte counters kept in
//! [`super::Metrics::traffic`], and the classification of one outgoing packet.
//! Must never: influence a decision; these are counters for operators and benchmarks only.

use serde::{Deserialize, Serialize};

use super::msg::{Message, Packet, Update};
use crate::wire;

/// Datagrams and bytes of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// Datagrams (or records, for the record counters).
    pub count: u64,
    /// Encoded bytes.
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: usize) {
        self.count += 1;
        self.bytes += bytes as u64;
    }

    /// `self - earlier`, saturating (for windows over a running counter).
    pub fn since(&self, earlier: &Count) -> Count {
        Count {
            count: self.count.saturating_sub(earlier.count),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }
}

/// Sent traffic split by the packet's main message and, inside packets, by the records they
/// carry. Datagram counters add up to `Metrics::datagrams_sent` / `bytes_sent`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Direct pings: probes, their retries and pings a relay sends for a ping-req.
    pub ping: Count,
    /// Acks, direct or relayed back to the prober.
    pub ack: Count,
    /// Ping-req messages.
    pub ping_req: Count,
    /// Join requests.
    pub join: Count,
    /// Push-pull chunks and join answers.
    pub sync: Count,
    /// Gossip-only packets sent by the periodic gossip round.
    pub gossip_round: Count,
    /// Gossip-only packets sent directly for a reason: a refutation to an accuser, a suspicion
    /// or death forwarded to the accused, a leave notice.
    pub notice: Count,
    /// Piggybacked `Alive` records (in any packet), bytes of the records alone.
    pub piggyback_alive: Count,
    /// Piggybacked `Suspect` records.
    pub piggyback_suspect: Count,
    /// Piggybacked `Dead` records.
    pub piggyback_dead: Count,
    /// Piggybacked `Left` records.
    pub piggyback_left: Count,
    /// Records inside push-pull chunks and join answers.
    pub sync_records: Count,
}

/// Why a gossip-only packet is sent (the message alone does not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Anything but a gossip-only packet, or a directed notice.
    Direct,
    /// The periodic gossip round.
    GossipRound,
}

impl Traffic {
    /// Counts one emitted datagram of `bytes` bytes carrying `packet`.
    pub(crate) fn record(&mut self, packet: &Packet, bytes: usize, purpose: Purpose) {
        let kind = match (&packet.message, purpose) {
            (Message::Ping { .. }, _) => &mut self.ping,
            (Message::Ack { .. }, _) => &mut self.ack,
            (Message::PingReq { .. }, _) => &mut self.ping_req,
            (Message::Join, _) => &mut self.join,
            (Message::Sync { .. }, _) => &mut self.sync,
            (Message::Gossip, Purpose::GossipRound) => &mut self.gossip_round,
            (Message::Gossip, Purpose::Direct) => &mut self.notice,
        };
        kind.add(bytes);
        for update in &packet.gossip {
            let len = wire::encoded_len(update).unwrap_or(0);
            let record = match update {
                Update::Alive { .. } => &mut self.piggyback_alive,
                Update::Suspect { .. } => &mut self.piggyback_suspect,
                Update::Dead { .. } => &mut self.piggyback_dead,
                Update::Left { .. } => &mut self.piggyback_left,
            };
            record.add(len);
        }
        if let Message::Sync { entries, .. } = &packet.message {
            for entry in entries {
                self.sync_records.add(wire::encoded_len(entry).unwrap_or(0));
            }
        }
    }

    /// Every counter with a name, for tables.
    pub fn named(&self) -> [(&'static str, Count); 12] {
        [
            ("ping", self.ping),
            ("ack", self.ack),
            ("ping-req", self.ping_req),
            ("join", self.join),
            ("sync", self.sync),
            ("gossip round", self.gossip_round),
            ("notice", self.notice),
            ("piggyback alive", self.piggyback_alive),
            ("piggyback suspect", self.piggyback_suspect),
            ("piggyback dead", self.piggyback_dead),
            ("piggyback left", self.piggyback_left),
            ("sync records", self.sync_records),
        ]
    }

    /// Adds `other` into `self` (sums over nodes).
    pub fn add(&mut self, other: &Traffic) {
        for (mine, theirs) in self.counts_mut().into_iter().zip(other.named()) {
            mine.count += theirs.1.count;
            mine.bytes += theirs.1.bytes;
        }
    }

    fn counts_mut(&mut self) -> [&mut Count; 12] {
        [
            &mut self.ping,
            &mut self.ack,
            &mut self.ping_req,
            &mut self.join,
            &mut self.sync,
            &mut self.gossip_round,
            &mut self.notice,
            &mut self.piggyback_alive,
            &mut self.piggyback_suspect,
            &mut self.piggyback_dead,
            &mut self.piggyback_left,
            &mut self.sync_records,
        ]
    }
}
