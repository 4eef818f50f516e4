//! Reading and writing NIfTI-1: every datatype, gz and plain, endianness, scaling, and every kind
//! of bad file refused with a message naming it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use ct_io::nii::{ReadOptions, Voxel};
use ct_io::{Datatype, read_volume, read_volume_with, write_volume};
use ndarray::{Array3, ShapeBuilder};

fn ramp<T: Voxel>(shape: [usize; 3], f: impl Fn(usize) -> T) -> Array3<T> {
    Array3::from_shape_fn(shape, |(i, j, k)| f(i + shape[0] * (j + shape[1] * k)))
}

fn round_trip<T: Voxel + Into<f64> + PartialEq + std::fmt::Debug>(
    dir: &Path,
    name: &str,
    f: impl Fn(usize) -> T,
) {
    let shape = [5, 4, 3];
    let data = ramp(shape, f);
    let geometry = geometry("PIR", shape);
    for ext in ["nii", "nii.gz"] {
        let path = dir.join(format!("{name}.{ext}"));
        write_volume(&path, data.view(), &geometry).unwrap();
        let back = read_volume(&path).unwrap();
        assert_eq!(back.datatype, T::DATATYPE, "{name}.{ext}");
        assert_eq!(back.geometry, geometry, "{name}.{ext}");
        for (a, b) in data.iter().zip(back.data.iter()) {
            assert_eq!((*a).into() as f32, *b, "{name}.{ext}");
        }
        // The NIfTI datatype code on disk is the standard one.
        let raw = raw_bytes(&path);
        assert_eq!(i16_at(&raw, 70), T::DATATYPE.code());
    }
}

#[test]
fn every_datatype_round_trips_in_gz_and_plain() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    round_trip(d, "u8", |n| (n % 256) as u8);
    round_trip(d, "i8", |n| (n as i64 % 256 - 128) as i8);
    round_trip(d, "i16", |n| (n as i32 * 97 - 1024) as i16);
    round_trip(d, "u16", |n| (n * 1000) as u16);
    round_trip(d, "i32", |n| n as i32 * -7919);
    round_trip(d, "u32", |n| n as u32 * 7919);
    round_trip(d, "f32", |n| n as f32 * 0.25 - 3.0);
    round_trip(d, "f64", |n| n as f64 * -0.5);
}

#[test]
fn voxel_order_is_x_fastest_as_nifti_requires() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("order.nii");
    let data = ramp([3, 2, 2], |n| n as i16);
    write_volume(&path, data.view(), &geometry("RAS", [3, 2, 2])).unwrap();
    let raw = raw_bytes(&path);
    let values: Vec<i16> = (0..12).map(|n| i16_at(&raw, 352 + 2 * n)).collect();
    assert_eq!(values, (0..12).collect::<Vec<i16>>());
    // A view in C layout writes the same bytes.
    let c_layout = data.as_standard_layout().to_owned();
    let path2 = dir.path().join("order2.nii");
    write_volume(&path2, c_layout.view(), &geometry("RAS", [3, 2, 2])).unwrap();
    assert_eq!(raw_bytes(&path2), raw);
}

/// A little-endian file with the given voxel bytes; `patch` edits the header first.
fn crafted(dir: &Path, name: &str, patch: impl Fn(&mut Vec<u8>)) -> PathBuf {
    let tmp = dir.join(format!("{name}.base.nii"));
    let data = ramp([4, 3, 2], |n| n as i16 - 5);
    write_volume(&tmp, data.view(), &geometry("LAS", [4, 3, 2])).unwrap();
    let mut bytes = std::fs::read(&tmp).unwrap();
    std::fs::remove_file(&tmp).unwrap();
    patch(&mut bytes);
    let path = dir.join(name);
    let out = if name.ends_with(".gz") {
        gzip(&bytes)
    } else {
        bytes
    };
    std::fs::write(&path, out).unwrap();
    path
}

