//! The file-system namespace: the part of the replicated state that says which files exist,
//! which versions of each are kept, and which nodes hold each version's bytes.
//!
//! Owns: [`Namespace`] (name -> versions, newest last; blob hash -> replica set and reference
//! count; remembered answers per client for idempotent retries; the declared-failed nodes; a
//! bounded log of garbage blobs the nodes may delete; the nodes that announced a blob store),
//! its one mutator
//! [`Namespace::execute`] plus [`Namespace::node_failed`], and the queries the client commands
//! and the repair planner read (`get`, `versions`, `list`, `files_on`, `replicas`,
//! `under_replicated`, `loads`, `may_store`).
//! Storage nodes: a node with a blob store announces itself (`StoreReady`) once per
//! generation; a failed node leaves the set, and a newer generation at the same address
//! replaces an older one. Placement and repair targets are live nodes that [`Namespace::may_store`]:
//! announced ones, or every node while nobody has announced (a log written before nodes
//! announced, or a cluster whose stores have not started yet, still places as it did).
//! Version numbers are per name and strictly increasing, even across a delete and a re-create
//! (deleted names leave a bounded tombstone; an evicted tombstone raises a floor every new name
//! starts above).
//! Must never: read a clock (time is the command's replicated stamp), iterate anything but
//! ordered maps, grow without a bound, or change anything when it returns an error.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{
    ContentHash, DfsCommand, DfsConfig, DfsError, DfsResult, FILE_BYTES_MAX, REPLICATION_MAX,
    RequestId, validate_name,
};
use crate::membership::NodeId;
use crate::time::Instant;

/// Most names the namespace holds. With [`NAME_BYTES_TOTAL_MAX`] this keeps the whole
/// replicated state (it travels as one Raft snapshot frame of at most
/// `wire::FRAME_BYTES_MAX` = 16 MiB) within bounds: about 1 KiB per name with 5 versions and
/// 4 replicas each.
pub const FILES_MAX: usize = 10_000;
/// Most bytes all names together may take.
pub const NAME_BYTES_TOTAL_MAX: usize = 2 << 20;
/// Most clients whose last answer is remembered (the least recently served is forgotten; its
/// retry after that would apply again).
pub const CLIENTS_REMEMBERED_MAX: usize = 4096;
/// Most declared-failed nodes remembered (oldest forgotten first).
pub const FAILED_NODES_REMEMBERED_MAX: usize = 1024;
/// Most garbage entries kept for the nodes to drain (oldest dropped first, counted; the nodes'
/// orphan scan finds what was dropped).
pub const GARBAGE_KEPT_MAX: usize = 4096;
/// Most tombstones of deleted names kept.
pub const TOMBSTONES_MAX: usize = 4096;
/// Most entries one `list` or `files_on` query returns.
pub const LIST_ENTRIES_MAX: usize = 10_000;
/// Most storage nodes recorded (one per address; a failed node leaves the set).
pub const STORES_MAX: usize = 1024;

/// One page of [`Namespace::list_page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage<'a> {
    /// The names, in order.
    pub names: Vec<&'a str>,
    /// More names match after the last one.
    pub more: bool,
}

/// One kept version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Its number, strictly increasing per name.
    pub number: u64,
    /// Bytes in it.
    pub size: u64,
    /// The BLAKE3 digest of its bytes.
    pub hash: ContentHash,
    /// The replicated clock when it was committed.
    pub created: Instant,
}

/// The bytes of one or more versions (identical content is stored once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    /// Bytes in it.
    pub size: u64,
    /// Nodes holding a verified, fsynced copy (as far as the log knows).
    pub replicas: BTreeSet<NodeId>,
    /// Kept versions referring to it (never zero while the blob is listed).
    pub references: u64,
}

/// A blob no kept version refers to any more: the listed nodes may delete their copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Garbage {
    /// Position in the garbage log (strictly increasing; a node remembers how far it read).
    pub sequence: u64,
    /// The blob.
    pub hash: ContentHash,
    /// Who held it when it became garbage.
    pub nodes: BTreeSet<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClientEntry {
    seq: u64,
    answer: Result<DfsResult, DfsError>,
    /// `executed` when last served (the least recently served client is evicted).
    touched: u64,
}

/// The replicated file-system metadata. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    config: DfsConfig,
    files: BTreeMap<String, Vec<Version>>,
    /// Sum of the lengths of the names in `files`.
    name_bytes: usize,
    blobs: BTreeMap<ContentHash, Blob>,
    /// Deleted name -> (its last version number, `executed` at deletion).
    tombstones: BTreeMap<String, (u64, u64)>,
    /// Every new name numbers its versions above this (raised by evicted tombstones).
    version_floor: u64,
    clients: BTreeMap<u64, ClientEntry>,
    failed: BTreeSet<NodeId>,
    failed_order: VecDeque<NodeId>,
    garbage: VecDeque<Garbage>,
    garbage_next: u64,
    executed: u64,
    rejected: u64,
    garbage_dropped: u64,
    /// Nodes that announced a blob store (at most one generation per address).
    stores: BTreeSet<NodeId>,
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace::new(DfsConfig::default())
    }
}

