//! The lung mask on phantoms (against their own lungs, whatever the axis order, spacing or field
//! of view), on the real CTs of `../shared/data/real` (skipped with a message when absent), and on
//! a CT without lungs.

use std::path::{Path, PathBuf};

use ct_io::nii::ReadOptions;
use ct_io::{Reorientation, read_mask_with, read_volume};
use ct_phantom::{Field, Phantom, SynthConfig, case_field, generate_case};
use ct_preprocess::lungs::{CONSTRAINT_MARGIN_MM, LungMask, MIN_EXTENT_CM2, lung_mask};
use ct_preprocess::mask::Components;
use ct_preprocess::settings::{CropMode, PreprocessConfig};
use ct_preprocess::slices::decide_crop;
use ndarray::{Array3, s};

fn config(size: usize, slices: usize, orientation: &str) -> SynthConfig {
    SynthConfig {
        cases: 8,
        test_cases: 0,
        size,
        slices,
        seed: 77,
        orientation: orientation.to_string(),
    }
}

/// The `nth` phantom (0-based) of those covering `field`.
fn phantom(size: usize, slices: usize, orientation: &str, field: Field, nth: usize) -> Phantom {
    let config = config(size, slices, orientation);
    let index = (0..)
        .filter(|&i| case_field(&config, i) == field)
        .nth(nth)
        .expect("every field comes up");
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

/// Grown by the lung constraint's 5 mm, the mask overlaps every tumour, so the constraint keeps
/// it; grown by 10 mm it holds all of it, so the crop keeps it. Returns the tumour voxels inside
/// the mask itself and all of them: where a tumour lies flush against the chest wall, the
/// mediastinum or the diaphragm, its outermost voxels replace the lung's outline and can fall
/// outside (half of a nodule on the outer rim of the lung's base, at 5 mm slices).
fn assert_tumours_held(mask: &LungMask, label: &Array3<u8>, what: &str) -> (usize, usize) {
    let components = Components::of(label.view());
    let grown = mask.dilated(CONSTRAINT_MARGIN_MM);
    let touching = components.overlapping(grown.view());
    assert!(
        touching.iter().all(|t| *t),
        "{what}: a tumour misses the grown mask"
    );
    assert_eq!(
        outside(&mask.dilated(10.0), label),
        0,
        "{what}: tumour beyond 10 mm of the mask"
    );
    let total = label.iter().filter(|v| **v != 0).count();
    (total - outside(&mask.to_canonical(), label), total)
}

#[test]
fn on_phantoms_the_mask_matches_their_lungs_and_holds_every_tumour() {
    // Axis orders, in-plane spacings of about 1-3 mm, slices of about 2-10 mm, every field of
    // view: chest, neck to pelvis, cut to the lungs.
    let (mut tumour_held, mut tumour_total) = (0, 0);
    for (size, slices, orientation, field, index) in [
        (256, 96, "LAS", Field::Chest, 0),
        (128, 48, "LPS", Field::Chest, 1),
        (192, 80, "PIR", Field::Trunk, 0),
        (256, 96, "RAS", Field::Tight, 0),
        (128, 96, "LAS", Field::Trunk, 1),
        (192, 64, "LPS", Field::Tight, 1),
    ] {
        let p = phantom(size, slices, orientation, field, index);
        let (ct, lungs, label, spacing) = canonical(&p);
        let mask = lung_mask(ct.view(), spacing);
        let full = mask.to_canonical();
        let d = dice(&full, &lungs);
        let missed = outside(&full, &label);
        eprintln!(
            "{size}x{size}x{slices} {orientation} {field:?} {index}: dice {d:.4}, {} regions, \
             {:.0} ml, tumour voxels outside {missed} of {}",
            mask.regions,
            mask.volume_ml,
            label.iter().filter(|v| **v != 0).count()
        );
        assert!(d >= 0.95, "{orientation} {field:?} {index}: Dice {d:.3}");
        let (held, total) =
            assert_tumours_held(&mask, &label, &format!("{orientation} {field:?} {index}"));
        tumour_held += held;
        tumour_total += total;
        // The extent holds every slice with more than a lung's tip on it.
        let extent = mask.axial_extent.expect("lungs found");
        let pixel_cm2 = spacing[0] * spacing[1] / 100.0;
        for k in (0..lungs.dim().2).filter(|k| !(extent[0]..extent[1]).contains(k)) {
            let area = lungs
                .slice(s![.., .., k])
                .iter()
                .filter(|v| **v != 0)
                .count() as f64
                * pixel_cm2;
            assert!(
                area < 2.0 * MIN_EXTENT_CM2,
                "slice {k}: {area:.1} cm² of lung left out"
            );
        }
    }
    // Four fifths of all tumour voxels lie inside the mask itself.
    eprintln!("tumour voxels in the mask: {tumour_held} of {tumour_total}");
    assert!(tumour_total > 1000, "the phantoms have tumours");
    assert!(
        tumour_held * 5 >= tumour_total * 4,
        "{tumour_held} of {tumour_total}"
    );
}

#[test]
fn a_field_of_view_cropped_tight_around_the_chest_keeps_its_lungs() {
    let p = phantom(256, 96, "LAS", Field::Chest, 2);
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
    let (held, total) = assert_tumours_held(&mask, &label, "cropped");
    assert!(
        held * 5 >= total * 4,
        "cropped: {held} of {total} tumour voxels in the mask"
    );
}

#[test]
fn a_ct_below_the_lungs_has_an_empty_mask() {
    let p = phantom(192, 96, "LAS", Field::Trunk, 2);
    let (ct, lungs, _, spacing) = canonical(&p);
    // The slices below the lowest lung voxel: abdomen and pelvis, bowel gas and all.
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
    let p = phantom(128, 48, "LAS", Field::Chest, 0);
    let (ct, _, _, spacing) = canonical(&p);
    let mask = lung_mask(ct.view(), spacing);
    let (inner, grown) = (mask.to_canonical(), mask.dilated(10.0));
    assert_eq!(outside(&grown, &inner), 0);
    let count = |m: &Array3<u8>| m.iter().filter(|v| **v != 0).count();
    assert!(count(&grown) > count(&inner) * 11 / 10);
}

#[test]
fn the_lung_crop_of_a_neck_to_pelvis_ct_keeps_every_tumour_slice() {
    // As prediction crops: from the lung mask alone, no label to go by.
    let settings = PreprocessConfig {
        crop: CropMode::Lungs,
        ..PreprocessConfig::default()
    };
    let mut seen = 0;
    for nth in 0..4 {
        let p = phantom(128, 96, "LAS", Field::Trunk, nth);
        let (ct, _, label, spacing) = canonical(&p);
        let mask = lung_mask(ct.view(), spacing);
        let depth = ct.dim().2;
        let crop = decide_crop(&settings, depth, spacing[2], None, mask.axial_extent);
        let [first, end] = crop.kept(depth);
        let tumour_slices: Vec<usize> = (0..depth)
            .filter(|&k| label.slice(s![.., .., k]).iter().any(|v| *v != 0))
            .collect();
        eprintln!(
            "trunk {nth}: kept {first}..{end} of {depth}, tumour slices {:?}",
            tumour_slices.first().zip(tumour_slices.last())
        );
        assert!(
            tumour_slices.iter().all(|k| (first..end).contains(k)),
            "trunk {nth}: a tumour slice cropped away ({first}..{end})"
        );
        // The abdomen and pelvis go: at least a third of the slices.
        assert!(
            end - first <= depth * 2 / 3,
            "trunk {nth}: kept {first}..{end}"
        );
        seen += usize::from(!tumour_slices.is_empty());
    }
    assert!(seen >= 2, "only {seen} trunk phantoms with tumours");
}

/// `../shared/data/real` from the workspace root; the tests that need it are `#[ignore]`d.
fn real_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/real");
    assert!(
        dir.join("lung1_image.nii.gz").is_file(),
        "{} is absent",
        dir.display()
    );
    dir
}

fn real_mask(path: &Path) -> (LungMask, Reorientation) {
    let volume = read_volume(path).unwrap();
    let r = Reorientation::to_canonical(&volume.geometry);
    let spacing = r.canonical_geometry(&volume.geometry).spacing;
    (lung_mask(r.canonical_view(volume.data.view()), spacing), r)
}

#[test]
#[ignore = "needs the real CTs in ../shared/data/real (cargo test -- --ignored)"]
fn real_ct_lung_masks_hold_lung1s_nodule_and_both_lungs() {
    let dir = real_dir();
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
