//! Per-micro-batch gradient statistics of one window and the gradient noise scale.
//!
//! Within a window every micro-batch's gradient is taken at the same weights, so the window is
//! K independent gradient samples. On the device (the fused window, `grad_stats = true`), before
//! micro-batch k runs the accumulated gradient slab G_{k-1} is copied; after it, one two-stage
//! reduction per tensor over g_k = G_k - G_{k-1} and G_{k-1} gives |g_k|^2 and <g_k, G_{k-1}>.
//! Everything else follows on the host:
//!
//! * |G_k|^2 = |G_{k-1}|^2 + 2 <g_k, G_{k-1}> + |g_k|^2 (the running sum's norm);
//! * the micro-batch's mean gradient norm |g_k| / c_k, the running mean |G_k| / (c_1 + .. + c_k)
//!   converging towards the step's gradient norm (before clipping);
//! * cos(g_k, G_{k-1}) exactly;
//! * cos(g_k, G_K), the cosine with the window's FINAL gradient, is NOT determined by these
//!   figures (it needs <g_k, g_j> for the later j): it is exact for the last micro-batch
//!   (G_K = G_{K-1} + g_K) and, for the others, only where the full Gram matrix <g_j, g_k> is
//!   known (`gram`: the app's step-through path, where the host reads every g_k anyway). The
//!   fused path leaves `gram` None and `cos_final` answers None for k < K.
//!
//! Units: g_k is micro-batch k's SUMMED gradient over its counted targets (each counted target's
//! loss weighing 1), whatever the precision (the loss scale and the mixed-precision loss weight
//! are divided out when the figures are read), so the window's gradient before clipping is
//! G_K / C with C = c_1 + .. + c_K.
//!
//! # The gradient noise scale (McCandlish et al. 2018, appendix A.1), unequal counts
//!
//! Model each counted target's loss gradient as an independent draw with mean G (the true
//! gradient) and covariance Sigma. A micro-batch of c targets then has a mean gradient
//! ĝ = g / c with E|ĝ|^2 = |G|^2 + tr(Sigma) / c, and the window's mean gradient Ĝ = G_K / C
//! has E|Ĝ|^2 = |G|^2 + tr(Sigma) / C. The paper takes two batch sizes B_small < B_big. Here the
//! small batches are the K' micro-batches with c_k > 0 (a fully padded micro-batch has no counted
//! target and no gradient: it is left out) and their counts may differ (padding, a short last
//! micro-batch). Weigh each small batch by its count:
//!
//!   A = sum_k (c_k / C) |ĝ_k|^2 = (1 / C) sum_k |g_k|^2 / c_k,   E A = |G|^2 + K' tr(Sigma) / C,
//!   B = |Ĝ|^2 = |G_K|^2 / C^2,                                   E B = |G|^2 + tr(Sigma) / C.
//!
//! Two linear equations in |G|^2 and tr(Sigma), solved exactly (so both estimates are unbiased):
//!
//!   tr(Sigma)^ = C (A - B) / (K' - 1),    |G|^2^ = (K' B - A) / (K' - 1),
//!
//! which is the paper's pair with B_small = C / K' (the mean count) and B_big = C; with equal
//! counts it is the paper's formula verbatim. Weighing by counts keeps a small (padded)
//! micro-batch, whose |ĝ_k|^2 carries the most noise, from dominating. The ratio
//! B_simple = tr(Sigma) / |G|^2 of one window is very noisy (|G|^2^ may even be negative), so,
//! as the paper recommends, both estimates are smoothed across windows by exponential moving
//! averages and B_simple is the ratio of the averages (`NoiseScale`).
//!
//! Its unit is counted targets (tokens for the GPT, images for the CNN); divided by the targets
//! per sequence it is in sequences. Tokens of one sequence are not independent draws: the
//! estimate in sequences stays right when every sequence counts the same number of targets (the
//! per-token covariance then stands for the per-sequence one, times T). B_simple is the critical
//! batch under plain SGD assumptions (an optimal step size for a quadratic model with a constant
//! Hessian); Adam's critical batch differs, and B_simple is a guide, not a prescription.

