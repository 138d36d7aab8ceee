//! SWIM group membership with Lifeguard's suspicion, as a sans-IO state machine.
//!
//! Owns: this node's view of the cluster (every member's incarnation and state), the probe
//! cycle (randomized round-robin ping, ping-req through k members, suspicion, refutation),
//! dissemination (updates piggybacked with a retransmit budget ~ log n, plus gossip rounds),
//! push-pull anti-entropy with one random member, joining through seeds and graceful leave.
//!
//! Inputs arrive through [`Membership::handle`]: datagrams, timers (handed back exactly as they
//! were requested, stale tokens are counted and ignored) and commands. Outputs are drained with
//! [`Membership::poll_output`]: datagrams to send, timers to arm, and membership [`Event`]s for
//! the machines built on top (consensus, file system, scheduler).
//!
//! Must never: perform I/O, read a clock, use global randomness, panic on peer bytes, or build a
//! datagram larger than `Config::datagram_bytes_max`.

mod config;
mod gossip;
mod msg;
mod traffic;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use rand::SeedableRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use config::{Config, ConfigError};
pub use gossip::QUEUE_ITEMS_MAX;
pub use msg::{MemberState, Message, NodeId, Packet, Update};
pub use traffic::{Count, Traffic};

use crate::time::Instant;
use crate::wire::{self, Datagram, WireError};
use gossip::BroadcastQueue;
use traffic::Purpose;

/// Most datagrams a seed sends to answer one join (the whole member table, chunked).
pub const JOIN_REPLY_DATAGRAMS_MAX: usize = 128;
/// Most indirect probes this node relays at once for others; more are dropped and counted.
pub const RELAYS_MAX: usize = 256;
/// Most accusers answered directly after one input (the rest learn through gossip).
pub const ACCUSERS_MAX: usize = 16;
/// Most seed addresses kept from a join command.
pub const SEEDS_MAX: usize = 64;
/// Most members waiting to be probed out of turn ([`Input::ProbeSoon`]); more are dropped and
/// counted (they are still probed in their round-robin turn).
pub const PROBE_SOON_MAX: usize = 16;

/// Identifies one armed timer; a timer whose token is no longer current is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerToken(u64);

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// Start the next probe (and judge the previous one).
    Probe,
    /// The direct probe's ack is late: ask `indirect_checks` members to probe.
    ProbeTimeout,
    /// Send pending updates to a few random members.
    Gossip,
    /// Anti-entropy with one random member.
    PushPull,
    /// Retry joining through the seeds.
    JoinRetry,
    /// The suspicion of this member ran out.
    Suspicion(NodeId),
    /// The graceful leave has lingered long enough.
    LeaveDone,
}

/// A timer request, handed back to [`Membership::handle`] as [`Input::Timer`] when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timer {
    /// What it is for.
    pub kind: TimerKind,
    /// Which arming of that kind it belongs to.
    pub token: TimerToken,
}

/// Everything that can happen to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<'a> {
    /// A datagram arrived from `from`.
    Datagram {
        /// Source address as seen by the socket.
        from: SocketAddr,
        /// The raw bytes; anything at all.
        bytes: &'a [u8],
    },
    /// A timer requested through [`Output::SetTimer`] fired.
    Timer(Timer),
    /// Join the cluster through these seed addresses (retried until a member answers).
    Join {
        /// Addresses of any existing members.
        seeds: Vec<SocketAddr>,
    },
    /// Leave the cluster gracefully; [`Event::SelfLeft`] follows after the linger time.
    Leave,
    /// A sign from outside the protocol that this member may be gone (a connection it held
    /// to this node closed): probe it next, out of its round-robin turn, and at once unless
    /// another probe still waits for its answer (that one is never cut short). A hint is only
    /// ever a reason to probe: the member is suspected only if the probe goes unanswered, so a
    /// wrong hint costs one ping. At most one probe period is started early per
    /// `probe_interval`, so hints cannot more than double this node's probe rate.
    ProbeSoon(NodeId),
}

/// A change in this node's view, for the machines built on membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// A member became known (or came back with a higher incarnation after being declared dead).
    Joined(NodeId),
    /// A member is suspected.
    Suspect(NodeId),
    /// A suspected member refuted the suspicion.
    Refuted(NodeId),
    /// A member was declared failed.
    Failed(NodeId),
    /// A member left gracefully.
    Left(NodeId),
    /// This node finished its graceful leave; the driver may stop it.
    SelfLeft,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this datagram.
    Send {
        /// Destination address.
        to: SocketAddr,
        /// The encoded datagram, at most `Config::datagram_bytes_max` bytes.
        bytes: Vec<u8>,
    },
    /// Hand `timer` back through [`Input::Timer`] at `at` (or as soon as possible after).
    SetTimer {
        /// The timer to hand back.
        timer: Timer,
        /// When.
        at: Instant,
    },
    /// Report a membership change.
    Event(Event),
}

/// Why an input was not processed. Every variant leaves the state unchanged except for counters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The datagram did not decode; dropped and counted.
    #[error("undecodable datagram: {0}")]
    Decode(#[from] WireError),
    /// The packet was meant for another generation of the node at this address; dropped.
    #[error("packet meant for {0}, not this node")]
    Misdirected(NodeId),
    /// The packet claims to come from this very node; dropped.
    #[error("packet claims to come from this node")]
    FromSelf,
    /// This node has left the cluster and processes nothing more.
    #[error("this node has left the cluster")]
    Left,
}

/// One member as this node sees it (for listings and checkers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Identity.
    pub id: NodeId,
    /// Highest incarnation seen.
    pub incarnation: u64,
    /// Current state.
    pub state: MemberState,
    /// When this node last changed the member's state (its local time).
    pub since: Instant,
}

