//! The CPU reference checked against central finite differences in f64 on fresh random inputs:
//! every layer's backward and the whole GPT. The loss of a layer is a random linear functional of
//! its output, L = sum(out * w), so dout = w. No device needed.

mod common;

use common::Rng;
use gradscope::reference::gpt::{GptConfig, gpt_forward, gpt_forward_backward, init_params};
use gradscope::reference::layers::*;

const H: f64 = 1e-5;
const TOL: f64 = 1e-6;

fn rand(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.uniform() as f64).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Compare `analytic[i]` with the central difference of `loss` in every element of `inputs[i]`.
fn fd_check(name: &str, inputs: &[Vec<f64>], analytic: &[Vec<f64>], loss: impl Fn(&[Vec<f64>]) -> f64) {
    let mut worst = 0.0f64;
    let mut x: Vec<Vec<f64>> = inputs.to_vec();
    for (i, grad) in analytic.iter().enumerate() {
        assert_eq!(grad.len(), x[i].len(), "{name}: gradient {i} length");
        for j in 0..x[i].len() {
            let orig = x[i][j];
            x[i][j] = orig + H;
            let lp = loss(&x);
            x[i][j] = orig - H;
            let lm = loss(&x);
            x[i][j] = orig;
            let num = (lp - lm) / (2.0 * H);
            let err = (num - grad[j]).abs() / (num.abs() + grad[j].abs()).max(1e-2);
            worst = worst.max(err);
        }
    }
    println!("{name:<24} max rel err vs finite differences {worst:.2e}");
    assert!(worst < TOL, "{name}: backward differs from finite differences by {worst:.3e}");
}

#[test]
fn encoder_backward_matches_finite_differences() {
    let mut rng = Rng::fresh("fd encoder");
    let (b, t, c, v) = (2, 5, 6, 7);
    let inp: Vec<u32> = (0..b * t).map(|_| rng.below(v as u32)).collect();
    let (wte, wpe, w) = (rand(&mut rng, v * c), rand(&mut rng, t * c), rand(&mut rng, b * t * c));
    let loss = |x: &[Vec<f64>]| {
        let mut out = vec![0.0; b * t * c];
        encoder_forward(&mut out, &inp, &x[0], &x[1], b, t, c);
        dot(&out, &w)
    };
    let (mut dwte, mut dwpe) = (vec![0.0; v * c], vec![0.0; t * c]);
    encoder_backward(&mut dwte, &mut dwpe, &w, &inp, b, t, c);
    fd_check("encoder_backward", &[wte, wpe], &[dwte, dwpe], loss);
}

#[test]
fn layernorm_backward_matches_finite_differences() {
    let mut rng = Rng::fresh("fd layernorm");
    let (n, c) = (5, 7);
    let (x, wt, bs, w) = (rand(&mut rng, n * c), rand(&mut rng, c), rand(&mut rng, c), rand(&mut rng, n * c));
    let loss = |x: &[Vec<f64>]| {
        let (mut out, mut m, mut r) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        layernorm_forward(&mut out, &mut m, &mut r, &x[0], &x[1], &x[2], n, c);
        dot(&out, &w)
    };
    let (mut out, mut m, mut r) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    layernorm_forward(&mut out, &mut m, &mut r, &x, &wt, &bs, n, c);
    let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
    layernorm_backward(&mut dx, &mut dw, &mut db, &w, &x, &wt, &m, &r, n, c);
    fd_check("layernorm_backward", &[x, wt, bs], &[dx, dw, db], loss);
}

#[test]
fn matmul_backward_matches_finite_differences() {
    let mut rng = Rng::fresh("fd matmul");
    let (m, k, n) = (3, 5, 7);
    let (x, wt, bs, w) = (rand(&mut rng, m * k), rand(&mut rng, n * k), rand(&mut rng, n), rand(&mut rng, m * n));
    let loss = |x: &[Vec<f64>]| {
        let mut out = vec![0.0; m * n];
        matmul_forward(&mut out, &x[0], &x[1], Some(&x[2]), m, k, n);
        dot(&out, &w)
    };
    let (mut dx, mut dw, mut db) = (vec![0.0; m * k], vec![0.0; n * k], vec![0.0; n]);
    matmul_backward(&mut dx, &mut dw, Some(&mut db), &w, &x, &wt, m, k, n);
    fd_check("matmul_backward", &[x, wt, bs], &[dx, dw, db], loss);
}

