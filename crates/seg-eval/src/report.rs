//! `report/`: what a person looks at to trust a run. PNG overlays of the slices with the most
//! tumour of each evaluated case, a slice viewer per case (`viewer.rs`) and `report.html`, one
//! page that opens offline with the summary, the sortable per-case table, the viewers, the
//! training curves and the overlays (all beside it in the same folder).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use ct_io::{Reorientation, read_mask_with, read_volume};

use crate::evaluate::{Statistic, Summary};
use crate::metrics::CaseMetrics;
use crate::predict::PredictionNotes;
use crate::render::{LUNGS, PREDICTION, REFERENCE, SliceSource, palette, voxels_per_slice};
use crate::viewer::{self, ViewerCase};

pub const REPORT_FILE: &str = "report.html";
const OVERLAYS_DIR: &str = "overlays";

/// Where a report's material comes from.
pub struct ReportInputs<'a> {
    pub title: String,
    /// CT, reference and prediction file of each case, in the evaluation's order.
    pub cases: Vec<CaseFiles>,
    /// The evaluation: per case, and its summary; empty and None for CTs without references
    /// (a user's own, imagesTs), whose report shows the predictions alone.
    pub per_case: &'a [CaseMetrics],
    pub summary: Option<&'a Summary>,
    /// The run's `curves.png`, if there is one.
    pub curves: Option<PathBuf>,
    /// Lines describing the model and the run.
    pub facts: Vec<(String, String)>,
    pub slices_per_case: usize,
    pub window: [f32; 2],
}

#[derive(Debug, Clone)]
pub struct CaseFiles {
    pub id: String,
    pub ct: PathBuf,
    /// None for a CT without a reference.
    pub reference: Option<PathBuf>,
    pub prediction: PathBuf,
    /// The lung mask the prediction was filtered with, if the predict stage kept one.
    pub lungs: Option<PathBuf>,
    /// What the predict stage recorded of this case, if it did.
    pub notes: Option<PredictionNotes>,
}

/// One overlay as the page shows it.
struct Overlay {
    file: String,
    caption: String,
}

