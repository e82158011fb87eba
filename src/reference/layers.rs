//! CPU twins of the GPT kernels (llm.c style): encoder, layernorm, matmul, attention, GELU,
//! residual, cross-entropy, and the optimizer-side kernels accumulate, grad_norm, scale, adamw.
//! The names and argument order are those of the WGSL entry points in `shaders/`.
//!
//! Tensors are flat row-major slices (shapes in the comments). Every backward sits right under
//! its forward, with the gradient math, and ACCUMULATES (`+=`) into all of its gradient outputs,
//! so callers zero gradients where a new sum starts (except `crossentropy_chunk_backward`, which
//! assigns the gradient of one vocabulary chunk). Dimensions: B batch, T sequence length,
//! C channels, NH heads (head size hs = C/NH), V vocabulary, maxT block size; N = number of rows
//! (usually B*T); matmul is M x K times (N x K)^T.

use num_traits::Float;

/// Targets equal to this are ignored (padding): no loss, no gradient, not counted.
pub const IGNORE_INDEX: u32 = u32::MAX;
/// LayerNorm epsilon (PyTorch's default).
pub const LN_EPS: f64 = 1e-5;

/// An f64 constant in T.
fn lit<T: Float>(x: f64) -> T {
    T::from(x).unwrap()
}

// ---------------------------------------------------------------------------------------------
// encoder: token embedding plus position embedding

/// out[b,t,:] = wte[inp[b,t],:] + wpe[t,:]
/// out [B,T,C], inp [B,T] token ids < V, wte [V,C], wpe [maxT,C] (T <= maxT)
pub fn encoder_forward<T: Float>(out: &mut [T], inp: &[u32], wte: &[T], wpe: &[T], b: usize, t: usize, c: usize) {
    for bt in 0..b * t {
        let tok = inp[bt] as usize;
        let pos = bt % t;
        for i in 0..c {
            out[bt * c + i] = wte[tok * c + i] + wpe[pos * c + i];
        }
    }
}

