//! The CNN on the GPU (DESIGN.md): conv 1->C1 3x3, norm, ReLU, max-pool 2, conv C1->C2 3x3, norm,
//! ReLU, max-pool 2, linear -> classes, with GroupNorm or BatchNorm. Parameters and the window
//! machinery are the shared `Slabs`; BatchNorm's running statistics are a separate buffer.
//!
//! Programs are recorded per micro-batch row count: a short micro-batch (the epoch's remainder)
//! runs programs recorded for its real number of images, so BatchNorm's statistics never see
//! padding rows. All of them bind the same slabs, sized for the largest B.

use std::collections::HashMap;

use crate::gpu::{Category, Gpu, GpuBuffer, Program, ProgramBuilder, ProgramError, View};
use crate::reference::cnn_model::{CnnConfig, NormKind};

use super::optim::{Scratch, Slabs};

/// BatchNorm momentum (PyTorch's default).
pub const BN_MOMENTUM: f32 = 0.1;

/// Offsets of the activations of B images (f32 elements; u32 max-pool indices share the slab).
#[derive(Clone, Debug)]
pub struct CnnActs {
    pub b: usize,
    pub x: usize,      // [B,1,H,W] input images
    pub a1: usize,     // [B,C1,H,W] conv1
    pub n1: usize,     // [B,C1,H,W] norm1
    pub m1: usize,     // [B*G or C1] norm1 mean
    pub r1: usize,     // [B*G or C1] norm1 rstd
    pub y1: usize,     // [B,C1,H,W] relu1
    pub q1: usize,     // [B,C1,H/2,W/2] pool1
    pub i1: usize,     // [B,C1,H/2,W/2] pool1 argmax (u32)
    pub a2: usize,     // [B,C2,H/2,W/2]
    pub n2: usize,
    pub m2: usize,
    pub r2: usize,
    pub y2: usize,
    pub q2: usize,     // [B,C2,H/4,W/4] = [B,F]
    pub i2: usize,
    pub logits: usize, // [B,classes]
    pub losses: usize, // [B]
    pub len: usize,
}

impl CnnActs {
    pub fn new(cfg: &CnnConfig, b: usize) -> Self {
        let (h, w, c1, c2) = (cfg.h, cfg.w, cfg.c1, cfg.c2);
        let hw = h * w;
        let hw2 = (h / 2) * (w / 2);
        let hw4 = (h / 4) * (w / 4);
        let stat = |c: usize| (b * cfg.groups).max(c);
        // each tensor at a multiple of TENSOR_ALIGN bytes (bound as its own range)
        let align = crate::gpu::TENSOR_ALIGN / 4;
        let mut at = 0usize;
        let mut take = |n: usize| {
            let o = at;
            at = (at + n).next_multiple_of(align);
            o
        };
        Self {
            b,
            x: take(b * hw),
            a1: take(b * c1 * hw),
            n1: take(b * c1 * hw),
            m1: take(stat(c1)),
            r1: take(stat(c1)),
            y1: take(b * c1 * hw),
            q1: take(b * c1 * hw2),
            i1: take(b * c1 * hw2),
            a2: take(b * c2 * hw2),
            n2: take(b * c2 * hw2),
            m2: take(stat(c2)),
            r2: take(stat(c2)),
            y2: take(b * c2 * hw2),
            q2: take(b * c2 * hw4),
            i2: take(b * c2 * hw4),
            logits: take(b * cfg.classes),
            losses: take(b),
            len: at,
        }
    }
}

struct Programs {
    train: Program,
    eval: Program,
}

pub struct GpuCnn {
    pub gpu: Gpu,
    pub cfg: CnnConfig,
    pub slabs: Slabs,
    /// BatchNorm running statistics: mean1 [C1], var1 [C1], mean2 [C2], var2 [C2], each at
    /// its offset in `running_offsets` (TENSOR_ALIGN apart; the host layout is contiguous).
    pub running: GpuBuffer,
    running_offsets: Vec<usize>,
    b: usize,
    layout: CnnActs,
    acts: GpuBuffer,
    dacts: GpuBuffer,
    labels: GpuBuffer,
    /// Programs by row count (B, and the epoch's short remainder).
    programs: HashMap<usize, Programs>,
    /// The images and labels of the last window (`record_micro_steps`), uploaded once;
    /// reallocated when K or B changes.
    window_inputs: Option<GpuBuffer>,
}

