//! Membership configuration: intervals, fan-outs and the rules that scale them with cluster size.
//!
//! Owns: [`Config`] with its defaults and validation, and the formulas that derive the suspicion
//! timeout and retransmit budget from the current member count.
//! Must never: read the environment; the runtime fills a `Config` from flags.

use std::time::Duration;

/// Why a [`Config`] was refused. Nothing was constructed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid membership config: {0}")]
pub struct ConfigError(pub String);

/// SWIM + Lifeguard parameters. Durations are wall-clock spans interpreted against the `now`
/// the driver passes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Time between two probes started by this node. Must be > `probe_timeout`.
    pub probe_interval: Duration,
    /// How long to wait for a direct ack before asking `indirect_checks` members to probe.
    /// Must be non-zero and smaller than `probe_interval`.
    pub probe_timeout: Duration,
    /// How many members relay an indirect probe (SWIM's k). 0 disables indirect probing.
    pub indirect_checks: usize,
    /// After `probe_timeout`, the direct ping is resent every `probe_retry_interval` until the
    /// probe is judged (one lost datagram must not start a suspicion). Must be non-zero.
    pub probe_retry_interval: Duration,
    /// Lifeguard's local health multiplier: the highest score of this node's own health (0 is
    /// healthy). Each direct ack this node missed raises it, each probe answered at the first
    /// ping lowers it. 0 disables the mechanism.
    pub awareness_max: u32,
    /// Most extra probe periods a node at `awareness_max` keeps probing a silent member before
    /// suspecting it (each one with a fresh ping-req wave and direct retries). The count also
    /// grows with the cluster: none below 100 members, one per decade of members above 10, so the
    /// cluster-wide rate of false suspicions (each of which costs every member bytes) does not
    /// grow with n. See [`Config::probe_extensions`].
    pub probe_extensions_max: u32,
    /// Suspicion timeout floor = `suspicion_mult` x log10(max(n, 10)) x `probe_interval`.
    /// Must be >= 1.
    pub suspicion_mult: u32,
    /// The timeout starts at `suspicion_max_mult` x the floor and shrinks towards the floor as
    /// independent suspicions arrive (Lifeguard). Must be >= 1.
    pub suspicion_max_mult: u32,
    /// Independent suspicions needed to reach the floor (Lifeguard's K). 0 means "start at the
    /// floor".
    pub suspicion_confirmations: u32,
    /// Time between gossip rounds (piggyback-only packets to `gossip_fanout` random members
    /// while updates are pending). Must be non-zero.
    pub gossip_interval: Duration,
    /// Members contacted per gossip round.
    pub gossip_fanout: usize,
    /// Each update is sent up to `retransmit_mult` x ceil(log10(n + 1)) times. Must be >= 1.
    pub retransmit_mult: u32,
    /// Time between push-pull syncs with one random member. Must be non-zero.
    pub push_pull_interval: Duration,
    /// Upper bound on records in one sync message (they also have to fit one datagram), so
    /// anti-entropy traffic per node does not grow with the cluster.
    pub sync_entries_max: usize,
    /// Time between join attempts while this node knows no other member and has seeds.
    pub join_retry_interval: Duration,
    /// How long dead and left members are remembered (so stale gossip cannot resurrect them).
    pub tombstone_retention: Duration,
    /// After a graceful leave, how long to keep gossiping before reporting `SelfLeft`.
    pub leave_linger: Duration,
    /// Largest datagram this node builds, at most `wire::DATAGRAM_BYTES_MAX`.
    pub datagram_bytes_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self::lan()
    }
}

impl Config {
    /// Defaults for a LAN or loopback cluster (round trips well under `probe_timeout`).
    pub fn lan() -> Self {
        Config {
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(200),
            indirect_checks: 5,
            probe_retry_interval: Duration::from_millis(50),
            awareness_max: 8,
            probe_extensions_max: 2,
            suspicion_mult: 2,
            suspicion_max_mult: 3,
            suspicion_confirmations: 2,
            gossip_interval: Duration::from_millis(100),
            gossip_fanout: 3,
            retransmit_mult: 4,
            push_pull_interval: Duration::from_secs(2),
            sync_entries_max: 24,
            join_retry_interval: Duration::from_secs(1),
            tombstone_retention: Duration::from_secs(120),
            leave_linger: Duration::from_millis(1000),
            datagram_bytes_max: crate::wire::DATAGRAM_BYTES_MAX,
        }
    }

