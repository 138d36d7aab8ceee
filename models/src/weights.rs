//! Weights as bytes: any Burn module to and from a self-contained burnpack blob.
//!
//! Owns: the one format in which this crate hands weights out (so they can live in the replicated
//! file system) and takes them back, with shape validation on load.
//! Must never: touch the file system, or leave a module half-loaded: loading works on a copy that
//! replaces the original only when every tensor applied.

use burn::module::Module;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::Bytes;

use crate::error::ModelError;

/// Serialize every parameter and buffer of `module`.
pub(crate) fn to_bytes<M: Module>(model: &'static str, module: &M) -> Result<Vec<u8>, ModelError> {
    let mut store = BurnpackStore::from_bytes(None);
    module
        .save_into(&mut store)
        .map_err(|e| ModelError::Weights {
            model,
            reason: e.to_string(),
        })?;
    let bytes = store.get_bytes().map_err(|e| ModelError::Weights {
        model,
        reason: e.to_string(),
    })?;
    Ok(bytes.to_vec())
}

/// A copy of `module` with every tensor replaced from `bytes`; every tensor of the module must be
/// present with its shape.
pub(crate) fn from_bytes<M: Module>(
    model: &'static str,
    module: &M,
    bytes: &[u8],
) -> Result<M, ModelError> {
    let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes.to_vec())));
    let mut loaded = module.clone();
    let result = loaded
        .load_from(&mut store)
        .map_err(|e| ModelError::Weights {
            model,
            reason: e.to_string(),
        })?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(ModelError::Weights {
            model,
            reason: result.to_string(),
        });
    }
    Ok(loaded)
}