/// The gradient statistics of one window, per micro-batch and per tensor.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GradStats {
    /// Tensor names, in the order of the per-tensor vectors.
    pub tensors: Vec<String>,
    /// Per micro-batch k: its counted targets c_k (0 for a fully padded micro-batch).
    pub counts: Vec<f64>,
    /// Per micro-batch k, per tensor: |g_k|^2, the squared norm of the micro-batch's own summed
    /// gradient.
    pub sq_norm: Vec<Vec<f64>>,
    /// Per micro-batch k, per tensor: <g_k, G_{k-1}>, G_{k-1} = g_1 + .. + g_{k-1} the sum of the
    /// earlier micro-batches (0 for the first).
    pub dot_prev: Vec<Vec<f64>>,
    /// The Gram matrix of the micro-batch gradients over all tensors, gram[j][k] = <g_j, g_k>,
    /// where it is known exactly (the app's step-through path); None in the fused window.
    pub gram: Option<Vec<Vec<f64>>>,
}

/// One window's unbiased estimates (in counted-target units), before smoothing.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NoiseEstimate {
    /// |G|^2^, the true gradient's squared norm (may come out negative in one window).
    pub g2: f64,
    /// tr(Sigma)^, the per-target gradient covariance's trace.
    pub trace: f64,
    /// Micro-batches with counted targets (K').
    pub batches: usize,
    /// Counted targets of the window (C).
    pub count: f64,
}

impl NoiseEstimate {
    /// tr(Sigma)^ / |G|^2^ of this window alone (None when |G|^2^ <= 0); noisy: prefer
    /// `NoiseScale`.
    pub fn b_simple(&self) -> Option<f64> {
        (self.g2 > 0.0).then(|| self.trace / self.g2)
    }
}

impl GradStats {
    /// The statistics of micro-batch gradients held on the host (`grads[k]`: micro-batch k's
    /// summed gradient, laid out as the tensors' (name, offset, elements) say), with the exact
    /// Gram matrix: the reference the device's figures are tested against, and what the app's
    /// step-through path knows.
    pub fn from_gradients(tensors: &[(String, usize, usize)], counts: &[f64], grads: &[&[f64]]) -> Self {
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let n = grads.first().map_or(0, |g| g.len());
        let mut prev = vec![0.0f64; n];
        let (mut sq_norm, mut dot_prev) = (Vec::new(), Vec::new());
        for g in grads {
            sq_norm.push(tensors.iter().map(|(_, o, l)| dot(&g[*o..o + l], &g[*o..o + l])).collect());
            dot_prev.push(tensors.iter().map(|(_, o, l)| dot(&g[*o..o + l], &prev[*o..o + l])).collect());
            for (p, v) in prev.iter_mut().zip(g.iter()) {
                *p += v;
            }
        }
        let gram = grads.iter().map(|a| grads.iter().map(|b| dot(a, b)).collect()).collect();
        Self {
            tensors: tensors.iter().map(|t| t.0.clone()).collect(),
            counts: counts.to_vec(),
            sq_norm,
            dot_prev,
            gram: Some(gram),
        }
    }

    /// Multiply every inner product by `factor` (the trainer's 1 / loss weight^2: the device
    /// measures the slab, which holds the loss weight times the summed gradient).
    pub fn scale(&mut self, factor: f64) {
        for row in self.sq_norm.iter_mut().chain(self.dot_prev.iter_mut()).chain(self.gram.iter_mut().flatten()) {
            for v in row {
                *v *= factor;
            }
        }
    }

    /// Micro-batches of the window.
    pub fn k(&self) -> usize {
        self.counts.len()
    }

    fn sel(v: &[f64], tensor: Option<usize>) -> f64 {
        match tensor {
            Some(t) => v[t],
            None => v.iter().sum(),
        }
    }

    /// |g_k|^2 of tensor `tensor`, or over every tensor (None).
    pub fn micro_sq_norm(&self, k: usize, tensor: Option<usize>) -> f64 {
        Self::sel(&self.sq_norm[k], tensor)
    }

    /// <g_k, G_{k-1}> of one tensor or in total.
    pub fn micro_dot_prev(&self, k: usize, tensor: Option<usize>) -> f64 {
        Self::sel(&self.dot_prev[k], tensor)
    }

    /// |G_k|^2 after each micro-batch k (the running sum's squared norm), one tensor or in total.
    pub fn running_sq_norms(&self, tensor: Option<usize>) -> Vec<f64> {
        let mut acc = 0.0;
        (0..self.k())
            .map(|k| {
                acc += 2.0 * self.micro_dot_prev(k, tensor) + self.micro_sq_norm(k, tensor);
                acc.max(0.0)
            })
            .collect()
    }

