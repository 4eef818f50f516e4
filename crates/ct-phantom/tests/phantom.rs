//! Synthetic phantoms: deterministic, anatomically placed in world space, tumours inside lungs,
//! plausible Hounsfield units, a readable MSD task folder.

use ct_io::{Reorientation, read_task, read_volume};
use ct_phantom::{Field, Phantom, SynthConfig, case_field, generate_case, write_task};
use ndarray::Array3;

fn small(seed: u64, orientation: &str) -> SynthConfig {
    SynthConfig {
        cases: 4,
        test_cases: 1,
        size: 96,
        slices: 48,
        seed,
        orientation: orientation.to_string(),
    }
}

fn world_of(p: &Phantom, ijk: (usize, usize, usize)) -> [f64; 3] {
    p.geometry.world([ijk.0 as f64, ijk.1 as f64, ijk.2 as f64])
}

#[test]
fn the_same_seed_gives_the_same_case_and_another_seed_another() {
    let a = generate_case(&small(5, "LAS"), 2);
    let b = generate_case(&small(5, "LAS"), 2);
    assert_eq!(a.ct, b.ct);
    assert_eq!(a.label, b.label);
    assert_eq!(a.geometry, b.geometry);
    let c = generate_case(&small(6, "LAS"), 2);
    assert_ne!(a.ct, c.ct);
    let d = generate_case(&small(5, "LAS"), 3);
    assert_ne!(a.ct, d.ct);
}

#[test]
fn axis_order_changes_the_files_not_the_patient() {
    for (index, other) in [(0, "LPS"), (1, "RAS"), (2, "PIR")] {
        let las = generate_case(&small(11, "LAS"), index);
        let alt = generate_case(&small(11, other), index);
        assert_eq!(las.geometry.orientation(), "LAS");
        assert_eq!(alt.geometry.orientation(), other);
        let canonical = |p: &Phantom| {
            let r = Reorientation::to_canonical(&p.geometry);
            (
                r.apply(p.ct.view()),
                r.apply(p.label.view()),
                r.canonical_geometry(&p.geometry),
            )
        };
        let (ct_a, label_a, g_a) = canonical(&las);
        let (ct_b, label_b, g_b) = canonical(&alt);
        assert_eq!(ct_a, ct_b, "{other}");
        assert_eq!(label_a, label_b, "{other}");
        assert!(g_a.affine_difference(&g_b) < 1e-3, "{other}");
    }
}

#[test]
fn tumours_lie_inside_lungs_and_hounsfield_units_are_plausible() {
    let config = small(21, "LAS");
    let mut tumour_counts = Vec::new();
    let mut diameters = Vec::new();
    let mut touching = 0;
    let mut tumour_hu = Vec::new();
    for index in 0..16 {
        let p = generate_case(&config, index);
        for (t, l) in p.label.iter().zip(p.lung.iter()) {
            assert!(*t <= 1 && *l <= 1);
            assert!(
                *t == 0 || *l == 1,
                "case {index}: tumour voxel outside the lung"
            );
        }
        assert!(p.ct.iter().all(|v| (-1024..=3071).contains(v)));
        let mean = |pick: &dyn Fn(usize) -> bool| {
            let (mut sum, mut n) = (0.0, 0usize);
            for (k, v) in p.ct.iter().enumerate() {
                if pick(k) {
                    sum += f64::from(*v);
                    n += 1;
                }
            }
            (n > 0).then(|| sum / n as f64)
        };
        let lung: Vec<u8> = p.lung.iter().copied().collect();
        let label: Vec<u8> = p.label.iter().copied().collect();
        let lung_hu = mean(&|k| lung[k] == 1 && label[k] == 0).unwrap();
        assert!(
            (-900.0..=-700.0).contains(&lung_hu),
            "case {index}: lung {lung_hu}"
        );
        tumour_hu.extend(
            p.ct.iter()
                .zip(&label)
                .filter(|(_, l)| **l == 1)
                .map(|(v, _)| *v),
        );
        let corner = p.ct[[0, 0, 0]];
        assert!(corner < -900, "case {index}: air corner {corner}");
        let max = *p.ct.iter().max().unwrap();
        assert!(max > 500, "case {index}: no bone ({max})");
        tumour_counts.push(p.tumours.len());
        diameters.extend(p.tumours.iter().map(|t| t.diameter_mm));
        touching += usize::from(touches_lung_edge(&p.label, &p.lung));
    }
    // Soft tissue, though the scanner's blur mixes small tumours' edges with lung (these voxels
    // are 3.5 mm).
    tumour_hu.sort_unstable();
    let median = tumour_hu[tumour_hu.len() / 2];
    assert!((-100..=120).contains(&median), "tumour median {median} HU");
    assert!(tumour_counts.contains(&0), "{tumour_counts:?}");
    assert!(tumour_counts.iter().any(|&n| n >= 2), "{tumour_counts:?}");
    assert!(tumour_counts.iter().all(|&n| n <= 3));
    let (lo, hi) = diameters
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), &d| (a.min(d), b.max(d)));
    assert!(
        lo < 10.0 && hi > 25.0 && lo >= 3.0 && hi <= 40.0,
        "{diameters:?}"
    );
    assert!(
        touching >= 2,
        "only {touching} cases with a tumour against the lung's edge"
    );
}

