//! The local prediction command (`idunno-node predict MODEL FILE... [--json]`) as a library call.
//!
//! Owns: reading input files (each capped in size), batching them through one model in this
//! process, and writing one result per input: a table by default, or with `json` one JSON object
//! per line: `{"input", "class_id", "label", "probability", "top5": [{class_id, label,
//! probability}]}`, or `{"input", "error"}` for an input that failed. It is also the local
//! baseline the cluster's overhead is measured against.
//! Must never: stop at a bad input (that input gets an error line, the rest still run), or print
//! anywhere but `out`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::classify::{ClassScore, Prediction};
use crate::error::{InputError, ModelError};
use crate::image_input::INPUT_BYTES_MAX;
use crate::{Device, Model, Preprocessed, registry};

/// Inputs run through the model at once.
pub const BATCH_SIZE: usize = 8;
/// The table's input column grows with the longest path up to this many characters.
const INPUT_COLUMN_WIDTH_MAX: usize = 60;

/// Why a prediction run stopped as a whole.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// The model could not be built or run.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Writing the results failed.
    #[error("writing results: {0}")]
    Output(#[from] std::io::Error),
}

/// Counts of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PredictSummary {
    /// Inputs given.
    pub inputs: usize,
    /// Inputs that failed (unreadable, undecodable).
    pub failed: usize,
}

/// Build `model_name` on the default CPU device and run it on `files`.
pub fn run(
    model_name: &str,
    files: &[PathBuf],
    json: bool,
    out: &mut impl Write,
) -> Result<PredictSummary, PredictError> {
    let model = registry::load(model_name, &crate::default_device())?;
    run_model(model.as_ref(), files, json, out)
}

/// Like [`run`] on a chosen device.
pub fn run_on(
    model_name: &str,
    device: &Device,
    files: &[PathBuf],
    json: bool,
    out: &mut impl Write,
) -> Result<PredictSummary, PredictError> {
    let model = registry::load(model_name, device)?;
    run_model(model.as_ref(), files, json, out)
}

/// Run an already built model on `files`, `BATCH_SIZE` at a time, writing as results arrive.
pub fn run_model(
    model: &dyn Model,
    files: &[PathBuf],
    json: bool,
    out: &mut impl Write,
) -> Result<PredictSummary, PredictError> {
    let width = files
        .iter()
        .map(|f| f.display().to_string().chars().count())
        .max()
        .unwrap_or(0)
        .clamp(5, INPUT_COLUMN_WIDTH_MAX);
    if !json {
        writeln!(
            out,
            "{:<width$} {:>6} {:>11}  {:<24} top5",
            "input", "class", "probability", "label"
        )?;
    }
    let mut failed = 0usize;
    for chunk in files.chunks(BATCH_SIZE) {
        // Decoding is a third of an image's CPU time: the chunk's inputs decode in parallel on
        // the current rayon pool, so this process keeps every core busy between two runs.
        let preprocess = model.preprocessor();
        let prepared: Vec<Result<Preprocessed, InputError>> = chunk
            .par_iter()
            .map(|path| read_input(path).and_then(|bytes| preprocess(&bytes)))
            .collect();
        let batch: Vec<Preprocessed> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let mut predictions = if batch.is_empty() {
            Vec::new()
        } else {
            model.run_batch(&batch)?
        }
        .into_iter();
        for (path, prepared) in chunk.iter().zip(prepared) {
            let input = path.display().to_string();
            let result = match prepared {
                Ok(_) => predictions.next().ok_or_else(|| {
                    ModelError::Backend(format!("{} returned too few results", model.name()))
                })?,
                Err(error) => {
                    failed += 1;
                    write_error(out, &input, width, &error, json)?;
                    continue;
                }
            };
            write_prediction(out, &input, width, &result, json)?;
        }
    }
    out.flush()?;
    Ok(PredictSummary {
        inputs: files.len(),
        failed,
    })
}

/// Read one input file, refusing files over [`INPUT_BYTES_MAX`] before reading them.
pub fn read_input(path: &Path) -> Result<Vec<u8>, InputError> {
    let read_error = |e: std::io::Error| InputError::Read(e.to_string());
    let file = std::fs::File::open(path).map_err(read_error)?;
    let length = file.metadata().map_err(read_error)?.len();
    if length > INPUT_BYTES_MAX as u64 {
        return Err(InputError::TooManyBytes {
            bytes: usize::try_from(length).unwrap_or(usize::MAX),
            limit_bytes: INPUT_BYTES_MAX,
        });
    }
    let mut bytes = Vec::with_capacity(length as usize);
    // `take` guards against a file that grows while it is read.
    file.take(INPUT_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() > INPUT_BYTES_MAX {
        return Err(InputError::TooManyBytes {
            bytes: bytes.len(),
            limit_bytes: INPUT_BYTES_MAX,
        });
    }
    Ok(bytes)
}

#[derive(Serialize)]
struct PredictionLine<'a> {
    input: &'a str,
    class_id: usize,
    label: &'a str,
    probability: f32,
    top5: &'a [ClassScore],
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    input: &'a str,
    error: String,
}

fn write_prediction(
    out: &mut impl Write,
    input: &str,
    width: usize,
    p: &Prediction,
    json: bool,
) -> std::io::Result<()> {
    if json {
        let line = PredictionLine {
            input,
            class_id: p.class_id,
            label: &p.label,
            probability: p.probability,
            top5: &p.top5,
        };
        serde_json::to_writer(&mut *out, &line)?;
        return writeln!(out);
    }
    let top5: Vec<String> = p.top5.iter().map(|c| c.class_id.to_string()).collect();
    writeln!(
        out,
        "{:<width$} {:>6} {:>11.4}  {:<24} {}",
        input,
        p.class_id,
        p.probability,
        p.label,
        top5.join(",")
    )
}

fn write_error(
    out: &mut impl Write,
    input: &str,
    width: usize,
    error: &InputError,
    json: bool,
) -> std::io::Result<()> {
    if json {
        let line = ErrorLine {
            input,
            error: error.to_string(),
        };
        serde_json::to_writer(&mut *out, &line)?;
        return writeln!(out);
    }
    writeln!(
        out,
        "{input:<width$} {:>6} {:>11}  error: {error}",
        "-", "-"
    )
}
