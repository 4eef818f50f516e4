//! `ct-info [--json] FILE...`: what a NIfTI file holds, and whether lungseg can read it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use ct_io::{Datatype, Volume, read_volume};
use serde::Serialize;

#[derive(Parser)]
#[command(
    about = "Inspect NIfTI volumes: shape, spacing, orientation, datatype, affine, value range"
)]
struct Args {
    /// Print one JSON object per file (a JSON array for several files).
    #[arg(long)]
    json: bool,
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

#[derive(Serialize)]
struct Info {
    file: PathBuf,
    shape: [usize; 3],
    spacing: [f64; 3],
    orientation: String,
    datatype: Datatype,
    affine: [[f64; 4]; 4],
    min: f32,
    max: f32,
    mean: f64,
    /// Voxels > 0, reported when the volume looks like a label (small non-negative integers).
    #[serde(skip_serializing_if = "Option::is_none")]
    foreground_voxels: Option<usize>,
}

fn describe(file: &Path, volume: &Volume) -> Info {
    let (mut min, mut max, mut sum) = (f32::INFINITY, f32::NEG_INFINITY, 0.0f64);
    let mut integral = true;
    // Memory order: the data is Fortran-laid-out, and a logical-order walk would stride.
    let values = volume
        .data
        .as_slice_memory_order()
        .expect("ct-io returns contiguous volumes");
    for &v in values {
        min = min.min(v);
        max = max.max(v);
        sum += f64::from(v);
        integral &= v.fract() == 0.0;
    }
    let is_label = volume.datatype.is_integer() && integral && min >= 0.0 && max <= 255.0;
    let g = &volume.geometry;
    Info {
        file: file.to_path_buf(),
        shape: g.shape,
        spacing: g.spacing.map(|s| (s * 1e4).round() / 1e4),
        orientation: g.orientation(),
        datatype: volume.datatype,
        affine: g.affine,
        min,
        max,
        mean: sum / volume.data.len() as f64,
        foreground_voxels: is_label.then(|| values.iter().filter(|&&v| v > 0.0).count()),
    }
}

fn print_text(info: &Info) {
    println!("{}", info.file.display());
    println!("  shape        {:?}", info.shape);
    println!("  spacing (mm) {:?}", info.spacing);
    println!("  orientation  {}", info.orientation);
    println!("  datatype     {:?}", info.datatype);
    for (n, row) in info.affine.iter().take(3).enumerate() {
        let label = if n == 0 { "affine" } else { "" };
        println!(
            "  {label:<12} [{:>10.4} {:>10.4} {:>10.4} {:>10.4}]",
            row[0], row[1], row[2], row[3]
        );
    }
    println!(
        "  values       min {} max {} mean {:.3}",
        info.min, info.max, info.mean
    );
    if let Some(n) = info.foreground_voxels {
        println!("  foreground   {n} voxels");
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut infos = Vec::new();
    let mut failed = 0;
    for file in &args.files {
        match read_volume(file) {
            Ok(volume) => {
                let info = describe(file, &volume);
                if !args.json {
                    print_text(&info);
                }
                infos.push(info);
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    if args.json {
        let out = if infos.len() == 1 && args.files.len() == 1 {
            serde_json::to_string_pretty(&infos[0])
        } else {
            serde_json::to_string_pretty(&infos)
        };
        println!("{}", out.expect("plain data serialises"));
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
