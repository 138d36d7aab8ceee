//! Unit tests for the membership machine, over a tiny lossless in-memory network.
//!
//! The fault simulations (loss, partitions, 30% crashes, many seeds) live in idunno-sim; these
//! tests pin single behaviours of the machine.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use super::*;

const LATENCY: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    Deliver {
        to: SocketAddr,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Fire {
        node: usize,
        instance: u64,
        timer: Timer,
    },
}

/// A lossless network with fixed latency; every node's outputs are executed in order.
struct Net {
    now: Instant,
    nodes: Vec<Option<Membership>>,
    instance: Vec<u64>,
    queue: BinaryHeap<Reverse<(Instant, u64, Pending)>>,
    seq: u64,
    events: Vec<(usize, Event)>,
    /// When false, datagrams to these nodes are dropped (a crashed process).
    down: Vec<bool>,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + u16::try_from(i).unwrap_or(0)))
}

impl Net {
    fn new(n: usize) -> Net {
        let mut net = Net {
            now: Instant::from_micros(1_000_000),
            nodes: Vec::new(),
            instance: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            events: Vec::new(),
            down: Vec::new(),
        };
        for i in 0..n {
            net.nodes.push(None);
            net.instance.push(0);
            net.down.push(true);
            net.start(i, 1);
        }
        net
    }

    fn start(&mut self, i: usize, generation: u64) {
        let me = NodeId::new(addr(i), generation);
        let machine = Membership::new(Config::lan(), me, 42 + i as u64 * 7 + generation, self.now)
            .expect("valid config");
        self.nodes[i] = Some(machine);
        self.instance[i] += 1;
        self.down[i] = false;
        self.drain(i);
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
        self.down[i] = true;
    }

    fn input(&mut self, i: usize, input: Input<'_>) -> Result<(), Error> {
        let now = self.now;
        let result = self.nodes[i]
            .as_mut()
            .expect("node is up")
            .handle(now, input);
        self.drain(i);
        result
    }

    fn drain(&mut self, i: usize) {
        let Some(machine) = self.nodes[i].as_mut() else {
            return;
        };
        let mut outs = Vec::new();
        while let Some(out) = machine.poll_output() {
            outs.push(out);
        }
        for out in outs {
            self.seq += 1;
            match out {
                Output::Send { to, bytes } => {
                    assert!(bytes.len() <= wire::DATAGRAM_BYTES_MAX);
                    let at = self.now + LATENCY;
                    let from = addr(i);
                    self.queue.push(Reverse((
                        at,
                        self.seq,
                        Pending::Deliver { to, from, bytes },
                    )));
                }
                Output::SetTimer { timer, at } => {
                    assert!(at >= self.now, "timers are never in the past");
                    let instance = self.instance[i];
                    self.queue.push(Reverse((
                        at,
                        self.seq,
                        Pending::Fire {
                            node: i,
                            instance,
                            timer,
                        },
                    )));
                }
                Output::Event(event) => self.events.push((i, event)),
            }
        }
    }

    fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > end {
                break;
            }
            let Some(Reverse((at, _, pending))) = self.queue.pop() else {
                break;
            };
            self.now = at;
            match pending {
                Pending::Deliver { to, from, bytes } => {
                    let Some(i) = (0..self.nodes.len()).find(|&i| addr(i) == to) else {
                        continue;
                    };
                    if self.down[i] {
                        continue;
                    }
                    let _ = self.input(
                        i,
                        Input::Datagram {
                            from,
                            bytes: &bytes,
                        },
                    );
                }
                Pending::Fire {
                    node,
                    instance,
                    timer,
                } => {
                    if self.down[node] || self.instance[node] != instance {
                        continue;
                    }
                    let _ = self.input(node, Input::Timer(timer));
                }
            }
        }
        self.now = end;
    }

    fn join_all(&mut self) {
        for i in 1..self.nodes.len() {
            self.input(
                i,
                Input::Join {
                    seeds: vec![addr(0)],
                },
            )
            .expect("join");
        }
    }

    fn node(&self, i: usize) -> &Membership {
        self.nodes[i].as_ref().expect("node is up")
    }

    fn live_ids(&self) -> BTreeSet<NodeId> {
        (0..self.nodes.len())
            .filter_map(|i| self.nodes[i].as_ref().map(|m| m.me()))
            .filter(|id| {
                let i = self
                    .nodes
                    .iter()
                    .position(|m| m.as_ref().is_some_and(|m| m.me() == *id));
                i.is_some_and(|i| !self.node(i).is_leaving())
            })
            .collect()
    }

    fn assert_converged(&self) {
        let expected = self.live_ids();
        for (i, m) in self.nodes.iter().enumerate() {
            if let Some(m) = m
                && !m.is_leaving()
            {
                assert_eq!(m.live_view(), expected, "node {i}'s view");
            }
        }
    }
}

