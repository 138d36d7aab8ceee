//! The leader's part of the file-system requests: turns a [`DfsRequest`] into what the Raft
//! driver does with it: propose a namespace change, or answer a linearizable read of the
//! namespace (placement and repair plans included, computed on the live membership view).
//!
//! Owns: [`action`] and the answer functions. The driver keeps the proposal and read queues.
//! Must never: touch the network or a disk, or decide anything core::dfs decides.

use std::collections::BTreeSet;

use idunno_core::cluster::{ClusterOp, ClusterResult, ClusterState};
use idunno_core::dfs::placement::{self, Candidate};
use idunno_core::dfs::repair::{self, Repair};
use idunno_core::dfs::request::{
    LIST_PAGE_NAMES, NEWEST_NAMES_MAX, PLACE_EXCLUDE_MAX, VERSIONS_ASKED_MAX,
};
use idunno_core::dfs::{DfsAnswer, DfsCommand, DfsError, DfsRequest, VersionInfo};
use idunno_core::membership::NodeId;
use idunno_core::wire::ControlResponse;

use crate::consensus::driver::QueryFn;

/// Most copies the repair planner may be asked to keep running at once.
pub const REPAIRS_PARALLEL_MAX: usize = 64;

/// What the driver does with a leader-side request.
pub enum Action {
    /// Propose this operation; answer with [`answer_applied`] once applied.
    Propose(ClusterOp),
    /// Answer this query from the state after a ReadIndex.
    Read(QueryFn),
    /// Answer at once.
    Answer(ControlResponse),
}

/// What to do with `request`, given the members the leader's membership view reports alive
/// and, among them, those that joined too recently to have announced a blob store (`starting`:
/// see [`crate::consensus::driver::STORE_ANNOUNCE_GRACE`]).
pub fn action(request: DfsRequest, alive: BTreeSet<NodeId>, starting: BTreeSet<NodeId>) -> Action {
    match request {
        DfsRequest::Apply(command) => {
            if let DfsCommand::Commit { name, .. } | DfsCommand::Delete { name, .. } = &command
                && let Err(e) = idunno_core::dfs::validate_name(name)
            {
                return Action::Answer(dfs(DfsAnswer::Applied(Err(DfsError::InvalidName(e)))));
            }
            Action::Propose(ClusterOp::Dfs(command))
        }
        DfsRequest::Place { hash, exclude, .. } => {
            Action::Read(Box::new(move |state: &ClusterState| {
                let ns = state.dfs();
                // Nodes that just refused this blob are left out (a bounded list).
                let excluded: BTreeSet<NodeId> =
                    exclude.into_iter().take(PLACE_EXCLUDE_MAX).collect();
                // Only nodes with a blob store (see `Namespace::may_store`).
                let mut candidates = candidates(state, &alive);
                candidates.retain(|c| !excluded.contains(&c.node) && ns.may_store(&c.node));
                let placed = placement::place(&hash, &candidates, ns.config().replication);
                // Short of the factor while a live node may still announce its store (it joined
                // moments ago): an empty answer makes the client wait and ask again, rather
                // than acknowledge a version on fewer replicas than it could have.
                let may_announce = starting
                    .iter()
                    .any(|n| alive.contains(n) && !excluded.contains(n) && !ns.may_store(n));
                if placed.nodes.len() < ns.config().replication && may_announce {
                    return dfs(DfsAnswer::Placed {
                        replicas: Vec::new(),
                    });
                }
                debug_assert!(placed.nodes.iter().all(|n| !excluded.contains(n)));
                debug_assert!(placed.nodes.iter().all(|n| ns.may_store(n)));
                dfs(DfsAnswer::Placed {
                    replicas: placed.nodes,
                })
            }))
        }
        DfsRequest::Versions { name, count } => {
            let count = count.clamp(1, VERSIONS_ASKED_MAX);
            Action::Read(Box::new(move |state: &ClusterState| {
                dfs(DfsAnswer::Versions(versions(state, &name, count)))
            }))
        }
        DfsRequest::Newest { names } => {
            if names.is_empty() || names.len() > NEWEST_NAMES_MAX {
                return Action::Answer(dfs(DfsAnswer::Newest(Err(DfsError::BadNameCount {
                    count: names.len(),
                    max: NEWEST_NAMES_MAX,
                }))));
            }
            Action::Read(Box::new(move |state: &ClusterState| {
                let newest = names
                    .iter()
                    .map(|name| {
                        versions(state, name, 1)?
                            .into_iter()
                            .next()
                            .ok_or_else(|| DfsError::NotFound { name: name.clone() })
                    })
                    .collect();
                dfs(DfsAnswer::Newest(Ok(newest)))
            }))
        }
        DfsRequest::List {
            prefix,
            start_after,
        } => Action::Read(Box::new(move |state: &ClusterState| {
            let page = state
                .dfs()
                .list_page(&prefix, start_after.as_deref(), LIST_PAGE_NAMES);
            dfs(DfsAnswer::Names {
                names: page.names.into_iter().map(str::to_owned).collect(),
                more: page.more,
            })
        })),
        DfsRequest::FilesOn { node } => Action::Read(Box::new(move |state: &ClusterState| {
            let files = state.dfs().files_on(&node);
            dfs(DfsAnswer::Files(
                files.into_iter().map(|(n, v)| (n.to_owned(), v)).collect(),
            ))
        })),
        DfsRequest::Referenced => Action::Read(Box::new(|state: &ClusterState| {
            dfs(DfsAnswer::Referenced(
                state.dfs().blobs().keys().copied().collect(),
            ))
        })),
        DfsRequest::PlanRepairs {
            in_flight,
            max_parallel,
        } => Action::Read(Box::new(move |state: &ClusterState| {
            let live = candidates(state, &alive);
            let running: Vec<Repair> = in_flight
                .iter()
                .map(|&(hash, to)| Repair { hash, from: to, to })
                .collect();
            let plan = repair::plan_repairs(
                state.dfs(),
                &live,
                &running,
                max_parallel.min(REPAIRS_PARALLEL_MAX),
            );
            dfs(DfsAnswer::Repairs(
                plan.repairs
                    .into_iter()
                    .map(|r| (r.hash, r.from, r.to))
                    .collect(),
            ))
        })),
        DfsRequest::Fetch { .. } | DfsRequest::Held => Action::Answer(ControlResponse::Error(
            "a node-local file-system request reached the leader's queue".to_owned(),
        )),
    }
}

