//! Metrics per optimizer step, written as JSONL and CSV side by side in the run directory: one
//! of the trainer's renderers (`on_event`). Each row is flushed when written, so a run that is
//! killed keeps every step it finished.

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
images_per_s,test_loss,test_accuracy,wall_s";

impl MetricsWriter {
    /// Create (truncate) `metrics.jsonl` and `metrics.csv` in `dir`; with `append`, continue them.
    pub fn create(dir: &Path, append: bool) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let open = |name: &str| -> std::io::Result<(File, bool)> {
            let p = dir.join(name);
            let existed = p.exists() && append;
            let f = std::fs::OpenOptions::new().create(true).write(true).append(append).truncate(!append).open(p)?;
            Ok((f, existed))
        };
        let (j, _) = open("metrics.jsonl")?;
        let (c, existed) = open("metrics.csv")?;
        let mut csv = BufWriter::new(c);
        if !existed {
            writeln!(csv, "{CSV_HEADER}")?;
        }
        Ok(Self { jsonl: BufWriter::new(j), csv })
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
        writeln!(
            self.csv, ",{},{},{scale},{},{},{},{:.3}",
            m.health.describe(), m.skipped, opt(m.images_per_s, 1), opt(m.test_loss, 6), opt(m.test_accuracy, 6), m.wall_s
        )?;
        self.flush()
    }

    /// The renderer: a row per optimizer step.
    pub fn on_event(&mut self, e: &Event) -> std::io::Result<()> {
        match e {
            Event::Step(r) => self.write(&r.metrics),
            _ => Ok(()),
        }
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.jsonl.flush()?;
        self.csv.flush()
    }
}
