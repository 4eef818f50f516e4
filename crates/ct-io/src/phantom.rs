//! Synthetic chest-CT phantoms in the MSD Task06_Lung layout, so the pipeline and the tests run
//! where the real archive cannot be downloaded.
//!
//! Anatomy is drawn in patient space (mm; x to the right, y anterior, z superior) on the canonical
//! RAS grid, then stored in the requested axis order (MSD's LAS by default) with an affine that
//! says so. Body with fat and muscle, two lungs with texture, vessels and airways, trachea and main
//! bronchi, spine, ribs, sternum, heart, aorta and mediastinum, liver below the diaphragm; 0-3
//! lobulated tumours of 3-40 mm inside the lungs, some against the chest wall or mediastinum;
//! Gaussian-like noise. Every value is a pure function of the seed and case number.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array3, ShapeBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::atomic::write_json;
use crate::config::{Invalid, Section};
use crate::error::Result;
use crate::geometry::{Geometry, Reorientation, affine_for_orientation, parse_orientation};
use crate::nii::write_volume;
use crate::seed::splitmix64 as mix;

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
}

/// Hounsfield values of the tissues drawn.
mod hu {
    pub const AIR: f32 = -1000.0;
    pub const FAT: f32 = -100.0;
    pub const MUSCLE: f32 = 45.0;
    pub const SOFT: f32 = 35.0;
    pub const LIVER: f32 = 58.0;
    pub const BLOOD: f32 = 42.0;
    pub const LUNG: f32 = -860.0;
    pub const AIRWAY: f32 = -980.0;
    pub const VESSEL: f32 = 40.0;
    pub const TUMOUR: f32 = 32.0;
    pub const CANCELLOUS: f32 = 320.0;
    pub const CORTICAL: f32 = 850.0;
    pub const RIB: f32 = 620.0;
    pub const DISC: f32 = 85.0;
    pub const CSF: f32 = 15.0;
}

/// Per-case anatomy parameters (mm).
struct Anatomy {
    body: [f64; 2],
    fat: f64,
    lung_base: f64,
    lung_top: f64,
    dome: f64,
    lung_centre: [f64; 2],
    lung_semi: [f64; 2],
    heart_centre: [f64; 3],
    heart_semi: [f64; 3],
    spine_y: f64,
    rib_pitch: f64,
    rib_phase: f64,
    carina_z: f64,
    texture: Vec<([f64; 3], f64, f64)>,
    noise_sd: f64,
}

impl Anatomy {
    fn sample(rng: &mut ChaCha8Rng, z_extent: f64) -> Anatomy {
        let bx = rng.random_range(145.0..172.0);
        let by = bx * rng.random_range(0.66..0.76);
        let fat = rng.random_range(8.0..18.0);
        let lung_top = z_extent / 2.0 - rng.random_range(8.0..25.0);
        let lung_base = -z_extent / 2.0 + rng.random_range(45.0..70.0);
        let spine_y = -by + fat + 40.0;
        let texture = (0..10)
            .map(|_| {
                let wavelength: f64 = rng.random_range(6.0..30.0);
                let theta = rng.random_range(0.0..PI);
                let phi = rng.random_range(0.0..2.0 * PI);
                let k = 2.0 * PI / wavelength;
                (
                    [
                        k * theta.sin() * phi.cos(),
                        k * theta.sin() * phi.sin(),
                        k * theta.cos(),
                    ],
                    rng.random_range(0.0..2.0 * PI),
                    rng.random_range(3.0..7.0),
                )
            })
            .collect();
        let span = lung_top - lung_base;
        Anatomy {
            body: [bx, by],
            fat,
            lung_base,
            lung_top,
            dome: rng.random_range(15.0..30.0),
            lung_centre: [bx * 0.45, -0.04 * by],
            lung_semi: [bx * 0.37, by * 0.74],
            heart_centre: [-0.16 * bx, 0.16 * by, lung_base + 0.22 * span],
            heart_semi: [0.3 * bx, 0.42 * by, 0.25 * span],
            spine_y,
            rib_pitch: rng.random_range(24.0..30.0),
            rib_phase: rng.random_range(0.0..1.0),
            carina_z: lung_base + 0.62 * span,
            texture,
            noise_sd: rng.random_range(10.0..22.0),
        }
    }

    fn texture(&self, p: [f64; 3]) -> f64 {
        self.texture
            .iter()
            .map(|(k, phase, amp)| amp * (k[0] * p[0] + k[1] * p[1] + k[2] * p[2] + phase).sin())
            .sum()
    }

