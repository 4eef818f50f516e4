//! Phantoms written as DICOM CT series, one file per slice, the ways scanners and PACS write
//! them (signed or unsigned storage, implicit or explicit VR, RLE, file names and InstanceNumber
//! unrelated to position), for the DICOM reader's tests and for trying `ct-info` on a series.

use std::path::{Path, PathBuf};

use dicom_core::value::{DataSetSequence, PixelFragmentSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use ndarray::Array3;

use ct_io::{Error, Result};

/// CT Image Storage.
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
/// Enhanced CT Image Storage (one multi-frame object per series).
pub const ENHANCED_CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2.1";
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
pub const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// How a series is written.
#[derive(Debug, Clone)]
pub struct Writing {
    pub series_uid: String,
    pub modality: &'static str,
    /// Stored as signed 16-bit HU, or unsigned 12-bit (HU + 1024, intercept -1024).
    pub signed: bool,
    pub transfer_syntax: &'static str,
    /// File names in an order unrelated to position (a hash), InstanceNumber running against it.
    pub shuffled: bool,
}

impl Writing {
    /// Signed, explicit VR little endian, shuffled names, modality CT.
    pub fn new(series_uid: &str) -> Writing {
        Writing {
            series_uid: series_uid.into(),
            modality: "CT",
            signed: true,
            transfer_syntax: EXPLICIT_LE,
            shuffled: true,
        }
    }
}

/// A data element of a primitive value.
pub fn element(
    tag: dicom_core::Tag,
    vr: VR,
    value: impl Into<PrimitiveValue>,
) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, value.into())
}

/// Numbers as a DICOM decimal string (DS), backslash-separated.
pub fn decimal(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.6}"))
        .collect::<Vec<_>>()
        .join("\\")
}

/// Writes `ct` (HU, placed by the RAS `affine`) as one file per slice of its third voxel axis:
/// columns along its first axis, rows along its second, positions from the affine (RAS → LPS).
/// Returns the files in slice order.
pub fn write_series(
    dir: &Path,
    ct: &Array3<i16>,
    affine: &[[f64; 4]; 4],
    how: &Writing,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for (name, object) in slice_objects(ct, affine, how) {
        let path = dir.join(name);
        write(object, how.transfer_syntax, &path)?;
        files.push(path);
    }
    Ok(files)
}

fn write(object: InMemDicomObject, transfer_syntax: &str, path: &Path) -> Result<()> {
    object
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(transfer_syntax))
        .map_err(|e| Error::invalid(path, format!("cannot build the file meta group: {e}")))?
        .write_to_file(path)
        .map_err(|e| Error::invalid(path, format!("cannot write: {e}")))
}

