//! Synthetic chest-CT phantoms in the MSD Task06_Lung layout, so the pipeline and the tests run
//! where the real archive cannot be downloaded.
//!
//! Anatomy is drawn in patient space (mm; x to the right, y anterior, z superior) on the canonical
//! RAS grid, then stored in the requested axis order (MSD's LAS by default) with an affine that
//! says so. What real CTs show and a model must not mistake for tumour is drawn too
//! (modules `anatomy`, `canvas`, `lesions`, `scanner`): scans from the cropped chest to neck to
//! pelvis; an irregular body, arms beside it, the table under it; lungs with texture, the
//! diaphragm's dome and dependent atelectasis; vessel and airway trees that branch and thin to
//! the periphery, the great vessels at the hila, the aorta, trachea and oesophagus; spine, ribs,
//! sternum, pelvis; liver, stomach with its gas, spleen, kidneys, and bowel loops holding gas;
//! ground glass, scars and calcified granulomas. 0-3 lobulated tumours of 3-40 mm inside the
//! lungs, some against the chest wall, the mediastinum or the diaphragm. Then the scanner's blur
//! (partial volume) and noise, white or grainy. Every value is a pure function of the seed and
//! case number.

mod anatomy;
mod canvas;
pub mod dicom;
mod lesions;
mod scanner;

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array3, ShapeBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use ct_io::atomic::write_json;
use ct_io::config::{Invalid, Section};
use ct_io::geometry::{Geometry, Reorientation, affine_for_orientation, parse_orientation};
use ct_io::nii::write_volume;
use ct_io::seed::splitmix64 as mix;
use ct_io::{Error, Result};

pub use anatomy::Field;
use anatomy::{Anatomy, Region};
use canvas::{Canvas, Texture, Tube};
use scanner::Scanner;

/// `[synth]`: the synthetic task folder the demo pipeline trains on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthConfig {
    /// Labelled cases (imagesTr + labelsTr).
    pub cases: usize,
    /// Unlabelled cases (imagesTs).
    pub test_cases: usize,
    /// In-plane voxels per axis (MSD: 512).
    pub size: usize,
    /// Axial slices per case.
    pub slices: usize,
    pub seed: u64,
    /// Voxel axis order of the written files, e.g. "LAS" (MSD) or "LPS" (DICOM-like).
    pub orientation: String,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            cases: 24,
            test_cases: 2,
            size: 256,
            slices: 96,
            seed: 1234,
            orientation: "LAS".to_string(),
        }
    }
}

impl Section for SynthConfig {
    const NAME: &'static str = "synth";
    fn validate(&self) -> std::result::Result<(), Invalid> {
        if !(1..=999).contains(&self.cases) {
            return Err(Invalid::new("cases", "must be 1..=999"));
        }
        if self.cases + self.test_cases > 999 {
            return Err(Invalid::new(
                "test_cases",
                "cases + test_cases must be ≤ 999",
            ));
        }
        if !(32..=1024).contains(&self.size) {
            return Err(Invalid::new("size", "must be 32..=1024 voxels"));
        }
        if !(16..=1024).contains(&self.slices) {
            return Err(Invalid::new("slices", "must be 16..=1024"));
        }
        if parse_orientation(&self.orientation).is_none() {
            return Err(Invalid::new(
                "orientation",
                format!(
                    "{:?} is not a 3-letter code naming each of L/R, A/P, S/I once (e.g. \"LAS\")",
                    self.orientation
                ),
            ));
        }
        Ok(())
    }
}

/// One tumour as placed.
#[derive(Debug, Clone, Serialize)]
pub struct Tumour {
    /// Centre in world coordinates (mm).
    pub centre_mm: [f64; 3],
    pub diameter_mm: f64,
    /// Voxels labelled for this tumour (after clipping to the lung).
    pub voxels: usize,
}

/// One generated case, in the file's voxel order.
#[derive(Debug, Clone)]
pub struct Phantom {
    /// Hounsfield units.
    pub ct: Array3<i16>,
    /// 1 inside a tumour.
    pub label: Array3<u8>,
    /// 1 inside a lung (tumours included), for checks; not written to the task folder.
    pub lung: Array3<u8>,
    pub geometry: Geometry,
    pub tumours: Vec<Tumour>,
    /// What the scan covers.
    pub field: Field,
}

/// The generator's version: raised whenever the same `[synth]` draws other phantoms, so that a
/// task folder written by an older one is written again.
pub const GENERATOR: u32 = 2;

/// What a task folder records of how its phantoms were made (`dataset.json`'s "synth"): the
/// `[synth]` section and the generator's version.
pub fn provenance(config: &SynthConfig) -> serde_json::Value {
    let mut value = serde_json::to_value(config).expect("the config serialises");
    value["generator"] = GENERATOR.into();
    value
}

