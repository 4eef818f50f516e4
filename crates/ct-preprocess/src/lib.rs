//! `ct-preprocess`: the preprocessing stage. Turns the labelled CTs of an MSD task folder into a
//! dataset of normalised 2D axial slices (`.npy`: f32 images, u8 masks) and one manifest that
//! lists every slice and records, per case, how to put a prediction back into the CT's geometry.
//!
//! Per case: read and check image and label (`ct-io`), view both in canonical RAS order, crop
//! (the reference's inferior slices, never tumour, never most of a short volume; or to the lungs'
//! axial extent from the lung mask, written beside the slices), normalise, resize each slice,
//! write into a temporary folder and rename it into place. Cases run in parallel (a bounded number at
//! once, so memory stays bounded), slices within a case too. A rerun skips cases whose input files
//! and slice settings are unchanged.

pub mod lungs;
pub mod manifest;
pub mod mask;
pub mod settings;
pub mod slices;
pub mod split;

use std::collections::BTreeSet;
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, bail};
use ct_io::config::Config;
use ct_io::nii::ReadOptions;
use ct_io::task::{Case, check_label_matches};
use ct_io::{Reorientation, read_mask_with, read_planes_with, read_task, read_volume_with};
use ndarray::{Array2, Array3, ArrayView3, Axis, ShapeBuilder};
use ndarray_npy::WriteNpyExt;
use rayon::prelude::*;

use lungs::{LungMask, lung_mask};
use manifest::{
    CASE_FILE, CASES_DIR, CaseInfo, CaseRecord, FailedCase, FileStamp, LUNG_MASK_FILE, LungSummary,
    MANIFEST_FILE, Manifest, ManifestCase, ManifestSlice, PREPROCESSED_DIR, SliceFiles,
    SliceSettings,
};
use mask::bounding_box;
use settings::{CropMode, Normalisation, PreprocessConfig};
use slices::{PlaneBox, decide_crop, decide_plane_box, nearest_axial_slice, network_input};
use split::SplitRecord;

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub manifest: PathBuf,
    pub processed: usize,
    pub reused: usize,
    pub failed: Vec<FailedCase>,
    pub slices: usize,
    /// Bytes of the input files of the cases processed (not reused).
    pub input_bytes: u64,
    pub seconds: f64,
}

/// The stage as its binary runs it: `[paths]` and `[preprocess]` from the config.
pub fn run(config: &Config) -> anyhow::Result<Summary> {
    let paths = config.paths()?;
    let settings: PreprocessConfig = config.section()?;
    let task = read_task(&paths.data_dir)?;
    anyhow::ensure!(
        !task.training.is_empty(),
        "{}: the task has no labelled cases",
        paths.data_dir.display()
    );
    let ids: Vec<String> = task.training.iter().map(|c| c.id.clone()).collect();
    let split = SplitRecord::new(&ids, &settings).map_err(|reason| {
        let key = if settings.folds > 1 {
            "preprocess.folds"
        } else {
            "preprocess.validation_cases"
        };
        config.error(key, reason)
    })?;
    let out = paths.work_dir.join(PREPROCESSED_DIR);
    let _lock = ct_io::lock::lock_folder(&out)?;
    preprocess(&task.training, &paths.data_dir, &split, &settings, &out)
}

