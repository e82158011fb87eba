//! The GPU family's token-embedding gradient (shaders/embedding_gpu.wgsl, launched by
//! `ProgramBuilder::encoder_backward_buckets`) against the CPU reference's `encoder_backward`
//! (run in f64) on fresh random tokens: a vocabulary of 3 (buckets of hundreds of positions), a
//! large one (mostly single-position buckets), C not a multiple of the 64-invocation workgroup,
//! the vocabulary cut into parts (each part's own dispatch, tokens outside it left to the
//! others), f32 and the f16 activation instantiation; the host's bucket list; determinism (two
//! runs bit-identical, of the kernel and of a GPT window's gradient with the GPU family).
//! Gradients start from random values, so an overwrite instead of `+=` fails. (The GPT window
//! gradient with the GPU family against the reference: tests/kernels_gpu.rs, tests/dropout.rs.)

mod common;

use common::{Rng, Tensors, check, f16_buffer, f64s, gpu, run};
use gradscope::gpu::kernels_embedding::{buckets_len, embedding_buckets};
use gradscope::gpu::{Category, Gpu, Precision, ProgramBuilder, View};
use gradscope::reference::layers as r;

const TOL: f64 = 1e-5;

fn tokens(rng: &mut Rng, n: usize, v: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(v as u32)).collect()
}

/// The vocabulary parts of the cases: [0, V) whole, or cut at the given rows.
fn parts(v: usize, cuts: &[usize]) -> Vec<(usize, usize)> {
    let mut edges = vec![0];
    edges.extend_from_slice(cuts);
    edges.push(v);
    edges.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
}

/// (shared, B, T, C, V, vocabulary cuts)
type Case = (bool, usize, usize, usize, usize, &'static [usize]);
const CASES: [Case; 6] = [
    (true, 4, 50, 70, 3, &[]),
    (false, 2, 64, 64, 5000, &[]),
    (true, 1, 1, 5, 7, &[]),
    (false, 3, 33, 130, 11, &[4, 5]),
    (true, 8, 128, 48, 2, &[1]),
    (false, 2, 300, 33, 1000, &[100, 999]),
];

/// The kernel's dwte (all parts, concatenated) and dwpe for one case, f32 activations.
#[allow(clippy::too_many_arguments)]
fn run_case(
    g: &Gpu, shared: bool, b: usize, t: usize, c: usize, v: usize, cuts: &[usize], toks: &[u32], dout: &[f32], dwte0: &[f32],
    dwpe0: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let mut ts = Tensors::new(g, shared);
    let ps = parts(v, cuts);
    let dws: Vec<usize> = ps.iter().map(|&(v0, vn)| ts.f32(&dwte0[v0 * c..(v0 + vn) * c])).collect();
    let (dp, dy, bk) = (ts.f32(dwpe0), ts.f32(dout), ts.u32(&embedding_buckets(toks)));
    ts.upload();
    run(g, |pb| {
        for (k, (&(v0, vn), &dw)) in ps.iter().zip(&dws).enumerate() {
            let dwpe = (k == 0).then(|| ts.view(dp));
            pb.encoder_backward_buckets(ts.view(dw), dwpe, ts.view(dy), ts.view(bk), b, t, c, v0, vn).unwrap();
        }
    });
    (dws.iter().flat_map(|&i| ts.read(i)).collect(), ts.read(dp))
}

fn reference(b: usize, t: usize, c: usize, toks: &[u32], dout: &[f64], dwte0: &[f32], dwpe0: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (mut dwte, mut dwpe) = (f64s(dwte0), f64s(dwpe0));
    r::encoder_backward(&mut dwte, &mut dwpe, dout, toks, b, t, c);
    (dwte, dwpe)
}

#[test]
fn bucket_list_sorts_positions_stably_by_token() {
    let mut rng = Rng::fresh("embedding buckets");
    for (n, v) in [(1, 1), (200, 3), (500, 10_000), (64, 64)] {
        let toks = tokens(&mut rng, n, v);
        let bl = embedding_buckets(&toks);
        assert_eq!(bl.len(), buckets_len(n));
        let count = bl[0] as usize;
        let rows = &bl[1..1 + n];
        let starts = &bl[1 + n..2 + 2 * n];
        let btoks = &bl[2 + 2 * n..];
        let mut distinct = toks.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(count, distinct.len(), "one bucket per distinct token");
        assert_eq!(&btoks[..count], &distinct[..], "buckets in token order");
        assert_eq!((starts[0], starts[count] as usize), (0, n), "the buckets cover every position");
        for k in 0..count {
            let run = &rows[starts[k] as usize..starts[k + 1] as usize];
            assert!(!run.is_empty(), "bucket {k} is empty");
            assert!(run.windows(2).all(|w| w[0] < w[1]), "bucket {k}: positions not in order {run:?}");
            assert!(run.iter().all(|&r| toks[r as usize] == btoks[k]), "bucket {k} holds another token's position");
        }
        let mut seen = rows.to_vec();
        seen.sort();
        assert_eq!(seen, (0..n as u32).collect::<Vec<_>>(), "every position exactly once");
    }
}

#[test]
fn token_embedding_gradient_matches_reference() {
    let g = gpu();
    let mut rng = Rng::fresh("embedding gradient");
    for (shared, b, t, c, v, cuts) in CASES {
        let toks = tokens(&mut rng, b * t, v);
        let dout = rng.vec(b * t * c, 1.0);
        let (dwte0, dwpe0) = (rng.vec(v * c, 1.0), rng.vec(t * c, 1.0));
        let (dwte, dwpe) = run_case(&g, shared, b, t, c, v, cuts, &toks, &dout, &dwte0, &dwpe0);
        let (want_wte, want_wpe) = reference(b, t, c, &toks, &f64s(&dout), &dwte0, &dwpe0);
        println!("B {b} T {t} C {c} V {v} parts {:?}", parts(v, cuts));
        check("encoder_backward_buckets", "dwte", &dwte, &want_wte, TOL);
        check("encoder_backward_wpe", "dwpe", &dwpe, &want_wpe, TOL);
    }
}

#[test]
fn token_embedding_gradient_is_deterministic() {
    let g = gpu();
    let mut rng = Rng::fresh("embedding gradient determinism");
    // buckets of ~1000 positions, summed in position order by each invocation
    for (shared, b, t, c, v, cuts) in [(false, 4, 512, 96, 2, &[][..]), (true, 2, 256, 70, 50, &[20][..])] {
        let toks = tokens(&mut rng, b * t, v);
        // magnitudes over six orders, so a different summation order shows in the bits
        let dout: Vec<f32> = rng.vec(b * t * c, 1.0).iter().enumerate().map(|(i, x)| x * 10f32.powi((i % 7) as i32 - 3)).collect();
        let (dwte0, dwpe0) = (rng.vec(v * c, 1.0), rng.vec(t * c, 1.0));
        let first = run_case(&g, shared, b, t, c, v, cuts, &toks, &dout, &dwte0, &dwpe0);
        let second = run_case(&g, shared, b, t, c, v, cuts, &toks, &dout, &dwte0, &dwpe0);
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&first.0), bits(&second.0), "dwte differs between two runs");
        assert_eq!(bits(&first.1), bits(&second.1), "dwpe differs between two runs");
        let (want, _) = reference(b, t, c, &toks, &f64s(&dout), &dwte0, &dwpe0);
        check("encoder_backward_buckets", "dwte", &first.0, &want, 1e-4);
    }
}