/// The encoder is a lookup and an addition: d out / d wte[tok,i] = d out / d wpe[pos,i] = 1, so
/// each row of dout is added to the row of its token and to the row of its position:
/// dwte[inp[b,t],:] += dout[b,t,:];  dwpe[t,:] += dout[b,t,:]
/// (a token seen twice, or a position in every sequence, sums several rows).
/// dwte [V,C], dwpe [maxT,C], dout [B,T,C], inp [B,T]
pub fn encoder_backward<T: Float>(dwte: &mut [T], dwpe: &mut [T], dout: &[T], inp: &[u32], b: usize, t: usize, c: usize) {
    for bt in 0..b * t {
        let tok = inp[bt] as usize;
        let pos = bt % t;
        for i in 0..c {
            let d = dout[bt * c + i];
            dwte[tok * c + i] = dwte[tok * c + i] + d;
            dwpe[pos * c + i] = dwpe[pos * c + i] + d;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// layernorm over the last axis (biased variance, eps inside the square root)

/// mean = sum_i x_i / C;  var = sum_i (x_i - mean)^2 / C;  rstd = 1 / sqrt(var + eps)
/// norm_i = (x_i - mean) * rstd;  out_i = norm_i * weight_i + bias_i
/// mean and rstd are saved for the backward.
/// out [N,C], mean [N], rstd [N], inp [N,C], weight [C], bias [C]
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<T: Float>(
    out: &mut [T], mean: &mut [T], rstd: &mut [T], inp: &[T], weight: &[T], bias: &[T], n: usize, c: usize,
) {
    let cf: T = lit(c as f64);
    for r in 0..n {
        let x = &inp[r * c..(r + 1) * c];
        let m = x.iter().fold(T::zero(), |a, &v| a + v) / cf;
        let var = x.iter().fold(T::zero(), |a, &v| a + (v - m) * (v - m)) / cf;
        let s = T::one() / (var + lit(LN_EPS)).sqrt();
        for i in 0..c {
            out[r * c + i] = (x[i] - m) * s * weight[i] + bias[i];
        }
        mean[r] = m;
        rstd[r] = s;
    }
}

/// Per row, with dnorm_i = dout_i * weight_i:
///   dbias_i   += dout_i                      (summed over rows)
///   dweight_i += dout_i * norm_i             (summed over rows)
///   dinp_i    += rstd * (dnorm_i - mean_j(dnorm_j) - norm_i * mean_j(dnorm_j * norm_j))
/// The last line is the chain rule through norm = (x - mean) rstd: d norm_j / d x_i =
/// rstd (delta_ij - 1/C) - norm_j norm_i rstd / C (the mean term and the variance term).
/// dinp [N,C], dweight [C], dbias [C], dout [N,C], inp [N,C], weight [C], mean [N], rstd [N]
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<T: Float>(
    dinp: &mut [T], dweight: &mut [T], dbias: &mut [T], dout: &[T], inp: &[T], weight: &[T], mean: &[T], rstd: &[T],
    n: usize, c: usize,
) {
    let cf: T = lit(c as f64);
    for r in 0..n {
        let (m, s) = (mean[r], rstd[r]);
        // the two row means of the dinp formula
        let mut dnorm_mean = T::zero();
        let mut dnorm_norm_mean = T::zero();
        for i in 0..c {
            let norm = (inp[r * c + i] - m) * s;
            let dnorm = weight[i] * dout[r * c + i];
            dnorm_mean = dnorm_mean + dnorm;
            dnorm_norm_mean = dnorm_norm_mean + dnorm * norm;
        }
        dnorm_mean = dnorm_mean / cf;
        dnorm_norm_mean = dnorm_norm_mean / cf;
        for i in 0..c {
            let norm = (inp[r * c + i] - m) * s;
            let d = dout[r * c + i];
            let dnorm = weight[i] * d;
            dbias[i] = dbias[i] + d;
            dweight[i] = dweight[i] + norm * d;
            dinp[r * c + i] = dinp[r * c + i] + (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// matmul: a Linear layer, weight in PyTorch's [out, in] layout

/// out[m,n] = sum_k inp[m,k] * weight[n,k] + bias[n]   (out = inp . weight^T + bias)
/// out [M,N], inp [M,K], weight [N,K], bias [N] or None
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward<T: Float>(out: &mut [T], inp: &[T], weight: &[T], bias: Option<&[T]>, m: usize, k: usize, n: usize) {
    for i in 0..m {
        let x = &inp[i * k..(i + 1) * k];
        for j in 0..n {
            let w = &weight[j * k..(j + 1) * k];
            let mut acc = bias.map_or(T::zero(), |bias| bias[j]);
            for r in 0..k {
                acc = acc + x[r] * w[r];
            }
            out[i * n + j] = acc;
        }
    }
}

/// Each product inp[m,k] * weight[n,k] sends dout[m,n] to both factors, the bias gets dout:
///   dinp[m,k]    += sum_n dout[m,n] * weight[n,k]   (dinp = dout . weight)
///   dweight[n,k] += sum_m dout[m,n] * inp[m,k]      (dweight = dout^T . inp)
///   dbias[n]     += sum_m dout[m,n]
/// dinp [M,K], dweight [N,K], dbias [N] or None, dout [M,N], inp [M,K], weight [N,K]
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward<T: Float>(
    dinp: &mut [T], dweight: &mut [T], dbias: Option<&mut [T]>, dout: &[T], inp: &[T], weight: &[T], m: usize, k: usize,
    n: usize,
) {
    for i in 0..m {
        for j in 0..n {
            let d = dout[i * n + j];
            for r in 0..k {
                dinp[i * k + r] = dinp[i * k + r] + d * weight[j * k + r];
                dweight[j * k + r] = dweight[j * k + r] + d * inp[i * k + r];
            }
        }
    }
    if let Some(dbias) = dbias {
        for i in 0..m {
            for j in 0..n {
                dbias[j] = dbias[j] + dout[i * n + j];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// causal multi-head self-attention
// qkv row (b,t) = [q (C) | k (C) | v (C)]; head h uses channels h*hs..(h+1)*hs of each, hs = C/NH.

/// For each batch b, head h, query position t:
///   preatt[b,h,t,t2] = q[b,t,h,:] . k[b,t2,h,:] / sqrt(hs)   for t2 <= t, 0 for t2 > t
///   att[b,h,t,:]     = softmax over t2 <= t of preatt[b,h,t,:], 0 for t2 > t
///   out[b,t,h*hs+i]  = sum_{t2 <= t} att[b,h,t,t2] * v[b,t2,h*hs+i]
/// out [B,T,C], preatt [B,NH,T,T], att [B,NH,T,T], qkv [B,T,3C]
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<T: Float>(
    out: &mut [T], preatt: &mut [T], att: &mut [T], qkv: &[T], b: usize, t: usize, c: usize, nh: usize,
) {
    attention_forward_dropout(out, preatt, att, qkv, None, b, t, c, nh)
}

/// `attention_forward` with dropout on the attention probabilities: out = (att * mask) v, where
/// `mask` [B,NH,T,T] holds each probability's factor (0 or 1/(1-p), `dropout::Dropout::mask`);
/// `att` keeps the probabilities before dropout (the softmax backward needs them).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_dropout<T: Float>(
    out: &mut [T], preatt: &mut [T], att: &mut [T], qkv: &[T], mask: Option<&[T]>, b: usize, t: usize, c: usize, nh: usize,
) {
    assert!(nh > 0 && c.is_multiple_of(nh), "C = {c} is not a multiple of NH = {nh}");
    let hs = c / nh;
    let scale: T = lit(1.0 / (hs as f64).sqrt());
    let c3 = 3 * c;
    for bi in 0..b {
        for h in 0..nh {
            for ti in 0..t {
                let row = ((bi * nh + h) * t + ti) * t; // start of preatt/att[bi,h,ti,:]
                let q = (bi * t + ti) * c3 + h * hs;
                // scores, and their max for a stable softmax
                let mut maxv = T::neg_infinity();
                for t2 in 0..t {
                    if t2 <= ti {
                        let kk = (bi * t + t2) * c3 + c + h * hs;
                        let mut s = T::zero();
                        for i in 0..hs {
                            s = s + qkv[q + i] * qkv[kk + i];
                        }
                        s = s * scale;
                        preatt[row + t2] = s;
                        maxv = maxv.max(s);
                    } else {
                        preatt[row + t2] = T::zero();
                    }
                }
                let mut sum = T::zero();
                for t2 in 0..=ti {
                    let e = (preatt[row + t2] - maxv).exp();
                    att[row + t2] = e;
                    sum = sum + e;
                }
                for t2 in 0..t {
                    att[row + t2] = if t2 <= ti { att[row + t2] / sum } else { T::zero() };
                }
                // weighted sum of the values
                let o = (bi * t + ti) * c + h * hs;
                let m = |e: usize| mask.map_or(T::one(), |m| m[e]);
                for i in 0..hs {
                    let mut acc = T::zero();
                    for t2 in 0..=ti {
                        acc = acc + att[row + t2] * m(row + t2) * qkv[(bi * t + t2) * c3 + 2 * c + h * hs + i];
                    }
                    out[o + i] = acc;
                }
            }
        }
    }
}

/// The forward in reverse, for each (b, h, t), t2 and t3 running over 0..=t:
///   out = sum_t2 att[t2] v[t2]:
///     datt[t2]    += dout[t] . v[t2]
///     dv[t2]      += att[t2] * dout[t]
///   att = softmax(preatt), d att[t2] / d preatt[t3] = att[t2] (delta_t2t3 - att[t3]):
///     dpreatt[t3] += att[t3] * (datt[t3] - sum_t2 att[t2] datt[t2])
///   preatt[t2] = q[t] . k[t2] / sqrt(hs):
///     dq[t]       += sum_t2 dpreatt[t2] k[t2] / sqrt(hs)
///     dk[t2]      += dpreatt[t2] q[t] / sqrt(hs)
/// Masked entries (t2 > t) get no gradient. As in llm.c and the WGSL kernel, the scratch
/// buffers datt and dpreatt accumulate too, and the softmax line reads the whole (accumulated)
/// datt row, the dq/dk lines the whole (accumulated) dpreatt row: dqkv receives exactly this
/// call's gradient when both scratch buffers start at zero, which is what the model does.
/// dqkv [B,T,3C], dpreatt [B,NH,T,T], datt [B,NH,T,T], dout [B,T,C], qkv [B,T,3C], att [B,NH,T,T]
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Float>(
    dqkv: &mut [T], dpreatt: &mut [T], datt: &mut [T], dout: &[T], qkv: &[T], att: &[T], b: usize, t: usize, c: usize,
    nh: usize,
) {
    attention_backward_dropout(dqkv, dpreatt, datt, dout, qkv, att, None, b, t, c, nh)
}

/// The backward of `attention_forward_dropout`: with m the probabilities' factors,
/// datt[t2] += m[t2] (dout[t] . v[t2]) (the gradient of the probabilities before dropout) and
/// dv[t2] += m[t2] att[t2] dout[t]; the softmax and q/k lines are unchanged.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_dropout<T: Float>(
    dqkv: &mut [T], dpreatt: &mut [T], datt: &mut [T], dout: &[T], qkv: &[T], att: &[T], mask: Option<&[T]>, b: usize,
    t: usize, c: usize, nh: usize,
) {
    assert!(nh > 0 && c.is_multiple_of(nh), "C = {c} is not a multiple of NH = {nh}");
    let hs = c / nh;
    let scale: T = lit(1.0 / (hs as f64).sqrt());
    let c3 = 3 * c;
    for bi in 0..b {
        for h in 0..nh {
            for ti in 0..t {
                let row = ((bi * nh + h) * t + ti) * t; // start of datt/dpreatt/att[bi,h,ti,:]
                let g = (bi * t + ti) * c + h * hs; // dout[bi,ti,head h]
                let q = (bi * t + ti) * c3 + h * hs; // q[bi,ti,head h] (and dq)
                // out = att . v
                for t2 in 0..=ti {
                    let v = (bi * t + t2) * c3 + 2 * c + h * hs;
                    let m = mask.map_or(T::one(), |m| m[row + t2]);
                    let mut s = T::zero();
                    for i in 0..hs {
                        s = s + dout[g + i] * qkv[v + i];
                        dqkv[v + i] = dqkv[v + i] + att[row + t2] * m * dout[g + i];
                    }
                    datt[row + t2] = datt[row + t2] + s * m;
                }
                // att = softmax(preatt)
                let mut dot = T::zero();
                for t2 in 0..=ti {
                    dot = dot + att[row + t2] * datt[row + t2];
                }
                for t3 in 0..=ti {
                    dpreatt[row + t3] = dpreatt[row + t3] + att[row + t3] * (datt[row + t3] - dot);
                }
                // preatt = q . k * scale
                for t2 in 0..=ti {
                    let kk = (bi * t + t2) * c3 + c + h * hs;
                    let d = dpreatt[row + t2] * scale;
                    for i in 0..hs {
                        dqkv[q + i] = dqkv[q + i] + d * qkv[kk + i];
                        dqkv[kk + i] = dqkv[kk + i] + d * qkv[q + i];
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GELU, tanh approximation (PyTorch approximate="tanh", GPT-2)

/// sqrt(2/pi)
const GELU_S: f64 = 0.797_884_560_802_865_4;
const GELU_A: f64 = 0.044715;

/// out = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
/// out [N], inp [N]
pub fn gelu_forward<T: Float>(out: &mut [T], inp: &[T], n: usize) {
    for i in 0..n {
        let x = inp[i];
        let u: T = lit::<T>(GELU_S) * (x + lit::<T>(GELU_A) * x * x * x);
        out[i] = lit::<T>(0.5) * x * (T::one() + u.tanh());
    }
}

/// Product rule, with tanh' = 1 - tanh^2 and du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2):
///   d out / dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
///   dinp += d out / dx * dout
/// dinp [N], inp [N], dout [N]
pub fn gelu_backward<T: Float>(dinp: &mut [T], inp: &[T], dout: &[T], n: usize) {
    for i in 0..n {
        let x = inp[i];
        let u: T = lit::<T>(GELU_S) * (x + lit::<T>(GELU_A) * x * x * x);
        let th = u.tanh();
        let du = lit::<T>(GELU_S) * (T::one() + lit::<T>(3.0 * GELU_A) * x * x);
        let grad = lit::<T>(0.5) * (T::one() + th) + lit::<T>(0.5) * x * (T::one() - th * th) * du;
        dinp[i] = dinp[i] + grad * dout[i];
    }
}

// ---------------------------------------------------------------------------------------------
// residual connection

/// out = inp1 + inp2
/// out [N], inp1 [N], inp2 [N]
pub fn residual_forward<T: Float>(out: &mut [T], inp1: &[T], inp2: &[T], n: usize) {
    for i in 0..n {
        out[i] = inp1[i] + inp2[i];
    }
}

/// d out / d inp1 = d out / d inp2 = 1: both inputs receive dout.
/// dinp1 [N], dinp2 [N], dout [N]
pub fn residual_backward<T: Float>(dinp1: &mut [T], dinp2: &mut [T], dout: &[T], n: usize) {
    for i in 0..n {
        dinp1[i] = dinp1[i] + dout[i];
        dinp2[i] = dinp2[i] + dout[i];
    }
}

// ---------------------------------------------------------------------------------------------
// softmax cross-entropy per row; the reduction (sum) is the caller's

/// losses[r] = logsumexp(logits[r,:]) - logits[r, targets[r]], or 0 when targets[r] ==
/// IGNORE_INDEX. Returns the number of counted (not ignored) rows.
/// losses [N], logits [N,V], targets [N] (< V or IGNORE_INDEX)
pub fn crossentropy_forward<T: Float>(losses: &mut [T], logits: &[T], targets: &[u32], n: usize, v: usize) -> u32 {
    let mut count = 0u32;
    for r in 0..n {
        if targets[r] == IGNORE_INDEX {
            losses[r] = T::zero();
            continue;
        }
        let x = &logits[r * v..(r + 1) * v];
        let m = x.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
        let s = x.iter().fold(T::zero(), |a, &b| a + (b - m).exp());
        losses[r] = s.ln() + m - x[targets[r] as usize];
        count += 1;
    }
    count
}

/// d logsumexp(x) / d x_i = softmax(x)_i and d x_target / d x_i = [i == target], so with each
/// counted row's loss weighted by dloss (1 for reduction = sum, 1/count for the mean):
///   dlogits[r,:] += dloss * (softmax(logits[r,:]) - onehot(targets[r]))
/// Ignored rows get nothing.
/// dlogits [N,V], logits [N,V], targets [N]
pub fn crossentropy_backward<T: Float>(dlogits: &mut [T], logits: &[T], targets: &[u32], dloss: T, n: usize, v: usize) {
    for r in 0..n {
        if targets[r] == IGNORE_INDEX {
            continue;
        }
        let x = &logits[r * v..(r + 1) * v];
        let m = x.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
        let s = x.iter().fold(T::zero(), |a, &b| a + (b - m).exp());
        for i in 0..v {
            let mut p = (x[i] - m).exp() / s;
            if i == targets[r] as usize {
                p = p - T::one();
            }
            dlogits[r * v + i] = dlogits[r * v + i] + dloss * p;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// cross-entropy over vocabulary chunks: the logits [N,V] are never whole, each chunk [N,VC] of
// columns [v0, v0 + vc) is consumed as the lm_head writes it. Per row, a state of four numbers
// (m, s, target logit, lse): the running max m and sum s of exp(x - m) over the chunks seen so
// far, the target's logit, and after `crossentropy_chunk_finish` lse = m + log(s).

/// Fold chunk [v0, v0 + vc) into each counted row's state [N,4] with an online log-sum-exp:
/// m' = max(m, mc), s' = s exp(m - m') + sc exp(mc - m') with (mc, sc) the chunk's max and sum of
/// exp(x - mc); the target's logit is recorded when v0 <= target < v0 + vc. `first` sets the
/// state from this chunk alone (target logit 0 until its chunk comes). Ignored rows are left as
/// they are. state [N,4], logits_chunk [N,VC], targets [N]
#[allow(clippy::too_many_arguments)]
pub fn crossentropy_chunk_forward<T: Float>(
    state: &mut [T], logits_chunk: &[T], targets: &[u32], v0: usize, vc: usize, n: usize, first: bool,
) {
    for r in 0..n {
        let tgt = targets[r];
        if tgt == IGNORE_INDEX {
            continue;
        }
        let x = &logits_chunk[r * vc..(r + 1) * vc];
        let mc = x.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
        let sc = x.iter().fold(T::zero(), |a, &b| a + (b - mc).exp());
        let st = &mut state[r * 4..(r + 1) * 4];
        if first {
            st[0] = mc;
            st[1] = sc;
            st[2] = T::zero();
        } else {
            let m = st[0].max(mc);
            st[1] = st[1] * (st[0] - m).exp() + sc * (mc - m).exp();
            st[0] = m;
        }
        let t = tgt as usize;
        if (v0..v0 + vc).contains(&t) {
            st[2] = x[t - v0];
        }
    }
}

/// After every chunk: losses[r] = log(s) + m - target logit (0 when ignored) and, for the
/// backward, state[r].lse = m + log(s). Returns the number of counted rows.
/// losses [N], state [N,4], targets [N]
pub fn crossentropy_chunk_finish<T: Float>(losses: &mut [T], state: &mut [T], targets: &[u32], n: usize) -> u32 {
    let mut count = 0;
    for r in 0..n {
        if targets[r] == IGNORE_INDEX {
            losses[r] = T::zero();
            continue;
        }
        let st = &mut state[r * 4..(r + 1) * 4];
        let log_s = st[1].ln();
        losses[r] = log_s + st[0] - st[2];
        st[3] = st[0] + log_s;
        count += 1;
    }
    count
}

/// The columns [v0, v0 + vc) of `crossentropy_backward`'s gradient, from the finished state:
///   dlogits_chunk[r,j] = dloss * (exp(logits_chunk[r,j] - lse[r]) - [v0 + j == targets[r]])
/// ASSIGNED (not accumulated, unlike every other backward here: one scratch serves every chunk);
/// ignored rows get 0. dlogits_chunk [N,VC], logits_chunk [N,VC], state [N,4], targets [N]
#[allow(clippy::too_many_arguments)]
pub fn crossentropy_chunk_backward<T: Float>(
    dlogits_chunk: &mut [T], logits_chunk: &[T], state: &[T], targets: &[u32], dloss: T, v0: usize, vc: usize, n: usize,
) {
    for r in 0..n {
        let tgt = targets[r];
        let d = &mut dlogits_chunk[r * vc..(r + 1) * vc];
        if tgt == IGNORE_INDEX {
            d.fill(T::zero());
            continue;
        }
        let lse = state[r * 4 + 3];
        for j in 0..vc {
            let mut p = (logits_chunk[r * vc + j] - lse).exp();
            if v0 + j == tgt as usize {
                p = p - T::one();
            }
            d[j] = dloss * p;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// optimizer side: accumulate, global norm, scale, AdamW

/// grad += micro_grad   (one micro-batch's gradient into the window's)
/// grad [N], micro_grad [N]
pub fn accumulate<T: Float>(grad: &mut [T], micro_grad: &[T], n: usize) {
    for i in 0..n {
        grad[i] = grad[i] + micro_grad[i];
    }
}

/// Global L2 norm sqrt(sum_i g_i^2) of the whole (accumulated) gradient, for clipping.
/// grads [N]
pub fn grad_norm<T: Float>(grads: &[T], n: usize) -> T {
    grads[..n].iter().fold(T::zero(), |a, &g| a + g * g).sqrt()
}

/// x *= s   (divide by the window's count, clip, unscale)
/// x [N]
pub fn scale<T: Float>(x: &mut [T], s: T, n: usize) {
    for v in x[..n].iter_mut() {
        *v = *v * s;
    }
}

/// PyTorch AdamW, one step; `step` counts optimizer steps and starts at 1:
///   p -= lr * weight_decay * p                       (decoupled decay, applied first)
///   m  = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
///   mhat = m / (1 - beta1^step);    vhat = v / (1 - beta2^step)
///   p -= lr * mhat / (sqrt(vhat) + eps)
/// params [N], grads [N], m [N], v [N] (first and second moments, updated in place)
#[allow(clippy::too_many_arguments)]
pub fn adamw<T: Float>(
    params: &mut [T], grads: &[T], m: &mut [T], v: &mut [T], n: usize, lr: f64, beta1: f64, beta2: f64, eps: f64,
    weight_decay: f64, step: u32,
) {
    assert!(step >= 1, "AdamW step counts from 1");
    let (lr, b1, b2, eps, wd): (T, T, T, T, T) = (lit(lr), lit(beta1), lit(beta2), lit(eps), lit(weight_decay));
    let bc1 = T::one() - b1.powi(step as i32);
    let bc2 = T::one() - b2.powi(step as i32);
    for i in 0..n {
        let g = grads[i];
        let mut p = params[i];
        p = p - lr * wd * p;
        m[i] = b1 * m[i] + (T::one() - b1) * g;
        v[i] = b2 * v[i] + (T::one() - b2) * g * g;
        let mhat = m[i] / bc1;
        let vhat = v[i] / bc2;
        p = p - lr * mhat / (vhat.sqrt() + eps);
        params[i] = p;
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    //! Every backward against central finite differences in f64 on fresh random inputs. The loss
    //! of a layer is a random linear functional of its output, L = sum(out * w), so dout = w.
    //! Gradient buffers are pre-filled with random values and the check is on what the backward
    //! added, so a backward that overwrites instead of accumulating fails too.

    use super::*;
    use crate::reference::testutil::{Rng, Worst, added, dot, fd_check};

    fn encoder_case(rng: &mut Rng, b: usize, t: usize, c: usize, v: usize, maxt: usize) -> Worst {
        let inp = rng.tokens(b * t, v);
        let (wte, wpe, w) = (rng.vec(v * c, 1.0), rng.vec(maxt * c, 1.0), rng.vec(b * t * c, 1.0));
        let (pre_wte, pre_wpe) = (rng.vec(v * c, 1.0), rng.vec(maxt * c, 1.0));
        let (mut dwte, mut dwpe) = (pre_wte.clone(), pre_wpe.clone());
        encoder_backward(&mut dwte, &mut dwpe, &w, &inp, b, t, c);
        fd_check(&[wte, wpe], &[added(&dwte, &pre_wte), added(&dwpe, &pre_wpe)], |x| {
            let mut out = vec![0.0; b * t * c];
            encoder_forward(&mut out, &inp, &x[0], &x[1], b, t, c);
            dot(&out, &w)
        })
    }

    #[test]
    fn encoder_forward_is_lookup_plus_position() {
        let (b, t, c) = (2, 3, 2);
        let wte: Vec<f64> = (0..5 * c).map(|i| i as f64).collect(); // V = 5
        let wpe: Vec<f64> = (0..4 * c).map(|i| 100.0 * i as f64).collect(); // maxT = 4
        let inp = [4u32, 0, 2, 1, 1, 3];
        let mut out = vec![0.0; b * t * c];
        encoder_forward(&mut out, &inp, &wte, &wpe, b, t, c);
        // (b=1, t=2): token 3 at position 2
        assert_eq!(&out[5 * c..6 * c], &[6.0 + 400.0, 7.0 + 500.0]);
        assert_eq!(&out[0..c], &[8.0, 9.0 + 100.0]);
    }

    #[test]
    fn encoder_backward_matches_finite_differences() {
        let mut rng = Rng::fresh("encoder_backward");
        let mut worst = Worst::default();
        // (B, T, C, V, maxT): maxT > T leaves unused wpe rows, a token may repeat
        for (b, t, c, v, maxt) in [(2, 5, 6, 7, 9), (1, 1, 3, 2, 1), (3, 4, 5, 3, 4)] {
            let w = encoder_case(&mut rng, b, t, c, v, maxt);
            worst.merge(w);
        }
        worst.check("encoder_backward");
    }

    fn layernorm_case(rng: &mut Rng, n: usize, c: usize) -> Worst {
        // rows with an offset and a spread, as activations have
        let x: Vec<f64> = (0..n * c).map(|i| rng.uniform() * 2.0 + (i / c) as f64 * 0.3).collect();
        let (wt, bs, w) = (rng.vec(c, 1.5), rng.vec(c, 1.0), rng.vec(n * c, 1.0));
        let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &wt, &bs, n, c);
        let (pre_x, pre_w, pre_b) = (rng.vec(n * c, 1.0), rng.vec(c, 1.0), rng.vec(c, 1.0));
        let (mut dx, mut dw, mut db) = (pre_x.clone(), pre_w.clone(), pre_b.clone());
        layernorm_backward(&mut dx, &mut dw, &mut db, &w, &x, &wt, &mean, &rstd, n, c);
        fd_check(&[x, wt, bs], &[added(&dx, &pre_x), added(&dw, &pre_w), added(&db, &pre_b)], |x| {
            let (mut out, mut m, mut r) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            layernorm_forward(&mut out, &mut m, &mut r, &x[0], &x[1], &x[2], n, c);
            dot(&out, &w)
        })
    }

    #[test]
    fn layernorm_forward_normalizes_rows() {
        let (n, c) = (2, 4);
        let x = [1.0, 2.0, 3.0, 4.0, -1.0, -1.0, 5.0, 5.0];
        let (w, b) = ([1.0; 4], [0.0; 4]);
        let (mut out, mut mean, mut rstd) = (vec![0.0; 8], vec![0.0; 2], vec![0.0; 2]);
        layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &w, &b, n, c);
        assert_eq!(mean, vec![2.5, 2.0]);
        // biased variance: 1.25 and 9
        assert!((rstd[0] - 1.0 / (1.25f64 + 1e-5).sqrt()).abs() < 1e-15);
        assert!((rstd[1] - 1.0 / (9.0f64 + 1e-5).sqrt()).abs() < 1e-15);
        for r in 0..n {
            let row = &out[r * c..(r + 1) * c];
            assert!(row.iter().sum::<f64>().abs() < 1e-12);
            assert!((row.iter().map(|v| v * v).sum::<f64>() / c as f64 - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn layernorm_backward_matches_finite_differences() {
        let mut rng = Rng::fresh("layernorm_backward");
        let mut worst = Worst::default();
        for (n, c) in [(5, 7), (3, 12), (1, 2), (4, 1)] {
            let w = layernorm_case(&mut rng, n, c);
            worst.merge(w);
        }
        worst.check("layernorm_backward");
    }

    #[test]
    fn matmul_forward_is_inp_times_weight_transposed() {
        // inp [2,3], weight [2,3] (N=2 outputs), bias [2]
        let inp = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let weight = [1.0, 0.0, -1.0, 0.5, 0.5, 0.5];
        let mut out = vec![0.0; 4];
        matmul_forward(&mut out, &inp, &weight, Some(&[10.0, 20.0]), 2, 3, 2);
        assert_eq!(out, vec![10.0 - 2.0, 20.0 + 3.0, 10.0 - 2.0, 20.0 + 7.5]);
        matmul_forward(&mut out, &inp, &weight, None, 2, 3, 2);
        assert_eq!(out, vec![-2.0, 3.0, -2.0, 7.5]);
    }

    #[test]
    fn matmul_backward_matches_finite_differences() {
        let mut rng = Rng::fresh("matmul_backward");
        let mut worst = Worst::default();
        for (m, k, n, with_bias) in [(3, 5, 7, true), (1, 1, 1, true), (4, 8, 3, false), (6, 2, 9, true)] {
            let (x, wt, bs, w) = (rng.vec(m * k, 1.0), rng.vec(n * k, 1.0), rng.vec(n, 1.0), rng.vec(m * n, 1.0));
            let (pre_x, pre_w, pre_b) = (rng.vec(m * k, 1.0), rng.vec(n * k, 1.0), rng.vec(n, 1.0));
            let (mut dx, mut dw, mut db) = (pre_x.clone(), pre_w.clone(), pre_b.clone());
            matmul_backward(&mut dx, &mut dw, with_bias.then_some(&mut db[..]), &w, &x, &wt, m, k, n);
            if !with_bias {
                assert_eq!(db, pre_b, "no bias: dbias untouched");
            }
            let loss = |x: &[Vec<f64>]| {
                let mut out = vec![0.0; m * n];
                matmul_forward(&mut out, &x[0], &x[1], with_bias.then_some(&x[2][..]), m, k, n);
                dot(&out, &w)
            };
            let r = fd_check(&[x, wt, bs], &[added(&dx, &pre_x), added(&dw, &pre_w), added(&db, &pre_b)], loss);
            worst.merge(r);
        }
        worst.check("matmul_backward");
    }

    /// Attention from preatt on: causal softmax, then att . v (to check dpreatt and datt).
    /// out [B,T,C], pre [B,NH,T,T] or att [B,NH,T,T] (softmax_first says which), qkv [B,T,3C]
    #[allow(clippy::too_many_arguments)]
    fn attention_tail(pre_or_att: &[f64], qkv: &[f64], softmax_first: bool, b: usize, t: usize, c: usize, nh: usize) -> Vec<f64> {
        let hs = c / nh;
        let mut out = vec![0.0; b * t * c];
        for bi in 0..b {
            for h in 0..nh {
                for ti in 0..t {
                    let row = &pre_or_att[((bi * nh + h) * t + ti) * t..][..t];
                    let att: Vec<f64> = if softmax_first {
                        let m = row[..=ti].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let s: f64 = row[..=ti].iter().map(|x| (x - m).exp()).sum();
                        row[..=ti].iter().map(|x| (x - m).exp() / s).collect()
                    } else {
                        row[..=ti].to_vec()
                    };
                    for i in 0..hs {
                        out[(bi * t + ti) * c + h * hs + i] =
                            (0..=ti).map(|t2| att[t2] * qkv[(bi * t + t2) * 3 * c + 2 * c + h * hs + i]).sum();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_forward_is_causal_and_normalized() {
        let mut rng = Rng::fresh("attention_forward");
        let (b, t, c, nh) = (2, 5, 12, 3);
        let qkv = rng.vec(b * t * 3 * c, 1.0);
        let tt = b * nh * t * t;
        let (mut out, mut pre, mut att) = (vec![0.0; b * t * c], vec![7.0; tt], vec![7.0; tt]);
        attention_forward(&mut out, &mut pre, &mut att, &qkv, b, t, c, nh);
        for r in 0..b * nh * t {
            let ti = r % t;
            let row = &att[r * t..(r + 1) * t];
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!(row[ti + 1..].iter().all(|&x| x == 0.0) && pre[r * t + ti + 1..(r + 1) * t].iter().all(|&x| x == 0.0));
        }
        // preatt[0,1,2,1] = q[0,2,head 1] . k[0,1,head 1] / sqrt(4)
        let (hs, h, ti, t2) = (4, 1, 2, 1);
        let want: f64 =
            (0..hs).map(|i| qkv[ti * 3 * c + h * hs + i] * qkv[t2 * 3 * c + c + h * hs + i]).sum::<f64>() / 2.0;
        assert!((pre[(h * t + ti) * t + t2] - want).abs() < 1e-14);
        // the output is att . v
        let want_out = attention_tail(&att, &qkv, false, b, t, c, nh);
        assert!(out.iter().zip(&want_out).all(|(a, b)| (a - b).abs() < 1e-14));
        // the first position attends only to itself: out = v
        assert!((0..c).all(|i| (out[i] - qkv[2 * c + i]).abs() < 1e-15));
    }

    #[test]
    fn attention_backward_matches_finite_differences() {
        let mut rng = Rng::fresh("attention_backward");
        let (mut wq, mut wp, mut wa) = (Worst::default(), Worst::default(), Worst::default());
        // (B, T, C, NH): hs = 4, 1, 4, 3
        for (b, t, c, nh) in [(2, 5, 12, 3), (1, 4, 6, 6), (1, 1, 4, 1), (3, 3, 6, 2)] {
            let (qkv, w) = (rng.vec(b * t * 3 * c, 1.5), rng.vec(b * t * c, 1.0));
            let tt = b * nh * t * t;
            let (mut out, mut pre, mut att) = (vec![0.0; b * t * c], vec![0.0; tt], vec![0.0; tt]);
            attention_forward(&mut out, &mut pre, &mut att, &qkv, b, t, c, nh);
            // dqkv pre-filled (it must accumulate); the scratch buffers zeroed, as the model does
            let pre_q = rng.vec(b * t * 3 * c, 1.0);
            let (mut dqkv, mut dpre, mut datt) = (pre_q.clone(), vec![0.0; tt], vec![0.0; tt]);
            attention_backward(&mut dqkv, &mut dpre, &mut datt, &w, &qkv, &att, b, t, c, nh);
            let r = fd_check(std::slice::from_ref(&qkv), &[added(&dqkv, &pre_q)], |x| {
                let (mut out, mut pre, mut att) = (vec![0.0; b * t * c], vec![0.0; tt], vec![0.0; tt]);
                attention_forward(&mut out, &mut pre, &mut att, &x[0], b, t, c, nh);
                dot(&out, &w)
            });
            let r_pre = fd_check(&[pre.clone()], &[dpre], |x| {
                dot(&attention_tail(&x[0], &qkv, true, b, t, c, nh), &w)
            });
            let r_att = fd_check(&[att.clone()], &[datt], |x| {
                dot(&attention_tail(&x[0], &qkv, false, b, t, c, nh), &w)
            });
            for (acc, r) in [(&mut wq, r), (&mut wp, r_pre), (&mut wa, r_att)] {
                acc.merge(r);
            }
        }
        wq.check("attention_backward dqkv");
        wp.check("attention_backward dpreatt");
        wa.check("attention_backward datt");
    }

    #[test]
    fn gelu_forward_known_values() {
        let x = [0.0, 1.0, -1.0, 3.0, -10.0];
        let mut out = [9.0; 5];
        gelu_forward(&mut out, &x, 5);
        // torch.nn.functional.gelu(x, approximate="tanh")
        let want = [0.0, 0.841_191_990_608_276_8, -0.158_808_009_391_723_24, 2.996_362_607_918_227, -0.0];
        for i in 0..5 {
            assert!((out[i] - want[i]).abs() < 1e-12, "gelu({}) = {} want {}", x[i], out[i], want[i]);
        }
    }

    #[test]
    fn gelu_backward_matches_finite_differences() {
        let mut rng = Rng::fresh("gelu_backward");
        let n = 41;
        let x = rng.vec(n, 4.0);
        let w = rng.vec(n, 1.0);
        let pre = rng.vec(n, 1.0);
        let mut dx = pre.clone();
        gelu_backward(&mut dx, &x, &w, n);
        fd_check(&[x], &[added(&dx, &pre)], |x| {
            let mut out = vec![0.0; n];
            gelu_forward(&mut out, &x[0], n);
            dot(&out, &w)
        })
        .check("gelu_backward");
    }

    #[test]
    fn residual_backward_matches_finite_differences() {
        let mut rng = Rng::fresh("residual_backward");
        let n = 13;
        let (a, b, w) = (rng.vec(n, 1.0), rng.vec(n, 1.0), rng.vec(n, 1.0));
        let (pre_a, pre_b) = (rng.vec(n, 1.0), rng.vec(n, 1.0));
        let (mut da, mut db) = (pre_a.clone(), pre_b.clone());
        residual_backward(&mut da, &mut db, &w, n);
        fd_check(&[a, b], &[added(&da, &pre_a), added(&db, &pre_b)], |x| {
            let mut out = vec![0.0; n];
            residual_forward(&mut out, &x[0], &x[1], n);
            dot(&out, &w)
        })
        .check("residual_backward");
    }

    #[test]
    fn crossentropy_backward_matches_finite_differences() {
        let mut rng = Rng::fresh("crossentropy_backward");
        let mut worst = Worst::default();
        for (n, v) in [(6, 7), (1, 2), (9, 3)] {
            let logits = rng.vec(n * v, 3.0);
            // row 0 always counted; every third row from row 2 ignored
            let targets: Vec<u32> =
                (0..n).map(|r| if r % 3 == 2 { IGNORE_INDEX } else { rng.below(v) as u32 }).collect();
            let dloss = 0.25 + rng.uniform().abs();
            let pre = rng.vec(n * v, 1.0);
            let mut dl = pre.clone();
            crossentropy_backward(&mut dl, &logits, &targets, dloss, n, v);
            let dl = added(&dl, &pre);
            for r in (0..n).filter(|r| targets[*r] == IGNORE_INDEX) {
                assert!(dl[r * v..(r + 1) * v].iter().all(|&g| g == 0.0), "an ignored row gets no gradient");
            }
            let r = fd_check(&[logits], &[dl], |x| {
                let mut losses = vec![0.0; n];
                crossentropy_forward(&mut losses, &x[0], &targets, n, v);
                dloss * losses.iter().sum::<f64>()
            });
            worst.merge(r);
        }
        worst.check("crossentropy_backward");
    }

    #[test]
    fn crossentropy_ignores_padding_and_counts_the_rest() {
        // V = 3, four rows, rows 1 and 3 ignored
        let logits = [0.0f64, 1.0, 2.0, 50.0, -3.0, 9.0, 1.0, 1.0, 1.0, 4.0, 4.0, 4.0];
        let targets = [2u32, IGNORE_INDEX, 0, IGNORE_INDEX];
        let mut losses = vec![9.0; 4];
        let count = crossentropy_forward(&mut losses, &logits, &targets, 4, 3);
        assert_eq!(count, 2);
        assert_eq!((losses[1], losses[3]), (0.0, 0.0), "ignored rows have loss 0");
        let want0 = (1.0f64 + 1f64.exp() + 2f64.exp()).ln() - 2.0;
        assert!((losses[0] - want0).abs() < 1e-14, "{} vs {want0}", losses[0]);
        assert!((losses[2] - 3f64.ln()).abs() < 1e-14, "uniform row: ln V");
        // the mean over counted rows, and its gradient with dloss = 1/count
        let mut dl = vec![0.0; 12];
        crossentropy_backward(&mut dl, &logits, &targets, 1.0 / count as f64, 4, 3);
        assert!(dl[3..6].iter().chain(&dl[9..12]).all(|&g| g == 0.0));
        assert!((dl[6] - (1.0 / 3.0 - 1.0) / 2.0).abs() < 1e-15 && (dl[7] - 1.0 / 6.0).abs() < 1e-15);
        // every counted row's gradient sums to 0 (softmax minus one-hot)
        assert!(dl[0..3].iter().sum::<f64>().abs() < 1e-15);
        // all rows ignored: count 0, no loss
        let count = crossentropy_forward(&mut losses, &logits, &[IGNORE_INDEX; 4], 4, 3);
        assert_eq!((count, losses.iter().sum::<f64>()), (0, 0.0));
    }

    /// Columns [v0, v0 + vc) of a row-major [n, v] matrix.
    fn columns(x: &[f64], n: usize, v: usize, v0: usize, vc: usize) -> Vec<f64> {
        (0..n).flat_map(|r| x[r * v + v0..r * v + v0 + vc].iter().copied()).collect()
    }

    #[test]
    fn crossentropy_chunks_equal_the_whole_rows() {
        let mut rng = Rng::fresh("crossentropy_chunks");
        for (n, v, chunk) in [(5, 65, 7), (5, 65, 16), (3, 65, 65), (3, 65, 100), (1, 10, 3), (7, 1000, 256)] {
            // large logits: a chunk whose max is far from the running one must be rescaled
            let logits = rng.vec(n * v, 30.0);
            let targets: Vec<u32> = (0..n).map(|r| if r % 3 == 1 { IGNORE_INDEX } else { rng.below(v) as u32 }).collect();
            let dloss = 0.25 + rng.uniform().abs();
            let mut state = vec![f64::NAN; 4 * n];
            let chunks: Vec<(usize, usize)> = (0..v).step_by(chunk).map(|v0| (v0, chunk.min(v - v0))).collect();
            for (i, &(v0, vc)) in chunks.iter().enumerate() {
                crossentropy_chunk_forward(&mut state, &columns(&logits, n, v, v0, vc), &targets, v0, vc, n, i == 0);
            }
            let mut losses = vec![f64::NAN; n];
            let count = crossentropy_chunk_finish(&mut losses, &mut state, &targets, n);
            let mut want = vec![0.0; n];
            assert_eq!(count, crossentropy_forward(&mut want, &logits, &targets, n, v));
            for r in 0..n {
                assert!((losses[r] - want[r]).abs() <= 1e-12 * (1.0 + want[r].abs()), "row {r}: {} vs {}", losses[r], want[r]);
            }
            let mut dwant = vec![0.0; n * v];
            crossentropy_backward(&mut dwant, &logits, &targets, dloss, n, v);
            for &(v0, vc) in &chunks {
                let mut d = vec![f64::NAN; n * vc];
                crossentropy_chunk_backward(&mut d, &columns(&logits, n, v, v0, vc), &state, &targets, dloss, v0, vc, n);
                for (g, w) in d.iter().zip(columns(&dwant, n, v, v0, vc)) {
                    assert!((g - w).abs() <= 1e-12, "chunk at {v0}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn accumulate_grad_norm_scale() {
        let mut g = vec![1.0f64, -2.0, 3.0];
        accumulate(&mut g, &[0.5, 0.5, 1.0], 3);
        assert_eq!(g, vec![1.5, -1.5, 4.0]);
        accumulate(&mut g, &[1.0, 1.0, 1.0], 2); // only n elements
        assert_eq!(g, vec![2.5, -0.5, 4.0]);
        assert_eq!(grad_norm(&[3.0f64, -4.0, 100.0], 2), 5.0);
        assert_eq!(grad_norm(&[0.0f64; 4], 4), 0.0);
        let mut x = vec![2.0f64, -4.0, 8.0];
        scale(&mut x, 0.25, 2);
        assert_eq!(x, vec![0.5, -1.0, 8.0]);
        // f32 in, same results
        let mut y = vec![3.0f32, 4.0];
        scale(&mut y, 2.0, 2);
        assert_eq!(grad_norm(&y, 2), 10.0);
    }

    #[test]
    fn adamw_one_step_by_hand() {
        // p = 1, g = 0.5, lr 0.1, wd 0.1, betas (0.9, 0.99), eps 1e-8, step 1:
        // decay first: p = 1 - 0.1*0.1*1 = 0.99; m = 0.05, v = 0.0025; mhat = 0.5, vhat = 0.25
        // p = 0.99 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.89000000199999996
        let (mut p, mut m, mut v) = (vec![1.0f64, -2.0], vec![0.0, 0.0], vec![0.0, 0.0]);
        adamw(&mut p, &[0.5, 0.0], &mut m, &mut v, 2, 0.1, 0.9, 0.99, 1e-8, 0.1, 1);
        assert!((p[0] - 0.890_000_002).abs() < 1e-12, "{}", p[0]);
        assert!((m[0] - 0.05).abs() < 1e-15 && (v[0] - 0.0025).abs() < 1e-15);
        // zero gradient: only the decoupled decay moves p
        assert!((p[1] - -1.98).abs() < 1e-15, "{}", p[1]);
        // step 2 uses the bias correction of step 2: m = 0.095, v = 0.004975
        // mhat = 0.095 / 0.19 = 0.5, vhat = 0.004975 / 0.0199 = 0.25
        let p1 = p[0];
        adamw(&mut p, &[0.5, 0.0], &mut m, &mut v, 2, 0.1, 0.9, 0.99, 1e-8, 0.1, 2);
        let want = p1 * 0.99 - 0.1 * 0.5 / (0.5 + 1e-8);
        assert!((p[0] - want).abs() < 1e-12, "{} vs {want}", p[0]);
        // no weight decay, large step: the update is lr * sign(g) (|mhat| / sqrt(vhat) = 1)
        let (mut p, mut m, mut v) = (vec![0.0f64], vec![0.0], vec![0.0]);
        adamw(&mut p, &[-3.0], &mut m, &mut v, 1, 0.01, 0.9, 0.999, 0.0, 0.0, 1);
        assert!((p[0] - 0.01).abs() < 1e-15, "{}", p[0]);
    }

    /// The checker catches wrong gradients: each mutant is a plausible bug.
    #[test]
    fn finite_difference_check_rejects_wrong_backwards() {
        let mut rng = Rng::fresh("mutants");
        let (n, c) = (3, 6);
        let x = rng.vec(n * c, 2.0);
        let (wt, bs, w) = (rng.vec(c, 1.0), rng.vec(c, 1.0), rng.vec(n * c, 1.0));
        let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &wt, &bs, n, c);
        let loss = |x: &[Vec<f64>]| {
            let (mut out, mut m, mut r) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            layernorm_forward(&mut out, &mut m, &mut r, &x[0], &wt, &bs, n, c);
            dot(&out, &w)
        };
        // mutant 1: layernorm without the variance term (treats rstd as a constant)
        let mut dx = vec![0.0; n * c];
        for r in 0..n {
            let dn: Vec<f64> = (0..c).map(|i| wt[i] * w[r * c + i]).collect();
            let mean_dn = dn.iter().sum::<f64>() / c as f64;
            for i in 0..c {
                dx[r * c + i] = (dn[i] - mean_dn) * rstd[r];
            }
        }
        let m1 = fd_check(std::slice::from_ref(&x), &[dx], loss);
        assert!(!m1.passes(), "layernorm without the variance term must fail: {m1:?}");
        // mutant 2: a backward that overwrites (=) instead of accumulating (+=) into a used buffer
        let pre = rng.vec(n * c, 1.0);
        let mut dx = pre.clone();
        let (mut dw, mut db) = (vec![0.0; c], vec![0.0; c]);
        layernorm_backward(&mut dx, &mut dw, &mut db, &w, &x, &wt, &mean, &rstd, n, c);
        let overwritten: Vec<f64> = added(&dx, &pre).iter().zip(&pre).map(|(d, p)| d - p).collect();
        let m2 = fd_check(std::slice::from_ref(&x), &[overwritten], loss);
        assert!(!m2.passes(), "an overwriting backward must fail: {m2:?}");
        // mutant 3: GELU's derivative without the tanh' term, and the true one perturbed by 1e-5
        let g = rng.vec(9, 3.0);
        let gw = rng.vec(9, 1.0);
        let gl = |x: &[Vec<f64>]| {
            let mut out = vec![0.0; 9];
            gelu_forward(&mut out, &x[0], 9);
            dot(&out, &gw)
        };
        let wrong: Vec<f64> = g
            .iter()
            .zip(&gw)
            .map(|(&x, &d)| 0.5 * (1.0 + (GELU_S * (x + GELU_A * x * x * x)).tanh()) * d)
            .collect();
        assert!(!fd_check(std::slice::from_ref(&g), &[wrong], gl).passes());
        let mut good = vec![0.0; 9];
        gelu_backward(&mut good, &g, &gw, 9);
        assert!(fd_check(std::slice::from_ref(&g), &[good.clone()], gl).passes());
        let big = (0..9).max_by(|&a, &b| good[a].abs().total_cmp(&good[b].abs())).unwrap();
        good[big] *= 1.0 + 1e-5;
        assert!(!fd_check(&[g], &[good], gl).passes(), "a 1e-5 relative error must be seen");
    }
}
