//! ct-preprocess on phantoms and real CT: values, shapes, manifest ↔ disk, orientation
//! independence, split, safe reruns.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use ct_io::{Reorientation, read_task, read_volume};
use ct_phantom::{SynthConfig, write_task};
use ct_preprocess::manifest::{MANIFEST_FILE, Manifest};
use ct_preprocess::settings::{CropMode, PreprocessConfig};
use ct_preprocess::slices::PlaneBox;
use ct_preprocess::split::{Split, SplitRecord};
use ct_preprocess::{Summary, preprocess};
use ndarray::{Array2, Axis};
use ndarray_npy::read_npy;

fn phantoms(dir: &Path, orientation: &str) -> PathBuf {
    let root = dir.join(format!("task_{orientation}"));
    let config = SynthConfig {
        cases: 4,
        test_cases: 0,
        size: 40,
        slices: 24,
        seed: 17,
        orientation: orientation.to_string(),
    };
    write_task(&root, &config).unwrap();
    root
}

fn settings() -> PreprocessConfig {
    PreprocessConfig {
        size: 32,
        crop_slices: 3,
        validation_fraction: 0.25,
        ..PreprocessConfig::default()
    }
}

fn run(task_dir: &Path, settings: &PreprocessConfig, out: &Path) -> anyhow::Result<Summary> {
    let task = read_task(task_dir)?;
    let ids: Vec<String> = task.training.iter().map(|c| c.id.clone()).collect();
    let split = SplitRecord::new(&ids, settings).unwrap();
    preprocess(&task.training, task_dir, &split, settings, out)
}

