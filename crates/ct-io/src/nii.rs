//! NIfTI-1 single-file volumes (`.nii`, `.nii.gz`): a careful reader that refuses bad files with a
//! reason before it allocates, and an atomic writer that keeps a reference volume's geometry.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::Path;

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use ndarray::{Array3, ArrayView3, ShapeBuilder};
use serde::Serialize;

use crate::atomic::write_atomically;
use crate::error::{Error, Result};
use crate::geometry::{Geometry, NiftiGeometry};

const HEADER_BYTES: usize = 348;
/// Header plus the 4-byte extension flag: where voxel data starts in the files we write.
const DATA_OFFSET: usize = 352;
/// gzip level for written volumes: level 1 is several times faster than 6 and only slightly larger
/// on noisy CT.
const GZIP_LEVEL: u32 = 1;
const CHUNK_BYTES: usize = 1 << 20;

/// The voxel types lungseg reads (NIfTI datatype codes in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Datatype {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    F32,
    F64,
}

impl Datatype {
    pub fn from_code(code: i16) -> Option<Datatype> {
        Some(match code {
            2 => Datatype::U8,
            256 => Datatype::I8,
            4 => Datatype::I16,
            512 => Datatype::U16,
            8 => Datatype::I32,
            768 => Datatype::U32,
            16 => Datatype::F32,
            64 => Datatype::F64,
            _ => return None,
        })
    }

    pub fn code(self) -> i16 {
        match self {
            Datatype::U8 => 2,
            Datatype::I8 => 256,
            Datatype::I16 => 4,
            Datatype::U16 => 512,
            Datatype::I32 => 8,
            Datatype::U32 => 768,
            Datatype::F32 => 16,
            Datatype::F64 => 64,
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Datatype::U8 | Datatype::I8 => 1,
            Datatype::I16 | Datatype::U16 => 2,
            Datatype::I32 | Datatype::U32 | Datatype::F32 => 4,
            Datatype::F64 => 8,
        }
    }

    pub fn is_integer(self) -> bool {
        !matches!(self, Datatype::F32 | Datatype::F64)
    }
}

/// Names of NIfTI datatypes we refuse, for a helpful message.
fn unsupported_datatype_name(code: i16) -> &'static str {
    match code {
        0 => "unknown",
        1 => "binary",
        32 => "complex64",
        128 => "rgb24",
        1024 => "int64",
        1280 => "uint64",
        1536 => "float128",
        1792 => "complex128",
        2048 => "complex256",
        2304 => "rgba32",
        _ => "not a NIfTI datatype",
    }
}

/// Limits applied while reading.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Largest voxel data (bytes on disk, uncompressed) a header may declare; checked before any
    /// allocation so a corrupt or hostile header cannot exhaust memory.
    pub max_bytes: u64,
}

/// 4 GiB: a 512x512x1000 int16 CT is 0.5 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// A 3D volume read from a NIfTI file.
#[derive(Debug, Clone)]
pub struct Volume {
    /// Voxel values after `scl_slope`/`scl_inter`, Fortran layout (each axial slice contiguous),
    /// indexed `[i, j, k]` as in the file.
    pub data: Array3<f32>,
    pub geometry: Geometry,
    /// The datatype stored in the file.
    pub datatype: Datatype,
}

/// Reads a `.nii` or `.nii.gz` file (gzip is detected from the content, not the name).
pub fn read_volume(path: &Path) -> Result<Volume> {
    read_volume_with(path, &ReadOptions::default())
}

pub fn read_volume_with(path: &Path, options: &ReadOptions) -> Result<Volume> {
    let mut may_be_non_finite = false;
    let (values, header) = read_data(path, options, |chunk, out: &mut Vec<f32>| {
        may_be_non_finite |= chunk.may_be_non_finite();
        chunk.append(chunk.raw, out);
    })?;
    let data = Array3::from_shape_vec(
        (header.shape[0], header.shape[1], header.shape[2]).f(),
        values,
    )
    .expect("length equals the product of the shape");
    if may_be_non_finite
        && let Some(flat) = data.as_slice_memory_order()
        && let Some(first) = flat.iter().position(|v| !v.is_finite())
    {
        let count = flat.iter().filter(|v| !v.is_finite()).count();
        return Err(non_finite(path, count, first, header.shape));
    }
    Ok(Volume {
        data,
        geometry: header.geometry,
        datatype: header.datatype,
    })
}