fn f32_buffer(g: &Gpu, v: &[f32]) -> View {
    let buf = g.storage("f32 test tensor", Category::Gradients, v.len());
    g.upload(&buf, 0, v);
    View::of(&buf)
}

/// The f16 instantiation: dout in f16, the gradients f32, arithmetic f32 (compared with the
/// reference on the f16-rounded dout).
#[test]
fn token_embedding_gradient_f16_matches_reference() {
    let g = gpu();
    common::require_f16(&g);
    let mut rng = Rng::fresh("embedding gradient f16");
    for (b, t, c, v, cuts) in [(4, 50, 70, 3, &[][..]), (3, 33, 130, 11, &[4, 5][..]), (2, 64, 64, 5000, &[][..])] {
        let toks = tokens(&mut rng, b * t, v);
        let (dy, dout) = f16_buffer(&g, &rng.vec(b * t * c, 1.0));
        let (dwte0, dwpe0) = (rng.vec(v * c, 1.0), rng.vec(t * c, 1.0));
        let ps = parts(v, cuts);
        let dws: Vec<View> = ps.iter().map(|&(v0, vn)| f32_buffer(&g, &dwte0[v0 * c..(v0 + vn) * c])).collect();
        let dp = f32_buffer(&g, &dwpe0);
        let bl = embedding_buckets(&toks);
        let bk = View::of(&g.storage("buckets", Category::Activations, bl.len()));
        g.upload(&bk.buf, 0, &bl);
        let mut pb = ProgramBuilder::with_precision(&g, Precision::F16).unwrap();
        for (k, (&(v0, vn), dw)) in ps.iter().zip(&dws).enumerate() {
            pb.encoder_backward_buckets(dw, (k == 0).then_some(&dp), &dy, &bk, b, t, c, v0, vn).unwrap();
        }
        pb.finish("test").run();
        let got: Vec<f32> = ps.iter().zip(&dws).flat_map(|(&(_, vn), d)| g.read::<f32>(&d.buf, 0, vn * c).unwrap()).collect();
        let got_wpe: Vec<f32> = g.read(&dp.buf, 0, t * c).unwrap();
        let (want_wte, want_wpe) = reference(b, t, c, &toks, &dout, &dwte0, &dwpe0);
        println!("f16 B {b} T {t} C {c} V {v} parts {ps:?}");
        check("encoder_backward_buckets (f16)", "dwte", &got, &want_wte, TOL);
        check("encoder_backward_wpe (f16)", "dwpe", &got_wpe, &want_wpe, TOL);
    }
}

/// Two windows of the same GPT from the same initialization with the GPU family: the whole
/// gradient (the embedding's included, summed over micro-batches that repeat tokens) bit-identical.
#[test]
fn gpt_window_gradient_with_the_gpu_family_is_deterministic() {
    let g = gpu().with_kernels(gradscope::gpu::KernelSet::Gpu);
    let cfg = gradscope::train::TrainConfig {
        n_layer: 1,
        n_head: 2,
        n_embd: 64,
        block_size: 40,
        micro_batch: 3,
        accum_steps: 2,
        padded: true,
        max_steps: 4,
        eval_windows: 2,
        eval_every: 0,
        out_dir: std::env::temp_dir().join("gradscope-test-runs").display().to_string(),
        ..gradscope::train::TrainConfig::default()
    };
    let mut grads = Vec::new();
    for _ in 0..2 {
        let mut t = gradscope::train::Trainer::new(&g, cfg.clone()).unwrap();
        t.accumulate_window().unwrap();
        grads.push(t.window_gradient().unwrap());
    }
    let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert!(grads[0].iter().any(|&x| x != 0.0), "the window has a gradient");
    assert_eq!(bits(&grads[0]), bits(&grads[1]), "two windows' gradients differ");
}
