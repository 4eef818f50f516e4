//! End to end: `cargo xtask pipeline` on config/smoke.toml (tiny phantoms, a tiny network), every
//! artifact present and consistent, and a second run that skips every stage.

use std::path::{Path, PathBuf};
use std::process::Command;

use ct_io::read_volume;
use ct_preprocess::manifest::{MANIFEST_FILE, Manifest, PREPROCESSED_DIR};
use ct_preprocess::split::Split;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs the pipeline on the smoke config with everything under `work`.
fn pipeline(work: &Path, extra: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(root())
        .args([
            "pipeline",
            "--dev",
            "--config",
            "config/smoke.toml",
            "--set",
        ])
        .arg(format!("paths.work_dir={}", work.display()))
        .arg("--set")
        .arg(format!(
            "paths.data_dir={}",
            work.join("Task06_Lung").display()
        ))
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

fn assert_finite(value: &serde_json::Value, at: &str) {
    match value {
        serde_json::Value::Number(n) => {
            assert!(n.as_f64().unwrap().is_finite(), "{at} is not finite")
        }
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, v)| assert_finite(v, &format!("{at}[{i}]"))),
        serde_json::Value::Object(map) => map
            .iter()
            .for_each(|(k, v)| assert_finite(v, &format!("{at}.{k}"))),
        _ => {}
    }
}

