//! `[preprocess]`: how CT volumes become training slices. The defaults are the reference
//! project's: HU / 3071, drop 30 slices at the inferior end, 256x256.

use ct_io::config::{Invalid, Section};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    /// Output slices are `size` x `size` pixels.
    pub size: usize,
    /// Without a window, a voxel becomes HU / `hu_scale` (the reference: 3071).
    pub hu_scale: f32,
    /// `[lo, hi]` in HU: map the window linearly to [0, 1] and clip, instead of dividing by
    /// `hu_scale`. Empty (the default) for no window.
    pub window: Vec<f32>,
    /// Which axial slices are kept: "inferior" drops `crop_slices` (or `crop_mm`) at the inferior
    /// end, as the reference does; "lungs" keeps the lungs' axial extent plus `lung_margin_mm`.
    pub crop: CropMode,
    /// With `crop = "lungs"`: kept beyond the lungs at each end (mm), axially and in the plane.
    pub lung_margin_mm: f64,
    /// With `crop = "lungs"`: each slice is also cropped to the lungs' in-plane box (plus the
    /// margin, made square) before resizing, so that the same `size` gives finer pixels.
    pub in_plane_crop: bool,
    /// Slices dropped at the inferior end (after canonical reorientation).
    pub crop_slices: usize,
    /// If set, the crop in millimetres instead (converted with each volume's slice spacing).
    pub crop_mm: Option<f64>,
    /// The crop never removes more than this fraction of a volume's slices.
    pub max_crop_fraction: f64,
    /// Fraction of labelled cases held out for validation (the reference: 6 of 63).
    pub validation_fraction: f64,
    /// Explicit validation case ids; when non-empty, used instead of the fraction.
    pub validation_cases: Vec<String>,
    /// K > 1: deal the labelled cases into K folds by seed for K-fold cross-validation (each
    /// training holds out one: `seg-train --fold k`); 1: one split by `validation_fraction`.
    pub folds: usize,
    /// Seed of the case split.
    pub seed: u64,
    /// Cases processed at once (each holds one volume in memory); 0 = one more than CPU cores.
    pub jobs: usize,
    /// Go on past cases that fail, record them in the manifest, and exit 0.
    pub continue_on_error: bool,
    /// Largest volume (MiB of voxel data on disk) a case may declare.
    pub max_volume_mib: u64,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            size: 256,
            hu_scale: 3071.0,
            window: Vec::new(),
            crop: CropMode::Inferior,
            lung_margin_mm: 20.0,
            in_plane_crop: false,
            crop_slices: 30,
            crop_mm: None,
            max_crop_fraction: 0.3,
            validation_fraction: 0.1,
            validation_cases: Vec::new(),
            folds: 1,
            seed: 42,
            jobs: 0,
            continue_on_error: false,
            max_volume_mib: 4096,
        }
    }
}

impl Section for PreprocessConfig {
    const NAME: &'static str = "preprocess";
    fn validate(&self) -> Result<(), Invalid> {
        if !(8..=2048).contains(&self.size) {
            return Err(Invalid::new("size", "must be 8..=2048 pixels"));
        }
        if !(self.hu_scale.is_finite() && self.hu_scale > 0.0) {
            return Err(Invalid::new("hu_scale", "must be a positive number"));
        }
        match self.window.as_slice() {
            [] => {}
            [lo, hi] if lo.is_finite() && hi.is_finite() && lo < hi => {}
            _ => {
                return Err(Invalid::new(
                    "window",
                    "must be [] or [lo, hi] in HU with lo < hi",
                ));
            }
        }
        if let Some(mm) = self.crop_mm
            && !(mm.is_finite() && mm >= 0.0)
        {
            return Err(Invalid::new("crop_mm", "must be ≥ 0"));
        }
        if !(self.lung_margin_mm.is_finite() && self.lung_margin_mm >= 0.0) {
            return Err(Invalid::new("lung_margin_mm", "must be ≥ 0"));
        }
        if self.in_plane_crop && self.crop != CropMode::Lungs {
            return Err(Invalid::new(
                "in_plane_crop",
                "needs crop = \"lungs\" (the box comes from the lung mask)",
            ));
        }
        if !(0.0..1.0).contains(&self.max_crop_fraction) {
            return Err(Invalid::new("max_crop_fraction", "must be in [0, 1)"));
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return Err(Invalid::new("validation_fraction", "must be in [0, 1)"));
        }
        if !(1..=100).contains(&self.folds) {
            return Err(Invalid::new("folds", "must be 1 (one split) or 2..=100"));
        }
        if self.folds > 1 && !self.validation_cases.is_empty() {
            return Err(Invalid::new(
                "folds",
                "K folds choose their own validation cases: leave validation_cases empty",
            ));
        }
        if self.max_volume_mib == 0 {
            return Err(Invalid::new("max_volume_mib", "must be > 0"));
        }
        Ok(())
    }
}

/// Which axial slices of a CT the network sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CropMode {
    /// Drop a fixed length at the inferior end (the reference's 30 slices).
    Inferior,
    /// Keep the lungs' axial extent (ct-preprocess's lung mask) plus a margin.
    Lungs,
}

/// How CT values were mapped to network input; recorded so prediction maps them the same way.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Normalisation {
    /// value = HU / divisor
    Scale { divisor: f32 },
    /// value = clamp((HU - lo) / (hi - lo), 0, 1)
    Window { lo: f32, hi: f32 },
}

impl Normalisation {
    pub fn from_config(config: &PreprocessConfig) -> Normalisation {
        match config.window.as_slice() {
            [lo, hi] => Normalisation::Window { lo: *lo, hi: *hi },
            _ => Normalisation::Scale {
                divisor: config.hu_scale,
            },
        }
    }

    pub fn apply(self, hu: f32) -> f32 {
        match self {
            Normalisation::Scale { divisor } => hu / divisor,
            Normalisation::Window { lo, hi } => ((hu - lo) / (hi - lo)).clamp(0.0, 1.0),
        }
    }
}
