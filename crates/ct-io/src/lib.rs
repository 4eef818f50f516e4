//! `ct-io`: the bottom of lungseg. Reads, validates, reorients and writes CT volumes (NIfTI-1; DICOM
//! series in) and MSD task folders, so every later stage sees one geometry-aware `Volume`; also
//! holds the shared config loader. [`read_ct`] is the one door for a CT in any of its forms.
//!
//! ```no_run
//! let volume = ct_io::read_volume(std::path::Path::new("lung_001.nii.gz"))?;
//! let to_ras = ct_io::Reorientation::to_canonical(&volume.geometry);
//! let canonical = to_ras.apply(volume.data.view()); // slice k = 0 is the inferior end
//! # Ok::<(), ct_io::Error>(())
//! ```

pub mod atomic;
pub mod cli;
pub mod config;
pub mod dicom;
pub mod error;
pub mod geometry;
pub mod layout;
pub mod lock;
pub mod nii;
pub mod seed;
pub mod task;

pub use error::{Error, Result};
pub use geometry::{Geometry, Reorientation};
pub use nii::{
    Datatype, Mask, ReadOptions, Volume, read_bytes, read_mask_with, read_planes_with, read_volume,
    read_volume_with, write_volume,
};
pub use task::{Case, Task, read_task};

use std::path::Path;

/// A CT as read by [`read_ct`]: the volume, and the DICOM series it came from, if it did.
#[derive(Debug)]
pub struct Ct {
    pub volume: Volume,
    pub dicom: Option<dicom::DicomSource>,
}

/// Reads a CT wherever one is given: a NIfTI file, a folder of DICOM files (searched recursively;
/// `series` picks one of several), or one DICOM file (its folder is read, and its series chosen
/// unless `series` says otherwise).
pub fn read_ct(path: &Path, series: Option<&str>) -> Result<Ct> {
    let (volume, source) = if path.is_dir() {
        dicom::read_dicom(&[path.to_path_buf()], series)?
    } else if dicom::is_dicom_file(path) {
        let folder = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let own = match series {
            Some(series) => series.to_string(),
            None => dicom::series_of(path)?,
        };
        dicom::read_dicom(&[folder], Some(&own))?
    } else {
        return Ok(Ct {
            volume: read_volume(path)?,
            dicom: None,
        });
    };
    Ok(Ct {
        volume,
        dicom: Some(source),
    })
}
