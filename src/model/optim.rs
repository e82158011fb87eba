//! What every model shares at the end of a window: the parameter, gradient and AdamW slabs, the
//! device-side window figures, and the end-of-window programs (normalize by the window's count,
//! global norm, clip once, AdamW per tensor with its own weight decay, skipped on the device as a
//! whole when the window or any candidate update is non-finite). A model (GPT, CNN) owns
//! one `Slabs` and records its forward/backward against `params` and `grads`.

use crate::gpu::kernels::{AdamW, adamw_uniforms};
use crate::gpu::{Category, Gpu, GpuBuffer, Program, ProgramBuilder, ProgramError, View};
use crate::model::layout::{Packer, Part, SlabLimits, allocate, locate, view};
use crate::gpu::submit::Submission;

/// Small device-side figures of the current window: (loss sum, target count), (grad norm,
/// norm^2), (update norm, its square) and the update flag, each pair in its own 256-byte slot
/// so that a kernel writing one may read another (WebGPU forbids overlapping writable ranges).
pub struct Scratch;
impl Scratch {
    pub const LOSS_SUM: usize = 0;
    pub const COUNT: usize = 1;
    pub const NORM: usize = SLOT;
    /// L2 norm of the step's parameter update (and its square at +1).
    pub const UPDATE_NORM: usize = 2 * SLOT;
    /// 1.0 when the step's update would have written a non-finite weight or moment (AdamW was
    /// then skipped for every tensor), else 0.0; written by `adamw_check`.
    pub const UPDATE_NONFINITE: usize = 3 * SLOT;
    pub const LEN: usize = 4 * SLOT;
}

/// Elements of the figures readback buffer for `cap` micro-batches and `stats` gradient
/// statistics: [window figures | (loss sum, count) per micro-batch | (|g_k|^2, <g_k, G_{k-1}>)
/// per statistic per micro-batch].
pub fn figures_len(cap: usize, stats: usize) -> usize {
    Scratch::LEN + 2 * cap + 2 * stats * cap
}

/// f32 elements per 256-byte slot (`TENSOR_ALIGN`).
const SLOT: usize = crate::gpu::TENSOR_ALIGN / 4;


/// Optimizer settings of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSettings {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Global-norm clip threshold; 0 disables clipping.
    pub grad_clip: f32,
}

/// How the window's gradient is normalized before the step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// Correct: losses summed over every counted target of the window, the gradient divided
    /// once by the window's total count.
    #[default]
    WindowCount,
    /// The Oct-2024 bug, kept to show what `verify` catches: each micro-batch's mean loss
    /// (divided by its own count), the sum divided by K. Wrong whenever counts differ.
    PerMicroBatchMean,
}

/// What the end of a window does to the accumulated gradient before its norm is taken.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WindowDivide {
    /// Divide by the window's count of counted targets (read on the device): the f32 path, where
    /// each counted target's loss weighed 1.
    Count,
    /// Mixed precision, the contract's order: the loss was weighted by scale / count (divided
    /// before scaling), so the gradient is unscaled once, here, by 1 / scale.
    Unscale(f32),
    /// The wrong order, kept for tests: the loss was weighted by the scale alone; unscale and
    /// divide by the count here.
    UnscaleAndCount(f32),
    /// Already normalized (a broken mode kept for `verify`, or unscaled per micro-batch).
    Nothing,
}

impl WindowDivide {
    /// The f32 choice: divide by the count, or not at all.
    pub fn count_if(divide_by_count: bool) -> Self {
        if divide_by_count { WindowDivide::Count } else { WindowDivide::Nothing }
    }
}

/// Parameter, gradient and optimizer slabs with the window machinery. Each slab is as many
/// buffers as the device's limits need (`layout::Packer`); all slabs share one layout.
pub struct Slabs {
    pub gpu: Gpu,
    /// Number of parameters.
    pub n: usize,
    /// The slabs' layout: every tensor's parts (one, or rows of the tied embedding cut to fit a
    /// binding) at virtual offsets, and the buffers' sizes. Padding stays zero in every slab, so
    /// norms and updates are those of the tensors.
    pub packer: Packer,
    pub parts: Vec<Vec<Part>>,
    pub params: Vec<GpuBuffer>,
    pub grads: Vec<GpuBuffer>,
    pub adam_m: Vec<GpuBuffer>,
    pub adam_v: Vec<GpuBuffer>,
    pub scratch: GpuBuffer,  // [Scratch::LEN]
    /// Read once per window: [window figures (Scratch::LEN) | cumulative (loss sum, count) after
    /// each micro-batch (2 per micro-batch) | with `grad_stats`, (|g_k|^2, <g_k, G_{k-1}>) per
    /// statistic per micro-batch] (`figures_len`), filled by copies inside the submissions.
    figures: GpuBuffer,
    figures_cap: usize,
    pub partials: GpuBuffer, // [partials_len(slab buffers)]
    /// The parameters before the step, then the update (for ||update||); scratch.
    prev: Vec<GpuBuffer>,
    /// Offsets in the host layout (`params` as given to `new`, checkpoints, the CPU reference).
    pub host_offsets: Vec<usize>,
    pub sizes: Vec<usize>,
    pub decay: Vec<bool>,
    step_prog: Option<StepProgram>,
    micro_clip: Option<MicroClip>,
    grad_stats: Option<GradStatsDevice>,
}

