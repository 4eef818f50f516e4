//! The lung mask: where this task's tumours can be. Classical (thresholds, connected components,
//! hole filling, per-slice convex hulls; no network), so that training (the crop) and prediction
//! (the crop and the anatomical filter) get the same mask from the same function. It works on the
//! canonical view (any axis order) and on a working grid of about 2 mm (any spacing, and the same
//! rules in mm whatever the resolution), and assumes nothing about the field of view: neck to
//! pelvis, chest only, or cropped so tight that the lungs touch the image's edge.
//!
//! Per axial slice of the working grid: air is below [`AIR_HU`]; the body is the largest region of
//! tissue; air reached from the image's edge without crossing the body (outside the patient, or
//! between the arms and the chest) is outside. In 3D, the remaining air regions are lung only when
//! large, wide on some slice and not pure gas (stomach, bowel, trachea). Each slice of the lungs is
//! then filled (vessels, tumours inside) and closed by its convex hull, kept within
//! [`HULL_REACH_MM`] of lung air, so that a tumour against the chest wall, the mediastinum or the
//! diaphragm lies inside.

use ndarray::{Array3, ArrayView3, Axis, ShapeBuilder};
use rayon::prelude::*;

use crate::mask::{Components, bounding_box, squared_distance_field};
use crate::slices::PlaneBox;

/// HU below which a voxel is air (lung parenchyma is about -850, fat -100, soft tissue above 0).
pub const AIR_HU: f32 = -400.0;
/// Edge (mm) the working grid's voxels approach: coarser grids are faster, finer ones follow
/// thinner lung tips.
const WORK_MM: f64 = 2.0;
/// A slice whose largest tissue region is smaller (cm²) has no body in it.
const MIN_BODY_CM2: f64 = 20.0;
/// An air region inside the body is lung only if it holds at least this much (ml)...
const MIN_LUNG_ML: f64 = 20.0;
/// ...covers at least this much (cm²) of one axial slice (trachea, bronchi, bowel loops are
/// narrower)...
const MIN_LUNG_SLICE_CM2: f64 = 10.0;
/// ...and its lower quartile is above this (HU): gas in the stomach, the bowel and the airways is
/// pure air (-1000), lung parenchyma is not (a quartile of about -900; above -970 even in severe
/// emphysema). A quartile rather than the median, because at 5 mm voxels the partial-volume rim
/// of a gas pocket (between -1000 and tissue) can be half of it.
const GAS_QUARTILE_HU: f32 = -985.0;
/// Holes of a lung slice up to this size (cm²) are filled: vessels and tumours of up to 6 cm, not
/// the dome of the diaphragm that the lung base rings on its lowest slices.
const MAX_HOLE_CM2: f64 = 30.0;
/// How far (mm) a lung slice's convex hull may reach beyond its air: enough to take in a tumour
/// of 3 cm against the mediastinum or the diaphragm, not the heart behind it.
pub const HULL_REACH_MM: f64 = 15.0;
/// How far (mm) the mask is grown before a predicted tumour must touch it (seg-eval's lung
/// constraint): slack for a tumour that bulges past the lung's outline.
pub const CONSTRAINT_MARGIN_MM: f64 = 5.0;
/// The lungs' axial extent counts the slices holding at least this much lung (cm²): not the
/// trachea running up the neck (2-3 cm²), which the airways join to the lungs.
pub const MIN_EXTENT_CM2: f64 = 5.0;
/// Gaps along z up to this long (mm) between lung voxels are closed: a tumour against the chest
/// wall takes the lung's outline away on its own slices, not above and below it.
pub const Z_GAP_MM: f64 = 40.0;

/// The lungs of one CT, in canonical (RAS) voxel order.
#[derive(Debug, Clone)]
pub struct LungMask {
    grid: Grid,
    /// The lungs on the working grid, Fortran order.
    work: Vec<u8>,
    /// Lung regions found (usually 2, or 1 where the lungs meet in front of the heart).
    pub regions: usize,
    /// Lung volume (ml).
    pub volume_ml: f64,
    /// Canonical axial slices holding at least [`MIN_EXTENT_CM2`] of lung: `[first, end)`; None
    /// when no lung was found.
    pub axial_extent: Option<[usize; 2]>,
}

