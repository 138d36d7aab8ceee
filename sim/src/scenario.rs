//! The seed loop of the fault scenarios: which seeds to run, and what to print when one fails.
//!
//! Owns: [`Scenario`] (a test's name and default seed count), the environment knobs
//! (`SIM_SEED=n` replays one seed, `SIM_SEEDS=N` sweeps seeds `0..N`, `SIM_SEED_BASE=b` shifts
//! the sweep to `b..b+N`), and the failure report: the seed, the violation and the exact command
//! that replays it.
//! Must never: pick seeds from anywhere but these knobs (no clock, no entropy), or keep going
//! after the first failing seed.

use std::fmt::Display;
use std::panic::{self, AssertUnwindSafe};

/// One seeded scenario of a test binary. Build it with [`scenario!`](crate::scenario!) so the
/// test binary's name is filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// The integration-test target (`sim/tests/<name>.rs`).
    pub test_binary: &'static str,
    /// The `#[test]` function.
    pub test_name: &'static str,
    /// Seeds run when no knob is set.
    pub default_seeds: u64,
}

/// Builds a [`Scenario`] for the calling test binary:
/// `scenario!("crash_3_of_10", 100)`.
#[macro_export]
macro_rules! scenario {
    ($test_name:expr, $default_seeds:expr) => {
        $crate::scenario::Scenario {
            test_binary: env!("CARGO_CRATE_NAME"),
            test_name: $test_name,
            default_seeds: $default_seeds,
        }
    };
}

fn env_u64(name: &str) -> Result<Option<u64>, String> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|e| format!("{name}={value:?} is not a number: {e}")),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

impl Scenario {
    /// The seeds to run, from the environment knobs or the default count.
    pub fn seeds(&self) -> Result<Vec<u64>, String> {
        if let Some(seed) = env_u64("SIM_SEED")? {
            return Ok(vec![seed]);
        }
        let count = env_u64("SIM_SEEDS")?.unwrap_or(self.default_seeds);
        let base = env_u64("SIM_SEED_BASE")?.unwrap_or(0);
        Ok((0..count).map(|i| base.wrapping_add(i)).collect())
    }

    /// The command that reruns exactly `seed` of this scenario.
    pub fn replay_command(&self, seed: u64) -> String {
        format!(
            "SIM_SEED={seed} cargo test --features sim -p idunno-sim --test {} {} -- --exact --include-ignored --nocapture",
            self.test_binary, self.test_name
        )
    }

    /// Runs `run` for every seed, stopping at the first failure (an `Err` or a panic) with a
    /// report naming the seed and the replay command. Returns each seed's result.
    pub fn run<R, E: Display>(&self, mut run: impl FnMut(u64) -> Result<R, E>) -> Vec<(u64, R)> {
        let seeds = match self.seeds() {
            Ok(seeds) => seeds,
            Err(e) => panic!("scenario {}: {e}", self.test_name),
        };
        let mut results = Vec::with_capacity(seeds.len());
        for seed in seeds {
            match panic::catch_unwind(AssertUnwindSafe(|| run(seed))) {
                Ok(Ok(result)) => results.push((seed, result)),
                Ok(Err(e)) => self.fail(seed, &e.to_string()),
                Err(payload) => {
                    let message = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "non-string panic".to_owned());
                    self.fail(seed, &format!("panicked: {message}"));
                }
            }
        }
        results
    }

    fn fail(&self, seed: u64, why: &str) -> ! {
        let replay = self.replay_command(seed);
        eprintln!(
            "\nSIMULATION FAILURE in {} (seed {seed}):\n  {why}\n  replay: {replay}\n",
            self.test_name
        );
        panic!(
            "scenario {} failed at seed {seed}: {why}\nreplay: {replay}",
            self.test_name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Scenario = Scenario {
        test_binary: "membership",
        test_name: "crash_3_of_10",
        default_seeds: 3,
    };

    #[test]
    fn replay_command_names_seed_binary_and_test() {
        let command = S.replay_command(42);
        assert!(command.starts_with("SIM_SEED=42 cargo test --features sim"));
        assert!(command.contains("--test membership crash_3_of_10"));
    }

    #[test]
    fn failure_reports_the_seed() {
        // Only meaningful without knobs set; the default is seeds 0..3.
        if std::env::var_os("SIM_SEED").is_some() || std::env::var_os("SIM_SEEDS").is_some() {
            return;
        }
        let outcome =
            panic::catch_unwind(|| S.run(|seed| if seed == 1 { Err("boom") } else { Ok(seed) }));
        let payload = outcome.expect_err("seed 1 fails");
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("failed at seed 1"), "{message}");
        assert!(message.contains("SIM_SEED=1 "), "{message}");
    }
}