/// Counters for everything the machine dropped, sent and decided.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Datagrams handed in.
    pub datagrams_received: u64,
    /// Bytes handed in.
    pub bytes_received: u64,
    /// Datagrams emitted.
    pub datagrams_sent: u64,
    /// Bytes emitted.
    pub bytes_sent: u64,
    /// Datagrams that did not decode.
    pub decode_errors: u64,
    /// Packets addressed to another generation, or claiming to be from this node.
    pub misdirected: u64,
    /// Timers that fired after being superseded.
    pub stale_timers: u64,
    /// Acks that matched no probe and no relay.
    pub unmatched_acks: u64,
    /// Probes started.
    pub probes: u64,
    /// Probes that escalated to ping-req.
    pub indirect_probes: u64,
    /// Suspicions this node raised from its own failed probes.
    pub suspicions_raised: u64,
    /// Members this node declared dead when their suspicion timed out.
    pub failures_declared: u64,
    /// Times this node refuted a suspicion (or death) about itself.
    pub refutations: u64,
    /// Ping-reqs dropped because too many relays were pending.
    pub relays_dropped: u64,
    /// Our own messages that failed to encode (a bug if ever non-zero).
    pub encode_errors: u64,
    /// Updates dropped because the dissemination queue was full.
    pub broadcasts_dropped: u64,
    /// Direct ping retries sent after the probe timeout.
    pub probe_retries: u64,
    /// Probe periods added to a silent target's probe because this node's health was poor.
    pub probe_extensions: u64,
    /// Probes whose target answered during an extension (each a suspicion avoided).
    pub probe_extensions_answered: u64,
    /// [`Input::ProbeSoon`] hints taken (the member queued for an early probe).
    pub probe_hints: u64,
    /// Hints ignored: not a live member, already queued or being probed, the queue full, or
    /// this node leaving.
    pub probe_hints_ignored: u64,
    /// Probe periods started early for a hinted member.
    pub early_probes: u64,
    /// Deaths heard from others and not adopted, because the member itself had sent us a
    /// datagram too recently for the verdict to be about a crash (the accuser is cut off from
    /// it, not dead); the verdict was forwarded to the member, which refutes it.
    pub deaths_overruled: u64,
    /// Sent traffic by kind (adds up to `datagrams_sent` / `bytes_sent`).
    pub traffic: Traffic,
}

#[derive(Debug, Clone)]
struct Suspicion {
    started: Instant,
    /// Distinct members that suspected this incarnation (the first is the original suspecter).
    confirmers: BTreeSet<NodeId>,
    first: NodeId,
    token: TimerToken,
}

#[derive(Debug, Clone)]
struct Entry {
    incarnation: u64,
    state: MemberState,
    since: Instant,
    /// Who declared it dead (for re-dissemination in syncs).
    declared_by: Option<NodeId>,
    suspicion: Option<Suspicion>,
    /// When this node last received a datagram from the member itself.
    heard: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    target: NodeId,
    seq: u64,
    acked: bool,
    /// The current retry timer.
    token: TimerToken,
    /// Direct pings sent so far, the first included.
    pings: u32,
    /// Direct pings that had been sent when the ack arrived (1: the first one was answered
    /// before any retry).
    pings_at_ack: u32,
    /// When the next probe tick fires: retries are not scheduled past it.
    period_end: Instant,
    /// Extra probe periods left before a silent target is suspected (local health).
    extensions_left: u32,
    /// Extra probe periods granted when the probe started.
    extensions_granted: u32,
    /// Whether this period's ping-req wave went out.
    waved: bool,
}

#[derive(Debug, Clone, Copy)]
struct Relay {
    origin: NodeId,
    origin_seq: u64,
    expires: Instant,
}

/// One node's SWIM state machine. See the module docs.
#[derive(Debug)]
pub struct Membership {
    config: Config,
    me: NodeId,
    incarnation: u64,
    rng: ChaCha8Rng,
    members: BTreeMap<NodeId, Entry>,
    /// Live members other than this node, sorted; rebuilt when membership changes.
    live: Vec<NodeId>,
    probe_order: Vec<NodeId>,
    probe_cursor: usize,
    probe: Option<Probe>,
    /// Hinted members, probed before the round-robin order (oldest hint first).
    probe_soon: VecDeque<NodeId>,
    /// When a probe period was last started early for a hint.
    early_probe_at: Option<Instant>,
    next_seq: u64,
    relays: BTreeMap<u64, Relay>,
    broadcasts: BroadcastQueue,
    seeds: Vec<SocketAddr>,
    next_token: u64,
    probe_token: TimerToken,
    gossip_token: TimerToken,
    push_pull_token: TimerToken,
    join_token: TimerToken,
    leave_token: TimerToken,
    /// Members that accused this node in the input being handled; answered, then cleared.
    accusers: BTreeSet<NodeId>,
    leaving: bool,
    left: bool,
    sync_cursor: usize,
    /// Lifeguard's local health score, 0 (healthy) ..= `Config::awareness_max`.
    awareness: u32,
    /// Why the packet being sent is sent (for [`Metrics::traffic`] only).
    purpose: Purpose,
    outputs: VecDeque<Output>,
    metrics: Metrics,
}

impl Membership {
    /// A node that knows only itself. Arms its periodic timers at random phases; call
    /// [`Membership::handle`] with [`Input::Join`] to contact seeds.
    pub fn new(
        config: Config,
        me: NodeId,
        rng_seed: u64,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut machine = Membership {
            config,
            me,
            incarnation: 0,
            rng: ChaCha8Rng::seed_from_u64(rng_seed),
            members: BTreeMap::new(),
            live: Vec::new(),
            probe_order: Vec::new(),
            probe_cursor: 0,
            probe: None,
            probe_soon: VecDeque::new(),
            early_probe_at: None,
            next_seq: 0,
            relays: BTreeMap::new(),
            broadcasts: BroadcastQueue::default(),
            seeds: Vec::new(),
            next_token: 0,
            probe_token: TimerToken(0),
            gossip_token: TimerToken(0),
            push_pull_token: TimerToken(0),
            join_token: TimerToken(0),
            leave_token: TimerToken(0),
            accusers: BTreeSet::new(),
            leaving: false,
            left: false,
            sync_cursor: 0,
            awareness: 0,
            purpose: Purpose::Direct,
            outputs: VecDeque::new(),
            metrics: Metrics::default(),
        };
        let probe_phase = machine.jitter(machine.config.probe_interval);
        machine.probe_token = machine.arm(TimerKind::Probe, now + probe_phase);
        let gossip_phase = machine.jitter(machine.config.gossip_interval);
        machine.gossip_token = machine.arm(TimerKind::Gossip, now + gossip_phase);
        let sync_phase = machine.jitter(machine.config.push_pull_interval);
        machine.push_pull_token = machine.arm(TimerKind::PushPull, now + sync_phase);
        Ok(machine)
    }

    // ----- getters -----

    /// This node's identity.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// This node's current incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether a graceful leave has started.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// Every member this node knows about, itself included, sorted by id; dead and left
    /// members appear until their tombstones expire.
    pub fn members(&self) -> Vec<Member> {
        let mut out: Vec<Member> = self
            .members
            .iter()
            .map(|(&id, e)| Member {
                id,
                incarnation: e.incarnation,
                state: e.state,
                since: e.since,
            })
            .collect();
        let me = Member {
            id: self.me,
            incarnation: self.incarnation,
            state: if self.leaving {
                MemberState::Left
            } else {
                MemberState::Alive
            },
            since: Instant::ZERO,
        };
        let at = out.partition_point(|m| m.id < self.me);
        out.insert(at, me);
        out
    }