fn non_finite(path: &Path, count: usize, first: usize, shape: [usize; 3]) -> Error {
    Error::invalid(
        path,
        format!(
            "{count} voxel(s) are NaN or infinite (first at voxel {:?}); replace them before use",
            voxel_index(first, shape)
        ),
    )
}

/// Reads a volume one k-plane at a time (k is the slowest axis in the file), handing
/// `on_plane(k, values)` each plane of `nx * ny` values (i fastest, after scaling) as soon as it
/// is decoded, so the volume is never held whole as f32 values (at most as its stored bytes) and
/// work on early planes can overlap the decoding of later ones. Returns the geometry and the
/// stored datatype; NaN or infinite voxels make it an error (after every plane was handed over).
pub fn read_planes_with(
    path: &Path,
    options: &ReadOptions,
    mut on_plane: impl FnMut(usize, Vec<f32>),
) -> Result<(Geometry, Datatype)> {
    let mut plane = Vec::new();
    let mut k = 0;
    let (mut bad, mut first_bad) = (0usize, None);
    let (_, header) = read_data(path, options, |chunk, _: &mut Vec<()>| {
        let plane_len = chunk.shape[0] * chunk.shape[1];
        let width = chunk.datatype.bytes();
        let may_be_non_finite = chunk.may_be_non_finite();
        let mut rest = chunk.raw;
        while !rest.is_empty() {
            let take = ((plane_len - plane.len()) * width).min(rest.len());
            chunk.append(&rest[..take], &mut plane);
            rest = &rest[take..];
            if plane.len() == plane_len {
                let non_finite = if may_be_non_finite {
                    plane.iter().filter(|v| !v.is_finite()).count()
                } else {
                    0
                };
                if non_finite > 0 {
                    bad += non_finite;
                    first_bad = first_bad.or_else(|| {
                        plane
                            .iter()
                            .position(|v| !v.is_finite())
                            .map(|n| k * plane_len + n)
                    });
                }
                on_plane(
                    k,
                    std::mem::replace(&mut plane, Vec::with_capacity(plane_len)),
                );
                k += 1;
            }
        }
    })?;
    if let Some(first) = first_bad {
        return Err(non_finite(path, bad, first, header.shape));
    }
    Ok((header.geometry, header.datatype))
}

/// The file's bytes as the readers see them: decompressed when it is gzip, through the same
/// decoder. For tools that hash or copy volumes, and for measuring the cost of decompression alone.
pub fn read_bytes(path: &Path, options: &ReadOptions) -> Result<Vec<u8>> {
    match open(path, options.max_bytes)? {
        Opened::Inflated(bytes) => Ok(bytes),
        Opened::Stream { mut reader, .. } => {
            let mut bytes = Vec::new();
            reader
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io(path, e))?;
            Ok(bytes)
        }
    }
}

/// A label volume: whole numbers 0..=255, one byte per voxel.
#[derive(Debug, Clone)]
pub struct Mask {
    /// Fortran layout, indexed `[i, j, k]` as in the file.
    pub data: Array3<u8>,
    pub geometry: Geometry,
}

/// Reads a label volume into bytes (a quarter of the memory of [`read_volume`]); any value that
/// is not a whole number in 0..=255 is refused, naming the first voxel that has one.
pub fn read_mask_with(path: &Path, options: &ReadOptions) -> Result<Mask> {
    let mut offset = 0usize;
    let mut first_bad: Option<(usize, f32)> = None;
    let mut scratch = Vec::new();
    let (values, header) = read_data(path, options, |chunk, out: &mut Vec<u8>| {
        if chunk.datatype == Datatype::U8 && chunk.scaling.is_none() {
            out.extend_from_slice(chunk.raw);
            return;
        }
        let values = chunk.decode(&mut scratch);
        for (n, &v) in values.iter().enumerate() {
            let ok = (0.0..=255.0).contains(&v) && v.fract() == 0.0;
            if !ok && first_bad.is_none() {
                first_bad = Some((offset + n, v));
            }
            out.push(if ok { v as u8 } else { 0 });
        }
        offset += values.len();
    })?;
    if let Some((at, value)) = first_bad {
        return Err(Error::invalid(
            path,
            format!(
                "not a label volume: voxel {:?} is {value} (labels are whole numbers 0..=255)",
                voxel_index(at, header.shape)
            ),
        ));
    }
    let data = Array3::from_shape_vec(
        (header.shape[0], header.shape[1], header.shape[2]).f(),
        values,
    )
    .expect("length equals the product of the shape");
    Ok(Mask {
        data,
        geometry: header.geometry,
    })
}