impl LungMask {
    /// The mask at the CT's canonical resolution: 1 inside the lungs.
    pub fn to_canonical(&self) -> Array3<u8> {
        self.grid.upsample(&self.work)
    }

    /// The mask grown by `mm` in every direction, at the CT's canonical resolution.
    pub fn dilated(&self, mm: f64) -> Array3<u8> {
        let [nx, ny, nz] = self.grid.shape;
        let targets =
            Array3::from_shape_vec((nx, ny, nz).f(), self.work.clone()).expect("sized to the grid");
        let field = squared_distance_field(targets.view(), self.grid.spacing);
        let reach = mm * mm;
        let grown: Vec<u8> = field.t().iter().map(|&d| u8::from(d <= reach)).collect();
        self.grid.upsample(&grown)
    }

    pub fn is_empty(&self) -> bool {
        self.axial_extent.is_none()
    }

    /// The smallest box of canonical columns and rows that holds the lungs on every slice; None
    /// when no lung was found.
    pub fn plane_extent(&self) -> Option<PlaneBox> {
        let [nx, ny, nz] = self.grid.shape;
        let work = ArrayView3::from_shape((nx, ny, nz).f(), &self.work).expect("sized to the grid");
        let (corner, extent) = bounding_box(work)?;
        let [fx, fy, _] = self.grid.factor;
        let [w, h, _] = self.grid.full;
        Some(PlaneBox {
            x: [corner[0] * fx, ((corner[0] + extent[0]) * fx).min(w)],
            y: [corner[1] * fy, ((corner[1] + extent[1]) * fy).min(h)],
        })
    }
}

/// The lung mask of a canonical CT view in HU with voxel `spacing` (mm).
pub fn lung_mask(ct: ArrayView3<f32>, spacing: [f64; 3]) -> LungMask {
    let (w, h, d) = ct.dim();
    let grid = Grid::new([w, h, d], spacing);
    let [nx, ny, nz] = grid.shape;
    let plane = nx * ny;
    let hu = grid.block_means(ct);
    let pixel_cm2 = grid.spacing[0] * grid.spacing[1] / 100.0;

    let mut air = vec![0u8; plane * nz];
    let midlines: Vec<Option<f64>> = air
        .par_chunks_mut(plane)
        .zip(hu.par_chunks(plane))
        .map(|(out, slice)| internal_air(slice, [nx, ny], pixel_cm2, out))
        .collect();
    let lungs = select_lungs(&air, &hu, &grid);
    drop(air);

    let mut work = vec![0u8; plane * nz];
    let reach = [
        HULL_REACH_MM / grid.spacing[0],
        HULL_REACH_MM / grid.spacing[1],
    ];
    work.par_chunks_mut(plane)
        .zip(lungs.voxels.par_chunks(plane))
        .zip(&midlines)
        .for_each(|((out, slice), midline)| {
            close_slice(
                slice,
                [nx, ny],
                midline.unwrap_or(nx as f64 / 2.0),
                reach,
                MAX_HOLE_CM2 / pixel_cm2,
                out,
            )
        });

    close_along_z(&mut work, &grid);

    let voxel_ml = grid.spacing.iter().product::<f64>() / 1000.0;
    let count = work.iter().filter(|v| **v != 0).count();
    let min_pixels = (MIN_EXTENT_CM2 / pixel_cm2).ceil() as usize;
    let slices_with_lung: Vec<usize> = (0..nz)
        .filter(|&k| {
            work[k * plane..(k + 1) * plane]
                .iter()
                .filter(|v| **v != 0)
                .count()
                >= min_pixels.max(1)
        })
        .collect();
    let axial_extent = match (slices_with_lung.first(), slices_with_lung.last()) {
        (Some(&first), Some(&last)) => {
            let fz = grid.factor[2];
            Some([first * fz, ((last + 1) * fz).min(d)])
        }
        _ => None,
    };
    LungMask {
        grid,
        work,
        regions: lungs.regions,
        volume_ml: count as f64 * voxel_ml,
        axial_extent,
    }
}

/// The working grid: blocks of `factor` canonical voxels.
#[derive(Debug, Clone)]
struct Grid {
    factor: [usize; 3],
    /// The canonical CT's shape.
    full: [usize; 3],
    shape: [usize; 3],
    spacing: [f64; 3],
}