    /// |G_K|^2, the window's summed gradient's squared norm.
    pub fn window_sq_norm(&self, tensor: Option<usize>) -> f64 {
        self.running_sq_norms(tensor).last().copied().unwrap_or(0.0)
    }

    /// Counted targets of the window (C).
    pub fn total_count(&self) -> f64 {
        self.counts.iter().sum()
    }

    /// |g_k| / c_k: the norm of micro-batch k's mean gradient (None without counted targets).
    pub fn mean_grad_norm(&self, k: usize, tensor: Option<usize>) -> Option<f64> {
        let c = self.counts[k];
        (c > 0.0).then(|| self.micro_sq_norm(k, tensor).max(0.0).sqrt() / c)
    }

    /// |G_k| / (c_1 + .. + c_k) after each micro-batch: the running mean gradient's norm, which
    /// ends at the step's gradient norm before clipping (None before any counted target).
    pub fn running_mean_grad_norms(&self, tensor: Option<usize>) -> Vec<Option<f64>> {
        let mut c = 0.0;
        self.running_sq_norms(tensor)
            .into_iter()
            .zip(&self.counts)
            .map(|(s, ck)| {
                c += ck;
                (c > 0.0).then(|| s.sqrt() / c)
            })
            .collect()
    }

    /// The window's mean gradient norm |G_K| / C (the logged grad norm, before clipping).
    pub fn window_grad_norm(&self, tensor: Option<usize>) -> f64 {
        self.window_sq_norm(tensor).sqrt() / self.total_count().max(1.0)
    }

    /// cos(g_k, G_{k-1}), the cosine with the sum of the earlier micro-batches (None for the
    /// first micro-batch or a zero vector).
    pub fn cos_running(&self, k: usize, tensor: Option<usize>) -> Option<f64> {
        if k == 0 {
            return None;
        }
        let prev = self.running_sq_norms(tensor)[k - 1];
        cosine(self.micro_dot_prev(k, tensor), self.micro_sq_norm(k, tensor), prev)
    }

    /// <g_k, G_K> over all tensors where it is known: always for the last micro-batch, for every
    /// micro-batch with `gram`.
    pub fn dot_final(&self, k: usize) -> Option<f64> {
        if let Some(g) = &self.gram {
            return Some(g[k].iter().sum());
        }
        (k + 1 == self.k()).then(|| self.micro_dot_prev(k, None) + self.micro_sq_norm(k, None))
    }

    /// cos(g_k, G_K), the cosine with the window's final gradient, where it is known exactly
    /// (see the module docs: the last micro-batch always, the others only with `gram`).
    pub fn cos_final(&self, k: usize) -> Option<f64> {
        cosine(self.dot_final(k)?, self.micro_sq_norm(k, None), self.window_sq_norm(None))
    }

    /// Each g_k in the plane of the final gradient and the first direction orthogonal to it
    /// (from the first micro-batch with a component off the final gradient's line): (along
    /// G_K / |G_K|, along that direction), so arrows drawn head to tail end at (|G_K|, 0). Needs
    /// `gram` (None otherwise). The components off the plane are not shown.
    pub fn projection(&self) -> Option<Vec<(f64, f64)>> {
        let gram = self.gram.as_ref()?;
        let k = self.k();
        let fin = self.window_sq_norm(None);
        if fin <= 0.0 {
            return None;
        }
        let fnorm = fin.sqrt();
        let along: Vec<f64> = (0..k).map(|j| gram[j].iter().sum::<f64>() / fnorm).collect();
        // u = (g_r - a_r f) / |..| for the first r with a non-zero residual (f the unit final)
        let r = (0..k).find(|&j| gram[j][j] - along[j] * along[j] > 1e-12 * gram[j][j].max(1e-300));
        let ortho: Vec<f64> = match r {
            None => vec![0.0; k],
            Some(r) => {
                let res = (gram[r][r] - along[r] * along[r]).sqrt();
                (0..k).map(|j| (gram[j][r] - along[j] * along[r]) / res).collect()
            }
        };
        Some(along.into_iter().zip(ortho).collect())
    }

