//! The three steps as pipeline stages, driven by the shared config: predict the validation cases
//! (and `imagesTs`) of a run, evaluate the validation predictions against `labelsTr`, draw the
//! report. Everything goes below the run's folder, `work_dir/runs/<train.run>/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use ct_io::config::Config;
use ct_io::task::{Task, nifti_files, read_task, strip_nifti_extension};
use ct_preprocess::manifest::{FileStamp, MANIFEST_FILE, Manifest, PREPROCESSED_DIR};
use ct_preprocess::split::Split;
use seg_model::model::{INFO_FILE, WEIGHTS_FILE};
use seg_model::{CheckpointInfo, parse_device};
use seg_train::config::TrainConfig;
use serde::{Deserialize, Serialize};

use crate::config::EvalConfig;
use crate::evaluate::{self, PER_CASE_FILE, SUMMARY_FILE, Summary};
use crate::predict::{
    Job, JobReport, PROBABILITIES_DIR, PredictOptions, PredictionNotes, Predictor, plan, run_job,
};
use crate::report::{CaseFiles, ReportInputs, write_report};

pub const PREDICTIONS_DIR: &str = "predictions";
pub const VALIDATION: &str = "validation";
pub const TEST: &str = "test";
pub const EVALUATION_DIR: &str = "evaluation";
pub const REPORT_DIR: &str = "report";
/// Records what the predictions in a folder were made with, so a rerun knows what is current.
const STAMP_FILE: &str = ".predictions.json";
/// Beside the masks: what prediction made of each CT ([`PredictionNotes`] by mask file name).
pub const NOTES_FILE: &str = "notes.json";
/// The subfolder of a predictions folder that holds the lung masks the predictions were filtered
/// with, one per CT under the mask's file name.
pub const LUNGS_DIR: &str = "lungs";

/// The run and settings the stages work on.
pub struct Stage {
    pub data_dir: PathBuf,
    pub work_dir: PathBuf,
    pub run_dir: PathBuf,
    pub eval: EvalConfig,
}

impl Stage {
    pub fn from_config(config: &Config) -> anyhow::Result<Stage> {
        let paths = config.paths()?;
        let train: TrainConfig = config.section()?;
        let eval: EvalConfig = config.section()?;
        Ok(Stage {
            run_dir: paths.work_dir.join(seg_train::RUNS_DIR).join(&train.run),
            data_dir: paths.data_dir,
            work_dir: paths.work_dir,
            eval,
        })
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.run_dir.join(&self.eval.checkpoint)
    }

    pub fn predictions(&self, which: &str) -> PathBuf {
        self.run_dir.join(PREDICTIONS_DIR).join(which)
    }

    pub fn evaluation(&self) -> PathBuf {
        self.run_dir.join(EVALUATION_DIR)
    }

    pub fn report(&self) -> PathBuf {
        self.run_dir.join(REPORT_DIR)
    }

    fn task(&self) -> anyhow::Result<Task> {
        Ok(read_task(&self.data_dir)?)
    }

