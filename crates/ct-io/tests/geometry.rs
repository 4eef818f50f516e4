//! Reorientation to canonical RAS and back is exact, and geometry survives read → reorient →
//! inverse → write, checked against the header fields on disk.

mod common;

use common::*;
use ct_io::geometry::affine_for_orientation;
use ct_io::{Geometry, Reorientation, read_volume, write_volume};
use ndarray::Array3;

#[test]
fn reorientation_round_trips_exactly_for_every_axis_order() {
    let shape = [4, 5, 6];
    let data = Array3::from_shape_fn(shape, |(i, j, k)| (i * 100 + j * 10 + k) as i16);
    for code in ["LAS", "LPS", "RAS", "RPI", "PIR", "ASL", "SLP", "IRA"] {
        let g = geometry(code, shape);
        let r = Reorientation::to_canonical(&g);
        let canonical = r.apply(data.view());
        let cg = r.canonical_geometry(&g);
        assert_eq!(cg.orientation(), "RAS", "{code}");
        assert_eq!(canonical.shape(), r.canonical_shape(), "{code}");
        // Every voxel keeps its world position.
        for ((i, j, k), v) in canonical.indexed_iter() {
            let o = r.original_index([i, j, k]);
            assert_eq!(*v, data[o], "{code}");
            let (wc, wo) = (
                cg.world([i as f64, j as f64, k as f64]),
                g.world(o.map(|x| x as f64)),
            );
            for d in 0..3 {
                assert!((wc[d] - wo[d]).abs() < 1e-3, "{code}: {wc:?} vs {wo:?}");
            }
        }
        // Canonical axis 2 runs inferior → superior: slice 0 is the inferior end.
        let z_first = cg.world([0.0, 0.0, 0.0])[2];
        let z_last = cg.world([0.0, 0.0, (canonical.shape()[2] - 1) as f64])[2];
        assert!(z_first < z_last, "{code}");
        assert_eq!(r.restore(canonical.view()), data, "{code}");
        assert_eq!(r.is_identity(), code == "RAS");
    }
}

#[test]
fn geometry_survives_read_reorient_restore_write() {
    let dir = tempfile::tempdir().unwrap();
    for code in ["LAS", "LPS", "PIR"] {
        let shape = [6, 5, 4];
        let data = Array3::from_shape_fn(shape, |(i, j, k)| (i + 7 * j + 31 * k) as i16 - 50);
        let source = dir.path().join(format!("{code}.nii.gz"));
        write_volume(&source, data.view(), &geometry(code, shape)).unwrap();

        let volume = read_volume(&source).unwrap();
        let r = Reorientation::to_canonical(&volume.geometry);
        let canonical = r.apply(volume.data.view());
        let mask = canonical.mapv(|v| u8::from(v > 0.0));
        let restored = r.restore(mask.view());
        let out = dir.path().join(format!("{code}_mask.nii.gz"));
        write_volume(&out, restored.view(), &volume.geometry).unwrap();

        assert_eq!(header_fields(&out), header_fields(&source), "{code}");
        let back = read_volume(&out).unwrap();
        assert_eq!(back.geometry, volume.geometry);
        for (m, v) in back.data.iter().zip(volume.data.iter()) {
            assert_eq!(*m, f32::from(u8::from(*v > 0.0)));
        }
    }
}

#[test]
fn qform_only_and_no_transform_headers_give_the_nifti_affines() {
    let shape = [3, 3, 3];
    let a = affine_for_orientation("LPS", shape, [0.7, 0.7, 3.0], [5.0, 6.0, 7.0]).unwrap();
    let mut g = Geometry::from_affine(shape, a);
    g.nifti.sform_code = 0;
    g.nifti.srow = [[0.0; 4]; 3];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qform.nii");
    write_volume(
        &path,
        Array3::<u8>::zeros(shape).view(),
        &Geometry::from_nifti(shape, g.nifti.clone()),
    )
    .unwrap();
    let v = read_volume(&path).unwrap();
    assert_eq!(v.geometry.orientation(), "LPS");
    let expected = Geometry::from_affine(shape, a);
    assert!(v.geometry.affine_difference(&expected) < 1e-4);
    g.nifti.qform_code = 0;
    let plain = Geometry::from_nifti(shape, g.nifti);
    assert_eq!(plain.affine[0][0], 0.699999988079071);
    assert_eq!(plain.affine[2][2], 3.0);
    assert_eq!(plain.orientation(), "RAS");
}

#[test]
#[ignore = "needs the real CTs in ../shared/data/real (cargo test -- --ignored)"]
fn real_ct_files_read_with_the_documented_geometry() {
    let dir = real_data_dir();
    let image = read_volume(&dir.join("lung1_image.nii.gz")).unwrap();
    assert_eq!(image.geometry.shape, [512, 512, 48]);
    for (got, want) in image.geometry.spacing.iter().zip([0.5703, 0.5703, 5.0]) {
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    }
    assert_eq!(image.geometry.orientation(), "LPS");
    let (min, max) = image
        .data
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(
        min >= -1024.0 && max <= 3071.0 && max > 1000.0,
        "{min} {max}"
    );

    let label = read_volume(&dir.join("lung1_label.nii.gz")).unwrap();
    ct_io::task::check_label_matches(
        &image.geometry,
        &label.geometry,
        &dir.join("lung1_label.nii.gz"),
    )
    .unwrap();
    let slices: Vec<usize> = label
        .data
        .indexed_iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|((_, _, k), _)| k)
        .collect();
    assert_eq!(slices.len(), 837);
    assert_eq!(
        (slices.iter().min(), slices.iter().max()),
        (Some(&32), Some(&34))
    );

    // LPS → RAS flips x and y only: the tumour stays on slices 32..34, counted from the inferior end.
    let r = Reorientation::to_canonical(&label.geometry);
    assert_eq!((r.permutation, r.flip), ([0, 1, 2], [true, true, false]));
    let canonical = r.apply(label.data.view());
    let kept: usize = (32..=34)
        .map(|k| {
            canonical
                .index_axis(ndarray::Axis(2), k)
                .iter()
                .filter(|v| **v > 0.0)
                .count()
        })
        .sum();
    assert_eq!(kept, 837);

    let cropped = read_volume(&dir.join("chest_ct_cropped_1p5mm.nii.gz")).unwrap();
    assert_eq!(cropped.geometry.shape, [122, 102, 112]);
    assert_eq!(cropped.geometry.orientation(), "LPS");
    for s in cropped.geometry.spacing {
        assert!((s - 1.5).abs() < 1e-4);
    }
}

#[test]
#[ignore = "needs the real CTs in ../shared/data/real (cargo test -- --ignored)"]
fn real_ct_header_fields_survive_a_rewrite() {
    let dir = real_data_dir();
    let source = dir.join("lung1_label.nii.gz");
    let label = read_volume(&source).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mask.nii.gz");
    let mask = label.data.mapv(|v| v as u8);
    write_volume(&out, mask.view(), &label.geometry).unwrap();
    assert_eq!(header_fields(&out), header_fields(&source));
}
