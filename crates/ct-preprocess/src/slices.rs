//! One axial slice at a time: crop decision, normalisation, resizing.

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::F32;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use ndarray::{ArrayView1, ArrayView2, ArrayView3, Axis, s};
use serde::{Deserialize, Serialize};

use crate::settings::{CropMode, Normalisation, PreprocessConfig};

/// How many slices were dropped at each end, and why it differs from what was asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Crop {
    /// Slices the settings ask to drop: `[inferior, superior]`.
    pub requested: [usize; 2],
    /// Slices dropped: `[inferior, superior]`.
    pub applied: [usize; 2],
    /// Set when the crop was reduced (to keep tumour slices, or most of a short volume) or could
    /// not be decided (no lungs found).
    pub reason: Option<String>,
}

impl Crop {
    /// The canonical axial slices kept of `slices`: `[first, end)`.
    pub fn kept(&self, slices: usize) -> [usize; 2] {
        [self.applied[0], slices - self.applied[1]]
    }
}

/// Decides the crop of a volume of `slices` axial slices `spacing_mm` apart. With
/// `crop = "inferior"` the crop never removes more than `max_crop_fraction` of the volume; with
/// `crop = "lungs"` it keeps `lung_extent` (the lung mask's `[first, end)`; None when no lung
/// was found: then every slice is kept) plus `lung_margin_mm` at each end. Either way it never
/// removes a slice of `tumour_extent` (`[first, end)` of the label's tumour slices).
pub fn decide_crop(
    config: &PreprocessConfig,
    slices: usize,
    spacing_mm: f64,
    tumour_extent: Option<[usize; 2]>,
    lung_extent: Option<[usize; 2]>,
) -> Crop {
    let mut reasons = Vec::new();
    let (requested, mut applied) = match config.crop {
        CropMode::Inferior => {
            let requested = match config.crop_mm {
                Some(mm) => (mm / spacing_mm).round() as usize,
                None => config.crop_slices,
            };
            let cap = (config.max_crop_fraction * slices as f64).floor() as usize;
            let mut applied = requested;
            if applied > cap {
                reasons.push(format!(
                    "at most {:.0}% of the volume's {slices} slices may be dropped",
                    config.max_crop_fraction * 100.0
                ));
                applied = cap;
            }
            ([requested, 0], [applied, 0])
        }
        CropMode::Lungs => match lung_extent {
            Some([first, end]) => {
                let margin = (config.lung_margin_mm / spacing_mm).ceil() as usize;
                let requested = [
                    first.saturating_sub(margin),
                    slices - (end + margin).min(slices),
                ];
                (requested, requested)
            }
            None => {
                reasons.push("no lungs found: every slice kept".to_string());
                ([0, 0], [0, 0])
            }
        },
    };
    if let Some([first, end]) = tumour_extent {
        if applied[0] > first {
            reasons.push(format!("tumour starts at slice {first}"));
            applied[0] = first;
        }
        if slices - applied[1] < end {
            reasons.push(format!("tumour ends at slice {}", end - 1));
            applied[1] = slices - end;
        }
    }
    Crop {
        requested,
        applied,
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
    }
}

/// The part of every canonical axial slice the network sees: columns `x` (canonical x, patient
/// left → right) and rows `y` (canonical y, posterior → anterior), each `[first, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaneBox {
    pub x: [usize; 2],
    pub y: [usize; 2],
}

impl PlaneBox {
    /// The whole slice of a `[width, height]` canonical plane.
    pub fn whole([width, height]: [usize; 2]) -> PlaneBox {
        PlaneBox {
            x: [0, width],
            y: [0, height],
        }
    }

    /// `[width, height]` in voxels.
    pub fn extent(&self) -> [usize; 2] {
        [self.x[1] - self.x[0], self.y[1] - self.y[0]]
    }

    /// The box of every axial slice of a canonical `[x, y, k]` view.
    pub fn of<'a, T>(&self, canonical: ArrayView3<'a, T>) -> ArrayView3<'a, T> {
        canonical.slice_move(s![self.x[0]..self.x[1], self.y[0]..self.y[1], ..])
    }

    /// The smallest box holding both.
    fn union(self, other: PlaneBox) -> PlaneBox {
        PlaneBox {
            x: [self.x[0].min(other.x[0]), self.x[1].max(other.x[1])],
            y: [self.y[0].min(other.y[0]), self.y[1].max(other.y[1])],
        }
    }
}

