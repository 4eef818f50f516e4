//! A CT in, a tumour mask out, in the CT's own voxel grid: reorient, crop, normalise and resize
//! exactly as ct-preprocess did for training (its own functions, with the checkpoint's settings),
//! run the U-Net in batches, bring the probabilities back to the original in-plane size, threshold,
//! blank the cropped slices and undo the reorientation.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use candle_core::{Device, Tensor};
use ct_io::{Geometry, Reorientation, Volume};
use ct_preprocess::lungs::{CONSTRAINT_MARGIN_MM, LungMask, lung_mask};
use ct_preprocess::manifest::SliceSettings;
use ct_preprocess::settings::{CropMode, Normalisation, PreprocessConfig};
use ct_preprocess::slices::{decide_crop, decide_plane_box, network_input, resize_bilinear};
use ndarray::{Array3, ArrayView3, ShapeBuilder};
use rayon::prelude::*;
use seg_model::{CheckpointInfo, Model};
use serde::{Deserialize, Serialize};

use crate::components::{ComponentTable, PostProcessing};

/// Test-time augmentation: what the network also sees of each slice, its probabilities averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Tta {
    /// Each slice once.
    #[default]
    None,
    /// Each slice also mirrored left-right, front-back and both (4 passes), mirrored back.
    Flip,
}

impl Tta {
    fn mirrors(self) -> &'static [Mirror] {
        match self {
            Tta::None => &[Mirror::Identity],
            Tta::Flip => &[
                Mirror::Identity,
                Mirror::Columns,
                Mirror::Rows,
                Mirror::Both,
            ],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tta::None => "none",
            Tta::Flip => "flip",
        }
    }
}

/// A mirror of a square row-major image; each is its own inverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mirror {
    Identity,
    /// Left-right (canonical x).
    Columns,
    /// Front-back (canonical y).
    Rows,
    Both,
}

impl Mirror {
    /// The index `image[i]` is read from in the mirrored image.
    fn source(self, i: usize, size: usize) -> usize {
        let (row, column) = (i / size, i % size);
        let (row, column) = match self {
            Mirror::Identity => (row, column),
            Mirror::Columns => (row, size - 1 - column),
            Mirror::Rows => (size - 1 - row, column),
            Mirror::Both => (size - 1 - row, size - 1 - column),
        };
        row * size + column
    }

    fn extend_mirrored(self, out: &mut Vec<f32>, image: &[f32], size: usize) {
        match self {
            Mirror::Identity => out.extend_from_slice(image),
            _ => out.extend((0..image.len()).map(|i| image[self.source(i, size)])),
        }
    }

    /// Adds `image` mirrored back onto `sum`.
    fn add_unmirrored(self, sum: &mut [f32], image: &[f32], size: usize) {
        for (i, s) in sum.iter_mut().enumerate() {
            *s += image[self.source(i, size)];
        }
    }
}

/// How probabilities become a mask.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictOptions {
    pub threshold: f32,
    pub batch_size: usize,
    pub postprocessing: PostProcessing,
    pub tta: Tta,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions {
            threshold: 0.5,
            batch_size: 8,
            postprocessing: PostProcessing {
                lung_constraint: true,
                ..PostProcessing::NONE
            },
            tta: Tta::None,
        }
    }
}

/// One CT's prediction, in the CT's own voxel order.
pub struct Prediction {
    pub mask: Array3<u8>,
    pub probabilities: Array3<f32>,
    /// Canonical axial slices the network saw (the rest are background).
    pub kept_slices: [usize; 2],
    /// Predicted components removed by post-processing (size, count).
    pub removed_components: usize,
    /// The lung mask, when it was needed (lung crop or constraint).
    pub lungs: Option<PredictedLungs>,
    /// Predicted components dropped for lying outside the lungs.
    pub outside_lungs: usize,
    /// With a reference: the thresholded prediction's components before any rule, for choosing
    /// the post-processing.
    pub table: Option<ComponentTable>,
}

/// The lung mask prediction made, kept on its working grid: brought to the CT's resolution and
/// voxel order only when someone asks for it.
pub struct PredictedLungs {
    mask: LungMask,
    reorientation: Reorientation,
}

impl PredictedLungs {
    /// Lung volume (ml); 0 when no lung was found.
    pub fn volume_ml(&self) -> f64 {
        self.mask.volume_ml
    }

