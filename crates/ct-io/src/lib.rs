//! `ct-io`: the bottom of lungseg. Reads, validates, reorients and writes CT volumes (NIfTI-1) and
//! MSD task folders, so every later stage sees one geometry-aware `Volume`; also holds the shared
//! config loader.
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
pub mod error;
pub mod geometry;
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
