//! DICOM series written here from phantoms with dicom-rs, in the ways scanners and PACS write
//! them, read back to the phantom's world geometry and voxels; and every refusal.

use std::path::{Path, PathBuf};

use ct_io::dicom::{read_dicom, scan};
use ct_io::{Reorientation, read_ct};
use ct_phantom::{SynthConfig, generate_case};
use dicom_core::value::{PixelFragmentSequence, PrimitiveValue};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use ndarray::Array3;

const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// How a test series is written.
#[derive(Clone)]
struct Writing {
    series_uid: String,
    modality: &'static str,
    /// Stored as signed (HU) or unsigned (HU + 1024, intercept -1024).
    signed: bool,
    transfer_syntax: &'static str,
    /// File names in an order unrelated to position (a hash), InstanceNumber running against it.
    shuffled: bool,
}

impl Writing {
    fn new(series_uid: &str) -> Writing {
        Writing {
            series_uid: series_uid.into(),
            modality: "CT",
            signed: true,
            transfer_syntax: EXPLICIT_LE,
            shuffled: true,
        }
    }
}

/// A small phantom in the given voxel axis order.
fn phantom(orientation: &str) -> ct_phantom::Phantom {
    let config = SynthConfig {
        size: 40,
        slices: 12,
        orientation: orientation.to_string(),
        ..SynthConfig::default()
    };
    generate_case(&config, 0)
}

fn element(
    tag: dicom_core::Tag,
    vr: VR,
    value: impl Into<PrimitiveValue>,
) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, value.into())
}

fn decimal(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.6}"))
        .collect::<Vec<_>>()
        .join("\\")
}

/// Writes the phantom as one file per slice of its third voxel axis: columns along its first
/// axis, rows along its second, world positions from its affine (RAS → LPS). Returns the files in
/// slice order.
fn write_series(
    dir: &Path,
    ct: &Array3<i16>,
    affine: &[[f64; 4]; 4],
    how: &Writing,
) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let (columns, rows, slices) = ct.dim();
    let lps = |v: [f64; 3]| [-v[0], -v[1], v[2]];
    let axis = |c: usize| [affine[0][c], affine[1][c], affine[2][c]];
    let norm = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    let (ci, cj) = (axis(0), axis(1));
    let (si, sj) = (norm(ci), norm(cj));
    let row = lps(ci.map(|v| v / si));
    let column = lps(cj.map(|v| v / sj));
    let mut files = Vec::new();
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
        let file_object = object
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(how.transfer_syntax))
            .unwrap();
        let name = if how.shuffled {
            format!(
                "IM{:08x}",
                (k as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
            )
        } else {
            format!("slice{k:04}.dcm")
        };
        let path = dir.join(name);
        file_object.write_to_file(&path).unwrap();
        files.push(path);
    }
    files
}