impl Grid {
    fn new(full: [usize; 3], spacing: [f64; 3]) -> Grid {
        let factor = [0, 1, 2].map(|a| ((WORK_MM / spacing[a]).round() as usize).clamp(1, 8));
        Grid {
            factor,
            full,
            shape: [0, 1, 2].map(|a| full[a].div_ceil(factor[a])),
            spacing: [0, 1, 2].map(|a| spacing[a] * factor[a] as f64),
        }
    }

    /// Mean HU of each block, Fortran order.
    fn block_means(&self, ct: ArrayView3<f32>) -> Vec<f32> {
        let [nx, ny, nz] = self.shape;
        let [fx, fy, fz] = self.factor;
        let [w, h, d] = self.full;
        let column: Vec<usize> = (0..w).map(|i| i / fx).collect();
        let mut out = vec![0f32; nx * ny * nz];
        out.par_chunks_mut(nx * ny)
            .enumerate()
            .for_each(|(kk, block_plane)| {
                let mut sums = vec![0f64; nx * ny];
                let mut counts = vec![0u32; nx * ny];
                for k in kk * fz..((kk + 1) * fz).min(d) {
                    let slice = ct.index_axis(Axis(2), k);
                    for j in 0..h {
                        let row_start = (j / fy) * nx;
                        for (&v, &i) in slice.index_axis(Axis(1), j).iter().zip(&column) {
                            sums[row_start + i] += f64::from(v);
                            counts[row_start + i] += 1;
                        }
                    }
                }
                for ((out, sum), count) in block_plane.iter_mut().zip(sums).zip(counts) {
                    *out = (sum / f64::from(count.max(1))) as f32;
                }
            });
        out
    }

    /// A working-grid mask (Fortran order) at the canonical resolution, each voxel taking its
    /// block's value.
    fn upsample(&self, work: &[u8]) -> Array3<u8> {
        let [nx, ny, _] = self.shape;
        let [fx, fy, fz] = self.factor;
        let [w, h, d] = self.full;
        let mut out = vec![0u8; w * h * d];
        out.par_chunks_mut(w * h)
            .enumerate()
            .for_each(|(k, plane)| {
                let block = &work[(k / fz) * nx * ny..(k / fz + 1) * nx * ny];
                for j in 0..h {
                    let row = &block[(j / fy) * nx..(j / fy + 1) * nx];
                    for (i, v) in plane[j * w..(j + 1) * w].iter_mut().enumerate() {
                        *v = row[i / fx];
                    }
                }
            });
        Array3::from_shape_vec((w, h, d).f(), out).expect("sized to the canonical shape")
    }
}

/// Marks in `out` the air of one slice that lies inside the body; returns the body's centre
/// column (None without a body).
fn internal_air(hu: &[f32], [nx, ny]: [usize; 2], pixel_cm2: f64, out: &mut [u8]) -> Option<f64> {
    let tissue: Vec<bool> = hu.iter().map(|&v| v >= AIR_HU).collect();
    let (labels, sizes) = label_2d(&tissue, [nx, ny], false);
    let (largest, &size) = sizes.iter().enumerate().max_by_key(|(_, s)| **s)?;
    if (size as f64) * pixel_cm2 < MIN_BODY_CM2 {
        return None;
    }
    let body: Vec<bool> = labels.iter().map(|&l| l == largest as u32 + 1).collect();
    // Outside: the regions around the body (whatever they hold: air, the table, an arm) that
    // reach the image's edge, unless their air is lung. A field of view cut tight through the
    // chest leaves lungs at the edge, inside the body's hull; the world outside is pure air, or
    // lies mostly beyond the hull (under the table, air reads -950 on some scanners).
    let mut hull = vec![false; nx * ny];
    fill_hull(&body, [nx, ny], &mut hull);
    let not_body: Vec<bool> = body.iter().map(|b| !b).collect();
    let (regions, region_sizes) = label_2d(&not_body, [nx, ny], false);
    let mut at_edge = vec![false; region_sizes.len() + 1];
    for n in edge_pixels([nx, ny]) {
        at_edge[regions[n] as usize] = true;
    }
    let mut air_hu: Vec<Vec<f32>> = vec![Vec::new(); region_sizes.len() + 1];
    let mut beyond_hull = vec![0usize; region_sizes.len() + 1];
    for n in 0..nx * ny {
        let r = regions[n] as usize;
        if at_edge[r] && !tissue[n] {
            air_hu[r].push(hu[n]);
            beyond_hull[r] += usize::from(!hull[n]);
        }
    }
    let outside: Vec<bool> = air_hu
        .iter_mut()
        .enumerate()
        .map(|(r, values)| {
            r != 0 && at_edge[r] && (2 * beyond_hull[r] >= values.len() || !is_lung_like(values))
        })
        .collect();
    for n in 0..nx * ny {
        out[n] = u8::from(!tissue[n] && !outside[regions[n] as usize]);
    }
    let columns: usize = (0..nx * ny).filter(|&n| body[n]).map(|n| n % nx).sum();
    Some(columns as f64 / size as f64)
}

