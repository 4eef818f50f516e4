//! The report's slice viewer: for each case every axial slice as a picture beside the page, and
//! the page's part that scrolls through them (vanilla JavaScript, no network: it opens from
//! `file://`). The CT is a JPEG in one wide window ([`BASE_WINDOW`]) that the page windows again
//! with an SVG linear transfer, so presets and free window/level need no other pictures; the
//! reference and the prediction are transparent PNGs (contour and filled) and the lungs a contour,
//! written only for the slices that hold them.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use ct_preprocess::mask::Components;
use ndarray::{ArrayView3, Axis};
use serde::Serialize;

use crate::render::{LUNGS, PREDICTION, REFERENCE, SliceSource, contour, palette};
use crate::report::escape;

/// Folder of the report that holds the viewer's pictures, one subfolder per case.
pub const VIEWER_DIR: &str = "viewer";
/// HU the CT pictures span, black to white: from air to dense bone, so that the lung (-1350 to
/// 150), mediastinum (-160 to 240) and bone (-500 to 1300) windows are all cut from it, at about
/// 10 HU per grey level.
pub const BASE_WINDOW: [f32; 2] = [-1024.0, 1400.0];
/// Pictures are at most this many pixels along a side: a larger CT is shown at half (or a
/// quarter...) of its in-plane resolution.
pub const MAX_PIXELS: usize = 512;
const JPEG_QUALITY: u8 = 92;

/// What the page needs to know of one case's pictures (written into it as JSON).
#[derive(Debug, Clone, Serialize)]
pub struct ViewerCase {
    pub id: String,
    /// The case's picture folder, relative to the page.
    pub dir: String,
    pub slices: usize,
    /// Pictures' pixels, and the width/height ratio they are shown at (the voxels' mm).
    pub width: usize,
    pub height: usize,
    pub aspect: f64,
    /// Slices with a reference, prediction or lung picture.
    pub reference: Vec<usize>,
    pub prediction: Vec<usize>,
    pub lungs: Vec<usize>,
    /// The central slice of every reference and predicted lesion (sorted, once each).
    pub lesions: Vec<usize>,
    /// The slice shown first: most reference tumour, else most predicted, else the middle.
    pub start: usize,
    /// One line under the picture (Dice, volumes, lesions), which the report fills in.
    pub facts: String,
    /// The prediction's volume (ml) and connected components.
    pub predicted_ml: f64,
    pub predicted_lesions: usize,
}

/// Writes the pictures of case `id` into `report_dir/viewer/<id>/`: the CT and masks of `source`
/// (its window is not used: the page windows the CT), with the reference's and the prediction's
/// voxels per slice (all 0 without a reference) and one voxel's volume in ml.
pub fn write_case(
    id: &str,
    source: &SliceSource,
    [reference_per_slice, predicted_per_slice]: [&[usize]; 2],
    voxel_ml: f64,
    report_dir: &Path,
) -> anyhow::Result<ViewerCase> {
    let dir = format!("{VIEWER_DIR}/{id}");
    let out = report_dir.join(&dir);
    std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
    let (nx, ny, depth) = source.ct.dim();
    let step = nx.max(ny).div_ceil(MAX_PIXELS).max(1);
    let (width, height) = (nx.div_ceil(step), ny.div_ceil(step));
    // Radiological view: anterior (large y) at the top, the patient's right (large x) on the left.
    let pixel = |row: usize, col: usize| [nx - 1 - col * step, ny - 1 - row * step];
    let [lo, hi] = BASE_WINDOW;
    for k in 0..depth {
        let plane = source.ct.index_axis(Axis(2), k);
        let mut grey = image::GrayImage::new(width as u32, height as u32);
        for (col, row, px) in grey.enumerate_pixels_mut() {
            let [x, y] = pixel(row as usize, col as usize);
            let t = ((plane[[x, y]] - lo) / (hi - lo)).clamp(0.0, 1.0);
            *px = image::Luma([(t * 255.0).round() as u8]);
        }
        let path = out.join(format!("ct_{k:04}.jpg"));
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY)
            .encode_image(&grey)
            .with_context(|| format!("{}: cannot encode", path.display()))?;
        std::fs::write(&path, bytes)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    let layer = |mask: ArrayView3<u8>, name: &str, index: u8, filled_too: bool| {
        let colour = palette()[usize::from(index)];
        write_layer(
            mask,
            [width, height],
            &pixel,
            &out,
            name,
            colour,
            filled_too,
        )
    };
    let reference = match source.reference {
        Some(mask) => layer(mask, "reference", REFERENCE, true)?,
        None => Vec::new(),
    };
    let prediction = layer(source.prediction, "prediction", PREDICTION, true)?;
    let lungs = match source.lungs {
        Some(mask) => layer(mask, "lungs", LUNGS, false)?,
        None => Vec::new(),
    };

    let predicted = central_slices(source.prediction);
    let predicted_lesions = predicted.len();
    let mut lesions: Vec<usize> = source
        .reference
        .iter()
        .flat_map(|mask| central_slices(*mask))
        .chain(predicted)
        .collect();
    lesions.sort_unstable();
    lesions.dedup();
    let most = |counts: &[usize]| {
        (0..counts.len())
            .max_by_key(|&k| (counts[k], std::cmp::Reverse(k)))
            .filter(|&k| counts[k] > 0)
    };
    let start = most(reference_per_slice)
        .or_else(|| most(predicted_per_slice))
        .unwrap_or(depth / 2);
    let width_mm = nx as f64 * source.spacing[0];
    let height_mm = ny as f64 * source.spacing[1];
    Ok(ViewerCase {
        id: id.to_string(),
        dir,
        slices: depth,
        width,
        height,
        aspect: width_mm / height_mm,
        reference,
        prediction,
        lungs,
        lesions,
        start,
        facts: String::new(),
        predicted_ml: predicted_per_slice.iter().sum::<usize>() as f64 * voxel_ml,
        predicted_lesions,
    })
}