/// One RLE Lossless frame of 16-bit samples: the high-byte and low-byte planes as segments of
/// literal runs, row by row (PS3.5 G.3).
fn rle_frame(words: &[u16], columns: usize) -> Vec<u8> {
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

/// The phantom's and the read volume's voxels and geometry, compared in world space.
fn assert_same_ct(what: &str, phantom: &ct_phantom::Phantom, volume: &ct_io::Volume) {
    let (a, b) = (
        Reorientation::to_canonical(&phantom.geometry),
        Reorientation::to_canonical(&volume.geometry),
    );
    let (ga, gb) = (
        a.canonical_geometry(&phantom.geometry),
        b.canonical_geometry(&volume.geometry),
    );
    assert_eq!(ga.shape, gb.shape, "{what}");
    let offset = ga.affine_difference(&gb);
    assert!(offset < 1e-3, "{what}: affines differ by {offset} mm");
    let expected = a.apply(phantom.ct.view()).mapv(f32::from);
    let got = b.apply(volume.data.view());
    let differing = expected
        .iter()
        .zip(got.iter())
        .filter(|(x, y)| x != y)
        .count();
    assert_eq!(differing, 0, "{what}: {differing} voxels differ");
}

#[test]
fn series_in_any_orientation_storage_and_file_order_read_back_to_the_phantom() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("LAS", true, EXPLICIT_LE),
        ("RPI", false, EXPLICIT_LE), // feet first, unsigned 12-bit
        ("LPS", true, IMPLICIT_LE),
        ("RAI", true, EXPLICIT_LE),  // prone and feet first
        ("PIR", false, EXPLICIT_LE), // sagittal slices
        ("LAS", true, RLE_LOSSLESS),
        ("RPI", false, RLE_LOSSLESS),
    ];
    for (n, (orientation, signed, syntax)) in cases.into_iter().enumerate() {
        let what = format!("{orientation} signed={signed} {syntax}");
        let p = phantom(orientation);
        let folder = dir.path().join(format!("series{n}"));
        let how = Writing {
            signed,
            transfer_syntax: syntax,
            ..Writing::new(&format!("1.2.826.0.1.3680043.10.99.{}", 100 + n))
        };
        write_series(&folder, &p.ct, &p.geometry.affine, &how);
        let ct = read_ct(&folder, None).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_same_ct(&what, &p, &ct.volume);
        assert_eq!(ct.volume.datatype, ct_io::Datatype::I16, "{what}");
        let source = ct.dicom.expect("read from DICOM");
        assert_eq!(source.series.slices.len(), p.ct.dim().2);
        assert_eq!(source.series.patient_id, "P001");
        // The slices are listed in volume order, each with its own position.
        let positions: Vec<[f64; 3]> = source.series.slices.iter().map(|s| s.position).collect();
        for (k, position) in positions.iter().enumerate() {
            let world = ct.volume.geometry.world([0.0, 0.0, k as f64]);
            let lps = [-world[0], -world[1], world[2]];
            let off = (0..3)
                .map(|d| (lps[d] - position[d]).abs())
                .fold(0.0, f64::max);
            assert!(off < 1e-3, "{what}: slice {k} placed {off} mm away");
        }
    }
}

#[test]
fn a_folder_with_other_files_and_several_series_is_read_by_choice() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("export");
    let p = phantom("LAS");
    let lung = Writing::new("1.2.826.0.1.3680043.10.99.201");
    let soft = Writing::new("1.2.826.0.1.3680043.10.99.202");
    write_series(&root.join("a/lung"), &p.ct, &p.geometry.affine, &lung);
    write_series(&root.join("b/soft"), &p.ct, &p.geometry.affine, &soft);
    std::fs::write(root.join("README.txt"), "exported by a PACS").unwrap();
    std::fs::write(root.join("a/thumb.jpg"), [0xff, 0xd8, 0xff]).unwrap();
    // An exact duplicate of a slice (the same SOP instance) is skipped.
    let first = std::fs::read_dir(root.join("a/lung"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&first, root.join("a/copy_of_a_slice.dcm")).unwrap();

    let err = read_ct(&root, None).unwrap_err().to_string();
    assert!(
        err.contains("2 CT series here; choose one with --series"),
        "{err}"
    );
    assert!(
        err.contains(&lung.series_uid) && err.contains(&soft.series_uid),
        "{err}"
    );
    assert!(err.contains("12 slices of 40x40"), "{err}");

    let found = scan(std::slice::from_ref(&root)).unwrap();
    assert_eq!(found.skipped_files, 2);
    assert_eq!(found.duplicates, 1);
    assert_eq!(found.series().len(), 2);
    let (volume, source) = read_dicom(std::slice::from_ref(&root), Some(&soft.series_uid)).unwrap();
    assert_same_ct("chosen", &p, &volume);
    assert_eq!(source.series.series_instance_uid, soft.series_uid);
    assert!(
        source.choice.contains("2 non-image files skipped"),
        "{}",
        source.choice
    );
    assert!(
        source.choice.contains("1 duplicate files skipped"),
        "{}",
        source.choice
    );
    // One file of a series stands for its series.
    let ct = read_ct(&first, None).unwrap();
    assert_eq!(
        ct.dicom.unwrap().series.series_instance_uid,
        lung.series_uid
    );
}

/// Writes a good series into `dir` and returns its files in slice order.
fn good_series(dir: &Path) -> Vec<PathBuf> {
    let p = phantom("LAS");
    write_series(
        dir,
        &p.ct,
        &p.geometry.affine,
        &Writing::new("1.2.826.0.1.3680043.10.99.300"),
    )
}

