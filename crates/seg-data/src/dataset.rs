//! The slices of one split, read from ct-preprocess's manifest and `.npy` files.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use ct_preprocess::manifest::{MANIFEST_FILE, Manifest};
use ct_preprocess::split::Split;
use ndarray::{Array2, Array3, Axis};
use ndarray_npy::read_npy;

/// One training or validation example: the CT slice with its neighbours as channels, and its mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `[C, H, W]`, C = 2 x context + 1, the centre slice in the middle channel.
    pub image: Array3<f32>,
    /// `[H, W]`, 0 or 1.
    pub mask: Array2<u8>,
}

/// One slice of the split.
#[derive(Debug, Clone)]
pub struct SliceItem {
    /// Index into [`SliceDataset::case_ids`].
    pub case: usize,
    /// Canonical axial index in the original volume.
    pub slice: usize,
    pub tumour_voxels: u32,
    mask: PathBuf,
}

struct CaseSlices {
    id: String,
    /// Slice index of `images[0]`.
    first: usize,
    images: Vec<PathBuf>,
}

/// The slices of one split, in manifest order (case id, then slice).
pub struct SliceDataset {
    items: Vec<SliceItem>,
    cases: Vec<CaseSlices>,
    context: usize,
    size: usize,
    air: f32,
}

impl SliceDataset {
    /// Opens `preprocessed/manifest.json` and checks that the manifest and the files agree. The
    /// split's cases are the manifest's split (`fold` None) or, for a K-fold dataset, every fold
    /// but `fold` (training) and `fold` (validation).
    pub fn open(
        preprocessed: &Path,
        split: Split,
        fold: Option<usize>,
        context: usize,
    ) -> anyhow::Result<SliceDataset> {
        let manifest_path = preprocessed.join(MANIFEST_FILE);
        let manifest = Manifest::load(&manifest_path)?;
        let held_out = manifest
            .split
            .held_out(fold)
            .map_err(|reason| anyhow::anyhow!("{}: {reason}", manifest_path.display()))?;
        let ids = match split {
            Split::Train => held_out.train,
            Split::Validation => held_out.validation,
        };
        let mut cases: Vec<CaseSlices> = Vec::new();
        let mut items = Vec::new();
        for slice in manifest.slices_of_cases(&ids) {
            let known = cases.last().is_some_and(|c| c.id == slice.case);
            if !known {
                ensure!(
                    !cases.iter().any(|c| c.id == slice.case),
                    "{}: the slices of case {} are not listed together",
                    manifest_path.display(),
                    slice.case
                );
                cases.push(CaseSlices {
                    id: slice.case.clone(),
                    first: slice.files.slice,
                    images: Vec::new(),
                });
            }
            let case = cases.last_mut().expect("just pushed");
            ensure!(
                slice.files.slice == case.first + case.images.len(),
                "{}: case {} lists slice {} where slice {} was expected (slices must be consecutive)",
                manifest_path.display(),
                case.id,
                slice.files.slice,
                case.first + case.images.len()
            );
            let image = preprocessed.join(&slice.files.image);
            let mask = preprocessed.join(&slice.files.mask);
            for file in [&image, &mask] {
                ensure!(
                    file.is_file(),
                    "{}: lists {}, which does not exist (rerun ct-preprocess)",
                    manifest_path.display(),
                    file.display()
                );
            }
            case.images.push(image);
            items.push(SliceItem {
                case: cases.len() - 1,
                slice: slice.files.slice,
                tumour_voxels: slice.files.tumour_voxels,
                mask,
            });
        }
        let normalisation = ct_preprocess::settings::Normalisation::from_config(&manifest.settings);
        Ok(SliceDataset {
            items,
            cases,
            context,
            size: manifest.settings.size,
            air: normalisation.apply(-1024.0),
        })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn items(&self) -> &[SliceItem] {
        &self.items
    }

    pub fn case_ids(&self) -> impl Iterator<Item = &str> {
        self.cases.iter().map(|c| c.id.as_str())
    }

    /// Height and width of every slice.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn channels(&self) -> usize {
        2 * self.context + 1
    }

    /// The normalised value of air (−1024 HU): what augmentation fills in outside the image.
    pub fn air(&self) -> f32 {
        self.air
    }

    /// Reads item `index`: its slice and `context` neighbours on each side from the same case
    /// (repeating the end slice where the case's slices run out), and its mask.
    pub fn load(&self, index: usize) -> anyhow::Result<Sample> {
        let item = &self.items[index];
        let case = &self.cases[item.case];
        let (size, channels) = (self.size, self.channels());
        let mut image = Array3::<f32>::zeros((channels, size, size));
        let last = case.first + case.images.len() - 1;
        for (channel, mut plane) in image.axis_iter_mut(Axis(0)).enumerate() {
            let wanted = (item.slice + channel).saturating_sub(self.context);
            let slice = wanted.clamp(case.first, last);
            let path = &case.images[slice - case.first];
            let values: Array2<f32> = read_slice(path, size)?;
            plane.assign(&values);
        }
        let mask: Array2<u8> = read_slice(&item.mask, size)?;
        if let Some(bad) = mask.iter().find(|v| **v > 1) {
            bail!(
                "{}: mask values must be 0 or 1 (found {bad})",
                item.mask.display()
            );
        }
        Ok(Sample { image, mask })
    }
}

fn read_slice<T: ndarray_npy::ReadableElement>(
    path: &Path,
    size: usize,
) -> anyhow::Result<Array2<T>> {
    let array: Array2<T> = read_npy(path).with_context(|| {
        format!(
            "{}: not a readable 2D .npy slice of the expected type",
            path.display()
        )
    })?;
    ensure!(
        array.dim() == (size, size),
        "{}: slice is {:?}, the manifest says {size}x{size}",
        path.display(),
        array.dim()
    );
    Ok(array)
}
