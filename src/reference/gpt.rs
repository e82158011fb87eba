//! The reference GPT on the CPU (llm.c's train_gpt2.c in plain Rust): the config, the parameter
//! slab (16 tensors in llm.c order, named offsets, the same layout as the GPU model), the seeded
//! initialization, and forward + backward built only from `layers`.
//!
//! Model: x = wte[token] + wpe[pos]; L pre-LN blocks
//!   x = x + attproj(attention(ln1(x)));  x = x + fcproj(gelu(fc(ln2(x))))
//! then logits = lnf(x) . wte^T (lm_head tied to wte, no bias) and softmax cross-entropy summed
//! over the counted targets (IGNORE_INDEX targets are padding).
//!
//! Dimensions: B batch, T sequence length (<= maxT = block_size), C channels, NH heads, V vocab,
//! L layers.

use num_traits::Float;
use serde::{Deserialize, Serialize};

use super::dropout::{Dropout, site};
use super::layers::*;
use super::rng::Normal;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptConfig {
    /// V
    pub vocab_size: usize,
    /// maxT: the number of rows of the position embedding.
    pub block_size: usize,
    /// L
    pub n_layer: usize,
    /// NH (must divide C)
    pub n_head: usize,
    /// C
    pub n_embd: usize,
}

impl GptConfig {
    /// Sizes of the 16 parameter tensors in slab order (the products of `param_shapes`).
    pub fn param_sizes(&self) -> [usize; 16] {
        self.param_shapes().map(|s| s.iter().product())
    }

    /// Shapes of the 16 parameter tensors in slab order (llm.c / PyTorch layouts).
    pub fn param_shapes(&self) -> [Vec<usize>; 16] {
        let (v, maxt, l, c) = (self.vocab_size, self.block_size, self.n_layer, self.n_embd);
        [
            vec![v, c],         // wte [V,C]
            vec![maxt, c],      // wpe [maxT,C]
            vec![l, c],         // ln1w [L,C]
            vec![l, c],         // ln1b [L,C]
            vec![l, 3 * c, c],  // qkvw [L,3C,C]
            vec![l, 3 * c],     // qkvb [L,3C]
            vec![l, c, c],      // attprojw [L,C,C]
            vec![l, c],         // attprojb [L,C]
            vec![l, c],         // ln2w [L,C]
            vec![l, c],         // ln2b [L,C]
            vec![l, 4 * c, c],  // fcw [L,4C,C]
            vec![l, 4 * c],     // fcb [L,4C]
            vec![l, c, 4 * c],  // fcprojw [L,C,4C]
            vec![l, c],         // fcprojb [L,C]
            vec![c],            // lnfw [C]
            vec![c],            // lnfb [C]
        ]
    }

    /// Names of the 16 parameter tensors in slab order.
    pub fn param_names() -> [&'static str; 16] {
        [
            "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b", "fcw", "fcb",
            "fcprojw", "fcprojb", "lnfw", "lnfb",
        ]
    }

    /// Offsets of the 16 tensors in the flat slab (each starts where the previous one ends).
    pub fn param_offsets(&self) -> [usize; 16] {
        let sizes = self.param_sizes();
        let mut off = [0; 16];
        for i in 1..16 {
            off[i] = off[i - 1] + sizes[i - 1];
        }
        off
    }

    /// Total number of parameters (the slab's length).
    pub fn num_params(&self) -> usize {
        self.param_sizes().iter().sum()
    }
}

/// Initialization: N(0, 0.02) for wte, wpe, qkvw and fcw; N(0, 0.02/sqrt(2L)) for the two
/// residual projections attprojw and fcprojw; LayerNorm weights 1; every bias 0.
/// Deterministic in `seed`: one `rng::Normal` stream (splitmix64 + Box-Muller) seeded with
/// `seed`, drawn tensor by tensor in slab order, element by element (constant tensors draw none).
pub fn init_params(cfg: &GptConfig, seed: u64) -> Vec<f32> {
    let mut rng = Normal::new(seed);
    let sizes = cfg.param_sizes();
    let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
    let mut out = Vec::with_capacity(cfg.num_params());
    for (i, &n) in sizes.iter().enumerate() {
        match i {
            // wte, wpe, qkvw, fcw
            0 | 1 | 4 | 10 => out.extend((0..n).map(|_| (rng.sample() * 0.02) as f32)),
            // attprojw, fcprojw
            6 | 12 => out.extend((0..n).map(|_| (rng.sample() * proj_std) as f32)),
            // ln1w, ln2w, lnfw
            2 | 8 | 14 => out.extend(std::iter::repeat_n(1.0f32, n)),
            // biases
            _ => out.extend(std::iter::repeat_n(0.0f32, n)),
        }
    }
    out
}

