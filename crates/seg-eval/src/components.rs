//! Post-processing of predicted masks by their connected components, and its choice on
//! validation in the manner of nnU-Net's `determine_postprocessing`: a rule is kept only if it
//! raises the mean per-case Dice of the validation (or out-of-fold) predictions.

use std::fmt;

use ct_preprocess::mask::Components;
use ndarray::{ArrayView3, ArrayViewMut3};
use serde::{Deserialize, Serialize};

/// What is done to a thresholded mask, in this order: components that miss the (grown) lung mask
/// dropped, components under `min_component_mm3` removed, the `keep_largest` largest kept (0: all).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PostProcessing {
    pub lung_constraint: bool,
    pub min_component_mm3: f64,
    pub keep_largest: usize,
}

impl PostProcessing {
    /// Nothing removed.
    pub const NONE: PostProcessing = PostProcessing {
        lung_constraint: false,
        min_component_mm3: 0.0,
        keep_largest: 0,
    };

    /// Applies the rules to `mask`; `allowed` is the grown lung mask (None: the lung constraint is
    /// not applied). Returns the components dropped outside the lungs and those removed by size
    /// or count.
    pub fn apply(
        &self,
        mut mask: ArrayViewMut3<u8>,
        spacing: [f64; 3],
        allowed: Option<ArrayView3<u8>>,
    ) -> Removed {
        let mut removed = Removed::default();
        if self.lung_constraint
            && let Some(allowed) = allowed
        {
            removed.outside_lungs = drop_outside(mask.view_mut(), allowed);
        }
        removed.by_size = postprocess(mask, spacing, self.min_component_mm3, self.keep_largest);
        removed
    }

    /// Which components of a table these rules keep.
    fn keeps(&self, table: &ComponentTable) -> Vec<bool> {
        let sizes: Vec<u64> = table.components.iter().map(|c| c.voxels).collect();
        let candidates =
            (0..sizes.len()).filter(|&n| !self.lung_constraint || table.components[n].in_lungs);
        keep_by_size(
            &sizes,
            candidates,
            table.voxel_mm3,
            self.min_component_mm3,
            self.keep_largest,
        )
    }

    /// The case's Dice with these rules (None when both masks end up empty).
    pub fn dice(&self, table: &ComponentTable) -> Option<f64> {
        let kept = self.keeps(table);
        let (mut predicted, mut overlap) = (0u64, 0u64);
        for (c, _) in table.components.iter().zip(&kept).filter(|(_, k)| **k) {
            predicted += c.voxels;
            overlap += c.overlap;
        }
        let total = predicted + table.reference_voxels;
        (total > 0).then(|| 2.0 * overlap as f64 / total as f64)
    }
}

impl fmt::Display for PostProcessing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.lung_constraint {
            parts.push("lung constraint".to_string());
        }
        if self.min_component_mm3 > 0.0 {
            parts.push(format!("components ≥ {} mm³", self.min_component_mm3));
        }
        if self.keep_largest > 0 {
            parts.push(format!("the {} largest", self.keep_largest));
        }
        if parts.is_empty() {
            write!(f, "none")
        } else {
            write!(f, "{}", parts.join(", "))
        }
    }
}

/// Components removed by [`PostProcessing::apply`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Removed {
    pub outside_lungs: usize,
    pub by_size: usize,
}

/// A validation case's thresholded prediction before any rule, as its components: enough to score
/// every rule without the masks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentTable {
    pub reference_voxels: u64,
    pub voxel_mm3: f64,
    pub components: Vec<ComponentFacts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ComponentFacts {
    pub voxels: u64,
    /// Voxels shared with the reference.
    pub overlap: u64,
    /// Touches the grown lung mask.
    pub in_lungs: bool,
}

impl ComponentTable {
    /// The table of `predicted` against `reference` (same shape), `allowed` the grown lung mask
    /// (None: every component counts as inside).
    pub fn of(
        predicted: ArrayView3<u8>,
        reference: ArrayView3<u8>,
        allowed: Option<ArrayView3<u8>>,
        spacing: [f64; 3],
    ) -> ComponentTable {
        let components = Components::of(predicted);
        let mut overlap = vec![0u64; components.count()];
        components.for_each_voxel(|ijk, label| {
            if reference[ijk] != 0 {
                overlap[label as usize - 1] += 1;
            }
        });
        let in_lungs = match allowed {
            Some(allowed) => components.overlapping(allowed),
            None => vec![true; components.count()],
        };
        ComponentTable {
            reference_voxels: reference.iter().filter(|v| **v != 0).count() as u64,
            voxel_mm3: spacing.iter().product(),
            components: components
                .sizes()
                .iter()
                .zip(overlap)
                .zip(in_lungs)
                .map(|((&voxels, overlap), in_lungs)| ComponentFacts {
                    voxels,
                    overlap,
                    in_lungs,
                })
                .collect(),
        }
    }
}