/// Number of parameter tensors (conv1 w/b, norm1 w/b, conv2 w/b, norm2 w/b, linear w/b).
pub const NUM_CNN_TENSORS: usize = 10;

/// The parameter tensors as the slabs lay them out (each must fit one binding).
pub fn tensor_specs(cfg: &CnnConfig) -> Vec<super::optim::TensorSpec> {
    let names = CnnConfig::param_names();
    cfg.param_sizes()
        .iter()
        .enumerate()
        .map(|(i, &size)| super::optim::TensorSpec { name: names[i].to_string(), size, rows_of: 0, decay: cnn_decays(i) })
        .collect()
}

/// Weight decay on conv and linear weights only.
pub fn cnn_decays(i: usize) -> bool {
    matches!(i, 0 | 4 | 8)
}

impl GpuCnn {
    pub fn new(gpu: &Gpu, cfg: CnnConfig, params: &[f32], b: usize) -> Result<Self, ProgramError> {
        assert_eq!(params.len(), cfg.num_params(), "parameter count");
        let slabs = Slabs::new(gpu, params, cfg.param_offsets().to_vec(), &tensor_specs(&cfg))?;
        let (running_offsets, running_len) = Self::running_layout(&cfg);
        let running = gpu.try_storage("batchnorm running statistics", Category::Parameters, running_len)?;
        let layout = CnnActs::new(&cfg, b);
        let acts = gpu.try_storage("activations", Category::Activations, layout.len)?;
        let dacts = gpu.try_storage("activation gradients", Category::Activations, layout.len)?;
        let labels = gpu.try_storage("labels", Category::Activations, b)?;
        let m = Self {
            gpu: gpu.clone(), cfg, slabs, running, running_offsets, b, layout, acts, dacts, labels, programs: HashMap::new(),
            window_inputs: None,
        };
        m.load_running(&cfg.running_init());
        Ok(m)
    }

    /// Sizes of the four running-statistics tensors (mean1, var1, mean2, var2).
    fn running_sizes(cfg: &CnnConfig) -> [usize; 4] {
        [cfg.c1, cfg.c1, cfg.c2, cfg.c2]
    }

    /// The running statistics' offsets in their one buffer (TENSOR_ALIGN apart) and its length.
    fn running_layout(cfg: &CnnConfig) -> (Vec<usize>, usize) {
        let mut packer = super::layout::Packer::new(4, super::layout::SlabLimits::default());
        let offsets = Self::running_sizes(cfg).iter().map(|&n| packer.take("batchnorm running statistics", n)).collect();
        (offsets, packer.buffers.first().copied().unwrap_or(0))
    }

    /// Elements of the running-statistics buffer on the device.
    pub fn running_device_len(cfg: &CnnConfig) -> usize {
        Self::running_layout(cfg).1
    }

    /// Overwrite the running statistics (host layout [mean1 | var1 | mean2 | var2]).
    pub fn load_running(&self, host: &[f32]) {
        let mut at = 0;
        for (o, n) in self.running_offsets.iter().zip(Self::running_sizes(&self.cfg)) {
            self.gpu.upload(&self.running, *o, &host[at..at + n]);
            at += n;
        }
    }

    pub fn micro_batch(&self) -> usize {
        self.b
    }

    /// Reallocate the activation slabs for micro-batch `b` (parameters and optimizer state stay);
    /// the programs are recorded again on first use.
    pub fn set_micro_batch(&mut self, b: usize) -> Result<(), ProgramError> {
        if b == self.b {
            return Ok(());
        }
        self.programs.clear();
        // free the old slabs before allocating the new ones
        self.acts = self.gpu.storage("activations", Category::Activations, 1);
        self.dacts = self.gpu.storage("activation gradients", Category::Activations, 1);
        self.labels = self.gpu.storage("labels", Category::Activations, 1);
        self.layout = CnnActs::new(&self.cfg, b);
        self.acts = self.gpu.try_storage("activations", Category::Activations, self.layout.len)?;
        self.dacts = self.gpu.try_storage("activation gradients", Category::Activations, self.layout.len)?;
        self.labels = self.gpu.try_storage("labels", Category::Activations, b)?;
        self.b = b;
        Ok(())
    }