    /// The validation case ids, as ct-preprocess recorded the split.
    fn validation_ids(&self) -> anyhow::Result<Vec<String>> {
        let manifest_path = self.work_dir.join(PREPROCESSED_DIR).join(MANIFEST_FILE);
        let manifest = Manifest::load(&manifest_path)?;
        Ok(manifest
            .cases
            .iter()
            .filter(|c| c.split == Split::Validation)
            .map(|c| c.info.id.clone())
            .collect())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PredictionStamp {
    weights: FileStamp,
    threshold: f32,
    min_component_mm3: f64,
    keep_largest: usize,
    lung_constraint: bool,
    probabilities: bool,
}

/// What the predict stage did for one folder.
#[derive(Debug, Clone)]
pub struct FolderPredictions {
    pub folder: PathBuf,
    pub predicted: Vec<JobReport>,
    pub reused: usize,
}

/// Predicts the run's validation cases into `predictions/validation/` and the task's `imagesTs`
/// into `predictions/test/`. Masks still current (same checkpoint and settings, newer than their
/// CT) are kept; masks of cases no longer in the set are removed.
pub fn predict(stage: &Stage, device: Option<&str>) -> anyhow::Result<Vec<FolderPredictions>> {
    let task = stage.task()?;
    let validation = stage.validation_ids()?;
    let checkpoint = stage.checkpoint();
    let device = parse_device(device.unwrap_or(&stage.eval.device))?;
    let weights = checkpoint_weights(&checkpoint)?;
    let stamp = PredictionStamp {
        weights: FileStamp::of(&weights)?,
        threshold: stage.eval.threshold,
        min_component_mm3: stage.eval.min_component_mm3,
        keep_largest: stage.eval.keep_largest,
        lung_constraint: stage.eval.lung_constraint,
        probabilities: stage.eval.save_probabilities,
    };
    let options = PredictOptions {
        threshold: stage.eval.threshold,
        batch_size: stage.eval.batch_size,
        min_component_mm3: stage.eval.min_component_mm3,
        keep_largest: stage.eval.keep_largest,
        lung_constraint: stage.eval.lung_constraint,
    };
    let mut predictor = None;
    let sets = [
        (
            VALIDATION,
            task.training
                .iter()
                .filter(|c| validation.contains(&c.id))
                .map(|c| c.image.clone())
                .collect::<Vec<_>>(),
        ),
        (TEST, task.test.iter().map(|c| c.image.clone()).collect()),
    ];
    let mut out = Vec::new();
    for (which, images) in sets {
        let folder = stage.predictions(which);
        let jobs: Vec<Job> = images
            .iter()
            .map(|image| plan(image, &folder, stage.eval.save_probabilities))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .map(|mut job| {
                job.lungs = Some(folder.join(LUNGS_DIR).join(mask_name(&job.output)));
                job
            })
            .collect();
        remove_stale(&folder, &jobs)?;
        let stamp_path = folder.join(STAMP_FILE);
        let current = std::fs::read_to_string(&stamp_path)
            .ok()
            .and_then(|t| serde_json::from_str::<PredictionStamp>(&t).ok())
            .is_some_and(|old| old == stamp);
        let mut notes = if current {
            read_notes(&folder)
        } else {
            BTreeMap::new()
        };
        let (fresh, todo): (Vec<&Job>, Vec<&Job>) = jobs.iter().partition(|job| {
            notes
                .get(&mask_name(&job.output))
                .is_some_and(|n| is_current(job, n))
        });
        notes.retain(|name, _| fresh.iter().any(|job| &mask_name(&job.output) == name));
        if todo.is_empty() {
            out.push(FolderPredictions {
                folder,
                predicted: Vec::new(),
                reused: fresh.len(),
            });
            continue;
        }
        if predictor.is_none() {
            predictor = Some(Predictor::load(&checkpoint, &device, options.clone())?);
        }
        let predictor = predictor.as_ref().expect("just loaded");
        // No stamp until every mask is written: a run that stops part-way is redone in full.
        let _ = std::fs::remove_file(&stamp_path);
        let bar = ct_io::cli::progress_bar(todo.len() as u64, which);
        let mut predicted = Vec::new();
        for job in todo {
            let report = run_job(predictor, job)?;
            if report.notes.lung_ml.is_none() {
                // Made without a lung mask: an older one would be drawn as if it had been used.
                remove_if_present(job.lungs.as_deref().expect("set above"))?;
            }
            notes.insert(mask_name(&job.output), report.notes.clone());
            tracing::info!(
                "{} → {}: {:.2} ml of tumour, {} ({:.1} s)",
                report.input.display(),
                report.output.display(),
                report.notes.tumour_ml,
                report.notes.lung_note(),
                report.seconds
            );
            predicted.push(report);
            bar.inc(1);
        }
        bar.finish_and_clear();
        ct_io::atomic::write_json(&folder.join(NOTES_FILE), &notes)?;
        ct_io::atomic::write_json(&stamp_path, &stamp)?;
        out.push(FolderPredictions {
            folder,
            predicted,
            reused: fresh.len(),
        });
    }
    Ok(out)
}

fn checkpoint_weights(checkpoint: &Path) -> anyhow::Result<PathBuf> {
    let weights = checkpoint.join(WEIGHTS_FILE);
    ensure!(
        weights.is_file(),
        "{}: no checkpoint here (train first: seg-train --config ...)",
        checkpoint.display()
    );
    Ok(weights)
}

/// A mask (and its probabilities and lung mask, where it has them) that exists and is newer than
/// its CT.
fn is_current(job: &Job, notes: &PredictionNotes) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(input) = modified(&job.input) else {
        return false;
    };
    let lungs = job.lungs.as_ref().filter(|_| notes.lung_ml.is_some());
    std::iter::once(&job.output)
        .chain(job.probabilities.as_ref())
        .chain(lungs)
        .all(|p| modified(p).is_some_and(|t| t >= input))
}

/// The file name of a mask, the key of its notes and of its lung mask.
fn mask_name(mask: &Path) -> String {
    mask.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// The notes of a predictions folder; empty when it has none (or unreadable ones: then every
/// mask is predicted again).
pub fn read_notes(folder: &Path) -> BTreeMap<String, PredictionNotes> {
    std::fs::read_to_string(folder.join(NOTES_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Removes masks (and probabilities, lung masks) in `folder` that no job writes (a case that left
/// the split, say).
fn remove_stale(folder: &Path, jobs: &[Job]) -> anyhow::Result<()> {
    for dir in [
        folder.to_path_buf(),
        folder.join(PROBABILITIES_DIR),
        folder.join(LUNGS_DIR),
    ] {
        if !dir.is_dir() {
            continue;
        }
        for file in nifti_files(&dir)? {
            if !jobs.iter().any(|j| {
                [Some(&j.output), j.probabilities.as_ref(), j.lungs.as_ref()].contains(&Some(&file))
            }) {
                remove_if_present(&file)?;
            }
        }
    }
    Ok(())
}

/// Evaluates `predictions/validation/` against `labelsTr`, writing `evaluation/`.
pub fn evaluate(stage: &Stage) -> anyhow::Result<Summary> {
    let task = stage.task()?;
    let predictions = stage.predictions(VALIDATION);
    let references = task.root.join("labelsTr");
    let cases = evaluate::evaluate_folders(&predictions, &references)?;
    let summary = Summary::of(&cases, &predictions, &references);
    evaluate::write_results(&stage.evaluation(), &cases, &summary)?;
    Ok(summary)
}

/// Draws `report/` from the run's evaluation, predictions and curves.
pub fn report(stage: &Stage) -> anyhow::Result<PathBuf> {
    let task = stage.task()?;
    let evaluation = stage.evaluation();
    let per_case = evaluate::read_per_case(&evaluation.join(PER_CASE_FILE))
        .context("evaluate the run before drawing its report")?;
    let summary_path = evaluation.join(SUMMARY_FILE);
    let summary: Summary = serde_json::from_str(
        &std::fs::read_to_string(&summary_path)
            .with_context(|| format!("{}", summary_path.display()))?,
    )
    .with_context(|| format!("{}: malformed", summary_path.display()))?;
    let predictions = nifti_files(&summary.predictions)?;
    let notes = read_notes(&summary.predictions);
    let cases = per_case
        .iter()
        .map(|metrics| {
            let case = task
                .training
                .iter()
                .find(|c| c.id == metrics.case)
                .with_context(|| {
                    format!("case {} is not in {}", metrics.case, task.root.display())
                })?;
            let prediction = predictions
                .iter()
                .find(|p| strip_nifti_extension(p).as_deref() == Some(case.id.as_str()))
                .with_context(|| {
                    format!(
                        "no prediction for {} in {}",
                        case.id,
                        summary.predictions.display()
                    )
                })?;
            let name = mask_name(prediction);
            let lungs = summary.predictions.join(LUNGS_DIR).join(&name);
            Ok(CaseFiles {
                id: case.id.clone(),
                ct: case.image.clone(),
                reference: Some(case.label.clone().context("a training case has a label")?),
                prediction: prediction.clone(),
                lungs: lungs.is_file().then_some(lungs),
                notes: notes.get(&name).cloned(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let info_path = stage.checkpoint().join(INFO_FILE);
    let info: Option<CheckpointInfo> = std::fs::read_to_string(&info_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let mut facts = vec![
        ("run".to_string(), stage.run_dir.display().to_string()),
        ("data".to_string(), task.root.display().to_string()),
        (
            "checkpoint".to_string(),
            stage.checkpoint().display().to_string(),
        ),
        ("threshold".to_string(), format!("{}", stage.eval.threshold)),
    ];
    if let Some(info) = &info {
        facts.push((
            "model".to_string(),
            format!(
                "U-Net, width {}, depth {}, {} input channel(s), {} upsampling, {} parameters",
                info.model.width,
                info.model.depth,
                info.model.in_channels,
                serde_json::to_value(info.model.upsampling)?
                    .as_str()
                    .unwrap_or("?"),
                info.parameters
            ),
        ));
        if let Some(size) = info.preprocess.as_ref().and_then(|p| p.get("size")) {
            facts.push((
                "network input".to_string(),
                format!("{size} x {size} axial slices"),
            ));
        }
    }
    let inputs = ReportInputs {
        title: format!(
            "lungseg report: {}",
            stage
                .run_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        ),
        cases,
        per_case: &per_case,
        summary: Some(&summary),
        curves: Some(stage.run_dir.join(seg_train::CURVES_FILE)),
        facts,
        slices_per_case: stage.eval.report_slices,
        window: stage.eval.lung_window,
    };
    write_report(&inputs, &stage.report())
}