    fn in_heart(&self, [x, y, z]: [f64; 3]) -> bool {
        let c = self.heart_centre;
        let s = self.heart_semi;
        ((x - c[0]) / s[0]).powi(2) + ((y - c[1]) / s[1]).powi(2) + ((z - c[2]) / s[2]).powi(2)
            <= 1.0
    }

    fn in_mediastinum(&self, [x, y, _]: [f64; 3]) -> bool {
        let [bx, by] = self.body;
        (x / (0.13 * bx)).powi(2) + ((y - 0.1 * by) / (0.62 * by)).powi(2) <= 1.0
    }

    fn aorta_centre(&self) -> [f64; 2] {
        [-24.0, self.spine_y + 22.0]
    }

    fn trachea_centre(&self) -> [f64; 2] {
        [0.0, self.spine_y + 42.0]
    }

    /// Lung membership at a point: inside one of the two lung shapes, above the diaphragm dome,
    /// below the apex, clear of heart, mediastinum, aorta and spine.
    fn in_lung(&self, p: [f64; 3]) -> bool {
        let [x, y, z] = p;
        let [cx, cy] = self.lung_centre;
        let [ax, ay] = self.lung_semi;
        let d2 = ((x.abs() - cx) / ax).powi(2) + ((y - cy) / ay).powi(2);
        if d2 > 1.0 {
            return false;
        }
        let floor = self.lung_base + self.dome * (1.0 - d2);
        let t = (z - floor) / (self.lung_top - floor);
        if !(0.0..=1.0).contains(&t) {
            return false;
        }
        let size = if t < 0.3 {
            1.0 - 0.2 * (0.3 - t) / 0.3
        } else {
            (1.0 - ((t - 0.3) / 0.7).powi(2)).sqrt()
        };
        let e = ((x.abs() - cx) / (ax * size)).powi(2) + ((y - cy) / (ay * size)).powi(2);
        if e > 1.0 || self.in_heart(p) || self.in_mediastinum(p) {
            return false;
        }
        let [axx, axy] = self.aorta_centre();
        let aorta = (x - axx).hypot(y - axy) <= 16.0;
        let spine = x.hypot(y - self.spine_y) <= 24.0;
        !(aorta || spine)
    }

    /// Tissue value (HU, before noise) of everything but tubes and tumours; second value: lung.
    fn tissue(&self, p: [f64; 3]) -> (f32, bool) {
        let [x, y, z] = p;
        let [bx, by] = self.body;
        let wobble = 1.0 + 0.03 * (z / 45.0).sin();
        let body = (x / (bx * wobble)).powi(2) + (y / (by * wobble)).powi(2);
        if body > 1.0 {
            return (hu::AIR, false);
        }
        let inner = (x / (bx * wobble - self.fat)).powi(2) + (y / (by * wobble - self.fat)).powi(2);
        if inner > 1.0 {
            return (hu::FAT, false);
        }
        // spine: vertebral body with cortex and discs, canal, posterior arch
        let r_body = x.hypot(y - self.spine_y);
        if r_body <= 17.0 {
            let disc = (z / 28.0 - (z / 28.0).floor()) < 0.15;
            let v = if disc {
                hu::DISC
            } else if r_body > 14.0 {
                hu::CORTICAL
            } else {
                hu::CANCELLOUS
            };
            return (v, false);
        }
        let r_canal = x.hypot(y - (self.spine_y - 25.0));
        if r_canal <= 7.0 {
            return (hu::CSF, false);
        }
        if r_canal <= 12.0 {
            return (hu::CORTICAL, false);
        }
        let in_thorax = z > self.lung_base - 30.0 && z < self.lung_top + 15.0;
        // ribs: a band just inside the muscle, sloping down toward the front, outside the pleura
        let (rx, ry) = (bx * wobble - self.fat - 7.0, by * wobble - self.fat - 7.0);
        let rho = (x / rx).hypot(y / ry);
        if in_thorax
            && (rho - 1.0).abs() * rx.min(ry) < 4.5
            && !(x.abs() < 22.0 && y > 0.0)
            && !self.in_lung(p)
        {
            let along = (z + 14.0 * (1.0 + y / ry)) / self.rib_pitch + self.rib_phase;
            if along - along.floor() < 0.32 {
                return (hu::RIB, false);
            }
        }
        // sternum
        if z > self.lung_base + 20.0
            && (x / 15.0).powi(2) + ((y - (by - self.fat - 14.0)) / 6.0).powi(2) <= 1.0
        {
            return (hu::RIB, false);
        }
        // trachea above the carina
        let [tx, ty] = self.trachea_centre();
        let r_trachea = (x - tx).hypot(y - ty);
        if z > self.carina_z && r_trachea <= 10.0 {
            return (if r_trachea <= 8.0 { hu::AIR } else { hu::SOFT }, false);
        }
        let [axx, axy] = self.aorta_centre();
        if in_thorax && (x - axx).hypot(y - axy) <= 12.0 {
            return (hu::BLOOD, false);
        }
        if self.in_lung(p) {
            let gravity = -40.0 * (y - self.lung_centre[1]) / self.lung_semi[1];
            return (
                (f64::from(hu::LUNG) + self.texture(p) + gravity) as f32,
                true,
            );
        }
        if self.in_heart(p) {
            return (hu::BLOOD, false);
        }
        if z < self.lung_base + self.dome * 0.5 && x > -0.3 * bx {
            return (hu::LIVER, false);
        }
        if self.in_mediastinum(p) {
            return (hu::SOFT, false);
        }
        (hu::MUSCLE, false)
    }
}

