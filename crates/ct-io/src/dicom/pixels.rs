//! Decoding a sorted series' pixel data (dicom-rs) into HU, slice by slice in parallel.

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use dicom_pixeldata::PixelDecoder;
use ndarray::{Array3, ShapeBuilder};
use rayon::prelude::*;

use super::invalid;
use super::scan::FileHeader;
use super::series::SortedSeries;
use crate::Result;
use crate::nii::Datatype;

/// The voxels in HU, Fortran layout `[columns, rows, slices]` (a frame's row-major pixels are
/// one contiguous plane), and the datatype that holds them exactly.
pub(super) fn read_voxels(series: &SortedSeries) -> Result<(Array3<f32>, Datatype)> {
    let [columns, rows, slices] = series.geometry.shape;
    let plane = columns * rows;
    let mut data = vec![0f32; plane * slices];
    let exact_i16: Vec<bool> = data
        .par_chunks_mut(plane)
        .zip(series.files.par_iter())
        .map(|(out, file)| decode_slice(file, out))
        .collect::<Result<_>>()?;
    let datatype = if exact_i16.iter().all(|&e| e) {
        Datatype::I16
    } else {
        Datatype::F32
    };
    let data =
        Array3::from_shape_vec((columns, rows, slices).f(), data).expect("sized to the shape");
    Ok((data, datatype))
}

/// One slice's HU into `out` (rows x columns, row-major); true when they are integers that
/// int16 holds.
fn decode_slice(header: &FileHeader, out: &mut [f32]) -> Result<bool> {
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
    // Stored values: the low `bits_stored` bits of each sample, two's complement when signed
    // (shifted up to the top of an i32 and back, which sign-extends).
    let shift = 32 - u32::from(bits_stored);
    let stored = |raw: u32| -> i32 {
        if signed {
            ((raw << shift) as i32) >> shift
        } else {
            (raw << shift >> shift) as i32
        }
    };
    let words: Vec<u16> = match bits_allocated {
        16 => decoded.data_ow(),
        8 => decoded.data().iter().map(|&b| u16::from(b)).collect(),
        other => {
            return Err(invalid(
                file,
                format!("BitsAllocated {other}: only 8 and 16 are read"),
            ));
        }
    };
    if words.len() < out.len() {
        return Err(invalid(file, "pixel data ends early"));
    }
    let words = &words[..out.len()];
    let (lo, hi) = words.iter().fold((i32::MAX, i32::MIN), |(lo, hi), &w| {
        let v = stored(u32::from(w));
        (lo.min(v), hi.max(v))
    });
    let ends = [
        f64::from(lo) * slope + intercept,
        f64::from(hi) * slope + intercept,
    ];
    if ends.iter().any(|v| v.abs() > f64::from(f32::MAX)) {
        return Err(invalid(
            file,
            format!("voxels rescale to {ends:?}: outside what a CT holds"),
        ));
    }
    // Integer HU (slope 1, whole intercept) stay exact integers.
    let integral = slope == 1.0 && intercept.fract() == 0.0;
    if integral {
        let offset = intercept as i32;
        out.iter_mut()
            .zip(words)
            .for_each(|(o, &w)| *o = (stored(u32::from(w)) + offset) as f32);
    } else {
        out.iter_mut()
            .zip(words)
            .for_each(|(o, &w)| *o = (f64::from(stored(u32::from(w))) * slope + intercept) as f32);
    }
    let fits_i16 = integral && ends.iter().all(|v| (-32768.0..=32767.0).contains(v));
    Ok(fits_i16)
}
