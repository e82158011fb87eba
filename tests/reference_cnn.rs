//! The CNN layers of the CPU reference against central finite differences in f64 (fresh random
//! inputs, loss = sum(out * w)), plus the BatchNorm running statistics by hand.

mod common;

use common::Rng;
use gradscope::reference::cnn::*;

const TOL: f64 = 1e-6;

fn rand(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.uniform() as f64).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Compare `analytic[i]` with Richardson-extrapolated central differences of `loss` in every
/// element of `inputs[i]`.
fn fd_check(name: &str, inputs: &[Vec<f64>], analytic: &[Vec<f64>], loss: impl Fn(&[Vec<f64>]) -> f64) {
    let mut worst = 0.0f64;
    let mut x: Vec<Vec<f64>> = inputs.to_vec();
    for (i, grad) in analytic.iter().enumerate() {
        assert_eq!(grad.len(), x[i].len(), "{name}: gradient {i} length");
        for j in 0..x[i].len() {
            let orig = x[i][j];
            let mut central = |h: f64| {
                x[i][j] = orig + h;
                let lp = loss(&x);
                x[i][j] = orig - h;
                let lm = loss(&x);
                x[i][j] = orig;
                (lp - lm) / (2.0 * h)
            };
            let (d1, d2) = (central(1e-4), central(5e-5));
            let num = (4.0 * d2 - d1) / 3.0;
            let err = (num - grad[j]).abs() / (num.abs() + grad[j].abs()).max(1e-2);
            worst = worst.max(err);
        }
    }
    println!("{name:<24} max rel err vs finite differences {worst:.2e}");
    assert!(worst < TOL, "{name}: backward differs from finite differences by {worst:.3e}");
}

#[test]
fn conv2d_backward_matches_finite_differences() {
    let mut rng = Rng::fresh("fd conv2d");
    for (b, ic, oc, h, w, k, pad) in [(2, 2, 3, 5, 4, 3, 1), (1, 1, 2, 6, 6, 5, 2), (2, 3, 2, 4, 3, 1, 0), (1, 2, 2, 5, 5, 3, 0)] {
        let (ho, wo) = (conv_out(h, k, pad), conv_out(w, k, pad));
        let (x, wt, bs) = (rand(&mut rng, b * ic * h * w), rand(&mut rng, oc * ic * k * k), rand(&mut rng, oc));
        let g = rand(&mut rng, b * oc * ho * wo);
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; wt.len()], vec![0.0; oc]);
        conv2d_backward(&mut dx, &mut dw, &mut db, &g, &x, &wt, b, ic, oc, h, w, k, pad);
        fd_check(&format!("conv2d_backward k{k}p{pad}"), &[x, wt, bs], &[dx, dw, db], |v| {
            let mut out = vec![0.0; b * oc * ho * wo];
            conv2d_forward(&mut out, &v[0], &v[1], &v[2], b, ic, oc, h, w, k, pad);
            dot(&out, &g)
        });
    }
}

#[test]
fn groupnorm_and_batchnorm_backward_match_finite_differences() {
    let mut rng = Rng::fresh("fd norms");
    let (b, c, hw, g) = (3, 4, 5, 2);
    let n = b * c * hw;
    let (x, wt, bs, gr) = (rand(&mut rng, n), rand(&mut rng, c), rand(&mut rng, c), rand(&mut rng, n));
    let (mut out, mut m, mut r) = (vec![0.0; n], vec![0.0; b * g], vec![0.0; b * g]);
    groupnorm_forward(&mut out, &mut m, &mut r, &x, &wt, &bs, b, c, hw, g);
    let (mut dx, mut dw, mut db) = (vec![0.0; n], vec![0.0; c], vec![0.0; c]);
    groupnorm_backward(&mut dx, &mut dw, &mut db, &gr, &x, &wt, &m, &r, b, c, hw, g);
    fd_check("groupnorm_backward", &[x.clone(), wt.clone(), bs.clone()], &[dx, dw, db], |v| {
        let (mut out, mut m, mut r) = (vec![0.0; n], vec![0.0; b * g], vec![0.0; b * g]);
        groupnorm_forward(&mut out, &mut m, &mut r, &v[0], &v[1], &v[2], b, c, hw, g);
        dot(&out, &gr)
    });

    let (mut m, mut r, mut rm, mut rv) = (vec![0.0; c], vec![0.0; c], vec![0.0; c], vec![1.0; c]);
    batchnorm_forward_train(&mut out, &mut m, &mut r, &mut rm, &mut rv, &x, &wt, &bs, b, c, hw, 0.1);
    let (mut dx, mut dw, mut db) = (vec![0.0; n], vec![0.0; c], vec![0.0; c]);
    batchnorm_backward(&mut dx, &mut dw, &mut db, &gr, &x, &wt, &m, &r, b, c, hw);
    fd_check("batchnorm_backward", &[x.clone(), wt, bs], &[dx, dw, db], |v| {
        let (mut out, mut m, mut r, mut rm, mut rv) = (vec![0.0; n], vec![0.0; c], vec![0.0; c], vec![0.0; c], vec![1.0; c]);
        batchnorm_forward_train(&mut out, &mut m, &mut r, &mut rm, &mut rv, &v[0], &v[1], &v[2], b, c, hw, 0.1);
        dot(&out, &gr)
    });
}

