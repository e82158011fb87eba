//! Every CNN kernel against its CPU twin (run in f64) on fresh random inputs, including odd
//! sizes and the MNIST shapes. Outputs NaN-poisoned, gradients starting from random values,
//! tensors packed at offsets in one slab and in separate buffers.

mod common;

use common::{Rng, Tensors, check, f64s, gpu, run};
use gradscope::gpu::KernelSet;
use gradscope::gpu::kernels_rows::RowReduce;
use gradscope::reference::cnn as r;

const TOL: f64 = 1e-4;

#[test]
fn conv2d_matches_reference() {
    let g = gpu();
    let mut rng = Rng::fresh("conv2d");
    // (B, IC, OC, H, W, K, PAD)
    for (i, &(b, ic, oc, h, w, k, pad)) in
        [(2, 3, 5, 7, 6, 3, 1), (1, 2, 3, 9, 8, 5, 2), (2, 4, 3, 5, 5, 1, 0), (3, 2, 2, 6, 7, 3, 0), (32, 1, 16, 28, 28, 3, 1), (32, 16, 32, 14, 14, 3, 1)]
            .iter()
            .enumerate()
    {
        let (ho, wo) = (r::conv_out(h, k, pad), r::conv_out(w, k, pad));
        let x = rng.vec(b * ic * h * w, 1.0);
        let wt = rng.vec(oc * ic * k * k, 1.0);
        let bs = rng.vec(oc, 1.0);
        let dout = rng.vec(b * oc * ho * wo, 1.0);
        let (dx0, dw0, db0) = (rng.vec(x.len(), 1.0), rng.vec(wt.len(), 1.0), rng.vec(oc, 1.0));
        let mut ts = Tensors::new(&g, i % 2 == 0);
        let (o, xi, wi, bi) = (ts.poisoned(b * oc * ho * wo), ts.f32(&x), ts.f32(&wt), ts.f32(&bs));
        let o_plain = ts.poisoned(b * oc * ho * wo);
        let (dx, dw, db, dy) = (ts.f32(&dx0), ts.f32(&dw0), ts.f32(&db0), ts.f32(&dout));
        let (dx_p, dw_p, db_p) = (ts.f32(&dx0), ts.f32(&dw0), ts.f32(&db0));
        ts.upload();
        run(&g, |pb| {
            pb.conv2d_backward_with(false, ts.view(dx_p), ts.view(dw_p), ts.view(db_p), ts.view(dy), ts.view(xi), ts.view(wi), b, ic, oc, h, w, k, pad)
                .unwrap();
            pb.conv2d_forward_with(true, ts.view(o), ts.view(xi), ts.view(wi), ts.view(bi), b, ic, oc, h, w, k, pad).unwrap();
            pb.conv2d_forward_with(false, ts.view(o_plain), ts.view(xi), ts.view(wi), ts.view(bi), b, ic, oc, h, w, k, pad).unwrap();
            pb.conv2d_backward(ts.view(dx), ts.view(dw), ts.view(db), ts.view(dy), ts.view(xi), ts.view(wi), b, ic, oc, h, w, k, pad)
                .unwrap();
        });
        let mut out = vec![0.0; b * oc * ho * wo];
        r::conv2d_forward(&mut out, &f64s(&x), &f64s(&wt), &f64s(&bs), b, ic, oc, h, w, k, pad);
        let (mut rdx, mut rdw, mut rdb) = (f64s(&dx0), f64s(&dw0), f64s(&db0));
        r::conv2d_backward(&mut rdx, &mut rdw, &mut rdb, &f64s(&dout), &f64s(&x), &f64s(&wt), b, ic, oc, h, w, k, pad);
        let name = format!("conv2d {b}x{ic}->{oc} {h}x{w} k{k}p{pad}");
        check(&name, "out (x4)", &ts.read(o), &out, TOL);
        check(&name, "out", &ts.read(o_plain), &out, TOL);
        check(&name, "dinp (x4)", &ts.read(dx), &rdx, TOL);
        check(&name, "dinp", &ts.read(dx_p), &rdx, TOL);
        check(&name, "dweight (2)", &ts.read(dw_p), &rdw, TOL);
        check(&name, "dweight", &ts.read(dw), &rdw, TOL);
        check(&name, "dbias", &ts.read(db), &rdb, TOL);
    }
}