/// OpenCV's INTER_LINEAR, written out: pixel centres aligned, edges clamped.
fn bilinear(src: &Array2<f32>, size: usize) -> Array2<f32> {
    let (h, w) = src.dim();
    let coord = |d: usize, n: usize| {
        let s = ((d as f64 + 0.5) * n as f64 / size as f64 - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        (i0, i1, (s - i0 as f64).min(1.0) as f32)
    };
    Array2::from_shape_fn((size, size), |(r, c)| {
        let (y0, y1, wy) = coord(r, h);
        let (x0, x1, wx) = coord(c, w);
        let top = src[[y0, x0]] * (1.0 - wx) + src[[y0, x1]] * wx;
        let bottom = src[[y1, x0]] * (1.0 - wx) + src[[y1, x1]] * wx;
        top * (1.0 - wy) + bottom * wy
    })
}

#[test]
fn slices_are_hu_over_3071_resized_and_masks_are_binary() {
    let dir = tempfile::tempdir().unwrap();
    let task_dir = phantoms(dir.path(), "LAS");
    let out = dir.path().join("pre");
    run(&task_dir, &settings(), &out).unwrap();
    let manifest = Manifest::load(&out.join(MANIFEST_FILE)).unwrap();
    let mut checked = 0;
    for case in &manifest.cases {
        let volume = read_volume(&case.info.inputs[0].path).unwrap();
        let r = Reorientation::to_canonical(&volume.geometry);
        let canonical = r.canonical_view(volume.data.view());
        for s in manifest.slices.iter().filter(|s| s.case == case.info.id) {
            let image: Array2<f32> = read_npy(out.join(&s.files.image)).unwrap();
            let mask: Array2<u8> = read_npy(out.join(&s.files.mask)).unwrap();
            assert_eq!(image.dim(), (32, 32));
            assert_eq!(mask.dim(), (32, 32));
            assert!(mask.iter().all(|v| *v <= 1));
            assert_eq!(
                mask.iter().filter(|v| **v == 1).count() as u32,
                s.files.tumour_voxels
            );
            // rows = canonical y, columns = canonical x
            let hu = canonical
                .index_axis(Axis(2), s.files.slice)
                .t()
                .mapv(|v| v / 3071.0);
            let expected = bilinear(&hu, 32);
            let worst = (&image - &expected)
                .mapv(f32::abs)
                .fold(0.0f32, |a, &b| a.max(b));
            assert!(
                worst < 1e-5,
                "{} slice {}: off by {worst}",
                s.case,
                s.files.slice
            );
            checked += 1;
        }
    }
    assert!(checked > 50);
}

#[test]
fn the_manifest_matches_the_files_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let task_dir = phantoms(dir.path(), "LAS");
    let out = dir.path().join("pre");
    let summary = run(&task_dir, &settings(), &out).unwrap();
    let manifest = Manifest::load(&summary.manifest).unwrap();
    assert_eq!(manifest.cases.len(), 4);
    assert_eq!(summary.slices, manifest.slices.len());
    let mut listed = BTreeSet::new();
    for case in &manifest.cases {
        let id = &case.info.id;
        let ours: Vec<_> = manifest.slices.iter().filter(|s| &s.case == id).collect();
        let [start, end] = case.info.kept_slices;
        assert_eq!(case.info.crop.applied, [start, 0]);
        assert_eq!(end, case.info.canonical_shape[2]);
        let indices: Vec<usize> = ours.iter().map(|s| s.files.slice).collect();
        assert_eq!(indices, (start..end).collect::<Vec<_>>(), "{id}");
        assert!(ours.iter().all(|s| s.split == case.split));
        assert_eq!(case.info.original_orientation, "LAS");
        assert_eq!(case.info.resize_factors, [32.0 / 40.0, 32.0 / 40.0]);
        for s in ours {
            listed.insert(out.join(&s.files.image));
            listed.insert(out.join(&s.files.mask));
        }
        listed.insert(out.join("cases").join(id).join("case.json"));
    }
    let mut on_disk = BTreeSet::new();
    for case_dir in std::fs::read_dir(out.join("cases")).unwrap() {
        for file in std::fs::read_dir(case_dir.unwrap().path()).unwrap() {
            on_disk.insert(file.unwrap().path());
        }
    }
    assert_eq!(listed, on_disk);
    let train: BTreeSet<_> = manifest.split.train.iter().collect();
    let validation: BTreeSet<_> = manifest.split.validation.iter().collect();
    assert!(train.is_disjoint(&validation));
    assert_eq!(train.len() + validation.len(), 4);
    assert_eq!(validation.len(), 1);
    assert_eq!(
        manifest.slices_of(Split::Validation).next().unwrap().case,
        *validation.first().unwrap().as_str()
    );
}

/// LAS and LPS files are read plane by plane (axial is their slowest axis); PIR and ILA files
/// whole. All give the same slices.
#[test]
fn every_axis_order_of_one_patient_gives_the_same_slices() {
    let dir = tempfile::tempdir().unwrap();
    let las = phantoms(dir.path(), "LAS");
    let out_las = dir.path().join("las");
    run(&las, &settings(), &out_las).unwrap();
    let a = Manifest::load(&out_las.join(MANIFEST_FILE)).unwrap();
    for other in ["LPS", "PIR", "ILA"] {
        let task = phantoms(dir.path(), other);
        let out = dir.path().join(other);
        run(&task, &settings(), &out).unwrap();
        let b = Manifest::load(&out.join(MANIFEST_FILE)).unwrap();
        assert_eq!(b.cases[0].info.original_orientation, other);
        same_slices(&a, &out_las, &b, &out);
    }
}