#[test]
fn batchnorm_running_statistics_follow_pytorch() {
    // one channel, batch of 2 x 2 values: mean 2.5, biased var 1.25, unbiased 5/3
    let x = [1.0f64, 2.0, 3.0, 4.0];
    let (mut out, mut m, mut r, mut rm, mut rv) = (vec![0.0; 4], vec![0.0], vec![0.0], vec![0.0], vec![1.0]);
    batchnorm_forward_train(&mut out, &mut m, &mut r, &mut rm, &mut rv, &x, &[1.0], &[0.0], 2, 1, 2, 0.1);
    assert!((m[0] - 2.5).abs() < 1e-12);
    assert!((r[0] - 1.0 / (1.25f64 + 1e-5).sqrt()).abs() < 1e-12);
    assert!((rm[0] - 0.25).abs() < 1e-12, "running mean {}", rm[0]);
    assert!((rv[0] - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-12, "running var {}", rv[0]);
    let mut e = vec![0.0; 4];
    batchnorm_forward_eval(&mut e, &x, &[1.0], &[0.0], &rm, &rv, 2, 1, 2);
    assert!((e[0] - (1.0 - 0.25) / (rv[0] + 1e-5).sqrt()).abs() < 1e-12);
}

#[test]
fn relu_and_maxpool_backward_match_finite_differences() {
    let mut rng = Rng::fresh("fd pool");
    let (b, c, h, w) = (2, 3, 5, 4); // odd height: the last row is dropped (floor)
    let n = b * c * h * w;
    // distinct values at least 0.01 apart, so a finite-difference step never changes the argmax
    let mut x: Vec<f64> = (0..n).map(|i| i as f64 * 0.01 - 0.5).collect();
    for i in (1..n).rev() {
        x.swap(i, rng.below(i as u32 + 1) as usize);
    }
    let no = b * c * (h / 2) * (w / 2);
    let g = rand(&mut rng, no);
    let (mut out, mut idx) = (vec![0.0; no], vec![0u32; no]);
    maxpool2_forward(&mut out, &mut idx, &x, b, c, h, w);
    let mut dx = vec![0.0; n];
    maxpool2_backward(&mut dx, &idx, &g, no);
    fd_check("maxpool2_backward", &[x.clone()], &[dx], |v| {
        let (mut out, mut idx) = (vec![0.0; no], vec![0u32; no]);
        maxpool2_forward(&mut out, &mut idx, &v[0], b, c, h, w);
        dot(&out, &g)
    });
    // values away from the kink at 0 (finite differences are not defined there)
    let x: Vec<f64> = rand(&mut rng, n).iter().map(|v| if v.abs() < 0.05 { 0.3 } else { *v }).collect();
    let gr = rand(&mut rng, n);
    let mut dx = vec![0.0; n];
    relu_backward(&mut dx, &x, &gr, n);
    fd_check("relu_backward", &[x], &[dx], |v| {
        let mut out = vec![0.0; n];
        relu_forward(&mut out, &v[0], n);
        dot(&out, &gr)
    });
}

#[test]
fn the_cnn_has_20586_parameters_on_mnist() {
    use gradscope::reference::cnn_model::{CnnConfig, NormKind};
    let cfg = CnnConfig::new(28, 28, 10, NormKind::Group);
    assert_eq!(cfg.num_params(), 20_586);
    assert_eq!(cfg.features(), 1568);
}

#[test]
fn whole_cnn_gradient_matches_finite_differences_with_both_norms() {
    use gradscope::reference::cnn_model::{CnnConfig, NormKind, cnn_forward_backward, init_cnn_params};
    let mut rng = Rng::fresh("fd cnn");
    for norm in [NormKind::Group, NormKind::Batch] {
        let cfg = CnnConfig { c1: 4, c2: 4, groups: 2, ..CnnConfig::new(8, 8, 3, norm) };
        let b = 3;
        let params: Vec<f64> = init_cnn_params(&cfg, rng.next_u64()).iter().map(|&x| x as f64 + 0.05 * rng.uniform() as f64).collect();
        let x = rand(&mut rng, b * 64);
        let labels = [0u32, 2, gradscope::reference::layers::IGNORE_INDEX];
        let running0: Vec<f64> = cfg.running_init().iter().map(|&v| v as f64).collect();
        let mut grads = vec![0.0; params.len()];
        let mut run = running0.clone();
        cnn_forward_backward(&cfg, &params, &mut run, &x, &labels, b, true, 0.1, Some(&mut grads), 1.0);
        let loss = |p: &[f64]| {
            let mut run = running0.clone();
            cnn_forward_backward(&cfg, p, &mut run, &x, &labels, b, true, 0.1, None, 1.0).0
        };
        let mut worst = 0.0f64;
        let mut kinks = 0;
        let mut p = params.clone();
        for i in 0..p.len() {
            let orig = p[i];
            let mut central = |h: f64| {
                p[i] = orig + h;
                let lp = loss(&p);
                p[i] = orig - h;
                let lm = loss(&p);
                p[i] = orig;
                (lp - lm) / (2.0 * h)
            };
            let (d1, d2) = (central(1e-5), central(5e-6));
            // a ReLU or max-pool switch inside the step makes the two estimates disagree: the
            // loss is not differentiable there, so that parameter is not judged (and counted)
            if (d1 - d2).abs() > 1e-4 * d1.abs().max(d2.abs()).max(1e-2) {
                kinks += 1;
                continue;
            }
            let num = (4.0 * d2 - d1) / 3.0;
            worst = worst.max((num - grads[i]).abs() / (num.abs() + grads[i].abs()).max(1e-2));
        }
        println!("cnn ({norm:?}) gradient   max rel err vs finite differences {worst:.2e} ({} parameters, {kinks} at a kink)", p.len());
        assert!(kinks * 10 < p.len(), "{norm:?}: {kinks} of {} parameters sit at a kink", p.len());
        assert!(worst < 1e-5, "{norm:?}: CNN gradient differs from finite differences by {worst:.3e}");
    }
}