    /// The mask in the CT's own voxel order: 1 inside the lungs.
    pub fn in_file_order(&self) -> Array3<u8> {
        self.reorientation.restore(self.mask.to_canonical().view())
    }
}

/// Whether the training of `checkpoint` saw the mirror images that flip TTA averages in, as the
/// resolved config beside it records; None without such a record (e.g. an imported checkpoint).
fn trained_with_mirrors(checkpoint: &Path) -> Option<bool> {
    let resolved = checkpoint
        .parent()?
        .join(ct_io::layout::RESOLVED_CONFIG_FILE);
    let config: toml::Table = std::fs::read_to_string(resolved).ok()?.parse().ok()?;
    let data = config.get("data")?;
    let on = |key: &str| data.get(key).and_then(toml::Value::as_bool) == Some(true);
    Some(on("flip_lr") && on("flip_ap"))
}

/// One model of a predictor.
struct Member {
    model: Model,
    info: CheckpointInfo,
}

/// One checkpoint, or an ensemble of checkpoints that share their preprocessing (their
/// probabilities averaged), with the preprocessing they were trained with.
pub struct Predictor {
    members: Vec<Member>,
    /// The checkpoint folders, and the run and epoch they record, in words (for a SEG's description).
    identity: String,
    preprocess: PreprocessConfig,
    options: PredictOptions,
    device: Device,
}

impl Predictor {
    pub fn load(
        checkpoint: &Path,
        device: &Device,
        options: PredictOptions,
    ) -> anyhow::Result<Predictor> {
        Predictor::load_ensemble(&[checkpoint.to_path_buf()], device, options)
    }

    /// The ensemble of `checkpoints`: refused unless they were trained on slices made the same
    /// way (the message says how they differ).
    pub fn load_ensemble(
        checkpoints: &[PathBuf],
        device: &Device,
        options: PredictOptions,
    ) -> anyhow::Result<Predictor> {
        ensure!(!checkpoints.is_empty(), "no checkpoint to predict with");
        ensure!(options.batch_size > 0, "the batch size must be at least 1");
        let mut members = Vec::new();
        let mut first: Option<(PathBuf, PreprocessConfig)> = None;
        let mut names = Vec::new();
        let mut unmirrored = Vec::new();
        for checkpoint in checkpoints {
            let (model, info) = Model::load(checkpoint, device)?;
            if options.tta == Tta::Flip && trained_with_mirrors(checkpoint) == Some(false) {
                unmirrored.push(checkpoint.display().to_string());
            }
            let preprocess = checkpoint_preprocessing(checkpoint, &info)?;
            let multiple = info.model.size_multiple();
            ensure!(
                preprocess.size.is_multiple_of(multiple),
                "{}: slices of {} px do not fit a U-Net of depth {} (needs a multiple of {multiple})",
                checkpoint.display(),
                preprocess.size,
                info.model.depth
            );
            ensure!(
                info.model.in_channels % 2 == 1,
                "{}: the model takes {} channels; 2.5D input needs an odd number",
                checkpoint.display(),
                info.model.in_channels
            );
            match &first {
                None => first = Some((checkpoint.clone(), preprocess)),
                Some((path, settings)) => {
                    let differences = preprocessing_differences(settings, &preprocess);
                    ensure!(
                        differences.is_empty(),
                        "{} and {}: an ensemble needs checkpoints trained on the same \
                         preprocessing, and these differ in [preprocess] {}",
                        path.display(),
                        checkpoint.display(),
                        differences.join(", ")
                    );
                }
            }
            let mut name = checkpoint.display().to_string();
            if let Some(run) = info.extra["run"].as_str() {
                name.push_str(&format!(" (run {run}"));
                if let Some(fold) = info.extra["fold"].as_u64() {
                    name.push_str(&format!(", fold {fold}"));
                }
                if let Some(epoch) = info.extra["best_epoch"].as_u64() {
                    name.push_str(&format!(", epoch {epoch}"));
                }
                name.push(')');
            }
            names.push(name);
            members.push(Member { model, info });
        }
        if !unmirrored.is_empty() {
            tracing::warn!(
                "{}: trained without mirror images ([data] flip_lr and flip_ap not both on in its \
                 run's config.toml), so flip TTA averages in views the network never saw; on the \
                 demo phantoms that lowered the validation Dice from 0.58 to 0.40",
                unmirrored.join(", ")
            );
        }
        let identity = match names.as_slice() {
            [one] => format!("lungseg checkpoint {one}"),
            many => format!("lungseg ensemble of {}: {}", many.len(), many.join("; ")),
        };
        Ok(Predictor {
            members,
            identity,
            preprocess: first.expect("at least one checkpoint").1,
            options,
            device: device.clone(),
        })
    }

