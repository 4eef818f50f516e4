//! `curves.png`: per epoch, the training loss, the validation loss and the two validation Dice
//! figures, each loss in its own panel (they are measured differently: patches against whole
//! slices, so their scales differ), drawn with plotters: axis titles, tick labels, legends, and the
//! best epoch (the checkpoint `best/` holds) marked in every panel.

use std::path::Path;

use anyhow::anyhow;
use image::ImageEncoder;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// One epoch's figures (NaN where not measured).
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub case_dice: f64,
    pub pooled_dice: f64,
}

const WIDTH: u32 = 1500;
const HEIGHT: u32 = 460;
const FONT: &str = "sans-serif";
/// DejaVu Sans (its licence beside it): the text looks the same on every machine, which need not
/// have any font installed.
const FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const PURPLE: RGBColor = RGBColor(148, 103, 189);
const GREY: RGBColor = RGBColor(120, 120, 120);

/// A curve: its name in the legend, colour and value.
type Series = (&'static str, RGBColor, fn(&Point) -> f64);

/// One of the three panels.
struct Panel {
    title: &'static str,
    y_title: &'static str,
    range: std::ops::Range<f64>,
    series: Vec<Series>,
    /// Where the legend hides the least.
    legend: SeriesLabelPosition,
}

/// Draws the curves and writes them atomically to `path`; `best_epoch` is marked.
pub fn write_curves(
    path: &Path,
    points: &[Point],
    best_epoch: Option<usize>,
) -> anyhow::Result<()> {
    register_font(FONT, FontStyle::Normal, FONT_BYTES)
        .map_err(|_| anyhow!("the built-in font cannot be read"))?;
    let mut pixels = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    draw(&mut pixels, points, best_epoch).map_err(|e| anyhow!("drawing the curves: {e}"))?;
    ct_io::atomic::write_atomically(path, |out| {
        image::codecs::png::PngEncoder::new(out)
            .write_image(&pixels, WIDTH, HEIGHT, image::ExtendedColorType::Rgb8)
            .map_err(std::io::Error::other)
    })?;
    Ok(())
}

fn draw(
    pixels: &mut [u8],
    points: &[Point],
    best_epoch: Option<usize>,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(pixels, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let loss_range = |value: fn(&Point) -> f64| {
        let top = points
            .iter()
            .map(value)
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        0.0..(top * 1.1).max(1e-6)
    };
    let panels_drawn = [
        Panel {
            title: "Training loss (augmented patches)",
            y_title: "loss",
            range: loss_range(|p| p.train_loss),
            series: vec![("training loss", BLUE, |p| p.train_loss)],
            legend: SeriesLabelPosition::UpperRight,
        },
        Panel {
            title: "Validation loss (whole slices)",
            y_title: "loss",
            range: loss_range(|p| p.val_loss),
            series: vec![("validation loss", ORANGE, |p| p.val_loss)],
            legend: SeriesLabelPosition::UpperRight,
        },
        Panel {
            title: "Validation Dice",
            y_title: "Dice",
            range: 0.0..1.0,
            series: vec![
                ("mean per-case Dice", GREEN, |p| p.case_dice),
                ("pooled soft Dice (the reference's)", PURPLE, |p| {
                    p.pooled_dice
                }),
            ],
            legend: SeriesLabelPosition::LowerRight,
        },
    ];
    let last_epoch = points.iter().map(|p| p.epoch).max().unwrap_or(1).max(2);
    let epochs = 1.0..last_epoch as f64;
    for (
        area,
        Panel {
            title,
            y_title,
            range: y_range,
            series,
            legend,
        },
    ) in panels.iter().zip(panels_drawn)
    {
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(epochs.clone(), y_range.clone())?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(y_title)
            .x_labels(last_epoch.min(12))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format_value(*y))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (name, colour, value) in series {
            let measured: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| value(p).is_finite())
                .map(|p| (p.epoch as f64, value(p)))
                .collect();
            chart
                .draw_series(LineSeries::new(measured.clone(), colour.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart.draw_series(
                measured
                    .into_iter()
                    .map(|(x, y)| Circle::new((x, y), 3, colour.filled())),
            )?;
        }
        if let Some(best) = best_epoch {
            let x = best as f64;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x, y_range.start), (x, y_range.end)],
                    GREY.stroke_width(1),
                )))?
                .label(format!("best epoch ({best})"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREY));
        }
        chart
            .configure_series_labels()
            .position(legend)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn format_value(v: f64) -> String {
    match v.abs() {
        0.0 => "0".to_string(),
        a if a >= 10.0 => format!("{v:.0}"),
        a if a >= 0.1 => format!("{v:.2}"),
        a if a >= 1e-4 => format!("{v:.4}"),
        _ => format!("{v:.1e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curves_show_each_series_and_mark_the_best_epoch() {
        let points: Vec<Point> = (1..=6)
            .map(|epoch| Point {
                epoch,
                train_loss: 1.0 / epoch as f64,
                val_loss: 0.002 / epoch as f64,
                case_dice: 0.1 * epoch as f64,
                pooled_dice: if epoch == 3 {
                    f64::NAN
                } else {
                    0.12 * epoch as f64
                },
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let (marked, plain) = (dir.path().join("marked.png"), dir.path().join("plain.png"));
        write_curves(&marked, &points, Some(4)).unwrap();
        write_curves(&plain, &points, None).unwrap();
        let image = image::open(&marked).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
        let has = |c: RGBColor| image.pixels().any(|p| p.0 == [c.0, c.1, c.2]);
        for colour in [BLUE, ORANGE, GREEN, PURPLE, GREY] {
            assert!(has(colour), "{colour:?} missing");
        }
        // The validation loss, 500 times smaller than the training loss, gets a panel of its
        // own scale: its curve spans the panel's height, not a line along zero.
        let rows: Vec<u32> = image
            .enumerate_pixels()
            .filter(|(_, _, p)| p.0 == [ORANGE.0, ORANGE.1, ORANGE.2])
            .map(|(_, y, _)| y)
            .collect();
        let span = rows.iter().max().unwrap() - rows.iter().min().unwrap();
        assert!(span > HEIGHT / 2, "validation loss spans {span} px");
        assert_ne!(
            image::open(&plain).unwrap().to_rgb8().into_raw(),
            image.into_raw()
        );
    }
}
