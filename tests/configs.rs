//! The shipped configs (`config/*.toml`) parse in full: every section every stage reads, and the
//! cross-checks the stages make before any work, so a typo or a stale key in one of them fails
//! here and not in a user's first run.

use std::fmt::Display;
use std::path::Path;

use ct_io::config::Config;
use ct_phantom::SynthConfig;
use ct_preprocess::settings::PreprocessConfig;
use seg_data::DataConfig;
use seg_eval::EvalConfig;
use seg_model::ModelConfig;
use seg_train::config::TrainConfig;

fn valid<T, E: Display>(name: &str, result: Result<T, E>) {
    if let Err(e) = result {
        panic!("{name}: {e:#}");
    }
}

#[test]
fn every_shipped_config_parses_in_full() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert_eq!(names, ["default.toml", "msd.toml", "smoke.toml"]);
    for name in &names {
        // Loading refuses unknown sections; each section refuses unknown keys and bad values.
        let config = Config::load(&dir.join(name), &[]).unwrap_or_else(|e| panic!("{e}"));
        valid(name, config.paths());
        valid(name, config.section::<SynthConfig>());
        valid(name, config.section::<PreprocessConfig>());
        valid(name, config.section::<DataConfig>());
        valid(name, config.section::<ModelConfig>());
        valid(name, config.section::<TrainConfig>());
        valid(name, config.section::<EvalConfig>());
        // What seg-train and seg-eval check across sections before they start.
        valid(name, seg_train::Settings::from_config(&config));
        valid(name, seg_eval::stage::Stage::from_config(&config));
    }
}
