//! Ten real `idunno-node` processes on 127.0.0.40-49: seven Raft voters and three non-voting
//! members. Keys put through any node commit; SIGKILLing the leader and two followers leaves
//! four voters, a quorum, which elect a new leader that commits new puts and records the three
//! deaths in the replicated state (`failed`); after every killed
//! voter restarts from its data dir, every committed key reads back with its value from every
//! node (kv-get is linearizable: a follower or member forwards it to the leader's ReadIndex).
//!
//! Voters compact their logs every few entries, so restarted voters recover from snapshots and
//! catch up through InstallSnapshot.
//!
//! Every wait is an `eventually` with a generous deadline: the test asserts what the cluster
//! ends up doing, never how fast (failover time is benchmarked elsewhere).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use idunno_tests::harness::{
    CONVERGE_TIMEOUT, Cluster, RaftLayout, eventually, failed_nodes, ip, kv_get, kv_put, leader,
};

const VOTERS: u8 = 7;
/// Snapshot every this many applied entries (the default is thousands).
const COMPACT_EVERY: u64 = 8;
const MEMBERS: u8 = 3;
/// This test's addresses start here (unique among the tests in this crate).
const FIRST_HOST: u8 = 40;

/// Every node agrees on one known leader; returns its (voter id, address).
fn agreed_leader(nodes: &[SocketAddr]) -> Result<(u64, SocketAddr), String> {
    let mut seen = None;
    for &node in nodes {
        let info = leader(node)?;
        let (Some(id), Some(addr)) = (info.id, info.addr) else {
            return Err(format!("{node} knows no leader: {info:?}"));
        };
        match seen {
            None => seen = Some((id, addr)),
            Some(first) if first == (id, addr) => {}
            Some(first) => return Err(format!("{node} says {id}@{addr}, another said {first:?}")),
        }
    }
    seen.ok_or_else(|| "no nodes asked".to_owned())
}

fn put_all(through: &[SocketAddr], keys: impl Iterator<Item = (String, String)>) {
    for (i, (key, value)) in keys.enumerate() {
        let node = through[i % through.len()];
        eventually(
            &format!("put {key}={value} through {node}"),
            CONVERGE_TIMEOUT,
            || kv_put(node, &key, &value),
        );
    }
}

