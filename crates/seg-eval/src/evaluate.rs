//! A folder of predicted masks against a folder of reference masks: per-case metrics, a summary,
//! `per_case.csv` and `summary.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use ct_io::nii::ReadOptions;
use ct_io::task::{AFFINE_TOLERANCE_MM, nifti_files, strip_nifti_extension};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::components::Choice;
use crate::metrics::{CaseMetrics, case_metrics, percentile};

pub const PER_CASE_FILE: &str = "per_case.csv";
pub const SUMMARY_FILE: &str = "summary.json";

/// Mean, median and standard deviation (population) of one metric over the cases where it is
/// defined; `n` counts those cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statistic {
    pub mean: Option<f64>,
    pub median: Option<f64>,
    pub std: Option<f64>,
    pub n: usize,
}

impl Statistic {
    fn of(values: impl Iterator<Item = Option<f64>>) -> Statistic {
        let mut values: Vec<f64> = values.flatten().collect();
        let n = values.len();
        if n == 0 {
            return Statistic {
                mean: None,
                median: None,
                std: None,
                n,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        Statistic {
            mean: Some(mean),
            median: Some(percentile(&mut values, 50.0)),
            std: Some(variance.sqrt()),
            n,
        }
    }
}

/// Lesion-wise detection over all cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lesions {
    pub reference: usize,
    pub detected: usize,
    pub missed: usize,
    pub false_positive: usize,
    /// detected / reference lesions.
    pub sensitivity: Option<f64>,
    /// detected / (detected + false-positive components).
    pub precision: Option<f64>,
}

/// The Dice of one fold's held-out cases (K-fold cross-validation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldDice {
    pub fold: usize,
    pub dice: Statistic,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub cases: usize,
    /// The folders of masks evaluated.
    pub predictions: Vec<PathBuf>,
    pub references: PathBuf,
    pub dice: Statistic,
    pub iou: Statistic,
    pub precision: Statistic,
    pub recall: Statistic,
    pub hd95_mm: Statistic,
    pub reference_ml: Statistic,
    pub predicted_ml: Statistic,
    pub lesions: Lesions,
    /// A cross-validation: the Dice of each fold's cases, and the spread of their means.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folds: Vec<FoldDice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold_means: Option<Statistic>,
    /// The post-processing chosen on these predictions for the test cases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postprocessing: Option<Choice>,
}

impl Summary {
    pub fn of(cases: &[CaseMetrics], predictions: &[PathBuf], references: &Path) -> Summary {
        let stat = |f: fn(&CaseMetrics) -> Option<f64>| Statistic::of(cases.iter().map(f));
        let reference: usize = cases.iter().map(|c| c.reference_lesions).sum();
        let detected: usize = cases.iter().map(|c| c.detected_lesions).sum();
        let false_positive: usize = cases.iter().map(|c| c.false_positive_lesions).sum();
        let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
        Summary {
            cases: cases.len(),
            predictions: predictions.to_vec(),
            references: references.to_path_buf(),
            dice: stat(|c| c.dice),
            iou: stat(|c| c.iou),
            precision: stat(|c| c.precision),
            recall: stat(|c| c.recall),
            hd95_mm: stat(|c| c.hd95_mm),
            reference_ml: stat(|c| Some(c.reference_ml)),
            predicted_ml: stat(|c| Some(c.predicted_ml)),
            lesions: Lesions {
                reference,
                detected,
                missed: reference - detected,
                false_positive,
                sensitivity: ratio(detected, reference),
                precision: ratio(detected, detected + false_positive),
            },
            folds: Vec::new(),
            fold_means: None,
            postprocessing: None,
        }
    }

