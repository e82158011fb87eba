//! Pictures without the app: a run's curves (`gradscope plot RUN_DIR`) and `verify`'s two
//! validation curves, drawn with plotters to PNG (bitmap backend, encoded with the `png` crate)
//! and SVG. Text is set in the Ubuntu Light face that egui already embeds
//! (`epaint_default_fonts`), registered with plotters' `ab_glyph` renderer: no system font is
//! read, so a bare machine with no fonts installed draws the same labels.
//!
//! A run's curves come from its `metrics.jsonl` (or, without it, `metrics.csv`): one row per
//! optimizer step as `train::metrics` writes them. Panels: loss (train, validation or test),
//! global gradient norm, the gradient noise scale B_simple when the rows carry it, and device
//! memory per category as stacked areas.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::gpu::Category;
use crate::train::verify::VerifyReport;

/// The font family every label is drawn in.
const FONT: &str = "sans-serif";

/// Register the embedded face once for every family plotters asks for.
fn register_fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for family in ["sans-serif", "serif", "monospace"] {
            // the face is egui's own, known to parse; a failure would only lose the labels
            let _ = plotters::style::register_font(family, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT);
        }
    });
}

/// One run's curves, x = optimizer step.
#[derive(Clone, Debug, Default)]
pub struct RunCurves {
    /// The file they were read from.
    pub source: PathBuf,
    pub train_loss: Vec<(f64, f64)>,
    /// The GPT's validation loss.
    pub val_loss: Vec<(f64, f64)>,
    /// The CNN's test loss (running statistics).
    pub test_loss: Vec<(f64, f64)>,
    pub grad_norm: Vec<(f64, f64)>,
    /// The learning rate the step used.
    pub lr: Vec<(f64, f64)>,
    /// B_simple, smoothed, in samples (sequences or images); empty when the run did not measure it.
    pub noise_scale: Vec<(f64, f64)>,
    /// B x K of each step (the noise-scale panel marks E).
    pub effective_batch: Vec<(f64, f64)>,
    /// Bytes per category (`Category::ALL` order) at each step.
    pub memory: Vec<(f64, [u64; 5])>,
}

/// The metrics columns, as `train::metrics` names them.
const MEMORY_COLUMNS: [&str; 5] = ["bytes_parameters", "bytes_gradients", "bytes_optimizer_state", "bytes_activations", "bytes_scratch"];

