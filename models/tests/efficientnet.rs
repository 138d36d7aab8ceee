//! EfficientNet-Lite0 against the independent NumPy reference, weight round trip, batching and
//! bad inputs.

mod common;

use idunno_models::efficientnet::EfficientNetLite0;
use idunno_models::{InputError, Model, Prediction, default_device, predict_batch, registry};

fn model() -> EfficientNetLite0 {
    EfficientNetLite0::pretrained(&default_device()).expect("vendored weights load")
}

fn image_names() -> Vec<String> {
    common::reference().into_iter().map(|r| r.image).collect()
}

#[test]
fn top5_matches_the_reference_on_every_image() {
    let model = model();
    let reference = common::reference();
    assert_eq!(reference.len(), 6);
    let batch: Vec<_> = reference
        .iter()
        .map(|r| {
            model
                .preprocess(&common::read(&r.image))
                .expect("preprocess")
        })
        .collect();
    let predictions = model.run_batch(&batch).expect("run");
    let mut max_diff = 0.0f32;
    for (r, p) in reference.iter().zip(&predictions) {
        let ids: Vec<usize> = p.top5.iter().map(|c| c.class_id).collect();
        let expected: Vec<usize> = r.top5.iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, expected, "{}: top-5 class ids", r.image);
        for (c, &(_, probability)) in p.top5.iter().zip(&r.top5) {
            let diff = (c.probability - probability).abs();
            max_diff = max_diff.max(diff);
            assert!(
                diff <= 0.01,
                "{}: class {} p={} ref={probability}",
                r.image,
                c.class_id,
                c.probability
            );
        }
        eprintln!(
            "{}: {} {} {:.4} (reference {:.4})",
            r.image, p.class_id, p.label, p.probability, r.top5[0].1
        );
    }
    eprintln!("largest top-5 probability difference from the reference: {max_diff:.4}");
    assert_eq!(predictions[1].label, "tiger cat");
    assert_eq!(predictions[2].label, "espresso");
}

#[test]
fn a_batch_gives_the_same_results_as_single_runs() {
    let model = model();
    let inputs: Vec<_> = image_names()
        .iter()
        .map(|name| model.preprocess(&common::read(name)).expect("preprocess"))
        .collect();
    let batched = model.forward_batch(&inputs).expect("batch");
    for (input, batch_logits) in inputs.iter().zip(&batched) {
        let single = model
            .forward_batch(std::slice::from_ref(input))
            .expect("single");
        let max_diff = single[0]
            .iter()
            .zip(batch_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max_diff < 1e-3, "logits differ by {max_diff}");
        let a = model.postprocess(&single[0]);
        let b = model.postprocess(batch_logits);
        let ids = |p: &Prediction| p.top5.iter().map(|c| c.class_id).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
        assert!((a.probability - b.probability).abs() < 1e-4);
    }
}

#[test]
fn cpu_kernels_give_the_generic_burn_networks_results() {
    // The CPU path (hand-written depthwise kernels, fused biases and ReLU6, images in parallel)
    // against the generic Burn network that every other device runs, on the same weights.
    let fast = model();
    let inputs: Vec<_> = image_names()
        .iter()
        .map(|name| fast.preprocess(&common::read(name)).expect("preprocess"))
        .collect();
    let fast_logits = fast.forward_batch(&inputs).expect("cpu kernels");
    let generic = fast.with_cpu_kernels(false);
    let generic_logits = generic.forward_batch(&inputs).expect("generic");
    assert_eq!(fast_logits.len(), inputs.len());
    for (a, b) in fast_logits.iter().zip(&generic_logits) {
        assert_eq!(a.len(), 1000);
        let max_diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(max_diff < 2e-3, "logits differ by {max_diff}");
        let ids = |l: &[f32]| {
            let p = generic.postprocess(l);
            p.top5.iter().map(|c| c.class_id).collect::<Vec<_>>()
        };
        assert_eq!(ids(a), ids(b));
    }
}

