//! Choosing the device models run on, by name.
//!
//! Owns: the names a user gives for a device (`cpu`, `wgpu`), their parsing into a Burn
//! [`Device`] with a clear error for unknown names and for a backend this build left out (the GPU
//! backend is the optional cargo feature `wgpu`; there is no CUDA backend, see models/Cargo.toml),
//! and the one question the models ask of a device: is it the CPU?
//!
//! Must never: read the environment or the command line (the binary or example layer does, e.g.
//! `IDUNNO_DEVICE` or `--device`, and hands the name in), touch a GPU while parsing (Burn opens a
//! GPU device lazily, on its first tensor), or change [`crate::default_device`], which stays the
//! CPU.

use burn::tensor::Device;

/// The device names [`parse`] accepts in this build, for usage messages.
pub const NAMES: &[&str] = &[
    "cpu",
    #[cfg(feature = "wgpu")]
    "wgpu",
];

/// Longest device name accepted, in bytes; longer input is rejected before any parsing.
const NAME_BYTES_MAX: usize = 32;

/// Why a device name could not be turned into a device. Parsing changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Not a device name at all.
    #[error("unknown device `{name}`; this build knows: {}", NAMES.join(", "))]
    Unknown {
        /// The name given (cut to a few dozen bytes).
        name: String,
    },
    /// A real backend that this binary was built without.
    #[error(
        "device `{name}` needs the `{feature}` cargo feature of idunno-models, which this build \
         does not have (rebuild with `--features {feature}`)"
    )]
    NotBuilt {
        /// The name given.
        name: String,
        /// The cargo feature that brings the backend.
        feature: &'static str,
    },
    /// CUDA, which no build of this crate has.
    #[error(
        "device `{name}`: idunno-models has no CUDA backend (Burn's needs a bundled LLVM); use \
         `wgpu`, which runs on NVIDIA GPUs through Vulkan"
    )]
    NoCuda {
        /// The name given.
        name: String,
    },
}

/// The device called `name`: `cpu` (or `flex`): Burn's Flex CPU backend, the
/// [`crate::default_device`]; `wgpu` (or `gpu`): the best GPU that wgpu finds (Vulkan on Linux;
/// needs the `wgpu` feature; `CUBECL_WGPU_DEFAULT_DEVICE` overrides the choice). Names are
/// case-insensitive and trimmed.
pub fn parse(name: &str) -> Result<Device, DeviceError> {
    if name.len() > NAME_BYTES_MAX {
        let cut: String = name.chars().take(NAME_BYTES_MAX).collect();
        return Err(DeviceError::Unknown {
            name: format!("{cut}..."),
        });
    }
    let lower = name.trim().to_ascii_lowercase();
    match lower.as_str() {
        "cpu" | "flex" => Ok(crate::default_device()),
        "wgpu" | "gpu" => wgpu_device(&lower),
        cuda if cuda == "cuda" || cuda.starts_with("cuda:") => {
            Err(DeviceError::NoCuda { name: lower })
        }
        _ => Err(DeviceError::Unknown { name: lower }),
    }
}

/// Whether `device` is the CPU (Flex) device, as [`crate::default_device`] gives.
pub fn is_cpu(device: &Device) -> bool {
    *device == crate::default_device()
}

/// One line naming `device` for logs and reports: `cpu (Flex)`, or for a GPU the name the
/// adapter gives itself and what its kernels are compiled for. Opens a GPU device (its first use:
/// seconds, and a panic inside Burn if no adapter can be found).
pub fn describe(device: &Device) -> String {
    if is_cpu(device) {
        return "cpu (Flex)".to_owned();
    }
    #[cfg(feature = "wgpu")]
    if let Some(identity) = device.identity() {
        return format!("{} ({})", identity.name, identity.fingerprint);
    }
    format!("{device:?}")
}

#[cfg(feature = "wgpu")]
fn wgpu_device(_name: &str) -> Result<Device, DeviceError> {
    Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device(name: &str) -> Result<Device, DeviceError> {
    Err(DeviceError::NotBuilt {
        name: name.to_owned(),
        feature: "wgpu",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_names_give_the_default_device() {
        for name in ["cpu", "CPU", " flex "] {
            let device = parse(name).expect("cpu parses");
            assert!(is_cpu(&device), "{name}");
        }
        assert!(is_cpu(&crate::default_device()));
    }

    #[test]
    fn unknown_and_bad_names_are_clear_errors() {
        assert!(matches!(parse("tpu"), Err(DeviceError::Unknown { .. })));
        assert!(matches!(parse(""), Err(DeviceError::Unknown { .. })));
        let long = "x".repeat(10_000);
        let error = parse(&long).expect_err("too long");
        assert!(error.to_string().len() < 200, "{error}");
        for name in ["cuda", "CUDA:0", "cuda:x"] {
            let error = parse(name).expect_err(name);
            assert!(matches!(error, DeviceError::NoCuda { .. }), "{name}");
            assert!(error.to_string().contains("wgpu"), "{error}");
        }
    }

    #[test]
    fn gpu_names_need_their_feature() {
        // Parsing never opens a GPU, so this runs on machines without one.
        let wgpu = parse("wgpu");
        #[cfg(not(feature = "wgpu"))]
        assert_eq!(
            wgpu,
            Err(DeviceError::NotBuilt {
                name: "wgpu".into(),
                feature: "wgpu"
            })
        );
        #[cfg(feature = "wgpu")]
        assert!(wgpu.is_ok_and(|d| !is_cpu(&d)));
    }
}
