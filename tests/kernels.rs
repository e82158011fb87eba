//! Every GPU kernel against its CPU twin (run in f64) on fresh random inputs of several shapes,
//! including shapes that are not multiples of the tile sizes. Outputs are poisoned with NaN before
//! each run, so an element a kernel fails to write fails the test; gradients start from random
//! values, so a kernel that overwrites instead of accumulating fails too. Tensors are tested both
//! each behind a gap in its own buffer (bound as a range that starts before it, as the model
//! binds slab tensors) and at offset 0.

mod common;

use common::{Rng, Tensors, check, check_terms, f64s, gpu, run};
use gradscope::gpu::kernels::{AdamW, MatmulVariant, crossentropy_chunk_backward_uniforms};
use gradscope::gpu::{Category, Precision, ProgramBuilder, View};
use gradscope::reference::layers as r;

const TOL: f64 = 1e-4;

#[test]
fn encoder_matches_reference() {
    let g = gpu();
    let mut rng = Rng::fresh("encoder");
    for (shared, (b, t, c, v, maxt)) in [(true, (2, 5, 12, 7, 8)), (false, (3, 64, 128, 65, 64)), (true, (1, 1, 3, 2, 1))] {
        let inp: Vec<u32> = (0..b * t).map(|_| rng.below(v as u32)).collect();
        let wte = rng.vec(v * c, 1.0);
        let wpe = rng.vec(maxt * c, 1.0);
        let dout = rng.vec(b * t * c, 1.0);
        let dwte0 = rng.vec(v * c, 1.0);
        let dwpe0 = rng.vec(maxt * c, 1.0);
        let mut ts = Tensors::new(&g, shared);
        let (o, ti, w1, w2) = (ts.poisoned(b * t * c), ts.u32(&inp), ts.f32(&wte), ts.f32(&wpe));
        let (dw1, dw2, d) = (ts.f32(&dwte0), ts.f32(&dwpe0), ts.f32(&dout));
        ts.upload();
        run(&g, |pb| {
            pb.encoder_forward(ts.view(o), ts.view(ti), ts.view(w1), ts.view(w2), b, t, c, v).unwrap();
            pb.encoder_backward(ts.view(dw1), ts.view(dw2), ts.view(d), ts.view(ti), b, t, c, v).unwrap();
        });
        let mut out = vec![0.0f64; b * t * c];
        r::encoder_forward(&mut out, &inp, &f64s(&wte), &f64s(&wpe), b, t, c);
        let (mut dwte, mut dwpe) = (f64s(&dwte0), f64s(&dwpe0));
        r::encoder_backward(&mut dwte, &mut dwpe, &f64s(&dout), &inp, b, t, c);
        check("encoder_forward", "out", &ts.read(o), &out, TOL);
        check("encoder_backward", "dwte", &ts.read(dw1), &dwte, TOL);
        check("encoder_backward", "dwpe", &ts.read(dw2), &dwpe, TOL);
    }
}

#[test]
fn layernorm_matches_reference() {
    let g = gpu();
    let mut rng = Rng::fresh("layernorm");
    for (shared, (n, c)) in [(true, (7, 12)), (false, (130, 128)), (true, (1, 5)), (false, (64, 33))] {
        let inp: Vec<f32> = rng.vec(n * c, 2.0).iter().map(|x| x + 0.5).collect();
        let weight = rng.vec(c, 1.0);
        let bias = rng.vec(c, 1.0);
        let dout = rng.vec(n * c, 1.0);
        let (dinp0, dw0, db0) = (rng.vec(n * c, 1.0), rng.vec(c, 1.0), rng.vec(c, 1.0));
        let mut ts = Tensors::new(&g, shared);
        let (o, mu, rs) = (ts.poisoned(n * c), ts.poisoned(n), ts.poisoned(n));
        let (x, w, bb) = (ts.f32(&inp), ts.f32(&weight), ts.f32(&bias));
        let (dx, dw, db, dy) = (ts.f32(&dinp0), ts.f32(&dw0), ts.f32(&db0), ts.f32(&dout));
        ts.upload();
        run(&g, |pb| {
            pb.layernorm_forward(ts.view(o), ts.view(mu), ts.view(rs), ts.view(x), ts.view(w), ts.view(bb), n, c).unwrap();
            pb.layernorm_backward(
                ts.view(dx), ts.view(dw), ts.view(db), ts.view(dy), ts.view(x), ts.view(w), ts.view(mu), ts.view(rs), n, c,
            )
            .unwrap();
        });
        let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        r::layernorm_forward(&mut out, &mut mean, &mut rstd, &f64s(&inp), &f64s(&weight), &f64s(&bias), n, c);
        let (mut dinp, mut dweight, mut dbias) = (f64s(&dinp0), f64s(&dw0), f64s(&db0));
        r::layernorm_backward(&mut dinp, &mut dweight, &mut dbias, &f64s(&dout), &f64s(&inp), &f64s(&weight), &mean, &rstd, n, c);
        check("layernorm_forward", "out", &ts.read(o), &out, TOL);
        check("layernorm_forward", "mean", &ts.read(mu), &mean, TOL);
        check("layernorm_forward", "rstd", &ts.read(rs), &rstd, TOL);
        check("layernorm_backward", "dinp", &ts.read(dx), &dinp, TOL);
        check("layernorm_backward", "dweight", &ts.read(dw), &dweight, TOL);
        check("layernorm_backward", "dbias", &ts.read(db), &dbias, TOL);
    }
}

