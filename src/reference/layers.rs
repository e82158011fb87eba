//! CPU twins of the GPT kernels (llm.c style). Tensors are flat row-major slices; every backward
//! sits under its forward and ACCUMULATES (`+=`) into its gradient outputs, like the kernels, so
//! callers zero gradients where a new sum starts.

use num_traits::Float;

/// Targets equal to this are ignored (padding): no loss, no gradient, no count.
pub const IGNORE_INDEX: u32 = u32::MAX;
/// LayerNorm epsilon (PyTorch's default).
pub const LN_EPS: f64 = 1e-5;

fn k<T: Float>(x: f64) -> T {
    T::from(x).unwrap()
}

// ---------------------------------------------------------------------------------------------
// encoder: out[b,t,:] = wte[inp[b,t],:] + wpe[t,:]

/// out [B,T,C], inp [B,T], wte [V,C], wpe [maxT,C]
pub fn encoder_forward<T: Float>(out: &mut [T], inp: &[u32], wte: &[T], wpe: &[T], b: usize, t: usize, c: usize) {
    for bt in 0..b * t {
        let tok = inp[bt] as usize;
        let pos = bt % t;
        for i in 0..c {
            out[bt * c + i] = wte[tok * c + i] + wpe[pos * c + i];
        }
    }
}

/// The embedding is a lookup: each row of dout flows to the token's row and the position's row.
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
// layernorm: norm = (x - mean) * rstd, rstd = 1/sqrt(var + eps); out = norm * w + b

/// out [N,C], mean [N], rstd [N], inp [N,C], weight [C], bias [C]
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<T: Float>(
    out: &mut [T], mean: &mut [T], rstd: &mut [T], inp: &[T], weight: &[T], bias: &[T], n: usize, c: usize,
) {
    let cf: T = k(c as f64);
    for r in 0..n {
        let x = &inp[r * c..(r + 1) * c];
        let m = x.iter().fold(T::zero(), |a, &v| a + v) / cf;
        let var = x.iter().fold(T::zero(), |a, &v| a + (v - m) * (v - m)) / cf;
        let s = T::one() / (var + k(LN_EPS)).sqrt();
        for i in 0..c {
            out[r * c + i] = (x[i] - m) * s * weight[i] + bias[i];
        }
        mean[r] = m;
        rstd[r] = s;
    }
}

/// dnorm = dout * w;  dinp += (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd
/// dweight += sum_rows dout * norm;  dbias += sum_rows dout
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<T: Float>(
    dinp: &mut [T], dweight: &mut [T], dbias: &mut [T], dout: &[T], inp: &[T], weight: &[T], mean: &[T], rstd: &[T],
    n: usize, c: usize,
) {
    let cf: T = k(c as f64);
    for r in 0..n {
        let (m, s) = (mean[r], rstd[r]);
        let mut dmean = T::zero();
        let mut dnorm_norm = T::zero();
        for i in 0..c {
            let norm = (inp[r * c + i] - m) * s;
            let dn = weight[i] * dout[r * c + i];
            dmean = dmean + dn;
            dnorm_norm = dnorm_norm + dn * norm;
        }
        dmean = dmean / cf;
        dnorm_norm = dnorm_norm / cf;
        for i in 0..c {
            let norm = (inp[r * c + i] - m) * s;
            let dn = weight[i] * dout[r * c + i];
            dbias[i] = dbias[i] + dout[r * c + i];
            dweight[i] = dweight[i] + norm * dout[r * c + i];
            dinp[r * c + i] = dinp[r * c + i] + (dn - dmean - norm * dnorm_norm) * s;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// matmul (Linear): out = inp . weight^T + bias, weight [out, in]

/// out [M,N], inp [M,K], weight [N,K], bias [N]
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward<T: Float>(out: &mut [T], inp: &[T], weight: &[T], bias: Option<&[T]>, m: usize, kk: usize, n: usize) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = bias.map_or(T::zero(), |b| b[j]);
            for r in 0..kk {
                acc = acc + inp[i * kk + r] * weight[j * kk + r];
            }
            out[i * n + j] = acc;
        }
    }
}

