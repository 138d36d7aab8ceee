//! Real inference on six real `idunno-node` processes on 127.0.0.140-145 (three Raft voters,
//! three non-voting members, every one a worker with the model executor): `train digits-cnn`
//! and `train efficientnet-lite0` put their weights in the file system, `upload` puts 60 digits
//! of the held-out split and the six test photos (plus one broken "photo"), two `inference`
//! jobs run at once, and a worker that is not the leader is SIGKILLed mid-job. Every input of
//! both jobs must end with exactly one result, and each prediction must equal what
//! `idunno-node predict MODEL FILES --json` (with `--weights` the cluster's own digits weights)
//! says on the same files: the same class ids, probabilities within 1e-4; the broken input
//! fails in both.
//!
//! Every wait is an `eventually` with a generous deadline: the test asserts what the cluster
//! ends up doing, never how fast.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use idunno_models::digits::{Dataset, TrainConfig};
use idunno_tests::harness::{
    CONVERGE_TIMEOUT, Cluster, RaftLayout, client_json, eventually, leader, node_binary, patience,
};

const VOTERS: u8 = 3;
const MEMBERS: u8 = 3;
/// This test's addresses start here (unique among the tests in this crate).
const FIRST_HOST: u8 = 140;
/// Digits uploaded (from the held-out split).
const DIGITS: usize = 60;
/// The broken input among the photos.
const BROKEN: &str = "zz-broken.png";

