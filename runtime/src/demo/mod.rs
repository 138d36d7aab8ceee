//! `idunno-node demo`: the whole system on one machine. A 10-node cluster of real processes on
//! loopback trains digits-cnn, uploads the digits test split and the photos, runs a digits-cnn
//! and an efficientnet-lite0 job at the same time, loses 3 nodes (the coordinator among them)
//! to SIGKILL halfway, finishes both jobs and checks that every input has exactly one result
//! ([`inference`]). `demo --membership` runs the older membership-only demo ([`membership`]).
//!
//! Owns: the demo's entry point ([`run`]), its temporary directory (removed when the demo
//! passes, kept with the node logs when it fails), its progress lines on stdout
//! (`[  12.34s] ...`) and its exit code: 0 only when every step succeeded.
//! Must never: leave a child running on any exit path (errors, panics, Ctrl-C: the
//! [`cluster::Cluster`] guard kills and reaps them on drop), bind outside 127.0.0.0/8, or talk
//! to the nodes other than as a client does.

pub mod client;
pub mod cluster;
pub mod inference;
pub mod inputs;
pub mod membership;

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use idunno_core::membership::NodeId;

pub use cluster::parse_listening;

use crate::cli::DemoArgs;
use crate::identity::unix_time_ms;
use crate::node::Signals;

/// A step failed; the message says which and why.
#[derive(Debug)]
pub struct DemoError(pub String);

impl<E: std::fmt::Display> From<E> for DemoError {
    fn from(e: E) -> Self {
        DemoError(e.to_string())
    }
}

/// `Err` with `message`.
pub fn fail<T>(message: impl Into<String>) -> Result<T, DemoError> {
    Err(DemoError(message.into()))
}

/// Runs the demo (the inference demo, or the membership demo with `--membership`); exit code 0
/// only if every step succeeded.
pub fn run(args: DemoArgs) -> ExitCode {
    let started = Instant::now();
    let root = std::env::temp_dir().join(format!(
        "idunno-demo-{}-{}",
        std::process::id(),
        unix_time_ms()
    ));
    let outcome = crate::node::block_on(async {
        let mut cluster = cluster::Cluster::new(root.clone())?;
        let mut signals = Signals::new()?;
        let progress = Progress {
            started,
            step_timeout: Duration::from_secs(args.step_timeout_secs),
            timings: Vec::new(),
        };
        let result = tokio::select! {
            result = steps(&args, &mut cluster, progress) => result,
            () = signals.next() => fail("interrupted"),
        };
        let running = cluster.running();
        let t0 = Instant::now();
        drop(cluster);
        say(
            started,
            &format!(
                "stopped all {running} node processes in {}",
                secs(t0.elapsed())
            ),
        );
        result
    });
    let outcome = match outcome {
        Ok(result) => result,
        Err(e) => Err(DemoError(format!("cannot start the async runtime: {e}"))),
    };
    match outcome {
        Ok(()) => {
            say(
                started,
                &format!(
                    "demo passed: every step succeeded (total time {})",
                    secs(started.elapsed())
                ),
            );
            // Removing the nodes' data (model weights and photos, several replicas each)
            // takes seconds on some disks: say so first.
            say(started, &format!("removing {}", root.display()));
            let t0 = Instant::now();
            let _ = fs::remove_dir_all(&root);
            say(started, &format!("removed it in {}", secs(t0.elapsed())));
            ExitCode::SUCCESS
        }
        Err(DemoError(message)) => {
            say(
                started,
                &format!("demo FAILED after {}", secs(started.elapsed())),
            );
            eprintln!("demo FAILED: {message}");
            eprintln!("node logs and inputs are kept in {}", root.display());
            ExitCode::FAILURE
        }
    }
}

async fn steps(
    args: &DemoArgs,
    cluster: &mut cluster::Cluster,
    progress: Progress,
) -> Result<(), DemoError> {
    if args.membership {
        membership::steps(args, cluster, progress).await
    } else {
        inference::steps(args, cluster, progress).await
    }
}

/// Prints one progress line with the time since the demo started.
pub fn say(started: Instant, line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "[{:7.2}s] {line}", started.elapsed().as_secs_f64());
    let _ = out.flush();
}

/// Prints a block (a table) as is.
pub fn show(block: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(block.as_bytes());
    let _ = out.flush();
}

/// Prints `block` indented under a progress line.
pub fn show_indented(block: &str) {
    let mut text = String::new();
    for line in block.lines() {
        text.push_str("    ");
        text.push_str(line);
        text.push('\n');
    }
    show(&text);
}

/// `1.23s`.
pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Node ids, comma-separated.
pub fn ids(set: &BTreeSet<NodeId>) -> String {
    set.iter()
        .map(NodeId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The demo's progress state: when it started, each step's deadline and the timings so far.
pub struct Progress {
    /// When the demo started.
    pub started: Instant,
    /// Longest a step may take.
    pub step_timeout: Duration,
    /// What took how long, in order.
    pub timings: Vec<(&'static str, Duration)>,
}

impl Progress {
    /// Prints one progress line.
    pub fn say(&self, line: &str) {
        say(self.started, line);
    }

    /// The timings so far, `what 1.23s, ...`.
    pub fn summary(&self) -> String {
        self.timings
            .iter()
            .map(|(what, took)| format!("{what} {}", secs(*took)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
