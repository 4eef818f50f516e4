//! predict → evaluate → report as pipeline stages on a tiny task, and the binary's errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use ct_io::config::Config;
use ct_phantom::{SynthConfig, write_task};
use ct_preprocess::manifest::{MANIFEST_FILE, Manifest, PREPROCESSED_DIR};
use seg_eval::evaluate::{SUMMARY_FILE, Summary, read_per_case};
use seg_eval::stage::{self, LUNGS_DIR, Stage, TEST, VALIDATION};
use seg_model::{Model, ModelConfig};

fn config(dir: &Path, overrides: &[&str]) -> Config {
    let text = r#"
[paths]
data_dir = "task"
work_dir = "work"
[preprocess]
size = 32
crop_slices = 2
window = [-1000.0, 400.0]
validation_fraction = 0.5
[model]
width = 4
depth = 2
[train]
run = "tiny"
[eval]
report_slices = 2
"#;
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Config::parse(text, &dir.join("test.toml"), dir, &overrides).unwrap()
}

/// Phantoms, preprocessed, and an untrained checkpoint standing in for a trained one.
fn prepared_run(dir: &Path) -> Stage {
    let synth = SynthConfig {
        cases: 4,
        test_cases: 1,
        size: 40,
        slices: 16,
        seed: 21,
        orientation: "LAS".into(),
    };
    write_task(&dir.join("task"), &synth).unwrap();
    let config = config(dir, &[]);
    ct_preprocess::run(&config).unwrap();
    let stage = Stage::from_config(&config).unwrap();
    let manifest =
        Manifest::load(&stage.work_dir.join(PREPROCESSED_DIR).join(MANIFEST_FILE)).unwrap();
    let model: ModelConfig = config.section().unwrap();
    Model::new(&model, &candle_core::Device::Cpu)
        .unwrap()
        .save(
            &stage.checkpoint(None),
            Some(serde_json::to_value(&manifest.settings).unwrap()),
            serde_json::Value::Null,
        )
        .unwrap();
    stage
}

fn names(dir: &Path) -> Vec<String> {
    ct_io::task::nifti_files(dir)
        .unwrap()
        .iter()
        .map(|p| ct_io::task::strip_nifti_extension(p).unwrap())
        .collect()
}

