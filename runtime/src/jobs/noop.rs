//! The `noop` model: every query returns its input's name as its result, at once. It is the
//! scheduling-throughput benchmark's model (the "no-op model"): it measures the
//! scheduler, not inference.
//!
//! Owns: [`NoopExecutor`], which knows only `noop` and reports every other model as an unknown
//! model, per input.
//! Must never: sleep, read a file, or return anything longer than the scheduler accepts.

use std::time::Instant;

use idunno_core::scheduler::{Completion, ERROR_BYTES_MAX, Grant, InputOutcome};

use super::{ExecError, Executor};

/// The no-op model's name.
pub const NOOP_MODEL: &str = "noop";

/// Runs the `noop` model; every other model is unknown.
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

impl NoopExecutor {
    /// Runs `model` (the no-op, or unknown) on `inputs`: one completion per input.
    pub fn complete(model: &str, inputs: &[(u32, String)]) -> Vec<Completion> {
        inputs
            .iter()
            .map(|(input, name)| {
                let started = Instant::now();
                let outcome = if model == NOOP_MODEL {
                    InputOutcome::Result(name.clone())
                } else {
                    unknown_model(model)
                };
                let elapsed = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
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
    fn run(&self, grant: &Grant) -> Result<Vec<Completion>, ExecError> {
        Ok(Self::complete(&grant.model, &grant.inputs))
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
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncated("héllo", 2), "h");
        assert_eq!(truncated("abc", 10), "abc");
    }
}
