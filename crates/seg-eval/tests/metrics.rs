//! Metrics on hand-made masks whose answers are known.

use ndarray::{Array3, s};
use seg_eval::case_metrics;
use seg_eval::evaluate::Summary;

fn cube(shape: (usize, usize, usize), at: [usize; 3], side: usize) -> Array3<u8> {
    let mut mask = Array3::zeros(shape);
    mask.slice_mut(s![
        at[0]..at[0] + side,
        at[1]..at[1] + side,
        at[2]..at[2] + side
    ])
    .fill(1);
    mask
}

#[test]
fn identical_masks_score_perfectly() {
    let mask = cube((20, 20, 20), [5, 5, 5], 6);
    let m = case_metrics("a", mask.view(), mask.view(), [0.8, 0.8, 2.5]);
    assert_eq!(
        (m.dice, m.iou, m.precision, m.recall),
        (Some(1.0), Some(1.0), Some(1.0), Some(1.0))
    );
    assert_eq!(m.hd95_mm, Some(0.0));
    let ml = 216.0 * 0.8 * 0.8 * 2.5 / 1000.0;
    assert!((m.reference_ml - ml).abs() < 1e-12 && (m.predicted_ml - ml).abs() < 1e-12);
    assert_eq!(
        (
            m.reference_lesions,
            m.detected_lesions,
            m.false_positive_lesions
        ),
        (1, 1, 0)
    );
}

#[test]
fn disjoint_masks_score_zero() {
    let reference = cube((20, 20, 20), [1, 1, 1], 4);
    let predicted = cube((20, 20, 20), [12, 12, 12], 4);
    let m = case_metrics("b", predicted.view(), reference.view(), [1.0; 3]);
    assert_eq!(
        (m.dice, m.iou, m.precision, m.recall),
        (Some(0.0), Some(0.0), Some(0.0), Some(0.0))
    );
    assert_eq!(
        (
            m.detected_lesions,
            m.missed_lesions(),
            m.false_positive_lesions
        ),
        (0, 1, 1)
    );
    // Nearest corners (4,4,4) and (12,12,12): every surface distance is at least 8·√3.
    assert!(m.hd95_mm.unwrap() >= 8.0 * 3f64.sqrt());
}

#[test]
fn partial_overlap_matches_hand_counts() {
    // Two 4x4x4 cubes overlapping in a 2x4x4 slab: |A ∩ B| = 32, |A| = |B| = 64.
    let reference = cube((12, 12, 12), [2, 2, 2], 4);
    let predicted = cube((12, 12, 12), [4, 2, 2], 4);
    let m = case_metrics("c", predicted.view(), reference.view(), [1.0; 3]);
    assert_eq!(m.dice, Some(0.5));
    assert_eq!(m.iou, Some(32.0 / 96.0));
    assert_eq!((m.precision, m.recall), (Some(0.5), Some(0.5)));
}

#[test]
fn hd95_of_a_shifted_slab_is_the_shift_in_mm() {
    // One-voxel-thick slabs across the whole plane, 3 slices apart at 2.5 mm: every surface point
    // is exactly 7.5 mm from the other surface.
    let mut reference = Array3::<u8>::zeros((10, 12, 20));
    reference.slice_mut(s![.., .., 5]).fill(1);
    let mut predicted = Array3::<u8>::zeros((10, 12, 20));
    predicted.slice_mut(s![.., .., 8]).fill(1);
    let m = case_metrics("d", predicted.view(), reference.view(), [0.7, 0.7, 2.5]);
    assert!((m.hd95_mm.unwrap() - 7.5).abs() < 1e-9, "{:?}", m.hd95_mm);
    // Shifted in-plane instead, by 4 voxels of 0.7 mm: single voxels, 2.8 mm.
    let mut a = Array3::<u8>::zeros((10, 12, 20));
    a[[2, 3, 4]] = 1;
    let mut b = Array3::<u8>::zeros((10, 12, 20));
    b[[6, 3, 4]] = 1;
    let m = case_metrics("e", a.view(), b.view(), [0.7, 0.7, 2.5]);
    assert!((m.hd95_mm.unwrap() - 2.8).abs() < 1e-9);
}