fn matmul_case(variant: MatmulVariant, shared: bool, m: usize, k: usize, n: usize, bias: bool, rng: &mut Rng) {
    let g = gpu();
    let inp = rng.vec(m * k, 1.0);
    let weight = rng.vec(n * k, 1.0);
    let b = rng.vec(n, 1.0);
    let dout = rng.vec(m * n, 1.0);
    let (dinp0, dw0, db0) = (rng.vec(m * k, 1.0), rng.vec(n * k, 1.0), rng.vec(n, 1.0));
    let mut ts = Tensors::new(&g, shared);
    let (o, x, w, bb) = (ts.poisoned(m * n), ts.f32(&inp), ts.f32(&weight), ts.f32(&b));
    let (dx, dw, db, dy) = (ts.f32(&dinp0), ts.f32(&dw0), ts.f32(&db0), ts.f32(&dout));
    ts.upload();
    run(&g, |pb| {
        let bv = bias.then(|| ts.view(bb));
        pb.matmul_forward_with(variant, ts.view(o), ts.view(x), ts.view(w), bv, m, k, n).unwrap();
        let dbv = bias.then(|| ts.view(db));
        pb.matmul_backward_with(variant, Some(ts.view(dx)), ts.view(dw), dbv, ts.view(dy), ts.view(x), ts.view(w), m, k, n)
            .unwrap();
    });
    let bref = f64s(&b);
    let mut out = vec![0.0; m * n];
    r::matmul_forward(&mut out, &f64s(&inp), &f64s(&weight), bias.then_some(&bref[..]), m, k, n);
    let (mut dinp, mut dweight, mut dbias) = (f64s(&dinp0), f64s(&dw0), f64s(&db0));
    r::matmul_backward(&mut dinp, &mut dweight, bias.then_some(&mut dbias[..]), &f64s(&dout), &f64s(&inp), &f64s(&weight), m, k, n);
    let name = format!("matmul {variant:?} {m}x{k}x{n}");
    check(&name, "out", &ts.read(o), &out, TOL);
    // dinp sums N products per element in one f32 accumulator: its rounding error grows like
    // sqrt(N) (1.2e-4 was seen at N = 50,257 with a correct kernel), so the bound does too past
    // N = 4,096 (3.5e-4 at 50,257; a wrong kernel is off by O(1))
    let tol_n = TOL * (n as f64 / 4096.0).sqrt().max(1.0);
    check(&name, "dinp", &ts.read(dx), &dinp, tol_n);
    check(&name, "dweight", &ts.read(dw), &dweight, TOL);
    if bias {
        check(&name, "dbias", &ts.read(db), &dbias, TOL);
    } else {
        assert_eq!(ts.read(db), db0, "dbias must be untouched without a bias");
    }
}

#[test]
fn matmul_both_variants_match_reference() {
    let mut rng = Rng::fresh("matmul");
    // (M, K, N): tile multiples, odd M and N, K not a multiple of 4 (register-blocked falls back),
    // the GPT's shapes (lm_head N = 65), a single row, and lm_heads of V = 50,257 and 65,535 (the
    // input gradient sums over N in one invocation: at most 65,535 loop iterations on CPU adapters).
    let shapes = [
        (4, 12, 65_535, false),
        (3, 30, 50_257, false),
        (64, 64, 64, true),
        (37, 20, 29, true),
        (3, 5, 7, true),
        (128, 128, 65, false),
        (1, 128, 384, true),
        (70, 512, 128, true),
        (5, 12, 1, true),
    ];
    for variant in [MatmulVariant::RegisterBlocked, MatmulVariant::Tiled, MatmulVariant::GpuTiled] {
        for (i, &(m, k, n, bias)) in shapes.iter().enumerate() {
            matmul_case(variant, i % 2 == 0, m, k, n, bias, &mut rng);
        }
    }
}

#[test]
fn attention_matches_reference() {
    let g = gpu();
    let mut rng = Rng::fresh("attention");
    // both variants; head sizes 4, 32, 4, 4 and 3 (not a multiple of 4: the vec4 variant falls back)
    // and head size 65 at T = 480: attention.wgsl's query rows loop about 64,400 times, just under
    // the 65,535 after which CPU adapters stop an invocation's loops (see `loops_past_...`)
    let cases = [(true, (2, 5, 12, 3)), (false, (2, 64, 128, 4)), (true, (1, 1, 4, 1)), (false, (3, 7, 8, 2)), (true, (2, 6, 6, 2)), (false, (1, 480, 130, 2))];
    for (variant, (shared, (b, t, c, nh))) in [MatmulVariant::RegisterBlocked, MatmulVariant::Tiled].into_iter().flat_map(|v| cases.map(|c| (v, c))) {
        let qkv = rng.vec(b * t * 3 * c, 1.0);
        let dout = rng.vec(b * t * c, 1.0);
        let tt = b * nh * t * t;
        let (dqkv0, dpre0, datt0) = (rng.vec(b * t * 3 * c, 1.0), rng.vec(tt, 1.0), rng.vec(tt, 1.0));
        let mut ts = Tensors::new(&g, shared);
        let (o, pre, att, x) = (ts.poisoned(b * t * c), ts.poisoned(tt), ts.poisoned(tt), ts.f32(&qkv));
        let (dx, dpre, datt, dy) = (ts.f32(&dqkv0), ts.f32(&dpre0), ts.f32(&datt0), ts.f32(&dout));
        ts.upload();
        run(&g, |pb| {
            pb.attention_forward_with(variant, ts.view(o), ts.view(pre), ts.view(att), ts.view(x), b, t, c, nh).unwrap();
            pb.attention_backward_with(variant, ts.view(dx), ts.view(dpre), ts.view(datt), ts.view(dy), ts.view(x), ts.view(att), b, t, c, nh)
                .unwrap();
        });
        let (mut out, mut preatt, mut attr) = (vec![0.0; b * t * c], vec![0.0; tt], vec![0.0; tt]);
        r::attention_forward(&mut out, &mut preatt, &mut attr, &f64s(&qkv), b, t, c, nh);
        let (mut dqkv, mut dpreatt, mut dattr) = (f64s(&dqkv0), f64s(&dpre0), f64s(&datt0));
        r::attention_backward(&mut dqkv, &mut dpreatt, &mut dattr, &f64s(&dout), &f64s(&qkv), &attr, b, t, c, nh);
        println!("{variant:?} B {b} T {t} C {c} NH {nh}");
        check("attention_forward", "out", &ts.read(o), &out, TOL);
        check("attention_forward", "preatt", &ts.read(pre), &preatt, TOL);
        check("attention_forward", "att", &ts.read(att), &attr, TOL);
        check("attention_backward", "dqkv", &ts.read(dx), &dqkv, TOL);
        check("attention_backward", "dpreatt", &ts.read(dpre), &dpreatt, TOL);
        check("attention_backward", "datt", &ts.read(datt), &dattr, TOL);
    }
}