/// Writes `ct` as one enhanced (multi-frame) CT object at `path`: the slices of [`write_series`]
/// as frames, stored in reverse order of position, their positions in the per-frame functional
/// groups and orientation, spacing and rescale shared. Uncompressed only.
pub fn write_enhanced(
    path: &Path,
    ct: &Array3<i16>,
    affine: &[[f64; 4]; 4],
    how: &Writing,
) -> Result<()> {
    let plain = Writing {
        transfer_syntax: EXPLICIT_LE,
        ..how.clone()
    };
    let slices = slice_objects(ct, affine, &plain);
    let first = &slices[0].1;
    let sequence = |tag, items: Vec<InMemDicomObject>| {
        DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
    };
    let copied = |object: &InMemDicomObject, tags: &[dicom_core::Tag]| {
        InMemDicomObject::from_element_iter(
            tags.iter().filter_map(|&t| object.element(t).ok().cloned()),
        )
    };
    let mut enhanced = first.clone();
    for tag in [
        tags::IMAGE_POSITION_PATIENT,
        tags::IMAGE_ORIENTATION_PATIENT,
        tags::PIXEL_SPACING,
        tags::RESCALE_SLOPE,
        tags::RESCALE_INTERCEPT,
        tags::INSTANCE_NUMBER,
        tags::PIXEL_DATA,
    ] {
        enhanced.remove_element(tag);
    }
    enhanced.put(element(
        tags::SOP_CLASS_UID,
        VR::UI,
        ENHANCED_CT_IMAGE_STORAGE,
    ));
    enhanced.put(element(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        format!("{}.1", how.series_uid),
    ));
    enhanced.put(element(tags::INSTANCE_NUMBER, VR::IS, "1"));
    enhanced.put(element(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        slices.len().to_string(),
    ));
    let mut transform = copied(first, &[tags::RESCALE_INTERCEPT, tags::RESCALE_SLOPE]);
    transform.put(element(tags::RESCALE_TYPE, VR::LO, "HU"));
    enhanced.put(sequence(
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            sequence(
                tags::PIXEL_MEASURES_SEQUENCE,
                vec![copied(first, &[tags::PIXEL_SPACING])],
            ),
            sequence(
                tags::PLANE_ORIENTATION_SEQUENCE,
                vec![copied(first, &[tags::IMAGE_ORIENTATION_PATIENT])],
            ),
            sequence(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, vec![transform]),
        ])],
    ));
    let mut per_frame = Vec::new();
    let mut words: Vec<u16> = Vec::new();
    for (k, (_, slice)) in slices.iter().enumerate().rev() {
        let place = (k + 1) as u32;
        let content = InMemDicomObject::from_element_iter([
            element(tags::STACK_ID, VR::SH, "1"),
            DataElement::new(
                tags::IN_STACK_POSITION_NUMBER,
                VR::UL,
                PrimitiveValue::from(place),
            ),
            DataElement::new(
                tags::DIMENSION_INDEX_VALUES,
                VR::UL,
                PrimitiveValue::U32([1, place].into()),
            ),
        ]);
        per_frame.push(InMemDicomObject::from_element_iter([
            sequence(tags::FRAME_CONTENT_SEQUENCE, vec![content]),
            sequence(
                tags::PLANE_POSITION_SEQUENCE,
                vec![copied(slice, &[tags::IMAGE_POSITION_PATIENT])],
            ),
        ]));
        let pixels = slice
            .element(tags::PIXEL_DATA)
            .map_err(|e| Error::invalid(path, e.to_string()))?
            .to_bytes()
            .map_err(|e| Error::invalid(path, e.to_string()))?;
        words.extend(
            pixels
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]])),
        );
    }
    enhanced.put(sequence(
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        per_frame,
    ));
    // The dimensions the frames are indexed by: the stack, and the place in it.
    let organization = format!("{}.2", how.series_uid);
    let dimension = |pointer| {
        InMemDicomObject::from_element_iter([
            element(
                tags::DIMENSION_ORGANIZATION_UID,
                VR::UI,
                organization.as_str(),
            ),
            DataElement::new(
                tags::DIMENSION_INDEX_POINTER,
                VR::AT,
                PrimitiveValue::from(pointer),
            ),
            DataElement::new(
                tags::FUNCTIONAL_GROUP_POINTER,
                VR::AT,
                PrimitiveValue::from(tags::FRAME_CONTENT_SEQUENCE),
            ),
        ])
    };
    enhanced.put(sequence(
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([element(
            tags::DIMENSION_ORGANIZATION_UID,
            VR::UI,
            organization.as_str(),
        )])],
    ));
    enhanced.put(sequence(
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            dimension(tags::STACK_ID),
            dimension(tags::IN_STACK_POSITION_NUMBER),
        ],
    ));
    enhanced.put(element(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(words.into()),
    ));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    write(enhanced, EXPLICIT_LE, path)
}

