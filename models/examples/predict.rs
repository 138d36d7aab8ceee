//! Local prediction, as `idunno-node predict` will do it:
//! `cargo run -p idunno-models --release --example predict -- MODEL FILE... [--json]`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut json = false;
    let mut positional = Vec::new();
    for arg in std::env::args().skip(1) {
        if arg == "--json" {
            json = true;
        } else {
            positional.push(arg);
        }
    }
    let Some((model, files)) = positional.split_first() else {
        eprintln!(
            "usage: predict MODEL FILE... [--json]   (models: {})",
            idunno_models::registry::names().join(", ")
        );
        return ExitCode::from(2);
    };
    let files: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
    let mut out = std::io::stdout().lock();
    match idunno_models::predict::run(model, &files, json, &mut out) {
        Ok(summary) if summary.failed == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("predict: {e}");
            ExitCode::from(2)
        }
    }
}