#[test]
fn elementwise_kernels_match_reference() {
    let g = gpu();
    let mut rng = Rng::fresh("elementwise");
    for (shared, n) in [(true, 1), (false, 63), (true, 4099), (false, 70_000)] {
        let x = rng.vec(n, 4.0);
        let y = rng.vec(n, 1.0);
        let dout = rng.vec(n, 1.0);
        let (d1, d2, dg) = (rng.vec(n, 1.0), rng.vec(n, 1.0), rng.vec(n, 1.0));
        let mut ts = Tensors::new(&g, shared);
        let (go, gx, gdx, gdy) = (ts.poisoned(n), ts.f32(&x), ts.f32(&dg), ts.f32(&dout));
        let (ro, ry, rd1, rd2) = (ts.poisoned(n), ts.f32(&y), ts.f32(&d1), ts.f32(&d2));
        let acc = ts.f32(&d1);
        ts.upload();
        run(&g, |pb| {
            pb.gelu_forward(ts.view(go), ts.view(gx), n).unwrap();
            pb.gelu_backward(ts.view(gdx), ts.view(gx), ts.view(gdy), n).unwrap();
            pb.residual_forward(ts.view(ro), ts.view(gx), ts.view(ry), n).unwrap();
            pb.residual_backward(ts.view(rd1), ts.view(rd2), ts.view(gdy), n).unwrap();
            pb.accumulate(ts.view(acc), ts.view(ry), n).unwrap();
        });
        let mut out = vec![0.0; n];
        r::gelu_forward(&mut out, &f64s(&x), n);
        check("gelu_forward", "out", &ts.read(go), &out, TOL);
        let mut dinp = f64s(&dg);
        r::gelu_backward(&mut dinp, &f64s(&x), &f64s(&dout), n);
        check("gelu_backward", "dinp", &ts.read(gdx), &dinp, TOL);
        let mut out = vec![0.0; n];
        r::residual_forward(&mut out, &f64s(&x), &f64s(&y), n);
        check("residual_forward", "out", &ts.read(ro), &out, TOL);
        let (mut a, mut b) = (f64s(&d1), f64s(&d2));
        r::residual_backward(&mut a, &mut b, &f64s(&dout), n);
        check("residual_backward", "dinp1", &ts.read(rd1), &a, TOL);
        check("residual_backward", "dinp2", &ts.read(rd2), &b, TOL);
        let mut grad = f64s(&d1);
        r::accumulate(&mut grad, &f64s(&y), n);
        check("accumulate", "grad", &ts.read(acc), &grad, TOL);
    }
}

#[test]
fn crossentropy_sums_counted_targets_and_ignores_padding() {
    let g = gpu();
    let mut rng = Rng::fresh("crossentropy");
    // V = 50,257 (GPT-2) and 65,535 (TextData's largest) cross the 65,535 loop iterations after
    // which Mesa's CPU adapters silently stop one invocation's loops: a kernel that walks a row in
    // one invocation fails there.
    let shapes = [(true, (10, 7)), (false, (1024, 65)), (true, (3, 2)), (false, (130, 10)), (false, (5, 50_257)), (true, (3, 65_535))];
    for (shared, (n, v)) in shapes {
        let logits = rng.vec(n * v, 4.0);
        let targets: Vec<u32> =
            (0..n).map(|i| if i % 3 == 1 { r::IGNORE_INDEX } else { rng.below(v as u32) }).collect();
        let dl0 = rng.vec(n * v, 1.0);
        let totals0 = [0.25f32, 2.0];
        let dloss = 0.5 + rng.uniform().abs();
        let mut ts = Tensors::new(&g, shared);
        let (lo, x, tg, dx, tot) = (ts.poisoned(n), ts.f32(&logits), ts.u32(&targets), ts.f32(&dl0), ts.f32(&totals0));
        ts.upload();
        run(&g, |pb| {
            pb.crossentropy_forward(ts.view(lo), ts.view(x), ts.view(tg), n, v).unwrap();
            pb.crossentropy_reduce(ts.view(tot), ts.view(lo), ts.view(tg), n).unwrap();
            pb.crossentropy_backward(ts.view(dx), ts.view(x), ts.view(tg), dloss, n, v).unwrap();
        });
        let mut losses = vec![0.0; n];
        let count = r::crossentropy_forward(&mut losses, &f64s(&logits), &targets, n, v);
        let mut dlogits = f64s(&dl0);
        r::crossentropy_backward(&mut dlogits, &f64s(&logits), &targets, dloss as f64, n, v);
        check("crossentropy_forward", "losses", &ts.read(lo), &losses, TOL);
        check("crossentropy_backward", "dlogits", &ts.read(dx), &dlogits, TOL);
        let sum: f64 = losses.iter().sum();
        let got = ts.read(tot);
        check("crossentropy_reduce", "loss sum", &got[..1], &[0.25 + sum], TOL);
        assert_eq!(got[1], 2.0 + count as f32, "count of counted targets");
        assert_eq!(count as usize, targets.iter().filter(|&&t| t != r::IGNORE_INDEX).count());
    }
}

