//! The generic simulated world: a virtual clock, one seeded RNG, the event queue, the network
//! and one slot per node, each running at most one instance of a [`Machine`] at a time.
//!
//! Owns: time (it only moves forward, to the next event), every random draw (the network's and
//! each machine's RNG seed come from the one [`ChaCha8Rng`] seeded by the simulation seed), node
//! lifecycles (start, crash, restart as a new generation), delivery of datagrams and timers,
//! the notification log the checkers read, and the trace hash that proves a replay is exact.
//! Inputs: the calls of the layer above (`start`, `crash`, `command`, `step`, `run_until`).
//! Outputs: machine inputs, [`Notification`]s, counters.
//! Must never: use wall-clock time or any randomness but its own RNG, iterate a hash map, run
//! an unbounded loop, or deliver a timer or message to an instance other than the one it
//! belongs to (a crashed instance's timers die with it; datagrams go to whoever holds the
//! address when they arrive, as on a real network).
//!
//! Node `i` lives at [`node_addr`]`(i)`, an address in 127.0.0.0/8; nothing is ever sent.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use idunno_core::time::Instant;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::machine::{Effect, Machine};
use crate::network::{FaultOptions, Network, Route};
use crate::queue::{EventQueue, QUEUE_EVENTS_MAX};
use crate::trace::TraceHasher;

/// Port every simulated node listens on.
pub const NODE_PORT: u16 = 7000;
/// Most effects one input may produce; more is a runaway machine (a bug).
pub const EFFECTS_PER_INPUT_MAX: usize = 1 << 16;
/// Datagrams are dropped (and counted) once the queue is this full, keeping room for timers.
const QUEUE_DATAGRAMS_MAX: usize = QUEUE_EVENTS_MAX - QUEUE_EVENTS_MAX / 8;

/// The address of node `index`: 127.0.x.y:7000 with x = index / 250, y = index % 250 + 1.
pub fn node_addr(index: usize) -> SocketAddr {
    let x = u8::try_from(index / 250).unwrap_or(u8::MAX);
    let y = u8::try_from(index % 250 + 1).unwrap_or(u8::MAX);
    SocketAddr::from((Ipv4Addr::new(127, 0, x, y), NODE_PORT))
}

/// What a machine is told when it is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartInfo {
    /// The node's slot.
    pub index: usize,
    /// Its address.
    pub addr: SocketAddr,
    /// 1 for the first start of this slot, then one more per restart.
    pub generation: u64,
    /// A seed for the machine's own RNG, drawn from the simulation's RNG.
    pub rng_seed: u64,
    /// The current virtual time.
    pub now: Instant,
}

/// A machine's [`Machine::Notify`] with where and when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification<N> {
    /// Virtual time.
    pub at: Instant,
    /// The node's slot.
    pub index: usize,
    /// The instance (generation) that reported it.
    pub generation: u64,
    /// What it reported.
    pub notify: N,
}

/// Whole-world counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorldStats {
    /// Events popped from the queue.
    pub steps: u64,
    /// Datagrams handed to a running machine.
    pub datagrams_delivered: u64,
    /// Timers handed to the instance that asked for them.
    pub timers_fired: u64,
    /// Timers of instances that no longer run (crashed or stopped), ignored.
    pub timers_of_dead_instances: u64,
    /// Inputs a machine refused with an error (bad bytes, misdirected, after leaving).
    pub inputs_rejected: u64,
    /// Datagrams sent to an address no slot has.
    pub unroutable: u64,
    /// Datagrams dropped because the event queue was nearly full.
    pub dropped_queue_full: u64,
}

#[derive(Debug)]
enum Pending<T> {
    Deliver {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
    },
    Timer {
        index: usize,
        generation: u64,
        timer: T,
    },
}

#[derive(Debug)]
struct Slot<M> {
    addr: SocketAddr,
    /// Generation of the latest start (0 = never started).
    generation: u64,
    running: Option<M>,
}

/// The world a set of machines of type `M` lives in. See the module docs.
#[derive(Debug)]
pub struct World<M: Machine> {
    seed: u64,
    now: Instant,
    rng: ChaCha8Rng,
    queue: EventQueue<Pending<M::Timer>>,
    network: Network,
    slots: Vec<Slot<M>>,
    by_addr: BTreeMap<SocketAddr, usize>,
    notifications: Vec<Notification<M::Notify>>,
    trace: TraceHasher,
    stats: WorldStats,
}

