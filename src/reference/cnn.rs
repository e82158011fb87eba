//! CPU twins of the CNN kernels (NCHW layout). As in `layers`, every backward sits under its
//! forward and ACCUMULATES (`+=`) into its gradient outputs.
//!
//! Dimensions: B batch, IC/OC input/output channels, C channels, H/W height/width, HW = H*W,
//! K kernel size, G groups.

use num_traits::Float;

/// GroupNorm and BatchNorm epsilon (PyTorch's default).
pub const NORM_EPS: f64 = 1e-5;

fn k<T: Float>(x: f64) -> T {
    T::from(x).unwrap()
}

// ---------------------------------------------------------------------------------------------
// conv2d, stride 1, zero padding: out[b,o,y,x] = bias[o] + sum_{i,ky,kx} w[o,i,ky,kx] in[b,i,y+ky-p,x+kx-p]

/// Output size along one axis.
pub fn conv_out(size: usize, kk: usize, pad: usize) -> usize {
    size + 2 * pad + 1 - kk
}

/// out [B,OC,HO,WO], inp [B,IC,H,W], weight [OC,IC,K,K], bias [OC]
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward<T: Float>(
    out: &mut [T], inp: &[T], weight: &[T], bias: &[T], b: usize, ic: usize, oc: usize, h: usize, w: usize, kk: usize,
    pad: usize,
) {
    let (ho, wo) = (conv_out(h, kk, pad), conv_out(w, kk, pad));
    for bi in 0..b {
        for o in 0..oc {
            for y in 0..ho {
                for x in 0..wo {
                    let mut acc = bias[o];
                    for i in 0..ic {
                        for ky in 0..kk {
                            let iy = y as isize + ky as isize - pad as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kk {
                                let ix = x as isize + kx as isize - pad as isize;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                let wv = weight[((o * ic + i) * kk + ky) * kk + kx];
                                acc = acc + wv * inp[((bi * ic + i) * h + iy as usize) * w + ix as usize];
                            }
                        }
                    }
                    out[((bi * oc + o) * ho + y) * wo + x] = acc;
                }
            }
        }
    }
}