/// Runs `idunno-node ARGS` to completion within `limit`, proving `key` (the cluster key) when
/// given; its stdout, or an error with stderr.
fn run_node(args: &[&str], key: Option<String>, limit: Duration) -> Result<String, String> {
    let mut command = Command::new(node_binary());
    if let Some(key) = key {
        command.env("IDUNNO_CLUSTER_KEY", key);
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run idunno-node: {e}"))?;
    let deadline = Instant::now() + patience(limit);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{args:?} timed out"));
            }
            Err(e) => return Err(format!("waiting for {args:?}: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("output of {args:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{args:?} exited {}: {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A client command with a long deadline (training, uploads), its JSON answer.
fn client_long(node: SocketAddr, args: &[&str]) -> Result<serde_json::Value, String> {
    let key = idunno_tests::harness::key_of(node);
    let node = node.to_string();
    let mut all = vec!["client", "--node", &node, "--timeout-ms", "10000"];
    all.extend_from_slice(args);
    all.push("--json");
    let stdout = run_node(&all, key, Duration::from_secs(180))?;
    serde_json::from_str(stdout.trim()).map_err(|e| format!("{args:?}: not JSON ({e}): {stdout}"))
}

/// Writes the first `n` digits of the held-out split, one file each (64 values and the label).
fn write_digits(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).expect("digits dir");
    let config = TrainConfig::default();
    let (_, test) = Dataset::bundled()
        .expect("bundled digits")
        .split(config.seed, config.test_percent);
    for (i, (pixels, label)) in test.pixels.iter().zip(&test.labels).take(n).enumerate() {
        let mut fields: Vec<String> = pixels.iter().map(|v| format!("{v}")).collect();
        fields.push(label.to_string());
        std::fs::write(dir.join(format!("digit-{i:03}.txt")), fields.join(","))
            .expect("write a digit");
    }
}

/// Copies the test photos (not the reference table) and adds one broken image.
fn write_photos(dir: &Path) -> usize {
    std::fs::create_dir_all(dir).expect("photos dir");
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/testdata");
    let mut n = 0;
    for entry in std::fs::read_dir(&testdata).expect("models/testdata") {
        let path = entry.expect("entry").path();
        let is_photo = path
            .extension()
            .is_some_and(|e| e == "png" || e == "jpg" || e == "jpeg");
        if is_photo {
            std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
            n += 1;
        }
    }
    std::fs::write(dir.join(BROKEN), b"\x89PNG\r\n\x1a\n truncated").expect("broken");
    n + 1
}

/// `predict --json`'s lines, by the input's file name.
fn local_predictions(args: &[&str]) -> BTreeMap<String, serde_json::Value> {
    // Exit 1 means some input failed (reported in the output): the broken photo does.
    let mut command = Command::new(node_binary());
    let out = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run predict");
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "predict {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("predict line is JSON");
            let input = v["input"].as_str().expect("input").to_owned();
            let file = Path::new(&input)
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (file, v)
        })
        .collect()
}

/// Checks `c4`'s entries against the local run: every input exactly once, done with the same
/// class and probability (1e-4), or failed where the local run failed too.
fn check_against_local(
    job: u64,
    shown: &serde_json::Value,
    inputs: usize,
    local: &BTreeMap<String, serde_json::Value>,
) -> Result<(), String> {
    let shown = shown.as_array().ok_or("c4 is not an array")?;
    let mut seen = BTreeSet::new();
    for s in shown {
        let index = s["index"].as_u64().ok_or("an entry without index")?;
        if !seen.insert(index) {
            return Err(format!("job {job}: input {index} shown twice"));
        }
        let name = s["input"]
            .as_str()
            .ok_or_else(|| format!("job {job}: {s}"))?;
        let file = name.rsplit('/').next().unwrap_or(name);
        let want = local
            .get(file)
            .ok_or_else(|| format!("job {job}: {file} not run locally"))?;
        match (s["status"].as_str(), want.get("error")) {
            (Some("failed"), Some(_)) => {}
            (Some("done"), None) => {
                if s["class_id"] != want["class_id"] {
                    return Err(format!("job {job}: {file}: cluster {s} local {want}"));
                }
                let (a, b) = (s["probability"].as_f64(), want["probability"].as_f64());
                match (a, b) {
                    (Some(a), Some(b)) if (a - b).abs() <= 1e-4 => {}
                    _ => return Err(format!("job {job}: {file}: cluster {s} local {want}")),
                }
                let ids = |v: &serde_json::Value| -> Vec<u64> {
                    v["top5"]
                        .as_array()
                        .map(|t| t.iter().filter_map(|c| c["class_id"].as_u64()).collect())
                        .unwrap_or_default()
                };
                if ids(s) != ids(want) {
                    return Err(format!("job {job}: {file}: top5 {s} vs {want}"));
                }
            }
            _ => return Err(format!("job {job}: {file}: cluster {s} local {want}")),
        }
    }
    if seen.len() != inputs {
        return Err(format!(
            "job {job}: {} of {inputs} inputs shown",
            seen.len()
        ));
    }
    Ok(())
}

#[test]
fn two_model_jobs_match_a_local_run_through_killing_a_worker() {
    let started = Instant::now();
    let mut cluster = Cluster::new("inference6");
    let (all, index_of) = RaftLayout::new(FIRST_HOST, VOTERS).start(&mut cluster, MEMBERS, &[]);
    let leader_addr = eventually("a leader is elected", CONVERGE_TIMEOUT, || {
        leader(all[3])?
            .addr
            .ok_or_else(|| "no leader yet".to_owned())
    });
    // Every node is a member before files are placed (so replicas spread over all six).
    eventually("six members", CONVERGE_TIMEOUT, || {
        let members = idunno_tests::harness::list_mem(all[0])?;
        let alive = members.alive().len();
        if alive == all.len() {
            Ok(())
        } else {
            Err(format!("{alive} alive"))
        }
    });
    let entry = all[4];

    // Bad input first: a job for a model nobody trained yet, an unknown model, an empty dir.
    let untrained = client_json(entry, &["inference", "digits-cnn", "nothing"])
        .expect_err("untrained model refused");
    assert!(untrained.contains("train digits-cnn"), "{untrained}");
    let unknown =
        client_json(entry, &["inference", "resnet", "x"]).expect_err("unknown model refused");
    assert!(unknown.contains("efficientnet-lite0"), "{unknown}");

    // Train both models (in the client process) and upload the inputs.
    let trained = eventually("digits-cnn is trained", CONVERGE_TIMEOUT, || {
        client_long(entry, &["train", "digits-cnn"])
    });
    assert!(
        trained["accuracy"].as_f64().is_some_and(|a| a >= 0.95),
        "{trained}"
    );
    assert_eq!(trained["file"], "models/digits-cnn");
    let pretrained = eventually("efficientnet-lite0 is stored", CONVERGE_TIMEOUT, || {
        client_long(entry, &["train", "efficientnet-lite0"])
    });
    assert!(pretrained["accuracy"].is_null(), "{pretrained}");
    let local = cluster.scratch().join("local");
    let digits_dir = local.join("digits");
    write_digits(&digits_dir, DIGITS);
    let photos_dir = local.join("photos");
    let photos = write_photos(&photos_dir);
    let empty = local.join("empty");
    std::fs::create_dir_all(&empty).expect("empty dir");
    let refused = client_json(entry, &["upload", empty.to_str().expect("utf8")])
        .expect_err("an empty dir is refused");
    assert!(refused.contains("no regular files"), "{refused}");
    let up =
        client_long(entry, &["upload", digits_dir.to_str().expect("utf8")]).expect("upload digits");
    assert_eq!(up["files"], DIGITS as u64, "{up}");
    assert_eq!(up["prefix"], "inputs/digits");
    let up = client_long(
        entry,
        &[
            "upload",
            photos_dir.to_str().expect("utf8"),
            "--prefix",
            "inputs/photos",
        ],
    )
    .expect("upload photos");
    assert_eq!(up["files"], photos as u64, "{up}");
    let nothing =
        client_json(entry, &["inference", "digits-cnn", "nothing"]).expect_err("empty prefix");
    assert!(nothing.contains("no files"), "{nothing}");
    eprintln!(
        "[{:.1} s] trained and uploaded",
        started.elapsed().as_secs_f64()
    );

    // Both jobs at once; short leases so the killed worker's batches come back soon.
    let digits_job = client_json(
        entry,
        &[
            "inference",
            "digits-cnn",
            "digits",
            "--batch",
            "4",
            "--lease-ms",
            "3000",
        ],
    )
    .expect("digits job");
    assert_eq!(digits_job["inputs"], DIGITS as u64);
    let photos_job = client_json(
        entry,
        &[
            "inference",
            "efficientnet-lite0",
            "inputs/photos",
            "--batch",
            "2",
            "--lease-ms",
            "3000",
        ],
    )
    .expect("photos job");
    let jobs = [
        (digits_job["job"].as_u64().expect("job id"), DIGITS),
        (photos_job["job"].as_u64().expect("job id"), photos),
    ];

    // Mid-job: SIGKILL a worker that is neither the leader nor the node we talk through.
    eventually("the workers are under way", CONVERGE_TIMEOUT, || {
        let listed = client_json(entry, &["jobs"])?;
        let done: u64 = listed
            .as_array()
            .map(|j| j.iter().filter_map(|j| j["done"].as_u64()).sum())
            .unwrap_or(0);
        if done > 0 {
            Ok(())
        } else {
            Err(format!("no progress: {listed}"))
        }
    });
    let victim = *all
        .iter()
        .rev()
        .find(|&&a| a != leader_addr && a != entry)
        .expect("a worker to kill");
    let victim_index = all.iter().position(|&a| a == victim).expect("victim");
    cluster.node_mut(index_of[victim_index]).kill();
    eprintln!(
        "[{:.1} s] killed worker {victim}",
        started.elapsed().as_secs_f64()
    );

    for &(job, _) in &jobs {
        eventually(&format!("job {job} finishes"), CONVERGE_TIMEOUT * 2, || {
            let listed = client_json(entry, &["jobs"])?;
            let j = listed
                .as_array()
                .and_then(|all| all.iter().find(|j| j["job"] == job))
                .ok_or_else(|| format!("job {job} not listed: {listed}"))?;
            if j["status"] == "finished" {
                Ok(())
            } else {
                Err(format!("{j}"))
            }
        });
    }
    eprintln!(
        "[{:.1} s] both jobs finished",
        started.elapsed().as_secs_f64()
    );

    // The single-process run on the same files, digits with the cluster's own weights.
    let weights = local.join("digits-cnn.weights");
    eventually("the digits weights come back", CONVERGE_TIMEOUT, || {
        client_json(
            entry,
            &["get", "models/digits-cnn", weights.to_str().expect("utf8")],
        )
    });
    let files = |dir: &PathBuf| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").path().display().to_string())
            .collect();
        v.sort();
        v
    };
    let mut args = vec!["predict", "digits-cnn", "--json", "--weights"];
    let weights_arg = weights.display().to_string();
    args.push(&weights_arg);
    let digit_files = files(&digits_dir);
    args.extend(digit_files.iter().map(String::as_str));
    let local_digits = local_predictions(&args);
    let photo_files = files(&photos_dir);
    let mut args = vec!["predict", "efficientnet-lite0", "--json"];
    args.extend(photo_files.iter().map(String::as_str));
    let local_photos = local_predictions(&args);

    for ((job, inputs), local) in jobs.iter().zip([&local_digits, &local_photos]) {
        let shown = eventually(&format!("c4 of job {job}"), CONVERGE_TIMEOUT, || {
            client_json(entry, &["c4", &job.to_string()])
        });
        if let Err(e) = check_against_local(*job, &shown, *inputs, local) {
            panic!("{e}");
        }
    }
    eprintln!(
        "[{:.1} s] results equal the local run",
        started.elapsed().as_secs_f64()
    );
    let logs: Vec<PathBuf> = (0..all.len())
        .map(|i| cluster.node(index_of[i]).log.clone())
        .collect();
    print_batch_times(&logs, None);

    // Opt-in measurement (IDUNNO_INFER_BENCH=N): once the cluster is steady again, N photos
    // (copies of the test photos) and N digits in batches of 8; each step's median per batch.
    if let Some(n) = std::env::var("IDUNNO_INFER_BENCH")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        let bench = local.join("bench-photos");
        std::fs::create_dir_all(&bench).expect("bench dir");
        let real: Vec<&String> = photo_files
            .iter()
            .filter(|f| !f.ends_with(BROKEN))
            .collect();
        for i in 0..n {
            let from = real[i % real.len()];
            let ext = Path::new(from)
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("png");
            std::fs::copy(from, bench.join(format!("p{i:04}.{ext}"))).expect("copy");
        }
        let bench_digits = local.join("bench-digits");
        write_digits(&bench_digits, n);
        for (model, dir) in [
            ("efficientnet-lite0", &bench),
            ("digits-cnn", &bench_digits),
        ] {
            let prefix = format!("inputs/bench-{model}");
            client_long(
                entry,
                &["upload", dir.to_str().expect("utf8"), "--prefix", &prefix],
            )
            .expect("bench upload");
            let t = Instant::now();
            let job = client_long(
                entry,
                &["inference", model, &prefix, "--batch", "8", "--wait"],
            )
            .expect("bench job");
            eprintln!(
                "bench {model}: {n} inputs in {:.1} s ({:.1}/s) through the cluster",
                t.elapsed().as_secs_f64(),
                n as f64 / t.elapsed().as_secs_f64()
            );
            print_batch_times(&logs, job["job"].as_u64());
        }
    }
}

