//! nibabel, the reader most users check files with, sees exactly the geometry we meant to write:
//! the same shape, affine, qform/sform codes and pixdim. Runs when a Python with nibabel is found
//! (`LUNGSEG_PYTHON`, which `.ci/run` sets up, or `python3`): the tests are `#[ignore]`d, so that
//! `cargo test` says they did not run; `cargo test -- --ignored` (and CI) runs them.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use ct_io::{Geometry, read_volume, write_volume};
use ct_phantom::{SynthConfig, generate_case};
use ndarray::Array3;

const CHECK: &str = r#"
import json, sys
import nibabel as nib, numpy as np
for spec in json.loads(sys.argv[1]):
    img = nib.load(spec["file"])
    assert list(img.shape) == spec["shape"], (spec["file"], img.shape)
    affine = np.array(spec["affine"])
    assert np.abs(img.affine - affine).max() < 1e-4, (spec["file"], img.affine, affine)
    if "same_as" in spec:
        ref = nib.load(spec["same_as"]).header
        h = img.header
        assert np.array_equal(img.affine, nib.load(spec["same_as"]).affine), spec["file"]
        for key in ["qform_code", "sform_code", "pixdim", "xyzt_units", "quatern_b", "quatern_c", "quatern_d", "srow_x", "srow_y", "srow_z"]:
            a, b = np.asarray(h[key]), np.asarray(ref[key])
            if key == "pixdim":
                a, b = a[1:4], b[1:4]
            assert np.array_equal(a, b), (spec["file"], key, a, b)
print("ok")
"#;

fn python() -> String {
    let candidates = std::env::var("LUNGSEG_PYTHON")
        .into_iter()
        .chain(["python3".to_string()]);
    for python in candidates {
        let ok = Command::new(&python)
            .args(["-c", "import nibabel"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return python;
        }
    }
    panic!("no Python with nibabel: set LUNGSEG_PYTHON (.ci/run installs one)");
}

/// Has nibabel check `specs` (see `CHECK`).
fn nibabel_agrees(specs: &[serde_json::Value]) {
    let out = Command::new(python())
        .args(["-c", CHECK, &serde_json::to_string(specs).unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nibabel disagrees:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

fn spec(file: &Path, geometry: &Geometry, same_as: Option<&Path>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "file": file,
        "shape": geometry.shape,
        "affine": geometry.affine,
    });
    if let Some(reference) = same_as {
        v["same_as"] = serde_json::json!(reference);
    }
    v
}

#[test]
#[ignore = "needs Python with nibabel: LUNGSEG_PYTHON (cargo test -- --ignored)"]
fn nibabel_reads_the_geometry_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut specs = Vec::new();
    for (n, orientation) in ["LAS", "LPS", "PIR"].iter().enumerate() {
        let config = SynthConfig {
            size: 48,
            slices: 24,
            orientation: orientation.to_string(),
            ..SynthConfig::default()
        };
        let p = generate_case(&config, n);
        let file = dir.path().join(format!("{orientation}.nii.gz"));
        write_volume(&file, p.ct.view(), &p.geometry).unwrap();
        specs.push(spec(&file, &p.geometry, None));
        // A mask written with the geometry read back from that file keeps every header field.
        let read = read_volume(&file).unwrap();
        let mask_file = dir.path().join(format!("{orientation}_mask.nii"));
        write_volume(&mask_file, p.label.view(), &read.geometry).unwrap();
        specs.push(spec(&mask_file, &read.geometry, Some(&file)));
    }
    nibabel_agrees(&specs);
}

#[test]
#[ignore = "needs the real CTs in ../shared/data/real and nibabel (cargo test -- --ignored)"]
fn real_ct_masks_we_write_keep_the_geometry_nibabel_reads() {
    let real = real_data_dir();
    let dir = tempfile::tempdir().unwrap();
    let mut specs = Vec::new();
    for name in ["lung1_image.nii.gz", "chest_ct_cropped_1p5mm.nii.gz"] {
        let source = real.join(name);
        let v = read_volume(&source).unwrap();
        let out = dir.path().join(format!("mask_{name}"));
        let mask: Array3<u8> = v.data.mapv(|x| u8::from(x > 0.0));
        write_volume(&out, mask.view(), &v.geometry).unwrap();
        specs.push(spec(&out, &v.geometry, Some(&source)));
    }
    nibabel_agrees(&specs);
}
