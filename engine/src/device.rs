//! Where a model runs: specd's own CPU kernels (the default), or candle on its CPU device or on a
//! CUDA GPU (cargo features `candle` and `cuda`). See [`crate::model::backend`] for the split.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};

/// A device a model is loaded onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// specd's batch-invariant CPU kernels (bit-exact: a row's logits never depend on its block).
    #[default]
    Cpu,
    /// candle's CPU device: the same model code as CUDA, for tests and comparisons.
    CandleCpu,
    /// candle's CUDA device with this ordinal.
    Cuda(usize),
}

impl Device {
    /// The names `--device` takes.
    pub const HELP: &'static str = "cpu (specd's kernels), candle-cpu, cuda or cuda:N";

    /// Whether this build can run on the device at all (the driver is checked when a model loads).
    pub fn check_build(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::CandleCpu if !cfg!(feature = "candle") => bail!(
                "device {self} needs the candle backend, which this build lacks; rebuild with `cargo build --release --features candle` (or `--features cuda`)"
            ),
            Device::Cuda(_) if !cfg!(feature = "cuda") => bail!(
                "device {self} needs CUDA support, which this build lacks; rebuild with `cargo build --release --features cuda` (see docs/gpu.md for the toolchain)"
            ),
            _ => Ok(()),
        }
    }

    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::CandleCpu => write!(f, "candle-cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        Ok(match s.as_str() {
            "cpu" => Device::Cpu,
            "candle-cpu" | "candle" => Device::CandleCpu,
            "cuda" | "gpu" => Device::Cuda(0),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => Device::Cuda(n.parse().map_err(|_| {
                    anyhow::anyhow!("device {s:?}: the CUDA ordinal must be a number, as in cuda:1")
                })?),
                None => bail!("unknown device {s:?}; expected {}", Device::HELP),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_devices() {
        for (s, d) in [
            ("cpu", Device::Cpu),
            ("candle-cpu", Device::CandleCpu),
            ("cuda", Device::Cuda(0)),
            ("CUDA:3", Device::Cuda(3)),
        ] {
            assert_eq!(s.parse::<Device>().unwrap(), d);
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        assert_eq!(
            Device::Cuda(2).to_string().parse::<Device>().unwrap(),
            Device::Cuda(2)
        );
        let e = "tpu".parse::<Device>().unwrap_err().to_string();
        assert!(e.contains("unknown device") && e.contains("cuda:N"), "{e}");
        let e = "cuda:x".parse::<Device>().unwrap_err().to_string();
        assert!(e.contains("ordinal"), "{e}");
    }

    #[test]
    fn missing_features_are_named() {
        assert!(Device::Cpu.check_build().is_ok());
        if !cfg!(feature = "cuda") {
            let e = Device::Cuda(0).check_build().unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
        if !cfg!(feature = "candle") {
            let e = Device::CandleCpu.check_build().unwrap_err().to_string();
            assert!(e.contains("--features candle"), "{e}");
        }
    }
}
