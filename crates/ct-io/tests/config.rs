//! The shared config: sections, overrides, errors that name file, key and reason, path bases.

use std::path::{Path, PathBuf};

use ct_io::config::{Config, ConfigError, Paths};
use ct_phantom::SynthConfig;

fn parse(text: &str, overrides: &[&str]) -> Result<Config, ConfigError> {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Config::parse(
        text,
        Path::new("conf/test.toml"),
        Path::new("conf"),
        &overrides,
    )
}

fn synth_error(text: &str, overrides: &[&str]) -> String {
    match parse(text, overrides).and_then(|c| c.section::<SynthConfig>()) {
        Ok(s) => panic!("accepted: {s:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("conf/test.toml: "), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
            msg
        }
    }
}

#[test]
fn sections_take_defaults_and_overrides() {
    let c = parse(
        "[synth]\ncases = 3\n",
        &["synth.size=64", "synth.orientation=LPS"],
    )
    .unwrap();
    let s: SynthConfig = c.section().unwrap();
    assert_eq!((s.cases, s.size, s.orientation.as_str()), (3, 64, "LPS"));
    assert_eq!(s.slices, SynthConfig::default().slices);
    // A section absent from the file can be set from the command line.
    let c = parse("", &["synth.seed=99"]).unwrap();
    assert_eq!(c.section::<SynthConfig>().unwrap().seed, 99);
}

#[test]
fn errors_name_the_file_the_key_and_the_reason() {
    let msg = synth_error("[synth]\ncasez = 3\n", &[]);
    assert!(msg.contains("synth.casez: unknown key"), "{msg}");
    let msg = synth_error("[synth]\ncases = \"many\"\n", &[]);
    assert!(msg.contains("synth.cases: invalid type"), "{msg}");
    let msg = synth_error("", &["synth.cases=0"]);
    assert!(msg.contains("synth.cases: must be 1..=999"), "{msg}");
    let msg = synth_error("", &["synth.orientation=LLS"]);
    assert!(msg.contains("synth.orientation"), "{msg}");
    let msg = synth_error("", &["synth.size=-4"]);
    assert!(msg.contains("synth.size"), "{msg}");
    let msg = synth_error("[trian]\nepochs = 3\n", &[]);
    assert!(msg.contains("trian: unknown section"), "{msg}");
    let msg = synth_error("paths = 3\n", &[]);
    assert!(msg.contains("paths: must be a section"), "{msg}");
    let msg = synth_error("[synth]\ncases = \n", &[]);
    assert!(
        msg.contains("line 2") && msg.contains("invalid TOML"),
        "{msg}"
    );
    let msg = synth_error("", &["synth.cases"]);
    assert!(msg.contains("section.key=value"), "{msg}");
    let msg = synth_error("", &["cases=3"]);
    assert!(msg.contains("section.key=value"), "{msg}");
}

#[test]
fn a_missing_config_file_is_named() {
    let err = Config::load(Path::new("/nonexistent/lungseg.toml"), &[]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/lungseg.toml: cannot read config file")
    );
}

#[test]
fn paths_resolve_against_the_config_folder_or_the_current_directory() {
    let c = parse(
        "[paths]\ndata_dir = \"../data/T\"\nwork_dir = \"/abs/work\"\n",
        &[],
    )
    .unwrap();
    let p = c.paths().unwrap();
    assert_eq!(p.data_dir, PathBuf::from("data/T"));
    assert_eq!(p.work_dir, PathBuf::from("/abs/work"));
    let c = parse("", &["paths.work_dir=out/w"]).unwrap();
    let p = c.paths().unwrap();
    assert_eq!(p.work_dir, std::env::current_dir().unwrap().join("out/w"));
    assert_eq!(Paths::default().data_dir, Path::new("../data/Task06_Lung"));
    assert_eq!(p.data_dir, Path::new("data/Task06_Lung"));
}

#[test]
fn the_shipped_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    for name in ["default.toml", "msd.toml", "smoke.toml"] {
        let c = Config::load(&dir.join(name), &[]).unwrap();
        c.paths().unwrap();
        c.section::<SynthConfig>().unwrap();
    }
    let smoke = Config::load(&dir.join("smoke.toml"), &[]).unwrap();
    let s: SynthConfig = smoke.section().unwrap();
    assert!(s.size <= 64 && s.cases <= 8, "smoke stays tiny: {s:?}");
}
