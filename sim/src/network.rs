//! The simulated network: what happens to one datagram between `send` and arrival.
//!
//! Owns: [`FaultOptions`] (latency, loss, duplication), the link matrix that partitions block
//! (one flag per directed link, `from × node_count + to`, scanned in index order), and the
//! per-node traffic counters ([`NodeTraffic`]).
//! Inputs: a datagram's source, destination and length plus the simulation's one RNG.
//! Outputs: a [`Route`]: dropped (and why), or one or two delivery delays.
//! Must never: draw randomness from anywhere but the RNG it is handed, really send anything, or
//! look at the bytes (the network is oblivious to what it carries).

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Largest node count a network is built for (the link matrix is `n²` flags).
pub const NODES_MAX: usize = 4096;

/// The random faults applied to every datagram, TigerBeetle packet-simulator style.
///
/// Reordering follows from the latency distribution: two datagrams on the same link draw
/// independent delays. Partitions, crashes and restarts are discrete faults applied through
/// [`Network::block`], [`Network::partition`] and the cluster's crash/restart operations.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultOptions {
    /// Smallest one-way latency.
    pub latency_min: Duration,
    /// Mean of the exponentially distributed latency added on top of `latency_min`.
    pub latency_mean: Duration,
    /// Upper bound on one datagram's latency (the exponential tail is cut here).
    /// Must be >= `latency_min`.
    pub latency_max: Duration,
    /// Chance that a datagram is lost, in percent, 0.0..=100.0.
    pub loss_percent: f64,
    /// Chance that a delivered datagram arrives twice, in percent, 0.0..=100.0.
    pub duplicate_percent: f64,
}

impl Default for FaultOptions {
    fn default() -> Self {
        FaultOptions::lan()
    }
}

impl FaultOptions {
    /// A clean LAN: 0.2 ms + exp(0.3 ms) latency (so datagrams do reorder), no loss, no duplicates.
    pub fn lan() -> Self {
        FaultOptions {
            latency_min: Duration::from_micros(200),
            latency_mean: Duration::from_micros(300),
            latency_max: Duration::from_millis(20),
            loss_percent: 0.0,
            duplicate_percent: 0.0,
        }
    }

    /// [`FaultOptions::lan`] with `loss_percent` of datagrams lost.
    pub fn lossy(loss_percent: f64) -> Self {
        FaultOptions {
            loss_percent,
            ..FaultOptions::lan()
        }
    }

    /// Checks every documented range and relation.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=100.0).contains(&self.loss_percent) {
            return Err(format!(
                "loss_percent {} not within 0..=100",
                self.loss_percent
            ));
        }
        if !(0.0..=100.0).contains(&self.duplicate_percent) {
            return Err(format!(
                "duplicate_percent {} not within 0..=100",
                self.duplicate_percent
            ));
        }
        if self.latency_max < self.latency_min {
            return Err("latency_max must be >= latency_min".to_owned());
        }
        Ok(())
    }
}

/// Why the network dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Random loss.
    Loss,
    /// The link from the sender to the receiver is blocked by a partition.
    Partition,
}

/// The fate of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Never arrives.
    Dropped(DropReason),
    /// Arrives after `first`, and a duplicate after `duplicate` when there is one.
    Deliver {
        /// Latency of the original.
        first: Duration,
        /// Latency of the duplicate, if the datagram is duplicated.
        duplicate: Option<Duration>,
    },
}

/// Datagram and byte counters of one node (all of its generations together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeTraffic {
    /// Datagrams this node handed to the network.
    pub datagrams_sent: u64,
    /// Bytes this node handed to the network.
    pub bytes_sent: u64,
    /// Datagrams delivered to this node (duplicates included).
    pub datagrams_received: u64,
    /// Bytes delivered to this node.
    pub bytes_received: u64,
    /// Datagrams from this node lost at random.
    pub dropped_loss: u64,
    /// Datagrams from this node blocked by a partition.
    pub dropped_partition: u64,
    /// Datagrams to this node that arrived while it was down, or to an address nobody has.
    pub dropped_no_receiver: u64,
    /// Datagrams from this node that the network duplicated.
    pub duplicated: u64,
}

/// The link matrix, the fault options and the traffic counters. See the module docs.
#[derive(Debug, Clone)]
pub struct Network {
    options: FaultOptions,
    node_count: usize,
    /// `blocked[from * node_count + to]`: datagrams from `from` to `to` are dropped.
    blocked: Vec<bool>,
    blocked_count: usize,
    traffic: Vec<NodeTraffic>,
}