    /// Models averaged.
    pub fn models(&self) -> usize {
        self.members.len()
    }

    pub fn options(&self) -> &PredictOptions {
        &self.options
    }

    /// Predicts the mask of `volume` (`source` names it in messages).
    pub fn predict(&self, volume: &Volume, source: &Path) -> anyhow::Result<Prediction> {
        self.predict_against(volume, source, None)
    }

    /// [`Predictor::predict`], and with the case's reference mask (the CT's voxel order) the
    /// table that scores every post-processing rule.
    pub fn predict_against(
        &self,
        volume: &Volume,
        source: &Path,
        reference: Option<ArrayView3<u8>>,
    ) -> anyhow::Result<Prediction> {
        if let Some(reference) = &reference {
            ensure!(
                reference.shape() == volume.data.shape(),
                "{}: the reference mask is {:?} and the CT {:?}",
                source.display(),
                reference.shape(),
                volume.data.shape()
            );
        }
        seg_model::threads::on_worker(|| self.predict_here(volume, source, reference))
    }

    /// [`Predictor::predict_against`] on the calling thread.
    fn predict_here(
        &self,
        volume: &Volume,
        source: &Path,
        reference: Option<ArrayView3<u8>>,
    ) -> anyhow::Result<Prediction> {
        let geometry = &volume.geometry;
        let reorientation = Reorientation::to_canonical(geometry);
        let canonical_geometry = reorientation.canonical_geometry(geometry);
        let ct = reorientation.canonical_view(volume.data.view());
        let [width, height, depth] = reorientation.canonical_shape();
        let lung_constraint = self.options.postprocessing.lung_constraint;
        let lungs =
            (lung_constraint || reference.is_some() || self.preprocess.crop == CropMode::Lungs)
                .then(|| lung_mask(ct, canonical_geometry.spacing));
        if lungs.as_ref().is_some_and(|l| l.is_empty()) {
            tracing::warn!(
                "{}: no lungs found in this CT{}",
                source.display(),
                if lung_constraint {
                    ": the lung constraint leaves the mask empty"
                } else {
                    ""
                }
            );
        }
        let crop = decide_crop(
            &self.preprocess,
            depth,
            canonical_geometry.spacing[2],
            None,
            lungs.as_ref().and_then(|l| l.axial_extent),
        );
        let [first, end] = crop.kept(depth);
        if let Some(reason) = &crop.reason {
            tracing::info!(
                "{}: keeping slices {first}..{end} of {depth} ({reason})",
                source.display()
            );
        }
        ensure!(
            first < end,
            "{}: no slice left after cropping",
            source.display()
        );
        let plane_box = decide_plane_box(
            &self.preprocess,
            [width, height],
            [canonical_geometry.spacing[0], canonical_geometry.spacing[1]],
            lungs.as_ref().and_then(LungMask::plane_extent),
            None,
        );
        let [box_width, box_height] = plane_box.extent();
        tracing::debug!(
            "{}: network sees columns {:?}, rows {:?} of {width}x{height}",
            source.display(),
            plane_box.x,
            plane_box.y
        );
        let size = self.preprocess.size;
        let normalisation = Normalisation::from_config(&self.preprocess);
        let boxed = plane_box.of(ct);
        let inputs: Vec<Vec<f32>> = (first..end)
            .into_par_iter()
            .map(|k| network_input(boxed, k, size, normalisation))
            .collect();

        // Canonical probabilities, Fortran order: axial plane k is one contiguous row-major image
        // (rows along y, columns along x), the layout `ct_preprocess::slices::network_input` gives;
        // outside the box they are 0.
        let plane = width * height;
        let mut canonical = vec![0f32; plane * depth];
        let kept: Vec<usize> = (first..end).collect();
        for batch in kept.chunks(self.options.batch_size) {
            let probabilities = self
                .forward(batch, &inputs, [first, end])
                .with_context(|| format!("{}: running the U-Net", source.display()))?;
            canonical[batch[0] * plane..(batch[batch.len() - 1] + 1) * plane]
                .par_chunks_mut(plane)
                .zip(probabilities.par_chunks(size * size))
                .for_each(|(out, p)| {
                    let resized = resize_bilinear(p, [size, size], [box_height, box_width]);
                    for (row, values) in out
                        .chunks_mut(width)
                        .skip(plane_box.y[0])
                        .zip(resized.chunks(box_width))
                    {
                        row[plane_box.x[0]..plane_box.x[1]].copy_from_slice(values);
                    }
                });
        }
        let canonical = Array3::from_shape_vec((width, height, depth).f(), canonical)
            .expect("sized to the canonical shape");
        let mut mask = canonical.mapv(|p| u8::from(p > self.options.threshold));
        let allowed = lungs
            .as_ref()
            .filter(|_| lung_constraint || reference.is_some())
            .map(|l| l.dilated(CONSTRAINT_MARGIN_MM));
        let table = reference.map(|reference| {
            ComponentTable::of(
                mask.view(),
                reorientation.canonical_view(reference),
                allowed.as_ref().map(|a| a.view()),
                canonical_geometry.spacing,
            )
        });
        let removed = self.options.postprocessing.apply(
            mask.view_mut(),
            canonical_geometry.spacing,
            allowed.as_ref().map(|a| a.view()),
        );
        Ok(Prediction {
            mask: reorientation.restore(mask.view()),
            probabilities: reorientation.restore(canonical.view()),
            kept_slices: [first, end],
            removed_components: removed.by_size,
            lungs: lungs.map(|mask| PredictedLungs {
                mask,
                reorientation,
            }),
            outside_lungs: removed.outside_lungs,
            table,
        })
    }