#[test]
fn nodes_join_through_one_seed_and_converge() {
    let mut net = Net::new(8);
    net.join_all();
    net.run_for(Duration::from_secs(5));
    net.assert_converged();
    let joined = net
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Joined(_)))
        .count();
    assert_eq!(joined, 8 * 7, "every node reports every other node once");
}

#[test]
fn crashed_node_is_declared_failed_by_everyone() {
    let mut net = Net::new(6);
    net.join_all();
    net.run_for(Duration::from_secs(5));
    let victim = net.node(3).me();
    net.crash(3);
    net.run_for(Duration::from_secs(10));
    net.assert_converged();
    for i in [0, 1, 2, 4, 5] {
        assert_eq!(net.node(i).state_of(victim), Some(MemberState::Dead));
        assert!(net.events.contains(&(i, Event::Failed(victim))));
    }
    // No one else was ever declared dead on a lossless network.
    assert!(
        net.events
            .iter()
            .all(|(_, e)| !matches!(e, Event::Failed(id) if *id != victim))
    );
}

#[test]
fn a_suspected_node_refutes_and_stays_alive() {
    let mut net = Net::new(4);
    net.join_all();
    net.run_for(Duration::from_secs(3));
    let target = net.node(2).me();
    let accuser = net.node(1).me();
    // Node 1 wrongly suspects node 2 (as after a lost ack) and tells node 0.
    let packet = Packet {
        from: accuser,
        to: Some(net.node(0).me()),
        message: Message::Gossip,
        gossip: vec![Update::Suspect {
            node: target,
            incarnation: 0,
            by: accuser,
        }],
    };
    let bytes = wire::encode_datagram(&Datagram::Membership(packet)).expect("encodes");
    net.input(
        0,
        Input::Datagram {
            from: addr(1),
            bytes: &bytes,
        },
    )
    .expect("accepted");
    assert_eq!(net.node(0).state_of(target), Some(MemberState::Suspect));
    net.run_for(Duration::from_secs(10));
    net.assert_converged();
    assert!(
        net.node(2).incarnation() >= 1,
        "node 2 refuted by bumping its incarnation"
    );
    assert!(net.node(2).metrics().refutations >= 1);
    for i in [0, 1, 3] {
        assert_eq!(net.node(i).state_of(target), Some(MemberState::Alive));
    }
    assert!(net.events.iter().all(|(_, e)| *e != Event::Failed(target)));
}

#[test]
fn graceful_leave_is_reported_as_left_and_finishes() {
    let mut net = Net::new(5);
    net.join_all();
    net.run_for(Duration::from_secs(3));
    let leaver = net.node(4).me();
    net.input(4, Input::Leave).expect("leave");
    net.run_for(Duration::from_secs(3));
    assert!(net.events.contains(&(4, Event::SelfLeft)));
    assert_eq!(
        net.nodes[4]
            .as_mut()
            .map(|m| m.handle(Instant::MAX, Input::Leave)),
        Some(Err(Error::Left))
    );
    for i in 0..4 {
        assert_eq!(net.node(i).state_of(leaver), Some(MemberState::Left));
        assert!(net.events.contains(&(i, Event::Left(leaver))));
        assert!(!net.events.contains(&(i, Event::Failed(leaver))));
    }
}