/// The 16 parameter tensors (or their gradients) of one slab, by name (llm.c ParameterTensors).
/// `S` is `&[T]` for parameters and `&mut [T]` for gradients; named fields let the backward hold
/// several gradient tensors mutably at once.
struct ParamTensors<S> {
    wte: S,      // [V,C]
    wpe: S,      // [maxT,C]
    ln1w: S,     // [L,C]
    ln1b: S,     // [L,C]
    qkvw: S,     // [L,3C,C]
    qkvb: S,     // [L,3C]
    attprojw: S, // [L,C,C]
    attprojb: S, // [L,C]
    ln2w: S,     // [L,C]
    ln2b: S,     // [L,C]
    fcw: S,      // [L,4C,C]
    fcb: S,      // [L,4C]
    fcprojw: S,  // [L,C,4C]
    fcprojb: S,  // [L,C]
    lnfw: S,     // [C]
    lnfb: S,     // [C]
}

impl<S> ParamTensors<S> {
    fn from_array(a: [S; 16]) -> Self {
        let [wte, wpe, ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb, lnfw, lnfb] = a;
        Self { wte, wpe, ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb, lnfw, lnfb }
    }
}

fn tensors<'a, T>(cfg: &GptConfig, mut slab: &'a [T]) -> ParamTensors<&'a [T]> {
    assert_eq!(slab.len(), cfg.num_params(), "parameter slab length");
    let a = cfg.param_sizes().map(|n| {
        let (head, rest) = slab.split_at(n);
        slab = rest;
        head
    });
    ParamTensors::from_array(a)
}

fn tensors_mut<'a, T>(cfg: &GptConfig, mut slab: &'a mut [T]) -> ParamTensors<&'a mut [T]> {
    assert_eq!(slab.len(), cfg.num_params(), "gradient slab length");
    let a = cfg.param_sizes().map(|n| {
        let (head, rest) = std::mem::take(&mut slab).split_at_mut(n);
        slab = rest;
        head
    });
    ParamTensors::from_array(a)
}

/// Layer `l`'s part of a per-layer tensor [L, ...] whose per-layer size is `size`.
fn at<T>(s: &[T], l: usize, size: usize) -> &[T] {
    &s[l * size..(l + 1) * size]
}

fn at_mut<T>(s: &mut [T], l: usize, size: usize) -> &mut [T] {
    &mut s[l * size..(l + 1) * size]
}

fn zeros<T: Float>(n: usize) -> Vec<T> {
    vec![T::zero(); n]
}

/// Activations of one block (one layer of llm.c's ActivationTensors).
struct LayerActs<T> {
    ln1: Vec<T>,       // [B,T,C]
    ln1_mean: Vec<T>,  // [B,T]
    ln1_rstd: Vec<T>,  // [B,T]
    qkv: Vec<T>,       // [B,T,3C]
    preatt: Vec<T>,    // [B,NH,T,T]
    att: Vec<T>,       // [B,NH,T,T]
    atty: Vec<T>,      // [B,T,C]
    attproj: Vec<T>,   // [B,T,C]
    residual2: Vec<T>, // [B,T,C]  block input + attproj
    ln2: Vec<T>,       // [B,T,C]
    ln2_mean: Vec<T>,  // [B,T]
    ln2_rstd: Vec<T>,  // [B,T]
    fch: Vec<T>,       // [B,T,4C]
    fch_gelu: Vec<T>,  // [B,T,4C]
    fcproj: Vec<T>,    // [B,T,C]
    residual3: Vec<T>, // [B,T,C]  residual2 + fcproj: the block's output
    /// Dropout's factors (0 or 1/(1-p)) of the attention probabilities [B,NH,T,T] and of the
    /// two projections [B,T,C] (`attproj` and `fcproj` hold the outputs after dropout).
    masks: Option<[Vec<T>; 3]>,
}

