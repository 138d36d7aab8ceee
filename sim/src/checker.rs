//! Membership checkers: one per property, each fed the machines' notifications and reading
//! their state from outside, never through the machines' own bookkeeping of the property.
//!
//! Owns:
//! - [`RemovalChecker`]: every crashed or departed node leaves every live node's live view by a
//!   deadline computed from the config ([`removal_bound`]); it also times detection (first and
//!   last observer) for the benchmark.
//! - [`FalsePositiveChecker`]: counts `Failed` events about nodes that are in fact running,
//!   and how often such a node was declared dead at its current incarnation ("forced out").
//! - [`views_agree`]: after quiescence, every live node's live view is exactly the set of live
//!   nodes.
//!
//! Inputs: [`Notification`]s of membership [`Event`]s and read-only access to the cluster.
//! Outputs: [`Violation`]s and counters.
//! Must never: change the cluster, or decide a property from a machine's self-report alone
//! (events time things; state read from outside confirms them).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use idunno_core::membership::{Config, Event, NodeId};
use idunno_core::time::Instant;

use crate::swim::SwimCluster;
use crate::world::Notification;

/// A property that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which checker found it.
    pub checker: &'static str,
    /// Virtual time of the finding.
    pub at: Instant,
    /// What exactly.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] at t={:.3}s: {}",
            self.checker,
            self.at.since_epoch().as_secs_f64(),
            self.detail
        )
    }
}

impl std::error::Error for Violation {}

/// How long after a crash (or leave) every live view may still hold the node, for a cluster of
/// `cluster_size` members under `config`. Generous but finite:
/// - one full round-robin cycle of one prober (`n` probe intervals; in practice one of the `n`
///   probers gets there within an interval or two) plus the probe timeout,
/// - the longest suspicion timeout (no Lifeguard confirmations),
/// - dissemination slack: the retransmit budget in gossip rounds, plus `2 x log2(n)` push-pull
///   rounds for anyone the gossip missed.
pub fn removal_bound(config: &Config, cluster_size: usize) -> Duration {
    let n = cluster_size.max(2);
    let cycles = u32::try_from(n + 2).unwrap_or(u32::MAX);
    let probe = config.probe_interval * cycles + config.probe_timeout;
    let suspicion = config.suspicion_timeout_max(n);
    let gossip = config.gossip_interval * config.retransmit_limit(n);
    let log2 = (usize::BITS - n.leading_zeros()).max(1);
    let push_pull = config.push_pull_interval * (2 * log2);
    probe + suspicion + gossip + push_pull
}

/// Why a node is expected to leave every view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Departure {
    /// Crashed (or its slot restarted with a new generation).
    Crash,
    /// Left gracefully.
    Leave,
}

/// One tracked departure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The departed node.
    pub node: NodeId,
    /// Crash or leave.
    pub departure: Departure,
    /// When it departed.
    pub since: Instant,
    /// When every live view must have dropped it.
    pub deadline: Instant,
    /// Live nodes that had it in their view when it departed.
    pub observers: usize,
    /// The first observer's removal (a `Failed` or `Left` event).
    pub first_at: Option<Instant>,
    /// When the last observer dropped it.
    pub all_at: Option<Instant>,
    /// `Failed` events about it.
    pub failed_events: u64,
    /// `Left` events about it.
    pub left_events: u64,
    /// Times an observer took it back (newer incarnation gossip) before dropping it again.
    pub readmissions: u64,
    waiting: BTreeSet<NodeId>,
    last_removal: Option<Instant>,
}

impl Removal {
    /// Observers that still have the node in their view.
    pub fn waiting(&self) -> &BTreeSet<NodeId> {
        &self.waiting
    }

    /// Time from departure to the first observer's removal.
    pub fn first_detection(&self) -> Option<Duration> {
        self.first_at.map(|t| t - self.since)
    }

    /// Time from departure until every observer dropped it.
    pub fn all_detection(&self) -> Option<Duration> {
        self.all_at.map(|t| t - self.since)
    }
}

/// Every departed node leaves every live view within the bound. See the module docs.
#[derive(Debug, Default)]
pub struct RemovalChecker {
    open: BTreeMap<NodeId, Removal>,
    done: BTreeMap<NodeId, Removal>,
}

