//! `idunno-node demo`, the README's run command, run as a user runs it (small sizes): 10 real
//! node processes on 127.0.0.2-11, two jobs at once, 3 nodes SIGKILLed (the coordinator among
//! them) halfway. The demo must exit 0 and print its summary: every input of both jobs with
//! exactly one result, the new coordinator, the statistics.
//!
//! The demo checks exactly-once itself (from `c4`) and fails otherwise; this test asserts its
//! exit code and the lines that say what it checked. A demo past its deadline is stopped with
//! SIGTERM (it then kills its nodes) and the test fails with its output.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use idunno_tests::harness::{node_binary, patience};

/// Longest one demo run may take (scaled by IDUNNO_TEST_PATIENCE).
const DEMO_TIMEOUT: Duration = Duration::from_secs(240);
/// Grace between SIGTERM and SIGKILL for a demo past its deadline.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Runs `idunno-node demo ARGS..`; (exit status, stdout, stderr).
fn run_demo(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(node_binary())
        .arg("demo")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the demo");
    let stdout = read_in_background(&mut child, true);
    let stderr = read_in_background(&mut child, false);
    let deadline = Instant::now() + patience(DEMO_TIMEOUT);
    let status = loop {
        match child.try_wait().expect("wait for the demo") {
            Some(status) => break status,
            None if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
            None => {
                let status = stop(&mut child);
                let out = stdout.join().unwrap_or_default();
                let err = stderr.join().unwrap_or_default();
                panic!(
                    "the demo ran past {:?} ({status:?});\nstdout:\n{out}\nstderr:\n{err}",
                    patience(DEMO_TIMEOUT)
                );
            }
        }
    };
    (
        status,
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    )
}

/// SIGTERM (the demo kills its nodes and exits), then SIGKILL after a grace period.
fn stop(child: &mut Child) -> Option<ExitStatus> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let until = Instant::now() + STOP_GRACE;
    while Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait().ok()
}

fn read_in_background(child: &mut Child, stdout: bool) -> thread::JoinHandle<String> {
    let pipe: Option<Box<dyn Read + Send>> = if stdout {
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>)
    } else {
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>)
    };
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Asserts the demo passed and printed each of `lines` (substrings).
fn assert_passed(status: ExitStatus, out: &str, err: &str, lines: &[&str]) {
    assert!(
        status.success(),
        "the demo failed ({status});\nstdout:\n{out}\nstderr:\n{err}"
    );
    for line in lines {
        assert!(
            out.contains(line),
            "the demo's output lacks {line:?};\nstdout:\n{out}\nstderr:\n{err}"
        );
    }
    assert!(!err.contains("panicked"), "stderr:\n{err}");
}

#[test]
fn the_noop_demo_finishes_both_jobs_exactly_once_through_killing_the_coordinator() {
    // All 359 digits and 8 copies of the 6 photos, one input per batch: long enough (a few
    // seconds) that the kill lands while both jobs run.
    let (status, out, err) = run_demo(&["--noop", "--digits-batch", "1", "--photo-copies", "8"]);
    assert_passed(
        status,
        &out,
        &err,
        &[
            "10 nodes up",
            "SIGKILL 3 nodes at once, the coordinator",
            "new coordinator: voter",
            "noop: 359 results for 359 inputs, exactly one each, none failed",
            "noop: 48 results for 48 inputs, exactly one each, none failed",
            "every input of both jobs has exactly one result and none failed (407 inputs)",
            "demo passed",
        ],
    );
}

#[test]
fn the_demo_trains_classifies_and_finishes_both_jobs_exactly_once_through_killing_the_coordinator()
{
    // 40 digits and 2 copies of each of the 6 photos: the README's demo, smaller.
    let (status, out, err) = run_demo(&["--digits", "40", "--photo-copies", "2"]);
    assert_passed(
        status,
        &out,
        &err,
        &[
            "10 nodes up",
            "digits-cnn: held-out accuracy",
            "efficientnet-lite0: pretrained",
            "uploaded 40 files",
            "uploaded 12 files",
            "SIGKILL 3 nodes at once, the coordinator",
            "new coordinator: voter",
            "digits-cnn: 40 results for 40 inputs, exactly one each, none failed",
            "efficientnet-lite0: 12 results for 12 inputs, exactly one each, none failed",
            "6/6 photos have the single-process reference's top class (all copies of each photo \
             agree: yes)",
            "C1: query rate",
            "C5: the workers of each job",
            "every input of both jobs has exactly one result and none failed (52 inputs)",
            "demo passed",
        ],
    );
    // The cluster's predictions against the labels in the files: digits-cnn is ~99% accurate.
    let accuracy: f64 = out
        .lines()
        .find_map(|l| l.split("accuracy on the held-out digits: ").nth(1))
        .and_then(|rest| rest.split('%').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no accuracy line:\n{out}"));
    assert!(accuracy >= 90.0, "accuracy {accuracy}%:\n{out}");
}
