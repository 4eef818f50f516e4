//! Prediction in the CT's own geometry: header copied field by field, the same world-space result
//! whatever the file's axis order, any size and spacing, clear errors.

use std::path::{Path, PathBuf};

use ct_io::{Datatype, Reorientation, read_volume};
use ct_phantom::{SynthConfig, write_task};
use ct_preprocess::settings::PreprocessConfig;
use seg_eval::predict::{PredictOptions, Predictor, plan, run_job};
use seg_model::{Model, ModelConfig};

/// A tiny untrained U-Net saved as a checkpoint trained on 32x32 slices (a [-1000, 400] HU
/// window), 3 slices cropped.
fn checkpoint(dir: &Path, in_channels: usize) -> PathBuf {
    let config = ModelConfig {
        in_channels,
        width: 4,
        depth: 2,
        init_seed: 5,
        ..ModelConfig::default()
    };
    let model = Model::new(&config, &candle_core::Device::Cpu).unwrap();
    let preprocess = PreprocessConfig {
        size: 32,
        crop_slices: 3,
        window: vec![-1000.0, 400.0],
        ..PreprocessConfig::default()
    };
    let path = dir.join(format!("checkpoint_{in_channels}"));
    model
        .save(
            &path,
            Some(serde_json::to_value(&preprocess).unwrap()),
            serde_json::Value::Null,
        )
        .unwrap();
    path
}

fn phantom(dir: &Path, orientation: &str) -> PathBuf {
    let root = dir.join(format!("task_{orientation}"));
    let config = SynthConfig {
        cases: 1,
        test_cases: 0,
        size: 40,
        slices: 20,
        seed: 3,
        orientation: orientation.to_string(),
    };
    write_task(&root, &config).unwrap();
    root.join("imagesTr/lung_001.nii.gz")
}

/// Options under which an untrained network marks some voxels and not others.
/// An untrained network's mask lies anywhere: the lung constraint would decide what is left, and
/// these tests are about geometry.
fn options(threshold: f32) -> PredictOptions {
    PredictOptions {
        threshold,
        batch_size: 4,
        lung_constraint: false,
        ..PredictOptions::default()
    }
}

/// Halfway between the lowest and highest probability of the slices the network saw.
fn middle_probability(path: &Path) -> f32 {
    let volume = read_volume(path).unwrap();
    let seen = volume.data.iter().copied().filter(|p| *p > 0.0);
    let (lo, hi) = seen.fold((1f32, 0f32), |(lo, hi), p| (lo.min(p), hi.max(p)));
    assert!(
        hi - lo > 1e-4,
        "the network's output is constant: {lo}..{hi}"
    );
    (lo + hi) / 2.0
}

#[test]
fn the_mask_carries_the_input_geometry_and_the_same_world_result_in_any_axis_order() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = checkpoint(dir.path(), 3);
    let mut canonical = Vec::new();
    for orientation in ["LAS", "LPS", "PIR"] {
        let input = phantom(dir.path(), orientation);
        let out = dir.path().join(format!("out_{orientation}"));
        let jobs = plan(&input, &out, true).unwrap();
        assert_eq!(jobs.len(), 1);
        let predictor =
            Predictor::load(&checkpoint, &candle_core::Device::Cpu, options(0.5)).unwrap();
        let first = run_job(&predictor, &jobs[0]).unwrap();
        let probabilities = jobs[0].probabilities.clone().unwrap();
        // Re-threshold in the middle, so the mask is neither empty nor full.
        let predictor = Predictor::load(
            &checkpoint,
            &candle_core::Device::Cpu,
            options(middle_probability(&probabilities)),
        )
        .unwrap();
        let report = run_job(&predictor, &jobs[0]).unwrap();
        assert_eq!(report.shape, first.shape);
        assert!(report.tumour_voxels > 0);

        let ct = read_volume(&input).unwrap();
        let mask = read_volume(&jobs[0].output).unwrap();
        assert_eq!(mask.datatype, Datatype::U8);
        assert_eq!(
            mask.geometry, ct.geometry,
            "{orientation}: header geometry differs"
        );
        let p = read_volume(&probabilities).unwrap();
        assert_eq!(p.datatype, Datatype::F32);
        assert_eq!(p.geometry, ct.geometry);
        // Three cropped slices at the inferior end are background.
        let r = Reorientation::to_canonical(&ct.geometry);
        let view = r.apply(p.data.view());
        assert!(
            view.slice(ndarray::s![.., .., 0..3])
                .iter()
                .all(|v| *v == 0.0)
        );
        assert!(
            view.slice(ndarray::s![.., .., 3..])
                .iter()
                .all(|v| *v > 0.0 && *v < 1.0)
        );
        canonical.push((orientation, r.apply(mask.data.view()), view));
    }
    let (_, mask, probabilities) = &canonical[0];
    for (orientation, other_mask, other_probabilities) in &canonical[1..] {
        let worst = probabilities
            .iter()
            .zip(other_probabilities.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-5,
            "{orientation}: probabilities differ by {worst} in world space"
        );
        let differing = mask
            .iter()
            .zip(other_mask.iter())
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            differing <= mask.len() / 1000,
            "{orientation}: {differing} mask voxels differ"
        );
    }
}

