//! The lung mask on phantoms (against their own lungs, whatever the axis order, spacing or field
//! of view), on the real CTs of `../shared/data/real` (skipped with a message when absent), and on
//! a CT without lungs.

use std::path::{Path, PathBuf};

use ct_io::nii::ReadOptions;
use ct_io::phantom::{Phantom, SynthConfig, generate_case};
use ct_io::{Reorientation, read_mask_with, read_volume};
use ct_preprocess::lungs::{LungMask, lung_mask};
use ndarray::{Array3, s};

fn phantom(size: usize, slices: usize, orientation: &str, index: usize) -> Phantom {
    let config = SynthConfig {
        cases: 8,
        test_cases: 0,
        size,
        slices,
        seed: 77,
        orientation: orientation.to_string(),
    };
    generate_case(&config, index)
}

/// The phantom's CT in HU, lungs and label, all canonical, and its canonical spacing.
fn canonical(p: &Phantom) -> (Array3<f32>, Array3<u8>, Array3<u8>, [f64; 3]) {
    let r = Reorientation::to_canonical(&p.geometry);
    (
        r.apply(p.ct.view()).mapv(f32::from),
        r.apply(p.lung.view()),
        r.apply(p.label.view()),
        r.canonical_geometry(&p.geometry).spacing,
    )
}

fn dice(a: &Array3<u8>, b: &Array3<u8>) -> f64 {
    let both = ndarray::Zip::from(a)
        .and(b)
        .fold(0usize, |n, &x, &y| n + usize::from(x != 0 && y != 0));
    let count = |m: &Array3<u8>| m.iter().filter(|v| **v != 0).count();
    2.0 * both as f64 / (count(a) + count(b)) as f64
}

fn outside(mask: &Array3<u8>, label: &Array3<u8>) -> usize {
    ndarray::Zip::from(mask)
        .and(label)
        .fold(0, |n, &m, &l| n + usize::from(l != 0 && m == 0))
}

/// The mask holds most of every tumour, and grown by the lung constraint's 5 mm all of it:
/// where a tumour lies flush against the chest wall, its outermost voxels replace the lung's
/// outline and can fall just outside.
fn assert_tumours_held(mask: &LungMask, label: &Array3<u8>, what: &str) {
    let tumour = label.iter().filter(|v| **v != 0).count();
    let missed = outside(&mask.to_canonical(), label);
    assert!(
        missed * 4 <= tumour,
        "{what}: {missed} of {tumour} tumour voxels outside the mask"
    );
    assert_eq!(
        outside(&mask.dilated(5.0), label),
        0,
        "{what}: tumour outside the grown mask"
    );
}

#[test]
fn on_phantoms_the_mask_matches_their_lungs_and_holds_every_tumour() {
    // Axis orders, in-plane spacings of about 1.5 and 3 mm, slices of about 3 and 6 mm.
    for (size, slices, orientation, index) in [
        (256, 96, "LAS", 0),
        (128, 48, "LPS", 1),
        (192, 80, "PIR", 2),
        (256, 96, "RAS", 3),
        (128, 96, "LAS", 4),
    ] {
        let p = phantom(size, slices, orientation, index);
        let (ct, lungs, label, spacing) = canonical(&p);
        let mask = lung_mask(ct.view(), spacing);
        let full = mask.to_canonical();
        let d = dice(&full, &lungs);
        let missed = outside(&full, &label);
        eprintln!(
            "{size}x{size}x{slices} {orientation} case {index}: dice {d:.4}, {} regions, \
             {:.0} ml, tumour voxels outside {missed} of {}",
            mask.regions,
            mask.volume_ml,
            label.iter().filter(|v| **v != 0).count()
        );
        assert!(d >= 0.95, "{orientation} case {index}: Dice {d:.3}");
        assert_tumours_held(&mask, &label, &format!("{orientation} case {index}"));
        let extent = mask.axial_extent.expect("lungs found");
        let lung_slices: Vec<usize> = (0..lungs.dim().2)
            .filter(|&k| lungs.slice(s![.., .., k]).iter().any(|v| *v != 0))
            .collect();
        assert!(extent[0] <= lung_slices[0] && extent[1] > *lung_slices.last().unwrap());
    }
}