/// Columns [v0, v0 + vc) of a row-major [n, v] matrix.
fn columns<T: Copy>(x: &[T], n: usize, v: usize, v0: usize, vc: usize) -> Vec<T> {
    (0..n).flat_map(|i| x[i * v + v0..i * v + v0 + vc].iter().copied()).collect()
}

/// The vocabulary-chunked cross-entropy (the lm_head's logits never whole): each chunk's logits
/// sit in a tensor of their own as the lm_head's matmul would write them, the chunks are folded
/// into the per-row state, finished, and each chunk's gradient is compared with its columns of
/// the unchunked reference. Chunks that do not divide V (the last one narrower), one chunk of V
/// and one wider than V; rows past one workgroup's worth; every third row ignored. The dlogits
/// chunks are poisoned with NaN, so a chunk kernel that accumulates instead of assigning, or
/// skips an element (an ignored row's), fails. dloss is recorded as 1 and rewritten with
/// `set_dims`, as the trainer does, through `crossentropy_chunk_backward_uniforms`.
#[test]
fn crossentropy_chunks_match_reference() {
    let g = gpu();
    let mut rng = Rng::fresh("crossentropy_chunks");
    let cases = [
        (true, (5, 65, 7)),
        (false, (130, 65, 16)),
        (true, (1, 65, 65)),
        (false, (3, 65, 100)),
        (true, (130, 1000, 256)),
        (false, (1, 1000, 256)),
        (false, (70, 1000, 256)),
    ];
    for (shared, (n, v, chunk)) in cases {
        // wide logits: chunk maxima differ by several units, so a merge that does not rescale
        // the running sum to the new max is off by far more than the tolerance
        let logits = rng.vec(n * v, 8.0);
        let targets: Vec<u32> = (0..n).map(|i| if i % 3 == 1 { r::IGNORE_INDEX } else { rng.below(v as u32) }).collect();
        let dloss = 0.5 + rng.uniform().abs();
        let chunks: Vec<(usize, usize)> = (0..v).step_by(chunk).map(|v0| (v0, chunk.min(v - v0))).collect();
        let mut ts = Tensors::new(&g, shared);
        let (lo, st, tg) = (ts.poisoned(n), ts.poisoned(4 * n), ts.u32(&targets));
        let xs: Vec<usize> = chunks.iter().map(|&(v0, vc)| ts.f32(&columns(&logits, n, v, v0, vc))).collect();
        let ds: Vec<usize> = chunks.iter().map(|&(_, vc)| ts.poisoned(n * vc)).collect();
        ts.upload();
        let mut pb = ProgramBuilder::new(&g);
        for (i, &(v0, vc)) in chunks.iter().enumerate() {
            pb.crossentropy_chunk_forward(ts.view(st), ts.view(xs[i]), ts.view(tg), v0, vc, n, i == 0).unwrap();
        }
        pb.crossentropy_chunk_finish(ts.view(lo), ts.view(st), ts.view(tg), n).unwrap();
        let mut backward = Vec::new();
        for (i, &(v0, vc)) in chunks.iter().enumerate() {
            backward.push(pb.crossentropy_chunk_backward(ts.view(ds[i]), ts.view(xs[i]), ts.view(st), ts.view(tg), 1.0, v0, vc, n).unwrap());
        }
        let prog = pb.finish("test");
        for (&i, &(v0, vc)) in backward.iter().zip(&chunks) {
            prog.set_dims(i, &crossentropy_chunk_backward_uniforms(dloss, n, v0, vc));
        }
        prog.run();

        let mut losses = vec![0.0; n];
        r::crossentropy_forward(&mut losses, &f64s(&logits), &targets, n, v);
        let mut dlogits = vec![0.0; n * v];
        r::crossentropy_backward(&mut dlogits, &f64s(&logits), &targets, dloss as f64, n, v);
        let ignored: Vec<usize> = (0..n).filter(|&i| targets[i] == r::IGNORE_INDEX).collect();
        let got = ts.read(lo);
        check("crossentropy_chunk_finish", "losses", &got, &losses, TOL);
        assert!(ignored.iter().all(|&i| got[i] == 0.0), "ignored rows have loss 0");
        for (k, &(v0, vc)) in chunks.iter().enumerate() {
            let got = ts.read(ds[k]);
            check("crossentropy_chunk_backward", &format!("[{v0},{})", v0 + vc), &got, &columns(&dlogits, n, v, v0, vc), TOL);
            assert!(ignored.iter().all(|&i| got[i * vc..(i + 1) * vc].iter().all(|&x| x == 0.0)), "ignored rows get 0");
        }
    }
}

