//! The check functions behind every fuzz target, shared by `fuzz/` and the stable replay test.
//!
//! Owns: one function per target, each taking the raw fuzz input and panicking on any violated
//! invariant: [`wire_datagram`], [`wire_frame`], [`membership_events`], [`consensus_message`],
//! [`consensus_events`], [`cluster_state`], and the authentication targets of
//! [`crate::fuzz_auth`] ([`auth_datagram`], [`auth_handshake`], [`auth_records`]); the table [`TARGETS`] that maps target names to them; and the
//! deterministic seed corpora ([`seed_corpus`]) that `examples/write_fuzz_corpus.rs` writes
//! under `fuzz/corpus/<target>/`.
//!
//! `fuzz/fuzz_targets/*.rs` are one-liners calling these, so libFuzzer on nightly flags and
//! `tests/fuzz_corpus.rs` on stable run exactly the same code over the same inputs.
//!
//! Must never: read a clock, the environment or the file system, or use unseeded randomness:
//! the same input always runs the same way, so every crash replays.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use idunno_core::cluster::{ClusterCommand, ClusterOp, ClusterResult, ClusterState};
use idunno_core::consensus::{
    self as raft, Body, Entry, MESSAGE_BYTES_MAX, PersistBatch, PersistedState, Raft, VoterId,
};
use idunno_core::membership::{
    Config, Error, Event, Input, Member, MemberState, Membership, Message, NodeId, Output, Packet,
    QUEUE_ITEMS_MAX, Timer, Update,
};
use idunno_core::time::Instant;
use idunno_core::wire::{
    self, ControlRequest, ControlResponse, DATAGRAM_BYTES_MAX, Datagram, FRAME_BYTES_MAX,
    FRAME_HEADER_BYTES, WireError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::fuzz_auth::{auth_datagram, auth_handshake, auth_records};

/// A fuzz target: its name (the `fuzz/fuzz_targets/<name>.rs` file and corpus directory) and
/// its check function.
pub type Target = (&'static str, fn(&[u8]));

/// Every fuzz target, by name.
pub const TARGETS: &[Target] = &[
    ("wire_datagram", wire_datagram),
    ("wire_frame", wire_frame),
    ("membership_events", membership_events_check),
    ("consensus_message", consensus_message),
    ("consensus_events", consensus_events_check),
    ("cluster_state", cluster_state),
    ("auth_datagram", auth_datagram),
    ("auth_handshake", auth_handshake),
    ("auth_records", auth_records),
];

/// The check function of the target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
}

// ----- wire -----

/// Any bytes into [`wire::decode_datagram`]: never panics; empty and oversized inputs get their
/// own errors; whatever decodes re-encodes within the cap, no longer than the input, and decodes
/// back to the same value.
pub fn wire_datagram(data: &[u8]) {
    let decoded = wire::decode_datagram(data);
    if data.is_empty() {
        assert_eq!(decoded, Err(WireError::Empty));
    } else if data.len() > DATAGRAM_BYTES_MAX {
        assert!(
            matches!(decoded, Err(WireError::Oversized { len, max: DATAGRAM_BYTES_MAX }) if len == data.len()),
            "oversized datagram of {} bytes gave {decoded:?}",
            data.len()
        );
    } else if data[0] != wire::WIRE_VERSION {
        assert_eq!(decoded, Err(WireError::UnknownVersion(data[0])));
    }
    let Ok(datagram) = decoded else { return };
    let bytes = wire::encode_datagram(&datagram).expect("a decoded datagram re-encodes");
    assert!(bytes.len() <= DATAGRAM_BYTES_MAX);
    assert!(
        bytes.len() <= data.len(),
        "re-encoding grew from {} to {} bytes",
        data.len(),
        bytes.len()
    );
    assert_eq!(wire::decode_datagram(&bytes).as_ref(), Ok(&datagram));
    let again = wire::encode_datagram(&datagram).expect("encodes twice");
    assert_eq!(again, bytes, "encoding is deterministic");
}

/// Any bytes as a TCP frame stream (4-byte header, then the body) and as a bare body, for both
/// [`ControlRequest`] and [`ControlResponse`]: never panics; the header is range-checked; what
/// decodes re-encodes to a frame whose header states its body length and which decodes back.
pub fn wire_frame(data: &[u8]) {
    if let Some((header, rest)) = data.split_first_chunk::<FRAME_HEADER_BYTES>() {
        let stated = u32::from_be_bytes(*header) as usize;
        match wire::decode_frame_header(*header) {
            Ok(len) => {
                assert_eq!(len, stated);
                assert!((1..=FRAME_BYTES_MAX).contains(&len));
                let body = &rest[..len.min(rest.len())];
                frame_body_round_trips::<ControlRequest>(body);
                frame_body_round_trips::<ControlResponse>(body);
            }
            Err(WireError::Empty) => assert_eq!(stated, 0),
            Err(WireError::Oversized { len, max }) => {
                assert_eq!((len, max), (stated, FRAME_BYTES_MAX));
                assert!(stated > FRAME_BYTES_MAX);
            }
            Err(other) => panic!("unexpected header error {other:?}"),
        }
    }
    frame_body_round_trips::<ControlRequest>(data);
    frame_body_round_trips::<ControlResponse>(data);
}

fn frame_body_round_trips<T>(body: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let decoded = wire::decode_frame_body::<T>(body);
    if body.is_empty() {
        assert_eq!(decoded, Err(WireError::Empty));
    }
    let Ok(value) = decoded else { return };
    let frame = wire::encode_frame(&value).expect("a decoded frame re-encodes");
    let (header, rest) = frame
        .split_first_chunk::<FRAME_HEADER_BYTES>()
        .expect("a frame has a header");
    assert_eq!(wire::decode_frame_header(*header), Ok(rest.len()));
    assert!(rest.len() <= body.len(), "re-encoding grew");
    assert_eq!(wire::decode_frame_body::<T>(rest).as_ref(), Ok(&value));
}

// ----- membership -----

/// Most machines in one scenario.
pub const MACHINES_MAX: usize = 3;
/// Most steps taken from one input.
pub const STEPS_MAX: usize = 256;
/// Most datagrams held in flight; the oldest is dropped beyond it.
pub const IN_FLIGHT_MAX: usize = 256;
/// Most timer requests remembered per machine (for due firing and stale re-firing).
pub const TIMERS_KEPT_MAX: usize = 128;
/// Most delivery-and-timer rounds in one `Pump` step.
pub const PUMP_ROUNDS_MAX: u8 = 8;

/// The address of machine `index` and of the phantom peers that structured packets may name.
fn pool_addr(index: u8) -> SocketAddr {
    let index = index % 8;
    match index {
        0..=2 => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7000 + u16::from(index)),
        3..=5 => SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)),
            7100 + u16::from(index),
        ),
        6 => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 7200),
        _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 0),
    }
}

/// An incarnation or sequence number: mostly small (so they collide with the machines' own),
/// sometimes at the edge of the range.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Number {
    Small(u8),
    Any(u64),
    Max,
}