    /// Sigmoid probabilities of the kept slices in `batch`, `size`² row-major each, averaged over
    /// the models and the mirrors of the test-time augmentation. A slice's neighbours are its
    /// input channels, repeated at the ends of the kept range as in training.
    fn forward(
        &self,
        batch: &[usize],
        inputs: &[Vec<f32>],
        [first, end]: [usize; 2],
    ) -> anyhow::Result<Vec<f32>> {
        let size = self.preprocess.size;
        let plane = size * size;
        let mirrors = self.options.tta.mirrors();
        let mut sum = vec![0f32; batch.len() * plane];
        for member in &self.members {
            let context = member.info.model.in_channels / 2;
            let channels = 2 * context + 1;
            for &mirror in mirrors {
                let mut data = Vec::with_capacity(batch.len() * channels * plane);
                for &k in batch {
                    for c in 0..channels {
                        let neighbour = (k + c).saturating_sub(context).clamp(first, end - 1);
                        mirror.extend_mirrored(&mut data, &inputs[neighbour - first], size);
                    }
                }
                let x = Tensor::from_vec(data, (batch.len(), channels, size, size), &self.device)?;
                let logits = member.model.unet.forward_t(&x, false)?;
                let p: Vec<f32> = candle_nn::ops::sigmoid(&logits)?.flatten_all()?.to_vec1()?;
                for (out, image) in sum.chunks_mut(plane).zip(p.chunks(plane)) {
                    mirror.add_unmirrored(out, image, size);
                }
            }
        }
        let passes = (self.members.len() * mirrors.len()) as f32;
        if passes > 1.0 {
            sum.iter_mut().for_each(|v| *v /= passes);
        }
        Ok(sum)
    }
}

/// The `[preprocess]` settings a checkpoint records (the reference's when it records none).
fn checkpoint_preprocessing(
    checkpoint: &Path,
    info: &CheckpointInfo,
) -> anyhow::Result<PreprocessConfig> {
    match &info.preprocess {
        Some(value) => serde_json::from_value(value.clone()).with_context(|| {
            format!(
                "{}: the checkpoint's preprocessing settings are not readable by this build",
                checkpoint.display()
            )
        }),
        None => {
            tracing::warn!(
                "{}: the checkpoint records no preprocessing (imported weights?): using the \
                 reference's (HU / 3071, 30 slices cropped, 256x256)",
                checkpoint.display()
            );
            Ok(PreprocessConfig::default())
        }
    }
}

