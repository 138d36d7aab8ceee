//! Five real `idunno-node` processes on 127.0.0.20-24: all see all alive; a SIGKILLed node is
//! dropped by the other four; a graceful `leave` propagates and the leaver exits 0; the killed
//! node restarted at the same address rejoins as a new, higher generation while its old
//! generation stays dead.
//!
//! Every wait is an `eventually` with a generous deadline: the test asserts what the cluster
//! ends up believing, never how fast (detection times are benchmarked in sim/).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use idunno_tests::harness::{
    CONVERGE_TIMEOUT, Cluster, NodeSpec, State, View, eventually, leave, list_mem, list_self,
};

/// This test's addresses: 127.0.0.20 to 127.0.0.24 (unique among the tests in this crate).
fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// `Ok` when every node in `observers` lists every `(addr, generation)` in `expected` as alive.
fn all_see_alive(observers: &[SocketAddr], expected: &[(SocketAddr, u64)]) -> Result<(), String> {
    for &observer in observers {
        let view = list_mem(observer)?;
        for &(addr, generation) in expected {
            let state = view.state_of(addr, generation);
            if state != Some(State::Alive) {
                return Err(format!(
                    "{observer} sees {addr}#{generation} as {state:?}: {view:?}"
                ));
            }
        }
    }
    Ok(())
}

/// `Ok` when no node in `observers` lists `addr#generation` as live, and each lists it in one of
/// `allowed` states or not at all.
fn none_see_live(
    observers: &[SocketAddr],
    (addr, generation): (SocketAddr, u64),
    allowed: &[State],
) -> Result<(), String> {
    for &observer in observers {
        let view: View = list_mem(observer)?;
        match view.state_of(addr, generation) {
            None => {}
            Some(state) if allowed.contains(&state) => {}
            Some(state) => {
                return Err(format!(
                    "{observer} still sees {addr}#{generation} as {state:?}"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn five_processes_detect_a_kill_propagate_a_leave_and_readmit_a_restart() {
    let mut cluster = Cluster::new("membership5");

    // 1. Start: one seed, two joining through it, two through a non-seed member.
    let seed = cluster.start(&NodeSpec::on(ip(20)));
    let seed_addr = cluster.node(seed).addr;
    let mut nodes = vec![seed];
    for last in [21, 22] {
        nodes.push(cluster.start(&NodeSpec::on(ip(last)).join(&[seed_addr])));
    }
    let second = cluster.node(nodes[1]).addr;
    for last in [23, 24] {
        nodes.push(cluster.start(&NodeSpec::on(ip(last)).join(&[second])));
    }
    let ids: Vec<(SocketAddr, u64)> = nodes
        .iter()
        .map(|&i| (cluster.node(i).addr, cluster.node(i).generation))
        .collect();
    let addrs: Vec<SocketAddr> = ids.iter().map(|&(a, _)| a).collect();
    for (index, &(addr, generation)) in ids.iter().enumerate() {
        assert_eq!(addr.ip(), ip(20 + index as u8), "bound where asked");
        let me = list_self(addr).expect("list_self answers");
        assert_eq!(
            (me.addr, me.generation),
            (addr, generation),
            "list_self matches LISTENING"
        );
    }
    eventually("all 5 nodes see all 5 alive", CONVERGE_TIMEOUT, || {
        all_see_alive(&addrs, &ids)
    });

    // 2. SIGKILL the last node: the other four drop it (dead, or already forgotten) and keep
    //    seeing each other alive.
    let victim = nodes[4];
    let victim_id = ids[4];
    cluster.node_mut(victim).kill();
    let survivors = &addrs[..4];
    eventually(
        "the four survivors drop the killed node",
        CONVERGE_TIMEOUT,
        || none_see_live(survivors, victim_id, &[State::Dead]),
    );
    eventually(
        "the four survivors still see each other alive",
        CONVERGE_TIMEOUT,
        || all_see_alive(survivors, &ids[..4]),
    );

    // 3. A graceful leave from node 3: it exits 0, and the remaining three record it as left
    //    (or have forgotten it), never as failed.
    let leaver = nodes[3];
    let leaver_id = ids[3];
    leave(leaver_id.0).expect("leave is accepted");
    let status = eventually("the leaving process exits", CONVERGE_TIMEOUT, || {
        cluster
            .node_mut(leaver)
            .try_exit_status()
            .ok_or_else(|| "still running".to_owned())
    });
    assert!(status.success(), "a completed leave exits 0, got {status}");
    let remaining = &addrs[..3];
    eventually(
        "the leave propagates to the other three",
        CONVERGE_TIMEOUT,
        || none_see_live(remaining, leaver_id, &[State::Left]),
    );
    all_see_alive(remaining, &ids[..3]).expect("the three remaining still see each other alive");

    // 4. Restart the killed node at the same address: a new, higher generation that everyone
    //    sees alive, while the old generation is never alive again.
    let restarted = cluster.start(
        &NodeSpec::on(victim_id.0.ip())
            .at(victim_id.0)
            .join(&[seed_addr]),
    );
    let new_id = (
        cluster.node(restarted).addr,
        cluster.node(restarted).generation,
    );
    assert_eq!(new_id.0, victim_id.0, "restarted at the same address");
    assert!(
        new_id.1 > victim_id.1,
        "a restart is a new generation: {} after {}",
        new_id.1,
        victim_id.1
    );
    let mut observers = remaining.to_vec();
    observers.push(new_id.0);
    let mut expected = ids[..3].to_vec();
    expected.push(new_id);
    eventually(
        "everyone sees the restarted node's new generation alive",
        CONVERGE_TIMEOUT,
        || all_see_alive(&observers, &expected),
    );
    none_see_live(&observers, victim_id, &[State::Dead, State::Left])
        .expect("the old generation stays dead");
    // The leaver stays gone in the restarted node's view too (it learned the table by sync).
    none_see_live(&[new_id.0], leaver_id, &[State::Left, State::Dead])
        .expect("the restarted node does not resurrect the leaver");
}