fn refusal(path: &Path) -> String {
    let err = read_ct(path, None).unwrap_err().to_string();
    assert!(!err.contains('\n'), "one line: {err}");
    err
}

#[test]
fn broken_series_are_refused_with_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);

    std::fs::create_dir_all(at("empty")).unwrap();
    std::fs::write(at("empty/notes.txt"), "no images").unwrap();
    assert!(refusal(&at("empty")).contains("no DICOM image files here"));

    let p = phantom("LAS");
    let mr = Writing {
        modality: "MR",
        ..Writing::new("1.2.826.0.1.3680043.10.99.301")
    };
    write_series(&at("mr"), &p.ct, &p.geometry.affine, &mr);
    let err = refusal(&at("mr"));
    assert!(
        err.contains("no volumetric CT series here") && err.contains("MR"),
        "{err}"
    );

    let files = good_series(&at("gap"));
    std::fs::remove_file(&files[5]).unwrap();
    let err = refusal(&at("gap"));
    assert!(
        err.contains("not evenly spaced") && err.contains("a missing slice"),
        "{err}"
    );

    // Two different slices at one position: a copy of a slice under a new SOP instance UID.
    let files = good_series(&at("twice"));
    let mut object = dicom_object::open_file(&files[3]).unwrap();
    object.put(element(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        "1.2.826.0.1.3680043.10.99.300.99",
    ));
    object.update_meta(|meta| {
        meta.media_storage_sop_instance_uid = "1.2.826.0.1.3680043.10.99.300.99".into()
    });
    object.write_to_file(at("twice/extra.dcm")).unwrap();
    let err = refusal(&at("twice"));
    assert!(
        err.contains("two different slices at one position"),
        "{err}"
    );

    // Gantry tilt: each slice shifted sideways a little more.
    let files = good_series(&at("tilt"));
    for (k, file) in files.iter().enumerate() {
        let mut object = dicom_object::open_file(file).unwrap();
        let mut position = object
            .element(tags::IMAGE_POSITION_PATIENT)
            .unwrap()
            .to_multi_float64()
            .unwrap();
        position[1] += 0.5 * k as f64;
        object.put(element(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            decimal(&position),
        ));
        object.write_to_file(file).unwrap();
    }
    let err = refusal(&at("tilt"));
    assert!(err.contains("gantry tilt"), "{err}");

    // Mixed sizes in one series.
    let files = good_series(&at("sizes"));
    let mut object = dicom_object::open_file(&files[11]).unwrap();
    object.put(element(tags::ROWS, VR::US, 20u16));
    object.put(element(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(vec![0u16; 800].into()),
    ));
    object.write_to_file(&files[11]).unwrap();
    let err = refusal(&at("sizes"));
    assert!(
        err.contains("mixes slices of different orientation, size"),
        "{err}"
    );

    // A truncated file, and one whose header is garbage after the DICM marker.
    let files = good_series(&at("truncated"));
    let bytes = std::fs::read(&files[6]).unwrap();
    std::fs::write(&files[6], &bytes[..bytes.len() - 1000]).unwrap();
    let err = refusal(&at("truncated"));
    assert!(err.contains(&files[6].display().to_string()), "{err}");
    let files = good_series(&at("corrupt"));
    let mut bytes = std::fs::read(&files[2]).unwrap();
    bytes[140..400].fill(0xee);
    std::fs::write(&files[2], &bytes).unwrap();
    let err = refusal(&at("corrupt"));
    assert!(
        err.contains(&files[2].display().to_string()) && err.contains("corrupt"),
        "{err}"
    );

    // Pixel data that does not decode: RLE segments claimed past the end of the fragment.
    let rle = Writing {
        transfer_syntax: RLE_LOSSLESS,
        ..Writing::new("1.2.826.0.1.3680043.10.99.300")
    };
    let p = phantom("LAS");
    let rle_files = write_series(&at("undecodable_rle"), &p.ct, &p.geometry.affine, &rle);
    let mut object = dicom_object::open_file(&rle_files[4]).unwrap();
    let mut frame = rle_frame(&[0u16; 1600], 40);
    frame[8..12].copy_from_slice(&100_000u32.to_le_bytes());
    object.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new(vec![0u32], vec![frame]),
    ));
    object.write_to_file(&rle_files[4]).unwrap();
    let err = refusal(&at("undecodable_rle"));
    assert!(
        err.contains(&rle_files[4].display().to_string()) && err.contains("cannot decode"),
        "{err}"
    );
}