/// What case `index` of `config`'s task covers, without drawing it.
pub fn case_field(config: &SynthConfig, index: usize) -> Field {
    Field::sample(&mut case_rng(config, index))
}

fn case_seed(config: &SynthConfig, index: usize) -> u64 {
    mix(config.seed ^ mix(index as u64 + 1))
}

fn case_rng(config: &SynthConfig, index: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(case_seed(config, index))
}

/// Generates case number `index` (0-based) of the task described by `config`, which must be
/// valid ([`SynthConfig::validate`]).
pub fn generate_case(config: &SynthConfig, index: usize) -> Phantom {
    let case_seed = case_seed(config, index);
    let mut rng = case_rng(config, index);
    let anatomy = Anatomy::sample(&mut rng);
    let scanner = Scanner::sample(&mut rng);
    let n = config.size;
    let shape = [n, n, config.slices];
    let spacing = [
        anatomy.fov / n as f64,
        anatomy.fov / n as f64,
        anatomy.z_extent / config.slices as f64,
    ];
    let origin = [0, 1, 2].map(|d| -(shape[d] as f64 - 1.0) / 2.0 * spacing[d]);
    let plane = n * n;
    let total = plane * config.slices;
    let mut canvas = Canvas {
        shape,
        spacing,
        origin,
        hu: vec![0.0; total],
        region: vec![0; total],
        label: vec![0; total],
    };

    // Tissues, slice by slice in parallel.
    let texture = Texture::new(&anatomy, shape, spacing, origin);
    canvas
        .hu
        .par_chunks_mut(plane)
        .zip(canvas.region.par_chunks_mut(plane))
        .enumerate()
        .for_each(|(k, (hu_slice, region_slice))| {
            for j in 0..n {
                let row = texture.row(j, k);
                for i in 0..n {
                    let p = [
                        origin[0] + i as f64 * spacing[0],
                        origin[1] + j as f64 * spacing[1],
                        origin[2] + k as f64 * spacing[2],
                    ];
                    let (v, region) = anatomy.tissue(p, || texture.at(&row, i));
                    hu_slice[i + n * j] = v;
                    region_slice[i + n * j] = region as u8;
                }
            }
        });

    // The great vessels, the main bronchi, then vessel and airway trees from each hilum; the
    // bowel below the diaphragm.
    let [tx, ty] = anatomy.trachea_centre();
    let carina = [tx, ty, anatomy.carina_z];
    let hila = [-1.0, 1.0].map(|side| {
        [
            side * anatomy.body[0] * 0.3,
            ty + 14.0,
            anatomy.carina_z - 30.0,
        ]
    });
    canvas::great_vessels(&mut canvas, &anatomy, &hila);
    canvas::bowel(&mut canvas, &anatomy, &mut rng);
    for (hilum, side) in hila.iter().zip([-1.0, 1.0]) {
        canvas.tube(carina, *hilum, 5.5, Tube::MainBronchus);
        let trees = [
            [Tube::Vessel(anatomy.blood); 10].as_slice(),
            &[Tube::Airway; 3],
        ]
        .concat();
        for kind in trees {
            // Toward a point of this side's lung, so that the trees spread through all of it.
            let target = (0..200)
                .map(|_| lesions::random_lung_point(&canvas, &mut rng))
                .find(|p| p.is_some_and(|p| p[0] * side > 0.0))
                .flatten()
                .unwrap_or([side * anatomy.body[0] * 0.5, hilum[1], hilum[2]]);
            let root = hilum.map(|v| v + rng.random_range(-8.0..8.0));
            let (radius, min_radius) = match kind {
                Tube::Airway => (rng.random_range(3.0..4.0), 0.8),
                _ => (rng.random_range(2.5..4.0), 0.7),
            };
            canvas::tree(
                &mut canvas,
                &mut rng,
                root,
                target,
                radius,
                min_radius,
                kind,
            );
        }
    }

    lesions::distractors(&mut canvas, &mut rng);
    let tumours = lesions::place_tumours(&mut canvas, &anatomy, &mut rng);

    // The scanner: blur, noise, rounding to int16 HU.
    scanner.blur(&mut canvas.hu, shape, spacing);
    let noise = scanner.noise(shape, mix(case_seed ^ 0x5EED));
    let ct: Vec<i16> = canvas
        .hu
        .par_iter()
        .zip(&noise)
        .map(|(&v, &e)| (v + e).round().clamp(-1024.0, 3071.0) as i16)
        .collect();
    let lung: Vec<u8> = canvas
        .region
        .iter()
        .map(|&r| u8::from(r == Region::Lung as u8))
        .collect();

    let (ct, label, lung) = (
        fortran(shape, ct),
        fortran(shape, canvas.label),
        fortran(shape, lung),
    );

    // Store in the requested axis order.
    let directions = parse_orientation(&config.orientation).expect("validated orientation");
    let file_shape = directions.map(|(w, _)| shape[w]);
    let file_spacing = directions.map(|(w, _)| spacing[w]);
    let centre = [
        0.0,
        rng.random_range(-20.0..20.0),
        rng.random_range(-80.0..80.0),
    ];
    let affine = affine_for_orientation(&config.orientation, file_shape, file_spacing, centre)
        .expect("validated orientation");
    let geometry = Geometry::from_affine(file_shape, affine);
    let to_ras = Reorientation::to_canonical(&geometry);
    debug_assert_eq!(to_ras.canonical_shape(), shape);
    // World coordinates of tumour centres: canonical mm + the file's centre offset.
    let tumours = tumours
        .into_iter()
        .map(|mut t| {
            for (c, offset) in t.centre_mm.iter_mut().zip(centre) {
                *c += offset;
            }
            t
        })
        .collect();
    Phantom {
        ct: to_ras.restore(ct.view()),
        label: to_ras.restore(label.view()),
        lung: to_ras.restore(lung.view()),
        geometry,
        tumours,
        field: anatomy.field,
    }
}