/// Activations of one forward pass.
struct Acts<T> {
    encoded: Vec<T>,          // [B,T,C]
    layers: Vec<LayerActs<T>>, // L
    lnf: Vec<T>,              // [B,T,C]
    lnf_mean: Vec<T>,         // [B,T]
    lnf_rstd: Vec<T>,         // [B,T]
    logits: Vec<T>,           // [B,T,V]
    /// Dropout's factors of the embedding [B,T,C] (`encoded` is after dropout).
    enc_mask: Option<Vec<T>>,
}

impl<T> Acts<T> {
    /// The residual stream entering block `l` (or lnf when l = L).
    fn block_input(&self, l: usize) -> &[T] {
        if l == 0 { &self.encoded } else { &self.layers[l - 1].residual3 }
    }
}

fn check_shapes(cfg: &GptConfig, inputs: &[u32], b: usize, t: usize) {
    assert!(t >= 1 && t <= cfg.block_size, "T = {t} must be in 1..={}", cfg.block_size);
    assert!(cfg.n_head > 0 && cfg.n_embd.is_multiple_of(cfg.n_head), "n_head must divide n_embd");
    assert_eq!(inputs.len(), b * t, "inputs must be [B,T]");
    assert!(inputs.iter().all(|&x| (x as usize) < cfg.vocab_size), "an input token is >= vocab_size");
}

fn apply<T: Float>(x: &mut [T], mask: &[T]) {
    for (x, m) in x.iter_mut().zip(mask) {
        *x = *x * *m;
    }
}

/// inputs [B,T] -> every activation, logits included; with dropout (nanoGPT's places: the
/// embedding, the attention probabilities, both projections before their residual add) when
/// `drop` is given and its p > 0.
fn forward<T: Float>(cfg: &GptConfig, params: &[T], inputs: &[u32], b: usize, t: usize, drop: Option<&Dropout>) -> Acts<T> {
    check_shapes(cfg, inputs, b, t);
    let (c, nh, v, l) = (cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_layer);
    let bt = b * t;
    let p = tensors(cfg, params);
    let drop = drop.filter(|d| d.p > 0.0);
    let mut encoded = zeros(bt * c);
    encoder_forward(&mut encoded, inputs, p.wte, p.wpe, b, t, c);
    let enc_mask = drop.map(|d| d.mask(site::EMBEDDING, b, t * c));
    if let Some(m) = &enc_mask {
        apply(&mut encoded, m);
    }
    let mut layers: Vec<LayerActs<T>> = Vec::with_capacity(l);
    for li in 0..l {
        // [B,T,C] the residual stream entering block li
        let residual = if li == 0 { &encoded } else { &layers[li - 1].residual3 };
        let mut la = LayerActs {
            ln1: zeros(bt * c),
            ln1_mean: zeros(bt),
            ln1_rstd: zeros(bt),
            qkv: zeros(bt * 3 * c),
            preatt: zeros(b * nh * t * t),
            att: zeros(b * nh * t * t),
            atty: zeros(bt * c),
            attproj: zeros(bt * c),
            residual2: zeros(bt * c),
            ln2: zeros(bt * c),
            ln2_mean: zeros(bt),
            ln2_rstd: zeros(bt),
            fch: zeros(bt * 4 * c),
            fch_gelu: zeros(bt * 4 * c),
            fcproj: zeros(bt * c),
            residual3: zeros(bt * c),
            masks: drop.map(|d| {
                [d.mask(site::attention(li), b, nh * t * t), d.mask(site::attention_projection(li), b, t * c), d.mask(site::mlp_projection(li), b, t * c)]
            }),
        };
        // attention half: residual2 = residual + attproj(attention(ln1(residual)))
        layernorm_forward(&mut la.ln1, &mut la.ln1_mean, &mut la.ln1_rstd, residual, at(p.ln1w, li, c), at(p.ln1b, li, c), bt, c);
        matmul_forward(&mut la.qkv, &la.ln1, at(p.qkvw, li, 3 * c * c), Some(at(p.qkvb, li, 3 * c)), bt, c, 3 * c);
        let att_mask = la.masks.as_ref().map(|m| m[0].as_slice());
        attention_forward_dropout(&mut la.atty, &mut la.preatt, &mut la.att, &la.qkv, att_mask, b, t, c, nh);
        matmul_forward(&mut la.attproj, &la.atty, at(p.attprojw, li, c * c), Some(at(p.attprojb, li, c)), bt, c, c);
        if let Some(m) = &la.masks {
            apply(&mut la.attproj, &m[1]);
        }
        residual_forward(&mut la.residual2, residual, &la.attproj, bt * c);
        // MLP half: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2))))
        layernorm_forward(&mut la.ln2, &mut la.ln2_mean, &mut la.ln2_rstd, &la.residual2, at(p.ln2w, li, c), at(p.ln2b, li, c), bt, c);
        matmul_forward(&mut la.fch, &la.ln2, at(p.fcw, li, 4 * c * c), Some(at(p.fcb, li, 4 * c)), bt, c, 4 * c);
        gelu_forward(&mut la.fch_gelu, &la.fch, bt * 4 * c);
        matmul_forward(&mut la.fcproj, &la.fch_gelu, at(p.fcprojw, li, 4 * c * c), Some(at(p.fcprojb, li, c)), bt, 4 * c, c);
        if let Some(m) = &la.masks {
            apply(&mut la.fcproj, &m[2]);
        }
        residual_forward(&mut la.residual3, &la.residual2, &la.fcproj, bt * c);
        layers.push(la);
    }
    let last = if l == 0 { &encoded } else { &layers[l - 1].residual3 }; // [B,T,C]
    let (mut lnf, mut lnf_mean, mut lnf_rstd) = (zeros(bt * c), zeros(bt), zeros(bt));
    layernorm_forward(&mut lnf, &mut lnf_mean, &mut lnf_rstd, last, p.lnfw, p.lnfb, bt, c);
    // tied lm_head: logits = lnf . wte^T
    let mut logits = zeros(bt * v);
    matmul_forward(&mut logits, &lnf, p.wte, None, bt, c, v);
    Acts { encoded, layers, lnf, lnf_mean, lnf_rstd, logits, enc_mask }
}

