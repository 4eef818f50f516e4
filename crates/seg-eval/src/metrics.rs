//! Per-case metrics of a predicted mask against its reference, in the CT's own voxel grid and mm:
//! overlap (Dice, IoU, precision, recall), HD95, volumes, and lesion-wise detection.

use ndarray::{Array3, ArrayView3};
use serde::{Deserialize, Serialize};

use ct_preprocess::mask::{Components, bounding_box, squared_distance_field};

/// The figures of one case. `None` where a figure is undefined: Dice and IoU when both masks are
/// empty (nnU-Net leaves such a case out of the mean; an empty reference with a non-empty
/// prediction scores 0), precision without prediction, recall without reference, HD95 unless
/// both masks have voxels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseMetrics {
    pub case: String,
    pub dice: Option<f64>,
    pub iou: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub hd95_mm: Option<f64>,
    pub reference_ml: f64,
    pub predicted_ml: f64,
    /// Connected components (26-connectivity) of the reference.
    pub reference_lesions: usize,
    /// Reference lesions that some predicted voxel overlaps.
    pub detected_lesions: usize,
    /// Predicted components that overlap no reference voxel.
    pub false_positive_lesions: usize,
}

impl CaseMetrics {
    pub fn missed_lesions(&self) -> usize {
        self.reference_lesions - self.detected_lesions
    }
}

/// Compares `predicted` with `reference` (same shape, voxels `spacing` mm apart).
pub fn case_metrics(
    case: &str,
    predicted: ArrayView3<u8>,
    reference: ArrayView3<u8>,
    spacing: [f64; 3],
) -> CaseMetrics {
    assert_eq!(predicted.shape(), reference.shape(), "masks of one shape");
    let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
    ndarray::Zip::from(&predicted)
        .and(&reference)
        .for_each(|&p, &r| match (p != 0, r != 0) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        });
    let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
    let voxel_ml = spacing.iter().product::<f64>() / 1000.0;
    let reference_components = Components::of(reference);
    let predicted_components = Components::of(predicted);
    let detected = reference_components
        .overlapping(predicted)
        .iter()
        .filter(|h| **h)
        .count();
    let false_positives = predicted_components
        .overlapping(reference)
        .iter()
        .filter(|h| !**h)
        .count();
    CaseMetrics {
        case: case.to_string(),
        dice: ratio(2 * tp, 2 * tp + fp + fn_),
        iou: ratio(tp, tp + fp + fn_),
        precision: ratio(tp, tp + fp),
        recall: ratio(tp, tp + fn_),
        hd95_mm: hd95(predicted, reference, spacing),
        reference_ml: (tp + fn_) as f64 * voxel_ml,
        predicted_ml: (tp + fp) as f64 * voxel_ml,
        reference_lesions: reference_components.count(),
        detected_lesions: detected,
        false_positive_lesions: false_positives,
    }
}

/// The 95th percentile Hausdorff distance in mm: the larger of the two directed 95th percentiles
/// of surface-to-surface distances (as MONAI computes it). Surface voxels are the mask's voxels
/// with a face neighbour outside it or on the volume's edge. None unless both masks have voxels.
pub fn hd95(a: ArrayView3<u8>, b: ArrayView3<u8>, spacing: [f64; 3]) -> Option<f64> {
    let surface_a = surface(a);
    let surface_b = surface(b);
    let union = ndarray::Zip::from(&surface_a)
        .and(&surface_b)
        .map_collect(|&x, &y| x | y);
    // Distances between points of the two surfaces are the same inside the box that holds both.
    let (origin, extent) = bounding_box(union.view())?;
    let cut = |s: &Array3<u8>| {
        s.slice(ndarray::s![
            origin[0]..origin[0] + extent[0],
            origin[1]..origin[1] + extent[1],
            origin[2]..origin[2] + extent[2]
        ])
        .to_owned()
    };
    let (surface_a, surface_b) = (cut(&surface_a), cut(&surface_b));
    if !surface_a.iter().any(|v| *v != 0) || !surface_b.iter().any(|v| *v != 0) {
        return None;
    }
    let directed = |from: &Array3<u8>, to: &Array3<u8>| {
        let field = squared_distance_field(to.view(), spacing);
        let mut distances: Vec<f64> =
            ndarray::Zip::from(from)
                .and(&field)
                .fold(Vec::new(), |mut out, &f, &d| {
                    if f != 0 {
                        out.push(d.sqrt());
                    }
                    out
                });
        percentile(&mut distances, 95.0)
    };
    Some(directed(&surface_a, &surface_b).max(directed(&surface_b, &surface_a)))
}

/// 1 on the mask's surface voxels (see [`hd95`]), 0 elsewhere.
fn surface(mask: ArrayView3<u8>) -> Array3<u8> {
    let shape = mask.dim();
    let mut out = Array3::<u8>::zeros(shape);
    let (nx, ny, nz) = shape;
    for ((i, j, k), &v) in mask.indexed_iter() {
        if v == 0 {
            continue;
        }
        let edge = i == 0 || j == 0 || k == 0 || i + 1 == nx || j + 1 == ny || k + 1 == nz;
        let exposed = edge
            || mask[[i - 1, j, k]] == 0
            || mask[[i + 1, j, k]] == 0
            || mask[[i, j - 1, k]] == 0
            || mask[[i, j + 1, k]] == 0
            || mask[[i, j, k - 1]] == 0
            || mask[[i, j, k + 1]] == 0;
        if exposed {
            out[[i, j, k]] = 1;
        }
    }
    out
}

/// The `p`-th percentile with linear interpolation between order statistics (numpy's default).
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (values.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    values[lo] + (values[hi] - values[lo]) * (rank - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        assert_eq!(percentile(&mut [3.0, 1.0, 2.0, 4.0], 50.0), 2.5);
        assert!(
            (percentile(&mut (0..=10).map(f64::from).collect::<Vec<_>>(), 95.0) - 9.5).abs()
                < 1e-12
        );
    }
}
