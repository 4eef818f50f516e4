//! seg-data: the dataset over ct-preprocess's output, augmentation, sampling and batches.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use ct_io::read_task;
use ct_phantom::{SynthConfig, write_task};
use ct_preprocess::settings::PreprocessConfig;
use ct_preprocess::split::{Split, SplitRecord};
use ndarray::{Array2, Array3, s};
use ndarray_npy::read_npy;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use seg_data::augment::{Appearance, Transform};
use seg_data::sampler::lesion_shares;
use seg_data::{DataConfig, Loader, Sample, SliceDataset, WeightedSampler};

/// A preprocessed dataset of 4 small phantoms (32x32 slices), one case held out.
fn dataset_dir(dir: &Path) -> PathBuf {
    let task_dir = dir.join("task");
    let synth = SynthConfig {
        cases: 4,
        test_cases: 0,
        size: 48,
        slices: 24,
        seed: 5,
        orientation: "LAS".into(),
    };
    write_task(&task_dir, &synth).unwrap();
    let task = read_task(&task_dir).unwrap();
    let settings = PreprocessConfig {
        size: 32,
        crop_slices: 2,
        validation_fraction: 0.25,
        ..PreprocessConfig::default()
    };
    let ids: Vec<String> = task.training.iter().map(|c| c.id.clone()).collect();
    let split = SplitRecord::new(&ids, &settings).unwrap();
    let out = dir.join("preprocessed");
    ct_preprocess::preprocess(&task.training, &task_dir, &split, &settings, &out).unwrap();
    out
}

fn square_sample(size: usize, air: f32) -> Sample {
    let mut image = Array3::from_elem((1, size, size), air);
    let mut mask = Array2::zeros((size, size));
    let (a, b) = (size / 2 - 12, size / 2 + 12);
    image.slice_mut(s![.., a..b, a..b]).fill(1.0);
    mask.slice_mut(s![a..b, a..b]).fill(1);
    Sample { image, mask }
}

#[test]
fn the_identity_transform_returns_the_input_exactly() {
    let sample = square_sample(64, -0.33);
    let mut noisy = sample.clone();
    noisy
        .image
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v += (i % 7) as f32 * 0.01);
    assert_eq!(Transform::identity().apply(&noisy, -0.33), noisy);
}