    /// Bytes in the activations category at micro-batch `b` (exactly what `new` allocates).
    pub fn predicted_activation_bytes(cfg: &CnnConfig, b: usize) -> u64 {
        2 * (CnnActs::new(cfg, b).len.max(1) as u64 * 4) + (b.max(1) as u64 * 4)
    }

    fn programs(&mut self, rows: usize) -> Result<&Programs, ProgramError> {
        if !self.programs.contains_key(&rows) {
            let mut pb = ProgramBuilder::new(&self.gpu);
            self.record_forward(&mut pb, rows, false)?;
            let eval = pb.finish("cnn eval");
            let mut pb = ProgramBuilder::new(&self.gpu);
            self.record_forward(&mut pb, rows, true)?;
            self.record_backward(&mut pb, rows)?;
            let train = pb.finish("cnn train micro-batch");
            self.programs.insert(rows, Programs { train, eval });
        }
        Ok(&self.programs[&rows])
    }

    #[allow(clippy::too_many_arguments)]
    fn norm_forward(
        &self, pb: &mut ProgramBuilder, train: bool, out: &View, mean: &View, rstd: &View, run: usize, inp: &View,
        w: &View, bias: &View, b: usize, c: usize, hw: usize,
    ) -> Result<(), ProgramError> {
        match self.cfg.norm {
            NormKind::Group => pb.groupnorm_forward(out, mean, rstd, inp, w, bias, b, c, hw, self.cfg.groups),
            NormKind::Batch => {
                let rm = View::at(&self.running, self.running_offsets[2 * run]);
                let rv = View::at(&self.running, self.running_offsets[2 * run + 1]);
                if train {
                    pb.batchnorm_forward_train(out, mean, rstd, &rm, &rv, inp, w, bias, b, c, hw, BN_MOMENTUM)
                } else {
                    pb.batchnorm_forward_eval(out, inp, w, bias, &rm, &rv, b, c, hw)
                }
            }
        }
    }

    /// Forward and loss of `b` images; `train` selects BatchNorm's batch statistics (and
    /// running-statistics update) or its running statistics.
    fn record_forward(&self, pb: &mut ProgramBuilder, b: usize, train: bool) -> Result<(), ProgramError> {
        let c = self.cfg;
        let l = &self.layout;
        let a = |o: usize| View::at(&self.acts, o);
        let p = |i: usize| self.slabs.pv(i);
        let (h, w, h2, w2) = (c.h, c.w, c.h / 2, c.w / 2);
        pb.conv2d_forward(&a(l.a1), &a(l.x), &p(0), &p(1), b, 1, c.c1, h, w, 3, 1)?;
        self.norm_forward(pb, train, &a(l.n1), &a(l.m1), &a(l.r1), 0, &a(l.a1), &p(2), &p(3), b, c.c1, h * w)?;
        pb.relu_forward(&a(l.y1), &a(l.n1), b * c.c1 * h * w)?;
        pb.maxpool2_forward(&a(l.q1), &a(l.i1), &a(l.y1), b, c.c1, h, w)?;
        pb.conv2d_forward(&a(l.a2), &a(l.q1), &p(4), &p(5), b, c.c1, c.c2, h2, w2, 3, 1)?;
        self.norm_forward(pb, train, &a(l.n2), &a(l.m2), &a(l.r2), 1, &a(l.a2), &p(6), &p(7), b, c.c2, h2 * w2)?;
        pb.relu_forward(&a(l.y2), &a(l.n2), b * c.c2 * h2 * w2)?;
        pb.maxpool2_forward(&a(l.q2), &a(l.i2), &a(l.y2), b, c.c2, h2, w2)?;
        pb.matmul_forward(&a(l.logits), &a(l.q2), &p(8), Some(&p(9)), b, c.features(), c.classes)?;
        pb.crossentropy_forward(&a(l.losses), &a(l.logits), &View::of(&self.labels), b, c.classes)?;
        pb.crossentropy_reduce(&View::at(&self.slabs.scratch, Scratch::LOSS_SUM), &a(l.losses), &View::of(&self.labels), b)?;
        Ok(())
    }