/// The live members the namespace has not recorded as failed, with their loads (repair
/// sources among them; placement and repair targets are further limited to blob stores).
fn candidates(state: &ClusterState, alive: &BTreeSet<NodeId>) -> Vec<Candidate> {
    let ns = state.dfs();
    let loads = ns.loads();
    alive
        .iter()
        .filter(|node| !ns.is_failed(node))
        .map(|node| Candidate {
            node: *node,
            stored_bytes: loads.get(node).copied().unwrap_or(0),
        })
        .collect()
}

fn versions(state: &ClusterState, name: &str, count: usize) -> Result<Vec<VersionInfo>, DfsError> {
    idunno_core::dfs::validate_name(name)?;
    let ns = state.dfs();
    let kept = ns.versions(name, count);
    if kept.is_empty() {
        return Err(DfsError::NotFound {
            name: name.to_owned(),
        });
    }
    Ok(kept
        .into_iter()
        .map(|v| VersionInfo {
            name: name.to_owned(),
            version: v.number,
            size: v.size,
            hash: v.hash,
            replicas: ns
                .blob(&v.hash)
                .map(|b| b.replicas.iter().copied().collect())
                .unwrap_or_default(),
        })
        .collect())
}

fn dfs(answer: DfsAnswer) -> ControlResponse {
    ControlResponse::Dfs(answer)
}