#[test]
fn the_in_plane_crop_holds_lungs_and_tumour_is_square_and_the_same_in_every_axis_order() {
    let dir = tempfile::tempdir().unwrap();
    let settings = PreprocessConfig {
        crop: CropMode::Lungs,
        in_plane_crop: true,
        ..settings()
    };
    let mut first: Option<(Manifest, PathBuf)> = None;
    for orientation in ["LAS", "PIR"] {
        let root = dir.path().join(format!("task_{orientation}"));
        let config = SynthConfig {
            cases: 3,
            test_cases: 0,
            size: 128,
            slices: 32,
            seed: 5,
            orientation: orientation.to_string(),
        };
        write_task(&root, &config).unwrap();
        let out = dir.path().join(orientation);
        run(&root, &settings, &out).unwrap();
        let manifest = Manifest::load(&out.join(MANIFEST_FILE)).unwrap();
        let mut cropped = 0;
        for case in &manifest.cases {
            let info = &case.info;
            let plane = info.plane_box;
            let [width, height] = plane.extent();
            let [sx, sy, _] = info.canonical_spacing;
            assert!(
                (width as f64 * sx - height as f64 * sy).abs() <= sx.max(sy),
                "{}: {plane:?} is not square in mm",
                info.id
            );
            cropped += usize::from(plane != PlaneBox::whole([128, 128]));
            assert_eq!(
                info.resize_factors,
                [32.0 / height as f64, 32.0 / width as f64]
            );
            // Every tumour voxel and every lung voxel lies in the box.
            let root = dir.path().join(format!("task_{orientation}"));
            let label =
                read_volume(&root.join("labelsTr").join(format!("{}.nii.gz", info.id))).unwrap();
            let lungs =
                read_volume(&out.join("cases").join(&info.id).join("lungs.nii.gz")).unwrap();
            let r = Reorientation::to_canonical(&label.geometry);
            for volume in [&label, &lungs] {
                let canonical = r.apply(volume.data.view());
                for ((x, y, _), &v) in canonical.indexed_iter() {
                    if v > 0.0 {
                        assert!(
                            (plane.x[0]..plane.x[1]).contains(&x)
                                && (plane.y[0]..plane.y[1]).contains(&y),
                            "{}: ({x}, {y}) outside {plane:?}",
                            info.id
                        );
                    }
                }
            }
        }
        assert!(cropped > 0, "no phantom's lungs leave room to crop");
        match &first {
            None => first = Some((manifest, out)),
            Some((las, out_las)) => {
                for (a, b) in las.cases.iter().zip(&manifest.cases) {
                    assert_eq!(a.info.plane_box, b.info.plane_box, "{}", a.info.id);
                }
                same_slices(las, out_las, &manifest, &out);
            }
        }
    }
}

fn same_slices(a: &Manifest, out_a: &Path, b: &Manifest, out_b: &Path) {
    let (out_las, out_lps) = (out_a, out_b);
    assert_eq!(a.slices.len(), b.slices.len());
    for (sa, sb) in a.slices.iter().zip(&b.slices) {
        assert_eq!((&sa.case, sa.files.slice), (&sb.case, sb.files.slice));
        let (ia, ib): (Array2<f32>, Array2<f32>) = (
            read_npy(out_las.join(&sa.files.image)).unwrap(),
            read_npy(out_lps.join(&sb.files.image)).unwrap(),
        );
        assert_eq!(ia, ib);
        let (ma, mb): (Array2<u8>, Array2<u8>) = (
            read_npy(out_las.join(&sa.files.mask)).unwrap(),
            read_npy(out_lps.join(&sb.files.mask)).unwrap(),
        );
        assert_eq!(ma, mb);
    }
}

#[test]
fn the_split_is_by_case_and_deterministic() {
    let ids: Vec<String> = (1..=63).map(|i| format!("lung_{i:03}")).collect();
    let config = PreprocessConfig::default();
    let a = SplitRecord::new(&ids, &config).unwrap();
    let mut reversed = ids.clone();
    reversed.reverse();
    assert_eq!(
        SplitRecord::new(&reversed, &config).unwrap(),
        a,
        "input order does not matter"
    );
    assert_eq!(a.validation.len(), 6);
    assert_eq!(a.train.len(), 57);
    let other = SplitRecord::new(
        &ids,
        &PreprocessConfig {
            seed: 7,
            ..config.clone()
        },
    )
    .unwrap();
    assert_ne!(other.validation, a.validation);
    let explicit = PreprocessConfig {
        validation_cases: vec!["lung_063".into(), "lung_002".into()],
        ..config.clone()
    };
    let e = SplitRecord::new(&ids, &explicit).unwrap();
    assert_eq!(e.validation, ["lung_002", "lung_063"]);
    assert_eq!(e.method, "explicit");
    let unknown = PreprocessConfig {
        validation_cases: vec!["lung_099".into()],
        ..config
    };
    assert!(
        SplitRecord::new(&ids, &unknown)
            .unwrap_err()
            .contains("lung_099")
    );
}

