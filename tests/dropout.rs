//! Dropout (nanoGPT's places: the embedding, the attention probabilities, both projections) with
//! masks from a counter-based hash of (seed, step, window position, element): the kernels against
//! the CPU reference's masks, the GPT's window gradient against the CPU reference, and the
//! accumulation contract with dropout on (B x K == B*K x 1, checkpointing or not).

mod common;

use common::{Rng, Tensors, check, f64s, gpu, run};
use gradscope::gpu::kernels::{DropoutArgs, MatmulVariant};
use gradscope::gpu::{Category, KernelSet, View};
use gradscope::reference::dropout::{self, Dropout, site};
use gradscope::reference::gpt::{gpt_forward_backward, gpt_forward_backward_dropout};
use gradscope::reference::layers as r;
use gradscope::train::verify::{first_window_gradient, gradient_rel_diff};
use gradscope::train::{TrainConfig, Trainer};

const TOL: f64 = 1e-4;

/// Attention with dropout on its probabilities, both kernel families, against the reference with
/// the reference's masks: the key's window position and the part's first sequence both shift the
/// samples, as when the attention runs on a part of a micro-batch late in a window.
#[test]
fn attention_and_elementwise_dropout_match_the_reference_masks() {
    let g = gpu();
    let mut rng = Rng::fresh("dropout kernels");
    for variant in [MatmulVariant::RegisterBlocked, MatmulVariant::Tiled] {
        for (shared, (b, t, c, nh)) in [(true, (2, 7, 8, 2)), (false, (3, 16, 32, 4)), (true, (1, 5, 12, 3))] {
            let p = 0.3;
            let (seed, step, sample0, first) = (rng.next_u64() as u32, 1 + rng.below(100), rng.below(50), 1);
            let key = [seed, step, sample0, 0];
            let d = Dropout { p, seed, step, sample0: sample0 + first as u32 };
            let lsite = site::attention(rng.below(4) as usize);
            let mask: Vec<f64> = d.mask(lsite, b, nh * t * t);
            let qkv = rng.vec(b * t * 3 * c, 1.0);
            let dout = rng.vec(b * t * c, 1.0);
            let tt = b * nh * t * t;
            let (dqkv0, dpre0, datt0) = (rng.vec(b * t * 3 * c, 1.0), rng.vec(tt, 1.0), rng.vec(tt, 1.0));
            let mut ts = Tensors::new(&g, shared);
            let (o, pre, att, x) = (ts.poisoned(b * t * c), ts.poisoned(tt), ts.poisoned(tt), ts.f32(&qkv));
            let (dx, dpre, datt, dy, k) = (ts.f32(&dqkv0), ts.f32(&dpre0), ts.f32(&datt0), ts.f32(&dout), ts.u32(&key));
            ts.upload();
            let args = DropoutArgs { key: ts.view(k).clone(), site: lsite, threshold: dropout::threshold(p), scale: dropout::scale(p), first };
            run(&g, |pb| {
                pb.attention_forward_dropout_with(variant, ts.view(o), ts.view(pre), ts.view(att), ts.view(x), Some(&args), b, t, c, nh).unwrap();
                pb.attention_backward_dropout_with(variant, ts.view(dx), ts.view(dpre), ts.view(datt), ts.view(dy), ts.view(x),
                    ts.view(att), Some(&args), b, t, c, nh).unwrap();
            });
            let (mut out, mut preatt, mut attr) = (vec![0.0; b * t * c], vec![0.0; tt], vec![0.0; tt]);
            r::attention_forward_dropout(&mut out, &mut preatt, &mut attr, &f64s(&qkv), Some(&mask), b, t, c, nh);
            let (mut dqkv, mut dpreatt, mut dattr) = (f64s(&dqkv0), f64s(&dpre0), f64s(&datt0));
            r::attention_backward_dropout(&mut dqkv, &mut dpreatt, &mut dattr, &f64s(&dout), &f64s(&qkv), &attr, Some(&mask), b, t, c, nh);
            let dropped = mask.iter().filter(|&&m| m == 0.0).count();
            println!("{variant:?} B {b} T {t} C {c} NH {nh}: {dropped} of {tt} probabilities dropped");
            assert!(dropped > 0);
            check("attention_forward (dropout)", "out", &ts.read(o), &out, TOL);
            check("attention_forward (dropout)", "att", &ts.read(att), &attr, TOL);
            check("attention_backward (dropout)", "dqkv", &ts.read(dx), &dqkv, TOL);
            check("attention_backward (dropout)", "dpreatt", &ts.read(dpre), &dpreatt, TOL);
            check("attention_backward (dropout)", "datt", &ts.read(datt), &dattr, TOL);
        }
    }
    // flash attention (the GPU family): dropout on P in the forward, on dP in both backward passes
    for (b, t, c, nh) in [(2, 7, 8, 2), (1, 70, 64, 2)] {
        let p = 0.25;
        let (seed, step, sample0) = (rng.next_u64() as u32, 1 + rng.below(100), rng.below(50));
        let d = Dropout { p, seed, step, sample0 };
        let lsite = site::attention(1);
        let mask: Vec<f64> = d.mask(lsite, b, nh * t * t);
        let qkv = rng.vec(b * t * 3 * c, 1.0);
        let dout = rng.vec(b * t * c, 1.0);
        let dqkv0 = rng.vec(b * t * 3 * c, 1.0);
        let rows = b * nh * t;
        let mut ts = Tensors::new(&g, true);
        let (o, x, dx, dy, k) = (ts.poisoned(b * t * c), ts.f32(&qkv), ts.f32(&dqkv0), ts.f32(&dout), ts.u32(&[seed, step, sample0, 0]));
        ts.upload();
        let f32_buffer = |n: usize| View::of(&g.storage("flash scratch", Category::Activations, n));
        let (lse, dsum) = (f32_buffer(rows), f32_buffer(rows));
        let args = DropoutArgs { key: ts.view(k).clone(), site: lsite, threshold: dropout::threshold(p), scale: dropout::scale(p), first: 0 };
        run(&g, |pb| {
            pb.flash_attention_forward(ts.view(o), &lse, ts.view(x), Some(&args), b, t, c, nh).unwrap();
            pb.flash_attention_backward(ts.view(dx), &dsum, ts.view(dy), ts.view(x), ts.view(o), &lse, Some(&args), b, t, c, nh).unwrap();
        });
        let tt = b * nh * t * t;
        let (mut out, mut preatt, mut attr) = (vec![0.0; b * t * c], vec![0.0; tt], vec![0.0; tt]);
        r::attention_forward_dropout(&mut out, &mut preatt, &mut attr, &f64s(&qkv), Some(&mask), b, t, c, nh);
        let (mut dqkv, mut dpreatt, mut dattr) = (f64s(&dqkv0), vec![0.0; tt], vec![0.0; tt]);
        r::attention_backward_dropout(&mut dqkv, &mut dpreatt, &mut dattr, &f64s(&dout), &f64s(&qkv), &attr, Some(&mask), b, t, c, nh);
        println!("flash B {b} T {t} C {c} NH {nh}");
        check("flash_attention_forward (dropout)", "out", &ts.read(o), &out, TOL);
        check("flash_attention_backward (dropout)", "dqkv", &ts.read(dx), &dqkv, TOL);
    }
    // the elementwise masks of the embedding and the projections: in place and assigned
    for (shared, (samples, per)) in [(true, (3, 40)), (false, (2, 4099))] {
        let p = 0.2;
        let key = [rng.next_u64() as u32, 7, 5, 0];
        let d = Dropout { p, seed: key[0], step: 7, sample0: 5 };
        let mask: Vec<f64> = d.mask(site::mlp_projection(1), samples, per);
        let n = samples * per;
        let (x0, dy0) = (rng.vec(n, 1.0), rng.vec(n, 1.0));
        let mut ts = Tensors::new(&g, shared);
        let (x, dx, dy, k) = (ts.f32(&x0), ts.poisoned(n), ts.f32(&dy0), ts.u32(&key));
        ts.upload();
        let args = DropoutArgs { key: ts.view(k).clone(), site: site::mlp_projection(1), threshold: dropout::threshold(p), scale: dropout::scale(p), first: 0 };
        run(&g, |pb| {
            pb.dropout_forward(ts.view(x), &args, per, n).unwrap();
            pb.dropout_backward(ts.view(dx), ts.view(dy), &args, per, n).unwrap();
        });
        let want = |v: &[f32]| -> Vec<f64> { v.iter().zip(&mask).map(|(&a, m)| a as f64 * m).collect() };
        check("dropout_forward", "x", &ts.read(x), &want(&x0), 1e-6);
        check("dropout_backward", "dx", &ts.read(dx), &want(&dy0), 1e-6);
    }
}