/// The per-micro-batch clipping mistake, kept for `verify`: a sum slab and the program that
/// normalizes, clips and adds one micro-batch's gradient to it.
struct MicroClip {
    accum: Vec<GpuBuffer>,
    prog: Program,
    scale_index: Vec<usize>,
    clip_index: Vec<usize>,
}

struct StepProgram {
    /// window-count normalization and global norm
    prologue_norm: Program,
    prologue_clip: Program,
    clip_index: Vec<usize>,
    /// norm only (the gradient is already normalized)
    norm_only: Program,
    /// grads *= s (the loss scale's unscale), its scalar rewritten per step
    unscale: Program,
    unscale_index: Vec<usize>,
    /// clear the update flag, adamw_check per tensor part, adamw per part, update norm
    adamw: Program,
    /// per part: (tensor, dispatch indices in `adamw` of its adamw_check and adamw)
    adamw_index: Vec<(usize, usize, usize)>,
}

/// A tensor that may be cut into parts of whole rows (the tied embedding) gives its row length.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub size: usize,
    /// Row length when the tensor may be split into row ranges, else 0.
    pub rows_of: usize,
    pub decay: bool,
}

/// The layout of the parameter (and gradient, AdamW) slabs of `tensors` under `limits`.
pub fn slab_layout(tensors: &[TensorSpec], limits: SlabLimits) -> (Packer, Vec<Vec<Part>>) {
    let mut packer = Packer::new(4, limits);
    let parts = tensors
        .iter()
        .map(|t| {
            // rows_of 0: never cut
            match t.size.checked_div(t.rows_of) {
                Some(rows) => packer.take_rows(&t.name, rows, t.rows_of),
                None => vec![Part { at: packer.take(&t.name, t.size), start: 0, len: t.size }],
            }
        })
        .collect();
    (packer, parts)
}

/// Elements of the norm partials for `buffers` slab buffers (`kernels::norm_groups` each).
pub fn partials_len(buffers: usize) -> usize {
    crate::gpu::kernels::norm_groups(buffers) * buffers.max(1)
}

/// Where the per-micro-batch gradient statistics (`grad_stats`) reduce: the statistics are named
/// host ranges (checkpoint tensors: a layer of a per-layer tensor is a statistic of its own),
/// each cut into segments of the slab parts it covers, each segment into workgroups of
/// `GRAD_STATS_CHUNK` elements numbered in packing order (so a statistic's workgroups are
/// consecutive). Pure: the memory model sizes its buffers from it.
#[derive(Clone, Debug, PartialEq)]
pub struct StatsLayout {
    /// Statistic names, in the order the figures hold them.
    pub names: Vec<String>,
    /// Per segment in packing order: (slab buffer, first global workgroup, element offset in the
    /// buffer, elements).
    pub segments: Vec<(usize, usize, usize, usize)>,
    /// Per statistic: its workgroups [first, end).
    pub ranges: Vec<(usize, usize)>,
    /// Workgroups in all (the partials hold 2 floats each).
    pub workgroups: usize,
    /// Slab buffers (one partial dispatch each).
    pub buffers: usize,
}

impl StatsLayout {
    /// `stats`: (name, host offset, elements), each inside one tensor of the slab layout
    /// (`parts`, `host_offsets`, `sizes` as `Slabs` holds them).
    pub fn new(
        parts: &[Vec<Part>], host_offsets: &[usize], sizes: &[usize], buffers: usize, stats: &[(String, usize, usize)],
    ) -> Self {
        let chunk = crate::gpu::kernels::GRAD_STATS_CHUNK;
        // (virtual offset, elements, statistic)
        let mut segs: Vec<(usize, usize, usize)> = Vec::new();
        for (t, (name, off, len)) in stats.iter().enumerate() {
            let i = (0..sizes.len())
                .find(|&i| host_offsets[i] <= *off && off + len <= host_offsets[i] + sizes[i])
                .unwrap_or_else(|| panic!("statistic {name} is not inside one parameter tensor"));
            let (e0, e1) = (off - host_offsets[i], off - host_offsets[i] + len);
            for p in &parts[i] {
                let (a, b) = (e0.max(p.start), e1.min(p.start + p.len));
                if a < b {
                    segs.push((p.at + (a - p.start), b - a, t));
                }
            }
        }
        segs.sort_unstable();
        let mut ranges = vec![(usize::MAX, 0usize); stats.len()];
        let mut segments = Vec::with_capacity(segs.len());
        let mut wg = 0;
        for (at, len, t) in segs {
            let (b, o) = locate(at);
            let n = len.div_ceil(chunk);
            let r = &mut ranges[t];
            assert!(r.0 == usize::MAX || r.1 == wg, "statistic {} covers parts that are not consecutive", stats[t].0);
            *r = (r.0.min(wg), wg + n);
            segments.push((b, wg, o, len));
            wg += n;
        }
        let ranges = ranges.into_iter().map(|(a, b)| if a == usize::MAX { (0, 0) } else { (a, b) }).collect();
        Self { names: stats.iter().map(|s| s.0.clone()).collect(), segments, ranges, workgroups: wg, buffers }
    }

