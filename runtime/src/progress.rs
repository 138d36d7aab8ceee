//! The client commands' progress bars, on stderr.
//!
//! Owns: the bars' styles, one constructor per kind: [`upload`] (bytes of a directory's files,
//! with files done in the message), [`job`] (a job's inputs done or failed, the cluster's query
//! rate and an ETA) and [`transfer`] (bytes of one large file put or got). Bars go to stderr and
//! draw only when stderr is a terminal (indicatif hides them otherwise), so scripts, tests and
//! `--json` output see nothing of them.
//! Must never: write to stdout, draw when stderr is not a terminal, or fail a command (a style
//! that does not parse falls back to the default one).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Redraws per second at most.
const REFRESH_HZ: u8 = 10;

fn bar(total: u64, template: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(REFRESH_HZ))
        .with_style(style)
}

/// `upload`: `total_bytes` of `files` files; the caller adds each file's bytes as it lands and
/// sets the message to the files done.
pub fn upload(total_bytes: u64, files: usize) -> ProgressBar {
    let bar = bar(
        total_bytes,
        "upload [{bar:30}] {binary_bytes}/{binary_total_bytes} {msg} ({binary_bytes_per_sec}, eta {eta})",
    );
    bar.set_message(upload_message(0, files));
    bar
}

/// The message of an upload bar.
pub fn upload_message(done: usize, files: usize) -> String {
    format!("{done}/{files} files")
}

/// A job's wait: `inputs` inputs; the caller sets the position to the inputs finished (done or
/// failed) and the message with [`job_message`].
pub fn job(job: &str, inputs: u64) -> ProgressBar {
    let bar = bar(
        inputs,
        "{prefix} [{bar:30}] {pos}/{len} inputs {msg} (eta {eta})",
    );
    bar.set_prefix(job.to_owned());
    bar.set_message(job_message(0, 0.0));
    bar
}

/// The message of a job bar: its failures so far and the cluster's query rate.
pub fn job_message(failed: u32, rate_per_sec: f64) -> String {
    format!("{failed} failed, {rate_per_sec:.1}/s")
}

/// One file's transfer (`put` or `get`) of `total_bytes`, labelled `label`.
pub fn transfer(label: &str, total_bytes: u64) -> ProgressBar {
    let bar = bar(
        total_bytes,
        "{prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, eta {eta})",
    );
    bar.set_prefix(label.to_owned());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_build_and_messages_read_well() {
        // Under the test harness stderr is not a terminal: the bars exist but draw nothing.
        let up = upload(1000, 3);
        up.inc(500);
        up.set_message(upload_message(1, 3));
        assert_eq!(up.position(), 500);
        up.finish_and_clear();
        let j = job("job-1", 10);
        j.set_position(4);
        assert_eq!(j.length(), Some(10));
        j.finish_and_clear();
        let t = transfer("put big", 1 << 20);
        t.set_position(1 << 19);
        t.finish_and_clear();
        assert_eq!(upload_message(2, 5), "2/5 files");
        assert_eq!(job_message(1, 2.5), "1 failed, 2.5/s");
    }
}