#[test]
fn k_folds_are_deterministic_disjoint_and_cover_every_case() {
    let ids: Vec<String> = (1..=63).map(|i| format!("lung_{i:03}")).collect();
    let config = PreprocessConfig {
        folds: 5,
        ..PreprocessConfig::default()
    };
    let split = SplitRecord::new(&ids, &config).unwrap();
    let mut reversed = ids.clone();
    reversed.reverse();
    assert_eq!(SplitRecord::new(&reversed, &config).unwrap(), split);
    assert_eq!(split.fold_count(), 5);
    let mut all: Vec<&String> = split.folds.iter().flatten().collect();
    assert_eq!(all.len(), 63, "each case in one fold");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 63, "no case in two folds");
    for fold in &split.folds {
        assert!((12..=13).contains(&fold.len()), "{}", fold.len());
        assert!(fold.windows(2).all(|w| w[0] < w[1]), "sorted");
    }
    for k in 0..5 {
        let held = split.held_out(Some(k)).unwrap();
        assert_eq!(held.validation, split.folds[k]);
        assert_eq!(held.train.len() + held.validation.len(), 63);
        assert!(held.train.iter().all(|id| !held.validation.contains(id)));
        assert!(
            held.validation
                .iter()
                .all(|id| split.fold_of(id) == Some(k))
        );
    }
    let other = SplitRecord::new(
        &ids,
        &PreprocessConfig {
            seed: 7,
            ..config.clone()
        },
    )
    .unwrap();
    assert_ne!(other.folds, split.folds, "another seed, other folds");
    assert!(split.held_out(None).unwrap_err().contains("--fold"));
    assert!(split.held_out(Some(5)).unwrap_err().contains("0..4"));
    let single = SplitRecord::new(&ids, &PreprocessConfig::default()).unwrap();
    assert_eq!(single.fold_count(), 1);
    assert!(single.held_out(Some(0)).is_err());
    assert!(
        SplitRecord::new(&ids[..3], &config)
            .unwrap_err()
            .contains("at least 5")
    );
}

#[test]
fn a_rerun_does_no_work_and_a_changed_input_redoes_only_its_case() {
    let dir = tempfile::tempdir().unwrap();
    let task_dir = phantoms(dir.path(), "LAS");
    let out = dir.path().join("pre");
    let first = run(&task_dir, &settings(), &out).unwrap();
    assert_eq!((first.processed, first.reused), (4, 0));
    let manifest_time = std::fs::metadata(&first.manifest)
        .unwrap()
        .modified()
        .unwrap();
    let again = run(&task_dir, &settings(), &out).unwrap();
    assert_eq!((again.processed, again.reused), (0, 4));
    assert_eq!(
        std::fs::metadata(&again.manifest)
            .unwrap()
            .modified()
            .unwrap(),
        manifest_time
    );

    let label = task_dir.join("labelsTr/lung_002.nii.gz");
    let bytes = std::fs::read(&label).unwrap();
    std::fs::write(&label, bytes).unwrap(); // same content, new mtime
    let touched = run(&task_dir, &settings(), &out).unwrap();
    assert_eq!((touched.processed, touched.reused), (1, 3));
    let resized = run(
        &task_dir,
        &PreprocessConfig {
            size: 16,
            ..settings()
        },
        &out,
    )
    .unwrap();
    assert_eq!(resized.processed, 4);
}