/// Writes `<name>_KKKK.png` (RGBA, `colour` on transparent: the contour) for every slice where
/// `mask` holds voxels and, if `filled_too`, `<name>_fill_KKKK.png` (the contour opaque, the
/// inside half transparent) from the same contour. Returns those slices.
fn write_layer(
    mask: ArrayView3<u8>,
    [width, height]: [usize; 2],
    pixel: &impl Fn(usize, usize) -> [usize; 2],
    out: &Path,
    name: &str,
    [r, g, b]: [u8; 3],
    filled_too: bool,
) -> anyhow::Result<Vec<usize>> {
    let (nx, _, depth) = mask.dim();
    let mut slices = Vec::new();
    for k in 0..depth {
        let plane = mask.index_axis(Axis(2), k);
        if plane.iter().all(|v| *v == 0) {
            continue;
        }
        let edge = contour(mask, k);
        let mut outline = image::RgbaImage::new(width as u32, height as u32);
        let mut filled = filled_too.then(|| outline.clone());
        for (col, row, px) in outline.enumerate_pixels_mut() {
            let [x, y] = pixel(row as usize, col as usize);
            let on_edge = edge[x + nx * y];
            if on_edge {
                *px = image::Rgba([r, g, b, 255]);
            }
            if let Some(filled) = &mut filled
                && plane[[x, y]] != 0
            {
                let alpha = if on_edge { 255 } else { 110 };
                filled.put_pixel(col, row, image::Rgba([r, g, b, alpha]));
            }
        }
        for (picture, suffix) in [(Some(outline), ""), (filled, "_fill")] {
            let Some(picture) = picture else { continue };
            let path = out.join(format!("{name}{suffix}_{k:04}.png"));
            picture
                .save_with_format(&path, image::ImageFormat::Png)
                .with_context(|| format!("{}: cannot write", path.display()))?;
        }
        slices.push(k);
    }
    Ok(slices)
}

/// The axial slice in the middle of each connected component's extent.
fn central_slices(mask: ArrayView3<u8>) -> Vec<usize> {
    let components = Components::of(mask);
    let mut extents = vec![[usize::MAX, 0]; components.count()];
    components.for_each_voxel(|[_, _, k], label| {
        let extent = &mut extents[label as usize - 1];
        *extent = [extent[0].min(k), extent[1].max(k)];
    });
    extents.iter().map(|[lo, hi]| (lo + hi) / 2).collect()
}

