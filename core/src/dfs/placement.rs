//! Replica placement: which live nodes receive a new blob.
//!
//! Owns: [`place`] and its [`Candidate`] / [`Placement`] types. Policy: distinct nodes, the
//! least loaded (stored bytes) first, nodes on distinct hosts (IP address) before a second
//! node on the same host, and ties broken by a hash of (blob, node) so equal loads still spread
//! different blobs over different nodes, the same way on every run.
//! Fewer live nodes than the factor: every live node is used and the placement says it is
//! degraded (repair tops it up when nodes join).
//! Must never: draw randomness or read a clock (the tie-break is a pure function), return a
//! node twice, or return a node that was not a candidate.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::ContentHash;
use crate::membership::NodeId;

/// A live node that may receive a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The node.
    pub node: NodeId,
    /// Bytes it already stores (its load).
    pub stored_bytes: u64,
}

/// Where a blob goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The chosen nodes, best first, distinct.
    pub nodes: Vec<NodeId>,
    /// Fewer nodes than the replication factor were available.
    pub degraded: bool,
}

/// A stable 64-bit mix of (blob, node): the deterministic tie-break.
pub fn tie_break(hash: &ContentHash, node: &NodeId) -> u64 {
    // FNV-1a over the hash bytes and the node's address and generation, then a finaliser.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |byte: u8| {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    hash.0.iter().copied().for_each(&mut eat);
    match node.addr.ip() {
        IpAddr::V4(ip) => ip.octets().into_iter().for_each(&mut eat),
        IpAddr::V6(ip) => ip.octets().into_iter().for_each(&mut eat),
    }
    node.addr
        .port()
        .to_le_bytes()
        .into_iter()
        .for_each(&mut eat);
    node.generation.to_le_bytes().into_iter().for_each(&mut eat);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Orders candidates best first: least loaded, then the tie-break, then the node id.
pub fn rank(hash: &ContentHash, candidates: &[Candidate]) -> Vec<Candidate> {
    let mut ranked: Vec<Candidate> = Vec::with_capacity(candidates.len());
    let mut seen = BTreeSet::new();
    for c in candidates {
        if seen.insert(c.node) {
            ranked.push(*c);
        }
    }
    ranked.sort_by_key(|c| (c.stored_bytes, tie_break(hash, &c.node), c.node));
    ranked
}

/// Chooses `replication` distinct nodes for blob `hash` among `candidates` (duplicates are
/// ignored). See the module docs for the policy.
pub fn place(hash: &ContentHash, candidates: &[Candidate], replication: usize) -> Placement {
    let ranked = rank(hash, candidates);
    let mut nodes: Vec<NodeId> = Vec::with_capacity(replication.min(ranked.len()));
    let mut hosts: BTreeSet<IpAddr> = BTreeSet::new();
    // First pass: one node per host; second pass: fill from what is left.
    for c in &ranked {
        if nodes.len() >= replication {
            break;
        }
        if hosts.insert(c.node.addr.ip()) {
            nodes.push(c.node);
        }
    }
    for c in &ranked {
        if nodes.len() >= replication {
            break;
        }
        if !nodes.contains(&c.node) {
            nodes.push(c.node);
        }
    }
    debug_assert!(nodes.len() <= replication);
    debug_assert_eq!(
        nodes.iter().collect::<BTreeSet<_>>().len(),
        nodes.len(),
        "distinct nodes"
    );
    Placement {
        degraded: nodes.len() < replication,
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: u8, port: u16) -> NodeId {
        NodeId::new(format!("10.0.0.{host}:{port}").parse().expect("addr"), 1)
    }

    fn candidates(loads: &[u64]) -> Vec<Candidate> {
        loads
            .iter()
            .enumerate()
            .map(|(i, &stored_bytes)| Candidate {
                node: node(i as u8 + 1, 7000),
                stored_bytes,
            })
            .collect()
    }

    #[test]
    fn least_loaded_first_and_distinct() {
        let c = candidates(&[50, 10, 40, 0, 30, 20]);
        let p = place(&ContentHash([1; 32]), &c, 4);
        assert_eq!(
            p.nodes,
            vec![node(4, 7000), node(2, 7000), node(6, 7000), node(5, 7000)]
        );
        assert!(!p.degraded);
    }

    #[test]
    fn too_few_nodes_is_degraded() {
        let mut c = candidates(&[0, 0]);
        c.push(c[0]);
        let p = place(&ContentHash([1; 32]), &c, 4);
        assert_eq!(p.nodes.len(), 2);
        assert!(p.degraded);
        assert!(place(&ContentHash([1; 32]), &[], 4).nodes.is_empty());
    }

    #[test]
    fn distinct_hosts_come_first() {
        let c = vec![
            Candidate {
                node: node(1, 7000),
                stored_bytes: 0,
            },
            Candidate {
                node: node(1, 7001),
                stored_bytes: 0,
            },
            Candidate {
                node: node(1, 7002),
                stored_bytes: 0,
            },
            Candidate {
                node: node(2, 7000),
                stored_bytes: 100,
            },
        ];
        let p = place(&ContentHash([3; 32]), &c, 2);
        assert!(p.nodes.contains(&node(2, 7000)), "{:?}", p.nodes);
        let p = place(&ContentHash([3; 32]), &c, 4);
        assert_eq!(p.nodes.len(), 4);
    }

    proptest::proptest! {
        /// Any candidates and factor: distinct nodes, all candidates, as many as possible, and
        /// never a more loaded node while a less loaded one on a new host is left out.
        #[test]
        fn placements_are_distinct_candidates(
            loads in proptest::collection::vec((0u8..6, 7000u16..7003, 0u64..5), 0..20),
            replication in 1usize..8,
            seed in proptest::prelude::any::<u8>(),
        ) {
            let c: Vec<Candidate> = loads
                .iter()
                .map(|&(host, port, load)| Candidate { node: node(host, port), stored_bytes: load })
                .collect();
            let distinct: BTreeSet<NodeId> = c.iter().map(|c| c.node).collect();
            let p = place(&ContentHash([seed; 32]), &c, replication);
            proptest::prop_assert_eq!(p.nodes.len(), replication.min(distinct.len()));
            proptest::prop_assert_eq!(p.degraded, distinct.len() < replication);
            let chosen: BTreeSet<NodeId> = p.nodes.iter().copied().collect();
            proptest::prop_assert_eq!(chosen.len(), p.nodes.len());
            proptest::prop_assert!(chosen.is_subset(&distinct));
        }
    }

    #[test]
    fn equal_loads_spread_blobs_deterministically() {
        let c = candidates(&[0; 10]);
        let mut used = BTreeSet::new();
        for i in 0..20u8 {
            let h = ContentHash([i; 32]);
            let p = place(&h, &c, 4);
            assert_eq!(p, place(&h, &c, 4), "same inputs, same answer");
            let mut shuffled = c.clone();
            shuffled.reverse();
            assert_eq!(
                p,
                place(&h, &shuffled, 4),
                "candidate order does not matter"
            );
            used.extend(p.nodes);
        }
        assert_eq!(used.len(), 10, "twenty blobs touch every node");
    }
}