#[test]
fn seven_voters_survive_killing_the_leader_and_two_followers() {
    let mut cluster = Cluster::new("consensus10");
    let layout = RaftLayout::new(FIRST_HOST, VOTERS);
    let voter_addrs = layout.voters.clone();
    // Compact often, so that restarts recover from snapshots and lagging voters catch up
    // through InstallSnapshot.
    let compact = ["--raft-compact-every".to_owned(), COMPACT_EVERY.to_string()];
    let voter_spec = |i: usize| layout.voter(i).args(&compact);

    // 1. Seven voters (each joining the membership through the others) and three members.
    let mut voter_index = BTreeMap::new();
    for i in 0..usize::from(VOTERS) {
        voter_index.insert(i + 1, cluster.start(&voter_spec(i)));
    }
    let mut all: Vec<SocketAddr> = voter_addrs.clone();
    for m in 0..MEMBERS {
        let index = cluster.start(&layout.member(ip(FIRST_HOST + VOTERS + m)));
        all.push(cluster.node(index).addr);
    }

    // 2. One leader, known to all ten nodes; puts through every node commit.
    let (first_leader, _) = eventually("all ten agree on a leader", CONVERGE_TIMEOUT, || {
        agreed_leader(&all)
    });
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    let before: Vec<(String, String)> = (0..10)
        .map(|i| (format!("before-{i}"), format!("value-{i}")))
        .collect();
    put_all(&all, before.iter().cloned());
    expected.extend(before);
    // An overwrite: the later value must win everywhere.
    put_all(
        &all,
        std::iter::once(("before-0".into(), "rewritten".into())),
    );
    expected.insert("before-0".into(), "rewritten".into());

    // 3. SIGKILL the leader and two followers.
    let followers: Vec<usize> = (1..=usize::from(VOTERS))
        .filter(|&id| id as u64 != first_leader)
        .take(2)
        .collect();
    let mut killed: Vec<usize> = vec![first_leader as usize];
    killed.extend(&followers);
    let killed_ids: Vec<String> = killed
        .iter()
        .map(|&id| cluster.node(voter_index[&id]).id())
        .collect();
    for &id in &killed {
        cluster.node_mut(voter_index[&id]).kill();
    }
    let survivors: Vec<SocketAddr> = all
        .iter()
        .copied()
        .filter(|a| !killed.iter().any(|&id| voter_addrs[id - 1] == *a))
        .collect();
    assert_eq!(survivors.len(), 7);

    // 4. The four surviving voters elect a new leader, which commits new puts.
    let (second_leader, _) = eventually(
        "the survivors agree on a new leader",
        CONVERGE_TIMEOUT,
        || match agreed_leader(&survivors)? {
            (id, _) if killed.contains(&(id as usize)) => Err(format!("{id} was killed")),
            found => Ok(found),
        },
    );
    assert_ne!(second_leader, first_leader);
    let after: Vec<(String, String)> = (0..10)
        .map(|i| (format!("after-{i}"), format!("new-{i}")))
        .collect();
    put_all(&survivors, after.iter().cloned());
    expected.extend(after);

    // 4b. The new leader's membership detected the three deaths and recorded them in the
    //     replicated state (where they release the dead nodes' leases and replicas).
    eventually(
        "the killed voters are recorded as failed",
        CONVERGE_TIMEOUT,
        || {
            let failed = failed_nodes(survivors[0])?;
            match killed_ids.iter().find(|id| !failed.contains(id)) {
                Some(missing) => Err(format!("{missing} not in {failed:?}")),
                None => Ok(()),
            }
        },
    );

    // 5. Restart every killed voter from its data dir at the same address.
    for &id in &killed {
        voter_index.insert(id, cluster.start(&voter_spec(id - 1)));
    }

    // 6. Every committed key reads back with its value from every node.
    eventually(
        "all ten agree on a leader after the restarts",
        CONVERGE_TIMEOUT,
        || agreed_leader(&all),
    );
    for &node in &all {
        for (key, value) in &expected {
            let got = eventually(
                &format!("kv-get {key} from {node}"),
                CONVERGE_TIMEOUT,
                || kv_get(node, key),
            );
            assert_eq!(got.as_deref(), Some(value.as_str()), "{key} read at {node}");
        }
    }
    assert_eq!(
        eventually("an absent key reads as absent", CONVERGE_TIMEOUT, || {
            kv_get(all[0], "never-written")
        }),
        None
    );

    // 7. Now kill the current leader and two voters that were never killed, so that at least
    //    two restarted voters are part of the only quorum left (all four remaining voters): the
    //    logs they recovered from disk must carry the cluster on.
    let (third_leader, _) = agreed_leader(&all).expect("agreed a moment ago");
    let mut second_kill = vec![third_leader as usize];
    second_kill.extend(
        (1..=usize::from(VOTERS))
            .filter(|id| !killed.contains(id) && *id as u64 != third_leader)
            .take(2),
    );
    for &id in &second_kill {
        cluster.node_mut(voter_index[&id]).kill();
    }
    let remaining: Vec<SocketAddr> = all
        .iter()
        .copied()
        .filter(|a| !second_kill.iter().any(|&id| voter_addrs[id - 1] == *a))
        .collect();
    eventually(
        "the remaining voters elect a leader",
        CONVERGE_TIMEOUT,
        || match agreed_leader(&remaining)? {
            (id, _) if second_kill.contains(&(id as usize)) => Err(format!("{id} was killed")),
            found => Ok(found),
        },
    );
    put_all(&remaining, std::iter::once(("last".into(), "word".into())));
    expected.insert("last".into(), "word".into());
    for &node in &remaining {
        for (key, value) in &expected {
            let got = eventually(
                &format!("kv-get {key} from {node} after the second kill"),
                CONVERGE_TIMEOUT,
                || kv_get(node, key),
            );
            assert_eq!(got.as_deref(), Some(value.as_str()), "{key} read at {node}");
        }
    }
}
