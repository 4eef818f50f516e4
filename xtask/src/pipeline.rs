//! `cargo xtask pipeline`: synth → preprocess → train → predict → evaluate → report, each stage
//! its own binary with the same config and overrides.
//!
//! A stage is skipped when it is up to date: `work_dir/pipeline.json` records, per stage, a
//! fingerprint of what it depends on (the config sections it reads, the input files' sizes and
//! times, and the fingerprint of the stage before it) once the stage has finished. A stage runs
//! when its fingerprint changed or its outputs are missing, and so does everything after it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use ct_io::config::Config;
use ct_io::layout::{BEST, LAST};
use ct_phantom::SynthConfig;
use ct_preprocess::manifest::{FileStamp, MANIFEST_FILE, PREPROCESSED_DIR};
use ct_preprocess::settings::PreprocessConfig;
use seg_data::DataConfig;
use seg_eval::EvalConfig;
use seg_eval::evaluate::{SUMMARY_FILE, Summary};
use seg_eval::report::REPORT_FILE;
use seg_eval::stage::{Stage as EvalStage, TEST, VALIDATION};
use seg_model::ModelConfig;
use seg_model::model::INFO_FILE;
use seg_train::config::TrainConfig;
use serde::{Deserialize, Serialize};

const RECORD_FILE: &str = "pipeline.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum StageName {
    Synth,
    Preprocess,
    Train,
    Predict,
    Evaluate,
    Report,
}

impl StageName {
    const ALL: [StageName; 6] = [
        StageName::Synth,
        StageName::Preprocess,
        StageName::Train,
        StageName::Predict,
        StageName::Evaluate,
        StageName::Report,
    ];

    fn name(self) -> &'static str {
        match self {
            StageName::Synth => "synth",
            StageName::Preprocess => "preprocess",
            StageName::Train => "train",
            StageName::Predict => "predict",
            StageName::Evaluate => "evaluate",
            StageName::Report => "report",
        }
    }
}

#[derive(clap::Args)]
pub struct PipelineArgs {
    /// The shared config (default: config/default.toml, the demo).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one key in every stage, e.g. --set train.epochs=2 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Start at this stage (it and the later ones run even if up to date).
    #[arg(long, value_enum, conflicts_with = "only")]
    from: Option<StageName>,
    /// Run only this stage (even if up to date).
    #[arg(long, value_enum)]
    only: Option<StageName>,
    /// Build the stage binaries in the dev profile instead of release (quicker to build, for
    /// tests; training is slower).
    #[arg(long)]
    dev: bool,
}

/// A stage that failed: the pipeline exits with its code.
#[derive(Debug)]
pub struct StageFailed {
    pub stage: &'static str,
    pub code: u8,
}

impl std::fmt::Display for StageFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stage {} failed (exit code {}); its error is above",
            self.stage, self.code
        )
    }
}

impl std::error::Error for StageFailed {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    /// Per stage: the fingerprint it last finished with.
    finished: BTreeMap<String, String>,
    /// Per stage: the fingerprint of a run that started and has not finished.
    started: BTreeMap<String, String>,
}