/// Both kernel families (the CPU family's invocation per (image, group), the GPU family's
/// workgroup per (image, group) with the device's row reduction), and the GPU family's set
/// kernels with the workgroup tree explicitly (forward and input gradient; the parameter
/// gradients are the same kernel in both families).
#[test]
fn groupnorm_matches_reference() {
    let base = gpu();
    let mut rng = Rng::fresh("groupnorm");
    let shapes = [(2, 4, 5, 2), (3, 6, 7, 3), (1, 4, 1, 4), (32, 16, 784, 4), (32, 32, 196, 4), (96, 4, 784, 2), (2, 8, 100, 1)];
    let modes = [(KernelSet::Cpu, None), (KernelSet::Gpu, None), (KernelSet::Gpu, Some(RowReduce::Workgroup))];
    for (mode, (i, &(b, c, hw, gr))) in modes.into_iter().flat_map(|m| shapes.iter().enumerate().map(move |s| (m, s))) {
        let g = base.clone().with_kernels(mode.0);
        let n = b * c * hw;
        let x: Vec<f32> = rng.vec(n, 2.0).iter().map(|v| v + 0.3).collect();
        let (wt, bs, dout) = (rng.vec(c, 1.0), rng.vec(c, 1.0), rng.vec(n, 1.0));
        let (dx0, dw0, db0) = (rng.vec(n, 1.0), rng.vec(c, 1.0), rng.vec(c, 1.0));
        let mut ts = Tensors::new(&g, i % 2 == 1);
        let (o, m, s) = (ts.poisoned(n), ts.poisoned(b * gr), ts.poisoned(b * gr));
        let (xi, wi, bi) = (ts.f32(&x), ts.f32(&wt), ts.f32(&bs));
        let (dx, dw, db, dy) = (ts.f32(&dx0), ts.f32(&dw0), ts.f32(&db0), ts.f32(&dout));
        ts.upload();
        run(&g, |pb| match mode.1 {
            None => {
                pb.groupnorm_forward(ts.view(o), ts.view(m), ts.view(s), ts.view(xi), ts.view(wi), ts.view(bi), b, c, hw, gr).unwrap();
                pb.groupnorm_backward(ts.view(dx), ts.view(dw), ts.view(db), ts.view(dy), ts.view(xi), ts.view(wi), ts.view(m), ts.view(s), b, c, hw, gr)
                    .unwrap();
            }
            Some(reduce) => {
                pb.groupnorm_forward_sets(reduce, ts.view(o), ts.view(m), ts.view(s), ts.view(xi), ts.view(wi), ts.view(bi), b, c, hw, gr).unwrap();
                pb.groupnorm_backward_input_sets(reduce, ts.view(dx), ts.view(dy), ts.view(xi), ts.view(wi), ts.view(m), ts.view(s), b, c, hw, gr)
                    .unwrap();
            }
        });
        let (mut out, mut rm, mut rs) = (vec![0.0; n], vec![0.0; b * gr], vec![0.0; b * gr]);
        r::groupnorm_forward(&mut out, &mut rm, &mut rs, &f64s(&x), &f64s(&wt), &f64s(&bs), b, c, hw, gr);
        let (mut rdx, mut rdw, mut rdb) = (f64s(&dx0), f64s(&dw0), f64s(&db0));
        r::groupnorm_backward(&mut rdx, &mut rdw, &mut rdb, &f64s(&dout), &f64s(&x), &f64s(&wt), &rm, &rs, b, c, hw, gr);
        let name = format!("groupnorm {b}x{c}x{hw} G{gr} ({} kernels, reduce {:?})", mode.0, mode.1);
        check(&name, "out", &ts.read(o), &out, TOL);
        check(&name, "mean", &ts.read(m), &rm, TOL);
        check(&name, "rstd", &ts.read(s), &rs, TOL);
        check(&name, "dinp", &ts.read(dx), &rdx, TOL);
        if mode.1.is_none() {
            check(&name, "dweight", &ts.read(dw), &rdw, TOL);
            check(&name, "dbias", &ts.read(db), &rdb, TOL);
        }
    }
}