impl RunCurves {
    /// Read `dir/metrics.jsonl`, or `dir/metrics.csv` when there is no JSONL file.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        if !dir.is_dir() {
            bail!("{} is not a run directory (train writes metrics.jsonl and metrics.csv into its out_dir)", dir.display());
        }
        let jsonl = dir.join("metrics.jsonl");
        let csv = dir.join("metrics.csv");
        let curves = if jsonl.exists() {
            let text = std::fs::read_to_string(&jsonl).with_context(|| format!("cannot read {}", jsonl.display()))?;
            Self::from_jsonl(&text).with_context(|| format!("{}", jsonl.display()))?
        } else if csv.exists() {
            let text = std::fs::read_to_string(&csv).with_context(|| format!("cannot read {}", csv.display()))?;
            Self::from_csv(&text).with_context(|| format!("{}", csv.display()))?
        } else {
            bail!("{} has no metrics.jsonl or metrics.csv (written by `gradscope train` into its out_dir)", dir.display());
        };
        if curves.train_loss.is_empty() && curves.grad_norm.is_empty() {
            bail!("{} holds no optimizer steps yet: nothing to plot", if jsonl.exists() { jsonl.display() } else { csv.display() });
        }
        Ok(Self { source: if jsonl.exists() { jsonl } else { csv }, ..curves })
    }

    /// Rows of `metrics.jsonl`: one JSON object per line with at least `step`.
    pub fn from_jsonl(text: &str) -> anyhow::Result<Self> {
        let mut c = Self::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let row: serde_json::Value = serde_json::from_str(line).map_err(|e| anyhow!("line {}: not a JSON object: {e}", i + 1))?;
            let step = row["step"].as_f64().ok_or_else(|| anyhow!("line {}: no numeric `step`", i + 1))?;
            let num = |key: &str| row[key].as_f64().filter(|v| v.is_finite());
            let mut memory = [0u64; 5];
            if let Some(bytes) = row["memory"]["bytes"].as_array() {
                if bytes.len() != 5 {
                    bail!("line {}: `memory.bytes` has {} entries, not one per category (5)", i + 1, bytes.len());
                }
                for (m, b) in memory.iter_mut().zip(bytes) {
                    *m = b.as_u64().ok_or_else(|| anyhow!("line {}: `memory.bytes` holds {b}, not a byte count", i + 1))?;
                }
            }
            c.push_row(step, num("train_loss"), num("val_loss"), num("test_loss"), num("grad_norm"), num("b_simple"), memory);
            if let Some(lr) = num("lr") {
                c.lr.push((step, lr));
            }
            if let (Some(b), Some(k)) = (num("micro_batch"), num("accum_steps")) {
                c.effective_batch.push((step, b * k));
            }
        }
        Ok(c)
    }

    /// Rows of `metrics.csv`, columns found by the header's names (`step` required).
    pub fn from_csv(text: &str) -> anyhow::Result<Self> {
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().ok_or_else(|| anyhow!("empty file: no header line"))?.split(',').map(str::trim).collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let step_col = col("step").ok_or_else(|| anyhow!("the header has no `step` column: {}", header.join(",")))?;
        let mut c = Self::default();
        for (i, line) in lines.enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let cells: Vec<&str> = line.split(',').collect();
            let lineno = i + 2;
            let num = |name: &str| -> anyhow::Result<Option<f64>> {
                let Some(j) = col(name) else { return Ok(None) };
                match cells.get(j).map(|s| s.trim()) {
                    None | Some("") => Ok(None),
                    Some(s) => s.parse::<f64>().map(|v| v.is_finite().then_some(v)).map_err(|_| anyhow!("line {lineno}: column `{name}` holds {s:?}, not a number")),
                }
            };
            let step = cells
                .get(step_col)
                .and_then(|s| s.trim().parse::<f64>().ok())
                .ok_or_else(|| anyhow!("line {lineno}: no numeric `step`"))?;
            let mut memory = [0u64; 5];
            for (m, name) in memory.iter_mut().zip(MEMORY_COLUMNS) {
                *m = num(name)?.unwrap_or(0.0) as u64;
            }
            c.push_row(step, num("train_loss")?, num("val_loss")?, num("test_loss")?, num("grad_norm")?, num("b_simple")?, memory);
            if let Some(lr) = num("lr")? {
                c.lr.push((step, lr));
            }
            if let (Some(b), Some(k)) = (num("micro_batch")?, num("accum_steps")?) {
                c.effective_batch.push((step, b * k));
            }
        }
        Ok(c)
    }

    #[allow(clippy::too_many_arguments)]
    fn push_row(
        &mut self, step: f64, train: Option<f64>, val: Option<f64>, test: Option<f64>, norm: Option<f64>, b_simple: Option<f64>, memory: [u64; 5],
    ) {
        let put = |v: &mut Vec<(f64, f64)>, y: Option<f64>| {
            if let Some(y) = y {
                v.push((step, y));
            }
        };
        put(&mut self.train_loss, train);
        put(&mut self.val_loss, val);
        put(&mut self.test_loss, test);
        put(&mut self.grad_norm, norm);
        put(&mut self.noise_scale, b_simple.filter(|b| *b > 0.0));
        if memory.iter().any(|&b| b > 0) {
            self.memory.push((step, memory));
        }
    }
}

/// Size of the pictures `plot` writes unless asked otherwise.
pub const DEFAULT_SIZE: (u32, u32) = (1200, 800);

/// Something drawn the same on any plotters backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>;
}

struct RunFigure<'a> {
    curves: &'a RunCurves,
    title: String,
}

impl Figure for RunFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()> {
        draw_run(root, self.curves, &self.title)
    }
}