/// The `[preprocess]` keys whose values make different slices in `a` and `b`.
fn preprocessing_differences(a: &PreprocessConfig, b: &PreprocessConfig) -> Vec<String> {
    let json = |c: &PreprocessConfig| {
        serde_json::to_value(SliceSettings::from_config(c)).expect("settings serialise")
    };
    let (a, b) = (json(a), json(b));
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return Vec::new();
    };
    a.iter()
        .filter(|(key, value)| b.get(*key) != Some(value))
        .map(|(key, value)| format!("{key} ({value} vs {})", b[key]))
        .collect()
}

/// True for an output path that asks for a DICOM SEG (`.dcm`).
pub fn is_seg(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("dcm"))
}

/// Where one CT's prediction goes.
#[derive(Debug, Clone)]
pub struct Job {
    /// A NIfTI file, or DICOM (a folder or a file of the series).
    pub input: PathBuf,
    /// The DICOM series to read from `input`.
    pub series: Option<String>,
    pub output: PathBuf,
    pub probabilities: Option<PathBuf>,
    /// Where the lung mask goes, if it is to be kept.
    pub lungs: Option<PathBuf>,
    /// For a DICOM SEG output: a frame for every source slice, not only those with tumour.
    pub all_frames: bool,
    /// The case's reference mask (a validation case): the prediction also scores every
    /// post-processing rule against it.
    pub reference: Option<PathBuf>,
}

impl Job {
    /// The mask, its probabilities and (with `lungs`) its lung mask all exist and are newer than
    /// the input: what "current" means on disk, before the settings are compared.
    pub fn outputs_newer_than_input(&self, lungs: bool) -> bool {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let Some(input) = modified(&self.input) else {
            return false;
        };
        std::iter::once(&self.output)
            .chain(self.probabilities.as_ref())
            .chain(self.lungs.as_ref().filter(|_| lungs))
            .all(|p| modified(p).is_some_and(|t| t >= input))
    }
}

/// Plans the jobs for `input` and `output`. A folder of NIfTI files: one mask per CT with the CT's
/// file name in the output folder (probabilities in its `probabilities/` subfolder). A folder of
/// DICOM files (several studies, say): one mask per volumetric CT series, `<series id>.nii.gz`
/// in the output folder (or `output` itself when it names a file and there is one series). A
/// file (NIfTI, or DICOM for its series): `output` is the mask's path unless it is a folder.
pub fn plan(input: &Path, output: &Path, probabilities: bool) -> anyhow::Result<Vec<Job>> {
    plan_series(input, output, probabilities, None)
}