impl Namespace {
    /// An empty namespace. `config` should have passed [`DfsConfig::validate`]; out-of-range
    /// values are clamped into range.
    pub fn new(config: DfsConfig) -> Self {
        let config = DfsConfig {
            replication: config.replication.clamp(1, REPLICATION_MAX),
            versions_kept: config.versions_kept.clamp(1, super::VERSIONS_KEPT_MAX),
        };
        Namespace {
            config,
            files: BTreeMap::new(),
            name_bytes: 0,
            blobs: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            version_floor: 0,
            clients: BTreeMap::new(),
            failed: BTreeSet::new(),
            failed_order: VecDeque::new(),
            garbage: VecDeque::new(),
            garbage_next: 0,
            executed: 0,
            rejected: 0,
            garbage_dropped: 0,
            stores: BTreeSet::new(),
        }
    }

    // ----- getters -----

    /// The configuration.
    pub fn config(&self) -> DfsConfig {
        self.config
    }

    /// The newest version of `name`.
    pub fn get(&self, name: &str) -> Option<&Version> {
        self.files.get(name).and_then(|versions| versions.last())
    }

    /// Up to `n` kept versions of `name`, newest first.
    pub fn versions(&self, name: &str, n: usize) -> Vec<&Version> {
        self.files
            .get(name)
            .map(|versions| versions.iter().rev().take(n).collect())
            .unwrap_or_default()
    }

    /// Names starting with `prefix`, in order, at most [`LIST_ENTRIES_MAX`] (the first page
    /// of [`Namespace::list_page`]).
    pub fn list(&self, prefix: &str) -> Vec<&str> {
        self.list_page(prefix, None, LIST_ENTRIES_MAX).names
    }

