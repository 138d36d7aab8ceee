//! The file-system checkers: what must hold after every tick of a [`crate::dfs::DfsSim`] and
//! once the faults are over.
//!
//! Owns: [`DfsChecker`], which keeps the canonical history from outside the nodes (every
//! acknowledged put, every version any replica's namespace ever showed, the deletes proposed,
//! and per blob how many of its copies were lost since it was last fully replicated) and checks:
//! - `committed_never_changes`: a (name, version) never shows two different hashes, on any
//!   replica, at any time, and an acknowledged version shows the hash that was put;
//! - `put_applied_once`: every put carries fresh content, so one name showing one hash under
//!   two version numbers means a retried request was applied twice;
//! - `versions_increase`: per name, the kept versions strictly increase on every replica;
//! - `one_version_per_ack` / `acks_ordered`: two acknowledged puts never share a version, and a
//!   put that started after another was acknowledged gets a higher version;
//! - `no_acked_file_lost`: every acknowledged version the namespace keeps is readable (a
//!   listed, reachable replica holds its exact bytes) while fewer than `replication` of its
//!   copies were lost since it was last fully replicated (fewer than the copies its commit
//!   named, if placement was degraded and it was never fully replicated yet);
//! - `listed_copy_exists`: every replica the namespace lists, while that incarnation runs or
//!   lies crashed, has the blob on its disk (a commit or `ReplicaAdded` never names a node
//!   that does not hold the bytes);
//! - the final pass: every acknowledged version is still kept (unless its name saw a delete or
//!   `versions_kept` newer versions) and readable.
//!   Must never: look inside a machine's private state, or change what it observes.

use std::collections::{BTreeMap, BTreeSet};

use idunno_core::cluster::ClusterState;
use idunno_core::dfs::{ContentHash, DfsConfig, Namespace, RequestId};
use idunno_core::membership::NodeId;
use idunno_core::time::Instant;

use crate::checker::Violation;

/// One acknowledged put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The version it got.
    pub version: u64,
    /// The content.
    pub hash: ContentHash,
    /// Its request.
    pub request: RequestId,
    /// When the client started it.
    pub started: Instant,
    /// When the client got the answer.
    pub acked: Instant,
    /// Replicas the commit named (fewer than the factor when placement was degraded).
    pub copies: usize,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct DfsChecker {
    config: DfsConfig,
    acks: BTreeMap<String, Vec<Ack>>,
    /// name -> version -> hash, as any replica ever showed it.
    seen: BTreeMap<String, BTreeMap<u64, ContentHash>>,
    /// name -> hash -> version.
    seen_hashes: BTreeMap<String, BTreeMap<ContentHash, u64>>,
    deletes: BTreeSet<String>,
    losses: BTreeMap<ContentHash, usize>,
    /// Blobs seen fully replicated at least once (a degraded commit tolerates fewer losses
    /// until then).
    fully_replicated: BTreeSet<ContentHash>,
    pending: Option<Violation>,
    checks: u64,
}

fn violation(checker: &'static str, at: Instant, detail: String) -> Violation {
    Violation {
        checker,
        at,
        detail,
    }
}

impl DfsChecker {
    /// A checker for a file system with this configuration.
    pub fn new(config: DfsConfig) -> Self {
        DfsChecker {
            config,
            acks: BTreeMap::new(),
            seen: BTreeMap::new(),
            seen_hashes: BTreeMap::new(),
            deletes: BTreeSet::new(),
            losses: BTreeMap::new(),
            fully_replicated: BTreeSet::new(),
            pending: None,
            checks: 0,
        }
    }

    /// Acknowledged puts, by name, in acknowledgement order.
    pub fn acks(&self) -> &BTreeMap<String, Vec<Ack>> {
        &self.acks
    }

    /// How many acknowledged puts there were.
    pub fn acked_count(&self) -> usize {
        self.acks.values().map(Vec::len).sum()
    }

    /// Readability checks made (acknowledged versions checked, summed over ticks).
    pub fn checks(&self) -> u64 {
        self.checks
    }

    /// A delete of `name` was proposed (its versions may vanish from now on).
    pub fn delete_proposed(&mut self, name: &str) {
        self.deletes.insert(name.to_owned());
    }