    /// Backward of `b` images; parameter gradients accumulate into the gradient slab.
    fn record_backward(&self, pb: &mut ProgramBuilder, b: usize) -> Result<(), ProgramError> {
        let c = self.cfg;
        let l = &self.layout;
        let a = |o: usize| View::at(&self.acts, o);
        let d = |o: usize| View::at(&self.dacts, o);
        let p = |i: usize| self.slabs.pv(i);
        let g = |i: usize| self.slabs.gv(i);
        let (h, w, h2, w2, h4, w4) = (c.h, c.w, c.h / 2, c.w / 2, c.h / 4, c.w / 4);
        // reduction = sum: each counted image weighs 1; the window's count divides once at the step
        pb.crossentropy_backward(&d(l.logits), &a(l.logits), &View::of(&self.labels), 1.0, b, c.classes)?;
        pb.matmul_backward(Some(&d(l.q2)), &g(8), Some(&g(9)), &d(l.logits), &a(l.q2), &p(8), b, c.features(), c.classes)?;
        pb.maxpool2_backward(&d(l.y2), &a(l.i2), &d(l.q2), b * c.c2 * h4 * w4, b * c.c2 * h2 * w2)?;
        pb.relu_backward(&d(l.n2), &a(l.n2), &d(l.y2), b * c.c2 * h2 * w2)?;
        match c.norm {
            NormKind::Group => pb.groupnorm_backward(&d(l.a2), &g(6), &g(7), &d(l.n2), &a(l.a2), &p(6), &a(l.m2), &a(l.r2), b, c.c2, h2 * w2, c.groups)?,
            NormKind::Batch => pb.batchnorm_backward(&d(l.a2), &g(6), &g(7), &d(l.n2), &a(l.a2), &p(6), &a(l.m2), &a(l.r2), b, c.c2, h2 * w2)?,
        }
        pb.conv2d_backward(&d(l.q1), &g(4), &g(5), &d(l.a2), &a(l.q1), &p(4), b, c.c1, c.c2, h2, w2, 3, 1)?;
        pb.maxpool2_backward(&d(l.y1), &a(l.i1), &d(l.q1), b * c.c1 * h2 * w2, b * c.c1 * h * w)?;
        pb.relu_backward(&d(l.n1), &a(l.n1), &d(l.y1), b * c.c1 * h * w)?;
        match c.norm {
            NormKind::Group => pb.groupnorm_backward(&d(l.a1), &g(2), &g(3), &d(l.n1), &a(l.a1), &p(2), &a(l.m1), &a(l.r1), b, c.c1, h * w, c.groups)?,
            NormKind::Batch => pb.batchnorm_backward(&d(l.a1), &g(2), &g(3), &d(l.n1), &a(l.a1), &p(2), &a(l.m1), &a(l.r1), b, c.c1, h * w)?,
        }
        // the input image's gradient is not needed, but the kernel writes it: use the x slot
        pb.conv2d_backward(&d(l.x), &g(0), &g(1), &d(l.a1), &a(l.x), &p(0), b, 1, c.c1, h, w, 3, 1)?;
        Ok(())
    }