struct VerifyFigure<'a> {
    check: &'a VerifyReport,
    broken: &'a [(String, VerifyReport)],
}

impl Figure for VerifyFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()> {
        draw_verify(root, self.check, self.broken)
    }
}

/// Write `stem.png` and `stem.svg` of a run's curves; returns the two paths.
pub fn write_run_plots(curves: &RunCurves, stem: &Path, size: (u32, u32)) -> anyhow::Result<Vec<PathBuf>> {
    let title = curves.source.parent().map_or(curves.source.display().to_string(), |p| p.display().to_string());
    let fig = RunFigure { curves, title };
    let png_path = stem.with_extension("png");
    let svg_path = stem.with_extension("svg");
    write_png(&fig, &png_path, size)?;
    write_svg(&fig, &svg_path, size)?;
    Ok(vec![png_path, svg_path])
}

/// Write `verify`'s validation curves (true batch against accumulated, and the broken settings'
/// accumulated curves when it ran them) and their difference against the tolerance, as a PNG.
pub fn write_verify_png(check: &VerifyReport, broken: &[(String, VerifyReport)], path: &Path, size: (u32, u32)) -> anyhow::Result<()> {
    write_png(&VerifyFigure { check, broken }, path, size)
}

fn check_size(size: (u32, u32)) -> anyhow::Result<()> {
    if size.0 < 200 || size.1 < 150 || size.0 > 8000 || size.1 > 8000 {
        bail!("picture size {}x{}: choose between 200x150 and 8000x8000 pixels", size.0, size.1);
    }
    Ok(())
}

fn create_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// Draw onto a bitmap and save it as PNG.
fn write_png(fig: &impl Figure, path: &Path, size: (u32, u32)) -> anyhow::Result<()> {
    check_size(size)?;
    register_fonts();
    let mut buf = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        fig.draw(&root).with_context(|| format!("drawing {}", path.display()))?;
        root.present().map_err(|e| anyhow!("drawing {}: {e:?}", path.display()))?;
    }
    encode_png(path, size, &buf)
}

/// Draw as an SVG document and save it.
fn write_svg(fig: &impl Figure, path: &Path, size: (u32, u32)) -> anyhow::Result<()> {
    check_size(size)?;
    register_fonts();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        fig.draw(&root).with_context(|| format!("drawing {}", path.display()))?;
        root.present().map_err(|e| anyhow!("drawing {}: {e:?}", path.display()))?;
    }
    create_parent(path)?;
    std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))
}

/// Encode an RGB8 buffer as PNG.
fn encode_png(path: &Path, size: (u32, u32), rgb: &[u8]) -> anyhow::Result<()> {
    create_parent(path)?;
    let f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), size.0, size.1);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().with_context(|| format!("cannot write {}", path.display()))?;
    w.write_image_data(rgb).with_context(|| format!("cannot write {}", path.display()))?;
    w.finish().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// plotters' errors carry the backend's error type; keep their text.
fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("{e:?}")
}

/// Series colours (Tableau 10, readable on white).
const COLORS: [RGBColor; 6] =
    [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];

/// `c` blended towards white by `t` (an opaque fill: stacked bands must not show through).
fn lighten(c: RGBColor, t: f64) -> RGBColor {
    let f = |v: u8| (v as f64 + (255.0 - v as f64) * t).round() as u8;
    RGBColor(f(c.0), f(c.1), f(c.2))
}

/// (min, max) of the values, padded by 5% (a flat series gets a unit-wide band).
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return None;
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 * lo.abs().max(1e-3) };
    Some((lo - pad, hi + pad))
}

/// An x tick: steps are whole numbers.
fn step_label(x: f64) -> String {
    if (x - x.round()).abs() < 1e-6 { format!("{}", x.round()) } else { format!("{x:.1}") }
}

/// x range over the steps (one step gets a band of one around it).
fn x_range(series: &[&[(f64, f64)]]) -> (f64, f64) {
    let (lo, hi) = series.iter().flat_map(|s| s.iter().map(|p| p.0)).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() { (0.0, 1.0) } else if hi > lo { (lo, hi) } else { (lo - 1.0, hi + 1.0) }
}