    /// A node holding good copies of these blobs crashed, was cut off, or one copy was corrupted.
    pub fn holders_lost(&mut self, hashes: impl Iterator<Item = ContentHash>) {
        for hash in hashes {
            *self.losses.entry(hash).or_default() += 1;
        }
    }

    /// A node failure was committed to the namespace.
    pub fn failure_committed(&mut self, _now: Instant, _node: NodeId) {}

    /// A client got `ack.version` for its put of `ack.hash` to `name`, at `ack.acked`.
    pub fn acked(&mut self, name: String, ack: Ack) {
        let Ack {
            version,
            hash,
            request,
            started,
            acked: now,
            ..
        } = ack;
        let acks = self.acks.entry(name.clone()).or_default();
        if let Some(other) = acks
            .iter()
            .find(|a| a.version == version && a.request != request)
        {
            self.pending.get_or_insert(violation(
                "one_version_per_ack",
                now,
                format!(
                    "{name} v{version} acknowledged to {request:?} and {:?}",
                    other.request
                ),
            ));
        }
        if let Some(before) = acks
            .iter()
            .find(|a| a.acked < started && a.version >= version)
        {
            self.pending.get_or_insert(violation(
                "acks_ordered",
                now,
                format!(
                    "{name}: put started at {started:?} got v{version}, but v{} was acknowledged \
                     before, at {:?}",
                    before.version, before.acked
                ),
            ));
        }
        if let Some(seen) = self.seen.get(&name).and_then(|s| s.get(&version))
            && *seen != hash
        {
            self.pending.get_or_insert(violation(
                "committed_never_changes",
                now,
                format!("{name} v{version} acknowledged as {hash} but committed as {seen}"),
            ));
        }
        acks.push(ack);
    }

