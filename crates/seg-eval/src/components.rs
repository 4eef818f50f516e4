//! Connected components of a binary mask (26-connectivity: voxels touching by a face, an edge or a
//! corner belong together), for lesion-wise detection and for post-processing predictions.

use ndarray::{ArrayView3, ArrayViewMut3};

/// The components of a mask, labelled inside the bounding box of its foreground (tumour masks are
/// small: a box keeps the label buffer small too).
#[derive(Debug, Clone)]
pub struct Components {
    origin: [usize; 3],
    extent: [usize; 3],
    /// 0 for background, else component number (1-based), Fortran order over the box.
    labels: Vec<u32>,
    /// Voxels of component n at index n - 1.
    sizes: Vec<u64>,
}

impl Components {
    pub fn of(mask: ArrayView3<u8>) -> Components {
        let Some((origin, extent)) = bounding_box(mask) else {
            return Components {
                origin: [0; 3],
                extent: [0; 3],
                labels: Vec::new(),
                sizes: Vec::new(),
            };
        };
        let [ex, ey, ez] = extent;
        let at = |i: usize, j: usize, k: usize| i + ex * (j + ey * k);
        let mut labels = vec![0u32; ex * ey * ez];
        let mut parent: Vec<u32> = vec![0]; // parent[0] unused: label 0 is background
        for k in 0..ez {
            for j in 0..ey {
                for i in 0..ex {
                    if mask[[origin[0] + i, origin[1] + j, origin[2] + k]] == 0 {
                        continue;
                    }
                    let mut label = 0u32;
                    // The 13 neighbours visited before this voxel.
                    for (di, dj, dk) in EARLIER_NEIGHBOURS {
                        let (Some(ni), Some(nj), Some(nk)) = (
                            i.checked_add_signed(di),
                            j.checked_add_signed(dj),
                            k.checked_add_signed(dk),
                        ) else {
                            continue;
                        };
                        if ni >= ex || nj >= ey {
                            continue;
                        }
                        let neighbour = labels[at(ni, nj, nk)];
                        if neighbour == 0 {
                            continue;
                        }
                        let root = find(&mut parent, neighbour);
                        if label == 0 {
                            label = root;
                        } else if root != label {
                            let (keep, merge) = (label.min(root), label.max(root));
                            parent[merge as usize] = keep;
                            label = keep;
                        }
                    }
                    if label == 0 {
                        label = parent.len() as u32;
                        parent.push(label);
                    }
                    labels[at(i, j, k)] = label;
                }
            }
        }
        // Number the roots 1.. in order of first appearance, and relabel every voxel.
        let mut number = vec![0u32; parent.len()];
        let mut sizes = Vec::new();
        for label in labels.iter_mut().filter(|l| **l != 0) {
            let root = find(&mut parent, *label) as usize;
            if number[root] == 0 {
                sizes.push(0);
                number[root] = sizes.len() as u32;
            }
            *label = number[root];
            sizes[*label as usize - 1] += 1;
        }
        Components {
            origin,
            extent,
            labels,
            sizes,
        }
    }

    pub fn count(&self) -> usize {
        self.sizes.len()
    }

    /// Voxels of each component.
    pub fn sizes(&self) -> &[u64] {
        &self.sizes
    }

    /// For each component, whether any of its voxels is set in `other` (of the same shape).
    pub fn overlapping(&self, other: ArrayView3<u8>) -> Vec<bool> {
        let mut hit = vec![false; self.count()];
        self.for_each_voxel(|ijk, label| {
            if other[ijk] != 0 {
                hit[label as usize - 1] = true;
            }
        });
        hit
    }

    /// Clears in `mask` (the mask these components came from) every component `keep` refuses;
    /// `keep` gets the component's 0-based index.
    pub fn retain(&self, mut mask: ArrayViewMut3<u8>, keep: impl Fn(usize) -> bool) {
        self.for_each_voxel(|ijk, label| {
            if !keep(label as usize - 1) {
                mask[ijk] = 0;
            }
        });
    }

    fn for_each_voxel(&self, mut f: impl FnMut([usize; 3], u32)) {
        let [ex, ey, _] = self.extent;
        for (n, &label) in self.labels.iter().enumerate() {
            if label != 0 {
                let (i, j, k) = (n % ex, (n / ex) % ey, n / (ex * ey));
                f(
                    [self.origin[0] + i, self.origin[1] + j, self.origin[2] + k],
                    label,
                );
            }
        }
    }
}

const EARLIER_NEIGHBOURS: [(isize, isize, isize); 13] = [
    (-1, -1, -1),
    (0, -1, -1),
    (1, -1, -1),
    (-1, 0, -1),
    (0, 0, -1),
    (1, 0, -1),
    (-1, 1, -1),
    (0, 1, -1),
    (1, 1, -1),
    (-1, -1, 0),
    (0, -1, 0),
    (1, -1, 0),
    (-1, 0, 0),
];

fn find(parent: &mut [u32], mut label: u32) -> u32 {
    while parent[label as usize] != label {
        let grand = parent[parent[label as usize] as usize];
        parent[label as usize] = grand;
        label = grand;
    }
    label
}

/// First corner and extent of the smallest box holding every non-zero voxel; None if there is none.
pub fn bounding_box(mask: ArrayView3<u8>) -> Option<([usize; 3], [usize; 3])> {
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    for ((i, j, k), &v) in mask.indexed_iter() {
        if v != 0 {
            for (d, x) in [i, j, k].into_iter().enumerate() {
                lo[d] = lo[d].min(x);
                hi[d] = hi[d].max(x);
            }
        }
    }
    (lo[0] != usize::MAX).then(|| (lo, [0, 1, 2].map(|d| hi[d] - lo[d] + 1)))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn diagonal_neighbours_join_and_separate_blobs_do_not() {
        let mut mask = Array3::<u8>::zeros((8, 8, 8));
        mask[[1, 1, 1]] = 1;
        mask[[2, 2, 2]] = 1; // corner contact: same component
        mask[[6, 6, 6]] = 1;
        mask[[6, 5, 6]] = 1;
        // A U shape whose arms only join at the bottom (needs merging).
        for j in 0..4 {
            mask[[4, j, 0]] = 1;
            mask[[6, j, 0]] = 1;
        }
        mask[[5, 3, 0]] = 1;
        let components = Components::of(mask.view());
        let mut sizes = components.sizes().to_vec();
        sizes.sort();
        assert_eq!(sizes, vec![2, 2, 9]);
    }

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
}
