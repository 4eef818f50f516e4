//! The run folder's layout, defined once below the stages: seg-train writes it, seg-eval and xtask
//! read it, and none of them links another to learn where things are.
//!
//! ```text
//! work_dir/runs/<run>/               one split ([preprocess] folds = 1):
//!     config.toml metrics.csv curves.png best/ last/
//! work_dir/runs/<run>/fold_<k>/      K folds: the same contents, one folder per held-out fold
//! work_dir/runs/<run>/predictions/{validation,test}/   masks (validation: each case by the model
//!                                    that did not see it)
//! work_dir/runs/<run>/evaluation/    one split: per_case.csv, summary.json
//! work_dir/runs/<run>/cross_validation/   K folds: the same over every fold's held-out cases
//! work_dir/runs/<run>/postprocessing.json  the rule chosen on the validation predictions
//! work_dir/runs/<run>/report/        report.html and its pictures
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, Invalid, Section};

pub const RUNS_DIR: &str = "runs";
pub const BEST: &str = "best";
pub const LAST: &str = "last";
pub const METRICS_FILE: &str = "metrics.csv";
pub const CURVES_FILE: &str = "curves.png";
pub const RESOLVED_CONFIG_FILE: &str = "config.toml";
pub const PREDICTIONS_DIR: &str = "predictions";
pub const VALIDATION: &str = "validation";
pub const TEST: &str = "test";
pub const EVALUATION_DIR: &str = "evaluation";
pub const CROSS_VALIDATION_DIR: &str = "cross_validation";
pub const REPORT_DIR: &str = "report";
pub const POSTPROCESSING_FILE: &str = "postprocessing.json";
/// A checkpoint folder holds these two.
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CHECKPOINT_INFO_FILE: &str = "checkpoint.json";
const FOLD_PREFIX: &str = "fold_";

/// The part of `[train]` every stage needs to find a run: its name and, for a K-fold dataset,
/// the fold a training holds out. seg-train reads the whole section; this view ignores the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSelection {
    pub run: String,
    pub fold: Option<usize>,
}

impl Default for RunSelection {
    fn default() -> Self {
        RunSelection {
            run: "default".into(),
            fold: None,
        }
    }
}

impl Section for RunSelection {
    const NAME: &'static str = "train";
    fn validate(&self) -> Result<(), Invalid> {
        check_run_name(&self.run)
    }
}

/// A run name is one plain folder name.
pub fn check_run_name(run: &str) -> Result<(), Invalid> {
    let plain = !run.is_empty()
        && run
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !run.starts_with('.');
    if plain {
        Ok(())
    } else {
        Err(Invalid::new(
            "run",
            "must be a plain folder name (letters, digits, - _ .)",
        ))
    }
}

/// One run's folder and everything below it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunLayout {
    pub dir: PathBuf,
}

impl RunLayout {
    pub fn new(work_dir: &Path, run: &str) -> RunLayout {
        RunLayout {
            dir: work_dir.join(RUNS_DIR).join(run),
        }
    }

    /// The run `[paths] work_dir` and `[train] run` name.
    pub fn from_config(config: &Config) -> Result<RunLayout, ConfigError> {
        let paths = config.paths()?;
        let selection: RunSelection = config.section()?;
        Ok(RunLayout::new(&paths.work_dir, &selection.run))
    }

    /// The run a checkpoint folder belongs to: `<run>/best` or `<run>/fold_<k>/best`.
    pub fn of_checkpoint(checkpoint: &Path) -> Option<RunLayout> {
        let parent = checkpoint.parent()?;
        let dir = if fold_number(parent).is_some() {
            parent.parent()?
        } else {
            parent
        };
        Some(RunLayout {
            dir: dir.to_path_buf(),
        })
    }

    /// Where a training writes: the run folder, or its fold's.
    pub fn training_dir(&self, fold: Option<usize>) -> PathBuf {
        match fold {
            None => self.dir.clone(),
            Some(k) => self.dir.join(format!("{FOLD_PREFIX}{k}")),
        }
    }

    /// The `which` ("best" or "last") checkpoint of a training.
    pub fn checkpoint(&self, fold: Option<usize>, which: &str) -> PathBuf {
        self.training_dir(fold).join(which)
    }

    /// The folds this run has trained (`fold_<k>/` folders holding a `which` checkpoint), sorted.
    pub fn trained_folds(&self, which: &str) -> Vec<usize> {
        let mut folds: Vec<usize> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| fold_number(&entry.path()))
            .filter(|&k| is_checkpoint(&self.checkpoint(Some(k), which)))
            .collect();
        folds.sort_unstable();
        folds
    }

    pub fn predictions(&self, which: &str) -> PathBuf {
        self.dir.join(PREDICTIONS_DIR).join(which)
    }

    /// Where the validation predictions are evaluated: `evaluation/`, or `cross_validation/`
    /// when they come from K folds.
    pub fn evaluation(&self, cross_validation: bool) -> PathBuf {
        self.dir.join(if cross_validation {
            CROSS_VALIDATION_DIR
        } else {
            EVALUATION_DIR
        })
    }

    pub fn report(&self) -> PathBuf {
        self.dir.join(REPORT_DIR)
    }

    pub fn postprocessing(&self) -> PathBuf {
        self.dir.join(POSTPROCESSING_FILE)
    }

    /// The training curves: the run's, or the first fold's.
    pub fn curves(&self) -> PathBuf {
        let single = self.dir.join(CURVES_FILE);
        match self.trained_folds(BEST).first() {
            Some(&k) if !single.is_file() => self.training_dir(Some(k)).join(CURVES_FILE),
            _ => single,
        }
    }
}

/// `k` for a folder named `fold_<k>`.
pub fn fold_number(dir: &Path) -> Option<usize> {
    dir.file_name()?
        .to_str()?
        .strip_prefix(FOLD_PREFIX)?
        .parse()
        .ok()
}

/// A folder that holds a checkpoint's weights.
pub fn is_checkpoint(dir: &Path) -> bool {
    dir.join(WEIGHTS_FILE).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_finds_its_run_with_or_without_folds() {
        let run = RunLayout::new(Path::new("/w"), "demo");
        assert_eq!(run.dir, Path::new("/w/runs/demo"));
        assert_eq!(run.checkpoint(None, BEST), Path::new("/w/runs/demo/best"));
        let fold = run.checkpoint(Some(3), BEST);
        assert_eq!(fold, Path::new("/w/runs/demo/fold_3/best"));
        assert_eq!(fold_number(fold.parent().unwrap()), Some(3));
        assert_eq!(RunLayout::of_checkpoint(&fold), Some(run.clone()));
        assert_eq!(
            RunLayout::of_checkpoint(&run.checkpoint(None, LAST)),
            Some(run)
        );
        assert_eq!(fold_number(Path::new("/w/runs/fold_x")), None);
        assert!(check_run_name("a-b_c.1").is_ok());
        assert!(check_run_name("../x").is_err());
        assert!(check_run_name(".hidden").is_err());
    }
}