impl Number {
    fn get(self) -> u64 {
        match self {
            Number::Small(n) => u64::from(n),
            Number::Any(n) => n,
            Number::Max => u64::MAX,
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
struct ArbNodeId {
    addr: u8,
    generation: u8,
}

impl ArbNodeId {
    fn get(self) -> NodeId {
        NodeId::new(pool_addr(self.addr), u64::from(self.generation % 4))
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum ArbUpdate {
    Alive(ArbNodeId, Number),
    Suspect(ArbNodeId, Number, ArbNodeId),
    Dead(ArbNodeId, Number, ArbNodeId),
    Left(ArbNodeId, Number),
}

impl ArbUpdate {
    fn get(self) -> Update {
        match self {
            ArbUpdate::Alive(node, inc) => Update::Alive {
                node: node.get(),
                incarnation: inc.get(),
            },
            ArbUpdate::Suspect(node, inc, by) => Update::Suspect {
                node: node.get(),
                incarnation: inc.get(),
                by: by.get(),
            },
            ArbUpdate::Dead(node, inc, by) => Update::Dead {
                node: node.get(),
                incarnation: inc.get(),
                by: by.get(),
            },
            ArbUpdate::Left(node, inc) => Update::Left {
                node: node.get(),
                incarnation: inc.get(),
            },
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
enum ArbMessage {
    Ping(Number),
    Ack(Number),
    PingReq(Number, ArbNodeId),
    Join,
    Sync(Vec<ArbUpdate>, bool),
    Gossip,
}

#[derive(Debug, Clone, Arbitrary)]
struct ArbPacket {
    from: ArbNodeId,
    /// `None`: not addressed; `Some(true)`: addressed to the receiver; `Some(false)`: the id
    /// from `to_other`.
    to_receiver: Option<bool>,
    to_other: ArbNodeId,
    message: ArbMessage,
    gossip: Vec<ArbUpdate>,
}

/// One step of a membership scenario.
#[derive(Debug, Clone, Arbitrary)]
enum Step {
    /// Arbitrary bytes to machine `to`, from pool address `from`.
    Raw { to: u8, from: u8, bytes: Vec<u8> },
    /// A structured packet, encoded with the codec, to machine `to`.
    Packet { to: u8, packet: ArbPacket },
    /// Deliver one in-flight datagram (optionally keeping a copy: a duplicate).
    Deliver { pick: u16, duplicate: bool },
    /// Deliver one in-flight datagram after flipping one bit or truncating it.
    Mangle { pick: u16, at: u16, truncate: bool },
    /// Lose one in-flight datagram.
    Drop { pick: u16 },
    /// `rounds` times: deliver everything in flight, advance `tick_ms`, fire due timers.
    Pump { rounds: u8, tick_ms: u8 },
    /// Advance the clock.
    Advance { millis: u16 },
    /// Fire every due timer of every machine, in deadline order.
    FireDue,
    /// Hand back a timer that was already due (a duplicate or stale firing).
    Refire { node: u8, pick: u16 },
    /// Join through the machines and phantoms named by `seeds`.
    Join { node: u8, seeds: Vec<u8> },
    /// Graceful leave.
    Leave { node: u8 },
    /// Crash and restart with the next generation, then join through the other machines.
    Restart { node: u8 },
    /// Tell machine `node` that the member at pool address `about` (generation `generation`
    /// modulo 4) may be gone: a probe out of turn, never a verdict.
    Hint { node: u8, about: u8, generation: u8 },
}

#[derive(Debug)]
struct TimerRecord {
    at: Instant,
    timer: Timer,
    fired: bool,
}

#[derive(Debug)]
struct Machine {
    membership: Membership,
    timers: Vec<TimerRecord>,
    /// Reported [`Event::SelfLeft`]: every later input must be refused.
    left: bool,
    /// Its incarnation after the last input: incarnations never go back.
    incarnation: u64,
}

#[derive(Debug, Clone)]
struct InFlight {
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// What one membership scenario reached; used to pick seed inputs that go somewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipStats {
    /// Steps executed.
    pub steps: usize,
    /// Machines in the scenario.
    pub machines: usize,
    /// Datagrams handed to a machine (raw, structured or delivered).
    pub datagrams: u64,
    /// Those that the machines refused as undecodable.
    pub decode_errors: u64,
    /// Largest live view seen at any machine.
    pub live_view_max: usize,
    /// Events of each kind seen: joined, suspect, refuted, failed, left, self-left.
    pub events: [u64; 6],
}

struct World {
    now: Instant,
    config: Config,
    seed: u64,
    machines: Vec<Machine>,
    generations: Vec<u64>,
    in_flight: Vec<InFlight>,
    stats: MembershipStats,
}

/// Runs a membership scenario decoded from `data` (see [`membership_events`]), discarding the
/// statistics; the shape [`TARGETS`] needs.
fn membership_events_check(data: &[u8]) {
    let _ = membership_events(data);
}

/// An arbitrary sequence of inputs (raw and structured datagrams, deliveries, losses,
/// duplicates and corruptions of real traffic, time, timers, join, leave, restart) into one to
/// [`MACHINES_MAX`] [`Membership`] machines. After every input of every machine: no panic;
/// undecodable bytes are refused with [`Error::Decode`] and counted in `decode_errors`, packets
/// for another node in `misdirected`; the live view holds the machine itself unless it is
/// leaving; the member list is sorted, unique and holds the machine exactly once; every `Send`
/// is within [`DATAGRAM_BYTES_MAX`] (and the config's cap), decodes, and comes from the machine;
/// no timer is asked for in the past; nothing ever fails to encode; the machine's own
/// incarnation never goes back; a machine that reported `SelfLeft` refuses every later input.
pub fn membership_events(data: &[u8]) -> MembershipStats {
    let mut u = Unstructured::new(data);
    let machines = usize::from(u.arbitrary::<u8>().unwrap_or(0)) % MACHINES_MAX + 1;
    let seed = u.arbitrary::<u64>().unwrap_or(0);
    let small_datagrams = u.arbitrary::<bool>().unwrap_or(false);
    let mut config = Config::lan();
    if small_datagrams {
        config.datagram_bytes_max = 256;
    }
    let mut world = World {
        now: Instant::from_micros(1_000_000),
        config,
        seed,
        machines: Vec::with_capacity(machines),
        generations: vec![1; machines],
        in_flight: Vec::new(),
        stats: MembershipStats {
            machines,
            ..MembershipStats::default()
        },
    };
    for index in 0..machines {
        let machine = world.boot(index);
        world.machines.push(machine);
        world.drain(index);
    }
    while !u.is_empty() && world.stats.steps < STEPS_MAX {
        let Ok(step) = u.arbitrary::<Step>() else {
            break;
        };
        world.stats.steps += 1;
        world.step(step);
    }
    world.stats
}

impl World {
    fn boot(&mut self, index: usize) -> Machine {
        let me = NodeId::new(pool_addr(index as u8), self.generations[index]);
        let rng_seed = self.seed ^ (index as u64) ^ (self.generations[index] << 8);
        let membership = Membership::new(self.config.clone(), me, rng_seed, self.now)
            .expect("the lan config validates");
        Machine {
            incarnation: membership.incarnation(),
            membership,
            timers: Vec::new(),
            left: false,
        }
    }

    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        (0..self.machines.len()).find(|&i| pool_addr(i as u8) == addr)
    }

    fn pick(&self, which: u8) -> usize {
        usize::from(which) % self.machines.len()
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Raw { to, from, bytes } => {
                let to = self.pick(to);
                self.deliver(to, pool_addr(from), &bytes);
            }
            Step::Packet { to, packet } => {
                let to = self.pick(to);
                let receiver = self.machines[to].membership.me();
                let packet = Packet {
                    from: packet.from.get(),
                    to: packet.to_receiver.map(|mine| {
                        if mine {
                            receiver
                        } else {
                            packet.to_other.get()
                        }
                    }),
                    message: build_message(packet.message),
                    gossip: packet.gossip.into_iter().map(ArbUpdate::get).collect(),
                };
                // A packet too large for one datagram cannot be sent; that is fine.
                if let Ok(bytes) = wire::encode_datagram(&Datagram::Membership(packet.clone())) {
                    self.deliver(to, packet.from.addr, &bytes);
                }
            }
            Step::Deliver { pick, duplicate } => {
                if let Some(datagram) = self.take_in_flight(pick, duplicate) {
                    self.deliver_in_flight(&datagram);
                }
            }
            Step::Mangle { pick, at, truncate } => {
                if let Some(mut datagram) = self.take_in_flight(pick, false) {
                    let len = datagram.bytes.len();
                    if truncate {
                        datagram.bytes.truncate(usize::from(at) % (len + 1));
                    } else if len > 0 {
                        let bit = usize::from(at) % (len * 8);
                        datagram.bytes[bit / 8] ^= 1 << (bit % 8);
                    }
                    self.deliver_in_flight(&datagram);
                }
            }
            Step::Drop { pick } => {
                let _ = self.take_in_flight(pick, false);
            }
            Step::Pump { rounds, tick_ms } => {
                for _ in 0..rounds.min(PUMP_ROUNDS_MAX) {
                    let batch = std::mem::take(&mut self.in_flight);
                    for datagram in &batch {
                        self.deliver_in_flight(datagram);
                    }
                    self.advance(Duration::from_millis(u64::from(tick_ms)));
                    self.fire_due();
                }
            }
            Step::Advance { millis } => self.advance(Duration::from_millis(u64::from(millis))),
            Step::FireDue => self.fire_due(),
            Step::Refire { node, pick } => self.refire(node, pick),
            Step::Join { node, seeds } => {
                let index = self.pick(node);
                let seeds = seeds.into_iter().take(16).map(pool_addr).collect();
                self.command(index, Input::Join { seeds });
            }
            Step::Leave { node } => {
                let index = self.pick(node);
                self.command(index, Input::Leave);
                assert!(
                    self.machines[index].left || self.machines[index].membership.is_leaving(),
                    "a leave command starts leaving"
                );
            }
            Step::Hint {
                node,
                about,
                generation,
            } => {
                let index = self.pick(node);
                let about = NodeId::new(pool_addr(about), u64::from(generation % 4));
                self.command(index, Input::ProbeSoon(about));
            }
            Step::Restart { node } => {
                let index = self.pick(node);
                self.generations[index] += 1;
                self.machines[index] = self.boot(index);
                self.drain(index);
                let seeds = (0..self.machines.len())
                    .filter(|&i| i != index)
                    .map(|i| pool_addr(i as u8))
                    .collect();
                self.command(index, Input::Join { seeds });
            }
        }
    }

    fn take_in_flight(&mut self, pick: u16, keep_copy: bool) -> Option<InFlight> {
        if self.in_flight.is_empty() {
            return None;
        }
        let at = usize::from(pick) % self.in_flight.len();
        if keep_copy {
            Some(self.in_flight[at].clone())
        } else {
            Some(self.in_flight.remove(at))
        }
    }

    fn deliver_in_flight(&mut self, datagram: &InFlight) {
        if let Some(index) = self.index_of(datagram.to) {
            self.deliver(index, datagram.from, &datagram.bytes);
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now = self.now + by;
    }

    /// Fires every due, unfired timer of every machine in (deadline, machine, request) order.
    fn fire_due(&mut self) {
        let mut due: Vec<(Instant, usize, usize)> = Vec::new();
        for (index, machine) in self.machines.iter().enumerate() {
            for (at, record) in machine.timers.iter().enumerate() {
                if !record.fired && record.at <= self.now {
                    due.push((record.at, index, at));
                }
            }
        }
        due.sort();
        let mut fire: Vec<(usize, Timer)> = Vec::with_capacity(due.len());
        for (_, index, at) in due {
            let record = &mut self.machines[index].timers[at];
            record.fired = true;
            fire.push((index, record.timer));
        }
        for (index, timer) in fire {
            self.command(index, Input::Timer(timer));
        }
    }

    fn refire(&mut self, node: u8, pick: u16) {
        let index = self.pick(node);
        let now = self.now;
        let due: Vec<Timer> = self.machines[index]
            .timers
            .iter()
            .filter(|r| r.at <= now)
            .map(|r| r.timer)
            .collect();
        if due.is_empty() {
            return;
        }
        let timer = due[usize::from(pick) % due.len()];
        self.command(index, Input::Timer(timer));
    }

    /// Hands `bytes` to machine `index` and checks how it was judged against our own decode.
    fn deliver(&mut self, index: usize, from: SocketAddr, bytes: &[u8]) {
        self.stats.datagrams += 1;
        let expected = wire::decode_datagram(bytes);
        let before = self.machines[index].membership.metrics().clone();
        let was_left = self.machines[index].left;
        let result = self.input(index, Input::Datagram { from, bytes });
        let after = self.machines[index].membership.metrics().clone();
        if was_left {
            assert_eq!(result, Err(Error::Left));
            return;
        }
        assert_eq!(after.datagrams_received, before.datagrams_received + 1);
        match (&expected, &result) {
            (Err(decode_error), Err(Error::Decode(error))) => {
                assert_eq!(decode_error, error, "the machine decodes like the codec");
                assert_eq!(after.decode_errors, before.decode_errors + 1, "counted");
                self.stats.decode_errors += 1;
            }
            (Err(e), other) => panic!("undecodable bytes ({e}) were judged {other:?}"),
            (Ok(_), Err(Error::Decode(e))) => panic!("a valid datagram was refused: {e}"),
            (Ok(_), Err(Error::Misdirected(_) | Error::FromSelf)) => {
                assert_eq!(after.misdirected, before.misdirected + 1, "counted");
                assert_eq!(after.decode_errors, before.decode_errors);
            }
            (Ok(_), Err(Error::Left)) => panic!("refused as left without reporting SelfLeft"),
            (Ok(Datagram::Membership(packet)), Ok(())) => {
                let me = self.machines[index].membership.me();
                assert!(
                    packet.to.is_none_or(|to| to == me),
                    "accepted a misdirected packet"
                );
                assert_ne!(packet.from, me, "accepted a packet from itself");
                assert_eq!(after.decode_errors, before.decode_errors);
            }
        }
    }

    /// Feeds a timer or command: accepted, unless the machine has left.
    fn command(&mut self, index: usize, input: Input<'_>) {
        let was_left = self.machines[index].left;
        let result = self.input(index, input);
        if !was_left {
            assert_eq!(result, Ok(()), "timers and commands are always accepted");
        }
    }

    /// Feeds one input to machine `index`, drains its outputs and checks its invariants.
    fn input(&mut self, index: usize, input: Input<'_>) -> Result<(), Error> {
        let machine = &mut self.machines[index];
        let result = machine.membership.handle(self.now, input);
        if machine.left {
            assert_eq!(
                result,
                Err(Error::Left),
                "a machine that left refuses inputs"
            );
        }
        self.drain(index);
        result
    }

    fn drain(&mut self, index: usize) {
        let now = self.now;
        let machine = &mut self.machines[index];
        let me = machine.membership.me();
        let cap = machine.membership.config().datagram_bytes_max;
        while let Some(output) = machine.membership.poll_output() {
            match output {
                Output::Send { to, bytes } => {
                    assert!(
                        bytes.len() <= DATAGRAM_BYTES_MAX && bytes.len() <= cap,
                        "sent a {}-byte datagram",
                        bytes.len()
                    );
                    match wire::decode_datagram(&bytes) {
                        Ok(Datagram::Membership(packet)) => {
                            assert_eq!(packet.from, me, "sends in its own name");
                        }
                        Err(e) => panic!("sent an undecodable datagram: {e}"),
                    }
                    if self.in_flight.len() >= IN_FLIGHT_MAX {
                        self.in_flight.remove(0);
                    }
                    self.in_flight.push(InFlight {
                        from: me.addr,
                        to,
                        bytes,
                    });
                }
                Output::SetTimer { timer, at } => {
                    assert!(at >= now, "timer {timer:?} asked for the past");
                    if machine.timers.len() >= TIMERS_KEPT_MAX {
                        let oldest = machine.timers.iter().position(|r| r.fired).unwrap_or(0);
                        machine.timers.remove(oldest);
                    }
                    machine.timers.push(TimerRecord {
                        at,
                        timer,
                        fired: false,
                    });
                }
                Output::Event(event) => {
                    let slot = match event {
                        Event::Joined(id) | Event::Suspect(id) | Event::Refuted(id) => {
                            assert_ne!(id, me, "events about others only");
                            match event {
                                Event::Joined(_) => 0,
                                Event::Suspect(_) => 1,
                                _ => 2,
                            }
                        }
                        Event::Failed(id) | Event::Left(id) => {
                            assert_ne!(id, me, "events about others only");
                            if matches!(event, Event::Failed(_)) {
                                3
                            } else {
                                4
                            }
                        }
                        Event::SelfLeft => {
                            assert!(machine.membership.is_leaving(), "SelfLeft after a leave");
                            assert!(!machine.left, "SelfLeft once");
                            machine.left = true;
                            5
                        }
                    };
                    self.stats.events[slot] += 1;
                }
            }
        }
        let incarnation = machine.membership.incarnation();
        assert!(
            incarnation >= machine.incarnation,
            "incarnation went back from {} to {incarnation}",
            machine.incarnation
        );
        machine.incarnation = incarnation;
        let live = check_machine(&machine.membership);
        self.stats.live_view_max = self.stats.live_view_max.max(live);
    }
}

fn build_message(message: ArbMessage) -> Message {
    match message {
        ArbMessage::Ping(seq) => Message::Ping { seq: seq.get() },
        ArbMessage::Ack(seq) => Message::Ack { seq: seq.get() },
        ArbMessage::PingReq(seq, target) => Message::PingReq {
            seq: seq.get(),
            target: target.get(),
        },
        ArbMessage::Join => Message::Join,
        ArbMessage::Sync(entries, reply) => Message::Sync {
            entries: entries.into_iter().map(ArbUpdate::get).collect(),
            reply,
        },
        ArbMessage::Gossip => Message::Gossip,
    }
}

/// The state invariants of one machine, from the outside; returns its live view's size.
fn check_machine(machine: &Membership) -> usize {
    let me = machine.me();
    let leaving = machine.is_leaving();
    let live = machine.live_view();
    assert_eq!(
        live.contains(&me),
        !leaving,
        "live view holds self unless leaving"
    );
    assert_eq!(
        machine.cluster_size(),
        live.len() + usize::from(leaving),
        "cluster size counts the live members and self"
    );
    let members: Vec<Member> = machine.members();
    assert!(
        members.windows(2).all(|w| w[0].id < w[1].id),
        "members sorted and unique"
    );
    let selves: Vec<&Member> = members.iter().filter(|m| m.id == me).collect();
    assert_eq!(selves.len(), 1, "self listed exactly once");
    let self_state = if leaving {
        MemberState::Left
    } else {
        MemberState::Alive
    };
    assert_eq!(selves[0].state, self_state);
    assert_eq!(selves[0].incarnation, machine.incarnation());
    let listed_live: BTreeSet<NodeId> = members
        .iter()
        .filter(|m| m.state.is_live() && !(m.id == me && leaving))
        .map(|m| m.id)
        .collect();
    assert_eq!(listed_live, live, "live view matches the member list");
    for id in &live {
        assert!(machine.state_of(*id).is_some_and(MemberState::is_live));
    }
    let metrics = machine.metrics();
    assert_eq!(
        metrics.encode_errors, 0,
        "every message the machine built encoded"
    );
    assert!(machine.pending_broadcasts() <= QUEUE_ITEMS_MAX);
    live.len()
}

// ----- consensus -----

/// Any bytes into [`raft::decode`]: never panics; input shorter than a frame header is refused;
/// whatever decodes re-encodes within [`MESSAGE_BYTES_MAX`], no longer than the input,
/// deterministically, and decodes back to the same value; [`raft::Message::validate`] never
/// panics on it.
pub fn consensus_message(data: &[u8]) {
    let decoded = raft::decode(data);
    if data.len() < FRAME_HEADER_BYTES {
        assert!(decoded.is_err(), "{} bytes cannot hold a frame", data.len());
    }
    if data.len() > MESSAGE_BYTES_MAX {
        assert!(
            matches!(decoded, Err(WireError::Oversized { .. })),
            "oversized message of {} bytes gave {decoded:?}",
            data.len()
        );
    }
    let Ok(message) = decoded else { return };
    let bytes = raft::encode(&message).expect("a decoded message re-encodes");
    assert!(bytes.len() <= MESSAGE_BYTES_MAX);
    assert!(
        bytes.len() <= data.len(),
        "re-encoding grew from {} to {} bytes",
        data.len(),
        bytes.len()
    );
    assert_eq!(raft::decode(&bytes).as_ref(), Ok(&message));
    let again = raft::encode(&message).expect("encodes twice");
    assert_eq!(again, bytes, "encoding is deterministic");
    let _ = message.validate();
}

/// Voters in a consensus scenario.
pub const RAFT_VOTERS: usize = 3;
/// Most Raft messages held in flight; the oldest is dropped beyond it.
pub const RAFT_IN_FLIGHT_MAX: usize = 512;
/// Most timer requests remembered per voter (stale ones are handed back too).
pub const RAFT_TIMERS_KEPT_MAX: usize = 16;
/// Most rounds in one `Pump` step.
pub const RAFT_PUMP_ROUNDS_MAX: u8 = 8;

fn voter_id(index: usize) -> VoterId {
    VoterId(index as u64 + 1)
}

/// One step of a consensus scenario.
#[derive(Debug, Clone, Arbitrary)]
enum RaftStep {
    /// Deliver one in-flight message (optionally keeping a copy: a duplicate).
    Deliver { pick: u16, duplicate: bool },
    /// Lose one in-flight message.
    Drop { pick: u16 },
    /// Hand back one remembered timer of voter `node` (moving the clock to its deadline).
    Timer { node: u8, pick: u8 },
    /// Make the oldest `count % 4 + 1` outstanding persist batches of `node` durable and
    /// acknowledge them.
    Persist { node: u8, count: u8 },
    /// Propose a command of `len % 64` bytes at `node` (or at the newest leader).
    Propose {
        node: u8,
        to_leader: bool,
        len: u8,
        fill: u8,
    },
    /// Crash voter `node` and restart it from what it acknowledged as durable.
    Restart { node: u8 },
    /// Advance the clock.
    Advance { millis: u16 },
    /// Arbitrary bytes, decoded with `consensus::decode`, as a message to `to` from voter
    /// `from % 4` (3: not a voter).
    Raw { to: u8, from: u8, bytes: Vec<u8> },
    /// `rounds` times: acknowledge every persist, deliver everything in flight, advance
    /// `tick_ms`, fire due timers.
    Pump { rounds: u8, tick_ms: u8 },
    /// Compact `node`'s log up to `back % 8` entries before its applied index.
    Compact { node: u8, back: u8 },
    /// A linearizable read at `node`.
    Read { node: u8 },
    /// Like `Raw`, with a correct frame header put in front of `body`.
    RawBody { to: u8, from: u8, body: Vec<u8> },
    /// Copy one in-flight message, set its byte `at` to `value`, and deliver the result as raw
    /// bytes from the same sender to voter `to`.
    Tamper {
        pick: u16,
        at: u16,
        value: u8,
        to: u8,
    },
}

#[derive(Debug)]
struct RaftVoter {
    raft: Raft,
    timers: Vec<(Instant, raft::Timer)>,
    /// Issued and not yet durable, oldest first.
    pending: VecDeque<PersistBatch>,
    /// Only acknowledged batches: what survives a crash.
    durable: PersistedState,
    /// Last batch number this instance issued.
    issued: u64,
    /// Last index handed out to apply (or restored from a snapshot).
    applied: u64,
    restarts: u64,
}

#[derive(Debug, Clone)]
struct RaftInFlight {
    from: VoterId,
    to: usize,
    bytes: Vec<u8>,
}

/// What one consensus scenario reached; used to pick seed inputs that go somewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsensusStats {
    /// Steps executed.
    pub steps: usize,
    /// Terms that had a leader.
    pub leader_terms: usize,
    /// Highest committed index seen.
    pub committed: u64,
    /// Committed client commands seen (not no-ops).
    pub commands_committed: u64,
    /// Crash-restarts.
    pub restarts: u64,
    /// Restarts after which the voter still had a non-empty durable log or snapshot.
    pub restarts_with_state: u64,
    /// Compactions accepted.
    pub compactions: u64,
    /// Snapshots installed from a leader (`Output::RestoreSnapshot`).
    pub snapshots_restored: u64,
    /// Messages delivered from the cluster's own traffic.
    pub delivered: u64,
    /// Raw byte strings that decoded as a message.
    pub raw_decoded: u64,
    /// A decoded, valid raw message from a voter reached a voter: the cluster-wide safety
    /// checks are off from then on (Raft does not survive forged voter messages).
    pub forged: bool,
}

struct RaftCluster {
    now: Instant,
    config: raft::Config,
    seed: u64,
    voters: Vec<RaftVoter>,
    in_flight: Vec<RaftInFlight>,
    /// The committed log, as first seen committed at any voter.
    committed: Vec<Entry>,
    /// The leader of each term.
    leaders: BTreeMap<u64, VoterId>,
    proposals: u64,
    stats: ConsensusStats,
}

/// Runs a consensus scenario decoded from `data` (see [`consensus_events`]), discarding the
/// statistics; the shape [`TARGETS`] needs.
fn consensus_events_check(data: &[u8]) {
    let _ = consensus_events(data);
}

/// Three [`Raft`] voters driven by an arbitrary sequence of events: delivery, loss and
/// duplication of their own messages, timers (due, early and stale), persist acknowledgements,
/// proposals, reads, compactions, crash-restarts from what was acknowledged durable, time, and
/// raw bytes decoded as a message from a voter. After every input: no panic (the machine's own
/// debug invariants included); persist batches are numbered 1, 2, ... per instance; every
/// `Send` goes to another voter, passes `validate`, encodes within [`MESSAGE_BYTES_MAX`] and
/// the configured batch bound; no timer in the past; applies are contiguous and agree with the
/// machine's applied index. Unless a forged (decodable, valid) raw message was accepted: at
/// most one leader per term; the committed prefix never changes (every voter's log agrees with
/// it up to its commit index, its snapshot too); every applied entry and every installed
/// snapshot matches it.
pub fn consensus_events(data: &[u8]) -> ConsensusStats {
    let mut u = Unstructured::new(data);
    let seed = u.arbitrary::<u64>().unwrap_or(0);
    let shape = u.arbitrary::<u8>().unwrap_or(0);
    let mut config = raft::Config::lan();
    if shape & 1 != 0 {
        config.entries_per_message_max = 2;
        config.inflight_max = 2;
    }
    if shape & 2 != 0 {
        config.apply_batch_max = 1;
    }
    if shape & 4 != 0 {
        config.uncommitted_entries_max = 8;
    }
    let mut cluster = RaftCluster {
        now: Instant::from_micros(1_000_000),
        config,
        seed,
        voters: Vec::with_capacity(RAFT_VOTERS),
        in_flight: Vec::new(),
        committed: Vec::new(),
        leaders: BTreeMap::new(),
        proposals: 0,
        stats: ConsensusStats::default(),
    };
    for index in 0..RAFT_VOTERS {
        let raft = cluster.boot(index, PersistedState::default(), 0);
        cluster.voters.push(RaftVoter {
            raft,
            timers: Vec::new(),
            pending: VecDeque::new(),
            durable: PersistedState::default(),
            issued: 0,
            applied: 0,
            restarts: 0,
        });
        cluster.after(index);
    }
    while !u.is_empty() && cluster.stats.steps < STEPS_MAX {
        let Ok(step) = u.arbitrary::<RaftStep>() else {
            break;
        };
        cluster.stats.steps += 1;
        cluster.step(step);
    }
    cluster.stats.committed = cluster.committed.len() as u64;
    cluster.stats.commands_committed = cluster
        .committed
        .iter()
        .filter(|e| matches!(e.payload, raft::Payload::Command { .. }))
        .count() as u64;
    cluster.stats
}

/// A digest of the committed log up to `index`: the fuzz driver's "state machine snapshot".
fn committed_digest(committed: &[Entry], index: u64) -> Vec<u8> {
    let mut hasher = DefaultHasher::new();
    committed[..index as usize].hash(&mut hasher);
    hasher.finish().to_le_bytes().to_vec()
}

impl RaftCluster {
    fn boot(&self, index: usize, persisted: PersistedState, restarts: u64) -> Raft {
        let voters: BTreeSet<VoterId> = (0..RAFT_VOTERS).map(voter_id).collect();
        let seed = self.seed ^ (index as u64) ^ (restarts << 8);
        Raft::restore(
            self.config.clone(),
            voter_id(index),
            voters,
            persisted,
            seed,
            self.now,
        )
        .expect("what was durable restores")
    }

    fn pick(which: u8) -> usize {
        usize::from(which) % RAFT_VOTERS
    }

    fn step(&mut self, step: RaftStep) {
        if std::env::var_os("IDUNNO_FUZZ_TRACE").is_some() {
            let roles: Vec<String> = self
                .voters
                .iter()
                .map(|v| {
                    format!(
                        "{:?}/{:?}/dur{:?}",
                        v.raft.role(),
                        v.raft.hard_state(),
                        v.durable.hard_state
                    )
                })
                .collect();
            eprintln!("{roles:?}\n  step {step:?}");
        }
        self.step_inner(step);
    }

    fn step_inner(&mut self, step: RaftStep) {
        match step {
            RaftStep::Deliver { pick, duplicate } => {
                if self.in_flight.is_empty() {
                    return;
                }
                let at = usize::from(pick) % self.in_flight.len();
                let message = if duplicate {
                    self.in_flight[at].clone()
                } else {
                    self.in_flight.remove(at)
                };
                self.deliver(message);
            }
            RaftStep::Drop { pick } => {
                if !self.in_flight.is_empty() {
                    let at = usize::from(pick) % self.in_flight.len();
                    self.in_flight.remove(at);
                }
            }
            RaftStep::Timer { node, pick } => {
                let node = Self::pick(node);
                let timers = &mut self.voters[node].timers;
                if timers.is_empty() {
                    return;
                }
                let (at, timer) = timers.remove(usize::from(pick) % timers.len());
                self.now = self.now.max(at);
                self.input(node, raft::Input::Timer(timer))
                    .expect("timers are always accepted");
            }
            RaftStep::Persist { node, count } => {
                self.persist(Self::pick(node), usize::from(count % 4) + 1);
            }
            RaftStep::Propose {
                node,
                to_leader,
                len,
                fill,
            } => {
                let leader = self
                    .voters
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.raft.is_leader())
                    .max_by_key(|(_, v)| v.raft.term())
                    .map(|(i, _)| i);
                let node = match leader {
                    Some(leader) if to_leader => leader,
                    _ => Self::pick(node),
                };
                self.proposals += 1;
                let input = raft::Input::Propose {
                    id: self.proposals,
                    command: vec![fill; usize::from(len % 64)],
                };
                // Refusals (not the leader, queue full) are fine.
                let _ = self.input(node, input);
            }
            RaftStep::Restart { node } => self.restart(Self::pick(node)),
            RaftStep::Advance { millis } => {
                self.now = self.now + Duration::from_millis(u64::from(millis));
            }
            RaftStep::Raw { to, from, bytes } => self.inject(to, from, &bytes, None),
            RaftStep::RawBody { to, from, body } => {
                let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
                let mut bytes = len.to_be_bytes().to_vec();
                bytes.extend_from_slice(&body);
                self.inject(to, from, &bytes, None);
            }
            RaftStep::Tamper {
                pick,
                at,
                value,
                to,
            } => {
                if self.in_flight.is_empty() {
                    return;
                }
                let original = &self.in_flight[usize::from(pick) % self.in_flight.len()];
                let mut bytes = original.bytes.clone();
                let at = usize::from(at) % bytes.len();
                bytes[at] = value;
                let from = (original.from.0 - 1) as u8;
                // Genuine when unchanged, to whichever voter: every message kind is safe to
                // deliver to another voter (a request went to every peer anyway, a leader's
                // entries are its log, a response reaches a non-leader or a non-candidate, and
                // a vote response names its candidate, so no one else counts it).
                let before = raft::decode(&original.bytes).ok();
                self.inject(to, from, &bytes, before);
            }
            RaftStep::Pump { rounds, tick_ms } => {
                for _ in 0..=(rounds % RAFT_PUMP_ROUNDS_MAX) {
                    for node in 0..RAFT_VOTERS {
                        self.persist(node, usize::MAX);
                    }
                    for message in std::mem::take(&mut self.in_flight) {
                        self.deliver(message);
                    }
                    self.now = self.now + Duration::from_millis(u64::from(tick_ms));
                    self.fire_due();
                }
            }
            RaftStep::Compact { node, back } => {
                let node = Self::pick(node);
                let raft = &self.voters[node].raft;
                let index = raft.applied_index().saturating_sub(u64::from(back % 8));
                if index < raft.first_index() {
                    return;
                }
                let data = if self.stats.forged {
                    Vec::new()
                } else {
                    committed_digest(&self.committed, index)
                };
                self.input(node, raft::Input::Compact { index, data })
                    .expect("a compaction up to the applied index is accepted");
                self.stats.compactions += 1;
            }
            RaftStep::Read { node } => {
                self.proposals += 1;
                let id = self.proposals;
                let _ = self.input(Self::pick(node), raft::Input::ReadIndex { id });
            }
        }
    }

    /// Raw bytes to voter `to % 3` from voter `from % 4` (3: not a voter). A message that
    /// decodes, is valid, comes from another voter and differs from `genuine` (the message the
    /// bytes were taken from, whoever it was sent to) is a forgery:
    /// the cluster-wide safety checks are off from then on.
    fn inject(&mut self, to: u8, from: u8, bytes: &[u8], genuine: Option<raft::Message>) {
        let to = Self::pick(to);
        let from = match from % 4 {
            3 => VoterId(99),
            i => voter_id(usize::from(i)),
        };
        let Ok(msg) = raft::decode(bytes) else {
            return;
        };
        self.stats.raw_decoded += 1;
        let voter = from != voter_id(to) && from != VoterId(99);
        let is_genuine = genuine.is_some_and(|genuine| genuine == msg);
        if voter && msg.validate().is_ok() && !is_genuine {
            self.stats.forged = true;
        }
        // Any refusal is fine; only a panic is not.
        let _ = self.input(to, raft::Input::Message { from, msg });
    }

    fn deliver(&mut self, message: RaftInFlight) {
        let msg = raft::decode(&message.bytes).expect("the cluster's own messages decode");
        self.stats.delivered += 1;
        let result = self.input(
            message.to,
            raft::Input::Message {
                from: message.from,
                msg,
            },
        );
        assert!(
            !matches!(
                result,
                Err(raft::Error::Malformed(_)
                    | raft::Error::UnknownPeer(_)
                    | raft::Error::FromSelf)
            ),
            "a message between voters was refused: {result:?}"
        );
    }

    /// Makes up to `count` outstanding batches of `node` durable, then acknowledges them.
    fn persist(&mut self, node: usize, count: usize) {
        let voter = &mut self.voters[node];
        let mut last = None;
        for _ in 0..count {
            let Some(batch) = voter.pending.pop_front() else {
                break;
            };
            voter.durable.apply(&batch);
            last = Some(batch.batch);
        }
        if let Some(batch) = last {
            self.input(node, raft::Input::Persisted(batch))
                .expect("an issued batch is acknowledged");
        }
    }

    /// Every remembered timer of every voter that is due, in deadline order.
    fn fire_due(&mut self) {
        let mut due: Vec<(Instant, usize, raft::Timer)> = Vec::new();
        for (node, voter) in self.voters.iter_mut().enumerate() {
            let now = self.now;
            voter.timers.retain(|&(at, timer)| {
                if at <= now {
                    due.push((at, node, timer));
                    false
                } else {
                    true
                }
            });
        }
        due.sort();
        for (_, node, timer) in due {
            self.input(node, raft::Input::Timer(timer))
                .expect("timers are always accepted");
        }
    }

    fn restart(&mut self, node: usize) {
        let restarts = self.voters[node].restarts + 1;
        let durable = self.voters[node].durable.clone();
        if durable.snapshot.is_some() || !durable.entries.is_empty() {
            self.stats.restarts_with_state += 1;
        }
        let applied = durable.snapshot.as_ref().map_or(0, |s| s.index);
        let raft = self.boot(node, durable, restarts);
        let voter = &mut self.voters[node];
        voter.raft = raft;
        voter.restarts = restarts;
        voter.timers.clear();
        voter.pending.clear();
        voter.issued = 0;
        voter.applied = applied;
        self.stats.restarts += 1;
        self.after(node);
    }

    fn input(&mut self, node: usize, input: raft::Input) -> Result<(), raft::Error> {
        let result = self.voters[node].raft.handle(self.now, input);
        self.after(node);
        result
    }

    /// Checks `node` and the cluster after an input, then carries out its outputs.
    fn after(&mut self, node: usize) {
        self.record_commits(node);
        let me = voter_id(node);
        while let Some(output) = self.voters[node].raft.poll_output() {
            match output {
                raft::Output::Persist(batch) => {
                    let voter = &mut self.voters[node];
                    assert_eq!(batch.batch, voter.issued + 1, "batches numbered in order");
                    voter.issued = batch.batch;
                    voter.pending.push_back(batch);
                }
                raft::Output::Send { to, msg } => {
                    assert_ne!(to, me, "a voter never sends to itself");
                    let to = usize::try_from(to.0)
                        .ok()
                        .and_then(|i| i.checked_sub(1))
                        .filter(|&i| i < RAFT_VOTERS)
                        .unwrap_or_else(|| panic!("send to {to:?}, not a voter"));
                    assert_eq!(msg.validate(), Ok(()), "sent a malformed message {msg:?}");
                    if let Body::AppendEntries { entries, .. } = &msg.body {
                        assert!(entries.len() <= self.config.entries_per_message_max);
                    }
                    let bytes = raft::encode(&msg).expect("every message encodes");
                    assert!(bytes.len() <= MESSAGE_BYTES_MAX);
                    if self.in_flight.len() >= RAFT_IN_FLIGHT_MAX {
                        self.in_flight.remove(0);
                    }
                    self.in_flight.push(RaftInFlight {
                        from: me,
                        to,
                        bytes,
                    });
                }
                raft::Output::SetTimer { timer, at } => {
                    assert!(at >= self.now, "timer {timer:?} asked for the past");
                    let timers = &mut self.voters[node].timers;
                    if timers.len() >= RAFT_TIMERS_KEPT_MAX {
                        timers.remove(0);
                    }
                    timers.push((at, timer));
                }
                raft::Output::Apply(entries) => {
                    for entry in entries {
                        let voter = &mut self.voters[node];
                        assert_eq!(entry.index, voter.applied + 1, "applies are contiguous");
                        voter.applied = entry.index;
                        if !self.stats.forged {
                            let known = self.committed.get(entry.index as usize - 1);
                            assert_eq!(
                                known,
                                Some(&entry),
                                "{me:?} applied an entry that differs from the committed one"
                            );
                        }
                    }
                }
                raft::Output::RestoreSnapshot(snapshot) => {
                    let voter = &mut self.voters[node];
                    assert!(snapshot.index > voter.applied, "a snapshot moves forward");
                    voter.applied = snapshot.index;
                    self.stats.snapshots_restored += 1;
                    if !self.stats.forged {
                        assert!(snapshot.index <= self.committed.len() as u64);
                        assert_eq!(
                            snapshot.data,
                            committed_digest(&self.committed, snapshot.index),
                            "an installed snapshot matches the committed log"
                        );
                    }
                }
                raft::Output::ReadReady { .. } | raft::Output::ReadFailed { .. } => {}
            }
        }
        assert_eq!(
            self.voters[node].applied,
            self.voters[node].raft.applied_index(),
            "every applied index was handed out"
        );
    }

    /// Checks `node`'s view of the committed log against the cluster's and extends it; checks
    /// the one-leader-per-term rule.
    fn record_commits(&mut self, node: usize) {
        if self.stats.forged {
            return;
        }
        let raft = &self.voters[node].raft;
        let me = raft.id();
        if raft.is_leader() {
            let leader = *self.leaders.entry(raft.term()).or_insert(me);
            assert_eq!(leader, me, "two leaders in term {}", raft.term());
            self.stats.leader_terms = self.leaders.len();
        }
        if let Some(snapshot) = raft.snapshot() {
            let known = self.committed.get(snapshot.index as usize - 1);
            assert_eq!(
                known.map(|e| e.term),
                Some(snapshot.term),
                "{me:?}'s snapshot is not of the committed log"
            );
        }
        let commit = raft.commit_index();
        let known = self.committed.len() as u64;
        for index in raft.first_index()..=commit.min(known) {
            let entry = raft
                .entry(index)
                .unwrap_or_else(|| panic!("{me:?} lost committed entry {index}"));
            assert_eq!(
                entry,
                &self.committed[index as usize - 1],
                "{me:?} changed committed entry {index}"
            );
        }
        for index in known + 1..=commit {
            let entry = raft.entry(index).unwrap_or_else(|| {
                panic!("{me:?} committed {index}, neither in its log nor seen committed")
            });
            self.committed.push(entry.clone());
        }
    }
}

/// One message of every body kind, encoded: the `consensus_message` seeds.
fn consensus_message_seeds() -> Vec<(String, Vec<u8>)> {
    let entry = |index, payload| Entry {
        term: 2,
        index,
        payload,
    };
    let bodies = [
        (
            "pre_vote",
            Body::PreVote {
                last_index: 3,
                last_term: 1,
            },
        ),
        (
            "pre_vote_response",
            Body::PreVoteResponse {
                candidate: VoterId(2),
                granted: true,
            },
        ),
        (
            "request_vote",
            Body::RequestVote {
                last_index: 3,
                last_term: 1,
            },
        ),
        (
            "vote_response",
            Body::VoteResponse {
                candidate: VoterId(2),
                granted: false,
            },
        ),
        (
            "append_entries",
            Body::AppendEntries {
                prev_index: 3,
                prev_term: 1,
                entries: vec![
                    entry(4, raft::Payload::Noop),
                    entry(
                        5,
                        raft::Payload::Command {
                            id: 7,
                            bytes: b"set k v".to_vec(),
                        },
                    ),
                ],
                leader_commit: 4,
            },
        ),
        (
            "heartbeat",
            Body::AppendEntries {
                prev_index: 0,
                prev_term: 0,
                entries: Vec::new(),
                leader_commit: 0,
            },
        ),
        (
            "install_snapshot",
            Body::InstallSnapshot {
                snapshot: raft::Snapshot {
                    index: 9,
                    term: 2,
                    data: vec![1, 2, 3, 4],
                },
            },
        ),
        (
            "append_response",
            Body::AppendResponse {
                prev_index: 3,
                index: 5,
                success: true,
            },
        ),
    ];
    bodies
        .into_iter()
        .map(|(name, body)| {
            let msg = raft::Message {
                term: 2,
                context: 1,
                body,
            };
            (
                name.to_owned(),
                raft::encode(&msg).expect("sample messages encode"),
            )
        })
        .collect()
}

/// Consensus inputs found by a deterministic search over pseudo-random inputs: for each goal
/// (a leader, committed commands, two leaderships, a restart with durable state, a compaction,
/// an installed snapshot) the first input that reaches it, if the search finds one.
fn consensus_events_seeds() -> Vec<(String, Vec<u8>)> {
    type Goal = (&'static str, fn(&ConsensusStats) -> bool);
    let goals: [Goal; 6] = [
        ("leader", |s| s.leader_terms > 0 && !s.forged),
        ("commands", |s| s.commands_committed >= 2 && !s.forged),
        ("two_leaders", |s| s.leader_terms >= 2 && !s.forged),
        ("restart", |s| {
            s.restarts_with_state > 0 && s.committed > 0 && !s.forged
        }),
        ("compacted", |s| s.compactions > 0 && !s.forged),
        ("snapshot", |s| s.snapshots_restored > 0 && !s.forged),
    ];
    let mut found: Vec<(String, Vec<u8>)> = Vec::new();
    for attempt in 0..40_000u64 {
        if found.len() == goals.len() {
            break;
        }
        let len = 64 + (attempt % 8) as usize * 64;
        let input = pseudo_random_bytes(attempt ^ 0xC0FFEE, len);
        let stats = consensus_events(&input);
        for (name, reached) in &goals {
            if reached(&stats) && !found.iter().any(|(n, _)| n == name) {
                found.push(((*name).to_owned(), input.clone()));
            }
        }
    }
    found.sort();
    found
}

// ----- seed corpora -----

/// A few valid membership packets covering every message and update kind, IPv4 and IPv6.
pub fn sample_packets() -> Vec<Packet> {
    let a = NodeId::new(pool_addr(0), 1);
    let b = NodeId::new(pool_addr(1), 2);
    let c = NodeId::new(pool_addr(6), 3);
    let updates = vec![
        Update::Alive {
            node: a,
            incarnation: 0,
        },
        Update::Suspect {
            node: b,
            incarnation: 4,
            by: a,
        },
        Update::Dead {
            node: c,
            incarnation: 1,
            by: b,
        },
        Update::Left {
            node: b,
            incarnation: 5,
        },
    ];
    let packet = |message: Message, gossip: Vec<Update>| Packet {
        from: a,
        to: Some(b),
        message,
        gossip,
    };
    vec![
        packet(Message::Ping { seq: 1 }, Vec::new()),
        packet(Message::Ack { seq: 1 }, updates[..1].to_vec()),
        packet(Message::PingReq { seq: 7, target: c }, Vec::new()),
        Packet {
            to: None,
            ..packet(Message::Join, Vec::new())
        },
        packet(
            Message::Sync {
                entries: updates.clone(),
                reply: false,
            },
            Vec::new(),
        ),
        packet(Message::Gossip, updates),
    ]
}

/// Every control request and a few responses of each kind.
fn sample_frames() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let requests = [
        ("list_members", ControlRequest::ListMembers),
        ("list_self", ControlRequest::ListSelf),
        ("leave", ControlRequest::Leave),
    ];
    for (name, request) in requests {
        let frame = wire::encode_frame(&request).expect("requests encode");
        out.push((format!("request_{name}"), frame));
    }
    let id = NodeId::new(pool_addr(0), 1);
    let member = |state| Member {
        id,
        incarnation: 2,
        state,
        since: Instant::from_micros(5),
    };
    let responses = [
        (
            "members",
            ControlResponse::Members(vec![member(MemberState::Alive), member(MemberState::Dead)]),
        ),
        (
            "self_info",
            ControlResponse::SelfInfo { id, incarnation: 3 },
        ),
        ("leaving", ControlResponse::Leaving),
        ("error", ControlResponse::Error("no".into())),
    ];
    for (name, response) in responses {
        let frame = wire::encode_frame(&response).expect("responses encode");
        out.push((format!("response_{name}"), frame));
    }
    out
}

/// Deterministic pseudo-random bytes (splitmix64), so the seed search needs no RNG crate.
fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Membership inputs found by a deterministic search over pseudo-random inputs: for each goal
/// (all machines see each other, a failure, a graceful leave, a refutation, many decode errors)
/// the first input that reaches it.
fn membership_seeds() -> Vec<(String, Vec<u8>)> {
    type Goal = (&'static str, fn(&MembershipStats) -> bool);
    let goals: [Goal; 6] = [
        ("converged_3", |s| s.machines == 3 && s.live_view_max == 3),
        ("converged_2", |s| s.machines == 2 && s.live_view_max == 2),
        ("failed", |s| s.events[3] > 0),
        ("self_left", |s| s.events[5] > 0),
        ("refuted", |s| s.events[2] > 0),
        ("suspect", |s| s.events[1] > 0),
    ];
    let mut found: Vec<(String, Vec<u8>)> = Vec::new();
    for attempt in 0..20_000u64 {
        if found.len() == goals.len() {
            break;
        }
        let len = 64 + (attempt % 8) as usize * 96;
        let input = pseudo_random_bytes(attempt, len);
        let stats = membership_events(&input);
        for (name, reached) in &goals {
            if reached(&stats) && !found.iter().any(|(n, _)| n == name) {
                found.push(((*name).to_owned(), input.clone()));
            }
        }
    }
    found.sort();
    found
}

/// The seed corpus of `target`: (file name, bytes). Small valid encodings for the wire targets;
/// inputs that reach distinct situations for the membership target.
pub fn seed_corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "wire_datagram" => sample_packets()
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let bytes =
                    wire::encode_datagram(&Datagram::Membership(p)).expect("sample packets encode");
                (format!("packet_{i}"), bytes)
            })
            .collect(),
        "wire_frame" => sample_frames(),
        "membership_events" => membership_seeds(),
        "consensus_message" => consensus_message_seeds(),
        "consensus_events" => consensus_events_seeds(),
        "cluster_state" => cluster_state_seeds(),
        "auth_datagram" | "auth_handshake" | "auth_records" => crate::fuzz_auth::seeds(target),
        _ => Vec::new(),
    }
}

// ----- cluster state (file-system metadata and scheduler) -----

/// Nodes the cluster-state target draws from (small, so commands collide on purpose).
const STATE_NODES: u8 = 6;
/// Names the cluster-state target draws from.
const STATE_NAMES: [&str; 4] = ["a", "a/b", "inputs/x.jpg", "results/1"];
/// Most operations one cluster-state input runs.
const STATE_STEPS_MAX: usize = 400;

fn state_node(index: u8) -> NodeId {
    let i = index % STATE_NODES;
    NodeId::new(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i)), 7000),
        1 + u64::from(index / STATE_NODES % 2),
    )
}

