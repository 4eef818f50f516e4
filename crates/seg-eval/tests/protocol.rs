//! The nnU-Net protocol on a tiny task: K-fold cross-validation predicted out of fold, fold
//! ensembles, mirroring at test time, post-processing chosen on validation, sharded prediction.

use std::path::{Path, PathBuf};
use std::process::Command;

use ct_io::config::Config;
use ct_io::read_volume;
use ct_phantom::{SynthConfig, write_task};
use ct_preprocess::manifest::{MANIFEST_FILE, Manifest, PREPROCESSED_DIR};
use ct_preprocess::settings::PreprocessConfig;
use seg_eval::components::{Choice, PostProcessing};
use seg_eval::predict::{PredictOptions, Predictor, Tta};
use seg_eval::stage::{self, Stage, TEST, VALIDATION};
use seg_model::{Model, ModelConfig};

fn config(dir: &Path, overrides: &[&str]) -> Config {
    let text = r#"
[paths]
data_dir = "task"
work_dir = "work"
[preprocess]
size = 32
crop_slices = 2
window = [-1000.0, 400.0]
folds = 2
[model]
width = 4
depth = 2
[train]
run = "cv"
[eval]
save_probabilities = true
threshold = 0.45
"#;
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Config::parse(text, &dir.join("test.toml"), dir, &overrides).unwrap()
}

fn phantoms(dir: &Path) {
    let synth = SynthConfig {
        cases: 4,
        test_cases: 1,
        size: 40,
        slices: 16,
        seed: 21,
        orientation: "LAS".into(),
    };
    write_task(&dir.join("task"), &synth).unwrap();
}

/// The slices of `config`'s `[preprocess]`, for checkpoints made outside the stages.
fn tiny_preprocessing() -> PreprocessConfig {
    PreprocessConfig {
        size: 32,
        crop_slices: 2,
        window: vec![-1000.0, 400.0],
        ..PreprocessConfig::default()
    }
}

/// An untrained U-Net (its own initialisation per seed) saved as a checkpoint of `preprocess`.
fn save_model(path: &Path, init_seed: u64, preprocess: &PreprocessConfig) {
    let model = ModelConfig {
        width: 4,
        depth: 2,
        init_seed,
        ..ModelConfig::default()
    };
    Model::new(&model, &candle_core::Device::Cpu)
        .unwrap()
        .save(
            path,
            Some(serde_json::to_value(preprocess).unwrap()),
            serde_json::json!({"run": "cv"}),
        )
        .unwrap();
}

/// Phantoms preprocessed into 2 folds, and an untrained model per fold standing in for trained ones.
fn prepared_cross_validation(dir: &Path) -> (Stage, Manifest) {
    phantoms(dir);
    let config = config(dir, &[]);
    ct_preprocess::run(&config).unwrap();
    let stage = Stage::from_config(&config).unwrap();
    let manifest =
        Manifest::load(&stage.work_dir.join(PREPROCESSED_DIR).join(MANIFEST_FILE)).unwrap();
    for fold in 0..2 {
        save_model(
            &stage.checkpoint(Some(fold)),
            10 + fold as u64,
            &manifest.settings,
        );
    }
    (stage, manifest)
}

