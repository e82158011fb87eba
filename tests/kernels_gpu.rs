//! The GPU family's kernels that have no CPU-family twin (flash attention, workgroup-per-row
//! LayerNorm) against the CPU reference (run in f64) on fresh random inputs, on whatever adapter
//! the tests get (lavapipe here: it has workgroup memory, barriers and subgroups). Shapes include
//! edge tiles: T not a multiple of the kernels' tiles (64, 32, 24 rows), T = 1, C not a multiple
//! of 4 where the kernel allows it. As in tests/kernels.rs, outputs are poisoned with NaN and
//! gradients start from random values, so an unwritten element or an overwrite instead of `+=`
//! fails.

mod common;

use common::{Rng, Tensors, check, f16_buffer, f64s, gpu, run};
use gradscope::gpu::kernels::MatmulVariant;
use gradscope::gpu::kernels_attention::uses_flash_attention;
use gradscope::gpu::kernels_rows::{RowReduce, column_partials_len};
use gradscope::gpu::{Category, Gpu, Precision, ProgramBuilder, View};
use gradscope::reference::layers as r;

const TOL: f64 = 1e-4;

/// The reference's attention with each row's log-sum-exp of its scaled scores (what the flash
/// forward keeps instead of the T x T matrices): (out, lse, att).
fn reference_attention(qkv: &[f64], b: usize, t: usize, c: usize, nh: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let tt = b * nh * t * t;
    let (mut out, mut preatt, mut att) = (vec![0.0; b * t * c], vec![0.0; tt], vec![0.0; tt]);
    r::attention_forward(&mut out, &mut preatt, &mut att, qkv, b, t, c, nh);
    let lse = (0..b * nh * t)
        .map(|row| {
            let q = row % t;
            let s = &preatt[row * t..row * t + q + 1];
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
        })
        .collect();
    (out, lse, att)
}

/// The shapes of the flash attention tests: (shared, (B, T, C, NH)). Head sizes 4, 16, 32 and 64
/// (the configurations use 32 and 64); T = 1, T below one tile, and T = 70, 130 and 200, which
/// leave partial query blocks (64), key tiles (32) and query tiles of the key pass (24).
const FLASH_CASES: [(bool, (usize, usize, usize, usize)); 6] =
    [(true, (2, 5, 12, 3)), (false, (1, 70, 64, 2)), (true, (1, 1, 16, 1)), (false, (2, 130, 48, 3)), (true, (1, 200, 128, 2)), (false, (3, 33, 64, 1))];

#[test]
fn flash_attention_matches_reference() {
    let g = gpu();
    let mut rng = Rng::fresh("flash attention");
    for (shared, (b, t, c, nh)) in FLASH_CASES {
        assert!(uses_flash_attention(MatmulVariant::GpuTiled, c, nh));
        let qkv = rng.vec(b * t * 3 * c, 1.5);
        let dout = rng.vec(b * t * c, 1.0);
        let dqkv0 = rng.vec(b * t * 3 * c, 1.0);
        let rows = b * nh * t;
        let mut ts = Tensors::new(&g, shared);
        let (o, lse, x) = (ts.poisoned(b * t * c), ts.poisoned(rows), ts.f32(&qkv));
        let (dx, dsum, dy) = (ts.f32(&dqkv0), ts.poisoned(rows), ts.f32(&dout));
        ts.upload();
        run(&g, |pb| {
            pb.flash_attention_forward(ts.view(o), ts.view(lse), ts.view(x), None, b, t, c, nh).unwrap();
            pb.flash_attention_backward(ts.view(dx), ts.view(dsum), ts.view(dy), ts.view(x), ts.view(o), ts.view(lse), None, b, t, c, nh)
                .unwrap();
        });
        let (out, lse_ref, att) = reference_attention(&f64s(&qkv), b, t, c, nh);
        let tt = b * nh * t * t;
        let (mut dqkv, mut dpre, mut datt) = (f64s(&dqkv0), vec![0.0; tt], vec![0.0; tt]);
        r::attention_backward(&mut dqkv, &mut dpre, &mut datt, &f64s(&dout), &f64s(&qkv), &att, b, t, c, nh);
        // D = dout . out per (b, h, t)
        let hs = c / nh;
        let d: Vec<f64> = (0..rows)
            .map(|row| {
                let (bb, h, q) = (row / (nh * t), (row / t) % nh, row % t);
                let at = (bb * t + q) * c + h * hs;
                (0..hs).map(|i| dout[at + i] as f64 * out[at + i]).sum()
            })
            .collect();
        println!("B {b} T {t} C {c} NH {nh}");
        check("flash_attention_forward", "out", &ts.read(o), &out, TOL);
        check("flash_attention_forward", "lse", &ts.read(lse), &lse_ref, TOL);
        check("flash_attention_backward", "dqkv", &ts.read(dx), &dqkv, TOL);
        check("flash_attention_backward", "D", &ts.read(dsum), &d, TOL);
    }
}

