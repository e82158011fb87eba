//! The byte ledger is exact: it equals the sum of the sizes of the buffers actually created, per
//! category, and returns to its previous value when they are dropped.

mod common;

use gradscope::gpu::{Category, GpuBuffer, ProgramBuilder, View};

#[test]
fn ledger_equals_the_sizes_of_the_buffers_created() {
    let g = common::gpu();
    let before = g.ledger.snapshot();
    let sizes = [(Category::Parameters, 413_312usize), (Category::Gradients, 413_312), (Category::OptimizerState, 826_624),
        (Category::Activations, 1_234_567), (Category::Scratch, 3)];
    let bufs: Vec<GpuBuffer> = sizes.iter().map(|&(c, n)| g.storage("ledger test", c, n)).collect();
    let after = g.ledger.snapshot();
    for (&(c, n), b) in sizes.iter().zip(&bufs) {
        assert_eq!(b.buffer().size(), n as u64 * 4, "wgpu buffer size");
        let delta = after.get(c) - before.get(c);
        assert_eq!(delta, b.buffer().size(), "{}: ledger delta vs created size", c.name());
        println!("{:<16} +{delta} bytes", c.name());
    }
    assert_eq!(after.total() - before.total(), bufs.iter().map(|b| b.buffer().size()).sum::<u64>());

    // A program's uniform arena is scratch, and lives as long as the program.
    let mut pb = ProgramBuilder::new(&g);
    pb.fill(&View::of(&bufs[4]), 0.0, 3).unwrap();
    pb.fill(&View::of(&bufs[4]), 1.0, 3).unwrap();
    let prog = pb.finish("ledger program");
    let with_prog = g.ledger.snapshot();
    assert_eq!(with_prog.get(Category::Scratch) - after.get(Category::Scratch), 2 * 256);
    drop(prog);
    drop(bufs);
    assert_eq!(g.ledger.snapshot(), before, "dropping every buffer returns the ledger to its start");
}
