//! `cargo xtask bench preprocess`: our preprocessing against gunzip alone (the floor) and against
//! the reference Python pipeline, on MSD-sized synthetic volumes.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use ct_io::read_task;
use ct_phantom::{SynthConfig, write_task};
use ct_preprocess::settings::PreprocessConfig;
use ct_preprocess::split::SplitRecord;
use rayon::prelude::*;
use serde::Serialize;

/// The reference's recorded throughput on this kind of machine (shared/reference/README.md).
const REFERENCE_RECORDED_SLICES_PER_S: (f64, f64) = (48.0, 51.0);

#[derive(clap::Args)]
pub struct PreprocessBench {
    /// Volumes of 512x512x`slices` int16 (the reference's figures used 3 of 300 slices).
    #[arg(long, default_value_t = 3)]
    cases: usize,
    #[arg(long, default_value_t = 300)]
    slices: usize,
    /// Timed runs of each method; the table shows the median.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// A Python with nibabel and opencv-python-headless: also run the reference preprocessing
    /// (shared/reference/preprocess_ref.py) on the same files.
    #[arg(long, value_name = "PYTHON")]
    reference: Option<PathBuf>,
    /// Where the benchmark volumes go (reused between runs).
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Time an existing MSD task folder's labelled cases instead (e.g. the reference's own
    /// volumes from shared/reference/make_volume.py); `--cases`/`--slices` then do not apply.
    #[arg(long, value_name = "DIR")]
    task: Option<PathBuf>,
    /// Where the timed runs write their slices (a new folder inside it, removed at the end). By
    /// default /dev/shm where it exists, else the system's temporary directory: the figures are
    /// then lungseg's, not the disk file system's. (This kind of machine's root ext4 has no
    /// journal; there, creating files within minutes of deleting many makes the kernel scan for
    /// recently freed inodes and can double the time. Pass a folder on disk to measure that.)
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

#[derive(Serialize)]
struct Row {
    method: String,
    seconds: f64,
    cases_per_s: f64,
    slices_per_s: f64,
    input_mb_per_s: f64,
}

impl Row {
    fn new(method: &str, seconds: f64, cases: usize, slices: usize, input_bytes: u64) -> Row {
        Row {
            method: method.to_string(),
            seconds,
            cases_per_s: cases as f64 / seconds,
            slices_per_s: slices as f64 / seconds,
            input_mb_per_s: input_bytes as f64 / 1e6 / seconds,
        }
    }
}

pub fn preprocess(args: PreprocessBench) -> anyhow::Result<()> {
    anyhow::ensure!(args.repeats > 0, "--repeats must be at least 1");
    let synth = SynthConfig {
        cases: args.cases,
        test_cases: 0,
        size: 512,
        slices: args.slices,
        seed: 2024,
        orientation: "LAS".into(),
    };
    let task_dir = args.task.clone().unwrap_or_else(|| {
        args.dir.join(format!(
            "Task06_Lung_{}x512x512x{}",
            args.cases, args.slices
        ))
    });
    if args.task.is_none() && !task_dir.join("dataset.json").is_file() {
        eprintln!(
            "writing {} benchmark volumes to {}",
            args.cases,
            task_dir.display()
        );
        write_task(&task_dir, &synth)?;
    }
    let task = read_task(&task_dir)?;
    let cases = task.training.len();
    let inputs: Vec<PathBuf> = task
        .training
        .iter()
        .flat_map(|c| std::iter::once(c.image.clone()).chain(c.label.clone()))
        .collect();
    let input_bytes: u64 = inputs
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()))
        .sum::<io::Result<u64>>()?;

    let settings = PreprocessConfig {
        validation_fraction: 0.0,
        ..PreprocessConfig::default()
    };
    let ids: Vec<String> = task.training.iter().map(|c| c.id.clone()).collect();
    let split = SplitRecord::new(&ids, &settings).map_err(anyhow::Error::msg)?;
    // Every run writes into a fresh folder, as a first run does.
    let parent = match &args.out_dir {
        Some(dir) => dir.clone(),
        None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("{}", parent.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("lungseg-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a folder in {}", parent.display()))?;
    let outputs = scratch.path().to_path_buf();
    let mut slices = 0;
    let mut ours = Vec::new();
    for run in 0..args.repeats {
        // Each run starts as the first did, with no earlier run's writes still pending.
        sync_file_system();
        let out = outputs.join(format!("run{run}"));
        let summary =
            ct_preprocess::preprocess(&task.training, &task_dir, &split, &settings, &out)?;
        slices = summary.slices;
        ours.push(summary.seconds);
    }
    let inflate = repeat(args.repeats, || {
        inputs
            .par_iter()
            .try_for_each(|p| ct_io::read_bytes(p, &ct_io::ReadOptions::default()).map(drop))?;
        Ok(())
    })?;
    let stream = repeat(args.repeats, || {
        inputs.par_iter().try_for_each(|p| gunzip_streaming(p))?;
        Ok(())
    })?;
    let mut rows = vec![
        Row::new(
            "lungseg ct-preprocess",
            median(ours),
            cases,
            slices,
            input_bytes,
        ),
        Row::new(
            "gunzip only, as ct-io reads (libdeflate)",
            inflate,
            cases,
            slices,
            input_bytes,
        ),
        Row::new(
            "gunzip only, streaming zlib-rs",
            stream,
            cases,
            slices,
            input_bytes,
        ),
    ];
    if let Some(python) = &args.reference {
        // One run (it takes ~10 s), writing where ours did.
        sync_file_system();
        rows.push(run_reference(
            python,
            &task_dir,
            &outputs.join("reference"),
            cases,
            input_bytes,
        )?);
    }
    scratch
        .close()
        .with_context(|| format!("removing {}", outputs.display()))?;

    println!(
        "preprocess benchmark: {} volumes from {} (gzip, {:.0} MB), {} slices kept, {} threads, median of {} runs, written under {}",
        cases,
        task_dir.display(),
        input_bytes as f64 / 1e6,
        slices,
        rayon::current_num_threads(),
        args.repeats,
        parent.display()
    );
    println!(
        "{:<42} {:>9} {:>9} {:>10} {:>12}",
        "method (files in parallel)", "seconds", "cases/s", "slices/s", "input MB/s"
    );
    for r in &rows {
        println!(
            "{:<42} {:>9.2} {:>9.3} {:>10.1} {:>12.1}",
            r.method, r.seconds, r.cases_per_s, r.slices_per_s, r.input_mb_per_s
        );
    }
    let (lo, hi) = REFERENCE_RECORDED_SLICES_PER_S;
    let ours = &rows[0];
    // The reference measured in this run, when it was.
    let reference_here = (rows.len() > 3).then(|| ours.slices_per_s / rows[3].slices_per_s);
    println!(
        "vs gunzip alone: {:.2}x the time of ct-io's inflate, {:.2}x streaming zlib-rs; vs the reference's recorded {lo}-{hi} slices/s: {:.1}x{}",
        ours.seconds / inflate,
        ours.seconds / stream,
        ours.slices_per_s / hi,
        reference_here
            .map(|x| format!("; vs the reference in this run: {x:.1}x"))
            .unwrap_or_default()
    );
    println!(
        "{}",
        serde_json::json!({
            "benchmark": "preprocess",
            "volumes": cases,
            "task": task_dir,
            "input_bytes": input_bytes,
            "slices": slices,
            "threads": rayon::current_num_threads(),
            "repeats": args.repeats,
            "written_under": parent,
            "rows": rows,
            "ratio_to_gunzip": ours.seconds / inflate,
            "ratio_to_streaming_gunzip": ours.seconds / stream,
            "speedup_vs_reference_recorded": ours.slices_per_s / hi,
            "speedup_vs_reference_this_run": reference_here,
        })
    );
    Ok(())
}