    /// The live view: alive and suspect members, this node included unless it is leaving.
    pub fn live_view(&self) -> BTreeSet<NodeId> {
        let mut view: BTreeSet<NodeId> = self.live.iter().copied().collect();
        if !self.leaving {
            view.insert(self.me);
        }
        view
    }

    /// The state of `id` in this node's view, if known.
    pub fn state_of(&self, id: NodeId) -> Option<MemberState> {
        if id == self.me {
            return Some(if self.leaving {
                MemberState::Left
            } else {
                MemberState::Alive
            });
        }
        self.members.get(&id).map(|e| e.state)
    }

    /// Number of live members including this node: the `n` that timeouts scale with.
    pub fn cluster_size(&self) -> usize {
        self.live.len() + 1
    }

    /// Lifeguard's local health score: 0 when this node's probes are answered at the first
    /// ping, up to `Config::awareness_max` when it keeps missing acks (its own links, or the
    /// network, lose datagrams). A poor score makes it probe a silent member longer before
    /// accusing it ([`Config::probe_extensions`]).
    pub fn awareness(&self) -> u32 {
        self.awareness
    }

    /// Updates waiting to be disseminated.
    pub fn pending_broadcasts(&self) -> usize {
        self.broadcasts.len()
    }

    // ----- inputs -----

    /// Feeds one input. Outputs are queued for [`Membership::poll_output`].
    pub fn handle(&mut self, now: Instant, input: Input<'_>) -> Result<(), Error> {
        if self.left {
            return Err(Error::Left);
        }
        let result = match input {
            Input::Datagram { from, bytes } => self.handle_datagram(now, from, bytes),
            Input::Timer(timer) => {
                self.handle_timer(now, timer);
                Ok(())
            }
            Input::Join { seeds } => {
                self.handle_join_command(now, seeds);
                Ok(())
            }
            Input::Leave => {
                self.handle_leave_command(now);
                Ok(())
            }
            Input::ProbeSoon(node) => {
                self.handle_probe_hint(now, node);
                Ok(())
            }
        };
        self.check_invariants();
        result
    }

