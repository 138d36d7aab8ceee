//! The node's membership view as the rest of the node reads it: who is alive, who is suspected
//! and who is gone.
//!
//! Owns: [`MembershipView`], kept by the membership driver from its machine's events and
//! published on a `tokio::sync::watch` channel, so that the Raft leader can propose failures
//! and (later) place replicas and leases on live nodes without asking the membership machine.
//! Must never: decide anything (it mirrors the machine's events), or grow without bound: at most
//! [`GONE_KEPT`] gone members are remembered, oldest forgotten first; suspects are a subset of
//! the alive members.

use std::collections::BTreeSet;

use idunno_core::membership::{Event, NodeId};
use tokio::sync::watch;

/// Gone (failed or left) members remembered.
pub const GONE_KEPT: usize = 256;

/// Alive and gone members, as this node's membership machine last reported them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipView {
    alive: BTreeSet<NodeId>,
    /// Alive members under suspicion (not refuted, not yet declared failed).
    suspected: BTreeSet<NodeId>,
    /// Failed or left, oldest first.
    gone: Vec<NodeId>,
}

impl MembershipView {
    /// A view holding only this node.
    pub fn new(me: NodeId) -> Self {
        MembershipView {
            alive: BTreeSet::from([me]),
            suspected: BTreeSet::new(),
            gone: Vec::new(),
        }
    }

    /// Members believed alive (suspects included: they are not declared failed yet).
    pub fn alive(&self) -> &BTreeSet<NodeId> {
        &self.alive
    }

    /// Alive members currently suspected (SWIM has not heard from them; they may still refute).
    pub fn suspected(&self) -> &BTreeSet<NodeId> {
        &self.suspected
    }

    /// Members declared failed or gone, oldest first.
    pub fn gone(&self) -> impl Iterator<Item = &NodeId> {
        self.gone.iter()
    }

    /// Applies one membership event; whether the view changed.
    pub fn apply(&mut self, event: &Event) -> bool {
        match event {
            Event::Joined(node) => {
                self.suspected.remove(node);
                let was_gone = self.gone.len();
                self.gone.retain(|n| n != node);
                self.alive.insert(*node) || was_gone != self.gone.len()
            }
            Event::Failed(node) | Event::Left(node) => {
                self.suspected.remove(node);
                let was_alive = self.alive.remove(node);
                if self.gone.contains(node) {
                    return was_alive;
                }
                if self.gone.len() >= GONE_KEPT {
                    self.gone.remove(0);
                }
                self.gone.push(*node);
                debug_assert!(self.gone.len() <= GONE_KEPT);
                true
            }
            Event::Suspect(node) => self.alive.contains(node) && self.suspected.insert(*node),
            Event::Refuted(node) => self.suspected.remove(node),
            Event::SelfLeft => false,
        }
    }
}

/// A view channel starting with only `me` alive.
pub fn channel(
    me: NodeId,
) -> (
    watch::Sender<MembershipView>,
    watch::Receiver<MembershipView>,
) {
    watch::channel(MembershipView::new(me))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16) -> NodeId {
        NodeId::new(std::net::SocketAddr::from(([127, 0, 0, 1], port)), 1)
    }

    #[test]
    fn events_move_members_between_alive_and_gone() {
        let mut view = MembershipView::new(node(1));
        assert!(view.apply(&Event::Joined(node(2))));
        assert!(!view.apply(&Event::Joined(node(2))), "no change");
        assert!(view.apply(&Event::Suspect(node(2))), "suspected");
        assert!(!view.apply(&Event::Suspect(node(2))), "already suspected");
        assert!(view.suspected().contains(&node(2)));
        assert!(view.alive().contains(&node(2)), "a suspect is still alive");
        assert!(view.apply(&Event::Refuted(node(2))));
        assert!(view.suspected().is_empty());
        assert!(
            !view.apply(&Event::Suspect(node(9))),
            "an unknown member is not suspected"
        );
        assert!(view.apply(&Event::Suspect(node(2))));
        assert!(view.apply(&Event::Failed(node(2))));
        assert!(
            view.suspected().is_empty(),
            "a failed member is no longer a suspect"
        );
        assert!(!view.alive().contains(&node(2)));
        assert_eq!(view.gone().copied().collect::<Vec<_>>(), vec![node(2)]);
        assert!(!view.apply(&Event::Left(node(2))), "already gone");
        assert!(view.apply(&Event::Joined(node(2))), "came back");
        assert_eq!(view.gone().count(), 0);
    }

    #[test]
    fn gone_members_are_bounded() {
        let mut view = MembershipView::new(node(1));
        for port in 2..(GONE_KEPT as u16 + 12) {
            view.apply(&Event::Failed(node(port)));
        }
        assert_eq!(view.gone().count(), GONE_KEPT);
        assert_eq!(
            view.gone().next(),
            Some(&node(12)),
            "oldest forgotten first"
        );
    }
}