/// The logits [B,T,V] of inputs [B,T] (for sampling and evaluation).
pub fn gpt_logits<T: Float>(cfg: &GptConfig, params: &[T], inputs: &[u32], b: usize, t: usize) -> Vec<T> {
    forward(cfg, params, inputs, b, t, None).logits
}

/// Forward pass and summed loss. params [num_params], inputs [B,T], targets [B,T] (may hold
/// IGNORE_INDEX). Returns (sum of the losses of the counted targets, count).
pub fn gpt_forward<T: Float>(cfg: &GptConfig, params: &[T], inputs: &[u32], targets: &[u32], b: usize, t: usize) -> (T, u32) {
    gpt_forward_dropout(cfg, params, inputs, targets, b, t, None)
}

/// `gpt_forward` with dropout (`drop`: the probability and the masks' key; None or p = 0: none).
pub fn gpt_forward_dropout<T: Float>(
    cfg: &GptConfig, params: &[T], inputs: &[u32], targets: &[u32], b: usize, t: usize, drop: Option<&Dropout>,
) -> (T, u32) {
    assert_eq!(targets.len(), b * t, "targets must be [B,T]");
    let a = forward(cfg, params, inputs, b, t, drop);
    let mut losses = zeros(b * t); // [B,T]
    let count = crossentropy_forward(&mut losses, &a.logits, targets, b * t, cfg.vocab_size);
    (losses.iter().fold(T::zero(), |s, &x| s + x), count)
}

/// Forward and backward. Each counted target's loss has weight `dloss` in the gradient (1 for
/// the sum; 1/count of the window for the mean). The gradient ACCUMULATES (`+=`) into `grads`
/// [num_params] (same layout as `params`), so a window of micro-batches sums into one slab.
/// params [num_params], inputs [B,T], targets [B,T] (may hold IGNORE_INDEX).
/// Returns (sum of the losses of the counted targets, count), as `gpt_forward`.
#[allow(clippy::too_many_arguments)]
pub fn gpt_forward_backward<T: Float>(
    cfg: &GptConfig, params: &[T], inputs: &[u32], targets: &[u32], b: usize, t: usize, grads: &mut [T], dloss: T,
) -> (T, u32) {
    gpt_forward_backward_dropout(cfg, params, inputs, targets, b, t, grads, dloss, None)
}