    /// The u32 table the kernels read: 3 words per segment, then at `stats_at` 2 per statistic.
    pub fn table(&self) -> Vec<u32> {
        let w = |v: usize| u32::try_from(v).expect("statistics table past u32");
        let mut t: Vec<u32> = self.segments.iter().flat_map(|&(_, first, o, n)| [w(first), w(o), w(n)]).collect();
        t.extend(self.ranges.iter().flat_map(|&(a, b)| [w(a), w(b)]));
        t
    }

    /// Where the statistics' ranges start in `table`.
    pub fn stats_at(&self) -> usize {
        3 * self.segments.len()
    }

    pub fn table_len(&self) -> usize {
        3 * self.segments.len() + 2 * self.names.len()
    }

    /// Statistics.
    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Dispatches of the statistics program: a partial pass per slab buffer, one final sum.
    pub fn dispatches(&self) -> usize {
        self.buffers + 1
    }
}

/// The device side of `grad_stats`: G_{k-1} (`prev`, the gradient slab's layout), the partial
/// sums, the table, this micro-batch's statistics and the program writing them.
struct GradStatsDevice {
    layout: StatsLayout,
    prev: Vec<GpuBuffer>,
    stats: GpuBuffer,
    prog: Program,
    /// The current window's statistics are valid (enabled before its first micro-batch).
    window_valid: bool,
}

impl Slabs {
    /// Allocate the slabs for `params` (host layout: tensors at `host_offsets`, described by
    /// `tensors`) under the device's limits and upload them; moments start at zero.
    pub fn new(gpu: &Gpu, params: &[f32], host_offsets: Vec<usize>, tensors: &[TensorSpec]) -> Result<Self, ProgramError> {
        let n = params.len();
        let (packer, parts) = slab_layout(tensors, SlabLimits::of(gpu));
        packer.check("parameters").map_err(|e| ProgramError::Shape { kernel: "parameter slab".into(), message: e.message })?;
        let params_b = allocate(gpu, "parameters", Category::Parameters, &packer)?;
        let grads = allocate(gpu, "gradients", Category::Gradients, &packer)?;
        let adam_m = allocate(gpu, "adamw m", Category::OptimizerState, &packer)?;
        let adam_v = allocate(gpu, "adamw v", Category::OptimizerState, &packer)?;
        let scratch = gpu.storage("window figures", Category::Scratch, Scratch::LEN);
        let partials = gpu.storage("norm partials", Category::Scratch, partials_len(packer.buffers.len()));
        let prev = allocate(gpu, "parameters before the step", Category::Scratch, &packer)?;
        for slab in [&params_b, &grads, &adam_m, &adam_v] {
            for b in slab.iter() {
                gpu.upload(b, 0, &vec![0.0f32; b.len()]);
            }
        }
        gpu.upload(&scratch, 0, &[0.0f32; Scratch::LEN]);
        let figures_cap = 16;
        let figures = gpu.storage("window figures readback", Category::Scratch, figures_len(figures_cap, 0));
        let slabs = Self {
            gpu: gpu.clone(), n, packer, parts, params: params_b, grads, adam_m, adam_v, scratch, figures, figures_cap,
            partials, prev, host_offsets, sizes: tensors.iter().map(|t| t.size).collect(),
            decay: tensors.iter().map(|t| t.decay).collect(), step_prog: None, micro_clip: None, grad_stats: None,
        };
        slabs.upload_host(&slabs.params, params);
        Ok(slabs)
    }

    /// Elements of each slab buffer.
    fn buffer_lens(&self) -> Vec<usize> {
        self.params.iter().map(|b| b.len()).collect()
    }

    /// Write a host-layout vector into a slab's tensors.
    fn upload_host(&self, slab: &[GpuBuffer], host: &[f32]) {
        for (i, parts) in self.parts.iter().enumerate() {
            for p in parts {
                let h = self.host_offsets[i] + p.start;
                let v = view(slab, p.at);
                self.gpu.upload(&v.buf, v.offset, &host[h..h + p.len]);
            }
        }
    }