impl Network {
    /// A network of `node_count` nodes (at most [`NODES_MAX`]) with no partitions.
    pub fn new(node_count: usize, options: FaultOptions) -> Result<Self, String> {
        options.validate()?;
        if node_count == 0 || node_count > NODES_MAX {
            return Err(format!(
                "node_count {node_count} not within 1..={NODES_MAX}"
            ));
        }
        Ok(Network {
            options,
            node_count,
            blocked: vec![false; node_count * node_count],
            blocked_count: 0,
            traffic: vec![NodeTraffic::default(); node_count],
        })
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.node_count
    }

    /// The fault options in force.
    pub fn options(&self) -> &FaultOptions {
        &self.options
    }

    /// Replaces the fault options (e.g. to stop loss before a convergence check).
    pub fn set_options(&mut self, options: FaultOptions) -> Result<(), String> {
        options.validate()?;
        self.options = options;
        Ok(())
    }

    /// Counters of node `index`.
    pub fn traffic(&self, index: usize) -> NodeTraffic {
        self.traffic[index]
    }

    /// Counters of every node, by index.
    pub fn traffic_all(&self) -> &[NodeTraffic] {
        &self.traffic
    }

    /// Decides the fate of a datagram of `len` bytes from `from` to `to` and counts it.
    pub fn route(&mut self, rng: &mut ChaCha8Rng, from: usize, to: usize, len: usize) -> Route {
        debug_assert!(from < self.node_count && to < self.node_count);
        let sender = &mut self.traffic[from];
        sender.datagrams_sent += 1;
        sender.bytes_sent += len as u64;
        if self.blocked[from * self.node_count + to] {
            sender.dropped_partition += 1;
            return Route::Dropped(DropReason::Partition);
        }
        if chance(rng, self.options.loss_percent) {
            sender.dropped_loss += 1;
            return Route::Dropped(DropReason::Loss);
        }
        let first = latency(rng, &self.options);
        let duplicate = if chance(rng, self.options.duplicate_percent) {
            sender.duplicated += 1;
            Some(latency(rng, &self.options))
        } else {
            None
        };
        Route::Deliver { first, duplicate }
    }

    /// Counts a datagram of `len` bytes handed to node `to`.
    pub fn count_delivered(&mut self, to: usize, len: usize) {
        let receiver = &mut self.traffic[to];
        receiver.datagrams_received += 1;
        receiver.bytes_received += len as u64;
    }

    /// Counts a datagram that reached node `to`'s address while nothing was running there.
    pub fn count_no_receiver(&mut self, to: usize) {
        self.traffic[to].dropped_no_receiver += 1;
    }

    // ----- partitions -----

    /// Whether datagrams from `from` to `to` are dropped.
    pub fn is_blocked(&self, from: usize, to: usize) -> bool {
        self.blocked[from * self.node_count + to]
    }

    /// Whether any link is blocked.
    pub fn any_blocked(&self) -> bool {
        self.blocked_count > 0
    }

    /// Blocks the one-way link `from -> to` (`to -> from` is untouched).
    pub fn block(&mut self, from: usize, to: usize) {
        self.set_blocked(from, to, true);
    }

    /// Unblocks the one-way link `from -> to`.
    pub fn unblock(&mut self, from: usize, to: usize) {
        self.set_blocked(from, to, false);
    }

    /// Cuts `side` off from every other node: both directions when `symmetric`, otherwise only
    /// datagrams from `side` to the rest (the rest can still reach `side`).
    pub fn partition(&mut self, side: &[usize], symmetric: bool) {
        let mut inside = vec![false; self.node_count];
        for &i in side {
            inside[i] = true;
        }
        for from in 0..self.node_count {
            for to in 0..self.node_count {
                if inside[from] && !inside[to] {
                    self.set_blocked(from, to, true);
                }
                if symmetric && !inside[from] && inside[to] {
                    self.set_blocked(from, to, true);
                }
            }
        }
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.blocked.iter_mut().for_each(|b| *b = false);
        self.blocked_count = 0;
    }

    /// Removes every partition and stops random loss and duplication; latency (and so
    /// reordering) stays. What scenarios call once their faults are over.
    pub fn heal_all(&mut self) {
        self.heal();
        self.options.loss_percent = 0.0;
        self.options.duplicate_percent = 0.0;
        debug_assert!(self.options.validate().is_ok());
    }

    fn set_blocked(&mut self, from: usize, to: usize, blocked: bool) {
        assert!(
            from < self.node_count && to < self.node_count,
            "link out of range"
        );
        let flag = &mut self.blocked[from * self.node_count + to];
        match (*flag, blocked) {
            (false, true) => self.blocked_count += 1,
            (true, false) => self.blocked_count -= 1,
            _ => {}
        }
        *flag = blocked;
        debug_assert!(self.blocked_count <= self.blocked.len());
    }
}