fn sync_file_system() {
    let _ = Command::new("sync").status();
}

/// The median time of `runs` runs of `f`.
fn repeat(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn gunzip_streaming(path: &Path) -> io::Result<()> {
    let file = BufReader::with_capacity(1 << 20, File::open(path)?);
    io::copy(
        &mut flate2::read::MultiGzDecoder::new(file),
        &mut io::sink(),
    )?;
    Ok(())
}

fn run_reference(
    python: &Path,
    task_dir: &Path,
    out: &Path,
    cases: usize,
    input_bytes: u64,
) -> anyhow::Result<Row> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/preprocess_ref.py");
    anyhow::ensure!(script.is_file(), "{} not found", script.display());
    let output = Command::new(python)
        .arg(&script)
        .arg("--root")
        .arg(task_dir)
        .arg("--out")
        .arg(out)
        .args(["--n", &cases.to_string()])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "reference preprocessing failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["event"] == "summary")
        .context("the reference printed no summary")?;
    let seconds = summary["wall_s"]
        .as_f64()
        .context("summary without wall_s")?;
    let slices = summary["slices"]
        .as_u64()
        .context("summary without slices")? as usize;
    Ok(Row::new(
        "reference (nibabel + OpenCV)",
        seconds,
        cases,
        slices,
        input_bytes,
    ))
}

#[derive(clap::Args)]
pub struct LoaderBench {
    /// Batches timed per run (batch size 8).
    #[arg(long, default_value_t = 30)]
    batches: usize,
    /// Slice size (the reference: 256).
    #[arg(long, default_value_t = 256)]
    size: usize,
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
}