    /// Per tick: every replica's namespace agrees with the history.
    pub fn check_states(
        &mut self,
        now: Instant,
        states: &[&ClusterState],
    ) -> Result<(), Violation> {
        if let Some(v) = self.pending.take() {
            return Err(v);
        }
        for state in states {
            for (name, versions) in state.dfs().files() {
                if !versions.windows(2).all(|w| w[0].number < w[1].number) {
                    return Err(violation(
                        "versions_increase",
                        now,
                        format!("{name}: {versions:?}"),
                    ));
                }
                if !self.seen.contains_key(name) {
                    self.seen.insert(name.clone(), BTreeMap::new());
                    self.seen_hashes.insert(name.clone(), BTreeMap::new());
                }
                let (Some(seen), Some(seen_hashes)) =
                    (self.seen.get_mut(name), self.seen_hashes.get_mut(name))
                else {
                    continue;
                };
                for v in versions {
                    let number = *seen_hashes.entry(v.hash).or_insert(v.number);
                    if number != v.number {
                        return Err(violation(
                            "put_applied_once",
                            now,
                            format!(
                                "{name}: one put's content {} is v{number} and v{}",
                                v.hash, v.number
                            ),
                        ));
                    }
                    let seen = seen.entry(v.number).or_insert(v.hash);
                    if *seen != v.hash {
                        return Err(violation(
                            "committed_never_changes",
                            now,
                            format!("{name} v{} was {seen} and is now {}", v.number, v.hash),
                        ));
                    }
                    let acked = self
                        .acks
                        .get(name)
                        .and_then(|acks| acks.iter().find(|a| a.version == v.number));
                    if let Some(a) = acked
                        && a.hash != v.hash
                    {
                        return Err(violation(
                            "committed_never_changes",
                            now,
                            format!(
                                "{name} v{} acknowledged as {} shows {}",
                                v.number, a.hash, v.hash
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Per tick, on the leader's namespace: every acknowledged version it keeps is readable while
    /// fewer than `replication` of its copies were lost. `good(i, h)`: node `i` is reachable
    /// with `h`'s exact bytes; `index_of(id)`: the node whose current incarnation is `id`.
    pub fn check_readable(
        &mut self,
        now: Instant,
        ns: &Namespace,
        good: impl Fn(usize, &ContentHash) -> bool,
        index_of: impl Fn(&NodeId) -> Option<usize>,
    ) -> Result<(), Violation> {
        // A blob fully replicated on good copies starts counting its losses afresh.
        for (hash, blob) in ns.blobs() {
            if blob.replicas.len() >= self.config.replication
                && blob
                    .replicas
                    .iter()
                    .all(|id| index_of(id).is_some_and(|i| good(i, hash)))
            {
                self.losses.remove(hash);
                self.fully_replicated.insert(*hash);
            }
        }
        for (name, versions) in ns.files() {
            let Some(acks) = self.acks.get(name) else {
                continue;
            };
            for version in versions {
                let Some(ack) = acks.iter().rev().find(|a| a.version == version.number) else {
                    continue;
                };
                let lost = self.losses.get(&ack.hash).copied().unwrap_or(0);
                let tolerated = if self.fully_replicated.contains(&ack.hash) {
                    self.config.replication
                } else {
                    ack.copies.min(self.config.replication)
                };
                if lost >= tolerated {
                    continue;
                }
                self.checks += 1;
                let readable = ns.blob(&ack.hash).is_some_and(|b| {
                    b.replicas
                        .iter()
                        .any(|id| index_of(id).is_some_and(|i| good(i, &ack.hash)))
                });
                if !readable {
                    return Err(violation(
                        "no_acked_file_lost",
                        now,
                        format!(
                            "{name} v{} ({}) unreadable with only {lost} copies lost; replicas {:?}",
                            ack.version,
                            ack.hash,
                            ns.blob(&ack.hash).map(|b| &b.replicas)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Per tick, on the leader's namespace: every listed replica whose incarnation still exists
    /// (running or crashed, not restarted) has the blob on disk. `on_disk(id, h)` is `None`
    /// when `id` is no current incarnation.
    pub fn check_listed_copies(
        &mut self,
        now: Instant,
        ns: &Namespace,
        on_disk: impl Fn(&NodeId, &ContentHash) -> Option<bool>,
    ) -> Result<(), Violation> {
        for (hash, blob) in ns.blobs() {
            for id in &blob.replicas {
                if on_disk(id, hash) == Some(false) {
                    return Err(violation(
                        "listed_copy_exists",
                        now,
                        format!("{id} is listed for {hash} but has no copy on disk"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// After the faults: every acknowledged version is kept (unless deleted or retired by
    /// newer versions) and readable.
    pub fn final_pass(
        &mut self,
        now: Instant,
        ns: &Namespace,
        good: impl Fn(usize, &ContentHash) -> bool,
        index_of: impl Fn(&NodeId) -> Option<usize>,
    ) -> Result<(), Violation> {
        if let Some(v) = self.pending.take() {
            return Err(v);
        }
        for (name, acks) in &self.acks {
            let versions = ns.files().get(name);
            let oldest = versions.and_then(|v| v.first()).map(|v| v.number);
            for ack in acks {
                let kept = versions.and_then(|vs| vs.iter().find(|v| v.number == ack.version));
                match kept {
                    Some(v) if v.hash != ack.hash => {
                        return Err(violation(
                            "committed_never_changes",
                            now,
                            format!(
                                "{name} v{} acknowledged as {} is {}",
                                ack.version, ack.hash, v.hash
                            ),
                        ));
                    }
                    Some(_) => {
                        let readable = ns.blob(&ack.hash).is_some_and(|b| {
                            b.replicas
                                .iter()
                                .any(|id| index_of(id).is_some_and(|i| good(i, &ack.hash)))
                        });
                        if !readable {
                            return Err(violation(
                                "no_acked_file_lost",
                                now,
                                format!("{name} v{} unreadable after the faults", ack.version),
                            ));
                        }
                    }
                    None => {
                        let retired = oldest.is_some_and(|o| o > ack.version);
                        if !retired && !self.deletes.contains(name) {
                            return Err(violation(
                                "no_acked_file_lost",
                                now,
                                format!(
                                    "{name} v{} was acknowledged, never deleted or retired, and is \
                                     gone (kept: {:?})",
                                    ack.version,
                                    versions
                                        .map(|v| v.iter().map(|v| v.number).collect::<Vec<_>>())
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
