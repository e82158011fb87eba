//! The reference GPT on the CPU: the same parameter slab layout as the GPU model (llm.c order),
//! forward and backward built from `layers`. Pre-LN blocks, tied lm_head, GELU tanh.
//!
//! Dimensions: B batch, T sequence length (<= block_size), C channels, NH heads, V vocab, L layers.

use num_traits::Float;
use serde::{Deserialize, Serialize};

use super::layers::*;
use super::rng::Normal;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptConfig {
    pub vocab_size: usize,
    /// maxT: the size of the position embedding.
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
}

impl GptConfig {
    /// Sizes of the 16 parameter tensors in slab order.
    pub fn param_sizes(&self) -> [usize; 16] {
        let (v, t, l, c) = (self.vocab_size, self.block_size, self.n_layer, self.n_embd);
        [
            v * c,         // wte [V,C]
            t * c,         // wpe [maxT,C]
            l * c,         // ln1w [L,C]
            l * c,         // ln1b [L,C]
            l * 3 * c * c, // qkvw [L,3C,C]
            l * 3 * c,     // qkvb [L,3C]
            l * c * c,     // attprojw [L,C,C]
            l * c,         // attprojb [L,C]
            l * c,         // ln2w [L,C]
            l * c,         // ln2b [L,C]
            l * 4 * c * c, // fcw [L,4C,C]
            l * 4 * c,     // fcb [L,4C]
            l * c * 4 * c, // fcprojw [L,C,4C]
            l * c,         // fcprojb [L,C]
            c,             // lnfw [C]
            c,             // lnfb [C]
        ]
    }

    pub fn param_names() -> [&'static str; 16] {
        [
            "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b", "fcw", "fcb",
            "fcprojw", "fcprojb", "lnfw", "lnfb",
        ]
    }

    /// Offsets of the tensors in the flat slab.
    pub fn param_offsets(&self) -> [usize; 16] {
        let sizes = self.param_sizes();
        let mut off = [0; 16];
        for i in 1..16 {
            off[i] = off[i - 1] + sizes[i - 1];
        }
        off
    }

    pub fn num_params(&self) -> usize {
        self.param_sizes().iter().sum()
    }
}

/// Initialization: N(0, 0.02) for embeddings, c_attn and c_fc weights; N(0, 0.02/sqrt(2L)) for
/// the two projections; LayerNorm weights 1; every bias 0. Deterministic in `seed`.
pub fn init_params(cfg: &GptConfig, seed: u64) -> Vec<f32> {
    let mut rng = Normal::new(seed);
    let sizes = cfg.param_sizes();
    let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
    let mut out = Vec::with_capacity(cfg.num_params());
    for (i, &n) in sizes.iter().enumerate() {
        match i {
            0 | 1 | 4 | 10 => out.extend((0..n).map(|_| (rng.sample() * 0.02) as f32)),
            6 | 12 => out.extend((0..n).map(|_| (rng.sample() * proj_std) as f32)),
            2 | 8 | 14 => out.extend(std::iter::repeat_n(1.0f32, n)),
            _ => out.extend(std::iter::repeat_n(0.0f32, n)),
        }
    }
    out
}

/// Activations of one forward pass (llm.c ActivationTensors), per layer where it applies.
struct Acts<T> {
    encoded: Vec<T>,        // [B,T,C]
    ln1: Vec<Vec<T>>,       // L x [B,T,C]
    ln1_mean: Vec<Vec<T>>,  // L x [B,T]
    ln1_rstd: Vec<Vec<T>>,  // L x [B,T]
    qkv: Vec<Vec<T>>,       // L x [B,T,3C]
    atty: Vec<Vec<T>>,      // L x [B,T,C]
    att: Vec<Vec<T>>,       // L x [B,NH,T,T]
    attproj: Vec<Vec<T>>,   // L x [B,T,C]
    residual2: Vec<Vec<T>>, // L x [B,T,C]
    ln2: Vec<Vec<T>>,       // L x [B,T,C]
    ln2_mean: Vec<Vec<T>>,  // L x [B,T]
    ln2_rstd: Vec<Vec<T>>,  // L x [B,T]
    fch: Vec<Vec<T>>,       // L x [B,T,4C]
    fch_gelu: Vec<Vec<T>>,  // L x [B,T,4C]
    residual3: Vec<Vec<T>>, // L x [B,T,C]
    lnf: Vec<T>,            // [B,T,C]
    lnf_mean: Vec<T>,       // [B,T]
    lnf_rstd: Vec<T>,       // [B,T]
    logits: Vec<T>,         // [B,T,V]
}

/// Slices of the 16 parameter tensors.
fn split<'a, T>(cfg: &GptConfig, p: &'a [T]) -> Vec<&'a [T]> {
    let off = cfg.param_offsets();
    let sizes = cfg.param_sizes();
    (0..16).map(|i| &p[off[i]..off[i] + sizes[i]]).collect()
}

fn split_mut<'a, T>(cfg: &GptConfig, mut p: &'a mut [T]) -> Vec<&'a mut [T]> {
    let sizes = cfg.param_sizes();
    let mut out = Vec::with_capacity(16);
    for s in sizes {
        let (a, rest) = p.split_at_mut(s);
        out.push(a);
        p = rest;
    }
    out
}

