//! What grows in the lungs: the labelled tumours (lobulated, 3-40 mm, some against the chest wall,
//! the mediastinum or the diaphragm) and the opacities that are not tumour and are not labelled
//! (ground glass, scars and plate-like atelectasis, calcified granulomas; lymph nodes in the
//! mediastinum's fat), which a model must learn to leave alone.

use std::f64::consts::PI;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::Tumour;
use crate::anatomy::{Anatomy, Region};
use crate::canvas::{Canvas, random_unit, segment_distance};

/// Opacities that are not tumour, drawn before the tumours (which may then cover them).
pub(crate) fn distractors(canvas: &mut Canvas, rng: &mut ChaCha8Rng) {
    let lung = Region::Lung as u8;
    // Ground glass: hazy, -700 to -450 HU, soft-edged, 10-30 mm.
    for _ in 0..rng.random_range(0..3) {
        let Some(centre) = random_lung_point(canvas, rng) else {
            return;
        };
        let radius = rng.random_range(5.0..15.0);
        let level = rng.random_range(-700.0..-450.0);
        let reach = [radius; 3];
        let (lo, hi) = box_around(centre, reach);
        canvas.for_each_in(lo, hi, |c, ijk, p| {
            let n = c.index(ijk);
            let d = distance(p, centre) / radius;
            if d < 1.0 && c.region[n] == lung {
                let weight = (1.0 - d * d) as f32;
                c.hu[n] = c.hu[n].max(c.hu[n] + (level - c.hu[n]) * weight);
            }
        });
    }
    // Scars and plate-like atelectasis: thin bands of soft tissue, 15-50 mm long.
    for _ in 0..rng.random_range(0..3) {
        let Some(a) = random_lung_point(canvas, rng) else {
            return;
        };
        let dir = random_unit(rng);
        let length = rng.random_range(15.0..50.0);
        let b = [0, 1, 2].map(|d| a[d] + dir[d] * length);
        let thickness = rng.random_range(0.8..2.0);
        let width = rng.random_range(4.0..12.0);
        let across = random_unit(rng);
        let level = rng.random_range(-150.0..20.0);
        for s in 0..5 {
            let offset = (s as f64 / 4.0 - 0.5) * width;
            let shift = |p: [f64; 3]| [0, 1, 2].map(|d| p[d] + across[d] * offset);
            let (sa, sb) = (shift(a), shift(b));
            let (lo, hi) = box_span(sa, sb, thickness + 1.0);
            canvas.for_each_in(lo, hi, |c, ijk, p| {
                let n = c.index(ijk);
                if c.region[n] == lung && segment_distance(p, sa, sb) <= thickness {
                    c.hu[n] = level;
                }
            });
        }
    }
    // Lymph nodes in the mediastinum's fat, oval, 5-20 mm: soft tissue, like a tumour, but not one.
    for _ in 0..rng.random_range(2..8) {
        let Some(centre) = random_point_in(canvas, Region::Mediastinum, rng) else {
            break;
        };
        let semi = [0, 1, 2].map(|_| rng.random_range(2.5..10.0));
        let (lo, hi) = box_around(centre, semi);
        canvas.for_each_in(lo, hi, |c, ijk, p| {
            let n = c.index(ijk);
            let r2: f64 = (0..3).map(|d| ((p[d] - centre[d]) / semi[d]).powi(2)).sum();
            if r2 <= 1.0 && c.region[n] == Region::Mediastinum as u8 && c.hu[n] < -30.0 {
                c.hu[n] = crate::anatomy::hu::LYMPH_NODE;
            }
        });
    }
    // Calcified granulomas: small and very dense.
    for _ in 0..rng.random_range(0..3) {
        let Some(centre) = random_lung_point(canvas, rng) else {
            return;
        };
        let radius = rng.random_range(1.0..2.5);
        let level = rng.random_range(300.0..700.0);
        let (lo, hi) = box_around(centre, [radius; 3]);
        canvas.for_each_in(lo, hi, |c, ijk, p| {
            let n = c.index(ijk);
            if c.region[n] == lung && distance(p, centre) <= radius {
                c.hu[n] = level;
            }
        });
    }
}

