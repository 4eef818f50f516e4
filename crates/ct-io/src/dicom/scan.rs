//! Finding the DICOM files, reading their headers, grouping them into series, choosing one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use rayon::prelude::*;
use serde::Serialize;

use super::{invalid, is_dicom_file};
use crate::Result;

/// The Media Storage Directory SOP class: a DICOMDIR, an index, not an image.
const DICOMDIR_CLASS: &str = "1.2.840.10008.1.3.10";

/// The header fields of one image file that grouping, sorting and decoding need.
#[derive(Debug, Clone)]
pub(super) struct FileHeader {
    pub file: PathBuf,
    /// The frame within the file (0 but in an enhanced, multi-frame object).
    pub frame: u32,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub series_instance_uid: String,
    pub modality: String,
    pub image_type: Vec<String>,
    pub rows: u32,
    pub columns: u32,
    pub frames: u32,
    /// Row spacing (between rows), column spacing (between columns), mm.
    pub pixel_spacing: [f64; 2],
    /// Direction cosines of a row (increasing column) and of a column (increasing row), LPS.
    pub orientation: [f64; 6],
    pub position: [f64; 3],
    /// RescaleSlope and RescaleIntercept from an enhanced object's functional groups (a
    /// single-frame image keeps them at the top level, read when decoding).
    pub rescale: Option<[f64; 2]>,
    /// Why the image has no place in the patient (a missing position, orientation or spacing).
    pub unplaced: Option<String>,
    pub frame_of_reference_uid: String,
    pub description: String,
    /// Patient and study attributes, copied into derived objects.
    pub patient: [String; 4],
    pub study: [String; 6],
}

/// One series (or one part of a series split by orientation, size or frame of reference).
#[derive(Debug, Clone)]
pub(super) struct Part {
    pub id: String,
    pub files: Vec<FileHeader>,
}

impl FileHeader {
    /// The file, and the frame in a multi-frame one, for messages.
    pub fn place(&self) -> String {
        if self.frames > 1 {
            format!("{} (frame {})", self.file.display(), self.frame + 1)
        } else {
            self.file.display().to_string()
        }
    }
}

impl Part {
    fn is_localizer(&self) -> bool {
        self.files[0]
            .image_type
            .iter()
            .any(|t| t.trim().eq_ignore_ascii_case("LOCALIZER"))
    }

    fn is_volumetric_ct(&self) -> bool {
        let first = &self.files[0];
        first.modality.trim() == "CT"
            && !self.is_localizer()
            && self.files.len() > 1
            && self.files.iter().all(|f| f.unplaced.is_none())
    }

    fn summary(&self) -> SeriesSummary {
        let first = &self.files[0];
        SeriesSummary {
            id: self.id.clone(),
            description: first.description.clone(),
            modality: first.modality.clone(),
            slices: self.files.len(),
            size: [first.columns, first.rows],
            pixel_spacing: first.pixel_spacing,
            volumetric_ct: self.is_volumetric_ct(),
        }
    }
}

/// A series as `ct-info` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesSummary {
    pub id: String,
    pub description: String,
    pub modality: String,
    /// Files (slices) in it.
    pub slices: usize,
    /// Columns x rows.
    pub size: [u32; 2],
    pub pixel_spacing: [f64; 2],
    pub volumetric_ct: bool,
}

impl std::fmt::Display for SeriesSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({:?}, {}, {} slices of {}x{}, {:.3} x {:.3} mm)",
            self.id,
            self.description,
            self.modality,
            self.slices,
            self.size[0],
            self.size[1],
            self.pixel_spacing[1],
            self.pixel_spacing[0]
        )
    }
}

/// What a scan of some folders and files found.
#[derive(Debug)]
pub struct Scan {
    /// What was asked to be read (for messages).
    origin: PathBuf,
    parts: Vec<Part>,
    /// Files that are not DICOM images (no DICM marker, DICOMDIRs), skipped.
    pub skipped_files: usize,
    /// Files holding a SOP instance already seen, skipped.
    pub duplicates: usize,
}