/// True with probability `percent` / 100. Draws nothing when the answer is certain.
fn chance(rng: &mut ChaCha8Rng, percent: f64) -> bool {
    if percent <= 0.0 {
        return false;
    }
    if percent >= 100.0 {
        return true;
    }
    rng.random::<f64>() * 100.0 < percent
}

/// `latency_min` plus an exponential draw with mean `latency_mean`, capped at `latency_max`.
fn latency(rng: &mut ChaCha8Rng, options: &FaultOptions) -> Duration {
    let mean_micros = options.latency_mean.as_secs_f64() * 1e6;
    let extra_micros = if mean_micros > 0.0 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        let u: f64 = rng.random::<f64>();
        -(1.0 - u).ln() * mean_micros
    } else {
        0.0
    };
    let total = options.latency_min + Duration::from_micros(extra_micros as u64);
    total.min(options.latency_max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(7)
    }

    #[test]
    fn total_loss_delivers_nothing() {
        let mut net = Network::new(3, FaultOptions::lossy(100.0)).expect("valid");
        let mut rng = rng();
        for _ in 0..1000 {
            assert_eq!(
                net.route(&mut rng, 0, 1, 10),
                Route::Dropped(DropReason::Loss)
            );
        }
        assert_eq!(net.traffic(0).dropped_loss, 1000);
        assert_eq!(net.traffic(0).bytes_sent, 10_000);
    }

    #[test]
    fn no_loss_delivers_everything_within_latency_bounds() {
        let options = FaultOptions::lan();
        let mut net = Network::new(2, options.clone()).expect("valid");
        let mut rng = rng();
        let mut distinct = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            match net.route(&mut rng, 0, 1, 10) {
                Route::Deliver { first, duplicate } => {
                    assert!(first >= options.latency_min && first <= options.latency_max);
                    assert_eq!(duplicate, None);
                    distinct.insert(first);
                }
                Route::Dropped(reason) => panic!("dropped: {reason:?}"),
            }
        }
        assert!(distinct.len() > 100, "latencies vary, so datagrams reorder");
    }

    #[test]
    fn loss_rate_is_roughly_honoured() {
        let mut net = Network::new(2, FaultOptions::lossy(30.0)).expect("valid");
        let mut rng = rng();
        let lost = (0..10_000)
            .filter(|_| matches!(net.route(&mut rng, 0, 1, 1), Route::Dropped(_)))
            .count();
        assert!((2700..3300).contains(&lost), "lost {lost} of 10000 at 30%");
    }

    #[test]
    fn duplication_yields_a_second_copy() {
        let options = FaultOptions {
            duplicate_percent: 100.0,
            ..FaultOptions::lan()
        };
        let mut net = Network::new(2, options).expect("valid");
        let route = net.route(&mut rng(), 1, 0, 5);
        assert!(matches!(
            route,
            Route::Deliver {
                duplicate: Some(_),
                ..
            }
        ));
        assert_eq!(net.traffic(1).duplicated, 1);
    }

    #[test]
    fn one_way_block_drops_only_that_direction() {
        let mut net = Network::new(3, FaultOptions::lan()).expect("valid");
        let mut rng = rng();
        net.block(0, 1);
        assert_eq!(
            net.route(&mut rng, 0, 1, 1),
            Route::Dropped(DropReason::Partition)
        );
        assert!(matches!(
            net.route(&mut rng, 1, 0, 1),
            Route::Deliver { .. }
        ));
        assert!(matches!(
            net.route(&mut rng, 0, 2, 1),
            Route::Deliver { .. }
        ));
        net.unblock(0, 1);
        assert!(!net.any_blocked());
        assert!(matches!(
            net.route(&mut rng, 0, 1, 1),
            Route::Deliver { .. }
        ));
    }

    #[test]
    fn partitions_symmetric_and_asymmetric_then_heal() {
        let mut net = Network::new(4, FaultOptions::lan()).expect("valid");
        net.partition(&[0, 1], true);
        assert!(net.is_blocked(0, 2) && net.is_blocked(2, 0) && net.is_blocked(1, 3));
        assert!(!net.is_blocked(0, 1) && !net.is_blocked(2, 3));
        net.heal();
        assert!(!net.any_blocked());
        net.partition(&[0], false);
        assert!(net.is_blocked(0, 1) && net.is_blocked(0, 3));
        assert!(
            !net.is_blocked(1, 0),
            "asymmetric: the rest still reaches the side"
        );
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(Network::new(2, FaultOptions::lossy(101.0)).is_err());
        assert!(Network::new(0, FaultOptions::lan()).is_err());
        let inverted = FaultOptions {
            latency_max: Duration::ZERO,
            ..FaultOptions::lan()
        };
        assert!(inverted.validate().is_err());
    }
}
