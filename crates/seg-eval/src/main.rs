//! `seg-eval predict | evaluate | report`: by explicit paths, or as pipeline stages from the
//! shared config (`--config FILE [--set k=v]...`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use seg_eval::evaluate::{Summary, evaluate_folders, write_results};
use seg_eval::predict::{PredictOptions, Predictor, plan_series, run_job};
use seg_eval::stage::{self, Stage};
use seg_model::parse_device;

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
    /// A checkpoint folder (model.safetensors + checkpoint.json), e.g. work/default/runs/default/best.
    #[arg(long, value_name = "DIR", requires_all = ["input", "output"])]
    checkpoint: Option<PathBuf>,
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
    /// Remove predicted components smaller than this many mm³.
    #[arg(long, default_value_t = 0.0)]
    min_component_mm3: f64,
    /// Keep only the k largest predicted components (0: all).
    #[arg(long, default_value_t = 0)]
    keep_largest: usize,
    /// Keep predicted components outside the lungs (by default they are dropped: a component
    /// must touch the lung mask grown by 5 mm).
    #[arg(long)]
    no_lung_constraint: bool,
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
    /// Folder of predicted masks.
    #[arg(long, value_name = "DIR", requires = "reference")]
    pred: Option<PathBuf>,
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
        let stage = Stage::from_config(&ct_io::config::Config::load(&config, &a.overrides)?)?;
        for folder in stage::predict(&stage, a.device.as_deref())? {
            println!(
                "{}: {} predicted, {} unchanged",
                folder.folder.display(),
                folder.predicted.len(),
                folder.reused
            );
        }
        return Ok(());
    }
    let (Some(checkpoint), Some(input), Some(output)) = (a.checkpoint, a.input, a.output) else {
        anyhow::bail!("give --config FILE, or --checkpoint DIR --input PATH --output PATH");
    };
    let device = parse_device(a.device.as_deref().unwrap_or("cpu"))?;
    let options = PredictOptions {
        threshold: a.threshold,
        batch_size: a.batch_size,
        min_component_mm3: a.min_component_mm3,
        keep_largest: a.keep_largest,
        lung_constraint: !a.no_lung_constraint,
    };
    anyhow::ensure!(
        options.threshold > 0.0 && options.threshold < 1.0,
        "--threshold must be in (0, 1)"
    );
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
    let predictor = Predictor::load(&checkpoint, &device, options)?;
    let bar = ct_io::cli::progress_bar(jobs.len() as u64, "predict");
    for job in &jobs {
        let report = run_job(&predictor, job)?;
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

fn evaluate(a: EvaluateArgs) -> anyhow::Result<()> {
    let summary = if let Some(config) = a.config {
        let stage = Stage::from_config(&ct_io::config::Config::load(&config, &a.overrides)?)?;
        let summary = stage::evaluate(&stage)?;
        println!("results: {}", stage.evaluation().display());
        summary
    } else {
        let (Some(pred), Some(reference)) = (a.pred, a.reference) else {
            anyhow::bail!("give --config FILE, or --pred DIR --ref DIR");
        };
        let cases = evaluate_folders(&pred, &reference)?;
        let summary = Summary::of(&cases, &pred, &reference);
        let out = a.out.unwrap_or_else(|| pred.clone());
        write_results(&out, &cases, &summary)?;
        println!("results: {}", out.display());
        summary
    };
    println!("{}", summary.table());
    Ok(())
}