/// A small GPT with every layer: 2 layers, 2 heads, C 32, T 16, dropout 0.2.
fn small(b: usize, k: usize) -> TrainConfig {
    TrainConfig { dropout: 0.2, eval_windows: 8, ..common::small_gpt(b, k) }
}

/// The first window's gradient on the device equals the CPU reference's with the same masks
/// (sample i of the window at position i, step 1, the run's seed), padded data and a short last
/// micro-batch included, with and without activation checkpointing (which recomputes the
/// blocks, masks included), with each kernel family (the GPU family's flash attention drops
/// inside its tiles). Without dropout the reference is far off: the masks matter.
#[test]
fn gpt_window_gradient_with_dropout_equals_the_cpu_reference() {
    for (kernels, checkpoint_activations) in [(KernelSet::Cpu, false), (KernelSet::Cpu, true), (KernelSet::Gpu, false), (KernelSet::Gpu, true)] {
        let g = gpu().with_kernels(kernels);
        let cfg = TrainConfig { padded: true, effective_batch: 5, checkpoint_activations, ..small(2, 1) };
        let mut t = Trainer::new(&g, cfg.clone()).unwrap();
        let params = t.model.slabs().read_params().unwrap();
        let gpt = t.gpt().unwrap();
        let samples = gpt.sampler.clone().window(&gpt.data.train, cfg.effective());
        let gc = gpt.gcfg;
        t.accumulate_window().unwrap();
        let got = t.window_gradient().unwrap();

        let p64: Vec<f64> = params.iter().map(|&x| x as f64).collect();
        let reference = |drop: bool| -> Vec<f32> {
            let mut grads = vec![0.0f64; p64.len()];
            let mut count = 0;
            for (i, s) in samples.iter().enumerate() {
                let d = Dropout { p: cfg.dropout, seed: cfg.seed as u32, step: 1, sample0: i as u32 };
                let (_, c) = if drop {
                    gpt_forward_backward_dropout(&gc, &p64, &s.inputs, &s.targets, 1, cfg.block_size, &mut grads, 1.0, Some(&d))
                } else {
                    gpt_forward_backward(&gc, &p64, &s.inputs, &s.targets, 1, cfg.block_size, &mut grads, 1.0)
                };
                count += c;
            }
            grads.iter().map(|&x| (x / count as f64) as f32).collect()
        };
        let (want, without) = (reference(true), reference(false));
        let (d, off) = (gradient_rel_diff(&got, &want), gradient_rel_diff(&got, &without));
        println!("{kernels} kernels, checkpointing {checkpoint_activations}: GPU vs reference with dropout {d:.2e}, vs reference without {off:.2e}");
        assert!(d < 1e-4, "the GPU gradient with dropout differs from the CPU reference by {d:.3e}");
        assert!(off > 1e-2, "dropout should change the gradient ({off:.3e})");
    }
}

