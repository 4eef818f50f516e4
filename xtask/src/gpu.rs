//! `cargo xtask gpu-check`: everything worth knowing about a CUDA build, on a machine with a GPU,
//! in one run of a few minutes: CPU/GPU agreement of the forward pass and the gradients, a short
//! training run whose loss must fall, the training-step and forward times of the reference
//! network (beside PyTorch's on the same GPU when a Python with torch is given) and the time to
//! predict an MSD-sized CT. One table at the end; a non-zero exit when a result is wrong (speed
//! targets are reported, not enforced).
//!
//! The GPU machines have no Rust toolchain: build with `cargo xtask cuda-build` here and run
//! `xtask/gpu/gpu-check.sh` there (it points the loader at the CUDA libraries of the machine's
//! PyTorch).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};
use candle_core::{DType, Device, Tensor};
use ct_io::config::Config;
use ct_phantom::{SynthConfig, write_task};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use seg_model::{Model, ModelConfig};

/// Relative error allowed between CPU and GPU in f32: forward outputs, and gradients (which sum
/// over many more terms in a different order).
const FORWARD_TOLERANCE: f64 = 1e-4;
const GRADIENT_TOLERANCE: f64 = 1e-3;

#[derive(clap::Args)]
pub struct GpuCheckArgs {
    /// The GPU to check.
    #[arg(long, default_value = "cuda:0")]
    device: String,
    /// A Python with a CUDA build of torch: also times the reference U-Net in PyTorch on the
    /// same GPU (xtask/gpu/unet_step_torch.py).
    #[arg(long, value_name = "PYTHON")]
    torch: Option<PathBuf>,
    /// Timed training steps and forward passes (after a warm-up); medians are reported.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Time a width-16 network at 128² instead of the reference one and predict with the demo
    /// network only: with `--device cpu`, a rehearsal of the check on a machine without a GPU.
    #[arg(long)]
    quick: bool,
}

struct Row {
    check: String,
    result: String,
    passed: Option<bool>,
}

pub fn gpu_check(args: GpuCheckArgs) -> anyhow::Result<()> {
    let gpu = seg_model::parse_device(&args.device)?;
    if gpu.is_cpu() {
        eprintln!(
            "{} is the CPU: comparing the CPU with itself, a rehearsal of the check",
            args.device
        );
    }
    let (width, size) = if args.quick { (16, 128) } else { (64, 256) };
    let mut rows = Vec::new();

    let reference = ModelConfig {
        width: 16,
        ..ModelConfig::default()
    };
    let demo = ModelConfig {
        width: 16,
        in_channels: 3,
        batch_norm: true,
        initial_probability: Some(0.01),
        ..ModelConfig::default()
    };
    for (name, config) in [
        ("reference U-Net", reference),
        ("demo U-Net (batch norm)", demo),
    ] {
        let (forward, gradients) = parity(&config, &gpu)
            .with_context(|| format!("comparing the {name} on CPU and GPU"))?;
        rows.push(Row {
            check: format!("{name}, width 16, 128²: forward GPU vs CPU"),
            result: format!("relative error {forward:.1e}"),
            passed: Some(forward < FORWARD_TOLERANCE),
        });
        rows.push(Row {
            check: format!("{name}: gradients GPU vs CPU"),
            result: format!("relative error {gradients:.1e}"),
            passed: Some(gradients < GRADIENT_TOLERANCE),
        });
    }

    let (gpu_losses, cpu_losses) = smoke_training(&args.device)?;
    let falls = gpu_losses.last() < gpu_losses.first();
    rows.push(Row {
        check: "smoke training on GPU: train loss per epoch".into(),
        result: format!(
            "{} (CPU: {})",
            losses_text(&gpu_losses),
            losses_text(&cpu_losses)
        ),
        passed: Some(falls),
    });

    let timing = crate::bench::measure_model(width, size, args.steps, &gpu)?;
    let step = timing["train_step_s"].as_f64().unwrap_or(f64::NAN);
    let forward = timing["forward_s_per_slice"].as_f64().unwrap_or(f64::NAN);
    rows.push(Row {
        check: format!("reference U-Net (width {width}, {size}², batch 8): training step"),
        result: format!("{:.1} ms", step * 1e3),
        passed: None,
    });
    rows.push(Row {
        check: "reference U-Net: forward per slice (batch 8)".into(),
        result: format!("{:.2} ms", forward * 1e3),
        passed: None,
    });
    if let Some(python) = &args.torch {
        let torch_device = if gpu.is_cpu() { "cpu" } else { "cuda" };
        let torch = run_torch(python, width, size, args.steps, torch_device)?;
        let torch_step = torch["step_s"].as_f64().unwrap_or(f64::NAN);
        let torch_forward = torch["fwd_s_per_slice"].as_f64().unwrap_or(f64::NAN);
        rows.push(Row {
            check: "PyTorch eager, same network and GPU: training step".into(),
            result: format!(
                "{:.1} ms (lungseg / PyTorch: {:.2}x, target ≤ 1: {})",
                torch_step * 1e3,
                step / torch_step,
                met(step <= torch_step)
            ),
            passed: None,
        });
        rows.push(Row {
            check: "PyTorch eager: forward per slice".into(),
            result: format!(
                "{:.2} ms (lungseg / PyTorch: {:.2}x)",
                torch_forward * 1e3,
                forward / torch_forward
            ),
            passed: None,
        });
    }

    let inference = crate::bench::infer_rows(
        Path::new("config/default.toml"),
        512,
        300,
        args.quick,
        &gpu,
        None,
    )?;
    for row in inference {
        let seconds = row["seconds"].as_f64().unwrap_or(f64::NAN);
        rows.push(Row {
            check: format!(
                "predict one 512x512x300 CT end to end, {} network (width {}, {}² input, {} model(s), TTA {})",
                row["network"].as_str().unwrap_or("?"),
                row["width"],
                row["input_size"],
                row["models"],
                row["tta"].as_str().unwrap_or("?")
            ),
            result: format!("{seconds:.2} s (target < 5 s: {})", met(seconds < 5.0)),
            passed: None,
        });
    }

    println!("\ngpu-check on {}", args.device);
    let width = rows
        .iter()
        .map(|r| r.check.chars().count())
        .max()
        .unwrap_or(0);
    for row in &rows {
        let verdict = match row.passed {
            Some(true) => "ok",
            Some(false) => "FAILED",
            None => "",
        };
        println!("{:<width$}  {:<48}  {verdict}", row.check, row.result);
    }
    let failed = rows.iter().filter(|r| r.passed == Some(false)).count();
    ensure!(failed == 0, "{failed} check(s) failed");
    Ok(())
}

