//! DICOM series written here from phantoms with dicom-rs, in the ways scanners and PACS write
//! them, read back to the phantom's world geometry and voxels; and every refusal.

use std::path::{Path, PathBuf};

use ct_io::dicom::{read_dicom, scan};
use ct_io::{Reorientation, read_ct};
use ct_phantom::dicom::{
    EXPLICIT_LE, IMPLICIT_LE, RLE_LOSSLESS, Writing, decimal, element, rle_frame, write_series,
};
use ct_phantom::{SynthConfig, generate_case};
use dicom_core::value::{PixelFragmentSequence, PrimitiveValue};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;

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
        write_series(&folder, &p.ct, &p.geometry.affine, &how).unwrap();
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
    write_series(&root.join("a/lung"), &p.ct, &p.geometry.affine, &lung).unwrap();
    write_series(&root.join("b/soft"), &p.ct, &p.geometry.affine, &soft).unwrap();
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
    .unwrap()
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
    write_series(&at("mr"), &p.ct, &p.geometry.affine, &mr).unwrap();
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
    let rle_files = write_series(&at("undecodable_rle"), &p.ct, &p.geometry.affine, &rle).unwrap();
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
        write_series(&folder, &p.ct, &p.geometry.affine, &how).unwrap();
        assert_dcm2niix_agrees(&what, &folder, &read_ct(&folder, None).unwrap().volume);
    }
}

/// dcm2niix converts `folder` to the same voxels and world geometry as `ours`.
fn assert_dcm2niix_agrees(what: &str, folder: &Path, ours: &ct_io::Volume) {
    let out = tempfile::tempdir().unwrap();
    let run = std::process::Command::new("dcm2niix")
        .args(["-z", "n", "-b", "n", "-f", "converted", "-o"])
        .arg(out.path())
        .arg(folder)
        .output()
        .expect("dcm2niix is installed");
    assert!(
        run.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&run.stdout)
    );
    let theirs = ct_io::read_volume(&out.path().join("converted.nii")).unwrap();
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

#[test]
fn ct_info_describes_a_dicom_folder_and_converts_it_to_nifti() {
    let dir = tempfile::tempdir().unwrap();
    let p = phantom("RPI");
    let how = Writing::new("1.2.826.0.1.3680043.10.99.500");
    write_series(&dir.path().join("ct"), &p.ct, &p.geometry.affine, &how).unwrap();
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
    )
    .unwrap();
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

#[test]
#[ignore = "needs gdcmconv (Debian's libgdcm-tools; .ci/run installs it) (cargo test -- --ignored)"]
fn series_compressed_by_gdcm_read_back_to_the_phantom() {
    let dir = tempfile::tempdir().unwrap();
    // Signed 16-bit and unsigned 12-bit storage, re-encoded as gdcmconv does it (lossless unless
    // told --lossy): the signed JPEG-lossless case is where decoders have gone wrong.
    let codecs: [(&str, &[&str]); 4] = [
        ("jpeg-lossless", &["--jpeg"]),
        ("rle", &["--rle"]),
        ("jpeg2000-lossless", &["--j2k"]),
        ("deflate", &["--deflated"]),
    ];
    for signed in [true, false] {
        let p = phantom("LAS");
        let source = dir.path().join(format!("plain_{signed}"));
        let how = Writing {
            signed,
            ..Writing::new(&format!("1.2.826.0.1.3680043.10.99.7{}", u8::from(signed)))
        };
        let files = write_series(&source, &p.ct, &p.geometry.affine, &how).unwrap();
        for (codec, flags) in codecs {
            let what = format!("{codec} signed={signed}");
            let folder = dir.path().join(format!("{codec}_{signed}"));
            std::fs::create_dir_all(&folder).unwrap();
            for file in &files {
                let out = folder.join(file.file_name().unwrap());
                let run = std::process::Command::new("gdcmconv")
                    .args(flags)
                    .arg(file)
                    .arg(&out)
                    .output()
                    .expect("gdcmconv is installed");
                assert!(
                    run.status.success(),
                    "{what}: {}",
                    String::from_utf8_lossy(&run.stderr)
                );
            }
            let ct = read_ct(&folder, None).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_same_ct(&what, &p, &ct.volume);
        }
        // JPEG-LS has no decoder here (CharLS is a C++ library): refused, naming the file.
        let folder = dir.path().join(format!("jpegls_{signed}"));
        std::fs::create_dir_all(&folder).unwrap();
        let out = folder.join("slice.dcm");
        let run = std::process::Command::new("gdcmconv")
            .arg("--jpegls")
            .arg(&files[0])
            .arg(&out)
            .output()
            .unwrap();
        assert!(run.status.success());
        std::fs::copy(&files[1], folder.join("next.dcm")).unwrap();
        let err = read_ct(&folder, None).unwrap_err().to_string();
        assert!(
            err.contains(&out.display().to_string()) && err.contains("1.2.840.10008.1.2.4.80"),
            "{err}"
        );
    }
}

