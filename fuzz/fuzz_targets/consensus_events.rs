//! Fuzz target `consensus_events`: Three Raft voters driven by arbitrary event sequences
//! (delivery, loss, duplication, timers, persist acknowledgements, proposals, reads,
//! compactions, crash-restarts from acknowledged persists, time, raw message bytes from a
//! voter), with the safety invariants checked after every step.
//!
//! The check is `idunno_tests::fuzz_checks::consensus_events`, shared with the stable corpus
//! replay test (tests/tests/fuzz_corpus.rs), so a crash found here replays there without a fuzzer.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idunno_tests::fuzz_checks::consensus_events(data);
});