#[test]
fn attention_backward_matches_finite_differences() {
    let mut rng = Rng::fresh("fd attention");
    let (b, t, c, nh) = (2, 5, 12, 3);
    let (qkv, w) = (rand(&mut rng, b * t * 3 * c), rand(&mut rng, b * t * c));
    let tt = b * nh * t * t;
    let loss = |x: &[Vec<f64>]| {
        let (mut out, mut pre, mut att) = (vec![0.0; b * t * c], vec![0.0; tt], vec![0.0; tt]);
        attention_forward(&mut out, &mut pre, &mut att, &x[0], b, t, c, nh);
        dot(&out, &w)
    };
    let (mut out, mut pre, mut att) = (vec![0.0; b * t * c], vec![0.0; tt], vec![0.0; tt]);
    attention_forward(&mut out, &mut pre, &mut att, &qkv, b, t, c, nh);
    let (mut dqkv, mut dpre, mut datt) = (vec![0.0; b * t * 3 * c], vec![0.0; tt], vec![0.0; tt]);
    attention_backward(&mut dqkv, &mut dpre, &mut datt, &w, &qkv, &att, b, t, c, nh);
    fd_check("attention_backward", &[qkv], &[dqkv], loss);
}

#[test]
fn gelu_residual_crossentropy_backward_match_finite_differences() {
    let mut rng = Rng::fresh("fd pointwise");
    let n = 11;
    let x: Vec<f64> = rand(&mut rng, n).iter().map(|v| v * 4.0).collect();
    let w = rand(&mut rng, n);
    let mut dx = vec![0.0; n];
    gelu_backward(&mut dx, &x, &w, n);
    fd_check("gelu_backward", &[x], &[dx], |x| {
        let mut out = vec![0.0; n];
        gelu_forward(&mut out, &x[0], n);
        dot(&out, &w)
    });

    let (a, b) = (rand(&mut rng, n), rand(&mut rng, n));
    let (mut da, mut db) = (vec![0.0; n], vec![0.0; n]);
    residual_backward(&mut da, &mut db, &w, n);
    fd_check("residual_backward", &[a, b], &[da, db], |x| {
        let mut out = vec![0.0; n];
        residual_forward(&mut out, &x[0], &x[1], n);
        dot(&out, &w)
    });

    let (rows, v) = (6, 7);
    let logits: Vec<f64> = rand(&mut rng, rows * v).iter().map(|x| x * 3.0).collect();
    let targets: Vec<u32> = (0..rows).map(|i| if i == 2 { IGNORE_INDEX } else { rng.below(v as u32) }).collect();
    let dloss = 0.7;
    let mut dl = vec![0.0; rows * v];
    crossentropy_backward(&mut dl, &logits, &targets, dloss, rows, v);
    assert!(dl[2 * v..3 * v].iter().all(|&g| g == 0.0), "an ignored row gets no gradient");
    fd_check("crossentropy_backward", &[logits], &[dl], |x| {
        let mut losses = vec![0.0; rows];
        crossentropy_forward(&mut losses, &x[0], &targets, rows, v);
        dloss * losses.iter().sum::<f64>()
    });
}

#[test]
fn crossentropy_ignores_padding_and_counts_the_rest() {
    let logits = vec![0.0f64, 1.0, 2.0, 5.0, 0.0, 0.0];
    let targets = [2u32, IGNORE_INDEX];
    let mut losses = vec![9.0; 2];
    let count = crossentropy_forward(&mut losses, &logits, &targets, 2, 3);
    assert_eq!(count, 1);
    assert_eq!(losses[1], 0.0);
    let want = (1f64.exp() + 2f64.exp() + 1.0).ln() - 2.0;
    assert!((losses[0] - want).abs() < 1e-12);
}

