//! Fuzz target `membership_events`: Arbitrary event sequences (datagrams from arbitrary bytes or
//! structured packets, deliveries, losses, corruptions, timers, join, leave, restart, time) into
//! one to three `Membership` machines, with the invariants checked after every step.
//!
//! The check is `idunno_tests::fuzz_checks::membership_events`, shared with the stable corpus replay
//! test (tests/tests/fuzz_corpus.rs), so a crash found here replays there without a fuzzer.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idunno_tests::fuzz_checks::membership_events(data);
});
