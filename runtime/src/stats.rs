//! A node's counters as the `stats` client command shows them.
//!
//! Owns: [`NodeCounters`] (shared handles to the counters that live elsewhere: datagram and TCP
//! authentication, the worker), the conversion of each part's counters into a named
//! [`StatsGroup`] ([`counters_of`] turns any serialisable counter struct into sorted
//! `(name, value)` pairs, so a counter added to a machine's `Metrics` shows up without a change
//! here), and [`node_stats`], which the control server uses to gather the groups of the
//! membership driver and the local Raft driver into one answer.
//! Must never: change or reset a counter, block, or forward the request to another node.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use idunno_core::wire::{ControlRequest, ControlResponse, STATS_GROUPS_MAX, StatsGroup};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::auth::socket::AuthStats;
use crate::auth::tcp::TcpAuthStats;
use crate::consensus::RaftRoute;
use crate::driver::Request;
use crate::jobs::worker::WorkerStats;

/// Shared handles to the counters kept outside the state machines.
#[derive(Debug, Clone, Default)]
pub struct NodeCounters {
    /// Datagram authentication (absent on an insecure node).
    pub datagrams: Option<Arc<AuthStats>>,
    /// TCP authentication of accepted connections.
    pub connections: Option<Arc<TcpAuthStats>>,
    /// The node's inference worker (absent without Raft or with no lanes).
    pub worker: Option<Arc<WorkerStats>>,
}

impl NodeCounters {
    /// Their groups, in a fixed order.
    pub fn groups(&self) -> Vec<StatsGroup> {
        let mut groups = Vec::new();
        if let Some(d) = &self.datagrams {
            groups.push(StatsGroup::new(
                "datagram_auth",
                &[
                    ("accepted", d.accepted.load(Ordering::Relaxed)),
                    ("malformed", d.malformed.load(Ordering::Relaxed)),
                    ("forged", d.forged.load(Ordering::Relaxed)),
                    ("stale", d.stale.load(Ordering::Relaxed)),
                    ("replayed", d.replayed.load(Ordering::Relaxed)),
                ],
            ));
        }
        if let Some(c) = &self.connections {
            groups.push(StatsGroup::new(
                "tcp_auth",
                &[
                    ("accepted", c.accepted.load(Ordering::Relaxed)),
                    ("unauthenticated", c.unauthenticated.load(Ordering::Relaxed)),
                    ("forged", c.forged.load(Ordering::Relaxed)),
                    ("broken", c.broken.load(Ordering::Relaxed)),
                ],
            ));
        }
        if let Some(w) = &self.worker {
            groups.push(StatsGroup::new(
                "worker",
                &[
                    ("leased", w.leased.load(Ordering::Relaxed)),
                    ("completed", w.completed.load(Ordering::Relaxed)),
                    ("refused", w.refused.load(Ordering::Relaxed)),
                ],
            ));
        }
        groups
    }
}

/// The unsigned integer fields of `value` (a counters struct), sorted by name; other fields
/// are left out. Empty if it does not serialise to an object.
pub fn counters_of<T: Serialize>(value: &T) -> Vec<(String, u64)> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(fields)) => {
            let mut counters: Vec<(String, u64)> = fields
                .into_iter()
                .filter_map(|(name, v)| v.as_u64().map(|v| (name, v)))
                .collect();
            counters.sort();
            counters
        }
        _ => Vec::new(),
    }
}

/// A group named `name`: `first` (in its order), then `value`'s counters.
pub fn group_of<T: Serialize>(name: &str, first: &[(&str, u64)], value: &T) -> StatsGroup {
    let mut group = StatsGroup::new(name, first);
    group.counters.extend(counters_of(value));
    group
        .counters
        .truncate(idunno_core::wire::STATS_COUNTERS_MAX);
    group
}

/// The answer to `NodeStats` on this node: the membership driver's groups (membership and the
/// [`NodeCounters`] it holds), then the local Raft driver's, if this node is a voter.
pub async fn node_stats(
    requests: &mpsc::Sender<Request>,
    raft: Option<&RaftRoute>,
) -> ControlResponse {
    let mut groups = match crate::control::ask_driver(requests, ControlRequest::NodeStats).await {
        ControlResponse::NodeStats(groups) => groups,
        other => return other,
    };
    if let Some(local) = raft.and_then(|r| r.local.as_ref()) {
        match crate::consensus::ask_local(local, ControlRequest::NodeStats).await {
            ControlResponse::NodeStats(more) => groups.extend(more),
            other => groups.push(StatsGroup {
                name: format!("raft unavailable: {other:?}"),
                counters: Vec::new(),
            }),
        }
    }
    groups.truncate(STATS_GROUPS_MAX);
    ControlResponse::NodeStats(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Counters {
        zeta: u64,
        alpha: u64,
        label: String,
    }

    #[test]
    fn counters_are_the_integer_fields_sorted_by_name() {
        let counters = counters_of(&Counters {
            zeta: 2,
            alpha: 1,
            label: "x".into(),
        });
        assert_eq!(counters, vec![("alpha".into(), 1), ("zeta".into(), 2)]);
        let group = group_of(
            "g",
            &[("first", 9)],
            &Counters {
                zeta: 2,
                alpha: 1,
                label: String::new(),
            },
        );
        assert_eq!(group.counters[0], ("first".into(), 9));
        assert_eq!(group.counters.len(), 3);
    }

    #[test]
    fn core_metrics_become_groups() {
        let raft = idunno_core::consensus::Metrics {
            messages_invalid: 3,
            ..Default::default()
        };
        let group = group_of("raft", &[("term", 4)], &raft);
        assert!(group.counters.contains(&("messages_invalid".into(), 3)));
        assert!(group.counters.len() > 10);
        let membership = idunno_core::membership::Metrics {
            decode_errors: 5,
            ..Default::default()
        };
        assert!(counters_of(&membership).contains(&("decode_errors".into(), 5)));
    }

    #[test]
    fn counters_without_a_part_are_left_out() {
        assert!(NodeCounters::default().groups().is_empty());
        let counters = NodeCounters {
            worker: Some(Arc::default()),
            ..Default::default()
        };
        let groups = counters.groups();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].name, "worker");
    }
}
