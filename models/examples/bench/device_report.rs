//! The bench's device report: one device (CPU or GPU) checked against the reference and timed,
//! so that a GPU and the CPU of the same machine can be compared run by run (each device in its
//! own process, so that a GPU that fails to come up costs only its own rows).
//!
//! Must never: read weights or images from anywhere but the directories it is given, or report a
//! number it did not measure in this process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use idunno_models::digits::{DigitsCnn, TrainConfig};
use idunno_models::efficientnet::EfficientNetLite0;
use idunno_models::{Model, Preprocessed, device};

/// What to run and where to write.
pub struct Options {
    /// A name for [`device::parse`].
    pub device_name: String,
    /// Seconds per timed repeat.
    pub seconds: f64,
    /// Timed repeats per batch size (median, min, max reported).
    pub repeats: usize,
    /// The machine, as named in the table.
    pub machine: String,
    /// `models/testdata`: the six images and the reference top-5.
    pub testdata: PathBuf,
    /// Append the markdown rows here too.
    pub out: Option<PathBuf>,
}

/// Largest difference from a reference probability that still passes (as in the tests).
const PROBABILITY_TOLERANCE: f32 = 0.01;

/// One row of the reference: image, rank-ordered (class id, probability).
struct Reference {
    image: String,
    top5: Vec<(usize, f32)>,
}

fn reference(testdata: &Path) -> Result<Vec<Reference>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(testdata.join("efficientnet-lite0.reference.tsv"))?;
    let mut rows: Vec<Reference> = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [image, _rank, class_id, probability] = fields[..] else {
            return Err(format!("bad reference line {line:?}").into());
        };
        let entry: (usize, f32) = (class_id.parse()?, probability.parse()?);
        match rows.last_mut() {
            Some(row) if row.image == image => row.top5.push(entry),
            _ => rows.push(Reference {
                image: image.to_owned(),
                top5: vec![entry],
            }),
        }
    }
    Ok(rows)
}

/// Run the reference images on `model`; print each image's result; true if all match.
fn check_reference(
    model: &EfficientNetLite0,
    testdata: &Path,
) -> Result<(bool, f32, Vec<Preprocessed>), Box<dyn std::error::Error>> {
    let reference = reference(testdata)?;
    let inputs: Vec<Preprocessed> = reference
        .iter()
        .map(|r| -> Result<Preprocessed, Box<dyn std::error::Error>> {
            Ok(model.preprocess(&std::fs::read(testdata.join(&r.image))?)?)
        })
        .collect::<Result<_, _>>()?;
    let predictions = model.run_batch(&inputs)?;
    let mut all_match = reference.len() == 6 && predictions.len() == reference.len();
    let mut max_diff = 0.0f32;
    for (r, p) in reference.iter().zip(&predictions) {
        let ids: Vec<usize> = p.top5.iter().map(|c| c.class_id).collect();
        let expected: Vec<usize> = r.top5.iter().map(|&(id, _)| id).collect();
        let mut ok = ids == expected;
        for (c, &(_, probability)) in p.top5.iter().zip(&r.top5) {
            let diff = (c.probability - probability).abs();
            max_diff = max_diff.max(diff);
            ok &= diff <= PROBABILITY_TOLERANCE;
        }
        all_match &= ok;
        println!(
            "{}: top-5 {ids:?} (reference {expected:?}) p1 {:.4} (reference {:.4}) {}",
            r.image,
            p.probability,
            r.top5.first().map_or(f32::NAN, |t| t.1),
            if ok { "ok" } else { "MISMATCH" }
        );
    }
    println!(
        "reference check: {} (largest top-5 probability difference {max_diff:.4}, tolerance {PROBABILITY_TOLERANCE})",
        if all_match { "PASS" } else { "FAIL" }
    );
    Ok((all_match, max_diff, inputs))
}

/// The report for one device; Ok(false) if the reference check failed.
pub fn run(options: &Options) -> Result<bool, Box<dyn std::error::Error>> {
    let device = device::parse(&options.device_name)?;
    let backend = if device::is_cpu(&device) {
        format!("CPU (Flex, {} threads)", rayon::current_num_threads())
    } else {
        options.device_name.clone()
    };
    println!(
        "# device report: {backend} on {}: {}",
        options.machine,
        device::describe(&device)
    );

    let start = Instant::now();
    let model = EfficientNetLite0::pretrained(&device)?;
    println!(
        "load efficientnet-lite0 weights: {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    let (matches, max_diff, inputs) = check_reference(&model, &options.testdata)?;
    println!(
        "first run (6 images, includes kernel compilation on a GPU): {:.2} s",
        start.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    for batch_size in [1usize, 8, 32] {
        let batch: Vec<Preprocessed> = inputs.iter().cycle().take(batch_size).cloned().collect();
        let mut failures = 0usize;
        let mut run = || {
            if model.forward_batch(&batch).map(|l| l.len()) != Ok(batch_size) {
                failures += 1;
            }
        };
        let (median, min, max) =
            super::measure(options.seconds, options.repeats, batch_size, &mut run);
        if failures > 0 {
            return Err(format!("{failures} forward passes failed at batch {batch_size}").into());
        }
        let row = format!(
            "| {} | {backend} | {batch_size} | {median:.1} | {min:.1} | {max:.1} | {:.2} |",
            options.machine,
            1000.0 * batch_size as f64 / median
        );
        println!("{row}");
        rows.push(row);
    }

    // digits-cnn: train twice with the default settings; the first includes kernel compilation
    // on a GPU, the second is warm.
    let config = TrainConfig::default();
    let mut train_rows = Vec::new();
    for attempt in ["first", "second"] {
        let (_, report) = DigitsCnn::train(&config, &device)?;
        let row = format!(
            "| {} | {backend} | {} epochs, {} samples ({attempt} run) | {:.2} | {:.4} |",
            options.machine,
            config.epochs,
            report.train_samples,
            report.train_time.as_secs_f64(),
            report.test_accuracy
        );
        println!("{row}");
        train_rows.push(row);
    }

    let mut text = String::new();
    text.push_str(&format!(
        "\n### efficientnet-lite0 on {backend} ({}): reference check {} (largest top-5 probability difference {max_diff:.4})\n\n",
        options.machine,
        if matches { "PASS" } else { "FAIL" }
    ));
    text.push_str("| machine | backend | batch | images/s (median) | min | max | ms/batch |\n");
    text.push_str("|---|---|---:|---:|---:|---:|---:|\n");
    for row in &rows {
        text.push_str(row);
        text.push('\n');
    }
    text.push_str("\n| machine | backend | digits-cnn training | seconds | held-out accuracy |\n");
    text.push_str("|---|---|---|---:|---:|\n");
    for row in &train_rows {
        text.push_str(row);
        text.push('\n');
    }
    println!("{text}");
    if let Some(path) = &options.out {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        file.write_all(text.as_bytes())?;
    }
    Ok(matches)
}
