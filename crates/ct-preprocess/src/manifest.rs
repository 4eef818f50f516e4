//! The manifest: every slice of the dataset, and per case what is needed to put a prediction back
//! into the CT's own geometry. Written to `work_dir/preprocessed/manifest.json`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ct_io::Reorientation;
use ct_io::geometry::Affine;
use serde::{Deserialize, Serialize};

use crate::lungs::LungMask;
use crate::settings::{CropMode, Normalisation, PreprocessConfig};
use crate::slices::{Crop, PlaneBox};
use crate::split::{Split, SplitRecord};

/// Bumped whenever the slices written for the same input and settings would change.
pub const FORMAT_VERSION: u32 = 3;
/// Folder below `work_dir` that holds the dataset.
pub const PREPROCESSED_DIR: &str = "preprocessed";
pub const MANIFEST_FILE: &str = "manifest.json";
/// Per case: `cases/<id>/` with `image_KKKK.npy` (f32), `mask_KKKK.npy` (u8) and `case.json`.
pub const CASES_DIR: &str = "cases";
pub const CASE_FILE: &str = "case.json";
/// Per case with `crop = "lungs"`: the lung mask (u8, the CT's own geometry) beside the slices.
pub const LUNG_MASK_FILE: &str = "lungs.nii.gz";

/// Size and modification time of an input file: a rerun redoes a case when either changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub path: PathBuf,
    pub bytes: u64,
    pub modified_ns: u64,
}

impl FileStamp {
    pub fn of(path: &Path) -> anyhow::Result<FileStamp> {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(FileStamp {
            path: path.to_path_buf(),
            bytes: meta.len(),
            modified_ns,
        })
    }
}

/// The settings that decide a case's slices (the split does not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceSettings {
    pub format_version: u32,
    pub size: usize,
    pub normalisation: Normalisation,
    pub crop: CropMode,
    pub lung_margin_mm: f64,
    pub in_plane_crop: bool,
    pub crop_slices: usize,
    pub crop_mm: Option<f64>,
    pub max_crop_fraction: f64,
}

impl SliceSettings {
    pub fn from_config(config: &PreprocessConfig) -> SliceSettings {
        SliceSettings {
            format_version: FORMAT_VERSION,
            size: config.size,
            normalisation: Normalisation::from_config(config),
            crop: config.crop,
            lung_margin_mm: config.lung_margin_mm,
            in_plane_crop: config.in_plane_crop,
            crop_slices: config.crop_slices,
            crop_mm: config.crop_mm,
            max_crop_fraction: config.max_crop_fraction,
        }
    }
}

/// Everything about one case except its slice list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseInfo {
    pub id: String,
    pub inputs: Vec<FileStamp>,
    pub settings: SliceSettings,
    pub original_shape: [usize; 3],
    pub original_affine: Affine,
    pub original_orientation: String,
    /// From the file's voxel order to canonical RAS (slice k = 0 is the inferior end).
    pub reorientation: Reorientation,
    pub canonical_shape: [usize; 3],
    pub canonical_spacing: [f64; 3],
    pub crop: Crop,
    /// The lung mask's figures (with `crop = "lungs"`).
    pub lungs: Option<LungSummary>,
    /// Canonical axial slices kept, `[start, end)`.
    pub kept_slices: [usize; 2],
    /// The part of each kept slice that was resized (the whole slice without `in_plane_crop`).
    pub plane_box: PlaneBox,
    /// Output size / input size (of the box), for `[rows (canonical y), columns (canonical x)]`.
    pub resize_factors: [f64; 2],
    pub normalisation: Normalisation,
    /// Tumour voxels in the original label.
    pub tumour_voxels: u64,
}

/// What the lung mask found in a case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LungSummary {
    pub volume_ml: f64,
    pub regions: usize,
    /// Canonical axial slices holding lung, `[first, end)`; None when none was found.
    pub axial_extent: Option<[usize; 2]>,
}

impl LungSummary {
    pub fn of(lungs: &LungMask) -> LungSummary {
        LungSummary {
            volume_ml: lungs.volume_ml,
            regions: lungs.regions,
            axial_extent: lungs.axial_extent,
        }
    }
}

/// One stored slice; paths are relative to the preprocessed folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceFiles {
    /// Canonical axial index in the original volume (0 = inferior end).
    pub slice: usize,
    pub image: PathBuf,
    pub mask: PathBuf,
    /// Tumour pixels in the stored (resized) mask.
    pub tumour_voxels: u32,
}

/// A case as stored in `cases/<id>/case.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseRecord {
    #[serde(flatten)]
    pub info: CaseInfo,
    pub slices: Vec<SliceFiles>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestCase {
    pub split: Split,
    #[serde(flatten)]
    pub info: CaseInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestSlice {
    pub case: String,
    pub split: Split,
    #[serde(flatten)]
    pub files: SliceFiles,
}

/// A case that could not be preprocessed (recorded with `continue_on_error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedCase {
    pub id: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub data_dir: PathBuf,
    pub settings: PreprocessConfig,
    pub split: SplitRecord,
    pub cases: Vec<ManifestCase>,
    pub failed: Vec<FailedCase>,
    pub slices: Vec<ManifestSlice>,
}

impl Manifest {
    pub fn load(path: &Path) -> anyhow::Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the manifest", path.display()))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{}: malformed manifest", path.display()))?;
        anyhow::ensure!(
            manifest.format_version == FORMAT_VERSION,
            "{}: manifest format {} but this build reads {FORMAT_VERSION}; rerun ct-preprocess",
            path.display(),
            manifest.format_version
        );
        Ok(manifest)
    }

    /// The slices of one split, in manifest order (by case id, then slice).
    pub fn slices_of(&self, split: Split) -> impl Iterator<Item = &ManifestSlice> {
        self.slices.iter().filter(move |s| s.split == split)
    }

    /// The slices of `cases` (sorted ids), in manifest order.
    pub fn slices_of_cases<'a>(
        &'a self,
        cases: &'a [String],
    ) -> impl Iterator<Item = &'a ManifestSlice> {
        self.slices
            .iter()
            .filter(move |s| cases.binary_search(&s.case).is_ok())
    }

    pub fn case(&self, id: &str) -> Option<&ManifestCase> {
        self.cases.iter().find(|c| c.info.id == id)
    }
}
