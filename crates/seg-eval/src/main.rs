//! `seg-eval predict | evaluate | report`: by explicit paths, or as pipeline stages from the
//! shared config (`--config FILE [--set k=v]...`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ct_preprocess::manifest::FileStamp;
use seg_eval::components::PostProcessing;
use seg_eval::evaluate::{Summary, evaluate_folders, write_results};
use seg_eval::predict::{Job, PredictOptions, Predictor, Tta, plan_series, run_job};
use seg_eval::shard::Shard;
use seg_eval::stage::{self, Stage};
use seg_model::parse_device;
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(about = "Predict tumour masks in each CT's own geometry, evaluate them, draw the report")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Predict masks: for CTs you name (--checkpoint, --input, --output), or for the run's
    /// validation and test cases (--config).
    Predict(PredictArgs),
    /// Compare predicted masks with references (--pred, --ref), or the run's validation
    /// predictions with labelsTr (--config).
    Evaluate(EvaluateArgs),
    /// Draw the run's report (overlays, slice viewers, report.html) from its evaluation
    /// (--config), or the report of predictions without references (--ct, --pred, --out).
    Report(ReportArgs),
}

#[derive(clap::Args)]
struct ReportArgs {
    /// The shared config: the run's report.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ct", "pred", "out"])]
    config: Option<PathBuf>,
    /// With --config: override one key (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", requires = "config")]
    overrides: Vec<String>,
    /// A folder of CTs (NIfTI) without references, e.g. imagesTs.
    #[arg(long, value_name = "DIR", requires_all = ["pred", "out"])]
    ct: Option<PathBuf>,
    /// Their predicted masks (seg-eval predict's output folder).
    #[arg(long, value_name = "DIR")]
    pred: Option<PathBuf>,
    /// The report's folder (report.html and its pictures).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct PredictArgs {
    /// The shared config: predict the run's validation cases and imagesTs.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["checkpoint", "input", "output"])]
    config: Option<PathBuf>,
    /// With --config: override one key (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", requires = "config")]
    overrides: Vec<String>,
    /// A checkpoint folder (model.safetensors + checkpoint.json), e.g. work/default/runs/default/best,
    /// or a K-fold run's folder (its folds' best/). Repeat it for an ensemble: the models'
    /// probabilities are averaged before thresholding.
    #[arg(long, value_name = "DIR", requires_all = ["input", "output"])]
    checkpoint: Vec<PathBuf>,
    /// A CT (.nii or .nii.gz) or a folder of them; or DICOM: a folder (one mask per CT series)
    /// or a file of the series.
    #[arg(long, value_name = "PATH")]
    input: Option<PathBuf>,
    /// The mask file (a .dcm name writes a DICOM SEG over a DICOM input), or a folder for one
    /// mask per CT (same file names as the CTs; <series id>.nii.gz for DICOM).
    #[arg(long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// A DICOM SEG output gets a frame for every source slice, not only those with tumour.
    #[arg(long)]
    all_frames: bool,
    /// The DICOM series to predict (its SeriesInstanceUID, or the id ct-info lists), when the
    /// input holds several.
    #[arg(long, value_name = "ID")]
    series: Option<String>,
    /// Also write float32 probability maps.
    #[arg(long)]
    save_probabilities: bool,
    /// Probability above which a voxel is tumour.
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Slices per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Remove predicted components smaller than this many mm³ (replaces the rule the run chose
    /// on validation, if it has one).
    #[arg(long, value_name = "MM3")]
    min_component_mm3: Option<f64>,
    /// Keep only the k largest predicted components, 0 for all (replaces the rule the run chose
    /// on validation, if it has one).
    #[arg(long, value_name = "K")]
    keep_largest: Option<usize>,
    /// Keep predicted components outside the lungs (by default they are dropped: a component
    /// must touch the lung mask grown by 5 mm).
    #[arg(long)]
    no_lung_constraint: bool,
    /// Test-time augmentation: also predict each slice mirrored in-plane (4x the time).
    #[arg(long, value_enum, default_value_t = Tta::None)]
    tta: Tta,
    /// Predict share K of N of the sorted input cases (1 ≤ K ≤ N), beside N-1 other processes
    /// writing the same output folder. Without it, a Slurm job array's task or a Kubernetes
    /// Indexed Job's index (with --shards) decides.
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
    /// The number of shards of a Kubernetes Indexed Job (its completions), whose pods know
    /// only their JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Predict every case again, even those whose mask is current.
    #[arg(long)]
    overwrite: bool,
    /// Also write the lung mask (u8, the CT's geometry) to this file, or into this folder.
    #[arg(long, value_name = "PATH")]
    save_lungs: Option<PathBuf>,
    /// cpu, cuda:N or auto (with --config: overrides [eval] device).
    #[arg(long)]
    device: Option<String>,
}

#[derive(clap::Args)]
struct EvaluateArgs {
    /// The shared config: evaluate the run's validation predictions.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["pred", "reference"])]
    config: Option<PathBuf>,
    /// With --config: override one key (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", requires = "config")]
    overrides: Vec<String>,
    /// Folder of predicted masks (repeatable: the shards' folders of one prediction).
    #[arg(long, value_name = "DIR", requires = "reference")]
    pred: Vec<PathBuf>,
    /// Folder of reference masks (same file names or case ids).
    #[arg(long = "ref", value_name = "DIR")]
    reference: Option<PathBuf>,
    /// Where per_case.csv and summary.json go (default: the prediction folder).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    seg_model::memory::reuse_freed_memory();
    ct_io::cli::init_tracing();
    let args = Args::parse();
    ct_io::cli::run(|| match args.command {
        Command::Predict(a) => predict(a),
        Command::Evaluate(a) => evaluate(a),
        Command::Report(a) => {
            let page = match (a.config, a.ct, a.pred, a.out) {
                (Some(config), ..) => {
                    let config = ct_io::config::Config::load(&config, &a.overrides)?;
                    stage::report(&Stage::from_config(&config)?)?
                }
                (None, Some(ct), Some(pred), Some(out)) => {
                    seg_eval::report::write_unlabelled_report(
                        &ct,
                        &pred,
                        seg_eval::EvalConfig::default().lung_window,
                        &out,
                    )?
                }
                _ => anyhow::bail!("give --config FILE, or --ct DIR --pred DIR --out DIR"),
            };
            println!("report: {}", page.display());
            Ok(())
        }
    })
}

fn predict(a: PredictArgs) -> anyhow::Result<()> {
    if let Some(config) = a.config {
        anyhow::ensure!(
            a.shard.is_none() && a.shards.is_none(),
            "--shard is for --checkpoint --input --output: the config's stage predicts its \
             run's cases in one process"
        );
        let stage = Stage::from_config(&ct_io::config::Config::load(&config, &a.overrides)?)?;
        let predicted = stage::predict(&stage, a.device.as_deref())?;
        for folder in &predicted.folders {
            println!(
                "{}: {} predicted, {} unchanged",
                folder.folder.display(),
                folder.predicted.len(),
                folder.reused
            );
        }
        if let Some(choice) = &predicted.choice {
            println!(
                "post-processing chosen on {} validation cases: {} ({})",
                choice.cases,
                choice.chosen,
                stage.layout.postprocessing().display()
            );
        }
        return Ok(());
    }
    let (false, Some(input), Some(output)) =
        (a.checkpoint.is_empty(), a.input.clone(), a.output.clone())
    else {
        anyhow::bail!("give --config FILE, or --checkpoint DIR --input PATH --output PATH");
    };
    let checkpoints = stage::checkpoints_of(&a.checkpoint)?;
    let device = parse_device(a.device.as_deref().unwrap_or("cpu"))?;
    anyhow::ensure!(
        a.threshold > 0.0 && a.threshold < 1.0,
        "--threshold must be in (0, 1)"
    );
    let postprocessing = choose_rules(&checkpoints, &a)?;
    let options = PredictOptions {
        threshold: a.threshold,
        batch_size: a.batch_size,
        postprocessing,
        tta: a.tta,
    };
    let mut jobs = plan_series(&input, &output, a.save_probabilities, a.series.as_deref())?;
    for job in &mut jobs {
        job.all_frames = a.all_frames;
    }
    if let Some(lungs) = &a.save_lungs {
        let folder =
            input.is_dir() || lungs.is_dir() || ct_io::task::strip_nifti_extension(lungs).is_none();
        for job in &mut jobs {
            job.lungs = Some(if folder {
                lungs.join(job.output.file_name().expect("a file"))
            } else {
                lungs.clone()
            });
        }
    }
    let shard = match &a.shard {
        Some(text) => Some(Shard::parse(text)?),
        None => Shard::from_scheduler(|name| std::env::var(name).ok(), a.shards)?,
    };
    let total = jobs.len();
    // One writer per output folder, or per shard of it.
    let folder = if input.is_dir() {
        output.clone()
    } else {
        output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    };
    let _lock = match shard {
        Some(shard) => {
            jobs = shard.select(jobs);
            println!("shard {shard}: {} of {total} cases", jobs.len());
            Box::new(ct_io::lock::lock_shard(&folder, shard.index, shard.count)?)
                as Box<dyn std::any::Any>
        }
        None => Box::new(ct_io::lock::lock_folder(&folder)?),
    };
    let stamp = OutputStamp {
        weights: checkpoints
            .iter()
            .map(|c| FileStamp::of(&c.join(ct_io::layout::WEIGHTS_FILE)))
            .collect::<anyhow::Result<_>>()?,
        threshold: options.threshold,
        postprocessing,
        tta: options.tta,
    };
    let (current, todo): (Vec<Job>, Vec<Job>) = jobs
        .into_iter()
        .partition(|job| !a.overwrite && stamp.is_current(job));
    if !current.is_empty() {
        println!(
            "{} case(s) unchanged (mask newer than the CT, made with the same models and \
             settings; --overwrite predicts them again)",
            current.len()
        );
    }
    if todo.is_empty() {
        return Ok(());
    }
    let predictor = Predictor::load_ensemble(&checkpoints, &device, options)?;
    println!(
        "predicting with {} model(s), test-time augmentation {}, post-processing: {postprocessing}",
        predictor.models(),
        a.tta.name()
    );
    let bar = ct_io::cli::progress_bar(todo.len() as u64, "predict");
    for job in &todo {
        let report = run_job(&predictor, job)?;
        stamp.write(job)?;
        bar.suspend(|| {
            println!(
                "{} → {}: {:?}, {} tumour voxels ({:.2} ml), {}, {:.1} s",
                report.input.display(),
                report.output.display(),
                report.shape,
                report.tumour_voxels,
                report.notes.tumour_ml,
                report.notes.lung_note(),
                report.seconds
            )
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// The post-processing: the command line's, else the rule the checkpoints' run chose on
/// validation, else the default (the lung constraint alone).
fn choose_rules(checkpoints: &[PathBuf], a: &PredictArgs) -> anyhow::Result<PostProcessing> {
    let lung_constraint = !a.no_lung_constraint;
    if a.min_component_mm3.is_some() || a.keep_largest.is_some() {
        let rules = PostProcessing {
            lung_constraint,
            min_component_mm3: a.min_component_mm3.unwrap_or(0.0),
            keep_largest: a.keep_largest.unwrap_or(0),
        };
        anyhow::ensure!(
            rules.min_component_mm3.is_finite() && rules.min_component_mm3 >= 0.0,
            "--min-component-mm3 must be ≥ 0"
        );
        return Ok(rules);
    }
    let (rules, recorded) = stage::default_rules(checkpoints, lung_constraint);
    if let Some((path, chosen)) = recorded {
        println!(
            "post-processing chosen on the run's validation cases ({}): {chosen}",
            path.display()
        );
    }
    Ok(rules)
}

/// Beside each mask (`.<mask>.lungseg.json`): what it was made with, so that a rerun (of a failed
/// shard, say) skips the masks that are current.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OutputStamp {
    weights: Vec<FileStamp>,
    threshold: f32,
    postprocessing: PostProcessing,
    tta: Tta,
}

impl OutputStamp {
    fn path(job: &Job) -> PathBuf {
        let name = job.output.file_name().unwrap_or_default().to_string_lossy();
        job.output.with_file_name(format!(".{name}.lungseg.json"))
    }

    /// The job's outputs exist, are newer than its input and were made as this stamp says.
    fn is_current(&self, job: &Job) -> bool {
        let recorded = std::fs::read_to_string(Self::path(job))
            .ok()
            .and_then(|t| serde_json::from_str::<OutputStamp>(&t).ok());
        recorded.as_ref() == Some(self) && job.outputs_newer_than_input(true)
    }

    fn write(&self, job: &Job) -> anyhow::Result<()> {
        ct_io::atomic::write_json(&Self::path(job), self)?;
        Ok(())
    }
}

fn evaluate(a: EvaluateArgs) -> anyhow::Result<()> {
    let summary = if let Some(config) = a.config {
        let stage = Stage::from_config(&ct_io::config::Config::load(&config, &a.overrides)?)?;
        let summary = stage::evaluate(&stage)?;
        println!("results: {}", stage.evaluation().display());
        summary
    } else {
        let (false, Some(reference)) = (a.pred.is_empty(), a.reference) else {
            anyhow::bail!("give --config FILE, or --pred DIR [--pred DIR ...] --ref DIR");
        };
        let cases = evaluate_folders(&a.pred, &reference)?;
        let summary = Summary::of(&cases, &a.pred, &reference);
        let out = a.out.unwrap_or_else(|| a.pred[0].clone());
        write_results(&out, &cases, &summary)?;
        println!("results: {}", out.display());
        summary
    };
    println!("{}", summary.table());
    Ok(())
}
