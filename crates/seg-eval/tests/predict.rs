//! Prediction in the CT's own geometry: header copied field by field, the same world-space result
//! whatever the file's axis order, any size and spacing, clear errors.

use std::path::{Path, PathBuf};

use ct_io::{Datatype, Reorientation, read_volume};
use ct_phantom::{SynthConfig, write_task};
use ct_preprocess::settings::{CropMode, PreprocessConfig};
use ct_preprocess::slices::{PlaneBox, resize_bilinear};
use seg_eval::predict::{PredictOptions, Predictor, plan, run_job};
use seg_model::{Model, ModelConfig};

/// A tiny untrained U-Net saved as a checkpoint trained on 32x32 slices (a [-1000, 400] HU
/// window), 3 slices cropped.
fn checkpoint(dir: &Path, in_channels: usize) -> PathBuf {
    let config = ModelConfig {
        in_channels,
        width: 4,
        depth: 2,
        init_seed: 5,
        ..ModelConfig::default()
    };
    let model = Model::new(&config, &candle_core::Device::Cpu).unwrap();
    let preprocess = PreprocessConfig {
        size: 32,
        crop_slices: 3,
        window: vec![-1000.0, 400.0],
        ..PreprocessConfig::default()
    };
    let path = dir.join(format!("checkpoint_{in_channels}"));
    model
        .save(
            &path,
            Some(serde_json::to_value(&preprocess).unwrap()),
            serde_json::Value::Null,
        )
        .unwrap();
    path
}

fn phantom(dir: &Path, orientation: &str) -> PathBuf {
    let root = dir.join(format!("task_{orientation}"));
    let config = SynthConfig {
        cases: 1,
        test_cases: 0,
        size: 40,
        slices: 20,
        seed: 3,
        orientation: orientation.to_string(),
    };
    write_task(&root, &config).unwrap();
    root.join("imagesTr/lung_001.nii.gz")
}

/// Options under which an untrained network marks some voxels and not others.
/// An untrained network's mask lies anywhere: the lung constraint would decide what is left, and
/// these tests are about geometry.
fn options(threshold: f32) -> PredictOptions {
    PredictOptions {
        threshold,
        batch_size: 4,
        postprocessing: seg_eval::components::PostProcessing::NONE,
        ..PredictOptions::default()
    }
}

/// Halfway between the lowest and highest probability of the slices the network saw.
fn middle_probability(path: &Path) -> f32 {
    let volume = read_volume(path).unwrap();
    let seen = volume.data.iter().copied().filter(|p| *p > 0.0);
    let (lo, hi) = seen.fold((1f32, 0f32), |(lo, hi), p| (lo.min(p), hi.max(p)));
    assert!(
        hi - lo > 1e-4,
        "the network's output is constant: {lo}..{hi}"
    );
    (lo + hi) / 2.0
}

#[test]
fn the_mask_carries_the_input_geometry_and_the_same_world_result_in_any_axis_order() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = checkpoint(dir.path(), 3);
    let mut canonical = Vec::new();
    for orientation in ["LAS", "LPS", "PIR"] {
        let input = phantom(dir.path(), orientation);
        let out = dir.path().join(format!("out_{orientation}"));
        let jobs = plan(&input, &out, true).unwrap();
        assert_eq!(jobs.len(), 1);
        let predictor =
            Predictor::load(&checkpoint, &candle_core::Device::Cpu, options(0.5)).unwrap();
        let first = run_job(&predictor, &jobs[0]).unwrap();
        let probabilities = jobs[0].probabilities.clone().unwrap();
        // Re-threshold in the middle, so the mask is neither empty nor full.
        let predictor = Predictor::load(
            &checkpoint,
            &candle_core::Device::Cpu,
            options(middle_probability(&probabilities)),
        )
        .unwrap();
        let report = run_job(&predictor, &jobs[0]).unwrap();
        assert_eq!(report.shape, first.shape);
        assert!(report.tumour_voxels > 0);

        let ct = read_volume(&input).unwrap();
        let mask = read_volume(&jobs[0].output).unwrap();
        assert_eq!(mask.datatype, Datatype::U8);
        assert_eq!(
            mask.geometry, ct.geometry,
            "{orientation}: header geometry differs"
        );
        let p = read_volume(&probabilities).unwrap();
        assert_eq!(p.datatype, Datatype::F32);
        assert_eq!(p.geometry, ct.geometry);
        // Three cropped slices at the inferior end are background.
        let r = Reorientation::to_canonical(&ct.geometry);
        let view = r.apply(p.data.view());
        assert!(
            view.slice(ndarray::s![.., .., 0..3])
                .iter()
                .all(|v| *v == 0.0)
        );
        assert!(
            view.slice(ndarray::s![.., .., 3..])
                .iter()
                .all(|v| *v > 0.0 && *v < 1.0)
        );
        canonical.push((orientation, r.apply(mask.data.view()), view));
    }
    let (_, mask, probabilities) = &canonical[0];
    for (orientation, other_mask, other_probabilities) in &canonical[1..] {
        let worst = probabilities
            .iter()
            .zip(other_probabilities.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-5,
            "{orientation}: probabilities differ by {worst} in world space"
        );
        let differing = mask
            .iter()
            .zip(other_mask.iter())
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            differing <= mask.len() / 1000,
            "{orientation}: {differing} mask voxels differ"
        );
    }
}

