//! The no-op models: `noop` returns every query's input name as its result, at once; `noop:MS`
//! (MS = 1..=[`NOOP_COST_MILLIS_MAX`]) stands in for a model that costs MS milliseconds per
//! query: it sleeps that long per input on the (blocking) thread it runs on, and each result
//! is `<unix micros when the batch started> <input name>`, so a benchmark can tell from the
//! results when each batch ran. They are the scheduling benchmarks' models (the issue's
//! "no-op model"): they measure the scheduler, not inference.
//!
//! Owns: [`NoopExecutor`], which knows only the no-op models and reports every other model as
//! an unknown model, per input; [`noop_cost`], the parser of their names.
//! Must never: sleep for `noop`, sleep longer than the name asks, read a file, or return
//! anything longer than the scheduler accepts.

use std::time::{Duration, Instant};

use idunno_core::scheduler::{Completion, ERROR_BYTES_MAX, Grant, InputOutcome, NAME_BYTES_MAX};

use super::{ExecError, Executor, Prepared, Ran};

/// The no-op model's name.
pub const NOOP_MODEL: &str = "noop";
/// Longest per-query cost `noop:MS` may ask for, in milliseconds.
pub const NOOP_COST_MILLIS_MAX: u64 = 60_000;

/// The per-query cost a no-op model name asks for: zero for `noop`, MS ms for `noop:MS`;
/// `None` for any other name (another model, or a cost that is not 1..=[`NOOP_COST_MILLIS_MAX`]).
pub fn noop_cost(model: &str) -> Option<Duration> {
    if model == NOOP_MODEL {
        return Some(Duration::ZERO);
    }
    let millis = model.strip_prefix("noop:")?;
    if millis.is_empty() || !millis.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let millis: u64 = millis.parse().ok()?;
    (1..=NOOP_COST_MILLIS_MAX)
        .contains(&millis)
        .then(|| Duration::from_millis(millis))
}

/// Whether `model` is one of the no-op models.
pub fn is_noop(model: &str) -> bool {
    noop_cost(model).is_some()
}

/// Runs the no-op models; every other model is unknown.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopExecutor;

/// `text` cut to at most `max` bytes on a character boundary.
pub fn truncated(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The per-input outcome of a model nobody here knows.
pub fn unknown_model(model: &str) -> InputOutcome {
    InputOutcome::Failed(truncated(
        &format!("unknown model {model:?}"),
        ERROR_BYTES_MAX,
    ))
}

/// Microseconds since the Unix epoch now (0 if the clock is before it).
fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Parses a `noop:MS` result: (unix micros when its batch started, the input name).
pub fn parse_timed_result(result: &str) -> Option<(u64, &str)> {
    let (micros, name) = result.split_once(' ')?;
    Some((micros.parse().ok()?, name))
}

impl NoopExecutor {
    /// Runs `model` (a no-op, or unknown) on `inputs`: one completion per input. Blocks for
    /// the cost `noop:MS` asks for.
    pub fn complete(model: &str, inputs: &[(u32, String)]) -> Vec<Completion> {
        let Some(cost) = noop_cost(model) else {
            return inputs
                .iter()
                .map(|(input, _)| Completion {
                    input: *input,
                    outcome: unknown_model(model),
                    elapsed_micros: 0,
                })
                .collect();
        };
        let batch_started = unix_micros();
        inputs
            .iter()
            .map(|(input, name)| {
                let started = Instant::now();
                let outcome = if cost.is_zero() {
                    InputOutcome::Result(name.clone())
                } else {
                    std::thread::sleep(cost);
                    InputOutcome::Result(truncated(
                        &format!("{batch_started} {name}"),
                        NAME_BYTES_MAX,
                    ))
                };
                let elapsed = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                debug_assert!(outcome.validate().is_ok());
                Completion {
                    input: *input,
                    outcome,
                    elapsed_micros: elapsed,
                }
            })
            .collect()
    }
}

impl Executor for NoopExecutor {
    /// Nothing to fetch: the run step sleeps the model's cost, and there is nothing to store.
    fn prepare(&self, grant: &Grant) -> Result<Prepared, ExecError> {
        let (model, inputs) = (grant.model.clone(), grant.inputs.clone());
        Ok(Prepared::new(move || {
            Ok(Ran::done(Self::complete(&model, &inputs)))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noop_echoes_names_and_unknown_models_fail_per_input() {
        let inputs = vec![(0, "a".to_owned()), (7, "b".to_owned())];
        let done = NoopExecutor::complete(NOOP_MODEL, &inputs);
        assert_eq!(done.len(), 2);
        assert_eq!(done[1].input, 7);
        assert_eq!(done[1].outcome, InputOutcome::Result("b".into()));
        let long = "m".repeat(200);
        let failed = NoopExecutor::complete(&long, &inputs);
        assert!(failed.iter().all(|c| matches!(&c.outcome,
            InputOutcome::Failed(e) if e.len() <= ERROR_BYTES_MAX && e.starts_with("unknown model"))));
        assert!(failed.iter().all(|c| c.outcome.validate().is_ok()));
    }

    #[test]
    fn noop_costs_parse_and_bad_ones_do_not() {
        assert_eq!(noop_cost("noop"), Some(Duration::ZERO));
        assert_eq!(noop_cost("noop:25"), Some(Duration::from_millis(25)));
        for bad in [
            "noop:",
            "noop:0",
            "noop:-1",
            "noop:+5",
            "noop:1.5",
            "noop: 5",
            "noop:60001",
            "noop:99999999999999999999999",
            "noopx",
            "digits-cnn",
        ] {
            assert_eq!(noop_cost(bad), None, "{bad}");
        }
        assert!(is_noop("noop:1") && !is_noop("efficientnet-lite0"));
    }

    #[test]
    fn timed_noop_sleeps_and_stamps_its_results() {
        let inputs = vec![(0, "a".to_owned()), (1, "n".repeat(NAME_BYTES_MAX))];
        let before = unix_micros();
        let t0 = Instant::now();
        let done = NoopExecutor::complete("noop:2", &inputs);
        assert!(t0.elapsed() >= Duration::from_millis(4));
        assert!(done.iter().all(|c| c.elapsed_micros >= 2_000));
        assert!(done.iter().all(|c| c.outcome.validate().is_ok()));
        let InputOutcome::Result(first) = &done[0].outcome else {
            panic!("{:?}", done[0].outcome)
        };
        let (at, name) = parse_timed_result(first).expect("stamped");
        assert_eq!(name, "a");
        assert!(at >= before && at <= unix_micros());
        assert_eq!(parse_timed_result("nostamp"), None);
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncated("héllo", 2), "h");
        assert_eq!(truncated("abc", 10), "abc");
    }
}
