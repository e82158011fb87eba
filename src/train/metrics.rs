//! Metrics per optimizer step, written as JSONL and CSV side by side in the run directory: one
//! of the trainer's renderers (`on_event`). Each row is flushed when written and the files are
//! synced at every checkpoint; a resumed run drops the rows after its checkpoint's step.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::gpu::Category;

use super::events::Event;
use super::health::StepMetrics;

pub struct MetricsWriter {
    jsonl: BufWriter<File>,
    csv: BufWriter<File>,
}

pub const CSV_HEADER: &str = "step,train_loss,val_loss,lr,grad_norm,clipped,tokens_per_s,micro_batch,accum_steps,\
bytes_parameters,bytes_gradients,bytes_optimizer_state,bytes_activations,bytes_scratch,health,skipped,loss_scale,\
images_per_s,test_loss,test_accuracy,wall_s,b_simple,b_simple_items,noise_g2,noise_trace";

impl MetricsWriter {
    /// Open `metrics.jsonl` and `metrics.csv` in `dir`. `resume_step` None: a fresh run, both files
    /// start empty (then the CSV header). Some(step): a run resumed from the checkpoint of `step`:
    /// the rows up to `step` are kept and any after it (written after that checkpoint, before a
    /// crash) are dropped, so the resumed run neither repeats nor loses a step; the CSV header is
    /// written whenever the file is empty.
    pub fn create(dir: &Path, resume_step: Option<usize>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (jsonl_path, csv_path) = (dir.join("metrics.jsonl"), dir.join("metrics.csv"));
        let kept = |path: &Path, step_of: &dyn Fn(&str) -> Option<usize>| -> std::io::Result<String> {
            let Some(last) = resume_step else { return Ok(String::new()) };
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(e),
            };
            Ok(text.lines().filter(|l| step_of(l).is_some_and(|s| s <= last)).map(|l| format!("{l}\n")).collect())
        };
        let jsonl_rows = kept(&jsonl_path, &|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64().map(|s| s as usize))?;
        let csv_rows = kept(&csv_path, &|l| l.split(',').next()?.parse().ok())?;
        let mut jsonl = BufWriter::new(File::create(&jsonl_path)?);
        jsonl.write_all(jsonl_rows.as_bytes())?;
        let mut csv = BufWriter::new(File::create(&csv_path)?);
        writeln!(csv, "{CSV_HEADER}")?;
        csv.write_all(csv_rows.as_bytes())?;
        let mut w = Self { jsonl, csv };
        w.flush()?;
        Ok(w)
    }

    pub fn write(&mut self, m: &StepMetrics) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.jsonl, m)?;
        writeln!(self.jsonl)?;
        let opt = |v: Option<f64>, digits: usize| v.map(|v| format!("{v:.digits$}")).unwrap_or_default();
        write!(
            self.csv,
            "{},{:.6},{},{:.6e},{:.6},{},{},{},{}",
            m.step, m.train_loss, opt(m.val_loss, 6), m.lr, m.grad_norm, m.clipped, opt(m.tokens_per_s, 1), m.micro_batch, m.accum_steps
        )?;
        for c in Category::ALL {
            write!(self.csv, ",{}", m.memory.get(c))?;
        }
        let scale = m.loss_scale.map_or(String::new(), |s| s.to_string());
        let sci = |v: Option<f64>| v.map(|v| format!("{v:.6e}")).unwrap_or_default();
        writeln!(
            self.csv, ",{},{},{scale},{},{},{},{:.3},{},{},{},{}",
            m.health.describe(), m.skipped, opt(m.images_per_s, 1), opt(m.test_loss, 6), opt(m.test_accuracy, 6), m.wall_s,
            opt(m.b_simple, 2), opt(m.b_simple_items, 1), sci(m.noise_g2), sci(m.noise_trace)
        )?;
        self.flush()
    }

    /// The renderer: a row per optimizer step (flushed); at each checkpoint the files are also
    /// synced to disk, so after any crash they hold at least every step up to the last checkpoint.
    pub fn on_event(&mut self, e: &Event) -> std::io::Result<()> {
        match e {
            Event::Step(r) => self.write(&r.metrics),
            Event::Checkpoint { .. } => self.sync(),
            _ => Ok(()),
        }
    }

    /// Flush and fsync both files.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.flush()?;
        self.jsonl.get_ref().sync_all()?;
        self.csv.get_ref().sync_all()
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.jsonl.flush()?;
        self.csv.flush()
    }
}

/// The last smoothed gradient noise scale in a run directory's `metrics.jsonl`: (step, B_simple in
/// samples, in counted items), or None when the run measured none (`grad_stats` off, K = 1) or
/// the file is missing.
pub fn last_noise_scale(dir: &Path) -> Option<(usize, f64, f64)> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).ok()?;
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        Some((v["step"].as_u64()? as usize, v["b_simple"].as_f64()?, v["b_simple_items"].as_f64()?))
    })
}
