//! Re-replication planning: which copies restore every blob's replication factor.
//!
//! Owns: [`plan_repairs`] and [`Repair`] / [`RepairPlan`]. For each under-replicated blob
//! (fewest live replicas first, then by hash) it picks a live source replica (least loaded,
//! deterministic tie-break) and least-loaded live targets that neither hold the blob nor are
//! already receiving it, until `max_parallel` copies are in flight. Targets are only nodes the
//! namespace [`Namespace::may_store`] (announced blob stores); any live replica may be a
//! source. Blobs with no live replica
//! are reported as lost (nothing can restore them).
//! The leader runs it after a failure, after a copy finishes and periodically; the runtime (or
//! the simulator) performs the copies and proposes `ReplicaAdded` when each one is on disk.
//! Must never: plan a copy from or to a node that is not live, plan a copy to a node without a
//! blob store, plan two copies of one blob to one node, exceed `max_parallel`, or depend on anything but its arguments.

use std::collections::{BTreeMap, BTreeSet};

use super::placement::{Candidate, rank};
use super::{ContentHash, Namespace};
use crate::membership::NodeId;

/// One copy to perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Repair {
    /// The blob.
    pub hash: ContentHash,
    /// A live node holding a copy.
    pub from: NodeId,
    /// The live node to copy to.
    pub to: NodeId,
}

/// What [`plan_repairs`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairPlan {
    /// New copies to start, in priority order.
    pub repairs: Vec<Repair>,
    /// Under-replicated blobs with no live replica (cannot be repaired).
    pub lost: Vec<ContentHash>,
    /// Under-replicated blobs left for a later round (the parallel bound was reached).
    pub deferred: usize,
}

