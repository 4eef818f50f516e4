//! One axial slice at a time: crop decision, normalisation, resizing.

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::{F32, U8};
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use ndarray::{ArrayView2, ArrayView3, Axis};
use serde::{Deserialize, Serialize};

use crate::settings::{Normalisation, PreprocessConfig};

/// How many slices were dropped at the inferior end, and why it differs from what was asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Crop {
    pub requested: usize,
    pub applied: usize,
    /// Set when the crop was reduced: to keep tumour slices, or to keep most of a short volume.
    pub reason: Option<String>,
}

/// Decides the crop for a volume of `slices` axial slices `spacing_mm` apart. The crop is reduced
/// so that it never removes more than `max_crop_fraction` of the volume, nor any slice at or
/// above `first_tumour_slice`.
pub fn decide_crop(
    config: &PreprocessConfig,
    slices: usize,
    spacing_mm: f64,
    first_tumour_slice: Option<usize>,
) -> Crop {
    let requested = match config.crop_mm {
        Some(mm) => (mm / spacing_mm).round() as usize,
        None => config.crop_slices,
    };
    let mut applied = requested;
    let mut reasons = Vec::new();
    let cap = (config.max_crop_fraction * slices as f64).floor() as usize;
    if applied > cap {
        reasons.push(format!(
            "at most {:.0}% of the volume's {slices} slices may be dropped",
            config.max_crop_fraction * 100.0
        ));
        applied = cap;
    }
    if let Some(first) = first_tumour_slice
        && applied > first
    {
        reasons.push(format!("tumour starts at slice {first}"));
        applied = first;
    }
    Crop {
        requested,
        applied,
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
    }
}

/// Axial slice `k` of a canonical view as a row-major image: rows run along canonical y
/// (posterior → anterior), columns along canonical x (patient left → right). Copied row by row:
/// each row is a 1D (possibly reversed) run through the volume.
pub fn axial_slice<T: Copy>(canonical: ArrayView3<T>, k: usize) -> (Vec<T>, usize, usize) {
    let plane: ArrayView2<T> = canonical.index_axis(Axis(2), k);
    let (width, height) = plane.dim();
    let mut out = Vec::with_capacity(width * height);
    for mut row in plane.axis_iter(Axis(1)) {
        // Rows are contiguous, forwards or backwards, in every axis-aligned file: copy them as
        // slices (an element-wise walk through a strided view is several times slower).
        if let Some(run) = row.as_slice() {
            out.extend_from_slice(run);
        } else if row.strides() == [-1] {
            row.invert_axis(Axis(0));
            out.extend(row.as_slice().expect("reversed unit stride").iter().rev());
        } else {
            out.extend(row.iter().copied());
        }
    }
    (out, height, width)
}

/// One canonical axial slice in HU (row-major `height` x `width`, see [`axial_slice`]) as the
/// network sees it: normalised, then resized to `size` x `size`. Training data and prediction both
/// come through here, so they cannot drift apart.
pub fn network_input(
    mut hu: Vec<f32>,
    height: usize,
    width: usize,
    size: usize,
    normalisation: Normalisation,
) -> Vec<f32> {
    for v in &mut hu {
        *v = normalisation.apply(*v);
    }
    resize_bilinear(&hu, [height, width], [size, size])
}

/// Bilinear resize of a row-major `[height, width]` image to `[height, width]` `to`, pixel centres
/// aligned (OpenCV's INTER_LINEAR, no antialiasing filter).
pub fn resize_bilinear(src: &[f32], from: [usize; 2], to: [usize; 2]) -> Vec<f32> {
    let [height, width] = from;
    let src = TypedImageRef::<F32>::new(width as u32, height as u32, bytemuck::cast_slice(src))
        .expect("buffer holds width x height pixels");
    let mut dst = TypedImage::<F32>::new(to[1] as u32, to[0] as u32);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Interpolation(FilterType::Bilinear));
    Resizer::new()
        .resize_typed(&src, &mut dst, &options)
        .expect("same pixel type");
    bytemuck::cast_slice(dst.pixels()).to_vec()
}

/// Nearest-neighbour resize taking each output pixel from the input pixel under its centre.
pub fn resize_nearest(src: &[u8], height: usize, width: usize, size: usize) -> Vec<u8> {
    let src = TypedImageRef::<U8>::new(width as u32, height as u32, bytemuck::cast_slice(src))
        .expect("buffer holds width x height pixels");
    let mut dst = TypedImage::<U8>::new(size as u32, size as u32);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Nearest);
    Resizer::new()
        .resize_typed(&src, &mut dst, &options)
        .expect("same pixel type");
    bytemuck::cast_slice(dst.pixels()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(crop_slices: usize, crop_mm: Option<f64>) -> PreprocessConfig {
        PreprocessConfig {
            crop_slices,
            crop_mm,
            ..PreprocessConfig::default()
        }
    }

    #[test]
    fn the_reference_crop_applies_to_a_long_volume_without_early_tumour() {
        let crop = decide_crop(&config(30, None), 300, 1.25, Some(150));
        assert_eq!((crop.requested, crop.applied, crop.reason), (30, 30, None));
    }

    #[test]
    fn the_crop_never_removes_tumour_slices_or_most_of_a_short_volume() {
        let crop = decide_crop(&config(30, None), 300, 1.25, Some(12));
        assert_eq!(crop.applied, 12);
        assert!(crop.reason.unwrap().contains("tumour starts at slice 12"));
        // 48 slices of 5 mm, as lung1 from shared/data/real: 30% of 48 is 14.
        let crop = decide_crop(&config(30, None), 48, 5.0, Some(32));
        assert_eq!(crop.applied, 14);
        assert!(crop.reason.unwrap().contains("48 slices"));
        let crop = decide_crop(&config(30, Some(40.0)), 48, 5.0, None);
        assert_eq!((crop.requested, crop.applied), (8, 8));
    }

    #[test]
    fn resizing_keeps_constant_images_constant_and_masks_binary() {
        let src = vec![0.25f32; 7 * 5];
        assert!(
            resize_bilinear(&src, [7, 5], [16, 16])
                .iter()
                .all(|v| (v - 0.25).abs() < 1e-6)
        );
        let mut mask = vec![0u8; 8 * 8];
        mask[3 * 8 + 3] = 1;
        let out = resize_nearest(&mask, 8, 8, 16);
        assert_eq!(out.iter().filter(|v| **v == 1).count(), 4);
        assert!(out.iter().all(|v| *v <= 1));
    }
}
