//! Unit tests of the Raft machine: a tiny hand-driven cluster (instant persistence, explicit
//! message delivery) plus single-node tests of each rule.

use super::*;

const MS: u64 = 1000;

fn at(ms: u64) -> Instant {
    Instant::from_micros(ms * MS)
}

fn voters(n: u64) -> BTreeSet<VoterId> {
    (1..=n).map(VoterId).collect()
}

fn drain(raft: &mut Raft) -> Vec<Output> {
    std::iter::from_fn(|| raft.poll_output()).collect()
}

/// A hand-driven cluster: every Persist is acknowledged at once, messages wait in `wire` until
/// delivered, timers are fired by hand.
struct Net {
    nodes: BTreeMap<VoterId, Raft>,
    wire: VecDeque<(VoterId, VoterId, Message)>,
    timers: BTreeMap<(VoterId, TimerKind), Timer>,
    applied: BTreeMap<VoterId, Vec<Entry>>,
    durable: BTreeMap<VoterId, PersistedState>,
    restored: BTreeMap<VoterId, u64>,
    reads: Vec<(u64, Option<u64>)>,
    down: BTreeSet<VoterId>,
}

impl Net {
    fn new(n: u64) -> Net {
        let mut net = Net {
            nodes: BTreeMap::new(),
            wire: VecDeque::new(),
            timers: BTreeMap::new(),
            applied: BTreeMap::new(),
            durable: BTreeMap::new(),
            restored: BTreeMap::new(),
            reads: Vec::new(),
            down: BTreeSet::new(),
        };
        for id in voters(n) {
            let raft = Raft::new(Config::lan(), id, voters(n), id.0, at(0)).expect("valid");
            net.nodes.insert(id, raft);
            net.collect(id, at(0));
        }
        net
    }

    fn collect(&mut self, id: VoterId, now: Instant) {
        loop {
            let outputs = drain(self.nodes.get_mut(&id).expect("node"));
            if outputs.is_empty() {
                return;
            }
            let mut acks = Vec::new();
            for output in outputs {
                match output {
                    Output::Persist(batch) => {
                        self.durable.entry(id).or_default().apply(&batch);
                        acks.push(batch.batch);
                    }
                    Output::Send { to, msg } => self.wire.push_back((id, to, msg)),
                    Output::SetTimer { timer, .. } => {
                        self.timers.insert((id, timer.kind), timer);
                    }
                    Output::Apply(entries) => self.applied.entry(id).or_default().extend(entries),
                    Output::ReadReady { id, index } => self.reads.push((id, Some(index))),
                    Output::ReadFailed { id, .. } => self.reads.push((id, None)),
                    Output::RestoreSnapshot(snapshot) => {
                        self.restored.insert(id, snapshot.index);
                    }
                }
            }
            for batch in acks {
                let node = self.nodes.get_mut(&id).expect("node");
                node.handle(now, Input::Persisted(batch)).expect("ack");
            }
        }
    }

    fn input(&mut self, id: VoterId, now: Instant, input: Input) -> Result<(), Error> {
        let result = self.nodes.get_mut(&id).expect("node").handle(now, input);
        self.collect(id, now);
        result
    }

    fn fire(&mut self, id: VoterId, kind: TimerKind, now: Instant) {
        let timer = *self.timers.get(&(id, kind)).expect("armed");
        self.input(id, now, Input::Timer(timer)).expect("timer");
    }

    /// Delivers every message (and the answers) until the wire is empty.
    fn deliver_all(&mut self, now: Instant) {
        for _ in 0..100_000 {
            let Some((from, to, msg)) = self.wire.pop_front() else {
                return;
            };
            if self.down.contains(&to) || self.down.contains(&from) {
                continue;
            }
            let _ = self.input(to, now, Input::Message { from, msg });
        }
        panic!("message storm");
    }

    fn leader(&self) -> Option<VoterId> {
        self.nodes
            .values()
            .find(|r| r.is_leader() && !self.down.contains(&r.id()))
            .map(Raft::id)
    }

    fn elect(&mut self, id: VoterId, now: Instant) {
        self.fire(id, TimerKind::Election, now);
        self.deliver_all(now);
        assert_eq!(self.leader(), Some(id));
    }
}

