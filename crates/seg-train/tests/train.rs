//! seg-train on tiny phantoms: learning, exact resume, crash safety, metrics, errors.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    let runs = straight_equals_resumed(dir.path(), "epochs = 2");
    let trained = runs
        .join("split/last")
        .join(seg_train::TRAINED_WEIGHTS_FILE);
    assert!(
        !trained.exists(),
        "no weight average, no second set of weights"
    );
}

#[test]
fn with_a_weight_average_a_resumed_run_equals_a_straight_one_and_keeps_the_average() {
    let dir = tempfile::tempdir().unwrap();
    let runs = straight_equals_resumed(dir.path(), "epochs = 2\nema_decay = 0.9");
    // The checkpoint holds the average, with the trained weights beside it: they differ.
    let (averaged, _) = Model::load(&runs.join("split/last"), &Device::Cpu).unwrap();
    let averaged = weights(&averaged).unwrap();
    let trained = trained_weights(&runs.join("split/last"));
    let differing = averaged.iter().filter(|(n, a)| trained[*n] != **a).count();
    assert!(
        differing > averaged.len() / 2,
        "{differing} of {} variables differ",
        averaged.len()
    );
}

/// The trained weights saved beside a checkpoint's average, by name.
fn trained_weights(checkpoint: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(
        checkpoint.join(seg_train::TRAINED_WEIGHTS_FILE),
        &Device::Cpu,
    )
    .unwrap()
    .into_iter()
    .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
    .collect()
}

/// Trains run `straight` for 2 epochs and `split` for 1, resumed for 1 more, with `[train]`
/// holding `train_section`, asserts they end bit-identical (the trained weights too, when a
/// weight average keeps them apart) and returns the runs folder.
fn straight_equals_resumed(dir: &Path, train_section: &str) -> PathBuf {
    let config = setup(dir, train_section);
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
    let runs = dir.join("work/runs");
    if runs
        .join("straight/last")
        .join(seg_train::TRAINED_WEIGHTS_FILE)
        .exists()
    {
        assert_eq!(
            trained_weights(&runs.join("straight/last")),
            trained_weights(&runs.join("split/last"))
        );
    }
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
    assert_eq!(rows[1].val_loss.to_bits(), straight[1].val_loss.to_bits());
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
    runs
}

/// The demo's recipe in small: augmented patches, 2.5D context, batch norm, BCE + Dice, cosine
/// schedule; 40 batches an epoch, so that a signal sent in an epoch lands in it.
const DEMO_RECIPE: [&str; 9] = [
    "data.augment=true",
    "data.patch_size=16",
    "data.context=1",
    "data.samples_per_epoch=160",
    "model.in_channels=3",
    "model.batch_norm=true",
    "train.loss=\"bce_dice\"",
    "train.schedule=\"cosine\"",
    "train.epochs=3",
];

/// Runs the seg-train binary with the demo recipe and `extra` arguments; when `signal` is given,
/// sends it once stderr shows `at` (a per-batch debug line), then waits for the exit.
/// Returns the exit status and stdout + stderr.
fn seg_train(
    config: &Path,
    extra: &[&str],
    signal: Option<(&str, &str)>,
) -> (std::process::ExitStatus, String) {
    seg_train_with(
        Command::new(env!("CARGO_BIN_EXE_seg-train")),
        config,
        extra,
        signal,
    )
}

/// [`seg_train`] with a command that may carry more settings (e.g. its environment).
fn seg_train_with(
    mut command: Command,
    config: &Path,
    extra: &[&str],
    signal: Option<(&str, &str)>,
) -> (std::process::ExitStatus, String) {
    command.arg("--config").arg(config);
    for set in DEMO_RECIPE {
        command.args(["--set", set]);
    }
    let mut child = command
        .args(extra)
        .env("RUST_LOG", "info,seg_train=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
    let mut log = String::new();
    let mut pending = signal;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some((name, at)) = pending
            && line.contains(at)
        {
            let sent = Command::new("kill")
                .args(["-s", name, &child.id().to_string()])
                .status()
                .unwrap();
            assert!(sent.success(), "kill -s {name}");
            pending = None;
        }
        log.push_str(&line);
        log.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(pending.is_none(), "never saw {signal:?} in\n{log}");
    (status, format!("{}{log}", stdout.join().unwrap()))
}

/// Asserts two runs ended with bit-identical weights and the same value columns in metrics.csv.
fn assert_same_run(runs: &Path, a: &str, b: &str) {
    let (ma, _) = Model::load(&runs.join(a).join("last"), &Device::Cpu).unwrap();
    let (mb, _) = Model::load(&runs.join(b).join("last"), &Device::Cpu).unwrap();
    let (wa, wb) = (weights(&ma).unwrap(), weights(&mb).unwrap());
    assert_eq!(wa.len(), wb.len());
    for (name, va) in &wa {
        assert!(
            va.iter()
                .zip(&wb[name])
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name}: {a} and {b} differ"
        );
    }
    let values = |run: &str| -> Vec<[String; 7]> {
        read_metrics(&runs.join(run).join("metrics.csv"))
            .unwrap()
            .iter()
            .map(|m| {
                [
                    m.epoch.to_string(),
                    m.step.to_string(),
                    format!("{:e}", m.train_loss),
                    format!("{:e}", m.val_loss),
                    format!("{:e}", m.val_case_dice),
                    format!("{:e}", m.val_pooled_soft_dice),
                    format!("{:e}", m.lr),
                ]
            })
            .collect()
    };
    assert_eq!(values(a), values(b), "metrics of {a} and {b}");
    assert!(!values(a).is_empty());
}

