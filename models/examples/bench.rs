//! Throughput of the models on the CPU (Flex backend), for docs/benchmarks.md:
//! `cargo run -p idunno-models --release --example bench -- [--seconds 5] [--repeats 5]`.
//!
//! With a device (`--device cpu|wgpu`, or `IDUNNO_DEVICE`; `wgpu` needs the `wgpu` feature),
//! a shorter report on that device instead, for comparing a GPU with
//! the CPU of the same machine: EfficientNet-Lite0 checked against the reference top-5
//! (`testdata/efficientnet-lite0.reference.tsv`, probabilities within 0.01, as
//! tests/efficientnet.rs does), its images/s at batch 1, 8, 32 on all the machine's cores (or the
//! GPU), and the digits CNN's training time (default `TrainConfig`) and held-out accuracy; the
//! markdown rows go to stdout and, with `--out FILE`, are appended to FILE (`--machine TEXT`
//! names the machine in them, `--testdata DIR` finds the images away from the source tree).
//! Exits 1 if the reference check fails.
//!
//! EfficientNet-Lite0: images/s at batch 1, 8, 32 on 1 and 2 rayon threads, network only (the
//! input tensors are preprocessed once), measured like ../shared/tools/onnxruntime_bench.py:
//! warm-up, then `repeats` timed repeats of back-to-back batches for at least `seconds` each,
//! median (min, max) (`--threads 1,2,16` picks other pool sizes, `--batches 1,8` other batch
//! sizes). Also: preprocessing per image, the digits CNN's training time and its throughput
//! (`--no-digits` skips them), and a per-layer-kind breakdown of EfficientNet at batch 8 (8
//! passes of one image, or with `--generic` one pass of 8 images, each step synchronised), on 1
//! and on 2 threads, then (CPU kernels) the same by layer size, 1 thread against 2.
//!
//! `--generic` measures the generic Burn network (what every non-CPU device runs) on the CPU
//! instead of the CPU kernels (`EfficientNetLite0::with_cpu_kernels(false)`), for before/after
//! tables from one binary, plus the effect of the micro-batch size on it.

use std::time::{Duration, Instant};

use idunno_models::digits::{Dataset, DigitsCnn, TrainConfig};
use idunno_models::efficientnet::{EfficientNetLite0, preprocess_image};
use idunno_models::{Model, Preprocessed, default_device};

#[path = "bench/device_report.rs"]
mod device_report;

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds used by every process (from /proc/stat) and by this one (/proc/self/stat).
fn cpu_seconds() -> Option<(f64, f64)> {
    const TICKS_PER_SECOND: f64 = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let all_busy = fields.iter().sum::<f64>() - fields.get(3)? - fields.get(4)?;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = own.rsplit_once(')')?.1;
    let own_fields: Vec<f64> = after_name
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 of /proc/self/stat, 11 and 12 after the name.
    let own_busy = own_fields.get(10)? + own_fields.get(11)?;
    Some((all_busy / TICKS_PER_SECOND, own_busy / TICKS_PER_SECOND))
}

/// Largest CPU load (in cores) of other processes seen during the timed repeats.
static OTHER_LOAD_MAX: std::sync::Mutex<f64> = std::sync::Mutex::new(0.0);