/// `[i, j, k]` of the `n`-th voxel in file (Fortran) order.
fn voxel_index(n: usize, [nx, ny, _]: [usize; 3]) -> [usize; 3] {
    [n % nx, (n / nx) % ny, n / (nx * ny)]
}

/// Reads header and voxel data, handing `push` the values (after scaling) chunk by chunk.
fn read_data<T>(
    path: &Path,
    options: &ReadOptions,
    push: impl FnMut(Chunk, &mut Vec<T>),
) -> Result<(Vec<T>, Header)> {
    let (mut stream, plain_len, inflated) = match open(path, options.max_bytes)? {
        Opened::Inflated(bytes) => (None, Some(bytes.len() as u64), bytes),
        Opened::Stream { reader, plain_len } => (Some(reader), plain_len, Vec::new()),
    };
    // An inflated file is read in place: the header and skip advance this slice.
    let mut in_memory: &[u8] = &inflated;
    let reader: &mut dyn Read = match &mut stream {
        Some(reader) => reader.as_mut(),
        None => &mut in_memory,
    };
    let header = read_header(path, reader)?;
    let voxels = header.shape.iter().product::<usize>();
    let data_bytes = voxels as u64 * header.datatype.bytes() as u64;
    if data_bytes > options.max_bytes {
        return Err(Error::invalid(
            path,
            format!(
                "header declares {} MiB of voxel data (shape {:?}, {:?}), over the limit of {} MiB",
                data_bytes >> 20,
                header.shape,
                header.datatype,
                options.max_bytes >> 20
            ),
        ));
    }
    if let Some(len) = plain_len {
        let needed = header.vox_offset + data_bytes;
        if len < needed {
            return Err(Error::invalid(
                path,
                format!(
                    "truncated file: {len} bytes, but the header needs {needed} (shape {:?})",
                    header.shape
                ),
            ));
        }
    }
    let skip = header.vox_offset - HEADER_BYTES as u64;
    let skipped =
        io::copy(&mut reader.take(skip), &mut io::sink()).map_err(|e| Error::io(path, e))?;
    if skipped != skip {
        return Err(Error::invalid(
            path,
            "truncated file: ends before the voxel data",
        ));
    }
    let (slope, inter) = (header.scl_slope, header.scl_inter);
    let scaling = (slope != 0.0 && slope.is_finite() && (slope != 1.0 || inter != 0.0))
        .then_some((slope, if inter.is_finite() { inter } else { 0.0 }));
    let source = match &mut stream {
        Some(reader) => Source::Reader(reader.as_mut()),
        None => Source::InMemory(in_memory),
    };
    let values =
        read_values(source, voxels, &header, scaling, push).map_err(|e| Error::io(path, e))?;
    if let Some(reader) = &mut stream
        && plain_len.is_none()
    {
        // Read to the end so gzip checks the CRC and length of the whole stream.
        io::copy(reader, &mut io::sink()).map_err(|e| Error::io(path, e))?;
    }
    Ok((values, header))
}

/// A file opened for reading its (decompressed) bytes.
enum Opened {
    /// A gzip file inflated whole (see [`inflate_whole`]).
    Inflated(Vec<u8>),
    /// A plain file (`plain_len` is its length) or a gzip file decompressed as it is read.
    Stream {
        reader: Box<dyn Read>,
        plain_len: Option<u64>,
    },
}