impl RemovalChecker {
    /// Starts tracking `node`, which departed `now` and must leave the views of `observers`
    /// (the live nodes holding it now) within `bound`.
    pub fn on_departure(
        &mut self,
        now: Instant,
        node: NodeId,
        departure: Departure,
        observers: BTreeSet<NodeId>,
        bound: Duration,
    ) {
        debug_assert!(!observers.contains(&node), "a node does not observe itself");
        let mut removal = Removal {
            node,
            departure,
            since: now,
            deadline: now + bound,
            observers: observers.len(),
            first_at: None,
            all_at: None,
            failed_events: 0,
            left_events: 0,
            readmissions: 0,
            waiting: observers,
            last_removal: None,
        };
        if removal.waiting.is_empty() {
            removal.all_at = Some(now);
            self.done.insert(node, removal);
        } else {
            self.open.insert(node, removal);
        }
    }

    /// Feeds one notification from `observer`.
    pub fn on_notify(&mut self, observer: NodeId, note: &Notification<Event>) {
        match note.notify {
            Event::Failed(node) | Event::Left(node) => {
                let Some(removal) = self.open.get_mut(&node) else {
                    if let Some(done) = self.done.get_mut(&node) {
                        count_removal_event(done, note.notify);
                    }
                    return;
                };
                count_removal_event(removal, note.notify);
                if removal.waiting.remove(&observer) {
                    removal.first_at.get_or_insert(note.at);
                    removal.last_removal = Some(note.at);
                }
                self.close_if_done(node, note.at);
            }
            Event::Joined(node) | Event::Refuted(node) => {
                // A newer incarnation reached the observer after the departure (it refuted
                // just before crashing): legal, but it must drop the node again in time.
                if let Some(mut removal) = self.done.remove(&node) {
                    removal.all_at = None;
                    self.open.insert(node, removal);
                }
                if let Some(removal) = self.open.get_mut(&node)
                    && removal.waiting.insert(observer)
                {
                    removal.readmissions += 1;
                }
            }
            Event::Suspect(_) | Event::SelfLeft => {}
        }
    }

    /// `observer` crashed or left: nobody waits for it any more.
    pub fn on_observer_gone(&mut self, now: Instant, observer: NodeId) {
        let nodes: Vec<NodeId> = self
            .open
            .iter()
            .filter(|(_, r)| r.waiting.contains(&observer))
            .map(|(&n, _)| n)
            .collect();
        for node in nodes {
            if let Some(removal) = self.open.get_mut(&node) {
                removal.waiting.remove(&observer);
            }
            self.close_if_done(node, now);
        }
    }

    fn close_if_done(&mut self, node: NodeId, now: Instant) {
        if self.open.get(&node).is_some_and(|r| r.waiting.is_empty())
            && let Some(mut removal) = self.open.remove(&node)
        {
            removal.all_at = Some(removal.last_removal.unwrap_or(now));
            debug_assert!(removal.all_at >= Some(removal.since));
            self.done.insert(node, removal);
        }
    }