/// Speed targets are reported, not enforced: the check fails only on wrong results.
fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "missed" }
}

fn losses_text(losses: &[f64]) -> String {
    losses
        .iter()
        .map(|l| format!("{l:.3}"))
        .collect::<Vec<_>>()
        .join(" → ")
}

/// The largest difference between GPU and CPU relative to the largest CPU value: of the outputs
/// (inference mode), and of every parameter's gradient after one training-mode loss.
fn parity(config: &ModelConfig, gpu: &Device) -> anyhow::Result<(f64, f64)> {
    let (batch, size) = (2, 128);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let input: Vec<f32> = (0..batch * config.in_channels * size * size)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let mask: Vec<f32> = (0..batch * size * size)
        .map(|n| f32::from(u8::from((n / size) % size > 80 && n % size < 40)))
        .collect();
    let mut outputs = Vec::new();
    let mut gradients = Vec::new();
    for device in [&Device::Cpu, gpu] {
        // The same seed gives the same weights on every device.
        let model = Model::new(config, device)?;
        let x = Tensor::from_vec(
            input.clone(),
            (batch, config.in_channels, size, size),
            device,
        )?;
        let t = Tensor::from_vec(mask.clone(), (batch, 1, size, size), device)?;
        outputs.push(model.unet.forward_t(&x, false)?.to_device(&Device::Cpu)?);
        let loss = seg_model::ops::bce_with_logits(&model.unet.forward_t(&x, true)?, &t)?;
        let grads = loss.backward()?;
        let per_var: Vec<Tensor> = model
            .trainable_vars()
            .iter()
            .map(|(name, var)| {
                grads
                    .get(var)
                    .with_context(|| format!("no gradient for {name}"))?
                    .to_device(&Device::Cpu)
                    .context("copying a gradient")
            })
            .collect::<anyhow::Result<_>>()?;
        gradients.push(per_var);
    }
    let forward = relative_error(&outputs[0], &outputs[1])?;
    let mut worst = 0f64;
    for (cpu, gpu) in gradients[0].iter().zip(&gradients[1]) {
        worst = worst.max(relative_error(cpu, gpu)?);
    }
    Ok((forward, worst))
}

fn relative_error(reference: &Tensor, other: &Tensor) -> anyhow::Result<f64> {
    let reference = reference.to_dtype(DType::F64)?;
    let scale = reference.abs()?.max_all()?.to_scalar::<f64>()?;
    let difference = (reference - other.to_dtype(DType::F64)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?;
    Ok(if scale > 0.0 {
        difference / scale
    } else {
        difference
    })
}

/// config/smoke.toml trained for a few epochs on `device` and on the CPU from the same data and
/// seed: the train loss of each epoch, GPU first.
fn smoke_training(device: &str) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("Task06_Lung");
    let mut losses = Vec::new();
    for (run, on) in [("smoke-gpu", device), ("smoke-cpu", "cpu")] {
        let overrides = vec![
            format!("paths.data_dir={:?}", data.display().to_string()),
            format!(
                "paths.work_dir={:?}",
                dir.path().join("work").display().to_string()
            ),
            "train.epochs=6".to_string(),
            format!("train.run={run:?}"),
            format!("train.device={on:?}"),
        ];
        let config = Config::load(Path::new("config/smoke.toml"), &overrides)?;
        if !data.join("dataset.json").is_file() {
            let synth: SynthConfig = config.section()?;
            write_task(&data, &synth)?;
            ct_preprocess::run(&config)?;
        }
        let summary = seg_train::train(&config, &seg_train::TrainOptions::default())
            .with_context(|| format!("training {run}"))?;
        let metrics = seg_train::read_metrics(&summary.run_dir.join("metrics.csv"))?;
        losses.push(metrics.iter().map(|m| m.train_loss).collect());
    }
    let cpu = losses.pop().expect("two runs");
    let gpu = losses.pop().expect("two runs");
    Ok((gpu, cpu))
}

/// xtask/gpu/unet_step_torch.py: PyTorch's step and forward times for the reference network.
fn run_torch(
    python: &Path,
    width: usize,
    size: usize,
    steps: usize,
    device: &str,
) -> anyhow::Result<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("gpu/unet_step_torch.py");
    let script = if script.is_file() {
        script
    } else {
        // On a GPU machine the binary runs from a copy of the repository, not from where it was
        // built.
        PathBuf::from("xtask/gpu/unet_step_torch.py")
    };
    let output = Command::new(python)
        .arg(&script)
        .args(["--width", &width.to_string(), "--size", &size.to_string()])
        .args([
            "--batch",
            "8",
            "--steps",
            &steps.to_string(),
            "--device",
            device,
        ])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    ensure!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{} printed no JSON", script.display()))
}