#[test]
fn hd95_is_the_larger_of_the_two_directed_percentiles_on_an_asymmetric_case() {
    // A: one voxel; B: a line of 10 voxels starting at it, 0.7 mm apart. A → B: 0 mm. B → A:
    // 0, 0.7, ..., 6.3 mm, whose 95th percentile (numpy's interpolation) is 8.55 x 0.7 mm. The
    // mean of the two directed figures (4.275 x 0.7) or one percentile over both sets of distances
    // (8.5 x 0.7) would be other numbers.
    let mut a = Array3::<u8>::zeros((14, 6, 6));
    a[[2, 3, 4]] = 1;
    let mut b = Array3::<u8>::zeros((14, 6, 6));
    b.slice_mut(s![2..12, 3, 4]).fill(1);
    let want = 8.55 * 0.7;
    for (predicted, reference) in [(&a, &b), (&b, &a)] {
        let m = case_metrics("f", predicted.view(), reference.view(), [0.7, 1.0, 2.5]);
        let got = m.hd95_mm.unwrap();
        assert!((got - want).abs() < 1e-9, "{got} mm, not {want}");
    }
}

#[test]
fn empty_cases_follow_nnunet() {
    let empty = Array3::<u8>::zeros((8, 8, 8));
    let blob = cube((8, 8, 8), [2, 2, 2], 2);
    let both = case_metrics("f", empty.view(), empty.view(), [1.0; 3]);
    assert_eq!(
        (
            both.dice,
            both.iou,
            both.hd95_mm,
            both.precision,
            both.recall
        ),
        (None, None, None, None, None)
    );
    let false_alarm = case_metrics("g", blob.view(), empty.view(), [1.0; 3]);
    assert_eq!(
        (false_alarm.dice, false_alarm.precision, false_alarm.recall),
        (Some(0.0), Some(0.0), None)
    );
    assert_eq!(
        (false_alarm.hd95_mm, false_alarm.false_positive_lesions),
        (None, 1)
    );
    let missed = case_metrics("h", empty.view(), blob.view(), [1.0; 3]);
    assert_eq!(
        (missed.dice, missed.precision, missed.recall),
        (Some(0.0), None, Some(0.0))
    );
    assert_eq!(missed.missed_lesions(), 1);

    // The mean leaves the empty/empty case out; the others count as 0.
    let perfect = case_metrics("i", blob.view(), blob.view(), [1.0; 3]);
    let summary = Summary::of(
        &[both, false_alarm, missed, perfect],
        &[std::path::PathBuf::from("p")],
        std::path::Path::new("r"),
    );
    assert_eq!(summary.dice.n, 3);
    assert!((summary.dice.mean.unwrap() - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(summary.dice.median, Some(0.0));
    assert_eq!(summary.hd95_mm.n, 1);
    assert_eq!(
        (
            summary.lesions.reference,
            summary.lesions.detected,
            summary.lesions.false_positive
        ),
        (2, 1, 1)
    );
}

#[test]
fn lesions_are_counted_by_connected_component() {
    let mut reference = cube((30, 30, 30), [2, 2, 2], 4);
    reference.slice_mut(s![20..24, 20..24, 20..24]).fill(1);
    let mut predicted = cube((30, 30, 30), [3, 3, 3], 2); // inside the first lesion
    predicted.slice_mut(s![10..12, 25..27, 2..4]).fill(1); // nowhere near a lesion
    predicted[[12, 27, 4]] = 1; // touches the blob above by a corner: same component
    let m = case_metrics("j", predicted.view(), reference.view(), [1.0; 3]);
    assert_eq!(m.reference_lesions, 2);
    assert_eq!(
        (
            m.detected_lesions,
            m.missed_lesions(),
            m.false_positive_lesions
        ),
        (1, 1, 1)
    );
}
