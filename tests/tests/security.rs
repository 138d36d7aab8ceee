//! TCP security on real `idunno-node` processes (127.0.0.130-139): every control, Raft and blob
//! connection of a keyed cluster is sealed after a handshake keyed by the cluster key.
//!
//! - A client without a key or token is refused with a message that says what it needs; a
//!   client with the cluster's token (printed by `idunno-node token`) is served; a client with
//!   a wrong token is told the node has a different key.
//! - A Raft voter started with the wrong key never gets a Raft message through: its peers refuse
//!   and count its connections (their logs say so), the two right-keyed voters elect a leader
//!   and commit without it, and it never learns a committed value.
//!
//! Every wait is an `eventually` with a generous deadline.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use idunno_tests::harness::{
    CONVERGE_TIMEOUT, Cluster, NodeSpec, client, client_with, eventually, free_addr, ip, kv_get,
    kv_put, leader, list_self, node_binary,
};

/// This test's addresses start here (unique among the tests in this crate).
const FIRST_HOST: u8 = 130;

/// `idunno-node token` for the cluster key `key`.
fn token_of(key: &str) -> String {
    let output = Command::new(node_binary())
        .arg("token")
        .env("IDUNNO_CLUSTER_KEY", key)
        .env_remove("IDUNNO_CLUSTER_KEY_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("run idunno-node token");
    assert!(output.status.success(), "token: {output:?}");
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert_eq!(token.len(), 64, "64 hex digits: {token:?}");
    assert_ne!(token, key, "the token is not the key");
    token
}

#[test]
fn clients_need_the_key_or_a_token_and_are_told_so() {
    let mut cluster = Cluster::new("security-client");
    let node = cluster.start(&NodeSpec::on(ip(FIRST_HOST)));
    let addr = cluster.node(node).addr;
    // The harness's own client proves the cluster key.
    eventually("the node answers its client", CONVERGE_TIMEOUT, || {
        list_self(addr)
    });

    let bare = client_with(addr, &["list_self", "--json"], None).expect("client ran");
    assert!(!bare.status.success(), "served without a key: {bare:?}");
    assert!(
        bare.stderr.contains("this cluster requires a key"),
        "unclear refusal: {}",
        bare.stderr
    );

    let token = token_of(cluster.key());
    let with_token = client_with(
        addr,
        &["list_self", "--json"],
        Some(("IDUNNO_CLIENT_TOKEN", &token)),
    )
    .expect("client ran");
    assert!(with_token.status.success(), "token refused: {with_token:?}");
    assert!(with_token.stdout.contains(&addr.to_string()));

    let wrong = token_of(&"ab".repeat(32));
    let with_wrong = client_with(
        addr,
        &["list_self", "--json"],
        Some(("IDUNNO_CLIENT_TOKEN", &wrong)),
    )
    .expect("client ran");
    assert!(!with_wrong.status.success(), "a wrong token was served");
    assert!(
        with_wrong.stderr.contains("different cluster key"),
        "unclear refusal: {}",
        with_wrong.stderr
    );
}

#[test]
fn a_voter_with_the_wrong_key_is_refused_and_the_others_commit_without_it() {
    let mut cluster = Cluster::new("security-raft");
    // The intruder is a second "cluster" of one node: same voter set, another fresh key.
    let mut intruders = Cluster::new("security-raft-wrong-key");
    let addrs: Vec<SocketAddr> = (0..3).map(|i| free_addr(ip(FIRST_HOST + 1 + i))).collect();
    let voters_arg = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| format!("{}={addr}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let spec = |i: usize| {
        let join: Vec<SocketAddr> = addrs.iter().copied().filter(|&a| a != addrs[i]).collect();
        NodeSpec::on(addrs[i].ip()).at(addrs[i]).join(&join).args(&[
            "--raft-id".to_owned(),
            (i + 1).to_string(),
            "--voters".to_owned(),
            voters_arg.clone(),
        ])
    };
    let good: Vec<usize> = (0..2).map(|i| cluster.start(&spec(i))).collect();
    let bad = intruders.start(&spec(2));
    let good_addrs = [addrs[0], addrs[1]];

    // The two right-keyed voters are a quorum of three: they elect a leader and commit.
    eventually("the good voters commit a put", CONVERGE_TIMEOUT, || {
        kv_put(good_addrs[0], "secret", "kept")
    });
    for &node in &good_addrs {
        let value = eventually("a good voter reads the put", CONVERGE_TIMEOUT, || {
            kv_get(node, "secret")
        });
        assert_eq!(value.as_deref(), Some("kept"));
    }
    // Their logs show the intruder's Raft connections refused and counted.
    eventually(
        "a good voter logs refusing the intruder's connection",
        CONVERGE_TIMEOUT,
        || {
            let refusals = good
                .iter()
                .filter(|&&i| {
                    cluster
                        .node(i)
                        .log_tail(2000)
                        .contains("refused a TCP connection")
                })
                .count();
            if refusals > 0 {
                Ok(())
            } else {
                Err("no refusal logged yet".to_owned())
            }
        },
    );
    // `stats` on a good voter shows the refusals counted, beside its Raft progress.
    eventually(
        "a good voter's stats count the intruder's refused traffic",
        CONVERGE_TIMEOUT,
        || {
            let out = client(good_addrs[0], &["stats", "--json"])?;
            if !out.status.success() {
                return Err(format!("stats failed: {}", out.stderr));
            }
            let stats: serde_json::Value =
                serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {}", out.stdout))?;
            let counter = |group: &str, name: &str| stats[group][name].as_u64();
            let refused_tcp = counter("tcp_auth", "forged").unwrap_or(0)
                + counter("tcp_auth", "unauthenticated").unwrap_or(0)
                + counter("tcp_auth", "broken").unwrap_or(0);
            let refused_udp = counter("datagram_auth", "forged").unwrap_or(0);
            let committed = counter("raft", "commit_index").unwrap_or(0);
            match (
                refused_tcp,
                refused_udp,
                committed,
                counter("membership", "members"),
            ) {
                (1.., 1.., 1.., Some(1..)) => Ok(()),
                _ => Err(format!("not counted yet: {stats}")),
            }
        },
    );
    // The intruder never learns the value, nor a leader.
    let from_intruder = kv_get(addrs[2], "secret");
    assert!(
        !matches!(from_intruder.as_ref(), Ok(Some(v)) if v == "kept"),
        "the intruder read the value: {from_intruder:?}"
    );
    let intruder_leader = leader(addrs[2]);
    assert!(
        !matches!(intruder_leader.as_ref(), Ok(info) if info.addr.is_some_and(|a| good_addrs.contains(&a))),
        "the intruder follows the good leader: {intruder_leader:?}"
    );
    assert_eq!(intruders.node(bad).addr, addrs[2]);
}
