//! Where the voxels are in the patient: affines, orientation codes, and the exact reorientation to
//! and from the canonical RAS voxel order that every stage works in.

use ndarray::{Array3, ArrayView3, ShapeBuilder};
use serde::{Deserialize, Serialize};

/// A 4x4 voxel-index → world (mm, RAS+ as in NIfTI) transform, row major.
pub type Affine = [[f64; 4]; 4];

/// The geometry fields of a NIfTI-1 header, kept verbatim so that a volume written back (a predicted
/// mask, say) carries exactly the qform, sform, pixdim and units of the file it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NiftiGeometry {
    pub pixdim: [f32; 8],
    pub xyzt_units: u8,
    pub qform_code: i16,
    pub sform_code: i16,
    pub quatern: [f32; 3],
    pub qoffset: [f32; 3],
    pub srow: [[f32; 4]; 3],
}

/// Shape and placement of a 3D volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Geometry {
    /// Voxels along the three array axes (i, j, k).
    pub shape: [usize; 3],
    /// Voxel size in mm along i, j, k.
    pub spacing: [f64; 3],
    /// The voxel → world transform: sform if its code > 0, else qform if its code > 0, else pixdim scaling.
    pub affine: Affine,
    pub nifti: NiftiGeometry,
}

impl Geometry {
    /// Geometry from the header fields, with the affine chosen as NIfTI readers do.
    pub fn from_nifti(shape: [usize; 3], nifti: NiftiGeometry) -> Geometry {
        let spacing = [1, 2, 3].map(|d| f64::from(nifti.pixdim[d]).abs());
        let affine = if nifti.sform_code > 0 {
            let mut a = IDENTITY;
            for (row, srow) in a.iter_mut().zip(&nifti.srow) {
                *row = srow.map(f64::from);
            }
            a
        } else if nifti.qform_code > 0 {
            qform_affine(&nifti)
        } else {
            let mut a = IDENTITY;
            for d in 0..3 {
                a[d][d] = spacing[d];
            }
            a
        };
        Geometry {
            shape,
            spacing,
            affine,
            nifti,
        }
    }

    /// Geometry for a new volume placed by `affine`: sform and qform both set (code 1, scanner
    /// anatomical), units mm, so that any reader finds the same affine.
    pub fn from_affine(shape: [usize; 3], affine: Affine) -> Geometry {
        let spacing = [0, 1, 2].map(|c| column_norm(&affine, c));
        let (quatern, qfac) = affine_to_quaternion(&affine, spacing);
        let mut pixdim = [1.0f32; 8];
        pixdim[0] = qfac as f32;
        for d in 0..3 {
            pixdim[d + 1] = spacing[d] as f32;
        }
        let srow = [0, 1, 2].map(|r| affine[r].map(|v| v as f32));
        let nifti = NiftiGeometry {
            pixdim,
            xyzt_units: 2 | 8, // mm, s
            qform_code: 1,
            sform_code: 1,
            quatern: quatern.map(|v| v as f32),
            qoffset: [
                affine[0][3] as f32,
                affine[1][3] as f32,
                affine[2][3] as f32,
            ],
            srow,
        };
        Geometry::from_nifti(shape, nifti)
    }

    /// Three-letter orientation code (nibabel's `aff2axcodes`): the world direction each voxel axis
    /// increases toward, e.g. "LAS" or "RAS".
    pub fn orientation(&self) -> String {
        orientation_code(&self.affine)
    }

    /// World position (mm) of the centre of voxel `ijk`.
    pub fn world(&self, ijk: [f64; 3]) -> [f64; 3] {
        let a = &self.affine;
        [0, 1, 2].map(|r| a[r][0] * ijk[0] + a[r][1] * ijk[1] + a[r][2] * ijk[2] + a[r][3])
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the volume has no voxels (never for a volume read from a valid file).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Largest element-wise difference between two affines, in mm.
    pub fn affine_difference(&self, other: &Geometry) -> f64 {
        let mut worst: f64 = 0.0;
        for r in 0..3 {
            for c in 0..4 {
                worst = worst.max((self.affine[r][c] - other.affine[r][c]).abs());
            }
        }
        worst
    }
}

const IDENTITY: Affine = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

fn column_norm(a: &Affine, c: usize) -> f64 {
    (a[0][c] * a[0][c] + a[1][c] * a[1][c] + a[2][c] * a[2][c]).sqrt()
}

/// The NIfTI-1 "method 2" affine from quaternion, qfac (pixdim[0]) and offsets.
fn qform_affine(g: &NiftiGeometry) -> Affine {
    let [b, c, d] = g.quatern.map(f64::from);
    let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
    let r = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ];
    let qfac = if g.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let zoom = [
        f64::from(g.pixdim[1]).abs(),
        f64::from(g.pixdim[2]).abs(),
        f64::from(g.pixdim[3]).abs() * qfac,
    ];
    let mut out = IDENTITY;
    for row in 0..3 {
        for col in 0..3 {
            out[row][col] = r[row][col] * zoom[col];
        }
        out[row][3] = f64::from(g.qoffset[row]);
    }
    out
}

