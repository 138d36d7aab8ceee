//! The result files of inference batches: one file per batch in the file system, one JSON line
//! per input.
//!
//! Owns: the file's name ([`result_file_name`], `results/job-J/lease-L.jsonl`), its line format
//! ([`ResultLine`]: `input` (the input's name), `index`, then either `class_id`, `label`,
//! `probability` and `top5`, or `error`), encoding a batch ([`encode`]) and decoding a file a
//! node sent ([`decode`], every line checked, sizes capped).
//! Must never: panic on a file's bytes (they come from the network), accept a file larger than
//! [`RESULT_FILE_BYTES_MAX`] or a line that does not parse, or let one input's line stand for
//! another input.

use idunno_core::scheduler::{BATCH_SIZE_MAX, JobId, LeaseId};
use idunno_models::{ClassScore, Prediction};
use serde::{Deserialize, Serialize};

/// The directory every result file lives under.
pub const RESULTS_DIR: &str = "results";
/// The largest result file a reader accepts (a full batch of long lines fits many times over).
pub const RESULT_FILE_BYTES_MAX: usize = 4 << 20;
/// The longest error text kept in a line.
pub const LINE_ERROR_BYTES_MAX: usize = 1024;
/// Most classes kept in a line's `top5`.
pub const TOP_MAX: usize = 16;

/// The file-system name of the result file of `lease` in `job`.
pub fn result_file_name(job: JobId, lease: LeaseId) -> String {
    format!("{RESULTS_DIR}/{job}/{lease}.jsonl")
}

/// One input's line in a result file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultLine {
    /// The input's file-system name.
    pub input: String,
    /// Its index in the job.
    pub index: u32,
    /// The best class, when the input ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_id: Option<usize>,
    /// Its label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Its probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f32>,
    /// The most probable classes, best first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top5: Vec<ClassScore>,
    /// Why the input failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ResultLine {
    /// The line of an input that ran.
    pub fn prediction(input: &str, index: u32, p: &Prediction) -> Self {
        ResultLine {
            input: input.to_owned(),
            index,
            class_id: Some(p.class_id),
            label: Some(p.label.clone()),
            probability: Some(p.probability),
            top5: p.top5.clone(),
            error: None,
        }
    }

    /// The line of an input that failed.
    pub fn failed(input: &str, index: u32, error: &str) -> Self {
        ResultLine {
            input: input.to_owned(),
            index,
            class_id: None,
            label: None,
            probability: None,
            top5: Vec::new(),
            error: Some(crate::jobs::noop::truncated(error, LINE_ERROR_BYTES_MAX)),
        }
    }

    /// Whether the line is one of the two allowed shapes with sane values.
    fn check(&self) -> Result<(), String> {
        match (&self.class_id, &self.label, &self.probability, &self.error) {
            (Some(_), Some(_), Some(p), None) if (0.0..=1.0).contains(p) => {}
            (None, None, None, Some(_)) if self.top5.is_empty() => {}
            _ => {
                return Err(format!(
                    "input {} ({:?}) is neither a prediction nor an error",
                    self.index, self.input
                ));
            }
        }
        if self.top5.len() > TOP_MAX {
            return Err(format!(
                "input {}: {} top classes",
                self.index,
                self.top5.len()
            ));
        }
        Ok(())
    }
}

/// Why a result file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultFileError {
    /// Larger than [`RESULT_FILE_BYTES_MAX`].
    #[error("result file of {bytes} bytes is larger than {RESULT_FILE_BYTES_MAX}")]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
    /// More lines than a batch has inputs.
    #[error("result file has more than {BATCH_SIZE_MAX} lines")]
    TooManyLines,
    /// A line does not parse or is not a valid result.
    #[error("result file line {line}: {reason}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The file's bytes: one line per entry, in the given order.
pub fn encode(lines: &[ResultLine]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        debug_assert!(line.check().is_ok(), "encoding a malformed line {line:?}");
        // Serializing plain data with string keys cannot fail; an empty line would be refused
        // by `decode`, so a bug shows up there rather than as a panic here.
        if let Ok(text) = serde_json::to_string(line) {
            out.extend_from_slice(text.as_bytes());
        }
        out.push(b'\n');
    }
    out
}