#[test]
fn weights_round_trip_through_bytes_with_identical_outputs() {
    let device = default_device();
    let model = model();
    let bytes = model.weights_to_bytes().expect("serialize");
    assert!(bytes.len() > 4_000_000 * 4, "{} bytes", bytes.len());
    let restored = registry::from_weights("efficientnet-lite0", &bytes, &device).expect("restore");
    let input = model
        .preprocess(&common::read("chelsea.png"))
        .expect("preprocess");
    let before = model
        .forward_batch(std::slice::from_ref(&input))
        .expect("run");
    let after = restored
        .forward_batch(std::slice::from_ref(&input))
        .expect("run");
    assert_eq!(before, after);

    // Damaged or foreign bytes are an error, never a panic, and change nothing.
    let mut restored = restored;
    assert!(
        restored
            .load_weights_from_bytes(&bytes[..bytes.len() / 2])
            .is_err()
    );
    assert!(restored.load_weights_from_bytes(b"not weights").is_err());
    let one_epoch = idunno_models::digits::TrainConfig {
        epochs: 1,
        ..Default::default()
    };
    let digits = registry::train("digits-cnn", &one_epoch, &device)
        .expect("train")
        .0
        .weights_to_bytes()
        .expect("digits bytes");
    assert!(restored.load_weights_from_bytes(&digits).is_err());
    let again = restored
        .forward_batch(std::slice::from_ref(&input))
        .expect("run");
    assert_eq!(before, again);
}

#[test]
fn bad_inputs_fail_alone_and_the_rest_of_the_batch_runs() {
    let model = model();
    let chelsea = common::read("chelsea.png");
    let truncated = chelsea[..chelsea.len() / 3].to_vec();
    let huge = common::png_header_only(20_000, 20_000);
    let zero = common::png_header_only(0, 0);
    let inputs: Vec<&[u8]> = vec![
        &chelsea,
        &truncated,
        b"this is a text file, not an image\n",
        b"",
        &zero,
        &huge,
        b"\xff\xd8\xff\xe0 a JPEG that stops here",
    ];
    let results = predict_batch(&model, &inputs).expect("the batch runs");
    assert_eq!(results.len(), inputs.len());
    assert_eq!(results[0].as_ref().map(|p| p.class_id), Ok(282));
    for (index, result) in results.iter().enumerate().skip(1) {
        let error = result.as_ref().expect_err("bad input");
        eprintln!("input {index}: {error}");
        assert!(!error.to_string().is_empty());
    }
    assert!(matches!(results[1], Err(InputError::Decode(_))));
    assert_eq!(results[2], Err(InputError::UnknownFormat));
    assert_eq!(results[3], Err(InputError::Empty));
    assert!(matches!(
        results[4],
        Err(InputError::Decode(_) | InputError::ZeroSize { .. })
    ));
    assert!(matches!(
        results[5],
        Err(InputError::TooLarge {
            width: 20_000,
            height: 20_000,
            ..
        })
    ));
    assert!(matches!(results[6], Err(InputError::Decode(_))));
}

#[test]
fn grey_and_rgba_images_are_converted() {
    let model = model();
    let rgb = image::load_from_memory(&common::read("coffee.png")).expect("decode");
    for converted in [
        image::DynamicImage::ImageLuma8(rgb.to_luma8()),
        image::DynamicImage::ImageRgba8(rgb.to_rgba8()),
    ] {
        let mut png = Vec::new();
        converted
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("encode");
        let input = model.preprocess(&png).expect("preprocess");
        assert_eq!(input.shape(), [3, 224, 224]);
    }
    let rgba = image::DynamicImage::ImageRgba8(rgb.to_rgba8());
    let mut png = Vec::new();
    rgba.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encode");
    let p = predict_batch(&model, &[&png]).expect("run");
    assert_eq!(p[0].as_ref().map(|p| p.class_id), Ok(967), "RGBA espresso");
}