    /// The window's noise estimate (McCandlish et al. A.1 with unequal counts, see the module
    /// docs), over every tensor or one; None with fewer than two micro-batches with counted
    /// targets.
    pub fn noise(&self, tensor: Option<usize>) -> Option<NoiseEstimate> {
        let live: Vec<usize> = (0..self.k()).filter(|&k| self.counts[k] > 0.0).collect();
        let kk = live.len();
        if kk < 2 {
            return None;
        }
        let c = self.total_count();
        let a = live.iter().map(|&k| self.micro_sq_norm(k, tensor) / self.counts[k]).sum::<f64>() / c;
        let b = self.window_sq_norm(tensor) / (c * c);
        let kf = kk as f64;
        Some(NoiseEstimate { g2: (kf * b - a) / (kf - 1.0), trace: c * (a - b) / (kf - 1.0), batches: kk, count: c })
    }
}

/// A positive figure to about three significant digits (12300, 123, 12.3, 1.23, 0.123).
pub fn approx(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() {
        format!("{x}")
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// What `gradscope plan` says about an effective batch of `e` samples against a smoothed
/// B_simple of `b` samples (`sample`: "sequences" or "images"): below it (E < B_simple / 2),
/// near it, or above it (E > 2 B_simple). Under SGD assumptions B_simple approximates the
/// critical batch: below it a larger batch cuts the number of steps almost in proportion,
/// above it more samples per step buy less and less (McCandlish et al. 2018).
pub fn noise_advice(b: f64, e: usize, sample: &str) -> String {
    let ef = e as f64;
    let verdict = if ef < b / 2.0 {
        "below it: a larger E would still cut the steps needed almost in proportion (each sample still pays)"
    } else if ef > 2.0 * b {
        "above it: past B_simple more samples per step buy less and less progress; a smaller E needs fewer samples for the same loss"
    } else {
        "near it: a balance of steps and samples"
    };
    format!("B_simple ~ {} {sample}: E = {e} is {verdict}", approx(b))
}

/// <a, b> / (|a| |b|) from the inner product and the squared norms (None for a zero vector).
fn cosine(dot: f64, a2: f64, b2: f64) -> Option<f64> {
    let d = (a2.max(0.0) * b2.max(0.0)).sqrt();
    (d > 0.0).then(|| (dot / d).clamp(-1.0, 1.0))
}

/// B_simple smoothed across windows: exponential moving averages of |G|^2^ and tr(Sigma)^
/// (bias-corrected as Adam's moments), B_simple = EMA(tr) / EMA(|G|^2), as McCandlish et al.
/// recommend (the ratio of averages, not the average of ratios).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NoiseScale {
    /// The averages' decay per window.
    pub beta: f64,
    pub g2: f64,
    pub trace: f64,
    /// Windows averaged.
    pub windows: u64,
}

impl Default for NoiseScale {
    fn default() -> Self {
        Self::new(NoiseScale::DEFAULT_BETA)
    }
}

impl NoiseScale {
    /// Windows weigh e^-1 after about 1 / (1 - beta) = 20 windows.
    pub const DEFAULT_BETA: f64 = 0.95;

    pub fn new(beta: f64) -> Self {
        Self { beta, g2: 0.0, trace: 0.0, windows: 0 }
    }

    /// Fold in one window's estimate (non-finite estimates are skipped).
    pub fn update(&mut self, e: &NoiseEstimate) {
        if !(e.g2.is_finite() && e.trace.is_finite()) {
            return;
        }
        self.g2 = self.beta * self.g2 + (1.0 - self.beta) * e.g2;
        self.trace = self.beta * self.trace + (1.0 - self.beta) * e.trace;
        self.windows += 1;
    }

    /// The smoothed B_simple in counted targets (None before any window or while the averaged
    /// |G|^2 is not positive).
    pub fn b_simple(&self) -> Option<f64> {
        // the bias corrections of the two averages are equal and cancel in the ratio
        (self.windows > 0 && self.g2 > 0.0).then(|| self.trace / self.g2)
    }

    /// The bias-corrected averages (|G|^2, tr(Sigma)).
    pub fn averages(&self) -> Option<(f64, f64)> {
        (self.windows > 0).then(|| {
            let corr = 1.0 - self.beta.powi(self.windows.min(i32::MAX as u64) as i32);
            (self.g2 / corr, self.trace / corr)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::linreg::LinReg;
    use crate::reference::rng::Normal;

    fn one(name: &str, n: usize) -> Vec<(String, usize, usize)> {
        vec![(name.to_string(), 0, n)]
    }

    /// Running norms, mean norms, cosines and the projection from explicit vectors.
    #[test]
    fn derived_figures_match_the_vectors() {
        let g = [vec![1.0, 0.0, 2.0, 0.0], vec![0.0, 3.0, 1.0, -1.0], vec![2.0, 1.0, -1.0, 0.5]];
        let refs: Vec<&[f64]> = g.iter().map(|v| v.as_slice()).collect();
        let tensors = vec![("a".to_string(), 0, 2), ("b".to_string(), 2, 2)];
        let s = GradStats::from_gradients(&tensors, &[2.0, 3.0, 1.0], &refs);
        let sum: Vec<f64> = (0..4).map(|i| g.iter().map(|v| v[i]).sum()).collect();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((s.window_sq_norm(None) - norm(&sum).powi(2)).abs() < 1e-12);
        assert!((s.window_sq_norm(Some(1)) - (sum[2] * sum[2] + sum[3] * sum[3])).abs() < 1e-12);
        assert!((s.window_grad_norm(None) - norm(&sum) / 6.0).abs() < 1e-12);
        assert!((s.mean_grad_norm(1, None).unwrap() - norm(&g[1]) / 3.0).abs() < 1e-12);
        let run = s.running_mean_grad_norms(None);
        let g01: Vec<f64> = (0..4).map(|i| g[0][i] + g[1][i]).collect();
        assert!((run[1].unwrap() - norm(&g01) / 5.0).abs() < 1e-12);
        let cos = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (norm(a) * norm(b));
        assert!((s.cos_running(2, None).unwrap() - cos(&g[2], &g01)).abs() < 1e-12);
        assert_eq!(s.cos_running(0, None), None);
        for (k, gk) in g.iter().enumerate() {
            assert!((s.cos_final(k).unwrap() - cos(gk, &sum)).abs() < 1e-12);
        }
        // without the Gram matrix only the last micro-batch's final cosine is known
        let fused = GradStats { gram: None, ..s.clone() };
        assert_eq!(fused.cos_final(0), None);
        assert!((fused.cos_final(2).unwrap() - cos(&g[2], &sum)).abs() < 1e-12);
        // the arrows end at (|G_K|, 0) and keep each g_k's component along G_K
        let p = s.projection().unwrap();
        let end = p.iter().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        assert!((end.0 - norm(&sum)).abs() < 1e-9 && end.1.abs() < 1e-9, "{end:?}");
        for (k, (along, ortho)) in p.iter().enumerate() {
            assert!((along - cos(&g[k], &sum) * norm(&g[k])).abs() < 1e-9);
            assert!(along * along + ortho * ortho <= norm(&g[k]).powi(2) + 1e-9);
        }
        // scaling by the loss weight
        let mut t = s.clone();
        t.scale(4.0);
        assert!((t.window_sq_norm(None) - 4.0 * s.window_sq_norm(None)).abs() < 1e-9);
        assert!((t.cos_final(0).unwrap() - s.cos_final(0).unwrap()).abs() < 1e-12);
    }

    /// With equal counts the estimator is the paper's: |G|^2 = (B_big |G_big|^2 - B_small
    /// |G_small|^2) / (B_big - B_small), tr = (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big),
    /// |G_small|^2 the mean over the micro-batches.
    #[test]
    fn equal_counts_give_the_papers_formula() {
        let g = [vec![1.0, 2.0], vec![3.0, -1.0], vec![0.5, 0.5], vec![-1.0, 2.0]];
        let refs: Vec<&[f64]> = g.iter().map(|v| v.as_slice()).collect();
        let c = 8.0;
        let s = GradStats::from_gradients(&one("w", 2), &[c; 4], &refs);
        let e = s.noise(None).unwrap();
        let (bs, bb) = (c, 4.0 * c);
        let small = g.iter().map(|v| v.iter().map(|x| (x / c).powi(2)).sum::<f64>()).sum::<f64>() / 4.0;
        let big = (0..2).map(|i| (g.iter().map(|v| v[i]).sum::<f64>() / bb).powi(2)).sum::<f64>();
        let g2 = (bb * big - bs * small) / (bb - bs);
        let tr = (small - big) / (1.0 / bs - 1.0 / bb);
        assert!((e.g2 - g2).abs() < 1e-12 * g2.abs().max(1.0), "{} vs {g2}", e.g2);
        assert!((e.trace - tr).abs() < 1e-12 * tr.abs().max(1.0), "{} vs {tr}", e.trace);
        // an empty micro-batch (padding) is left out
        let mut refs2 = refs.clone();
        let zero = [0.0, 0.0];
        refs2.push(&zero);
        let s2 = GradStats::from_gradients(&one("w", 2), &[c, c, c, c, 0.0], &refs2);
        let e2 = s2.noise(None).unwrap();
        assert_eq!(e2.batches, 4);
        assert!((e2.g2 - g2).abs() < 1e-12 * g2.abs().max(1.0) && (e2.trace - tr).abs() < 1e-12 * tr.abs().max(1.0));
        // one micro-batch: no estimate
        assert_eq!(GradStats::from_gradients(&one("w", 2), &[c], &refs[..1]).noise(None), None);
    }

    /// Unequal counts: the estimates are unbiased (the mean over many windows at fixed weights
    /// approaches the exact |G|^2 and tr(Sigma) of a linear regression).
    #[test]
    fn unequal_counts_are_unbiased_on_linear_regression() {
        let lr = LinReg { r: vec![0.3, -0.2, 0.1, 0.25, 0.0, -0.15], sigma: 0.5 };
        let mut rng = Normal::new(11);
        let counts = [12usize, 12, 12, 3, 0, 7];
        let (mut g2, mut tr) = (0.0, 0.0);
        let windows = 4000;
        for _ in 0..windows {
            let grads: Vec<Vec<f64>> = counts.iter().map(|&c| lr.summed_gradient(&mut rng, c)).collect();
            let refs: Vec<&[f64]> = grads.iter().map(|v| v.as_slice()).collect();
            let cf: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
            let e = GradStats::from_gradients(&one("w", lr.d()), &cf, &refs).noise(None).unwrap();
            g2 += e.g2 / windows as f64;
            tr += e.trace / windows as f64;
        }
        println!("|G|^2 {g2:.4} (exact {:.4}), tr(Sigma) {tr:.4} (exact {:.4})", lr.true_grad_sq(), lr.trace_sigma());
        assert!((g2 - lr.true_grad_sq()).abs() < 0.1 * lr.true_grad_sq());
        assert!((tr - lr.trace_sigma()).abs() < 0.05 * lr.trace_sigma());
    }

    #[test]
    fn advice_names_the_side_of_b_simple() {
        assert_eq!(approx(1234.5), "1234");
        assert_eq!(approx(12.345), "12.3");
        assert_eq!(approx(0.1234), "0.123");
        assert!(noise_advice(300.0, 64, "sequences").starts_with("B_simple ~ 300 sequences: E = 64 is below it"));
        assert!(noise_advice(300.0, 256, "sequences").contains("is near it"));
        assert!(noise_advice(20.0, 64, "images").contains("is above it"));
    }

    #[test]
    fn noise_scale_is_a_ratio_of_averages() {
        let mut n = NoiseScale::new(0.5);
        assert_eq!(n.b_simple(), None);
        n.update(&NoiseEstimate { g2: 1.0, trace: 10.0, batches: 2, count: 8.0 });
        assert!((n.b_simple().unwrap() - 10.0).abs() < 1e-12);
        n.update(&NoiseEstimate { g2: -0.5, trace: 20.0, batches: 2, count: 8.0 });
        // EMA g2 = 0.25 * 1 + 0.5 * -0.5 = 0; not positive: no ratio
        assert_eq!(n.b_simple(), None);
        n.update(&NoiseEstimate { g2: 3.0, trace: 10.0, batches: 2, count: 8.0 });
        let (g2, tr) = (0.5 * 0.0 + 0.5 * 3.0, 0.5 * (0.5 * 5.0 + 0.5 * 20.0) + 0.5 * 10.0);
        assert!((n.b_simple().unwrap() - tr / g2).abs() < 1e-12);
        let (ag, at) = n.averages().unwrap();
        assert!((ag - g2 / (1.0 - 0.125)).abs() < 1e-12 && (at - tr / (1.0 - 0.125)).abs() < 1e-12);
        // non-finite windows are skipped
        n.update(&NoiseEstimate { g2: f64::NAN, trace: 1.0, batches: 2, count: 8.0 });
        assert_eq!(n.windows, 3);
    }
}