fn put_i16(b: &mut [u8], offset: usize, v: i16) {
    b[offset..offset + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_f32(b: &mut [u8], offset: usize, v: f32) {
    b[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn scl_slope_and_inter_are_applied_and_slope_zero_means_none() {
    let dir = tempfile::tempdir().unwrap();
    let scaled = crafted(dir.path(), "scaled.nii.gz", |b| {
        put_f32(b, 112, 2.0);
        put_f32(b, 116, -1024.0);
    });
    let v = read_volume(&scaled).unwrap();
    assert_eq!(v.data[[0, 0, 0]], -5.0 * 2.0 - 1024.0);
    assert_eq!(v.data[[3, 2, 1]], 18.0 * 2.0 - 1024.0);
    let unscaled = crafted(dir.path(), "zero.nii", |b| {
        put_f32(b, 112, 0.0);
        put_f32(b, 116, 100.0);
    });
    assert_eq!(read_volume(&unscaled).unwrap().data[[1, 0, 0]], -4.0);
}

#[test]
fn big_endian_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = crafted(dir.path(), "be.nii", |b| {
        // Byte-swap every header field we read, and the i16 voxels.
        let swap =
            |b: &mut Vec<u8>, offset: usize, width: usize| b[offset..offset + width].reverse();
        swap(b, 0, 4);
        for n in 0..8 {
            swap(b, 40 + 2 * n, 2);
        }
        for offset in [70, 72, 252, 254] {
            swap(b, offset, 2);
        }
        for n in 0..8 {
            swap(b, 76 + 4 * n, 4);
        }
        for offset in [108, 112, 116] {
            swap(b, offset, 4);
        }
        for n in 0..18 {
            swap(b, 256 + 4 * n, 4);
        }
        for n in 0..24 {
            swap(b, 352 + 2 * n, 2);
        }
    });
    let v = read_volume(&path).unwrap();
    assert_eq!(v.geometry.shape, [4, 3, 2]);
    assert_eq!(v.geometry.orientation(), "LAS");
    assert_eq!(v.data[[0, 0, 0]], -5.0);
    assert_eq!(v.data[[3, 2, 1]], 18.0);
}

#[test]
fn a_fourth_dimension_of_size_one_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = crafted(dir.path(), "4d1.nii.gz", |b| {
        put_i16(b, 40, 4);
        put_i16(b, 48, 1);
    });
    assert_eq!(read_volume(&path).unwrap().geometry.shape, [4, 3, 2]);
}

/// Reads `path`, expects an error whose message names the file and contains `needle`.
fn refused(path: &Path, needle: &str) {
    let err = read_volume(path).expect_err(&format!("{} should be refused", path.display()));
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "message does not name the file: {msg}"
    );
    assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[test]
fn bad_files_are_refused_with_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    refused(&d.join("missing.nii.gz"), "no such file");

    let good = crafted(d, "good.nii.gz", |_| {});
    let bytes = std::fs::read(&good).unwrap();
    let truncated_gz = d.join("truncated.nii.gz");
    std::fs::write(&truncated_gz, &bytes[..bytes.len() / 2]).unwrap();
    refused(&truncated_gz, "truncated");

    let mut corrupt = bytes.clone();
    let middle = corrupt.len() / 2;
    for b in &mut corrupt[20..middle] {
        *b ^= 0x5a;
    }
    let corrupt_gz = d.join("corrupt.nii.gz");
    std::fs::write(&corrupt_gz, &corrupt).unwrap();
    refused(&corrupt_gz, "corrupt");

    let plain = crafted(d, "plain.nii", |b| b.truncate(352 + 10));
    refused(&plain, "truncated");
    let empty = d.join("empty.nii");
    std::fs::write(&empty, b"").unwrap();
    refused(&empty, "shorter than a NIfTI-1 header");

    type Patch = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Patch, &str)> = vec![
        (
            "magic.nii",
            Box::new(|b| b[344..348].copy_from_slice(b"xyz\0")),
            "magic",
        ),
        (
            "pair.nii",
            Box::new(|b| b[344..348].copy_from_slice(b"ni1\0")),
            "magic",
        ),
        (
            "sizeof.nii",
            Box::new(|b| b[0..4].copy_from_slice(&100i32.to_le_bytes())),
            "not a NIfTI-1 file",
        ),
        (
            "nifti2.nii",
            Box::new(|b| b[0..4].copy_from_slice(&540i32.to_le_bytes())),
            "NIfTI-2",
        ),
        (
            "offset.nii.gz",
            Box::new(|b| put_f32(b, 108, 100.0)),
            "vox_offset",
        ),
        (
            "offset2.nii",
            Box::new(|b| put_f32(b, 108, 352.5)),
            "vox_offset",
        ),
        (
            "offset3.nii",
            Box::new(|b| put_f32(b, 108, f32::NAN)),
            "vox_offset",
        ),
        (
            "complex.nii",
            Box::new(|b| put_i16(b, 70, 32)),
            "unsupported datatype 32 (complex64)",
        ),
        (
            "rgb.nii.gz",
            Box::new(|b| put_i16(b, 70, 128)),
            "unsupported datatype",
        ),
        (
            "4d.nii",
            Box::new(|b| {
                put_i16(b, 40, 4);
                put_i16(b, 48, 3)
            }),
            "4D",
        ),
        ("2d.nii", Box::new(|b| put_i16(b, 40, 2)), "2D"),
        ("dim0.nii", Box::new(|b| put_i16(b, 40, 9)), "dim[0]"),
        ("zero.nii", Box::new(|b| put_i16(b, 44, 0)), "dimensions"),
        (
            "negative.nii",
            Box::new(|b| put_i16(b, 44, -3)),
            "dimensions",
        ),
        (
            "pixdim.nii",
            Box::new(|b| put_f32(b, 80, 0.0)),
            "voxel size",
        ),
        (
            "affine.nii",
            Box::new(|b| (0..12).for_each(|n| put_f32(b, 280 + 4 * n, 0.0))),
            "degenerate",
        ),
    ];
    for (name, patch, needle) in cases {
        refused(&crafted(d, name, patch), needle);
    }
}