#[test]
fn construction_checks_config_and_voters() {
    assert!(Raft::new(Config::lan(), VoterId(9), voters(3), 0, at(0)).is_err());
    assert!(Raft::new(Config::lan(), VoterId(1), BTreeSet::new(), 0, at(0)).is_err());
    let bad = Config {
        heartbeat_interval: Duration::ZERO,
        ..Config::lan()
    };
    assert!(Raft::new(bad, VoterId(1), voters(3), 0, at(0)).is_err());
    let mut raft = Raft::new(Config::lan(), VoterId(1), voters(3), 0, at(0)).expect("valid");
    let outputs = drain(&mut raft);
    assert!(matches!(
        outputs.as_slice(),
        [Output::SetTimer { timer: Timer { kind: TimerKind::Election, .. }, at }]
            if *at >= at_ms(300) && *at < at_ms(600)
    ));
}

fn at_ms(ms: u64) -> Instant {
    at(ms)
}

#[test]
fn election_timeouts_are_randomized_per_seed() {
    let deadline = |seed| {
        let mut raft = Raft::new(Config::lan(), VoterId(1), voters(3), seed, at(0)).expect("ok");
        match drain(&mut raft).pop() {
            Some(Output::SetTimer { at, .. }) => at,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(deadline(7), deadline(7));
    let distinct: BTreeSet<Instant> = (0..10).map(deadline).collect();
    assert!(distinct.len() > 5);
}

#[test]
fn single_node_elects_itself_and_commits_after_persisting() {
    let mut raft = Raft::new(Config::lan(), VoterId(1), voters(1), 0, at(0)).expect("ok");
    drain(&mut raft);
    let timer = Timer {
        kind: TimerKind::Election,
        token: raft.election_token,
    };
    raft.handle(at(600), Input::Timer(timer)).expect("ok");
    assert_eq!(raft.role(), Role::Candidate, "own vote not durable yet");
    let outputs = drain(&mut raft);
    let Some(Output::Persist(batch)) = outputs.iter().find(|o| matches!(o, Output::Persist(_)))
    else {
        panic!("persist: {outputs:?}");
    };
    assert_eq!(batch.hard_state.vote, Some(VoterId(1)));
    raft.handle(at(601), Input::Persisted(batch.batch))
        .expect("ok");
    assert!(raft.is_leader());
    assert_eq!(raft.commit_index(), 0, "the no-op is not durable yet");
    let outputs = drain(&mut raft);
    let noop = outputs
        .iter()
        .find_map(|o| match o {
            Output::Persist(b) => Some(b.batch),
            _ => None,
        })
        .expect("no-op persisted");
    raft.handle(at(602), Input::Persisted(noop)).expect("ok");
    assert_eq!(raft.commit_index(), 1);
    assert!(
        drain(&mut raft).iter().any(
            |o| matches!(o, Output::Apply(e) if e.len() == 1 && e[0].payload == Payload::Noop)
        )
    );
    assert!(matches!(
        raft.handle(at(603), Input::Persisted(99)),
        Err(Error::UnknownBatch { acked: 99, .. })
    ));
}

#[test]
fn three_nodes_elect_replicate_commit_and_apply_once() {
    let mut net = Net::new(3);
    net.elect(VoterId(1), at(400));
    for i in 0..10 {
        net.input(
            VoterId(1),
            at(401),
            Input::Propose {
                id: i,
                command: vec![i as u8],
            },
        )
        .expect("leader accepts");
    }
    net.deliver_all(at(402));
    net.fire(VoterId(1), TimerKind::Heartbeat, at(475));
    net.deliver_all(at(476));
    for id in voters(3) {
        let applied = &net.applied[&id];
        let indices: Vec<u64> = applied.iter().map(|e| e.index).collect();
        assert_eq!(indices, (1..=11).collect::<Vec<_>>(), "node {id:?}");
        assert_eq!(net.nodes[&id].log(), net.nodes[&VoterId(1)].log());
    }
    assert!(matches!(
        net.input(
            VoterId(2),
            at(500),
            Input::Propose {
                id: 99,
                command: vec![]
            }
        ),
        Err(Error::NotLeader {
            leader_hint: Some(VoterId(1))
        })
    ));
}

#[test]
fn proposals_are_bounded() {
    let mut net = Net::new(1);
    net.elect(VoterId(1), at(700));
    let too_big = vec![0; COMMAND_BYTES_MAX + 1];
    assert!(matches!(
        net.input(
            VoterId(1),
            at(701),
            Input::Propose {
                id: 1,
                command: too_big
            }
        ),
        Err(Error::CommandTooLarge { .. })
    ));
    assert_eq!(net.nodes[&VoterId(1)].metrics().proposals_refused, 1);
}

#[test]
fn pre_vote_keeps_a_partitioned_node_from_raising_its_term() {
    let mut net = Net::new(3);
    net.elect(VoterId(1), at(400));
    let term = net.nodes[&VoterId(1)].term();
    // Node 3 is cut off and times out repeatedly: only pre-votes, never a new term.
    net.down.insert(VoterId(3));
    for round in 0..5 {
        net.fire(VoterId(3), TimerKind::Election, at(1000 + round * 700));
        net.deliver_all(at(1000 + round * 700));
    }
    assert_eq!(net.nodes[&VoterId(3)].term(), term);
    assert!(net.nodes[&VoterId(3)].metrics().pre_votes_started >= 5);
    assert_eq!(net.nodes[&VoterId(3)].metrics().elections_started, 0);
}

#[test]
fn voters_in_lease_refuse_pre_votes_so_a_healthy_leader_stays() {
    let mut net = Net::new(3);
    net.elect(VoterId(1), at(400));
    let term = net.nodes[&VoterId(1)].term();
    net.fire(VoterId(1), TimerKind::Heartbeat, at(475));
    net.deliver_all(at(475));
    // Node 3's election timer fires while node 2 has just heard from the leader.
    net.fire(VoterId(3), TimerKind::Election, at(500));
    net.deliver_all(at(500));
    assert_eq!(net.leader(), Some(VoterId(1)));
    assert_eq!(net.nodes[&VoterId(1)].term(), term);
    assert!(net.nodes[&VoterId(2)].metrics().votes_refused_in_lease >= 1);
}

#[test]
fn check_quorum_deposes_an_isolated_leader() {
    let mut net = Net::new(3);
    net.elect(VoterId(1), at(400));
    net.down.insert(VoterId(2));
    net.down.insert(VoterId(3));
    net.fire(VoterId(1), TimerKind::Heartbeat, at(475));
    net.deliver_all(at(475));
    net.fire(VoterId(1), TimerKind::CheckQuorum, at(700));
    assert!(
        net.nodes[&VoterId(1)].is_leader(),
        "answers to its first round still count"
    );
    net.fire(VoterId(1), TimerKind::CheckQuorum, at(1000));
    assert!(!net.nodes[&VoterId(1)].is_leader());
    assert_eq!(net.nodes[&VoterId(1)].metrics().check_quorum_step_downs, 1);
}

#[test]
fn stale_timers_are_counted_and_ignored() {
    let mut net = Net::new(3);
    let stale = *net
        .timers
        .get(&(VoterId(1), TimerKind::Election))
        .expect("armed");
    net.elect(VoterId(1), at(400));
    let before = net.nodes[&VoterId(1)].term();
    net.input(VoterId(1), at(900), Input::Timer(stale))
        .expect("ignored");
    assert!(net.nodes[&VoterId(1)].is_leader());
    assert_eq!(net.nodes[&VoterId(1)].term(), before);
    assert_eq!(net.nodes[&VoterId(1)].metrics().timers_stale, 1);
}

#[test]
fn bad_messages_are_refused_and_counted() {
    let mut raft = Raft::new(Config::lan(), VoterId(1), voters(3), 0, at(0)).expect("ok");
    let hb = |entries: Vec<Entry>| Message {
        term: 1,
        context: 0,
        body: Body::AppendEntries {
            prev_index: 0,
            prev_term: 0,
            entries,
            leader_commit: 0,
        },
    };
    let gap = vec![Entry {
        term: 1,
        index: 2,
        payload: Payload::Noop,
    }];
    let future = vec![Entry {
        term: 5,
        index: 1,
        payload: Payload::Noop,
    }];
    let cases = [
        (VoterId(1), hb(vec![])),
        (VoterId(7), hb(vec![])),
        (VoterId(2), hb(gap)),
        (VoterId(2), hb(future)),
    ];
    for (from, msg) in cases {
        assert!(raft.handle(at(1), Input::Message { from, msg }).is_err());
    }
    assert_eq!(raft.metrics().messages_invalid, 4);
    assert_eq!(raft.term(), 0, "state unchanged");
    assert!(decode(b"garbage").is_err());
    assert!(decode(&[]).is_err());
    let msg = hb(vec![]);
    assert_eq!(decode(&encode(&msg).expect("encodes")), Ok(msg));
}

#[test]
fn votes_are_released_only_after_persisting_and_one_per_term() {
    let mut raft = Raft::new(Config::lan(), VoterId(1), voters(3), 0, at(0)).expect("ok");
    drain(&mut raft);
    let request = |from: u64| Input::Message {
        from: VoterId(from),
        msg: Message {
            term: 1,
            context: 0,
            body: Body::RequestVote {
                last_index: 0,
                last_term: 0,
            },
        },
    };
    raft.handle(at(1), request(2)).expect("ok");
    let outputs = drain(&mut raft);
    let batch = match outputs.iter().find(|o| matches!(o, Output::Persist(_))) {
        Some(Output::Persist(b)) => b.clone(),
        other => panic!("persist first: {other:?}"),
    };
    assert_eq!(
        batch.hard_state,
        HardState {
            term: 1,
            vote: Some(VoterId(2))
        }
    );
    assert!(
        !outputs.iter().any(|o| matches!(o, Output::Send { .. })),
        "the grant waits for the fsync"
    );
    raft.handle(at(2), Input::Persisted(batch.batch))
        .expect("ok");
    let outputs = drain(&mut raft);
    assert!(outputs.iter().any(|o| matches!(
        o,
        Output::Send {
            to: VoterId(2),
            msg: Message {
                body: Body::VoteResponse {
                    candidate: VoterId(2),
                    granted: true
                },
                ..
            }
        }
    )));
    // A second candidate in the same term is refused.
    raft.handle(at(3), request(3)).expect("ok");
    let outputs = drain(&mut raft);
    assert!(outputs.iter().any(|o| matches!(
        o,
        Output::Send {
            to: VoterId(3),
            msg: Message {
                body: Body::VoteResponse {
                    candidate: VoterId(3),
                    granted: false
                },
                ..
            }
        }
    )));
    assert_eq!(raft.hard_state().vote, Some(VoterId(2)));
}

/// Hands every persist batch back at once; the election timer armed last, if any.
fn settle(raft: &mut Raft, now: Instant) -> Option<Timer> {
    let mut election = None;
    loop {
        let outputs = drain(raft);
        if outputs.is_empty() {
            return election;
        }
        for output in outputs {
            match output {
                Output::Persist(batch) => {
                    raft.handle(now, Input::Persisted(batch.batch))
                        .expect("ack");
                }
                Output::SetTimer { timer, .. } if timer.kind == TimerKind::Election => {
                    election = Some(timer);
                }
                _ => {}
            }
        }
    }
}

#[test]
fn vote_responses_for_another_candidate_are_dropped_unread() {
    // Voter 2 campaigns; voter 3's answers to voter 1's campaign in the same terms reach it
    // (delayed across a re-election, or delivered to the wrong voter): none may count.
    let mut raft = Raft::new(Config::lan(), VoterId(2), voters(3), 0, at(0)).expect("ok");
    let timer = settle(&mut raft, at(0)).expect("an election timer");
    raft.handle(at(1000), Input::Timer(timer)).expect("timer");
    settle(&mut raft, at(1000));
    assert_eq!(raft.role(), Role::PreCandidate);
    let answer = |term, candidate, pre: bool| Input::Message {
        from: VoterId(3),
        msg: Message {
            term,
            context: 0,
            body: if pre {
                Body::PreVoteResponse {
                    candidate: VoterId(candidate),
                    granted: true,
                }
            } else {
                Body::VoteResponse {
                    candidate: VoterId(candidate),
                    granted: true,
                }
            },
        },
    };
    // A pre-vote grant for voter 1 neither starts voter 2's election nor moves its term.
    assert_eq!(
        raft.handle(at(1001), answer(1, 1, true)),
        Err(Error::Misdirected(VoterId(1)))
    );
    settle(&mut raft, at(1001));
    assert_eq!((raft.role(), raft.term()), (Role::PreCandidate, 0));
    // Its own pre-vote grant does: voter 2 is a candidate in term 1.
    assert_eq!(raft.handle(at(1002), answer(1, 2, true)), Ok(()));
    settle(&mut raft, at(1002));
    assert_eq!((raft.role(), raft.term()), (Role::Candidate, 1));
    // A vote for voter 1 in term 1 is not a vote for voter 2, and one from a later term does
    // not even move its term (the response is dropped before its term is read).
    assert_eq!(
        raft.handle(at(1003), answer(1, 1, false)),
        Err(Error::Misdirected(VoterId(1)))
    );
    assert_eq!(
        raft.handle(at(1003), answer(5, 1, false)),
        Err(Error::Misdirected(VoterId(1)))
    );
    settle(&mut raft, at(1003));
    assert_eq!((raft.role(), raft.term()), (Role::Candidate, 1));
    assert_eq!(raft.metrics().responses_misdirected, 3);
    // Voter 3's vote for voter 2 elects it.
    assert_eq!(raft.handle(at(1004), answer(1, 2, false)), Ok(()));
    settle(&mut raft, at(1004));
    assert_eq!((raft.role(), raft.term()), (Role::Leader, 1));
}

#[test]
fn vote_responses_name_the_candidate_they_answer() {
    let mut raft = Raft::new(Config::lan(), VoterId(1), voters(3), 0, at(0)).expect("ok");
    settle(&mut raft, at(0));
    for (from, body) in [
        (
            2,
            Body::PreVote {
                last_index: 0,
                last_term: 0,
            },
        ),
        (
            3,
            Body::RequestVote {
                last_index: 0,
                last_term: 0,
            },
        ),
    ] {
        let msg = Message {
            term: 1,
            context: 0,
            body,
        };
        raft.handle(
            at(1),
            Input::Message {
                from: VoterId(from),
                msg,
            },
        )
        .expect("ok");
    }
    let mut answered = Vec::new();
    for _ in 0..4 {
        for output in drain(&mut raft) {
            match output {
                Output::Send { to, msg } => answered.push((to, msg.body.addressee())),
                Output::Persist(batch) => {
                    raft.handle(at(1), Input::Persisted(batch.batch))
                        .expect("ack");
                }
                _ => {}
            }
        }
    }
    answered.sort();
    assert_eq!(
        answered,
        [
            (VoterId(2), Some(VoterId(2))),
            (VoterId(3), Some(VoterId(3)))
        ]
    );
}

#[test]
fn vote_refused_to_a_candidate_with_an_older_log() {
    let mut raft = Raft::restore(
        Config::lan(),
        VoterId(1),
        voters(3),
        PersistedState {
            snapshot: None,
            hard_state: HardState {
                term: 2,
                vote: None,
            },
            entries: vec![
                Entry {
                    term: 1,
                    index: 1,
                    payload: Payload::Noop,
                },
                Entry {
                    term: 2,
                    index: 2,
                    payload: Payload::Noop,
                },
            ],
        },
        0,
        at(0),
    )
    .expect("ok");
    drain(&mut raft);
    for (last_index, last_term) in [(5, 1), (1, 2)] {
        let msg = Message {
            term: 3,
            context: 0,
            body: Body::RequestVote {
                last_index,
                last_term,
            },
        };
        raft.handle(
            at(1),
            Input::Message {
                from: VoterId(2),
                msg,
            },
        )
        .expect("ok");
        assert_eq!(raft.hard_state().vote, None);
    }
    assert_eq!(
        raft.term(),
        3,
        "the term is adopted even when the vote is refused"
    );
}

#[test]
fn follower_resolves_conflicts_and_acks_after_persisting() {
    // Follower 1 holds 1:1 2:1 3:2 4:2 (term 2 entries from a deposed leader).
    let entries: Vec<Entry> = [1, 1, 2, 2]
        .iter()
        .enumerate()
        .map(|(i, &term)| Entry {
            term,
            index: i as u64 + 1,
            payload: Payload::Noop,
        })
        .collect();
    let mut raft = Raft::restore(
        Config::lan(),
        VoterId(1),
        voters(3),
        PersistedState {
            snapshot: None,
            hard_state: HardState {
                term: 3,
                vote: None,
            },
            entries,
        },
        0,
        at(0),
    )
    .expect("ok");
    drain(&mut raft);
    let append = |prev_index, prev_term, entries: Vec<Entry>| Input::Message {
        from: VoterId(2),
        msg: Message {
            term: 3,
            context: 0,
            body: Body::AppendEntries {
                prev_index,
                prev_term,
                entries,
                leader_commit: 3,
            },
        },
    };
    // The leader (log 1:1 2:1 3:3) probes at prev 3 with term 3: conflict, hint = first index
    // of term 2.
    raft.handle(at(1), append(3, 3, vec![])).expect("ok");
    let outputs = drain(&mut raft);
    assert!(
        outputs.iter().any(|o| matches!(
            o,
            Output::Send {
                msg: Message {
                    body: Body::AppendResponse {
                        success: false,
                        index: 3,
                        ..
                    },
                    ..
                },
                ..
            }
        )),
        "{outputs:?}"
    );
    let e3 = Entry {
        term: 3,
        index: 3,
        payload: Payload::Command {
            id: 1,
            bytes: vec![1],
        },
    };
    raft.handle(at(2), append(2, 1, vec![e3.clone()]))
        .expect("ok");
    assert_eq!(raft.last_index(), 3);
    assert_eq!(raft.entry(3), Some(&e3));
    assert_eq!(raft.metrics().entries_truncated, 2);
    assert_eq!(raft.commit_index(), 3);
    let outputs = drain(&mut raft);
    let persist = outputs
        .iter()
        .position(|o| matches!(o, Output::Persist(b) if b.first_index == 3));
    assert!(persist.is_some(), "{outputs:?}");
    assert!(
        !outputs.iter().any(|o| matches!(o, Output::Send { .. })),
        "ack waits"
    );
    let batch = raft.batch_issued;
    raft.handle(at(3), Input::Persisted(batch)).expect("ok");
    assert!(drain(&mut raft).iter().any(|o| matches!(
        o,
        Output::Send {
            msg: Message {
                body: Body::AppendResponse {
                    success: true,
                    index: 3,
                    ..
                },
                ..
            },
            ..
        }
    )));
}

#[test]
fn leader_backs_off_and_repairs_a_divergent_follower() {
    let mut net = Net::new(3);
    net.elect(VoterId(1), at(400));
    // Node 3 misses a run of entries.
    net.down.insert(VoterId(3));
    for i in 0..100 {
        net.input(
            VoterId(1),
            at(401),
            Input::Propose {
                id: i,
                command: vec![1],
            },
        )
        .expect("ok");
    }
    net.deliver_all(at(402));
    net.down.clear();
    for tick in 0..10 {
        net.fire(VoterId(1), TimerKind::Heartbeat, at(475 + tick * 75));
        net.deliver_all(at(475 + tick * 75));
    }
    assert_eq!(net.nodes[&VoterId(3)].log(), net.nodes[&VoterId(1)].log());
    assert_eq!(net.nodes[&VoterId(3)].commit_index(), 101);
    assert_eq!(net.applied[&VoterId(3)].len(), 101);
}

#[test]
fn restart_from_persisted_state_keeps_term_vote_and_log() {
    let mut net = Net::new(3);
    net.elect(VoterId(1), at(400));
    net.input(
        VoterId(1),
        at(401),
        Input::Propose {
            id: 1,
            command: vec![7],
        },
    )
    .expect("ok");
    net.deliver_all(at(402));
    let durable = net.durable[&VoterId(2)].clone();
    let restored = Raft::restore(
        Config::lan(),
        VoterId(2),
        voters(3),
        durable.clone(),
        5,
        at(500),
    )
    .expect("restores");
    assert_eq!(restored.hard_state(), durable.hard_state);
    assert_eq!(restored.log(), net.nodes[&VoterId(2)].log());
    assert_eq!(restored.commit_index(), 0);
    let mut broken = durable;
    broken.entries.swap(0, 1);
    assert!(Raft::restore(Config::lan(), VoterId(2), voters(3), broken, 5, at(500)).is_err());
}

#[test]
fn batching_and_pipelining_are_bounded() {
    let mut net = Net::new(3);
    net.elect(VoterId(1), at(400));
    // Nothing is delivered: the leader may only put inflight_max messages on each link.
    for i in 0..2000u64 {
        net.input(
            VoterId(1),
            at(401),
            Input::Propose {
                id: i,
                command: vec![0; 10],
            },
        )
        .expect("ok");
    }
    let to_2: Vec<&Message> = net
        .wire
        .iter()
        .filter(|(_, to, m)| {
            *to == VoterId(2)
                && matches!(&m.body, Body::AppendEntries { entries, .. } if !entries.is_empty())
        })
        .map(|(_, _, m)| m)
        .collect();
    assert!(
        to_2.len() <= Config::lan().inflight_max + 1,
        "{}",
        to_2.len()
    );
    for m in &to_2 {
        let Body::AppendEntries { entries, .. } = &m.body else {
            unreachable!()
        };
        assert!(entries.len() <= ENTRIES_PER_MESSAGE_MAX);
    }
    net.deliver_all(at(402));
    for tick in 0..60 {
        net.fire(VoterId(1), TimerKind::Heartbeat, at(475 + tick * 75));
        net.deliver_all(at(475 + tick * 75));
    }
    assert_eq!(net.nodes[&VoterId(2)].commit_index(), 2001);
    assert!(
        net.nodes[&VoterId(1)].metrics().messages_sent < 2000,
        "entries were batched"
    );
}

/// Raft's figure 8: a leader must not commit an entry of an earlier term by counting replicas;
/// it commits it only together with an entry of its own term.
#[test]
fn old_term_entries_commit_only_with_a_current_term_entry() {
    let config = Config {
        entries_per_message_max: 1,
        ..Config::lan()
    };
    let entry = |term, index| Entry {
        term,
        index,
        payload: Payload::Noop,
    };
    let state = |entries: Vec<Entry>| PersistedState {
        snapshot: None,
        hard_state: HardState {
            term: 2,
            vote: None,
        },
        entries,
    };
    let mut net = Net::new(3);
    for id in voters(3) {
        let log = if id == VoterId(1) {
            vec![entry(1, 1), entry(2, 2)]
        } else {
            vec![entry(1, 1)]
        };
        let raft = Raft::restore(config.clone(), id, voters(3), state(log), id.0, at(0))
            .expect("restores");
        net.nodes.insert(id, raft);
        net.collect(id, at(0));
    }
    net.fire(VoterId(1), TimerKind::Election, at(400));
    // Deliver one message at a time until a follower holds index 2 (term 2) but not index 3.
    for _ in 0..1000 {
        let replicated = net.nodes[&VoterId(2)].last_index() == 2;
        if replicated {
            break;
        }
        let Some((from, to, msg)) = net.wire.pop_front() else {
            panic!("ran dry before replicating index 2");
        };
        let _ = net.input(to, at(401), Input::Message { from, msg });
    }
    assert!(net.nodes[&VoterId(1)].is_leader());
    assert_eq!(net.nodes[&VoterId(1)].term(), 3);
    // Let node 2's acknowledgement reach the leader, nothing else.
    let acks: Vec<_> = net
        .wire
        .iter()
        .filter(|(f, _, _)| *f == VoterId(2))
        .cloned()
        .collect();
    net.wire.clear();
    for (from, to, msg) in acks {
        let _ = net.input(to, at(402), Input::Message { from, msg });
    }
    assert_eq!(
        net.nodes[&VoterId(1)].commit_index(),
        0,
        "index 2 is from term 2"
    );
    net.deliver_all(at(403));
    net.fire(VoterId(1), TimerKind::Heartbeat, at(475));
    net.deliver_all(at(476));
    assert_eq!(net.nodes[&VoterId(1)].commit_index(), 3);
}

#[test]
fn compaction_and_install_snapshot_bring_a_lagging_follower_back() {
    let mut net = Net::new(3);
    net.elect(VoterId(1), at(400));
    net.down.insert(VoterId(3));
    for i in 0..50 {
        net.input(
            VoterId(1),
            at(401),
            Input::Propose {
                id: i,
                command: vec![1],
            },
        )
        .expect("ok");
    }
    net.deliver_all(at(402));
    let leader = VoterId(1);
    let applied = net.nodes[&leader].applied_index();
    assert_eq!(applied, 51);
    assert!(matches!(
        net.input(
            leader,
            at(403),
            Input::Compact {
                index: applied + 1,
                data: vec![]
            }
        ),
        Err(Error::BadCompaction { .. })
    ));
    net.input(
        leader,
        at(403),
        Input::Compact {
            index: 40,
            data: b"state@40".to_vec(),
        },
    )
    .expect("compacts");
    assert_eq!(net.nodes[&leader].first_index(), 41);
    assert_eq!(net.nodes[&leader].entry(40), None);
    assert_eq!(net.nodes[&leader].entry(41).map(|e| e.index), Some(41));
    let durable = net.durable[&leader].clone();
    assert_eq!(durable.snapshot.as_ref().map(|s| s.index), Some(40));
    assert_eq!(durable.entries.first().map(|e| e.index), Some(41));
    // The follower comes back: it gets the snapshot, then the rest of the log.
    net.down.clear();
    for tick in 0..10 {
        net.fire(leader, TimerKind::Heartbeat, at(475 + tick * 75));
        net.deliver_all(at(475 + tick * 75));
    }
    let follower = &net.nodes[&VoterId(3)];
    assert_eq!(net.restored.get(&VoterId(3)), Some(&40));
    assert_eq!(
        follower.snapshot().map(|s| s.data.clone()),
        Some(b"state@40".to_vec())
    );
    assert_eq!(follower.commit_index(), 51);
    assert_eq!(follower.log(), net.nodes[&leader].log());
    assert!(net.nodes[&leader].metrics().snapshots_sent >= 1);
    // A restart from the follower's durable state starts at the snapshot.
    let restored = Raft::restore(
        Config::lan(),
        VoterId(3),
        voters(3),
        net.durable[&VoterId(3)].clone(),
        1,
        at(2000),
    )
    .expect("restores");
    assert_eq!(restored.first_index(), 41);
    assert_eq!(restored.applied_index(), 40);
    assert_eq!(restored.last_index(), 51);
}

#[test]
fn read_index_waits_for_a_quorum_and_fails_on_step_down() {
    let mut net = Net::new(3);
    let leader = VoterId(1);
    net.elect(leader, at(400));
    net.input(
        leader,
        at(401),
        Input::Propose {
            id: 1,
            command: vec![1],
        },
    )
    .expect("ok");
    net.deliver_all(at(402));
    assert!(matches!(
        net.input(VoterId(2), at(403), Input::ReadIndex { id: 7 }),
        Err(Error::NotLeader {
            leader_hint: Some(VoterId(1))
        })
    ));
    net.input(leader, at(403), Input::ReadIndex { id: 8 })
        .expect("ok");
    assert!(net.reads.is_empty(), "not before a quorum answered");
    net.deliver_all(at(404));
    assert_eq!(net.reads, vec![(8, Some(2))]);
    // Cut off, the leader cannot confirm; check-quorum ends its leadership and the read fails.
    net.down.insert(VoterId(2));
    net.down.insert(VoterId(3));
    net.input(leader, at(405), Input::ReadIndex { id: 9 })
        .expect("ok");
    net.deliver_all(at(405));
    net.fire(leader, TimerKind::CheckQuorum, at(700));
    net.fire(leader, TimerKind::CheckQuorum, at(1000));
    assert_eq!(net.reads, vec![(8, Some(2)), (9, None)]);
}