/// A canonical-grid volume under construction.
struct Canvas {
    shape: [usize; 3],
    spacing: [f64; 3],
    origin: [f64; 3],
    hu: Vec<f32>,
    lung: Vec<u8>,
    label: Vec<u8>,
}

impl Canvas {
    fn index(&self, [i, j, k]: [usize; 3]) -> usize {
        i + self.shape[0] * (j + self.shape[1] * k)
    }

    fn point(&self, ijk: [usize; 3]) -> [f64; 3] {
        [0, 1, 2].map(|d| self.origin[d] + ijk[d] as f64 * self.spacing[d])
    }

    /// Voxel index range covering `[lo, hi]` mm along axis `d`.
    fn range(&self, d: usize, lo: f64, hi: f64) -> std::ops::Range<usize> {
        let to_index = |v: f64| (v - self.origin[d]) / self.spacing[d];
        let a = to_index(lo).floor().max(0.0) as usize;
        let b = (to_index(hi).ceil() + 1.0).clamp(0.0, self.shape[d] as f64) as usize;
        a.min(b)..b
    }

    /// Calls `f` for each voxel within `radius` mm of the box around `centre`.
    fn for_each_near(
        &mut self,
        lo: [f64; 3],
        hi: [f64; 3],
        mut f: impl FnMut(&mut Canvas, [usize; 3], [f64; 3]),
    ) {
        let (ri, rj, rk) = (
            self.range(0, lo[0], hi[0]),
            self.range(1, lo[1], hi[1]),
            self.range(2, lo[2], hi[2]),
        );
        for k in rk {
            for j in rj.clone() {
                for i in ri.clone() {
                    let p = self.point([i, j, k]);
                    f(self, [i, j, k], p);
                }
            }
        }
    }

