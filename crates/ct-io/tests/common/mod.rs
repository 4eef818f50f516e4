//! Helpers shared by ct-io's integration tests: raw header access independent of the reader, and
//! hand-made files.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ct_io::Geometry;
use ct_io::geometry::affine_for_orientation;

/// The file's bytes, gunzipped when it is gzip.
pub fn raw_bytes(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        bytes
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

pub fn f32_at(h: &[u8], offset: usize) -> f32 {
    f32::from_le_bytes(h[offset..offset + 4].try_into().unwrap())
}

pub fn i16_at(h: &[u8], offset: usize) -> i16 {
    i16::from_le_bytes(h[offset..offset + 2].try_into().unwrap())
}

/// The geometry fields of a little-endian NIfTI-1 header, read by byte offset: pixdim, xyzt_units,
/// qform_code, sform_code, quatern b/c/d, qoffset x/y/z, srow_x/y/z.
#[derive(Debug, PartialEq)]
pub struct HeaderFields {
    pub dim: Vec<i16>,
    pub pixdim: Vec<f32>,
    pub xyzt_units: u8,
    pub qform_code: i16,
    pub sform_code: i16,
    pub quatern_and_offset: Vec<f32>,
    pub srow: Vec<f32>,
}

pub fn header_fields(path: &Path) -> HeaderFields {
    let h = raw_bytes(path);
    assert_eq!(i32::from_le_bytes(h[0..4].try_into().unwrap()), 348);
    HeaderFields {
        dim: (0..8).map(|n| i16_at(&h, 40 + 2 * n)).collect(),
        pixdim: (1..4).map(|n| f32_at(&h, 76 + 4 * n)).collect(),
        xyzt_units: h[123],
        qform_code: i16_at(&h, 252),
        sform_code: i16_at(&h, 254),
        quatern_and_offset: (0..6).map(|n| f32_at(&h, 256 + 4 * n)).collect(),
        srow: (0..12).map(|n| f32_at(&h, 280 + 4 * n)).collect(),
    }
}

pub fn geometry(code: &str, shape: [usize; 3]) -> Geometry {
    let affine = affine_for_orientation(code, shape, [0.8, 0.9, 2.5], [12.0, -34.0, 56.0]).unwrap();
    Geometry::from_affine(shape, affine)
}

/// `../shared/data/real` from the workspace root; the tests that need it are `#[ignore]`d.
pub fn real_data_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/real");
    assert!(
        dir.join("lung1_image.nii.gz").is_file(),
        "{} is absent",
        dir.display()
    );
    dir
}
