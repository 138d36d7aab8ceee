//! Writes the seed corpora of every fuzz target to `fuzz/corpus/<target>/`.
//!
//! Run from anywhere in the workspace: `cargo run -p idunno-tests --example write_fuzz_corpus`,
//! optionally followed by target names to write only those (`-- auth_records wire_frame`).
//! The seeds come from `idunno_tests::fuzz_checks::seed_corpus` and are deterministic, so
//! rerunning rewrites the same files. Files already in the corpus (found by fuzzing) are kept.
//! Must never: delete a corpus file.

use std::fs;
use std::path::Path;

use idunno_tests::fuzz_checks::{TARGETS, seed_corpus};

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let only: Vec<String> = std::env::args().skip(1).collect();
    for (target, check) in TARGETS {
        if !only.is_empty() && !only.iter().any(|name| name == target) {
            continue;
        }
        let dir = corpus.join(target);
        fs::create_dir_all(&dir)?;
        let seeds = seed_corpus(target);
        assert!(!seeds.is_empty(), "no seeds for {target}");
        for (name, bytes) in &seeds {
            // A seed that fails its own check would be a bug here or in core: say so now.
            check(bytes);
            fs::write(dir.join(format!("seed_{name}")), bytes)?;
        }
        println!("{target}: {} seeds in {}", seeds.len(), dir.display());
    }
    Ok(())
}
