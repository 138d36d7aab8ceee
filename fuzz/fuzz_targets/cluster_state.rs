//! Fuzz target `cluster_state`: the replicated cluster state (key-value store, failed nodes,
//! file-system namespace, scheduler) driven by arbitrary command sequences, raw bytes and a
//! clock that may go back, with its invariants and a restored replica checked after every step.
//!
//! The check is `idunno_tests::fuzz_checks::cluster_state`, shared with the stable corpus
//! replay test (tests/tests/fuzz_corpus.rs), so a crash found here replays there without a fuzzer.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idunno_tests::fuzz_checks::cluster_state(data);
});