    /// Checks every documented range and relation.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |s: &str| Err(ConfigError(s.to_owned()));
        if self.probe_timeout.is_zero() {
            return fail("probe_timeout must be non-zero");
        }
        if self.probe_timeout >= self.probe_interval {
            return fail("probe_timeout must be smaller than probe_interval");
        }
        if self.probe_retry_interval.is_zero() {
            return fail("probe_retry_interval must be non-zero");
        }
        if self.suspicion_mult == 0 || self.suspicion_max_mult == 0 {
            return fail("suspicion_mult and suspicion_max_mult must be >= 1");
        }
        if self.gossip_interval.is_zero() || self.push_pull_interval.is_zero() {
            return fail("gossip_interval and push_pull_interval must be non-zero");
        }
        if self.join_retry_interval.is_zero() {
            return fail("join_retry_interval must be non-zero");
        }
        if self.retransmit_mult == 0 {
            return fail("retransmit_mult must be >= 1");
        }
        if self.sync_entries_max == 0 {
            return fail("sync_entries_max must be >= 1");
        }
        if self.datagram_bytes_max < 256
            || self.datagram_bytes_max > crate::wire::DATAGRAM_BYTES_MAX
        {
            return fail("datagram_bytes_max must be within 256..=wire::DATAGRAM_BYTES_MAX");
        }
        Ok(())
    }

    /// log10 of the cluster size, at least 1 (clusters under 10 are treated as 10).
    fn log10_size(cluster_size: usize) -> f64 {
        (cluster_size.max(10) as f64).log10()
    }

    /// Lifeguard's suspicion floor for a cluster of `cluster_size` members.
    pub fn suspicion_timeout_min(&self, cluster_size: usize) -> Duration {
        self.probe_interval
            .mul_f64(f64::from(self.suspicion_mult) * Self::log10_size(cluster_size))
    }

    /// The suspicion timeout before any confirmation arrives.
    pub fn suspicion_timeout_max(&self, cluster_size: usize) -> Duration {
        self.suspicion_timeout_min(cluster_size) * self.suspicion_max_mult
    }

    /// Lifeguard: the timeout after `confirmations` independent suspicions,
    /// max - (max - min) x log(c + 1) / log(K + 1), never below the floor.
    pub fn suspicion_timeout(&self, cluster_size: usize, confirmations: u32) -> Duration {
        let min = self.suspicion_timeout_min(cluster_size);
        let max = self.suspicion_timeout_max(cluster_size);
        if self.suspicion_confirmations == 0 {
            return min;
        }
        let k = f64::from(self.suspicion_confirmations);
        let c = f64::from(confirmations.min(self.suspicion_confirmations));
        let frac = (c + 1.0).ln() / (k + 1.0).ln();
        let shrink = (max - min).mul_f64(frac.clamp(0.0, 1.0));
        (max - shrink).max(min)
    }

    /// Lifeguard's local health multiplier applied to accusations: how many extra probe periods a
    /// node with health score `awareness` (0 = healthy) keeps probing a silent member before it
    /// suspects it, in a cluster of `cluster_size`. Proportional to the score, at most
    /// `probe_extensions_max`, and at most floor(log10(n)) - 1: each extension multiplies the
    /// chance that a lossy network makes a live member look dead by about the chance that one
    /// probe period fails, so the count needed to keep false suspicions per second bounded
    /// cluster-wide grows with log n. A healthy node (score 0) never waits.
    pub fn probe_extensions(&self, cluster_size: usize, awareness: u32) -> u32 {
        if self.awareness_max == 0 || awareness == 0 {
            return 0;
        }
        let decades = (Self::log10_size(cluster_size).floor() as u32).saturating_sub(1);
        let cap = self.probe_extensions_max.min(decades);
        let score = u64::from(awareness.min(self.awareness_max));
        let scaled = (score * u64::from(cap)).div_ceil(u64::from(self.awareness_max));
        u32::try_from(scaled).unwrap_or(cap).min(cap)
    }

    /// How many times each update is transmitted in a cluster of `cluster_size` members.
    pub fn retransmit_limit(&self, cluster_size: usize) -> u32 {
        let log = ((cluster_size as f64) + 1.0).log10().ceil().max(1.0) as u32;
        self.retransmit_mult.saturating_mul(log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        assert_eq!(Config::lan().validate(), Ok(()));
    }

    #[test]
    fn suspicion_scales_with_log_n_and_shrinks_with_confirmations() {
        let c = Config::lan();
        let at10 = c.suspicion_timeout_min(10);
        let at1000 = c.suspicion_timeout_min(1000);
        assert_eq!(at10, Duration::from_secs(1));
        assert_eq!(at1000, Duration::from_secs(3));
        assert_eq!(c.suspicion_timeout(10, 0), c.suspicion_timeout_max(10));
        assert!(c.suspicion_timeout(10, 1) < c.suspicion_timeout(10, 0));
        assert_eq!(c.suspicion_timeout(10, 2), at10);
        assert_eq!(c.suspicion_timeout(10, 50), at10);
    }

    #[test]
    fn probe_extensions_follow_health_and_cluster_size() {
        let c = Config::lan();
        // A healthy node never delays an accusation, at any size.
        assert_eq!(c.probe_extensions(1000, 0), 0);
        // Small clusters never wait: false suspicions there cost little.
        assert_eq!(c.probe_extensions(10, 8), 0);
        assert_eq!(c.probe_extensions(99, 8), 0);
        // One extension per decade above 10, scaled by the score, rounded up.
        assert_eq!(c.probe_extensions(100, 1), 1);
        assert_eq!(c.probe_extensions(100, 8), 1);
        assert_eq!(c.probe_extensions(1000, 1), 1);
        assert_eq!(c.probe_extensions(1000, 4), 1);
        assert_eq!(c.probe_extensions(1000, 5), 2);
        assert_eq!(c.probe_extensions(1000, 8), 2);
        // Capped by probe_extensions_max and by awareness_max.
        assert_eq!(c.probe_extensions(1_000_000, 100), 2);
        let off = Config {
            awareness_max: 0,
            ..Config::lan()
        };
        assert_eq!(off.probe_extensions(1000, 8), 0);
    }

    #[test]
    fn retransmit_budget_scales_with_log_n() {
        let c = Config::lan();
        assert_eq!(c.retransmit_limit(1), 4);
        assert_eq!(c.retransmit_limit(10), 8);
        assert_eq!(c.retransmit_limit(100), 12);
        assert_eq!(c.retransmit_limit(1000), 16);
    }

    #[test]
    fn bad_relations_are_refused() {
        let mut c = Config::lan();
        c.probe_timeout = c.probe_interval;
        assert!(c.validate().is_err());
        let mut c = Config::lan();
        c.datagram_bytes_max = 100_000;
        assert!(c.validate().is_err());
    }
}
