//! Per-kernel profile of one CNN micro-batch (timestamp queries): `cargo run --release --example cnn_profile`.
use gradscope::data::images::{Dataset, ImageData, pack};
use gradscope::gpu::{AdapterChoice, Gpu};
use gradscope::model::cnn::GpuCnn;
use gradscope::reference::cnn_model::{CnnConfig, NormKind, init_cnn_params};

fn main() -> anyhow::Result<()> {
    let gpu = Gpu::new(&AdapterChoice::default())?;
    let data = ImageData::load(std::path::Path::new("assets/data"), Dataset::Mnist)?;
    for norm in [NormKind::Group, NormKind::Batch] {
        let cfg = CnnConfig::new(28, 28, 10, norm);
        let mut m = GpuCnn::new(&gpu, cfg, &init_cnn_params(&cfg, 1), 32)?;
        let idx: Vec<usize> = (0..32).collect();
        let (x, y) = pack(&data.train, &idx, 32);
        let prof = m.profile_micro_batch(&x, &y).expect("timestamp queries");
        let total: f64 = prof.iter().map(|p| p.1).sum();
        println!("{norm:?}: {:.1} ms per micro-batch of 32", total * 1e3);
        let mut v = prof.clone();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (n, s) in v.iter().take(8) {
            println!("  {n:<32} {:>8.2} ms", s * 1e3);
        }
    }
    Ok(())
}