#[test]
fn restarted_node_is_a_new_member_and_retires_its_old_generation() {
    let mut net = Net::new(5);
    net.join_all();
    net.run_for(Duration::from_secs(3));
    let old = net.node(2).me();
    net.crash(2);
    net.start(2, 2);
    net.input(
        2,
        Input::Join {
            seeds: vec![addr(0)],
        },
    )
    .expect("join");
    net.run_for(Duration::from_secs(3));
    let new = net.node(2).me();
    assert_ne!(old, new);
    net.assert_converged();
    for i in [0, 1, 3, 4] {
        assert_eq!(net.node(i).state_of(new), Some(MemberState::Alive));
        assert!(!net.node(i).live_view().contains(&old));
    }
}

#[test]
fn garbage_and_misdirected_datagrams_are_counted_and_dropped() {
    let mut net = Net::new(2);
    net.join_all();
    net.run_for(Duration::from_secs(2));
    let before = net.node(0).live_view();
    for bytes in [
        &[][..],
        &[0xff; 10][..],
        &[wire::WIRE_VERSION, 200, 1, 2][..],
        &[0u8; 1500][..],
    ] {
        let result = net.input(
            0,
            Input::Datagram {
                from: addr(9),
                bytes,
            },
        );
        assert!(matches!(result, Err(Error::Decode(_))), "{result:?}");
    }
    assert_eq!(net.node(0).metrics().decode_errors, 4);
    // A packet for another generation at this address.
    let stale = NodeId::new(addr(0), 0);
    let packet = Packet {
        from: net.node(1).me(),
        to: Some(stale),
        message: Message::Ping { seq: 1 },
        gossip: vec![],
    };
    let bytes = wire::encode_datagram(&Datagram::Membership(packet)).expect("encodes");
    assert_eq!(
        net.input(
            0,
            Input::Datagram {
                from: addr(1),
                bytes: &bytes
            }
        ),
        Err(Error::Misdirected(stale))
    );
    assert_eq!(net.node(0).metrics().misdirected, 1);
    assert_eq!(net.node(0).live_view(), before);
}

#[test]
fn stale_timers_are_ignored() {
    let mut net = Net::new(1);
    let bogus = Timer {
        kind: TimerKind::Probe,
        token: TimerToken(999_999),
    };
    net.input(0, Input::Timer(bogus))
        .expect("ignored, not an error");
    assert_eq!(net.node(0).metrics().stale_timers, 1);
}

#[test]
fn same_seed_same_outputs() {
    fn trace() -> Vec<String> {
        let mut net = Net::new(5);
        net.join_all();
        net.run_for(Duration::from_secs(2));
        net.crash(1);
        net.run_for(Duration::from_secs(6));
        net.events.iter().map(|e| format!("{e:?}")).collect()
    }
    assert_eq!(trace(), trace());
}

#[test]
fn large_cluster_join_reply_is_chunked_within_datagram_limit() {
    let mut net = Net::new(120);
    net.join_all();
    // Net::drain asserts every datagram's size.
    net.run_for(Duration::from_secs(10));
    net.assert_converged();
    assert!(net.node(0).metrics().datagrams_sent > 0);
}