#[test]
fn a_folder_of_cts_gives_one_mask_per_ct_with_the_same_names() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("task");
    let config = SynthConfig {
        cases: 2,
        test_cases: 1,
        size: 32,
        slices: 16,
        seed: 9,
        orientation: "LAS".into(),
    };
    write_task(&task, &config).unwrap();
    let out = dir.path().join("masks");
    let jobs = plan(&task.join("imagesTr"), &out, false).unwrap();
    let predictor = Predictor::load(
        &checkpoint(dir.path(), 1),
        &candle_core::Device::Cpu,
        options(0.5),
    )
    .unwrap();
    for job in &jobs {
        run_job(&predictor, job).unwrap();
    }
    let names: Vec<String> = ct_io::task::nifti_files(&out)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["lung_001.nii.gz", "lung_002.nii.gz"]);
}

#[test]
#[ignore = "needs the real CTs in ../shared/data/real (cargo test -- --ignored)"]
fn real_ct_every_one_gets_a_mask_of_its_own_shape_and_geometry() {
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/real");
    assert!(
        real.join("lung1_image.nii.gz").is_file(),
        "{} is absent",
        real.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let predictor = Predictor::load(
        &checkpoint(dir.path(), 1),
        &candle_core::Device::Cpu,
        options(0.5),
    )
    .unwrap();
    let cts: Vec<PathBuf> = ct_io::task::nifti_files(&real)
        .unwrap()
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("label"))
        .collect();
    assert!(cts.len() >= 2, "{cts:?}");
    for ct_path in cts {
        let out = dir.path().join("mask.nii.gz");
        let jobs = plan(&ct_path, &out, false).unwrap();
        assert_eq!(jobs[0].output, out);
        let report = run_job(&predictor, &jobs[0]).unwrap();
        let mask = read_volume(&out).unwrap();
        let ct = read_volume(&ct_path).unwrap();
        assert_eq!(report.shape, ct.geometry.shape);
        assert_eq!(mask.geometry, ct.geometry, "{}", ct_path.display());
        assert!(mask.data.iter().all(|v| *v == 0.0 || *v == 1.0));
        if ct_path.ends_with("lung1_image.nii.gz") {
            assert_eq!(report.shape, [512, 512, 48]);
        }
    }
}

