//! Raft timing and flow-control settings.
//!
//! Owns: [`Config`] with its documented ranges, and [`Config::validate`].
//! Must never: hold anything that changes at run time.

use std::time::Duration;

use thiserror::Error;

use super::msg::ENTRIES_PER_MESSAGE_MAX;

/// Most AppendEntries in flight to one follower that [`Config::inflight_max`] may allow.
pub const INFLIGHT_MAX_LIMIT: usize = 256;
/// Most uncommitted entries [`Config::uncommitted_entries_max`] may allow.
pub const UNCOMMITTED_ENTRIES_LIMIT: usize = 1 << 20;

/// Raft settings. Every voter of a cluster should run the same config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Smallest election timeout; each timeout is drawn uniformly from
    /// `[election_timeout_min, 2 * election_timeout_min)`. Also the leader lease: a voter that
    /// heard from a leader less than this ago refuses (pre-)votes, and the check-quorum period.
    /// Must be at least 3 x `heartbeat_interval`.
    pub election_timeout_min: Duration,
    /// How often the leader sends AppendEntries (heartbeats or retransmits). Must not be zero.
    pub heartbeat_interval: Duration,
    /// Most AppendEntries carrying entries in flight to one follower (pipelining),
    /// 1..=[`INFLIGHT_MAX_LIMIT`].
    pub inflight_max: usize,
    /// Most entries in one AppendEntries, 1..=[`ENTRIES_PER_MESSAGE_MAX`].
    pub entries_per_message_max: usize,
    /// Heartbeat intervals without an acknowledgement after which a pipelined follower is
    /// probed again from its match index (lost messages), >= 1.
    pub stall_heartbeats_max: u32,
    /// Most entries the leader holds uncommitted; further proposals fail with
    /// `Error::ProposalQueueFull`. 1..=[`UNCOMMITTED_ENTRIES_LIMIT`].
    pub uncommitted_entries_max: usize,
    /// Most committed entries in one `Output::Apply`, >= 1.
    pub apply_batch_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config::lan()
    }
}

impl Config {
    /// Defaults for a LAN: 300 ms election timeout (so 300..600 ms), 75 ms heartbeats,
    /// 8 messages in flight of up to 64 entries.
    pub fn lan() -> Self {
        Config {
            election_timeout_min: Duration::from_millis(300),
            heartbeat_interval: Duration::from_millis(75),
            inflight_max: 8,
            entries_per_message_max: ENTRIES_PER_MESSAGE_MAX,
            stall_heartbeats_max: 3,
            uncommitted_entries_max: 4096,
            apply_batch_max: 256,
        }
    }

    /// Checks every documented range and relation.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError("heartbeat_interval must not be zero"));
        }
        if self.election_timeout_min < self.heartbeat_interval * 3 {
            return Err(ConfigError(
                "election_timeout_min must be at least 3 x heartbeat_interval",
            ));
        }
        if !(1..=INFLIGHT_MAX_LIMIT).contains(&self.inflight_max) {
            return Err(ConfigError("inflight_max out of 1..=INFLIGHT_MAX_LIMIT"));
        }
        if !(1..=ENTRIES_PER_MESSAGE_MAX).contains(&self.entries_per_message_max) {
            return Err(ConfigError(
                "entries_per_message_max out of 1..=ENTRIES_PER_MESSAGE_MAX",
            ));
        }
        if self.stall_heartbeats_max == 0 {
            return Err(ConfigError("stall_heartbeats_max must be >= 1"));
        }
        if !(1..=UNCOMMITTED_ENTRIES_LIMIT).contains(&self.uncommitted_entries_max) {
            return Err(ConfigError(
                "uncommitted_entries_max out of 1..=UNCOMMITTED_ENTRIES_LIMIT",
            ));
        }
        if self.apply_batch_max == 0 {
            return Err(ConfigError("apply_batch_max must be >= 1"));
        }
        Ok(())
    }
}

/// A config value out of its documented range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("invalid consensus config: {0}")]
pub struct ConfigError(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lan_is_valid_and_ranges_are_enforced() {
        assert_eq!(Config::lan().validate(), Ok(()));
        let bad = Config {
            election_timeout_min: Duration::from_millis(100),
            ..Config::lan()
        };
        assert!(bad.validate().is_err());
        let bad = Config {
            inflight_max: 0,
            ..Config::lan()
        };
        assert!(bad.validate().is_err());
        let bad = Config {
            entries_per_message_max: ENTRIES_PER_MESSAGE_MAX + 1,
            ..Config::lan()
        };
        assert!(bad.validate().is_err());
    }
}
