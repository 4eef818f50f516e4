//! `cargo xtask synth` end to end: a task folder every file of which reads, and config errors that
//! exit with code 2 naming the file and the key.

use std::path::Path;
use std::process::{Command, Output};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .unwrap()
}

fn smoke_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/smoke.toml")
        .display()
        .to_string()
}

#[test]
fn synth_writes_a_task_folder_that_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("Task06_Lung");
    let run = xtask(&[
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--cases",
        "2",
        "--test-cases",
        "1",
        "--size",
        "48",
        "--slices",
        "24",
        "--seed",
        "3",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("MB/s"));
    let task = ct_io::read_task(&out).unwrap();
    assert_eq!((task.training.len(), task.test.len()), (2, 1));
    for case in task.training.iter().chain(&task.test) {
        for file in std::iter::once(&case.image).chain(&case.label) {
            let v = ct_io::read_volume(file).unwrap();
            assert_eq!(v.geometry.shape, [48, 48, 24]);
        }
    }
}

#[test]
fn synth_takes_its_settings_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("from_config");
    let run = xtask(&[
        "synth",
        "--config",
        &smoke_config(),
        "--set",
        &format!("paths.data_dir={}", out.display()),
        "--set",
        "synth.cases=1",
        "--set",
        "synth.test_cases=0",
        "--set",
        "synth.orientation=LPS",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let task = ct_io::read_task(&out).unwrap();
    assert_eq!(task.training.len(), 1);
    let v = ct_io::read_volume(&task.training[0].image).unwrap();
    assert_eq!(v.geometry.orientation(), "LPS");
    assert_eq!(v.geometry.shape, [64, 64, 32]);
}

#[test]
fn config_errors_exit_with_code_2_and_one_line() {
    let config = smoke_config();
    for (set, needle) in [
        ("synth.cases=0", "synth.cases: must be 1..=999"),
        ("synth.casez=4", "synth.casez: unknown key"),
        ("synth.size=big", "synth.size: invalid type"),
        ("trainn.epochs=1", "trainn: unknown section"),
    ] {
        let run = xtask(&[
            "synth",
            "--config",
            &config,
            "--set",
            set,
            "--out",
            "/nonexistent/never",
        ]);
        assert_eq!(run.status.code(), Some(2), "{set}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(
            errors[0].contains("smoke.toml") && errors[0].contains(needle),
            "{stderr}"
        );
        assert!(!Path::new("/nonexistent/never").exists());
    }
}
