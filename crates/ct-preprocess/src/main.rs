//! `ct-preprocess --config FILE [--set k=v]...`: the preprocessing stage's binary.

use std::process::ExitCode;

use clap::Parser;
use ct_io::cli::ConfigArgs;

#[derive(Parser)]
#[command(about = "Turn the labelled CTs of an MSD task folder into a 2D slice dataset + manifest")]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> ExitCode {
    ct_io::cli::init_tracing();
    let args = Args::parse();
    ct_io::cli::run(|| {
        let config = args.config.load()?;
        let summary = ct_preprocess::run(&config)?;
        println!(
            "{} cases processed, {} unchanged, {} failed; {} slices; {:.1} s ({:.1} MB/s of input)",
            summary.processed,
            summary.reused,
            summary.failed.len(),
            summary.slices,
            summary.seconds,
            summary.input_bytes as f64 / 1e6 / summary.seconds.max(1e-9)
        );
        println!("manifest: {}", summary.manifest.display());
        Ok(())
    })
}
