//! `cargo xtask cuda-build`: the CUDA build of the binaries, on a machine without a CUDA toolkit.
//!
//! candle's CUDA kernels are compiled by `nvcc` at build time and cudarc links the CUDA libraries
//! at link time. Neither is on this kind of machine, so this installs NVIDIA's CUDA 13.0 wheels
//! from PyPI into a virtual environment (together they form a complete CUDA root: nvcc, nvvm,
//! headers, libraries), lays out a `CUDA_HOME` the linker understands (unversioned library names,
//! a `libcuda.so` stub: libcuda comes from the NVIDIA driver at run time) and builds with
//! `--features cudnn` (or `cuda`) into `target/cuda/`, apart from the CPU build; stripped copies
//! of the binaries go to `target/cuda/bin/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

use crate::pipeline::{cargo, workspace_root};

/// Pinned to CUDA 13.0: candle ships its kernels as PTX that the driver compiles at run time, and
/// a driver refuses PTX from a newer nvcc than its own CUDA version (the GPU machines' driver 580
/// is CUDA 13.0). cuDNN 9 keeps its ABI within the major version.
const WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-cublas==13.0.2.14",
    "nvidia-curand==10.4.0.35",
];
const CUDNN_WHEEL: &str = "nvidia-cudnn-cu13==9.13.0.50";

/// The CUDA libraries cudarc links, found in the wheels as `lib<name>.so.<major>`.
const CUDA_LIBRARIES: &[&str] = &["cublas", "cublasLt", "nvrtc", "cudart", "curand"];

/// The binaries a GPU machine needs, each its package's own: the stages and xtask (for
/// `gpu-check`).
const BINARIES: &[&str] = &[
    "xtask",
    "seg-train",
    "seg-eval",
    "seg-model",
    "ct-preprocess",
];

#[derive(clap::Args)]
pub struct CudaBuildArgs {
    /// Where the CUDA wheels' virtual environment and the CUDA_HOME layout go (reused).
    #[arg(long, default_value = "target/cuda-toolchain")]
    toolchain_dir: PathBuf,
    /// GPU compute capability the kernels are built for (H100 and H200: 90).
    #[arg(long, default_value_t = 90)]
    compute_cap: u32,
    /// Build without cuDNN (candle's own CUDA convolutions).
    #[arg(long)]
    no_cudnn: bool,
    /// The Python that creates the virtual environment.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
}

pub fn cuda_build(args: CudaBuildArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    // A relative folder is taken from the workspace root (an absolute one replaces it).
    let toolchain = root.join(&args.toolchain_dir);
    let site_packages = install_wheels(&toolchain, &args.python, !args.no_cudnn)?;
    let cuda_home = lay_out_cuda_home(&toolchain, &site_packages, !args.no_cudnn)?;

    let features: Vec<String> = ["xtask", "seg-train", "seg-eval", "seg-model"]
        .iter()
        .map(|p| format!("{p}/{}", if args.no_cudnn { "cuda" } else { "cudnn" }))
        .collect();
    let target_dir = root.join("target/cuda");
    let path = format!(
        "{}:{}",
        cuda_home.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = cargo();
    command
        .current_dir(&root)
        .args(["build", "--release", "--locked"])
        .args(BINARIES.iter().flat_map(|p| ["-p", p]))
        .args(["--features", &features.join(",")])
        .env("CUDA_HOME", &cuda_home)
        .env("PATH", path)
        .env("CUDA_COMPUTE_CAP", args.compute_cap.to_string())
        .env("CARGO_TARGET_DIR", &target_dir);
    eprintln!(
        "building {} with {} (CUDA_HOME={}, compute capability {})",
        BINARIES.join(", "),
        features.join(","),
        cuda_home.display(),
        args.compute_cap
    );
    let status = command.status().context("running cargo build")?;
    ensure!(status.success(), "the CUDA build failed ({status})");
    // Stripped copies to take to a GPU machine: a third of the size (xtask alone runs gpu-check).
    let bin = target_dir.join("bin");
    fs::create_dir_all(&bin).with_context(|| format!("{}", bin.display()))?;
    for binary in BINARIES {
        run(Command::new("strip")
            .arg("-o")
            .arg(bin.join(binary))
            .arg(target_dir.join("release").join(binary)))?;
    }
    println!(
        "CUDA binaries in {}: {}\n\
         They need the NVIDIA driver (libcuda.so.1) to start, and the CUDA 13 libraries (cuBLAS,\n\
         NVRTC, cuRAND{}) on LD_LIBRARY_PATH at run time: see README, \"Building for NVIDIA GPUs\".",
        bin.display(),
        BINARIES.join(", "),
        if args.no_cudnn { "" } else { ", cuDNN 9" }
    );
    Ok(())
}

/// Creates the virtual environment and installs the pinned wheels unless the same set is already
/// there; returns its site-packages folder.
fn install_wheels(toolchain: &Path, python: &Path, cudnn: bool) -> anyhow::Result<PathBuf> {
    let venv = toolchain.join("venv");
    let venv_python = venv.join("bin/python");
    if !venv_python.is_file() {
        eprintln!("creating {}", venv.display());
        run(Command::new(python).args(["-m", "venv"]).arg(&venv))?;
    }
    let mut wheels: Vec<&str> = WHEELS.to_vec();
    if cudnn {
        wheels.push(CUDNN_WHEEL);
    }
    let stamp = venv.join("lungseg-wheels.txt");
    let wanted = wheels.join("\n");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        eprintln!("installing the CUDA 13.0 wheels (about 1.5 GB with cuDNN)");
        run(Command::new(&venv_python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(&wheels))?;
        fs::write(&stamp, &wanted).with_context(|| format!("{}", stamp.display()))?;
    }
    let output = Command::new(&venv_python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .with_context(|| format!("running {}", venv_python.display()))?;
    ensure!(
        output.status.success(),
        "cannot find the venv's site-packages"
    );
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()))
}