/// Mean per-case Dice of `rules` over `tables` (cases with both masks empty left out, as nnU-Net).
pub fn mean_dice(rules: &PostProcessing, tables: &[ComponentTable]) -> Option<f64> {
    let scores: Vec<f64> = tables.iter().filter_map(|t| rules.dice(t)).collect();
    (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64)
}

/// One rule tried on validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub rules: PostProcessing,
    pub mean_dice: Option<f64>,
    pub kept: bool,
}

/// The post-processing chosen on validation, recorded in the run (`postprocessing.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// `[eval]`'s own rules, where the choice starts.
    pub baseline: PostProcessing,
    pub baseline_dice: Option<f64>,
    pub chosen: PostProcessing,
    pub chosen_dice: Option<f64>,
    pub cases: usize,
    pub trials: Vec<Trial>,
}

/// Minimum component sizes tried (mm³): from a few voxels of a 1 mm grid to a 1 cm sphere.
pub const MIN_SIZES_MM3: [f64; 5] = [10.0, 30.0, 100.0, 300.0, 1000.0];
/// Numbers of largest components tried.
pub const KEEP_LARGEST: [usize; 3] = [1, 2, 3];

/// Chooses greedily from `baseline`, as nnU-Net does: the lung constraint (if the baseline lacks
/// it), then the best minimum size, then the best number of largest components, each kept only if
/// it raises the mean per-case Dice strictly above the rules kept so far.
pub fn choose(baseline: PostProcessing, tables: &[ComponentTable]) -> Choice {
    let baseline_dice = mean_dice(&baseline, tables);
    let mut chosen = baseline;
    let mut best = baseline_dice;
    let mut trials = Vec::new();
    let mut steps: Vec<Vec<PostProcessing>> = Vec::new();
    if !baseline.lung_constraint {
        steps.push(vec![PostProcessing {
            lung_constraint: true,
            ..baseline
        }]);
    }
    steps.push(
        MIN_SIZES_MM3
            .iter()
            .filter(|&&mm3| mm3 > baseline.min_component_mm3)
            .map(|&mm3| PostProcessing {
                min_component_mm3: mm3,
                ..baseline
            })
            .collect(),
    );
    if baseline.keep_largest == 0 {
        steps.push(
            KEEP_LARGEST
                .iter()
                .map(|&k| PostProcessing {
                    keep_largest: k,
                    ..baseline
                })
                .collect(),
        );
    }
    for step in steps {
        let mut step_best: Option<(PostProcessing, f64)> = None;
        let first_trial = trials.len();
        for candidate in step {
            // Each step varies one rule on top of what was kept before it.
            let rules = PostProcessing {
                lung_constraint: candidate.lung_constraint || chosen.lung_constraint,
                min_component_mm3: if candidate.min_component_mm3 != baseline.min_component_mm3 {
                    candidate.min_component_mm3
                } else {
                    chosen.min_component_mm3
                },
                keep_largest: if candidate.keep_largest != baseline.keep_largest {
                    candidate.keep_largest
                } else {
                    chosen.keep_largest
                },
            };
            let dice = mean_dice(&rules, tables);
            if let Some(d) = dice
                && best.is_none_or(|b| d > b + 1e-9)
                && step_best.is_none_or(|(_, s)| d > s)
            {
                step_best = Some((rules, d));
            }
            trials.push(Trial {
                rules,
                mean_dice: dice,
                kept: false,
            });
        }
        if let Some((rules, dice)) = step_best {
            chosen = rules;
            best = Some(dice);
            if let Some(t) = trials[first_trial..].iter_mut().find(|t| t.rules == rules) {
                t.kept = true;
            }
        }
    }
    Choice {
        baseline,
        baseline_dice,
        chosen,
        chosen_dice: best,
        cases: tables.len(),
        trials,
    }
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
    let kept = keep_by_size(
        components.sizes(),
        0..components.count(),
        spacing.iter().product(),
        min_mm3,
        keep_largest,
    );
    components.retain(mask.view_mut(), |n| kept[n]);
    kept.iter().filter(|k| !**k).count()
}

