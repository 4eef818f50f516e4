//! Decoding a sorted series' pixel data (dicom-rs) into HU, in parallel: one file per slice, or
//! one enhanced file holding every slice as a frame.

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

/// One file's decoded samples and how to read them.
struct Decoded {
    /// Every frame's samples, frame after frame.
    words: Vec<u16>,
    bits_stored: u16,
    signed: bool,
    /// The top-level RescaleSlope and RescaleIntercept.
    rescale: [f64; 2],
}

/// The voxels in HU, Fortran layout `[columns, rows, slices]` (a frame's row-major pixels are
/// one contiguous plane), and the datatype that holds them exactly.
pub(super) fn read_voxels(series: &SortedSeries) -> Result<(Array3<f32>, Datatype)> {
    let [columns, rows, slices] = series.geometry.shape;
    let plane = columns * rows;
    let mut data = vec![0f32; plane * slices];
    let planes = data.par_chunks_mut(plane).zip(series.files.par_iter());
    let exact_i16: Vec<bool> = if series.files.iter().all(|f| f.frames <= 1) {
        // A file per slice: each decoded on the thread that fills its plane.
        planes
            .map(|(out, header)| convert(header, &decode_file(header, plane)?, 0, out))
            .collect::<Result<_>>()?
    } else {
        // Enhanced objects: each file decoded once, its frames then spread over the planes.
        let mut files: Vec<&FileHeader> = series.files.iter().collect();
        files.sort_by(|a, b| a.file.cmp(&b.file));
        files.dedup_by(|a, b| a.file == b.file);
        let decoded: Vec<Decoded> = files
            .par_iter()
            .map(|h| decode_file(h, plane))
            .collect::<Result<_>>()?;
        planes
            .map(|(out, header)| {
                let at = files
                    .binary_search_by(|f| f.file.cmp(&header.file))
                    .expect("every slice's file was decoded");
                convert(header, &decoded[at], header.frame as usize * plane, out)
            })
            .collect::<Result<_>>()?
    };
    let datatype = if exact_i16.iter().all(|&e| e) {
        Datatype::I16
    } else {
        Datatype::F32
    };
    let data =
        Array3::from_shape_vec((columns, rows, slices).f(), data).expect("sized to the shape");
    Ok((data, datatype))
}

/// Decodes the pixel data of `header`'s file: `plane` samples per frame, every frame.
fn decode_file(header: &FileHeader, plane: usize) -> Result<Decoded> {
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
    let rescale = [
        number(tags::RESCALE_SLOPE, 1.0)?,
        number(tags::RESCALE_INTERCEPT, 0.0)?,
    ];
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
    if decoded.rows() as usize * decoded.columns() as usize != plane
        || decoded.number_of_frames() != header.frames.max(1)
    {
        return Err(invalid(
            file,
            format!(
                "{} frames of {}x{} pixels where the header says {} of {}x{}",
                decoded.number_of_frames(),
                decoded.columns(),
                decoded.rows(),
                header.frames.max(1),
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
    if words.len() < plane * header.frames.max(1) as usize {
        return Err(invalid(file, "pixel data ends early"));
    }
    Ok(Decoded {
        words,
        bits_stored,
        signed,
        rescale,
    })
}

/// The plane of `header` (its samples from `start` in `decoded`) as HU into `out`; true when
/// they are integers that int16 holds.
fn convert(header: &FileHeader, decoded: &Decoded, start: usize, out: &mut [f32]) -> Result<bool> {
    let words = &decoded.words[start..start + out.len()];
    let [slope, intercept] = header.rescale.unwrap_or(decoded.rescale);
    // Stored values: the low `bits_stored` bits of each sample, two's complement when signed
    // (shifted up to the top of an i32 and back, which sign-extends).
    let shift = 32 - u32::from(decoded.bits_stored);
    let signed = decoded.signed;
    let stored = |raw: u16| -> i32 {
        let raw = u32::from(raw);
        if signed {
            ((raw << shift) as i32) >> shift
        } else {
            (raw << shift >> shift) as i32
        }
    };
    let (lo, hi) = words.iter().fold((i32::MAX, i32::MIN), |(lo, hi), &w| {
        let v = stored(w);
        (lo.min(v), hi.max(v))
    });
    let ends = [
        f64::from(lo) * slope + intercept,
        f64::from(hi) * slope + intercept,
    ];
    if ends.iter().any(|v| v.abs() > f64::from(f32::MAX)) {
        return Err(invalid(
            &header.file,
            format!("voxels rescale to {ends:?}: outside what a CT holds"),
        ));
    }
    // Integer HU (slope 1, whole intercept) stay exact integers.
    let integral = slope == 1.0 && intercept.fract() == 0.0;
    if integral {
        let offset = intercept as i32;
        out.iter_mut()
            .zip(words)
            .for_each(|(o, &w)| *o = (stored(w) + offset) as f32);
    } else {
        out.iter_mut()
            .zip(words)
            .for_each(|(o, &w)| *o = (f64::from(stored(w)) * slope + intercept) as f32);
    }
    Ok(integral && ends.iter().all(|v| (-32768.0..=32767.0).contains(v)))
}
