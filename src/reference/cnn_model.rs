//! The reference CNN on the CPU (DESIGN.md): conv 1->C1 3x3, norm, ReLU, max-pool 2, conv C1->C2
//! 3x3, norm, ReLU, max-pool 2, linear -> classes; the norm is GroupNorm(G) or BatchNorm.
//! Parameters live in one flat slab in the order of `CnnConfig::param_names`; BatchNorm's running
//! statistics are a separate state (they are not trained).

use num_traits::Float;
use serde::{Deserialize, Serialize};

use super::cnn::*;
use super::layers::{crossentropy_backward, crossentropy_forward, matmul_backward, matmul_forward};
use super::rng::uniform;

/// Which normalization the CNN uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NormKind {
    /// GroupNorm: statistics per image, independent of the micro-batch.
    #[default]
    Group,
    /// BatchNorm: statistics over the micro-batch (they drift under accumulation).
    Batch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CnnConfig {
    pub h: usize,
    pub w: usize,
    pub classes: usize,
    pub c1: usize,
    pub c2: usize,
    pub groups: usize,
    pub norm: NormKind,
}

impl CnnConfig {
    /// The DESIGN.md model for `h` x `w` images.
    pub fn new(h: usize, w: usize, classes: usize, norm: NormKind) -> Self {
        Self { h, w, classes, c1: 16, c2: 32, groups: 4, norm }
    }

    /// Features entering the linear layer: C2 x H/4 x W/4.
    pub fn features(&self) -> usize {
        self.c2 * (self.h / 4) * (self.w / 4)
    }

    pub fn param_names() -> [&'static str; 10] {
        ["conv1.weight", "conv1.bias", "norm1.weight", "norm1.bias", "conv2.weight", "conv2.bias", "norm2.weight", "norm2.bias", "fc.weight", "fc.bias"]
    }

    pub fn param_shapes(&self) -> [Vec<usize>; 10] {
        let (c1, c2) = (self.c1, self.c2);
        [
            vec![c1, 1, 3, 3], vec![c1], vec![c1], vec![c1],
            vec![c2, c1, 3, 3], vec![c2], vec![c2], vec![c2],
            vec![self.classes, self.features()], vec![self.classes],
        ]
    }

    pub fn param_sizes(&self) -> [usize; 10] {
        self.param_shapes().map(|s| s.iter().product())
    }

    pub fn param_offsets(&self) -> [usize; 10] {
        let s = self.param_sizes();
        let mut o = [0; 10];
        for i in 1..10 {
            o[i] = o[i - 1] + s[i - 1];
        }
        o
    }

    pub fn num_params(&self) -> usize {
        self.param_sizes().iter().sum()
    }

    /// Running statistics: [mean1 C1 | var1 C1 | mean2 C2 | var2 C2].
    pub fn running_len(&self) -> usize {
        2 * (self.c1 + self.c2)
    }

    /// Running statistics at initialization (means 0, variances 1, as PyTorch).
    pub fn running_init(&self) -> Vec<f32> {
        let (c1, c2) = (self.c1, self.c2);
        let mut r = vec![0.0; c1];
        r.extend(std::iter::repeat_n(1.0, c1));
        r.extend(std::iter::repeat_n(0.0, c2));
        r.extend(std::iter::repeat_n(1.0, c2));
        r
    }
}

/// PyTorch's default initialization: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
/// norm weights 1 and biases 0.
pub fn init_cnn_params(cfg: &CnnConfig, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let fan = [9.0, 9.0, 0.0, 0.0, 9.0 * cfg.c1 as f64, 9.0 * cfg.c1 as f64, 0.0, 0.0, cfg.features() as f64, cfg.features() as f64];
    let mut out = Vec::with_capacity(cfg.num_params());
    for (i, &n) in cfg.param_sizes().iter().enumerate() {
        match i {
            2 | 6 => out.extend(std::iter::repeat_n(1.0f32, n)),
            3 | 7 => out.extend(std::iter::repeat_n(0.0f32, n)),
            _ => {
                let bound = 1.0 / fan[i].sqrt();
                out.extend((0..n).map(|_| ((uniform(&mut s) * 2.0 - 1.0) * bound) as f32));
            }
        }
    }
    out
}

/// Normalization of one layer: GroupNorm, or BatchNorm in training (batch statistics, running
/// statistics updated) or evaluation (running statistics) mode.
#[allow(clippy::too_many_arguments)]
fn norm_forward<T: Float>(
    cfg: &CnnConfig, train: bool, out: &mut [T], mean: &mut [T], rstd: &mut [T], running: &mut [T], inp: &[T], wt: &[T],
    bs: &[T], b: usize, c: usize, hw: usize, momentum: f64,
) {
    match cfg.norm {
        NormKind::Group => groupnorm_forward(out, mean, rstd, inp, wt, bs, b, c, hw, cfg.groups),
        NormKind::Batch => {
            let (rm, rv) = running.split_at_mut(c);
            if train {
                batchnorm_forward_train(out, mean, rstd, rm, rv, inp, wt, bs, b, c, hw, momentum);
            } else {
                batchnorm_forward_eval(out, inp, wt, bs, rm, rv, b, c, hw);
            }
        }
    }
}