/// The value of `key=` in a log line.
fn field(line: &str, key: &str) -> Option<f64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..]
        .split(|c: char| c.is_whitespace())
        .next()?
        .parse()
        .ok()
}

/// Sums the workers' per-batch step timings ("batch ran", "batch reported") from the logs:
/// each step's median per batch, and the lanes' overhead: per lane (a node's log and its
/// `lane=`), the wall time from its first run's start to its last run's end minus the sum of
/// its run times, over the sum of its run times; summed over the lanes that ran at least two
/// batches (a lane with one batch has no gap to measure). With `IDUNNO_INFER_LOGS=DIR` the node
/// logs are copied there as well.
fn print_batch_times(logs: &[PathBuf], only_job: Option<u64>) {
    let job_field = only_job.map(|j| format!(" job=job-{j} "));
    if let Some(dir) = std::env::var_os("IDUNNO_INFER_LOGS") {
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        for log in logs {
            if let Some(name) = log.file_name() {
                let _ = std::fs::copy(log, dir.join(name));
            }
        }
    }
    const KEYS: [&str; 5] = ["inputs", "fetch_ms", "wait_ms", "run_ms", "store_ms"];
    let mut per_model: BTreeMap<String, Vec<Vec<f64>>> = BTreeMap::new();
    // (model, log, lane) -> (run start us, run end us) per batch.
    let mut lanes: BTreeMap<(String, usize, u64), Vec<(f64, f64)>> = BTreeMap::new();
    let mut reports = Vec::new();
    for (at, log) in logs.iter().enumerate() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            let wanted = job_field.as_ref().is_none_or(|j| line.contains(j.as_str()));
            if line.contains("batch reported") {
                if wanted {
                    reports.extend(field(line, "report_ms"));
                }
                continue;
            }
            if !line.contains("batch ran") || !wanted {
                continue;
            }
            let model = line
                .split(" model=")
                .nth(1)
                .and_then(|m| m.split_whitespace().next())
                .unwrap_or("?")
                .to_owned();
            let entry = per_model
                .entry(model.clone())
                .or_insert_with(|| vec![Vec::new(); KEYS.len()]);
            for (slot, key) in KEYS.iter().enumerate() {
                entry[slot].push(field(line, key).unwrap_or(0.0));
            }
            let lane = field(line, "lane").unwrap_or(0.0) as u64;
            if let (Some(start), Some(end)) =
                (field(line, "run_start_us"), field(line, "run_end_us"))
            {
                lanes
                    .entry((model, at, lane))
                    .or_default()
                    .push((start, end));
            }
        }
    }
    let median = |v: &[f64]| -> f64 {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    for (model, t) in &per_model {
        let (mut gaps, mut runs, mut counted, mut measured) = (0.0, 0.0, 0usize, 0usize);
        for ((m, _, _), batches) in &lanes {
            if m != model || batches.len() < 2 {
                continue;
            }
            let first = batches.iter().map(|b| b.0).fold(f64::INFINITY, f64::min);
            let last = batches.iter().map(|b| b.1).fold(0.0, f64::max);
            let ran: f64 = batches.iter().map(|b| b.1 - b.0).sum();
            gaps += (last - first - ran).max(0.0);
            runs += ran;
            counted += batches.len();
            measured += 1;
        }
        let overhead = if runs > 0.0 {
            format!("{:.2}%", 100.0 * gaps / runs)
        } else {
            "n/a (no lane ran two batches)".to_owned()
        };
        eprintln!(
            "{model}: {} batches, {} inputs; median per batch: fetch {:.1} ms, wait {:.1} ms, \
             run {:.1} ms, store {:.1} ms; lane overhead (gaps between runs / run time) \
             {overhead} over {counted} batches in {measured} lanes{}",
            t[0].len(),
            t[0].iter().sum::<f64>(),
            median(&t[1]),
            median(&t[2]),
            median(&t[3]),
            median(&t[4]),
            if only_job.is_none() {
                " (the kill slows the stores placed on the dead node until it is detected)"
            } else {
                ""
            }
        );
    }
    if !reports.is_empty() {
        eprintln!(
            "reports: {}, median {:.1} ms",
            reports.len(),
            median(&reports)
        );
    }
}