#[test]
fn ctrl_c_sigterm_or_sigkill_mid_epoch_then_resume_equal_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let runs = dir.path().join("work/runs");
    let (status, log) = seg_train(&config, &["--set", "train.run=straight"], None);
    assert!(status.success(), "{log}");

    // Ctrl-C in epoch 1, resume, SIGTERM in the last epoch (3), resume to the end.
    let (status, log) = seg_train(
        &config,
        &["--set", "train.run=stopped"],
        Some(("INT", "epoch 1 batch 3 of 40")),
    );
    assert!(status.success(), "{log}");
    assert!(log.contains("stopped after 0 epochs"), "{log}");
    let within = |run: &str| {
        let (_, info) = Model::load(&runs.join(run).join("last"), &Device::Cpu).unwrap();
        let within = &info.extra["within_epoch"];
        (
            info.extra["epochs_done"].as_u64().unwrap(),
            within["batches"].as_u64(),
        )
    };
    let (epochs, batches) = within("stopped");
    assert_eq!(epochs, 0);
    let batches = batches.expect("the place in the epoch is saved");
    assert!((3..40).contains(&batches), "stopped after batch {batches}");
    let (status, log) = seg_train(
        &config,
        &["--set", "train.run=stopped", "--resume"],
        Some(("TERM", "epoch 3 batch 5 of 40")),
    );
    assert!(status.success(), "{log}");
    assert!(
        log.contains(&format!("in epoch 1 at batch {}", batches + 1)),
        "{log}"
    );
    let (epochs, batches) = within("stopped");
    assert_eq!(epochs, 2);
    assert!((5..40).contains(&batches.unwrap()), "{batches:?}");
    let (status, log) = seg_train(&config, &["--set", "train.run=stopped", "--resume"], None);
    assert!(status.success(), "{log}");
    assert_same_run(&runs, "straight", "stopped");

    // SIGKILL in epoch 2: the resume starts again from the end of epoch 1.
    let (status, log) = seg_train(
        &config,
        &["--set", "train.run=killed"],
        Some(("KILL", "epoch 2 batch 3 of 40")),
    );
    assert_eq!(status.code(), None, "killed by the signal: {log}");
    assert_eq!(within("killed"), (1, None));
    let (status, log) = seg_train(&config, &["--set", "train.run=killed", "--resume"], None);
    assert!(status.success(), "{log}");
    assert_same_run(&runs, "straight", "killed");
    let leftovers: Vec<_> = std::fs::read_dir(runs.join("killed"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.') || n.ends_with(".previous"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Model::load(&runs.join("killed/best"), &Device::Cpu).unwrap();
}

#[test]
fn each_fold_trains_into_its_own_folder_and_a_run_has_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    ct_preprocess::run(&load(&config, &["preprocess.folds=2"])).unwrap();
    let manifest = ct_preprocess::manifest::Manifest::load(
        &dir.path().join("work/preprocessed/manifest.json"),
    )
    .unwrap();
    assert_eq!(manifest.split.fold_count(), 2);
    let bin = env!("CARGO_BIN_EXE_seg-train");
    let run = |extra: &[&str]| {
        Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args(extra)
            .output()
            .unwrap()
    };
    for (extra, says) in [
        (&[][..], "train.fold: the dataset is split into 2 folds"),
        (&["--fold", "2"][..], "fold 2 does not exist"),
    ] {
        let out = run(extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
    }

    // A first training of fold 0; a second one started meanwhile is refused.
    let fold_dir = dir.path().join("work/runs/default/fold_0");
    let mut first = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(DEMO_RECIPE.iter().flat_map(|s| ["--set", s]))
        .args(["--fold", "0"])
        .env("RUST_LOG", "info,seg_train=debug")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(first.stderr.take().unwrap()).lines();
    let mut log = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("epoch 1 batch 2 of") {
            break;
        }
    }
    assert!(log.contains("epoch 1 batch 2 of"), "{log}");
    let second = run(&["--fold", "0"]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&fold_dir.display().to_string())
            && stderr.contains(&format!("process {}", first.id())),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line naming the folder and the holder: {stderr}"
    );
    // Killed with SIGKILL, the first leaves its lock behind in no way that blocks.
    first.kill().unwrap();
    first.wait().unwrap();
    let out = run(&["--fold", "0", "--set", "train.epochs=1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Fold 0 trained on fold 1's cases and validated on its own.
    let held = manifest.split.held_out(Some(0)).unwrap();
    let slices = |ids: &[String]| manifest.slices_of_cases(ids).count();
    assert!(
        stderr.contains(&format!("on {} slices (", slices(&held.train)))
            && stderr.contains(&format!(
                "validating on {} slices",
                slices(&held.validation)
            )),
        "{stderr}"
    );
    let (_, info) = Model::load(&fold_dir.join("best"), &Device::Cpu).unwrap();
    assert_eq!(info.extra["fold"], 0);
    assert!(!dir.path().join("work/runs/default/best").exists());
}

#[test]
fn the_weights_are_the_same_with_1_2_or_4_threads() {
    // Batches of 3: one thread and two run each convolution sample by sample, four split each
    // sample's matrix products among them (seg-model's conv picks by the thread count).
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    for threads in ["1", "2", "4"] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_seg-train"));
        command.env("RAYON_NUM_THREADS", threads);
        let run = format!("train.run=threads_{threads}");
        let extra = [
            "--set",
            &run,
            "--set",
            "train.batch_size=3",
            "--set",
            "train.epochs=1",
        ];
        let (status, log) = seg_train_with(command, &config, &extra, None);
        assert!(status.success(), "{log}");
    }
    let runs = dir.path().join("work/runs");
    assert_same_run(&runs, "threads_1", "threads_2");
    assert_same_run(&runs, "threads_1", "threads_4");
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
        ("train.ema_decay=1.0", "train.ema_decay: must be in [0, 1)"),
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
