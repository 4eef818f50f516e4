//! A binary mask as a DICOM Segmentation (SEG) object over the series it was predicted on, so
//! that a viewer (3D Slicer, OHIF, a PACS) lays it over the original images.
//!
//! One segment (a lung tumour: SNOMED CT "Morphologically abnormal structure" / "Neoplasm"),
//! made by an AUTOMATIC algorithm; the source's patient, study and frame of reference, a new
//! series; one frame per source slice that holds mask (or every slice), each referring to its
//! source image and carrying its plane position; frames packed 1 bit per pixel, back to back.

use std::path::Path;

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use ndarray::ArrayView3;

use super::{SeriesInfo, invalid};
use crate::Result;

const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// What the SEG says about its making.
#[derive(Debug, Clone)]
pub struct SegOptions {
    /// The algorithm's name and version (SegmentAlgorithmName, SoftwareVersions).
    pub algorithm: String,
    pub version: String,
    /// Which model made it (ContentDescription), e.g. the checkpoint and its training run.
    pub description: String,
    /// Write a frame for every source slice, not only those holding mask.
    pub all_frames: bool,
}

type Object = InMemDicomObject;

fn text(tag: Tag, vr: VR, value: &str) -> DataElement<Object> {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

fn sequence(tag: Tag, items: Vec<Object>) -> DataElement<Object> {
    DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
}

fn item(elements: Vec<DataElement<Object>>) -> Object {
    InMemDicomObject::from_element_iter(elements)
}

/// A sequence of one item holding one element (a functional group's macro, say).
fn nest(tag: Tag, element: DataElement<Object>) -> DataElement<Object> {
    sequence(tag, vec![item(vec![element])])
}

/// A coded concept: (value, scheme, meaning).
fn code(tag: Tag, (value, scheme, meaning): (&str, &str, &str)) -> DataElement<Object> {
    sequence(
        tag,
        vec![item(vec![
            text(tags::CODE_VALUE, VR::SH, value),
            text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
            text(tags::CODE_MEANING, VR::LO, meaning),
        ])],
    )
}

fn decimals(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| {
            let s = format!("{v:.6}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            if s == "-0" {
                "0".to_string()
            } else {
                s.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\\")
}

/// A new UID under the UUID-derived root 2.25 (PS3.5 B.2), from the source, the mask and the time.
fn new_uid(source: &SeriesInfo, salt: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in source.series_instance_uid.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let seed = hash ^ nanos.rotate_left(17) ^ salt ^ u64::from(std::process::id()) << 40;
    let high = crate::seed::splitmix64(seed);
    let low = crate::seed::splitmix64(high ^ 0x5851_f42d_4c95_7f2d);
    format!("2.25.{}", (u128::from(high) << 64 | u128::from(low)))
}

/// Writes `mask` (the source series' voxel grid: `[columns, rows, slices]`, slices in
/// `source.slices` order, non-zero = tumour) as a DICOM SEG at `path`, atomically.
pub fn write_seg(
    path: &Path,
    mask: ArrayView3<u8>,
    source: &SeriesInfo,
    options: &SegOptions,
) -> Result<()> {
    let (columns, rows, slices) = mask.dim();
    if slices != source.slices.len() {
        return Err(invalid(
            path,
            format!(
                "a mask of {slices} slices for a series of {}",
                source.slices.len()
            ),
        ));
    }
    let mut frames: Vec<usize> = (0..slices)
        .filter(|&k| {
            options.all_frames || mask.index_axis(ndarray::Axis(2), k).iter().any(|v| *v != 0)
        })
        .collect();
    if frames.is_empty() {
        // No tumour: a SEG still needs a frame, so it says so over the first slice.
        frames.push(0);
    }
    let series_uid = new_uid(source, 1);
    let instance_uid = new_uid(source, 2);
    let (date, time) = now();
    let segment_code = (
        ("49755003", "SCT", "Morphologically abnormal structure"),
        ("108369006", "SCT", "Neoplasm"),
    );

    let mut seg = InMemDicomObject::new_empty();
    let mut put = |e: DataElement<Object>| {
        seg.put(e);
    };
    for (tag, vr, value) in [
        (tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        (tags::SOP_CLASS_UID, VR::UI, SEGMENTATION_STORAGE),
        (tags::SOP_INSTANCE_UID, VR::UI, instance_uid.as_str()),
        (
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            source.study_instance_uid.as_str(),
        ),
        (tags::SERIES_INSTANCE_UID, VR::UI, series_uid.as_str()),
        (
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            source.frame_of_reference_uid.as_str(),
        ),
        (tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
        (tags::MODALITY, VR::CS, "SEG"),
        (tags::SERIES_NUMBER, VR::IS, "9901"),
        (tags::INSTANCE_NUMBER, VR::IS, "1"),
        (tags::SERIES_DESCRIPTION, VR::LO, "lungseg tumour"),
        (tags::PATIENT_NAME, VR::PN, source.patient_name.as_str()),
        (tags::PATIENT_ID, VR::LO, source.patient_id.as_str()),
        (
            tags::PATIENT_BIRTH_DATE,
            VR::DA,
            source.patient_birth_date.as_str(),
        ),
        (tags::PATIENT_SEX, VR::CS, source.patient_sex.as_str()),
        (tags::STUDY_DATE, VR::DA, source.study_date.as_str()),
        (tags::STUDY_TIME, VR::TM, source.study_time.as_str()),
        (tags::STUDY_ID, VR::SH, source.study_id.as_str()),
        (
            tags::ACCESSION_NUMBER,
            VR::SH,
            source.accession_number.as_str(),
        ),
        (
            tags::REFERRING_PHYSICIAN_NAME,
            VR::PN,
            source.referring_physician.as_str(),
        ),
        (tags::MANUFACTURER, VR::LO, "lungseg"),
        (
            tags::MANUFACTURER_MODEL_NAME,
            VR::LO,
            options.algorithm.as_str(),
        ),
        (tags::DEVICE_SERIAL_NUMBER, VR::LO, "none"),
        (tags::SOFTWARE_VERSIONS, VR::LO, options.version.as_str()),
        (tags::CONTENT_DATE, VR::DA, date.as_str()),
        (tags::CONTENT_TIME, VR::TM, time.as_str()),
        (tags::SERIES_DATE, VR::DA, date.as_str()),
        (tags::SERIES_TIME, VR::TM, time.as_str()),
        (tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY"),
        (tags::CONTENT_LABEL, VR::CS, "TUMOUR"),
        (
            tags::CONTENT_DESCRIPTION,
            VR::LO,
            options.description.as_str(),
        ),
        (tags::CONTENT_CREATOR_NAME, VR::PN, ""),
        (tags::SEGMENTATION_TYPE, VR::CS, "BINARY"),
        (tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        (tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        (tags::NUMBER_OF_FRAMES, VR::IS, &frames.len().to_string()),
    ] {
        put(text(tag, vr, value));
    }
    for (tag, value) in [
        (tags::SAMPLES_PER_PIXEL, 1u16),
        (tags::ROWS, rows as u16),
        (tags::COLUMNS, columns as u16),
        (tags::BITS_ALLOCATED, 1),
        (tags::BITS_STORED, 1),
        (tags::HIGH_BIT, 0),
        (tags::PIXEL_REPRESENTATION, 0),
    ] {
        put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
    }
    put(sequence(
        tags::SEGMENT_SEQUENCE,
        vec![item(vec![
            DataElement::new(tags::SEGMENT_NUMBER, VR::US, PrimitiveValue::from(1u16)),
            text(tags::SEGMENT_LABEL, VR::LO, "Lung tumour"),
            text(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
            text(tags::SEGMENT_ALGORITHM_NAME, VR::LO, &options.algorithm),
            code(
                tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                segment_code.0,
            ),
            code(tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, segment_code.1),
        ])],
    ));
    // Dimensions: the segment, then the plane's position.
    let dimensions = new_uid(source, 3);
    put(nest(
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        text(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dimensions),
    ));
    let index = |pointer: Tag, group: Tag| {
        item(vec![
            text(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dimensions),
            DataElement::new(
                tags::DIMENSION_INDEX_POINTER,
                VR::AT,
                PrimitiveValue::from(pointer),
            ),
            DataElement::new(
                tags::FUNCTIONAL_GROUP_POINTER,
                VR::AT,
                PrimitiveValue::from(group),
            ),
        ])
    };
    put(sequence(
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            index(
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
            ),
            index(tags::IMAGE_POSITION_PATIENT, tags::PLANE_POSITION_SEQUENCE),
        ],
    ));
    let spacing = slice_spacing(source);
    put(sequence(
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![item(vec![
            nest(
                tags::PLANE_ORIENTATION_SEQUENCE,
                text(
                    tags::IMAGE_ORIENTATION_PATIENT,
                    VR::DS,
                    &decimals(&source.orientation),
                ),
            ),
            sequence(
                tags::PIXEL_MEASURES_SEQUENCE,
                vec![item(vec![
                    text(
                        tags::PIXEL_SPACING,
                        VR::DS,
                        &decimals(&source.pixel_spacing),
                    ),
                    text(tags::SLICE_THICKNESS, VR::DS, &decimals(&[spacing])),
                    text(tags::SPACING_BETWEEN_SLICES, VR::DS, &decimals(&[spacing])),
                ])],
            ),
        ])],
    ));
    let per_frame: Vec<Object> = frames
        .iter()
        .map(|&k| {
            let slice = &source.slices[k];
            let mut reference = vec![
                text(
                    tags::REFERENCED_SOP_CLASS_UID,
                    VR::UI,
                    &source.sop_class_uid,
                ),
                text(
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    &slice.sop_instance_uid,
                ),
            ];
            if let Some(frame) = slice.frame_number {
                reference.push(text(
                    tags::REFERENCED_FRAME_NUMBER,
                    VR::IS,
                    &frame.to_string(),
                ));
            }
            reference.push(text(tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES"));
            reference.push(code(
                tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                (
                    "121322",
                    "DCM",
                    "Source image for image processing operation",
                ),
            ));
            item(vec![
                sequence(
                    tags::DERIVATION_IMAGE_SEQUENCE,
                    vec![item(vec![
                        code(
                            tags::DERIVATION_CODE_SEQUENCE,
                            ("113076", "DCM", "Segmentation"),
                        ),
                        sequence(tags::SOURCE_IMAGE_SEQUENCE, vec![item(reference)]),
                    ])],
                ),
                nest(
                    tags::FRAME_CONTENT_SEQUENCE,
                    DataElement::new(
                        tags::DIMENSION_INDEX_VALUES,
                        VR::UL,
                        PrimitiveValue::U32([1, k as u32 + 1].into()),
                    ),
                ),
                nest(
                    tags::PLANE_POSITION_SEQUENCE,
                    text(
                        tags::IMAGE_POSITION_PATIENT,
                        VR::DS,
                        &decimals(&slice.position),
                    ),
                ),
                nest(
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    DataElement::new(
                        tags::REFERENCED_SEGMENT_NUMBER,
                        VR::US,
                        PrimitiveValue::from(1u16),
                    ),
                ),
            ])
        })
        .collect();
    put(sequence(
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        per_frame,
    ));
    put(sequence(
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![item(vec![
            text(
                tags::SERIES_INSTANCE_UID,
                VR::UI,
                &source.series_instance_uid,
            ),
            sequence(
                tags::REFERENCED_INSTANCE_SEQUENCE,
                unique_instances(source)
                    .into_iter()
                    .map(|s| {
                        item(vec![
                            text(
                                tags::REFERENCED_SOP_CLASS_UID,
                                VR::UI,
                                &source.sop_class_uid,
                            ),
                            text(
                                tags::REFERENCED_SOP_INSTANCE_UID,
                                VR::UI,
                                &s.sop_instance_uid,
                            ),
                        ])
                    })
                    .collect(),
            ),
        ])],
    ));
    put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(pack_frames(mask, &frames)),
    ));

    let object = seg
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(EXPLICIT_LE))
        .map_err(|e| invalid(path, format!("cannot build the file meta group: {e}")))?;
    crate::atomic::write_atomically(path, |file| {
        object
            .write_all(file)
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
}

/// The source's SOP instances, each once (an enhanced object holds many slices).
fn unique_instances(source: &SeriesInfo) -> Vec<&super::SliceInfo> {
    let mut seen = std::collections::BTreeSet::new();
    source
        .slices
        .iter()
        .filter(|s| seen.insert(s.sop_instance_uid.as_str()))
        .collect()
}

/// Frames `frames` of `mask`, row-major each, 1 bit per pixel, the first pixel in the lowest bit,
/// back to back across frame boundaries (PS3.5 8.1.1), padded to an even length.
fn pack_frames(mask: ArrayView3<u8>, frames: &[usize]) -> Vec<u8> {
    let (columns, rows, _) = mask.dim();
    let bits = frames.len() * rows * columns;
    let mut out = vec![0u8; bits.div_ceil(8).next_multiple_of(2)];
    let mut n = 0;
    for &k in frames {
        for j in 0..rows {
            for i in 0..columns {
                if mask[[i, j, k]] != 0 {
                    out[n / 8] |= 1 << (n % 8);
                }
                n += 1;
            }
        }
    }
    out
}

/// The distance between neighbouring slices along the normal (mm).
fn slice_spacing(source: &SeriesInfo) -> f64 {
    let (first, last) = (&source.slices[0], &source.slices[source.slices.len() - 1]);
    let d: f64 = (0..3)
        .map(|a| (last.position[a] - first.position[a]).powi(2))
        .sum::<f64>()
        .sqrt();
    d / (source.slices.len().max(2) - 1) as f64
}

/// Today's date and the time, UTC, as DICOM DA and TM.
fn now() -> (String, String) {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (seconds / 86_400) as i64;
    let secs = seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}{month:02}{day:02}"),
        format!("{:02}{:02}{:02}", secs / 3600, secs / 60 % 60, secs % 60),
    )
}