/// Trace record tags, so different kinds of records never hash alike.
mod tag {
    pub const START: u64 = 1;
    pub const STOP: u64 = 2;
    pub const DELIVER: u64 = 3;
    pub const TIMER: u64 = 4;
    pub const COMMAND: u64 = 5;
    pub const SEND: u64 = 6;
    pub const SET_TIMER: u64 = 7;
    pub const NOTIFY: u64 = 8;
    pub const REJECTED: u64 = 9;
    pub const DROPPED: u64 = 10;
}

impl<M: Machine> World<M> {
    /// A world of `node_count` empty slots at time zero, everything random drawn from `seed`.
    pub fn new(seed: u64, node_count: usize, faults: FaultOptions) -> Result<Self, String> {
        let network = Network::new(node_count, faults)?;
        let slots: Vec<Slot<M>> = (0..node_count)
            .map(|index| Slot {
                addr: node_addr(index),
                generation: 0,
                running: None,
            })
            .collect();
        let by_addr: BTreeMap<SocketAddr, usize> =
            slots.iter().enumerate().map(|(i, s)| (s.addr, i)).collect();
        debug_assert_eq!(by_addr.len(), node_count, "node addresses are distinct");
        let mut trace = TraceHasher::new();
        trace.mix(seed);
        Ok(World {
            seed,
            now: Instant::ZERO,
            rng: ChaCha8Rng::seed_from_u64(seed),
            queue: EventQueue::with_capacity_max(QUEUE_EVENTS_MAX),
            network,
            slots,
            by_addr,
            notifications: Vec::new(),
            trace,
            stats: WorldStats::default(),
        })
    }

    // ----- getters -----

    /// The seed everything was drawn from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Number of slots.
    pub fn node_count(&self) -> usize {
        self.slots.len()
    }

    /// The running instance in slot `index`, if any.
    pub fn machine(&self, index: usize) -> Option<&M> {
        self.slots.get(index).and_then(|s| s.running.as_ref())
    }

    /// Whether slot `index` runs an instance.
    pub fn is_running(&self, index: usize) -> bool {
        self.machine(index).is_some()
    }

    /// Generation of the latest start of slot `index` (0 if never started).
    pub fn generation(&self, index: usize) -> u64 {
        self.slots.get(index).map_or(0, |s| s.generation)
    }

