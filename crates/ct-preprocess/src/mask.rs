//! Binary masks in 3D: connected components (26-connectivity: voxels touching by a face, an edge or
//! a corner belong together) and the exact Euclidean distance field. The lung mask is built with them;
//! seg-eval uses them for lesion-wise detection, post-processing and HD95.

use ndarray::{Array3, ArrayView3, ArrayViewMut3, Axis};
use rayon::prelude::*;

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

    /// Calls `f` with the index and the 1-based component number of every foreground voxel.
    pub fn for_each_voxel(&self, mut f: impl FnMut([usize; 3], u32)) {
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

/// Squared Euclidean distance (mm²) from every voxel to the nearest set voxel of `targets`: the
/// exact separable transform of Felzenszwalb and Huttenlocher, one axis at a time.
pub fn squared_distance_field(targets: ArrayView3<u8>, spacing: [f64; 3]) -> Array3<f64> {
    let mut field = targets.map(|&t| if t != 0 { 0.0 } else { f64::INFINITY });
    for (axis, &step) in spacing.iter().enumerate() {
        // Every line along `axis` is independent: split the volume along another axis.
        let outer = if axis == 2 { 0 } else { 2 };
        field
            .axis_iter_mut(Axis(outer))
            .into_par_iter()
            .for_each(|mut plane| {
                let inner = if axis < outer { axis } else { axis - 1 };
                let mut line = Vec::new();
                let mut scratch = Envelope::default();
                for mut lane in plane.lanes_mut(Axis(inner)) {
                    line.clear();
                    line.extend(lane.iter().copied());
                    scratch.transform(&mut line, step);
                    lane.iter_mut().zip(&line).for_each(|(v, d)| *v = *d);
                }
            });
    }
    field
}

/// Buffers of the 1D lower-envelope-of-parabolas transform.
#[derive(Default)]
struct Envelope {
    vertices: Vec<usize>,
    bounds: Vec<f64>,
    input: Vec<f64>,
}

impl Envelope {
    /// `f[q]` ← min over p of `f[p] + ((q − p) · step)²`.
    fn transform(&mut self, f: &mut [f64], step: f64) {
        let n = f.len();
        self.input.clear();
        self.input.extend_from_slice(f);
        self.vertices.clear();
        self.bounds.clear();
        let position = |q: usize| q as f64 * step;
        for q in 0..n {
            if self.input[q].is_infinite() {
                continue;
            }
            while let Some(&v) = self.vertices.last() {
                let s = intersection(&self.input, v, q, position);
                if s <= *self.bounds.last().expect("one bound per vertex") {
                    self.vertices.pop();
                    self.bounds.pop();
                } else {
                    self.bounds.push(s);
                    break;
                }
            }
            if self.vertices.is_empty() {
                self.bounds.push(f64::NEG_INFINITY);
            }
            self.vertices.push(q);
        }
        if self.vertices.is_empty() {
            return; // no target on this line: stays infinite
        }
        // bounds[m] is where parabola m starts to be the lowest.
        let mut m = 0;
        for (q, out) in f.iter_mut().enumerate() {
            let x = position(q);
            while m + 1 < self.vertices.len() && self.bounds[m + 1] < x {
                m += 1;
            }
            let v = self.vertices[m];
            let d = x - position(v);
            *out = self.input[v] + d * d;
        }
    }
}

fn intersection(f: &[f64], v: usize, q: usize, position: impl Fn(usize) -> f64) -> f64 {
    let (pv, pq) = (position(v), position(q));
    ((f[q] + pq * pq) - (f[v] + pv * pv)) / (2.0 * (pq - pv))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_distance_field_is_exact_on_an_anisotropic_grid() {
        let mut targets = Array3::<u8>::zeros((7, 6, 5));
        targets[[1, 2, 0]] = 1;
        targets[[5, 0, 4]] = 1;
        let spacing = [0.7, 1.3, 2.5];
        let field = squared_distance_field(targets.view(), spacing);
        for ((i, j, k), &d) in field.indexed_iter() {
            let brute = [[1usize, 2, 0], [5, 0, 4]]
                .iter()
                .map(|t| {
                    (0..3)
                        .map(|a| ((([i, j, k][a] as f64) - t[a] as f64) * spacing[a]).powi(2))
                        .sum::<f64>()
                })
                .fold(f64::INFINITY, f64::min);
            assert!((d - brute).abs() < 1e-9, "{:?}: {d} vs {brute}", (i, j, k));
        }
    }
}
