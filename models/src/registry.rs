//! The model registry: look models up by name.
//!
//! Owns: the list of model names and how each is brought to life: trained (digits-cnn, seeded,
//! seconds on a CPU), loaded from its vendored pretrained weights (efficientnet-lite0), or rebuilt
//! from weight bytes a worker fetched from the replicated file system.
//! Must never: guess: an unknown name is an error that lists the known ones.

use crate::digits::{self, DigitsCnn, TrainConfig, TrainReport};
use crate::efficientnet::{self, EfficientNetLite0};
use crate::error::ModelError;
use crate::{Device, InputKind, Model};

/// What the registry knows about one model without building it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelInfo {
    /// Registry name.
    pub name: &'static str,
    /// What one input is.
    pub input_kind: InputKind,
    /// Whether [`train`] fits it from data (else it loads pretrained weights).
    pub trainable: bool,
}

/// Every registered model.
pub const MODELS: [ModelInfo; 2] = [
    ModelInfo {
        name: digits::NAME,
        input_kind: InputKind::Digits8x8,
        trainable: true,
    },
    ModelInfo {
        name: efficientnet::NAME,
        input_kind: InputKind::Image,
        trainable: false,
    },
];

/// The registered names.
pub fn names() -> Vec<&'static str> {
    MODELS.iter().map(|m| m.name).collect()
}

/// Look a model up by name.
pub fn info(name: &str) -> Result<ModelInfo, ModelError> {
    MODELS
        .iter()
        .copied()
        .find(|m| m.name == name)
        .ok_or_else(|| ModelError::UnknownModel {
            name: name.to_owned(),
            known: names().into_iter().map(str::to_owned).collect(),
        })
}

/// A ready-to-run model: the digits CNN is trained with the default (seeded) settings, the
/// pretrained ones load their vendored weights.
pub fn load(name: &str, device: &Device) -> Result<Box<dyn Model>, ModelError> {
    let info = info(name)?;
    if info.trainable {
        return train(name, &TrainConfig::default(), device).map(|(model, _)| model);
    }
    match info.name {
        efficientnet::NAME => Ok(Box::new(EfficientNetLite0::pretrained(device)?)),
        _ => Err(ModelError::Weights {
            model: info.name,
            reason: "no pretrained weights are registered".into(),
        }),
    }
}

/// Train a trainable model.
pub fn train(
    name: &str,
    config: &TrainConfig,
    device: &Device,
) -> Result<(Box<dyn Model>, TrainReport), ModelError> {
    let info = info(name)?;
    match info.name {
        digits::NAME => {
            let (model, report) = DigitsCnn::train(config, device)?;
            Ok((Box::new(model), report))
        }
        _ => Err(ModelError::NotTrainable(info.name)),
    }
}

/// Rebuild a model from bytes produced by [`Model::weights_to_bytes`].
pub fn from_weights(
    name: &str,
    bytes: &[u8],
    device: &Device,
) -> Result<Box<dyn Model>, ModelError> {
    let info = info(name)?;
    match info.name {
        digits::NAME => Ok(Box::new(DigitsCnn::from_weights_bytes(bytes, device)?)),
        efficientnet::NAME => Ok(Box::new(EfficientNetLite0::from_weights_bytes(
            bytes, device,
        )?)),
        _ => Err(ModelError::Weights {
            model: info.name,
            reason: "no loader is registered".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_list_the_known_ones() {
        let err = info("resnet-50").expect_err("not registered");
        let text = err.to_string();
        assert!(text.contains("resnet-50"), "{text}");
        assert!(
            text.contains("digits-cnn") && text.contains("efficientnet-lite0"),
            "{text}"
        );
        assert!(load("nope", &crate::default_device()).is_err());
        assert!(info("digits-cnn").is_ok_and(|m| m.trainable));
        assert!(info("efficientnet-lite0").is_ok_and(|m| !m.trainable));
    }
}
