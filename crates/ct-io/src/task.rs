//! A Medical Segmentation Decathlon task folder: `dataset.json`, `imagesTr/`, `labelsTr/`, `imagesTs/`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::geometry::Geometry;

/// Largest element-wise difference (mm) tolerated between an image's and its label's affine.
/// Real MSD labels sometimes differ from their image in the 5th decimal; a real misalignment is
/// a voxel (≥ 0.5 mm) or more.
pub const AFFINE_TOLERANCE_MM: f64 = 1e-3;

/// One CT of a task, with its label when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// The file name without `.nii.gz` / `.nii`, e.g. `lung_001`.
    pub id: String,
    pub image: PathBuf,
    pub label: Option<PathBuf>,
}

/// The cases of a task folder, each list sorted by id.
#[derive(Debug, Clone)]
pub struct Task {
    pub root: PathBuf,
    pub training: Vec<Case>,
    pub test: Vec<Case>,
}

#[derive(Deserialize)]
struct DatasetJson {
    #[serde(default)]
    training: Vec<TrainingEntry>,
    #[serde(default)]
    test: Vec<String>,
}

#[derive(Deserialize)]
struct TrainingEntry {
    image: String,
    label: String,
}

/// True when `dir` looks like a task folder (has `dataset.json` or `imagesTr/`).
pub fn is_task_folder(dir: &Path) -> bool {
    dir.join("dataset.json").is_file() || dir.join("imagesTr").is_dir()
}

/// Reads the task's case list from `dataset.json`, or from `imagesTr/` + `labelsTr/` paired by file
/// name when there is none. Hidden and AppleDouble (`._x`) files are skipped; every path must stay
/// inside the task folder and exist.
pub fn read_task(root: &Path) -> Result<Task> {
    if !root.is_dir() {
        return Err(Error::invalid(root, "no such task folder"));
    }
    let json_path = root.join("dataset.json");
    let (mut training, mut test) = if json_path.is_file() {
        from_dataset_json(root, &json_path)?
    } else if root.join("imagesTr").is_dir() {
        from_folders(root)?
    } else {
        return Err(Error::invalid(
            root,
            "not an MSD task folder: neither dataset.json nor imagesTr/ found",
        ));
    };
    training.sort_by(|a, b| a.id.cmp(&b.id));
    test.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Task {
        root: root.to_path_buf(),
        training,
        test,
    })
}

fn from_dataset_json(root: &Path, json_path: &Path) -> Result<(Vec<Case>, Vec<Case>)> {
    let text = fs::read_to_string(json_path).map_err(|e| Error::io(json_path, e))?;
    let parsed: DatasetJson = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(json_path, format!("malformed dataset.json: {e}")))?;
    let mut training = Vec::new();
    for entry in parsed.training {
        let image = inside(root, json_path, &entry.image)?;
        let label = inside(root, json_path, &entry.label)?;
        if is_hidden(&image) {
            continue;
        }
        training.push(Case {
            id: case_id(json_path, &image)?,
            image,
            label: Some(label),
        });
    }
    let mut test = Vec::new();
    for entry in parsed.test {
        let image = inside(root, json_path, &entry)?;
        if is_hidden(&image) {
            continue;
        }
        test.push(Case {
            id: case_id(json_path, &image)?,
            image,
            label: None,
        });
    }
    check_unique(&training, json_path)?;
    check_unique(&test, json_path)?;
    for case in training.iter().chain(&test) {
        for file in std::iter::once(&case.image).chain(&case.label) {
            if !file.is_file() {
                return Err(Error::invalid(
                    json_path,
                    format!("lists {} which does not exist", file.display()),
                ));
            }
        }
    }
    Ok((training, test))
}

fn from_folders(root: &Path) -> Result<(Vec<Case>, Vec<Case>)> {
    let mut training = Vec::new();
    for image in nifti_files(&root.join("imagesTr"))? {
        let name = image.file_name().expect("listed file has a name");
        let label = root.join("labelsTr").join(name);
        if !label.is_file() {
            return Err(Error::invalid(
                &image,
                format!("has no label: expected {}", label.display()),
            ));
        }
        training.push(Case {
            id: case_id(&image, &image)?,
            image,
            label: Some(label),
        });
    }
    let test_dir = root.join("imagesTs");
    let mut test = Vec::new();
    if test_dir.is_dir() {
        for image in nifti_files(&test_dir)? {
            test.push(Case {
                id: case_id(&image, &image)?,
                image,
                label: None,
            });
        }
        check_unique(&test, &test_dir)?;
    }
    check_unique(&training, &root.join("imagesTr"))?;
    Ok((training, test))
}

/// Refuses two cases with one id (e.g. `lung_001.nii` beside `lung_001.nii.gz`).
fn check_unique(cases: &[Case], source: &Path) -> Result<()> {
    let mut seen = BTreeSet::new();
    for case in cases {
        if !seen.insert(&case.id) {
            return Err(Error::invalid(
                source,
                format!("case id {} appears twice", case.id),
            ));
        }
    }
    Ok(())
}

/// The NIfTI files of a folder, without hidden or AppleDouble files, sorted by name.
pub fn nifti_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_file() && !is_hidden(&path) && strip_nifti_extension(&path).is_some() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// The file name without `.nii.gz` or `.nii`, or None for another extension.
pub fn strip_nifti_extension(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy();
    name.strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))
        .filter(|stem| !stem.is_empty())
        .map(str::to_string)
}

fn case_id(context: &Path, image: &Path) -> Result<String> {
    strip_nifti_extension(image).ok_or_else(|| {
        Error::invalid(
            context,
            format!("{} is not a .nii or .nii.gz file", image.display()),
        )
    })
}

/// Resolves a path listed in dataset.json, refusing any that would leave the task folder.
fn inside(root: &Path, json_path: &Path, listed: &str) -> Result<PathBuf> {
    let relative = Path::new(listed);
    let escapes = relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if escapes || listed.is_empty() {
        return Err(Error::invalid(
            json_path,
            format!("path {listed:?} leaves the task folder (absolute paths and '..' are refused)"),
        ));
    }
    Ok(relative
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .fold(root.to_path_buf(), |p, c| p.join(c)))
}

/// Checks that a label lies on its image's voxel grid: same shape, affines equal within
/// [`AFFINE_TOLERANCE_MM`].
pub fn check_label_matches(image: &Geometry, label: &Geometry, label_path: &Path) -> Result<()> {
    if image.shape != label.shape {
        return Err(Error::invalid(
            label_path,
            format!(
                "label shape {:?} differs from its image's {:?}",
                label.shape, image.shape
            ),
        ));
    }
    let diff = image.affine_difference(label);
    if diff > AFFINE_TOLERANCE_MM {
        return Err(Error::invalid(
            label_path,
            format!(
                "label affine differs from its image's by {diff:.4} mm (tolerance {AFFINE_TOLERANCE_MM} mm)"
            ),
        ));
    }
    Ok(())
}