/// One operation on the replicated state, drawn from the fuzz input.
fn state_op(
    u: &mut Unstructured<'_>,
    jobs: &[u64],
    leases: &[u64],
) -> arbitrary::Result<ClusterOp> {
    use idunno_core::consensus::KvCommand;
    use idunno_core::dfs::{ContentHash, DfsCommand, RequestId};
    use idunno_core::scheduler::{Completion, InputOutcome, JobId, JobSpec, LeaseId, SchedCommand};
    let pick = |u: &mut Unstructured<'_>, from: &[u64]| -> arbitrary::Result<u64> {
        if from.is_empty() || u.ratio(1, 8)? {
            return u.arbitrary();
        }
        Ok(from[u.choose_index(from.len())?])
    };
    let name = |u: &mut Unstructured<'_>| -> arbitrary::Result<String> {
        if u.ratio(1, 16)? {
            return u.arbitrary::<String>();
        }
        Ok(STATE_NAMES[u.choose_index(STATE_NAMES.len())?].to_owned())
    };
    let hash = |u: &mut Unstructured<'_>| -> arbitrary::Result<ContentHash> {
        Ok(ContentHash([u.int_in_range(0..=7u8)?; 32]))
    };
    let request = |u: &mut Unstructured<'_>| -> arbitrary::Result<RequestId> {
        Ok(RequestId {
            client: u.int_in_range(0..=3)?,
            seq: u.int_in_range(0..=40)?,
        })
    };
    Ok(match u.int_in_range(0..=17u8)? {
        0 => ClusterOp::Kv(KvCommand::Put {
            key: name(u)?,
            value: u.arbitrary()?,
        }),
        1 => ClusterOp::NodeFailed {
            node: state_node(u.arbitrary()?),
        },
        2 | 3 => {
            let count = u.int_in_range(0..=5usize)?;
            let replicas = (0..count)
                .map(|_| u.arbitrary().map(state_node))
                .collect::<arbitrary::Result<Vec<_>>>()?;
            ClusterOp::Dfs(DfsCommand::Commit {
                name: name(u)?,
                size: u.arbitrary()?,
                hash: hash(u)?,
                replicas,
                request: request(u)?,
            })
        }
        4 => ClusterOp::Dfs(DfsCommand::Delete {
            name: name(u)?,
            request: request(u)?,
        }),
        5 => ClusterOp::Dfs(DfsCommand::ReplicaAdded {
            hash: hash(u)?,
            node: state_node(u.arbitrary()?),
        }),
        6 => ClusterOp::Dfs(DfsCommand::ReplicaLost {
            hash: hash(u)?,
            node: state_node(u.arbitrary()?),
        }),
        7 => {
            let inputs = (0..u.int_in_range(0..=12usize)?)
                .map(|i| format!("in/{i}"))
                .collect();
            ClusterOp::Sched(SchedCommand::Submit {
                spec: JobSpec {
                    model: if u.ratio(1, 8)? {
                        u.arbitrary()?
                    } else {
                        "noop".into()
                    },
                    inputs,
                    batch_size: u.int_in_range(0..=5)?,
                    lease_millis: u.int_in_range(50..=3000)?,
                },
                request: u.int_in_range(0..=20)?,
            })
        }
        8 | 9 => ClusterOp::Sched(SchedCommand::Lease {
            worker: state_node(u.arbitrary()?),
            request: u.int_in_range(0..=60)?,
        }),
        10 | 11 => {
            let results = (0..u.int_in_range(0..=6usize)?)
                .map(|_| -> arbitrary::Result<Completion> {
                    Ok(Completion {
                        input: u.int_in_range(0..=12)?,
                        outcome: if u.ratio(1, 4)? {
                            InputOutcome::Failed(u.arbitrary()?)
                        } else {
                            InputOutcome::Result(name(u)?)
                        },
                        elapsed_micros: u.int_in_range(0..=100_000)?,
                    })
                })
                .collect::<arbitrary::Result<Vec<_>>>()?;
            let lease = LeaseId(pick(u, leases)?);
            let worker = state_node(u.arbitrary()?);
            ClusterOp::Sched(if u.ratio(1, 2)? {
                SchedCommand::Complete {
                    lease,
                    worker,
                    results,
                }
            } else {
                SchedCommand::CompleteAndLease {
                    lease,
                    worker,
                    results,
                    request: u.int_in_range(0..=60)?,
                }
            })
        }
        12 => ClusterOp::Sched(SchedCommand::SetBatchSize {
            job: JobId(pick(u, jobs)?),
            size: u.int_in_range(0..=300)?,
        }),
        _ => ClusterOp::Sched(if u.ratio(1, 2)? {
            SchedCommand::ExpireLeases
        } else {
            SchedCommand::Cancel {
                job: JobId(pick(u, jobs)?),
            }
        }),
    })
}

