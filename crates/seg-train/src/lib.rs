//! `seg-train`: the training stage. Trains the U-Net (`seg-model`) on the training split of
//! ct-preprocess's dataset through `seg-data`'s sampler and augmentation, validates every epoch
//! with per-case 3D Dice (and the reference's pooled soft Dice beside it), and keeps a run folder
//! `work_dir/runs/<run>/` (or its `fold_<k>/` for a K-fold dataset; ct-io's `layout` says where):
//! the resolved config, `metrics.csv`, `curves.png`, and the checkpoints `last/` (with the
//! optimiser state, for an exact resume) and `best/`.

pub mod adam;
pub mod config;
pub mod curves;
pub mod ema;
pub mod metrics;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use ct_io::config::Config;
use ct_io::layout::{BEST, CURVES_FILE, LAST, METRICS_FILE, RESOLVED_CONFIG_FILE, RunLayout};
use ct_preprocess::manifest::{MANIFEST_FILE, Manifest, PREPROCESSED_DIR};
use ct_preprocess::split::Split;
use seg_data::{DataConfig, Loader, SliceDataset};
use seg_model::ops::bce_with_logits;
use seg_model::{Model, ModelConfig};
use serde::{Deserialize, Serialize};

use adam::{Adam, AdamParams};
use config::{Loss, Schedule, TrainConfig};
use curves::{Point, write_curves};
use ema::WeightAverage;
use metrics::{Overlap, mean_case_dice, pooled_soft_dice};

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// In `last/` of a run with a weight average (`[train] ema_decay`), whose weights file holds the
/// average: the trained weights themselves, for a resume.
pub const TRAINED_WEIGHTS_FILE: &str = "trained.safetensors";

/// How a run is started.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from `last/`.
    pub resume: bool,
    /// Overrides `[train] device`.
    pub device: Option<String>,
    /// Set (by Ctrl-C) to stop after the current batch, saving `last/` with the place in the epoch.
    pub stop: Arc<AtomicBool>,
}

/// Training progress kept in `last/checkpoint.json` (its `extra`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Completed epochs.
    pub epochs_done: usize,
    /// Optimiser updates.
    pub step: u64,
    pub best_dice: Option<f64>,
    pub best_epoch: Option<usize>,
    pub run: String,
    /// The fold held out, for a K-fold dataset.
    #[serde(default)]
    pub fold: Option<usize>,
    /// Where in epoch `epochs_done + 1` an interrupted run stopped (None at an epoch's end).
    #[serde(default)]
    pub within_epoch: Option<WithinEpoch>,
}

/// How far an interrupted epoch got: a resume continues at batch `batches + 1` with the sums of the
/// batches before, so that the run equals one never interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WithinEpoch {
    pub batches: usize,
    /// Sum of the training loss over the samples seen (loss x batch size, per batch).
    pub loss_sum: f64,
    pub samples: usize,
    /// Seconds spent training those batches (for the epoch's speed).
    pub seconds: f64,
}

/// One row of `metrics.csv`.
#[derive(Debug, Clone, Copy)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub step: u64,
    pub train_loss: f64,
    pub val_loss: f64,
    /// Mean per-case 3D Dice (thresholded), nnU-Net's empty-case rule.
    pub val_case_dice: f64,
    /// The reference's figure: Dice over all validation pixels on probabilities.
    pub val_pooled_soft_dice: f64,
    pub lr: f64,
    pub slices_per_s: f64,
    pub seconds: f64,
}

const CSV_HEADER: &str =
    "epoch,step,train_loss,val_loss,val_case_dice,val_pooled_soft_dice,lr,slices_per_s,seconds";

impl EpochMetrics {
    fn csv(&self) -> String {
        format!(
            "{},{},{:.6},{:.6},{:.6},{:.6},{:e},{:.2},{:.2}",
            self.epoch,
            self.step,
            self.train_loss,
            self.val_loss,
            self.val_case_dice,
            self.val_pooled_soft_dice,
            self.lr,
            self.slices_per_s,
            self.seconds
        )
    }