#[test]
#[ignore = "needs dcm2niix (Debian's package; .ci/run installs it) (cargo test -- --ignored)"]
fn dcm2niix_reads_the_same_voxels_and_world_geometry() {
    let dir = tempfile::tempdir().unwrap();
    for (n, (orientation, signed, syntax)) in [
        ("LAS", true, EXPLICIT_LE),
        ("RAI", false, IMPLICIT_LE),
        ("PIR", true, RLE_LOSSLESS),
    ]
    .into_iter()
    .enumerate()
    {
        let what = format!("{orientation} signed={signed} {syntax}");
        let p = phantom(orientation);
        let folder = dir.path().join(format!("series{n}"));
        let how = Writing {
            signed,
            transfer_syntax: syntax,
            ..Writing::new(&format!("1.2.826.0.1.3680043.10.99.{}", 400 + n))
        };
        write_series(&folder, &p.ct, &p.geometry.affine, &how);
        let out = dir.path().join(format!("dcm2niix{n}"));
        std::fs::create_dir_all(&out).unwrap();
        let run = std::process::Command::new("dcm2niix")
            .args(["-z", "n", "-b", "n", "-f", "converted", "-o"])
            .arg(&out)
            .arg(&folder)
            .output()
            .expect("dcm2niix is installed");
        assert!(
            run.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&run.stdout)
        );
        let theirs = ct_io::read_volume(&out.join("converted.nii")).unwrap();
        let ours = read_ct(&folder, None).unwrap().volume;
        let (a, b) = (
            Reorientation::to_canonical(&theirs.geometry),
            Reorientation::to_canonical(&ours.geometry),
        );
        let offset = a
            .canonical_geometry(&theirs.geometry)
            .affine_difference(&b.canonical_geometry(&ours.geometry));
        assert!(
            offset < 1e-3,
            "{what}: world geometry differs by {offset} mm"
        );
        assert!(
            a.apply(theirs.data.view()) == b.apply(ours.data.view()),
            "{what}: voxels differ"
        );
    }
}

#[test]
fn ct_info_describes_a_dicom_folder_and_converts_it_to_nifti() {
    let dir = tempfile::tempdir().unwrap();
    let p = phantom("RPI");
    let how = Writing::new("1.2.826.0.1.3680043.10.99.500");
    write_series(&dir.path().join("ct"), &p.ct, &p.geometry.affine, &how);
    let out = dir.path().join("converted.nii.gz");
    let ct_info = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ct-info"))
            .args(args)
            .output()
            .unwrap()
    };
    let folder = dir.path().join("ct");
    let run = ct_info(&["--convert".as_ref(), out.as_os_str(), folder.as_os_str()]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains(&how.series_uid) && stdout.contains("written"),
        "{stdout}"
    );
    let converted = ct_io::read_volume(&out).unwrap();
    assert_eq!(converted.datatype, ct_io::Datatype::I16);
    assert_same_ct("converted", &p, &converted);

    // A second series: ct-info lists both and reads neither until told which.
    let other = Writing::new("1.2.826.0.1.3680043.10.99.501");
    write_series(
        &dir.path().join("ct/other"),
        &p.ct,
        &p.geometry.affine,
        &other,
    );
    let run = ct_info(&[folder.as_os_str()]);
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("choose one with --series") && stderr.contains(&other.series_uid),
        "{stderr}"
    );
    let run = ct_info(&[
        "--json".as_ref(),
        "--series".as_ref(),
        other.series_uid.as_ref(),
        folder.as_os_str(),
    ]);
    assert!(run.status.success());
    let info: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(info["series"]["id"], other.series_uid.as_str());
    let run = ct_info(&[
        "--convert".as_ref(),
        out.as_os_str(),
        folder.as_os_str(),
        folder.as_os_str(),
    ]);
    assert_eq!(run.status.code(), Some(2));
}