#[test]
fn a_field_of_view_cropped_tight_around_the_chest_keeps_its_lungs() {
    let p = phantom(256, 96, "LAS", 5);
    let (ct, lungs, label, spacing) = canonical(&p);
    // Cut in-plane to the middle 60% (the lungs reach the image's edge) and to the central slices.
    let (w, h, d) = ct.dim();
    let cut = s![w / 5..w * 4 / 5, h / 5..h * 4 / 5, d / 3..d * 2 / 3];
    let (ct, lungs, label) = (
        ct.slice(cut).to_owned(),
        lungs.slice(cut).to_owned(),
        label.slice(cut).to_owned(),
    );
    let mask = lung_mask(ct.view(), spacing);
    let d = dice(&mask.to_canonical(), &lungs);
    eprintln!("cropped: Dice {d:.4}");
    assert!(d >= 0.9, "Dice {d:.3} on the cropped phantom");
    assert_tumours_held(&mask, &label, "cropped");
}

#[test]
fn a_ct_below_the_lungs_has_an_empty_mask() {
    let p = phantom(192, 96, "LAS", 6);
    let (ct, lungs, _, spacing) = canonical(&p);
    // The slices below the lowest lung voxel: abdomen only.
    let first_lung = (0..lungs.dim().2)
        .find(|&k| lungs.slice(s![.., .., k]).iter().any(|v| *v != 0))
        .expect("the phantom has lungs");
    assert!(first_lung > 8, "the phantom has an abdomen");
    let abdomen = ct.slice(s![.., .., ..first_lung - 2]).to_owned();
    let mask = lung_mask(abdomen.view(), spacing);
    assert!(mask.is_empty(), "{} ml of lung found", mask.volume_ml);
    assert_eq!(mask.to_canonical().iter().filter(|v| **v != 0).count(), 0);
    // Air alone (nothing scanned) and soft tissue alone have no lungs either.
    for hu in [-1000.0, 40.0] {
        let empty = Array3::<f32>::from_elem((64, 64, 20), hu);
        assert!(lung_mask(empty.view(), [2.0, 2.0, 3.0]).is_empty());
    }
}

#[test]
fn the_grown_mask_contains_the_mask() {
    let p = phantom(128, 48, "LAS", 0);
    let (ct, _, _, spacing) = canonical(&p);
    let mask = lung_mask(ct.view(), spacing);
    let (inner, grown) = (mask.to_canonical(), mask.dilated(10.0));
    assert_eq!(outside(&grown, &inner), 0);
    let count = |m: &Array3<u8>| m.iter().filter(|v| **v != 0).count();
    assert!(count(&grown) > count(&inner) * 11 / 10);
}

fn real_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/real");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipped: {} is absent", dir.display());
        None
    }
}

fn real_mask(path: &Path) -> (LungMask, Reorientation) {
    let volume = read_volume(path).unwrap();
    let r = Reorientation::to_canonical(&volume.geometry);
    let spacing = r.canonical_geometry(&volume.geometry).spacing;
    (lung_mask(r.canonical_view(volume.data.view()), spacing), r)
}

#[test]
fn on_real_cts_the_mask_holds_lung1s_nodule_and_both_lungs() {
    let Some(dir) = real_dir() else { return };
    let (mask, r) = real_mask(&dir.join("lung1_image.nii.gz"));
    let label = r.apply(
        read_mask_with(&dir.join("lung1_label.nii.gz"), &ReadOptions::default())
            .unwrap()
            .data
            .view(),
    );
    eprintln!(
        "lung1: {:.0} ml in {} regions, slices {:?}",
        mask.volume_ml, mask.regions, mask.axial_extent
    );
    assert_eq!(outside(&mask.to_canonical(), &label), 0, "nodule outside");
    // Adult lungs: litres, not millilitres or the whole body.
    assert!((1500.0..9000.0).contains(&mask.volume_ml));
    let (cropped, _) = real_mask(&dir.join("chest_ct_cropped_1p5mm.nii.gz"));
    eprintln!(
        "chest_ct_cropped_1p5mm: {:.0} ml in {} regions, slices {:?}",
        cropped.volume_ml, cropped.regions, cropped.axial_extent
    );
    assert!(cropped.volume_ml > 300.0);
}