/// `toolchain/cuda-home`: bin, include and nvvm from the wheels' CUDA root, and a `lib` folder of
/// unversioned library names plus `lib/stubs/libcuda.so`, rebuilt on every run.
fn lay_out_cuda_home(toolchain: &Path, site: &Path, cudnn: bool) -> anyhow::Result<PathBuf> {
    let cuda_root = site.join("nvidia/cu13");
    ensure!(
        cuda_root.join("bin/nvcc").is_file(),
        "{}: no bin/nvcc; the nvidia-cuda-nvcc wheel did not install as expected",
        cuda_root.display()
    );
    let home = toolchain.join("cuda-home");
    if home.exists() {
        fs::remove_dir_all(&home).with_context(|| format!("removing {}", home.display()))?;
    }
    let stubs = home.join("lib/stubs");
    fs::create_dir_all(&stubs).with_context(|| format!("{}", stubs.display()))?;
    for folder in ["bin", "include", "nvvm"] {
        symlink(&cuda_root.join(folder), &home.join(folder))?;
    }
    let mut libraries: Vec<(&str, PathBuf)> = CUDA_LIBRARIES
        .iter()
        .map(|name| (*name, cuda_root.join("lib")))
        .collect();
    if cudnn {
        libraries.push(("cudnn", site.join("nvidia/cudnn/lib")));
    }
    for (name, folder) in libraries {
        let versioned = versioned_library(&folder, name)?;
        symlink(&versioned, &home.join(format!("lib/lib{name}.so")))?;
    }
    build_libcuda_stub(&stubs)?;
    Ok(home)
}

/// `lib<name>.so.<major>` in `folder` (the shortest versioned name: the one the loader asks for).
fn versioned_library(folder: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let prefix = format!("lib{name}.so.");
    let mut found: Vec<PathBuf> = fs::read_dir(folder)
        .with_context(|| format!("{}", folder.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect();
    found.sort_by_key(|p| p.as_os_str().len());
    found
        .into_iter()
        .next()
        .with_context(|| format!("{}: no {prefix}*", folder.display()))
}

fn symlink(target: &Path, link: &Path) -> anyhow::Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

/// A `libcuda.so` with SONAME `libcuda.so.1` that defines every driver function cudarc declares,
/// so the binaries link; at run time the driver's own libcuda.so.1 is loaded instead.
fn build_libcuda_stub(stubs: &Path) -> anyhow::Result<()> {
    let bindings = cudarc_driver_bindings()?;
    let text = fs::read_to_string(&bindings).with_context(|| format!("{}", bindings.display()))?;
    let mut names: Vec<&str> = text
        .split("load::<_F>(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    names.sort_unstable();
    names.dedup();
    ensure!(
        names.len() > 100 && names.contains(&"cuInit"),
        "{}: found {} driver functions, expected the CUDA driver API",
        bindings.display(),
        names.len()
    );
    let source: String = names
        .iter()
        .map(|n| format!("void {n}(void) {{}}\n"))
        .collect();
    let c_file = stubs.join("libcuda_stub.c");
    fs::write(&c_file, source).with_context(|| format!("{}", c_file.display()))?;
    run(Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(stubs.join("libcuda.so"))
        .arg(&c_file))
}

/// cudarc's driver API bindings in cargo's registry (`cargo fetch` puts them there).
fn cudarc_driver_bindings() -> anyhow::Result<PathBuf> {
    let output = cargo()
        .current_dir(workspace_root())
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--all-features",
        ])
        .output()
        .context("running cargo metadata")?;
    ensure!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "cudarc")
        .and_then(|p| p["manifest_path"].as_str())
        .context("cudarc is not in the dependency graph")?;
    let bindings = Path::new(manifest)
        .parent()
        .expect("a manifest has a folder")
        .join("src/driver/sys/mod.rs");
    if !bindings.is_file() {
        bail!("{} is missing: run `cargo fetch` first", bindings.display());
    }
    Ok(bindings)
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(status.success(), "{command:?} failed ({status})");
    Ok(())
}