#[test]
fn the_stages_predict_evaluate_and_report_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let stage = prepared_run(dir.path());

    let folders = stage::predict(&stage, None).unwrap().folders;
    assert_eq!(folders.iter().map(|f| f.predicted.len()).sum::<usize>(), 3);
    assert_eq!(names(&stage.predictions(VALIDATION)).len(), 2);
    assert_eq!(names(&stage.predictions(TEST)), ["lung_005"]);
    // Beside the masks: what prediction made of each CT, and the lung masks it filtered with.
    let validation = stage.predictions(VALIDATION);
    let notes = stage::read_notes(&validation);
    assert_eq!(notes.len(), 2, "{notes:?}");
    for (name, note) in &notes {
        assert!(
            note.lung_ml.is_some(),
            "{name}: the lung constraint is on by default"
        );
        assert!(
            validation.join(LUNGS_DIR).join(name).is_file(),
            "{name}: no lung mask"
        );
        assert!(note.kept_slices[0] < note.kept_slices[1]);
    }
    // Nothing changed: nothing is predicted again.
    let again = stage::predict(&stage, None).unwrap().folders;
    assert!(again.iter().all(|f| f.predicted.is_empty() && f.reused > 0));
    // Another threshold: everything is.
    let changed = Stage::from_config(&config(dir.path(), &["eval.threshold=0.3"])).unwrap();
    let redone = stage::predict(&changed, None).unwrap().folders;
    assert_eq!(redone.iter().map(|f| f.predicted.len()).sum::<usize>(), 3);
    // Without the constraint and its choice on validation (and with the inferior crop) no lung
    // mask is made: none is left to be drawn as if it had been used.
    let unconstrained = Stage::from_config(&config(
        dir.path(),
        &[
            "eval.lung_constraint=false",
            "eval.choose_postprocessing=false",
        ],
    ))
    .unwrap();
    stage::predict(&unconstrained, None).unwrap();
    let notes = stage::read_notes(&validation);
    assert!(notes.values().all(|n| n.lung_ml.is_none()), "{notes:?}");
    assert!(names(&validation.join(LUNGS_DIR)).is_empty());
    stage::predict(&stage, None).unwrap();

    let summary = stage::evaluate(&stage).unwrap();
    assert_eq!(summary.cases, 2);
    let per_case = read_per_case(&stage.evaluation().join("per_case.csv")).unwrap();
    assert_eq!(
        per_case.iter().map(|c| c.case.clone()).collect::<Vec<_>>(),
        names(&stage.predictions(VALIDATION))
    );
    let written: Summary = serde_json::from_str(
        &std::fs::read_to_string(stage.evaluation().join(SUMMARY_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(written, summary);

    let page = stage::report(&stage).unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    let sources: Vec<&str> = html
        .split("src=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    // Two overlays per case.
    assert_eq!(
        sources.iter().filter(|s| s.ends_with(".png")).count(),
        4,
        "{sources:?}"
    );
    for source in &sources {
        let file = page.parent().unwrap().join(source);
        assert!(
            file.is_file(),
            "report.html references {source}, which does not exist"
        );
        assert!(std::fs::metadata(&file).unwrap().len() > 100);
    }
    for case in names(&stage.predictions(VALIDATION)) {
        assert!(html.contains(&case));
    }
    assert!(
        html.contains("dropped outside lungs"),
        "the per-case table counts them"
    );
    assert!(
        html.contains("class=\"lungs\""),
        "the overlays' legend names the lung contour"
    );
    // A viewer per case, and every picture its script will ask for is there.
    let viewers = viewer_cases(&html);
    assert_eq!(
        viewers
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        names(&stage.predictions(VALIDATION))
    );
    for case in &viewers {
        let id = case["id"].as_str().unwrap();
        assert!(html.contains(&format!("id=\"viewer-{id}\"")), "{id}");
        let folder = page.parent().unwrap().join(case["dir"].as_str().unwrap());
        let slices = case["slices"].as_u64().unwrap() as usize;
        let mut wanted: Vec<String> = (0..slices).map(|k| format!("ct_{k:04}.jpg")).collect();
        for (layer, names) in [
            ("reference", &["reference", "reference_fill"][..]),
            ("prediction", &["prediction", "prediction_fill"]),
            ("lungs", &["lungs"]),
        ] {
            for k in case[layer].as_array().unwrap() {
                let k = k.as_u64().unwrap() as usize;
                assert!(k < slices);
                wanted.extend(names.iter().map(|name| format!("{name}_{k:04}.png")));
            }
        }
        let metrics = per_case.iter().find(|c| c.case == id).unwrap();
        assert_eq!(
            case["reference"].as_array().unwrap().is_empty(),
            metrics.reference_ml == 0.0,
            "{id}: reference pictures exactly where there is reference tumour"
        );
        for file in wanted {
            let path = folder.join(&file);
            assert!(
                path.is_file(),
                "{id}: the viewer asks for {file}, which does not exist"
            );
        }
        let lesions = case["lesions"].as_array().unwrap();
        assert_eq!(
            lesions.is_empty(),
            metrics.reference_ml == 0.0 && metrics.predicted_ml == 0.0,
            "{id}"
        );
        assert!(case["start"].as_u64().unwrap() < slices as u64);
    }
    // The test cases have no reference: their report shows the predictions alone.
    let unlabelled = unlabelled_report(&stage, dir.path());
    let html = std::fs::read_to_string(&unlabelled).unwrap();
    let viewers = viewer_cases(&html);
    assert_eq!(viewers.len(), 1);
    assert_eq!(viewers[0]["id"], "lung_005");
    assert!(viewers[0]["reference"].as_array().unwrap().is_empty());
    assert!(html.contains("without references") && !html.contains(">Dice<"));
    assert!(html.contains("predicted lesions"));
    assert!(
        html.contains("1 model, test-time augmentation none, post-processing: "),
        "the report says how the masks were made"
    );
    // A second report replaces the first whole.
    stage::report(&stage).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(stage.run_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && !n.ends_with(".lock"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The report of the run's test predictions (imagesTs, no references) in `dir/unlabelled`.
fn unlabelled_report(stage: &Stage, dir: &Path) -> PathBuf {
    seg_eval::report::write_unlabelled_report(
        &dir.join("task").join("imagesTs"),
        &stage.predictions(TEST),
        [-1350.0, 150.0],
        &dir.join("unlabelled"),
    )
    .unwrap()
}

/// The viewers' data as the page's script reads it.
fn viewer_cases(html: &str) -> Vec<serde_json::Value> {
    let json = html
        .split("const VIEWER_CASES = ")
        .nth(1)
        .and_then(|rest| rest.split(";\n").next())
        .expect("the page holds the viewers' data");
    serde_json::from_str::<Vec<serde_json::Value>>(&json.replace("<\\/", "</")).unwrap()
}

#[test]
#[ignore = "needs Chromium and Playwright: LUNGSEG_PYTHON with playwright, /usr/bin/chromium (.ci/run installs both) (cargo test -- --ignored)"]
fn the_report_is_interactive_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let stage = prepared_run(dir.path());
    stage::predict(&stage, None).unwrap();
    stage::evaluate(&stage).unwrap();
    let python = std::env::var("LUNGSEG_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/report_in_browser.py");
    // The run's report (2 validation cases) and that of its test case, without reference.
    for (page, viewers) in [
        (stage::report(&stage).unwrap(), 2),
        (unlabelled_report(&stage, dir.path()), 1),
    ] {
        let out = Command::new(&python)
            .arg(&script)
            .arg(&page)
            .output()
            .unwrap_or_else(|e| panic!("{python}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{text}");
        assert!(out.status.success(), "{}: {text}", page.display());
        assert!(text.contains(&format!("viewers: {viewers}")), "{text}");
    }
}

fn seg_eval(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_seg-eval"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_binary_explains_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing: PathBuf = dir.path().join("no_checkpoint");
    let input = dir.path().join("ct.nii.gz");
    std::fs::write(&input, b"").unwrap();
    let (code, stderr) = seg_eval(&[
        "predict",
        "--checkpoint",
        missing.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no_checkpoint") && stderr.contains("no checkpoint"),
        "{stderr}"
    );

    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[eval]\nthreshold = 1.5\n").unwrap();
    let (code, stderr) = seg_eval(&["evaluate", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("eval.threshold"), "{stderr}");

    let (code, stderr) = seg_eval(&[
        "evaluate",
        "--pred",
        dir.path().to_str().unwrap(),
        "--ref",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no predicted masks") || stderr.contains("ct.nii.gz"),
        "{stderr}"
    );
}

#[test]
fn evaluate_refuses_masks_it_cannot_compare_and_writes_nothing() {
    use ct_io::geometry::affine_for_orientation;
    use ct_io::{Geometry, write_volume};
    let dir = tempfile::tempdir().unwrap();
    let (pred, refs, out) = (
        dir.path().join("pred"),
        dir.path().join("ref"),
        dir.path().join("out"),
    );
    std::fs::create_dir_all(&pred).unwrap();
    std::fs::create_dir_all(&refs).unwrap();
    let geometry = |shape: [usize; 3], origin: [f64; 3]| {
        let affine = affine_for_orientation("LAS", shape, [0.8, 0.8, 2.5], origin).unwrap();
        Geometry::from_affine(shape, affine)
    };
    let mask = |shape: [usize; 3]| ndarray::Array3::<u8>::zeros(shape);
    let write = |path: PathBuf, shape: [usize; 3], origin: [f64; 3]| {
        write_volume(&path, mask(shape).view(), &geometry(shape, origin)).unwrap();
    };
    let evaluate = || {
        seg_eval(&[
            "evaluate",
            "--pred",
            pred.to_str().unwrap(),
            "--ref",
            refs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let origin = [10.0, -20.0, 30.0];
    write(refs.join("lung_001.nii.gz"), [8, 9, 4], origin);
    write(pred.join("lung_001.nii.gz"), [8, 9, 4], origin);
    write(pred.join("lung_002.nii.gz"), [8, 9, 4], origin);
    let refusals = [
        ("lung_002.nii.gz", "no reference mask for case lung_002"),
        (
            "lung_001.nii.gz",
            "shape [8, 9, 5] differs from the reference",
        ),
        ("lung_001.nii.gz", "affine differs from the reference"),
    ];
    for (n, (file, needle)) in refusals.into_iter().enumerate() {
        match n {
            1 => {
                std::fs::remove_file(pred.join("lung_002.nii.gz")).unwrap();
                write(pred.join("lung_001.nii.gz"), [8, 9, 5], origin);
            }
            2 => write(pred.join("lung_001.nii.gz"), [8, 9, 4], [10.0, -20.0, 31.0]),
            _ => {}
        }
        let (code, stderr) = evaluate();
        assert_eq!(code, 1, "{stderr}");
        let line = stderr.lines().last().unwrap();
        assert!(
            line.contains(file) && line.contains(needle),
            "wanted {needle:?} about {file}: {stderr}"
        );
        assert!(!out.exists(), "{} written after a refusal", out.display());
    }
    // Mended, it evaluates.
    write(pred.join("lung_001.nii.gz"), [8, 9, 4], origin);
    let (code, stderr) = evaluate();
    assert_eq!(code, 0, "{stderr}");
    assert!(out.join(SUMMARY_FILE).is_file());
}
