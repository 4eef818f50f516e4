//! `curves.png`: training and validation loss (left) and the two validation Dice figures (right)
//! per epoch, with the axis ranges written in a tiny built-in digit font.

use std::path::Path;

use image::{ImageEncoder, Rgb, RgbImage};

/// One epoch's figures (NaN where not measured).
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub case_dice: f64,
    pub pooled_dice: f64,
}

/// A curve: its colour and how to read its value from a point.
type Series = (Rgb<u8>, fn(&Point) -> f64);

const PANEL_W: u32 = 460;
const PANEL_H: u32 = 300;
const MARGIN: u32 = 40;
const BLUE: Rgb<u8> = Rgb([31, 119, 180]);
const ORANGE: Rgb<u8> = Rgb([255, 127, 14]);
const GREEN: Rgb<u8> = Rgb([44, 160, 44]);
const PURPLE: Rgb<u8> = Rgb([148, 103, 189]);
const GREY: Rgb<u8> = Rgb([220, 220, 220]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);

/// Draws the curves and writes them atomically to `path`. Legend: left panel blue = training
/// loss, orange = validation loss; right panel green = mean per-case Dice, purple = pooled soft
/// Dice (the reference's figure).
pub fn write_curves(path: &Path, points: &[Point]) -> anyhow::Result<()> {
    let width = 2 * (PANEL_W + 2 * MARGIN);
    let height = PANEL_H + 2 * MARGIN;
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let last_epoch = points.iter().map(|p| p.epoch).max().unwrap_or(1).max(1);
    let max_loss = points
        .iter()
        .flat_map(|p| [p.train_loss, p.val_loss])
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-6);
    let panels: [(u32, f64, [Series; 2]); 2] = [
        (
            MARGIN,
            max_loss,
            [(BLUE, |p| p.train_loss), (ORANGE, |p| p.val_loss)],
        ),
        (
            3 * MARGIN + PANEL_W,
            1.0,
            [(GREEN, |p| p.case_dice), (PURPLE, |p| p.pooled_dice)],
        ),
    ];
    for (left, y_max, series) in panels {
        let top = MARGIN;
        for i in 0..=4 {
            let y = top + PANEL_H * i / 4;
            line(&mut img, (left, y), (left + PANEL_W, y), GREY);
        }
        line(&mut img, (left, top), (left, top + PANEL_H), BLACK);
        line(
            &mut img,
            (left, top + PANEL_H),
            (left + PANEL_W, top + PANEL_H),
            BLACK,
        );
        text(
            &mut img,
            left.saturating_sub(36),
            top - 4,
            &format_value(y_max),
        );
        text(&mut img, left.saturating_sub(12), top + PANEL_H - 4, "0");
        text(&mut img, left, top + PANEL_H + 8, "1");
        let label = last_epoch.to_string();
        text(
            &mut img,
            left + PANEL_W - 8 * label.len() as u32,
            top + PANEL_H + 8,
            &label,
        );
        let to_pixel = |epoch: usize, value: f64| {
            let fx = if last_epoch > 1 {
                (epoch - 1) as f64 / (last_epoch - 1) as f64
            } else {
                0.5
            };
            let fy = (value / y_max).clamp(0.0, 1.0);
            (
                left + (fx * f64::from(PANEL_W)) as u32,
                top + PANEL_H - (fy * f64::from(PANEL_H)) as u32,
            )
        };
        for (n, (colour, value)) in series.iter().enumerate() {
            // legend swatch
            let sx = left + 10 + 30 * n as u32;
            for dy in 0..8 {
                line(
                    &mut img,
                    (sx, top + 6 + dy),
                    (sx + 20, top + 6 + dy),
                    *colour,
                );
            }
            let measured: Vec<(u32, u32)> = points
                .iter()
                .filter(|p| value(p).is_finite())
                .map(|p| to_pixel(p.epoch, value(p)))
                .collect();
            for pair in measured.windows(2) {
                line(&mut img, pair[0], pair[1], *colour);
            }
            for &(x, y) in &measured {
                for d in 0..3 {
                    line(
                        &mut img,
                        (x.saturating_sub(1), y.saturating_sub(1) + d),
                        (x + 1, y.saturating_sub(1) + d),
                        *colour,
                    );
                }
            }
        }
    }
    ct_io::atomic::write_atomically(path, |out| {
        image::codecs::png::PngEncoder::new(out)
            .write_image(img.as_raw(), width, height, image::ExtendedColorType::Rgb8)
            .map_err(std::io::Error::other)
    })?;
    Ok(())
}

fn format_value(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Bresenham's line, clipped to the image.
fn line(img: &mut RgbImage, (x0, y0): (u32, u32), (x1, y1): (u32, u32), colour: Rgb<u8>) {
    let (mut x, mut y) = (i64::from(x0), i64::from(y0));
    let (x1, y1) = (i64::from(x1), i64::from(y1));
    let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
    let (sx, sy) = (if x < x1 { 1 } else { -1 }, if y < y1 { 1 } else { -1 });
    let mut err = dx + dy;
    loop {
        if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, colour);
        }
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// Digits, '.' and '-' in a 3x5 font, drawn at twice the size.
fn text(img: &mut RgbImage, x: u32, y: u32, s: &str) {
    const GLYPHS: [(char, [u8; 5]); 12] = [
        ('0', [7, 5, 5, 5, 7]),
        ('1', [2, 6, 2, 2, 7]),
        ('2', [7, 1, 7, 4, 7]),
        ('3', [7, 1, 7, 1, 7]),
        ('4', [5, 5, 7, 1, 1]),
        ('5', [7, 4, 7, 1, 7]),
        ('6', [7, 4, 7, 5, 7]),
        ('7', [7, 1, 1, 1, 1]),
        ('8', [7, 5, 7, 5, 7]),
        ('9', [7, 5, 7, 1, 7]),
        ('.', [0, 0, 0, 0, 2]),
        ('-', [0, 0, 7, 0, 0]),
    ];
    for (n, c) in s.chars().enumerate() {
        let Some((_, rows)) = GLYPHS.iter().find(|(g, _)| *g == c) else {
            continue;
        };
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                        let px = x + 8 * n as u32 + 2 * col + dx;
                        let py = y + 2 * r as u32 + dy;
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, BLACK);
                        }
                    }
                }
            }
        }
    }
}