#[test]
fn a_stale_accusation_is_answered_with_the_current_incarnation() {
    let me = NodeId::new(addr(2), 1);
    let relay = NodeId::new(addr(0), 1);
    let accuser = NodeId::new(addr(1), 1);
    let now = Instant::from_micros(1);
    let mut machine = Membership::new(Config::lan(), me, 7, now).expect("valid config");
    let gossip = |incarnation| Packet {
        from: relay,
        to: Some(me),
        message: Message::Gossip,
        gossip: vec![Update::Suspect {
            node: me,
            incarnation,
            by: accuser,
        }],
    };
    let feed = |machine: &mut Membership, packet: Packet| {
        let bytes = wire::encode_datagram(&Datagram::Membership(packet)).expect("encodes");
        machine
            .handle(
                now,
                Input::Datagram {
                    from: relay.addr,
                    bytes: &bytes,
                },
            )
            .expect("accepted");
        let mut alive_sent_to = BTreeSet::new();
        while let Some(out) = machine.poll_output() {
            if let Output::Send { to, bytes } = out
                && let Ok(Datagram::Membership(p)) = wire::decode_datagram(&bytes)
                && p.gossip.contains(&Update::Alive {
                    node: me,
                    incarnation: 1,
                })
            {
                alive_sent_to.insert(to);
            }
        }
        alive_sent_to
    };
    // A current accusation: refute (incarnation 0 -> 1) and tell both the accuser and the relay.
    let told = feed(&mut machine, gossip(0));
    assert_eq!(machine.incarnation(), 1);
    assert_eq!(told, BTreeSet::from([relay.addr, accuser.addr]));
    // The same accusation again, now stale: no new refutation, but both are told again.
    let told = feed(&mut machine, gossip(0));
    assert_eq!(
        machine.incarnation(),
        1,
        "a stale accusation does not bump the incarnation"
    );
    assert_eq!(machine.metrics().refutations, 1);
    assert_eq!(told, BTreeSet::from([relay.addr, accuser.addr]));
}

/// One machine driven by hand: its timers are fired on request and its datagrams collected.
struct Solo {
    machine: Membership,
    now: Instant,
    timers: Vec<(Timer, Instant)>,
    sent: Vec<(SocketAddr, Packet)>,
}

impl Solo {
    /// A node that knows `peers` other members (all alive), learnt through sync chunks.
    fn with_peers(peers: usize) -> Solo {
        let me = NodeId::new(addr(0), 1);
        let now = Instant::from_micros(1_000_000);
        let machine = Membership::new(Config::lan(), me, 11, now).expect("valid config");
        let mut solo = Solo {
            machine,
            now,
            timers: Vec::new(),
            sent: Vec::new(),
        };
        solo.drain();
        let ids: Vec<NodeId> = (1..=peers).map(|i| NodeId::new(addr(i), 1)).collect();
        for chunk in ids.chunks(40) {
            let entries = chunk
                .iter()
                .map(|&node| Update::Alive {
                    node,
                    incarnation: 0,
                })
                .collect();
            solo.feed(
                chunk[0],
                Message::Sync {
                    entries,
                    reply: true,
                },
            );
        }
        assert_eq!(solo.machine.cluster_size(), peers + 1);
        solo.sent.clear();
        solo
    }

    fn drain(&mut self) {
        while let Some(out) = self.machine.poll_output() {
            match out {
                Output::Send { to, bytes } => {
                    if let Ok(Datagram::Membership(p)) = wire::decode_datagram(&bytes) {
                        self.sent.push((to, p));
                    }
                }
                Output::SetTimer { timer, at } => self.timers.push((timer, at)),
                Output::Event(_) => {}
            }
        }
    }

    fn feed(&mut self, from: NodeId, message: Message) {
        self.feed_with(from, message, Vec::new());
    }

    fn feed_with(&mut self, from: NodeId, message: Message, gossip: Vec<Update>) {
        let packet = Packet {
            from,
            to: Some(self.machine.me()),
            message,
            gossip,
        };
        let bytes = wire::encode_datagram(&Datagram::Membership(packet)).expect("encodes");
        self.machine
            .handle(
                self.now,
                Input::Datagram {
                    from: from.addr,
                    bytes: &bytes,
                },
            )
            .expect("accepted");
        self.drain();
    }

    /// Fires the most recently armed timer of `kind`, moving the clock to its deadline.
    fn fire(&mut self, kind: TimerKind) {
        let at = self
            .timers
            .iter()
            .rposition(|(t, _)| t.kind == kind)
            .expect("timer armed");
        let (timer, at) = self.timers.remove(at);
        self.now = self.now.max(at);
        self.machine
            .handle(self.now, Input::Timer(timer))
            .expect("timer handled");
        self.drain();
    }

    /// Fires every retry armed before the next probe tick.
    fn fire_retries(&mut self) {
        while self
            .timers
            .iter()
            .any(|(t, _)| t.kind == TimerKind::ProbeTimeout)
        {
            self.fire(TimerKind::ProbeTimeout);
        }
    }