    /// Fails if a departure's deadline passed with observers still holding the node.
    pub fn check_deadlines(&self, now: Instant) -> Result<(), Violation> {
        for removal in self.open.values() {
            if now > removal.deadline {
                let waiting: Vec<String> = removal.waiting.iter().map(|n| n.to_string()).collect();
                return Err(Violation {
                    checker: "crashed_node_removed",
                    at: now,
                    detail: format!(
                        "{} ({:?} at t={:.3}s) still in the live view of {} node(s) after the \
                         {:.1}s bound: {}",
                        removal.node,
                        removal.departure,
                        removal.since.since_epoch().as_secs_f64(),
                        waiting.len(),
                        (removal.deadline - removal.since).as_secs_f64(),
                        waiting.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// Reads every live node's view from outside: no node whose removal completed may be in it.
    pub fn check_views(&self, cluster: &SwimCluster) -> Result<(), Violation> {
        for index in cluster.live_indices() {
            let Some(machine) = cluster.node(index) else {
                continue;
            };
            let view = machine.live_view();
            for node in self.done.keys() {
                if view.contains(node) {
                    return Err(Violation {
                        checker: "crashed_node_removed",
                        at: cluster.world().now(),
                        detail: format!(
                            "{} reported dropping {node} but its live view still holds it",
                            machine.me()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Departures some observer still holds.
    pub fn open(&self) -> impl Iterator<Item = &Removal> {
        self.open.values()
    }

    /// Whether every departure has left every view.
    pub fn all_removed(&self) -> bool {
        self.open.is_empty()
    }

    /// The earliest deadline among open departures.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|r| r.deadline).min()
    }

    /// Completed departures, by node.
    pub fn done(&self) -> impl Iterator<Item = &Removal> {
        self.done.values()
    }

    /// The record of `node`'s departure, open or done.
    pub fn removal(&self, node: NodeId) -> Option<&Removal> {
        self.open.get(&node).or_else(|| self.done.get(&node))
    }
}

fn count_removal_event(removal: &mut Removal, event: Event) {
    match event {
        Event::Failed(_) => removal.failed_events += 1,
        Event::Left(_) => removal.left_events += 1,
        _ => {}
    }
}

/// A `Failed` event about a node that was running at the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FalsePositive {
    /// When.
    pub at: Instant,
    /// Who declared it.
    pub observer: NodeId,
    /// The running node declared failed.
    pub subject: NodeId,
    /// The incarnation the observer holds for the subject (the one declared dead).
    pub declared_incarnation: Option<u64>,
    /// The subject's own incarnation at that moment.
    pub subject_incarnation: u64,
    /// Declared dead at its current incarnation: the subject itself is out until it refutes.
    pub forced_out: bool,
    /// A partition was in force (the subject may really have been unreachable).
    pub partitioned: bool,
    /// The direct link between observer and subject was open both ways at that moment.
    pub reachable: bool,
}

/// No reachable live node is declared dead. See the module docs.
#[derive(Debug, Default)]
pub struct FalsePositiveChecker {
    records: Vec<FalsePositive>,
    forced: BTreeSet<(NodeId, u64)>,
    refuted: BTreeSet<NodeId>,
}

impl FalsePositiveChecker {
    /// Feeds one notification from `observer`; reads the subject's state from `cluster`.
    pub fn on_notify(
        &mut self,
        observer: NodeId,
        note: &Notification<Event>,
        cluster: &SwimCluster,
    ) {
        match note.notify {
            Event::Failed(subject) => {
                let Some(machine) = cluster.node_by_id(subject) else {
                    return;
                };
                if machine.is_leaving() {
                    return;
                }
                let subject_incarnation = machine.incarnation();
                let declared_incarnation = cluster.node_by_id(observer).and_then(|o| {
                    o.members()
                        .into_iter()
                        .find(|m| m.id == subject)
                        .map(|m| m.incarnation)
                });
                let forced_out = declared_incarnation.is_some_and(|d| d >= subject_incarnation);
                if forced_out {
                    self.forced.insert((subject, subject_incarnation));
                }
                let network = cluster.world().network();
                let reachable = match (
                    cluster.world().index_of(observer.addr),
                    cluster.world().index_of(subject.addr),
                ) {
                    (Some(o), Some(s)) => !network.is_blocked(o, s) && !network.is_blocked(s, o),
                    _ => false,
                };
                self.records.push(FalsePositive {
                    at: note.at,
                    observer,
                    subject,
                    declared_incarnation,
                    subject_incarnation,
                    forced_out,
                    partitioned: network.any_blocked(),
                    reachable,
                });
            }
            Event::Refuted(subject) => {
                self.refuted.insert(subject);
            }
            _ => {}
        }
    }

    /// Every false positive, in order.
    pub fn records(&self) -> &[FalsePositive] {
        &self.records
    }

    /// `Failed` events about running nodes while no partition was in force.
    pub fn unpartitioned(&self) -> usize {
        self.records.iter().filter(|r| !r.partitioned).count()
    }

    /// Fails on the first node declared dead, during a partition, by an observer on its own side
    /// (the two could talk directly both ways).
    pub fn check_none_reachable_in_partition(&self, now: Instant) -> Result<(), Violation> {
        match self.records.iter().find(|r| r.partitioned && r.reachable) {
            None => Ok(()),
            Some(r) => Err(Violation {
                checker: "no_live_node_declared_dead",
                at: now,
                detail: format!(
                    "{} declared {} failed at t={:.3}s during a partition, though they could \
                     talk directly",
                    r.observer,
                    r.subject,
                    r.at.since_epoch().as_secs_f64()
                ),
            }),
        }
    }

    /// Distinct (node, incarnation) pairs declared dead while running at that incarnation.
    pub fn forced_out(&self) -> usize {
        self.forced.len()
    }

    /// Nodes some observer saw refute a suspicion.
    pub fn refuted(&self) -> &BTreeSet<NodeId> {
        &self.refuted
    }

    /// Fails on the first false positive outside a partition.
    pub fn check_none(&self, now: Instant) -> Result<(), Violation> {
        match self.records.iter().find(|r| !r.partitioned) {
            None => Ok(()),
            Some(r) => Err(Violation {
                checker: "no_live_node_declared_dead",
                at: now,
                detail: format!(
                    "{} declared running {} failed at t={:.3}s (declared incarnation {:?}, its \
                     own {}); {} such event(s) in all",
                    r.observer,
                    r.subject,
                    r.at.since_epoch().as_secs_f64(),
                    r.declared_incarnation,
                    r.subject_incarnation,
                    self.unpartitioned()
                ),
            }),
        }
    }
}

/// Whether every live node's live view is exactly the set of live nodes (cheap test first).
pub fn views_agree(cluster: &SwimCluster) -> bool {
    let live = cluster.live_indices();
    let sizes_match = live.iter().all(|&i| {
        cluster
            .node(i)
            .is_some_and(|m| m.cluster_size() == live.len())
    });
    sizes_match && check_views_agree(cluster).is_ok()
}

/// Whether no live node holds any live node as suspect (every suspicion refuted or settled).
pub fn no_suspects(cluster: &SwimCluster) -> bool {
    let live = cluster.live_ids();
    cluster.live_indices().into_iter().all(|i| {
        cluster.node(i).is_some_and(|m| {
            live.iter()
                .all(|&id| m.state_of(id) != Some(idunno_core::membership::MemberState::Suspect))
        })
    })
}

/// Fails with the first node whose live view differs from the set of live nodes.
pub fn check_views_agree(cluster: &SwimCluster) -> Result<(), Violation> {
    let expected = cluster.live_ids();
    for index in cluster.live_indices() {
        let Some(machine) = cluster.node(index) else {
            continue;
        };
        let view = machine.live_view();
        if view != expected {
            let missing: Vec<String> = expected.difference(&view).map(|n| n.to_string()).collect();
            let extra: Vec<String> = view.difference(&expected).map(|n| n.to_string()).collect();
            return Err(Violation {
                checker: "views_agree",
                at: cluster.world().now(),
                detail: format!(
                    "{} sees {} member(s), {} live: missing [{}], extra [{}]",
                    machine.me(),
                    view.len(),
                    expected.len(),
                    missing.join(", "),
                    extra.join(", ")
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::node_addr;

    fn id(i: usize) -> NodeId {
        NodeId::new(node_addr(i), 1)
    }

    fn note(at_ms: u64, event: Event) -> Notification<Event> {
        Notification {
            at: Instant::from_micros(at_ms * 1000),
            index: 0,
            generation: 1,
            notify: event,
        }
    }

    #[test]
    fn bound_grows_with_size_and_is_finite() {
        let c = Config::lan();
        assert!(removal_bound(&c, 10) < removal_bound(&c, 100));
        assert!(removal_bound(&c, 10) > c.suspicion_timeout_max(10));
        assert!(removal_bound(&c, 1000) < Duration::from_secs(3600));
    }

    #[test]
    fn removal_times_first_and_last_observer() {
        let mut checker = RemovalChecker::default();
        let observers = BTreeSet::from([id(1), id(2)]);
        checker.on_departure(
            Instant::ZERO,
            id(0),
            Departure::Crash,
            observers,
            Duration::from_secs(10),
        );
        checker.on_notify(id(1), &note(1000, Event::Failed(id(0))));
        assert!(!checker.all_removed());
        assert!(
            checker
                .check_deadlines(Instant::from_micros(5_000_000))
                .is_ok()
        );
        checker.on_notify(id(2), &note(3000, Event::Failed(id(0))));
        assert!(checker.all_removed());
        let removal = checker.removal(id(0)).expect("tracked");
        assert_eq!(removal.first_detection(), Some(Duration::from_secs(1)));
        assert_eq!(removal.all_detection(), Some(Duration::from_secs(3)));
        assert_eq!(removal.failed_events, 2);
    }

    #[test]
    fn missed_deadline_and_readmission_are_caught() {
        let mut checker = RemovalChecker::default();
        let observers = BTreeSet::from([id(1)]);
        checker.on_departure(
            Instant::ZERO,
            id(0),
            Departure::Crash,
            observers,
            Duration::from_secs(1),
        );
        checker.on_notify(id(1), &note(500, Event::Failed(id(0))));
        assert!(checker.all_removed());
        checker.on_notify(id(1), &note(600, Event::Joined(id(0))));
        assert!(!checker.all_removed(), "taken back: must drop it again");
        let late = Instant::from_micros(2_000_000);
        let violation = checker.check_deadlines(late).expect_err("deadline passed");
        assert_eq!(violation.checker, "crashed_node_removed");
        checker.on_observer_gone(late, id(1));
        assert!(checker.all_removed());
    }
}