/// [`plan`] for the DICOM series `series` only (its SeriesInstanceUID, or the id `ct-info`
/// lists for a part of a split series).
pub fn plan_series(
    input: &Path,
    output: &Path,
    probabilities: bool,
    series: Option<&str>,
) -> anyhow::Result<Vec<Job>> {
    let names_a_file = |p: &Path| ct_io::task::strip_nifti_extension(p).is_some() || is_seg(p);
    let probabilities_of = |mask: &Path| {
        probabilities.then(|| {
            let stem = ct_io::task::strip_nifti_extension(mask).unwrap_or_else(|| {
                mask.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            mask.with_file_name(format!("{stem}_probabilities.nii.gz"))
        })
    };
    if input.is_dir() {
        let files = ct_io::task::nifti_files(input)?;
        ensure!(
            files.is_empty() || series.is_none(),
            "{}: --series is for DICOM input, and this folder holds NIfTI files",
            input.display()
        );
        if files.is_empty() {
            let found = dicom_series(input)?;
            let series = match series {
                None => found,
                Some(wanted) => {
                    ensure!(
                        found.iter().any(|id| id == wanted),
                        "{}: no CT series {wanted} here; found: {}",
                        input.display(),
                        found.join(", ")
                    );
                    vec![wanted.to_string()]
                }
            };
            ensure!(
                series.len() == 1 || !names_a_file(output),
                "{}: {} CT series here, so the output must be a folder (or choose one with \
                 --series): {}",
                input.display(),
                series.len(),
                series.join(", ")
            );
            if let ([one], true) = (series.as_slice(), names_a_file(output)) {
                return Ok(vec![Job {
                    input: input.to_path_buf(),
                    series: Some(one.clone()),
                    output: output.to_path_buf(),
                    probabilities: probabilities_of(output),
                    lungs: None,
                    all_frames: false,
                    reference: None,
                }]);
            }
            return Ok(series
                .into_iter()
                .map(|id| {
                    let name = format!("{id}.nii.gz");
                    Job {
                        input: input.to_path_buf(),
                        output: output.join(&name),
                        probabilities: probabilities
                            .then(|| output.join(PROBABILITIES_DIR).join(&name)),
                        lungs: None,
                        series: Some(id),
                        all_frames: false,
                        reference: None,
                    }
                })
                .collect());
        }
        ensure!(
            !names_a_file(output),
            "{}: the input is a folder, so the output must be a folder too",
            output.display()
        );
        return Ok(files
            .into_iter()
            .map(|file| {
                let name = file.file_name().expect("a file").to_owned();
                Job {
                    output: output.join(&name),
                    probabilities: probabilities
                        .then(|| output.join(PROBABILITIES_DIR).join(&name)),
                    lungs: None,
                    input: file,
                    series: None,
                    all_frames: false,
                    reference: None,
                }
            })
            .collect());
    }
    if !input.is_file() {
        bail!("{}: no such file or folder", input.display());
    }
    let dicom = ct_io::dicom::is_dicom_file(input);
    ensure!(
        dicom || series.is_none(),
        "{}: --series is for DICOM input, and this is NIfTI",
        input.display()
    );
    let name = match (dicom, series) {
        (true, Some(id)) => format!("{id}.nii.gz").into(),
        (true, None) => format!("{}.nii.gz", ct_io::dicom::series_of(input)?).into(),
        (false, _) => input.file_name().expect("a file").to_owned(),
    };
    let mask = if output.is_dir() || !names_a_file(output) {
        output.join(&name)
    } else {
        output.to_path_buf()
    };
    Ok(vec![Job {
        input: input.to_path_buf(),
        series: series.map(str::to_string),
        probabilities: probabilities_of(&mask),
        output: mask,
        lungs: None,
        all_frames: false,
        reference: None,
    }])
}

/// The ids of the volumetric CT series in a folder of DICOM files.
fn dicom_series(folder: &Path) -> anyhow::Result<Vec<String>> {
    let scan = ct_io::dicom::scan(&[folder.to_path_buf()]).map_err(|e| {
        anyhow::anyhow!(
            "{}: no NIfTI files (.nii, .nii.gz) and no DICOM series here ({e})",
            folder.display()
        )
    })?;
    let series: Vec<String> = scan
        .series()
        .into_iter()
        .filter(|s| s.volumetric_ct)
        .map(|s| s.id)
        .collect();
    ensure!(
        !series.is_empty(),
        "{}: no volumetric CT series among the DICOM files here",
        folder.display()
    );
    Ok(series)
}

/// The subfolder of an output folder that holds probability maps.
pub const PROBABILITIES_DIR: &str = "probabilities";

/// What one job did.
#[derive(Debug, Clone)]
pub struct JobReport {
    pub input: PathBuf,
    pub output: PathBuf,
    pub shape: [usize; 3],
    pub tumour_voxels: u64,
    pub notes: PredictionNotes,
    pub seconds: f64,
}

/// What prediction made of one CT beyond its mask: recorded by the predict stage beside the masks
/// for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionNotes {
    /// Canonical axial slices the network saw, `[first, end)`.
    pub kept_slices: [usize; 2],
    pub tumour_ml: f64,
    /// Lung volume (ml) when the lung mask was made; 0 when no lung was found.
    pub lung_ml: Option<f64>,
    /// Predicted components dropped for lying outside the lungs.
    pub outside_lungs: usize,
    /// Predicted components removed by post-processing (size, count).
    pub removed_components: usize,
    /// The rules applied.
    pub postprocessing: PostProcessing,
    /// Models averaged and the test-time augmentation.
    pub models: usize,
    pub tta: Tta,
    /// With a reference: the components before any rule, to choose the post-processing on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<ComponentTable>,
}

impl PredictionNotes {
    /// The models and augmentation, in words.
    pub fn method(&self) -> String {
        let models = if self.models == 1 {
            "1 model".to_string()
        } else {
            format!("ensemble of {}", self.models)
        };
        format!(
            "{models}, test-time augmentation {}, post-processing: {}",
            self.tta.name(),
            self.postprocessing
        )
    }

    /// The lung mask's part of the job, in words.
    pub fn lung_note(&self) -> String {
        match self.lung_ml {
            None => "no lung mask".to_string(),
            Some(0.0) => format!(
                "no lungs found, {} component(s) outside them dropped",
                self.outside_lungs
            ),
            Some(ml) => format!(
                "lungs {ml:.0} ml, {} component(s) outside them dropped",
                self.outside_lungs
            ),
        }
    }
}

/// Reads the CT, predicts, and writes the mask (u8, the CT's header geometry verbatim) and, if
/// asked, the probabilities (float32); each file appears complete or not at all.
pub fn run_job(predictor: &Predictor, job: &Job) -> anyhow::Result<JobReport> {
    let start = Instant::now();
    let ct = ct_io::read_ct(&job.input, job.series.as_deref())?;
    let volume = ct.volume;
    if is_seg(&job.output) && ct.dicom.is_none() {
        bail!(
            "{}: a DICOM SEG can only be written for a DICOM input, and {} is NIfTI (write a \
             .nii.gz mask)",
            job.output.display(),
            job.input.display()
        );
    }
    let reference = match &job.reference {
        Some(path) => {
            let mask = ct_io::read_mask_with(path, &ct_io::ReadOptions::default())?;
            let offset = mask.geometry.affine_difference(&volume.geometry);
            ensure!(
                mask.geometry.shape == volume.geometry.shape
                    && offset <= ct_io::task::AFFINE_TOLERANCE_MM,
                "{}: not on the voxel grid of {}",
                path.display(),
                job.input.display()
            );
            Some(mask.data)
        }
        None => None,
    };
    let prediction =
        predictor.predict_against(&volume, &job.input, reference.as_ref().map(|r| r.view()))?;
    match &ct.dicom {
        Some(source) if is_seg(&job.output) => {
            let options = ct_io::dicom::SegOptions {
                algorithm: "lungseg".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                description: predictor.identity.clone(),
                all_frames: job.all_frames,
            };
            ct_io::dicom::write_seg(
                &job.output,
                prediction.mask.view(),
                &source.series,
                &options,
            )?;
        }
        _ => write(&job.output, &prediction.mask, &volume.geometry)?,
    }
    if let Some(path) = &job.probabilities {
        write(path, &prediction.probabilities, &volume.geometry)?;
    }
    if let (Some(path), Some(lungs)) = (&job.lungs, &prediction.lungs) {
        write(path, &lungs.in_file_order(), &volume.geometry)?;
    }
    let voxel_ml = volume.geometry.spacing.iter().product::<f64>() / 1000.0;
    let tumour_voxels = prediction.mask.iter().filter(|v| **v != 0).count() as u64;
    Ok(JobReport {
        input: job.input.clone(),
        output: job.output.clone(),
        shape: volume.geometry.shape,
        tumour_voxels,
        notes: PredictionNotes {
            kept_slices: prediction.kept_slices,
            tumour_ml: tumour_voxels as f64 * voxel_ml,
            lung_ml: prediction.lungs.as_ref().map(PredictedLungs::volume_ml),
            outside_lungs: prediction.outside_lungs,
            removed_components: prediction.removed_components,
            postprocessing: predictor.options.postprocessing,
            models: predictor.models(),
            tta: predictor.options.tta,
            table: prediction.table,
        },
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn write<T: ct_io::nii::Voxel>(
    path: &Path,
    data: &Array3<T>,
    geometry: &Geometry,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the output folder", dir.display()))?;
    }
    ct_io::write_volume(path, data.view(), geometry)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_known_to_have_seen_mirrors_only_when_its_run_mirrored_both_axes() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("best");
        let config = dir.path().join(ct_io::layout::RESOLVED_CONFIG_FILE);
        assert_eq!(trained_with_mirrors(&checkpoint), None, "no record");
        for (data, mirrored) in [
            ("flip_lr = true\nflip_ap = true", Some(true)),
            ("flip_lr = true\nflip_ap = false", Some(false)),
            // A run from before flip_ap existed.
            ("flip_lr = true", Some(false)),
            ("context = 1", Some(false)),
        ] {
            std::fs::write(&config, format!("[train]\nepochs = 2\n\n[data]\n{data}\n")).unwrap();
            assert_eq!(trained_with_mirrors(&checkpoint), mirrored, "{data}");
        }
    }
}