/// Whether air of these HU values is lung parenchyma rather than gas: its lower quartile is
/// above [`GAS_QUARTILE_HU`].
fn is_lung_like(values: &mut [f32]) -> bool {
    if values.is_empty() {
        return false;
    }
    let quartile = values.len() / 4;
    *values.select_nth_unstable_by(quartile, f32::total_cmp).1 > GAS_QUARTILE_HU
}

/// The air regions of `air` (working grid, Fortran order) that are lungs, and how many there are.
struct Lungs {
    voxels: Vec<u8>,
    regions: usize,
}

fn select_lungs(air: &[u8], hu: &[f32], grid: &Grid) -> Lungs {
    let [nx, ny, nz] = grid.shape;
    let view = ArrayView3::from_shape((nx, ny, nz).f(), air).expect("sized to the grid");
    let components = Components::of(view);
    let voxel_ml = grid.spacing.iter().product::<f64>() / 1000.0;
    let pixel_cm2 = grid.spacing[0] * grid.spacing[1] / 100.0;
    // Statistics only of the components large enough to be a lung.
    let mut candidate = vec![usize::MAX; components.count()];
    let mut stats = Vec::new();
    for (n, &size) in components.sizes().iter().enumerate() {
        if size as f64 * voxel_ml >= MIN_LUNG_ML {
            candidate[n] = stats.len();
            stats.push(RegionStats::new(nz));
        }
    }
    components.for_each_voxel(|[i, j, k], label| {
        let c = candidate[label as usize - 1];
        if c != usize::MAX {
            stats[c].add(hu[i + nx * (j + ny * k)], k);
        }
    });
    let is_lung: Vec<bool> = candidate
        .iter()
        .map(|&c| {
            c != usize::MAX && {
                let s = &stats[c];
                let widest = s.area.iter().copied().max().unwrap_or(0) as f64 * pixel_cm2;
                widest >= MIN_LUNG_SLICE_CM2 && s.lower_quartile() > GAS_QUARTILE_HU
            }
        })
        .collect();
    let mut voxels = vec![0u8; air.len()];
    components.for_each_voxel(|[i, j, k], label| {
        if is_lung[label as usize - 1] {
            voxels[i + nx * (j + ny * k)] = 1;
        }
    });
    // Gas that a thin or blurred diaphragm joins to the lungs in 3D (the stomach, the colon),
    // and the trachea: pure air on the slices where it lies apart from the lungs.
    let plane = nx * ny;
    voxels
        .par_chunks_mut(plane)
        .zip(hu.par_chunks(plane))
        .for_each(|(slice, values)| drop_gas_regions(slice, values, [nx, ny]));
    Lungs {
        voxels,
        regions: is_lung.iter().filter(|l| **l).count(),
    }
}

/// Clears the regions of one slice's lung voxels whose air is gas, not parenchyma.
fn drop_gas_regions(slice: &mut [u8], hu: &[f32], [nx, ny]: [usize; 2]) {
    if slice.iter().all(|v| *v == 0) {
        return;
    }
    let lung: Vec<bool> = slice.iter().map(|v| *v != 0).collect();
    let (labels, sizes) = label_2d(&lung, [nx, ny], true);
    let mut values: Vec<Vec<f32>> = sizes.iter().map(|&n| Vec::with_capacity(n)).collect();
    for (n, &label) in labels.iter().enumerate() {
        if label != 0 {
            values[label as usize - 1].push(hu[n]);
        }
    }
    let gas: Vec<bool> = values.iter_mut().map(|v| !is_lung_like(v)).collect();
    for (v, &label) in slice.iter_mut().zip(&labels) {
        if label != 0 && gas[label as usize - 1] {
            *v = 0;
        }
    }
}

