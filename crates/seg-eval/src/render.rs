//! Axial slices as pictures: the CT in a window, the lungs', the reference's and the prediction's
//! contours on top, in the radiological convention (patient's right on the viewer's left, anterior up), with a label.
//! Pictures are palette images; the viewer's layers take their colours from the same palette.

use ndarray::ArrayView3;

/// Palette index of the lung contour.
pub const LUNGS: u8 = 253;
/// Palette index of the reference contour.
pub const REFERENCE: u8 = 254;
/// Palette index of the predicted contour.
pub const PREDICTION: u8 = 255;
const WHITE: u8 = GRAY_LEVELS - 1;
const GRAY_LEVELS: u8 = 253;

/// 253 gray levels, then the lung colour (amber), the reference colour (green) and the prediction
/// colour (magenta).
pub fn palette() -> Vec<[u8; 3]> {
    let mut colours: Vec<[u8; 3]> = (0..GRAY_LEVELS)
        .map(|g| {
            let v = (u32::from(g) * 255 / u32::from(GRAY_LEVELS - 1)) as u8;
            [v, v, v]
        })
        .collect();
    colours.push([255, 170, 0]);
    colours.push([40, 220, 60]);
    colours.push([255, 40, 200]);
    colours
}

/// A picture of palette indices.
pub struct Picture {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl Picture {
    pub fn rgb(&self) -> image::RgbImage {
        let palette = palette();
        let mut out = image::RgbImage::new(self.width as u32, self.height as u32);
        for (px, &index) in out.pixels_mut().zip(&self.pixels) {
            *px = image::Rgb(palette[usize::from(index)]);
        }
        out
    }