/// Opens a file; gzip is detected from the content and inflated whole when it can be, else
/// streamed.
fn open(path: &Path, max_bytes: u64) -> Result<Opened> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut magic = [0u8; 2];
    let got = file.read(&mut magic).map_err(|e| Error::io(path, e))?;
    file.rewind().map_err(|e| Error::io(path, e))?;
    if got == 2 && magic == [0x1f, 0x8b] {
        // Room for the header and extensions beside the voxel data the limit allows.
        let limit = max_bytes.saturating_add(1 << 20);
        if let Some(bytes) = inflate_whole(&mut file, len, limit).map_err(|e| Error::io(path, e))? {
            return Ok(Opened::Inflated(bytes));
        }
        file.rewind().map_err(|e| Error::io(path, e))?;
        let gz = MultiGzDecoder::new(BufReader::with_capacity(CHUNK_BYTES, file));
        Ok(Opened::Stream {
            reader: Box::new(BufReader::with_capacity(CHUNK_BYTES, gz)),
            plain_len: None,
        })
    } else {
        Ok(Opened::Stream {
            reader: Box::new(BufReader::with_capacity(CHUNK_BYTES, file)),
            plain_len: Some(len),
        })
    }
}

/// Inflates a whole gzip file in one call to libdeflate, which is ~1.6x faster than streaming
/// zlib on CT data; decompression is most of the cost of reading a volume. Applies to the usual
/// file of one gzip member whose trailer declares at most `limit` bytes. Returns `None` for
/// anything else (several members, a larger or wrapped size, corrupt or truncated data): the
/// caller then streams the file, which reads every valid file and words the errors.
fn inflate_whole(file: &mut File, len: u64, limit: u64) -> io::Result<Option<Vec<u8>>> {
    if len < 18 || len > limit {
        return Ok(None);
    }
    let mut compressed = Vec::with_capacity(len as usize);
    file.read_to_end(&mut compressed)?;
    let trailer: [u8; 4] = compressed[compressed.len() - 4..]
        .try_into()
        .expect("4 bytes");
    // ISIZE: the member's length modulo 2^32.
    let declared = u64::from(u32::from_le_bytes(trailer));
    if declared > limit {
        return Ok(None);
    }
    let mut plain = vec![0u8; declared as usize];
    let (mut used_in, mut used_out) = (0usize, 0usize);
    // SAFETY: the decompressor is checked non-null and freed once; the input and output pointers
    // and lengths come from live slices that libdeflate reads and writes only within bounds.
    let result = unsafe {
        let decompressor = libdeflate_sys::libdeflate_alloc_decompressor();
        if decompressor.is_null() {
            return Ok(None);
        }
        let result = libdeflate_sys::libdeflate_gzip_decompress_ex(
            decompressor,
            compressed.as_ptr().cast(),
            compressed.len(),
            plain.as_mut_ptr().cast(),
            plain.len(),
            &mut used_in,
            &mut used_out,
        );
        libdeflate_sys::libdeflate_free_decompressor(decompressor);
        result
    };
    let whole = result == libdeflate_sys::libdeflate_result_LIBDEFLATE_SUCCESS
        && used_in == compressed.len()
        && used_out == plain.len();
    Ok(whole.then_some(plain))
}

struct Header {
    shape: [usize; 3],
    datatype: Datatype,
    big_endian: bool,
    vox_offset: u64,
    scl_slope: f32,
    scl_inter: f32,
    geometry: Geometry,
}