/// An f16 tensor (activation of the f16 instantiation) in a buffer of its own, behind a NaN gap
/// of `gap` f16 elements (even, so the buffer is whole words).
fn f16_tensor(g: &gradscope::gpu::Gpu, v: &[f32], gap: usize) -> View {
    assert!(gap.is_multiple_of(2));
    let mut h: Vec<u16> = vec![half::f16::NAN.to_bits(); gap];
    h.extend(v.iter().map(|&x| half::f16::from_f32(x).to_bits()));
    if h.len() % 2 == 1 {
        h.push(0);
    }
    let buf = g.storage("f16 test tensor", Category::Activations, h.len() / 2);
    g.upload(&buf, 0, &h);
    View::at(&buf, gap)
}

fn read_f16(g: &gradscope::gpu::Gpu, v: &View, len: usize) -> Vec<f32> {
    g.read_f16(&v.buf, v.offset, len).expect("readback")
}

/// Mixed precision: the chunk kernels' f16 instantiation (logits, losses and dlogits f16; the
/// state stays f32) against the reference on the f16 logits, next to the unchunked f16 kernels
/// on the same logits. Both only round their outputs to f16 (half an ulp, 4.9e-4 relative).
#[test]
fn crossentropy_chunks_in_f16_match_reference() {
    const F16_TOL: f64 = 1e-3;
    let g = gpu();
    common::require_f16(&g);
    let mut rng = Rng::fresh("crossentropy_chunks_f16");
    for (gap, (n, v, chunk)) in [(0, (5, 65, 16)), (6, (130, 1000, 256)), (2, (1, 65, 100))] {
        let logits: Vec<f32> = rng.vec(n * v, 8.0).iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
        let targets: Vec<u32> = (0..n).map(|i| if i % 3 == 1 { r::IGNORE_INDEX } else { rng.below(v as u32) }).collect();
        let dloss = 0.5 + rng.uniform().abs();
        let chunks: Vec<(usize, usize)> = (0..v).step_by(chunk).map(|v0| (v0, chunk.min(v - v0))).collect();
        let mut ts = Tensors::new(&g, gap > 0);
        let (st, tg) = (ts.poisoned(4 * n), ts.u32(&targets));
        ts.upload();
        let lo = f16_tensor(&g, &vec![f32::NAN; n], gap);
        let xs: Vec<View> = chunks.iter().map(|&(v0, vc)| f16_tensor(&g, &columns(&logits, n, v, v0, vc), gap)).collect();
        let ds: Vec<View> = chunks.iter().map(|&(_, vc)| f16_tensor(&g, &vec![f32::NAN; n * vc], gap)).collect();
        // the unchunked kernels on the whole logits
        let whole = f16_tensor(&g, &logits, gap);
        let (whole_lo, whole_d) = (f16_tensor(&g, &vec![f32::NAN; n], gap), f16_tensor(&g, &vec![0.0; n * v], gap));
        let mut pb = ProgramBuilder::with_precision(&g, Precision::F16).unwrap();
        for (i, &(v0, vc)) in chunks.iter().enumerate() {
            pb.crossentropy_chunk_forward(ts.view(st), &xs[i], ts.view(tg), v0, vc, n, i == 0).unwrap();
        }
        pb.crossentropy_chunk_finish(&lo, ts.view(st), ts.view(tg), n).unwrap();
        for (i, &(v0, vc)) in chunks.iter().enumerate() {
            pb.crossentropy_chunk_backward(&ds[i], &xs[i], ts.view(st), ts.view(tg), dloss, v0, vc, n).unwrap();
        }
        pb.crossentropy_forward(&whole_lo, &whole, ts.view(tg), n, v).unwrap();
        pb.crossentropy_backward(&whole_d, &whole, ts.view(tg), dloss, n, v).unwrap();
        pb.finish("test").run();

        let mut losses = vec![0.0; n];
        r::crossentropy_forward(&mut losses, &f64s(&logits), &targets, n, v);
        let mut dlogits = vec![0.0; n * v];
        r::crossentropy_backward(&mut dlogits, &f64s(&logits), &targets, dloss as f64, n, v);
        check("crossentropy_forward f16", "losses", &read_f16(&g, &whole_lo, n), &losses, F16_TOL);
        check("crossentropy_backward f16", "dlogits", &read_f16(&g, &whole_d, n * v), &dlogits, F16_TOL);
        check("crossentropy_chunk_finish f16", "losses", &read_f16(&g, &lo, n), &losses, F16_TOL);
        // the chunks side by side, judged as one [N,V] gradient: a narrow chunk of small
        // probabilities alone has a scale at which f16's spacing (6e-8 below 6e-5) is no longer small
        let mut got = vec![f32::NAN; n * v];
        for (k, &(v0, vc)) in chunks.iter().enumerate() {
            let d = read_f16(&g, &ds[k], n * vc);
            for i in 0..n {
                got[i * v + v0..i * v + v0 + vc].copy_from_slice(&d[i * vc..(i + 1) * vc]);
            }
        }
        check("crossentropy_chunk_backward f16", "dlogits", &got, &dlogits, F16_TOL);
    }
}