/// The answer to a file-system proposal once applied.
pub fn answer_applied(_index: u64, result: ClusterResult) -> ControlResponse {
    match result {
        ClusterResult::Dfs(result) => dfs(DfsAnswer::Applied(result)),
        other => ControlResponse::Error(format!("command failed: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use idunno_core::cluster::ClusterCommand;
    use idunno_core::dfs::{ContentHash, DfsResult, RequestId};
    use idunno_core::time::Instant;

    use super::*;

    fn node(i: u8) -> NodeId {
        NodeId::new(format!("127.0.0.{i}:7000").parse().expect("addr"), 1)
    }

    fn read(action: Action, state: &ClusterState) -> DfsAnswer {
        match action {
            Action::Read(query) => match query(state) {
                ControlResponse::Dfs(answer) => answer,
                other => panic!("not a dfs answer: {other:?}"),
            },
            Action::Propose(op) => panic!("a read was proposed: {op:?}"),
            Action::Answer(answer) => panic!("answered at once: {answer:?}"),
        }
    }

    fn committed(nodes: &[u8]) -> ClusterState {
        let mut state = ClusterState::default();
        let op = ClusterOp::Dfs(DfsCommand::Commit {
            name: "a".into(),
            size: 10,
            hash: ContentHash([7; 32]),
            replicas: nodes.iter().map(|&i| node(i)).collect(),
            request: RequestId { client: 1, seq: 1 },
        });
        let result = state.execute(ClusterCommand::new(Instant::from_micros(1), op));
        assert_eq!(
            result,
            ClusterResult::Dfs(Ok(DfsResult::Committed { version: 1 }))
        );
        state
    }

    #[test]
    fn placement_uses_live_members_only() {
        let state = ClusterState::default();
        let alive: BTreeSet<NodeId> = (1..=6).map(node).collect();
        let request = DfsRequest::Place {
            hash: ContentHash([1; 32]),
            size: 5,
            exclude: Vec::new(),
        };
        let DfsAnswer::Placed { replicas } =
            read(action(request, alive.clone(), BTreeSet::new()), &state)
        else {
            panic!("not a placement");
        };
        assert_eq!(replicas.len(), 4);
        assert!(replicas.iter().all(|n| alive.contains(n)));
        let few: BTreeSet<NodeId> = (1..=2).map(node).collect();
        let request = DfsRequest::Place {
            hash: ContentHash([1; 32]),
            size: 5,
            exclude: Vec::new(),
        };
        let DfsAnswer::Placed { replicas } = read(action(request, few, BTreeSet::new()), &state)
        else {
            panic!("not a placement");
        };
        assert_eq!(replicas.len(), 2, "degraded, never a dead node");
    }

    /// A node that refused a blob is never placed again for it while others are alive; with
    /// every live node excluded the placement is empty (the client pauses then, and only then).
    #[test]
    fn placement_leaves_out_excluded_nodes() {
        let state = ClusterState::default();
        let alive: BTreeSet<NodeId> = (1..=6).map(node).collect();
        let place = |exclude: Vec<NodeId>| {
            let request = DfsRequest::Place {
                hash: ContentHash([1; 32]),
                size: 5,
                exclude,
            };
            match read(action(request, alive.clone(), BTreeSet::new()), &state) {
                DfsAnswer::Placed { replicas } => replicas,
                other => panic!("not a placement: {other:?}"),
            }
        };
        let first = place(Vec::new());
        assert_eq!(first.len(), 4);
        let refused = first[1];
        let again = place(vec![refused]);
        assert_eq!(again.len(), 4, "two spare live nodes fill the gap");
        assert!(!again.contains(&refused), "{again:?}");
        let two_left = place(vec![node(1), node(2), node(3), node(4)]);
        assert_eq!(two_left.len(), 2, "degraded rather than a refused node");
        assert!(two_left.iter().all(|n| [node(5), node(6)].contains(n)));
        assert!(place((1..=6).map(node).collect()).is_empty());
        // Only the first PLACE_EXCLUDE_MAX are honoured.
        let mut long: Vec<NodeId> = (10..10 + PLACE_EXCLUDE_MAX as u8).map(node).collect();
        long.extend((1..=6).map(node));
        assert_eq!(
            place(long).len(),
            4,
            "exclusions past the bound are ignored"
        );
    }

    /// Short of the factor while a member that joined moments ago has not announced its store:
    /// an empty placement (the client waits), not a version on fewer replicas; once it is no
    /// longer starting (or announced), the placement goes ahead.
    #[test]
    fn a_short_placement_waits_for_stores_still_announcing() {
        let mut state = committed(&[1]);
        for i in [1u8, 2] {
            let op = ClusterOp::Dfs(DfsCommand::StoreReady { node: node(i) });
            state.execute(ClusterCommand::new(Instant::from_micros(2), op));
        }
        let alive: BTreeSet<NodeId> = (1..=4).map(node).collect();
        let place = |state: &ClusterState, starting: &[u8]| {
            let request = DfsRequest::Place {
                hash: ContentHash([7; 32]),
                size: 5,
                exclude: Vec::new(),
            };
            let starting = starting.iter().map(|&i| node(i)).collect();
            match read(action(request, alive.clone(), starting), state) {
                DfsAnswer::Placed { replicas } => replicas,
                other => panic!("not a placement: {other:?}"),
            }
        };
        assert!(place(&state, &[3]).is_empty(), "node 3 may still announce");
        // A starting node that is already a store, or none starting: place on what there is.
        assert_eq!(place(&state, &[1]).len(), 2);
        assert_eq!(place(&state, &[]).len(), 2);
        // Node 3 announces: three replicas, node 4 (never announced, not starting) left out.
        let op = ClusterOp::Dfs(DfsCommand::StoreReady { node: node(3) });
        state.execute(ClusterCommand::new(Instant::from_micros(3), op));
        let placed = place(&state, &[3, 4]);
        assert!(placed.is_empty(), "node 4 may still announce: {placed:?}");
        let placed = place(&state, &[3]);
        assert_eq!(placed.len(), 3, "{placed:?}");
        assert!(!placed.contains(&node(4)));
    }

    /// Once some nodes announced a blob store, placement and repair targets are only those;
    /// before any announced, every live node (old logs).
    #[test]
    fn placement_and_repairs_use_announced_stores_only() {
        let mut state = committed(&[1, 2, 3, 4]);
        let alive: BTreeSet<NodeId> = (1..=8).map(node).collect();
        let place = |state: &ClusterState| {
            let request = DfsRequest::Place {
                hash: ContentHash([1; 32]),
                size: 5,
                exclude: Vec::new(),
            };
            match read(action(request, alive.clone(), BTreeSet::new()), state) {
                DfsAnswer::Placed { replicas } => replicas,
                other => panic!("not a placement: {other:?}"),
            }
        };
        // Nodes 5..=8 hold nothing: the least loaded, chosen while nobody announced.
        assert_eq!(
            place(&state).into_iter().collect::<BTreeSet<_>>(),
            (5..=8).map(node).collect()
        );
        for i in [1u8, 2, 3, 4, 5] {
            let op = ClusterOp::Dfs(DfsCommand::StoreReady { node: node(i) });
            let done = state.execute(ClusterCommand::new(Instant::from_micros(2), op));
            assert_eq!(done, ClusterResult::Dfs(Ok(DfsResult::StoreReady)));
        }
        let placed = place(&state);
        assert_eq!(placed.len(), 4);
        assert!(placed.contains(&node(5)), "{placed:?}");
        let stores: BTreeSet<NodeId> = (1..=5).map(node).collect();
        assert!(placed.iter().all(|n| stores.contains(n)), "{placed:?}");
        // Node 4 dies: its copy goes to 5, the only store without one, never to 6..=8.
        state.execute(ClusterCommand::new(
            Instant::from_micros(3),
            ClusterOp::NodeFailed { node: node(4) },
        ));
        let alive: BTreeSet<NodeId> = [1, 2, 3, 5, 6, 7, 8].into_iter().map(node).collect();
        let request = DfsRequest::PlanRepairs {
            in_flight: Vec::new(),
            max_parallel: 4,
        };
        let DfsAnswer::Repairs(repairs) = read(action(request, alive, BTreeSet::new()), &state)
        else {
            panic!("no plan");
        };
        assert_eq!(repairs.len(), 1);
        assert_eq!(repairs[0].2, node(5));
    }

    #[test]
    fn lists_come_in_pages_with_a_cursor() {
        let mut state = ClusterState::default();
        let total = LIST_PAGE_NAMES + 1;
        for i in 0..total {
            let op = ClusterOp::Dfs(DfsCommand::Commit {
                name: format!("in/{i:05}"),
                size: 1,
                hash: ContentHash([7; 32]),
                replicas: vec![node(1)],
                request: RequestId {
                    client: 1,
                    seq: i as u64 + 1,
                },
            });
            state.execute(ClusterCommand::new(Instant::from_micros(1), op));
        }
        let list = |start_after: Option<String>| {
            let request = DfsRequest::List {
                prefix: "in/".into(),
                start_after,
            };
            match read(action(request, BTreeSet::new(), BTreeSet::new()), &state) {
                DfsAnswer::Names { names, more } => (names, more),
                other => panic!("not names: {other:?}"),
            }
        };
        let (first, more) = list(None);
        assert_eq!(first.len(), LIST_PAGE_NAMES);
        assert!(more);
        let (rest, more) = list(first.last().cloned());
        assert_eq!(rest, vec![format!("in/{:05}", LIST_PAGE_NAMES)]);
        assert!(!more);
    }

    #[test]
    fn versions_list_replicas_and_unknown_names_are_not_found() {
        let state = committed(&[1, 2, 3, 4]);
        let ask = |name: &str| DfsRequest::Versions {
            name: name.into(),
            count: 5,
        };
        let DfsAnswer::Versions(Ok(versions)) =
            read(action(ask("a"), BTreeSet::new(), BTreeSet::new()), &state)
        else {
            panic!("no versions");
        };
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].replicas.len(), 4);
        assert!(matches!(
            read(action(ask("b"), BTreeSet::new(), BTreeSet::new()), &state),
            DfsAnswer::Versions(Err(DfsError::NotFound { .. }))
        ));
        assert!(matches!(
            read(
                action(ask("../x"), BTreeSet::new(), BTreeSet::new()),
                &state
            ),
            DfsAnswer::Versions(Err(DfsError::InvalidName(_)))
        ));
    }

    #[test]
    fn newest_answers_each_name_in_order_and_bounds_the_count() {
        let state = committed(&[1, 2, 3, 4]);
        let ask = |names: &[&str]| DfsRequest::Newest {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        };
        let DfsAnswer::Newest(Ok(each)) = read(
            action(ask(&["b", "a", "../x"]), BTreeSet::new(), BTreeSet::new()),
            &state,
        ) else {
            panic!("no answer");
        };
        assert_eq!(each.len(), 3);
        assert!(matches!(&each[0], Err(DfsError::NotFound { name }) if name == "b"));
        let Ok(a) = &each[1] else {
            panic!("a is committed: {:?}", each[1]);
        };
        assert_eq!((a.name.as_str(), a.replicas.len()), ("a", 4));
        assert!(matches!(&each[2], Err(DfsError::InvalidName(_))));
        for count in [0, NEWEST_NAMES_MAX + 1] {
            let names: Vec<String> = (0..count).map(|i| format!("n{i}")).collect();
            let request = DfsRequest::Newest { names };
            let Action::Answer(ControlResponse::Dfs(DfsAnswer::Newest(Err(e)))) =
                action(request, BTreeSet::new(), BTreeSet::new())
            else {
                panic!("{count} names must be refused at once");
            };
            assert_eq!(
                e,
                DfsError::BadNameCount {
                    count,
                    max: NEWEST_NAMES_MAX
                }
            );
        }
    }

    #[test]
    fn repairs_target_live_nodes_for_lost_replicas() {
        let state = committed(&[1, 2, 3, 4]);
        // Nodes 3 and 4 are gone from the view; 5 and 6 are new.
        let alive: BTreeSet<NodeId> = [1, 2, 5, 6].into_iter().map(node).collect();
        let request = DfsRequest::PlanRepairs {
            in_flight: Vec::new(),
            max_parallel: 4,
        };
        let DfsAnswer::Repairs(repairs) = read(action(request, alive, BTreeSet::new()), &state)
        else {
            panic!("no plan");
        };
        assert_eq!(repairs.len(), 2);
        for (hash, from, to) in repairs {
            assert_eq!(hash, ContentHash([7; 32]));
            assert!([node(1), node(2)].contains(&from));
            assert!([node(5), node(6)].contains(&to));
        }
    }

    #[test]
    fn invalid_names_are_refused_before_the_log() {
        let request = DfsRequest::Apply(DfsCommand::Delete {
            name: String::new(),
            request: RequestId { client: 1, seq: 1 },
        });
        assert!(matches!(
            action(request, BTreeSet::new(), BTreeSet::new()),
            Action::Answer(ControlResponse::Dfs(DfsAnswer::Applied(Err(
                DfsError::InvalidName(_)
            ))))
        ));
    }
}