    /// Adds each fold's Dice, `fold_of` giving a case's fold.
    pub fn with_folds(
        mut self,
        cases: &[CaseMetrics],
        fold_of: impl Fn(&str) -> Option<usize>,
    ) -> Summary {
        let mut folds: Vec<usize> = cases.iter().filter_map(|c| fold_of(&c.case)).collect();
        folds.sort_unstable();
        folds.dedup();
        self.folds = folds
            .into_iter()
            .map(|fold| FoldDice {
                fold,
                dice: Statistic::of(
                    cases
                        .iter()
                        .filter(|c| fold_of(&c.case) == Some(fold))
                        .map(|c| c.dice),
                ),
            })
            .collect();
        self.fold_means = Some(Statistic::of(self.folds.iter().map(|f| f.dice.mean)));
        self
    }

    /// A short table for the terminal.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<14} {:>8} {:>8} {:>8} {:>4}\n",
            "metric", "mean", "median", "std", "n"
        );
        let rows: [(&str, &Statistic); 7] = [
            ("Dice", &self.dice),
            ("IoU", &self.iou),
            ("precision", &self.precision),
            ("recall", &self.recall),
            ("HD95 (mm)", &self.hd95_mm),
            ("reference ml", &self.reference_ml),
            ("predicted ml", &self.predicted_ml),
        ];
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        for (name, s) in rows {
            let _ = writeln!(
                out,
                "{name:<14} {:>8} {:>8} {:>8} {:>4}",
                fmt(s.mean),
                fmt(s.median),
                fmt(s.std),
                s.n
            );
        }
        let l = &self.lesions;
        let _ = write!(
            out,
            "lesions: {} in the references, {} detected, {} missed, {} false-positive components ({} cases)",
            l.reference, l.detected, l.missed, l.false_positive, self.cases
        );
        if let Some(means) = &self.fold_means {
            let each: Vec<String> = self
                .folds
                .iter()
                .map(|f| format!("{} {} (n={})", f.fold, fmt(f.dice.mean), f.dice.n))
                .collect();
            let _ = write!(
                out,
                "\nDice per fold: {}; mean of the fold means {}, std {}",
                each.join(", "),
                fmt(means.mean),
                fmt(means.std)
            );
        }
        if let Some(choice) = &self.postprocessing {
            let _ = write!(
                out,
                "\npost-processing chosen on these cases for new ones: {} (mean Dice {} with \
                 [eval]'s {}, {} with it)",
                choice.chosen,
                fmt(choice.baseline_dice),
                choice.baseline,
                fmt(choice.chosen_dice)
            );
        }
        out
    }
}