fn zeros<T: Float>(n: usize) -> Vec<T> {
    vec![T::zero(); n]
}

fn forward<T: Float>(cfg: &GptConfig, params: &[T], inputs: &[u32], b: usize, t: usize) -> Acts<T> {
    let (c, nh, v, l) = (cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_layer);
    let bt = b * t;
    let p = split(cfg, params);
    let mut a = Acts {
        encoded: zeros(bt * c),
        ln1: vec![], ln1_mean: vec![], ln1_rstd: vec![], qkv: vec![], atty: vec![], att: vec![], attproj: vec![],
        residual2: vec![], ln2: vec![], ln2_mean: vec![], ln2_rstd: vec![], fch: vec![], fch_gelu: vec![],
        residual3: vec![],
        lnf: zeros(bt * c), lnf_mean: zeros(bt), lnf_rstd: zeros(bt), logits: zeros(bt * v),
    };
    encoder_forward(&mut a.encoded, inputs, p[0], p[1], b, t, c);
    for li in 0..l {
        let residual = if li == 0 { a.encoded.clone() } else { a.residual3[li - 1].clone() };
        let (mut ln1, mut m1, mut r1) = (zeros(bt * c), zeros(bt), zeros(bt));
        layernorm_forward(&mut ln1, &mut m1, &mut r1, &residual, &p[2][li * c..(li + 1) * c], &p[3][li * c..(li + 1) * c], bt, c);
        let mut qkv = zeros(bt * 3 * c);
        matmul_forward(&mut qkv, &ln1, &p[4][li * 3 * c * c..(li + 1) * 3 * c * c], Some(&p[5][li * 3 * c..(li + 1) * 3 * c]), bt, c, 3 * c);
        let (mut atty, mut pre, mut att) = (zeros(bt * c), zeros(b * nh * t * t), zeros(b * nh * t * t));
        attention_forward(&mut atty, &mut pre, &mut att, &qkv, b, t, c, nh);
        let mut attproj = zeros(bt * c);
        matmul_forward(&mut attproj, &atty, &p[6][li * c * c..(li + 1) * c * c], Some(&p[7][li * c..(li + 1) * c]), bt, c, c);
        let mut residual2 = zeros(bt * c);
        residual_forward(&mut residual2, &residual, &attproj, bt * c);
        let (mut ln2, mut m2, mut r2) = (zeros(bt * c), zeros(bt), zeros(bt));
        layernorm_forward(&mut ln2, &mut m2, &mut r2, &residual2, &p[8][li * c..(li + 1) * c], &p[9][li * c..(li + 1) * c], bt, c);
        let mut fch = zeros(bt * 4 * c);
        matmul_forward(&mut fch, &ln2, &p[10][li * 4 * c * c..(li + 1) * 4 * c * c], Some(&p[11][li * 4 * c..(li + 1) * 4 * c]), bt, c, 4 * c);
        let mut fch_gelu = zeros(bt * 4 * c);
        gelu_forward(&mut fch_gelu, &fch, bt * 4 * c);
        let mut fcproj = zeros(bt * c);
        matmul_forward(&mut fcproj, &fch_gelu, &p[12][li * 4 * c * c..(li + 1) * 4 * c * c], Some(&p[13][li * c..(li + 1) * c]), bt, 4 * c, c);
        let mut residual3 = zeros(bt * c);
        residual_forward(&mut residual3, &residual2, &fcproj, bt * c);
        a.ln1.push(ln1);
        a.ln1_mean.push(m1);
        a.ln1_rstd.push(r1);
        a.qkv.push(qkv);
        a.atty.push(atty);
        a.att.push(att);
        a.attproj.push(attproj);
        a.residual2.push(residual2);
        a.ln2.push(ln2);
        a.ln2_mean.push(m2);
        a.ln2_rstd.push(r2);
        a.fch.push(fch);
        a.fch_gelu.push(fch_gelu);
        a.residual3.push(residual3);
    }
    let last = if l == 0 { a.encoded.clone() } else { a.residual3[l - 1].clone() };
    layernorm_forward(&mut a.lnf, &mut a.lnf_mean, &mut a.lnf_rstd, &last, p[14], p[15], bt, c);
    matmul_forward(&mut a.logits, &a.lnf, p[0], None, bt, c, v);
    a
}

/// Forward pass and summed loss: (sum of losses over counted targets, count).
pub fn gpt_forward<T: Float>(cfg: &GptConfig, params: &[T], inputs: &[u32], targets: &[u32], b: usize, t: usize) -> (T, u32) {
    let a = forward(cfg, params, inputs, b, t);
    let mut losses = zeros(b * t);
    let count = crossentropy_forward(&mut losses, &a.logits, targets, b * t, cfg.vocab_size);
    (losses.iter().fold(T::zero(), |s, &x| s + x), count)
}