/// A candidate region's HU histogram (5 HU bins from -1024 up to [`AIR_HU`]) and area per slice.
struct RegionStats {
    histogram: Vec<u64>,
    area: Vec<u32>,
}

const HISTOGRAM_LOW: f32 = -1024.0;
const HISTOGRAM_BIN: f32 = 5.0;

impl RegionStats {
    fn new(slices: usize) -> RegionStats {
        let bins = ((AIR_HU - HISTOGRAM_LOW) / HISTOGRAM_BIN).ceil() as usize + 1;
        RegionStats {
            histogram: vec![0; bins],
            area: vec![0; slices],
        }
    }

    fn add(&mut self, hu: f32, k: usize) {
        let bin = ((hu - HISTOGRAM_LOW) / HISTOGRAM_BIN).max(0.0) as usize;
        let last = self.histogram.len() - 1;
        self.histogram[bin.min(last)] += 1;
        self.area[k] += 1;
    }

    /// The lower quartile's HU, to the bin's centre.
    fn lower_quartile(&self) -> f32 {
        let total: u64 = self.histogram.iter().sum();
        let mut seen = 0;
        for (bin, &n) in self.histogram.iter().enumerate() {
            seen += n;
            if 4 * seen >= total {
                return HISTOGRAM_LOW + (bin as f32 + 0.5) * HISTOGRAM_BIN;
            }
        }
        AIR_HU
    }
}

/// One slice of the lungs, filled and closed: holes (vessels, tumours) up to `max_hole_pixels`
/// filled, then each region on
/// each side of the body's `midline` column replaced by its convex hull where the hull lies within
/// `reach` pixels (per axis) of lung air. The sides apart: where airways join the two lungs on a
/// slice, one hull would span the mediastinum.
fn close_slice(
    lungs: &[u8],
    [nx, ny]: [usize; 2],
    midline: f64,
    reach: [f64; 2],
    max_hole_pixels: f64,
    out: &mut [u8],
) {
    if lungs.iter().all(|v| *v == 0) {
        return;
    }
    let lung: Vec<bool> = lungs.iter().map(|v| *v != 0).collect();
    let mut filled = vec![false; nx * ny];
    let mut hull = vec![false; nx * ny];
    for right in [false, true] {
        let side: Vec<bool> = (0..nx * ny)
            .map(|n| lung[n] && (((n % nx) as f64) > midline) == right)
            .collect();
        let (labels, sizes) = label_2d(&side, [nx, ny], true);
        for region in 1..=sizes.len() as u32 {
            // Holes of one region only (vessels, tumours): what the lungs and the image's edge
            // enclose together (the heart, in a tight field of view) is not lung.
            let pixels: Vec<bool> = labels.iter().map(|&l| l == region).collect();
            let outside: Vec<bool> = pixels.iter().map(|p| !p).collect();
            let (holes, hole_sizes) = label_2d(&outside, [nx, ny], false);
            let mut fill: Vec<bool> = std::iter::once(false)
                .chain(
                    hole_sizes
                        .iter()
                        .map(|&size| size as f64 <= max_hole_pixels),
                )
                .collect();
            for n in edge_pixels([nx, ny]) {
                fill[holes[n] as usize] = false;
            }
            for n in 0..nx * ny {
                filled[n] |= pixels[n] || fill[holes[n] as usize];
            }
            fill_hull(&pixels, [nx, ny], &mut hull);
        }
        // A closing of the side by the reach: where a tumour against the mediastinum cuts the
        // lung's tip off from the rest on its slices, the gap between them is bridged.
        for (n, c) in closing(&side, [nx, ny], reach).into_iter().enumerate() {
            filled[n] |= c;
        }
    }
    // Distance in pixels of the unit grid (the reach per axis makes it mm).
    let targets = Array3::from_shape_vec((nx, ny, 1).f(), lungs.to_vec()).expect("one slice");
    let field = squared_distance_field(targets.view(), [1.0 / reach[0], 1.0 / reach[1], 1.0]);
    for (n, v) in out.iter_mut().enumerate() {
        let (i, j) = (n % nx, n / nx);
        *v = u8::from(filled[n] || (hull[n] && field[[i, j, 0]] <= 1.0));
    }
}