fn read_header(path: &Path, reader: &mut dyn Read) -> Result<Header> {
    let mut raw = [0u8; HEADER_BYTES];
    reader.read_exact(&mut raw).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::invalid(
            path,
            "truncated file: shorter than a NIfTI-1 header (348 bytes)",
        ),
        _ => Error::io(path, e),
    })?;
    let size_le = i32::from_le_bytes(raw[0..4].try_into().expect("4 bytes"));
    let size_be = i32::from_be_bytes(raw[0..4].try_into().expect("4 bytes"));
    let big_endian = match (size_le, size_be) {
        (348, _) => false,
        (_, 348) => true,
        (540, _) | (_, 540) => {
            return Err(Error::invalid(
                path,
                "NIfTI-2 files are not supported (convert to NIfTI-1)",
            ));
        }
        _ => {
            return Err(Error::invalid(
                path,
                format!("not a NIfTI-1 file: header size field is {size_le}, expected 348"),
            ));
        }
    };
    let h = nifti::NiftiHeader::from_reader(&raw[..]).map_err(|e| {
        Error::invalid(
            path,
            format!("not a NIfTI-1 file (bad magic or header: {e})"),
        )
    })?;
    if &h.magic != b"n+1\0" {
        return Err(Error::invalid(
            path,
            "bad magic: a detached-header (.hdr/.img) file, only single-file .nii/.nii.gz are supported",
        ));
    }

    let dim = h.dim.map(|d| d as i16);
    let ndim = dim[0];
    if !(1..=7).contains(&ndim) {
        return Err(Error::invalid(
            path,
            format!("bad dim[0] = {ndim} (must be 1..7)"),
        ));
    }
    let dims = &dim[1..=ndim as usize];
    if dims.iter().any(|&d| d < 1) {
        return Err(Error::invalid(
            path,
            format!("bad dimensions {dims:?} (each must be ≥ 1)"),
        ));
    }
    if ndim < 3 || dims[3..].iter().any(|&d| d != 1) {
        return Err(Error::invalid(
            path,
            format!("is a {ndim}D image of shape {dims:?}; expected a 3D volume"),
        ));
    }
    let shape = [dims[0] as usize, dims[1] as usize, dims[2] as usize];

    let datatype = Datatype::from_code(h.datatype).ok_or_else(|| {
        Error::invalid(
            path,
            format!(
                "unsupported datatype {} ({}); supported: u8, i8, i16, u16, i32, u32, f32, f64",
                h.datatype,
                unsupported_datatype_name(h.datatype)
            ),
        )
    })?;

    let offset = h.vox_offset;
    if !offset.is_finite() || offset < DATA_OFFSET as f32 || offset.fract() != 0.0 || offset > 1e9 {
        return Err(Error::invalid(
            path,
            format!("bad vox_offset {offset} (must be a whole number ≥ 352)"),
        ));
    }

    let spacing_ok = h.pixdim[1..4].iter().all(|p| p.is_finite() && *p != 0.0);
    if !spacing_ok {
        return Err(Error::invalid(
            path,
            format!(
                "bad voxel size pixdim[1..4] = {:?} (must be finite and non-zero)",
                &h.pixdim[1..4]
            ),
        ));
    }
    let nifti = NiftiGeometry {
        pixdim: h.pixdim,
        xyzt_units: h.xyzt_units,
        qform_code: h.qform_code,
        sform_code: h.sform_code,
        quatern: [h.quatern_b, h.quatern_c, h.quatern_d],
        qoffset: [h.quatern_x, h.quatern_y, h.quatern_z],
        srow: [h.srow_x, h.srow_y, h.srow_z],
    };
    let geometry = Geometry::from_nifti(shape, nifti);
    let degenerate = (0..3).any(|c| {
        let n: f64 = (0..3).map(|r| geometry.affine[r][c].powi(2)).sum();
        !(n.is_finite() && n > 0.0)
    }) || geometry.affine.iter().flatten().any(|v| !v.is_finite());
    if degenerate {
        return Err(Error::invalid(
            path,
            format!(
                "degenerate voxel-to-world affine {:?} (sform_code {}, qform_code {})",
                &geometry.affine[..3],
                h.sform_code,
                h.qform_code
            ),
        ));
    }
    Ok(Header {
        shape,
        datatype,
        big_endian,
        vox_offset: offset as u64,
        scl_slope: h.scl_slope,
        scl_inter: h.scl_inter,
        geometry,
    })
}

/// A run of raw voxel bytes as read from the file, with what is needed to decode them.
struct Chunk<'a> {
    raw: &'a [u8],
    shape: [usize; 3],
    datatype: Datatype,
    big_endian: bool,
    scaling: Option<(f32, f32)>,
}