#[test]
fn a_failing_case_leaves_nothing_partial_and_a_rerun_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let task_dir = phantoms(dir.path(), "LAS");
    let out = dir.path().join("pre");
    let image = task_dir.join("imagesTr/lung_003.nii.gz");
    let good = std::fs::read(&image).unwrap();
    std::fs::write(&image, &good[..good.len() / 2]).unwrap();

    let err = run(&task_dir, &settings(), &out).unwrap_err().to_string();
    assert!(err.contains("1 of 4 cases failed"), "{err}");
    assert!(
        err.contains("lung_003")
            && err.contains("imagesTr/lung_003.nii.gz")
            && err.contains("truncated"),
        "{err}"
    );
    let folders: Vec<String> = std::fs::read_dir(out.join("cases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        folders.len(),
        3,
        "no partial or temporary folder: {folders:?}"
    );
    assert!(!folders.iter().any(|f| f.contains("lung_003")));
    assert!(
        !out.join(MANIFEST_FILE).exists(),
        "no manifest for an incomplete dataset"
    );

    // Continuing past bad cases records them.
    let tolerant = PreprocessConfig {
        continue_on_error: true,
        ..settings()
    };
    let summary = run(&task_dir, &tolerant, &out).unwrap();
    let manifest = Manifest::load(&summary.manifest).unwrap();
    assert_eq!(manifest.failed.len(), 1);
    assert_eq!(manifest.failed[0].id, "lung_003");
    assert!(manifest.slices.iter().all(|s| s.case != "lung_003"));

    std::fs::write(&image, &good).unwrap();
    let summary = run(&task_dir, &settings(), &out).unwrap();
    assert_eq!((summary.processed, summary.reused), (1, 3));
    let manifest = Manifest::load(&summary.manifest).unwrap();
    assert!(manifest.failed.is_empty());
    assert_eq!(manifest.cases.len(), 4);
}

