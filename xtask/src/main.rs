//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.

mod bench;
mod cuda;
mod gpu;
mod pipeline;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ct_io::config::{Config, ConfigError, Section};
use ct_phantom::{SynthConfig, write_task};

#[derive(Parser)]
#[command(about = "lungseg project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a synthetic MSD-style task folder of chest-CT phantoms.
    Synth(SynthArgs),
    /// Measure a stage's speed.
    #[command(subcommand)]
    Bench(Bench),
    /// The whole job: synth (if no data) → preprocess → train → predict → evaluate → report.
    Pipeline(pipeline::PipelineArgs),
    /// Build the binaries with CUDA (and cuDNN) into target/cuda/, installing the CUDA 13.0
    /// toolchain from PyPI's wheels.
    CudaBuild(cuda::CudaBuildArgs),
    /// On a machine with an NVIDIA GPU, with the binaries of `cuda-build`: GPU/CPU agreement,
    /// training, and timings beside PyTorch's (see xtask/gpu/gpu-check.sh).
    GpuCheck(gpu::GpuCheckArgs),
}

#[derive(Subcommand)]
enum Bench {
    /// ct-preprocess on MSD-sized volumes vs gunzip alone and the reference pipeline.
    Preprocess(bench::PreprocessBench),
    /// seg-data's augmented batches per second, all workers and one.
    Loader(bench::LoaderBench),
    /// The U-Net's forward and training-step time and peak memory on CPU.
    Model(bench::ModelBench),
    /// seg-eval predict on one MSD-sized CT, end to end, demo and reference networks.
    Infer(bench::InferBench),
    /// Predict the real CTs of ../shared/data/real (or --dir) and score them.
    Real(bench::RealBench),
    /// Read a 512x512x300 DICOM series (uncompressed, JPEG lossless) beside dcm2niix.
    Dicom(bench::DicomBench),
}

#[derive(clap::Args)]
struct SynthArgs {
    /// Task folder to write (default: the config's paths.data_dir).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Labelled cases.
    #[arg(long)]
    cases: Option<usize>,
    /// Unlabelled test cases (imagesTs).
    #[arg(long)]
    test_cases: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// In-plane voxels per axis.
    #[arg(long)]
    size: Option<usize>,
    /// Axial slices per case.
    #[arg(long)]
    slices: Option<usize>,
    /// Voxel axis order, e.g. LAS (MSD) or LPS.
    #[arg(long)]
    orientation: Option<String>,
    /// Shared config whose [synth] and [paths] sections give the defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override a config key (repeatable), e.g. --set synth.cases=8.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
}

fn synth(args: SynthArgs) -> anyhow::Result<()> {
    let config = args
        .config
        .as_deref()
        .map(|file| Config::load(file, &args.overrides))
        .transpose()?;
    let mut synth: SynthConfig = match &config {
        Some(c) => c.section()?,
        None => SynthConfig::default(),
    };
    synth.cases = args.cases.unwrap_or(synth.cases);
    synth.test_cases = args.test_cases.unwrap_or(synth.test_cases);
    synth.seed = args.seed.unwrap_or(synth.seed);
    synth.size = args.size.unwrap_or(synth.size);
    synth.slices = args.slices.unwrap_or(synth.slices);
    synth.orientation = args.orientation.unwrap_or(synth.orientation);
    synth.validate().map_err(|inv| ConfigError {
        file: "command line".into(),
        key: Some(format!("synth.{}", inv.key)),
        reason: inv.reason,
    })?;
    let out = match (args.out, &config) {
        (Some(out), _) => out,
        (None, Some(c)) => c.paths()?.data_dir,
        (None, None) => anyhow::bail!("give --out DIR or --config FILE"),
    };
    write_synth(&synth, &out)
}

/// Writes the phantoms of `synth` into the task folder `out`.
fn write_synth(synth: &SynthConfig, out: &std::path::Path) -> anyhow::Result<()> {
    tracing::info!(
        "writing {} + {} phantoms of {}x{}x{} ({}) to {}",
        synth.cases,
        synth.test_cases,
        synth.size,
        synth.size,
        synth.slices,
        synth.orientation,
        out.display()
    );
    let report = write_task(out, synth).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} training + {} test cases to {} in {:.1} s: {:.0} MB of voxels, {:.1} MB/s",
        report.training_cases,
        report.test_cases,
        report.folder.display(),
        report.seconds,
        report.voxel_bytes as f64 / 1e6,
        report.voxel_mb_per_s
    );
    Ok(())
}

fn main() -> ExitCode {
    ct_io::cli::init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Synth(args) => synth(args),
        Command::Bench(Bench::Preprocess(args)) => bench::preprocess(args),
        Command::Bench(Bench::Loader(args)) => bench::loader(args),
        Command::Bench(Bench::Dicom(args)) => bench::dicom(args),
        // Training and prediction run as the stage binaries run them (bench preprocess measures
        // ct-preprocess's library as its binary runs it: without).
        Command::Bench(Bench::Model(args)) => {
            seg_model::memory::reuse_freed_memory();
            bench::model(args)
        }
        Command::Bench(Bench::Infer(args)) => {
            seg_model::memory::reuse_freed_memory();
            bench::infer(args)
        }
        Command::Bench(Bench::Real(args)) => {
            seg_model::memory::reuse_freed_memory();
            bench::real(args)
        }
        Command::Pipeline(args) => pipeline::pipeline(args),
        Command::CudaBuild(args) => cuda::cuda_build(args),
        Command::GpuCheck(args) => {
            seg_model::memory::reuse_freed_memory();
            gpu::gpu_check(args)
        }
    };
    // A failing stage has printed its own error: exit with its code.
    if let Some(failed) = result
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<pipeline::StageFailed>())
    {
        eprintln!("error: {failed}");
        return ExitCode::from(failed.code);
    }
    ct_io::cli::run(|| result)
}