/// The replicated cluster state ([`ClusterState`]: key-value store, failed nodes, file-system
/// namespace, scheduler) driven by an arbitrary sequence of commands, some of them raw bytes,
/// with time that mostly advances and sometimes goes back. After every command: no panic; the
/// result decodes; the replicated clock never goes back; per name, version numbers strictly
/// increase and at most the configured number are kept; the scheduler's own `verify` holds; an
/// input's result, once recorded, never changes. At a point chosen by the input the state is
/// snapshotted and restored into a second replica that then applies the same commands: both end
/// equal, with equal snapshots.
pub fn cluster_state(data: &[u8]) {
    use idunno_core::consensus::StateMachine;
    use idunno_core::scheduler::InputState;

    let mut u = Unstructured::new(data);
    let mut state = ClusterState::default();
    let mut replica: Option<ClusterState> = None;
    let fork_at = u.int_in_range(0..=STATE_STEPS_MAX).unwrap_or(0);
    let mut now = 1_000_000u64;
    let mut done: BTreeMap<(u64, usize), InputState> = BTreeMap::new();
    let mut index = 0u64;
    for step in 0..STATE_STEPS_MAX {
        if u.is_empty() {
            break;
        }
        if step == fork_at {
            let snapshot = state.snapshot().expect("a fuzzed state is small");
            let mut copy = ClusterState::default();
            copy.restore(&snapshot).expect("a snapshot restores");
            assert_eq!(copy, state, "restore reproduces the state");
            replica = Some(copy);
        }
        let jobs: Vec<u64> = state.scheduler().jobs().map(|j| j.id().0).collect();
        let leases: Vec<u64> = state
            .scheduler()
            .leases()
            .iter()
            .map(|lease| lease.id.0)
            .collect();
        // Time mostly moves forward; a new leader's clock may lag (the state clamps it).
        now = match u.int_in_range(0..=9u8).unwrap_or(0) {
            0 => now.saturating_sub(u.int_in_range(0..=5_000_000).unwrap_or(0)),
            _ => now.saturating_add(u.int_in_range(0..=400_000).unwrap_or(0)),
        };
        let bytes = if u.ratio(1, 32).unwrap_or(false) {
            u.arbitrary::<Vec<u8>>().unwrap_or_default()
        } else {
            let Ok(op) = state_op(&mut u, &jobs, &leases) else {
                break;
            };
            ClusterCommand::new(Instant::from_micros(now), op)
                .encode()
                .expect("fuzzed commands are small")
        };
        index += 1;
        let clock = state.now();
        let result = state.apply(index, &bytes);
        assert!(ClusterResult::decode(&result).is_ok(), "results decode");
        if let Some(copy) = replica.as_mut() {
            assert_eq!(copy.apply(index, &bytes), result, "replicas answer alike");
        }
        assert!(state.now() >= clock, "the replicated clock went back");
        let keep = idunno_core::dfs::DfsConfig::default().versions_kept;
        for (name, versions) in state.dfs().files() {
            assert!(versions.len() <= keep, "{name}: too many versions");
            assert!(
                versions.windows(2).all(|w| w[0].number < w[1].number),
                "{name}: version numbers must strictly increase: {versions:?}"
            );
        }
        if let Err(e) = state.scheduler().verify() {
            panic!("scheduler invariant: {e}");
        }
        for job in state.scheduler().jobs() {
            for (i, input) in job.inputs().iter().enumerate() {
                if matches!(input, InputState::Done { .. }) {
                    let first = done.entry((job.id().0, i)).or_insert_with(|| input.clone());
                    assert_eq!(
                        first,
                        input,
                        "job {} input {i} got a second result",
                        job.id().0
                    );
                }
            }
        }
    }
    if let Some(copy) = replica {
        assert_eq!(copy, state, "a restored replica diverged");
        assert_eq!(copy.snapshot().ok(), state.snapshot().ok());
    }
}

fn cluster_state_seeds() -> Vec<(String, Vec<u8>)> {
    (0u8..8)
        .map(|seed| {
            let bytes: Vec<u8> = (0..4096u32)
                .map(|i| {
                    let x = (i.wrapping_mul(2_654_435_761) ^ u32::from(seed).wrapping_mul(40_503))
                        >> 13;
                    x.to_le_bytes()[0]
                })
                .collect();
            (format!("mixed_{seed}"), bytes)
        })
        .collect()
}