/// Of the `candidates` among components of `sizes` voxels, those of at least `min_mm3` and, of
/// these, the `keep_largest` largest (0: all).
fn keep_by_size(
    sizes: &[u64],
    candidates: impl Iterator<Item = usize>,
    voxel_mm3: f64,
    min_mm3: f64,
    keep_largest: usize,
) -> Vec<bool> {
    let mut order: Vec<usize> = candidates
        .filter(|&n| sizes[n] as f64 * voxel_mm3 >= min_mm3)
        .collect();
    order.sort_by_key(|&n| std::cmp::Reverse(sizes[n]));
    if keep_largest > 0 {
        order.truncate(keep_largest);
    }
    let mut kept = vec![false; sizes.len()];
    for n in order {
        kept[n] = true;
    }
    kept
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

    /// A case whose prediction is `components` (voxels, overlap with the reference, in lungs).
    fn table(reference_voxels: u64, components: &[(u64, u64, bool)]) -> ComponentTable {
        ComponentTable {
            reference_voxels,
            voxel_mm3: 1.0,
            components: components
                .iter()
                .map(|&(voxels, overlap, in_lungs)| ComponentFacts {
                    voxels,
                    overlap,
                    in_lungs,
                })
                .collect(),
        }
    }

    #[test]
    fn a_component_table_scores_rules_as_the_masks_would() {
        let mut predicted = Array3::<u8>::zeros((12, 12, 12));
        let mut reference = Array3::<u8>::zeros((12, 12, 12));
        let mut lungs = Array3::<u8>::zeros((12, 12, 12));
        predicted.slice_mut(ndarray::s![0..4, 0..4, 0..4]).fill(1); // 64, half on the tumour
        reference.slice_mut(ndarray::s![0..2, 0..4, 0..4]).fill(1); // 32
        reference.slice_mut(ndarray::s![6..8, 6..8, 0..2]).fill(1); // 8, missed
        predicted
            .slice_mut(ndarray::s![10..12, 10..12, 10..12])
            .fill(1); // 8, false, outside
        lungs.slice_mut(ndarray::s![0..6, .., ..]).fill(1);
        let spacing = [1.0, 1.0, 2.0];
        let table = ComponentTable::of(
            predicted.view(),
            reference.view(),
            Some(lungs.view()),
            spacing,
        );
        for rules in [
            PostProcessing::NONE,
            PostProcessing {
                lung_constraint: true,
                ..PostProcessing::NONE
            },
            PostProcessing {
                min_component_mm3: 17.0,
                ..PostProcessing::NONE
            },
            PostProcessing {
                keep_largest: 1,
                ..PostProcessing::NONE
            },
        ] {
            let mut mask = predicted.clone();
            rules.apply(mask.view_mut(), spacing, Some(lungs.view()));
            let metrics = crate::case_metrics("c", mask.view(), reference.view(), spacing);
            assert_eq!(rules.dice(&table), metrics.dice, "{rules}");
        }
    }

    #[test]
    fn no_rule_is_kept_where_every_rule_lowers_dice() {
        // Every prediction exact and made of small lesions: each rule removes true tumour.
        let tables = vec![
            table(20, &[(12, 12, true), (8, 8, true)]),
            table(
                16,
                &[(5, 5, true), (6, 6, true), (3, 3, false), (2, 2, true)],
            ),
        ];
        let choice = choose(PostProcessing::NONE, &tables);
        assert_eq!(choice.chosen, PostProcessing::NONE);
        assert_eq!(choice.chosen_dice, Some(1.0));
        assert!(choice.trials.iter().all(|t| !t.kept));
        assert!(
            choice.trials.iter().all(|t| t.mean_dice < Some(1.0)),
            "{:?}",
            choice.trials
        );
        assert_eq!(
            choice.trials.len(),
            1 + MIN_SIZES_MM3.len() + KEEP_LARGEST.len()
        );
    }

    #[test]
    fn a_rule_is_kept_only_when_it_raises_the_mean_dice() {
        // One tumour per case, found, plus small false components (one outside the lungs).
        let tables = vec![
            table(500, &[(480, 450, true), (9, 0, true)]),
            table(800, &[(820, 760, true), (20, 0, false)]),
            table(0, &[]), // tumour-free, nothing predicted: left out of the mean
        ];
        let choice = choose(PostProcessing::NONE, &tables);
        assert!(choice.chosen.lung_constraint, "{choice:?}");
        assert_eq!(choice.chosen.min_component_mm3, 10.0, "{choice:?}");
        assert_eq!(
            choice.chosen.keep_largest, 0,
            "no gain once the small components are gone"
        );
        assert!(choice.chosen_dice > choice.baseline_dice);
        assert_eq!(choice.trials.iter().filter(|t| t.kept).count(), 2);
        // Starting from the lung constraint, it is kept whatever validation says.
        let from_lungs = choose(
            PostProcessing {
                lung_constraint: true,
                ..PostProcessing::NONE
            },
            &tables,
        );
        assert!(from_lungs.chosen.lung_constraint);
        assert_eq!(
            from_lungs.trials.len(),
            MIN_SIZES_MM3.len() + KEEP_LARGEST.len()
        );
    }
}