    /// Draws a tube (vessel or airway) between two points.
    fn tube(&mut self, a: [f64; 3], b: [f64; 3], radius: f64, kind: Tube) {
        let wall = if kind == Tube::Airway {
            (0.3 * radius).max(0.8)
        } else {
            0.0
        };
        let outer = radius + wall;
        let lo = [0, 1, 2].map(|d| a[d].min(b[d]) - outer);
        let hi = [0, 1, 2].map(|d| a[d].max(b[d]) + outer);
        self.for_each_near(lo, hi, |c, ijk, p| {
            let dist = segment_distance(p, a, b);
            if dist > outer {
                return;
            }
            let n = c.index(ijk);
            let confined = kind != Tube::MainBronchus;
            if confined && c.lung[n] == 0 {
                return;
            }
            c.hu[n] = match kind {
                Tube::Vessel => hu::VESSEL,
                _ if dist <= radius => hu::AIRWAY,
                _ => hu::SOFT,
            };
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tube {
    Vessel,
    Airway,
    MainBronchus,
}

fn segment_distance(p: [f64; 3], a: [f64; 3], b: [f64; 3]) -> f64 {
    let ab = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let ap = [p[0] - a[0], p[1] - a[1], p[2] - a[2]];
    let len2 = ab.iter().map(|v| v * v).sum::<f64>().max(1e-12);
    let t = ((ap[0] * ab[0] + ap[1] * ab[1] + ap[2] * ab[2]) / len2).clamp(0.0, 1.0);
    let d = [ap[0] - t * ab[0], ap[1] - t * ab[1], ap[2] - t * ab[2]];
    (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
}

fn random_unit(rng: &mut ChaCha8Rng) -> [f64; 3] {
    let z: f64 = rng.random_range(-1.0..1.0);
    let phi = rng.random_range(0.0..2.0 * PI);
    let r = (1.0 - z * z).sqrt();
    [r * phi.cos(), r * phi.sin(), z]
}

/// A branching tree of tubes from `start` heading along `dir`.
fn branch(
    canvas: &mut Canvas,
    rng: &mut ChaCha8Rng,
    start: [f64; 3],
    dir: [f64; 3],
    length: f64,
    radius: f64,
    kind: Tube,
) {
    if radius < 0.5 || length < 3.0 {
        return;
    }
    let end = [0, 1, 2].map(|d| start[d] + dir[d] * length);
    canvas.tube(start, end, radius, kind);
    for _ in 0..2 {
        let jitter = random_unit(rng);
        let mut next = [0, 1, 2].map(|d| dir[d] + 0.6 * jitter[d]);
        let n = next.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-9);
        next = next.map(|v| v / n);
        let next_length = length * rng.random_range(0.7..0.9);
        branch(canvas, rng, end, next, next_length, radius * 0.78, kind);
    }
}

/// Approximately standard normal (sum of four uniforms), from one hash.
fn gaussian(hash: u64) -> f32 {
    let sum: u64 = (0..4).map(|s| (hash >> (16 * s)) & 0xFFFF).sum();
    let mean = 2.0 * 65535.0;
    let sd = (4.0f64 / 12.0).sqrt() * 65535.0;
    ((sum as f64 - mean) / sd) as f32
}

/// Generates case number `index` (0-based) of the task described by `config`, which must be
/// valid ([`SynthConfig::validate`]).
pub fn generate_case(config: &SynthConfig, index: usize) -> Phantom {
    let case_seed = mix(config.seed ^ mix(index as u64 + 1));
    let mut rng = ChaCha8Rng::seed_from_u64(case_seed);
    let z_extent = rng.random_range(240.0..300.0);
    let anatomy = Anatomy::sample(&mut rng, z_extent);
    let fov = 2.0 * anatomy.body[0] * rng.random_range(1.12..1.25);
    let n = config.size;
    let shape = [n, n, config.slices];
    let spacing = [
        fov / n as f64,
        fov / n as f64,
        z_extent / config.slices as f64,
    ];
    let origin = [0, 1, 2].map(|d| -(shape[d] as f64 - 1.0) / 2.0 * spacing[d]);
    let plane = n * n;
    let total = plane * config.slices;
    let mut canvas = Canvas {
        shape,
        spacing,
        origin,
        hu: vec![0.0; total],
        lung: vec![0; total],
        label: vec![0; total],
    };

    // Tissues, slice by slice in parallel.
    canvas
        .hu
        .par_chunks_mut(plane)
        .zip(canvas.lung.par_chunks_mut(plane))
        .enumerate()
        .for_each(|(k, (hu_slice, lung_slice))| {
            for j in 0..n {
                for i in 0..n {
                    let p = [
                        origin[0] + i as f64 * spacing[0],
                        origin[1] + j as f64 * spacing[1],
                        origin[2] + k as f64 * spacing[2],
                    ];
                    let (v, lung) = anatomy.tissue(p);
                    hu_slice[i + n * j] = v;
                    lung_slice[i + n * j] = u8::from(lung);
                }
            }
        });

    // Main bronchi, then vessel and airway trees from each hilum.
    let [tx, ty] = anatomy.trachea_centre();
    let carina = [tx, ty, anatomy.carina_z];
    for side in [-1.0, 1.0] {
        let hilum = [
            side * anatomy.body[0] * 0.3,
            ty + 14.0,
            anatomy.carina_z - 30.0,
        ];
        canvas.tube(carina, hilum, 5.5, Tube::MainBronchus);
        let trees = [[Tube::Vessel; 10].as_slice(), &[Tube::Airway; 3]].concat();
        for kind in trees {
            let mut dir = random_unit(&mut rng);
            dir[0] = side * dir[0].abs().max(0.4);
            let radius = if kind == Tube::Vessel { 4.5 } else { 3.5 };
            branch(&mut canvas, &mut rng, hilum, dir, 45.0, radius, kind);
        }
    }

    let tumours = place_tumours(&mut canvas, &anatomy, &mut rng);

    // Noise and rounding to int16 HU.
    let noise_seed = mix(case_seed ^ 0x5EED);
    let sd = anatomy.noise_sd as f32;
    let ct: Vec<i16> = canvas
        .hu
        .par_iter()
        .enumerate()
        .map(|(n, &v)| {
            let noisy = v + sd * gaussian(mix(noise_seed ^ n as u64));
            noisy.round().clamp(-1024.0, 3071.0) as i16
        })
        .collect();

    let (ct, label, lung) = (
        fortran(shape, ct),
        fortran(shape, canvas.label),
        fortran(shape, canvas.lung),
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
    }
}

fn fortran<T>(shape: [usize; 3], values: Vec<T>) -> Array3<T> {
    Array3::from_shape_vec((shape[0], shape[1], shape[2]).f(), values).expect("sized to the shape")
}

/// Places 0-3 lobulated tumours inside the lungs (some pushed against the lung's edge) and marks
/// them in the label; tumour voxels are always lung voxels.
fn place_tumours(canvas: &mut Canvas, anatomy: &Anatomy, rng: &mut ChaCha8Rng) -> Vec<Tumour> {
    let count = match rng.random_range(0.0..1.0) {
        u if u < 0.15 => 0,
        u if u < 0.65 => 1,
        u if u < 0.9 => 2,
        _ => 3,
    };
    let mut tumours = Vec::new();
    for n in 0..count {
        let Some(mut centre) = random_lung_point(canvas, rng) else {
            break;
        };
        // A primary tumour of 12-40 mm, then satellite nodules log-uniform in 3-25 mm.
        let diameter = if n == 0 {
            rng.random_range(12.0..40.0)
        } else {
            (3.0f64.ln() + rng.random_range(0.0..1.0) * (25.0f64 / 3.0).ln()).exp()
        };
        let radius = diameter / 2.0;
        if rng.random_bool(0.4) {
            centre = push_to_lung_edge(canvas, anatomy, centre, radius, rng);
        }
        let semi = [0, 1, 2].map(|_| radius * rng.random_range(0.85..1.15));
        let lobes: Vec<([f64; 3], f64)> = (0..rng.random_range(2..5))
            .map(|_| {
                let u = random_unit(rng);
                (
                    [0, 1, 2].map(|d| centre[d] + 0.6 * radius * u[d]),
                    radius * rng.random_range(0.35..0.6),
                )
            })
            .collect();
        let reach = radius * 1.25;
        let lo = centre.map(|c| c - reach);
        let hi = centre.map(|c| c + reach);
        let mut voxels = 0;
        canvas.for_each_near(lo, hi, |c, ijk, p| {
            let core = (0..3)
                .map(|d| ((p[d] - centre[d]) / semi[d]).powi(2))
                .sum::<f64>()
                <= 1.0;
            let lobe = lobes
                .iter()
                .any(|(lc, lr)| (0..3).map(|d| (p[d] - lc[d]).powi(2)).sum::<f64>() <= lr * lr);
            let n = c.index(ijk);
            if (core || lobe) && c.lung[n] == 1 {
                c.hu[n] = hu::TUMOUR + (anatomy.texture(p) * 0.8) as f32;
                if c.label[n] == 0 {
                    voxels += 1;
                }
                c.label[n] = 1;
            }
        });
        if voxels > 0 {
            tumours.push(Tumour {
                centre_mm: centre,
                diameter_mm: diameter,
                voxels,
            });
        }
    }
    tumours
}

fn random_lung_point(canvas: &Canvas, rng: &mut ChaCha8Rng) -> Option<[f64; 3]> {
    for _ in 0..20_000 {
        let ijk = [0, 1, 2].map(|d| rng.random_range(0..canvas.shape[d]));
        if canvas.lung[canvas.index(ijk)] == 1 {
            return Some(canvas.point(ijk));
        }
    }
    None
}

/// Walks from `centre` in a random in-plane direction to the lung's edge and returns a centre
/// half a radius inside it, so the tumour abuts the chest wall or mediastinum.
fn push_to_lung_edge(
    canvas: &Canvas,
    anatomy: &Anatomy,
    centre: [f64; 3],
    radius: f64,
    rng: &mut ChaCha8Rng,
) -> [f64; 3] {
    let angle = rng.random_range(0.0..2.0 * PI);
    let dir = [angle.cos(), angle.sin(), 0.0];
    let step = canvas.spacing[0].min(canvas.spacing[1]) * 0.5;
    let mut p = centre;
    for _ in 0..2000 {
        let next = [0, 1, 2].map(|d| p[d] + dir[d] * step);
        if !anatomy.in_lung(next) {
            break;
        }
        p = next;
    }
    [0, 1, 2].map(|d| p[d] - dir[d] * radius * 0.5)
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
        .map_err(|inv| crate::Error::invalid(out, format!("synth.{}: {}", inv.key, inv.reason)))?;
    let start = Instant::now();
    let total = config.cases + config.test_cases;
    let bar = crate::cli::progress_bar(total as u64, "synth");
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
        "synth": config,
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