/// The f16 instantiation (`alias act = f16;`): activations in f16, lse and D in f32, arithmetic
/// in f32. Compared with the reference run on the f16-rounded inputs, to f16 output rounding.
#[test]
fn flash_attention_f16_matches_reference() {
    let g = gpu();
    common::require_f16(&g);
    let mut rng = Rng::fresh("flash attention f16");
    for (b, t, c, nh) in [(2, 70, 64, 2), (1, 37, 48, 3)] {
        let rows = b * nh * t;
        let (x, qkv) = f16_buffer(&g, &rng.vec(b * t * 3 * c, 1.5));
        let (dy, dout) = f16_buffer(&g, &rng.vec(b * t * c, 1.0));
        let (dx, dqkv0) = f16_buffer(&g, &rng.vec(b * t * 3 * c, 1.0));
        let (o, _) = f16_buffer(&g, &vec![f32::NAN; b * t * c]);
        let lse = View::of(&g.storage("lse", Category::Activations, rows));
        let dsum = View::of(&g.storage("dsum", Category::Activations, rows));
        let mut pb = ProgramBuilder::with_precision(&g, Precision::F16).unwrap();
        pb.flash_attention_forward(&o, &lse, &x, None, b, t, c, nh).unwrap();
        pb.flash_attention_backward(&dx, &dsum, &dy, &x, &o, &lse, None, b, t, c, nh).unwrap();
        pb.finish("test").run();
        let (out, lse_ref, att) = reference_attention(&qkv, b, t, c, nh);
        let tt = b * nh * t * t;
        let (mut dqkv, mut dpre, mut datt) = (dqkv0.clone(), vec![0.0; tt], vec![0.0; tt]);
        r::attention_backward(&mut dqkv, &mut dpre, &mut datt, &dout, &qkv, &att, b, t, c, nh);
        println!("f16 B {b} T {t} C {c} NH {nh}");
        check("flash_attention_forward f16", "out", &g.read_f16(&o.buf, 0, b * t * c).unwrap(), &out, 5e-3);
        check("flash_attention_forward f16", "lse", &g.read::<f32>(&lse.buf, 0, rows).unwrap(), &lse_ref, 5e-3);
        check("flash_attention_backward f16", "dqkv", &g.read_f16(&dx.buf, 0, b * t * 3 * c).unwrap(), &dqkv, 1e-2);
    }
}

#[test]
fn flash_attention_refuses_head_sizes_it_cannot_hold() {
    let g = gpu();
    let v = View::of(&g.storage("x", Category::Activations, 4096));
    let mut pb = ProgramBuilder::new(&g);
    for (c, nh) in [(130, 2), (12, 4), (256, 2)] {
        let e = pb.flash_attention_forward(&v, &v, &v, None, 1, 4, c, nh).unwrap_err().to_string();
        assert!(e.contains("flash_attention_forward") && e.contains("head size"), "{e}");
        let e = pb.flash_attention_backward(&v, &v, &v, &v, &v, &v, None, 1, 4, c, nh).unwrap_err().to_string();
        assert!(e.contains("flash_attention_backward") && e.contains("head size"), "{e}");
        assert!(!uses_flash_attention(MatmulVariant::GpuTiled, c, nh));
    }
    assert!(!uses_flash_attention(MatmulVariant::RegisterBlocked, 64, 2));
}

/// A small GPT whose attention takes the flash kernels: 2 layers, 2 heads of 32, T 40 (a partial
/// query block, key tile and key-pass query tile).
fn small_gpt(b: usize, k: usize, checkpointing: bool, precision: Precision) -> gradscope::train::TrainConfig {
    gradscope::train::TrainConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 64,
        block_size: 40,
        micro_batch: b,
        accum_steps: k,
        checkpoint_activations: checkpointing,
        precision,
        padded: true,
        max_steps: 4,
        eval_windows: 2,
        eval_every: 0,
        out_dir: std::env::temp_dir().join("gradscope-test-runs").display().to_string(),
        ..gradscope::train::TrainConfig::default()
    }
}

