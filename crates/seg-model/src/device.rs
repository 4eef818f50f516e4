//! Where the model runs: `cpu`, `cuda:N`, or `auto` (CUDA when this build has it and a GPU is
//! present, else CPU).

use anyhow::{Context, bail};
use candle_core::Device;

pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                Device::new_cuda(0).context("opening cuda:0")
            } else {
                Ok(Device::Cpu)
            }
        }
        _ => {
            let Some(index) = spec
                .strip_prefix("cuda")
                .map(|rest| rest.trim_start_matches(':'))
            else {
                bail!("unknown device {spec:?} (expected cpu, cuda:N or auto)");
            };
            let index: usize = if index.is_empty() {
                0
            } else {
                index
                    .parse()
                    .with_context(|| format!("bad CUDA device index in {spec:?}"))?
            };
            if !cfg!(feature = "cuda") {
                bail!(
                    "device {spec:?}: this build has no CUDA support (build with --features cuda)"
                );
            }
            Device::new_cuda(index).with_context(|| format!("opening {spec}"))
        }
    }
}