fn fortran<T>(shape: [usize; 3], values: Vec<T>) -> Array3<T> {
    Array3::from_shape_vec((shape[0], shape[1], shape[2]).f(), values).expect("sized to the shape")
}

/// What [`write_task`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SynthReport {
    pub folder: PathBuf,
    pub training_cases: usize,
    pub test_cases: usize,
    /// Uncompressed voxel bytes written (CT int16 + labels uint8).
    pub voxel_bytes: u64,
    pub seconds: f64,
    pub voxel_mb_per_s: f64,
}

/// Case id of the `index`-th (0-based) case of a task: `lung_001`, ...
pub fn case_id(index: usize) -> String {
    format!("lung_{:03}", index + 1)
}

/// Writes a complete MSD task folder (`dataset.json`, `imagesTr/`, `labelsTr/`, `imagesTs/`).
/// Each file is written atomically and `dataset.json` last, so a folder with a `dataset.json` is
/// complete; rerunning overwrites with identical content.
pub fn write_task(out: &Path, config: &SynthConfig) -> Result<SynthReport> {
    config
        .validate()
        .map_err(|inv| Error::invalid(out, format!("synth.{}: {}", inv.key, inv.reason)))?;
    let start = Instant::now();
    let total = config.cases + config.test_cases;
    let bar = ct_io::cli::progress_bar(total as u64, "synth");
    let bytes: Vec<u64> = (0..total)
        .into_par_iter()
        .map(|index| -> Result<u64> {
            let phantom = generate_case(config, index);
            let name = format!("{}.nii.gz", case_id(index));
            let labelled = index < config.cases;
            let image_dir = if labelled { "imagesTr" } else { "imagesTs" };
            write_volume(
                &out.join(image_dir).join(&name),
                phantom.ct.view(),
                &phantom.geometry,
            )?;
            let mut bytes = phantom.ct.len() as u64 * 2;
            if labelled {
                write_volume(
                    &out.join("labelsTr").join(&name),
                    phantom.label.view(),
                    &phantom.geometry,
                )?;
                bytes += phantom.label.len() as u64;
            }
            bar.inc(1);
            Ok(bytes)
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();

    let training: Vec<_> = (0..config.cases)
        .map(|i| {
            serde_json::json!({
                "image": format!("./imagesTr/{}.nii.gz", case_id(i)),
                "label": format!("./labelsTr/{}.nii.gz", case_id(i)),
            })
        })
        .collect();
    let test: Vec<_> = (config.cases..total)
        .map(|i| format!("./imagesTs/{}.nii.gz", case_id(i)))
        .collect();
    let dataset = serde_json::json!({
        "name": "Lung",
        "description": "Synthetic chest-CT phantoms in the layout of MSD Task06_Lung (lungseg)",
        "reference": "generated by lungseg's ct-io phantom module",
        "licence": "CC-BY-SA 4.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "cancer"},
        "numTraining": config.cases,
        "numTest": config.test_cases,
        "training": training,
        "test": test,
        "synth": provenance(config),
    });
    write_json(&out.join("dataset.json"), &dataset)?;
    let seconds = start.elapsed().as_secs_f64();
    let voxel_bytes: u64 = bytes.iter().sum();
    Ok(SynthReport {
        folder: out.to_path_buf(),
        training_cases: config.cases,
        test_cases: config.test_cases,
        voxel_bytes,
        seconds,
        voxel_mb_per_s: voxel_bytes as f64 / 1e6 / seconds.max(1e-9),
    })
}