    fn parse(line: &str) -> Option<EpochMetrics> {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        Some(EpochMetrics {
            epoch: f.first()?.parse().ok()?,
            step: f.get(1)?.parse().ok()?,
            train_loss: num(2)?,
            val_loss: num(3)?,
            val_case_dice: num(4)?,
            val_pooled_soft_dice: num(5)?,
            lr: num(6)?,
            slices_per_s: num(7)?,
            seconds: num(8)?,
        })
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Summary {
    pub run_dir: PathBuf,
    pub epochs_done: usize,
    pub interrupted: bool,
    pub best_dice: Option<f64>,
    pub best_epoch: Option<usize>,
    pub last: Option<EpochMetrics>,
    pub seconds: f64,
}

/// The sections training needs, read and cross-checked before any work.
pub struct Settings {
    pub work_dir: PathBuf,
    pub layout: RunLayout,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
}

impl Settings {
    pub fn from_config(config: &Config) -> anyhow::Result<Settings> {
        let paths = config.paths()?;
        let data: DataConfig = config.section()?;
        let model: ModelConfig = config.section()?;
        let train: TrainConfig = config.section()?;
        let channels = 2 * data.context + 1;
        if model.in_channels != channels {
            return Err(config
                .error(
                    "model.in_channels",
                    format!("must be 2 x data.context + 1 = {channels}"),
                )
                .into());
        }
        Ok(Settings {
            layout: RunLayout::new(&paths.work_dir, &train.run),
            work_dir: paths.work_dir,
            data,
            model,
            train,
        })
    }

    /// The folder this training writes: the run's, or its fold's.
    pub fn run_dir(&self) -> PathBuf {
        self.layout.training_dir(self.train.fold)
    }
}

/// Trains as `[paths]`, `[data]`, `[model]` and `[train]` say.
pub fn train(config: &Config, options: &TrainOptions) -> anyhow::Result<Summary> {
    seg_model::threads::on_worker(|| train_here(config, options))
}

/// [`train`] on the calling thread.
fn train_here(config: &Config, options: &TrainOptions) -> anyhow::Result<Summary> {
    let settings = Settings::from_config(config)?;
    let device_spec = options.device.as_deref().unwrap_or(&settings.train.device);
    let device = seg_model::parse_device(device_spec)?;
    let preprocessed = settings.work_dir.join(PREPROCESSED_DIR);
    let manifest = Manifest::load(&preprocessed.join(MANIFEST_FILE))
        .context("no preprocessed dataset: run ct-preprocess first")?;
    if let Err(reason) = manifest.split.held_out(settings.train.fold) {
        return Err(config.error("train.fold", reason).into());
    }
    let multiple = settings.model.size_multiple();
    if manifest.settings.size % multiple != 0 {
        return Err(config
            .error(
                "model.depth",
                format!(
                    "slices are {0}x{0}, not a multiple of 2^(depth-1) = {multiple}",
                    manifest.settings.size
                ),
            )
            .into());
    }
    let patch = settings.data.patch_size;
    if patch != 0 && (patch % multiple != 0 || patch > manifest.settings.size) {
        return Err(config
            .error(
                "data.patch_size",
                format!(
                    "must be a multiple of 2^(depth-1) = {multiple} and at most the slice size {}",
                    manifest.settings.size
                ),
            )
            .into());
    }
    run(&settings, &manifest, &preprocessed, &device, options)
}

fn run(
    settings: &Settings,
    manifest: &Manifest,
    preprocessed: &Path,
    device: &Device,
    options: &TrainOptions,
) -> anyhow::Result<Summary> {
    let start = Instant::now();
    let train_cfg = &settings.train;
    let context = settings.data.context;
    let run_dir = settings.run_dir();
    // One writer per run folder, taken before anything in it is looked at.
    let _lock = ct_io::lock::lock_folder(&run_dir)?;
    let fold = train_cfg.fold;
    let train_set = Arc::new(SliceDataset::open(
        preprocessed,
        Split::Train,
        fold,
        context,
    )?);
    anyhow::ensure!(!train_set.is_empty(), "the training split has no slices");
    let val_set = Arc::new(SliceDataset::open(
        preprocessed,
        Split::Validation,
        fold,
        context,
    )?);
    if val_set.is_empty() {
        tracing::warn!("no validation slices: the best checkpoint will be the last one");
    }
    let loader = Loader::new(Arc::clone(&train_set), &settings.data, device.clone())?;
    let val_loader = Loader::new(Arc::clone(&val_set), &settings.data, device.clone())?;
    let sampler = loader.sampler()?;
    let batches_per_epoch = sampler.samples() / train_cfg.batch_size;
    anyhow::ensure!(
        batches_per_epoch > 0,
        "an epoch of {} samples holds no full batch of {}",
        sampler.samples(),
        train_cfg.batch_size
    );

    let last_dir = run_dir.join(LAST);
    let preprocess_json = serde_json::to_value(&manifest.settings)?;
    let adam_params = AdamParams {
        beta1: train_cfg.beta1,
        beta2: train_cfg.beta2,
        eps: train_cfg.eps,
        weight_decay: train_cfg.weight_decay,
    };
    let (model, mut adam, mut progress, mut history, saved_average) = if options.resume {
        let (model, info, folder) = Model::load_from(&last_dir, device)
            .with_context(|| format!("cannot resume from {}", last_dir.display()))?;
        if info.model != settings.model {
            bail!(
                "{}: the checkpoint's [model] differs from the config's; resume with the same [model]",
                last_dir.display()
            );
        }
        let progress: Progress = serde_json::from_value(info.extra.clone()).with_context(|| {
            format!(
                "{}: no training progress in the checkpoint",
                last_dir.display()
            )
        })?;
        // A run saved with a weight average has the average as its weights and the trained ones
        // beside them.
        let trained_file = folder.join(TRAINED_WEIGHTS_FILE);
        let saved_average = if trained_file.is_file() {
            let average = ema::copies(&model.named_vars())?;
            let trained =
                candle_core::safetensors::load(&trained_file, device).with_context(|| {
                    format!(
                        "{}: cannot read the trained weights",
                        trained_file.display()
                    )
                })?;
            model.assign(trained, &trained_file)?;
            Some(average)
        } else {
            None
        };
        let mut adam = Adam::new(model.trainable_vars(), adam_params)?;
        let state = candle_core::safetensors::load(folder.join(OPTIMIZER_FILE), device)
            .with_context(|| format!("{}: cannot read the optimiser state", folder.display()))?;
        adam.restore(state, progress.step)?;
        let history = read_metrics(&run_dir.join(METRICS_FILE))?
            .into_iter()
            .filter(|m| m.epoch <= progress.epochs_done)
            .collect();
        match progress.within_epoch {
            Some(within) => tracing::info!(
                "resuming {} in epoch {} at batch {}",
                run_dir.display(),
                progress.epochs_done + 1,
                within.batches + 1
            ),
            None => tracing::info!(
                "resuming {} after epoch {}",
                run_dir.display(),
                progress.epochs_done
            ),
        }
        (model, adam, progress, history, saved_average)
    } else {
        if last_dir.exists() {
            bail!(
                "{} already holds a training; continue it with --resume, or choose another train.run",
                run_dir.display()
            );
        }
        let model = Model::new(&settings.model, device)?;
        let adam = Adam::new(model.trainable_vars(), adam_params)?;
        let progress = Progress {
            run: train_cfg.run.clone(),
            fold,
            ..Progress::default()
        };
        (model, adam, progress, Vec::new(), None)
    };
    let mut average = if train_cfg.ema_decay > 0.0 {
        Some(WeightAverage::new(&model, train_cfg.ema_decay)?)
    } else {
        None
    };
    if let (Some(average), Some(saved)) = (average.as_mut(), saved_average) {
        average.restore(saved, progress.step)?;
    }
    std::fs::create_dir_all(&run_dir).with_context(|| format!("{}", run_dir.display()))?;
    write_resolved_config(&run_dir.join(RESOLVED_CONFIG_FILE), settings, manifest)?;
    tracing::info!(
        "training {} parameters on {} slices ({} batches of {} per epoch), validating on {} slices",
        model.parameter_count(),
        train_set.len(),
        batches_per_epoch,
        train_cfg.batch_size,
        val_set.len()
    );

    let total_steps = (train_cfg.epochs * batches_per_epoch) as u64;
    let mut interrupted = false;
    for epoch in progress.epochs_done..train_cfg.epochs {
        let epoch_start = Instant::now();
        let done = progress.within_epoch.take().unwrap_or(WithinEpoch {
            batches: 0,
            loss_sum: 0.0,
            samples: 0,
            seconds: 0.0,
        });
        let bar =
            ct_io::cli::progress_bar(batches_per_epoch as u64, &format!("epoch {}", epoch + 1));
        bar.set_position(done.batches as u64);
        let (mut loss_sum, mut seen, mut lr) = (done.loss_sum, done.samples, train_cfg.lr);
        let mut batches_done = done.batches;
        let batches =
            loader.train_epoch_from(&sampler, epoch as u64, train_cfg.batch_size, done.batches);
        for batch in batches {
            if options.stop.load(Ordering::SeqCst) {
                interrupted = true;
                break;
            }
            let batch = batch?;
            let logits = model.unet.forward_t(&batch.images, true)?;
            let loss = compute_loss(train_cfg.loss, &logits, &batch.masks)?;
            let value = f64::from(loss.to_scalar::<f32>()?);
            if !value.is_finite() {
                bail!(
                    "the training loss became {value} at step {}; lower train.lr",
                    progress.step
                );
            }
            let grads = loss.backward()?;
            lr = learning_rate(train_cfg, progress.step, total_steps);
            adam.step(&grads, lr, train_cfg.grad_clip)?;
            if let Some(average) = average.as_mut() {
                average.update()?;
            }
            progress.step += 1;
            batches_done += 1;
            loss_sum += value * batch.indices.len() as f64;
            seen += batch.indices.len();
            tracing::debug!(
                "epoch {} batch {batches_done} of {batches_per_epoch}: loss {value:.6}",
                epoch + 1
            );
            bar.inc(1);
            bar.set_message(format!(
                "epoch {} loss {:.4} {:.1} sl/s",
                epoch + 1,
                loss_sum / seen as f64,
                (seen - done.samples) as f64 / epoch_start.elapsed().as_secs_f64()
            ));
        }
        bar.finish_and_clear();
        let train_seconds = done.seconds + epoch_start.elapsed().as_secs_f64();
        if interrupted {
            progress.within_epoch = Some(WithinEpoch {
                batches: batches_done,
                loss_sum,
                samples: seen,
                seconds: train_seconds,
            });
            save_last(
                &model,
                average.as_ref(),
                &adam,
                &progress,
                &last_dir,
                &preprocess_json,
            )?;
            tracing::warn!(
                "interrupted in epoch {} after batch {batches_done} of {batches_per_epoch}: saved {} \
                 (--resume continues at the next batch)",
                epoch + 1,
                last_dir.display()
            );
            break;
        }
        let validate = (epoch + 1) % train_cfg.validate_every == 0 || epoch + 1 == train_cfg.epochs;
        let (val_loss, case_dice, pooled) = if validate && !val_set.is_empty() {
            with_kept_weights(average.as_ref(), |_| {
                validate_epoch(&model, &val_loader, &val_set, train_cfg)
            })?
        } else {
            (f64::NAN, f64::NAN, f64::NAN)
        };
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            step: progress.step,
            train_loss: loss_sum / seen.max(1) as f64,
            val_loss,
            val_case_dice: case_dice,
            val_pooled_soft_dice: pooled,
            lr,
            slices_per_s: seen as f64 / train_seconds,
            seconds: done.seconds + epoch_start.elapsed().as_secs_f64(),
        };
        tracing::info!(
            "epoch {}: train loss {:.4}, val loss {:.4}, val per-case Dice {:.4}, pooled soft Dice {:.4} ({:.0} s)",
            metrics.epoch,
            metrics.train_loss,
            metrics.val_loss,
            metrics.val_case_dice,
            metrics.val_pooled_soft_dice,
            metrics.seconds
        );
        history.push(metrics);
        progress.epochs_done = epoch + 1;
        let improved = if val_set.is_empty() {
            true
        } else {
            case_dice.is_finite() && progress.best_dice.is_none_or(|best| case_dice > best)
        };
        if improved {
            progress.best_dice = case_dice.is_finite().then_some(case_dice);
            progress.best_epoch = Some(epoch + 1);
            let extra = serde_json::to_value(&progress)?;
            with_kept_weights(average.as_ref(), |_| {
                model.save(&run_dir.join(BEST), Some(preprocess_json.clone()), extra)
            })?;
        }
        save_last(
            &model,
            average.as_ref(),
            &adam,
            &progress,
            &last_dir,
            &preprocess_json,
        )?;
        write_metrics(&run_dir.join(METRICS_FILE), &history)?;
        let points: Vec<Point> = history
            .iter()
            .map(|m| Point {
                epoch: m.epoch,
                train_loss: m.train_loss,
                val_loss: m.val_loss,
                case_dice: m.val_case_dice,
                pooled_dice: m.val_pooled_soft_dice,
            })
            .collect();
        write_curves(&run_dir.join(CURVES_FILE), &points, progress.best_epoch)?;
    }
    Ok(Summary {
        run_dir,
        epochs_done: progress.epochs_done,
        interrupted,
        best_dice: progress.best_dice,
        best_epoch: progress.best_epoch,
        last: history.last().copied(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Runs `f` with the weights that validation scores and checkpoints hold in the model: the
/// average's when there is one (`f` then gets the trained weights), else the trained ones.
fn with_kept_weights<T>(
    average: Option<&WeightAverage>,
    f: impl FnOnce(Option<&HashMap<String, Tensor>>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    match average {
        Some(average) => average.with_averaged(|trained| f(Some(trained))),
        None => f(None),
    }
}

fn save_last(
    model: &Model,
    average: Option<&WeightAverage>,
    adam: &Adam,
    progress: &Progress,
    dir: &Path,
    preprocess: &serde_json::Value,
) -> anyhow::Result<()> {
    let state = adam.state();
    let extra = serde_json::to_value(progress)?;
    with_kept_weights(average, |trained| {
        let mut files = vec![(OPTIMIZER_FILE, &state)];
        files.extend(trained.map(|t| (TRAINED_WEIGHTS_FILE, t)));
        model.save_with(dir, Some(preprocess.clone()), extra, &files)?;
        Ok(())
    })
}

/// The loss of `logits` against `masks` (both `[B, 1, H, W]`).
pub fn compute_loss(kind: Loss, logits: &Tensor, masks: &Tensor) -> candle_core::Result<Tensor> {
    let dice = || -> candle_core::Result<Tensor> {
        let p = candle_nn::ops::sigmoid(logits)?;
        let intersection = (&p * masks)?.sum_all()?;
        let total = (p.sum_all()? + masks.sum_all()?)?;
        // 1 − (2 I + 1) / (|P| + |T| + 1)
        let ratio = (intersection.affine(2.0, 1.0)? / total.affine(1.0, 1.0)?)?;
        ratio.affine(-1.0, 1.0)
    };
    match kind {
        Loss::Bce => bce_with_logits(logits, masks),
        Loss::Dice => dice(),
        Loss::BceDice => bce_with_logits(logits, masks)? + dice()?,
    }
}

/// The learning rate for update `step` of `total`.
pub fn learning_rate(config: &TrainConfig, step: u64, total: u64) -> f64 {
    let progress = step as f64 / total.max(1) as f64;
    match config.schedule {
        Schedule::Constant => config.lr,
        Schedule::Cosine => config.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        Schedule::Poly => config.lr * (1.0 - progress).max(0.0).powf(0.9),
    }
}

/// Validation loss, mean per-case Dice and pooled soft Dice over the validation split.
fn validate_epoch(
    model: &Model,
    loader: &Loader,
    dataset: &SliceDataset,
    config: &TrainConfig,
) -> anyhow::Result<(f64, f64, f64)> {
    let cases = dataset.case_ids().count();
    let mut overlaps = vec![Overlap::default(); cases];
    let (mut loss_sum, mut count) = (0.0, 0usize);
    let (mut product, mut probability, mut target) = (0.0, 0.0, 0.0);
    for batch in loader.in_order(config.batch_size) {
        let batch = batch?;
        let logits = model
            .unet
            .forward_t(&batch.images.detach(), false)?
            .detach();
        let n = batch.indices.len();
        loss_sum +=
            f64::from(bce_with_logits(&logits, &batch.masks)?.to_scalar::<f32>()?) * n as f64;
        count += n;
        let p = candle_nn::ops::sigmoid(&logits)?;
        let thresholded = p.ge(config.threshold)?.to_dtype(DType::F32)?;
        let sums =
            |t: &Tensor| -> candle_core::Result<Vec<f32>> { t.flatten_from(1)?.sum(1)?.to_vec1() };
        let (inter, pred, refr) = (
            sums(&(&thresholded * &batch.masks)?)?,
            sums(&thresholded)?,
            sums(&batch.masks)?,
        );
        product += f64::from((&p * &batch.masks)?.sum_all()?.to_scalar::<f32>()?);
        probability += f64::from(p.sum_all()?.to_scalar::<f32>()?);
        target += f64::from(batch.masks.sum_all()?.to_scalar::<f32>()?);
        for (k, &index) in batch.indices.iter().enumerate() {
            overlaps[dataset.items()[index].case].add(Overlap {
                intersection: f64::from(inter[k]),
                predicted: f64::from(pred[k]),
                reference: f64::from(refr[k]),
            });
        }
    }
    let case_dice = mean_case_dice(&overlaps).unwrap_or(f64::NAN);
    Ok((
        loss_sum / count.max(1) as f64,
        case_dice,
        pooled_soft_dice(product, probability, target),
    ))
}

fn write_metrics(path: &Path, rows: &[EpochMetrics]) -> anyhow::Result<()> {
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for row in rows {
        text.push_str(&row.csv());
        text.push('\n');
    }
    ct_io::atomic::write_atomically(path, |out| out.write_all(text.as_bytes()))?;
    Ok(())
}

/// The rows of a run's `metrics.csv` (none if it does not exist yet).
pub fn read_metrics(path: &Path) -> anyhow::Result<Vec<EpochMetrics>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            EpochMetrics::parse(l).with_context(|| format!("{}: bad row {l:?}", path.display()))
        })
        .collect()
}

fn write_resolved_config(
    path: &Path,
    settings: &Settings,
    manifest: &Manifest,
) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct Resolved<'a> {
        preprocess: &'a ct_preprocess::settings::PreprocessConfig,
        data: &'a DataConfig,
        model: &'a ModelConfig,
        train: &'a TrainConfig,
    }
    let text = toml::to_string_pretty(&Resolved {
        preprocess: &manifest.settings,
        data: &settings.data,
        model: &settings.model,
        train: &settings.train,
    })?;
    ct_io::atomic::write_atomically(path, |out| out.write_all(text.as_bytes()))?;
    Ok(())
}

/// Per-parameter values of a model, for comparing runs.
pub fn weights(model: &Model) -> anyhow::Result<HashMap<String, Vec<f32>>> {
    model
        .named_vars()
        .into_iter()
        .map(|(n, v)| Ok((n, v.flatten_all()?.to_vec1::<f32>()?)))
        .collect()
}