impl Chunk<'_> {
    /// The values as f32, after scaling, written into `scratch`.
    fn decode<'s>(&self, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        scratch.clear();
        self.append(self.raw, scratch);
        scratch
    }

    /// Whether the values can hold NaN or infinities: whole numbers cannot, so only float and
    /// scaled data need scanning.
    fn may_be_non_finite(&self) -> bool {
        !self.datatype.is_integer() || self.scaling.is_some()
    }

    /// Appends the values of `raw` (whole voxels of this chunk's type) to `out`, after scaling.
    fn append(&self, raw: &[u8], out: &mut Vec<f32>) {
        let start = out.len();
        decode(raw, self.datatype, self.big_endian, out);
        if let Some((slope, inter)) = self.scaling {
            for v in &mut out[start..] {
                *v = *v * slope + inter;
            }
        }
    }
}

/// Where the voxel bytes come from.
enum Source<'a> {
    /// Already in memory (an inflated gzip file), starting at the first voxel.
    InMemory(&'a [u8]),
    Reader(&'a mut dyn Read),
}

/// Reads `count` voxels and hands them to `push` chunk by chunk, so the output can be any type
/// without a full-size intermediate copy.
fn read_values<T>(
    mut source: Source,
    count: usize,
    header: &Header,
    scaling: Option<(f32, f32)>,
    mut push: impl FnMut(Chunk, &mut Vec<T>),
) -> io::Result<Vec<T>> {
    let width = header.datatype.bytes();
    // Reserve what the header declares (already under the size limit) unless that is over 2 GiB;
    // then grow with the data, since a gzip stream's true length is unknown until read.
    let reserve = if count * std::mem::size_of::<T>() <= 2 << 30 {
        count
    } else {
        1 << 26
    };
    let mut out = Vec::with_capacity(reserve);
    let chunk_bytes = (CHUNK_BYTES / width) * width;
    let mut buf = match source {
        Source::InMemory(_) => Vec::new(),
        Source::Reader(_) => vec![0u8; chunk_bytes],
    };
    let mut offset = 0;
    let total = count * width;
    while offset < total {
        let n = (total - offset).min(chunk_bytes);
        let raw = match &mut source {
            Source::InMemory(bytes) => bytes
                .get(offset..offset + n)
                .ok_or(io::ErrorKind::UnexpectedEof)?,
            Source::Reader(reader) => {
                reader.read_exact(&mut buf[..n])?;
                &buf[..n]
            }
        };
        let chunk = Chunk {
            raw,
            shape: header.shape,
            datatype: header.datatype,
            big_endian: header.big_endian,
            scaling,
        };
        push(chunk, &mut out);
        offset += n;
    }
    Ok(out)
}

fn decode(bytes: &[u8], datatype: Datatype, big_endian: bool, out: &mut Vec<f32>) {
    // One loop per byte order, so the common little-endian one vectorises.
    macro_rules! each {
        ($t:ty, $n:expr) => {
            if big_endian {
                out.extend(
                    bytes
                        .chunks_exact($n)
                        .map(|b| <$t>::from_be_bytes(b.try_into().expect("exact chunk")) as f32),
                )
            } else {
                out.extend(
                    bytes
                        .chunks_exact($n)
                        .map(|b| <$t>::from_le_bytes(b.try_into().expect("exact chunk")) as f32),
                )
            }
        };
    }
    match datatype {
        Datatype::U8 => out.extend(bytes.iter().map(|&b| f32::from(b))),
        Datatype::I8 => out.extend(bytes.iter().map(|&b| f32::from(b as i8))),
        Datatype::I16 => each!(i16, 2),
        Datatype::U16 => each!(u16, 2),
        Datatype::I32 => each!(i32, 4),
        Datatype::U32 => each!(u32, 4),
        Datatype::F32 => each!(f32, 4),
        Datatype::F64 => each!(f64, 8),
    }
}

/// A voxel type lungseg writes.
pub trait Voxel: Copy + Send + Sync + 'static {
    const DATATYPE: Datatype;
    fn put_le(self, out: &mut Vec<u8>);
}