    /// A slab's tensors in the host layout.
    fn read_host(&self, slab: &[GpuBuffer]) -> Result<Vec<f32>, crate::gpu::readback::ReadbackError> {
        let dev: Vec<Vec<f32>> = slab.iter().map(|b| self.gpu.read_all(b)).collect::<Result<_, _>>()?;
        let mut host = vec![0.0f32; self.n];
        for (i, parts) in self.parts.iter().enumerate() {
            for p in parts {
                let (b, o) = locate(p.at);
                let h = self.host_offsets[i] + p.start;
                host[h..h + p.len].copy_from_slice(&dev[b][o..o + p.len]);
            }
        }
        Ok(host)
    }

    /// Tensor i of a slab (its first part: every tensor but a row-split one has exactly one).
    fn tensor(&self, slab: &[GpuBuffer], i: usize) -> View {
        view(slab, self.parts[i][0].at)
    }

    /// Parameter tensor i.
    pub fn pv(&self, i: usize) -> View {
        self.tensor(&self.params, i)
    }
    /// Gradient of parameter tensor i.
    pub fn gv(&self, i: usize) -> View {
        self.tensor(&self.grads, i)
    }

    /// Element `elem` of tensor i in a slab: in the part that holds it (parts are whole rows, so
    /// a row, or a layer of a per-layer tensor, never straddles two).
    fn element(&self, slab: &[GpuBuffer], i: usize, elem: usize) -> View {
        let p = self.parts[i].iter().find(|p| p.start <= elem && elem < p.start + p.len.max(1)).unwrap_or(&self.parts[i][0]);
        view(slab, p.at).add(elem - p.start)
    }

    /// Parameter tensor i from element `elem` on (a layer's slice of a per-layer tensor).
    pub fn param_at(&self, i: usize, elem: usize) -> View {
        self.element(&self.params, i, elem)
    }

    /// Its gradient.
    pub fn grad_at(&self, i: usize, elem: usize) -> View {
        self.element(&self.grads, i, elem)
    }

    /// The parts of tensor i: (parameter view, gradient view, first element, elements).
    pub fn tensor_parts(&self, i: usize) -> Vec<(View, View, usize, usize)> {
        self.parts[i].iter().map(|p| (view(&self.params, p.at), view(&self.grads, p.at), p.start, p.len)).collect()
    }

    /// Make room for the figures of a window of `k` micro-batches (before its first one: a
    /// buffer replaced mid-window would lose the earlier micro-batches' figures).
    pub fn reserve_figures(&mut self, k: usize) {
        if k > self.figures_cap {
            self.figures_cap = k.next_power_of_two();
            self.realloc_figures();
        }
    }

    fn realloc_figures(&mut self) {
        let s = self.grad_stats.as_ref().map_or(0, |g| g.layout.len());
        self.figures = self.gpu.storage("window figures readback", Category::Scratch, figures_len(self.figures_cap, s));
    }

    /// Turn the per-micro-batch gradient statistics on (allocating G_{k-1}'s copy, the partial
    /// sums and the program) or off (freeing them). `stats`: (name, host offset, elements) of
    /// every statistic, each inside one parameter tensor (the checkpoint tensors). Between
    /// windows only: a window's statistics are valid when they were on before its first
    /// micro-batch.
    pub fn set_grad_stats(&mut self, stats: Option<&[(String, usize, usize)]>) -> Result<(), ProgramError> {
        let Some(stats) = stats else {
            if self.grad_stats.take().is_some() {
                self.realloc_figures();
            }
            return Ok(());
        };
        let layout = StatsLayout::new(&self.parts, &self.host_offsets, &self.sizes, self.grads.len(), stats);
        if self.grad_stats.as_ref().is_some_and(|g| g.layout == layout) {
            return Ok(());
        }
        self.grad_stats = None;
        let prev = allocate(&self.gpu, "gradient before the micro-batch", Category::Gradients, &self.packer)?;
        let table = layout.table();
        let table_buf = self.gpu.try_storage("gradient statistics table", Category::Scratch, table.len())?;
        self.gpu.upload(&table_buf, 0, &table);
        let partials_len = 2 * layout.workgroups.max(1);
        let partials = self.gpu.try_storage("gradient statistics partials", Category::Scratch, partials_len)?;
        let stats_buf = self.gpu.try_storage("gradient statistics", Category::Scratch, 2 * layout.len().max(1))?;
        for b in &prev {
            self.gpu.upload(b, 0, &vec![0.0f32; b.len()]);
        }
        let mut pb = ProgramBuilder::new(&self.gpu);
        let (tv, pv) = (View::of(&table_buf), View::of(&partials));
        for (b, (p, g)) in prev.iter().zip(&self.grads).enumerate() {
            let segs: Vec<usize> = (0..layout.segments.len()).filter(|&j| layout.segments[j].0 == b).collect();
            let (Some(&p0), Some(&p1)) = (segs.first(), segs.last()) else { continue };
            let wg0 = layout.segments[p0].1;
            let wgs = layout.segments.get(p1 + 1).map_or(layout.workgroups, |s| s.1) - wg0;
            pb.grad_stats_partial(&pv, partials_len, &View::of(p), &View::of(g), g.len(), &tv, table.len(), p0, p1 + 1, wg0, wgs)?;
        }
        let most = layout.ranges.iter().map(|(a, b)| b - a).max().unwrap_or(0);
        pb.grad_stats_final(&View::of(&stats_buf), layout.len(), &pv, partials_len, &tv, table.len(), layout.stats_at(), most)?;
        let prog = pb.finish("gradient statistics");
        self.grad_stats = Some(GradStatsDevice { layout, prev, stats: stats_buf, prog, window_valid: false });
        self.realloc_figures();
        Ok(())
    }