#[test]
fn the_mirrors_are_the_predictors_test_time_mirrors_each_drawn_half_the_time() {
    // Slices are [row = front-back, column = left-right], as the predictor mirrors them.
    let size = 16;
    let mut image = Array3::zeros((1, size, size));
    image[[0, 2, 5]] = 1.0;
    let sample = Sample {
        mask: image.slice(s![0, .., ..]).mapv(|v: f32| v as u8),
        image,
    };
    let mirrored = |lr: bool, ap: bool| {
        let t = Transform {
            flip_lr: lr,
            flip_ap: ap,
            ..Transform::identity()
        };
        let out = t.apply(&sample, 0.0);
        let at: Vec<(usize, usize)> = out
            .mask
            .indexed_iter()
            .filter(|(_, m)| **m == 1)
            .map(|(p, _)| p)
            .collect();
        assert_eq!(out.image[[0, at[0].0, at[0].1]], 1.0);
        at
    };
    assert_eq!(mirrored(true, false), [(2, size - 1 - 5)]);
    assert_eq!(mirrored(false, true), [(size - 1 - 2, 5)]);
    assert_eq!(mirrored(true, true), [(size - 1 - 2, size - 1 - 5)]);
    let config = DataConfig {
        flip_lr: true,
        flip_ap: true,
        ..DataConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut counts = [0usize; 4];
    for _ in 0..400 {
        let t = Transform::sample(&config, size, &mut rng);
        counts[usize::from(t.flip_lr) + 2 * usize::from(t.flip_ap)] += 1;
    }
    assert!(counts.iter().all(|&n| (70..130).contains(&n)), "{counts:?}");
}

#[test]
fn image_and_mask_stay_aligned_under_any_sampled_transform() {
    let config = DataConfig {
        flip_lr: true,
        flip_ap: true,
        ..DataConfig::default()
    };
    let sample = square_sample(64, 0.0);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut moved = 0;
    for _ in 0..200 {
        let t = Transform::sample(&config, 64, &mut rng);
        let out = t.apply(&sample, 0.0);
        let image_square = out.image.slice(s![0, .., ..]).mapv(|v| v > 0.5);
        let mask_square = out.mask.mapv(|m| m == 1);
        let inter = image_square
            .iter()
            .zip(&mask_square)
            .filter(|(a, b)| **a && **b)
            .count();
        let union = image_square
            .iter()
            .zip(&mask_square)
            .filter(|(a, b)| **a || **b)
            .count();
        if union == 0 {
            continue; // moved out of view entirely
        }
        let iou = inter as f64 / union as f64;
        assert!(iou >= 0.95, "IoU {iou} for {t:?}");
        moved += usize::from(out.mask != sample.mask);
    }
    assert!(moved > 190, "transforms actually move things ({moved})");
}

#[test]
fn outside_the_source_is_air_and_background() {
    let air = -1024.0 / 3071.0;
    let sample = Sample {
        image: Array3::from_elem((3, 32, 32), 0.5),
        mask: Array2::ones((32, 32)),
    };
    let mut away = Transform::identity();
    away.shift = [100.0, 0.0];
    let out = away.apply(&sample, air);
    assert!(out.image.iter().all(|v| *v == air));
    assert!(out.mask.iter().all(|m| *m == 0));
    // A rotation leaves the corners empty: air there, not 0 (water).
    let config = DataConfig {
        rotation_deg: 45.0,
        scale: [1.0, 1.0],
        translation: 0.0,
        elastic_alpha: [0.0, 0.0],
        ..DataConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let rotated = loop {
        let t = Transform::sample(&config, 32, &mut rng);
        let angle = t.linear[0][1].atan2(t.linear[0][0]).to_degrees().abs();
        if angle > 20.0 {
            break t.apply(&sample, air);
        }
    };
    assert_eq!(rotated.image[[0, 0, 0]], air);
    assert_eq!(rotated.mask[[0, 0]], 0);
    assert_eq!(rotated.image[[1, 16, 16]], 0.5);
}

/// Mean and standard deviation of a channel.
fn moments(image: &Array3<f32>, channel: usize) -> (f64, f64) {
    let plane = image.slice(s![channel, .., ..]);
    let n = plane.len() as f64;
    let mean = plane.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = plane
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

#[test]
fn appearance_changes_the_image_as_each_setting_says_and_never_the_mask() {
    let sample = square_sample(64, 0.0);
    let none = Appearance::none();
    let mut same = sample.clone();
    none.apply(&mut same);
    assert_eq!(same, sample, "no change of appearance changes nothing");

    // Noise: the added noise has the asked standard deviation, the same for the same draw.
    let config = DataConfig {
        noise_sd: [0.05, 0.05],
        ..DataConfig::default()
    };
    let flat = Sample {
        image: Array3::from_elem((1, 64, 64), 0.3),
        mask: Array2::zeros((64, 64)),
    };
    let noise = Appearance::sample(&config, &mut ChaCha8Rng::seed_from_u64(1));
    let (mut a, mut b) = (flat.clone(), flat.clone());
    noise.apply(&mut a);
    noise.apply(&mut b);
    assert_eq!(a, b);
    let (mean, sd) = moments(&a.image, 0);
    assert!((mean - 0.3).abs() < 0.005, "noise has mean 0 ({mean})");
    assert!((sd - 0.05).abs() < 0.005, "noise sd {sd}, asked 0.05");

    // Gamma: the image's own range is kept, a gamma above 1 darkens the middle tones.
    let mut ramp = Sample {
        image: Array3::from_shape_fn((1, 8, 8), |(_, r, c)| (r * 8 + c) as f32 / 63.0),
        mask: Array2::zeros((8, 8)),
    };
    let original = ramp.clone();
    let gamma = Appearance {
        gamma: 2.0,
        ..Appearance::none()
    };
    gamma.apply(&mut ramp);
    assert_eq!(ramp.image[[0, 0, 0]], 0.0);
    assert_eq!(ramp.image[[0, 7, 7]], 1.0);
    assert!((ramp.image[[0, 4, 0]] - (32.0f32 / 63.0).powi(2)).abs() < 1e-6);
    assert!(ramp.image.iter().zip(&original.image).all(|(g, o)| g <= o));

    // Blur and a coarser resolution keep the mean and take the square's sharp edge away.
    for appearance in [
        Appearance {
            blur_sigma: 2.0,
            ..Appearance::none()
        },
        Appearance {
            low_resolution: 4.0,
            ..Appearance::none()
        },
    ] {
        let mut soft = sample.clone();
        appearance.apply(&mut soft);
        assert_eq!(soft.mask, sample.mask, "{appearance:?} leaves the mask");
        let (mean, _) = moments(&soft.image, 0);
        let (original_mean, _) = moments(&sample.image, 0);
        assert!(
            (mean - original_mean).abs() < 0.01,
            "{appearance:?}: mean {mean} vs {original_mean}"
        );
        let edge = f64::from(soft.image[[0, 20, 32]] - soft.image[[0, 19, 32]]);
        assert!(edge.abs() < 0.6, "{appearance:?}: edge step {edge}");
    }

    // Thicker slices: each channel takes in its neighbours, the end ones their one neighbour.
    let mut stack = Sample {
        image: Array3::from_shape_fn((3, 4, 4), |(c, _, _)| c as f32),
        mask: Array2::zeros((4, 4)),
    };
    let thick = Appearance {
        slice_blend: 0.5,
        ..Appearance::none()
    };
    thick.apply(&mut stack);
    assert_eq!(stack.image[[0, 0, 0]], 0.25);
    assert_eq!(stack.image[[1, 0, 0]], 1.0);
    assert_eq!(stack.image[[2, 0, 0]], 1.75);
}

#[test]
fn sampler_frequencies_follow_the_weights() {
    let sampler = WeightedSampler::new(vec![1.0, 2.0, 3.0, 4.0, 0.0], 200_000).unwrap();
    let draws = sampler.epoch(9, 0);
    let mut counts = [0usize; 5];
    draws.iter().for_each(|&i| counts[i] += 1);
    for (i, w) in [1.0, 2.0, 3.0, 4.0, 0.0].iter().enumerate() {
        let observed = counts[i] as f64 / draws.len() as f64;
        assert!((observed - w / 10.0).abs() < 0.005, "item {i}: {observed}");
    }
    assert_eq!(
        sampler.epoch(9, 0),
        draws,
        "same seed and epoch, same draws"
    );
    assert_ne!(sampler.epoch(9, 1), draws);
}

#[test]
fn the_tumour_fraction_reaches_its_target() {
    let has_tumour: Vec<bool> = (0..200).map(|i| i % 10 == 0).collect();
    for target in [0.5, 0.3] {
        let sampler = WeightedSampler::for_tumour_fraction(&has_tumour, target, 50_000).unwrap();
        let draws = sampler.epoch(1, 0);
        let fraction = draws.iter().filter(|&&i| has_tumour[i]).count() as f64 / draws.len() as f64;
        assert!((fraction - target).abs() < 0.01, "{target}: {fraction}");
    }
    // The reference's weights at 0.5: #empty / #tumour for tumour slices, 1 for the others.
    let reference = WeightedSampler::for_tumour_fraction(&has_tumour, 0.5, 10).unwrap();
    assert_eq!(reference.weights()[0], 180.0 / 20.0);
    assert_eq!(reference.weights()[1], 1.0);
    let uniform = WeightedSampler::for_tumour_fraction(&has_tumour, 0.0, 10).unwrap();
    assert!(uniform.weights().iter().all(|w| *w == 1.0));
}

#[test]
fn lesion_balance_shares_the_tumour_draws_per_lesion() {
    // Case 0: a 6-slice mass (slices 2-7) and a 1-slice nodule on its last slice (11); case 1: a
    // 3-slice lesion on its slices 0-2, which the nodule on case 0's last slice must not run into.
    let mut slices: Vec<(usize, usize, bool)> = (0..12)
        .map(|z| (0, z, (2..8).contains(&z) || z == 11))
        .collect();
    slices.extend((0..6).map(|z| (1, z, z < 3)));
    slices.push((2, 0, false));
    let lesions: [&[usize]; 3] = [&[2, 3, 4, 5, 6, 7], &[11], &[12, 13, 14]];
    let is_tumour = |i: usize| slices[i].2;
    let per_slice = lesion_shares(&slices, 0.0);
    assert!((0..slices.len()).all(|i| per_slice[i] == f64::from(u8::from(is_tumour(i)))));
    // The weights at balance 0 are the reference's, bit for bit.
    let has_tumour: Vec<bool> = slices.iter().map(|s| s.2).collect();
    assert_eq!(
        WeightedSampler::for_tumour_shares(&per_slice, 0.5, 10)
            .unwrap()
            .weights(),
        WeightedSampler::for_tumour_fraction(&has_tumour, 0.5, 10)
            .unwrap()
            .weights()
    );
    for balance in [0.5, 1.0] {
        let shares = lesion_shares(&slices, balance);
        let sampler = WeightedSampler::for_tumour_shares(&shares, 0.5, 200_000).unwrap();
        let draws = sampler.epoch(3, 0);
        let fraction = draws.iter().filter(|&&i| is_tumour(i)).count() as f64 / draws.len() as f64;
        assert!(
            (fraction - 0.5).abs() < 0.01,
            "{balance}: tumour fraction {fraction}"
        );
        // Each lesion draws in proportion to length^(1 - balance).
        let drawn = |lesion: &[usize]| {
            draws.iter().filter(|i| lesion.contains(i)).count() as f64 / draws.len() as f64
        };
        let expected: Vec<f64> = lesions
            .iter()
            .map(|l| (l.len() as f64).powf(1.0 - balance))
            .collect();
        let total: f64 = expected.iter().sum();
        for (lesion, e) in lesions.iter().zip(&expected) {
            let want = 0.5 * e / total;
            let got = drawn(lesion);
            assert!(
                (got - want).abs() < 0.005,
                "{balance} {lesion:?}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn batches_are_the_same_whatever_the_number_of_workers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dataset_dir(dir.path());
    let dataset = Arc::new(SliceDataset::open(&root, Split::Train, None, 1).unwrap());
    let batches = |workers: usize, epoch: u64| -> Vec<(Vec<f32>, Vec<f32>, Vec<usize>)> {
        let config = DataConfig {
            workers,
            prefetch: 2,
            ..DataConfig::default()
        };
        let loader = Loader::new(Arc::clone(&dataset), &config, Device::Cpu).unwrap();
        let sampler = loader.sampler().unwrap();
        loader
            .train_epoch(&sampler, epoch, 4)
            .map(|b| {
                let b = b.unwrap();
                assert_eq!(b.images.dims(), [4, 3, 32, 32]);
                assert_eq!(b.masks.dims(), [4, 1, 32, 32]);
                (
                    b.images.flatten_all().unwrap().to_vec1().unwrap(),
                    b.masks.flatten_all().unwrap().to_vec1().unwrap(),
                    b.indices,
                )
            })
            .collect()
    };
    let one = batches(1, 0);
    assert_eq!(one.len(), dataset.len() / 4);
    assert_eq!(one, batches(2, 0));
    assert_ne!(one, batches(2, 1), "another epoch, other batches");
    // Oversampling: about half the sampled slices have tumour.
    let items = dataset.items();
    let drawn: Vec<usize> = batches(2, 3).into_iter().flat_map(|b| b.2).collect();
    let with_tumour = drawn
        .iter()
        .filter(|&&i| items[i].tumour_voxels > 0)
        .count();
    assert!(
        with_tumour * 4 > drawn.len(),
        "{with_tumour} of {}",
        drawn.len()
    );
}

#[test]
fn an_epoch_continued_at_batch_k_gives_the_batches_after_k() {
    let dir = tempfile::tempdir().unwrap();
    let root = dataset_dir(dir.path());
    let dataset = Arc::new(SliceDataset::open(&root, Split::Train, None, 1).unwrap());
    // Augmented patches: every sample's draw depends on its place in the epoch.
    let config = DataConfig {
        augment: true,
        patch_size: 16,
        ..DataConfig::default()
    };
    let loader = Loader::new(Arc::clone(&dataset), &config, Device::Cpu).unwrap();
    let sampler = loader.sampler().unwrap();
    let values = |batches: seg_data::loader::Batches| -> Vec<(Vec<f32>, Vec<usize>)> {
        batches
            .map(|b| {
                let b = b.unwrap();
                (
                    b.images.flatten_all().unwrap().to_vec1().unwrap(),
                    b.indices,
                )
            })
            .collect()
    };
    let whole = values(loader.train_epoch(&sampler, 2, 4));
    assert!(whole.len() > 3);
    let continued = values(loader.train_epoch_from(&sampler, 2, 4, 3));
    assert_eq!(continued, whole[3..]);
}

#[test]
fn patches_are_cut_from_the_slice_and_hold_tumour_when_it_has_some() {
    let dir = tempfile::tempdir().unwrap();
    let root = dataset_dir(dir.path());
    let dataset = SliceDataset::open(&root, Split::Train, None, 0).unwrap();
    let config = DataConfig {
        augment: false,
        patch_size: 16,
        ..DataConfig::default()
    };
    let mut checked_tumour = 0;
    for index in 0..dataset.len() {
        let whole = dataset.load(index).unwrap();
        let seed = 1000 + index as u64;
        let part = seg_data::loader::prepare(&dataset, &config, index, Some(seed)).unwrap();
        assert_eq!(part.image.dim(), (1, 16, 16));
        assert_eq!(
            part,
            seg_data::loader::prepare(&dataset, &config, index, Some(seed)).unwrap()
        );
        // The patch is a window of the slice: find where it sits.
        let found = (0..=16)
            .flat_map(|r| (0..=16).map(move |c| (r, c)))
            .any(|(r, c)| {
                whole.image.slice(s![.., r..r + 16, c..c + 16]) == part.image
                    && whole.mask.slice(s![r..r + 16, c..c + 16]) == part.mask
            });
        assert!(
            found,
            "slice {index}: the patch is not a window of the slice"
        );
        if whole.mask.iter().any(|m| *m != 0) {
            assert!(
                part.mask.iter().any(|m| *m != 0),
                "slice {index}: the patch misses the tumour"
            );
            checked_tumour += 1;
        }
    }
    assert!(checked_tumour > 0);
    // Batches of patches; validation stays whole.
    let dataset = Arc::new(dataset);
    let loader = Loader::new(Arc::clone(&dataset), &config, Device::Cpu).unwrap();
    let batch = loader
        .train_epoch(&loader.sampler().unwrap(), 0, 4)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(batch.images.dims(), [4, 1, 16, 16]);
    assert_eq!(batch.masks.dims(), [4, 1, 16, 16]);
    let batch = loader.in_order(4).next().unwrap().unwrap();
    assert_eq!(batch.images.dims(), [4, 1, 32, 32]);
}

#[test]
fn validation_batches_cover_every_slice_unaugmented_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dataset_dir(dir.path());
    let dataset = Arc::new(SliceDataset::open(&root, Split::Validation, None, 0).unwrap());
    let loader = Loader::new(Arc::clone(&dataset), &DataConfig::default(), Device::Cpu).unwrap();
    let batches: Vec<_> = loader.in_order(5).map(|b| b.unwrap()).collect();
    let indices: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(indices, (0..dataset.len()).collect::<Vec<_>>());
    let first = dataset.load(0).unwrap();
    let stored: Vec<f32> = batches[0]
        .images
        .get(0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(stored, first.image.iter().copied().collect::<Vec<_>>());
}

#[test]
fn context_channels_come_from_the_same_case_and_clamp_at_its_ends() {
    let dir = tempfile::tempdir().unwrap();
    let root = dataset_dir(dir.path());
    let dataset = SliceDataset::open(&root, Split::Train, None, 2).unwrap();
    assert_eq!(dataset.channels(), 5);
    let items = dataset.items();
    let file = |case: &str, slice: usize| -> Array2<f32> {
        read_npy(root.join(format!("cases/{case}/image_{slice:04}.npy"))).unwrap()
    };
    let ids: Vec<&str> = dataset.case_ids().collect();
    for (index, item) in items.iter().enumerate() {
        let case = ids[item.case];
        let same_case: Vec<usize> = items
            .iter()
            .filter(|i| i.case == item.case)
            .map(|i| i.slice)
            .collect();
        let (first, last) = (same_case[0], *same_case.last().unwrap());
        let sample = dataset.load(index).unwrap();
        for (channel, offset) in (-2i64..=2).enumerate() {
            let wanted = (item.slice as i64 + offset).clamp(first as i64, last as i64) as usize;
            assert_eq!(
                sample.image.slice(s![channel, .., ..]),
                file(case, wanted),
                "{case} {}",
                item.slice
            );
        }
    }
}

#[test]
fn missing_or_malformed_slices_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dataset_dir(dir.path());
    let dataset = SliceDataset::open(&root, Split::Train, None, 0).unwrap();
    let index = 3;
    let item = &dataset.items()[index];
    let case = dataset.case_ids().nth(item.case).unwrap().to_string();
    let name = format!("{case}/image_{:04}.npy", item.slice);
    let victim = root.join("cases").join(&name);
    std::fs::write(&victim, b"garbage").unwrap();
    let err = format!("{:#}", dataset.load(index).unwrap_err());
    assert!(err.contains(&name), "{err}");

    ndarray_npy::write_npy(&victim, &Array2::<f32>::zeros((16, 16))).unwrap();
    let err = format!("{:#}", dataset.load(index).unwrap_err());
    assert!(err.contains(&name) && err.contains("32x32"), "{err}");

    std::fs::remove_file(&victim).unwrap();
    let err = SliceDataset::open(&root, Split::Train, None, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(&name) && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn bad_data_settings_are_refused_by_key() {
    use ct_io::config::Config;
    for (set, key) in [
        ("data.scale=[1.2, 0.9]", "data.scale"),
        ("data.tumour_fraction=1.0", "data.tumour_fraction"),
        ("data.lesion_balance=1.5", "data.lesion_balance"),
        ("data.prefetch=0", "data.prefetch"),
        ("data.elastic_sigma=[0.0, 8.0]", "data.elastic_sigma"),
        ("data.gamma=[0.0, 1.5]", "data.gamma"),
        ("data.low_resolution=[0.5, 1.0]", "data.low_resolution"),
        ("data.noise_sd=[0.1, 0.0]", "data.noise_sd"),
        ("data.slice_blend=[0.0, 2.0]", "data.slice_blend"),
        ("data.blur_sigma=[-1.0, 1.0]", "data.blur_sigma"),
        ("data.contxt=1", "data.contxt"),
    ] {
        let config =
            Config::parse("", Path::new("t.toml"), Path::new("."), &[set.to_string()]).unwrap();
        let err = config.section::<DataConfig>().unwrap_err().to_string();
        assert!(err.contains(key), "{set}: {err}");
    }
}

#[test]
fn the_shipped_configs_have_valid_preprocess_and_data_sections() {
    use ct_io::config::Config;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    for name in ["default.toml", "msd.toml", "smoke.toml"] {
        let config = Config::load(&dir.join(name), &[]).unwrap();
        let preprocess: PreprocessConfig = config.section().unwrap();
        let data: DataConfig = config.section().unwrap();
        if name == "msd.toml" {
            assert_eq!(
                preprocess,
                PreprocessConfig::default(),
                "msd.toml keeps the reference settings"
            );
            assert_eq!(data.tumour_fraction, 0.5);
        }
    }
}