/// Each product w * in of the forward sends dout to both factors:
/// dinp[b,i,y+ky-p,x+kx-p] += w dout[b,o,y,x];  dweight[o,i,ky,kx] += in dout;  dbias[o] += dout
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<T: Float>(
    dinp: &mut [T], dweight: &mut [T], dbias: &mut [T], dout: &[T], inp: &[T], weight: &[T], b: usize, ic: usize,
    oc: usize, h: usize, w: usize, kk: usize, pad: usize,
) {
    let (ho, wo) = (conv_out(h, kk, pad), conv_out(w, kk, pad));
    for bi in 0..b {
        for o in 0..oc {
            for y in 0..ho {
                for x in 0..wo {
                    let d = dout[((bi * oc + o) * ho + y) * wo + x];
                    dbias[o] = dbias[o] + d;
                    for i in 0..ic {
                        for ky in 0..kk {
                            let iy = y as isize + ky as isize - pad as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kk {
                                let ix = x as isize + kx as isize - pad as isize;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                let wi = ((o * ic + i) * kk + ky) * kk + kx;
                                let ii = ((bi * ic + i) * h + iy as usize) * w + ix as usize;
                                dinp[ii] = dinp[ii] + weight[wi] * d;
                                dweight[wi] = dweight[wi] + inp[ii] * d;
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// normalization over a set S of elements: norm = (x - mean_S) * rstd_S; out = norm * w[c] + b[c]
// backward (per set, with dnorm = dout * w[c]):
//   dinp += (dnorm - mean_S(dnorm) - norm * mean_S(dnorm * norm)) * rstd_S

/// Backward of one normalization set given by its element indices and channel of each.
#[allow(clippy::too_many_arguments)]
fn norm_backward_set<T: Float>(
    idx: &[(usize, usize)], dinp: &mut [T], dout: &[T], inp: &[T], weight: &[T], m: T, s: T,
) {
    let n: T = k(idx.len() as f64);
    let mut dmean = T::zero();
    let mut dnn = T::zero();
    for &(i, c) in idx {
        let norm = (inp[i] - m) * s;
        let dn = dout[i] * weight[c];
        dmean = dmean + dn;
        dnn = dnn + dn * norm;
    }
    dmean = dmean / n;
    dnn = dnn / n;
    for &(i, c) in idx {
        let norm = (inp[i] - m) * s;
        let dn = dout[i] * weight[c];
        dinp[i] = dinp[i] + (dn - dmean - norm * dnn) * s;
    }
}

/// (mean, biased variance) of the elements at `idx`.
fn stats<T: Float>(inp: &[T], idx: impl Iterator<Item = usize> + Clone) -> (T, T, usize) {
    let n = idx.clone().count();
    let nf: T = k(n as f64);
    let m = idx.clone().fold(T::zero(), |a, i| a + inp[i]) / nf;
    let v = idx.fold(T::zero(), |a, i| a + (inp[i] - m) * (inp[i] - m)) / nf;
    (m, v, n)
}

/// GroupNorm: statistics per (b, group of C/G channels) over (C/G)*HW elements.
/// out, inp [B,C,HW]; mean, rstd [B*G]; weight, bias [C]
#[allow(clippy::too_many_arguments)]
pub fn groupnorm_forward<T: Float>(
    out: &mut [T], mean: &mut [T], rstd: &mut [T], inp: &[T], weight: &[T], bias: &[T], b: usize, c: usize, hw: usize,
    g: usize,
) {
    let cg = c / g;
    for bi in 0..b {
        for gi in 0..g {
            let base = (bi * c + gi * cg) * hw;
            let (m, v, _) = stats(inp, base..base + cg * hw);
            let s = T::one() / (v + k(NORM_EPS)).sqrt();
            for ci in gi * cg..(gi + 1) * cg {
                for p in 0..hw {
                    let i = (bi * c + ci) * hw + p;
                    out[i] = (inp[i] - m) * s * weight[ci] + bias[ci];
                }
            }
            mean[bi * g + gi] = m;
            rstd[bi * g + gi] = s;
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn groupnorm_backward<T: Float>(
    dinp: &mut [T], dweight: &mut [T], dbias: &mut [T], dout: &[T], inp: &[T], weight: &[T], mean: &[T], rstd: &[T],
    b: usize, c: usize, hw: usize, g: usize,
) {
    let cg = c / g;
    for bi in 0..b {
        for gi in 0..g {
            let (m, s) = (mean[bi * g + gi], rstd[bi * g + gi]);
            let idx: Vec<(usize, usize)> =
                (gi * cg..(gi + 1) * cg).flat_map(|ci| (0..hw).map(move |p| ((bi * c + ci) * hw + p, ci))).collect();
            for &(i, ci) in &idx {
                dbias[ci] = dbias[ci] + dout[i];
                dweight[ci] = dweight[ci] + dout[i] * (inp[i] - m) * s;
            }
            norm_backward_set(&idx, dinp, dout, inp, weight, m, s);
        }
    }
}

/// BatchNorm in training mode: statistics per channel over the B*HW elements of the batch (the
/// micro-batch, under accumulation: this is where accumulation and the true batch part ways).
/// Running statistics as PyTorch: r = (1 - momentum) r + momentum stat, with the unbiased
/// variance for running_var.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_train<T: Float>(
    out: &mut [T], mean: &mut [T], rstd: &mut [T], running_mean: &mut [T], running_var: &mut [T], inp: &[T], weight: &[T],
    bias: &[T], b: usize, c: usize, hw: usize, momentum: f64,
) {
    let mo: T = k(momentum);
    for ci in 0..c {
        let idx = (0..b).flat_map(|bi| ((bi * c + ci) * hw)..((bi * c + ci) * hw + hw));
        let (m, v, n) = stats(inp, idx.clone());
        let s = T::one() / (v + k(NORM_EPS)).sqrt();
        for i in idx {
            out[i] = (inp[i] - m) * s * weight[ci] + bias[ci];
        }
        mean[ci] = m;
        rstd[ci] = s;
        let unbiased = if n > 1 { v * k(n as f64) / k((n - 1) as f64) } else { v };
        running_mean[ci] = (T::one() - mo) * running_mean[ci] + mo * m;
        running_var[ci] = (T::one() - mo) * running_var[ci] + mo * unbiased;
    }
}

/// Evaluation mode: the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_eval<T: Float>(
    out: &mut [T], inp: &[T], weight: &[T], bias: &[T], running_mean: &[T], running_var: &[T], b: usize, c: usize,
    hw: usize,
) {
    for bi in 0..b {
        for ci in 0..c {
            let s = T::one() / (running_var[ci] + k(NORM_EPS)).sqrt();
            for p in 0..hw {
                let i = (bi * c + ci) * hw + p;
                out[i] = (inp[i] - running_mean[ci]) * s * weight[ci] + bias[ci];
            }
        }
    }
}

/// Training-mode backward, through the batch statistics.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward<T: Float>(
    dinp: &mut [T], dweight: &mut [T], dbias: &mut [T], dout: &[T], inp: &[T], weight: &[T], mean: &[T], rstd: &[T],
    b: usize, c: usize, hw: usize,
) {
    for ci in 0..c {
        let (m, s) = (mean[ci], rstd[ci]);
        let idx: Vec<(usize, usize)> =
            (0..b).flat_map(|bi| (0..hw).map(move |p| ((bi * c + ci) * hw + p, ci))).collect();
        for &(i, _) in &idx {
            dbias[ci] = dbias[ci] + dout[i];
            dweight[ci] = dweight[ci] + dout[i] * (inp[i] - m) * s;
        }
        norm_backward_set(&idx, dinp, dout, inp, weight, m, s);
    }
}

// ---------------------------------------------------------------------------------------------
// ReLU and 2x2 max-pool

pub fn relu_forward<T: Float>(out: &mut [T], inp: &[T], n: usize) {
    for i in 0..n {
        out[i] = inp[i].max(T::zero());
    }
}

/// The gradient passes where the input was positive (0 at x <= 0).
pub fn relu_backward<T: Float>(dinp: &mut [T], inp: &[T], dout: &[T], n: usize) {
    for i in 0..n {
        if inp[i] > T::zero() {
            dinp[i] = dinp[i] + dout[i];
        }
    }
}

/// out, idx [B,C,H/2,W/2] (floor); idx = flat index into inp of the window's first maximum.
#[allow(clippy::too_many_arguments)]
pub fn maxpool2_forward<T: Float>(out: &mut [T], idx: &mut [u32], inp: &[T], b: usize, c: usize, h: usize, w: usize) {
    let (ho, wo) = (h / 2, w / 2);
    for bc in 0..b * c {
        for y in 0..ho {
            for x in 0..wo {
                let mut best = bc * h * w + (2 * y) * w + 2 * x;
                for (dy, dx) in [(0, 1), (1, 0), (1, 1)] {
                    let i = bc * h * w + (2 * y + dy) * w + 2 * x + dx;
                    if inp[i] > inp[best] {
                        best = i;
                    }
                }
                let o = (bc * ho + y) * wo + x;
                out[o] = inp[best];
                idx[o] = best as u32;
            }
        }
    }
}

/// The gradient goes to the window's maximum.
pub fn maxpool2_backward<T: Float>(dinp: &mut [T], idx: &[u32], dout: &[T], n_out: usize) {
    for o in 0..n_out {
        let i = idx[o] as usize;
        dinp[i] = dinp[i] + dout[o];
    }
}
