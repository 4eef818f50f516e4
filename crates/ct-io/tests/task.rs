//! MSD task folders: dataset.json or folder pairing, hidden files skipped, paths kept inside.

mod common;

use std::fs;
use std::path::Path;

use common::geometry;
use ct_io::task::check_label_matches;
use ct_io::{read_task, write_volume};
use ndarray::Array3;

fn volume(path: &Path) {
    write_volume(
        path,
        Array3::<u8>::zeros((2, 2, 2)).view(),
        &geometry("LAS", [2, 2, 2]),
    )
    .unwrap();
}

fn task_without_json(root: &Path) {
    for name in ["lung_010", "lung_002", "lung_001"] {
        volume(&root.join(format!("imagesTr/{name}.nii.gz")));
        volume(&root.join(format!("labelsTr/{name}.nii.gz")));
    }
    volume(&root.join("imagesTs/lung_005.nii.gz"));
    // What the MSD archive and file managers leave behind.
    fs::write(root.join("imagesTr/._lung_001.nii.gz"), b"AppleDouble").unwrap();
    fs::write(root.join("imagesTr/.hidden.nii.gz"), b"x").unwrap();
    fs::write(root.join("imagesTr/notes.txt"), b"x").unwrap();
}

#[test]
fn folders_are_paired_by_name_sorted_and_junk_skipped() {
    let dir = tempfile::tempdir().unwrap();
    task_without_json(dir.path());
    let task = read_task(dir.path()).unwrap();
    let ids: Vec<_> = task.training.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["lung_001", "lung_002", "lung_010"]);
    assert_eq!(
        task.training[1].label.as_deref(),
        Some(dir.path().join("labelsTr/lung_002.nii.gz").as_path())
    );
    assert_eq!(task.test.len(), 1);
    assert_eq!(task.test[0].id, "lung_005");
    assert!(task.test[0].label.is_none());
}

#[test]
fn a_missing_label_is_named() {
    let dir = tempfile::tempdir().unwrap();
    task_without_json(dir.path());
    fs::remove_file(dir.path().join("labelsTr/lung_002.nii.gz")).unwrap();
    let err = read_task(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("imagesTr/lung_002.nii.gz") && err.contains("has no label"),
        "{err}"
    );
}

fn with_json(root: &Path, json: &str) -> String {
    task_without_json(root);
    fs::write(root.join("dataset.json"), json).unwrap();
    match read_task(root) {
        Ok(t) => format!("ok {}", t.training.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn dataset_json_is_followed_and_checked() {
    let ok = tempfile::tempdir().unwrap();
    let json = r#"{"training": [
        {"image": "./imagesTr/lung_002.nii.gz", "label": "./labelsTr/lung_002.nii.gz"},
        {"image": "./imagesTr/._lung_001.nii.gz", "label": "./labelsTr/lung_001.nii.gz"},
        {"image": "imagesTr/lung_001.nii.gz", "label": "labelsTr/lung_001.nii.gz"}],
        "test": ["./imagesTs/lung_005.nii.gz"]}"#;
    assert_eq!(with_json(ok.path(), json), "ok 2");
    let task = read_task(ok.path()).unwrap();
    assert_eq!(task.training[0].id, "lung_001");
    assert_eq!(
        task.test[0].image,
        ok.path().join("imagesTs/lung_005.nii.gz")
    );

    for (json, needle) in [
        (
            r#"{"training": [{"image": "../outside.nii.gz", "label": "./labelsTr/lung_001.nii.gz"}]}"#,
            "leaves the task folder",
        ),
        (
            r#"{"training": [{"image": "/etc/passwd.nii.gz", "label": "./labelsTr/lung_001.nii.gz"}]}"#,
            "leaves the task folder",
        ),
        (
            r#"{"test": ["./imagesTs/../../x.nii.gz"]}"#,
            "leaves the task folder",
        ),
        (
            r#"{"training": [{"image": "./imagesTr/lung_099.nii.gz", "label": "./labelsTr/lung_099.nii.gz"}]}"#,
            "does not exist",
        ),
        (
            r#"{"training": [{"image": "./imagesTr/notes.txt", "label": "./labelsTr/lung_001.nii.gz"}]}"#,
            "not a .nii or .nii.gz",
        ),
        (
            r#"{"training": [{"image": "./imagesTr/lung_001.nii.gz", "label": "./labelsTr/lung_001.nii.gz"},
                          {"image": "./imagesTr/lung_001.nii.gz", "label": "./labelsTr/lung_001.nii.gz"}]}"#,
            "appears twice",
        ),
        (r#"{"training": [ oops"#, "malformed dataset.json"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let err = with_json(dir.path(), json);
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert!(err.contains("dataset.json"), "{err}");
    }
}

#[test]
fn not_a_task_folder_is_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = read_task(dir.path()).unwrap_err().to_string();
    assert!(err.contains("not an MSD task folder"), "{err}");
    let err = read_task(&dir.path().join("nope")).unwrap_err().to_string();
    assert!(err.contains("no such task folder"), "{err}");
}

#[test]
fn a_label_must_share_its_image_grid() {
    let image = geometry("LAS", [4, 4, 4]);
    let path = Path::new("labelsTr/lung_001.nii.gz");
    check_label_matches(&image, &image.clone(), path).unwrap();
    let err = check_label_matches(&image, &geometry("LAS", [4, 4, 5]), path).unwrap_err();
    assert!(
        err.to_string().contains("label shape [4, 4, 5] differs"),
        "{err}"
    );
    let mut shifted = image.clone();
    shifted.affine[2][3] += 2.5;
    let err = check_label_matches(&image, &shifted, path).unwrap_err();
    assert!(
        err.to_string()
            .contains("affine differs from its image's by 2.5000 mm"),
        "{err}"
    );
    let mut jitter = image.clone();
    jitter.affine[0][3] += 1e-5;
    check_label_matches(&image, &jitter, path).unwrap();
}