    /// Wall-clock seconds of one micro-batch's statistics pass (the program `record_end_micro`
    /// runs), averaged over `reps` waited submissions; None when the statistics are off. For
    /// `gradscope bench`, between windows (it moves G_{k-1}'s copy, which the next window's first
    /// micro-batch clears).
    pub fn time_grad_stats(&self, reps: usize) -> Result<Option<f64>, crate::gpu::readback::ReadbackError> {
        self.grad_stats.as_ref().map(|g| self.gpu.time_program(&g.prog, &[], reps)).transpose()
    }

    /// Whether the gradient statistics are on.
    pub fn grad_stats_on(&self) -> bool {
        self.grad_stats.is_some()
    }

    /// The statistics' names (None when off).
    pub fn grad_stats_names(&self) -> Option<&[String]> {
        self.grad_stats.as_ref().map(|g| g.layout.names.as_slice())
    }

    /// Open micro-batch `index` of a window in a submission: micro-step 0 zeroes the gradients
    /// and the window figures (gradients then accumulate with `+=`), and G_{k-1}'s copy.
    pub fn record_begin_micro(&mut self, s: &mut Submission, index: usize) {
        self.reserve_figures(index + 1);
        if index == 0 {
            for g in &self.grads {
                s.clear(g);
            }
            s.clear(&self.scratch);
            if let Some(gs) = &mut self.grad_stats {
                for p in &gs.prev {
                    s.clear(p);
                }
                gs.window_valid = true;
            }
        }
    }

    /// Close it: copy the cumulative loss sum and count after micro-batch `index` to the figures
    /// buffer (read with the window figures, no extra wait); with `grad_stats`, reduce the
    /// micro-batch's gradient statistics and copy them there too.
    pub fn record_end_micro(&self, s: &mut Submission, index: usize) {
        s.copy(&self.scratch, Scratch::LOSS_SUM, &self.figures, Scratch::LEN + 2 * index, 2);
        if let Some(gs) = &self.grad_stats {
            let n = 2 * gs.layout.len();
            s.run(&gs.prog);
            s.copy(&gs.stats, 0, &self.figures, Scratch::LEN + 2 * self.figures_cap + n * index, n);
        }
    }

    /// Every slab buffer of `slab` as a whole (view, elements).
    fn wholes(slab: &[GpuBuffer]) -> Vec<(View, usize)> {
        slab.iter().map(|b| (View::of(b), b.len())).collect()
    }