    /// The slot listening on `addr`.
    pub fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.by_addr.get(&addr).copied()
    }

    /// The network (partitions, fault options, traffic counters).
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The network, to partition, heal or change fault options.
    pub fn network_mut(&mut self) -> &mut Network {
        &mut self.network
    }

    /// Counters.
    pub fn stats(&self) -> WorldStats {
        self.stats
    }

    /// Digest of every event processed and every effect produced so far.
    pub fn trace_digest(&self) -> u64 {
        self.trace.digest()
    }

    /// Events waiting in the queue.
    pub fn pending_events(&self) -> usize {
        self.queue.len()
    }

    /// The time of the next event, if any.
    pub fn next_event_time(&self) -> Option<Instant> {
        self.queue.peek_time()
    }

    /// A random draw from the simulation's RNG, for fault schedules chosen by the layer above.
    pub fn random_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// A uniform draw in `0..bound` (`bound` >= 1) from the simulation's RNG.
    pub fn random_below(&mut self, bound: u64) -> u64 {
        assert!(bound >= 1, "empty range");
        rand::Rng::random_range(&mut self.rng, 0..bound)
    }

    /// Takes every notification reported since the last call, in order.
    pub fn take_notifications(&mut self) -> Vec<Notification<M::Notify>> {
        std::mem::take(&mut self.notifications)
    }

    /// Whether notifications are waiting to be taken.
    pub fn has_notifications(&self) -> bool {
        !self.notifications.is_empty()
    }

    // ----- lifecycle -----

    /// Starts a new instance in slot `index` (which must not be running) with the next
    /// generation, built by `make`, and executes the effects of its construction.
    pub fn start<E: std::fmt::Debug>(
        &mut self,
        index: usize,
        make: impl FnOnce(&StartInfo) -> Result<M, E>,
    ) -> Result<u64, String> {
        let slot = self
            .slots
            .get(index)
            .ok_or_else(|| format!("no slot {index}"))?;
        if slot.running.is_some() {
            return Err(format!("slot {index} is already running"));
        }
        let info = StartInfo {
            index,
            addr: slot.addr,
            generation: slot.generation + 1,
            rng_seed: self.rng.next_u64(),
            now: self.now,
        };
        let machine = make(&info).map_err(|e| format!("starting slot {index}: {e:?}"))?;
        let slot = &mut self.slots[index];
        slot.generation = info.generation;
        slot.running = Some(machine);
        self.trace.mix(tag::START);
        self.trace.mix(index as u64);
        self.trace.mix(info.generation);
        self.trace.mix(info.rng_seed);
        self.drain(index);
        debug_assert!(self.is_running(index));
        Ok(info.generation)
    }

    /// Drops the instance in slot `index` (a crash, or the end of a graceful leave). Its pending
    /// timers are ignored from now on. Returns whether anything was running.
    pub fn stop(&mut self, index: usize) -> bool {
        let Some(slot) = self.slots.get_mut(index) else {
            return false;
        };
        let was_running = slot.running.take().is_some();
        self.trace.mix(tag::STOP);
        self.trace.mix(index as u64);
        debug_assert!(!self.is_running(index));
        was_running
    }

    /// Hands `command` to the running instance in slot `index` now.
    pub fn command(&mut self, index: usize, command: M::Command) -> Result<(), String> {
        let now = self.now;
        let machine = self
            .slots
            .get_mut(index)
            .and_then(|s| s.running.as_mut())
            .ok_or_else(|| format!("slot {index} is not running"))?;
        self.trace.mix(tag::COMMAND);
        self.trace.mix(index as u64);
        command.hash(&mut self.trace);
        let result = machine.handle_command(now, command);
        if result.is_err() {
            self.stats.inputs_rejected += 1;
            self.trace.mix(tag::REJECTED);
        }
        self.drain(index);
        result.map_err(|e| format!("slot {index} refused the command: {e:?}"))
    }

    // ----- time -----

    /// Processes the earliest pending event. Returns false when nothing is pending.
    pub fn step(&mut self) -> bool {
        let Some((at, seq, pending)) = self.queue.pop() else {
            return false;
        };
        debug_assert!(at >= self.now, "time never goes back");
        self.now = at;
        self.stats.steps += 1;
        self.trace.mix(at.as_micros());
        self.trace.mix(seq);
        match pending {
            Pending::Deliver { from, to, bytes } => self.deliver(from, to, &bytes),
            Pending::Timer {
                index,
                generation,
                timer,
            } => self.fire(index, generation, timer),
        }
        true
    }

    /// Processes every event due at or before `deadline`, then sets the clock to `deadline`.
    /// Fails, leaving the clock at the last event, if that takes more than `steps_max` steps.
    pub fn run_until(&mut self, deadline: Instant, steps_max: u64) -> Result<u64, String> {
        let mut steps = 0;
        while self.queue.peek_time().is_some_and(|t| t <= deadline) {
            if steps >= steps_max {
                return Err(format!(
                    "run_until({deadline:?}) exceeded {steps_max} steps at {:?}",
                    self.now
                ));
            }
            self.step();
            steps += 1;
        }
        self.advance_to(deadline);
        Ok(steps)
    }

    /// Moves the clock forward to `t` without processing anything; `t` must not be later than
    /// the next pending event (use [`World::run_until`] otherwise).
    pub fn advance_to(&mut self, t: Instant) {
        debug_assert!(self.queue.peek_time().is_none_or(|next| next >= t));
        if t > self.now {
            self.now = t;
        }
    }

    /// `now + span`.
    pub fn after(&self, span: Duration) -> Instant {
        self.now + span
    }

    fn deliver(&mut self, from: usize, to: usize, bytes: &[u8]) {
        let now = self.now;
        let from_addr = self.slots[from].addr;
        let Some(machine) = self.slots[to].running.as_mut() else {
            self.network.count_no_receiver(to);
            self.trace.mix(tag::DROPPED);
            return;
        };
        self.network.count_delivered(to, bytes.len());
        self.stats.datagrams_delivered += 1;
        self.trace.mix(tag::DELIVER);
        self.trace.mix(to as u64);
        if machine.handle_datagram(now, from_addr, bytes).is_err() {
            self.stats.inputs_rejected += 1;
            self.trace.mix(tag::REJECTED);
        }
        self.drain(to);
    }

    fn fire(&mut self, index: usize, generation: u64, timer: M::Timer) {
        let now = self.now;
        let slot = &mut self.slots[index];
        let machine = match slot.running.as_mut() {
            Some(machine) if slot.generation == generation => machine,
            _ => {
                self.stats.timers_of_dead_instances += 1;
                return;
            }
        };
        self.stats.timers_fired += 1;
        self.trace.mix(tag::TIMER);
        self.trace.mix(index as u64);
        timer.hash(&mut self.trace);
        if machine.handle_timer(now, timer).is_err() {
            self.stats.inputs_rejected += 1;
            self.trace.mix(tag::REJECTED);
        }
        self.drain(index);
    }

    /// Executes every effect the instance in slot `index` has queued, in order.
    fn drain(&mut self, index: usize) {
        let now = self.now;
        let World {
            slots,
            queue,
            network,
            rng,
            by_addr,
            notifications,
            trace,
            stats,
            ..
        } = self;
        let slot = &mut slots[index];
        let generation = slot.generation;
        let Some(machine) = slot.running.as_mut() else {
            return;
        };
        for _ in 0..EFFECTS_PER_INPUT_MAX {
            let Some(effect) = machine.poll_effect() else {
                return;
            };
            match effect {
                Effect::Send { to, bytes } => {
                    trace.mix(tag::SEND);
                    to.hash(trace);
                    trace.write(&bytes);
                    let Some(&to_index) = by_addr.get(&to) else {
                        stats.unroutable += 1;
                        continue;
                    };
                    let route = network.route(rng, index, to_index, bytes.len());
                    if let Route::Deliver { first, duplicate } = route {
                        if let Some(second) = duplicate {
                            schedule_datagram(
                                queue,
                                stats,
                                now + second,
                                index,
                                to_index,
                                bytes.clone(),
                            );
                        }
                        schedule_datagram(queue, stats, now + first, index, to_index, bytes);
                    }
                }
                Effect::SetTimer { timer, at } => {
                    trace.mix(tag::SET_TIMER);
                    timer.hash(trace);
                    trace.mix(at.as_micros());
                    assert!(
                        !queue.is_full(),
                        "event queue overflow: a timer would be lost"
                    );
                    queue.push(
                        at.max(now),
                        Pending::Timer {
                            index,
                            generation,
                            timer,
                        },
                    );
                }
                Effect::Notify(notify) => {
                    trace.mix(tag::NOTIFY);
                    notify.hash(trace);
                    notifications.push(Notification {
                        at: now,
                        index,
                        generation,
                        notify,
                    });
                }
            }
        }
        panic!("slot {index} produced more than {EFFECTS_PER_INPUT_MAX} effects for one input");
    }
}

