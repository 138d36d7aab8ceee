//! Post-processing for classifiers: logits -> softmax -> the result record.
//!
//! Owns: [`Prediction`] and [`ClassScore`], the records a worker stores per input, and the
//! numerically stable softmax + top-k that produces them.
//! Must never: depend on a model or a backend; it sees plain `f32` slices and label strings.

use serde::{Deserialize, Serialize};

/// How many classes a [`Prediction`] lists in `top5`.
pub const TOP_K: usize = 5;

/// One class with its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    /// Index of the class in the model's output.
    pub class_id: usize,
    /// Human-readable class name.
    pub label: String,
    /// Softmax probability in `0..=1`.
    pub probability: f32,
}

/// The result of classifying one input: the best class and the top five (best first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The most probable class.
    pub class_id: usize,
    /// Its label.
    pub label: String,
    /// Its probability.
    pub probability: f32,
    /// The `TOP_K` most probable classes, best first (fewer if the model has fewer classes).
    pub top5: Vec<ClassScore>,
}

/// Softmax over `logits`, stable for large values.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|z| (z - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Build the record for one input from its logits. `labels[i]` names class `i`; a class without
/// a label is named by its number.
pub fn prediction_from_logits(logits: &[f32], labels: &[String]) -> Prediction {
    assert!(!logits.is_empty(), "a classifier has at least one class");
    let probabilities = softmax(logits);
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    // Descending probability; ties (and NaN) broken by class id so the order is deterministic.
    order.sort_by(|&a, &b| {
        probabilities[b]
            .total_cmp(&probabilities[a])
            .then(a.cmp(&b))
    });
    let top5: Vec<ClassScore> = order
        .iter()
        .take(TOP_K)
        .map(|&class_id| ClassScore {
            class_id,
            label: labels
                .get(class_id)
                .cloned()
                .unwrap_or_else(|| class_id.to_string()),
            probability: probabilities[class_id],
        })
        .collect();
    let best = &top5[0];
    Prediction {
        class_id: best.class_id,
        label: best.label.clone(),
        probability: best.probability,
        top5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top5_is_sorted_and_sums_below_one() {
        let labels: Vec<String> = (0..7).map(|i| format!("c{i}")).collect();
        let p = prediction_from_logits(&[0.1, 3.0, -1.0, 2.0, 2.0, 0.0, 5.0], &labels);
        assert_eq!(p.class_id, 6);
        assert_eq!(p.label, "c6");
        let ids: Vec<usize> = p.top5.iter().map(|c| c.class_id).collect();
        assert_eq!(ids, vec![6, 1, 3, 4, 0]);
        let sum: f32 = p.top5.iter().map(|c| c.probability).sum();
        assert!(sum < 1.0 && sum > 0.9);
    }

    #[test]
    fn softmax_is_stable() {
        let p = softmax(&[1000.0, 1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6);
    }
}
