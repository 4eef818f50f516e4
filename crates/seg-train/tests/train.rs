//! seg-train on tiny phantoms: learning, exact resume, crash safety, metrics, errors.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use candle_core::Device;
use ct_io::config::Config;
use seg_model::Model;
use seg_train::metrics::{Overlap, mean_case_dice, pooled_soft_dice};
use seg_train::{TrainOptions, read_metrics, train, weights};

/// A work folder with 5 preprocessed phantoms (32x32 slices) and a config file for them.
fn setup(dir: &Path, train_section: &str) -> PathBuf {
    let task = dir.join("task");
    let synth = ct_phantom::SynthConfig {
        cases: 5,
        test_cases: 0,
        size: 48,
        slices: 24,
        seed: 12,
        orientation: "LAS".into(),
    };
    ct_phantom::write_task(&task, &synth).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[paths]
data_dir = "task"
work_dir = "work"

[preprocess]
size = 32
crop_slices = 2
validation_fraction = 0.2

[data]
workers = 2
samples_per_epoch = 48

[model]
width = 4
depth = 3

[train]
batch_size = 4
lr = 3e-3
{train_section}
"#
        ),
    )
    .unwrap();
    let loaded = Config::load(&config, &[]).unwrap();
    ct_preprocess::run(&loaded).unwrap();
    config
}

fn load(config: &Path, overrides: &[&str]) -> Config {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Config::load(config, &overrides).unwrap()
}

#[test]
fn the_loss_decreases_and_every_epoch_has_finite_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "epochs = 4");
    let summary = train(&load(&config, &[]), &TrainOptions::default()).unwrap();
    assert_eq!(summary.epochs_done, 4);
    let run = dir.path().join("work/runs/default");
    let rows = read_metrics(&run.join("metrics.csv")).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    for r in &rows {
        for v in [
            r.train_loss,
            r.val_loss,
            r.val_case_dice,
            r.val_pooled_soft_dice,
            r.lr,
            r.slices_per_s,
        ] {
            assert!(v.is_finite(), "{r:?}");
        }
        assert_eq!(r.step, r.epoch as u64 * 12);
    }
    assert!(rows[3].train_loss < rows[0].train_loss * 0.7, "{rows:?}");
    for file in [
        "config.toml",
        "curves.png",
        "best/model.safetensors",
        "last/optimizer.safetensors",
    ] {
        assert!(run.join(file).is_file(), "{file}");
    }
    let png = image::open(run.join("curves.png")).unwrap();
    assert!(png.width() > 500);
    // The resolved config records what was used, including the preprocessing.
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        resolved.contains("[preprocess]") && resolved.contains("batch_size = 4"),
        "{resolved}"
    );
}

#[test]
fn two_epochs_straight_equal_one_epoch_resume_one_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "epochs = 2");
    train(
        &load(&config, &["train.run=straight"]),
        &TrainOptions::default(),
    )
    .unwrap();
    train(
        &load(&config, &["train.run=split", "train.epochs=1"]),
        &TrainOptions::default(),
    )
    .unwrap();
    let resumed = TrainOptions {
        resume: true,
        ..TrainOptions::default()
    };
    let summary = train(&load(&config, &["train.run=split"]), &resumed).unwrap();
    assert_eq!(summary.epochs_done, 2);
    let runs = dir.path().join("work/runs");
    let (a, _) = Model::load(&runs.join("straight/last"), &Device::Cpu).unwrap();
    let (b, _) = Model::load(&runs.join("split/last"), &Device::Cpu).unwrap();
    let (wa, wb) = (weights(&a).unwrap(), weights(&b).unwrap());
    for (name, va) in &wa {
        let vb = &wb[name];
        assert!(
            va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name} differs"
        );
    }
    let rows = read_metrics(&runs.join("split/metrics.csv")).unwrap();
    let straight = read_metrics(&runs.join("straight/metrics.csv")).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].train_loss, straight[1].train_loss);
    // Resuming a finished run does nothing more; starting it again is refused.
    assert_eq!(
        train(&load(&config, &["train.run=split"]), &resumed)
            .unwrap()
            .epochs_done,
        2
    );
    let err = train(
        &load(&config, &["train.run=split"]),
        &TrainOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
}