#[test]
fn adamw_one_step_by_hand() {
    // p = 1, g = 0.5, lr 0.1, wd 0.1, betas (0.9, 0.99), step 1:
    // decay: p = 1 - 0.1*0.1*1 = 0.99; m = 0.05, v = 0.0025; mhat = 0.5, vhat = 0.25
    // p = 0.99 - 0.1 * 0.5 / (0.5 + 1e-8)
    let (mut p, mut m, mut v) = (vec![1.0f64], vec![0.0], vec![0.0]);
    adamw(&mut p, &[0.5], &mut m, &mut v, 1, 0.1, 0.9, 0.99, 1e-8, 0.1, 1);
    let want = 0.99 - 0.1 * 0.5 / (0.5 + 1e-8);
    assert!((p[0] - want).abs() < 1e-12, "{} vs {want}", p[0]);
    assert!((m[0] - 0.05).abs() < 1e-15 && (v[0] - 0.0025).abs() < 1e-15);
    // step 2 uses the bias correction of step 2
    adamw(&mut p, &[0.5], &mut m, &mut v, 1, 0.1, 0.9, 0.99, 1e-8, 0.1, 2);
    let (m2, v2): (f64, f64) = (0.9 * 0.05 + 0.05, 0.99 * 0.0025 + 0.0025);
    let want2 = want * (1.0 - 0.01) - 0.1 * (m2 / (1.0 - 0.81)) / ((v2 / (1.0 - 0.9801)).sqrt() + 1e-8);
    assert!((p[0] - want2).abs() < 1e-12, "{} vs {want2}", p[0]);
}

#[test]
fn reference_config_has_413312_parameters() {
    let cfg = GptConfig { vocab_size: 65, block_size: 64, n_layer: 2, n_head: 4, n_embd: 128 };
    assert_eq!(cfg.num_params(), 413_312);
    let p = init_params(&cfg, 1337);
    assert_eq!(p.len(), 413_312);
    // N(0, 0.02) embeddings, unit LayerNorm weights, zero biases
    let off = cfg.param_offsets();
    let wte = &p[off[0]..off[1]];
    let std = (wte.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / wte.len() as f64).sqrt();
    assert!((std - 0.02).abs() < 0.001, "wte std {std}");
    assert!(p[off[2]..off[3]].iter().all(|&x| x == 1.0));
    assert!(p[off[3]..off[4]].iter().all(|&x| x == 0.0));
}

#[test]
fn whole_gpt_gradient_matches_finite_differences() {
    let mut rng = Rng::fresh("fd gpt");
    let cfg = GptConfig { vocab_size: 11, block_size: 8, n_layer: 2, n_head: 2, n_embd: 8 };
    let (b, t) = (2, 6);
    // larger weights than the init so every path carries signal
    let params: Vec<f64> = init_params(&cfg, rng.next_u64()).iter().map(|&x| x as f64 * 3.0 + 0.05 * rng.uniform() as f64).collect();
    let inputs: Vec<u32> = (0..b * t).map(|_| rng.below(11)).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| if i % 5 == 4 { IGNORE_INDEX } else { rng.below(11) }).collect();
    let mut grads = vec![0.0; params.len()];
    let (loss, count) = gpt_forward_backward(&cfg, &params, &inputs, &targets, b, t, &mut grads, 1.0);
    let (l2, c2) = gpt_forward(&cfg, &params, &inputs, &targets, b, t);
    assert_eq!(count, c2);
    assert_eq!(count as usize, targets.iter().filter(|&&x| x != IGNORE_INDEX).count());
    assert!((loss - l2).abs() < 1e-12);
    // a sample of parameters from every tensor
    let off = cfg.param_offsets();
    let sizes = cfg.param_sizes();
    let mut worst = 0.0f64;
    let mut p = params.clone();
    for tensor in 0..16 {
        for _ in 0..13 {
            let i = off[tensor] + rng.below(sizes[tensor] as u32) as usize;
            let orig = p[i];
            // central difference with Richardson extrapolation (cancels the h^2 error term: the
            // scaled-up weights make third derivatives large)
            let mut central = |h: f64| {
                p[i] = orig + h;
                let (lp, _) = gpt_forward(&cfg, &p, &inputs, &targets, b, t);
                p[i] = orig - h;
                let (lm, _) = gpt_forward(&cfg, &p, &inputs, &targets, b, t);
                p[i] = orig;
                (lp - lm) / (2.0 * h)
            };
            let (d1, d2) = (central(1e-4), central(5e-5));
            let num = (4.0 * d2 - d1) / 3.0;
            let err = (num - grads[i]).abs() / (num.abs() + grads[i].abs()).max(1e-2);
            worst = worst.max(err);
        }
    }
    println!("gpt_forward_backward     max rel err vs finite differences {worst:.2e} (208 parameters, all 16 tensors)");
    assert!(worst < TOL, "GPT gradient differs from finite differences by {worst:.3e}");
}