#[test]
fn batchnorm_matches_reference_in_training_and_evaluation() {
    let g = gpu();
    let mut rng = Rng::fresh("batchnorm");
    for (i, &(b, c, hw)) in [(2, 3, 5), (4, 5, 7), (1, 2, 9), (32, 16, 784), (32, 32, 196), (96, 4, 784)].iter().enumerate() {
        let n = b * c * hw;
        let x: Vec<f32> = rng.vec(n, 2.0).iter().map(|v| v - 0.4).collect();
        let (wt, bs, dout) = (rng.vec(c, 1.0), rng.vec(c, 1.0), rng.vec(n, 1.0));
        let rm0 = rng.vec(c, 0.5);
        let rv0: Vec<f32> = rng.vec(c, 0.5).iter().map(|v| v.abs() + 0.5).collect();
        let (dx0, dw0, db0) = (rng.vec(n, 1.0), rng.vec(c, 1.0), rng.vec(c, 1.0));
        let mut ts = Tensors::new(&g, i % 2 == 0);
        let (o, m, s, rmi, rvi) = (ts.poisoned(n), ts.poisoned(c), ts.poisoned(c), ts.f32(&rm0), ts.f32(&rv0));
        let (xi, wi, bi) = (ts.f32(&x), ts.f32(&wt), ts.f32(&bs));
        let (dx, dw, db, dy) = (ts.f32(&dx0), ts.f32(&dw0), ts.f32(&db0), ts.f32(&dout));
        let eo = ts.poisoned(n);
        ts.upload();
        run(&g, |pb| {
            pb.batchnorm_forward_train(ts.view(o), ts.view(m), ts.view(s), ts.view(rmi), ts.view(rvi), ts.view(xi), ts.view(wi), ts.view(bi), b, c, hw, 0.1)
                .unwrap();
            pb.batchnorm_backward(ts.view(dx), ts.view(dw), ts.view(db), ts.view(dy), ts.view(xi), ts.view(wi), ts.view(m), ts.view(s), b, c, hw)
                .unwrap();
            // evaluation with the running statistics just updated
            pb.batchnorm_forward_eval(ts.view(eo), ts.view(xi), ts.view(wi), ts.view(bi), ts.view(rmi), ts.view(rvi), b, c, hw).unwrap();
        });
        let (mut out, mut rm, mut rs, mut rrm, mut rrv) = (vec![0.0; n], vec![0.0; c], vec![0.0; c], f64s(&rm0), f64s(&rv0));
        r::batchnorm_forward_train(&mut out, &mut rm, &mut rs, &mut rrm, &mut rrv, &f64s(&x), &f64s(&wt), &f64s(&bs), b, c, hw, 0.1);
        let (mut rdx, mut rdw, mut rdb) = (f64s(&dx0), f64s(&dw0), f64s(&db0));
        r::batchnorm_backward(&mut rdx, &mut rdw, &mut rdb, &f64s(&dout), &f64s(&x), &f64s(&wt), &rm, &rs, b, c, hw);
        let mut eout = vec![0.0; n];
        r::batchnorm_forward_eval(&mut eout, &f64s(&x), &f64s(&wt), &f64s(&bs), &rrm, &rrv, b, c, hw);
        let name = format!("batchnorm {b}x{c}x{hw}");
        check(&name, "out", &ts.read(o), &out, TOL);
        check(&name, "mean", &ts.read(m), &rm, TOL);
        check(&name, "rstd", &ts.read(s), &rs, TOL);
        check(&name, "run mean", &ts.read(rmi), &rrm, TOL);
        check(&name, "run var", &ts.read(rvi), &rrv, TOL);
        check(&name, "dinp", &ts.read(dx), &rdx, TOL);
        check(&name, "dweight", &ts.read(dw), &rdw, TOL);
        check(&name, "dbias", &ts.read(db), &rdb, TOL);
        check(&name, "eval out", &ts.read(eo), &eout, TOL);
    }
}

#[test]
fn relu_and_maxpool_match_reference() {
    let g = gpu();
    let mut rng = Rng::fresh("relu+maxpool");
    for (i, &(b, c, h, w)) in [(2, 3, 5, 4), (1, 2, 7, 7), (32, 16, 28, 28), (32, 32, 14, 14), (3, 1, 2, 2), (2, 2, 3, 9)].iter().enumerate() {
        let n = b * c * h * w;
        let no = b * c * (h / 2) * (w / 2);
        let x = rng.vec(n, 1.0);
        let (dout, gr) = (rng.vec(n, 1.0), rng.vec(no, 1.0));
        let (dx0, dp0) = (rng.vec(n, 1.0), rng.vec(n, 1.0));
        let mut ts = Tensors::new(&g, i % 2 == 1);
        let (ro, xi, rdx, rdy) = (ts.poisoned(n), ts.f32(&x), ts.f32(&dx0), ts.f32(&dout));
        let (po, pi, pdx, pgr) = (ts.poisoned(no), ts.poisoned(no), ts.f32(&dp0), ts.f32(&gr));
        ts.upload();
        run(&g, |pb| {
            pb.relu_forward(ts.view(ro), ts.view(xi), n).unwrap();
            pb.relu_backward(ts.view(rdx), ts.view(xi), ts.view(rdy), n).unwrap();
            pb.maxpool2_forward(ts.view(po), ts.view(pi), ts.view(xi), b, c, h, w).unwrap();
            pb.maxpool2_backward(ts.view(pdx), ts.view(pi), ts.view(pgr), no, n).unwrap();
        });
        let mut out = vec![0.0; n];
        r::relu_forward(&mut out, &f64s(&x), n);
        let mut d = f64s(&dx0);
        r::relu_backward(&mut d, &f64s(&x), &f64s(&dout), n);
        check("relu_forward", "out", &ts.read(ro), &out, TOL);
        check("relu_backward", "dinp", &ts.read(rdx), &d, TOL);
        let (mut pout, mut pidx) = (vec![0.0; no], vec![0u32; no]);
        r::maxpool2_forward(&mut pout, &mut pidx, &f64s(&x), b, c, h, w);
        let mut pd = f64s(&dp0);
        r::maxpool2_backward(&mut pd, &pidx, &f64s(&gr), no);
        check("maxpool2_forward", "out", &ts.read(po), &pout, TOL);
        let got_idx: Vec<u32> = ts.read(pi).iter().map(|v| v.to_bits()).collect();
        assert_eq!(got_idx, pidx, "argmax indices");
        check("maxpool2_backward", "dinp", &ts.read(pdx), &pd, TOL);
    }
}
