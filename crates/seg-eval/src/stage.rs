//! The three steps as pipeline stages, driven by the shared config: predict the validation cases
//! (and `imagesTs`) of a run, evaluate the validation predictions against `labelsTr`, draw the
//! report. Everything goes below the run's folder, `work_dir/runs/<train.run>/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use ct_io::config::Config;
use ct_io::layout::{BEST, PREDICTIONS_DIR, RunLayout, is_checkpoint};
use ct_io::task::{Task, nifti_files, read_task, strip_nifti_extension};
use ct_preprocess::manifest::{FileStamp, MANIFEST_FILE, Manifest, PREPROCESSED_DIR};
use seg_model::model::{INFO_FILE, WEIGHTS_FILE};
use seg_model::{CheckpointInfo, parse_device};
use serde::{Deserialize, Serialize};

use crate::components::{Choice, ComponentTable, PostProcessing, choose};
use crate::config::EvalConfig;
use crate::evaluate::{self, PER_CASE_FILE, SUMMARY_FILE, Summary};
use crate::predict::{
    Job, JobReport, PROBABILITIES_DIR, PredictOptions, PredictionNotes, Predictor, Tta, plan,
    run_job,
};
use crate::report::{CaseFiles, ReportInputs, write_report};

pub use ct_io::layout::{TEST, VALIDATION};
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
    pub layout: RunLayout,
    pub eval: EvalConfig,
}

impl Stage {
    pub fn from_config(config: &Config) -> anyhow::Result<Stage> {
        let paths = config.paths()?;
        let eval: EvalConfig = config.section()?;
        Ok(Stage {
            layout: RunLayout::from_config(config)?,
            data_dir: paths.data_dir,
            work_dir: paths.work_dir,
            eval,
        })
    }

    pub fn run_dir(&self) -> &Path {
        &self.layout.dir
    }

    /// The checkpoint the stages predict with: the run's, or fold `k`'s.
    pub fn checkpoint(&self, fold: Option<usize>) -> PathBuf {
        self.layout.checkpoint(fold, &self.eval.checkpoint)
    }

    pub fn predictions(&self, which: &str) -> PathBuf {
        self.layout.predictions(which)
    }

    /// `evaluation/`, or `cross_validation/` for a K-fold dataset.
    pub fn evaluation(&self) -> PathBuf {
        let folds = self.manifest().map_or(1, |m| m.split.fold_count());
        self.layout.evaluation(folds > 1)
    }

    pub fn report(&self) -> PathBuf {
        self.layout.report()
    }

    fn task(&self) -> anyhow::Result<Task> {
        Ok(read_task(&self.data_dir)?)
    }

