//! The train/validation split: by case, never by slice, and the same for the same ids and seed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::settings::PreprocessConfig;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Validation,
}

/// Which labelled cases train and which validate, each list sorted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitRecord {
    pub train: Vec<String>,
    pub validation: Vec<String>,
    /// How it was made: "explicit" (config list) or "seeded".
    pub method: String,
    pub seed: u64,
    pub validation_fraction: f64,
}

impl SplitRecord {
    /// Splits `ids` (any order): the explicit list when the config has one, else a seeded shuffle
    /// of the sorted ids of which the first round(fraction x n) validate (at least one when the
    /// fraction is > 0 and there are two cases or more; never all).
    pub fn new(ids: &[String], config: &PreprocessConfig) -> Result<SplitRecord, String> {
        let mut sorted = ids.to_vec();
        sorted.sort();
        let validation: Vec<String> = if config.validation_cases.is_empty() {
            let mut shuffled = sorted.clone();
            let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.random_range(0..=i));
            }
            let n = sorted.len();
            let mut count = (config.validation_fraction * n as f64).round() as usize;
            if config.validation_fraction > 0.0 && n >= 2 {
                count = count.clamp(1, n - 1);
            }
            shuffled.truncate(count.min(n));
            shuffled
        } else {
            for id in &config.validation_cases {
                if sorted.binary_search(id).is_err() {
                    return Err(format!("case {id:?} is not a labelled case of the task"));
                }
            }
            config.validation_cases.clone()
        };
        let is_validation = |id: &String| validation.contains(id);
        let mut validation_sorted: Vec<String> = sorted
            .iter()
            .filter(|id| is_validation(id))
            .cloned()
            .collect();
        validation_sorted.dedup();
        Ok(SplitRecord {
            train: sorted
                .iter()
                .filter(|id| !is_validation(id))
                .cloned()
                .collect(),
            validation: validation_sorted,
            method: if config.validation_cases.is_empty() {
                "seeded".into()
            } else {
                "explicit".into()
            },
            seed: config.seed,
            validation_fraction: config.validation_fraction,
        })
    }

    pub fn of(&self, id: &str) -> Split {
        if self.validation.iter().any(|v| v == id) {
            Split::Validation
        } else {
            Split::Train
        }
    }
}
