//! `ct-info [--json] [--series ID] [--convert OUT.nii.gz] PATH...`: what a CT (a NIfTI file, or a
//! DICOM folder or file) holds, whether lungseg can read it, and, for DICOM, which series it took;
//! `--convert` writes the CT as NIfTI (the same voxels and world geometry dcm2niix gives).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use ct_io::{Datatype, Volume, read_ct, write_volume};
use serde::Serialize;

#[derive(Parser)]
#[command(
    about = "Inspect CTs (NIfTI files, DICOM folders or files): shape, spacing, orientation, \
             datatype, affine, value range, DICOM series; convert DICOM to NIfTI"
)]
struct Args {
    /// Print one JSON object per CT (a JSON array for several).
    #[arg(long)]
    json: bool,
    /// The DICOM series to read (its SeriesInstanceUID, or the id ct-info lists for a part of a
    /// split series) when a folder holds several.
    #[arg(long, value_name = "ID")]
    series: Option<String>,
    /// Write the CT as NIfTI to this file (.nii or .nii.gz); one PATH only.
    #[arg(long, value_name = "OUT")]
    convert: Option<PathBuf>,
    #[arg(required = true, value_name = "PATH")]
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
    /// For DICOM: the series read and how it was chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    series: Option<Series>,
}

#[derive(Serialize)]
struct Series {
    id: String,
    description: String,
    choice: String,
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
        series: None,
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
    if let Some(series) = &info.series {
        println!("  series       {} {:?}", series.id, series.description);
        println!("  chosen       {}", series.choice);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.convert.is_some() && args.files.len() != 1 {
        eprintln!("error: --convert takes one CT, not {}", args.files.len());
        return ExitCode::from(2);
    }
    let mut infos = Vec::new();
    let mut failed = 0;
    for file in &args.files {
        let read = read_ct(file, args.series.as_deref()).and_then(|ct| {
            if let Some(out) = &args.convert {
                convert(&ct.volume, out)?;
            }
            Ok(ct)
        });
        match read {
            Ok(ct) => {
                let mut info = describe(file, &ct.volume);
                info.series = ct.dicom.map(|d| Series {
                    id: d.series.id,
                    description: d.series.description,
                    choice: d.choice,
                });
                if !args.json {
                    print_text(&info);
                    if let Some(out) = &args.convert {
                        println!("  written      {}", out.display());
                    }
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

/// Writes the CT as NIfTI in its own datatype (int16 HU for most CTs).
fn convert(volume: &Volume, out: &Path) -> ct_io::Result<()> {
    match volume.datatype {
        Datatype::I16 => write_volume(out, volume.data.mapv(|v| v as i16).view(), &volume.geometry),
        _ => write_volume(out, volume.data.view(), &volume.geometry),
    }
}