/// The morphological closing of a slice's `pixels` by a disc of `reach` pixels per axis: dilated,
/// then eroded by the same.
fn closing(pixels: &[bool], [nx, ny]: [usize; 2], reach: [f64; 2]) -> Vec<bool> {
    let unit = [1.0 / reach[0], 1.0 / reach[1], 1.0];
    let mask =
        |values: Vec<u8>| Array3::from_shape_vec((nx, ny, 1).f(), values).expect("one slice");
    let to_set = squared_distance_field(
        mask(pixels.iter().map(|&p| u8::from(p)).collect()).view(),
        unit,
    );
    let outside_dilated: Vec<u8> = (0..nx * ny)
        .map(|n| u8::from(to_set[[n % nx, n / nx, 0]] > 1.0))
        .collect();
    if outside_dilated.iter().all(|v| *v == 0) {
        return vec![true; nx * ny];
    }
    let to_outside = squared_distance_field(mask(outside_dilated).view(), unit);
    (0..nx * ny)
        .map(|n| to_outside[[n % nx, n / nx, 0]] > 1.0)
        .collect()
}

/// Closes the gaps of up to [`Z_GAP_MM`] between lung voxels along each column of the grid.
fn close_along_z(work: &mut [u8], grid: &Grid) {
    let [nx, ny, nz] = grid.shape;
    let plane = nx * ny;
    let longest = (Z_GAP_MM / grid.spacing[2]).floor() as usize;
    let mut fill = Vec::new();
    for n in 0..plane {
        let mut last: Option<usize> = None;
        for k in 0..nz {
            if work[n + plane * k] == 0 {
                continue;
            }
            if let Some(previous) = last
                && k - previous > 1
                && k - previous - 1 <= longest
            {
                fill.extend((previous + 1..k).map(|g| n + plane * g));
            }
            last = Some(k);
        }
    }
    for n in fill {
        work[n] = 1;
    }
}

