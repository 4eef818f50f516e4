//! `seg-train --config FILE [--set k=v]... [--resume] [--device cpu|cuda:N|auto]`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use ct_io::cli::ConfigArgs;
use seg_train::{TrainOptions, train};

#[derive(Parser)]
#[command(
    about = "Train the U-Net on the preprocessed slices; Ctrl-C or SIGTERM saves last/ and stops"
)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Continue the run from its last/ checkpoint.
    #[arg(long)]
    resume: bool,
    /// cpu, cuda:N or auto (overrides [train] device).
    #[arg(long)]
    device: Option<String>,
    /// For a K-fold dataset ([preprocess] folds = K): hold out fold k (0..K-1) and train into
    /// runs/<run>/fold_<k>/ (overrides [train] fold).
    #[arg(long, value_name = "K")]
    fold: Option<usize>,
}

fn main() -> ExitCode {
    seg_model::memory::reuse_freed_memory();
    ct_io::cli::init_tracing();
    let mut args = Args::parse();
    if let Some(fold) = args.fold {
        args.config.overrides.push(format!("train.fold={fold}"));
    }
    ct_io::cli::run(|| {
        let config = args.config.load()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130); // a second Ctrl-C: stop now
            }
            eprintln!(
                "\ninterrupted: saving last/ after this batch (Ctrl-C again to quit at once)"
            );
        })?;
        let options = TrainOptions {
            resume: args.resume,
            device: args.device.clone(),
            stop,
        };
        let summary = train(&config, &options)?;
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |d| format!("{d:.4}"));
        println!(
            "{} after {} epochs in {:.0} s: best per-case Dice {} (epoch {}); last pooled soft Dice {}",
            if summary.interrupted {
                "stopped"
            } else {
                "finished"
            },
            summary.epochs_done,
            summary.seconds,
            fmt(summary.best_dice),
            summary.best_epoch.map_or("-".into(), |e| e.to_string()),
            fmt(summary.last.map(|m| m.val_pooled_soft_dice)),
        );
        println!("run folder: {}", summary.run_dir.display());
        Ok(())
    })
}