fn probabilities(path: &Path) -> Vec<f32> {
    read_volume(path).unwrap().data.iter().copied().collect()
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn options(tta: Tta) -> PredictOptions {
    PredictOptions {
        postprocessing: PostProcessing::NONE,
        tta,
        ..PredictOptions::default()
    }
}

#[test]
fn every_case_is_predicted_out_of_fold_and_new_cases_by_the_fold_ensemble() {
    let dir = tempfile::tempdir().unwrap();
    let (stage, manifest) = prepared_cross_validation(dir.path());
    let predicted = stage::predict(&stage, None).unwrap();
    let validation = stage.predictions(VALIDATION);
    let cpu = candle_core::Device::Cpu;
    let plain = PredictOptions {
        threshold: 0.45,
        ..options(Tta::None)
    };
    let fold_models: Vec<Predictor> = (0..2)
        .map(|k| Predictor::load(&stage.checkpoint(Some(k)), &cpu, plain.clone()).unwrap())
        .collect();
    let ids: Vec<String> = manifest.cases.iter().map(|c| c.info.id.clone()).collect();
    assert_eq!(ids.len(), 4);
    for id in &ids {
        let fold = manifest.split.fold_of(id).expect("every case is in a fold");
        let image = dir.path().join(format!("task/imagesTr/{id}.nii.gz"));
        let volume = read_volume(&image).unwrap();
        let written = probabilities(&validation.join(format!("probabilities/{id}.nii.gz")));
        let by = |k: usize| -> Vec<f32> {
            let p = fold_models[k].predict(&volume, &image).unwrap();
            p.probabilities.iter().copied().collect()
        };
        assert_eq!(
            written,
            by(fold),
            "{id} is predicted by the model that held out its fold {fold}"
        );
        assert_ne!(written, by(1 - fold), "{id}: not by the model that saw it");
    }
    // The test case: the mean of both folds' probabilities.
    let test = dir.path().join("task/imagesTs/lung_005.nii.gz");
    let volume = read_volume(&test).unwrap();
    let each: Vec<Vec<f32>> = fold_models
        .iter()
        .map(|m| {
            let p = m.predict(&volume, &test).unwrap().probabilities;
            p.iter().copied().collect()
        })
        .collect();
    let mean: Vec<f32> = each[0]
        .iter()
        .zip(&each[1])
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    let written = probabilities(
        &stage
            .predictions(TEST)
            .join("probabilities/lung_005.nii.gz"),
    );
    assert!(max_difference(&written, &mean) < 1e-6);
    assert!(
        max_difference(&each[0], &each[1]) > 1e-3,
        "two different models"
    );
    let notes = stage::read_notes(&stage.predictions(TEST));
    assert_eq!(notes["lung_005.nii.gz"].models, 2);

    // The post-processing was chosen on the out-of-fold predictions and recorded in the run.
    let choice: Choice =
        serde_json::from_str(&std::fs::read_to_string(stage.layout.postprocessing()).unwrap())
            .unwrap();
    assert_eq!(Some(&choice), predicted.choice.as_ref());
    assert_eq!(choice.cases, 4);
    assert_eq!(
        notes["lung_005.nii.gz"].postprocessing, choice.chosen,
        "the test case gets the chosen rule"
    );

    // The cross-validation's figures: per case, per fold, and the spread of the fold means.
    let summary = stage::evaluate(&stage).unwrap();
    assert_eq!(summary.cases, 4);
    assert_eq!(stage.evaluation(), stage.run_dir().join("cross_validation"));
    assert!(stage.evaluation().join("summary.json").is_file());
    assert_eq!(
        summary.folds.iter().map(|f| f.fold).collect::<Vec<_>>(),
        [0, 1]
    );
    let per_case =
        seg_eval::evaluate::read_per_case(&stage.evaluation().join("per_case.csv")).unwrap();
    for f in &summary.folds {
        let with_dice = per_case
            .iter()
            .filter(|c| manifest.split.fold_of(&c.case) == Some(f.fold) && c.dice.is_some())
            .count();
        assert_eq!(f.dice.n, with_dice);
    }
    assert_eq!(summary.fold_means.as_ref().unwrap().n, 2);
    assert_eq!(summary.postprocessing, Some(choice));
    stage::report(&stage).unwrap();
}

#[test]
fn an_ensemble_averages_its_models_and_refuses_other_preprocessing() {
    let dir = tempfile::tempdir().unwrap();
    phantoms(dir.path());
    let preprocess = tiny_preprocessing();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    save_model(&a, 1, &preprocess);
    save_model(&b, 2, &preprocess);
    let cpu = candle_core::Device::Cpu;
    let image = dir.path().join("task/imagesTr/lung_001.nii.gz");
    let volume = read_volume(&image).unwrap();
    let predict = |checkpoints: &[PathBuf]| -> Vec<f32> {
        let predictor = Predictor::load_ensemble(checkpoints, &cpu, options(Tta::None)).unwrap();
        let p = predictor.predict(&volume, &image).unwrap().probabilities;
        p.iter().copied().collect()
    };
    let alone = predict(std::slice::from_ref(&a));
    assert_eq!(
        predict(&[a.clone(), a.clone()]),
        alone,
        "an ensemble of one model is that model"
    );
    let with_b = predict(&[a.clone(), b.clone()]);
    let b_alone = predict(std::slice::from_ref(&b));
    let mean: Vec<f32> = alone
        .iter()
        .zip(&b_alone)
        .map(|(x, y)| (x + y) / 2.0)
        .collect();
    assert!(max_difference(&with_b, &mean) < 1e-6);

    // Another window: the slices differ, so no ensemble.
    let other = dir.path().join("other");
    save_model(
        &other,
        3,
        &PreprocessConfig {
            window: vec![-1200.0, 600.0],
            seed: 9, // the split does not matter
            ..preprocess.clone()
        },
    );
    let refused = Predictor::load_ensemble(&[a.clone(), other], &cpu, options(Tta::None))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        refused.contains("normalisation") && !refused.contains("seed"),
        "{refused}"
    );
    let splits_only = dir.path().join("split");
    save_model(
        &splits_only,
        3,
        &PreprocessConfig {
            seed: 9,
            folds: 3,
            ..preprocess
        },
    );
    assert!(Predictor::load_ensemble(&[a, splits_only], &cpu, options(Tta::None)).is_ok());
}