/// Places 0-3 lobulated tumours inside the lungs (some pushed against the lung's wall or down to
/// its floor) and marks them in the label; tumour voxels are always lung voxels.
pub(crate) fn place_tumours(
    canvas: &mut Canvas,
    anatomy: &Anatomy,
    rng: &mut ChaCha8Rng,
) -> Vec<Tumour> {
    let count = match rng.random_range(0.0..1.0) {
        u if u < 0.15 => 0,
        u if u < 0.6 => 1,
        u if u < 0.85 => 2,
        _ => 3,
    };
    let mut tumours = Vec::new();
    for n in 0..count {
        let Some(mut centre) = random_lung_point(canvas, rng) else {
            break;
        };
        // A primary tumour (or, in one case of ten, a nodule under 12 mm), then satellite
        // nodules log-uniform in 3-25 mm.
        let diameter = if n == 0 && rng.random_bool(0.9) {
            rng.random_range(12.0..40.0)
        } else if n == 0 {
            rng.random_range(5.0..12.0)
        } else {
            (3.0f64.ln() + rng.random_range(0.0..1.0) * (25.0f64 / 3.0).ln()).exp()
        };
        let radius = diameter / 2.0;
        match rng.random_range(0.0..1.0) {
            u if u < 0.35 => centre = push_to_lung_edge(canvas, anatomy, centre, radius, rng),
            u if u < 0.5 => centre = push_to_lung_floor(anatomy, centre, radius),
            _ => {}
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
        let (lo, hi) = box_around(centre, [radius * 1.25; 3]);
        let mut voxels = 0;
        let lung = Region::Lung as u8;
        canvas.for_each_in(lo, hi, |c, ijk, p| {
            let core = (0..3)
                .map(|d| ((p[d] - centre[d]) / semi[d]).powi(2))
                .sum::<f64>()
                <= 1.0;
            let lobe = lobes
                .iter()
                .any(|(lc, lr)| (0..3).map(|d| (p[d] - lc[d]).powi(2)).sum::<f64>() <= lr * lr);
            let n = c.index(ijk);
            if (core || lobe) && c.region[n] == lung {
                c.hu[n] = crate::anatomy::hu::TUMOUR + (anatomy.texture(p) * 0.8) as f32;
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

fn distance(p: [f64; 3], q: [f64; 3]) -> f64 {
    (0..3).map(|d| (p[d] - q[d]).powi(2)).sum::<f64>().sqrt()
}

fn box_around(centre: [f64; 3], reach: [f64; 3]) -> ([f64; 3], [f64; 3]) {
    (
        [0, 1, 2].map(|d| centre[d] - reach[d]),
        [0, 1, 2].map(|d| centre[d] + reach[d]),
    )
}

fn box_span(a: [f64; 3], b: [f64; 3], margin: f64) -> ([f64; 3], [f64; 3]) {
    (
        [0, 1, 2].map(|d| a[d].min(b[d]) - margin),
        [0, 1, 2].map(|d| a[d].max(b[d]) + margin),
    )
}

pub(crate) fn random_lung_point(canvas: &Canvas, rng: &mut ChaCha8Rng) -> Option<[f64; 3]> {
    random_point_in(canvas, Region::Lung, rng)
}

fn random_point_in(canvas: &Canvas, region: Region, rng: &mut ChaCha8Rng) -> Option<[f64; 3]> {
    for _ in 0..20_000 {
        let ijk = [0, 1, 2].map(|d| rng.random_range(0..canvas.shape[d]));
        if canvas.region[canvas.index(ijk)] == region as u8 {
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

/// The centre moved down so the tumour sits on the diaphragm's dome, where lung meets liver or
/// stomach.
fn push_to_lung_floor(anatomy: &Anatomy, centre: [f64; 3], radius: f64) -> [f64; 3] {
    let [x, y, _] = centre;
    [x, y, anatomy.floor(x, y) + 0.5 * radius]
}