/// Forward (and backward when `grads` is given) of a batch of B images x [B,1,H,W] with
/// `labels` [B] (IGNORE_INDEX rows count for nothing). Each counted image's loss weighs `dloss`;
/// gradients accumulate into `grads`. `running` [running_len] is updated in training mode.
/// Returns (loss sum, count, logits [B,classes]).
#[allow(clippy::too_many_arguments)]
pub fn cnn_forward_backward<T: Float>(
    cfg: &CnnConfig, params: &[T], running: &mut [T], x: &[T], labels: &[u32], b: usize, train: bool, momentum: f64,
    grads: Option<&mut [T]>, dloss: T,
) -> (T, u32, Vec<T>) {
    let (h, w, c1, c2, nc) = (cfg.h, cfg.w, cfg.c1, cfg.c2, cfg.classes);
    let (h2, w2, h4, w4) = (h / 2, w / 2, h / 4, w / 4);
    let off = cfg.param_offsets();
    let sz = cfg.param_sizes();
    let p = |i: usize| &params[off[i]..off[i] + sz[i]];
    let z = |n: usize| vec![T::zero(); n];
    let stat = |c: usize| if cfg.norm == NormKind::Group { b * cfg.groups } else { c };
    let (run1, run2) = running.split_at_mut(2 * c1);
    // layer 1
    let mut a1 = z(b * c1 * h * w);
    conv2d_forward(&mut a1, x, p(0), p(1), b, 1, c1, h, w, 3, 1);
    let (mut n1, mut m1, mut r1) = (z(a1.len()), z(stat(c1)), z(stat(c1)));
    norm_forward(cfg, train, &mut n1, &mut m1, &mut r1, run1, &a1, p(2), p(3), b, c1, h * w, momentum);
    let mut y1 = z(n1.len());
    relu_forward(&mut y1, &n1, n1.len());
    let (mut q1, mut i1) = (z(b * c1 * h2 * w2), vec![0u32; b * c1 * h2 * w2]);
    maxpool2_forward(&mut q1, &mut i1, &y1, b, c1, h, w);
    // layer 2
    let mut a2 = z(b * c2 * h2 * w2);
    conv2d_forward(&mut a2, &q1, p(4), p(5), b, c1, c2, h2, w2, 3, 1);
    let (mut n2, mut m2, mut r2) = (z(a2.len()), z(stat(c2)), z(stat(c2)));
    norm_forward(cfg, train, &mut n2, &mut m2, &mut r2, run2, &a2, p(6), p(7), b, c2, h2 * w2, momentum);
    let mut y2 = z(n2.len());
    relu_forward(&mut y2, &n2, n2.len());
    let (mut q2, mut i2) = (z(b * c2 * h4 * w4), vec![0u32; b * c2 * h4 * w4]);
    maxpool2_forward(&mut q2, &mut i2, &y2, b, c2, h2, w2);
    // classifier
    let f = cfg.features();
    let mut logits = z(b * nc);
    matmul_forward(&mut logits, &q2, p(8), Some(p(9)), b, f, nc);
    let mut losses = z(b);
    let count = crossentropy_forward(&mut losses, &logits, labels, b, nc);
    let loss = losses.iter().fold(T::zero(), |s, &v| s + v);
    let Some(grads) = grads else { return (loss, count, logits) };

    let mut g: Vec<&mut [T]> = Vec::with_capacity(10);
    let mut rest = grads;
    for s in sz {
        let (a, r) = rest.split_at_mut(s);
        g.push(a);
        rest = r;
    }
    let mut dlogits = z(b * nc);
    crossentropy_backward(&mut dlogits, &logits, labels, dloss, b, nc);
    let mut dq2 = z(q2.len());
    {
        let (lo, hi) = g.split_at_mut(9);
        matmul_backward(&mut dq2, lo[8], Some(hi[0]), &dlogits, &q2, p(8), b, f, nc);
    }
    let mut dy2 = z(y2.len());
    maxpool2_backward(&mut dy2, &i2, &dq2, dq2.len());
    let mut dn2 = z(n2.len());
    relu_backward(&mut dn2, &n2, &dy2, n2.len());
    let mut da2 = z(a2.len());
    {
        let (lo, hi) = g.split_at_mut(7);
        match cfg.norm {
            NormKind::Group => groupnorm_backward(&mut da2, lo[6], hi[0], &dn2, &a2, p(6), &m2, &r2, b, c2, h2 * w2, cfg.groups),
            NormKind::Batch => batchnorm_backward(&mut da2, lo[6], hi[0], &dn2, &a2, p(6), &m2, &r2, b, c2, h2 * w2),
        }
    }
    let mut dq1 = z(q1.len());
    {
        let (lo, hi) = g.split_at_mut(5);
        conv2d_backward(&mut dq1, lo[4], hi[0], &da2, &q1, p(4), b, c1, c2, h2, w2, 3, 1);
    }
    let mut dy1 = z(y1.len());
    maxpool2_backward(&mut dy1, &i1, &dq1, dq1.len());
    let mut dn1 = z(n1.len());
    relu_backward(&mut dn1, &n1, &dy1, n1.len());
    let mut da1 = z(a1.len());
    {
        let (lo, hi) = g.split_at_mut(3);
        match cfg.norm {
            NormKind::Group => groupnorm_backward(&mut da1, lo[2], hi[0], &dn1, &a1, p(2), &m1, &r1, b, c1, h * w, cfg.groups),
            NormKind::Batch => batchnorm_backward(&mut da1, lo[2], hi[0], &dn1, &a1, p(2), &m1, &r1, b, c1, h * w),
        }
    }
    let mut dx = z(x.len());
    {
        let (lo, hi) = g.split_at_mut(1);
        conv2d_backward(&mut dx, lo[0], hi[0], &da1, x, p(0), b, 1, c1, h, w, 3, 1);
    }
    (loss, count, logits)
}