    /// One page of the names starting with `prefix`, in order: at most `limit` (clamped to
    /// 1..=[`LIST_ENTRIES_MAX`]) of them, all after `start_after` (exclusive) when given, and
    /// whether more match after the last one returned.
    pub fn list_page<'a>(
        &'a self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> ListPage<'a> {
        use std::ops::Bound;
        let limit = limit.clamp(1, LIST_ENTRIES_MAX);
        // A cursor before the prefix starts at the prefix (names between them do not match).
        let from = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut matching = self
            .files
            .range::<str, _>((from, Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(name, _)| name.as_str());
        let names: Vec<&str> = matching.by_ref().take(limit).collect();
        let more = matching.next().is_some();
        debug_assert!(names.len() <= limit);
        debug_assert!(names.windows(2).all(|w| w[0] < w[1]), "in order");
        debug_assert!(!more || names.len() == limit, "more only after a full page");
        ListPage { names, more }
    }

    /// Every (name, version number) whose bytes `node` holds, at most [`LIST_ENTRIES_MAX`].
    pub fn files_on(&self, node: &NodeId) -> Vec<(&str, u64)> {
        self.files
            .iter()
            .flat_map(|(name, versions)| versions.iter().map(move |v| (name.as_str(), v)))
            .filter(|(_, v)| {
                self.blobs
                    .get(&v.hash)
                    .is_some_and(|b| b.replicas.contains(node))
            })
            .map(|(name, v)| (name, v.number))
            .take(LIST_ENTRIES_MAX)
            .collect()
    }

    /// The nodes holding the newest version of `name`.
    pub fn replicas(&self, name: &str) -> Option<&BTreeSet<NodeId>> {
        self.get(name)
            .and_then(|v| self.blobs.get(&v.hash))
            .map(|b| &b.replicas)
    }

    /// The blob with this hash, if a kept version refers to it.
    pub fn blob(&self, hash: &ContentHash) -> Option<&Blob> {
        self.blobs.get(hash)
    }

    /// Every referenced blob, by hash.
    pub fn blobs(&self) -> &BTreeMap<ContentHash, Blob> {
        &self.blobs
    }

    /// Every file's kept versions, by name.
    pub fn files(&self) -> &BTreeMap<String, Vec<Version>> {
        &self.files
    }

    /// Blobs with fewer replicas than the replication factor, as (hash, replica count),
    /// fewest replicas first, then by hash.
    pub fn under_replicated(&self) -> Vec<(ContentHash, usize)> {
        let mut under: Vec<(ContentHash, usize)> = self
            .blobs
            .iter()
            .filter(|(_, b)| b.replicas.len() < self.config.replication)
            .map(|(h, b)| (*h, b.replicas.len()))
            .collect();
        under.sort_by_key(|&(h, count)| (count, h));
        under
    }

    /// Bytes each node holds for kept versions (the placement load).
    pub fn loads(&self) -> BTreeMap<NodeId, u64> {
        let mut loads = BTreeMap::new();
        for blob in self.blobs.values() {
            for node in &blob.replicas {
                let load: &mut u64 = loads.entry(*node).or_default();
                *load = load.saturating_add(blob.size);
            }
        }
        loads
    }

    /// The last request applied for `client` and its answer.
    pub fn answer(&self, client: u64) -> Option<(u64, &Result<DfsResult, DfsError>)> {
        self.clients.get(&client).map(|e| (e.seq, &e.answer))
    }

    /// Whether `node` was declared failed (and is still remembered).
    pub fn is_failed(&self, node: &NodeId) -> bool {
        self.failed.contains(node)
    }

    /// The nodes that announced a blob store and have not failed since.
    pub fn stores(&self) -> &BTreeSet<NodeId> {
        &self.stores
    }

    /// Whether placement and repair may put a replica on `node`: it has not failed, and it
    /// announced a blob store, or no node has announced one (the fallback for logs written
    /// before stores announced themselves: every live node, as then).
    pub fn may_store(&self, node: &NodeId) -> bool {
        !self.failed.contains(node) && (self.stores.is_empty() || self.stores.contains(node))
    }

    /// Garbage entries with `sequence >= from`, oldest first.
    pub fn garbage_since(&self, from: u64) -> impl Iterator<Item = &Garbage> {
        self.garbage.iter().filter(move |g| g.sequence >= from)
    }

    /// Commands refused so far.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Garbage entries dropped because the log was full.
    pub fn garbage_dropped(&self) -> u64 {
        self.garbage_dropped
    }

    // ----- mutators -----

    /// Applies one command at the replicated time `now`. An error changes nothing but the
    /// rejection counter (and, for a request, the client's remembered answer).
    pub fn execute(&mut self, now: Instant, command: DfsCommand) -> Result<DfsResult, DfsError> {
        self.executed = self.executed.saturating_add(1);
        let result = match command {
            DfsCommand::Commit {
                name,
                size,
                hash,
                replicas,
                request,
            } => self.requested(request, |ns| ns.commit(now, &name, size, hash, &replicas)),
            DfsCommand::Delete { name, request } => self.requested(request, |ns| ns.delete(&name)),
            DfsCommand::ReplicaAdded { hash, node } => self.replica_added(hash, node),
            DfsCommand::ReplicaLost { hash, node } => self.replica_lost(hash, node),
            DfsCommand::StoreReady { node } => self.store_ready(node),
        };
        if result.is_err() {
            self.rejected = self.rejected.saturating_add(1);
        }
        self.debug_check();
        result
    }

    /// Membership declared `node` failed: it leaves every replica set, and later copies on it
    /// are refused. Returns false if it was already known failed (nothing changes).
    pub fn node_failed(&mut self, node: NodeId) -> bool {
        if !self.failed.insert(node) {
            return false;
        }
        self.failed_order.push_back(node);
        if self.failed_order.len() > FAILED_NODES_REMEMBERED_MAX
            && let Some(oldest) = self.failed_order.pop_front()
        {
            self.failed.remove(&oldest);
        }
        for blob in self.blobs.values_mut() {
            blob.replicas.remove(&node);
        }
        self.stores.remove(&node);
        self.debug_check();
        true
    }

    fn requested(
        &mut self,
        request: RequestId,
        apply: impl FnOnce(&mut Self) -> Result<DfsResult, DfsError>,
    ) -> Result<DfsResult, DfsError> {
        if let Some(entry) = self.clients.get_mut(&request.client) {
            if request.seq == entry.seq {
                entry.touched = self.executed;
                return match &entry.answer {
                    Ok(earlier) => Ok(DfsResult::Duplicate {
                        earlier: Box::new(earlier.clone()),
                    }),
                    Err(e) => Err(e.clone()),
                };
            }
            if request.seq < entry.seq {
                return Err(DfsError::StaleRequest {
                    client: request.client,
                    seq: request.seq,
                    last: entry.seq,
                });
            }
        }
        let answer = apply(self);
        if !self.clients.contains_key(&request.client)
            && self.clients.len() >= CLIENTS_REMEMBERED_MAX
            && let Some(evict) = self
                .clients
                .iter()
                .min_by_key(|(client, e)| (e.touched, **client))
                .map(|(client, _)| *client)
        {
            self.clients.remove(&evict);
        }
        self.clients.insert(
            request.client,
            ClientEntry {
                seq: request.seq,
                answer: answer.clone(),
                touched: self.executed,
            },
        );
        debug_assert!(self.clients.len() <= CLIENTS_REMEMBERED_MAX);
        answer
    }

    fn commit(
        &mut self,
        now: Instant,
        name: &str,
        size: u64,
        hash: ContentHash,
        replicas: &[NodeId],
    ) -> Result<DfsResult, DfsError> {
        validate_name(name)?;
        if size > FILE_BYTES_MAX {
            return Err(DfsError::TooLarge { size });
        }
        let distinct: BTreeSet<NodeId> = replicas.iter().copied().collect();
        if replicas.is_empty()
            || replicas.len() > REPLICATION_MAX
            || distinct.len() != replicas.len()
        {
            return Err(DfsError::BadReplicas {
                count: replicas.len(),
            });
        }
        let live: BTreeSet<NodeId> = distinct
            .into_iter()
            .filter(|n| !self.failed.contains(n))
            .collect();
        if live.is_empty() {
            return Err(DfsError::NoLiveReplica);
        }
        let last = match self.files.get(name) {
            Some(versions) => versions.last().map_or(self.version_floor, |v| v.number),
            None if self.files.len() >= FILES_MAX
                || self.name_bytes + name.len() > NAME_BYTES_TOTAL_MAX =>
            {
                return Err(DfsError::NamespaceFull { max: FILES_MAX });
            }
            None => self
                .tombstones
                .get(name)
                .map_or(self.version_floor, |&(last, _)| {
                    last.max(self.version_floor)
                }),
        };
        let number = last.saturating_add(1);
        self.tombstones.remove(name);
        let blob = self.blobs.entry(hash).or_insert_with(|| Blob {
            size,
            replicas: BTreeSet::new(),
            references: 0,
        });
        blob.replicas.extend(live);
        blob.references = blob.references.saturating_add(1);
        if !self.files.contains_key(name) {
            self.name_bytes += name.len();
        }
        let versions = self.files.entry(name.to_owned()).or_default();
        debug_assert!(versions.last().is_none_or(|v| v.number < number));
        versions.push(Version {
            number,
            size,
            hash,
            created: now,
        });
        let retired: Vec<ContentHash> = if versions.len() > self.config.versions_kept {
            let excess = versions.len() - self.config.versions_kept;
            versions.drain(..excess).map(|v| v.hash).collect()
        } else {
            Vec::new()
        };
        for hash in retired {
            self.unreference(hash);
        }
        Ok(DfsResult::Committed { version: number })
    }

    fn delete(&mut self, name: &str) -> Result<DfsResult, DfsError> {
        validate_name(name)?;
        let versions = self.files.remove(name).ok_or_else(|| DfsError::NotFound {
            name: name.to_owned(),
        })?;
        self.name_bytes = self.name_bytes.saturating_sub(name.len());
        let last = versions.last().map_or(self.version_floor, |v| v.number);
        if self.tombstones.len() >= TOMBSTONES_MAX
            && let Some((evict, (evicted_last, _))) = self
                .tombstones
                .iter()
                .min_by_key(|(name, (_, at))| (*at, (*name).clone()))
                .map(|(name, entry)| (name.clone(), *entry))
        {
            self.tombstones.remove(&evict);
            self.version_floor = self.version_floor.max(evicted_last);
        }
        self.tombstones
            .insert(name.to_owned(), (last, self.executed));
        for version in &versions {
            self.unreference(version.hash);
        }
        Ok(DfsResult::Deleted {
            versions: versions.len(),
        })
    }

    fn replica_added(&mut self, hash: ContentHash, node: NodeId) -> Result<DfsResult, DfsError> {
        if self.failed.contains(&node) {
            return Err(DfsError::NodeFailed { node });
        }
        let blob = self
            .blobs
            .get_mut(&hash)
            .ok_or(DfsError::UnknownBlob { hash })?;
        blob.replicas.insert(node);
        Ok(DfsResult::ReplicaAdded)
    }

    fn store_ready(&mut self, node: NodeId) -> Result<DfsResult, DfsError> {
        if self.failed.contains(&node) {
            return Err(DfsError::NodeFailed { node });
        }
        let same_address: Vec<NodeId> = self
            .stores
            .iter()
            .filter(|s| s.addr == node.addr)
            .copied()
            .collect();
        debug_assert!(same_address.len() <= 1, "one generation per address");
        if same_address.iter().any(|s| s.generation >= node.generation) {
            // Already recorded, or a newer generation is (this announcement is late).
            return Ok(DfsResult::StoreReady);
        }
        if same_address.is_empty() && self.stores.len() >= STORES_MAX {
            return Err(DfsError::StoresFull { max: STORES_MAX });
        }
        for older in same_address {
            self.stores.remove(&older);
        }
        self.stores.insert(node);
        Ok(DfsResult::StoreReady)
    }

    fn replica_lost(&mut self, hash: ContentHash, node: NodeId) -> Result<DfsResult, DfsError> {
        let blob = self
            .blobs
            .get_mut(&hash)
            .ok_or(DfsError::UnknownBlob { hash })?;
        blob.replicas.remove(&node);
        Ok(DfsResult::ReplicaLost)
    }

    fn unreference(&mut self, hash: ContentHash) {
        let Some(blob) = self.blobs.get_mut(&hash) else {
            debug_assert!(false, "a kept version refers to a missing blob");
            return;
        };
        debug_assert!(blob.references > 0);
        blob.references = blob.references.saturating_sub(1);
        if blob.references > 0 {
            return;
        }
        let nodes = self
            .blobs
            .remove(&hash)
            .map(|b| b.replicas)
            .unwrap_or_default();
        if self.garbage.len() >= GARBAGE_KEPT_MAX {
            self.garbage.pop_front();
            self.garbage_dropped = self.garbage_dropped.saturating_add(1);
        }
        self.garbage.push_back(Garbage {
            sequence: self.garbage_next,
            hash,
            nodes,
        });
        self.garbage_next = self.garbage_next.saturating_add(1);
    }

    /// Invariants: versions strictly increase and are bounded; every kept version's blob exists
    /// and its reference count matches; no failed node holds a replica.
    fn debug_check(&self) {
        if !cfg!(debug_assertions) || self.files.len() > 64 {
            return;
        }
        let mut references: BTreeMap<ContentHash, u64> = BTreeMap::new();
        for versions in self.files.values() {
            debug_assert!(!versions.is_empty() && versions.len() <= self.config.versions_kept);
            debug_assert!(versions.windows(2).all(|w| w[0].number < w[1].number));
            for v in versions {
                *references.entry(v.hash).or_default() += 1;
            }
        }
        debug_assert_eq!(references.len(), self.blobs.len());
        for (hash, blob) in &self.blobs {
            debug_assert_eq!(references.get(hash), Some(&blob.references));
            debug_assert!(blob.replicas.iter().all(|n| !self.failed.contains(n)));
        }
        debug_assert!(self.garbage.len() <= GARBAGE_KEPT_MAX);
        debug_assert!(self.stores.len() <= STORES_MAX);
        debug_assert!(self.stores.iter().all(|n| !self.failed.contains(n)));
        debug_assert!(
            self.stores
                .iter()
                .map(|n| n.addr)
                .collect::<BTreeSet<_>>()
                .len()
                == self.stores.len(),
            "one generation per address"
        );
        debug_assert_eq!(
            self.name_bytes,
            self.files.keys().map(String::len).sum::<usize>()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8) -> NodeId {
        NodeId::new(format!("10.0.0.{i}:7000").parse().expect("addr"), 1)
    }

    fn hash(i: u8) -> ContentHash {
        ContentHash([i; 32])
    }

    fn commit(name: &str, h: u8, seq: u64, replicas: &[u8]) -> DfsCommand {
        DfsCommand::Commit {
            name: name.into(),
            size: 100,
            hash: hash(h),
            replicas: replicas.iter().map(|&i| node(i)).collect(),
            request: RequestId { client: 1, seq },
        }
    }

    fn at(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    #[test]
    fn versions_are_ordered_and_only_the_last_five_kept() {
        let mut ns = Namespace::default();
        for i in 1..=7u8 {
            let r = ns.execute(at(i.into()), commit("f", i, i.into(), &[1, 2, 3, 4]));
            assert_eq!(r, Ok(DfsResult::Committed { version: i.into() }));
        }
        let kept: Vec<u64> = ns.versions("f", 10).iter().map(|v| v.number).collect();
        assert_eq!(kept, vec![7, 6, 5, 4, 3]);
        assert_eq!(ns.versions("f", 2).len(), 2);
        assert_eq!(ns.get("f").map(|v| v.hash), Some(hash(7)));
        // Versions 1 and 2 retired: their blobs are garbage, in order.
        let garbage: Vec<ContentHash> = ns.garbage_since(0).map(|g| g.hash).collect();
        assert_eq!(garbage, vec![hash(1), hash(2)]);
        assert_eq!(ns.garbage_since(1).count(), 1);
        assert!(ns.blob(&hash(1)).is_none());
        assert_eq!(ns.blobs().len(), 5);
    }

    #[test]
    fn a_retried_request_is_applied_once() {
        let mut ns = Namespace::default();
        let first = ns.execute(at(1), commit("f", 1, 5, &[1, 2]));
        assert_eq!(first, Ok(DfsResult::Committed { version: 1 }));
        let again = ns.execute(at(2), commit("f", 1, 5, &[1, 2]));
        assert_eq!(
            again,
            Ok(DfsResult::Duplicate {
                earlier: Box::new(DfsResult::Committed { version: 1 })
            })
        );
        assert_eq!(ns.versions("f", 10).len(), 1);
        let stale = ns.execute(at(3), commit("f", 1, 4, &[1, 2]));
        assert!(matches!(stale, Err(DfsError::StaleRequest { last: 5, .. })));
        // A refused request's retry gets the same refusal.
        let bad = DfsCommand::Delete {
            name: "nope".into(),
            request: RequestId { client: 1, seq: 6 },
        };
        let e1 = ns.execute(at(4), bad.clone());
        assert!(matches!(e1, Err(DfsError::NotFound { .. })));
        assert_eq!(ns.execute(at(5), bad), e1);
        assert_eq!(ns.rejected(), 3);
    }

    #[test]
    fn delete_then_recreate_keeps_numbers_increasing() {
        let mut ns = Namespace::default();
        ns.execute(at(1), commit("f", 1, 1, &[1])).expect("commits");
        ns.execute(at(2), commit("f", 2, 2, &[1])).expect("commits");
        let deleted = ns.execute(
            at(3),
            DfsCommand::Delete {
                name: "f".into(),
                request: RequestId { client: 1, seq: 3 },
            },
        );
        assert_eq!(deleted, Ok(DfsResult::Deleted { versions: 2 }));
        assert!(ns.get("f").is_none());
        assert!(ns.blobs().is_empty());
        assert_eq!(ns.garbage_since(0).count(), 2);
        let again = ns.execute(at(4), commit("f", 3, 4, &[1]));
        assert_eq!(again, Ok(DfsResult::Committed { version: 3 }));
    }

    #[test]
    fn shared_content_is_one_blob_with_references() {
        let mut ns = Namespace::default();
        ns.execute(at(1), commit("a", 9, 1, &[1, 2]))
            .expect("commits");
        ns.execute(at(2), commit("b", 9, 2, &[3])).expect("commits");
        let blob = ns.blob(&hash(9)).expect("blob");
        assert_eq!(blob.references, 2);
        assert_eq!(blob.replicas.len(), 3);
        ns.execute(
            at(3),
            DfsCommand::Delete {
                name: "a".into(),
                request: RequestId { client: 1, seq: 3 },
            },
        )
        .expect("deletes");
        assert_eq!(ns.blob(&hash(9)).map(|b| b.references), Some(1));
        assert_eq!(ns.garbage_since(0).count(), 0);
    }

    #[test]
    fn failed_nodes_leave_replica_sets_and_cannot_come_back() {
        let mut ns = Namespace::default();
        ns.execute(at(1), commit("f", 1, 1, &[1, 2, 3, 4]))
            .expect("commits");
        assert!(ns.under_replicated().is_empty());
        assert!(ns.node_failed(node(2)));
        assert!(!ns.node_failed(node(2)));
        assert_eq!(ns.under_replicated(), vec![(hash(1), 3)]);
        assert!(ns.files_on(&node(2)).is_empty());
        assert_eq!(ns.files_on(&node(1)), vec![("f", 1)]);
        let refused = ns.execute(
            at(2),
            DfsCommand::ReplicaAdded {
                hash: hash(1),
                node: node(2),
            },
        );
        assert_eq!(refused, Err(DfsError::NodeFailed { node: node(2) }));
        let added = ns.execute(
            at(3),
            DfsCommand::ReplicaAdded {
                hash: hash(1),
                node: node(5),
            },
        );
        assert_eq!(added, Ok(DfsResult::ReplicaAdded));
        assert!(ns.under_replicated().is_empty());
        ns.execute(
            at(4),
            DfsCommand::ReplicaLost {
                hash: hash(1),
                node: node(5),
            },
        )
        .expect("lost");
        assert_eq!(ns.under_replicated(), vec![(hash(1), 3)]);
        // A commit naming only failed nodes is refused; with one live node it counts that one.
        assert_eq!(
            ns.execute(at(5), commit("g", 2, 2, &[2])),
            Err(DfsError::NoLiveReplica)
        );
        ns.execute(at(6), commit("g", 2, 3, &[2, 6]))
            .expect("commits");
        assert_eq!(ns.replicas("g").map(|r| r.len()), Some(1));
        assert!(ns.is_failed(&node(2)));
    }

    #[test]
    fn bad_commands_change_nothing() {
        let mut ns = Namespace::default();
        ns.execute(at(1), commit("f", 1, 1, &[1])).expect("commits");
        let before = ns.clone();
        let cases = vec![
            commit("../x", 2, 2, &[1]),
            commit("f", 2, 3, &[]),
            commit("f", 2, 4, &[1, 1]),
            DfsCommand::Commit {
                name: "f".into(),
                size: FILE_BYTES_MAX + 1,
                hash: hash(2),
                replicas: vec![node(1)],
                request: RequestId { client: 2, seq: 1 },
            },
            DfsCommand::ReplicaAdded {
                hash: hash(7),
                node: node(1),
            },
            DfsCommand::ReplicaLost {
                hash: hash(7),
                node: node(1),
            },
        ];
        for (i, bad) in cases.into_iter().enumerate() {
            assert!(ns.execute(at(2), bad).is_err(), "case {i}");
        }
        assert_eq!(ns.files(), before.files());
        assert_eq!(ns.blobs(), before.blobs());
        assert_eq!(ns.rejected(), 6);
    }

    #[test]
    fn list_by_prefix_and_loads() {
        let mut ns = Namespace::default();
        for (i, name) in ["in/a", "in/b", "out/a", "inx"].iter().enumerate() {
            ns.execute(at(1), commit(name, i as u8, i as u64 + 1, &[1, 2]))
                .expect("commits");
        }
        assert_eq!(ns.list("in/"), vec!["in/a", "in/b"]);
        assert_eq!(ns.list("in"), vec!["in/a", "in/b", "inx"]);
        assert_eq!(ns.list("").len(), 4);
        assert_eq!(ns.loads().get(&node(1)), Some(&400));
    }

    /// Pages of every size walk the names in order, once each, and say whether more remain.
    #[test]
    fn list_pages_continue_after_the_cursor() {
        let mut ns = Namespace::default();
        let page = ns.list_page("", None, 3);
        assert!(page.names.is_empty() && !page.more, "empty namespace");
        let names = ["a", "in/a", "in/b", "in/c", "in/d", "inx", "out/a"];
        for (i, name) in names.iter().enumerate() {
            ns.execute(at(1), commit(name, i as u8, i as u64 + 1, &[1]))
                .expect("commits");
        }
        let under: Vec<&str> = vec!["in/a", "in/b", "in/c", "in/d"];
        for limit in 1..=6 {
            let mut seen: Vec<&str> = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let page = ns.list_page("in/", cursor.as_deref(), limit);
                assert!(page.names.len() <= limit);
                seen.extend(page.names.iter().copied());
                if !page.more {
                    break;
                }
                assert_eq!(page.names.len(), limit, "more only after a full page");
                cursor = page.names.last().map(|n| (*n).to_owned());
            }
            assert_eq!(seen, under, "limit {limit}");
        }
        // Exact page edges: a page that ends on the last match says no more.
        let page = ns.list_page("in/", None, 4);
        assert_eq!(page.names, under);
        assert!(!page.more);
        let page = ns.list_page("in/", Some("in/b"), 2);
        assert_eq!(page.names, vec!["in/c", "in/d"]);
        assert!(!page.more);
        let page = ns.list_page("in/", Some("in/b"), 1);
        assert_eq!(page.names, vec!["in/c"]);
        assert!(page.more);
        // A cursor on the last match, past every match, or on a name that is not there.
        assert_eq!(
            ns.list_page("in/", Some("in/d"), 5).names,
            Vec::<&str>::new()
        );
        assert!(!ns.list_page("in/", Some("in/d"), 5).more);
        assert!(ns.list_page("in/", Some("zzz"), 5).names.is_empty());
        assert_eq!(
            ns.list_page("in/", Some("in/bb"), 5).names,
            vec!["in/c", "in/d"]
        );
        // A cursor before the prefix starts at the prefix.
        assert_eq!(ns.list_page("in/", Some("a"), 1).names, vec!["in/a"]);
        assert_eq!(ns.list_page("in/", Some(""), 9).names, under);
        // Limits are clamped: zero still returns one name.
        assert_eq!(ns.list_page("", None, 0).names, vec!["a"]);
        assert!(ns.list_page("", None, 0).more);
        assert_eq!(ns.list_page("", None, usize::MAX).names.len(), names.len());
        assert!(ns.list_page("nothing/", None, 10).names.is_empty());
    }

    #[test]
    fn the_namespace_is_bounded_and_a_snapshot_fits_a_frame() {
        let mut ns = Namespace::default();
        let replicas: Vec<NodeId> = (1..=4).map(node).collect();
        for i in 0..=FILES_MAX as u64 {
            let r = ns.execute(
                at(1),
                DfsCommand::Commit {
                    name: format!("inputs/batch-{i:06}/image.jpg"),
                    size: 1 << 20,
                    hash: ContentHash([(i % 251) as u8; 32]),
                    replicas: replicas.clone(),
                    request: RequestId { client: i, seq: 1 },
                },
            );
            if i < FILES_MAX as u64 {
                assert!(r.is_ok(), "{i}: {r:?}");
            } else {
                assert_eq!(r, Err(DfsError::NamespaceFull { max: FILES_MAX }));
            }
        }
        assert_eq!(ns.files().len(), FILES_MAX);
        // A full namespace fits one page exactly, with nothing after it.
        let page = ns.list_page("inputs/", None, LIST_ENTRIES_MAX);
        assert_eq!(page.names.len(), FILES_MAX);
        assert!(!page.more);
        let page = ns.list_page("inputs/", None, LIST_ENTRIES_MAX - 1);
        assert!(page.more);
        let last = page.names.last().map(|n| (*n).to_owned());
        let rest = ns.list_page("inputs/", last.as_deref(), LIST_ENTRIES_MAX);
        assert_eq!(rest.names.len(), 1);
        assert!(!rest.more);
        // Overwrites of an existing name still go through.
        let r = ns.execute(at(2), commit("inputs/batch-000000/image.jpg", 1, 1, &[1]));
        assert!(r.is_ok(), "{r:?}");
        let encoded = crate::wire::encode_frame(&ns).expect("fits one frame");
        assert!(encoded.len() < crate::wire::FRAME_BYTES_MAX);
        // Long names hit the byte budget first.
        let mut ns = Namespace::default();
        let long = "n".repeat(crate::dfs::names::COMPONENT_BYTES_MAX);
        let mut accepted = 0usize;
        for i in 0..FILES_MAX as u64 {
            let name = format!("{long}/{long}/{long}/{i}");
            let r = ns.execute(
                at(1),
                DfsCommand::Commit {
                    name,
                    size: 1,
                    hash: ContentHash([1; 32]),
                    replicas: vec![node(1)],
                    request: RequestId { client: i, seq: 1 },
                },
            );
            if r.is_err() {
                break;
            }
            accepted += 1;
        }
        assert!(accepted * 3 * crate::dfs::names::COMPONENT_BYTES_MAX <= NAME_BYTES_TOTAL_MAX);
        assert!(accepted < FILES_MAX);
    }

    fn ready(ns: &mut Namespace, node: NodeId) -> Result<DfsResult, DfsError> {
        ns.execute(at(1), DfsCommand::StoreReady { node })
    }

    /// Until a node announces a store every live node may hold replicas (old logs); after, only
    /// announced ones. A new generation replaces the old one at its address, a late
    /// announcement of an older generation changes nothing, and a failed node leaves the set
    /// for good.
    #[test]
    fn only_announced_stores_take_replicas() {
        let mut ns = Namespace::default();
        assert!(
            ns.may_store(&node(1)) && ns.may_store(&node(9)),
            "nobody announced"
        );
        assert_eq!(ready(&mut ns, node(1)), Ok(DfsResult::StoreReady));
        assert_eq!(ready(&mut ns, node(2)), Ok(DfsResult::StoreReady));
        assert_eq!(
            ready(&mut ns, node(2)),
            Ok(DfsResult::StoreReady),
            "idempotent"
        );
        assert!(ns.may_store(&node(1)) && ns.may_store(&node(2)));
        assert!(!ns.may_store(&node(9)), "never announced");
        let newer = NodeId::new(node(1).addr, 2);
        assert_eq!(ready(&mut ns, newer), Ok(DfsResult::StoreReady));
        assert!(ns.may_store(&newer) && !ns.may_store(&node(1)));
        assert_eq!(ready(&mut ns, node(1)), Ok(DfsResult::StoreReady), "late");
        assert_eq!(
            ns.stores().iter().copied().collect::<Vec<_>>(),
            vec![newer, node(2)]
        );
        assert!(ns.node_failed(node(2)));
        assert!(!ns.may_store(&node(2)));
        let before = ns.clone();
        assert_eq!(
            ready(&mut ns, node(2)),
            Err(DfsError::NodeFailed { node: node(2) })
        );
        assert_eq!(ns.stores(), before.stores());
        // Every store failed: the set is empty again, so the fallback applies (failed nodes
        // stay out).
        assert!(ns.node_failed(newer));
        assert!(ns.stores().is_empty());
        assert!(ns.may_store(&node(5)) && !ns.may_store(&newer));
        // The set travels with the namespace (a snapshot restores it).
        ready(&mut ns, node(3)).expect("announces");
        let bytes = crate::wire::encode_frame(&ns).expect("encodes");
        let body = &bytes[crate::wire::FRAME_HEADER_BYTES..];
        let copy: Namespace = crate::wire::decode_frame_body(body).expect("decodes");
        assert_eq!(copy.stores(), ns.stores());
        assert!(copy.may_store(&node(3)) && !copy.may_store(&node(4)));
    }

    #[test]
    fn stores_are_bounded() {
        let mut ns = Namespace::default();
        for i in 0..STORES_MAX as u16 {
            let node = NodeId::new(format!("10.0.1.1:{}", 1000 + i).parse().expect("addr"), 1);
            assert_eq!(ready(&mut ns, node), Ok(DfsResult::StoreReady));
        }
        let one_more = NodeId::new("10.0.2.1:1000".parse().expect("addr"), 1);
        assert_eq!(
            ready(&mut ns, one_more),
            Err(DfsError::StoresFull { max: STORES_MAX })
        );
        assert!(!ns.may_store(&one_more));
        // A new generation of a recorded address still gets in.
        let newer = NodeId::new("10.0.1.1:1000".parse().expect("addr"), 2);
        assert_eq!(ready(&mut ns, newer), Ok(DfsResult::StoreReady));
        assert_eq!(ns.stores().len(), STORES_MAX);
    }

    #[test]
    fn remembered_clients_are_bounded() {
        let mut ns = Namespace::default();
        for client in 0..(CLIENTS_REMEMBERED_MAX as u64 + 5) {
            let r = ns.execute(
                at(1),
                DfsCommand::Delete {
                    name: "x".into(),
                    request: RequestId { client, seq: 1 },
                },
            );
            assert!(r.is_err());
        }
        assert!(ns.answer(0).is_none());
        assert!(ns.answer(CLIENTS_REMEMBERED_MAX as u64 + 4).is_some());
    }

    proptest::proptest! {
        /// Any sequence of commits and deletes on a few names: numbers per name strictly
        /// increase over the whole run, and at most `versions_kept` are kept.
        #[test]
        fn numbers_only_grow(ops in proptest::collection::vec((0u8..3, 0u8..4, proptest::bool::ANY), 1..60)) {
            let mut ns = Namespace::default();
            let mut last: BTreeMap<String, u64> = BTreeMap::new();
            for (seq, (name, content, delete)) in ops.into_iter().enumerate() {
                let name = format!("n{name}");
                let request = RequestId { client: 1, seq: seq as u64 + 1 };
                let command = if delete {
                    DfsCommand::Delete { name: name.clone(), request }
                } else {
                    DfsCommand::Commit { name: name.clone(), size: 1, hash: hash(content), replicas: vec![node(1)], request }
                };
                if let Ok(DfsResult::Committed { version }) = ns.execute(at(1), command) {
                    let previous = last.insert(name.clone(), version).unwrap_or(0);
                    proptest::prop_assert!(version > previous);
                }
                proptest::prop_assert!(ns.versions(&name, 100).len() <= 5);
            }
        }
    }
}