/// One line panel: `series` as (name, points); an optional horizontal line (name, y).
fn line_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>, title: &str, y_desc: &str, series: &[(&str, &[(f64, f64)])], hline: Option<(&str, f64)>,
) -> anyhow::Result<()> {
    let all: Vec<&[(f64, f64)]> = series.iter().map(|s| s.1).collect();
    let (x0, x1) = x_range(&all);
    let ys = series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).chain(hline.map(|h| h.1));
    let (y0, y1) = range(ys).unwrap_or((0.0, 1.0));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .x_label_formatter(&|x| step_label(*x))
        .y_desc(y_desc)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let style = color.stroke_width(2);
        let s = chart.draw_series(LineSeries::new(pts.iter().copied(), style)).map_err(err)?;
        s.label(*name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        if pts.len() < 40 {
            // sparse series (evaluations): mark each point
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
        }
    }
    if let Some((name, y)) = hline {
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(LineSeries::new([(x0, y), (x1, y)], grey.stroke_width(1)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Memory per category as stacked filled areas (MiB).
fn memory_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, memory: &[(f64, [u64; 5])]) -> anyhow::Result<()> {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let xs: Vec<(f64, f64)> = memory.iter().map(|(s, _)| (*s, 0.0)).collect();
    let (x0, x1) = x_range(&[&xs]);
    let top = memory.iter().map(|(_, m)| mib(m.iter().sum())).fold(0.0, f64::max).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption("device memory (byte ledger)", (FONT, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, 0.0..top * 1.3)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .x_label_formatter(&|x| step_label(*x))
        .y_desc("MiB")
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    // each category's band lies on the ones before it: draw the cumulative tops from the largest
    // down, so each lower band paints over the part of the upper one below its own top
    let cumulative: Vec<Vec<(f64, f64)>> = (0..Category::ALL.len())
        .map(|upto| memory.iter().map(|(s, m)| (*s, mib(m[..=upto].iter().sum()))).collect())
        .collect();
    for (i, c) in Category::ALL.iter().enumerate().rev() {
        let color = COLORS[i % COLORS.len()];
        let fill = lighten(color, 0.35);
        chart
            .draw_series(AreaSeries::new(cumulative[i].iter().copied(), 0.0, fill.filled()).border_style(color.stroke_width(1)))
            .map_err(err)?
            .label(c.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], fill.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The panels of a run, two or three per row.
fn draw_run<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, c: &RunCurves, title: &str) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(&format!("gradscope run {title}"), (FONT, 22)).map_err(err)?;
    type Panel<'a, DB> = Box<dyn Fn(&DrawingArea<DB, Shift>) -> anyhow::Result<()> + 'a>;
    let mut panels: Vec<Panel<DB>> = Vec::new();
    panels.push(Box::new(|a| {
        let mut s: Vec<(&str, &[(f64, f64)])> = vec![("train (per step)", &c.train_loss)];
        if !c.val_loss.is_empty() {
            s.push(("validation", &c.val_loss));
        }
        if !c.test_loss.is_empty() {
            s.push(("test", &c.test_loss));
        }
        line_panel(a, "loss", "loss (mean per counted item)", &s, None)
    }));
    panels.push(Box::new(|a| line_panel(a, "global gradient norm (before clipping)", "|g|", &[("|g|", &c.grad_norm)], None)));
    if !c.noise_scale.is_empty() {
        panels.push(Box::new(|a| {
            let e = c.effective_batch.last().map(|p| ("effective batch E", p.1));
            line_panel(a, "gradient noise scale B_simple (SGD assumptions)", "samples", &[("B_simple", &c.noise_scale)], e)
        }));
    }
    if !c.memory.is_empty() {
        panels.push(Box::new(|a| memory_panel(a, &c.memory)));
    }
    if !c.lr.is_empty() {
        panels.push(Box::new(|a| line_panel(a, "learning rate", "lr", &[("lr", &c.lr)], None)));
    }
    let cols = if panels.len() > 4 { 3 } else { 2 };
    let areas = root.split_evenly((panels.len().div_ceil(cols), cols));
    for (p, a) in panels.iter().zip(&areas) {
        p(a)?;
    }
    Ok(())
}

fn draw_verify<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, check: &VerifyReport, broken: &[(String, VerifyReport)]) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let title = format!(
        "verify: true batch {} x 1 vs accumulated {} x {} - {}",
        check.effective_batch, check.micro_batch, check.accum_steps, if check.passed { "PASS" } else { "FAIL" }
    );
    let root = root.titled(&title, (FONT, 22)).map_err(err)?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    let pts = |r: &VerifyReport, f: fn(&crate::train::verify::VerifyPoint) -> f64| -> Vec<(f64, f64)> {
        r.curve.iter().map(|p| (p.step as f64, f(p))).collect()
    };
    let truth = pts(check, |p| p.true_batch);
    let acc = pts(check, |p| p.accumulated);
    let acc_name = format!("accumulated {} x {}", check.micro_batch, check.accum_steps);
    let broken_curves: Vec<Vec<(f64, f64)>> = broken.iter().map(|(_, r)| pts(r, |p| p.accumulated)).collect();
    let mut series: Vec<(&str, &[(f64, f64)])> = vec![("true batch", &truth), (&acc_name, &acc)];
    for ((name, _), c) in broken.iter().zip(&broken_curves) {
        series.push((name, c));
    }
    line_panel(&left, "validation loss", "loss", &series, None)?;
    let diff = pts(check, |p| (p.true_batch - p.accumulated).abs());
    let broken_diffs: Vec<Vec<(f64, f64)>> = broken.iter().map(|(_, r)| pts(r, |p| (p.true_batch - p.accumulated).abs())).collect();
    let mut series: Vec<(&str, &[(f64, f64)])> = vec![("|difference|", &diff)];
    for ((name, _), c) in broken.iter().zip(&broken_diffs) {
        series.push((name, c));
    }
    line_panel(&right, "|true batch - accumulated|", "loss difference", &series, Some(("tolerance", check.tolerance)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_rows_become_curves_and_bad_rows_name_their_line() {
        let text = r#"{"step":1,"train_loss":4.0,"val_loss":null,"grad_norm":1.5,"micro_batch":4,"accum_steps":2,"memory":{"bytes":[10,20,30,40,50]}}
{"step":2,"train_loss":3.5,"val_loss":3.6,"grad_norm":1.2,"b_simple":12.5,"micro_batch":4,"accum_steps":2,"memory":{"bytes":[10,20,30,40,50]}}
"#;
        let c = RunCurves::from_jsonl(text).unwrap();
        assert_eq!(c.train_loss, vec![(1.0, 4.0), (2.0, 3.5)]);
        assert_eq!(c.val_loss, vec![(2.0, 3.6)], "a null validation loss is no point");
        assert_eq!(c.noise_scale, vec![(2.0, 12.5)]);
        assert_eq!(c.effective_batch.last(), Some(&(2.0, 8.0)));
        assert_eq!(c.memory[1], (2.0, [10, 20, 30, 40, 50]));
        let e = RunCurves::from_jsonl("{\"step\":1}\nnot json\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = RunCurves::from_jsonl("{\"train_loss\":1}\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("step"), "{e}");
    }

    #[test]
    fn csv_columns_are_found_by_name() {
        let text = format!("{}\n1,4.000000,,3.0e-3,1.500000,false,100.0,4,2,10,20,30,40,50,,false,,,,,0.5\n", crate::train::metrics::CSV_HEADER);
        let c = RunCurves::from_csv(&text).unwrap();
        assert_eq!((c.train_loss.clone(), c.grad_norm.clone()), (vec![(1.0, 4.0)], vec![(1.0, 1.5)]));
        assert_eq!(c.memory, vec![(1.0, [10, 20, 30, 40, 50])]);
        assert!(c.val_loss.is_empty() && c.noise_scale.is_empty());
        let e = RunCurves::from_csv("step,train_loss\n1,abc\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("train_loss"), "{e}");
    }
}