macro_rules! voxel {
    ($t:ty, $d:expr) => {
        impl Voxel for $t {
            const DATATYPE: Datatype = $d;
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}
voxel!(u8, Datatype::U8);
voxel!(i8, Datatype::I8);
voxel!(i16, Datatype::I16);
voxel!(u16, Datatype::U16);
voxel!(i32, Datatype::I32);
voxel!(u32, Datatype::U32);
voxel!(f32, Datatype::F32);
voxel!(f64, Datatype::F64);

/// Writes `data` (indexed `[i, j, k]`) with the geometry of `geometry` (affine, qform/sform codes,
/// pixdim, units copied verbatim), gzip-compressed when the name ends in `.gz`. The file appears
/// complete or not at all.
pub fn write_volume<T: Voxel>(path: &Path, data: ArrayView3<T>, geometry: &Geometry) -> Result<()> {
    if data.shape() != geometry.shape {
        return Err(Error::invalid(
            path,
            format!(
                "cannot write: data shape {:?} differs from the geometry's {:?}",
                data.shape(),
                geometry.shape
            ),
        ));
    }
    if !shape_fits_nifti(geometry.shape) {
        return Err(Error::invalid(
            path,
            format!(
                "cannot write: shape {:?} does not fit a NIfTI-1 header",
                geometry.shape
            ),
        ));
    }
    let header = encode_header(geometry, T::DATATYPE);
    let gz = path.extension().is_some_and(|e| e == "gz");
    write_atomically(path, |file| {
        if gz {
            let mut enc = GzEncoder::new(file, Compression::new(GZIP_LEVEL));
            write_payload(&mut enc, &header, data)?;
            enc.finish()?;
        } else {
            write_payload(file, &header, data)?;
        }
        Ok(())
    })
}

fn write_payload<T: Voxel>(
    out: &mut dyn Write,
    header: &[u8; DATA_OFFSET],
    data: ArrayView3<T>,
) -> io::Result<()> {
    out.write_all(header)?;
    // NIfTI stores x fastest: the transposed view iterates in that order.
    let fortran = data.t();
    let mut buf = Vec::with_capacity(CHUNK_BYTES + 8);
    for &v in fortran.iter() {
        v.put_le(&mut buf);
        if buf.len() >= CHUNK_BYTES {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)
}

fn encode_header(geometry: &Geometry, datatype: Datatype) -> [u8; DATA_OFFSET] {
    let g = &geometry.nifti;
    let mut h = [0u8; DATA_OFFSET];
    let mut put =
        |offset: usize, bytes: &[u8]| h[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(0, &(HEADER_BYTES as i32).to_le_bytes());
    put(38, b"r");
    let mut dim = [1i16; 8];
    dim[0] = 3;
    for d in 0..3 {
        dim[d + 1] = geometry.shape[d] as i16;
    }
    for (n, d) in dim.iter().enumerate() {
        put(40 + 2 * n, &d.to_le_bytes());
    }
    put(70, &datatype.code().to_le_bytes());
    put(72, &((datatype.bytes() * 8) as i16).to_le_bytes());
    let mut pixdim = g.pixdim;
    if pixdim[0] != -1.0 {
        pixdim[0] = 1.0;
    }
    for (n, p) in pixdim.iter().enumerate() {
        put(76 + 4 * n, &p.to_le_bytes());
    }
    put(108, &(DATA_OFFSET as f32).to_le_bytes());
    put(112, &1.0f32.to_le_bytes()); // scl_slope
    put(116, &0.0f32.to_le_bytes()); // scl_inter
    put(123, &[g.xyzt_units]);
    put(148, b"lungseg");
    put(252, &g.qform_code.to_le_bytes());
    put(254, &g.sform_code.to_le_bytes());
    for (n, v) in g.quatern.iter().chain(&g.qoffset).enumerate() {
        put(256 + 4 * n, &v.to_le_bytes());
    }
    for (r, row) in g.srow.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            put(280 + 16 * r + 4 * c, &v.to_le_bytes());
        }
    }
    put(344, b"n+1\0");
    h
}

/// The shape a NIfTI header can hold: each axis 1..=32767.
pub fn shape_fits_nifti(shape: [usize; 3]) -> bool {
    shape.iter().all(|&n| (1..=i16::MAX as usize).contains(&n))
}