/// Makes every 3x3 kernel of the model mirror-symmetric both ways: the network then commutes with
/// in-plane mirroring (pooling, upsampling and batch norm already do at even sizes).
fn symmetrise(path: &Path) {
    let cpu = candle_core::Device::Cpu;
    let (model, info) = Model::load(path, &cpu).unwrap();
    for (_, var) in model.named_vars() {
        let dims = var.dims().to_vec();
        if dims.len() != 4 || dims[2] != 3 || dims[3] != 3 {
            continue;
        }
        let w: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
        let mut out = w.clone();
        for kernel in 0..dims[0] * dims[1] {
            let k = &w[kernel * 9..kernel * 9 + 9];
            for r in 0..3 {
                for c in 0..3 {
                    out[kernel * 9 + r * 3 + c] = (k[r * 3 + c]
                        + k[r * 3 + 2 - c]
                        + k[(2 - r) * 3 + c]
                        + k[(2 - r) * 3 + 2 - c])
                        / 4.0;
                }
            }
        }
        var.set(&candle_core::Tensor::from_vec(out, dims, &cpu).unwrap())
            .unwrap();
    }
    model.save(path, info.preprocess, info.extra).unwrap();
}

#[test]
fn flip_tta_mirrors_back_what_it_mirrored() {
    let dir = tempfile::tempdir().unwrap();
    phantoms(dir.path());
    let preprocess = tiny_preprocessing();
    let cpu = candle_core::Device::Cpu;
    let image = dir.path().join("task/imagesTr/lung_002.nii.gz");
    let volume = read_volume(&image).unwrap();
    let predict = |checkpoint: &Path, tta: Tta| -> Vec<f32> {
        let predictor = Predictor::load(checkpoint, &cpu, options(tta)).unwrap();
        let p = predictor.predict(&volume, &image).unwrap().probabilities;
        p.iter().copied().collect()
    };
    let plain_model = dir.path().join("plain");
    save_model(&plain_model, 4, &preprocess);
    let symmetric = dir.path().join("symmetric");
    save_model(&symmetric, 4, &preprocess);
    symmetrise(&symmetric);
    // A network that commutes with mirroring sees nothing new in the mirrored slices: the average
    // of the four passes, each mirrored back, is the plain prediction.
    let plain = predict(&symmetric, Tta::None);
    let flipped = predict(&symmetric, Tta::Flip);
    assert!(max_difference(&plain, &flipped) < 1e-5);
    assert!(max_difference(&plain, &predict(&plain_model, Tta::None)) > 1e-3);
    // Any other network does.
    let plain = predict(&plain_model, Tta::None);
    assert!(max_difference(&plain, &predict(&plain_model, Tta::Flip)) > 1e-3);
}

