//! `seg-model info CKPT_DIR` and `seg-model import-torch --weights FILE --out CKPT_DIR`.

use std::path::PathBuf;
use std::process::ExitCode;

use candle_core::Device;
use clap::{Parser, Subcommand};
use seg_model::Model;

#[derive(Parser)]
#[command(about = "Inspect U-Net checkpoints and import weights of the reference PyTorch model")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a checkpoint's config and parameter count.
    Info {
        checkpoint: PathBuf,
        /// Print the sidecar as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Convert reference PyTorch weights (.safetensors, .pt/.pth state_dict, Lightning .ckpt) into
    /// a checkpoint folder.
    ImportTorch {
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    seg_model::memory::reuse_freed_memory();
    ct_io::cli::init_tracing();
    let cli = Cli::parse();
    ct_io::cli::run(|| match cli.command {
        Command::Info { checkpoint, json } => {
            let (model, info) = Model::load(&checkpoint, &Device::Cpu)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                let c = model.config();
                println!("{}", checkpoint.display());
                println!(
                    "  U-Net: {} input channel(s), width {}, depth {} ({:?} upsampling{})",
                    c.in_channels,
                    c.width,
                    c.depth,
                    c.upsampling,
                    if c.batch_norm { ", batch norm" } else { "" }
                );
                println!("  parameters: {}", model.parameter_count());
                match &info.preprocess {
                    Some(p) => println!("  trained on: {p}"),
                    None => println!("  trained on: (no preprocessing settings recorded)"),
                }
            }
            Ok(())
        }
        Command::ImportTorch { weights, out } => {
            let info = seg_model::import::import_torch(&weights, &out)?;
            println!(
                "imported {} parameters (width {}, depth {}, {} input channel(s)) into {}",
                info.parameters,
                info.model.width,
                info.model.depth,
                info.model.in_channels,
                out.display()
            );
            Ok(())
        }
    })
}
