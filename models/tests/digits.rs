//! digits-cnn: seeded training reaches the accuracy bar on the held-out split; weights round trip.

use std::time::Instant;

use idunno_models::digits::{Dataset, DigitsCnn, TrainConfig};
use idunno_models::{InputError, InputKind, Model, default_device, predict_batch, registry};

#[test]
fn training_reaches_95_percent_on_the_held_out_20_percent() {
    let device = default_device();
    let start = Instant::now();
    let (model, report) = DigitsCnn::train(&TrainConfig::default(), &device).expect("train");
    eprintln!(
        "digits-cnn: {} train / {} test samples, accuracy {:.4}, last-epoch loss {:.4}, \
         training {:.2?} (total with evaluation {:.2?})",
        report.train_samples,
        report.test_samples,
        report.test_accuracy,
        report.final_loss,
        report.train_time,
        start.elapsed()
    );
    assert_eq!(report.test_samples, 359);
    assert!(
        report.test_accuracy >= 0.95,
        "accuracy {}",
        report.test_accuracy
    );
    assert!(model.is_trainable());
    assert_eq!(model.input_kind(), InputKind::Digits8x8);

    // Round trip through bytes: identical outputs on the whole held-out split.
    let bytes = model.weights_to_bytes().expect("serialize");
    let restored = registry::from_weights("digits-cnn", &bytes, &device).expect("restore");
    let (_, test) = Dataset::bundled()
        .expect("data")
        .split(TrainConfig::default().seed, 20);
    let rows: Vec<String> = test
        .pixels
        .iter()
        .map(|p| {
            p.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let inputs: Vec<&[u8]> = rows.iter().map(|r| r.as_bytes()).collect();
    let a = predict_batch(&model, &inputs).expect("run");
    let b = predict_batch(restored.as_ref(), &inputs).expect("run");
    assert_eq!(a, b);
    let correct = a
        .iter()
        .zip(&test.labels)
        .filter(|(p, l)| p.as_ref().is_ok_and(|p| p.class_id == usize::from(**l)))
        .count();
    assert_eq!(correct as f64 / test.len() as f64, report.test_accuracy);

    // Bad inputs fail alone.
    let mixed: Vec<&[u8]> = vec![inputs[0], b"", b"1,2,3", inputs[1]];
    let results = predict_batch(&model, &mixed).expect("run");
    assert!(results[0].is_ok() && results[3].is_ok());
    assert_eq!(results[1], Err(InputError::Empty));
    assert!(matches!(results[2], Err(InputError::Digits(_))));
}

#[test]
fn the_same_seed_gives_the_same_weights() {
    let device = default_device();
    let config = TrainConfig {
        epochs: 1,
        ..TrainConfig::default()
    };
    // Compare outputs, not weight bytes: the bytes also carry random parameter ids.
    let data = Dataset::bundled().expect("data");
    let inputs: Vec<_> = data.pixels[..64]
        .iter()
        .map(|p| {
            let row: Vec<String> = p.iter().map(|v| v.to_string()).collect();
            row.join(",")
        })
        .collect();
    let logits = |model: &DigitsCnn| {
        let batch: Vec<_> = inputs
            .iter()
            .map(|r| model.preprocess(r.as_bytes()).expect("row"))
            .collect();
        model.forward_batch(&batch).expect("run")
    };
    let a = logits(&DigitsCnn::train(&config, &device).expect("train").0);
    let b = logits(&DigitsCnn::train(&config, &device).expect("train").0);
    assert!(a == b, "same seed, different model");
    let other = TrainConfig { seed: 7, ..config };
    let c = logits(&DigitsCnn::train(&other, &device).expect("train").0);
    assert!(a != c, "different seeds, same model");
}