/// The viewers' part of the page: one section per case, the SVG filter that windows the CT and the
/// script that drives them. `cases` in the order of the per-case table.
pub fn html(cases: &[ViewerCase]) -> String {
    let mut html = String::new();
    html.push_str(
        "<h2>Slice viewer</h2>\n<p>Every axial slice of each case, in the radiological view (the \
         patient's right on the left, anterior up). Scroll with the mouse wheel over the picture, \
         the arrow keys or the slider; Page Up/Down move 10 slices; N and P jump to the next and \
         previous lesion (reference or predicted). Window presets or a free window and level \
         (HU). The CT pictures are JPEGs of the window [-1024, 1400] HU (about 10 HU per grey \
         level) at the CT's in-plane resolution, halved until a side is at most 512 pixels.</p>\n",
    );
    html.push_str(
        "<svg width=\"0\" height=\"0\" style=\"position:absolute\" aria-hidden=\"true\"><defs>",
    );
    for (n, _) in cases.iter().enumerate() {
        let _ = write!(
            html,
            "<filter id=\"wl{n}\" color-interpolation-filters=\"sRGB\"><feComponentTransfer>\
             <feFuncR type=\"linear\"/><feFuncG type=\"linear\"/><feFuncB type=\"linear\"/>\
             </feComponentTransfer></filter>"
        );
    }
    html.push_str("</defs></svg>\n");
    for (n, case) in cases.iter().enumerate() {
        let id = escape(&case.id);
        let _ = writeln!(
            html,
            "<section class=\"viewer\" id=\"viewer-{id}\" data-index=\"{n}\" tabindex=\"0\" \
             aria-label=\"slice viewer of {id}\">\n<h3>{id}</h3>\n\
             <div class=\"stack\" style=\"aspect-ratio:{aspect:.4}\">\
             <img class=\"ct\" alt=\"CT slice\" style=\"filter:url(#wl{n})\">\
             <img class=\"layer lungs\" alt=\"\"><img class=\"layer reference\" alt=\"\">\
             <img class=\"layer prediction\" alt=\"\"></div>\n\
             <div class=\"controls\">\
             <label>slice <input type=\"range\" class=\"slice\" min=\"1\" max=\"{slices}\"></label> \
             <button type=\"button\" class=\"previous-lesion\">previous lesion</button> \
             <button type=\"button\" class=\"next-lesion\">next lesion</button><br>\
             <label>window <select class=\"preset\"><option value=\"-1350,150\">lung</option>\
             <option value=\"-160,240\">mediastinum</option><option value=\"-500,1300\">bone\
             </option><option value=\"free\">free</option></select></label> \
             <label>W <input type=\"number\" class=\"width\" step=\"10\" min=\"1\"></label> \
             <label>L <input type=\"number\" class=\"level\" step=\"10\"></label><br>\
             <label><input type=\"checkbox\" class=\"show-reference\" checked> \
             <span class=\"ref\">reference</span></label> \
             <label><input type=\"checkbox\" class=\"show-prediction\" checked> \
             <span class=\"pred\">prediction</span></label> \
             <label><input type=\"checkbox\" class=\"show-lungs\"> \
             <span class=\"lungs\">lungs</span></label> \
             <label>drawn as <select class=\"style\"><option value=\"\">contours</option>\
             <option value=\"_fill\">filled</option></select></label> \
             <label>opacity <input type=\"range\" class=\"opacity\" min=\"0\" max=\"100\" \
             value=\"100\"></label></div>\n<p class=\"status\" aria-live=\"polite\"></p></section>",
            aspect = case.aspect,
            slices = case.slices,
        );
    }
    let data = serde_json::to_string(cases).expect("viewer data serialises");
    // `</` cannot end the script early in JSON that names cases.
    let [lo, hi] = BASE_WINDOW;
    let _ = writeln!(
        html,
        "<script>const VIEWER_CASES = {};\n{}</script>",
        data.replace("</", "<\\/"),
        SCRIPT.replace("__BASE__", &format!("[{lo}, {hi}]"))
    );
    html
}

/// The styles the viewer adds to the page.
pub const STYLE: &str = ".viewer{margin:1em 0 2em;padding:.5em;border:1px solid #ccc;max-width:560px}\
    .viewer:focus{outline:2px solid #36c}\
    .stack{position:relative;width:512px;max-width:100%;background:#000}\
    .stack img{position:absolute;left:0;top:0;width:100%;height:100%;image-rendering:pixelated}\
    .controls{margin-top:.5em;line-height:2}.controls input[type=number]{width:5em}\
    .status{font-family:monospace}";

/// The page's script; `__BASE__` becomes [`BASE_WINDOW`].
const SCRIPT: &str = include_str!("viewer.js");