    /// The probe in flight: target and sequence number.
    fn probe(&self) -> (NodeId, u64) {
        let p = self.machine.probe.expect("a probe is in flight");
        (p.target, p.seq)
    }

    fn pings_to(&self, target: NodeId) -> usize {
        self.sent
            .iter()
            .filter(|(to, p)| *to == target.addr && matches!(p.message, Message::Ping { .. }))
            .count()
    }

    fn ping_reqs(&self) -> usize {
        self.sent
            .iter()
            .filter(|(_, p)| matches!(p.message, Message::PingReq { .. }))
            .count()
    }
}

#[test]
fn a_late_ack_is_retried_directly_before_anyone_is_suspected() {
    let mut solo = Solo::with_peers(3);
    solo.fire(TimerKind::Probe);
    let (target, _) = solo.probe();
    solo.fire_retries();
    // 200 ms timeout, then a retry every 50 ms until the 500 ms period ends.
    assert_eq!(solo.pings_to(target), 7);
    assert_eq!(solo.machine.metrics().probe_retries, 6);
    assert_eq!(
        solo.ping_reqs(),
        2,
        "one ping-req wave through the two other members"
    );
}

#[test]
fn local_health_rises_on_missed_acks_and_falls_on_prompt_ones() {
    let mut solo = Solo::with_peers(3);
    assert_eq!(solo.machine.awareness(), 0);
    // Answered only after the first ping went unanswered: +2.
    solo.fire(TimerKind::Probe);
    let (target, seq) = solo.probe();
    solo.fire(TimerKind::ProbeTimeout);
    solo.feed(target, Message::Ack { seq });
    solo.fire(TimerKind::Probe);
    assert_eq!(solo.machine.awareness(), 2);
    // Answered at once: -1.
    let (target, seq) = solo.probe();
    solo.feed(target, Message::Ack { seq });
    solo.fire(TimerKind::Probe);
    assert_eq!(solo.machine.awareness(), 1);
    // Never answered: says nothing about our own health (the target may be dead).
    let (target, _) = solo.probe();
    solo.fire_retries();
    solo.fire(TimerKind::Probe);
    assert_eq!(solo.machine.awareness(), 1);
    assert_eq!(solo.machine.state_of(target), Some(MemberState::Suspect));
    // Capped at awareness_max.
    for _ in 0..20 {
        let (target, seq) = solo.probe();
        solo.fire(TimerKind::ProbeTimeout);
        solo.feed(target, Message::Ack { seq });
        solo.fire(TimerKind::Probe);
    }
    assert_eq!(solo.machine.awareness(), Config::lan().awareness_max);
}

#[test]
fn poor_health_keeps_probing_a_silent_member_before_accusing_it() {
    // 1000 members: a node at the worst score waits two extra probe periods.
    let mut solo = Solo::with_peers(999);
    solo.machine.awareness = Config::lan().awareness_max;
    solo.fire(TimerKind::Probe);
    let (target, _) = solo.probe();
    for extension in 1..=2 {
        solo.fire_retries();
        solo.fire(TimerKind::Probe);
        assert_eq!(solo.probe().0, target, "still probing the same member");
        assert_eq!(solo.machine.state_of(target), Some(MemberState::Alive));
        assert_eq!(solo.machine.metrics().probe_extensions, extension);
        // Each extension sends a fresh ping-req wave.
        assert_eq!(solo.ping_reqs(), 5 * (extension as usize + 1));
    }
    solo.fire_retries();
    solo.fire(TimerKind::Probe);
    assert_eq!(solo.machine.state_of(target), Some(MemberState::Suspect));
    assert_eq!(solo.machine.metrics().suspicions_raised, 1);

    // An answer during an extension ends the probe without any suspicion.
    let mut solo = Solo::with_peers(999);
    solo.machine.awareness = Config::lan().awareness_max;
    solo.fire(TimerKind::Probe);
    let (target, seq) = solo.probe();
    solo.fire_retries();
    solo.fire(TimerKind::Probe);
    solo.feed(target, Message::Ack { seq });
    solo.fire(TimerKind::Probe);
    assert_ne!(solo.probe().0, target);
    assert_eq!(solo.machine.state_of(target), Some(MemberState::Alive));
    assert_eq!(solo.machine.metrics().suspicions_raised, 0);
    assert_eq!(solo.machine.metrics().probe_extensions_answered, 1);

    // A healthy node accuses at the end of the first period, whatever the size.
    let mut solo = Solo::with_peers(999);
    solo.fire(TimerKind::Probe);
    let (target, _) = solo.probe();
    solo.fire_retries();
    solo.fire(TimerKind::Probe);
    assert_eq!(solo.machine.state_of(target), Some(MemberState::Suspect));
}

