//! The CNN on the GPU against the CPU reference model: loss, count, the window's normalized
//! gradient and BatchNorm's running statistics, with GroupNorm and with BatchNorm, including a
//! short micro-batch.

mod common;

use gradscope::data::images::{Dataset, ImageData, pack};
use gradscope::model::cnn::{BN_MOMENTUM, GpuCnn};
use gradscope::reference::cnn_model::{CnnConfig, NormKind, cnn_forward_backward, init_cnn_params};

fn assets() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/data")
}

#[test]
fn gpu_cnn_window_gradient_equals_the_cpu_reference() {
    let g = common::gpu();
    let data = ImageData::load(&assets(), Dataset::Digits).unwrap();
    for norm in [NormKind::Group, NormKind::Batch] {
        let cfg = CnnConfig::new(data.train.h, data.train.w, 10, norm);
        let params = init_cnn_params(&cfg, 5);
        let b = 6;
        let mut m = GpuCnn::new(&g, cfg, &params, b).unwrap();
        // a window of two micro-batches: 6 images, then a short one of 4
        let batches: [Vec<usize>; 2] = [(0..6).collect(), (6..10).collect()];
        let p64: Vec<f64> = params.iter().map(|&x| x as f64).collect();
        let mut run64: Vec<f64> = cfg.running_init().iter().map(|&x| x as f64).collect();
        let mut grads = vec![0.0f64; params.len()];
        let (mut loss, mut count) = (0.0f64, 0u32);
        for (j, idx) in batches.iter().enumerate() {
            let (x, y) = pack(&data.train, idx, idx.len());
            m.micro_step(&x, &y, j).unwrap();
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let (l, c, _) = cnn_forward_backward(&cfg, &p64, &mut run64, &x64, &y, idx.len(), true, BN_MOMENTUM as f64, Some(&mut grads), 1.0);
            loss += l;
            count += c;
        }
        let (gl, gc) = m.slabs.running_figures().unwrap();
        assert_eq!(gc as u32, count);
        assert!((gl - loss).abs() < 1e-4 * loss.abs(), "{norm:?}: loss {gl} vs {loss}");
        let got = m.slabs.normalized_window_gradient(true).unwrap();
        let want: Vec<f64> = grads.iter().map(|v| v / count as f64).collect();
        let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        let err = got.iter().zip(&want).fold(0.0f64, |a, (x, y)| a.max((*x as f64 - y).abs())) / scale;
        println!("{norm:?}: window gradient max rel diff vs CPU reference {err:.2e}");
        assert!(err < 1e-4, "{norm:?}: {err}");
        if norm == NormKind::Batch {
            let run = m.read_running().unwrap();
            let e = run.iter().zip(&run64).fold(0.0f64, |a, (x, y)| a.max((*x as f64 - y).abs()));
            println!("running statistics max abs diff {e:.2e}");
            assert!(e < 1e-5, "running statistics differ by {e}");
        }
    }
}