#[test]
fn fields_of_view_range_from_the_cut_chest_to_neck_to_pelvis_with_gas_below_the_lungs() {
    let config = small(31, "RAS");
    let fields: Vec<Field> = (0..24).map(|i| case_field(&config, i)).collect();
    for field in [Field::Chest, Field::Trunk, Field::Tight] {
        assert!(fields.contains(&field), "{field:?} never drawn: {fields:?}");
    }
    let mut gas_below = 0;
    for field in [Field::Chest, Field::Trunk, Field::Tight] {
        for index in (0..24).filter(|&i| fields[i] == field).take(2) {
            let p = generate_case(&config, index);
            assert_eq!(p.field, field);
            let [nx, ny, nz] = p.geometry.shape;
            let length = p.geometry.spacing[2] * nz as f64;
            match field {
                Field::Trunk => assert!(length > 420.0, "case {index}: {length} mm"),
                _ => assert!(length < 360.0, "case {index}: {field:?} of {length} mm"),
            }
            // Cut to the lungs: they reach (nearly) the image's sides; else a margin of body
            // and air is left.
            let margin = p
                .lung
                .indexed_iter()
                .filter(|(_, l)| **l == 1)
                .map(|((i, _, _), _)| i.min(nx - 1 - i))
                .min()
                .unwrap();
            if field == Field::Tight {
                assert!(
                    margin <= nx / 20,
                    "case {index}: lungs {margin} voxels from the side"
                );
            } else {
                assert!(
                    margin > nx / 10,
                    "case {index}: lungs {margin} voxels from the side"
                );
            }
            // Gas in the middle of the abdomen, below the lowest lung voxel: stomach, bowel.
            let first_lung = (0..nz)
                .find(|&k| (0..nx).any(|i| (0..ny).any(|j| p.lung[[i, j, k]] == 1)))
                .unwrap();
            let gas = (0..first_lung.saturating_sub(1))
                .flat_map(|k| (nx / 5..nx * 4 / 5).map(move |i| (i, k)))
                .flat_map(|(i, k)| (ny / 5..ny * 4 / 5).map(move |j| [i, j, k]))
                .filter(|&[i, j, k]| p.ct[[i, j, k]] < -900)
                .count();
            gas_below += usize::from(gas > 20);
        }
    }
    assert!(gas_below >= 2, "gas below the lungs in {gas_below} cases");
}

/// A tumour voxel whose in-plane neighbour is outside the lung: the tumour abuts wall or mediastinum.
fn touches_lung_edge(label: &Array3<u8>, lung: &Array3<u8>) -> bool {
    let [nx, ny, _] = [label.shape()[0], label.shape()[1], label.shape()[2]];
    label.indexed_iter().any(|((i, j, k), &t)| {
        t == 1
            && i > 0
            && j > 0
            && i + 1 < nx
            && j + 1 < ny
            && [[i - 1, j], [i + 1, j], [i, j - 1], [i, j + 1]]
                .iter()
                .any(|&[a, b]| lung[[a, b, k]] == 0)
    })
}