#[test]
fn a_killed_run_resumes_to_the_end_with_valid_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "epochs = 4");
    let bin = env!("CARGO_BIN_EXE_seg-train");
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    child.kill().unwrap(); // SIGKILL, wherever it is
    child.wait().unwrap();
    let resumed = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("--resume")
        .output();
    let resumed = resumed.unwrap();
    let run = dir.path().join("work/runs/default");
    if !run.join("last").exists() && !run.join("last.previous").exists() {
        // Killed before the first epoch ended: nothing to resume, so start afresh.
        assert!(!resumed.status.success());
        let fresh = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            fresh.status.success(),
            "{}",
            String::from_utf8_lossy(&fresh.stderr)
        );
    } else {
        assert!(
            resumed.status.success(),
            "{}",
            String::from_utf8_lossy(&resumed.stderr)
        );
    }
    let (_, info) = Model::load(&run.join("last"), &Device::Cpu).unwrap();
    assert_eq!(info.extra["epochs_done"], 4);
    Model::load(&run.join("best"), &Device::Cpu).unwrap();
    assert_eq!(read_metrics(&run.join("metrics.csv")).unwrap().len(), 4);
    let leftovers: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.') || n.ends_with(".previous"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn ctrl_c_saves_last_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // Far more epochs than 2.5 s can train (an epoch of this tiny network takes ~50 ms), few
    // enough that a run which ignored Ctrl-C would end and fail instead of hanging the suite.
    let config = setup(dir.path(), "epochs = 2000");
    let bin = env!("CARGO_BIN_EXE_seg-train");
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stopped after"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, info) = Model::load(&dir.path().join("work/runs/default/last"), &Device::Cpu).unwrap();
    assert!(info.extra["epochs_done"].as_u64().unwrap() < 2000);
}

#[test]
fn dice_follows_nnunet_rules_on_hand_made_cases() {
    let both_empty = Overlap {
        intersection: 0.0,
        predicted: 0.0,
        reference: 0.0,
    };
    let false_alarm = Overlap {
        intersection: 0.0,
        predicted: 5.0,
        reference: 0.0,
    };
    let partial = Overlap {
        intersection: 30.0,
        predicted: 40.0,
        reference: 50.0,
    };
    assert_eq!(both_empty.dice(), None);
    assert_eq!(false_alarm.dice(), Some(0.0));
    assert!((partial.dice().unwrap() - 60.0 / 90.0).abs() < 1e-12);
    assert_eq!(
        mean_case_dice(&[both_empty, false_alarm, partial]),
        Some((0.0 + 60.0 / 90.0) / 2.0)
    );
    assert_eq!(mean_case_dice(&[both_empty]), None);
    assert!((pooled_soft_dice(2.0, 3.0, 5.0) - 0.5).abs() < 1e-12);
}

#[test]
fn bad_train_settings_stop_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let bin = env!("CARGO_BIN_EXE_seg-train");
    for (set, key) in [
        ("train.batch_size=0", "train.batch_size: must be 1..=4096"),
        (
            "train.loss=\"focal\"",
            "train.loss: unknown variant `focal`",
        ),
        (
            "model.in_channels=3",
            "model.in_channels: must be 2 x data.context + 1 = 1",
        ),
        ("train.device=\"tpu\"", "train.device"),
    ] {
        let out = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args(["--set", set])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{set}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("config.toml") && stderr.contains(key),
            "{set}: {stderr}"
        );
        assert!(
            !dir.path().join("work/runs").exists(),
            "no run folder for a refused config"
        );
    }
}

#[test]
fn adam_keeps_no_graph_between_steps() {
    use candle_core::{Tensor, Var};
    use seg_train::adam::{Adam, AdamParams};
    let w = Var::from_tensor(&Tensor::new(&[1f32, -2.0, 3.0], &Device::Cpu).unwrap()).unwrap();
    let params = AdamParams {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut adam = Adam::new(vec![("w".into(), w.clone())], params).unwrap();
    for _ in 0..3 {
        let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
        adam.step(&loss.backward().unwrap(), 0.1, 1.0).unwrap();
    }
    // Moments that tracked their history would hold every step's graph (and its memory).
    assert!(adam.state().values().all(|t| !t.track_op()));
    let after: Vec<f32> = w.as_tensor().to_vec1().unwrap();
    assert!(
        after
            .iter()
            .zip([1f32, -2.0, 3.0])
            .all(|(a, b)| a.abs() < b.abs()),
        "{after:?}"
    );
}