#[test]
fn grad_norm_clip_scale_and_adamw_match_reference() {
    let g = gpu();
    let mut rng = Rng::fresh("optimizer");
    for (shared, n) in [(true, 1), (false, 1000), (true, 413_312), (false, 70_001)] {
        let grads = rng.vec(n, 1.0);
        let params = rng.vec(n, 1.0);
        let m0 = rng.vec(n, 0.1);
        let v0: Vec<f32> = rng.vec(n, 0.01).iter().map(|x| x.abs()).collect();
        let mut ts = Tensors::new(&g, shared);
        let (gr, norm, parts) = (ts.f32(&grads), ts.poisoned(2), ts.poisoned(256));
        let (g2, g3, totals) = (ts.f32(&grads), ts.f32(&grads), ts.f32(&[0.0, 7.0]));
        let (p, m, v, ga) = (ts.f32(&params), ts.f32(&m0), ts.f32(&v0), ts.f32(&grads));
        // window figures [loss, norm, update flag]: finite loss and norm (step applies); non-finite
        // norm (step skipped); finite figures but one moment that makes the update overflow
        // (m / (1 - b1^3) past f32's range: adamw_check flags it, the step is skipped)
        let ok = ts.f32(&[1.5, 2.0, 0.0]);
        let bad = ts.f32(&[1.5, f32::INFINITY, 0.0]);
        let (p2, m2, v2) = (ts.f32(&params), ts.f32(&m0), ts.f32(&v0));
        let mut m_over = m0.clone();
        m_over[rng.below(n as u32) as usize] = 3e38;
        let (fig3, p3, m3, v3) = (ts.f32(&[1.5, 2.0, 0.0]), ts.f32(&params), ts.f32(&m_over), ts.f32(&v0));
        ts.upload();
        let max_norm = 0.5;
        let s = 0.37f32;
        let hp = AdamW { lr: 3e-3, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
        run(&g, |pb| {
            pb.grad_norm(ts.view(norm), ts.view(parts), ts.view(gr), n).unwrap();
            pb.clip_by_norm(ts.view(gr), ts.view(norm), max_norm, n).unwrap();
            pb.scale(ts.view(g2), s, n).unwrap();
            pb.scale_by_inverse_count(ts.view(g3), ts.view(totals), n).unwrap();
            let (ok, bad, fig3) = (ts.view(ok), ts.view(bad), ts.view(fig3));
            pb.adamw_check(ts.view(p), ts.view(ga), ts.view(m), ts.view(v), ok, &ok.add(1), &ok.add(2), n, &hp, 3).unwrap();
            pb.adamw(ts.view(p), ts.view(ga), ts.view(m), ts.view(v), ok, &ok.add(1), &ok.add(2), n, &hp, 3).unwrap();
            pb.adamw(ts.view(p2), ts.view(ga), ts.view(m2), ts.view(v2), bad, &bad.add(1), &bad.add(2), n, &hp, 3).unwrap();
            let (p3, m3, v3) = (ts.view(p3), ts.view(m3), ts.view(v3));
            pb.adamw_check(p3, ts.view(ga), m3, v3, fig3, &fig3.add(1), &fig3.add(2), n, &hp, 3).unwrap();
            pb.adamw(p3, ts.view(ga), m3, v3, fig3, &fig3.add(1), &fig3.add(2), n, &hp, 3).unwrap();
        });
        let want_norm = r::grad_norm(&f64s(&grads), n);
        check("grad_norm", "norm", &ts.read(norm)[..1], &[want_norm], TOL);
        let mut clipped = f64s(&grads);
        r::scale(&mut clipped, (max_norm as f64 / (want_norm + 1e-6)).min(1.0), n);
        check("clip_by_norm", "grads", &ts.read(gr), &clipped, TOL);
        let mut scaled = f64s(&grads);
        r::scale(&mut scaled, s as f64, n);
        check("scale", "x", &ts.read(g2), &scaled, TOL);
        let mut inv = f64s(&grads);
        r::scale(&mut inv, 1.0 / 7.0, n);
        check("scale_by_inverse_count", "x", &ts.read(g3), &inv, TOL);
        let (mut pr, mut mr, mut vr) = (f64s(&params), f64s(&m0), f64s(&v0));
        r::adamw(&mut pr, &f64s(&grads), &mut mr, &mut vr, n, 3e-3, 0.9, 0.99, 1e-8, 0.1, 3);
        check("adamw", "params", &ts.read(p), &pr, TOL);
        // m = b1 m0 + (1 - b1) g' and v = b2 v0 + (1 - b2) g'^2 can cancel (m) to near zero
        let terms = |b: f64, x0: &[f32], p: i32| -> Vec<f64> {
            x0.iter().zip(&grads).map(|(x, g)| b * (*x as f64).abs() + (1.0 - b) * (*g as f64).abs().powi(p)).collect()
        };
        check_terms("adamw", "m", &ts.read(m), &mr, &terms(0.9, &m0, 1), TOL);
        check_terms("adamw", "v", &ts.read(v), &vr, &terms(0.99, &v0, 2), TOL);
        assert_eq!(ts.read(p2), params, "a non-finite norm skips the step: weights untouched");
        assert_eq!((ts.read(m2), ts.read(v2)), (m0.clone(), v0.clone()), "and moments untouched");
        assert_eq!(ts.read(ok)[2], 0.0, "finite updates leave the update flag clear");
        assert_eq!(ts.read(fig3)[2], 1.0, "an overflowing update sets the update flag");
        assert_eq!(ts.read(p3), params, "an overflowing update skips the step: weights untouched");
        assert_eq!((ts.read(m3), ts.read(v3)), (m_over, v0.clone()), "and moments untouched");
    }
}

/// On CPU adapters (Mesa stops an invocation's loops after 65,535 iterations, silently) the
/// launchers refuse shapes whose kernels would loop past that in one invocation, and take the
/// largest that fit (checked against the reference: the count is the kernel's real one).
#[test]
fn loops_past_the_cpu_adapter_cap_are_refused() {
    // the CPU family's kernels, whatever GRADSCOPE_KERNELS says (the GPU family's LayerNorm
    // strides a row over a workgroup and loops 3 C / 64 times)
    let g = gpu().with_kernels(gradscope::gpu::KernelSet::Cpu);
    if g.kind != gradscope::gpu::DeviceKind::Cpu {
        println!("skipped: the adapter is not a CPU adapter (no loop cap)");
        return;
    }
    let mut rng = Rng::fresh("loop cap");
    let refused = |r: Result<(), gradscope::gpu::ProgramError>, kernel: &str| {
        let e = r.expect_err(kernel).to_string();
        assert!(e.contains(kernel) && e.contains("65535"), "{e}");
    };
    let mut ts = Tensors::new(&g, false);
    let big = ts.poisoned(3 * 512 * 130);
    ts.upload();
    let v = ts.view(big);
    let mut pb = ProgramBuilder::new(&g);
    // head size 65 (not vec4): about T (2 hs + 4) = 68,676 at T = 512
    refused(pb.attention_forward_with(MatmulVariant::Tiled, v, v, v, v, 1, 512, 130, 2), "attention_forward");
    refused(pb.attention_backward_with(MatmulVariant::Tiled, v, v, v, v, v, v, 1, 512, 130, 2), "attention_backward");
    // three passes over C: at C = 21,845 lavapipe cut them short (inf), at 21,844 they complete
    refused(pb.layernorm_forward(v, v, v, v, v, v, 1, 21_845), "layernorm_forward");
    let c = 21_844;
    // the largest C that fits gives the reference's numbers
    let (n, inp, weight, bias) = (2, rng.vec(2 * c, 2.0), rng.vec(c, 1.0), rng.vec(c, 1.0));
    let mut ts = Tensors::new(&g, true);
    let (o, mu, rs, x, w, b) = (ts.poisoned(n * c), ts.poisoned(n), ts.poisoned(n), ts.f32(&inp), ts.f32(&weight), ts.f32(&bias));
    ts.upload();
    run(&g, |pb| pb.layernorm_forward(ts.view(o), ts.view(mu), ts.view(rs), ts.view(x), ts.view(w), ts.view(b), n, c).unwrap());
    let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    r::layernorm_forward(&mut out, &mut mean, &mut rstd, &f64s(&inp), &f64s(&weight), &f64s(&bias), n, c);
    check("layernorm_forward", "out", &ts.read(o), &out, TOL);
}

#[test]
fn fill_writes_exactly_its_range() {
    let g = gpu();
    let data: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let mut ts = Tensors::new(&g, false);
    let x = ts.f32(&data);
    ts.upload();
    let view = ts.view(x).add(8);
    run(&g, |pb| pb.fill(&view, -1.5, 50).unwrap());
    let got = ts.read(x);
    for (i, v) in got.iter().enumerate() {
        let want = if (8..58).contains(&i) { -1.5 } else { i as f32 };
        assert_eq!(*v, want, "element {i}");
    }
    let _ = View::of(&ts.buffer(x));
}

/// The MLP's GELU fused into its matmuls (matmul_cpu.wgsl's GELU flags on CPU adapters, separate
/// passes otherwise) against the reference's matmul + GELU: the forward's pre- and post-GELU
/// outputs, and the backward of a matmul reading GELU(pre) through GELU' into dpre (+=), with
/// and without the transposed weight (`transpose`) the CPU kernels take the input gradient from.
#[test]
fn fused_gelu_matmuls_match_reference() {
    let g = gpu();
    let mut rng = Rng::fresh("matmul_gelu");
    // (M, K, N, bias): the GPT's c_fc / c_proj shapes at B*T 37, K not a multiple of 4 (unfused)
    let shapes = [(37, 32, 128, true), (16, 128, 32, false), (9, 6, 10, true)];
    for variant in [MatmulVariant::RegisterBlocked, MatmulVariant::Tiled, MatmulVariant::GpuTiled] {
        for (i, &(m, k, n, bias)) in shapes.iter().enumerate() {
            for transposed in [false, true] {
                // forward: pre [M,N] = x [M,K] . w1 [N,K]^T + b1, post = GELU(pre)
                let x = rng.vec(m * k, 1.0);
                let w1 = rng.vec(n * k, 1.0);
                let b1 = rng.vec(n, 1.0);
                // backward of y [M,K] = post [M,N] . w2 [K,N]^T: dpre [M,N] += GELU'(pre) (dy . w2)
                let w2 = rng.vec(k * n, 1.0);
                let dy = rng.vec(m * k, 1.0);
                let (dpre0, dw0, db0) = (rng.vec(m * n, 1.0), rng.vec(k * n, 1.0), rng.vec(k, 1.0));
                let mut ts = Tensors::new(&g, i % 2 == 0);
                let (pre, post, xv, w1v, b1v) = (ts.poisoned(m * n), ts.poisoned(m * n), ts.f32(&x), ts.f32(&w1), ts.f32(&b1));
                let (w2v, dyv, dpre, dw, db) = (ts.f32(&w2), ts.f32(&dy), ts.f32(&dpre0), ts.f32(&dw0), ts.f32(&db0));
                let dpost = ts.f32(&vec![0.0; m * n]);
                let w2t = ts.poisoned(k * n);
                ts.upload();
                let can_transpose = n % 4 == 0;
                run(&g, |pb| {
                    let bv = bias.then(|| ts.view(b1v));
                    pb.matmul_forward_gelu_with(variant, ts.view(pre), ts.view(post), ts.view(xv), ts.view(w1v), bv, m, k, n)
                        .unwrap();
                    let wt = (transposed && can_transpose).then(|| ts.view(w2t));
                    if let Some(wt) = wt {
                        pb.transpose(wt, ts.view(w2v), k, n).unwrap();
                    }
                    let dbv = bias.then(|| ts.view(db));
                    pb.matmul_backward_gelu_with(
                        variant, ts.view(dpre), ts.view(dpost), ts.view(pre), wt, ts.view(dw), dbv, ts.view(dyv),
                        ts.view(post), ts.view(w2v), m, n, k,
                    )
                    .unwrap();
                });
                let b1r = f64s(&b1);
                let (mut pre_r, mut post_r) = (vec![0.0; m * n], vec![0.0; m * n]);
                r::matmul_forward(&mut pre_r, &f64s(&x), &f64s(&w1), bias.then_some(&b1r[..]), m, k, n);
                r::gelu_forward(&mut post_r, &pre_r, m * n);
                let (mut dpost_r, mut dw_r, mut db_r) = (vec![0.0; m * n], f64s(&dw0), f64s(&db0));
                r::matmul_backward(&mut dpost_r, &mut dw_r, bias.then_some(&mut db_r[..]), &f64s(&dy), &post_r, &f64s(&w2), m, n, k);
                let mut dpre_r = f64s(&dpre0);
                r::gelu_backward(&mut dpre_r, &pre_r, &dpost_r, m * n);
                let name = format!("matmul+gelu {variant:?} {m}x{k}x{n} transposed {transposed}");
                check(&name, "pre", &ts.read(pre), &pre_r, TOL);
                check(&name, "post", &ts.read(post), &post_r, TOL);
                check(&name, "dpre", &ts.read(dpre), &dpre_r, TOL);
                check(&name, "dweight", &ts.read(dw), &dw_r, TOL);
                if bias {
                    check(&name, "dbias", &ts.read(db), &db_r, TOL);
                }
                if transposed && can_transpose {
                    let t: Vec<f32> = (0..n * k).map(|j| w2[(j % k) * n + j / k]).collect();
                    assert_eq!(ts.read(w2t), t, "{name}: the transposed weight");
                }
            }
        }
    }
}

/// The input gradient from the transposed weight (`transpose` + `matmul_backward_t`: the
/// forward kernel in accumulate mode on CPU adapters) against the reference, accumulating into
/// random initial gradients; shapes of the GPT's four block matmuls, odd M, N not a multiple of 8.
#[test]
fn transposed_input_gradient_matches_reference() {
    let g = gpu();
    let mut rng = Rng::fresh("matmul_t");
    let shapes = [(64, 32, 96, true), (37, 128, 32, false), (5, 32, 128, true), (70, 12, 20, true), (3, 8, 4, false)];
    for variant in [MatmulVariant::RegisterBlocked, MatmulVariant::Tiled, MatmulVariant::GpuTiled] {
        for (i, &(m, k, n, bias)) in shapes.iter().enumerate() {
            let inp = rng.vec(m * k, 1.0);
            let weight = rng.vec(n * k, 1.0);
            let dout = rng.vec(m * n, 1.0);
            let (dinp0, dw0, db0) = (rng.vec(m * k, 1.0), rng.vec(n * k, 1.0), rng.vec(n, 1.0));
            let mut ts = Tensors::new(&g, i % 2 == 1);
            let (x, w, dy, wt) = (ts.f32(&inp), ts.f32(&weight), ts.f32(&dout), ts.poisoned(n * k));
            let (dx, dw, db) = (ts.f32(&dinp0), ts.f32(&dw0), ts.f32(&db0));
            ts.upload();
            run(&g, |pb| {
                pb.transpose(ts.view(wt), ts.view(w), n, k).unwrap();
                let dbv = bias.then(|| ts.view(db));
                pb.matmul_backward_t_with(variant, ts.view(dx), Some(ts.view(wt)), ts.view(dw), dbv, ts.view(dy), ts.view(x), ts.view(w), m, k, n)
                    .unwrap();
            });
            let (mut dinp, mut dweight, mut dbias) = (f64s(&dinp0), f64s(&dw0), f64s(&db0));
            r::matmul_backward(&mut dinp, &mut dweight, bias.then_some(&mut dbias[..]), &f64s(&dout), &f64s(&inp), &f64s(&weight), m, k, n);
            let name = format!("matmul_t {variant:?} {m}x{k}x{n}");
            let t: Vec<f32> = (0..n * k).map(|j| weight[(j % n) * k + j / n]).collect();
            assert_eq!(ts.read(wt), t, "{name}: the transposed weight");
            check(&name, "dinp", &ts.read(dx), &dinp, TOL);
            check(&name, "dweight", &ts.read(dw), &dweight, TOL);
            if bias {
                check(&name, "dbias", &ts.read(db), &dbias, TOL);
            }
        }
    }
}