pub fn pipeline(args: PipelineArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let config_file = match &args.config {
        Some(file) => file.clone(),
        None => root.join("config/default.toml"),
    };
    let config = Config::load(&config_file, &args.overrides)?;
    // Every section is checked before any work, so a typo stops the pipeline at once.
    let paths = config.paths()?;
    let synth: SynthConfig = config.section()?;
    let preprocess: PreprocessConfig = config.section()?;
    let data: DataConfig = config.section()?;
    let model: ModelConfig = config.section()?;
    let train: TrainConfig = config.section()?;
    let eval: EvalConfig = config.section()?;
    let eval_stage = EvalStage::from_config(&config)?;
    let binaries = build_binaries(&root, args.dev)?;

    std::fs::create_dir_all(&paths.work_dir)
        .with_context(|| format!("{}: cannot create", paths.work_dir.display()))?;
    // One pipeline per work_dir (each stage also locks what it writes).
    let _lock =
        ct_io::lock::lock_folder_with(&paths.work_dir, &paths.work_dir.join(".pipeline.lock"))?;
    let record_path = paths.work_dir.join(RECORD_FILE);
    let mut record: Record = std::fs::read_to_string(&record_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();

    let selected = |stage: StageName| match (args.only, args.from) {
        (Some(only), _) => stage == only,
        (None, Some(from)) => stage >= from,
        (None, None) => true,
    };
    let forced =
        |stage: StageName| args.only == Some(stage) || args.from.is_some_and(|f| stage >= f);
    let stage_args = |subcommand: &[&str]| -> Vec<String> {
        let mut out: Vec<String> = subcommand.iter().map(|s| s.to_string()).collect();
        out.push("--config".into());
        out.push(config_file.display().to_string());
        for o in &args.overrides {
            out.push("--set".into());
            out.push(o.clone());
        }
        out
    };

    let mut previous = String::new();
    let mut ran_any = false;
    // Training is one step per fold for a K-fold dataset, each resumed or skipped on its own.
    let folds: Vec<Option<usize>> = if preprocess.folds > 1 {
        (0..preprocess.folds).map(Some).collect()
    } else {
        vec![None]
    };
    let steps: Vec<(StageName, Option<usize>)> = StageName::ALL
        .into_iter()
        .flat_map(|stage| match stage {
            StageName::Train => folds.iter().map(|&f| (stage, f)).collect::<Vec<_>>(),
            _ => vec![(stage, None)],
        })
        .collect();
    let mut ran_before_stage = false;
    for (index, &(stage, fold)) in steps.iter().enumerate() {
        let first_of_stage = index == 0 || steps[index - 1].0 != stage;
        if first_of_stage {
            previous = match stage {
                StageName::Synth => fingerprint(&[
                    &json(&ct_phantom::provenance(&synth)),
                    &paths.data_dir.display().to_string(),
                ]),
                StageName::Preprocess => fingerprint(&[
                    &previous,
                    &json(&preprocess),
                    &files_stamp(&paths.data_dir, &["dataset.json", "imagesTr", "labelsTr"]),
                ]),
                StageName::Train => {
                    fingerprint(&[&previous, &json(&data), &json(&model), &json(&train)])
                }
                StageName::Predict => fingerprint(&[
                    &previous,
                    &json(&eval),
                    &files_stamp(&paths.data_dir, &["imagesTs"]),
                ]),
                StageName::Evaluate | StageName::Report => fingerprint(&[&previous, stage.name()]),
            };
            ran_before_stage = ran_any;
        }
        let (key, fingerprint) = match fold {
            None => (stage.name().to_string(), previous.clone()),
            Some(k) => (
                format!("{} fold {k}", stage.name()),
                fingerprint(&[&previous, &format!("fold {k}")]),
            ),
        };
        if !selected(stage) {
            continue;
        }
        let outputs_exist = match stage {
            StageName::Synth => ct_io::task::is_task_folder(&paths.data_dir),
            StageName::Preprocess => paths
                .work_dir
                .join(PREPROCESSED_DIR)
                .join(MANIFEST_FILE)
                .is_file(),
            StageName::Train => eval_stage
                .layout
                .checkpoint(fold, BEST)
                .join(INFO_FILE)
                .is_file(),
            StageName::Predict => eval_stage.predictions(VALIDATION).is_dir(),
            StageName::Evaluate => eval_stage.evaluation().join(SUMMARY_FILE).is_file(),
            StageName::Report => eval_stage.report().join(REPORT_FILE).is_file(),
        };
        // A task folder that is there is the data: synth only rewrites its own phantoms, and only
        // when [synth] changed.
        let up_to_date = if stage == StageName::Synth {
            match synthesised_with(&paths.data_dir) {
                Some(recorded) => recorded == ct_phantom::provenance(&synth),
                None => outputs_exist,
            }
        } else {
            outputs_exist && !ran_before_stage && record.finished.get(&key) == Some(&fingerprint)
        };
        if up_to_date && !forced(stage) {
            if stage == StageName::Synth {
                let what = if synthesised_with(&paths.data_dir).is_some() {
                    "phantoms of the same [synth]"
                } else {
                    "a task folder"
                };
                println!(
                    "== synth: skipped ({} holds {what})",
                    paths.data_dir.display()
                );
            } else {
                println!("== {key}: up to date, skipped");
            }
            continue;
        }
        println!("== {key}");
        record.finished.remove(&key);
        let mut resume = false;
        let training_dir = eval_stage.layout.training_dir(fold);
        if stage == StageName::Train && training_dir.join(LAST).exists() {
            if record.started.get(&key) == Some(&fingerprint) {
                resume = true; // the same training was interrupted: continue it
            } else {
                bail!(
                    "{} holds a run made with other settings (or outside the pipeline): set \
                     another train.run, or remove that folder to train afresh",
                    training_dir.display()
                );
            }
        }
        record.started.insert(key.clone(), fingerprint.clone());
        ct_io::atomic::write_json(&record_path, &record)?;
        match stage {
            StageName::Synth => {
                if outputs_exist && synthesised_with(&paths.data_dir).is_none() {
                    bail!(
                        "{} holds a task folder that synth did not write (real data?): not \
                         overwriting it",
                        paths.data_dir.display()
                    );
                }
                crate::write_synth(&synth, &paths.data_dir)?;
            }
            StageName::Preprocess => run(&binaries.preprocess, &stage_args(&[]), stage)?,
            StageName::Train => {
                let mut a = stage_args(&[]);
                if let Some(k) = fold {
                    a.extend(["--fold".to_string(), k.to_string()]);
                }
                if resume {
                    a.push("--resume".into());
                }
                run(&binaries.train, &a, stage)?
            }
            StageName::Predict => run(&binaries.eval, &stage_args(&["predict"]), stage)?,
            StageName::Evaluate => run(&binaries.eval, &stage_args(&["evaluate"]), stage)?,
            StageName::Report => run(&binaries.eval, &stage_args(&["report"]), stage)?,
        }
        ran_any = true;
        record.started.remove(&key);
        record.finished.insert(key, fingerprint);
        ct_io::atomic::write_json(&record_path, &record)?;
    }

    println!();
    let summary_path = eval_stage.evaluation().join(SUMMARY_FILE);
    if let Ok(text) = std::fs::read_to_string(&summary_path)
        && let Ok(summary) = serde_json::from_str::<Summary>(&text)
    {
        println!(
            "validation cases at original resolution ({}):",
            summary_path.display()
        );
        println!("{}", summary.table());
    }
    let report = eval_stage.report().join(REPORT_FILE);
    if report.is_file() {
        println!("report:            {}", report.display());
    }
    for which in [VALIDATION, TEST] {
        let folder = eval_stage.predictions(which);
        if folder.is_dir() {
            println!("predicted masks:   {} ({which})", folder.display());
        }
    }
    Ok(())
}

struct Binaries {
    preprocess: PathBuf,
    train: PathBuf,
    eval: PathBuf,
}

/// Builds the stage binaries (once; cargo does nothing when they are current) and finds them.
fn build_binaries(root: &Path, dev: bool) -> anyhow::Result<Binaries> {
    let mut command = cargo();
    command.current_dir(root).args([
        "build",
        "--message-format=json-render-diagnostics",
        "-p",
        "ct-preprocess",
        "-p",
        "seg-train",
        "-p",
        "seg-eval",
        "--bins",
    ]);
    if !dev {
        command.arg("--release");
    }
    println!(
        "== building the stage binaries{}",
        if dev { " (dev profile)" } else { " (release)" }
    );
    let output = command
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !output.status.success() {
        bail!("building the stage binaries failed");
    }
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(name), Some(exe)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    let get = |name: &str| {
        found
            .get(name)
            .cloned()
            .with_context(|| format!("cargo built no {name} binary"))
    };
    Ok(Binaries {
        preprocess: get("ct-preprocess")?,
        train: get("seg-train")?,
        eval: get("seg-eval")?,
    })
}

fn run(binary: &Path, args: &[String], stage: StageName) -> anyhow::Result<()> {
    let status = Command::new(binary)
        .args(args)
        .status()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    if !status.success() {
        return Err(StageFailed {
            stage: stage.name(),
            code: status.code().map_or(1, |c| c.clamp(1, 255) as u8),
        }
        .into());
    }
    Ok(())
}

/// The cargo that runs xtask (`cargo` on PATH when run otherwise).
pub(crate) fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// How a phantom task folder was written ([`ct_phantom::provenance`], in its dataset.json); None
/// for a folder that is not ours (real data, which the pipeline never overwrites).
fn synthesised_with(data_dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(data_dir.join("dataset.json")).ok()?;
    let dataset: serde_json::Value = serde_json::from_str(&text).ok()?;
    dataset.get("synth").cloned()
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("config sections serialise")
}

/// Sizes and modification times of the files below `dir`'s `entries` (recursively, sorted).
fn files_stamp(dir: &Path, entries: &[&str]) -> String {
    let mut files = Vec::new();
    let mut stack: Vec<PathBuf> = entries.iter().map(|e| dir.join(e)).collect();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            if let Ok(read) = std::fs::read_dir(&path) {
                stack.extend(read.flatten().map(|e| e.path()));
            }
        } else if let Ok(stamp) = FileStamp::of(&path) {
            files.push(stamp);
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    json(&files)
}

/// FNV-1a (64 bit) of the parts, as hex: stable across runs and machines.
fn fingerprint(parts: &[&str]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0xff]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}