/// Median, min and max items/s over `repeats` timed repeats of `run` (which handles `items`).
fn measure(seconds: f64, repeats: usize, items: usize, mut run: impl FnMut()) -> (f64, f64, f64) {
    let warm_up = Instant::now();
    run();
    while warm_up.elapsed() < Duration::from_secs_f64(seconds.min(2.0)) {
        run();
    }
    let mut rates = Vec::new();
    for _ in 0..repeats {
        let before = cpu_seconds();
        let start = Instant::now();
        let mut count = 0usize;
        loop {
            run();
            count += items;
            if start.elapsed().as_secs_f64() >= seconds {
                break;
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        rates.push(count as f64 / elapsed);
        if let (Some((all0, own0)), Some((all1, own1))) = (before, cpu_seconds()) {
            let other = ((all1 - all0) - (own1 - own0)).max(0.0) / elapsed;
            if let Ok(mut max) = OTHER_LOAD_MAX.lock() {
                *max = max.max(other);
            }
        }
    }
    rates.sort_by(f64::total_cmp);
    (rates[rates.len() / 2], rates[0], rates[rates.len() - 1])
}

/// The value after `name` on the command line, as text.
fn text_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = arg("--seconds", 5.0);
    let repeats = arg("--repeats", 5.0) as usize;
    if let Some(name) = text_arg("--device").or_else(|| std::env::var("IDUNNO_DEVICE").ok()) {
        let options = device_report::Options {
            device_name: name,
            seconds,
            repeats,
            machine: text_arg("--machine").unwrap_or_else(|| "this machine".to_owned()),
            testdata: text_arg("--testdata")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
                }),
            out: text_arg("--out").map(std::path::PathBuf::from),
        };
        return match device_report::run(&options)? {
            true => Ok(()),
            false => std::process::exit(1),
        };
    }
    let device = default_device();
    let testdata = text_arg("--testdata")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata"));
    let names = [
        "astronaut.png",
        "chelsea.png",
        "coffee.png",
        "flower.jpg",
        "hubble_deep_field.jpg",
        "rocket.jpg",
    ];
    let files: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(testdata.join(n)))
        .collect::<Result<_, _>>()?;

    let generic = std::env::args().any(|a| a == "--generic");
    // `--threads 1,2,16`: the rayon pool sizes of the EfficientNet table (default 1,2).
    let thread_counts: Vec<usize> = text_arg("--threads")
        .unwrap_or_else(|| "1,2".to_owned())
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .filter(|&t| t > 0)
        .collect();
    // `--batches 1,8,32`: the batch sizes of the EfficientNet table (default 1,8,32).
    let batch_sizes: Vec<usize> = text_arg("--batches")
        .unwrap_or_else(|| "1,8,32".to_owned())
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .filter(|&t| t > 0)
        .collect();
    // `--no-digits`: skip the digits CNN (training and inference).
    let digits = !std::env::args().any(|a| a == "--no-digits");
    let model = EfficientNetLite0::pretrained(&device)?.with_cpu_kernels(!generic);
    println!(
        "# efficientnet-lite0 on the CPU: {}",
        if generic {
            "generic Burn network (--generic)"
        } else {
            "CPU kernels"
        }
    );
    let start = Instant::now();
    let mut prepared = Vec::new();
    for _ in 0..5 {
        prepared = files
            .iter()
            .map(|b| preprocess_image(b))
            .collect::<Result<Vec<_>, _>>()?;
    }
    let preprocess_ms = start.elapsed().as_secs_f64() * 1000.0 / (5 * files.len()) as f64;
    println!(
        "# efficientnet-lite0 preprocessing (decode + resize 256 + crop), one thread: {preprocess_ms:.2} ms/image"
    );

    println!("| threads | batch | median img/s | min | max | ms/batch | other-load |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &threads in &thread_counts {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        for &batch_size in &batch_sizes {
            let batch: Vec<Preprocessed> =
                prepared.iter().cycle().take(batch_size).cloned().collect();
            let (median, min, max) = pool.install(|| {
                measure(seconds, repeats, batch_size, || {
                    let _ = model
                        .forward_batch(&batch)
                        .map(|l| assert_eq!(l.len(), batch_size));
                })
            });
            let other = OTHER_LOAD_MAX
                .lock()
                .map(|mut m| std::mem::take(&mut *m))
                .unwrap_or(f64::NAN);
            println!(
                "| {threads} | {batch_size} | {median:.1} | {min:.1} | {max:.1} | {:.1} | {other:.2} |",
                1000.0 * batch_size as f64 / median
            );
        }
    }

    if generic {
        println!();
        println!("# micro-batch size (images per forward pass) at batch 32");
        println!("| threads | micro-batch | median img/s |");
        println!("|---:|---:|---:|");
    }
    let mut model = model;
    for threads in [1usize, 2].into_iter().filter(|_| generic) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let batch: Vec<Preprocessed> = prepared.iter().cycle().take(32).cloned().collect();
        for micro in [1usize, 2, 4, 32] {
            model = model.with_micro_batch(micro);
            let (median, _, _) = pool.install(|| {
                measure(seconds, repeats, 32, || {
                    let _ = model.forward_batch(&batch);
                })
            });
            println!("| {threads} | {micro} | {median:.1} |");
        }
    }
    let model = model.with_micro_batch(idunno_models::efficientnet::MICRO_BATCH);

    // Per kind and layer size (input side), per pool size: for the 1- vs 2-thread table.
    type Sized = Vec<((&'static str, usize), f64)>;
    let mut by_size: Vec<(usize, Sized)> = Vec::new();
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let batch: Vec<Preprocessed> = prepared.iter().cycle().take(8).cloned().collect();
        let mut totals: Vec<(&'static str, f64)> = Vec::new();
        let mut sized_totals: Vec<((&'static str, usize), f64)> = Vec::new();
        let runs = 5;
        for _ in 0..runs {
            let times = pool.install(|| model.profile(&batch))?;
            for (kind, time) in times.kinds {
                match totals.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, t)) => *t += time.as_secs_f64(),
                    None => totals.push((kind, time.as_secs_f64())),
                }
            }
            for (key, time) in times.sized {
                match sized_totals.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, t)) => *t += time.as_secs_f64(),
                    None => sized_totals.push((key, time.as_secs_f64())),
                }
            }
        }
        by_size.push((threads, sized_totals));
        let sum: f64 = totals.iter().map(|(_, t)| t).sum();
        println!();
        println!(
            "# where the time goes, batch 8, {threads} thread(s), mean of {runs} synchronised passes"
        );
        println!("| layer kind | ms per batch | share |");
        println!("|---|---:|---:|");
        for (kind, total) in &totals {
            println!(
                "| {kind} | {:.1} | {:.0}% |",
                1000.0 * total / runs as f64,
                100.0 * total / sum
            );
        }
    }

    // The same steps by layer size, 1 thread against 2 (each image split over the pool).
    if let [(1, one), (2, two)] = &by_size[..]
        && !one.is_empty()
    {
        println!();
        println!(
            "# where the time goes by layer size, ms per 8 single-image passes, 1 vs 2 threads"
        );
        println!("| layer kind | input side | 1 thread | 2 threads | speed-up |");
        println!("|---|---:|---:|---:|---:|");
        let runs = 5.0;
        for (key, t1) in one {
            let t2 = two
                .iter()
                .find(|(k, _)| k == key)
                .map_or(f64::NAN, |(_, t)| *t);
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.2}x |",
                key.0,
                key.1,
                1000.0 * t1 / runs,
                1000.0 * t2 / runs,
                t1 / t2
            );
        }
    }

    if !digits {
        return Ok(());
    }
    // digits-cnn: training time (default settings) and inference throughput.
    println!();
    println!("| digits-cnn | threads | value |");
    println!("|---|---:|---:|");
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let (digits, report) =
            pool.install(|| DigitsCnn::train(&TrainConfig::default(), &device))?;
        println!(
            "| train {} epochs on {} samples (held-out accuracy {:.4}) | {threads} | {:.2} s |",
            TrainConfig::default().epochs,
            report.train_samples,
            report.test_accuracy,
            report.train_time.as_secs_f64()
        );
        let data = Dataset::bundled()?;
        for batch_size in [1usize, 32, 256] {
            let rows: Vec<Vec<u8>> = data.pixels[..batch_size]
                .iter()
                .map(|p| {
                    p.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                        .into_bytes()
                })
                .collect();
            let batch: Vec<Preprocessed> = rows
                .iter()
                .map(|r| digits.preprocess(r))
                .collect::<Result<_, _>>()?;
            let (median, _, _) = pool.install(|| {
                measure(seconds.min(2.0), repeats, batch_size, || {
                    let _ = digits.forward_batch(&batch);
                })
            });
            println!("| inference, batch {batch_size} | {threads} | {median:.0} digits/s |");
        }
    }
    Ok(())
}