#[test]
#[ignore = "needs pydicom's bundled test files (LUNGSEG_PYTHON) and dcm2niix (cargo test -- --ignored)"]
fn pydicoms_real_world_series_read_refuse_and_agree_with_dcm2niix() {
    let python = std::env::var("LUNGSEG_PYTHON").unwrap_or_else(|_| "python3".into());
    let run = std::process::Command::new(&python)
        .args([
            "-c",
            "import os, pydicom; print(os.path.dirname(pydicom.__file__))",
        ])
        .output()
        .expect("a Python with pydicom");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let root = PathBuf::from(String::from_utf8_lossy(&run.stdout).trim())
        .join("data/test_files/dicomdirtests");
    // Five CT slices to sort (file names unrelated to position).
    let five = root.join("98892001/CT5N");
    let ct = read_ct(&five, None).unwrap();
    assert_eq!(ct.volume.geometry.shape, [16, 16, 5]);
    assert_dcm2niix_agrees("CT5N", &five, &ct.volume);
    // The whole folder: its DICOMDIRs and README skipped and counted, several series listed.
    let found = scan(std::slice::from_ref(&root)).unwrap();
    assert!(found.skipped_files >= 3, "{} skipped", found.skipped_files);
    let err = read_ct(&root, None).unwrap_err().to_string();
    assert!(err.contains("choose one with --series"), "{err}");
    // Two scouts only, and a series with a gap.
    let err = read_ct(&root.join("98892001/CT2N"), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no volumetric CT series here") && err.contains("Scout"),
        "{err}"
    );
    let err = read_ct(&root.join("77654033/CT2"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("a missing slice"), "{err}");
}

#[test]
fn an_enhanced_multi_frame_ct_reads_back_to_the_phantom() {
    use ct_phantom::dicom::write_enhanced;
    let dir = tempfile::tempdir().unwrap();
    for (n, orientation) in ["LAS", "RPI"].into_iter().enumerate() {
        let p = phantom(orientation);
        let how = Writing {
            signed: n == 0,
            ..Writing::new(&format!("1.2.826.0.1.3680043.10.99.95{n}"))
        };
        let file = dir.path().join(format!("enhanced{n}/ct.dcm"));
        write_enhanced(&file, &p.ct, &p.geometry.affine, &how).unwrap();
        // The folder and the file itself both stand for the series.
        for path in [file.parent().unwrap(), file.as_path()] {
            let ct = read_ct(path, None).unwrap_or_else(|e| panic!("{orientation}: {e}"));
            assert_same_ct(&format!("enhanced {orientation}"), &p, &ct.volume);
            let slices = ct.dicom.unwrap().series.slices;
            assert_eq!(slices.len(), p.ct.dim().2);
            // Each frame once, referred to by number.
            let mut frames: Vec<u32> = slices.iter().map(|s| s.frame_number.unwrap()).collect();
            frames.sort();
            assert_eq!(frames, (1..=p.ct.dim().2 as u32).collect::<Vec<_>>());
            assert!(
                slices
                    .iter()
                    .all(|s| s.sop_instance_uid == slices[0].sop_instance_uid)
            );
        }
    }
}

#[test]
#[ignore = "needs dcm2niix (Debian's package; .ci/run installs it) (cargo test -- --ignored)"]
fn dcm2niix_reads_our_enhanced_ct_as_we_do() {
    use ct_phantom::dicom::write_enhanced;
    let dir = tempfile::tempdir().unwrap();
    let p = phantom("LAS");
    let file = dir.path().join("enhanced/ct.dcm");
    let how = Writing::new("1.2.826.0.1.3680043.10.99.960");
    write_enhanced(&file, &p.ct, &p.geometry.affine, &how).unwrap();
    let folder = file.parent().unwrap();
    assert_dcm2niix_agrees("enhanced", folder, &read_ct(folder, None).unwrap().volume);
}
