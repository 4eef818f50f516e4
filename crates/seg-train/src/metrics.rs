//! Validation figures: per-case 3D Dice on thresholded probabilities with nnU-Net's rule for empty
//! cases, and the reference project's Dice pooled over all slices on soft probabilities.

/// Voxel counts of one case, summed over its slices.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Overlap {
    pub intersection: f64,
    pub predicted: f64,
    pub reference: f64,
}

impl Overlap {
    pub fn add(&mut self, other: Overlap) {
        self.intersection += other.intersection;
        self.predicted += other.predicted;
        self.reference += other.reference;
    }

    /// 2|P∩R| / (|P| + |R|); None when both are empty (nnU-Net excludes such a case), and 0 when
    /// only the reference is empty.
    pub fn dice(&self) -> Option<f64> {
        let total = self.predicted + self.reference;
        (total > 0.0).then(|| 2.0 * self.intersection / total)
    }
}

/// Mean of the per-case Dice values over the cases that count; None if none does.
pub fn mean_case_dice(cases: &[Overlap]) -> Option<f64> {
    let values: Vec<f64> = cases.iter().filter_map(Overlap::dice).collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The reference's figure: one Dice over every validation pixel, on probabilities.
pub fn pooled_soft_dice(sum_product: f64, sum_probability: f64, sum_target: f64) -> f64 {
    2.0 * sum_product / (sum_probability + sum_target).max(1e-9)
}