fn schedule_datagram<T>(
    queue: &mut EventQueue<Pending<T>>,
    stats: &mut WorldStats,
    at: Instant,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
) {
    if queue.len() >= QUEUE_DATAGRAMS_MAX {
        stats.dropped_queue_full += 1;
        return;
    }
    queue.push(at, Pending::Deliver { from, to, bytes });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy machine: on every timer it pings every other node and re-arms; it notifies every
    /// datagram it receives.
    #[derive(Debug)]
    struct Pinger {
        peers: Vec<SocketAddr>,
        period: Duration,
        out: std::collections::VecDeque<Effect<u8, (SocketAddr, u8)>>,
    }

    impl Machine for Pinger {
        type Timer = u8;
        type Notify = (SocketAddr, u8);
        type Command = u8;
        type Error = String;

        fn handle_datagram(
            &mut self,
            _: Instant,
            from: SocketAddr,
            bytes: &[u8],
        ) -> Result<(), String> {
            let first = *bytes.first().ok_or("empty")?;
            self.out.push_back(Effect::Notify((from, first)));
            Ok(())
        }

        fn handle_timer(&mut self, now: Instant, timer: u8) -> Result<(), String> {
            for &peer in &self.peers {
                self.out.push_back(Effect::Send {
                    to: peer,
                    bytes: vec![timer],
                });
            }
            self.out.push_back(Effect::SetTimer {
                timer: timer.wrapping_add(1),
                at: now + self.period,
            });
            Ok(())
        }

        fn handle_command(&mut self, _: Instant, command: u8) -> Result<(), String> {
            if command == 0 {
                return Err("zero".into());
            }
            Ok(())
        }

        fn poll_effect(&mut self) -> Option<Effect<u8, (SocketAddr, u8)>> {
            self.out.pop_front()
        }
    }

    fn world(seed: u64, n: usize, faults: FaultOptions) -> World<Pinger> {
        let mut w = World::new(seed, n, faults).expect("valid world");
        for i in 0..n {
            let peers: Vec<SocketAddr> = (0..n).filter(|&j| j != i).map(node_addr).collect();
            w.start(i, |info| {
                let mut out = std::collections::VecDeque::new();
                out.push_back(Effect::SetTimer {
                    timer: 0,
                    at: info.now + Duration::from_millis(10 + info.index as u64),
                });
                Ok::<_, String>(Pinger {
                    peers,
                    period: Duration::from_millis(10),
                    out,
                })
            })
            .expect("starts");
        }
        w
    }

    fn run(w: &mut World<Pinger>, ms: u64) {
        w.run_until(Instant::from_micros(ms * 1000), 1_000_000)
            .expect("bounded");
    }

    #[test]
    fn addresses_are_distinct_loopback_addresses() {
        assert_eq!(node_addr(0), "127.0.0.1:7000".parse().expect("addr"));
        assert_eq!(node_addr(251), "127.0.1.2:7000".parse().expect("addr"));
        assert!(node_addr(999).ip().is_loopback());
    }

    #[test]
    fn same_seed_same_trace_other_seed_other_trace() {
        let faults = FaultOptions {
            duplicate_percent: 5.0,
            ..FaultOptions::lossy(10.0)
        };
        let mut a = world(1, 5, faults.clone());
        let mut b = world(1, 5, faults.clone());
        let mut c = world(2, 5, faults);
        for w in [&mut a, &mut b, &mut c] {
            run(w, 500);
        }
        assert_eq!(a.trace_digest(), b.trace_digest());
        assert_eq!(a.take_notifications(), b.take_notifications());
        assert_ne!(a.trace_digest(), c.trace_digest());
    }

    #[test]
    fn total_loss_delivers_nothing() {
        let mut w = world(3, 4, FaultOptions::lossy(100.0));
        run(&mut w, 200);
        assert!(w.network().traffic(0).datagrams_sent > 0);
        assert_eq!(w.stats().datagrams_delivered, 0);
        assert!(w.take_notifications().is_empty());
    }

    #[test]
    fn one_way_block_stops_only_that_direction() {
        let mut w = world(4, 3, FaultOptions::lan());
        w.network_mut().block(0, 1);
        run(&mut w, 200);
        let heard: Vec<(usize, SocketAddr)> = w
            .take_notifications()
            .into_iter()
            .map(|n| (n.index, n.notify.0))
            .collect();
        assert!(!heard.contains(&(1, node_addr(0))), "0 -> 1 is blocked");
        assert!(heard.contains(&(0, node_addr(1))), "1 -> 0 is open");
        assert!(heard.contains(&(2, node_addr(0))), "0 -> 2 is open");
    }

    #[test]
    fn crashed_instances_get_nothing_and_restart_is_a_new_generation() {
        let mut w = world(5, 3, FaultOptions::lan());
        run(&mut w, 50);
        assert!(w.stop(2));
        run(&mut w, 100);
        assert!(w.network().traffic(2).dropped_no_receiver > 0);
        assert!(
            w.stats().timers_of_dead_instances > 0,
            "its timers are ignored"
        );
        w.take_notifications();
        let generation = w
            .start(2, |_| {
                Ok::<_, String>(Pinger {
                    peers: Vec::new(),
                    period: Duration::from_millis(10),
                    out: std::collections::VecDeque::new(),
                })
            })
            .expect("restarts");
        assert_eq!(generation, 2);
        run(&mut w, 150);
        let notes = w.take_notifications();
        assert!(notes.iter().any(|n| n.index == 2 && n.generation == 2));
        assert!(notes.iter().all(|n| n.index != 2 || n.generation == 2));
    }

    #[test]
    fn time_is_monotonic_and_run_until_is_bounded() {
        let mut w = world(6, 3, FaultOptions::lan());
        let mut last = w.now();
        for _ in 0..1000 {
            assert!(w.step());
            assert!(w.now() >= last);
            last = w.now();
        }
        assert!(w.run_until(Instant::from_micros(10_000_000), 10).is_err());
        assert!(w.command(0, 0).is_err());
        assert!(w.command(0, 1).is_ok());
        assert!(w.stats().inputs_rejected >= 1);
    }
}