/// The device with the GPU kernel family (`KernelSet::Gpu`) whatever the adapter: on lavapipe
/// the GPU family's kernels run instead of the CPU family's.
fn gpu_family() -> Gpu {
    gpu().with_kernels(gradscope::gpu::KernelSet::Gpu)
}

/// One window's gradient of the GPT with the GPU family (flash attention; no T x T matrix in its
/// activations) equals the CPU reference's (f64) and the CPU family's on the same samples.
#[test]
fn gpt_gradient_with_the_gpu_family_matches_reference_and_cpu_family() {
    use gradscope::reference::gpt::gpt_forward_backward;
    let g = gpu_family();
    for ck in [false, true] {
        let cfg = small_gpt(3, 2, ck, Precision::F32);
        let mut t = gradscope::train::Trainer::new(&g, cfg.clone()).unwrap();
        let gpt = t.gpt().unwrap();
        let gc = gpt.gcfg;
        let mut sampler = gpt.sampler.clone();
        let samples = sampler.window(&gpt.data.train, cfg.effective());
        let params: Vec<f64> = t.model.slabs().read_params().unwrap().iter().map(|&x| x as f64).collect();
        t.accumulate_window().unwrap();
        let got = t.window_gradient().unwrap();
        let mut want = vec![0.0f64; params.len()];
        let mut count = 0u32;
        for s in &samples {
            count += gpt_forward_backward(&gc, &params, &s.inputs, &s.targets, 1, cfg.block_size, &mut want, 1.0).1;
        }
        want.iter_mut().for_each(|x| *x /= count as f64);
        println!("checkpointing {ck}: GPU family vs reference");
        check("gpt window gradient (GPU family)", "grads", &got, &want, 1e-4);
        // the CPU family on the same adapter and samples
        let cpu = gpu();
        let cpu_grad = gradscope::train::verify::first_window_gradient(&cpu, &cfg).unwrap();
        let d = gradscope::train::verify::gradient_rel_diff(&got, &cpu_grad);
        println!("checkpointing {ck}: GPU family vs CPU family max rel diff {d:.2e}");
        assert!(d < 1e-4, "GPU and CPU kernel families differ by {d:.3e}");
    }
}

/// The row reductions this adapter can run: the workgroup tree always, subgroup sums where the
/// device has SUBGROUP (lavapipe does, with subgroups of 8).
fn reductions(g: &Gpu) -> Vec<RowReduce> {
    if g.has_subgroups() {
        vec![RowReduce::Workgroup, RowReduce::Subgroup]
    } else {
        println!("skipped: subgroups missing on {} (the workgroup tree runs)", g.summary.name);
        vec![RowReduce::Workgroup]
    }
}

/// A poisoned partials buffer for two-stage column sums over `n` rows of at most `columns`
/// columns (None: single-stage).
fn partials(g: &Gpu, two_stage: bool, n: usize, columns: usize) -> Option<(View, usize)> {
    two_stage.then(|| {
        let len = column_partials_len(n, columns);
        let buf = g.storage("test column-sum partials", Category::Scratch, len);
        g.upload(&buf, 0, &vec![f32::NAN; len]);
        (View::of(&buf), len)
    })
}