/// The slices of `ct` as single-frame CT image objects, with their file names.
fn slice_objects(
    ct: &Array3<i16>,
    affine: &[[f64; 4]; 4],
    how: &Writing,
) -> Vec<(String, InMemDicomObject)> {
    let (columns, rows, slices) = ct.dim();
    let lps = |v: [f64; 3]| [-v[0], -v[1], v[2]];
    let axis = |c: usize| [affine[0][c], affine[1][c], affine[2][c]];
    let norm = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    let (ci, cj) = (axis(0), axis(1));
    let (si, sj) = (norm(ci), norm(cj));
    let row = lps(ci.map(|v| v / si));
    let column = lps(cj.map(|v| v / sj));
    let mut objects = Vec::new();
    for k in 0..slices {
        let origin = [0, 1, 2].map(|r| affine[r][3] + affine[r][2] * k as f64);
        let position = lps(origin);
        let uid = format!("{}.{}", how.series_uid, k + 1);
        let instance = if how.shuffled { slices - k } else { k + 1 };
        let mut object = InMemDicomObject::new_empty();
        for (tag, vr, value) in [
            (tags::SOP_CLASS_UID, VR::UI, CT_IMAGE_STORAGE.to_string()),
            (tags::SOP_INSTANCE_UID, VR::UI, uid.clone()),
            (
                tags::STUDY_INSTANCE_UID,
                VR::UI,
                "1.2.826.0.1.3680043.10.99.1".into(),
            ),
            (tags::SERIES_INSTANCE_UID, VR::UI, how.series_uid.clone()),
            (
                tags::FRAME_OF_REFERENCE_UID,
                VR::UI,
                "1.2.826.0.1.3680043.10.99.2".into(),
            ),
            (tags::MODALITY, VR::CS, how.modality.into()),
            (tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\AXIAL".into()),
            (tags::PATIENT_NAME, VR::PN, "Phantom^Test".into()),
            (tags::PATIENT_ID, VR::LO, "P001".into()),
            (tags::SERIES_DESCRIPTION, VR::LO, "phantom".into()),
            (tags::INSTANCE_NUMBER, VR::IS, instance.to_string()),
            (tags::IMAGE_POSITION_PATIENT, VR::DS, decimal(&position)),
            (
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                decimal(&[row[0], row[1], row[2], column[0], column[1], column[2]]),
            ),
            (tags::PIXEL_SPACING, VR::DS, decimal(&[sj, si])),
            (
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                "MONOCHROME2".into(),
            ),
            (tags::RESCALE_SLOPE, VR::DS, "1".into()),
            (
                tags::RESCALE_INTERCEPT,
                VR::DS,
                if how.signed { "0" } else { "-1024" }.into(),
            ),
        ] {
            object.put(element(tag, vr, value));
        }
        for (tag, value) in [
            (tags::SAMPLES_PER_PIXEL, 1u16),
            (tags::ROWS, rows as u16),
            (tags::COLUMNS, columns as u16),
            (tags::BITS_ALLOCATED, 16),
            (tags::BITS_STORED, if how.signed { 16 } else { 12 }),
            (tags::HIGH_BIT, if how.signed { 15 } else { 11 }),
            (tags::PIXEL_REPRESENTATION, u16::from(how.signed)),
        ] {
            object.put(element(tag, VR::US, value));
        }
        // Row-major: row j, column i.
        let words: Vec<u16> = (0..rows)
            .flat_map(|j| (0..columns).map(move |i| (i, j)))
            .map(|(i, j)| {
                let hu = ct[[i, j, k]];
                if how.signed {
                    hu as u16
                } else {
                    (i32::from(hu) + 1024).clamp(0, 4095) as u16
                }
            })
            .collect();
        if ![EXPLICIT_LE, IMPLICIT_LE].contains(&how.transfer_syntax) {
            let fragment = rle_frame(&words, columns);
            object.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PixelFragmentSequence::new(vec![0u32], vec![fragment]),
            ));
        } else {
            object.put(element(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16(words.into()),
            ));
        }
        let name = if how.shuffled {
            format!(
                "IM{:08x}",
                (k as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
            )
        } else {
            format!("slice{k:04}.dcm")
        };
        objects.push((name, object));
    }
    objects
}

/// One RLE Lossless frame of 16-bit samples: the high-byte and low-byte planes as segments of
/// literal runs, row by row (PS3.5 G.3).
pub fn rle_frame(words: &[u16], columns: usize) -> Vec<u8> {
    let mut segments: Vec<Vec<u8>> = Vec::new();
    for shift in [8, 0] {
        let mut segment = Vec::new();
        for row in words.chunks(columns) {
            let bytes: Vec<u8> = row.iter().map(|w| (w >> shift) as u8).collect();
            for run in bytes.chunks(128) {
                segment.push((run.len() - 1) as u8);
                segment.extend_from_slice(run);
            }
        }
        if segment.len() % 2 == 1 {
            segment.push(0);
        }
        segments.push(segment);
    }
    let mut frame = vec![0u8; 64];
    frame[0..4].copy_from_slice(&2u32.to_le_bytes());
    let mut offset = 64u32;
    for (n, segment) in segments.iter().enumerate() {
        frame[4 + 4 * n..8 + 4 * n].copy_from_slice(&offset.to_le_bytes());
        offset += segment.len() as u32;
    }
    for segment in segments {
        frame.extend(segment);
    }
    frame
}