/// Parses a result file (untrusted bytes): every non-empty line must be a valid [`ResultLine`].
pub fn decode(bytes: &[u8]) -> Result<Vec<ResultLine>, ResultFileError> {
    if bytes.len() > RESULT_FILE_BYTES_MAX {
        return Err(ResultFileError::TooLarge { bytes: bytes.len() });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| ResultFileError::BadLine {
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        reason: "not UTF-8".to_owned(),
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if out.len() >= BATCH_SIZE_MAX {
            return Err(ResultFileError::TooManyLines);
        }
        let bad = |reason: String| ResultFileError::BadLine {
            line: i + 1,
            reason,
        };
        let parsed: ResultLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        parsed.check().map_err(bad)?;
        out.push(parsed);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction() -> Prediction {
        Prediction {
            class_id: 3,
            label: "3".to_owned(),
            probability: 0.75,
            top5: vec![
                ClassScore {
                    class_id: 3,
                    label: "3".to_owned(),
                    probability: 0.75,
                },
                ClassScore {
                    class_id: 8,
                    label: "8".to_owned(),
                    probability: 0.25,
                },
            ],
        }
    }

    #[test]
    fn names_are_per_job_and_lease_and_valid() {
        let name = result_file_name(JobId(7), LeaseId(42));
        assert_eq!(name, "results/job-7/lease-42.jsonl");
        assert!(idunno_core::dfs::validate_name(&name).is_ok());
        let longest = result_file_name(JobId(u64::MAX), LeaseId(u64::MAX));
        assert!(longest.len() <= idunno_core::scheduler::NAME_BYTES_MAX);
    }

    #[test]
    fn lines_round_trip() {
        let lines = vec![
            ResultLine::prediction("inputs/d/a.txt", 0, &prediction()),
            ResultLine::failed("inputs/d/b.png", 5, "not an image"),
        ];
        let bytes = encode(&lines);
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 2);
        assert_eq!(decode(&bytes), Ok(lines));
        let text = String::from_utf8(encode(&[ResultLine::failed("x", 1, "bad")])).expect("utf8");
        assert_eq!(text, "{\"input\":\"x\",\"index\":1,\"error\":\"bad\"}\n");
    }

    #[test]
    fn long_errors_are_cut() {
        let line = ResultLine::failed("x", 0, &"é".repeat(2000));
        assert!(
            line.error
                .as_ref()
                .is_some_and(|e| e.len() <= LINE_ERROR_BYTES_MAX)
        );
    }

    #[test]
    fn bad_files_are_refused_not_panicked_on() {
        assert!(matches!(
            decode(&vec![b' '; RESULT_FILE_BYTES_MAX + 1]),
            Err(ResultFileError::TooLarge { .. })
        ));
        assert!(matches!(
            decode(b"{\"input\":\"x\",\"index\":0}\n"),
            Err(ResultFileError::BadLine { line: 1, .. })
        ));
        assert!(matches!(
            decode(b"\n\nnot json"),
            Err(ResultFileError::BadLine { line: 3, .. })
        ));
        assert!(matches!(
            decode(
                b"{\"input\":\"x\",\"index\":0,\"class_id\":1,\"label\":\"a\",\"probability\":7}"
            ),
            Err(ResultFileError::BadLine { .. })
        ));
        assert!(matches!(
            decode(b"{\"input\":\"x\",\"index\":0,\"error\":\"e\",\"class_id\":1}"),
            Err(ResultFileError::BadLine { .. })
        ));
        assert!(matches!(
            decode(&[0xff, 0xfe]),
            Err(ResultFileError::BadLine { .. })
        ));
        let many = "{\"input\":\"x\",\"index\":0,\"error\":\"e\"}\n".repeat(BATCH_SIZE_MAX + 1);
        assert_eq!(decode(many.as_bytes()), Err(ResultFileError::TooManyLines));
        assert_eq!(decode(b""), Ok(Vec::new()));
    }
}