/// Preprocesses `cases` into `out` and writes the manifest; see the crate docs.
pub fn preprocess(
    cases: &[Case],
    data_dir: &Path,
    split: &SplitRecord,
    settings: &PreprocessConfig,
    out: &Path,
) -> anyhow::Result<Summary> {
    let start = Instant::now();
    let cases_dir = out.join(CASES_DIR);
    fs::create_dir_all(&cases_dir).with_context(|| format!("{}", cases_dir.display()))?;
    remove_stale(&cases_dir, cases)?;
    let slice_settings = SliceSettings::from_config(settings);
    // One more case than cores: while a case decompresses (one core), the others have work.
    let jobs = if settings.jobs == 0 {
        rayon::current_num_threads() + 1
    } else {
        settings.jobs
    };
    // Cases run on their own small pool so that at most `jobs` volumes are in memory; their slices
    // run on the global pool.
    let case_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .thread_name(|i| format!("preprocess-case-{i}"))
        .build()
        .context("cannot start worker threads")?;
    let bar = ct_io::cli::progress_bar(cases.len() as u64, "preprocess");
    let outcomes: Vec<(String, anyhow::Result<(CaseRecord, bool)>)> = case_pool.install(|| {
        cases
            .par_iter()
            .with_max_len(1)
            .map(|case| {
                let result = prepare_case(case, &slice_settings, settings, &cases_dir);
                if let Err(e) = &result {
                    tracing::error!("{}: {e:#}", case.id);
                }
                bar.inc(1);
                (case.id.clone(), result)
            })
            .collect()
    });
    bar.finish_and_clear();

    let mut records = Vec::new();
    let mut failed = Vec::new();
    let (mut processed, mut reused, mut input_bytes) = (0, 0, 0);
    for (id, outcome) in outcomes {
        match outcome {
            Ok((record, was_reused)) => {
                if was_reused {
                    reused += 1;
                } else {
                    processed += 1;
                    input_bytes += record.info.inputs.iter().map(|s| s.bytes).sum::<u64>();
                }
                records.push(record);
            }
            Err(e) => failed.push(FailedCase {
                id,
                error: format!("{e:#}"),
            }),
        }
    }
    if !failed.is_empty() && !settings.continue_on_error {
        let list: Vec<String> = failed
            .iter()
            .map(|f| format!("{} ({})", f.id, f.error))
            .collect();
        bail!(
            "{} of {} cases failed: {}",
            failed.len(),
            cases.len(),
            list.join("; ")
        );
    }
    for f in &failed {
        tracing::warn!(
            "{}: skipped and recorded in the manifest: {}",
            f.id,
            f.error
        );
    }

    let manifest = assemble_manifest(records, failed.clone(), data_dir, split, settings);
    let manifest_path = out.join(MANIFEST_FILE);
    let unchanged = Manifest::load(&manifest_path).is_ok_and(|old| old == manifest);
    if !unchanged {
        ct_io::atomic::write_json(&manifest_path, &manifest)?;
    }
    Ok(Summary {
        manifest: manifest_path,
        processed,
        reused,
        failed,
        slices: manifest.slices.len(),
        input_bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn assemble_manifest(
    records: Vec<CaseRecord>,
    failed: Vec<FailedCase>,
    data_dir: &Path,
    split: &SplitRecord,
    settings: &PreprocessConfig,
) -> Manifest {
    let mut cases = Vec::new();
    let mut slices = Vec::new();
    for record in records {
        let case_split = split.of(&record.info.id);
        slices.extend(record.slices.into_iter().map(|files| ManifestSlice {
            case: record.info.id.clone(),
            split: case_split.clone(),
            files,
        }));
        cases.push(ManifestCase {
            split: case_split,
            info: record.info,
        });
    }
    Manifest {
        format_version: manifest::FORMAT_VERSION,
        data_dir: data_dir.to_path_buf(),
        settings: settings.clone(),
        split: split.clone(),
        cases,
        failed,
        slices,
    }
}

/// Removes case folders of cases no longer in the task and temporary folders of crashed runs.
fn remove_stale(cases_dir: &Path, cases: &[Case]) -> anyhow::Result<()> {
    let wanted: BTreeSet<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    for entry in fs::read_dir(cases_dir).with_context(|| format!("{}", cases_dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.is_dir() && !wanted.contains(name.as_str()) {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Reuses the case's folder when its inputs and settings are unchanged, else processes it.
fn prepare_case(
    case: &Case,
    slice_settings: &SliceSettings,
    settings: &PreprocessConfig,
    cases_dir: &Path,
) -> anyhow::Result<(CaseRecord, bool)> {
    let label = case
        .label
        .as_deref()
        .with_context(|| format!("{}: no label", case.image.display()))?;
    let inputs = vec![FileStamp::of(&case.image)?, FileStamp::of(label)?];
    let final_dir = cases_dir.join(&case.id);
    if let Ok(text) = fs::read_to_string(final_dir.join(CASE_FILE))
        && let Ok(record) = serde_json::from_str::<CaseRecord>(&text)
        && record.info.inputs == inputs
        && &record.info.settings == slice_settings
        && record
            .slices
            .iter()
            .all(|s| final_dir.join(file_name(&s.image)).is_file())
    {
        tracing::debug!("{}: unchanged, reused", case.id);
        return Ok((record, true));
    }
    let tmp_dir = cases_dir.join(format!(".{}.tmp-{}", case.id, std::process::id()));
    let result =
        process_case(case, label, inputs, slice_settings, settings, &tmp_dir).and_then(|record| {
            if final_dir.exists() {
                fs::remove_dir_all(&final_dir)
                    .with_context(|| format!("removing {}", final_dir.display()))?;
            }
            fs::rename(&tmp_dir, &final_dir)
                .with_context(|| format!("renaming into {}", final_dir.display()))?;
            Ok(record)
        });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp_dir);
    }
    Ok((result?, false))
}

fn file_name(path: &Path) -> &std::ffi::OsStr {
    path.file_name().unwrap_or_default()
}

fn process_case(
    case: &Case,
    label_path: &Path,
    inputs: Vec<FileStamp>,
    slice_settings: &SliceSettings,
    settings: &PreprocessConfig,
    tmp_dir: &Path,
) -> anyhow::Result<CaseRecord> {
    let options = ReadOptions {
        max_bytes: settings.max_volume_mib << 20,
    };
    // The label first: it is small (bytes, compresses well) and decides the crop.
    let label = read_mask_with(label_path, &options)?;
    let reorientation = Reorientation::to_canonical(&label.geometry);
    let canonical_geometry = reorientation.canonical_geometry(&label.geometry);
    let [width, height, depth] = reorientation.canonical_shape();
    let tumour_per_slice = tumour_per_axial_slice(&label.data, &reorientation, label_path)?;
    let tumour_extent = match (
        tumour_per_slice.iter().position(|&n| n > 0),
        tumour_per_slice.iter().rposition(|&n| n > 0),
    ) {
        (Some(first), Some(last)) => Some([first, last + 1]),
        _ => None,
    };

    fs::create_dir_all(tmp_dir).with_context(|| format!("{}", tmp_dir.display()))?;
    let writer = SliceWriter {
        case_id: &case.id,
        dir: tmp_dir,
        size: settings.size,
        normalisation: slice_settings.normalisation,
        mask: reorientation.canonical_view(label.data.view()),
        plane_box: PlaneBox::whole([width, height]),
    };
    let warn_crop = |crop: &slices::Crop| {
        if let Some(reason) = &crop.reason {
            tracing::warn!(
                "{}: keeping slices {:?} of {depth} ({reason})",
                case.id,
                crop.kept(depth)
            );
        }
    };
    let (image_geometry, crop, plane_box, lungs, mut slices) =
        if settings.crop == CropMode::Inferior && reorientation.permutation[2] == 2 {
            let crop = decide_crop(
                settings,
                depth,
                canonical_geometry.spacing[2],
                tumour_extent,
                None,
            );
            warn_crop(&crop);
            let (geometry, slices) = stream_slices(
                &case.image,
                &options,
                &reorientation,
                crop.kept(depth),
                &writer,
            )?;
            (geometry, crop, writer.plane_box, None, slices)
        } else {
            // The lungs need the whole CT; so does a file whose slowest axis is not axial (e.g.
            // sagittal slices), whose axial slices are spread through the whole file.
            let image = read_volume_with(&case.image, &options)?;
            check_label_matches(&image.geometry, &label.geometry, label_path)?;
            let ct = reorientation.canonical_view(image.data.view());
            let lungs = (settings.crop == CropMode::Lungs).then(|| {
                let lungs = lung_mask(ct, canonical_geometry.spacing);
                if lungs.is_empty() {
                    tracing::warn!("{}: no lungs found in the CT", case.id);
                }
                lungs
            });
            let crop = decide_crop(
                settings,
                depth,
                canonical_geometry.spacing[2],
                tumour_extent,
                lungs.as_ref().and_then(|l| l.axial_extent),
            );
            warn_crop(&crop);
            let plane_box = decide_plane_box(
                settings,
                [width, height],
                [canonical_geometry.spacing[0], canonical_geometry.spacing[1]],
                lungs.as_ref().and_then(LungMask::plane_extent),
                bounding_box(writer.mask).map(|(corner, extent)| PlaneBox {
                    x: [corner[0], corner[0] + extent[0]],
                    y: [corner[1], corner[1] + extent[1]],
                }),
            );
            let writer = SliceWriter {
                plane_box,
                ..writer
            };
            let [first, end] = crop.kept(depth);
            let slices = (first..end)
                .into_par_iter()
                .map(|k| writer.write(k, ct, k))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let summary = match &lungs {
                Some(lungs) => {
                    let mask = lungs.to_canonical();
                    ct_io::write_volume(
                        &tmp_dir.join(LUNG_MASK_FILE),
                        reorientation.restore(mask.view()).view(),
                        &image.geometry,
                    )?;
                    Some(LungSummary::of(lungs))
                }
                None => None,
            };
            (image.geometry, crop, plane_box, summary, slices)
        };
    check_label_matches(&image_geometry, &label.geometry, label_path)?;
    slices.sort_by_key(|s| s.slice);

    let record = CaseRecord {
        info: CaseInfo {
            id: case.id.clone(),
            inputs,
            settings: slice_settings.clone(),
            original_shape: image_geometry.shape,
            original_affine: image_geometry.affine,
            original_orientation: image_geometry.orientation(),
            reorientation,
            canonical_shape: [width, height, depth],
            canonical_spacing: canonical_geometry.spacing,
            kept_slices: crop.kept(depth),
            crop,
            lungs,
            resize_factors: [
                settings.size as f64 / plane_box.extent()[1] as f64,
                settings.size as f64 / plane_box.extent()[0] as f64,
            ],
            plane_box,
            normalisation: slice_settings.normalisation,
            tumour_voxels: tumour_per_slice.iter().sum::<usize>() as u64,
        },
        slices,
    };
    ct_io::atomic::write_json(&tmp_dir.join(CASE_FILE), &record)?;
    Ok(record)
}

/// Decompresses the CT plane by plane (its slowest axis is axial) and hands each kept slice to
/// the writers on the global pool as soon as it is decoded: the volume is never held whole, and
/// resizing and writing overlap the decompression. Returns the CT's geometry and the slices.
fn stream_slices(
    image_path: &Path,
    options: &ReadOptions,
    reorientation: &Reorientation,
    [first_kept, end_kept]: [usize; 2],
    writer: &SliceWriter,
) -> anyhow::Result<(ct_io::Geometry, Vec<SliceFiles>)> {
    let [nx, ny, nz] = reorientation.original_shape;
    // The in-plane part of the reorientation, for one plane of the file.
    let in_plane = Reorientation {
        permutation: [
            reorientation.permutation[0],
            reorientation.permutation[1],
            2,
        ],
        flip: [reorientation.flip[0], reorientation.flip[1], false],
        original_shape: [nx, ny, 1],
    };
    let (sender, receiver) =
        mpsc::sync_channel::<(usize, Vec<f32>)>(2 * rayon::current_num_threads());
    std::thread::scope(|scope| {
        let writers = scope.spawn(|| {
            receiver
                .into_iter()
                .par_bridge()
                .map(|(k, plane)| {
                    // A plane of another size means the CT does not match its label: the read
                    // reports it below.
                    let Ok(view) = ArrayView3::from_shape((nx, ny, 1).f(), &plane) else {
                        return Ok(None);
                    };
                    writer.write(k, in_plane.canonical_view(view), 0).map(Some)
                })
                .collect::<anyhow::Result<Vec<_>>>()
        });
        let read = read_planes_with(image_path, options, |k_file, plane| {
            let k = if reorientation.flip[2] {
                nz.saturating_sub(k_file + 1)
            } else {
                k_file
            };
            if (first_kept..end_kept).contains(&k) && k_file < nz {
                // A closed channel means the writers failed; their error is returned below.
                let _ = sender.send((k, plane));
            }
        });
        drop(sender);
        let slices = writers.join().expect("slice writers do not panic");
        let (geometry, _) = read?;
        Ok((geometry, slices?.into_iter().flatten().collect()))
    })
}

/// Normalises, resizes and writes one canonical axial slice (and its mask) of a case.
struct SliceWriter<'a> {
    case_id: &'a str,
    dir: &'a Path,
    size: usize,
    normalisation: Normalisation,
    /// The label in canonical order.
    mask: ArrayView3<'a, u8>,
    /// The part of each slice that is resized.
    plane_box: PlaneBox,
}

impl SliceWriter<'_> {
    /// Writes slice `k` of the case; its CT in HU is slice `k_in_view` of `canonical_ct`.
    fn write(
        &self,
        k: usize,
        canonical_ct: ArrayView3<f32>,
        k_in_view: usize,
    ) -> anyhow::Result<SliceFiles> {
        let size = self.size;
        let resized = network_input(
            self.plane_box.of(canonical_ct),
            k_in_view,
            size,
            self.normalisation,
        );
        let resized_mask = nearest_axial_slice(self.plane_box.of(self.mask), k, size);
        let tumour_voxels = resized_mask.iter().filter(|v| **v > 0).count() as u32;
        let image_name = format!("image_{k:04}.npy");
        let mask_name = format!("mask_{k:04}.npy");
        write_npy(
            &self.dir.join(&image_name),
            Array2::from_shape_vec((size, size), resized).expect("size x size"),
        )?;
        write_npy(
            &self.dir.join(&mask_name),
            Array2::from_shape_vec((size, size), resized_mask).expect("size x size"),
        )?;
        let relative = Path::new(CASES_DIR).join(self.case_id);
        Ok(SliceFiles {
            slice: k,
            image: relative.join(image_name),
            mask: relative.join(mask_name),
            tumour_voxels,
        })
    }
}

/// Tumour voxels per canonical axial slice, counted in the file's own layout (fast: the axial axis
/// is usually the slowest one), checking that the label holds only 0 and 1.
fn tumour_per_axial_slice(
    label: &Array3<u8>,
    reorientation: &Reorientation,
    path: &Path,
) -> anyhow::Result<Vec<usize>> {
    // Memory order: `iter()` on a Fortran-layout array would stride across the whole volume.
    let values = label
        .as_slice_memory_order()
        .expect("ct-io returns contiguous volumes");
    if let Some(bad) = values.iter().find(|v| **v > 1) {
        bail!(
            "{}: label values must be 0 or 1 (found {bad})",
            path.display()
        );
    }
    let axial_axis = reorientation.permutation[2];
    let mut counts: Vec<usize> = label
        .axis_iter(Axis(axial_axis))
        .map(|plane| match plane.as_slice_memory_order() {
            Some(flat) => flat.iter().map(|&v| usize::from(v)).sum(),
            None => plane.iter().map(|&v| usize::from(v)).sum(),
        })
        .collect();
    if reorientation.flip[2] {
        counts.reverse();
    }
    Ok(counts)
}

fn write_npy<T: ndarray_npy::WritableElement>(path: &Path, array: Array2<T>) -> anyhow::Result<()> {
    let file = fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    array
        .write_npy(BufWriter::new(file))
        .with_context(|| format!("{}: cannot write", path.display()))
}