/// `gpt_forward_backward` with dropout: the masks of `drop` (regenerated from its key, as the
/// kernels do) scale the gradients through the same places.
#[allow(clippy::too_many_arguments)]
pub fn gpt_forward_backward_dropout<T: Float>(
    cfg: &GptConfig, params: &[T], inputs: &[u32], targets: &[u32], b: usize, t: usize, grads: &mut [T], dloss: T,
    drop: Option<&Dropout>,
) -> (T, u32) {
    assert_eq!(targets.len(), b * t, "targets must be [B,T]");
    let (c, nh, v, l) = (cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_layer);
    let bt = b * t;
    let a = forward(cfg, params, inputs, b, t, drop);
    let mut losses = zeros(bt); // [B,T]
    let count = crossentropy_forward(&mut losses, &a.logits, targets, bt, v);
    let loss = losses.iter().fold(T::zero(), |s, &x| s + x);

    let p = tensors(cfg, params);
    let g = tensors_mut(cfg, grads);
    // Activation gradients are fresh buffers, zeroed, because the backward functions accumulate.
    // loss -> logits -> lnf (the lm_head's weight gradient goes to wte, which the encoder adds to)
    let mut dlogits = zeros(bt * v); // [B,T,V]
    crossentropy_backward(&mut dlogits, &a.logits, targets, dloss, bt, v);
    let mut dlnf = zeros(bt * c); // [B,T,C]
    matmul_backward(&mut dlnf, g.wte, None, &dlogits, &a.lnf, p.wte, bt, c, v);
    // dresidual: [B,T,C] the gradient of the residual stream, here at the output of block L-1
    let mut dresidual = zeros(bt * c);
    layernorm_backward(&mut dresidual, g.lnfw, g.lnfb, &dlnf, a.block_input(l), p.lnfw, &a.lnf_mean, &a.lnf_rstd, bt, c);
    for li in (0..l).rev() {
        let la = &a.layers[li];
        // residual3 = residual2 + fcproj
        let (mut dresidual2, mut dfcproj) = (zeros(bt * c), zeros(bt * c)); // [B,T,C] each
        residual_backward(&mut dresidual2, &mut dfcproj, &dresidual, bt * c);
        if let Some(m) = &la.masks {
            apply(&mut dfcproj, &m[2]);
        }
        let mut dfch_gelu = zeros(bt * 4 * c); // [B,T,4C]
        matmul_backward(&mut dfch_gelu, at_mut(g.fcprojw, li, 4 * c * c), Some(at_mut(g.fcprojb, li, c)), &dfcproj,
            &la.fch_gelu, at(p.fcprojw, li, 4 * c * c), bt, 4 * c, c);
        let mut dfch = zeros(bt * 4 * c); // [B,T,4C]
        gelu_backward(&mut dfch, &la.fch, &dfch_gelu, bt * 4 * c);
        let mut dln2 = zeros(bt * c); // [B,T,C]
        matmul_backward(&mut dln2, at_mut(g.fcw, li, 4 * c * c), Some(at_mut(g.fcb, li, 4 * c)), &dfch, &la.ln2,
            at(p.fcw, li, 4 * c * c), bt, c, 4 * c);
        layernorm_backward(&mut dresidual2, at_mut(g.ln2w, li, c), at_mut(g.ln2b, li, c), &dln2, &la.residual2,
            at(p.ln2w, li, c), &la.ln2_mean, &la.ln2_rstd, bt, c);
        // residual2 = block input + attproj
        let (mut dinput, mut dattproj) = (zeros(bt * c), zeros(bt * c)); // [B,T,C] each
        residual_backward(&mut dinput, &mut dattproj, &dresidual2, bt * c);
        if let Some(m) = &la.masks {
            apply(&mut dattproj, &m[1]);
        }
        let mut datty = zeros(bt * c); // [B,T,C]
        matmul_backward(&mut datty, at_mut(g.attprojw, li, c * c), Some(at_mut(g.attprojb, li, c)), &dattproj, &la.atty,
            at(p.attprojw, li, c * c), bt, c, c);
        let mut dqkv = zeros(bt * 3 * c); // [B,T,3C]
        let (mut dpreatt, mut datt) = (zeros(b * nh * t * t), zeros(b * nh * t * t)); // [B,NH,T,T] scratch
        let att_mask = la.masks.as_ref().map(|m| m[0].as_slice());
        attention_backward_dropout(&mut dqkv, &mut dpreatt, &mut datt, &datty, &la.qkv, &la.att, att_mask, b, t, c, nh);
        let mut dln1 = zeros(bt * c); // [B,T,C]
        matmul_backward(&mut dln1, at_mut(g.qkvw, li, 3 * c * c), Some(at_mut(g.qkvb, li, 3 * c)), &dqkv, &la.ln1,
            at(p.qkvw, li, 3 * c * c), bt, c, 3 * c);
        layernorm_backward(&mut dinput, at_mut(g.ln1w, li, c), at_mut(g.ln1b, li, c), &dln1, a.block_input(li),
            at(p.ln1w, li, c), &la.ln1_mean, &la.ln1_rstd, bt, c);
        dresidual = dinput;
    }
    // encoded = wte[inputs] + wpe[pos]: wte also receives the lm_head's gradient above
    if let Some(m) = &a.enc_mask {
        apply(&mut dresidual, m);
    }
    encoder_backward(g.wte, g.wpe, &dresidual, inputs, b, t, c);
    (loss, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::testutil::{Rng, Worst, central_difference};

    fn reference_config() -> GptConfig {
        GptConfig { vocab_size: 65, block_size: 64, n_layer: 2, n_head: 4, n_embd: 128 }
    }

    #[test]
    fn reference_config_has_413312_parameters() {
        let cfg = reference_config();
        assert_eq!(cfg.num_params(), 413_312);
        let (sizes, off) = (cfg.param_sizes(), cfg.param_offsets());
        assert_eq!(sizes[0], 65 * 128);
        assert_eq!(sizes[4], 2 * 3 * 128 * 128);
        assert_eq!(sizes[12], 2 * 128 * 512);
        assert_eq!(off[0], 0);
        assert_eq!(off[15] + sizes[15], 413_312);
        assert_eq!(off[1], 65 * 128);
        assert_eq!(GptConfig::param_names()[6], "attprojw");
        // the config round-trips through serde
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<GptConfig>(&json).unwrap(), cfg);
    }

    #[test]
    fn init_params_statistics_and_determinism() {
        let cfg = reference_config();
        let p = init_params(&cfg, 1337);
        assert_eq!(p.len(), 413_312);
        assert_eq!(p, init_params(&cfg, 1337), "same seed, same parameters");
        assert_ne!(p, init_params(&cfg, 1338));
        let (sizes, off) = (cfg.param_sizes(), cfg.param_offsets());
        let slice = |i: usize| &p[off[i]..off[i] + sizes[i]];
        let std = |x: &[f32]| (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
        let mean = |x: &[f32]| x.iter().map(|v| *v as f64).sum::<f64>() / x.len() as f64;
        for i in [0, 1, 4, 10] {
            let (s, m) = (std(slice(i)), mean(slice(i)));
            assert!((s - 0.02).abs() < 0.02 * 0.03 && m.abs() < 0.001, "{} std {s} mean {m}", GptConfig::param_names()[i]);
        }
        for i in [6, 12] {
            let s = std(slice(i));
            assert!((s - 0.01).abs() < 0.01 * 0.03, "{} std {s} (0.02/sqrt(2L) = 0.01)", GptConfig::param_names()[i]);
        }
        for i in [2, 8, 14] {
            assert!(slice(i).iter().all(|&x| x == 1.0));
        }
        for i in [3, 5, 7, 9, 11, 13, 15] {
            assert!(slice(i).iter().all(|&x| x == 0.0));
        }
        // the documented generator: the first weight is 0.02 * the first Box-Muller sample
        assert_eq!(p[0], (Normal::new(1337).sample() * 0.02) as f32);
    }

    #[test]
    fn untrained_model_predicts_near_uniformly() {
        let cfg = GptConfig { vocab_size: 65, block_size: 16, n_layer: 2, n_head: 4, n_embd: 32 };
        let p: Vec<f64> = init_params(&cfg, 3).iter().map(|&x| x as f64).collect();
        let inputs: Vec<u32> = (0..2 * 16).map(|i| (i * 7 % 65) as u32).collect();
        let targets: Vec<u32> = (0..2 * 16).map(|i| if i == 5 { IGNORE_INDEX } else { (i * 11 % 65) as u32 }).collect();
        let (loss, count) = gpt_forward(&cfg, &p, &inputs, &targets, 2, 16);
        assert_eq!(count, 31);
        let mean = loss / count as f64;
        assert!((mean - 65f64.ln()).abs() < 0.05, "mean loss {mean} vs ln 65 = {}", 65f64.ln());
        // causal: changing the last token changes no earlier logit
        let l1 = gpt_logits(&cfg, &p, &inputs, 2, 16);
        let mut inputs2 = inputs.clone();
        inputs2[15] = (inputs2[15] + 1) % 65;
        let l2 = gpt_logits(&cfg, &p, &inputs2, 2, 16);
        assert_eq!(&l1[..15 * 65], &l2[..15 * 65]);
        assert_ne!(&l1[15 * 65..16 * 65], &l2[15 * 65..16 * 65]);
        assert_eq!(&l1[16 * 65..], &l2[16 * 65..], "the other sequence is untouched");
    }

    /// Random parameters larger than the init, so every path carries signal: weights U(-0.5, 0.5),
    /// LayerNorm weights 1 + U(-0.3, 0.3), biases U(-0.1, 0.1).
    fn signal_params(cfg: &GptConfig, rng: &mut Rng) -> Vec<f64> {
        let (sizes, off) = (cfg.param_sizes(), cfg.param_offsets());
        let mut params = vec![0.0f64; cfg.num_params()];
        for i in 0..16 {
            for x in &mut params[off[i]..off[i] + sizes[i]] {
                *x = match i {
                    2 | 8 | 14 => 1.0 + 0.3 * rng.uniform(),
                    3 | 5 | 7 | 9 | 11 | 13 | 15 => 0.1 * rng.uniform(),
                    _ => 0.5 * rng.uniform(),
                };
            }
        }
        params
    }

    /// The whole model's gradient against central finite differences of the summed loss, for a
    /// sample of parameters from every tensor, with padding targets, a dloss != 1 and a pre-filled
    /// gradient slab (the backward must accumulate).
    #[test]
    fn whole_gpt_gradient_matches_finite_differences() {
        let mut rng = Rng::fresh("gpt_forward_backward");
        let cfg = GptConfig { vocab_size: 11, block_size: 8, n_layer: 2, n_head: 2, n_embd: 8 };
        let (b, t) = (2, 6);
        let (sizes, off) = (cfg.param_sizes(), cfg.param_offsets());
        let params = signal_params(&cfg, &mut rng);
        let inputs = rng.tokens(b * t, cfg.vocab_size);
        // one padded position per sequence, plus the tail of the second one
        let targets: Vec<u32> = (0..b * t)
            .map(|i| if i == 2 || i == 7 || i >= 10 { IGNORE_INDEX } else { rng.below(cfg.vocab_size) as u32 })
            .collect();
        let dloss = 0.37;
        let prefill = rng.vec(cfg.num_params(), 1.0);
        let mut grads = prefill.clone();
        let (loss, count) = gpt_forward_backward(&cfg, &params, &inputs, &targets, b, t, &mut grads, dloss);
        let (loss2, count2) = gpt_forward(&cfg, &params, &inputs, &targets, b, t);
        assert_eq!(count, 8);
        assert_eq!((loss, count), (loss2, count2), "forward_backward and forward agree");
        let grads: Vec<f64> = grads.iter().zip(&prefill).map(|(g, p)| g - p).collect();
        // wpe rows of positions >= T are unused: exactly zero gradient
        assert!(grads[off[1] + t * cfg.n_embd..off[2]].iter().all(|&g| g == 0.0));

        let mut p = params.clone();
        let mut worst = Worst::default();
        let per_tensor = 13; // 16 x 13 = 208 parameters
        for i in 0..16 {
            let mut tensor_worst = Worst::default();
            for _ in 0..per_tensor {
                let j = off[i] + rng.below(sizes[i]);
                let orig = p[j];
                let num = central_difference(|h| {
                    p[j] = orig + h;
                    let (l, _) = gpt_forward(&cfg, &p, &inputs, &targets, b, t);
                    p[j] = orig;
                    dloss * l
                });
                tensor_worst.add(grads[j], num);
                worst.add(grads[j], num);
            }
            println!("  {:<9} max rel err {:.2e}  max abs err {:.2e}", GptConfig::param_names()[i], tensor_worst.rel, tensor_worst.abs);
        }
        worst.check("gpt_forward_backward");
    }

    /// With dropout 0.2 the gradient matches finite differences of the loss under the same masks
    /// (the key fixes them), the loss differs from the loss without dropout, and a window cut in
    /// two micro-batches (the second at window position 1) sums to the gradient of one batch of 2.
    #[test]
    fn gpt_gradient_with_dropout_matches_finite_differences_and_accumulates() {
        let mut rng = Rng::fresh("gpt dropout");
        let cfg = GptConfig { vocab_size: 9, block_size: 6, n_layer: 2, n_head: 2, n_embd: 8 };
        let (b, t) = (2, 6);
        let (sizes, off) = (cfg.param_sizes(), cfg.param_offsets());
        let params = signal_params(&cfg, &mut rng);
        let inputs = rng.tokens(b * t, cfg.vocab_size);
        let targets: Vec<u32> = (0..b * t).map(|i| if i == 4 { IGNORE_INDEX } else { rng.below(cfg.vocab_size) as u32 }).collect();
        let drop = Dropout { p: 0.2, seed: rng.next_u64() as u32, step: 7, sample0: 0 };
        let mut grads = vec![0.0; cfg.num_params()];
        let (loss, _) = gpt_forward_backward_dropout(&cfg, &params, &inputs, &targets, b, t, &mut grads, 1.0, Some(&drop));
        let (plain, _) = gpt_forward(&cfg, &params, &inputs, &targets, b, t);
        assert!((loss - plain).abs() > 1e-6, "dropout changes the loss ({loss} vs {plain})");
        let mut p = params.clone();
        let mut worst = Worst::default();
        for i in 0..16 {
            for _ in 0..6 {
                let j = off[i] + rng.below(sizes[i]);
                let orig = p[j];
                let num = central_difference(|h| {
                    p[j] = orig + h;
                    let (l, _) = gpt_forward_dropout(&cfg, &p, &inputs, &targets, b, t, Some(&drop));
                    p[j] = orig;
                    l
                });
                worst.add(grads[j], num);
            }
        }
        worst.check("gpt_forward_backward_dropout");
        // B 1 x K 2 == B 2 x K 1: the second sequence keeps its masks at window position 1
        let mut acc = vec![0.0; cfg.num_params()];
        gpt_forward_backward_dropout(&cfg, &params, &inputs[..t], &targets[..t], 1, t, &mut acc, 1.0, Some(&drop));
        let second = Dropout { sample0: 1, ..drop };
        gpt_forward_backward_dropout(&cfg, &params, &inputs[t..], &targets[t..], 1, t, &mut acc, 1.0, Some(&second));
        let max = grads.iter().zip(&acc).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(max < 1e-12, "micro-batches with dropout: max diff {max:.2e}");
    }

    /// Accumulation at the model level: two micro-batches accumulated with dloss = 1/total count
    /// give the gradient of the mean loss over both, computed as one batch.
    #[test]
    fn two_micro_batches_accumulate_to_one_batch() {
        let mut rng = Rng::fresh("gpt micro-batches");
        let cfg = GptConfig { vocab_size: 7, block_size: 5, n_layer: 1, n_head: 2, n_embd: 4 };
        let params: Vec<f64> = init_params(&cfg, rng.next_u64()).iter().map(|&x| x as f64 * 10.0).collect();
        let (b, t) = (3, 5);
        let inputs = rng.tokens(b * t, 7);
        let targets: Vec<u32> = (0..b * t).map(|i| if i % 4 == 3 { IGNORE_INDEX } else { rng.below(7) as u32 }).collect();
        let (_, total) = gpt_forward(&cfg, &params, &inputs, &targets, b, t);
        let d = 1.0 / total as f64;
        let mut whole = vec![0.0; cfg.num_params()];
        let (lw, _) = gpt_forward_backward(&cfg, &params, &inputs, &targets, b, t, &mut whole, d);
        // micro-batches of 2 sequences and 1 sequence, unequal counts
        let mut acc = vec![0.0; cfg.num_params()];
        let (l1, c1) = gpt_forward_backward(&cfg, &params, &inputs[..2 * t], &targets[..2 * t], 2, t, &mut acc, d);
        let (l2, c2) = gpt_forward_backward(&cfg, &params, &inputs[2 * t..], &targets[2 * t..], 1, t, &mut acc, d);
        assert_eq!(c1 + c2, total);
        assert!((l1 + l2 - lw).abs() < 1e-12);
        let max = whole.iter().zip(&acc).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let norm = whole.iter().map(|x| x * x).sum::<f64>().sqrt();
        println!("micro-batch accumulation: max |whole - accumulated| {max:.2e} (gradient norm {norm:.3})");
        assert!(max < 1e-13 && norm > 1e-3);
    }
}
