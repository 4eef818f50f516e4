//! Post-processing of predicted masks by their connected components.

use ct_preprocess::mask::Components;
use ndarray::{ArrayView3, ArrayViewMut3};

/// Removes predicted components smaller than `min_mm3`, then keeps the `keep_largest` largest
/// (0: all). Returns how many components were removed.
pub fn postprocess(
    mut mask: ArrayViewMut3<u8>,
    spacing: [f64; 3],
    min_mm3: f64,
    keep_largest: usize,
) -> usize {
    if min_mm3 <= 0.0 && keep_largest == 0 {
        return 0;
    }
    let components = Components::of(mask.view());
    let voxel_mm3 = spacing.iter().product::<f64>();
    let sizes = components.sizes();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&n| std::cmp::Reverse(sizes[n]));
    let limit = if keep_largest == 0 {
        usize::MAX
    } else {
        keep_largest
    };
    let mut kept = vec![false; sizes.len()];
    for &n in order
        .iter()
        .filter(|&&n| sizes[n] as f64 * voxel_mm3 >= min_mm3)
        .take(limit)
    {
        kept[n] = true;
    }
    components.retain(mask.view_mut(), |n| kept[n]);
    kept.iter().filter(|k| !**k).count()
}

/// Clears the components of `mask` that touch no voxel of `allowed` (the grown lung mask, of the
/// same shape). Returns how many were cleared.
pub fn drop_outside(mut mask: ArrayViewMut3<u8>, allowed: ArrayView3<u8>) -> usize {
    let components = Components::of(mask.view());
    let inside = components.overlapping(allowed);
    components.retain(mask.view_mut(), |n| inside[n]);
    inside.iter().filter(|i| !**i).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn postprocessing_removes_small_components_and_keeps_the_largest() {
        let mut mask = Array3::<u8>::zeros((10, 10, 10));
        mask.slice_mut(ndarray::s![0..3, 0..3, 0..3]).fill(1); // 27 voxels
        mask.slice_mut(ndarray::s![6..8, 6..8, 6..8]).fill(1); // 8
        mask[[9, 0, 9]] = 1; // 1
        let mut small = mask.clone();
        assert_eq!(postprocess(small.view_mut(), [1.0, 1.0, 2.0], 4.0, 0), 1);
        assert_eq!(small.iter().filter(|v| **v == 1).count(), 35);
        let mut largest = mask.clone();
        assert_eq!(postprocess(largest.view_mut(), [1.0; 3], 0.0, 1), 2);
        assert_eq!(largest.iter().filter(|v| **v == 1).count(), 27);
        assert_eq!(postprocess(mask.view_mut(), [1.0; 3], 0.0, 0), 0);
    }

    #[test]
    fn the_lung_constraint_drops_what_misses_the_lungs_and_keeps_what_touches_them() {
        let mut mask = Array3::<u8>::zeros((12, 12, 4));
        let mut lungs = Array3::<u8>::zeros((12, 12, 4));
        lungs.slice_mut(ndarray::s![0..6, .., ..]).fill(1);
        mask.slice_mut(ndarray::s![1..3, 1..3, 1..3]).fill(1); // inside the lung
        mask.slice_mut(ndarray::s![5..8, 5..7, 0..2]).fill(1); // juxtapleural: half in, half out
        mask.slice_mut(ndarray::s![9..11, 9..11, 2..4]).fill(1); // outside (bowel gas)
        assert_eq!(drop_outside(mask.view_mut(), lungs.view()), 1);
        assert_eq!(mask.iter().filter(|v| **v == 1).count(), 8 + 12);
        assert_eq!(mask[[9, 9, 2]], 0);
        assert_eq!(
            mask[[7, 5, 0]],
            1,
            "the juxtapleural part outside the lung stays"
        );
        // No lungs: nothing survives.
        assert_eq!(
            drop_outside(mask.view_mut(), Array3::zeros((12, 12, 4)).view()),
            2
        );
        assert!(mask.iter().all(|v| *v == 0));
    }
}
