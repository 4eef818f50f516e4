//! The canonical grid a case is drawn on, and what is drawn on it after the tissues: tubes with
//! partial volume (vessels, airways, bowel), trees of them that branch and thin by Murray's law,
//! the great vessels at the hila, the bowel's loops.

use std::f64::consts::PI;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::anatomy::{Anatomy, Region, hu};

/// A canonical-grid volume under construction (x fastest, then y, then z).
pub(crate) struct Canvas {
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    pub origin: [f64; 3],
    pub hu: Vec<f32>,
    /// [`Region`] of each voxel.
    pub region: Vec<u8>,
    pub label: Vec<u8>,
}

/// What a tube is, which decides where it may be drawn and what it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Tube {
    /// A lung vessel: blood, only inside the lungs.
    Vessel(f32),
    /// A great vessel at the hilum or in the mediastinum: blood, anywhere but bone.
    GreatVessel(f32),
    /// A bronchus inside the lungs: air in a soft-tissue wall.
    Airway,
    /// A main bronchus, from the carina to the hilum, anywhere.
    MainBronchus,
    /// A bowel loop holding gas, fluid or faeces (its lumen's HU), in the abdomen's free space.
    Bowel(f32),
}

impl Canvas {
    pub fn index(&self, [i, j, k]: [usize; 3]) -> usize {
        i + self.shape[0] * (j + self.shape[1] * k)
    }

    pub fn point(&self, ijk: [usize; 3]) -> [f64; 3] {
        [0, 1, 2].map(|d| self.origin[d] + ijk[d] as f64 * self.spacing[d])
    }

    pub fn region_at(&self, p: [f64; 3]) -> Option<u8> {
        let ijk = [0, 1, 2].map(|d| ((p[d] - self.origin[d]) / self.spacing[d]).round());
        if (0..3).any(|d| ijk[d] < 0.0 || ijk[d] >= self.shape[d] as f64) {
            return None;
        }
        Some(self.region[self.index(ijk.map(|v| v as usize))])
    }

    /// Voxel index range covering `[lo, hi]` mm along axis `d`.
    fn range(&self, d: usize, lo: f64, hi: f64) -> std::ops::Range<usize> {
        let to_index = |v: f64| (v - self.origin[d]) / self.spacing[d];
        let a = to_index(lo).floor().max(0.0) as usize;
        let b = (to_index(hi).ceil() + 1.0).clamp(0.0, self.shape[d] as f64) as usize;
        a.min(b)..b
    }