    fn manifest(&self) -> anyhow::Result<Manifest> {
        Manifest::load(&self.work_dir.join(PREPROCESSED_DIR).join(MANIFEST_FILE))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PredictionStamp {
    /// Every checkpoint the folder's masks come from.
    weights: Vec<FileStamp>,
    threshold: f32,
    postprocessing: PostProcessing,
    tta: Tta,
    probabilities: bool,
}

/// What the predict stage did for one folder.
#[derive(Debug, Clone)]
pub struct FolderPredictions {
    pub folder: PathBuf,
    pub predicted: Vec<JobReport>,
    pub reused: usize,
}

/// What the predict stage did.
#[derive(Debug, Clone)]
pub struct Predicted {
    pub folders: Vec<FolderPredictions>,
    /// The post-processing chosen on the validation predictions (with `choose_postprocessing`).
    pub choice: Option<Choice>,
}

/// The jobs of `image` into `folder`, probabilities (if asked) in its `probabilities/`.
fn plan_into(image: &Path, folder: &Path, probabilities: bool) -> anyhow::Result<Vec<Job>> {
    let mut jobs = plan(image, folder, false)?;
    for job in &mut jobs {
        job.probabilities =
            probabilities.then(|| folder.join(PROBABILITIES_DIR).join(mask_name(&job.output)));
    }
    Ok(jobs)
}

/// Cases predicted by one model or ensemble.
struct Group {
    checkpoints: Vec<PathBuf>,
    jobs: Vec<Job>,
}

/// Predicts the run's validation cases into `predictions/validation/` (for K folds: every case,
/// each by the fold's model that did not train on it) and the task's `imagesTs` into
/// `predictions/test/` (for K folds: by the ensemble of the folds). With `choose_postprocessing`
/// the rules are chosen on the validation cases in between and applied to the test cases. Masks
/// still current (same checkpoints and settings, newer than their CT) are kept; masks of cases
/// no longer in the set are removed.
pub fn predict(stage: &Stage, device: Option<&str>) -> anyhow::Result<Predicted> {
    let task = stage.task()?;
    let manifest = stage
        .manifest()
        .context("no preprocessed dataset: run ct-preprocess first")?;
    let split = &manifest.split;
    let folds = split.fold_count();
    let device = parse_device(device.unwrap_or(&stage.eval.device))?;
    let _lock = ct_io::lock::lock_folder(&stage.layout.dir.join(PREDICTIONS_DIR))?;
    let models: Vec<Option<usize>> = if folds > 1 {
        (0..folds).map(Some).collect()
    } else {
        vec![None]
    };
    let validation_folder = stage.predictions(VALIDATION);
    let mut validation: BTreeMap<Option<usize>, Vec<Job>> = BTreeMap::new();
    for case in &task.training {
        let fold = if folds > 1 {
            match split.fold_of(&case.id) {
                Some(k) => Some(k),
                None => continue,
            }
        } else if split.validation.contains(&case.id) {
            None
        } else {
            continue;
        };
        for mut job in plan_into(
            &case.image,
            &validation_folder,
            stage.eval.save_probabilities,
        )? {
            if stage.eval.choose_postprocessing {
                job.reference = case.label.clone();
            }
            validation.entry(fold).or_default().push(job);
        }
    }
    let validation: Vec<Group> = validation
        .into_iter()
        .map(|(fold, jobs)| Group {
            checkpoints: vec![stage.checkpoint(fold)],
            jobs,
        })
        .collect();
    let baseline = stage.eval.postprocessing();
    let options = |postprocessing| PredictOptions {
        threshold: stage.eval.threshold,
        batch_size: stage.eval.batch_size,
        postprocessing,
        tta: stage.eval.tta,
    };
    let mut folders = vec![predict_folder(
        stage,
        &validation_folder,
        validation,
        &options(baseline),
        &device,
    )?];

    let choice_path = stage.layout.postprocessing();
    let choice = if stage.eval.choose_postprocessing {
        let notes = read_notes(&validation_folder);
        let tables: Vec<ComponentTable> = notes.values().filter_map(|n| n.table.clone()).collect();
        if tables.is_empty() || tables.len() < notes.len() {
            tracing::warn!(
                "no validation predictions to choose the post-processing on: the test cases get \
                 [eval]'s ({baseline})"
            );
            remove_if_present(&choice_path)?;
            None
        } else {
            let choice = choose(baseline, &tables);
            ct_io::atomic::write_json(&choice_path, &choice)?;
            tracing::info!(
                "post-processing chosen on {} validation cases: {} (mean Dice {} → {})",
                choice.cases,
                choice.chosen,
                fmt_dice(choice.baseline_dice),
                fmt_dice(choice.chosen_dice)
            );
            Some(choice)
        }
    } else {
        remove_if_present(&choice_path)?;
        None
    };

    let test_folder = stage.predictions(TEST);
    let mut test_jobs = Vec::new();
    for case in &task.test {
        test_jobs.extend(plan_into(
            &case.image,
            &test_folder,
            stage.eval.save_probabilities,
        )?);
    }
    let test = vec![Group {
        checkpoints: models.iter().map(|&fold| stage.checkpoint(fold)).collect(),
        jobs: test_jobs,
    }];
    let chosen = choice.as_ref().map_or(baseline, |c| c.chosen);
    folders.push(predict_folder(
        stage,
        &test_folder,
        test,
        &options(chosen),
        &device,
    )?);
    Ok(Predicted { folders, choice })
}

fn fmt_dice(dice: Option<f64>) -> String {
    dice.map_or("-".into(), |d| format!("{d:.4}"))
}

/// Predicts the jobs of `groups` into `folder`, each group by its checkpoints, keeping the masks
/// that are current.
fn predict_folder(
    stage: &Stage,
    folder: &Path,
    mut groups: Vec<Group>,
    options: &PredictOptions,
    device: &candle_core::Device,
) -> anyhow::Result<FolderPredictions> {
    for group in &mut groups {
        for job in &mut group.jobs {
            job.lungs = Some(folder.join(LUNGS_DIR).join(mask_name(&job.output)));
        }
    }
    let all_jobs: Vec<Job> = groups.iter().flat_map(|g| g.jobs.iter().cloned()).collect();
    remove_stale(folder, &all_jobs)?;
    let mut weights = Vec::new();
    for group in groups.iter().filter(|g| !g.jobs.is_empty()) {
        for checkpoint in &group.checkpoints {
            weights.push(FileStamp::of(&checkpoint_weights(checkpoint)?)?);
        }
    }
    let stamp = PredictionStamp {
        weights,
        threshold: options.threshold,
        postprocessing: options.postprocessing,
        tta: options.tta,
        probabilities: stage.eval.save_probabilities,
    };
    let stamp_path = folder.join(STAMP_FILE);
    let current = std::fs::read_to_string(&stamp_path)
        .ok()
        .and_then(|t| serde_json::from_str::<PredictionStamp>(&t).ok())
        .is_some_and(|old| old == stamp);
    let mut notes = if current {
        read_notes(folder)
    } else {
        BTreeMap::new()
    };
    let is_fresh = |job: &Job, notes: &BTreeMap<String, PredictionNotes>| {
        notes
            .get(&mask_name(&job.output))
            .is_some_and(|n| is_current(job, n))
    };
    let fresh = all_jobs.iter().filter(|j| is_fresh(j, &notes)).count();
    notes.retain(|name, _| all_jobs.iter().any(|job| &mask_name(&job.output) == name));
    let todo: usize = all_jobs.len() - fresh;
    if todo == 0 {
        return Ok(FolderPredictions {
            folder: folder.to_path_buf(),
            predicted: Vec::new(),
            reused: fresh,
        });
    }
    // No stamp until every mask is written: a run that stops part-way is redone in full.
    let _ = std::fs::remove_file(&stamp_path);
    let which = folder
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let bar = ct_io::cli::progress_bar(todo as u64, &which);
    let mut predicted = Vec::new();
    for group in &groups {
        let jobs: Vec<&Job> = group.jobs.iter().filter(|j| !is_fresh(j, &notes)).collect();
        if jobs.is_empty() {
            continue;
        }
        let predictor = Predictor::load_ensemble(&group.checkpoints, device, options.clone())?;
        bar.suspend(|| {
            tracing::info!(
                "{}: {} case(s) with {} model(s), test-time augmentation {}, post-processing: {}",
                folder.display(),
                jobs.len(),
                predictor.models(),
                options.tta.name(),
                options.postprocessing
            )
        });
        for job in jobs {
            let report = run_job(&predictor, job)?;
            if report.notes.lung_ml.is_none() {
                // Made without a lung mask: an older one would be drawn as if it had been used.
                remove_if_present(job.lungs.as_deref().expect("set above"))?;
            }
            notes.insert(mask_name(&job.output), report.notes.clone());
            bar.suspend(|| {
                tracing::info!(
                    "{} → {}: {:.2} ml of tumour, {} ({:.1} s)",
                    report.input.display(),
                    report.output.display(),
                    report.notes.tumour_ml,
                    report.notes.lung_note(),
                    report.seconds
                )
            });
            predicted.push(report);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    ct_io::atomic::write_json(&folder.join(NOTES_FILE), &notes)?;
    ct_io::atomic::write_json(&stamp_path, &stamp)?;
    Ok(FolderPredictions {
        folder: folder.to_path_buf(),
        predicted,
        reused: fresh,
    })
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
    job.outputs_newer_than_input(notes.lung_ml.is_some())
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

/// Evaluates `predictions/validation/` against `labelsTr`, writing `evaluation/` (or
/// `cross_validation/`, with each fold's Dice, for a K-fold dataset).
pub fn evaluate(stage: &Stage) -> anyhow::Result<Summary> {
    let task = stage.task()?;
    let predictions = vec![stage.predictions(VALIDATION)];
    let references = task.root.join("labelsTr");
    let cases = evaluate::evaluate_folders(&predictions, &references)?;
    let mut summary = Summary::of(&cases, &predictions, &references);
    if let Ok(manifest) = stage.manifest()
        && manifest.split.fold_count() > 1
    {
        summary = summary.with_folds(&cases, |id| manifest.split.fold_of(id));
    }
    summary.postprocessing = read_choice(&stage.layout.postprocessing());
    evaluate::write_results(&stage.evaluation(), &cases, &summary)?;
    Ok(summary)
}

/// The checkpoint folders named: a checkpoint itself, or a K-fold run's folder for its folds'
/// best checkpoints.
pub fn checkpoints_of(named: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in named {
        if is_checkpoint(path) {
            out.push(path.clone());
            continue;
        }
        let run = RunLayout { dir: path.clone() };
        let folds = run.trained_folds(BEST);
        anyhow::ensure!(
            !folds.is_empty(),
            "{}: no checkpoint here (no model.safetensors, nor a K-fold run's fold_<k>/{BEST}/)",
            path.display()
        );
        out.extend(folds.into_iter().map(|k| run.checkpoint(Some(k), BEST)));
    }
    Ok(out)
}

/// The post-processing `seg-eval predict --checkpoint` applies by default: the rule the run of
/// `checkpoints` chose on validation, when they all come from one run that recorded a choice (also
/// returned, with where it is recorded), else the lung constraint alone; `lung_constraint` false
/// turns that part off either way.
pub fn default_rules(
    checkpoints: &[PathBuf],
    lung_constraint: bool,
) -> (PostProcessing, Option<(PathBuf, PostProcessing)>) {
    let mut runs: Vec<RunLayout> = checkpoints
        .iter()
        .filter_map(|c| RunLayout::of_checkpoint(c))
        .collect();
    runs.dedup();
    let chosen = match runs.as_slice() {
        [run] => read_choice(&run.postprocessing()).map(|c| (c.chosen, run.postprocessing())),
        _ => None,
    };
    let (rules, recorded) = match chosen {
        Some((rules, path)) => (rules, Some((path, rules))),
        None => (
            PostProcessing {
                lung_constraint: true,
                ..PostProcessing::NONE
            },
            None,
        ),
    };
    (
        PostProcessing {
            lung_constraint: rules.lung_constraint && lung_constraint,
            ..rules
        },
        recorded,
    )
}

/// The post-processing chosen for a run, if it has one.
pub fn read_choice(path: &Path) -> Option<Choice> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
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
    .with_context(|| {
        format!(
            "{}: malformed (rerun seg-eval evaluate)",
            summary_path.display()
        )
    })?;
    let mut predictions = Vec::new();
    let mut notes = BTreeMap::new();
    for folder in &summary.predictions {
        predictions.extend(
            nifti_files(folder)?
                .into_iter()
                .map(|f| (folder.clone(), f)),
        );
        notes.extend(read_notes(folder));
    }
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
            let (folder, prediction) = predictions
                .iter()
                .find(|(_, p)| strip_nifti_extension(p).as_deref() == Some(case.id.as_str()))
                .with_context(|| format!("no prediction for {} among the evaluated", case.id))?;
            let name = mask_name(prediction);
            let lungs = folder.join(LUNGS_DIR).join(&name);
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
    let folds = stage.layout.trained_folds(&stage.eval.checkpoint);
    let checkpoint = stage.checkpoint(folds.first().copied());
    let info_path = checkpoint.join(INFO_FILE);
    let info: Option<CheckpointInfo> = std::fs::read_to_string(&info_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let mut facts = vec![
        ("run".to_string(), stage.layout.dir.display().to_string()),
        ("data".to_string(), task.root.display().to_string()),
        (
            "checkpoint".to_string(),
            if folds.is_empty() {
                checkpoint.display().to_string()
            } else {
                format!(
                    "{} folds, each case by the fold that held it out: {}",
                    folds.len(),
                    stage
                        .layout
                        .dir
                        .join(format!("fold_*/{}", stage.eval.checkpoint))
                        .display()
                )
            },
        ),
        ("threshold".to_string(), format!("{}", stage.eval.threshold)),
    ];
    if let Some(n) = notes.values().next() {
        facts.push(("prediction".to_string(), n.method()));
    }
    if let Some(choice) = &summary.postprocessing {
        facts.push((
            "for new cases".to_string(),
            format!(
                "post-processing chosen on these: {} (mean Dice {} → {})",
                choice.chosen,
                fmt_dice(choice.baseline_dice),
                fmt_dice(choice.chosen_dice)
            ),
        ));
    }
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
                .layout
                .dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        ),
        cases,
        per_case: &per_case,
        summary: Some(&summary),
        curves: Some(stage.layout.curves()),
        facts,
        slices_per_case: stage.eval.report_slices,
        window: stage.eval.lung_window,
    };
    write_report(&inputs, &stage.report())
}