/// Reads the headers of every DICOM file in `inputs` (folders recursively, in sorted order).
pub fn scan(inputs: &[PathBuf]) -> Result<Scan> {
    let origin = match inputs {
        [one] => one.clone(),
        _ => PathBuf::from(
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
    };
    let mut files = Vec::new();
    for input in inputs {
        collect_files(input, &mut files)?;
    }
    files.sort();
    files.dedup();
    let (dicom, other): (Vec<PathBuf>, Vec<PathBuf>) =
        files.into_iter().partition(|f| is_dicom_file(f));
    let headers: Vec<Vec<FileHeader>> = dicom
        .par_iter()
        .map(|f| read_header(f))
        .collect::<Result<_>>()?;
    let mut skipped_files = other.len();
    let mut by_series: BTreeMap<String, Vec<FileHeader>> = BTreeMap::new();
    for file_headers in headers {
        if file_headers.is_empty() {
            skipped_files += 1;
        }
        for h in file_headers {
            by_series
                .entry(h.series_instance_uid.clone())
                .or_default()
                .push(h);
        }
    }
    if by_series.is_empty() {
        return Err(invalid(&origin, "no DICOM image files here"));
    }
    let mut duplicates = 0;
    let mut parts = Vec::new();
    for (uid, mut headers) in by_series {
        headers.sort_by(|a, b| {
            (&a.sop_instance_uid, a.frame, &a.file).cmp(&(&b.sop_instance_uid, b.frame, &b.file))
        });
        headers.dedup_by(|b, a| {
            let same = a.sop_instance_uid == b.sop_instance_uid && a.frame == b.frame;
            if same && b.frame == 0 {
                tracing::warn!(
                    "{}: the same SOP instance as {}, skipped",
                    b.file.display(),
                    a.file.display()
                );
                duplicates += 1;
            }
            same
        });
        parts.extend(split(&uid, headers));
    }
    Ok(Scan {
        origin,
        parts,
        skipped_files,
        duplicates,
    })
}

impl Scan {
    /// Every series found, in SeriesInstanceUID order.
    pub fn series(&self) -> Vec<SeriesSummary> {
        self.parts.iter().map(Part::summary).collect()
    }

    /// The series with id `wanted`, or the only volumetric CT series.
    pub(super) fn choose(&self, wanted: Option<&str>) -> Result<&Part> {
        let list = |parts: &[&Part]| {
            parts
                .iter()
                .map(|p| p.summary().to_string())
                .collect::<Vec<_>>()
                .join("; ")
        };
        if let Some(wanted) = wanted {
            let matching: Vec<&Part> = self
                .parts
                .iter()
                .filter(|p| p.id == wanted || p.files[0].series_instance_uid == wanted)
                .collect();
            return match matching.as_slice() {
                [one] => Ok(one),
                [] => Err(invalid(
                    &self.origin,
                    format!("no series {wanted} here; found: {}", list(&self.all())),
                )),
                several => Err(self.mixed(wanted, &list(several))),
            };
        }
        let candidates: Vec<&Part> = self.parts.iter().filter(|p| p.is_volumetric_ct()).collect();
        match candidates.as_slice() {
            [one] => {
                // The rest of its series (a slice of another size, say) would be silently lost.
                let uid = &one.files[0].series_instance_uid;
                let series: Vec<&Part> = self
                    .parts
                    .iter()
                    .filter(|p| &p.files[0].series_instance_uid == uid)
                    .collect();
                let stray = series.iter().any(|p| p.id != one.id && !p.is_localizer());
                if stray {
                    return Err(self.mixed(uid, &list(&series)));
                }
                Ok(one)
            }
            [] => Err(invalid(
                &self.origin,
                format!("no volumetric CT series here; found: {}", list(&self.all())),
            )),
            several => Err(invalid(
                &self.origin,
                format!(
                    "{} CT series here; choose one with --series: {}",
                    several.len(),
                    list(several)
                ),
            )),
        }
    }

    /// The refusal of a series split into parts: which to read is the user's choice.
    fn mixed(&self, uid: &str, parts: &str) -> crate::Error {
        invalid(
            &self.origin,
            format!(
                "series {uid} mixes slices of different orientation, size or frame of reference; \
                 choose one part with --series: {parts}"
            ),
        )
    }

    fn all(&self) -> Vec<&Part> {
        self.parts.iter().collect()
    }

    /// One line on how the series `id` was chosen and what else was found.
    pub(super) fn choice_note(&self, id: &str) -> String {
        let others = self.parts.len() - 1;
        let mut note = format!("series {id}");
        if others > 0 {
            note.push_str(&format!(" (beside {others} other series)"));
        }
        if self.skipped_files > 0 {
            note.push_str(&format!("; {} non-image files skipped", self.skipped_files));
        }
        if self.duplicates > 0 {
            note.push_str(&format!("; {} duplicate files skipped", self.duplicates));
        }
        note
    }
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| crate::Error::io(path, e))?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let entries = std::fs::read_dir(path).map_err(|e| crate::Error::io(path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| crate::Error::io(path, e))?;
        let child = entry.path();
        let kind = entry.file_type().map_err(|e| crate::Error::io(&child, e))?;
        if kind.is_dir() {
            collect_files(&child, out)?;
        } else if kind.is_file() {
            out.push(child);
        }
    }
    Ok(())
}

