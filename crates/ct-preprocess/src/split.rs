//! The train/validation split: by case, never by slice, and the same for the same ids and seed.
//! With `folds = K > 1`, the cases are dealt into K folds instead, each held out by one training
//! (K-fold cross-validation, as nnU-Net reports Task06).

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
    /// With K > 1 folds: the case ids of each fold, each list sorted (then `train` holds every
    /// case and `validation` none: a training holds out one fold). Empty for one split.
    #[serde(default)]
    pub folds: Vec<Vec<String>>,
}

/// The cases one training learns from and validates on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldOut {
    pub train: Vec<String>,
    pub validation: Vec<String>,
}

impl SplitRecord {
    /// Splits `ids` (any order): the explicit list when the config has one, else a seeded shuffle
    /// of the sorted ids of which the first round(fraction x n) validate (at least one when the
    /// fraction is > 0 and there are two cases or more; never all).
    /// With `folds = K > 1`: the same shuffle dealt round-robin into K folds.
    pub fn new(ids: &[String], config: &PreprocessConfig) -> Result<SplitRecord, String> {
        let mut sorted = ids.to_vec();
        sorted.sort();
        sorted.dedup();
        let shuffled = || {
            let mut shuffled = sorted.clone();
            let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.random_range(0..=i));
            }
            shuffled
        };
        if config.folds > 1 {
            if sorted.len() < config.folds {
                return Err(format!(
                    "{} folds need at least {} labelled cases, and the task has {}",
                    config.folds,
                    config.folds,
                    sorted.len()
                ));
            }
            let mut folds = vec![Vec::new(); config.folds];
            for (i, id) in shuffled().into_iter().enumerate() {
                folds[i % config.folds].push(id);
            }
            for fold in &mut folds {
                fold.sort();
            }
            return Ok(SplitRecord {
                train: sorted,
                validation: Vec::new(),
                method: "folds".into(),
                seed: config.seed,
                validation_fraction: 0.0,
                folds,
            });
        }
        let validation: Vec<String> = if config.validation_cases.is_empty() {
            let mut shuffled = shuffled();
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
            folds: Vec::new(),
        })
    }

    /// K, the number of folds (1 for a single split).
    pub fn fold_count(&self) -> usize {
        self.folds.len().max(1)
    }

    /// The fold that holds `id` out (None for a single split or an unknown case).
    pub fn fold_of(&self, id: &str) -> Option<usize> {
        self.folds.iter().position(|f| f.iter().any(|c| c == id))
    }

    /// What a training learns from and validates on: the split itself (`fold` None, one split),
    /// or every fold but `fold` and that fold (K folds).
    pub fn held_out(&self, fold: Option<usize>) -> Result<HeldOut, String> {
        match (fold, self.folds.len()) {
            (None, 0) => Ok(HeldOut {
                train: self.train.clone(),
                validation: self.validation.clone(),
            }),
            (None, k) => Err(format!(
                "the dataset is split into {k} folds: choose the fold to hold out (--fold 0..{})",
                k - 1
            )),
            (Some(_), 0) => Err(
                "the dataset has one train/validation split, not folds: set [preprocess] folds \
                 = K and rerun ct-preprocess, or train without a fold"
                    .to_string(),
            ),
            (Some(f), k) if f >= k => Err(format!(
                "fold {f} does not exist: the dataset has folds 0..{}",
                k - 1
            )),
            (Some(f), _) => Ok(HeldOut {
                train: self
                    .train
                    .iter()
                    .filter(|id| !self.folds[f].contains(id))
                    .cloned()
                    .collect(),
                validation: self.folds[f].clone(),
            }),
        }
    }

    pub fn of(&self, id: &str) -> Split {
        if self.validation.iter().any(|v| v == id) {
            Split::Validation
        } else {
            Split::Train
        }
    }
}