#[test]
fn the_pipeline_runs_end_to_end_and_a_second_run_skips_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let (code, log) = pipeline(work, &[]);
    assert_eq!(code, 0, "{log}");

    // The dataset: every slice the manifest lists is on disk, and nothing else.
    let preprocessed = work.join(PREPROCESSED_DIR);
    let manifest = Manifest::load(&preprocessed.join(MANIFEST_FILE)).unwrap();
    assert_eq!(manifest.cases.len(), 6);
    for slice in &manifest.slices {
        assert!(preprocessed.join(&slice.files.image).is_file());
        assert!(preprocessed.join(&slice.files.mask).is_file());
    }
    let npy_files = walk(&preprocessed.join("cases"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "npy"))
        .count();
    assert_eq!(npy_files, 2 * manifest.slices.len());

    // The checkpoint loads and says what it was trained on.
    let run = work.join("runs/smoke");
    let (model, info) =
        seg_model::Model::load(&run.join("best"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(model.config().width, 4);
    assert_eq!(info.preprocess.unwrap()["size"], 32);
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 3);

    // One mask per validation and test case, in its CT's geometry.
    let task = ct_io::read_task(&work.join("Task06_Lung")).unwrap();
    let validation: Vec<&ct_io::Case> = task
        .training
        .iter()
        .filter(|c| manifest.case(&c.id).unwrap().split == Split::Validation)
        .collect();
    assert!(!validation.is_empty());
    for (cases, folder) in [
        (validation.clone(), "validation"),
        (task.test.iter().collect(), "test"),
    ] {
        let masks = ct_io::task::nifti_files(&run.join("predictions").join(folder)).unwrap();
        assert_eq!(masks.len(), cases.len(), "{folder}");
        for case in cases {
            let mask_path = run
                .join("predictions")
                .join(folder)
                .join(case.image.file_name().unwrap());
            let mask = read_volume(&mask_path).unwrap();
            let ct = read_volume(&case.image).unwrap();
            assert_eq!(mask.geometry, ct.geometry, "{}", mask_path.display());
            assert!(mask.data.iter().all(|v| *v == 0.0 || *v == 1.0));
        }
    }

    // The evaluation and the report.
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("evaluation/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["cases"], validation.len());
    assert_finite(&summary, "summary");
    let per_case = std::fs::read_to_string(run.join("evaluation/per_case.csv")).unwrap();
    assert_eq!(per_case.lines().count(), validation.len() + 1);
    assert!(run.join("report/report.html").is_file());
    assert!(log.contains("report.html"), "{log}");

    // A second run does no work and changes nothing.
    let before = stamps(work);
    let (code, log) = pipeline(work, &[]);
    assert_eq!(code, 0, "{log}");
    for stage in ["preprocess", "train", "predict", "evaluate", "report"] {
        assert!(
            log.contains(&format!("== {stage}: up to date, skipped")),
            "{stage}: {log}"
        );
    }
    assert!(log.contains("== synth: skipped"), "{log}");
    assert_eq!(stamps(work), before, "the second run wrote files");

    // A changed [eval] key reruns predict, evaluate and report, and nothing before them.
    let (code, log) = pipeline(work, &["--set", "eval.threshold=0.4"]);
    assert_eq!(code, 0, "{log}");
    assert_stages(
        &log,
        &["preprocess", "train"],
        &["predict", "evaluate", "report"],
    );
    // --from runs that stage and the later ones even when up to date, and no earlier one.
    let (code, log) = pipeline(work, &["--set", "eval.threshold=0.4", "--from", "evaluate"]);
    assert_eq!(code, 0, "{log}");
    assert_stages(&log, &[], &["evaluate", "report"]);
    for earlier in ["preprocess", "train", "predict"] {
        assert!(!log.contains(&format!("== {earlier}")), "{earlier}: {log}");
    }
    // A changed [preprocess] key reruns it and everything after; the run trained on the old
    // dataset is not overwritten but refused, until another train.run is given.
    let trained = stamps(&run);
    let (code, log) = pipeline(work, &["--set", "preprocess.seed=43"]);
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("== preprocess\n"), "{log}");
    assert!(
        log.contains("holds a run made with other settings"),
        "{log}"
    );
    assert_eq!(stamps(&run), trained, "the old run was touched");
    let (code, log) = pipeline(
        work,
        &["--set", "preprocess.seed=43", "--set", "train.run=reseeded"],
    );
    assert_eq!(code, 0, "{log}");
    assert_stages(
        &log,
        &["preprocess"],
        &["train", "predict", "evaluate", "report"],
    );
    assert!(work.join("runs/reseeded/best").is_dir());

    // A failing stage stops the pipeline with its exit code and error.
    std::fs::remove_dir_all(run.join("predictions/validation")).unwrap();
    let (code, log) = pipeline(work, &["--only", "evaluate"]);
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("stage evaluate failed"), "{log}");
    assert!(log.contains("predictions/validation"), "{log}");
    // A bad config value stops it before any work, with the config's exit code.
    let (code, log) = pipeline(work, &["--set", "train.batch_size=0"]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("train.batch_size"), "{log}");

    // A task folder that synth did not write (real data: no "synth" record in its dataset.json)
    // is never overwritten: skipped when [synth] changes, refused when synth is asked for.
    let task = work.join("Task06_Lung");
    let dataset_json = task.join("dataset.json");
    let mut dataset: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dataset_json).unwrap()).unwrap();
    dataset.as_object_mut().unwrap().remove("synth").unwrap();
    std::fs::write(&dataset_json, serde_json::to_string(&dataset).unwrap()).unwrap();
    let data = stamps(&task);
    let (code, log) = pipeline(
        work,
        &["--set", "synth.seed=8", "--set", "train.run=on_real_data"],
    );
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("== synth: skipped") && log.contains("holds a task folder"),
        "{log}"
    );
    let (code, log) = pipeline(work, &["--set", "synth.seed=8", "--only", "synth"]);
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("that synth did not write"), "{log}");
    assert_eq!(stamps(&task), data, "the task folder was written");

    // K folds: each trained in turn, every case predicted by the fold that held it out, all
    // evaluated together; a rerun skips every fold.
    let folds = ["--set", "preprocess.folds=2", "--set", "train.run=cv"];
    let (code, log) = pipeline(work, &folds);
    assert_eq!(code, 0, "{log}");
    let stages = [
        "train fold 0",
        "train fold 1",
        "predict",
        "evaluate",
        "report",
    ];
    assert_stages(&log, &[], &stages);
    let cv = work.join("runs/cv");
    for k in 0..2 {
        assert!(
            cv.join(format!("fold_{k}/best/model.safetensors"))
                .is_file()
        );
    }
    let manifest = Manifest::load(&work.join(PREPROCESSED_DIR).join(MANIFEST_FILE)).unwrap();
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cv.join("cross_validation/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["cases"], manifest.cases.len());
    assert_eq!(summary["folds"].as_array().unwrap().len(), 2);
    assert!(log.contains("Dice per fold"), "{log}");
    assert!(cv.join("report/report.html").is_file());
    let (code, log) = pipeline(work, &folds);
    assert_eq!(code, 0, "{log}");
    assert_stages(&log, &stages, &[]);
}

/// The pipeline's log says each of `skipped` was up to date and each of `ran` ran.
fn assert_stages(log: &str, skipped: &[&str], ran: &[&str]) {
    for stage in skipped {
        assert!(
            log.contains(&format!("== {stage}: up to date, skipped")),
            "{stage} should be skipped: {log}"
        );
    }
    for stage in ran {
        assert!(
            log.contains(&format!("== {stage}\n")),
            "{stage} should run: {log}"
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Every file below `dir` with its modification time.
fn stamps(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out: Vec<_> = walk(dir)
        .into_iter()
        // Lock files say who writes, not what was written.
        .filter(|p| !p.to_string_lossy().ends_with(".lock"))
        .map(|p| {
            let t = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p, t)
        })
        .collect();
    out.sort();
    out
}