#[test]
fn being_suspected_worsens_local_health() {
    let mut solo = Solo::with_peers(3);
    let accuser = NodeId::new(addr(1), 1);
    let me = solo.machine.me();
    let packet = Packet {
        from: accuser,
        to: Some(me),
        message: Message::Gossip,
        gossip: vec![Update::Suspect {
            node: me,
            incarnation: 0,
            by: accuser,
        }],
    };
    let bytes = wire::encode_datagram(&Datagram::Membership(packet)).expect("encodes");
    solo.machine
        .handle(
            solo.now,
            Input::Datagram {
                from: accuser.addr,
                bytes: &bytes,
            },
        )
        .expect("accepted");
    assert_eq!(solo.machine.incarnation(), 1);
    assert_eq!(solo.machine.awareness(), 1);
}

#[test]
fn a_death_verdict_about_a_member_that_just_spoke_to_us_is_refused_and_forwarded() {
    let mut solo = Solo::with_peers(3);
    let victim = NodeId::new(addr(1), 1);
    let accuser = NodeId::new(addr(2), 1);
    let verdict = Update::Dead {
        node: victim,
        incarnation: 0,
        by: accuser,
    };
    // The victim talks to us; the accuser (cut off from it one way) declares it dead.
    solo.feed(victim, Message::Gossip);
    solo.now = solo.now + Duration::from_millis(300);
    solo.sent.clear();
    solo.feed_with(accuser, Message::Gossip, vec![verdict]);
    assert_eq!(solo.machine.state_of(victim), Some(MemberState::Alive));
    assert_eq!(solo.machine.metrics().deaths_overruled, 1);
    assert!(
        solo.sent
            .iter()
            .any(|(to, p)| *to == victim.addr && p.gossip.contains(&verdict)),
        "the verdict is forwarded to the victim so that it refutes"
    );
    // Silent for longer than the suspicion floor: the verdict may be about a crash; adopted.
    let floor = Config::lan().suspicion_timeout_min(solo.machine.cluster_size());
    solo.now = solo.now + floor;
    solo.feed_with(accuser, Message::Gossip, vec![verdict]);
    assert_eq!(solo.machine.state_of(victim), Some(MemberState::Dead));
}

/// The pings `from` has queued for `to` (sent, not yet delivered).
fn pings_in_flight(net: &Net, from: usize, to: usize) -> usize {
    net.queue
        .iter()
        .filter(|Reverse((_, _, pending))| match pending {
            Pending::Deliver {
                to: dest,
                from: src,
                bytes,
            } => {
                *dest == addr(to)
                    && *src == addr(from)
                    && matches!(
                        wire::decode_datagram(bytes),
                        Ok(Datagram::Membership(Packet {
                            message: Message::Ping { .. },
                            ..
                        }))
                    )
            }
            Pending::Fire { .. } => false,
        })
        .count()
}