/// The accumulation contract with dropout 0.2: every cut of the window into micro-batches draws
/// the same masks, so B x K (short last micro-batch and padding included) equals B*K x 1;
/// evaluation does not drop.
#[test]
fn dropout_keeps_accumulation_exact() {
    let g = gpu();
    for padded in [false, true] {
        let truth = first_window_gradient(&g, &TrainConfig { padded, ..small(12, 1) }).unwrap();
        for cfg in [small(4, 3), small(1, 12), TrainConfig { effective_batch: 12, ..small(5, 1) }] {
            let cfg = TrainConfig { padded, ..cfg };
            let acc = first_window_gradient(&g, &cfg).unwrap();
            let d = gradient_rel_diff(&acc, &truth);
            println!("padded {padded}: B {} x K {} (E {}): max rel diff {d:.2e}", cfg.micro_batch, cfg.windows_micro_batches(), cfg.effective());
            assert!(d < 1e-5, "with dropout, B x K differs from the true batch by {d:.3e}");
        }
        let off = first_window_gradient(&g, &TrainConfig { padded, dropout: 0.0, ..small(12, 1) }).unwrap();
        assert!(gradient_rel_diff(&off, &truth) > 1e-2, "dropout 0.2 must change the gradient");
    }
    // evaluation runs without dropout: the same weights evaluate the same with and without it
    let (mut a, mut b) = (Trainer::new(&g, small(4, 1)).unwrap(), Trainer::new(&g, TrainConfig { dropout: 0.0, ..small(4, 1) }).unwrap());
    assert_eq!(a.eval().unwrap(), b.eval().unwrap(), "evaluation must not drop");
}