/// Quaternion (b, c, d) and qfac of the rotation part of `affine` (columns assumed orthogonal),
/// as nifti1_io's `mat44_to_quatern` does.
fn affine_to_quaternion(affine: &Affine, spacing: [f64; 3]) -> ([f64; 3], f64) {
    let mut r = [[0.0; 3]; 3];
    for row in 0..3 {
        for col in 0..3 {
            r[row][col] = affine[row][col] / spacing[col].max(f64::MIN_POSITIVE);
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
        - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 { -1.0 } else { 1.0 };
    if qfac < 0.0 {
        for row in &mut r {
            row[2] = -row[2];
        }
    }
    let trace = r[0][0] + r[1][1] + r[2][2] + 1.0;
    let (b, c, d);
    if trace > 0.5 {
        let a2 = 0.5 * trace.sqrt();
        b = 0.25 * (r[2][1] - r[1][2]) / a2;
        c = 0.25 * (r[0][2] - r[2][0]) / a2;
        d = 0.25 * (r[1][0] - r[0][1]) / a2;
    } else {
        let xd = 1.0 + r[0][0] - (r[1][1] + r[2][2]);
        let yd = 1.0 + r[1][1] - (r[0][0] + r[2][2]);
        let zd = 1.0 + r[2][2] - (r[0][0] + r[1][1]);
        let (qa, mut qb, mut qc, mut qd);
        if xd > 1.0 {
            qb = 0.5 * xd.sqrt();
            qc = 0.25 * (r[0][1] + r[1][0]) / qb;
            qd = 0.25 * (r[0][2] + r[2][0]) / qb;
            qa = 0.25 * (r[2][1] - r[1][2]) / qb;
        } else if yd > 1.0 {
            qc = 0.5 * yd.sqrt();
            qb = 0.25 * (r[0][1] + r[1][0]) / qc;
            qd = 0.25 * (r[1][2] + r[2][1]) / qc;
            qa = 0.25 * (r[0][2] - r[2][0]) / qc;
        } else {
            qd = 0.5 * zd.sqrt();
            qb = 0.25 * (r[0][2] + r[2][0]) / qd;
            qc = 0.25 * (r[1][2] + r[2][1]) / qd;
            qa = 0.25 * (r[1][0] - r[0][1]) / qd;
        }
        if qa < 0.0 {
            qb = -qb;
            qc = -qc;
            qd = -qd;
        }
        b = qb;
        c = qc;
        d = qd;
    }
    ([b, c, d], qfac)
}

/// For each voxel axis, the world axis (0 = x, 1 = y, 2 = z) it runs closest to and whether it runs
/// against that axis. Axes are assigned greedily by largest direction cosine, so an oblique volume
/// still gets a permutation.
fn axis_directions(affine: &Affine) -> [(usize, bool); 3] {
    let mut cos = [[0.0f64; 3]; 3]; // [voxel axis][world axis]
    for (c, row) in cos.iter_mut().enumerate() {
        let n = column_norm(affine, c).max(f64::MIN_POSITIVE);
        for (w, v) in row.iter_mut().enumerate() {
            *v = affine[w][c] / n;
        }
    }
    let mut out = [(usize::MAX, false); 3];
    let mut world_taken = [false; 3];
    for _ in 0..3 {
        let mut best = (0.0, 0, 0);
        for (c, row) in cos.iter().enumerate() {
            if out[c].0 != usize::MAX {
                continue;
            }
            for (w, &v) in row.iter().enumerate() {
                if !world_taken[w] && v.abs() >= best.0 {
                    best = (v.abs(), c, w);
                }
            }
        }
        let (_, c, w) = best;
        out[c] = (w, cos[c][w] < 0.0);
        world_taken[w] = true;
    }
    out
}

fn orientation_code(affine: &Affine) -> String {
    const LETTERS: [[char; 2]; 3] = [['R', 'L'], ['A', 'P'], ['S', 'I']];
    axis_directions(affine)
        .iter()
        .map(|&(w, negative)| LETTERS[w][usize::from(negative)])
        .collect()
}

/// Parses a three-letter orientation code ("LAS", "RAS", "PIR", ...) into, per voxel axis, the world
/// axis and whether it runs against it.
pub fn parse_orientation(code: &str) -> Option<[(usize, bool); 3]> {
    let letters: Vec<char> = code.chars().map(|c| c.to_ascii_uppercase()).collect();
    if letters.len() != 3 {
        return None;
    }
    let mut out = [(0, false); 3];
    let mut seen = [false; 3];
    for (axis, letter) in letters.iter().enumerate() {
        let (w, negative) = match letter {
            'R' => (0, false),
            'L' => (0, true),
            'A' => (1, false),
            'P' => (1, true),
            'S' => (2, false),
            'I' => (2, true),
            _ => return None,
        };
        if seen[w] {
            return None;
        }
        seen[w] = true;
        out[axis] = (w, negative);
    }
    Some(out)
}

/// The exact (permute + flip, no resampling) mapping between a volume's own voxel order and the
/// canonical RAS order, in which axis 0 runs to the patient's right, axis 1 anterior and axis 2
/// superior: slice k = 0 of a canonical volume is its inferior end whatever the file's axis order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reorientation {
    /// `permutation[a]` is the original axis that becomes canonical axis `a`.
    pub permutation: [usize; 3],
    /// Whether canonical axis `a` runs against the original axis.
    pub flip: [bool; 3],
    /// Shape of the volume in its own voxel order.
    pub original_shape: [usize; 3],
}

impl Reorientation {
    /// The reorientation that brings a volume of this geometry to canonical RAS order.
    pub fn to_canonical(geometry: &Geometry) -> Reorientation {
        let directions = axis_directions(&geometry.affine);
        let mut permutation = [0; 3];
        let mut flip = [false; 3];
        for (axis, &(w, negative)) in directions.iter().enumerate() {
            permutation[w] = axis;
            flip[w] = negative;
        }
        Reorientation {
            permutation,
            flip,
            original_shape: geometry.shape,
        }
    }

    /// True when the volume is already in canonical order.
    pub fn is_identity(&self) -> bool {
        self.permutation == [0, 1, 2] && self.flip == [false; 3]
    }

    pub fn canonical_shape(&self) -> [usize; 3] {
        self.permutation.map(|p| self.original_shape[p])
    }

    /// Canonical index → original index.
    pub fn original_index(&self, canonical: [usize; 3]) -> [usize; 3] {
        let mut out = [0; 3];
        for a in 0..3 {
            let n = self.original_shape[self.permutation[a]];
            out[self.permutation[a]] = if self.flip[a] {
                n - 1 - canonical[a]
            } else {
                canonical[a]
            };
        }
        out
    }

    /// The volume seen in canonical order, without copying: `view.index_axis(Axis(2), k)` is axial
    /// slice k counted from the inferior end.
    pub fn canonical_view<'a, T>(&self, original: ArrayView3<'a, T>) -> ArrayView3<'a, T> {
        assert_eq!(original.shape(), self.original_shape, "shape mismatch");
        let mut view = original.permuted_axes(self.permutation);
        for a in 0..3 {
            if self.flip[a] {
                view.invert_axis(ndarray::Axis(a));
            }
        }
        view
    }

    /// Voxel data in canonical order (Fortran layout, so each axial slice is contiguous).
    pub fn apply<T: Clone>(&self, original: ArrayView3<T>) -> Array3<T> {
        to_fortran(self.canonical_view(original))
    }

    /// Voxel data back in the original order: the exact inverse of [`Reorientation::apply`].
    pub fn restore<T: Clone>(&self, canonical: ArrayView3<T>) -> Array3<T> {
        assert_eq!(
            canonical.shape(),
            self.canonical_shape(),
            "canonical shape mismatch"
        );
        let mut view = canonical;
        for a in 0..3 {
            if self.flip[a] {
                view.invert_axis(ndarray::Axis(a));
            }
        }
        let mut inverse = [0; 3];
        for a in 0..3 {
            inverse[self.permutation[a]] = a;
        }
        to_fortran(view.permuted_axes(inverse))
    }

    /// Geometry of the canonical volume: same world positions for the same voxels.
    pub fn canonical_geometry(&self, original: &Geometry) -> Geometry {
        // canonical index c → original index o: o[perm[a]] = flip[a] ? n - 1 - c[a] : c[a]
        let mut m = [[0.0; 4]; 4];
        m[3][3] = 1.0;
        for a in 0..3 {
            let o = self.permutation[a];
            if self.flip[a] {
                m[o][a] = -1.0;
                m[o][3] = (self.original_shape[o] - 1) as f64;
            } else {
                m[o][a] = 1.0;
            }
        }
        Geometry::from_affine(self.canonical_shape(), matmul(&original.affine, &m))
    }
}