/// 4-connected (or 8-connected) regions of a slice: labels (0 = not set, else 1-based) and sizes.
fn label_2d(pixels: &[bool], [nx, ny]: [usize; 2], eight: bool) -> (Vec<u32>, Vec<usize>) {
    let mut labels = vec![0u32; pixels.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..pixels.len() {
        if !pixels[start] || labels[start] != 0 {
            continue;
        }
        let label = sizes.len() as u32 + 1;
        let mut size = 0;
        labels[start] = label;
        stack.push(start);
        while let Some(n) = stack.pop() {
            size += 1;
            for m in neighbours(n, [nx, ny], eight) {
                if pixels[m] && labels[m] == 0 {
                    labels[m] = label;
                    stack.push(m);
                }
            }
        }
        sizes.push(size);
    }
    (labels, sizes)
}

/// The in-slice neighbours of pixel `n` (row-major over x, then y).
fn neighbours(n: usize, [nx, ny]: [usize; 2], eight: bool) -> impl Iterator<Item = usize> {
    let (i, j) = ((n % nx) as isize, (n / nx) as isize);
    const FOUR: [(isize, isize); 4] = [(-1, 0), (1, 0), (0, -1), (0, 1)];
    const DIAGONAL: [(isize, isize); 4] = [(-1, -1), (1, -1), (-1, 1), (1, 1)];
    let extra: &[(isize, isize)] = if eight { &DIAGONAL } else { &[] };
    FOUR.iter()
        .chain(extra)
        .map(move |&(di, dj)| (i + di, j + dj))
        .filter(move |&(a, b)| a >= 0 && b >= 0 && a < nx as isize && b < ny as isize)
        .map(move |(a, b)| a as usize + nx * b as usize)
}

fn edge_pixels([nx, ny]: [usize; 2]) -> impl Iterator<Item = usize> {
    let rows = (0..nx).flat_map(move |i| [i, i + nx * (ny - 1)]);
    let columns = (0..ny).flat_map(move |j| [nx * j, nx - 1 + nx * j]);
    rows.chain(columns)
}

/// Sets in `out` every pixel inside the convex hull of the set pixels of `pixels`.
fn fill_hull(pixels: &[bool], [nx, ny]: [usize; 2], out: &mut [bool]) {
    // The hull of a region is the hull of each row's first and last pixel.
    let mut points: Vec<[i64; 2]> = Vec::new();
    for j in 0..ny {
        let row = &pixels[j * nx..(j + 1) * nx];
        if let (Some(first), Some(last)) =
            (row.iter().position(|p| *p), row.iter().rposition(|p| *p))
        {
            points.push([first as i64, j as i64]);
            points.push([last as i64, j as i64]);
        }
    }
    let hull = convex_hull(points);
    let (Some(low), Some(high)) = (
        hull.iter().map(|p| p[1]).min(),
        hull.iter().map(|p| p[1]).max(),
    ) else {
        return;
    };
    for y in low..=high {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (e, a) in hull.iter().enumerate() {
            let b = hull[(e + 1) % hull.len()];
            if (a[1] - y) * (b[1] - y) > 0 {
                continue; // the edge does not reach this row
            }
            let xs = if a[1] == b[1] {
                [a[0] as f64, b[0] as f64]
            } else {
                let x =
                    a[0] as f64 + (y - a[1]) as f64 * (b[0] - a[0]) as f64 / (b[1] - a[1]) as f64;
                [x, x]
            };
            lo = lo.min(xs[0].min(xs[1]));
            hi = hi.max(xs[0].max(xs[1]));
        }
        let (from, to) = ((lo - 1e-9).ceil() as i64, (hi + 1e-9).floor() as i64);
        for x in from.max(0)..=to.min(nx as i64 - 1) {
            out[x as usize + nx * y as usize] = true;
        }
    }
}

/// Andrew's monotone chain: the hull's vertices in order, collinear points dropped.
fn convex_hull(mut points: Vec<[i64; 2]>) -> Vec<[i64; 2]> {
    points.sort_unstable();
    points.dedup();
    if points.len() < 3 {
        return points;
    }
    let cross = |o: [i64; 2], a: [i64; 2], b: [i64; 2]| {
        (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    };
    let mut hull: Vec<[i64; 2]> = Vec::with_capacity(2 * points.len());
    for pass in 0..2 {
        let start = hull.len();
        let ordered: Box<dyn Iterator<Item = &[i64; 2]>> = if pass == 0 {
            Box::new(points.iter())
        } else {
            Box::new(points.iter().rev())
        };
        for &p in ordered {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop(); // the last point starts the other chain
    }
    hull
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hull_of_an_l_shape_fills_its_corner_and_nothing_outside() {
        let [nx, ny] = [8, 8];
        let mut pixels = vec![false; nx * ny];
        for j in 1..7 {
            pixels[1 + nx * j] = true; // a column at x = 1, y = 1..6
        }
        for i in 1..7 {
            pixels[i + nx * 6] = true; // a row at y = 6, x = 1..6
        }
        let mut out = vec![false; nx * ny];
        fill_hull(&pixels, [nx, ny], &mut out);
        // The triangle (1,1), (1,6), (6,6): pixel (x, y) inside when x - 1 <= y - 1.
        for j in 0..ny {
            for i in 0..nx {
                let inside = (1..7).contains(&i) && (1..7).contains(&j) && i <= j;
                assert_eq!(out[i + nx * j], inside, "pixel ({i}, {j})");
            }
        }
    }

    #[test]
    fn air_outside_the_body_and_between_arm_and_chest_is_not_internal() {
        // A 40x40 slice of 5 mm pixels: a ring of body around a lung, an arm beside it leaving a
        // gap of air that opens to the outside.
        let [nx, ny] = [40, 40];
        let mut hu = vec![-1000f32; nx * ny];
        for j in 0..ny {
            for i in 0..nx {
                let (x, y) = (i as f64 - 18.0, j as f64 - 20.0);
                let r = x.hypot(y);
                if r <= 12.0 {
                    hu[i + nx * j] = if r <= 8.0 { -850.0 } else { 40.0 };
                }
                if (34..37).contains(&i) && (8..32).contains(&j) {
                    hu[i + nx * j] = 40.0; // the arm
                }
            }
        }
        let mut out = vec![0u8; nx * ny];
        internal_air(&hu, [nx, ny], 0.25, &mut out);
        for j in 0..ny {
            for i in 0..nx {
                let r = (i as f64 - 18.0).hypot(j as f64 - 20.0);
                assert_eq!(out[i + nx * j] == 1, r <= 8.0, "pixel ({i}, {j})");
            }
        }
    }
}