#[test]
fn anatomy_sits_where_the_affine_says() {
    for orientation in ["LAS", "LPS"] {
        let p = generate_case(&small(3, orientation), 1);
        // Lungs on both sides of the midline.
        let (mut right, mut left) = (0, 0);
        // Spine (cortical bone on the midline, denser than the sternum) posterior: negative y.
        let (mut spine_y, mut spine_n) = (0.0, 0);
        for (ijk, &v) in p.ct.indexed_iter() {
            let w = world_of(&p, ijk);
            if p.lung[ijk] == 1 {
                if w[0] > 10.0 {
                    right += 1;
                } else if w[0] < -10.0 {
                    left += 1;
                }
            }
            if v > 750 && w[0].abs() < 8.0 {
                spine_y += w[1];
                spine_n += 1;
            }
        }
        assert!(right > 1000 && left > 1000, "{orientation}: {right} {left}");
        // The heart takes room from the left lung.
        assert!(right > left, "{orientation}: right {right} left {left}");
        let centre_y = p.geometry.world([47.5, 47.5, 0.0])[1];
        let spine = spine_y / spine_n.max(1) as f64 - centre_y;
        assert!(
            spine_n > 0 && spine < -40.0,
            "{orientation}: spine at y = {spine}"
        );
        // Each recorded tumour centre is at the labelled voxels, in world coordinates.
        if let [t] = p.tumours.as_slice() {
            let (mut c, mut n) = ([0.0; 3], 0.0);
            for (ijk, &l) in p.label.indexed_iter() {
                if l == 1 {
                    let w = world_of(&p, ijk);
                    for d in 0..3 {
                        c[d] += w[d];
                    }
                    n += 1.0;
                }
            }
            let dist: f64 = (0..3)
                .map(|d| (c[d] / n - t.centre_mm[d]).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                dist < t.diameter_mm,
                "{orientation}: centroid {dist} mm from the centre"
            );
        }
    }
}

#[test]
fn a_written_task_folder_reads_back_and_a_rerun_gives_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(8, "LAS");
    let report = write_task(dir.path(), &config).unwrap();
    assert_eq!(report.voxel_bytes, 4 * 96 * 96 * 48 * 3 + 96 * 96 * 48 * 2);
    let task = read_task(dir.path()).unwrap();
    assert_eq!(task.training.len(), 4);
    assert_eq!(task.test.len(), 1);
    assert_eq!(task.training[0].id, "lung_001");
    assert_eq!(task.test[0].id, "lung_005");
    for case in &task.training {
        let image = read_volume(&case.image).unwrap();
        let label_path = case.label.as_ref().unwrap();
        let label = read_volume(label_path).unwrap();
        ct_io::task::check_label_matches(&image.geometry, &label.geometry, label_path).unwrap();
        assert_eq!(image.datatype, ct_io::Datatype::I16);
        assert_eq!(label.datatype, ct_io::Datatype::U8);
        assert_eq!(image.geometry.shape, [96, 96, 48]);
        assert_eq!(image.geometry.orientation(), "LAS");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("dataset.json")).unwrap()).unwrap();
    assert_eq!(json["numTraining"], 4);
    assert_eq!(json["labels"]["1"], "cancer");
    assert_eq!(json["training"][0]["image"], "./imagesTr/lung_001.nii.gz");

    let first = std::fs::read(&task.training[2].image).unwrap();
    write_task(dir.path(), &config).unwrap();
    assert_eq!(std::fs::read(&task.training[2].image).unwrap(), first);
    // No temporary files left behind.
    for sub in ["imagesTr", "labelsTr", "imagesTs"] {
        for entry in std::fs::read_dir(dir.path().join(sub)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(!name.starts_with('.'), "{name}");
        }
    }
}

#[test]
fn an_invalid_synth_config_is_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let err = write_task(dir.path(), &small(1, "ISL"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("synth.orientation"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