/// Copies a (permuted, flipped) view into a new Fortran-layout array. Walking the transposed view
/// in logical order visits the output in memory order, so writes are sequential.
fn to_fortran<T: Clone>(view: ArrayView3<T>) -> Array3<T> {
    let (a, b, c) = view.dim();
    let values: Vec<T> = view.t().iter().cloned().collect();
    Array3::from_shape_vec((a, b, c).f(), values).expect("same number of elements")
}

fn matmul(a: &Affine, b: &Affine) -> Affine {
    let mut out = [[0.0; 4]; 4];
    for (r, row) in out.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = (0..4).map(|k| a[r][k] * b[k][c]).sum();
        }
    }
    out
}

/// An affine with the given orientation and spacing whose voxel grid is centred on `centre` (mm).
pub fn affine_for_orientation(
    code: &str,
    shape: [usize; 3],
    spacing: [f64; 3],
    centre: [f64; 3],
) -> Option<Affine> {
    let directions = parse_orientation(code)?;
    let mut a = IDENTITY;
    for (axis, &(w, negative)) in directions.iter().enumerate() {
        for row in a.iter_mut().take(3) {
            row[axis] = 0.0;
        }
        a[w][axis] = if negative {
            -spacing[axis]
        } else {
            spacing[axis]
        };
    }
    for (r, c) in centre.iter().enumerate() {
        let half: f64 = (0..3)
            .map(|axis| a[r][axis] * (shape[axis] as f64 - 1.0) / 2.0)
            .sum();
        a[r][3] = c - half;
    }
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orientation_codes_follow_nibabel() {
        let las = affine_for_orientation("LAS", [4, 5, 6], [0.7, 0.7, 2.5], [0.0; 3]).unwrap();
        assert_eq!(orientation_code(&las), "LAS");
        let pir = affine_for_orientation("PIR", [4, 5, 6], [1.0, 2.0, 3.0], [0.0; 3]).unwrap();
        assert_eq!(orientation_code(&pir), "PIR");
        assert!(parse_orientation("LLS").is_none());
        assert!(parse_orientation("LA").is_none());
    }

    #[test]
    fn qform_written_from_an_affine_gives_the_same_affine() {
        for code in ["LAS", "LPS", "RAS", "PIR", "ASL", "IRP"] {
            let a = affine_for_orientation(code, [7, 8, 9], [0.8, 0.9, 2.5], [10.0, -20.0, 30.0])
                .unwrap();
            let mut g = Geometry::from_affine([7, 8, 9], a);
            g.nifti.sform_code = 0;
            let q = Geometry::from_nifti([7, 8, 9], g.nifti.clone());
            let worst = (0..3)
                .flat_map(|r| (0..4).map(move |c| (r, c)))
                .map(|(r, c)| (q.affine[r][c] - a[r][c]).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-4, "{code}: off by {worst}");
        }
    }

    #[test]
    fn canonical_geometry_keeps_every_voxel_in_place() {
        for code in ["LAS", "LPS", "PIR", "SAL"] {
            let shape = [3, 4, 5];
            let a = affine_for_orientation(code, shape, [0.5, 1.5, 2.5], [1.0, 2.0, 3.0]).unwrap();
            let g = Geometry::from_affine(shape, a);
            let r = Reorientation::to_canonical(&g);
            let cg = r.canonical_geometry(&g);
            assert_eq!(cg.orientation(), "RAS");
            let cs = r.canonical_shape();
            for c in [[0, 0, 0], [cs[0] - 1, 1, 2], [1, cs[1] - 1, cs[2] - 1]] {
                let o = r.original_index(c);
                let wc = cg.world(c.map(|v| v as f64));
                let wo = g.world(o.map(|v| v as f64));
                for d in 0..3 {
                    assert!((wc[d] - wo[d]).abs() < 1e-4, "{code}: {wc:?} vs {wo:?}");
                }
            }
        }
    }
}