    pub fn png(&self) -> anyhow::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.rgb().write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )?;
        Ok(bytes)
    }

    /// Writes `text` at (`x`, `y`) in an 8x8 font scaled by `scale`, white on a black outline.
    pub fn label(&mut self, text: &str, x: usize, y: usize, scale: usize) {
        for (pass, colour) in [(0, 0u8), (1, WHITE)] {
            for (n, ch) in text.chars().enumerate() {
                let Some(glyph) = font8x8::legacy::BASIC_LEGACY.get(ch as usize) else {
                    continue;
                };
                for (row, bits) in glyph.iter().enumerate() {
                    for col in 0..8 {
                        if bits >> col & 1 == 0 {
                            continue;
                        }
                        let gx = x + (n * 8 + col) * scale;
                        let gy = y + row * scale;
                        // The outline: the glyph drawn one pixel off in each direction first.
                        let offsets: &[(isize, isize)] = if pass == 0 {
                            &[(-1, 0), (1, 0), (0, -1), (0, 1)]
                        } else {
                            &[(0, 0)]
                        };
                        for &(dx, dy) in offsets {
                            for sy in 0..scale {
                                for sx in 0..scale {
                                    self.put(gx + sx, gy + sy, dx, dy, colour);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn put(&mut self, x: usize, y: usize, dx: isize, dy: isize, colour: u8) {
        let (Some(x), Some(y)) = (x.checked_add_signed(dx), y.checked_add_signed(dy)) else {
            return;
        };
        if x < self.width && y < self.height {
            self.pixels[y * self.width + x] = colour;
        }
    }
}

/// Canonical (RAS) volumes of one case, and how to draw them.
pub struct SliceSource<'a> {
    pub ct: ArrayView3<'a, f32>,
    pub reference: Option<ArrayView3<'a, u8>>,
    pub prediction: ArrayView3<'a, u8>,
    /// The lung mask the prediction was filtered with, if it was kept.
    pub lungs: Option<ArrayView3<'a, u8>>,
    /// Canonical in-plane spacing (mm) along x and y.
    pub spacing: [f64; 2],
    /// [lo, hi] HU mapped to black..white.
    pub window: [f32; 2],
}

impl SliceSource<'_> {
    /// Axial slice `k` drawn about `longest` pixels along its longer side (keeping the aspect of
    /// the voxels in mm), contours on top: the prediction over the reference over the lungs where
    /// they meet.
    pub fn draw(&self, k: usize, longest: usize) -> Picture {
        let (nx, ny, _) = self.ct.dim();
        let width_mm = nx as f64 * self.spacing[0];
        let height_mm = ny as f64 * self.spacing[1];
        let mm_per_pixel = width_mm.max(height_mm) / longest as f64;
        let width = ((width_mm / mm_per_pixel).round() as usize).max(1);
        let height = ((height_mm / mm_per_pixel).round() as usize).max(1);
        let reference = self.reference.map(|r| contour(r, k));
        let prediction = contour(self.prediction, k);
        let lungs = self.lungs.map(|l| contour(l, k));
        let [lo, hi] = self.window;
        let mut pixels = Vec::with_capacity(width * height);
        for row in 0..height {
            // Anterior (large y) at the top, the patient's right (large x) on the left.
            let y = ny - 1 - (row * ny / height).min(ny - 1);
            for col in 0..width {
                let x = nx - 1 - (col * nx / width).min(nx - 1);
                let at = x + nx * y;
                let index = if prediction[at] {
                    PREDICTION
                } else if reference.as_ref().is_some_and(|r| r[at]) {
                    REFERENCE
                } else if lungs.as_ref().is_some_and(|l| l[at]) {
                    LUNGS
                } else {
                    let t = ((self.ct[[x, y, k]] - lo) / (hi - lo)).clamp(0.0, 1.0);
                    (t * f32::from(GRAY_LEVELS - 1)).round() as u8
                };
                pixels.push(index);
            }
        }
        Picture {
            width,
            height,
            pixels,
        }
    }
}

/// Voxels of `mask` on each axial slice.
pub fn voxels_per_slice(mask: ArrayView3<u8>) -> Vec<usize> {
    mask.axis_iter(ndarray::Axis(2))
        .map(|plane| plane.iter().filter(|v| **v != 0).count())
        .collect()
}

/// The mask's in-plane boundary on axial slice `k`: voxels with a 4-neighbour outside the mask,
/// indexed x + nx * y.
pub fn contour(mask: ArrayView3<u8>, k: usize) -> Vec<bool> {
    let (nx, ny, _) = mask.dim();
    let on = |x: usize, y: usize| mask[[x, y, k]] != 0;
    let mut out = vec![false; nx * ny];
    for y in 0..ny {
        for x in 0..nx {
            if !on(x, y) {
                continue;
            }
            let edge = x == 0 || y == 0 || x + 1 == nx || y + 1 == ny;
            out[x + nx * y] =
                edge || !on(x - 1, y) || !on(x + 1, y) || !on(x, y - 1) || !on(x, y + 1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn slices_are_drawn_radiologically_with_contours() {
        // The patient's right (x = nx - 1) is bright: it must land on the viewer's left.
        let mut ct = Array3::<f32>::from_elem((4, 4, 1), -1000.0);
        for y in 0..4 {
            ct[[3, y, 0]] = 1000.0;
        }
        let mut prediction = Array3::<u8>::zeros((4, 4, 1));
        prediction[[0, 3, 0]] = 1; // left, anterior: top right of the picture
        let mut lungs = Array3::<u8>::zeros((4, 4, 1));
        lungs[[0, 0, 0]] = 1; // left, posterior: bottom right
        lungs[[0, 3, 0]] = 1; // under the prediction, which wins
        let source = SliceSource {
            ct: ct.view(),
            reference: None,
            prediction: prediction.view(),
            lungs: Some(lungs.view()),
            spacing: [1.0, 1.0],
            window: [-1000.0, 1000.0],
        };
        let picture = source.draw(0, 4);
        assert_eq!((picture.width, picture.height), (4, 4));
        assert_eq!(picture.pixels[0], WHITE);
        assert_eq!(picture.pixels[3], PREDICTION);
        assert_eq!(picture.pixels[4 * 3 + 1], 0);
        assert_eq!(picture.pixels[4 * 3 + 3], LUNGS);
    }
}