#[test]
fn an_absurd_size_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    // 32000^3 int16 voxels = 61 TiB: refused from the header alone.
    let huge = crafted(dir.path(), "huge.nii.gz", |b| {
        for n in 1..4 {
            put_i16(b, 40 + 2 * n, 32000);
        }
    });
    refused(&huge, "over the limit");
    // The limit is configurable.
    let small = crafted(dir.path(), "small.nii", |_| {});
    let err = read_volume_with(&small, &ReadOptions { max_bytes: 16 }).unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");
}

#[test]
fn nan_and_infinite_voxels_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [3, 3, 2];
    let mut data = Array3::<f32>::zeros(shape.f());
    data[[1, 2, 1]] = f32::NAN;
    data[[2, 2, 1]] = f32::INFINITY;
    let path = dir.path().join("nan.nii.gz");
    write_volume(&path, data.view(), &geometry("LAS", shape)).unwrap();
    refused(
        &path,
        "2 voxel(s) are NaN or infinite (first at voxel [1, 2, 1])",
    );
}

#[test]
fn writing_a_mismatched_shape_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mask.nii.gz");
    let data = Array3::<u8>::zeros((2, 2, 2));
    let err = write_volume(&path, data.view(), &geometry("LAS", [3, 2, 2])).unwrap_err();
    assert!(err.to_string().contains("mask.nii.gz"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_failed_write_leaves_the_old_file_and_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kept.nii.gz");
    let data = Array3::<u8>::ones((2, 2, 2));
    write_volume(&path, data.view(), &geometry("LAS", [2, 2, 2])).unwrap();
    let before = std::fs::read(&path).unwrap();
    // A target that is a directory cannot be replaced by a file: the rename fails.
    let blocked = dir.path().join("blocked.nii.gz");
    std::fs::create_dir(&blocked).unwrap();
    assert!(write_volume(&blocked, data.view(), &geometry("LAS", [2, 2, 2])).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "only the two named entries remain: {names:?}"
    );
}

#[test]
fn ct_info_reports_every_file_and_fails_when_any_fails() {
    let dir = tempfile::tempdir().unwrap();
    let good = crafted(dir.path(), "good.nii.gz", |_| {});
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("cut.nii.gz");
    std::fs::write(&truncated, &bytes[..bytes.len() - 30]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ct-info"))
        .arg("--json")
        .arg(&truncated)
        .arg(&good)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cut.nii.gz") && stderr.contains("truncated"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reported = &json.as_array().unwrap()[0];
    assert_eq!(reported["shape"], serde_json::json!([4, 3, 2]));
    assert_eq!(reported["datatype"], "i16");
    assert_eq!(reported["orientation"], "LAS");
    assert_eq!(reported["min"], -5.0);
    assert_eq!(reported["max"], 18.0);
}

#[test]
fn ct_info_counts_label_foreground() {
    let dir = tempfile::tempdir().unwrap();
    let mut mask = Array3::<u8>::zeros((4, 4, 4).f());
    mask[[1, 1, 1]] = 1;
    mask[[2, 1, 1]] = 1;
    let path = dir.path().join("label.nii.gz");
    write_volume(&path, mask.view(), &geometry("LPS", [4, 4, 4])).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ct-info"))
        .args(["--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["foreground_voxels"], 2);
    assert_eq!(json["orientation"], "LPS");
    assert_eq!(Datatype::U8.code(), 2);
}

#[test]
fn no_header_corruption_makes_the_reader_panic() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let base = crafted(dir.path(), "base.nii", |_| {});
    let bytes = std::fs::read(&base).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let (mut ok, mut refused) = (0, 0);
    for n in 0..1500 {
        let mut mutated = bytes.clone();
        for _ in 0..rng.random_range(1..6) {
            let at = rng.random_range(0..352);
            mutated[at] = rng.random();
        }
        if rng.random_bool(0.2) {
            mutated.truncate(rng.random_range(0..mutated.len()));
        }
        let name = if n % 2 == 0 { "m.nii" } else { "m.nii.gz" };
        let path = dir.path().join(name);
        let out = if n % 2 == 0 { mutated } else { gzip(&mutated) };
        std::fs::write(&path, out).unwrap();
        match read_volume(&path) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.to_string().contains(name), "{e}");
                refused += 1;
            }
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} read, {refused} refused");
}

#[test]
fn masks_read_as_bytes_and_non_label_values_are_refused() {
    use ct_io::read_mask_with;
    let dir = tempfile::tempdir().unwrap();
    let shape = [4, 3, 2];
    let g = geometry("LPS", shape);
    let mut labels = Array3::<f32>::zeros(shape.f());
    labels[[1, 1, 1]] = 1.0;
    labels[[2, 1, 1]] = 255.0;
    let ok = dir.path().join("ok.nii.gz");
    write_volume(&ok, labels.view(), &g).unwrap();
    let mask = read_mask_with(&ok, &ReadOptions::default()).unwrap();
    assert_eq!(mask.data[[1, 1, 1]], 1);
    assert_eq!(mask.data[[2, 1, 1]], 255);
    assert_eq!(mask.data.iter().map(|&v| v as u32).sum::<u32>(), 256);
    assert_eq!(mask.geometry, g);
    for (name, value) in [
        ("half.nii", 0.5f32),
        ("negative.nii", -1.0),
        ("big.nii", 300.0),
    ] {
        let mut bad = labels.clone();
        bad[[3, 2, 1]] = value;
        let path = dir.path().join(name);
        write_volume(&path, bad.view(), &g).unwrap();
        let err = read_mask_with(&path, &ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(name) && err.contains("voxel [3, 2, 1]"),
            "{err}"
        );
    }
}

#[test]
fn planes_stream_in_file_order_and_match_the_whole_volume() {
    use ct_io::read_planes_with;
    let dir = tempfile::tempdir().unwrap();
    let shape = [5, 4, 6];
    let data = ramp(shape, |n| n as i16 * 3 - 40);
    let path = dir.path().join("planes.nii.gz");
    write_volume(&path, data.view(), &geometry("LAS", shape)).unwrap();
    let whole = read_volume(&path).unwrap();
    let mut seen = Vec::new();
    let (g, datatype) = read_planes_with(&path, &ReadOptions::default(), |k, plane| {
        let expected: Vec<f32> = whole
            .data
            .index_axis(ndarray::Axis(2), k)
            .t()
            .iter()
            .copied()
            .collect();
        assert_eq!(plane, expected, "plane {k}");
        seen.push(k);
    })
    .unwrap();
    assert_eq!(seen, (0..6).collect::<Vec<_>>());
    assert_eq!((g, datatype), (whole.geometry, Datatype::I16));

    let mut bad = Array3::<f32>::zeros(shape.f());
    bad[[1, 2, 4]] = f32::NAN;
    let nan = dir.path().join("nan_planes.nii");
    write_volume(&nan, bad.view(), &geometry("LAS", shape)).unwrap();
    let err = read_planes_with(&nan, &ReadOptions::default(), |_, _| {}).unwrap_err();
    assert!(
        err.to_string()
            .contains("1 voxel(s) are NaN or infinite (first at voxel [1, 2, 4])"),
        "{err}"
    );
}

#[test]
fn gzip_files_of_several_members_read_whole() {
    use std::io::Write;
    // A whole-file inflate would stop after the first member; two members of equal length make
    // the trailer's length look right for it.
    let dir = tempfile::tempdir().unwrap();
    let shape = [8, 6, 4];
    let data = ramp(shape, |n| n as i16 * 5 - 300);
    let plain = dir.path().join("plain.nii");
    write_volume(&plain, data.view(), &geometry("LPS", shape)).unwrap();
    let mut bytes = std::fs::read(&plain).unwrap();
    bytes.resize(bytes.len().next_multiple_of(2), 0);
    let mut members = Vec::new();
    for half in bytes.chunks(bytes.len() / 2) {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(half).unwrap();
        members.extend(gz.finish().unwrap());
    }
    let two = dir.path().join("two_members.nii.gz");
    std::fs::write(&two, &members).unwrap();
    let back = read_volume(&two).unwrap();
    assert_eq!(back.data, data.mapv(f32::from));
    assert_eq!(back.geometry, read_volume(&plain).unwrap().geometry);
}
