//! `[eval]`: how masks are predicted, post-processed and shown.

use ct_io::config::{Invalid, Section};
use serde::{Deserialize, Serialize};

use crate::components::PostProcessing;
use crate::predict::Tta;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// The run's checkpoint the pipeline predicts with: "best" or "last".
    pub checkpoint: String,
    /// A voxel is tumour when its probability (after the sigmoid) exceeds this.
    pub threshold: f32,
    /// Slices per forward pass.
    pub batch_size: usize,
    /// cpu, cuda:N or auto.
    pub device: String,
    /// Remove predicted components smaller than this (mm³); 0 keeps all.
    pub min_component_mm3: f64,
    /// Keep only the k largest predicted components; 0 keeps all (patients can have several tumours).
    pub keep_largest: usize,
    /// Drop predicted components that do not touch the lung mask grown by 5 mm.
    pub lung_constraint: bool,
    /// Start from the rules above and add those that raise the mean per-case Dice of the
    /// validation (or out-of-fold) predictions, as nnU-Net does; recorded in the run's
    /// `postprocessing.json` and applied to the test cases and by `seg-eval --checkpoint`.
    pub choose_postprocessing: bool,
    /// Test-time augmentation: "none" or "flip" (each slice also mirrored in-plane; 4x the time).
    pub tta: Tta,
    /// Also write each case's probabilities as float32 NIfTI.
    pub save_probabilities: bool,
    /// Overlays per case in the report: the slices with the most tumour.
    pub report_slices: usize,
    /// CT window of the overlays, [lo, hi] in HU (a lung window by default).
    pub lung_window: [f32; 2],
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            checkpoint: "best".into(),
            threshold: 0.5,
            batch_size: 8,
            device: "cpu".into(),
            min_component_mm3: 0.0,
            keep_largest: 0,
            lung_constraint: true,
            choose_postprocessing: true,
            tta: Tta::None,
            save_probabilities: false,
            report_slices: 1,
            lung_window: [-1350.0, 150.0],
        }
    }
}

impl EvalConfig {
    /// The post-processing `[eval]` asks for itself.
    pub fn postprocessing(&self) -> PostProcessing {
        PostProcessing {
            lung_constraint: self.lung_constraint,
            min_component_mm3: self.min_component_mm3,
            keep_largest: self.keep_largest,
        }
    }
}

impl Section for EvalConfig {
    const NAME: &'static str = "eval";
    fn validate(&self) -> Result<(), Invalid> {
        if !matches!(self.checkpoint.as_str(), "best" | "last") {
            return Err(Invalid::new("checkpoint", "must be \"best\" or \"last\""));
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(Invalid::new("threshold", "must be in (0, 1)"));
        }
        if !(1..=1024).contains(&self.batch_size) {
            return Err(Invalid::new("batch_size", "must be 1..=1024"));
        }
        if !(self.min_component_mm3.is_finite() && self.min_component_mm3 >= 0.0) {
            return Err(Invalid::new("min_component_mm3", "must be ≥ 0"));
        }
        if !(1..=20).contains(&self.report_slices) {
            return Err(Invalid::new("report_slices", "must be 1..=20"));
        }
        let [lo, hi] = self.lung_window;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Invalid::new(
                "lung_window",
                "must be [lo, hi] in HU with lo < hi",
            ));
        }
        Ok(())
    }
}