    /// Record micro-batches `first..first + batches.len()` of a window of `k` into one open
    /// submission (a micro-batch has 1..=B rows: pixels [rows,1,H,W], labels [rows]). The
    /// window's images are uploaded once into the window-inputs buffer ([K*B images | K*B
    /// labels]) and copied into the input slot before each run; micro-step 0 zeroes the gradients
    /// and the figures; each image's loss weighs 1 (the window's count divides once at the step).
    pub fn record_micro_steps(
        &mut self, s: &mut crate::gpu::submit::Submission, batches: &[(&[f32], &[u32])], first: usize, k: usize,
    ) -> Result<(), ProgramError> {
        assert!(first + batches.len() <= k, "micro-batches past the window");
        let (b, hw) = (self.b, self.cfg.h * self.cfg.w);
        let len = Self::window_inputs_len(&self.cfg, b, k);
        if self.window_inputs.as_ref().is_none_or(|w| w.len() != len) {
            self.window_inputs = None;
            self.window_inputs = Some(self.gpu.try_storage("window images", Category::Activations, len)?);
        }
        let inputs = self.window_inputs.clone().expect("allocated above");
        self.slabs.reserve_figures(k);
        for (i, (x, y)) in batches.iter().enumerate() {
            let rows = y.len();
            assert!(rows >= 1 && rows <= b && x.len() == rows * hw, "1..=B images of [1,H,W] with their labels");
            self.gpu.upload(&inputs, (first + i) * b * hw, x);
            self.gpu.upload(&inputs, k * b * hw + (first + i) * b, y);
        }
        for (i, (_, y)) in batches.iter().enumerate() {
            let (j, rows) = (first + i, y.len());
            self.slabs.record_begin_micro(s, j);
            s.copy(&inputs, j * b * hw, &self.acts, self.layout.x, rows * hw);
            s.copy(&inputs, k * b * hw + j * b, &self.labels, 0, rows);
            // activation gradients start from zero (the backward kernels accumulate)
            s.clear(&self.dacts);
            s.run(&self.programs(rows)?.train);
            self.slabs.record_end_micro(s, j);
        }
        Ok(())
    }

    /// Elements of the window-inputs buffer for K micro-batches of B images.
    pub fn window_inputs_len(cfg: &CnnConfig, b: usize, k: usize) -> usize {
        k * b * (cfg.h * cfg.w + 1)
    }

    /// Wall-clock seconds of one run of the eval program and of the train program of `rows`
    /// images already in place, each averaged over `reps` waited submissions.
    pub fn time_programs(&mut self, rows: usize, reps: usize) -> Result<(f64, f64), super::optim::ModelError> {
        let gpu = self.gpu.clone();
        let dacts = self.dacts.clone();
        let progs = self.programs(rows)?;
        Ok((gpu.time_program(&progs.eval, &[], reps)?, gpu.time_program(&progs.train, std::slice::from_ref(&dacts), reps)?))
    }

    /// Upload `rows` images and labels into the input slots (evaluation, profiling).
    pub fn upload_inputs(&self, pixels: &[f32], labels: &[u32]) {
        self.gpu.upload(&self.acts, self.layout.x, pixels);
        self.gpu.upload(&self.labels, 0, labels);
    }

    /// Logits of `rows` images in evaluation mode (BatchNorm uses its running statistics).
    pub fn eval_logits(&mut self, pixels: &[f32], labels: &[u32]) -> Result<Vec<f32>, super::optim::ModelError> {
        let rows = labels.len();
        self.upload_inputs(pixels, labels);
        let mut s = self.gpu.submission();
        s.run(&self.programs(rows)?.eval);
        s.submit();
        Ok(self.gpu.read(&self.acts, self.layout.logits, rows * self.cfg.classes)?)
    }

    /// Per-kernel device time of one full micro-batch's train program (timestamp queries).
    pub fn profile_micro_batch(&mut self, pixels: &[f32], labels: &[u32]) -> Option<Vec<(String, f64)>> {
        self.upload_inputs(pixels, labels);
        let rows = labels.len();
        self.programs(rows).ok()?.train.profile()
    }

    pub fn read_running(&self) -> Result<Vec<f32>, crate::gpu::readback::ReadbackError> {
        let dev: Vec<f32> = self.gpu.read_all(&self.running)?;
        Ok(self.running_offsets.iter().zip(Self::running_sizes(&self.cfg)).flat_map(|(&o, n)| dev[o..o + n].to_vec()).collect())
    }
}