    /// Record the end-of-window programs (once; they bind only the fixed slabs). Whole-slab
    /// passes run once per slab buffer; the global norm sums every buffer's partial sums.
    fn step_programs(&mut self) -> Result<&StepProgram, ProgramError> {
        if self.step_prog.is_none() {
            let grads = Self::wholes(&self.grads);
            let norm = View::at(&self.scratch, Scratch::NORM);
            let totals = View::at(&self.scratch, Scratch::LOSS_SUM);
            let parts = View::of(&self.partials);
            let slabs = |v: &[(View, usize)]| -> Vec<(View, usize)> { v.to_vec() };

            let mut pb = ProgramBuilder::new(&self.gpu);
            for (g, n) in &grads {
                pb.scale_by_inverse_count(g, &totals, *n)?;
            }
            pb.grad_norm_slabs(&norm, &parts, &slabs(&grads))?;
            let prologue_norm = pb.finish("window normalize + norm");

            let mut pb = ProgramBuilder::new(&self.gpu);
            pb.grad_norm_slabs(&norm, &parts, &slabs(&grads))?;
            let norm_only = pb.finish("window norm");

            let mut pb = ProgramBuilder::new(&self.gpu);
            let unscale_index = grads.iter().map(|(g, n)| pb.scale(g, 1.0, *n)).collect::<Result<Vec<_>, _>>()?;
            let unscale = pb.finish("window unscale");

            let mut pb = ProgramBuilder::new(&self.gpu);
            let clip_index = grads.iter().map(|(g, n)| pb.clip_by_norm(g, &norm, 1.0, *n)).collect::<Result<Vec<_>, _>>()?;
            let prologue_clip = pb.finish("window clip");

            let mut pb = ProgramBuilder::new(&self.gpu);
            let hp = AdamW { lr: 0.0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
            // every part's candidate update is checked before any part steps (all or none)
            let flag = View::at(&self.scratch, Scratch::UPDATE_NONFINITE);
            pb.fill(&flag, 0.0, 1)?;
            let all: Vec<(usize, Part)> = self.parts.iter().enumerate().flat_map(|(i, ps)| ps.iter().map(move |p| (i, *p))).collect();
            let args = |p: &Part| (view(&self.params, p.at), view(&self.grads, p.at), view(&self.adam_m, p.at), view(&self.adam_v, p.at));
            let mut checks = Vec::new();
            for (_, part) in &all {
                let (p, g, m, v) = args(part);
                checks.push(pb.adamw_check(&p, &g, &m, &v, &totals, &norm, &flag, part.len, &hp, 1)?);
            }
            let mut adamw_index = Vec::new();
            for (j, (i, part)) in all.iter().enumerate() {
                let (p, g, m, v) = args(part);
                adamw_index.push((*i, checks[j], pb.adamw(&p, &g, &m, &v, &totals, &norm, &flag, part.len, &hp, 1)?));
            }
            // update = params - prev; its norm
            let prev = Self::wholes(&self.prev);
            for ((pv, n), (w, _)) in prev.iter().zip(Self::wholes(&self.params)) {
                pb.scale(pv, -1.0, *n)?;
                pb.accumulate(pv, &w, *n)?;
            }
            pb.grad_norm_slabs(&View::at(&self.scratch, Scratch::UPDATE_NORM), &parts, &prev)?;
            let adamw = pb.finish("adamw");
            self.step_prog = Some(StepProgram {
                prologue_norm, prologue_clip, clip_index, norm_only, unscale, unscale_index, adamw, adamw_index,
            });
        }
        Ok(self.step_prog.as_ref().unwrap())
    }

    /// Record the normalization `divide` and the global norm into `s`.
    fn record_divide(&mut self, s: &mut Submission, divide: WindowDivide) -> Result<(), ProgramError> {
        let lens = self.buffer_lens();
        let prog = self.step_programs()?;
        let unscale = |s: &mut Submission, scale: f32| {
            for (i, n) in prog.unscale_index.iter().zip(&lens) {
                prog.unscale.set_dims(*i, &crate::gpu::kernels::scale_uniforms(1.0 / scale, *n));
            }
            s.run(&prog.unscale);
        };
        match divide {
            WindowDivide::Count => {
                s.run(&prog.prologue_norm);
            }
            WindowDivide::Unscale(scale) => {
                unscale(s, scale);
                s.run(&prog.norm_only);
            }
            WindowDivide::UnscaleAndCount(scale) => {
                unscale(s, scale);
                s.run(&prog.prologue_norm);
            }
            WindowDivide::Nothing => {
                s.run(&prog.norm_only);
            }
        }
        Ok(())
    }

    /// Multiply the accumulated gradient by 1 / `scale` now (the wrong order kept for tests:
    /// unscaling the accumulator after every micro-batch instead of once per window).
    pub fn unscale_now(&mut self, scale: f32) -> Result<(), ProgramError> {
        let lens = self.buffer_lens();
        let gpu = self.gpu.clone();
        let prog = self.step_programs()?;
        for (i, n) in prog.unscale_index.iter().zip(&lens) {
            prog.unscale.set_dims(*i, &crate::gpu::kernels::scale_uniforms(1.0 / scale, *n));
        }
        let mut s = gpu.submission();
        s.run(&prog.unscale);
        s.submit();
        Ok(())
    }

    /// Wall-clock seconds of the end-of-window phases, each averaged over `reps` submissions
    /// with a wait: (normalize + global norm, clip, AdamW). For `gradscope bench`; it changes the
    /// parameters like real steps would.
    pub fn time_step_programs(&mut self, reps: usize) -> Result<(f64, f64, f64), ModelError> {
        let gpu = self.gpu.clone();
        let prog = self.step_programs()?;
        let time = |p: &Program| gpu.time_program(p, &[], reps);
        Ok((time(&prog.prologue_norm)?, time(&prog.prologue_clip)?, time(&prog.adamw)?))
    }

    /// The per-micro-batch clipping mistake (for `verify`), after the micro-batch `index` ran
    /// with the gradients cleared: its gradient alone is divided by the window count, clipped
    /// on its own norm to `max_norm`, and added to a sum. Call `finish_clipped_window` before
    /// `optimizer_step(.., divide_by_count = false)` with clipping off.
    pub fn clip_micro_batch(&mut self, index: usize, window_count: f32, max_norm: f32) -> Result<(), ProgramError> {
        let lens = self.buffer_lens();
        if self.micro_clip.is_none() {
            let accum = allocate(&self.gpu, "per-micro-batch clip sum", Category::Gradients, &self.packer)?;
            let grads = Self::wholes(&self.grads);
            let norm = View::at(&self.scratch, Scratch::NORM);
            let mut pb = ProgramBuilder::new(&self.gpu);
            let scale_index = grads.iter().map(|(g, n)| pb.scale(g, 1.0, *n)).collect::<Result<Vec<_>, _>>()?;
            pb.grad_norm_slabs(&norm, &View::of(&self.partials), &grads)?;
            let clip_index = grads.iter().map(|(g, n)| pb.clip_by_norm(g, &norm, 1.0, *n)).collect::<Result<Vec<_>, _>>()?;
            for ((g, n), a) in grads.iter().zip(&accum) {
                pb.accumulate(&View::of(a), g, *n)?;
            }
            self.micro_clip = Some(MicroClip { accum, prog: pb.finish("per-micro-batch clip"), scale_index, clip_index });
        }
        let mc = self.micro_clip.as_ref().unwrap();
        let clip = if max_norm > 0.0 { max_norm } else { f32::MAX };
        for ((si, ci), n) in mc.scale_index.iter().zip(&mc.clip_index).zip(&lens) {
            mc.prog.set_dims(*si, &crate::gpu::kernels::scale_uniforms(1.0 / window_count, *n));
            mc.prog.set_dims(*ci, &crate::gpu::kernels::clip_uniforms(clip, *n));
        }
        let mut s = self.gpu.submission();
        if index == 0 {
            for a in &mc.accum {
                s.clear(a);
            }
        }
        s.run(&mc.prog);
        // the next micro-batch's gradient starts from zero
        for g in &self.grads {
            s.clear(g);
        }
        s.submit();
        Ok(())
    }

    /// Move the per-micro-batch-clipped sum into the gradient slab.
    pub fn finish_clipped_window(&self) {
        if let Some(mc) = &self.micro_clip {
            let mut s = self.gpu.submission();
            for (a, g) in mc.accum.iter().zip(&self.grads) {
                s.copy(a, 0, g, 0, g.len());
            }
            s.submit();
        }
    }

    /// The optimizer step at the end of a window: normalize the accumulated gradient by the
    /// window's real count (read on the device), take its global L2 norm, clip once, AdamW.
    /// `step` is the 1-based optimizer step count (AdamW bias correction). One submission.
    /// `divide`: how the accumulated gradient is normalized (`WindowDivide::Nothing` when the
    /// gradient slab is already normalized: the per-micro-batch-mean mode, or after
    /// `normalized_window_gradient`).
    pub fn optimizer_step(&mut self, st: &StepSettings, step: u32, divide: WindowDivide) -> Result<(), ProgramError> {
        let mut s = self.gpu.submission();
        self.record_optimizer_step(&mut s, st, step, divide)?;
        s.submit();
        Ok(())
    }

    /// What `optimizer_step` records, into an open submission (the window's micro-batches and
    /// its step can then go to the device as one submission).
    pub fn record_optimizer_step(&mut self, s: &mut Submission, st: &StepSettings, step: u32, divide: WindowDivide) -> Result<(), ProgramError> {
        self.record_divide(s, divide)?;
        let lens = self.buffer_lens();
        let decay = self.decay.clone();
        let (params, prev, scratch, figures) = (self.params.clone(), self.prev.clone(), self.scratch.clone(), self.figures.clone());
        let part_lens: Vec<usize> = self.parts.iter().flatten().map(|p| p.len).collect();
        let prog = self.step_programs()?;
        for (&(i, check, step_index), &n) in prog.adamw_index.iter().zip(&part_lens) {
            let hp = AdamW {
                lr: st.lr, beta1: st.beta1, beta2: st.beta2, eps: st.eps,
                weight_decay: if decay[i] { st.weight_decay } else { 0.0 },
            };
            let u = adamw_uniforms(n, &hp, step);
            prog.adamw.set_dims(check, &u);
            prog.adamw.set_dims(step_index, &u);
        }
        if st.grad_clip > 0.0 {
            for (i, n) in prog.clip_index.iter().zip(&lens) {
                prog.prologue_clip.set_dims(*i, &crate::gpu::kernels::clip_uniforms(st.grad_clip, *n));
            }
            s.run(&prog.prologue_clip);
        }
        for (p, q) in params.iter().zip(&prev) {
            s.copy(p, 0, q, 0, p.len());
        }
        s.run(&prog.adamw);
        s.copy(&scratch, 0, &figures, 0, Scratch::LEN);
        Ok(())
    }

    /// Normalize the accumulated window gradient exactly as `optimizer_step` would (before
    /// clipping) and read it back, without stepping: for `verify`, tests and the app's stepping
    /// view. The gradient slab then holds the normalized gradient; start a new window after it.
    pub fn normalized_window_gradient(&mut self, divide: WindowDivide) -> Result<Vec<f32>, ModelError> {
        let mut s = self.gpu.submission();
        self.record_divide(&mut s, divide)?;
        s.submit();
        Ok(self.read_grads()?)
    }

    /// Read the figures of the window of `k` micro-batches just stepped (one wait): the logged
    /// loss, count and norm, each micro-batch's loss sum and count, and with `grad_stats` its
    /// gradient statistics in the gradient slab's units (the trainer divides the loss weight out:
    /// `GradStats::scale`).
    pub fn window_figures(&self, k: usize) -> Result<WindowFigures, crate::gpu::readback::ReadbackError> {
        let stats = self.grad_stats.as_ref().filter(|g| g.window_valid && k <= self.figures_cap);
        let s = stats.map_or(0, |g| g.layout.len());
        let len = if stats.is_some() { Scratch::LEN + 2 * self.figures_cap + 2 * s * k } else { Scratch::LEN + 2 * k };
        let f: Vec<f32> = self.gpu.read(&self.figures, 0, len)?;
        let mut micro = Vec::with_capacity(k);
        let (mut prev_l, mut prev_c) = (0.0f64, 0.0f64);
        for j in 0..k {
            let (l, c) = (f[Scratch::LEN + 2 * j] as f64, f[Scratch::LEN + 2 * j + 1] as f64);
            micro.push((l - prev_l, c - prev_c));
            (prev_l, prev_c) = (l, c);
        }
        let grad_stats = stats.map(|g| {
            let at = |j: usize, t: usize, w: usize| f[Scratch::LEN + 2 * self.figures_cap + 2 * s * j + 2 * t + w] as f64;
            crate::model::grad_stats::GradStats {
                tensors: g.layout.names.clone(),
                counts: micro.iter().map(|m| m.1).collect(),
                sq_norm: (0..k).map(|j| (0..s).map(|t| at(j, t, 0)).collect()).collect(),
                dot_prev: (0..k).map(|j| (0..s).map(|t| at(j, t, 1)).collect()).collect(),
                gram: None,
            }
        });
        Ok(WindowFigures {
            loss_sum: f[Scratch::LOSS_SUM] as f64,
            count: f[Scratch::COUNT] as f64,
            grad_norm: f[Scratch::NORM] as f64,
            update_norm: f[Scratch::UPDATE_NORM] as f64,
            update_nonfinite: f[Scratch::UPDATE_NONFINITE] != 0.0,
            micro,
            grad_stats,
        })
    }

    /// The window so far, without stepping (stepping mode; waits): cumulative loss sum and count.
    pub fn running_figures(&self) -> Result<(f64, f64), crate::gpu::readback::ReadbackError> {
        let f: Vec<f32> = self.gpu.read(&self.scratch, 0, 2)?;
        Ok((f[0] as f64, f[1] as f64))
    }

    /// The parameters in the host layout.
    pub fn read_params(&self) -> Result<Vec<f32>, crate::gpu::readback::ReadbackError> {
        self.read_host(&self.params)
    }
    /// The gradient slab in the host layout.
    pub fn read_grads(&self) -> Result<Vec<f32>, crate::gpu::readback::ReadbackError> {
        self.read_host(&self.grads)
    }
    /// AdamW first and second moments (host layout).
    pub fn read_adam(&self) -> Result<(Vec<f32>, Vec<f32>), crate::gpu::readback::ReadbackError> {
        Ok((self.read_host(&self.adam_m)?, self.read_host(&self.adam_v)?))
    }
    /// Restore parameters and AdamW moments (resume; host layout).
    pub fn load_state(&self, params: &[f32], m: &[f32], v: &[f32]) {
        self.upload_host(&self.params, params);
        self.upload_host(&self.adam_m, m);
        self.upload_host(&self.adam_v, v);
    }

    /// Overwrite the parameters (host layout).
    pub fn load_params(&self, params: &[f32]) {
        self.upload_host(&self.params, params);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error(transparent)]
    Readback(#[from] crate::gpu::readback::ReadbackError),
}

/// What a window leaves on the device, read once per optimizer step.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowFigures {
    /// Sum of the losses of every counted target of the window.
    pub loss_sum: f64,
    /// Number of counted targets.
    pub count: f64,
    /// Global L2 norm of the normalized gradient before clipping.
    pub grad_norm: f64,
    /// L2 norm of the parameter update of the step.
    pub update_norm: f64,
    /// The step would have written a non-finite weight or moment, so the device skipped AdamW
    /// (weights and moments untouched).
    pub update_nonfinite: bool,
    /// Per micro-batch: (loss sum, count of targets).
    pub micro: Vec<(f64, f64)>,
    /// Per-micro-batch gradient statistics (`grad_stats = true`; None when off, or when they were
    /// turned on after the window's first micro-batch). `Slabs::window_figures` gives them in
    /// the gradient slab's units (loss weight x summed gradient); the trainer's `finish_window`
    /// divides the loss weight out, so a trainer's figures are in summed-gradient units (each
    /// counted item's loss weighing 1).
    pub grad_stats: Option<crate::model::grad_stats::GradStats>,
}

impl WindowFigures {
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.count.max(1.0)
    }

    /// Per micro-batch: (mean loss over its counted targets, counted targets).
    pub fn micro_means(&self) -> Vec<(f64, f64)> {
        self.micro.iter().map(|&(l, c)| (l / c.max(1.0), c)).collect()
    }
}