/// Decides the in-plane crop of a canonical `[width, height]` plane with voxel `spacing_mm`
/// (`[x, y]`). With `in_plane_crop` it is the lungs' box (`lung_box`, over every slice) grown by
/// `lung_margin_mm`, made square in millimetres (so the network's pixels stay square) and never
/// leaving out any of `tumour_box`; the whole plane without the option or without lungs.
pub fn decide_plane_box(
    config: &PreprocessConfig,
    [width, height]: [usize; 2],
    spacing_mm: [f64; 2],
    lung_box: Option<PlaneBox>,
    tumour_box: Option<PlaneBox>,
) -> PlaneBox {
    let whole = PlaneBox::whole([width, height]);
    let Some(lungs) = lung_box.filter(|_| config.in_plane_crop) else {
        return whole;
    };
    let grow = |[lo, hi]: [usize; 2], spacing: f64, n: usize| {
        let margin = (config.lung_margin_mm / spacing).ceil() as usize;
        [lo.saturating_sub(margin), (hi + margin).min(n)]
    };
    let grown = PlaneBox {
        x: grow(lungs.x, spacing_mm[0], width),
        y: grow(lungs.y, spacing_mm[1], height),
    };
    let wanted = tumour_box.map_or(grown, |tumour| grown.union(tumour));
    let [wx, wy] = wanted.extent();
    let side_mm = (wx as f64 * spacing_mm[0]).max(wy as f64 * spacing_mm[1]);
    // Grown evenly about its centre to the square's side, then moved inside the plane: a range at
    // least as long as the one it holds still holds it after the move.
    let square = |[lo, hi]: [usize; 2], spacing: f64, n: usize| {
        let side = ((side_mm / spacing).round() as usize).clamp(hi - lo, n);
        let start = (lo + hi).saturating_sub(side) / 2;
        let start = start.min(n - side);
        [start, start + side]
    };
    PlaneBox {
        x: square(wanted.x, spacing_mm[0], width),
        y: square(wanted.y, spacing_mm[1], height),
    }
}