/// Plans copies for the under-replicated blobs of `namespace`. `live` is every node membership
/// considers alive, with its load; `in_flight` the copies already running.
pub fn plan_repairs(
    namespace: &Namespace,
    live: &[Candidate],
    in_flight: &[Repair],
    max_parallel: usize,
) -> RepairPlan {
    let replication = namespace.config().replication;
    let live_nodes: BTreeSet<NodeId> = live.iter().map(|c| c.node).collect();
    let mut loads: BTreeMap<NodeId, u64> = live.iter().map(|c| (c.node, c.stored_bytes)).collect();
    let mut running = in_flight.len();
    let mut plan = RepairPlan::default();
    // Blobs with fewer *live* replicas than the factor, fewest first.
    let mut wanted: Vec<(usize, ContentHash)> = namespace
        .blobs()
        .iter()
        .map(|(hash, blob)| (blob.replicas.intersection(&live_nodes).count(), *hash))
        .filter(|&(count, _)| count < replication)
        .collect();
    wanted.sort();
    for (live_count, hash) in wanted {
        let Some(blob) = namespace.blob(&hash) else {
            continue;
        };
        if live_count == 0 {
            plan.lost.push(hash);
            continue;
        }
        let receiving: BTreeSet<NodeId> = in_flight
            .iter()
            .filter(|r| r.hash == hash)
            .map(|r| r.to)
            .collect();
        let missing = replication.saturating_sub(live_count + receiving.len());
        if missing == 0 {
            continue;
        }
        if running >= max_parallel {
            plan.deferred += 1;
            continue;
        }
        let current = |nodes: &mut dyn Iterator<Item = &NodeId>| -> Vec<Candidate> {
            nodes
                .map(|n| Candidate {
                    node: *n,
                    stored_bytes: loads.get(n).copied().unwrap_or(0),
                })
                .collect()
        };
        let sources = current(&mut blob.replicas.intersection(&live_nodes));
        let Some(from) = rank(&hash, &sources).first().map(|c| c.node) else {
            continue;
        };
        let targets = current(&mut live_nodes.iter().filter(|n| {
            !blob.replicas.contains(n) && !receiving.contains(n) && namespace.may_store(n)
        }));
        let chosen: Vec<NodeId> = rank(&hash, &targets)
            .into_iter()
            .take(missing.min(max_parallel - running))
            .map(|c| c.node)
            .collect();
        if chosen.len() < missing {
            plan.deferred += 1;
        }
        for to in chosen {
            debug_assert!(live_nodes.contains(&from) && live_nodes.contains(&to) && from != to);
            debug_assert!(namespace.may_store(&to));
            let load = loads.entry(to).or_default();
            *load = load.saturating_add(blob.size);
            plan.repairs.push(Repair { hash, from, to });
            running += 1;
        }
    }
    debug_assert!(in_flight.len() + plan.repairs.len() <= max_parallel.max(in_flight.len()));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dfs::{DfsCommand, RequestId};
    use crate::time::Instant;

    fn node(i: u8) -> NodeId {
        NodeId::new(format!("10.0.0.{i}:7000").parse().expect("addr"), 1)
    }

    fn live(nodes: &[u8]) -> Vec<Candidate> {
        nodes
            .iter()
            .map(|&i| Candidate {
                node: node(i),
                stored_bytes: u64::from(i),
            })
            .collect()
    }

    fn namespace(files: &[(u8, &[u8])]) -> Namespace {
        let mut ns = Namespace::default();
        for (seq, (h, replicas)) in files.iter().enumerate() {
            ns.execute(
                Instant::ZERO,
                DfsCommand::Commit {
                    name: format!("f{h}"),
                    size: 10,
                    hash: ContentHash([*h; 32]),
                    replicas: replicas.iter().map(|&i| node(i)).collect(),
                    request: RequestId {
                        client: 1,
                        seq: seq as u64 + 1,
                    },
                },
            )
            .expect("commits");
        }
        ns
    }

    #[test]
    fn a_dead_replica_is_replaced_from_a_live_one_on_the_least_loaded_node() {
        let ns = namespace(&[(1, &[1, 2, 3, 4])]);
        // Node 4 is dead (not live) but not yet removed from the namespace.
        let plan = plan_repairs(&ns, &live(&[1, 2, 3, 5, 6, 7]), &[], 8);
        assert_eq!(
            plan.repairs,
            vec![Repair {
                hash: ContentHash([1; 32]),
                from: node(1),
                to: node(5)
            }]
        );
        assert!(plan.lost.is_empty());
        // Already in flight: nothing more to do.
        let again = plan_repairs(&ns, &live(&[1, 2, 3, 5, 6, 7]), &plan.repairs, 8);
        assert!(again.repairs.is_empty());
    }

    #[test]
    fn the_parallel_bound_holds_and_the_worst_go_first() {
        let ns = namespace(&[(1, &[1, 2, 3, 4]), (2, &[1, 5, 6, 7]), (3, &[2, 3, 5, 6])]);
        // 5, 6 and 7 die: blob 2 has one live replica, blob 3 two, blob 1 none missing.
        let plan = plan_repairs(&ns, &live(&[1, 2, 3, 4, 8, 9, 10]), &[], 2);
        assert_eq!(plan.repairs.len(), 2);
        assert!(plan.repairs.iter().all(|r| r.hash == ContentHash([2; 32])));
        assert!(plan.repairs.iter().all(|r| r.from == node(1)));
        assert_eq!(plan.deferred, 2);
        let full = plan_repairs(&ns, &live(&[1, 2, 3, 4, 8, 9, 10]), &[], 16);
        assert_eq!(full.repairs.len(), 5);
        let targets: BTreeSet<(ContentHash, NodeId)> =
            full.repairs.iter().map(|r| (r.hash, r.to)).collect();
        assert_eq!(targets.len(), 5, "no blob copied twice to one node");
    }

    #[test]
    fn a_blob_without_live_replicas_is_lost() {
        let ns = namespace(&[(1, &[1, 2])]);
        let plan = plan_repairs(&ns, &live(&[3, 4, 5]), &[], 8);
        assert!(plan.repairs.is_empty());
        assert_eq!(plan.lost, vec![ContentHash([1; 32])]);
    }

    proptest::proptest! {
        /// Any namespace, live set and bound: copies go from a live holder to a live
        /// non-holder, never twice to one node for one blob, and within the bound.
        #[test]
        fn plans_respect_liveness_and_the_bound(
            files in proptest::collection::vec((0u8..12, proptest::collection::btree_set(1u8..10, 1..5)), 1..12),
            alive in proptest::collection::btree_set(1u8..10, 0..9),
            max_parallel in 0usize..10,
        ) {
            let files: Vec<(u8, Vec<u8>)> =
                files.into_iter().map(|(h, r)| (h, r.into_iter().collect())).collect();
            let borrowed: Vec<(u8, &[u8])> = files.iter().map(|(h, r)| (*h, r.as_slice())).collect();
            let ns = namespace(&borrowed);
            let alive: Vec<u8> = alive.into_iter().collect();
            let plan = plan_repairs(&ns, &live(&alive), &[], max_parallel);
            proptest::prop_assert!(plan.repairs.len() <= max_parallel);
            let live_nodes: BTreeSet<NodeId> = alive.iter().map(|&i| node(i)).collect();
            let mut seen = BTreeSet::new();
            for r in &plan.repairs {
                let blob = ns.blob(&r.hash).expect("planned blob exists");
                proptest::prop_assert!(live_nodes.contains(&r.from) && blob.replicas.contains(&r.from));
                proptest::prop_assert!(live_nodes.contains(&r.to) && !blob.replicas.contains(&r.to));
                proptest::prop_assert!(seen.insert((r.hash, r.to)));
            }
        }
    }

    /// Once stores announced themselves, a live node without one is never a target, while a
    /// replica on a node that never announced (an old log) still serves as a source.
    #[test]
    fn repairs_go_only_to_announced_stores() {
        let mut ns = namespace(&[(1, &[1, 2, 3, 4])]);
        for i in [1u8, 2, 3, 6] {
            ns.execute(Instant::ZERO, DfsCommand::StoreReady { node: node(i) })
                .expect("announces");
        }
        // 4 died; 5 (less loaded than 6) has no store.
        let plan = plan_repairs(&ns, &live(&[1, 2, 3, 5, 6]), &[], 8);
        assert_eq!(plan.repairs.len(), 1);
        assert_eq!(plan.repairs[0].to, node(6));
        // Only storage-less nodes left as targets: nothing planned, deferred.
        let plan = plan_repairs(&ns, &live(&[1, 2, 3, 5]), &[], 8);
        assert!(plan.repairs.is_empty());
        assert_eq!(plan.deferred, 1);
        // A source that never announced still serves.
        let mut ns = namespace(&[(2, &[7])]);
        ns.execute(Instant::ZERO, DfsCommand::StoreReady { node: node(8) })
            .expect("announces");
        let plan = plan_repairs(&ns, &live(&[7, 8, 9]), &[], 8);
        assert_eq!(
            plan.repairs,
            vec![Repair {
                hash: ContentHash([2; 32]),
                from: node(7),
                to: node(8)
            }]
        );
    }

    #[test]
    fn too_few_nodes_repairs_what_it_can() {
        let ns = namespace(&[(1, &[1, 2])]);
        let plan = plan_repairs(&ns, &live(&[1, 2, 3]), &[], 8);
        assert_eq!(plan.repairs.len(), 1);
        assert_eq!(plan.repairs[0].to, node(3));
        assert_eq!(plan.deferred, 1);
    }
}