#[test]
fn errors_name_the_file_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Predictor::load(
        &dir.path().join("nope"),
        &candle_core::Device::Cpu,
        options(0.5),
    );
    let message = format!("{:#}", missing.err().unwrap());
    assert!(
        message.contains("nope") && message.contains("no checkpoint"),
        "{message}"
    );

    let predictor = Predictor::load(
        &checkpoint(dir.path(), 1),
        &candle_core::Device::Cpu,
        options(0.5),
    )
    .unwrap();
    // Not a CT.
    let bogus = dir.path().join("bogus.nii.gz");
    std::fs::write(&bogus, b"not a nifti file").unwrap();
    let jobs = plan(&bogus, &dir.path().join("out.nii.gz"), false).unwrap();
    let message = format!("{:#}", run_job(&predictor, &jobs[0]).err().unwrap());
    assert!(message.contains("bogus.nii.gz"), "{message}");
    // An output folder that cannot exist (its parent is a file).
    let input = phantom(dir.path(), "LAS");
    let blocked = bogus.join("mask.nii.gz");
    let jobs = plan(&input, &blocked, false).unwrap();
    let message = format!("{:#}", run_job(&predictor, &jobs[0]).err().unwrap());
    assert!(message.contains("bogus.nii.gz"), "{message}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A checkpoint whose U-Net passes the centre slice straight through (each 3x3 convolution copies
/// channel 0 of its input, the decoder reads only the skip connection) and whose head maps that
/// value v to the logit `scale` x v + `shift`: its output is a known function of its input.
fn pass_through_checkpoint(
    dir: &Path,
    preprocess: &PreprocessConfig,
    scale: f32,
    shift: f32,
) -> PathBuf {
    let config = ModelConfig {
        in_channels: 3,
        width: 4,
        depth: 2,
        ..ModelConfig::default()
    };
    let model = Model::new(&config, &candle_core::Device::Cpu).unwrap();
    for (name, var) in model.named_vars() {
        let dims = var.dims().to_vec();
        let mut values = vec![0f32; dims.iter().product()];
        let mut set = |at: [usize; 4], value: f32| {
            let index = at.iter().zip(&dims).fold(0, |i, (a, d)| i * d + a);
            values[index] = value;
        };
        match name.as_str() {
            "layer1.step.0.weight" => set([0, 1, 1, 1], 1.0), // the centre of the 3 slices
            "layer1.step.2.weight" | "layer3.step.2.weight" => set([0, 0, 1, 1], 1.0),
            "layer3.step.0.weight" => set([0, 8, 1, 1], 1.0), // skip channel 0, after 8 upsampled
            "layer4.weight" => set([0, 0, 0, 0], scale),
            "layer4.bias" => values[0] = shift,
            _ => {}
        }
        var.set(&candle_core::Tensor::from_vec(values, dims, &candle_core::Device::Cpu).unwrap())
            .unwrap();
    }
    let path = dir.join("pass_through");
    model
        .save(
            &path,
            Some(serde_json::to_value(preprocess).unwrap()),
            serde_json::Value::Null,
        )
        .unwrap();
    path
}

#[test]
fn the_mask_lands_on_the_voxels_it_was_found_on_in_a_non_square_asymmetric_ct() {
    use ct_io::geometry::affine_for_orientation;
    use ct_io::{Geometry, write_volume};
    let dir = tempfile::tempdir().unwrap();
    let preprocess = PreprocessConfig {
        size: 32,
        crop_slices: 0,
        window: vec![-1000.0, 400.0],
        ..PreprocessConfig::default()
    };
    // Tumour where the normalised CT is above 0.5: HU > -300.
    let checkpoint = pass_through_checkpoint(dir.path(), &preprocess, 20.0, -10.0);
    let predictor = Predictor::load(&checkpoint, &candle_core::Device::Cpu, options(0.5)).unwrap();
    let shape = [40, 26, 12];
    // A block near one corner of every axis: a flip of any axis, or a transposition, moves it
    // off itself.
    let (xs, ys, zs) = (3..11, 4..10, 1..5);
    let inside = |i: usize, j: usize, k: usize, grow: isize| {
        let near = |v: usize, r: &std::ops::Range<usize>| {
            v as isize >= r.start as isize - grow && (v as isize) < r.end as isize + grow
        };
        near(i, &xs) && near(j, &ys) && near(k, &zs)
    };
    let ct = ndarray::Array3::from_shape_fn(
        shape,
        |(i, j, k)| {
            if inside(i, j, k, 0) { 400i16 } else { -1000 }
        },
    );
    for orientation in ["LAS", "PIR", "ARS"] {
        let affine =
            affine_for_orientation(orientation, shape, [0.7, 0.9, 2.0], [5.0, -8.0, 40.0]).unwrap();
        let input = dir.path().join(format!("ct_{orientation}.nii.gz"));
        write_volume(&input, ct.view(), &Geometry::from_affine(shape, affine)).unwrap();
        let output = dir.path().join(format!("mask_{orientation}.nii.gz"));
        let jobs = plan(&input, &output, false).unwrap();
        run_job(&predictor, &jobs[0]).unwrap();
        let mask = read_volume(&output).unwrap();
        assert_eq!(mask.geometry.shape, shape);
        let mut wrong = Vec::new();
        for ((i, j, k), &v) in mask.data.indexed_iter() {
            // The resampling to 32² and back may move the block's edge by a voxel, no more.
            let must = inside(i, j, k, -1);
            let may = inside(i, j, k, 1);
            if (v > 0.0 && !may) || (v == 0.0 && must) {
                wrong.push((i, j, k, v));
            }
        }
        assert!(
            wrong.is_empty(),
            "{orientation}: wrong voxels {:?}",
            &wrong[..wrong.len().min(10)]
        );
    }
}

#[test]
fn the_predictor_feeds_the_network_what_ct_preprocess_wrote_for_training() {
    // The reference's crop, slices of the file's size; and the lungs' crop with each slice cut to
    // the lungs' box, resized from a box of another size.
    let plain = PreprocessConfig {
        size: 32,
        crop_slices: 3,
        window: vec![-1000.0, 400.0],
        validation_fraction: 0.0,
        ..PreprocessConfig::default()
    };
    let boxed = PreprocessConfig {
        crop: CropMode::Lungs,
        in_plane_crop: true,
        lung_margin_mm: 5.0,
        ..plain.clone()
    };
    for (preprocess, size) in [(plain, 32), (boxed, 96)] {
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("task");
        let synth = SynthConfig {
            cases: 1,
            test_cases: 0,
            size,
            slices: 20,
            seed: 8,
            orientation: "LPS".into(),
        };
        write_task(&task, &synth).unwrap();
        let cases = ct_io::read_task(&task).unwrap().training;
        let ids: Vec<String> = cases.iter().map(|c| c.id.clone()).collect();
        let split = ct_preprocess::split::SplitRecord::new(&ids, &preprocess).unwrap();
        let out = dir.path().join("preprocessed");
        ct_preprocess::preprocess(&cases, &task, &split, &preprocess, &out).unwrap();
        let manifest = ct_preprocess::manifest::Manifest::load(
            &out.join(ct_preprocess::manifest::MANIFEST_FILE),
        )
        .unwrap();
        let info = &manifest.cases[0].info;
        let plane_box = info.plane_box;
        let [width, height, _] = info.canonical_shape;
        assert_eq!(
            plane_box == PlaneBox::whole([width, height]),
            !preprocess.in_plane_crop,
            "{plane_box:?} of {width}x{height}"
        );
        let [box_width, box_height] = plane_box.extent();

        // The identity head: probability = sigmoid(input), so the logit of the output is the
        // input; the predictor resizes the probabilities from the box back to its own size.
        let checkpoint = pass_through_checkpoint(dir.path(), &preprocess, 1.0, 0.0);
        let predictor =
            Predictor::load(&checkpoint, &candle_core::Device::Cpu, options(0.5)).unwrap();
        let input = &cases[0].image;
        let output = dir.path().join("mask.nii.gz");
        let jobs = plan(input, &output, true).unwrap();
        run_job(&predictor, &jobs[0]).unwrap();
        let probabilities = read_volume(jobs[0].probabilities.as_ref().unwrap()).unwrap();
        let r = Reorientation::to_canonical(&probabilities.geometry);
        let canonical = r.apply(probabilities.data.view());
        assert!(!manifest.slices.is_empty());
        for slice in &manifest.slices {
            let stored: ndarray::Array2<f32> =
                ndarray_npy::read_npy(out.join(&slice.files.image)).unwrap();
            let sigmoid: Vec<f32> = stored.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
            let expected = resize_bilinear(&sigmoid, [32, 32], [box_height, box_width]);
            let k = slice.files.slice;
            let mut worst = 0f32;
            for x in 0..width {
                for y in 0..height {
                    let inside = (plane_box.x[0]..plane_box.x[1]).contains(&x)
                        && (plane_box.y[0]..plane_box.y[1]).contains(&y);
                    let want = if inside {
                        expected[(y - plane_box.y[0]) * box_width + x - plane_box.x[0]]
                    } else {
                        0.0
                    };
                    worst = worst.max((canonical[[x, y, k]] - want).abs());
                }
            }
            assert!(
                worst < 1e-6,
                "{:?} slice {k}: the network's input differs by {worst}",
                preprocess.crop
            );
        }
    }
}

#[test]
fn a_dicom_folder_of_two_series_gives_one_mask_per_series_in_its_geometry() {
    use ct_phantom::dicom::{Writing, write_series};
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = checkpoint(dir.path(), 3);
    let predictor = Predictor::load(&checkpoint, &candle_core::Device::Cpu, options(0.5)).unwrap();
    let config = SynthConfig {
        size: 40,
        slices: 12,
        orientation: "LPS".into(),
        ..SynthConfig::default()
    };
    let p = ct_phantom::generate_case(&config, 0);
    let export = dir.path().join("export");
    let uids = [
        "1.2.826.0.1.3680043.10.99.601",
        "1.2.826.0.1.3680043.10.99.602",
    ];
    for (n, uid) in uids.iter().enumerate() {
        let folder = export.join(format!("study{n}"));
        write_series(&folder, &p.ct, &p.geometry.affine, &Writing::new(uid)).unwrap();
    }
    let out = dir.path().join("masks");
    let jobs = plan(&export, &out, false).unwrap();
    assert_eq!(jobs.len(), 2);
    for (job, uid) in jobs.iter().zip(uids) {
        assert_eq!(job.output, out.join(format!("{uid}.nii.gz")));
        run_job(&predictor, job).unwrap();
        let ct = ct_io::read_ct(&export, Some(uid)).unwrap().volume;
        let mask = read_volume(&job.output).unwrap();
        assert_eq!(mask.geometry, ct.geometry);
    }
    // One output file for two series is refused; --series picks one.
    let single = dir.path().join("one.nii.gz");
    let err = plan(&export, &single, false).unwrap_err().to_string();
    assert!(
        err.contains("2 CT series here, so the output must be a folder"),
        "{err}"
    );
    let jobs = seg_eval::predict::plan_series(&export, &single, false, Some(uids[1])).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].output, single);
    run_job(&predictor, &jobs[0]).unwrap();
    let err = seg_eval::predict::plan_series(&export, &single, false, Some("1.2.3"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no CT series 1.2.3 here"), "{err}");
    // One file stands for its series.
    let file = std::fs::read_dir(export.join("study1"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let jobs = plan(&file, &out, false).unwrap();
    assert_eq!(jobs[0].output, out.join(format!("{}.nii.gz", uids[1])));
    // A folder without CTs says so.
    std::fs::create_dir_all(dir.path().join("nothing")).unwrap();
    let err = plan(&dir.path().join("nothing"), &out, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no NIfTI files (.nii, .nii.gz) and no DICOM series here"),
        "{err}"
    );
}

/// A DICOM series holding a bright block (HU 400 in -1000) at a known place, the pass-through
/// network that finds it, and both outputs of `seg-eval predict`: a NIfTI mask and a DICOM SEG.
struct SegCase {
    _dir: tempfile::TempDir,
    series: PathBuf,
    nifti: PathBuf,
    seg: PathBuf,
    uid: &'static str,
}

/// `enhanced`: the series as one multi-frame object.
fn seg_case(enhanced: bool) -> SegCase {
    use ct_phantom::dicom::{Writing, write_enhanced, write_series};
    let dir = tempfile::tempdir().unwrap();
    let preprocess = PreprocessConfig {
        size: 32,
        crop_slices: 0,
        window: vec![-1000.0, 400.0],
        ..PreprocessConfig::default()
    };
    let checkpoint = pass_through_checkpoint(dir.path(), &preprocess, 20.0, -10.0);
    let shape = [36, 30, 10];
    let ct = ndarray::Array3::from_shape_fn(shape, |(i, j, k)| {
        let inside = (4..12).contains(&i) && (6..14).contains(&j) && (2..6).contains(&k);
        if inside { 400i16 } else { -1000 }
    });
    let affine =
        ct_io::geometry::affine_for_orientation("LPS", shape, [0.8, 0.7, 2.5], [3.0, 5.0, -60.0])
            .unwrap();
    let uid = "1.2.826.0.1.3680043.10.99.801";
    let series = dir.path().join("series");
    if enhanced {
        write_enhanced(&series.join("ct.dcm"), &ct, &affine, &Writing::new(uid)).unwrap();
    } else {
        write_series(&series, &ct, &affine, &Writing::new(uid)).unwrap();
    }
    let (nifti, seg) = (dir.path().join("mask.nii.gz"), dir.path().join("mask.dcm"));
    for output in [&nifti, &seg] {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_seg-eval"))
            .args(["predict", "--no-lung-constraint", "--checkpoint"])
            .arg(&checkpoint)
            .arg("--input")
            .arg(&series)
            .arg("--output")
            .arg(output)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    SegCase {
        _dir: dir,
        series,
        nifti,
        seg,
        uid,
    }
}

#[test]
fn a_dicom_seg_holds_the_mask_over_its_source_slices() {
    for enhanced in [false, true] {
        check_seg(&seg_case(enhanced));
    }
}

fn check_seg(case: &SegCase) {
    use dicom_dictionary_std::tags;
    let mask = read_volume(&case.nifti).unwrap();
    let source = ct_io::read_ct(&case.series, None)
        .unwrap()
        .dicom
        .unwrap()
        .series;
    let seg = dicom_object::open_file(&case.seg).unwrap();
    let text = |object: &dicom_object::InMemDicomObject, tag| {
        object
            .element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_string()
    };
    let root: &dicom_object::InMemDicomObject = &seg;
    assert_eq!(
        text(root, tags::SOP_CLASS_UID),
        "1.2.840.10008.5.1.4.1.1.66.4"
    );
    assert_eq!(text(root, tags::MODALITY), "SEG");
    assert_eq!(text(root, tags::SEGMENTATION_TYPE), "BINARY");
    assert_eq!(text(root, tags::PATIENT_ID), "P001");
    assert_eq!(
        text(root, tags::STUDY_INSTANCE_UID),
        source.study_instance_uid
    );
    assert_eq!(
        text(root, tags::FRAME_OF_REFERENCE_UID),
        source.frame_of_reference_uid
    );
    assert_ne!(text(root, tags::SERIES_INSTANCE_UID), case.uid);
    assert!(text(root, tags::CONTENT_DESCRIPTION).contains("pass_through"));
    let segment = &root
        .element(tags::SEGMENT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    assert_eq!(text(segment, tags::SEGMENT_ALGORITHM_TYPE), "AUTOMATIC");
    let property = &segment
        .element(tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    assert_eq!(text(property, tags::CODE_VALUE), "108369006");

    // Frames only where the mask is, each over its source slice, bits back to back.
    let (columns, rows, slices) = mask.data.dim();
    let with_mask: Vec<usize> = (0..slices)
        .filter(|&k| {
            mask.data
                .index_axis(ndarray::Axis(2), k)
                .iter()
                .any(|v| *v > 0.0)
        })
        .collect();
    assert_eq!(with_mask, [2, 3, 4, 5]);
    let frames = root
        .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(frames.len(), with_mask.len());
    assert_eq!(
        text(root, tags::NUMBER_OF_FRAMES),
        with_mask.len().to_string()
    );
    let bits = root.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    for (n, (frame, &k)) in frames.iter().zip(&with_mask).enumerate() {
        let nested = |object: &dicom_object::InMemDicomObject, tag| {
            object.element(tag).unwrap().items().unwrap()[0].clone()
        };
        let reference = nested(
            &nested(frame, tags::DERIVATION_IMAGE_SEQUENCE),
            tags::SOURCE_IMAGE_SEQUENCE,
        );
        assert_eq!(
            text(&reference, tags::REFERENCED_SOP_INSTANCE_UID),
            source.slices[k].sop_instance_uid
        );
        let frame_number = reference
            .element_opt(tags::REFERENCED_FRAME_NUMBER)
            .unwrap()
            .map(|e| e.to_int::<u32>().unwrap());
        assert_eq!(frame_number, source.slices[k].frame_number);
        let position: Vec<f64> = nested(frame, tags::PLANE_POSITION_SEQUENCE)
            .element(tags::IMAGE_POSITION_PATIENT)
            .unwrap()
            .to_multi_float64()
            .unwrap();
        for (got, want) in position.iter().zip(source.slices[k].position) {
            assert!((got - want).abs() < 1e-4, "frame {n}: {position:?}");
        }
        for j in 0..rows {
            for i in 0..columns {
                let bit = n * rows * columns + j * columns + i;
                let set = bits[bit / 8] >> (bit % 8) & 1 == 1;
                assert_eq!(
                    set,
                    mask.data[[i, j, k]] > 0.0,
                    "frame {n} pixel ({i}, {j})"
                );
            }
        }
    }
}

#[test]
fn a_tumour_free_ct_gets_a_seg_with_one_empty_frame() {
    use ct_phantom::dicom::{Writing, write_series};
    use dicom_dictionary_std::tags;
    let dir = tempfile::tempdir().unwrap();
    let preprocess = PreprocessConfig {
        size: 32,
        crop_slices: 0,
        ..PreprocessConfig::default()
    };
    // The pass-through network finds nothing in uniform air.
    let checkpoint = pass_through_checkpoint(dir.path(), &preprocess, 20.0, -10.0);
    let shape = [32, 32, 6];
    let ct = ndarray::Array3::from_elem(shape, -1000i16);
    let affine =
        ct_io::geometry::affine_for_orientation("LPS", shape, [1.0, 1.0, 2.0], [0.0; 3]).unwrap();
    let series = dir.path().join("series");
    write_series(
        &series,
        &ct,
        &affine,
        &Writing::new("1.2.826.0.1.3680043.10.99.850"),
    )
    .unwrap();
    let seg = dir.path().join("empty.dcm");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_seg-eval"))
        .args(["predict", "--no-lung-constraint", "--checkpoint"])
        .arg(&checkpoint)
        .arg("--input")
        .arg(&series)
        .arg("--output")
        .arg(&seg)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let object = dicom_object::open_file(&seg).unwrap();
    let frames = object
        .element(tags::NUMBER_OF_FRAMES)
        .unwrap()
        .to_int::<u32>()
        .unwrap();
    assert_eq!(frames, 1);
    let bits = object
        .element(tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap();
    assert!(bits.iter().all(|b| *b == 0));
}

#[test]
fn a_dicom_seg_is_refused_for_a_nifti_input() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = checkpoint(dir.path(), 3);
    let input = phantom(dir.path(), "LAS");
    let output = dir.path().join("mask.dcm");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_seg-eval"))
        .args(["predict", "--checkpoint"])
        .arg(&checkpoint)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("a DICOM SEG can only be written for a DICOM input"),
        "{stderr}"
    );
    assert!(!output.exists());
}

#[test]
#[ignore = "needs dciodvfy (Debian's dicom3tools; .ci/run installs it) (cargo test -- --ignored)"]
fn dciodvfy_finds_no_error_in_our_dicom_seg() {
    for enhanced in [false, true] {
        dciodvfy(&seg_case(enhanced));
    }
}

fn dciodvfy(case: &SegCase) {
    let run = std::process::Command::new("dciodvfy")
        .arg(&case.seg)
        .output()
        .expect("dciodvfy is installed");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(errors.is_empty(), "{report}");
}

#[test]
#[ignore = "needs highdicom: LUNGSEG_PYTHON (.ci/run installs it) (cargo test -- --ignored)"]
fn highdicom_reads_our_dicom_seg_as_the_nifti_mask() {
    let case = seg_case(false);
    let python = std::env::var("LUNGSEG_PYTHON").unwrap_or_else(|_| "python3".into());
    // highdicom places each frame by its own geometry into the source series' grid; the result,
    // read as (slice, row, column) over the source files sorted as highdicom sorts them, is
    // compared with our NIfTI mask through nibabel-free world coordinates.
    const CHECK: &str = r#"
import sys, glob, json
import numpy as np, pydicom, highdicom as hd
seg = hd.seg.segread(sys.argv[1])
sources = [pydicom.dcmread(f) for f in glob.glob(sys.argv[2] + "/*")]
uids = [s.SOPInstanceUID for s in sources]
volume = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1], assert_missing_frames_are_empty=True)
out = {}
for s, plane in zip(sources, volume[..., 0]):
    out[s.SOPInstanceUID] = [int(v) for v in np.argwhere(plane > 0).ravel()]
print(json.dumps(out))
"#;
    let run = std::process::Command::new(&python)
        .args(["-c", CHECK])
        .arg(&case.seg)
        .arg(&case.series)
        .output()
        .expect("a Python with highdicom");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let theirs: std::collections::BTreeMap<String, Vec<usize>> =
        serde_json::from_slice(&run.stdout).unwrap();
    let mask = read_volume(&case.nifti).unwrap();
    let source = ct_io::read_ct(&case.series, None)
        .unwrap()
        .dicom
        .unwrap()
        .series;
    let (columns, rows, _) = mask.data.dim();
    for (k, slice) in source.slices.iter().enumerate() {
        let ours: Vec<usize> = (0..rows)
            .flat_map(|j| (0..columns).map(move |i| (i, j)))
            .filter(|&(i, j)| mask.data[[i, j, k]] > 0.0)
            .flat_map(|(i, j)| [j, i])
            .collect();
        assert_eq!(theirs[&slice.sop_instance_uid], ours, "slice {k}");
    }
}