#[test]
fn a_folder_of_cts_gives_one_mask_per_ct_with_the_same_names() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("task");
    let config = SynthConfig {
        cases: 2,
        test_cases: 1,
        size: 32,
        slices: 16,
        seed: 9,
        orientation: "LAS".into(),
    };
    write_task(&task, &config).unwrap();
    let out = dir.path().join("masks");
    let jobs = plan(&task.join("imagesTr"), &out, false).unwrap();
    let predictor = Predictor::load(
        &checkpoint(dir.path(), 1),
        &candle_core::Device::Cpu,
        options(0.5),
    )
    .unwrap();
    for job in &jobs {
        run_job(&predictor, job).unwrap();
    }
    let names: Vec<String> = ct_io::task::nifti_files(&out)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["lung_001.nii.gz", "lung_002.nii.gz"]);
}

#[test]
fn every_real_ct_gets_a_mask_of_its_own_shape_and_geometry() {
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/real");
    if !real.join("lung1_image.nii.gz").is_file() {
        eprintln!("skipped: {} is absent", real.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let predictor = Predictor::load(
        &checkpoint(dir.path(), 1),
        &candle_core::Device::Cpu,
        options(0.5),
    )
    .unwrap();
    let cts: Vec<PathBuf> = ct_io::task::nifti_files(&real)
        .unwrap()
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("label"))
        .collect();
    assert!(cts.len() >= 2, "{cts:?}");
    for ct_path in cts {
        let out = dir.path().join("mask.nii.gz");
        let jobs = plan(&ct_path, &out, false).unwrap();
        assert_eq!(jobs[0].output, out);
        let report = run_job(&predictor, &jobs[0]).unwrap();
        let mask = read_volume(&out).unwrap();
        let ct = read_volume(&ct_path).unwrap();
        assert_eq!(report.shape, ct.geometry.shape);
        assert_eq!(mask.geometry, ct.geometry, "{}", ct_path.display());
        assert!(mask.data.iter().all(|v| *v == 0.0 || *v == 1.0));
        if ct_path.ends_with("lung1_image.nii.gz") {
            assert_eq!(report.shape, [512, 512, 48]);
        }
    }
}

#[test]
fn errors_name_the_file_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Predictor::load(
        &dir.path().join("nope"),
        &candle_core::Device::Cpu,
        options(0.5),
    );
    let message = format!("{:#}", missing.err().unwrap());
    assert!(
        message.contains("nope") && message.contains("no checkpoint"),
        "{message}"
    );

    let predictor = Predictor::load(
        &checkpoint(dir.path(), 1),
        &candle_core::Device::Cpu,
        options(0.5),
    )
    .unwrap();
    // Not a CT.
    let bogus = dir.path().join("bogus.nii.gz");
    std::fs::write(&bogus, b"not a nifti file").unwrap();
    let jobs = plan(&bogus, &dir.path().join("out.nii.gz"), false).unwrap();
    let message = format!("{:#}", run_job(&predictor, &jobs[0]).err().unwrap());
    assert!(message.contains("bogus.nii.gz"), "{message}");
    // An output folder that cannot exist (its parent is a file).
    let input = phantom(dir.path(), "LAS");
    let blocked = bogus.join("mask.nii.gz");
    let jobs = plan(&input, &blocked, false).unwrap();
    let message = format!("{:#}", run_job(&predictor, &jobs[0]).err().unwrap());
    assert!(message.contains("bogus.nii.gz"), "{message}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