/// Evaluates every mask in the `predictions` folders (the shards of one prediction, say) against
/// the file of the same case id in `references`; a case may be in one folder only.
pub fn evaluate_folders(
    predictions: &[PathBuf],
    references: &Path,
) -> anyhow::Result<Vec<CaseMetrics>> {
    let mut files = Vec::new();
    for folder in predictions {
        let found = nifti_files(folder)?;
        ensure!(
            !found.is_empty(),
            "{}: no predicted masks (.nii, .nii.gz) here",
            folder.display()
        );
        files.extend(found);
    }
    files.sort_by_key(|f| strip_nifti_extension(f));
    if let Some(pair) = files
        .windows(2)
        .find(|w| strip_nifti_extension(&w[0]) == strip_nifti_extension(&w[1]))
    {
        anyhow::bail!(
            "{} and {}: two masks of one case",
            pair[0].display(),
            pair[1].display()
        );
    }
    let reference_files = nifti_files(references)?;
    let pairs: Vec<(String, PathBuf, PathBuf)> = files
        .into_iter()
        .map(|pred| {
            let id = strip_nifti_extension(&pred).expect("a NIfTI name");
            let reference = reference_files
                .iter()
                .find(|r| strip_nifti_extension(r).as_deref() == Some(id.as_str()))
                .with_context(|| {
                    format!(
                        "{}: no reference mask for case {id} in {}",
                        pred.display(),
                        references.display()
                    )
                })?;
            Ok((id, pred, reference.clone()))
        })
        .collect::<anyhow::Result<_>>()?;
    let bar = ct_io::cli::progress_bar(pairs.len() as u64, "evaluate");
    // Two cases at a time: each holds two full-size masks.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .context("cannot start worker threads")?;
    let cases = pool.install(|| {
        pairs
            .par_iter()
            .with_max_len(1)
            .map(|(id, pred, reference)| {
                let metrics = evaluate_pair(id, pred, reference);
                bar.inc(1);
                metrics
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    bar.finish_and_clear();
    Ok(cases)
}

fn evaluate_pair(id: &str, pred: &Path, reference: &Path) -> anyhow::Result<CaseMetrics> {
    let options = ReadOptions::default();
    let predicted = ct_io::read_mask_with(pred, &options)?;
    let truth = ct_io::read_mask_with(reference, &options)?;
    ensure!(
        predicted.geometry.shape == truth.geometry.shape,
        "{}: shape {:?} differs from the reference {} ({:?})",
        pred.display(),
        predicted.geometry.shape,
        reference.display(),
        truth.geometry.shape
    );
    let offset = predicted.geometry.affine_difference(&truth.geometry);
    ensure!(
        offset <= AFFINE_TOLERANCE_MM,
        "{}: its affine differs from the reference {} by up to {offset:.4} mm: not the same voxel grid",
        pred.display(),
        reference.display()
    );
    for (path, mask) in [(pred, &predicted), (reference, &truth)] {
        if let Some(bad) = mask.data.iter().find(|v| **v > 1) {
            anyhow::bail!(
                "{}: mask values must be 0 or 1 (found {bad})",
                path.display()
            );
        }
    }
    Ok(case_metrics(
        id,
        predicted.data.view(),
        truth.data.view(),
        truth.geometry.spacing,
    ))
}

/// Writes `per_case.csv` and `summary.json` into `out` (each atomically).
pub fn write_results(out: &Path, cases: &[CaseMetrics], summary: &Summary) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let _lock = ct_io::lock::lock_folder(out)?;
    let mut csv = String::from(
        "case,dice,iou,precision,recall,hd95_mm,reference_ml,predicted_ml,\
         reference_lesions,detected_lesions,missed_lesions,false_positive_lesions\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for c in cases {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{:.6},{:.6},{},{},{},{}",
            c.case,
            opt(c.dice),
            opt(c.iou),
            opt(c.precision),
            opt(c.recall),
            opt(c.hd95_mm),
            c.reference_ml,
            c.predicted_ml,
            c.reference_lesions,
            c.detected_lesions,
            c.missed_lesions(),
            c.false_positive_lesions
        );
    }
    ct_io::atomic::write_atomically(&out.join(PER_CASE_FILE), |w| w.write_all(csv.as_bytes()))?;
    ct_io::atomic::write_json(&out.join(SUMMARY_FILE), summary)?;
    Ok(())
}

/// Reads back a `per_case.csv` written by [`write_results`].
pub fn read_per_case(path: &Path) -> anyhow::Result<Vec<CaseMetrics>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let parse = |v: &str| -> anyhow::Result<Option<f64>> {
        Ok(if v.is_empty() { None } else { Some(v.parse()?) })
    };
    text.lines()
        .skip(1)
        .enumerate()
        .map(|(n, line)| {
            let f: Vec<&str> = line.split(',').collect();
            let row = || -> anyhow::Result<CaseMetrics> {
                ensure!(f.len() == 12, "expected 12 fields, found {}", f.len());
                Ok(CaseMetrics {
                    case: f[0].to_string(),
                    dice: parse(f[1])?,
                    iou: parse(f[2])?,
                    precision: parse(f[3])?,
                    recall: parse(f[4])?,
                    hd95_mm: parse(f[5])?,
                    reference_ml: f[6].parse()?,
                    predicted_ml: f[7].parse()?,
                    reference_lesions: f[8].parse()?,
                    detected_lesions: f[9].parse()?,
                    false_positive_lesions: f[11].parse()?,
                })
            };
            row().with_context(|| format!("{}: line {}", path.display(), n + 2))
        })
        .collect()
}