/// Forward and backward. Each counted target's loss has weight `dloss` in the gradient, which
/// accumulates (`+=`) into `grads` (same layout as `params`). Returns (loss sum, count).
#[allow(clippy::too_many_arguments)]
pub fn gpt_forward_backward<T: Float>(
    cfg: &GptConfig, params: &[T], inputs: &[u32], targets: &[u32], b: usize, t: usize, grads: &mut [T], dloss: T,
) -> (T, u32) {
    let (c, nh, v, l) = (cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_layer);
    let bt = b * t;
    let a = forward(cfg, params, inputs, b, t);
    let mut losses = zeros(b * t);
    let count = crossentropy_forward(&mut losses, &a.logits, targets, bt, v);
    let loss = losses.iter().fold(T::zero(), |s, &x| s + x);

    let p = split(cfg, params);
    let mut g = split_mut(cfg, grads);
    let mut dlogits = zeros(bt * v);
    crossentropy_backward(&mut dlogits, &a.logits, targets, dloss, bt, v);
    let mut dlnf = zeros(bt * c);
    matmul_backward(&mut dlnf, g[0], None, &dlogits, &a.lnf, p[0], bt, c, v);
    let mut dresidual = zeros(bt * c); // gradient flowing into the residual stream
    let last = if l == 0 { &a.encoded } else { &a.residual3[l - 1] };
    {
        let (lo, hi) = g.split_at_mut(15);
        layernorm_backward(&mut dresidual, lo[14], hi[0], &dlnf, last, p[14], &a.lnf_mean, &a.lnf_rstd, bt, c);
    }
    for li in (0..l).rev() {
        let residual = if li == 0 { &a.encoded } else { &a.residual3[li - 1] };
        // residual3 = residual2 + fcproj: both get dresidual
        let mut dresidual2 = dresidual.clone();
        let dfcproj = dresidual.clone();
        let mut dfch_gelu = zeros(bt * 4 * c);
        {
            let (lo, hi) = g.split_at_mut(13);
            matmul_backward(&mut dfch_gelu, &mut lo[12][li * 4 * c * c..(li + 1) * 4 * c * c], Some(&mut hi[0][li * c..(li + 1) * c]),
                &dfcproj, &a.fch_gelu[li], &p[12][li * 4 * c * c..(li + 1) * 4 * c * c], bt, 4 * c, c);
        }
        let mut dfch = zeros(bt * 4 * c);
        gelu_backward(&mut dfch, &a.fch[li], &dfch_gelu, bt * 4 * c);
        let mut dln2 = zeros(bt * c);
        {
            let (lo, hi) = g.split_at_mut(11);
            matmul_backward(&mut dln2, &mut lo[10][li * 4 * c * c..(li + 1) * 4 * c * c], Some(&mut hi[0][li * 4 * c..(li + 1) * 4 * c]),
                &dfch, &a.ln2[li], &p[10][li * 4 * c * c..(li + 1) * 4 * c * c], bt, c, 4 * c);
        }
        {
            let (lo, hi) = g.split_at_mut(9);
            layernorm_backward(&mut dresidual2, &mut lo[8][li * c..(li + 1) * c], &mut hi[0][li * c..(li + 1) * c], &dln2,
                &a.residual2[li], &p[8][li * c..(li + 1) * c], &a.ln2_mean[li], &a.ln2_rstd[li], bt, c);
        }
        // residual2 = residual + attproj
        let mut dres = dresidual2.clone();
        let dattproj = dresidual2;
        let mut datty = zeros(bt * c);
        {
            let (lo, hi) = g.split_at_mut(7);
            matmul_backward(&mut datty, &mut lo[6][li * c * c..(li + 1) * c * c], Some(&mut hi[0][li * c..(li + 1) * c]),
                &dattproj, &a.atty[li], &p[6][li * c * c..(li + 1) * c * c], bt, c, c);
        }
        let mut dqkv = zeros(bt * 3 * c);
        let (mut dpre, mut datt) = (zeros(b * nh * t * t), zeros(b * nh * t * t));
        attention_backward(&mut dqkv, &mut dpre, &mut datt, &datty, &a.qkv[li], &a.att[li], b, t, c, nh);
        let mut dln1 = zeros(bt * c);
        {
            let (lo, hi) = g.split_at_mut(5);
            matmul_backward(&mut dln1, &mut lo[4][li * 3 * c * c..(li + 1) * 3 * c * c], Some(&mut hi[0][li * 3 * c..(li + 1) * 3 * c]),
                &dqkv, &a.ln1[li], &p[4][li * 3 * c * c..(li + 1) * 3 * c * c], bt, c, 3 * c);
        }
        {
            let (lo, hi) = g.split_at_mut(3);
            layernorm_backward(&mut dres, &mut lo[2][li * c..(li + 1) * c], &mut hi[0][li * c..(li + 1) * c], &dln1,
                residual, &p[2][li * c..(li + 1) * c], &a.ln1_mean[li], &a.ln1_rstd[li], bt, c);
        }
        dresidual = dres;
    }
    {
        let (lo, hi) = g.split_at_mut(1);
        encoder_backward(lo[0], hi[0], &dresidual, inputs, b, t, c);
    }
    (loss, count)
}
