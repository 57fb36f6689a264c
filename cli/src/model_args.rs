//! The `--target`, `--draft` and device flags that every command holding both models shares
//! (`eval`, `bench generate`, `bench distributed`, `bench load`).

use anyhow::Result;
use clap::Args;
use specd_engine::device::Device;
use specd_engine::pipeline::LoadedModel;
use specd_engine::presets::{DEFAULT_DRAFT, DEFAULT_TARGET};

#[derive(Args)]
pub struct ModelPairArgs {
    #[arg(long, default_value = DEFAULT_TARGET)]
    pub target: String,
    /// Device of the target: cpu (specd's kernels), candle-cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub target_device: Device,
    #[arg(long, default_value = DEFAULT_DRAFT)]
    pub draft: String,
    /// Device of the draft: cpu (specd's kernels), candle-cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub draft_device: Device,
}

impl ModelPairArgs {
    /// Loads `--target` on `--target-device`.
    pub fn load_target(&self) -> Result<LoadedModel> {
        LoadedModel::load_on(&self.target, self.target_device, &crate::log)
    }

    /// Loads `--draft` on `--draft-device`.
    pub fn load_draft(&self) -> Result<LoadedModel> {
        LoadedModel::load_on(&self.draft, self.draft_device, &crate::log)
    }
}