/// The report of predictions without references (a user's own CTs, imagesTs): each CT of
/// `cts` (NIfTI files) with its mask of the same case id in `predictions` (and the lung mask and
/// notes the predict stage kept beside them), into `out`.
pub fn write_unlabelled_report(
    cts: &Path,
    predictions: &Path,
    window: [f32; 2],
    out: &Path,
) -> anyhow::Result<PathBuf> {
    let masks = ct_io::task::nifti_files(predictions)?;
    let notes = crate::stage::read_notes(predictions);
    let cases = ct_io::task::nifti_files(cts)?
        .into_iter()
        .map(|ct| {
            let id = ct_io::task::strip_nifti_extension(&ct).unwrap_or_default();
            let prediction = masks
                .iter()
                .find(|m| ct_io::task::strip_nifti_extension(m).as_deref() == Some(id.as_str()))
                .with_context(|| {
                    format!(
                        "{}: no mask for {id} in {}",
                        ct.display(),
                        predictions.display()
                    )
                })?;
            let name = prediction
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let lungs = predictions.join(crate::stage::LUNGS_DIR).join(&name);
            Ok(CaseFiles {
                id,
                ct,
                reference: None,
                prediction: prediction.clone(),
                lungs: lungs.is_file().then_some(lungs),
                notes: notes.get(&name).cloned(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(
        !cases.is_empty(),
        "{}: no CTs (.nii, .nii.gz) here",
        cts.display()
    );
    let inputs = ReportInputs {
        title: format!("lungseg predictions: {}", predictions.display()),
        cases,
        per_case: &[],
        summary: None,
        curves: None,
        facts: [
            ("CTs".to_string(), cts.display().to_string()),
            ("predictions".to_string(), predictions.display().to_string()),
        ]
        .into_iter()
        .chain(
            notes
                .values()
                .next()
                .map(|n| ("prediction".to_string(), n.method())),
        )
        .collect(),
        slices_per_case: 1,
        window,
    };
    write_report(&inputs, out)
}

/// Writes the report into `out` (replaced as a whole: the new report appears complete).
pub fn write_report(inputs: &ReportInputs, out: &Path) -> anyhow::Result<PathBuf> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("{}: cannot create", parent.display()))?;
    let _lock = ct_io::lock::lock_folder(out)?;
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = build(inputs, &tmp).and_then(|()| {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        if out.exists() {
            std::fs::rename(out, &old)
                .with_context(|| format!("moving {} aside", out.display()))?;
        }
        std::fs::rename(&tmp, out).with_context(|| format!("renaming into {}", out.display()))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result?;
    Ok(out.join(REPORT_FILE))
}

fn build(inputs: &ReportInputs, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join(OVERLAYS_DIR))
        .with_context(|| format!("{}: cannot create", dir.display()))?;
    let bar = ct_io::cli::progress_bar(inputs.cases.len() as u64, "report");
    let mut overlays = Vec::new();
    let mut viewers = Vec::new();
    for case in &inputs.cases {
        let (mut pictures, viewer) = draw_case(case, inputs, dir)?;
        overlays.append(&mut pictures);
        viewers.push(viewer);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let curves = match &inputs.curves {
        Some(path) if path.is_file() => {
            std::fs::copy(path, dir.join("curves.png"))
                .with_context(|| format!("copying {}", path.display()))?;
            Some("curves.png".to_string())
        }
        _ => None,
    };
    let html = page(inputs, &overlays, curves.as_deref(), &viewers);
    std::fs::write(dir.join(REPORT_FILE), html)
        .with_context(|| format!("{}: cannot write the page", dir.display()))?;
    Ok(())
}

/// The case's overlays and its viewer's pictures, written into `dir`.
fn draw_case(
    case: &CaseFiles,
    inputs: &ReportInputs,
    dir: &Path,
) -> anyhow::Result<(Vec<Overlay>, ViewerCase)> {
    let ct = read_volume(&case.ct)?;
    let options = ct_io::ReadOptions::default();
    let read = |path: &Option<PathBuf>| match path {
        Some(path) => read_mask_with(path, &options).map(Some),
        None => Ok(None),
    };
    let reference = read(&case.reference)?;
    let prediction = read_mask_with(&case.prediction, &options)?;
    let lungs = read(&case.lungs)?;
    let shape_of = |mask: &Option<ct_io::Mask>| mask.as_ref().map(|m| m.geometry.shape);
    for (path, shape) in [
        (case.reference.as_ref(), shape_of(&reference)),
        (Some(&case.prediction), Some(prediction.geometry.shape)),
        (case.lungs.as_ref(), shape_of(&lungs)),
    ]
    .into_iter()
    .filter_map(|(path, shape)| path.zip(shape))
    {
        ensure!(
            shape == ct.geometry.shape,
            "{}: shape {shape:?} differs from its CT {} ({:?})",
            path.display(),
            case.ct.display(),
            ct.geometry.shape
        );
    }
    let reorientation = Reorientation::to_canonical(&ct.geometry);
    let spacing = reorientation.canonical_geometry(&ct.geometry).spacing;
    let source = SliceSource {
        ct: reorientation.canonical_view(ct.data.view()),
        reference: reference
            .as_ref()
            .map(|r| reorientation.canonical_view(r.data.view())),
        prediction: reorientation.canonical_view(prediction.data.view()),
        lungs: lungs
            .as_ref()
            .map(|l| reorientation.canonical_view(l.data.view())),
        spacing: [spacing[0], spacing[1]],
        window: inputs.window,
    };
    let predicted_counts = voxels_per_slice(source.prediction);
    let depth = predicted_counts.len();
    let reference_counts = source.reference.map_or(vec![0; depth], voxels_per_slice);
    // The slices with the most tumour: reference first, then prediction; else the middle one.
    let mut order: Vec<usize> = (0..depth).collect();
    order.sort_by_key(|&k| {
        (
            std::cmp::Reverse(reference_counts[k]),
            std::cmp::Reverse(predicted_counts[k]),
            k.abs_diff(depth / 2),
        )
    });
    let mut overlays = Vec::new();
    for &k in order.iter().take(inputs.slices_per_case) {
        let mut picture = source.draw(k, 512);
        picture.label(&format!("{} slice {}/{}", case.id, k, depth), 6, 6, 2);
        let file = format!("{OVERLAYS_DIR}/{}_slice{k:04}.png", case.id);
        std::fs::write(dir.join(&file), picture.png()?)
            .with_context(|| format!("{}: cannot write", dir.join(&file).display()))?;
        overlays.push(Overlay {
            file,
            caption: match source.reference {
                Some(_) => format!(
                    "{}, axial slice {k} of {depth} (from the inferior end): reference {} px, \
                     predicted {} px",
                    case.id, reference_counts[k], predicted_counts[k]
                ),
                None => format!(
                    "{}, axial slice {k} of {depth} (from the inferior end): predicted {} px",
                    case.id, predicted_counts[k]
                ),
            },
        });
    }
    let voxel_ml = spacing.iter().product::<f64>() / 1000.0;
    let mut viewer = viewer::write_case(
        &case.id,
        &source,
        [&reference_counts, &predicted_counts],
        voxel_ml,
        dir,
    )?;
    viewer.facts = match inputs.per_case.iter().find(|m| m.case == case.id) {
        Some(m) => format!(
            "Dice {} · reference {:.2} ml, predicted {:.2} ml · lesions {} ({} found), {} false \
             positive(s)",
            number(m.dice),
            m.reference_ml,
            m.predicted_ml,
            m.reference_lesions,
            m.detected_lesions,
            m.false_positive_lesions
        ),
        None => format!(
            "no reference · predicted {:.2} ml in {} component(s)",
            viewer.predicted_ml, viewer.predicted_lesions
        ),
    };
    Ok((overlays, viewer))
}

fn page(
    inputs: &ReportInputs,
    overlays: &[Overlay],
    curves: Option<&str>,
    viewers: &[ViewerCase],
) -> String {
    let colour = |index: u8| {
        let [r, g, b] = palette()[usize::from(index)];
        format!("#{r:02x}{g:02x}{b:02x}")
    };
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n<style>\
         body{{font-family:sans-serif;margin:2em;max-width:1200px}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}}\
         th{{background:#eee}}td:first-child,th:first-child{{text-align:left}}\
         figure{{display:inline-block;margin:0 1em 1em 0;vertical-align:top}}figcaption{{max-width:512px;font-size:90%}}\
         .ref{{color:{reference};font-weight:bold}}.pred{{color:{prediction};font-weight:bold}}\
         .lungs{{color:{lungs};font-weight:bold}}\
         th button{{font:inherit;font-weight:bold;background:none;border:0;cursor:pointer;padding:0}}\
         {viewer_style}</style></head><body>\n<h1>{title}</h1>\n",
        title = escape(&inputs.title),
        reference = colour(REFERENCE),
        prediction = colour(PREDICTION),
        lungs = colour(LUNGS),
        viewer_style = viewer::STYLE,
    );
    let notes = |case: &str| {
        inputs
            .cases
            .iter()
            .find(|f| f.id == case)
            .and_then(|f| f.notes.as_ref())
    };
    let has_notes = inputs.cases.iter().any(|f| f.notes.is_some());
    html.push_str("<table>\n");
    for (key, value) in &inputs.facts {
        let _ = writeln!(
            html,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(key),
            escape(value)
        );
    }
    html.push_str("</table>\n");

    match inputs.summary {
        Some(s) => {
            let _ = writeln!(
                html,
                "<h2>Summary ({} cases, original resolution)</h2>\n<p>Dice as in the Medical \
                 Segmentation Decathlon and nnU-Net: per case, on thresholded masks in each CT's own \
                 voxel grid; a case whose reference and prediction are both empty is left out of the \
                 mean.</p>\n<table><tr><th>metric</th><th>mean</th><th>median</th><th>std</th>\
                 <th>cases</th></tr>",
                s.cases
            );
            let rows: [(&str, &Statistic); 7] = [
                ("Dice", &s.dice),
                ("IoU", &s.iou),
                ("precision", &s.precision),
                ("recall", &s.recall),
                ("HD95 (mm)", &s.hd95_mm),
                ("reference volume (ml)", &s.reference_ml),
                ("predicted volume (ml)", &s.predicted_ml),
            ];
            for (name, stat) in rows {
                let _ = writeln!(
                    html,
                    "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    number(stat.mean),
                    number(stat.median),
                    number(stat.std),
                    stat.n
                );
            }
            let l = &s.lesions;
            let _ = writeln!(
                html,
                "</table>\n<p>Lesions (connected components): {} in the references, {} detected, \
                 {} missed; {} predicted components touch no reference lesion.</p>",
                l.reference, l.detected, l.missed, l.false_positive
            );
        }
        None => {
            let _ = writeln!(
                html,
                "<h2>Predictions ({} CTs without references)</h2>\n<p>No reference masks: the \
                 volumes and connected components (lesions) predicted in each CT, at its own \
                 resolution.</p>",
                inputs.cases.len()
            );
        }
    }
    let constrained: Vec<&PredictionNotes> = inputs
        .cases
        .iter()
        .filter_map(|f| f.notes.as_ref())
        .filter(|n| n.lung_ml.is_some())
        .collect();
    if !constrained.is_empty() {
        let _ = writeln!(
            html,
            "<p>Lung mask: made for {} of {} cases ({} without lungs found); {} predicted \
             components outside the grown lungs were dropped before evaluation.</p>",
            constrained.len(),
            inputs.cases.len(),
            constrained
                .iter()
                .filter(|n| n.lung_ml == Some(0.0))
                .count(),
            constrained.iter().map(|n| n.outside_lungs).sum::<usize>()
        );
    }

    let labelled = inputs.summary.is_some();
    let mut headers = if labelled {
        vec![
            "case",
            "Dice",
            "IoU",
            "precision",
            "recall",
            "HD95 (mm)",
            "reference ml",
            "predicted ml",
            "lesions",
            "detected",
            "false positives",
        ]
    } else {
        vec!["case", "predicted ml", "predicted lesions"]
    };
    if has_notes {
        headers.extend(["slices seen", "lungs ml", "dropped outside lungs"]);
    }
    html.push_str(
        "<h2>Per case</h2>\n<p>A header sorts the table by its column (again: the other way); a \
         case opens its slice viewer.</p>\n<table class=\"cases\"><thead><tr>",
    );
    for header in headers {
        let _ = write!(html, "<th><button type=\"button\">{header}</button></th>");
    }
    html.push_str("</tr></thead><tbody>\n");
    let cell =
        |shown: String, sort: String| format!("<td data-sort=\"{}\">{shown}</td>", escape(&sort));
    let float = |v: Option<f64>| (number(v), v.map_or(String::new(), |v| v.to_string()));
    let whole = |n: usize| (n.to_string(), n.to_string());
    let link = |id: &str| {
        (
            format!(
                "<a class=\"open-viewer\" href=\"#viewer-{id}\">{id}</a>",
                id = escape(id)
            ),
            id.to_string(),
        )
    };
    let rows: Vec<(&str, Vec<(String, String)>)> = if labelled {
        inputs
            .per_case
            .iter()
            .map(|c| {
                let mut cells = vec![link(&c.case)];
                cells.extend([c.dice, c.iou, c.precision, c.recall, c.hd95_mm].map(float));
                cells.extend(
                    [c.reference_ml, c.predicted_ml].map(|v| (format!("{v:.2}"), v.to_string())),
                );
                cells.extend(
                    [
                        c.reference_lesions,
                        c.detected_lesions,
                        c.false_positive_lesions,
                    ]
                    .map(whole),
                );
                (c.case.as_str(), cells)
            })
            .collect()
    } else {
        viewers
            .iter()
            .map(|v| {
                let cells = vec![
                    link(&v.id),
                    (format!("{:.2}", v.predicted_ml), v.predicted_ml.to_string()),
                    whole(v.predicted_lesions),
                ];
                (v.id.as_str(), cells)
            })
            .collect()
    };
    for (case, mut cells) in rows {
        if has_notes {
            let dash = || ("–".to_string(), String::new());
            match notes(case) {
                Some(n) => {
                    cells.push((
                        format!("{}–{}", n.kept_slices[0], n.kept_slices[1]),
                        (n.kept_slices[1] - n.kept_slices[0]).to_string(),
                    ));
                    cells.push(
                        n.lung_ml
                            .map_or_else(dash, |ml| (format!("{ml:.0}"), ml.to_string())),
                    );
                    cells.push(if n.lung_ml.is_some() {
                        whole(n.outside_lungs)
                    } else {
                        dash()
                    });
                }
                None => cells.extend([dash(), dash(), dash()]),
            }
        }
        html.push_str("<tr>");
        for (shown, sort) in cells {
            html.push_str(&cell(shown, sort));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody></table>\n");
    html.push_str(&viewer::html(viewers));

    if let Some(curves) = curves {
        let _ = writeln!(
            html,
            "<h2>Training</h2>\n<img src=\"{}\" alt=\"training curves\">",
            escape(curves)
        );
    }
    let _ = writeln!(
        html,
        "<h2>Overlays</h2>\n<p>CT in a window of [{}, {}] HU, radiological view (the patient's right on \
         the left, anterior up). Contours: <span class=\"ref\">reference</span>, \
         <span class=\"pred\">prediction</span>{}.</p>",
        inputs.window[0],
        inputs.window[1],
        if inputs.cases.iter().any(|f| f.lungs.is_some()) {
            ", <span class=\"lungs\">lungs</span> (the mask predictions were filtered with)"
        } else {
            ""
        }
    );
    for overlay in overlays {
        let _ = writeln!(
            html,
            "<figure><img src=\"{}\" width=\"512\" alt=\"overlay\"><figcaption>{}</figcaption></figure>",
            escape(&overlay.file),
            escape(&overlay.caption)
        );
    }
    html.push_str("</body></html>\n");
    html
}

fn number(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |v| format!("{v:.3}"))
}

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
