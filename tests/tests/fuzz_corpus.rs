//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/*`) and every crash file
//! libFuzzer left (`fuzz/artifacts/<target>/*`, when present) through the same check functions
//! the fuzz targets call, on stable, so CI guards against regressions without a fuzzer.
//!
//! Also keeps `fuzz/` and [`TARGETS`] in step: every target has a fuzz target file and a
//! non-empty seed corpus, and every fuzz target file has a check function.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use idunno_tests::fuzz_checks::{TARGETS, consensus_events, seed_corpus, target};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

/// Runs `check` over every file in `dir`; returns the files that panicked, with the message.
fn replay(dir: &Path, check: fn(&[u8])) -> (usize, Vec<String>) {
    let files = files_in(dir);
    let mut failures = Vec::new();
    for file in &files {
        let bytes = fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&bytes))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "non-string panic".to_owned());
            failures.push(format!("{}: {message}", file.display()));
        }
    }
    (files.len(), failures)
}

#[test]
fn every_corpus_and_crash_file_replays_cleanly() {
    let mut failures = Vec::new();
    for &(name, check) in TARGETS {
        let corpus = fuzz_dir().join("corpus").join(name);
        let (count, failed) = replay(&corpus, check);
        assert!(
            count > 0,
            "no corpus for {name} in {}: run `cargo run -p idunno-tests --example write_fuzz_corpus`",
            corpus.display()
        );
        failures.extend(failed);
        let (_, failed) = replay(&fuzz_dir().join("artifacts").join(name), check);
        failures.extend(failed);
    }
    assert!(
        failures.is_empty(),
        "{} fuzz inputs fail their checks:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_target_has_a_fuzz_target_file_and_back() {
    let targets_dir = fuzz_dir().join("fuzz_targets");
    for &(name, _) in TARGETS {
        let file = targets_dir.join(format!("{name}.rs"));
        let source = fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("fuzz target {} missing: {e}", file.display()));
        assert!(
            source.contains(&format!("fuzz_checks::{name}"))
                || source.contains("fuzz_checks::target"),
            "{} must call idunno_tests::fuzz_checks, not its own copy of the checks",
            file.display()
        );
    }
    for file in files_in(&targets_dir) {
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned());
        assert!(
            stem.as_deref().is_some_and(|s| target(s).is_some()),
            "{} has no check function in fuzz_checks::TARGETS",
            file.display()
        );
    }
}

#[test]
fn the_seed_corpora_pass_their_checks() {
    // The generator's own seeds, fresh from the current code (the committed ones may be older).
    for &(name, check) in TARGETS {
        if name == "membership_events" {
            continue; // the search is slow in debug builds; its seeds are committed and replayed
        }
        let seeds = seed_corpus(name);
        assert!(!seeds.is_empty(), "{name} has seeds");
        for (_, bytes) in seeds {
            check(&bytes);
        }
    }
}

#[test]
fn the_consensus_seeds_reach_their_goals() {
    // The committed consensus_events seeds are worth keeping only if they get somewhere: a
    // leader, committed commands, a restart with durable state, a compaction, an installed
    // snapshot, all without forged messages (so every safety check stays on).
    let dir = fuzz_dir().join("corpus").join("consensus_events");
    let mut reached = [false; 5];
    for file in files_in(&dir) {
        let bytes = fs::read(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let stats = consensus_events(&bytes);
        if stats.forged {
            continue;
        }
        reached[0] |= stats.leader_terms > 0;
        reached[1] |= stats.commands_committed > 0;
        reached[2] |= stats.restarts_with_state > 0;
        reached[3] |= stats.compactions > 0;
        reached[4] |= stats.snapshots_restored > 0;
    }
    assert_eq!(
        reached, [true; 5],
        "leader, commands, restart, compaction, snapshot"
    );
}

#[test]
fn a_failing_input_is_reported() {
    // The replay must be able to fail: a check that rejects everything flags every file.
    fn reject(_: &[u8]) {
        panic!("rejected");
    }
    let corpus = fuzz_dir().join("corpus").join("wire_datagram");
    let (count, failed) = replay(&corpus, reject);
    assert!(count > 0);
    assert_eq!(failed.len(), count);
    assert!(failed[0].contains("rejected"));
}
