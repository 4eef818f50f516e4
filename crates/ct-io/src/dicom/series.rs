//! A chosen series' slices in order along their normal, checked, and its geometry.

use crate::Result;
use crate::geometry::{Affine, Geometry};

use super::scan::{FileHeader, Part};
use super::{SeriesInfo, SliceInfo, invalid};

/// Slices whose spacing differs from the series' by more than this (relative) make a gap.
const SPACING_TOLERANCE: f64 = 0.05;
/// A slice whose position leaves the line along the normal through the first one by more than
/// this (mm, plus 1e-4 of the distance, for positions written with few digits) is tilted.
const SHEAR_TOLERANCE_MM: f64 = 0.01;

/// A series ready to decode: files in volume order and the geometry they make.
#[derive(Debug)]
pub(super) struct SortedSeries {
    pub id: String,
    pub files: Vec<FileHeader>,
    pub geometry: Geometry,
}

impl SortedSeries {
    pub fn info(&self) -> SeriesInfo {
        let first = &self.files[0];
        let [patient_name, patient_id, patient_birth_date, patient_sex] = first.patient.clone();
        let [
            study_instance_uid,
            study_date,
            study_time,
            study_id,
            accession_number,
            referring_physician,
        ] = first.study.clone();
        SeriesInfo {
            id: self.id.clone(),
            series_instance_uid: first.series_instance_uid.clone(),
            study_instance_uid,
            frame_of_reference_uid: first.frame_of_reference_uid.clone(),
            sop_class_uid: first.sop_class_uid.clone(),
            description: first.description.clone(),
            patient_name,
            patient_id,
            patient_birth_date,
            patient_sex,
            study_date,
            study_time,
            study_id,
            accession_number,
            referring_physician,
            orientation: first.orientation,
            pixel_spacing: first.pixel_spacing,
            slices: self
                .files
                .iter()
                .map(|f| SliceInfo {
                    sop_instance_uid: f.sop_instance_uid.clone(),
                    frame_number: (f.frames > 1).then_some(f.frame + 1),
                    file: f.file.clone(),
                    position: f.position,
                })
                .collect(),
        }
    }
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// Sorts the part's slices by ImagePositionPatient projected on the slice normal (never by file
/// name or InstanceNumber), checks them, and works out the geometry.
pub(super) fn sort_and_check(part: &Part) -> Result<SortedSeries> {
    let first = &part.files[0];
    let folder = first.file.parent().unwrap_or(&first.file).to_path_buf();
    if let Some((f, reason)) = part
        .files
        .iter()
        .find_map(|f| f.unplaced.as_ref().map(|r| (f, r)))
    {
        return Err(invalid(
            &f.file,
            format!("{reason}: no place in the patient"),
        ));
    }
    if part.files.len() < 2 {
        return Err(invalid(&first.file, "a single slice, not a volume"));
    }
    let o = first.orientation;
    let (row, column) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    let unit = |v: [f64; 3]| (dot(v, v).sqrt() - 1.0).abs() < 1e-3;
    if !unit(row) || !unit(column) || dot(row, column).abs() > 1e-3 {
        return Err(invalid(
            &first.file,
            format!("ImageOrientationPatient {o:?} is not two perpendicular unit vectors"),
        ));
    }
    let normal = cross(row, column);
    let mut files = part.files.clone();
    files.sort_by(|a, b| dot(a.position, normal).total_cmp(&dot(b.position, normal)));
    let depth: Vec<f64> = files.iter().map(|f| dot(f.position, normal)).collect();
    for (pair, d) in files.windows(2).zip(depth.windows(2)) {
        if (d[1] - d[0]).abs() < 1e-3 {
            return Err(invalid(
                &folder,
                format!(
                    "two different slices at one position ({:.3} mm along the normal): {} and {}",
                    d[0],
                    pair[0].place(),
                    pair[1].place()
                ),
            ));
        }
    }
    let n = files.len();
    let step = (depth[n - 1] - depth[0]) / (n - 1) as f64;
    for (k, d) in depth.windows(2).enumerate() {
        let gap = d[1] - d[0];
        if (gap - step).abs() > SPACING_TOLERANCE * step {
            return Err(invalid(
                &folder,
                format!(
                    "slices are not evenly spaced: {:.3} mm between {} and {}, {:.3} mm on \
                     average (a missing slice?)",
                    gap,
                    files[k].place(),
                    files[k + 1].place(),
                    step
                ),
            ));
        }
    }
    // The slice direction from the positions, which must run along the normal.
    let start = files[0].position;
    let end = files[n - 1].position;
    let along = [0, 1, 2].map(|d| (end[d] - start[d]) / (n - 1) as f64);
    for f in &files {
        let offset = [0, 1, 2].map(|d| f.position[d] - start[d]);
        let off_axis = [0, 1, 2].map(|d| offset[d] - dot(offset, normal) * normal[d]);
        let tolerance = SHEAR_TOLERANCE_MM + 1e-4 * dot(offset, offset).sqrt();
        if dot(off_axis, off_axis).sqrt() > tolerance {
            return Err(invalid(
                &f.file,
                "its position is off the slice normal: gantry tilt or sheared slices, which \
                 lungseg does not resample",
            ));
        }
    }
    let [row_spacing, column_spacing] = first.pixel_spacing;
    if !(row_spacing > 0.0 && column_spacing > 0.0) {
        return Err(invalid(
            &first.file,
            format!("PixelSpacing {:?} is not positive", first.pixel_spacing),
        ));
    }
    // Voxel (i = column, j = row, k = slice) in LPS, then RAS (x and y negated).
    let ras = |v: [f64; 3]| [-v[0], -v[1], v[2]];
    let columns = [
        ras(row.map(|v| v * column_spacing)),
        ras(column.map(|v| v * row_spacing)),
        ras(along),
        ras(start),
    ];
    let mut affine: Affine = [[0.0, 0.0, 0.0, 1.0]; 4];
    for (r, out) in affine.iter_mut().take(3).enumerate() {
        *out = columns.map(|c| c[r]);
    }
    let shape = [first.columns as usize, first.rows as usize, n];
    if !crate::nii::shape_fits_nifti(shape) {
        return Err(invalid(
            &folder,
            format!("{shape:?} voxels: too large a volume"),
        ));
    }
    Ok(SortedSeries {
        id: part.id.clone(),
        files,
        geometry: Geometry::from_affine(shape, affine),
    })
}