    /// The next thing the driver must do, in the order it was decided.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn handle_datagram(
        &mut self,
        now: Instant,
        _from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), Error> {
        self.metrics.datagrams_received += 1;
        self.metrics.bytes_received += bytes.len() as u64;
        let packet = match wire::decode_datagram(bytes) {
            Ok(Datagram::Membership(packet)) => packet,
            Err(e) => {
                self.metrics.decode_errors += 1;
                return Err(Error::Decode(e));
            }
        };
        if let Some(to) = packet.to
            && to != self.me
        {
            self.metrics.misdirected += 1;
            return Err(Error::Misdirected(to));
        }
        if packet.from == self.me {
            self.metrics.misdirected += 1;
            return Err(Error::FromSelf);
        }
        if packet.gossip.len() > self.config.datagram_bytes_max {
            // Cannot happen for a datagram that decoded within the size cap; kept as a guard.
            self.metrics.decode_errors += 1;
            return Err(Error::Decode(WireError::Malformed(
                "too many updates".into(),
            )));
        }
        if let Some(entry) = self.members.get_mut(&packet.from) {
            entry.heard = Some(now);
        }
        // Updates first: a refutation must count before the message is judged.
        for update in &packet.gossip {
            self.apply(now, *update);
        }
        self.handle_message(now, packet.from, packet.message);
        if !self.accusers.is_empty() {
            // Whoever passed an accusation on holds it too: answer it as well.
            self.accusers.insert(packet.from);
            self.answer_accusers();
        }
        Ok(())
    }

    /// Sends this node's current `Alive` record to everyone who accused it in the input just
    /// handled, whether the accusation was current (and refuted) or already stale: a member that
    /// missed the refutation would otherwise declare this node dead at an old incarnation.
    fn answer_accusers(&mut self) {
        let alive = Update::Alive {
            node: self.me,
            incarnation: self.incarnation,
        };
        let accusers = std::mem::take(&mut self.accusers);
        for accuser in accusers {
            if accuser != self.me {
                self.send(accuser.addr, Some(accuser), Message::Gossip, &[alive]);
            }
        }
    }

    fn handle_message(&mut self, now: Instant, from: NodeId, message: Message) {
        match message {
            Message::Ping { seq } => {
                let extra = self.about_peer(from);
                self.send(from.addr, Some(from), Message::Ack { seq }, &extra);
            }
            Message::Ack { seq } => self.handle_ack(seq),
            Message::PingReq { seq, target } => self.handle_ping_req(now, from, seq, target),
            Message::Join => self.handle_join_request(now, from),
            Message::Sync { entries, reply } => {
                for update in entries {
                    self.apply(now, update);
                }
                if !reply && !self.leaving {
                    self.send_sync(now, from, true);
                }
            }
            Message::Gossip => {}
        }
    }

    fn handle_ack(&mut self, seq: u64) {
        if let Some(probe) = self.probe.as_mut()
            && probe.seq == seq
        {
            if !probe.acked {
                probe.acked = true;
                probe.pings_at_ack = probe.pings;
            }
            return;
        }
        if let Some(relay) = self.relays.remove(&seq) {
            self.send(
                relay.origin.addr,
                Some(relay.origin),
                Message::Ack {
                    seq: relay.origin_seq,
                },
                &[],
            );
            return;
        }
        self.metrics.unmatched_acks += 1;
    }

    fn handle_ping_req(&mut self, now: Instant, origin: NodeId, origin_seq: u64, target: NodeId) {
        if target == self.me {
            // Someone asks us to probe ourselves: answer directly.
            self.send(
                origin.addr,
                Some(origin),
                Message::Ack { seq: origin_seq },
                &[],
            );
            return;
        }
        if self.relays.len() >= RELAYS_MAX {
            self.metrics.relays_dropped += 1;
            return;
        }
        let seq = self.next_seq();
        let expires = now + self.config.probe_interval;
        self.relays.insert(
            seq,
            Relay {
                origin,
                origin_seq,
                expires,
            },
        );
        let extra = self.about_peer(target);
        self.send(target.addr, Some(target), Message::Ping { seq }, &extra);
    }

    fn handle_join_request(&mut self, now: Instant, joiner: NodeId) {
        if self.leaving {
            return;
        }
        // The join itself announces the joiner at incarnation 0; a higher incarnation it holds
        // reaches us through its own gossip.
        self.apply(
            now,
            Update::Alive {
                node: joiner,
                incarnation: 0,
            },
        );
        // Answer with the whole table, chunked into datagrams.
        let mut records = vec![Update::Alive {
            node: self.me,
            incarnation: self.incarnation,
        }];
        records.extend(self.members.iter().map(|(&id, e)| self.record_of(id, e)));
        let budget = self.config.datagram_bytes_max - PACKET_OVERHEAD_BYTES;
        let mut chunk: Vec<Update> = Vec::new();
        let mut chunk_bytes = 0;
        let mut sent = 0;
        for record in records {
            let len = wire::encoded_len(&record).unwrap_or(usize::MAX);
            if chunk_bytes + len > budget && !chunk.is_empty() {
                let entries = std::mem::take(&mut chunk);
                self.send_plain(
                    joiner.addr,
                    Some(joiner),
                    Message::Sync {
                        entries,
                        reply: true,
                    },
                );
                chunk_bytes = 0;
                sent += 1;
                if sent >= JOIN_REPLY_DATAGRAMS_MAX {
                    return;
                }
            }
            chunk_bytes += len;
            chunk.push(record);
        }
        if !chunk.is_empty() {
            self.send_plain(
                joiner.addr,
                Some(joiner),
                Message::Sync {
                    entries: chunk,
                    reply: true,
                },
            );
        }
    }

    fn handle_join_command(&mut self, now: Instant, seeds: Vec<SocketAddr>) {
        self.seeds = seeds
            .into_iter()
            .filter(|&s| s != self.me.addr)
            .take(SEEDS_MAX)
            .collect();
        self.seeds.sort();
        self.seeds.dedup();
        // Announce ourselves to whoever we talk to.
        self.broadcasts.push(Update::Alive {
            node: self.me,
            incarnation: self.incarnation,
        });
        self.send_join_requests(now);
    }

    fn send_join_requests(&mut self, now: Instant) {
        if self.seeds.is_empty() || self.leaving {
            return;
        }
        let seeds = self.seeds.clone();
        for seed in seeds {
            self.send_plain(seed, None, Message::Join);
        }
        self.join_token = self.arm(TimerKind::JoinRetry, now + self.config.join_retry_interval);
    }

    fn handle_leave_command(&mut self, now: Instant) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        self.probe = None;
        self.probe_soon.clear();
        let update = Update::Left {
            node: self.me,
            incarnation: self.incarnation,
        };
        self.broadcasts.push(update);
        // Tell a few members directly so the news does not wait for the next gossip round.
        let fanout = (self.config.gossip_fanout * 2).max(1);
        for target in self.random_live(fanout, None) {
            self.send(target.addr, Some(target), Message::Gossip, &[update]);
        }
        self.leave_token = self.arm(TimerKind::LeaveDone, now + self.config.leave_linger);
    }

    fn handle_timer(&mut self, now: Instant, timer: Timer) {
        let current = match timer.kind {
            TimerKind::Probe => self.probe_token == timer.token,
            TimerKind::ProbeTimeout => self.probe.is_some_and(|p| p.token == timer.token),
            TimerKind::Gossip => self.gossip_token == timer.token,
            TimerKind::PushPull => self.push_pull_token == timer.token,
            TimerKind::JoinRetry => self.join_token == timer.token,
            TimerKind::LeaveDone => self.leaving && self.leave_token == timer.token,
            TimerKind::Suspicion(node) => self
                .members
                .get(&node)
                .and_then(|e| e.suspicion.as_ref())
                .is_some_and(|s| s.token == timer.token),
        };
        if !current {
            self.metrics.stale_timers += 1;
            return;
        }
        match timer.kind {
            TimerKind::Probe => self.on_probe_tick(now),
            TimerKind::ProbeTimeout => self.on_probe_timeout(now),
            TimerKind::Gossip => self.on_gossip_tick(now),
            TimerKind::PushPull => self.on_push_pull_tick(now),
            TimerKind::JoinRetry => {
                if self.live.is_empty() {
                    self.send_join_requests(now);
                }
            }
            TimerKind::Suspicion(node) => self.on_suspicion_timeout(now, node),
            TimerKind::LeaveDone => {
                self.left = true;
                self.outputs.push_back(Output::Event(Event::SelfLeft));
            }
        }
    }

    // ----- probing -----

    /// Queues `node` for the next probe and starts that probe now when no other probe waits
    /// for its answer and no early start happened within the last `probe_interval`.
    fn handle_probe_hint(&mut self, now: Instant, node: NodeId) {
        let alive = self
            .members
            .get(&node)
            .is_some_and(|e| e.state == MemberState::Alive);
        // A probe of it that still waits for its answer will judge it; one already answered
        // was before the sign, so it is probed again.
        let probing = self.probe.is_some_and(|p| p.target == node && !p.acked);
        if self.leaving
            || !alive
            || probing
            || self.probe_soon.contains(&node)
            || self.probe_soon.len() >= PROBE_SOON_MAX
        {
            self.metrics.probe_hints_ignored += 1;
            return;
        }
        self.metrics.probe_hints += 1;
        self.probe_soon.push_back(node);
        let waiting = self.probe.is_some_and(|p| !p.acked);
        let recent = self
            .early_probe_at
            .is_some_and(|at| now < at + self.config.probe_interval);
        if !waiting && !recent {
            // The current probe (if any) was answered, so judging it now raises no suspicion;
            // the next period starts here, with the hinted member.
            self.early_probe_at = Some(now);
            self.metrics.early_probes += 1;
            self.on_probe_tick(now);
        }
    }

    fn on_probe_tick(&mut self, now: Instant) {
        let period_end = now + self.config.probe_interval;
        self.probe_token = self.arm(TimerKind::Probe, period_end);
        self.relays.retain(|_, r| r.expires > now);
        if self.leaving {
            return;
        }
        if let Some(mut probe) = self.probe.take() {
            if probe.acked {
                self.note_probe_answered(probe);
            } else if probe.extensions_left > 0 {
                // Local health is poor: this node may be the one losing datagrams. Keep probing
                // the same member for another period, with a fresh ping-req wave, instead of
                // accusing it (and instead of starting a new probe: Lifeguard's slower probing).
                probe.extensions_left -= 1;
                probe.period_end = period_end;
                probe.waved = false;
                self.metrics.probe_extensions += 1;
                self.probe = Some(probe);
                self.probe_retry(now);
                return;
            } else {
                self.suspect_after_failed_probe(now, probe.target);
            }
        }
        let Some(target) = self.next_probe_target() else {
            return;
        };
        let seq = self.next_seq();
        let token = self.arm(TimerKind::ProbeTimeout, now + self.config.probe_timeout);
        let extensions_left = self
            .config
            .probe_extensions(self.cluster_size(), self.awareness);
        self.probe = Some(Probe {
            target,
            seq,
            acked: false,
            token,
            pings: 1,
            pings_at_ack: 0,
            period_end,
            extensions_left,
            extensions_granted: extensions_left,
            waved: false,
        });
        self.metrics.probes += 1;
        let extra = self.about_peer(target);
        self.send(target.addr, Some(target), Message::Ping { seq }, &extra);
    }

    /// Lifeguard's local health: a probe answered at the first ping is evidence that this
    /// node's links are fine (the score falls by one); a probe answered only after the first
    /// ping went unanswered (by a retry or through a relay) is evidence of loss (the score rises
    /// by [`AWARENESS_MISSED_ACK`]). So the score climbs while more than a third of first pings
    /// go unanswered and falls otherwise. A probe never answered says nothing: the target may
    /// really be dead.
    fn note_probe_answered(&mut self, probe: Probe) {
        debug_assert!(probe.acked && probe.pings_at_ack >= 1);
        if probe.pings_at_ack <= 1 {
            self.awareness = self.awareness.saturating_sub(1);
        } else {
            self.awareness = self
                .awareness
                .saturating_add(AWARENESS_MISSED_ACK)
                .min(self.config.awareness_max);
        }
        if probe.extensions_left < probe.extensions_granted {
            // Answered during an extension: a suspicion this node would otherwise have raised.
            self.metrics.probe_extensions_answered += 1;
        }
    }

    /// The direct ack is late: resend the direct ping and, once per probe period, ask
    /// `indirect_checks` members to probe; then retry every `probe_retry_interval` until the
    /// period ends.
    fn on_probe_timeout(&mut self, now: Instant) {
        if self.probe.is_some_and(|p| !p.acked) {
            self.probe_retry(now);
        }
    }

    fn probe_retry(&mut self, now: Instant) {
        let Some(mut probe) = self.probe else { return };
        debug_assert!(!probe.acked);
        // Retry the direct ping alongside the indirect ones: one lost datagram should not be
        // enough to start a suspicion (memberlist does the same over TCP).
        probe.pings = probe.pings.saturating_add(1);
        self.metrics.probe_retries += 1;
        let wave = !probe.waved && self.config.indirect_checks > 0;
        probe.waved = true;
        let next = now + self.config.probe_retry_interval;
        if next < probe.period_end {
            probe.token = self.arm(TimerKind::ProbeTimeout, next);
        }
        self.probe = Some(probe);
        let extra = self.about_peer(probe.target);
        self.send(
            probe.target.addr,
            Some(probe.target),
            Message::Ping { seq: probe.seq },
            &extra,
        );
        if !wave {
            return;
        }
        self.metrics.indirect_probes += 1;
        let relays = self.random_live(self.config.indirect_checks, Some(probe.target));
        for relay in relays {
            self.send(
                relay.addr,
                Some(relay),
                Message::PingReq {
                    seq: probe.seq,
                    target: probe.target,
                },
                &[],
            );
        }
    }

    fn suspect_after_failed_probe(&mut self, now: Instant, target: NodeId) {
        let Some(entry) = self.members.get(&target) else {
            return;
        };
        if !entry.state.is_live() {
            return;
        }
        let update = Update::Suspect {
            node: target,
            incarnation: entry.incarnation,
            by: self.me,
        };
        self.metrics.suspicions_raised += 1;
        self.apply(now, update);
        // Tell the suspect directly so it can refute at once (Lifeguard's buddy system).
        self.send(target.addr, Some(target), Message::Gossip, &[update]);
    }

    fn next_probe_target(&mut self) -> Option<NodeId> {
        while let Some(hinted) = self.probe_soon.pop_front() {
            if self
                .members
                .get(&hinted)
                .is_some_and(|e| e.state == MemberState::Alive)
            {
                return Some(hinted);
            }
        }
        for _ in 0..=self.probe_order.len() {
            if self.probe_cursor >= self.probe_order.len() {
                self.probe_order = self.live.clone();
                self.probe_order.shuffle(&mut self.rng);
                self.probe_cursor = 0;
                if self.probe_order.is_empty() {
                    return None;
                }
            }
            let candidate = self.probe_order[self.probe_cursor];
            self.probe_cursor += 1;
            if self
                .members
                .get(&candidate)
                .is_some_and(|e| e.state.is_live())
            {
                return Some(candidate);
            }
        }
        None
    }

    fn on_suspicion_timeout(&mut self, now: Instant, node: NodeId) {
        let Some(entry) = self.members.get(&node) else {
            return;
        };
        if entry.state != MemberState::Suspect {
            return;
        }
        let update = Update::Dead {
            node,
            incarnation: entry.incarnation,
            by: self.me,
        };
        self.metrics.failures_declared += 1;
        self.apply(now, update);
    }

    // ----- dissemination -----

    fn on_gossip_tick(&mut self, now: Instant) {
        self.gossip_token = self.arm(TimerKind::Gossip, now + self.config.gossip_interval);
        if self.broadcasts.is_empty() {
            return;
        }
        let targets = self.random_live(self.config.gossip_fanout, None);
        for target in targets {
            if self.broadcasts.is_empty() {
                break;
            }
            self.purpose = Purpose::GossipRound;
            self.send(target.addr, Some(target), Message::Gossip, &[]);
            self.purpose = Purpose::Direct;
        }
    }

    fn on_push_pull_tick(&mut self, now: Instant) {
        self.push_pull_token = self.arm(TimerKind::PushPull, now + self.config.push_pull_interval);
        self.reap_tombstones(now);
        if self.leaving {
            return;
        }
        if let Some(&peer) = self.random_live(1, None).first() {
            self.send_sync(now, peer, false);
        } else if !self.seeds.is_empty() {
            // Lost everyone (a partition, or all peers died): try the seeds again.
            self.send_join_requests(now);
        }
        // Reconnect: a member declared dead may only have been cut off by a partition. One sync
        // per interval to a random tombstoned member tells it it was declared dead (so it
        // refutes and both sides merge again once the partition heals); a member that really
        // crashed never answers. Bounded by `tombstone_retention`.
        let dead: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, e)| e.state == MemberState::Dead)
            .map(|(&id, _)| id)
            .collect();
        if let Some(&peer) = dead.choose(&mut self.rng) {
            self.send_sync(now, peer, false);
        }
    }

    /// Sends a push-pull chunk to `peer`, with what we believe about `peer` itself first so a
    /// wrongly suspected or buried member learns it and refutes.
    fn send_sync(&mut self, now: Instant, peer: NodeId, reply: bool) {
        let entries = self.sync_chunk(now);
        let about = self.about_peer(peer);
        self.send(
            peer.addr,
            Some(peer),
            Message::Sync { entries, reply },
            &about,
        );
    }

    /// A bounded chunk of the member table for anti-entropy: this node, then the members
    /// whose state changed most recently (news travels first), then a rotating slice of the rest.
    fn sync_chunk(&mut self, _now: Instant) -> Vec<Update> {
        let max = self.config.sync_entries_max;
        let budget = self.config.datagram_bytes_max - PACKET_OVERHEAD_BYTES - RECORD_BYTES_MAX;
        let mut out = vec![Update::Alive {
            node: self.me,
            incarnation: self.incarnation,
        }];
        let mut used = wire::encoded_len(&out[0]).unwrap_or(0);
        // Most recent changes first; half the budget at most, so the rotation still advances.
        let mut recent: Vec<(Instant, NodeId)> =
            self.members.iter().map(|(&id, e)| (e.since, id)).collect();
        recent.sort_by(|a, b| b.cmp(a));
        let mut chosen: BTreeSet<NodeId> = BTreeSet::new();
        for &(_, id) in recent.iter().take(max / 2) {
            if let Some(e) = self.members.get(&id) {
                if !push_if_fits(&mut out, &mut used, budget, self.record_of(id, e)) {
                    break;
                }
                chosen.insert(id);
            }
        }
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        if ids.is_empty() {
            return out;
        }
        for step in 0..ids.len() {
            if out.len() >= max {
                break;
            }
            let id = ids[(self.sync_cursor + step) % ids.len()];
            if chosen.contains(&id) {
                continue;
            }
            let Some(e) = self.members.get(&id) else {
                continue;
            };
            if !push_if_fits(&mut out, &mut used, budget, self.record_of(id, e)) {
                break;
            }
            self.sync_cursor = (self.sync_cursor + step + 1) % ids.len();
        }
        out
    }

    fn record_of(&self, id: NodeId, e: &Entry) -> Update {
        match e.state {
            MemberState::Alive => Update::Alive {
                node: id,
                incarnation: e.incarnation,
            },
            MemberState::Suspect => Update::Suspect {
                node: id,
                incarnation: e.incarnation,
                by: e.suspicion.as_ref().map_or(self.me, |s| s.first),
            },
            MemberState::Dead => Update::Dead {
                node: id,
                incarnation: e.incarnation,
                by: e.declared_by.unwrap_or(self.me),
            },
            MemberState::Left => Update::Left {
                node: id,
                incarnation: e.incarnation,
            },
        }
    }

    /// What to tell `peer` about itself when we talk to it: our suspicion, so it can refute.
    fn about_peer(&self, peer: NodeId) -> Vec<Update> {
        match self.members.get(&peer) {
            Some(e) if e.state != MemberState::Alive => vec![self.record_of(peer, e)],
            _ => Vec::new(),
        }
    }

    fn reap_tombstones(&mut self, now: Instant) {
        let retention = self.config.tombstone_retention;
        self.members
            .retain(|_, e| e.state.is_live() || now.saturating_duration_since(e.since) < retention);
    }

    // ----- the view: precedence rules -----

    /// Applies one update to the view (SWIM's precedence rules), emitting events and queueing
    /// the update for dissemination when it was news.
    fn apply(&mut self, now: Instant, update: Update) {
        let node = update.node();
        if node == self.me {
            self.apply_about_me(update);
            return;
        }
        if node.addr == self.me.addr {
            // An older generation of this node is certainly gone; a newer one would mean this
            // process is stale. Either way there is nothing to record.
            return;
        }
        let news = match self.members.get(&node).map(|e| (e.state, e.incarnation)) {
            None => self.apply_to_unknown(now, update),
            Some((state, incarnation)) => self.apply_to_known(now, update, state, incarnation),
        };
        if news {
            if let Some(dropped) = self.broadcasts_dropped_delta() {
                self.metrics.broadcasts_dropped = dropped;
            }
            self.broadcasts.push(update);
        }
    }

    fn broadcasts_dropped_delta(&self) -> Option<u64> {
        (self.broadcasts.dropped_full != self.metrics.broadcasts_dropped)
            .then_some(self.broadcasts.dropped_full)
    }

    fn apply_about_me(&mut self, update: Update) {
        match update {
            Update::Alive { .. } => {}
            Update::Suspect {
                incarnation, by, ..
            }
            | Update::Dead {
                incarnation, by, ..
            } => {
                if self.leaving {
                    return;
                }
                if incarnation >= self.incarnation {
                    self.refute(incarnation);
                }
                if self.accusers.len() < ACCUSERS_MAX {
                    self.accusers.insert(by);
                }
            }
            Update::Left { incarnation, .. } => {
                if !self.leaving && incarnation >= self.incarnation {
                    self.refute(incarnation);
                }
            }
        }
    }

    fn refute(&mut self, incarnation: u64) {
        // Saturates: a forged accusation at u64::MAX must not wrap us back to 0 (issue 8 adds
        // authentication so that no outsider can send one).
        self.incarnation = incarnation.saturating_add(1);
        self.metrics.refutations += 1;
        // Lifeguard: being suspected means others cannot hear us well; be slower to accuse.
        self.awareness = self
            .awareness
            .saturating_add(1)
            .min(self.config.awareness_max);
        let alive = Update::Alive {
            node: self.me,
            incarnation: self.incarnation,
        };
        self.broadcasts.push(alive);
    }

    fn apply_to_unknown(&mut self, now: Instant, update: Update) -> bool {
        let node = update.node();
        if self.newer_generation_known(node) {
            return false;
        }
        match update {
            Update::Alive { incarnation, .. } => {
                self.insert(node, incarnation, MemberState::Alive, now, None);
                self.outputs.push_back(Output::Event(Event::Joined(node)));
                self.retire_older_generations(now, node);
                true
            }
            // Suspicion of a member we never saw admitted: wait for its own announcement.
            Update::Suspect { .. } => false,
            Update::Dead {
                incarnation, by, ..
            } => {
                self.insert(node, incarnation, MemberState::Dead, now, Some(by));
                true
            }
            Update::Left { incarnation, .. } => {
                self.insert(node, incarnation, MemberState::Left, now, None);
                true
            }
        }
    }

    fn apply_to_known(
        &mut self,
        now: Instant,
        update: Update,
        state: MemberState,
        known: u64,
    ) -> bool {
        let node = update.node();
        match update {
            Update::Alive { incarnation, .. } => {
                if incarnation <= known {
                    return false;
                }
                self.set_state(node, incarnation, MemberState::Alive, now, None);
                let event = match state {
                    MemberState::Alive => None,
                    MemberState::Suspect => Some(Event::Refuted(node)),
                    MemberState::Dead | MemberState::Left => Some(Event::Joined(node)),
                };
                if let Some(event) = event {
                    self.outputs.push_back(Output::Event(event));
                }
                true
            }
            Update::Suspect {
                incarnation, by, ..
            } => match state {
                MemberState::Alive if incarnation >= known => {
                    self.start_suspicion(now, node, incarnation, by);
                    true
                }
                MemberState::Suspect if incarnation > known => {
                    self.start_suspicion(now, node, incarnation, by);
                    true
                }
                MemberState::Suspect if incarnation == known => {
                    self.confirm_suspicion(now, node, by)
                }
                _ => false,
            },
            Update::Dead {
                incarnation, by, ..
            } => {
                if !state.is_live() || incarnation < known {
                    return false;
                }
                if by != self.me && self.heard_since_any_death_could_be_declared(now, node) {
                    // The accuser is cut off from it (a one-way partition), not the member
                    // dead: do not adopt the verdict, make the member refute it.
                    self.metrics.deaths_overruled += 1;
                    self.send(node.addr, Some(node), Message::Gossip, &[update]);
                    return false;
                }
                self.set_state(node, incarnation, MemberState::Dead, now, Some(by));
                self.outputs.push_back(Output::Event(Event::Failed(node)));
                if by != self.me {
                    // If it is alive after all (cut off only from its accuser), it answers with
                    // its current record and is re-admitted at once instead of at the next
                    // reconnect sync.
                    self.send(node.addr, Some(node), Message::Gossip, &[update]);
                }
                true
            }
            Update::Left { incarnation, .. } => {
                if incarnation < known {
                    return false;
                }
                match state {
                    MemberState::Alive | MemberState::Suspect => {
                        self.set_state(node, incarnation, MemberState::Left, now, None);
                        self.outputs.push_back(Output::Event(Event::Left(node)));
                        true
                    }
                    // Already failed: remember that it left, nothing to report.
                    MemberState::Dead => {
                        self.set_state(node, incarnation, MemberState::Left, now, None);
                        false
                    }
                    MemberState::Left => false,
                }
            }
        }
    }

    /// Whether `node` itself sent us a datagram within the suspicion floor. A crash is declared
    /// at the earliest one probe timeout plus the suspicion floor after the crashed node's last
    /// datagram, so a death verdict arriving sooner than that after we heard from the node is
    /// not about a crash: its accuser could not hear it (a one-way partition or a lossy link).
    fn heard_since_any_death_could_be_declared(&self, now: Instant, node: NodeId) -> bool {
        if self.newer_generation_known(node) {
            // Restarted: the old generation is gone however recently it spoke.
            return false;
        }
        let floor = self.config.suspicion_timeout_min(self.cluster_size());
        self.members
            .get(&node)
            .and_then(|e| e.heard)
            .is_some_and(|heard| now.saturating_duration_since(heard) < floor)
    }

    fn start_suspicion(&mut self, now: Instant, node: NodeId, incarnation: u64, by: NodeId) {
        let was_alive = self.state_of(node) == Some(MemberState::Alive);
        self.set_state(node, incarnation, MemberState::Suspect, now, None);
        let timeout = self.config.suspicion_timeout(self.cluster_size(), 0);
        let token = self.arm(TimerKind::Suspicion(node), now + timeout);
        if let Some(entry) = self.members.get_mut(&node) {
            entry.suspicion = Some(Suspicion {
                started: now,
                confirmers: BTreeSet::from([by]),
                first: by,
                token,
            });
        }
        if was_alive {
            self.outputs.push_back(Output::Event(Event::Suspect(node)));
        }
        if by != self.me {
            // Heard it from someone else: tell the suspect ourselves, so that it answers us with
            // its current record even when its own gossip cannot reach us (a one-way partition,
            // or its retransmit budget spent on members that do not need it).
            let record = Update::Suspect {
                node,
                incarnation,
                by,
            };
            self.send(node.addr, Some(node), Message::Gossip, &[record]);
        }
    }

    /// Lifeguard: an independent suspicion of the same incarnation shortens the timeout.
    fn confirm_suspicion(&mut self, now: Instant, node: NodeId, by: NodeId) -> bool {
        let n = self.cluster_size();
        let Some(entry) = self.members.get_mut(&node) else {
            return false;
        };
        let Some(suspicion) = entry.suspicion.as_mut() else {
            return false;
        };
        if !suspicion.confirmers.insert(by) {
            return false;
        }
        let confirmations = u32::try_from(suspicion.confirmers.len() - 1).unwrap_or(u32::MAX);
        let deadline = suspicion.started + self.config.suspicion_timeout(n, confirmations);
        let token = self.fresh_token();
        if let Some(s) = self
            .members
            .get_mut(&node)
            .and_then(|e| e.suspicion.as_mut())
        {
            s.token = token;
        }
        self.outputs.push_back(Output::SetTimer {
            timer: Timer {
                kind: TimerKind::Suspicion(node),
                token,
            },
            at: deadline.max(now),
        });
        true
    }

    fn insert(
        &mut self,
        node: NodeId,
        incarnation: u64,
        state: MemberState,
        now: Instant,
        declared_by: Option<NodeId>,
    ) {
        debug_assert!(!self.members.contains_key(&node));
        debug_assert_ne!(node, self.me);
        self.members.insert(
            node,
            Entry {
                incarnation,
                state,
                since: now,
                declared_by,
                suspicion: None,
                heard: None,
            },
        );
        if state.is_live() {
            self.add_live(node);
        }
    }

    fn set_state(
        &mut self,
        node: NodeId,
        incarnation: u64,
        state: MemberState,
        now: Instant,
        declared_by: Option<NodeId>,
    ) {
        let Some(entry) = self.members.get_mut(&node) else {
            debug_assert!(false, "set_state on unknown member {node}");
            return;
        };
        debug_assert!(
            incarnation >= entry.incarnation,
            "incarnations never go back"
        );
        let was_live = entry.state.is_live();
        entry.incarnation = incarnation;
        entry.state = state;
        entry.since = now;
        entry.declared_by = declared_by;
        entry.suspicion = None;
        match (was_live, state.is_live()) {
            (false, true) => self.add_live(node),
            (true, false) => self.remove_live(node),
            _ => {}
        }
    }

    fn add_live(&mut self, node: NodeId) {
        if let Err(at) = self.live.binary_search(&node) {
            self.live.insert(at, node);
            // Join the probe rotation at a random place in what is left of this round.
            let lo = self.probe_cursor.min(self.probe_order.len());
            let at = self.rng_index(lo, self.probe_order.len() + 1);
            self.probe_order.insert(at, node);
        }
    }

    fn remove_live(&mut self, node: NodeId) {
        if let Ok(at) = self.live.binary_search(&node) {
            self.live.remove(at);
        }
        if self.probe.is_some_and(|p| p.target == node) {
            self.probe = None;
        }
    }

    fn newer_generation_known(&self, node: NodeId) -> bool {
        self.members
            .range(NodeId::new(node.addr, node.generation.saturating_add(1))..)
            .next()
            .is_some_and(|(id, _)| id.addr == node.addr)
    }

    /// A member at the same address with an older generation was restarted: it is gone.
    fn retire_older_generations(&mut self, now: Instant, node: NodeId) {
        let older: Vec<(NodeId, u64)> = self
            .members
            .range(NodeId::new(node.addr, 0)..node)
            .filter(|(_, e)| e.state.is_live())
            .map(|(&id, e)| (id, e.incarnation))
            .collect();
        for (old, incarnation) in older {
            let update = Update::Dead {
                node: old,
                incarnation,
                by: self.me,
            };
            self.set_state(old, incarnation, MemberState::Dead, now, Some(self.me));
            self.outputs.push_back(Output::Event(Event::Failed(old)));
            self.broadcasts.push(update);
        }
    }

    // ----- sending -----

    /// Sends `message` with `extra` updates first and pending broadcasts in the spare bytes.
    fn send(
        &mut self,
        to_addr: SocketAddr,
        to: Option<NodeId>,
        message: Message,
        extra: &[Update],
    ) {
        let mut packet = Packet {
            from: self.me,
            to,
            message,
            gossip: extra.to_vec(),
        };
        let used =
            1 + wire::encoded_len(&Datagram::Membership(packet.clone())).unwrap_or(usize::MAX);
        let budget = self
            .config
            .datagram_bytes_max
            .saturating_sub(used + GOSSIP_LEN_SLACK_BYTES);
        let limit = self.config.retransmit_limit(self.cluster_size());
        self.broadcasts.take(budget, limit, &mut packet.gossip);
        self.emit(to_addr, &packet);
    }

    /// Sends `message` without piggybacked updates (syncs and join traffic fill their own space).
    fn send_plain(&mut self, to_addr: SocketAddr, to: Option<NodeId>, message: Message) {
        let packet = Packet {
            from: self.me,
            to,
            message,
            gossip: Vec::new(),
        };
        self.emit(to_addr, &packet);
    }

    fn emit(&mut self, to: SocketAddr, packet: &Packet) {
        match wire::encode_datagram(&Datagram::Membership(packet.clone())) {
            Ok(bytes) if bytes.len() <= self.config.datagram_bytes_max => {
                self.metrics.datagrams_sent += 1;
                self.metrics.bytes_sent += bytes.len() as u64;
                self.metrics
                    .traffic
                    .record(packet, bytes.len(), self.purpose);
                self.outputs.push_back(Output::Send { to, bytes });
            }
            Ok(_) | Err(_) => {
                debug_assert!(
                    false,
                    "built an unencodable or oversized packet: {packet:?}"
                );
                self.metrics.encode_errors += 1;
            }
        }
    }

    // ----- helpers -----

    fn arm(&mut self, kind: TimerKind, at: Instant) -> TimerToken {
        let token = self.fresh_token();
        self.outputs.push_back(Output::SetTimer {
            timer: Timer { kind, token },
            at,
        });
        token
    }

    fn fresh_token(&mut self) -> TimerToken {
        self.next_token += 1;
        TimerToken(self.next_token)
    }

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn jitter(&mut self, span: std::time::Duration) -> std::time::Duration {
        let micros = u64::try_from(span.as_micros()).unwrap_or(u64::MAX).max(1);
        std::time::Duration::from_micros(rand::Rng::random_range(&mut self.rng, 0..micros))
    }

    fn rng_index(&mut self, lo: usize, hi: usize) -> usize {
        if hi <= lo + 1 {
            return lo;
        }
        rand::Rng::random_range(&mut self.rng, lo..hi)
    }

    /// Up to `count` distinct random live members, never `exclude`.
    fn random_live(&mut self, count: usize, exclude: Option<NodeId>) -> Vec<NodeId> {
        // Sample one extra so that dropping `exclude` still leaves `count`.
        let extra = usize::from(exclude.is_some());
        let mut picked: Vec<NodeId> = self
            .live
            .choose_multiple(&mut self.rng, count + extra)
            .copied()
            .filter(|&n| Some(n) != exclude)
            .collect();
        picked.truncate(count);
        picked
    }

    fn check_invariants(&self) {
        debug_assert!(
            self.live.windows(2).all(|w| w[0] < w[1]),
            "live list sorted"
        );
        debug_assert!(
            !self.members.contains_key(&self.me),
            "never a member of itself"
        );
        debug_assert!(self.relays.len() <= RELAYS_MAX);
        debug_assert!(self.broadcasts.len() <= QUEUE_ITEMS_MAX);
        debug_assert!(self.seeds.len() <= SEEDS_MAX);
        debug_assert!(self.probe_soon.len() <= PROBE_SOON_MAX);
        debug_assert!(
            self.accusers.is_empty(),
            "accusers are answered within the input"
        );
        debug_assert_eq!(
            self.live.len(),
            self.members.values().filter(|e| e.state.is_live()).count(),
            "live cache matches the table"
        );
        debug_assert!(
            self.members
                .values()
                .all(|e| (e.state == MemberState::Suspect) == e.suspicion.is_some()),
            "exactly the suspects carry a suspicion"
        );
    }
}

/// Appends `record` to `out` if it fits in `budget` bytes, counting them in `used`.
fn push_if_fits(out: &mut Vec<Update>, used: &mut usize, budget: usize, record: Update) -> bool {
    let len = wire::encoded_len(&record).unwrap_or(usize::MAX);
    if used.saturating_add(len) > budget {
        return false;
    }
    *used += len;
    out.push(record);
    true
}

/// Bytes of a packet that are not updates (version byte, ids, message) plus the length prefix,
/// an upper bound for sync and join chunks.
const PACKET_OVERHEAD_BYTES: usize = 96;
/// Upper bound on one encoded [`Update`] (two IPv6 node ids and two varints), reserved in a
/// sync chunk for the record about the receiving peer.
const RECORD_BYTES_MAX: usize = 80;
/// Room for the gossip vector's length prefix growing as updates are added.
const GOSSIP_LEN_SLACK_BYTES: usize = 4;
/// How much the local health score rises for a probe whose first ping went unanswered (it
/// falls by one for a probe answered at once).
const AWARENESS_MISSED_ACK: u32 = 2;

#[cfg(test)]
mod tests;