/// dinp += dout . weight;  dweight += dout^T . inp;  dbias += sum_rows dout
/// dinp [M,K], dweight [N,K], dbias [N], dout [M,N], inp [M,K], weight [N,K]
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward<T: Float>(
    dinp: &mut [T], dweight: &mut [T], dbias: Option<&mut [T]>, dout: &[T], inp: &[T], weight: &[T], m: usize, kk: usize,
    n: usize,
) {
    for i in 0..m {
        for j in 0..n {
            let d = dout[i * n + j];
            for r in 0..kk {
                dinp[i * kk + r] = dinp[i * kk + r] + d * weight[j * kk + r];
                dweight[j * kk + r] = dweight[j * kk + r] + d * inp[i * kk + r];
            }
        }
    }
    if let Some(db) = dbias {
        for i in 0..m {
            for j in 0..n {
                db[j] = db[j] + dout[i * n + j];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// causal multi-head self-attention; qkv row = [q | k | v], head h on channels h*hs..(h+1)*hs

/// out [B,T,C], preatt [B,NH,T,T], att [B,NH,T,T], qkv [B,T,3C]
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<T: Float>(
    out: &mut [T], preatt: &mut [T], att: &mut [T], qkv: &[T], b: usize, t: usize, c: usize, nh: usize,
) {
    let hs = c / nh;
    let scale: T = k(1.0 / (hs as f64).sqrt());
    let c3 = 3 * c;
    for bi in 0..b {
        for h in 0..nh {
            for ti in 0..t {
                let row = ((bi * nh + h) * t + ti) * t;
                let q = (bi * t + ti) * c3 + h * hs;
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
                let o = (bi * t + ti) * c + h * hs;
                for i in 0..hs {
                    let mut acc = T::zero();
                    for t2 in 0..=ti {
                        acc = acc + att[row + t2] * qkv[(bi * t + t2) * c3 + 2 * c + h * hs + i];
                    }
                    out[o + i] = acc;
                }
            }
        }
    }
}

/// datt[t,t2] += dout[t].v[t2];  dv[t2] += att[t,t2] dout[t]
/// dpreatt[t,t3] += att[t,t3] (datt[t,t3] - sum_t2 att[t,t2] datt[t,t2])   (softmax backward)
/// dq[t] += sum_t2 dpreatt[t,t2] k[t2] scale;  dk[t2] += dpreatt[t,t2] q[t] scale
/// dqkv [B,T,3C], dpreatt [B,NH,T,T], datt [B,NH,T,T], dout [B,T,C], qkv [B,T,3C], att [B,NH,T,T]
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Float>(
    dqkv: &mut [T], dpreatt: &mut [T], datt: &mut [T], dout: &[T], qkv: &[T], att: &[T], b: usize, t: usize, c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale: T = k(1.0 / (hs as f64).sqrt());
    let c3 = 3 * c;
    for bi in 0..b {
        for h in 0..nh {
            for ti in 0..t {
                let row = ((bi * nh + h) * t + ti) * t;
                let g = (bi * t + ti) * c + h * hs;
                let q = (bi * t + ti) * c3 + h * hs;
                for t2 in 0..=ti {
                    let v = (bi * t + t2) * c3 + 2 * c + h * hs;
                    let mut s = T::zero();
                    for i in 0..hs {
                        s = s + dout[g + i] * qkv[v + i];
                        dqkv[v + i] = dqkv[v + i] + att[row + t2] * dout[g + i];
                    }
                    datt[row + t2] = datt[row + t2] + s;
                }
                let mut dot = T::zero();
                for t2 in 0..=ti {
                    dot = dot + att[row + t2] * datt[row + t2];
                }
                for t3 in 0..=ti {
                    dpreatt[row + t3] = dpreatt[row + t3] + att[row + t3] * (datt[row + t3] - dot);
                }
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
// GELU, tanh approximation

const GELU_S: f64 = 0.797_884_560_802_865_4; // sqrt(2/pi)

/// out = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
pub fn gelu_forward<T: Float>(out: &mut [T], inp: &[T], n: usize) {
    for i in 0..n {
        let x = inp[i];
        let u: T = k::<T>(GELU_S) * (x + k::<T>(0.044715) * x * x * x);
        out[i] = k::<T>(0.5) * x * (T::one() + u.tanh());
    }
}

/// d/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
pub fn gelu_backward<T: Float>(dinp: &mut [T], inp: &[T], dout: &[T], n: usize) {
    for i in 0..n {
        let x = inp[i];
        let u: T = k::<T>(GELU_S) * (x + k::<T>(0.044715) * x * x * x);
        let th = u.tanh();
        let grad = k::<T>(0.5) * (T::one() + th)
            + k::<T>(0.5) * x * (T::one() - th * th) * k::<T>(GELU_S) * (T::one() + k::<T>(3.0 * 0.044715) * x * x);
        dinp[i] = dinp[i] + grad * dout[i];
    }
}

// ---------------------------------------------------------------------------------------------
// residual: out = inp1 + inp2

pub fn residual_forward<T: Float>(out: &mut [T], inp1: &[T], inp2: &[T], n: usize) {
    for i in 0..n {
        out[i] = inp1[i] + inp2[i];
    }
}

/// both inputs receive dout
pub fn residual_backward<T: Float>(dinp1: &mut [T], dinp2: &mut [T], dout: &[T], n: usize) {
    for i in 0..n {
        dinp1[i] = dinp1[i] + dout[i];
        dinp2[i] = dinp2[i] + dout[i];
    }
}

// ---------------------------------------------------------------------------------------------
// softmax cross-entropy, reduction = sum over counted targets

/// losses [N] = logsumexp(logits[n,:]) - logits[n, target] (0 for ignored rows), logits [N,V],
/// targets [N]. Returns the number of counted rows.
pub fn crossentropy_forward<T: Float>(losses: &mut [T], logits: &[T], targets: &[u32], n: usize, v: usize) -> u32 {
    let mut count = 0;
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

/// dlogits[n,:] += dloss (softmax(logits[n,:]) - onehot(target)) on counted rows.
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
// accumulation, norm, scaling, AdamW

/// grad += micro_grad
pub fn accumulate<T: Float>(grad: &mut [T], micro_grad: &[T], n: usize) {
    for i in 0..n {
        grad[i] = grad[i] + micro_grad[i];
    }
}

/// Global L2 norm sqrt(sum g^2).
pub fn grad_norm<T: Float>(grads: &[T], n: usize) -> T {
    grads[..n].iter().fold(T::zero(), |a, &g| a + g * g).sqrt()
}

/// x *= s
pub fn scale<T: Float>(x: &mut [T], s: T, n: usize) {
    for v in x[..n].iter_mut() {
        *v = *v * s;
    }
}

/// PyTorch AdamW: p -= lr wd p; m, v moments; bias-corrected step. `step` starts at 1.
#[allow(clippy::too_many_arguments)]
pub fn adamw<T: Float>(
    params: &mut [T], grads: &[T], m: &mut [T], v: &mut [T], n: usize, lr: f64, beta1: f64, beta2: f64, eps: f64,
    weight_decay: f64, step: u32,
) {
    let (lr, b1, b2, eps, wd): (T, T, T, T, T) = (k(lr), k(beta1), k(beta2), k(eps), k(weight_decay));
    let bc1 = T::one() - b1.powi(step as i32);
    let bc2 = T::one() - b2.powi(step as i32);
    for i in 0..n {
        let g = grads[i];
        m[i] = b1 * m[i] + (T::one() - b1) * g;
        v[i] = b2 * v[i] + (T::one() - b2) * g * g;
        let mhat = m[i] / bc1;
        let vhat = v[i] / bc2;
        let mut p = params[i];
        p = p - lr * wd * p;
        p = p - lr * mhat / (vhat.sqrt() + eps);
        params[i] = p;
    }
}
