//! CT series from DICOM files, as scanners and PACS export them, into the same [`Volume`] and
//! [`Geometry`] as NIfTI (affine in RAS; DICOM's patient space is LPS).
//!
//! A folder (searched recursively) or a list of files is scanned header by header: files that are
//! not DICOM, and DICOMDIRs, are skipped and counted; the rest are grouped by SeriesInstanceUID and
//! split where their orientation, size or frame of reference differ (as dcm2niix and GDCM do).
//! One series is chosen, never guessed: the one asked for, or the only volumetric CT series
//! (localisers and single slices are passed over); several candidates are refused and listed.
//! Its slices are sorted by their position along the slice normal, checked (no gap, no two at one
//! place, no tilt), decoded by dicom-rs and rescaled to HU.

mod pixels;
mod scan;
mod seg;
mod series;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::nii::Volume;
use crate::{Error, Result};

pub use scan::{Scan, SeriesSummary, scan};
pub use seg::{SegOptions, write_seg};

/// What a derived object (a DICOM SEG) needs of the source series, beside the voxels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesInfo {
    /// The series' id as `ct-info` lists it: its SeriesInstanceUID, with `#N` for part N of a
    /// series that had to be split.
    pub id: String,
    pub series_instance_uid: String,
    pub study_instance_uid: String,
    pub frame_of_reference_uid: String,
    pub sop_class_uid: String,
    pub description: String,
    pub patient_name: String,
    pub patient_id: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub study_date: String,
    pub study_time: String,
    pub study_id: String,
    pub accession_number: String,
    pub referring_physician: String,
    /// ImageOrientationPatient (LPS direction cosines of a row, then of a column).
    pub orientation: [f64; 6],
    /// PixelSpacing: between rows, between columns (mm).
    pub pixel_spacing: [f64; 2],
    /// The source slices in volume order (k = 0 first).
    pub slices: Vec<SliceInfo>,
}

/// One source slice: its SOP Instance UID (and frame number, 1-based, in an enhanced
/// multi-frame object), file and ImagePositionPatient (LPS, mm).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SliceInfo {
    pub sop_instance_uid: String,
    pub frame_number: Option<u32>,
    pub file: PathBuf,
    pub position: [f64; 3],
}

/// Where a volume read from DICOM came from.
#[derive(Debug, Clone)]
pub struct DicomSource {
    pub series: SeriesInfo,
    /// How the series was chosen among those found (for `ct-info` and logs).
    pub choice: String,
}

/// Reads the CT series in `inputs` (folders, searched recursively, or files): the one with id
/// `series` if given, else the only volumetric CT series. Fails with one line naming the folder
/// or file and the problem.
pub fn read_dicom(inputs: &[PathBuf], series: Option<&str>) -> Result<(Volume, DicomSource)> {
    let scan = scan(inputs)?;
    let chosen = scan.choose(series)?;
    let sorted = series::sort_and_check(chosen)?;
    let (data, datatype) = pixels::read_voxels(&sorted)?;
    let source = DicomSource {
        series: sorted.info(),
        choice: scan.choice_note(&sorted.id),
    };
    let volume = Volume {
        data,
        geometry: sorted.geometry,
        datatype,
    };
    Ok((volume, source))
}

/// The SeriesInstanceUID of one DICOM file.
pub fn series_of(file: &Path) -> Result<String> {
    scan::read_header(file)?
        .into_iter()
        .next()
        .map(|h| h.series_instance_uid)
        .ok_or_else(|| invalid(file, "a DICOM file without an image"))
}

/// True when `path` looks like a DICOM file: "DICM" after the 128-byte preamble.
pub fn is_dicom_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head[128..] == b"DICM")
}

fn invalid(path: &Path, reason: impl Into<String>) -> Error {
    Error::invalid(path, reason)
}