    /// Calls `f` for each voxel in the box `[lo, hi]` (mm).
    pub fn for_each_in(
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

    /// Draws a tube between two points. Its edge covers a voxel in part (the in-plane voxel is
    /// the unit of partial volume), so thin vessels come out faint, as on a scanner.
    pub fn tube(&mut self, a: [f64; 3], b: [f64; 3], radius: f64, kind: Tube) {
        let wall = match kind {
            Tube::Airway | Tube::MainBronchus => (0.3 * radius).max(0.8),
            Tube::Bowel(_) => 2.5,
            _ => 0.0,
        };
        let soft = 0.5 * self.spacing[0].min(self.spacing[1]);
        let outer = radius + wall;
        let lo = [0, 1, 2].map(|d| a[d].min(b[d]) - outer - soft);
        let hi = [0, 1, 2].map(|d| a[d].max(b[d]) + outer + soft);
        self.for_each_in(lo, hi, |c, ijk, p| {
            let dist = segment_distance(p, a, b);
            if dist > outer + soft {
                return;
            }
            let n = c.index(ijk);
            let region = c.region[n];
            let allowed = match kind {
                Tube::Vessel(_) | Tube::Airway => region == Region::Lung as u8,
                Tube::Bowel(_) => region == Region::Belly as u8,
                Tube::GreatVessel(_) => c.hu[n] < 200.0 || region == Region::Lung as u8,
                Tube::MainBronchus => true,
            };
            if !allowed {
                return;
            }
            // A tube thinner than the voxel fills it only in part.
            let thin = (outer / soft).min(1.0);
            let coverage = (((outer + soft - dist) / (2.0 * soft) * thin) as f32).clamp(0.0, 1.0);
            let target = match kind {
                Tube::Vessel(v) | Tube::GreatVessel(v) => v,
                Tube::Bowel(lumen) if dist <= radius => lumen,
                Tube::Airway | Tube::MainBronchus if dist <= radius => hu::AIRWAY,
                _ => hu::SOFT,
            };
            c.hu[n] += (target - c.hu[n]) * coverage;
        });
    }
}

pub(crate) fn segment_distance(p: [f64; 3], a: [f64; 3], b: [f64; 3]) -> f64 {
    let ab = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let ap = [p[0] - a[0], p[1] - a[1], p[2] - a[2]];
    let len2 = ab.iter().map(|v| v * v).sum::<f64>().max(1e-12);
    let t = ((ap[0] * ab[0] + ap[1] * ab[1] + ap[2] * ab[2]) / len2).clamp(0.0, 1.0);
    let d = [ap[0] - t * ab[0], ap[1] - t * ab[1], ap[2] - t * ab[2]];
    (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
}

pub(crate) fn random_unit(rng: &mut ChaCha8Rng) -> [f64; 3] {
    let z: f64 = rng.random_range(-1.0..1.0);
    let phi = rng.random_range(0.0..2.0 * PI);
    let r = (1.0 - z * z).sqrt();
    [r * phi.cos(), r * phi.sin(), z]
}

fn normalised(v: [f64; 3]) -> [f64; 3] {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
    v.map(|x| x / n)
}

fn along(p: [f64; 3], dir: [f64; 3], length: f64) -> [f64; 3] {
    [0, 1, 2].map(|d| p[d] + dir[d] * length)
}

fn mix(a: [f64; 3], b: [f64; 3], weight: f64) -> [f64; 3] {
    normalised([0, 1, 2].map(|d| a[d] + weight * b[d]))
}

/// A tree of tubes from `root` toward `target`: each segment bends a little, then splits in two
/// by Murray's law (r³ = r₁³ + r₂³), unevenly, the larger child going on toward the target and
/// the smaller one turning off; branches spread away from the root and stop below `min_radius`
/// or once they leave the lungs.
pub(crate) fn tree(
    canvas: &mut Canvas,
    rng: &mut ChaCha8Rng,
    root: [f64; 3],
    target: [f64; 3],
    radius: f64,
    min_radius: f64,
    kind: Tube,
) {
    let heading = normalised([0, 1, 2].map(|d| target[d] - root[d]));
    let mut stack = vec![(root, heading, radius)];
    while let Some((start, dir, r)) = stack.pop() {
        if r < min_radius {
            continue;
        }
        let length = r * rng.random_range(5.0..9.0);
        let first = mix(dir, random_unit(rng), 0.2);
        let middle = along(start, first, length / 2.0);
        let second = mix(first, random_unit(rng), 0.2);
        let end = along(middle, second, length / 2.0);
        canvas.tube(start, middle, r, kind);
        canvas.tube(middle, end, r * 0.97, kind);
        let in_lung = canvas.region_at(end) == Some(Region::Lung as u8);
        if !in_lung && r < 3.0 {
            continue;
        }
        let share: f64 = rng.random_range(0.5..0.85);
        let outward = normalised([0, 1, 2].map(|d| end[d] - root[d]));
        let main = mix(
            mix(second, heading, 0.3),
            random_unit(rng),
            0.25 * (1.0 - share),
        );
        let side = mix(mix(second, random_unit(rng), 1.0), outward, 0.4);
        stack.push((end, main, r * share.cbrt()));
        stack.push((end, side, r * (1.0 - share).cbrt()));
    }
}

/// The pulmonary arteries from the heart to each hilum, the veins back to it, the aortic arch:
/// the large vessels beside which central tumours lie.
pub(crate) fn great_vessels(canvas: &mut Canvas, anatomy: &Anatomy, hila: &[[f64; 3]; 2]) {
    let blood = Tube::GreatVessel(anatomy.blood);
    let [hx, hy, hz] = anatomy.heart_centre;
    let heart_top = hz + 0.8 * anatomy.heart_semi[2];
    let trunk = [hx + 10.0, hy + 10.0, heart_top - 10.0];
    let split = [-10.0, hy - 5.0, anatomy.carina_z - 12.0];
    canvas.tube(trunk, split, 13.0, blood);
    let atrium = [hx + 15.0, hy - 0.5 * anatomy.heart_semi[1], hz];
    for hilum in hila {
        canvas.tube(split, *hilum, 10.0, blood);
        for dz in [-18.0, -34.0] {
            let vein = [hilum[0] * 0.9, hilum[1] - 12.0, hilum[2] + dz];
            canvas.tube(vein, atrium, 7.0, blood);
        }
    }
    let [ax, ay] = anatomy.aorta_centre();
    let ascending = [12.0, hy + 5.0, heart_top - 15.0];
    let arch_top = [-8.0, 0.5 * (hy + ay), anatomy.carina_z + 28.0];
    let descending = [ax, ay, anatomy.carina_z + 10.0];
    canvas.tube(ascending, [12.0, hy, anatomy.carina_z + 15.0], 14.0, blood);
    canvas.tube([12.0, hy, anatomy.carina_z + 15.0], arch_top, 13.0, blood);
    canvas.tube(arch_top, descending, 12.0, blood);
}

/// The colon around the abdomen's edge and loops of small bowel inside it, holding gas, fluid or
/// faeces; only in the abdomen's free space.
pub(crate) fn bowel(canvas: &mut Canvas, anatomy: &Anatomy, rng: &mut ChaCha8Rng) {
    let [bx, by] = anatomy.body;
    let base = anatomy.lung_base;
    let content = |rng: &mut ChaCha8Rng, gas: f64| {
        if rng.random_bool(gas) {
            hu::AIR
        } else if rng.random_bool(0.5) {
            hu::FLUID
        } else {
            rng.random_range(-350.0..-150.0) // faeces: gas bubbles in stool
        }
    };
    let colon = [
        [0.55 * bx, -0.05 * by, base - 230.0],
        [0.58 * bx, 0.0, base - 70.0],
        [0.2 * bx, 0.5 * by, base - 60.0],
        [-0.3 * bx, 0.45 * by, base - 60.0],
        [-0.62 * bx, 0.05 * by, base - 50.0],
        [-0.6 * bx, -0.1 * by, base - 200.0],
        [-0.2 * bx, 0.1 * by, base - 260.0],
    ];
    let radius = rng.random_range(16.0..24.0);
    let jitter = |rng: &mut ChaCha8Rng, p: [f64; 3]| p.map(|v| v + rng.random_range(-10.0..10.0));
    let mut points: Vec<[f64; 3]> = colon.iter().map(|&p| jitter(rng, p)).collect();
    for pair in points.windows(2) {
        let lumen = content(rng, 0.6);
        canvas.tube(pair[0], pair[1], radius, Tube::Bowel(lumen));
    }
    // Small bowel: random walks in the middle of the abdomen.
    points.clear();
    for _ in 0..rng.random_range(5..10) {
        let mut p = [
            rng.random_range(-0.4..0.4) * bx,
            rng.random_range(-0.2..0.5) * by,
            base - rng.random_range(60.0..220.0),
        ];
        let lumen = content(rng, 0.3);
        let r = rng.random_range(9.0..14.0);
        let mut dir = random_unit(rng);
        for _ in 0..6 {
            dir = mix(dir, random_unit(rng), 0.9);
            let next = along(p, dir, rng.random_range(25.0..45.0));
            canvas.tube(p, next, r, Tube::Bowel(lumen));
            p = next;
        }
    }
}

/// The lung texture on the canvas grid: each wave sin(k·p + φ) is the imaginary part of a product
/// of one phasor per axis, so a voxel costs two multiplications per wave instead of a sine.
pub(crate) struct Texture {
    /// Per wave and axis, (cos, sin) of k_d · p_d at each index (the phase folded into z).
    phasors: [Vec<Vec<(f64, f64)>>; 3],
    amplitudes: Vec<f64>,
}

impl Texture {
    pub fn new(anatomy: &Anatomy, shape: [usize; 3], spacing: [f64; 3], origin: [f64; 3]) -> Self {
        let phasors = [0, 1, 2].map(|d| {
            anatomy
                .waves
                .iter()
                .map(|(k, phase, _)| {
                    (0..shape[d])
                        .map(|i| {
                            let angle = k[d] * (origin[d] + i as f64 * spacing[d])
                                + if d == 2 { *phase } else { 0.0 };
                            (angle.cos(), angle.sin())
                        })
                        .collect()
                })
                .collect()
        });
        Texture {
            phasors,
            amplitudes: anatomy.waves.iter().map(|w| w.2).collect(),
        }
    }

    /// Per wave, the phasor of row `j` of slice `k`.
    pub fn row(&self, j: usize, k: usize) -> Vec<(f64, f64)> {
        (0..self.amplitudes.len())
            .map(|w| {
                let (a, b) = self.phasors[1][w][j];
                let (c, d) = self.phasors[2][w][k];
                (a * c - b * d, a * d + b * c)
            })
            .collect()
    }

    /// The texture at column `i` of a row given by [`Texture::row`].
    pub fn at(&self, row: &[(f64, f64)], i: usize) -> f64 {
        row.iter()
            .zip(&self.amplitudes)
            .zip(&self.phasors[0])
            .map(|(((p, q), amp), x)| {
                let (c, d) = x[i];
                amp * (p * d + q * c)
            })
            .sum()
    }
}