/// The headers of an image file, one per frame (an enhanced CT object holds a whole series);
/// none for a DICOM file that holds no image (a DICOMDIR, a report).
pub(super) fn read_header(file: &Path) -> Result<Vec<FileHeader>> {
    let object = match OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(file)
    {
        Ok(object) => object,
        // A broken DICOMDIR is an index gone bad, not a broken image: skipped like a sound one.
        Err(_) if storage_class(file).as_deref() == Some(DICOMDIR_CLASS) => return Ok(Vec::new()),
        Err(e) => return Err(invalid(file, format!("corrupt DICOM file ({e})"))),
    };
    if object
        .meta()
        .media_storage_sop_class_uid()
        .trim_end_matches('\0')
        == DICOMDIR_CLASS
        || !object.element_opt(tags::ROWS).is_ok_and(|e| e.is_some())
    {
        return Ok(Vec::new());
    }
    let text = |tag| text(&object, tag);
    let integer = |tag, name: &str| -> Result<u32> {
        object
            .element(tag)
            .ok()
            .and_then(|e| e.to_int::<u32>().ok())
            .ok_or_else(|| invalid(file, format!("no {name}")))
    };
    let frames = object
        .element_opt(tags::NUMBER_OF_FRAMES)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(1);
    let image_type = object
        .element_opt(tags::IMAGE_TYPE)
        .ok()
        .flatten()
        .and_then(|e| e.to_multi_str().ok().map(|v| v.to_vec()))
        .unwrap_or_default();
    let template = FileHeader {
        file: file.to_path_buf(),
        frame: 0,
        frames,
        sop_instance_uid: text(tags::SOP_INSTANCE_UID),
        sop_class_uid: text(tags::SOP_CLASS_UID),
        series_instance_uid: text(tags::SERIES_INSTANCE_UID),
        modality: text(tags::MODALITY),
        image_type,
        rows: integer(tags::ROWS, "Rows")?,
        columns: integer(tags::COLUMNS, "Columns")?,
        pixel_spacing: [0.0; 2],
        orientation: [0.0; 6],
        position: [0.0; 3],
        rescale: None,
        unplaced: None,
        frame_of_reference_uid: text(tags::FRAME_OF_REFERENCE_UID),
        description: text(tags::SERIES_DESCRIPTION),
        patient: [
            tags::PATIENT_NAME,
            tags::PATIENT_ID,
            tags::PATIENT_BIRTH_DATE,
            tags::PATIENT_SEX,
        ]
        .map(text),
        study: [
            tags::STUDY_INSTANCE_UID,
            tags::STUDY_DATE,
            tags::STUDY_TIME,
            tags::STUDY_ID,
            tags::ACCESSION_NUMBER,
            tags::REFERRING_PHYSICIAN_NAME,
        ]
        .map(text),
    };
    if template.sop_instance_uid.is_empty() || template.series_instance_uid.is_empty() {
        return Err(invalid(file, "no SOPInstanceUID or SeriesInstanceUID"));
    }
    if frames <= 1 {
        // An image without a place in the patient (a radiograph, a secondary capture) is listed
        // but never read as a volume.
        let mut header = template;
        let mut place = || -> Result<()> {
            header.pixel_spacing = numbers(file, &object, tags::PIXEL_SPACING, "PixelSpacing")?;
            header.orientation = numbers(
                file,
                &object,
                tags::IMAGE_ORIENTATION_PATIENT,
                "ImageOrientationPatient",
            )?;
            header.position = numbers(
                file,
                &object,
                tags::IMAGE_POSITION_PATIENT,
                "ImagePositionPatient",
            )?;
            Ok(())
        };
        if let Err(crate::Error::Invalid { reason, .. }) = place() {
            header.unplaced = Some(reason);
        }
        return Ok(vec![header]);
    }
    // An enhanced object: each frame's attributes in its functional groups, per frame or shared.
    let groups = |tag| -> Vec<InMemDicomObject> {
        object
            .element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.items().map(|i| i.to_vec()))
            .unwrap_or_default()
    };
    let shared = groups(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let per_frame = groups(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    if per_frame.len() != frames as usize {
        return Err(invalid(
            file,
            format!(
                "{frames} frames but {} per-frame functional groups",
                per_frame.len()
            ),
        ));
    }
    let find = |frame: &InMemDicomObject, sequence, tag, name: &str| {
        let nested = |item: &InMemDicomObject| {
            item.element_opt(sequence)
                .ok()
                .flatten()
                .and_then(|e| e.items().and_then(|i| i.first().cloned()))
                .filter(|inner| inner.element_opt(tag).is_ok_and(|e| e.is_some()))
        };
        nested(frame)
            .or_else(|| shared.first().and_then(nested))
            .ok_or_else(|| invalid(file, format!("no {name} in the functional groups")))
    };
    let mut headers = Vec::with_capacity(frames as usize);
    for (n, frame) in per_frame.iter().enumerate() {
        let mut header = template.clone();
        header.frame = n as u32;
        let spacing = find(
            frame,
            tags::PIXEL_MEASURES_SEQUENCE,
            tags::PIXEL_SPACING,
            "PixelSpacing",
        )?;
        header.pixel_spacing = numbers(file, &spacing, tags::PIXEL_SPACING, "PixelSpacing")?;
        let tag = tags::IMAGE_ORIENTATION_PATIENT;
        let orientation = find(
            frame,
            tags::PLANE_ORIENTATION_SEQUENCE,
            tag,
            "ImageOrientationPatient",
        )?;
        header.orientation = numbers(file, &orientation, tag, "ImageOrientationPatient")?;
        let tag = tags::IMAGE_POSITION_PATIENT;
        let position = find(
            frame,
            tags::PLANE_POSITION_SEQUENCE,
            tag,
            "ImagePositionPatient",
        )?;
        header.position = numbers(file, &position, tag, "ImagePositionPatient")?;
        let tag = tags::RESCALE_SLOPE;
        if let Ok(transform) = find(
            frame,
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            tag,
            "RescaleSlope",
        ) {
            let [slope]: [f64; 1] = numbers(file, &transform, tags::RESCALE_SLOPE, "RescaleSlope")?;
            let [intercept]: [f64; 1] = numbers(
                file,
                &transform,
                tags::RESCALE_INTERCEPT,
                "RescaleIntercept",
            )?;
            header.rescale = Some([slope, intercept]);
        }
        headers.push(header);
    }
    Ok(headers)
}

/// The MediaStorageSOPClassUID of a DICOM file, from its meta group alone.
fn storage_class(file: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut reader = std::io::BufReader::new(std::fs::File::open(file).ok()?);
    reader.seek(SeekFrom::Start(128)).ok()?;
    let meta = dicom_object::meta::FileMetaTable::from_reader(reader.by_ref()).ok()?;
    Some(
        meta.media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_string(),
    )
}

/// `N` finite numbers of a DS attribute of `object` (in `file`).
fn numbers<const N: usize>(
    file: &Path,
    object: &InMemDicomObject,
    tag: dicom_core::Tag,
    name: &str,
) -> Result<[f64; N]> {
    let values = object
        .element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_multi_float64().ok())
        .ok_or_else(|| invalid(file, format!("no {name}")))?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(invalid(file, format!("{name} {values:?} is not finite")));
    }
    values
        .try_into()
        .map_err(|v: Vec<f64>| invalid(file, format!("{name} {v:?} is not {N} numbers")))
}

/// A string attribute, trimmed; empty when absent.
fn text(object: &DefaultDicomObject, tag: dicom_core::Tag) -> String {
    object
        .element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| {
            e.to_str()
                .ok()
                .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        })
        .unwrap_or_default()
}

/// Splits one series' files by orientation (to 1e-4), size and frame of reference, as dcm2niix
/// does; parts after the first are named `UID#2`, `UID#3`, ... in order of their first file.
fn split(uid: &str, headers: Vec<FileHeader>) -> Vec<Part> {
    let mut groups: Vec<(String, Vec<FileHeader>)> = Vec::new();
    for h in headers {
        let key = format!(
            "{:?}|{}x{}|{}",
            h.orientation.map(|v| (v * 1e4).round() as i64),
            h.columns,
            h.rows,
            h.frame_of_reference_uid
        );
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, files)) => files.push(h),
            None => groups.push((key, vec![h])),
        }
    }
    let several = groups.len() > 1;
    groups
        .into_iter()
        .enumerate()
        .map(|(n, (_, files))| Part {
            id: if several {
                format!("{uid}#{}", n + 1)
            } else {
                uid.to_string()
            },
            files,
        })
        .collect()
}
