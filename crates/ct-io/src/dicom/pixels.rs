//! Decoding a sorted series' pixel data (dicom-rs) into HU, slice by slice in parallel.

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use dicom_pixeldata::PixelDecoder;
use ndarray::{Array3, ShapeBuilder};
use rayon::prelude::*;

use super::scan::FileHeader;
use super::series::SortedSeries;
use super::{datatype_for, invalid};
use crate::Result;
use crate::nii::Datatype;

/// The voxels in HU, Fortran layout `[columns, rows, slices]` (a frame's row-major pixels are
/// one contiguous plane), and the datatype that holds them exactly.
pub(super) fn read_voxels(series: &SortedSeries) -> Result<(Array3<f32>, Datatype)> {
    let [columns, rows, slices] = series.geometry.shape;
    let plane = columns * rows;
    let mut data = vec![0f32; plane * slices];
    data.par_chunks_mut(plane)
        .zip(series.files.par_iter())
        .try_for_each(|(out, file)| decode_slice(file, out))?;
    let datatype = datatype_for(&data);
    let data =
        Array3::from_shape_vec((columns, rows, slices).f(), data).expect("sized to the shape");
    Ok((data, datatype))
}

/// One slice's HU into `out` (rows x columns, row-major).
fn decode_slice(header: &FileHeader, out: &mut [f32]) -> Result<()> {
    let file = &header.file;
    let object = OpenFileOptions::new()
        .open_file(file)
        .map_err(|e| invalid(file, format!("corrupt or truncated DICOM file ({e})")))?;
    let number = |tag, default: f64| -> Result<f64> {
        match object.element_opt(tag).ok().flatten() {
            None => Ok(default),
            Some(e) => e
                .to_float64()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| invalid(file, format!("unreadable {tag}"))),
        }
    };
    let slope = number(tags::RESCALE_SLOPE, 1.0)?;
    let intercept = number(tags::RESCALE_INTERCEPT, 0.0)?;
    let samples = number(tags::SAMPLES_PER_PIXEL, 1.0)?;
    if samples != 1.0 {
        return Err(invalid(
            file,
            format!("{samples} samples per pixel: not a greyscale CT image"),
        ));
    }
    let transfer_syntax = object
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let decoded = object.decode_pixel_data().map_err(|e| {
        invalid(
            file,
            format!("cannot decode the pixel data (transfer syntax {transfer_syntax}): {e}"),
        )
    })?;
    let (bits_allocated, bits_stored) = (decoded.bits_allocated(), decoded.bits_stored());
    let signed = decoded.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
    if decoded.rows() as usize * decoded.columns() as usize != out.len()
        || decoded.number_of_frames() != 1
    {
        return Err(invalid(
            file,
            format!(
                "{} frames of {}x{} pixels where the header says one of {}x{}",
                decoded.number_of_frames(),
                decoded.columns(),
                decoded.rows(),
                header.columns,
                header.rows
            ),
        ));
    }
    if bits_stored == 0 || bits_stored > bits_allocated {
        return Err(invalid(
            file,
            format!("BitsStored {bits_stored} with BitsAllocated {bits_allocated}"),
        ));
    }
    // Stored values: the low `bits_stored` bits of each sample, two's complement when signed.
    let stored = |raw: u32| -> f64 {
        let value = raw & ((1u64 << bits_stored) - 1) as u32;
        if signed && value >> (bits_stored - 1) & 1 == 1 {
            f64::from(value) - (1u64 << bits_stored) as f64
        } else {
            f64::from(value)
        }
    };
    let hu = |raw: u32| (stored(raw) * slope + intercept) as f32;
    match bits_allocated {
        16 => {
            let words = decoded.data_ow();
            if words.len() < out.len() {
                return Err(invalid(file, "pixel data ends early"));
            }
            out.iter_mut()
                .zip(&words)
                .for_each(|(o, &w)| *o = hu(u32::from(w)));
        }
        8 => {
            let bytes = decoded.data();
            if bytes.len() < out.len() {
                return Err(invalid(file, "pixel data ends early"));
            }
            out.iter_mut()
                .zip(bytes)
                .for_each(|(o, &b)| *o = hu(u32::from(b)));
        }
        other => {
            return Err(invalid(
                file,
                format!("BitsAllocated {other}: only 8 and 16 are read"),
            ));
        }
    }
    if let Some(bad) = out.iter().find(|v| !v.is_finite()) {
        return Err(invalid(file, format!("a voxel rescales to {bad}")));
    }
    Ok(())
}
