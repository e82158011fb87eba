//! `gradscope verify --model cnn --norm group|batch`: micro-batch B x K against the true batch
//! B*K from the same seed and data, for the CNN.
//!
//! Reported: the first window's gradient difference (GroupNorm: rounding; BatchNorm: its
//! statistics come from each micro-batch), test accuracy of both runs with running statistics,
//! and for BatchNorm, per layer, the error of the running mean and the ratio of the running
//! variance to the statistics of a large training batch (1,024 images, computed by the CPU
//! reference from the trained weights): the drift of running statistics fed K small batches.

use crate::gpu::Gpu;
use crate::reference::cnn_model::{NormKind, cnn_forward_backward};

use super::cnn::{evaluate, head};
use super::verify::{first_window_gradient, gradient_rel_diff};
use super::{TrainConfig, Trainer};

/// Drift of one BatchNorm layer's running statistics.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BnDrift {
    pub layer: usize,
    /// mean over channels of |running_mean - mean| / std (statistics of the large batch)
    pub running_mean_error: f64,
    /// mean over channels of running_var / var
    pub running_var_ratio: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CnnRun {
    pub micro_batch: usize,
    pub accum_steps: usize,
    pub test_accuracy: f64,
    pub drift: Vec<BnDrift>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CnnVerifyReport {
    pub norm: NormKind,
    pub steps: usize,
    pub first_gradient_rel_diff: f64,
    pub true_batch: CnnRun,
    pub accumulated: CnnRun,
    pub passed: bool,
    pub diagnosis: String,
}

/// Images used for the reference statistics and for test accuracy.
const STAT_IMAGES: usize = 1024;
const TEST_IMAGES: usize = 2000;

fn run_one(gpu: &Gpu, cfg: &TrainConfig, steps: usize) -> anyhow::Result<CnnRun> {
    let mut trainer = Trainer::new(gpu, cfg.clone())?;
    for _ in 0..steps {
        trainer.train_step()?;
    }
    let b = trainer.cfg.micro_batch;
    let t = trainer.cnn_mut().ok_or_else(|| anyhow::anyhow!("verify_cnn needs --model cnn"))?;
    let test = head(&t.data.test, TEST_IMAGES);
    let acc = evaluate(&mut t.gpu_model, b, &test)?.accuracy.unwrap_or(0.0);
    let mut drift = Vec::new();
    if t.ccfg.norm == NormKind::Batch {
        // statistics of a large batch from the trained weights: BatchNorm in training mode with
        // momentum 1 leaves exactly the batch mean and (unbiased) variance in `stats`
        let params: Vec<f64> = t.gpu_model.slabs.read_params()?.iter().map(|&v| v as f64).collect();
        let m = STAT_IMAGES.min(t.data.train.n);
        let s = t.data.train.h * t.data.train.w;
        let x: Vec<f64> = t.data.train.pixels[..m * s].iter().map(|&v| v as f64).collect();
        let labels = t.data.train.labels[..m].to_vec();
        let mut stats = vec![0.0f64; t.ccfg.running_len()];
        cnn_forward_backward(&t.ccfg, &params, &mut stats, &x, &labels, m, true, 1.0, None, 1.0);
        let run: Vec<f64> = t.gpu_model.read_running()?.iter().map(|&v| v as f64).collect();
        let (c1, c2) = (t.ccfg.c1, t.ccfg.c2);
        for (layer, (start, c)) in [(0usize, c1), (2 * c1, c2)].into_iter().enumerate() {
            let (mut err, mut ratio) = (0.0, 0.0);
            for ch in 0..c {
                let (mu, var) = (stats[start + ch], stats[start + c + ch].max(1e-12));
                err += (run[start + ch] - mu).abs() / var.sqrt();
                ratio += run[start + c + ch] / var;
            }
            drift.push(BnDrift { layer: layer + 1, running_mean_error: err / c as f64, running_var_ratio: ratio / c as f64 });
        }
    }
    Ok(CnnRun { micro_batch: cfg.micro_batch, accum_steps: cfg.windows_micro_batches(), test_accuracy: acc, drift })
}

/// Run the check for the CNN config `accumulated` (B x K) over `steps` optimizer steps.
pub fn verify_cnn(gpu: &Gpu, accumulated: &TrainConfig, steps: usize) -> anyhow::Result<CnnVerifyReport> {
    let truth = TrainConfig { micro_batch: accumulated.effective(), accum_steps: 1, effective_batch: 0, ..accumulated.clone() };
    let g_true = first_window_gradient(gpu, &truth)?;
    let g_acc = first_window_gradient(gpu, accumulated)?;
    let diff = gradient_rel_diff(&g_acc, &g_true);
    let t = run_one(gpu, &truth, steps)?;
    let a = run_one(gpu, accumulated, steps)?;
    let (passed, diagnosis) = match accumulated.norm {
        NormKind::Group => {
            let ok = diff < 1e-5 && (t.test_accuracy - a.test_accuracy).abs() < 0.01;
            (ok, if ok {
                "GroupNorm's statistics are per image: the accumulated run matches the true batch".to_string()
            } else {
                format!("GroupNorm should match: gradient diff {diff:.2e}, accuracy {:.4} vs {:.4}", t.test_accuracy, a.test_accuracy)
            })
        }
        NormKind::Batch => {
            let worse = a.drift.iter().zip(&t.drift).map(|(x, y)| x.running_mean_error / y.running_mean_error.max(1e-12)).fold(0.0, f64::max);
            (false, format!(
                "BatchNorm computes its statistics on each micro-batch of {} images and updates its running statistics {} \
                 times per step: the gradient differs from the true batch's by {diff:.2e} and the running means are up to {worse:.1}x \
                 further from the large-batch means. Use GroupNorm/LayerNorm (`--norm group`), or recompute BatchNorm statistics over \
                 the effective batch.",
                accumulated.micro_batch, accumulated.windows_micro_batches()
            ))
        }
    };
    Ok(CnnVerifyReport { norm: accumulated.norm, steps, first_gradient_rel_diff: diff, true_batch: t, accumulated: a, passed, diagnosis })
}