#[test]
fn a_hinted_member_is_probed_at_once_and_suspected_within_one_period_of_its_crash() {
    let mut net = Net::new(10);
    net.join_all();
    net.run_for(Duration::from_secs(5));
    net.assert_converged();
    let victim = net.node(3).me();
    net.crash(3);
    net.input(0, Input::ProbeSoon(victim)).expect("hint");
    assert_eq!(net.node(0).metrics().probe_hints, 1);
    assert_eq!(net.node(0).metrics().early_probes, 1, "probed at once");
    assert_eq!(
        pings_in_flight(&net, 0, 3),
        1,
        "the hint's ping leaves in the same input"
    );
    // One probe period (and the gossip of the suspicion) later, node 0 suspects the victim
    // through its own probe, whatever its round-robin order held.
    let period = Config::lan().probe_interval;
    net.run_for(period + Duration::from_millis(20));
    assert!(net.node(0).metrics().suspicions_raised >= 1);
    assert_eq!(net.node(0).state_of(victim), Some(MemberState::Suspect));
    let suspected_at = net
        .events
        .iter()
        .position(|e| *e == (0, Event::Suspect(victim)));
    assert!(suspected_at.is_some(), "node 0 reported the suspicion");
}

#[test]
fn hints_about_live_members_cost_a_ping_and_never_a_suspicion() {
    let mut net = Net::new(6);
    net.join_all();
    net.run_for(Duration::from_secs(5));
    let events_before = net.events.len();
    let ids: Vec<NodeId> = (1..6).map(|i| net.node(i).me()).collect();
    // Five hints at once: the first starts a probe now, the rest wait for later periods (at
    // most one early start per probe interval), all of them answered.
    for id in &ids {
        net.input(0, Input::ProbeSoon(*id)).expect("hint");
    }
    let m = net.node(0).metrics().clone();
    assert_eq!(m.probe_hints, 5);
    assert_eq!(m.early_probes, 1, "one early start per probe interval");
    net.run_for(Duration::from_secs(5));
    assert_eq!(
        net.node(0).metrics().early_probes,
        1,
        "the queued hints wait for their periods: no further early start"
    );
    assert!(
        net.events[events_before..]
            .iter()
            .all(|(_, e)| !matches!(e, Event::Suspect(_) | Event::Failed(_))),
        "a wrong hint never suspects anyone: {:?}",
        &net.events[events_before..]
    );
    net.assert_converged();
}

#[test]
fn hints_about_self_unknown_suspected_or_queued_members_are_ignored() {
    let mut net = Net::new(4);
    net.join_all();
    net.run_for(Duration::from_secs(5));
    let me = net.node(0).me();
    let stranger = NodeId::new(addr(9), 1);
    let member = net.node(2).me();
    net.input(0, Input::ProbeSoon(me)).expect("hint");
    net.input(0, Input::ProbeSoon(stranger)).expect("hint");
    assert_eq!(net.node(0).metrics().probe_hints, 0);
    assert_eq!(net.node(0).metrics().probe_hints_ignored, 2);
    net.input(0, Input::ProbeSoon(member)).expect("hint");
    // Being probed (or queued) already: a second hint adds nothing.
    net.input(0, Input::ProbeSoon(member)).expect("hint");
    assert_eq!(net.node(0).metrics().probe_hints, 1);
    assert_eq!(net.node(0).metrics().probe_hints_ignored, 3);
}

#[test]
fn the_hint_queue_is_capped() {
    let n = PROBE_SOON_MAX + 4;
    let mut net = Net::new(n);
    net.join_all();
    net.run_for(Duration::from_secs(8));
    net.assert_converged();
    let others: Vec<NodeId> = (1..n).map(|i| net.node(i).me()).collect();
    for id in &others {
        net.input(0, Input::ProbeSoon(*id)).expect("hint");
    }
    // The first hint's probe starts at once (it leaves the queue); the queue then fills up.
    let m = net.node(0).metrics().clone();
    assert_eq!(m.probe_hints, 1 + PROBE_SOON_MAX as u64);
    assert_eq!(
        m.probe_hints_ignored,
        (others.len() - 1 - PROBE_SOON_MAX) as u64
    );
    assert_eq!(net.node(0).probe_soon.len(), PROBE_SOON_MAX);
    net.run_for(Duration::from_secs(10));
    assert!(
        net.node(0).probe_soon.is_empty(),
        "one hinted member per period"
    );
    net.assert_converged();
}