/// `cargo xtask bench loader`: augmented slices/s the seg-data loader delivers, with every core
/// and with one worker, against what training consumes.
pub fn loader(args: LoaderBench) -> anyhow::Result<()> {
    use std::sync::Arc;

    use candle_core::Device;
    use ct_preprocess::split::Split;
    use seg_data::{DataConfig, Loader, SliceDataset};

    let root = args.dir.join(format!("loader_{}", args.size));
    let preprocessed = root.join("preprocessed");
    if !preprocessed
        .join(ct_preprocess::manifest::MANIFEST_FILE)
        .is_file()
    {
        let synth = SynthConfig {
            cases: 4,
            test_cases: 0,
            size: args.size.max(64),
            slices: 64,
            seed: 99,
            orientation: "LAS".into(),
        };
        write_task(&root.join("task"), &synth)?;
        let task = read_task(&root.join("task"))?;
        let settings = PreprocessConfig {
            size: args.size,
            crop_slices: 0,
            validation_fraction: 0.0,
            ..PreprocessConfig::default()
        };
        let ids: Vec<String> = task.training.iter().map(|c| c.id.clone()).collect();
        let split = SplitRecord::new(&ids, &settings).map_err(anyhow::Error::msg)?;
        ct_preprocess::preprocess(
            &task.training,
            &root.join("task"),
            &split,
            &settings,
            &preprocessed,
        )?;
    }
    let dataset = Arc::new(SliceDataset::open(&preprocessed, Split::Train, None, 0)?);
    let batch_size = 8;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    for workers in [cores, 1] {
        let config = DataConfig {
            workers,
            samples_per_epoch: args.batches * batch_size,
            ..DataConfig::default()
        };
        let loader = Loader::new(Arc::clone(&dataset), &config, Device::Cpu)?;
        let sampler = loader.sampler()?;
        let start = Instant::now();
        let mut slices = 0;
        for batch in loader.train_epoch(&sampler, 0, batch_size) {
            slices += batch?.indices.len();
        }
        let seconds = start.elapsed().as_secs_f64();
        rows.push(serde_json::json!({
            "workers": workers,
            "slices": slices,
            "seconds": seconds,
            "slices_per_s": slices as f64 / seconds,
        }));
    }
    println!(
        "loader benchmark: {}x{} slices, batch {batch_size}, default augmentation (affine + elastic), {} batches",
        args.size, args.size, args.batches
    );
    println!("{:>8} {:>10} {:>12}", "workers", "seconds", "slices/s");
    for r in &rows {
        println!(
            "{:>8} {:>10.2} {:>12.1}",
            r["workers"],
            r["seconds"].as_f64().unwrap_or(0.0),
            r["slices_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "training consumes, per the reference's recorded step times at batch 8 on this machine: \
         {:.1} slices/s (width 16, 128²), {:.1} (width 16, 256²), {:.2} (width 64, 256²)",
        8.0 / 0.353,
        8.0 / 1.95,
        8.0 / 22.1
    );
    println!(
        "{}",
        serde_json::json!({"benchmark": "loader", "size": args.size, "rows": rows})
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct ModelBench {
    /// Configurations WIDTHxSIZE to measure (the reference network: 64x256).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "16x128,16x256,32x256,64x256"
    )]
    configs: Vec<String>,
    /// Timed steps per configuration (after one warm-up step); the median is reported.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// A Python with torch: runs ../shared/reference/unet_step_ref.py on the same
    /// configurations in the same run and prints the ratios.
    #[arg(long, value_name = "PYTHON")]
    reference: Option<PathBuf>,
    /// Measure one configuration in this process (used by the parent run, one child per
    /// configuration, so each peak memory figure is that configuration's alone).
    #[arg(long, num_args = 2, value_names = ["WIDTH", "SIZE"], hide = true)]
    one: Option<Vec<usize>>,
}

/// Multiply-accumulates of one forward pass of the U-Net (depth 4, one input channel) on one
/// size² slice, convolutions only: the reference harness's count.
fn macs_per_slice(width: usize, size: usize) -> f64 {
    let double_conv = |ci: usize, co: usize, hw: usize| ((ci * co * 9 + co * co * 9) * hw) as f64;
    let w = width;
    let hw = [0, 1, 2, 3].map(|level| (size >> level) * (size >> level));
    double_conv(1, w, hw[0])
        + double_conv(w, 2 * w, hw[1])
        + double_conv(2 * w, 4 * w, hw[2])
        + double_conv(4 * w, 8 * w, hw[3])
        + double_conv(12 * w, 4 * w, hw[2])
        + double_conv(6 * w, 2 * w, hw[1])
        + double_conv(3 * w, w, hw[0])
        + (w * hw[0]) as f64
}

/// `cargo xtask bench model`: training step (forward + backward + Adam) and forward time of the
/// U-Net for batches of 8 on CPU, peak memory and GFLOP/s per configuration, beside PyTorch's
/// when a reference Python is given, and the `gemm` crate's ceiling on this machine.
pub fn model(args: ModelBench) -> anyhow::Result<()> {
    if let Some(one) = &args.one {
        let row = measure_model(one[0], one[1], args.steps, &candle_core::Device::Cpu)?;
        println!("{row}");
        return Ok(());
    }
    let configs: Vec<(usize, usize)> = args
        .configs
        .iter()
        .map(|c| {
            let (w, s) = c
                .split_once('x')
                .with_context(|| format!("--configs: {c:?} is not WIDTHxSIZE"))?;
            Ok((w.parse()?, s.parse()?))
        })
        .collect::<anyhow::Result<_>>()?;
    let exe = std::env::current_exe()?;
    let ceiling = gemm_ceiling();
    println!(
        "model benchmark: batch 8, CPU, {} threads, median of {} steps; gemm ceiling {ceiling:.0} GFLOP/s",
        rayon::current_num_threads(),
        args.steps
    );
    println!(
        "{:>6} {:>5} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "width",
        "size",
        "step s",
        "fwd s/sl",
        "train GF",
        "fwd GF",
        "RSS MB",
        "torch s",
        "step x",
        "fwd x"
    );
    let mut rows = Vec::new();
    for (width, size) in configs {
        let output = Command::new(&exe)
            .args([
                "bench",
                "model",
                "--steps",
                &args.steps.to_string(),
                "--one",
            ])
            .args([width.to_string(), size.to_string()])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "width {width}, size {size}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut row: serde_json::Value = serde_json::from_slice(&output.stdout)
            .context("the measuring child printed no JSON")?;
        let reference = match &args.reference {
            Some(python) => Some(run_torch(python, width, size, args.steps)?),
            None => None,
        };
        let step = row["train_step_s"].as_f64().unwrap_or(f64::NAN);
        let forward = row["forward_s_per_slice"].as_f64().unwrap_or(f64::NAN);
        let (torch_step, torch_forward) = reference.as_ref().map_or((f64::NAN, f64::NAN), |r| {
            (
                r["step_s_median"].as_f64().unwrap_or(f64::NAN),
                r["fwd_s_per_slice"].as_f64().unwrap_or(f64::NAN),
            )
        });
        println!(
            "{:>6} {:>5} {:>9.3} {:>11.4} {:>9.1} {:>9.1} {:>9.0} {:>9.3} {:>8.2} {:>8.2}",
            width,
            size,
            step,
            forward,
            row["train_gflops"].as_f64().unwrap_or(f64::NAN),
            row["forward_gflops"].as_f64().unwrap_or(f64::NAN),
            row["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
            torch_step,
            step / torch_step,
            forward / torch_forward
        );
        if let Some(reference) = reference {
            row["pytorch"] = reference;
        }
        rows.push(row);
    }
    println!(
        "{}",
        serde_json::json!({"benchmark": "model", "batch": 8, "gemm_ceiling_gflops": ceiling, "rows": rows})
    );
    Ok(())
}

/// PyTorch's figures for one configuration, from the reference harness.
fn run_torch(
    python: &Path,
    width: usize,
    size: usize,
    steps: usize,
) -> anyhow::Result<serde_json::Value> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/unet_step_ref.py");
    anyhow::ensure!(
        script.is_file(),
        "{}: the reference harness is absent",
        script.display()
    );
    let output = Command::new(python)
        .arg(&script)
        .args([
            "--no-profile-ops",
            "--warmup",
            "1",
            "--steps",
            &steps.to_string(),
            "--one",
        ])
        .args([width.to_string(), size.to_string()])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "the reference harness failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    serde_json::from_str(&last).context("the reference harness printed no JSON")
}

/// f32 GFLOP/s of the `gemm` crate on a 2048³ product, all threads: the practical ceiling.
fn gemm_ceiling() -> f64 {
    let n = 2048;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0f32; n * n];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        // SAFETY: the three buffers are n x n, row-major.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            );
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best / 1e9
}

/// Training-step and forward times of the reference U-Net at `width`, `size`, batch 8, on
/// `device` (medians of `steps` after one warm-up), run on a worker thread as training runs.
pub(crate) fn measure_model(
    width: usize,
    size: usize,
    steps: usize,
    device: &candle_core::Device,
) -> anyhow::Result<serde_json::Value> {
    seg_model::threads::on_worker(|| measure_model_here(width, size, steps, device))
}

fn measure_model_here(
    width: usize,
    size: usize,
    steps: usize,
    device: &candle_core::Device,
) -> anyhow::Result<serde_json::Value> {
    use candle_core::{Module, Tensor};
    use seg_model::{Model, ModelConfig};
    use seg_train::adam::{Adam, AdamParams};

    let model = Model::new(
        &ModelConfig {
            width,
            ..ModelConfig::default()
        },
        device,
    )?;
    let x = Tensor::randn(0f32, 1.0, (8, 1, size, size), device)?;
    let t = Tensor::randn(0f32, 1.0, (8, 1, size, size), device)?
        .ge(1.0)?
        .to_dtype(candle_core::DType::F32)?;
    let mut adam = Adam::new(
        model.trainable_vars(),
        AdamParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )?;
    let mut step_times = Vec::new();
    for step in 0..=steps {
        let start = Instant::now();
        let loss = seg_model::ops::bce_with_logits(&model.unet.forward_t(&x, true)?, &t)?;
        adam.step(&loss.backward()?, 1e-4, 0.0)?;
        // GPU work is queued: wait for it before reading the clock.
        device.synchronize()?;
        if step > 0 {
            step_times.push(start.elapsed().as_secs_f64());
        }
    }
    let mut forward_times = Vec::new();
    for step in 0..=steps {
        let start = Instant::now();
        let y = model.unet.forward(&x.detach())?.detach();
        let _ = y.sum_all()?.to_scalar::<f32>()?;
        if step > 0 {
            forward_times.push(start.elapsed().as_secs_f64() / 8.0);
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN);
    let step = median(step_times);
    let forward = median(forward_times);
    let flops = 2.0 * macs_per_slice(width, size);
    Ok(serde_json::json!({
        "width": width,
        "size": size,
        "parameters": model.parameter_count(),
        "train_step_s": step,
        "forward_s_per_slice": forward,
        // A training step costs about three forward passes (forward, two gradients).
        "train_gflops": 3.0 * flops * 8.0 / step / 1e9,
        "forward_gflops": flops / forward / 1e9,
        "peak_rss_mb": peak_kb / 1024.0,
    }))
}

#[derive(clap::Args)]
pub struct InferBench {
    /// The demo network's settings come from this config ([model], [preprocess]).
    #[arg(long, value_name = "FILE", default_value = "config/default.toml")]
    config: PathBuf,
    /// In-plane voxels of the synthetic CT (MSD: 512).
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Axial slices of the synthetic CT (MSD: ~300).
    #[arg(long, default_value_t = 300)]
    slices: usize,
    /// Skip the reference width-64 network (minutes per volume on a small CPU).
    #[arg(long)]
    demo_only: bool,
    /// Working folder (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where the network runs: cpu, cuda:N (a CUDA build) or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// `cargo xtask bench infer`: seconds to predict one MSD-sized synthetic CT end to end (read →
/// mask written), with the demo network and with the reference one (untrained weights: the
/// time does not depend on them).
pub fn infer(args: InferBench) -> anyhow::Result<()> {
    let device = seg_model::parse_device(&args.device)?;
    let rows = infer_rows(
        &args.config,
        args.size,
        args.slices,
        args.demo_only,
        &device,
        args.dir.as_deref(),
    )?;
    println!(
        "{}",
        serde_json::json!({"benchmark": "infer", "device": args.device, "shape": [args.size, args.size, args.slices], "rows": rows})
    );
    Ok(())
}

/// Predicts one synthetic `size`x`size`x`slices` CT end to end (read → mask written) with the
/// demo network of `config` and, unless `demo_only`, the reference network; prints a table and
/// returns its rows.
pub(crate) fn infer_rows(
    config: &Path,
    size: usize,
    slices: usize,
    demo_only: bool,
    device: &candle_core::Device,
    dir: Option<&Path>,
) -> anyhow::Result<Vec<serde_json::Value>> {
    use seg_eval::predict::{PredictOptions, Predictor, Tta, plan, run_job};
    use seg_model::{Model, ModelConfig};

    let config = ct_io::config::Config::load(config, &[])?;
    let demo_model: ModelConfig = config.section()?;
    let demo_preprocess: PreprocessConfig = config.section()?;
    let tmp = tempfile::tempdir()?;
    let dir = dir.unwrap_or(tmp.path());
    let synth = SynthConfig {
        cases: 1,
        test_cases: 0,
        size,
        slices,
        ..SynthConfig::default()
    };
    let task = dir.join("Task06_Lung");
    write_task(&task, &synth)?;
    let input = ct_io::task::nifti_files(&task.join("imagesTr"))?
        .into_iter()
        .next()
        .context("no phantom written")?;
    // The demo network alone, mirrored (flip TTA), as a 5-fold ensemble and both; the
    // reference network alone.
    let mut networks = vec![
        (
            "demo",
            demo_model.clone(),
            demo_preprocess.clone(),
            1,
            Tta::None,
        ),
        (
            "demo",
            demo_model.clone(),
            demo_preprocess.clone(),
            1,
            Tta::Flip,
        ),
        (
            "demo",
            demo_model.clone(),
            demo_preprocess.clone(),
            5,
            Tta::None,
        ),
        ("demo", demo_model, demo_preprocess, 5, Tta::Flip),
    ];
    if !demo_only {
        networks.push((
            "reference",
            ModelConfig::default(),
            PreprocessConfig::default(),
            1,
            Tta::None,
        ));
    }
    println!(
        "inference benchmark: one {size}x{size}x{slices} CT, {}, {} CPU threads",
        if device.is_cpu() { "CPU" } else { "GPU" },
        rayon::current_num_threads()
    );
    println!(
        "{:>10} {:>6} {:>6} {:>12} {:>7} {:>5} {:>10} {:>12}",
        "network", "width", "input", "parameters", "models", "tta", "seconds", "slices/s"
    );
    let mut rows = Vec::new();
    for (name, model_config, preprocess, models, tta) in networks {
        let checkpoints: Vec<PathBuf> = (0..models)
            .map(|k| {
                let checkpoint = dir.join(format!("checkpoint_{name}_{k}"));
                let model = Model::new(
                    &ModelConfig {
                        init_seed: k as u64,
                        ..model_config.clone()
                    },
                    &candle_core::Device::Cpu,
                )?;
                model.save(
                    &checkpoint,
                    Some(serde_json::to_value(&preprocess)?),
                    serde_json::Value::Null,
                )?;
                Ok(checkpoint)
            })
            .collect::<anyhow::Result<_>>()?;
        let options = PredictOptions {
            tta,
            ..PredictOptions::default()
        };
        let predictor = Predictor::load_ensemble(&checkpoints, device, options)?;
        let job = plan(&input, &dir.join(format!("mask_{name}.nii.gz")), false)?.remove(0);
        let report = run_job(&predictor, &job)?;
        let kept = report.notes.kept_slices[1] - report.notes.kept_slices[0];
        let parameters = Model::new(&model_config, &candle_core::Device::Cpu)?.parameter_count();
        println!(
            "{:>10} {:>6} {:>6} {:>12} {:>7} {:>5} {:>10.1} {:>12.1}",
            name,
            model_config.width,
            preprocess.size,
            parameters,
            models,
            tta.name(),
            report.seconds,
            kept as f64 / report.seconds
        );
        rows.push(serde_json::json!({
            "network": name,
            "width": model_config.width,
            "input_size": preprocess.size,
            "parameters": parameters,
            "models": models,
            "tta": tta.name(),
            "seconds": report.seconds,
            "slices_predicted": kept,
        }));
    }
    Ok(rows)
}

#[derive(clap::Args)]
pub struct RealBench {
    /// The checkpoint (default: the demo run's best/, from --config).
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,
    /// The folder of real CTs: NAME_image + NAME_label files pair up, other CTs count as having
    /// no known tumour.
    #[arg(long, value_name = "DIR", default_value = "../shared/data/real")]
    dir: PathBuf,
    /// The config whose run's best/ is the default checkpoint.
    #[arg(long, value_name = "FILE", default_value = "config/default.toml")]
    config: PathBuf,
    /// Keep predicted components outside the lungs (as `seg-eval predict --no-lung-constraint`).
    #[arg(long)]
    no_lung_constraint: bool,
    /// Test-time augmentation (as `seg-eval predict --tta`).
    #[arg(long, value_enum, default_value_t = seg_eval::predict::Tta::None)]
    tta: seg_eval::predict::Tta,
    /// Where the masks go (default: a temporary folder).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// `cargo xtask bench real`: predicts every real CT of a folder with `seg-eval predict`'s default
/// settings and prints, per CT, Dice, predicted and reference ml, false-positive components and
/// their ml, missed lesions (for CTs without a label: the predicted ml and components).
pub fn real(args: RealBench) -> anyhow::Result<()> {
    use seg_eval::predict::{PredictOptions, Predictor, plan, run_job};

    anyhow::ensure!(
        args.dir.is_dir(),
        "{}: no such folder of real CTs",
        args.dir.display()
    );
    let checkpoint = match args.checkpoint {
        Some(checkpoint) => checkpoint,
        None => {
            let config = ct_io::config::Config::load(&args.config, &[])?;
            let stage = seg_eval::stage::Stage::from_config(&config)?;
            match stage.layout.trained_folds(ct_io::layout::BEST).is_empty() {
                true => stage.checkpoint(None),
                false => stage.run_dir().to_path_buf(),
            }
        }
    };
    let checkpoints = seg_eval::stage::checkpoints_of(std::slice::from_ref(&checkpoint))?;
    // As seg-eval predict: the rule the run chose on validation, if it chose one.
    let (postprocessing, _) =
        seg_eval::stage::default_rules(&checkpoints, !args.no_lung_constraint);
    let options = PredictOptions {
        postprocessing,
        tta: args.tta,
        ..PredictOptions::default()
    };
    let predictor = Predictor::load_ensemble(&checkpoints, &candle_core::Device::Cpu, options)?;
    let tmp = tempfile::tempdir()?;
    let out = args.out.unwrap_or_else(|| tmp.path().to_path_buf());
    let files = ct_io::task::nifti_files(&args.dir)?;
    let is_label = |p: &Path| {
        ct_io::task::strip_nifti_extension(p).is_some_and(|stem| stem.ends_with("_label"))
    };
    println!(
        "real-CT benchmark: {} with {} ({} model(s)), test-time augmentation {}, \
         post-processing: {postprocessing}",
        args.dir.display(),
        checkpoint.display(),
        predictor.models(),
        args.tta.name()
    );
    println!(
        "{:<28} {:>6} {:>9} {:>8} {:>8} {:>7} {:>7} {:>8} {:>7} {:>6}",
        "CT", "Dice", "ref ml", "pred ml", "FP comp", "FP ml", "missed", "lung ml", "outside", "s"
    );
    let mut rows = Vec::new();
    for image in files.iter().filter(|p| !is_label(p)) {
        let stem = ct_io::task::strip_nifti_extension(image).unwrap_or_default();
        let name = stem.strip_suffix("_image").unwrap_or(&stem).to_string();
        let label = files.iter().find(|p| {
            ct_io::task::strip_nifti_extension(p).as_deref() == Some(&format!("{name}_label"))
        });
        let job = plan(image, &out.join(format!("{name}_pred.nii.gz")), false)?.remove(0);
        let report = run_job(&predictor, &job)?;
        let predicted = ct_io::read_mask_with(&job.output, &ct_io::ReadOptions::default())?;
        let spacing = predicted.geometry.spacing;
        let voxel_ml = spacing.iter().product::<f64>() / 1000.0;
        let reference = match label {
            Some(path) => {
                let reference = ct_io::read_mask_with(path, &ct_io::ReadOptions::default())?;
                ct_io::task::check_label_matches(&predicted.geometry, &reference.geometry, path)?;
                Some(reference.data)
            }
            None => None,
        };
        let empty = predicted.data.mapv(|_| 0u8);
        let truth = reference.as_ref().unwrap_or(&empty);
        let metrics = seg_eval::case_metrics(&name, predicted.data.view(), truth.view(), spacing);
        // Predicted voxels outside the reference, counted per false-positive component.
        let components = ct_preprocess::mask::Components::of(predicted.data.view());
        let hit = components.overlapping(truth.view());
        let fp_ml: f64 = components
            .sizes()
            .iter()
            .zip(&hit)
            .filter(|(_, h)| !**h)
            .map(|(n, _)| *n as f64 * voxel_ml)
            // Not `sum()`: an empty f64 sum is -0.0, printed "-0.00".
            .fold(0.0, |total, ml| total + ml);
        let dice = match (&reference, metrics.dice) {
            (Some(_), Some(d)) => format!("{d:.3}"),
            _ => "-".to_string(),
        };
        println!(
            "{:<28} {:>6} {:>9} {:>8.2} {:>8} {:>7.2} {:>7} {:>8.0} {:>7} {:>6.1}",
            name,
            dice,
            if reference.is_some() {
                format!("{:.2}", metrics.reference_ml)
            } else {
                "-".to_string()
            },
            metrics.predicted_ml,
            metrics.false_positive_lesions,
            fp_ml,
            if reference.is_some() {
                metrics.missed_lesions().to_string()
            } else {
                "-".to_string()
            },
            report.notes.lung_ml.unwrap_or(0.0),
            report.notes.outside_lungs,
            report.seconds
        );
        rows.push(serde_json::json!({
            "ct": name,
            "labelled": reference.is_some(),
            "dice": reference.as_ref().and(metrics.dice),
            "reference_ml": metrics.reference_ml,
            "predicted_ml": metrics.predicted_ml,
            "false_positive_components": metrics.false_positive_lesions,
            "false_positive_ml": fp_ml,
            "missed_lesions": reference.as_ref().map(|_| metrics.missed_lesions()),
            "lung_ml": report.notes.lung_ml,
            "dropped_outside_lungs": report.notes.outside_lungs,
            "seconds": report.seconds,
        }));
    }
    println!(
        "{}",
        serde_json::json!({"benchmark": "real", "checkpoint": checkpoint, "models": predictor.models(), "tta": args.tta.name(), "postprocessing": postprocessing, "rows": rows})
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct DicomBench {
    /// In-plane voxels of the synthetic series (CT: 512).
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Slices of the synthetic series.
    #[arg(long, default_value_t = 300)]
    slices: usize,
    /// Runs of each reader (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Working folder (default: /dev/shm when there is one, so disks do not decide).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// `cargo xtask bench dicom`: reading a synthetic CT series (one file per slice), uncompressed
/// and as a JPEG-lossless copy (made by gdcmconv, when installed), with ct-io beside
/// `dcm2niix -z n` converting the same files, in the same run.
pub fn dicom(args: DicomBench) -> anyhow::Result<()> {
    use ct_phantom::dicom::{Writing, write_series};
    let base = match &args.dir {
        Some(dir) => dir.clone(),
        None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    };
    let tmp = tempfile::tempdir_in(&base)?;
    let synth = SynthConfig {
        size: args.size,
        slices: args.slices,
        ..SynthConfig::default()
    };
    let phantom = ct_phantom::generate_case(&synth, 0);
    let plain = tmp.path().join("uncompressed");
    let files = write_series(
        &plain,
        &phantom.ct,
        &phantom.geometry.affine,
        &Writing::new("1.2.826.0.1.3680043.10.99.900"),
    )?;
    let mut series = vec![("uncompressed", plain)];
    if have("gdcmconv") {
        let jpeg = tmp.path().join("jpeg-lossless");
        std::fs::create_dir_all(&jpeg)?;
        for file in &files {
            let status = Command::new("gdcmconv")
                .arg("--jpeg") // lossless unless --lossy
                .arg(file)
                .arg(jpeg.join(file.file_name().context("a file")?))
                .status()?;
            anyhow::ensure!(status.success(), "gdcmconv failed on {}", file.display());
        }
        series.push(("jpeg-lossless", jpeg));
    } else {
        println!("gdcmconv not found (Debian's libgdcm-tools): the JPEG-lossless copy is skipped");
    }
    let dcm2niix = have("dcm2niix");
    if !dcm2niix {
        println!("dcm2niix not found (Debian's dcm2niix): no comparison");
    }
    let mb = (args.size * args.size * args.slices * 2) as f64 / 1e6;
    println!(
        "DICOM read benchmark: {0}x{0}x{1} CT series ({mb:.0} MB of pixels), {2} threads, median of {3}",
        args.size,
        args.slices,
        rayon::current_num_threads(),
        args.repeats
    );
    println!(
        "{:>14} {:>14} {:>18} {:>8}",
        "series", "ct-io (s)", "dcm2niix -z n (s)", "ratio"
    );
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut rows = Vec::new();
    for (name, folder) in &series {
        let ours = median(
            (0..args.repeats.max(1))
                .map(|_| -> anyhow::Result<f64> {
                    let start = Instant::now();
                    let ct = ct_io::read_ct(folder, None)?;
                    anyhow::ensure!(ct.volume.geometry.shape[2] == args.slices, "slices lost");
                    Ok(start.elapsed().as_secs_f64())
                })
                .collect::<anyhow::Result<_>>()?,
        );
        let theirs = if dcm2niix {
            let out = tmp.path().join(format!("dcm2niix_{name}"));
            std::fs::create_dir_all(&out)?;
            let times = (0..args.repeats.max(1))
                .map(|_| -> anyhow::Result<f64> {
                    let start = Instant::now();
                    let status = Command::new("dcm2niix")
                        .args(["-z", "n", "-b", "n", "-f", "converted", "-o"])
                        .arg(&out)
                        .arg(folder)
                        .stdout(std::process::Stdio::null())
                        .status()?;
                    anyhow::ensure!(status.success(), "dcm2niix failed on {}", folder.display());
                    let seconds = start.elapsed().as_secs_f64();
                    std::fs::remove_dir_all(&out)?;
                    std::fs::create_dir_all(&out)?;
                    Ok(seconds)
                })
                .collect::<anyhow::Result<_>>()?;
            Some(median(times))
        } else {
            None
        };
        let ratio = theirs.map(|t| t / ours);
        println!(
            "{:>14} {:>14.3} {:>18} {:>8}",
            name,
            ours,
            theirs.map_or("-".into(), |t| format!("{t:.3}")),
            ratio.map_or("-".into(), |r| format!("{r:.2}x"))
        );
        rows.push(serde_json::json!({"series": name, "ct_io_s": ours, "dcm2niix_s": theirs}));
    }
    println!(
        "{}",
        serde_json::json!({"benchmark": "dicom", "shape": [args.size, args.size, args.slices], "rows": rows})
    );
    Ok(())
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("-h")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}