/// LayerNorm with one workgroup per row (64 invocations) and the parameter gradients as column
/// sums, with each row reduction, in one stage and in two (chunks of 256 rows, then their sums):
/// C below, at and past the workgroup and not a multiple of 4 or of the 32-column blocks; N of 1,
/// N not a multiple of the 8 row lanes, and N past one, two and four chunks with a partial last.
#[test]
fn layernorm_rows_match_reference() {
    let g = gpu();
    let mut rng = Rng::fresh("layernorm rows");
    for (reduce, two_stage) in reductions(&g).into_iter().flat_map(|r| [(r, false), (r, true)]) {
        let shapes = [(true, (7, 12)), (false, (130, 128)), (true, (1, 5)), (false, (64, 33)), (true, (19, 200)), (false, (300, 768)), (true, (1100, 40))];
        for (shared, (n, c)) in shapes {
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
            let part = partials(&g, two_stage, n, 2 * c);
            run(&g, |pb| {
                if let Some((v, len)) = &part {
                    pb.set_column_partials(v.clone(), *len);
                }
                pb.layernorm_forward_rows(reduce, ts.view(o), ts.view(mu), ts.view(rs), ts.view(x), ts.view(w), ts.view(bb), n, c).unwrap();
                pb.layernorm_backward_rows(
                    reduce, ts.view(dx), ts.view(dw), ts.view(db), ts.view(dy), ts.view(x), ts.view(w), ts.view(mu), ts.view(rs), n, c,
                )
                .unwrap();
            });
            let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            r::layernorm_forward(&mut out, &mut mean, &mut rstd, &f64s(&inp), &f64s(&weight), &f64s(&bias), n, c);
            let (mut dinp, mut dweight, mut dbias) = (f64s(&dinp0), f64s(&dw0), f64s(&db0));
            r::layernorm_backward(&mut dinp, &mut dweight, &mut dbias, &f64s(&dout), &f64s(&inp), &f64s(&weight), &mean, &rstd, n, c);
            println!("{reduce:?} N {n} C {c}, two-stage column sums {two_stage}");
            check("layernorm_forward_rows", "out", &ts.read(o), &out, TOL);
            check("layernorm_forward_rows", "mean", &ts.read(mu), &mean, TOL);
            check("layernorm_forward_rows", "rstd", &ts.read(rs), &rstd, TOL);
            check("layernorm_backward_input_rows", "dinp", &ts.read(dx), &dinp, TOL);
            check("layernorm_backward_params_cols", "dweight", &ts.read(dw), &dweight, TOL);
            check("layernorm_backward_params_cols", "dbias", &ts.read(db), &dbias, TOL);
        }
    }
}

/// A matmul's bias gradient as column sums over 8 row lanes, in one stage and in two:
/// dbias [C] += sum_rows dout [N,C].
#[test]
fn bias_gradient_columns_match_reference() {
    let g = gpu();
    let mut rng = Rng::fresh("bias columns");
    let shapes = [(true, (37, 70)), (false, (1, 5)), (true, (1000, 33)), (false, (64, 384)), (true, (2049, 100)), (false, (256, 64))];
    for (two_stage, (shared, (n, c))) in [false, true].into_iter().flat_map(|t| shapes.map(|s| (t, s))) {
        let dout = rng.vec(n * c, 1.0);
        let db0 = rng.vec(c, 1.0);
        let mut ts = Tensors::new(&g, shared);
        let (db, dy) = (ts.f32(&db0), ts.f32(&dout));
        ts.upload();
        let part = partials(&g, two_stage, n, c);
        run(&g, |pb| {
            if let Some((v, len)) = &part {
                pb.set_column_partials(v.clone(), *len);
            }
            pb.bias_backward_cols(ts.view(db), ts.view(dy), n, c).unwrap()
        });
        let want: Vec<f64> = (0..c).map(|j| db0[j] as f64 + (0..n).map(|i| dout[i * c + j] as f64).sum::<f64>()).collect();
        check(&format!("bias_backward_cols N {n} C {c}, two stages {two_stage}"), "dbias", &ts.read(db), &want, TOL);
    }
}

/// Mixed precision with the GPU family (f16 activations through flash attention and the row
/// kernels): the window gradient is the f32 GPU family's up to f16 rounding.
#[test]
fn gpt_gradient_with_the_gpu_family_in_f16_is_close_to_f32() {
    let g = gpu_family();
    common::require_f16(&g);
    let f32_grad = gradscope::train::verify::first_window_gradient(&g, &small_gpt(2, 2, false, Precision::F32)).unwrap();
    let f16_grad = gradscope::train::verify::first_window_gradient(&g, &small_gpt(2, 2, false, Precision::F16)).unwrap();
    let d = gradscope::train::verify::gradient_rel_diff(&f16_grad, &f32_grad);
    println!("GPU family f16 vs f32 window gradient max rel diff {d:.2e}");
    assert!(d < 5e-3 && d > 1e-7, "f16 vs f32 gradient differs by {d:.3e}");
}

/// A partials buffer too small for a column sum is refused with an error naming the kernel and
/// both sizes, before anything runs.
#[test]
fn too_small_column_partials_are_refused() {
    let g = gpu();
    let dy = g.storage("test dout", Category::Activations, 600 * 40);
    let db = g.storage("test dbias", Category::Gradients, 40);
    let part = g.storage("test partials", Category::Scratch, 100);
    let mut pb = ProgramBuilder::new(&g);
    pb.set_column_partials(View::of(&part), 100);
    let err = pb.bias_backward_cols(&View::of(&db), &View::of(&dy), 600, 40).unwrap_err().to_string();
    // 600 rows are 3 chunks of 256: 3 x 40 partial sums
    assert!(err.contains("bias_backward_part") && err.contains("100") && err.contains("120"), "{err}");
}