/// One row of a canonical axial slice as it lies in memory. Rows are contiguous, forwards or
/// backwards, in every axis-aligned file: reading them as slices is several times faster than an
/// element-wise walk through a strided view.
enum Row<'a, T> {
    Forwards(&'a [T]),
    Backwards(&'a [T]),
    Strided(ArrayView1<'a, T>),
}

impl<'a, T> Row<'a, T> {
    fn of(mut row: ArrayView1<'a, T>) -> Row<'a, T> {
        if let Some(run) = row.to_slice() {
            return Row::Forwards(run);
        }
        if row.strides() == [-1] {
            row.invert_axis(Axis(0));
            if let Some(run) = row.to_slice() {
                return Row::Backwards(run);
            }
        }
        Row::Strided(row)
    }
}

/// Axial slice `k` of a canonical view as a row-major image, with `f` applied to each value as it
/// is copied: rows run along canonical y (posterior → anterior), columns along canonical x
/// (patient left → right).
fn axial_slice_map<T: Copy, U>(
    canonical: ArrayView3<T>,
    k: usize,
    f: impl Fn(T) -> U,
) -> (Vec<U>, usize, usize) {
    let plane: ArrayView2<T> = canonical.index_axis(Axis(2), k);
    let (width, height) = plane.dim();
    let mut out = Vec::with_capacity(width * height);
    for row in plane.axis_iter(Axis(1)) {
        match Row::of(row) {
            Row::Forwards(run) => out.extend(run.iter().map(|&v| f(v))),
            Row::Backwards(run) => out.extend(run.iter().rev().map(|&v| f(v))),
            Row::Strided(row) => out.extend(row.iter().map(|&v| f(v))),
        }
    }
    (out, height, width)
}

/// Axial slice `k` of a canonical CT view in HU as the network sees it: normalised, then resized
/// to `size` x `size` (row-major, laid out as [`axial_slice_map`]). Training data and prediction both
/// come through here, so they cannot drift apart.
pub fn network_input(
    canonical: ArrayView3<f32>,
    k: usize,
    size: usize,
    normalisation: Normalisation,
) -> Vec<f32> {
    let (normalised, height, width) = axial_slice_map(canonical, k, |v| normalisation.apply(v));
    resize_bilinear(&normalised, [height, width], [size, size])
}

/// Bilinear resize of a row-major `[height, width]` image to `[height, width]` `to`, pixel centres
/// aligned (OpenCV's INTER_LINEAR, no antialiasing filter).
pub fn resize_bilinear(src: &[f32], from: [usize; 2], to: [usize; 2]) -> Vec<f32> {
    let [height, width] = from;
    let src = TypedImageRef::<F32>::new(width as u32, height as u32, bytemuck::cast_slice(src))
        .expect("buffer holds width x height pixels");
    let mut out = vec![0f32; to[0] * to[1]];
    let mut dst = TypedImage::<F32>::from_pixels_slice(
        to[1] as u32,
        to[0] as u32,
        bytemuck::cast_slice_mut(&mut out),
    )
    .expect("buffer holds the output's pixels");
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Interpolation(FilterType::Bilinear));
    Resizer::new()
        .resize_typed(&src, &mut dst, &options)
        .expect("same pixel type");
    out
}

/// Axial slice `k` of a canonical label view resized to `size` x `size` by nearest neighbour,
/// laid out as [`axial_slice_map`]. Each output pixel takes the input pixel under its centre
/// (fast_image_resize's and OpenCV's INTER_NEAREST rule), read straight from the view: only the
/// pixels kept are touched.
pub fn nearest_axial_slice(canonical: ArrayView3<u8>, k: usize, size: usize) -> Vec<u8> {
    let plane: ArrayView2<u8> = canonical.index_axis(Axis(2), k);
    let (width, height) = plane.dim();
    let centres = |n: usize| -> Vec<usize> {
        let scale = n as f64 / size as f64;
        (0..size)
            .map(|o| (((o as f64 + 0.5) * scale) as usize).min(n - 1))
            .collect()
    };
    let (columns, rows) = (centres(width), centres(height));
    let mut out = Vec::with_capacity(size * size);
    for &y in &rows {
        match Row::of(plane.index_axis(Axis(1), y)) {
            Row::Forwards(run) => out.extend(columns.iter().map(|&x| run[x])),
            Row::Backwards(run) => out.extend(columns.iter().map(|&x| run[width - 1 - x])),
            Row::Strided(row) => out.extend(columns.iter().map(|&x| row[x])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ShapeBuilder;

    fn config(crop_slices: usize, crop_mm: Option<f64>) -> PreprocessConfig {
        PreprocessConfig {
            crop_slices,
            crop_mm,
            ..PreprocessConfig::default()
        }
    }

    #[test]
    fn the_reference_crop_applies_to_a_long_volume_without_early_tumour() {
        let crop = decide_crop(&config(30, None), 300, 1.25, Some([150, 160]), None);
        assert_eq!(
            (crop.requested, crop.applied, crop.reason.clone()),
            ([30, 0], [30, 0], None)
        );
        assert_eq!(crop.kept(300), [30, 300]);
    }

    #[test]
    fn the_crop_never_removes_tumour_slices_or_most_of_a_short_volume() {
        let crop = decide_crop(&config(30, None), 300, 1.25, Some([12, 20]), None);
        assert_eq!(crop.applied, [12, 0]);
        assert!(crop.reason.unwrap().contains("tumour starts at slice 12"));
        // 48 slices of 5 mm, as lung1 from shared/data/real: 30% of 48 is 14.
        let crop = decide_crop(&config(30, None), 48, 5.0, Some([32, 35]), None);
        assert_eq!(crop.applied, [14, 0]);
        assert!(crop.reason.unwrap().contains("48 slices"));
        let crop = decide_crop(&config(30, Some(40.0)), 48, 5.0, None, None);
        assert_eq!((crop.requested, crop.applied), ([8, 0], [8, 0]));
    }

    #[test]
    fn the_lung_crop_keeps_the_lungs_with_a_margin_and_every_tumour_slice() {
        let lungs = PreprocessConfig {
            crop: CropMode::Lungs,
            lung_margin_mm: 10.0,
            ..PreprocessConfig::default()
        };
        // Lungs on slices 100..220 of 2 mm: 5 slices of margin at each end; no fraction cap.
        let crop = decide_crop(&lungs, 400, 2.0, None, Some([100, 220]));
        assert_eq!((crop.applied, crop.reason.clone()), ([95, 175], None));
        assert_eq!(crop.kept(400), [95, 225]);
        // A tumour reaching below the margin keeps its slices.
        let crop = decide_crop(&lungs, 400, 2.0, Some([90, 120]), Some([100, 220]));
        assert_eq!(crop.kept(400), [90, 225]);
        assert!(crop.reason.unwrap().contains("tumour starts at slice 90"));
        let crop = decide_crop(&lungs, 400, 2.0, Some([200, 240]), Some([100, 220]));
        assert_eq!(crop.kept(400), [95, 240]);
        // Margins stop at the volume's ends; no lungs keeps everything.
        assert_eq!(
            decide_crop(&lungs, 50, 2.0, None, Some([2, 49])).kept(50),
            [0, 50]
        );
        let crop = decide_crop(&lungs, 50, 2.0, None, None);
        assert_eq!(crop.kept(50), [0, 50]);
        assert!(crop.reason.unwrap().contains("no lungs found"));
    }

    #[test]
    fn the_plane_box_holds_the_lungs_with_a_margin_and_every_tumour_voxel_and_is_square_in_mm() {
        let settings = PreprocessConfig {
            crop: CropMode::Lungs,
            in_plane_crop: true,
            lung_margin_mm: 10.0,
            ..PreprocessConfig::default()
        };
        let lungs = PlaneBox {
            x: [60, 200],
            y: [80, 160],
        };
        // 1 x 0.5 mm pixels: 10 mm is 10 columns, 20 rows; 160 mm square is 160 x 320.
        let plane = decide_plane_box(&settings, [256, 400], [1.0, 0.5], Some(lungs), None);
        assert_eq!(
            plane,
            PlaneBox {
                x: [50, 210],
                y: [0, 320]
            }
        );
        // Near the edge the square moves inside the plane; a tumour outside the lungs' box
        // widens it.
        let tumour = PlaneBox {
            x: [20, 30],
            y: [100, 110],
        };
        let plane = decide_plane_box(&settings, [256, 256], [1.0, 1.0], Some(lungs), Some(tumour));
        assert_eq!(
            plane,
            PlaneBox {
                x: [20, 210],
                y: [25, 215]
            }
        );
        // A square larger than the plane is the plane; no lungs or no option: the whole plane.
        let wide = PlaneBox {
            x: [0, 256],
            y: [100, 120],
        };
        let whole = PlaneBox::whole([256, 200]);
        assert_eq!(
            decide_plane_box(&settings, [256, 200], [1.0, 1.0], Some(wide), None),
            whole
        );
        assert_eq!(
            decide_plane_box(&settings, [256, 200], [1.0, 1.0], None, None),
            whole
        );
        let off = PreprocessConfig {
            in_plane_crop: false,
            ..settings
        };
        assert_eq!(
            decide_plane_box(&off, [256, 200], [1.0, 1.0], Some(lungs), Some(tumour)),
            whole
        );
    }

    #[test]
    fn resizing_keeps_constant_images_constant_and_masks_binary() {
        let src = vec![0.25f32; 7 * 5];
        assert!(
            resize_bilinear(&src, [7, 5], [16, 16])
                .iter()
                .all(|v| (v - 0.25).abs() < 1e-6)
        );
        // Canonical [x, y, k]: one labelled voxel at x = 3, y = 5 of slice 1.
        let mut mask = ndarray::Array3::<u8>::zeros((8, 8, 2));
        mask[[3, 5, 1]] = 1;
        let up = nearest_axial_slice(mask.view(), 1, 16);
        let ones: Vec<usize> = (0..up.len()).filter(|&n| up[n] == 1).collect();
        // Rows along y, columns along x: the 2x2 block at rows 10-11, columns 6-7.
        assert_eq!(
            ones,
            vec![10 * 16 + 6, 10 * 16 + 7, 11 * 16 + 6, 11 * 16 + 7]
        );
        assert!(up.iter().all(|v| *v <= 1));
        // Downsizing keeps the pixel under each output centre: 8 -> 4 samples x, y in {1, 3, 5, 7}.
        let down = nearest_axial_slice(mask.view(), 1, 4);
        assert_eq!(down.iter().map(|&v| usize::from(v)).sum::<usize>(), 1);
        assert_eq!(down[2 * 4 + 1], 1);
        assert_eq!(nearest_axial_slice(mask.view(), 0, 4), vec![0; 16]);
        // Contiguous rows (file order) and reversed ones (a flipped axis) give what strided
        // indexing gives.
        let labels = ndarray::Array3::from_shape_fn((9, 7, 2), |(x, y, k)| {
            u8::from((x * 3 + y * 5 + k) % 4 == 0)
        });
        let mut file_order = ndarray::Array3::zeros((9, 7, 2).f());
        file_order.assign(&labels);
        for size in [4, 5, 16] {
            let strided = nearest_axial_slice(labels.view(), 1, size);
            assert_eq!(nearest_axial_slice(file_order.view(), 1, size), strided);
            let (mut flipped_strided, mut flipped_runs) = (labels.view(), file_order.view());
            flipped_strided.invert_axis(Axis(0));
            flipped_runs.invert_axis(Axis(0));
            assert_eq!(
                nearest_axial_slice(flipped_runs, 1, size),
                nearest_axial_slice(flipped_strided, 1, size)
            );
        }
    }
}