#[test]
#[ignore = "needs the real CTs in ../shared/data/real (cargo test -- --ignored)"]
fn real_ct_lung1_keeps_its_tumour_slices() {
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/real");
    assert!(
        real.join("lung1_image.nii.gz").is_file(),
        "{} is absent",
        real.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let task_dir = dir.path().join("Task");
    std::fs::create_dir_all(task_dir.join("imagesTr")).unwrap();
    std::fs::create_dir_all(task_dir.join("labelsTr")).unwrap();
    std::fs::copy(
        real.join("lung1_image.nii.gz"),
        task_dir.join("imagesTr/lung1.nii.gz"),
    )
    .unwrap();
    std::fs::copy(
        real.join("lung1_label.nii.gz"),
        task_dir.join("labelsTr/lung1.nii.gz"),
    )
    .unwrap();
    let config = PreprocessConfig {
        size: 64,
        validation_fraction: 0.0,
        ..PreprocessConfig::default()
    };
    let out = dir.path().join("pre");
    let summary = run(&task_dir, &config, &out).unwrap();
    let manifest = Manifest::load(&summary.manifest).unwrap();
    let case = &manifest.cases[0];
    assert_eq!(case.info.original_shape, [512, 512, 48]);
    assert_eq!(case.info.original_orientation, "LPS");
    assert_eq!(case.info.crop.requested, [30, 0]);
    assert_eq!(case.info.crop.applied, [14, 0], "30% of 48 slices");
    assert!(case.info.crop.reason.is_some());
    assert_eq!(case.info.tumour_voxels, 837);
    let tumour_slices: Vec<usize> = manifest
        .slices
        .iter()
        .filter(|s| s.files.tumour_voxels > 0)
        .map(|s| s.files.slice)
        .collect();
    assert_eq!(tumour_slices, [32, 33, 34]);
}

/// Every file below `dir` (relative path and bytes), sorted.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path.strip_prefix(dir).unwrap().to_path_buf(), bytes));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn killed_mid_case_a_rerun_gives_the_same_dataset_as_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let task_dir = dir.path().join("task");
    let synth = SynthConfig {
        cases: 8,
        test_cases: 0,
        size: 128,
        slices: 48,
        seed: 5,
        orientation: "LAS".into(),
    };
    write_task(&task_dir, &synth).unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/smoke.toml");
    let command = |work: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ct-preprocess"));
        cmd.arg("--config").arg(&config);
        for set in [
            format!("paths.data_dir={}", task_dir.display()),
            format!("paths.work_dir={}", work.display()),
            // One case at a time, with the lung mask: a case takes long enough to be caught.
            "preprocess.jobs=1".into(),
            "preprocess.crop=\"lungs\"".into(),
        ] {
            cmd.arg("--set").arg(set);
        }
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd
    };
    let straight = dir.path().join("straight");
    assert!(command(&straight).status().unwrap().success());

    // Kill once one case is done and the next is half written.
    let killed = dir.path().join("killed");
    let cases = killed.join("preprocessed/cases");
    let mut child = command(&killed).spawn().unwrap();
    let mid_case = loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "ct-preprocess finished before it could be killed"
        );
        let entries: Vec<PathBuf> = std::fs::read_dir(&cases)
            .map(|r| r.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
        let done = entries.iter().any(|p| !name(p).starts_with('.'));
        let partial = entries.iter().find(|p| {
            name(p).starts_with('.')
                && std::fs::read_dir(p).is_ok_and(|mut files| files.next().is_some())
        });
        if let (true, Some(partial)) = (done, partial) {
            child.kill().unwrap();
            break partial.clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    child.wait().unwrap();
    assert!(
        mid_case.is_dir(),
        "the killed case's temporary folder is left"
    );
    assert!(!killed.join("preprocessed").join(MANIFEST_FILE).exists());

    assert!(command(&killed).status().unwrap().success());
    let (a, b) = (
        tree(&straight.join("preprocessed")),
        tree(&killed.join("preprocessed")),
    );
    let names = |t: &[(PathBuf, Vec<u8>)]| t.iter().map(|f| f.0.clone()).collect::<BTreeSet<_>>();
    let (na, nb) = (names(&a), names(&b));
    assert!(
        na == nb,
        "only uninterrupted: {:?}; only after the kill: {:?}",
        na.difference(&nb).collect::<Vec<_>>(),
        nb.difference(&na).collect::<Vec<_>>()
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{} differs", name.display());
    }
}

#[test]
fn the_binary_checks_its_config_and_reports_failed_cases() {
    let dir = tempfile::tempdir().unwrap();
    let task_dir = phantoms(dir.path(), "LAS");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/smoke.toml");
    let bin = env!("CARGO_BIN_EXE_ct-preprocess");
    let with = |extra: &[&str]| {
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(&config);
        cmd.args(["--set", &format!("paths.data_dir={}", task_dir.display())]);
        cmd.args([
            "--set",
            &format!("paths.work_dir={}", dir.path().join("work").display()),
        ]);
        cmd.args(extra);
        cmd.output().unwrap()
    };
    let ok = with(&[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(dir.path().join("work/preprocessed/manifest.json").is_file());
    let again = with(&[]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 cases processed, 4 unchanged"));

    for (set, needle) in [
        ("preprocess.size=0", "preprocess.size: must be 8..=2048"),
        ("preprocess.window=[400, -1000]", "preprocess.window"),
        ("preprocess.crop_to=3", "preprocess.crop_to: unknown key"),
        (
            "preprocess.crop=\"heart\"",
            "preprocess.crop: unknown variant",
        ),
        (
            "preprocess.validation_cases=[\"lung_099\"]",
            "preprocess.validation_cases: case \"lung_099\"",
        ),
    ] {
        let bad = with(&["--set", set]);
        assert_eq!(bad.status.code(), Some(2), "{set}");
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(
            stderr.contains("smoke.toml") && stderr.contains(needle),
            "{stderr}"
        );
    }

    std::fs::write(task_dir.join("labelsTr/lung_004.nii.gz"), b"not a nifti").unwrap();
    let failed = with(&["--set", "preprocess.size=16"]);
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("error: 1 of 4 cases failed: lung_004"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}