#[test]
fn shards_predict_exactly_the_masks_of_one_process_and_a_rerun_skips_current_masks() {
    let dir = tempfile::tempdir().unwrap();
    let (stage, _) = prepared_cross_validation(dir.path());
    // The run's choice is applied by the command line too (a made-up one, to see it used).
    let choice = Choice {
        baseline: PostProcessing::NONE,
        baseline_dice: Some(0.5),
        chosen: PostProcessing {
            lung_constraint: true,
            min_component_mm3: 30.0,
            keep_largest: 0,
        },
        chosen_dice: Some(0.6),
        cases: 4,
        trials: Vec::new(),
    };
    ct_io::atomic::write_json(&stage.layout.postprocessing(), &choice).unwrap();
    let bin = env!("CARGO_BIN_EXE_seg-eval");
    let input = dir.path().join("task/imagesTr");
    let predict = |out: &str, extra: &[&str], env: &[(&str, &str)]| {
        let output = Command::new(bin)
            .arg("predict")
            .arg("--checkpoint")
            .arg(stage.run_dir())
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(dir.path().join(out))
            .args(extra)
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("JOB_COMPLETION_INDEX")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{extra:?}: {text}");
        text
    };
    let whole = predict("whole", &[], &[]);
    assert!(whole.contains("2 model(s)"), "{whole}");
    assert!(
        whole.contains("components ≥ 30 mm³"),
        "the run's rule: {whole}"
    );
    let first = predict("sharded", &["--shard", "1/2"], &[]);
    assert!(first.contains("shard 1/2: 2 of 4 cases"), "{first}");
    // The second shard as a Slurm job array's second task sees it.
    let second = predict(
        "sharded",
        &[],
        &[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
        ],
    );
    assert!(second.contains("shard 2/2: 2 of 4 cases"), "{second}");
    let masks = |folder: &str| -> Vec<(String, Vec<u8>)> {
        ct_io::task::nifti_files(&dir.path().join(folder))
            .unwrap()
            .iter()
            .map(|p| {
                let mask = ct_io::read_mask_with(p, &ct_io::ReadOptions::default()).unwrap();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    mask.data.iter().copied().collect(),
                )
            })
            .collect()
    };
    let (whole_masks, sharded_masks) = (masks("whole"), masks("sharded"));
    assert_eq!(whole_masks.len(), 4);
    assert_eq!(whole_masks, sharded_masks);
    // A shard run again (after a failure, say) finds its masks current.
    let again = predict("sharded", &["--shard", "1/2"], &[]);
    assert!(again.contains("2 case(s) unchanged"), "{again}");
    assert!(!again.contains("predicting with"), "{again}");
    // Explicit rules replace the run's.
    let explicit = predict(
        "sharded",
        &["--shard", "1/2", "--min-component-mm3", "0"],
        &[],
    );
    assert!(
        explicit.contains("post-processing: lung constraint") && !explicit.contains("30 mm³"),
        "{explicit}"
    );
    // The folders of the shards evaluate as one.
    let out = Command::new(bin)
        .args(["evaluate", "--pred"])
        .arg(dir.path().join("whole"))
        .arg("--ref")
        .arg(dir.path().join("task/labelsTr"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new(bin)
        .args(["evaluate", "--pred"])
        .arg(dir.path().join("whole"))
        .arg("--pred")
        .arg(dir.path().join("sharded"))
        .arg("--ref")
        .arg(dir.path().join("task/labelsTr"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("two masks of one case"),
        "{stderr}"
    );
}
