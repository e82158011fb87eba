//! The GPT on the GPU: parameter, gradient, AdamW-state and activation slabs (llm.c layout, named
//! offsets), and forward/backward as readable lists of dispatches recorded once into programs.
//!
//! Dimensions: B micro-batch, T sequence length (= block_size), C channels, NH heads, V vocab,
//! L layers. Activations are sized by B; changing B rebuilds only the activation slabs and the
//! programs that bind them.

use crate::gpu::kernels::{AdamW, adamw_uniforms};
use crate::gpu::{Category, Gpu, GpuBuffer, Program, ProgramBuilder, ProgramError, View};
use crate::reference::gpt::GptConfig;

/// Number of parameter tensors (see `GptConfig::param_names`).
pub const NUM_PARAM_TENSORS: usize = 16;

/// Parameter tensor indices in the slab (llm.c order).
pub mod p {
    pub const WTE: usize = 0;
    pub const WPE: usize = 1;
    pub const LN1W: usize = 2;
    pub const LN1B: usize = 3;
    pub const QKVW: usize = 4;
    pub const QKVB: usize = 5;
    pub const ATTPROJW: usize = 6;
    pub const ATTPROJB: usize = 7;
    pub const LN2W: usize = 8;
    pub const LN2B: usize = 9;
    pub const FCW: usize = 10;
    pub const FCB: usize = 11;
    pub const FCPROJW: usize = 12;
    pub const FCPROJB: usize = 13;
    pub const LNFW: usize = 14;
    pub const LNFB: usize = 15;
}

/// Whether AdamW decays a parameter tensor: 2-D weights (embeddings and linear weights) yes,
/// LayerNorm parameters and biases no.
pub fn decays(tensor: usize) -> bool {
    matches!(tensor, p::WTE | p::WPE | p::QKVW | p::ATTPROJW | p::FCW | p::FCPROJW)
}

/// Offsets (in f32 elements) of every activation tensor of a micro-batch of B sequences.
/// Each tensor starts at a multiple of 4 so the vec4 matmul can read it.
#[derive(Clone, Debug)]
pub struct ActLayout {
    pub b: usize,
    pub t: usize,
    pub encoded: usize,          // [B,T,C]
    pub ln1: Vec<usize>,         // L x [B,T,C]
    pub ln1_mean: Vec<usize>,    // L x [B,T]
    pub ln1_rstd: Vec<usize>,    // L x [B,T]
    pub qkv: Vec<usize>,         // L x [B,T,3C]
    pub atty: Vec<usize>,        // L x [B,T,C]
    pub preatt: Vec<usize>,      // L x [B,NH,T,T]
    pub att: Vec<usize>,         // L x [B,NH,T,T]
    pub attproj: Vec<usize>,     // L x [B,T,C]
    pub residual2: Vec<usize>,   // L x [B,T,C]
    pub ln2: Vec<usize>,         // L x [B,T,C]
    pub ln2_mean: Vec<usize>,    // L x [B,T]
    pub ln2_rstd: Vec<usize>,    // L x [B,T]
    pub fch: Vec<usize>,         // L x [B,T,4C]
    pub fch_gelu: Vec<usize>,    // L x [B,T,4C]
    pub fcproj: Vec<usize>,      // L x [B,T,C]
    pub residual3: Vec<usize>,   // L x [B,T,C]
    pub lnf: usize,              // [B,T,C]
    pub lnf_mean: usize,         // [B,T]
    pub lnf_rstd: usize,         // [B,T]
    pub logits: usize,           // [B,T,V]
    pub losses: usize,           // [B,T]
    /// Total elements.
    pub len: usize,
}

impl ActLayout {
    pub fn new(cfg: &GptConfig, b: usize, t: usize) -> Self {
        let (c, nh, v, l) = (cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_layer);
        let bt = b * t;
        let mut at = 0usize;
        let mut take = |n: usize| {
            let o = at;
            at = (at + n).next_multiple_of(4);
            o
        };
        let encoded = take(bt * c);
        let mut per = |n: usize| (0..l).map(|_| take(n)).collect::<Vec<_>>();
        let ln1 = per(bt * c);
        let ln1_mean = per(bt);
        let ln1_rstd = per(bt);
        let qkv = per(bt * 3 * c);
        let atty = per(bt * c);
        let preatt = per(b * nh * t * t);
        let att = per(b * nh * t * t);
        let attproj = per(bt * c);
        let residual2 = per(bt * c);
        let ln2 = per(bt * c);
        let ln2_mean = per(bt);
        let ln2_rstd = per(bt);
        let fch = per(bt * 4 * c);
        let fch_gelu = per(bt * 4 * c);
        let fcproj = per(bt * c);
        let residual3 = per(bt * c);
        let lnf = take(bt * c);
        let lnf_mean = take(bt);
        let lnf_rstd = take(bt);
        let logits = take(bt * v);
        let losses = take(bt);
        Self {
            b, t, encoded, ln1, ln1_mean, ln1_rstd, qkv, atty, preatt, att, attproj, residual2, ln2,
            ln2_mean, ln2_rstd, fch, fch_gelu, fcproj, residual3, lnf, lnf_mean, lnf_rstd, logits,
            losses, len: at,
        }
    }

    /// Bytes of one activation slab.
    pub fn bytes(&self) -> u64 {
        self.len.max(1) as u64 * 4
    }
}

/// Small device-side figures of the current window: [loss sum, target count, grad norm, norm^2].
pub struct Scratch;
impl Scratch {
    pub const LOSS_SUM: usize = 0;
    pub const COUNT: usize = 1;
    pub const NORM: usize = 2;
    /// L2 norm of the step's parameter update (and its square at +1).
    pub const UPDATE_NORM: usize = 4;
    pub const LEN: usize = 8;
}

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

/// The GPT's GPU state: slabs and recorded programs.
pub struct GpuGpt {
    pub gpu: Gpu,
    pub cfg: GptConfig,
    pub params: GpuBuffer,   // [num_params]
    pub grads: GpuBuffer,    // [num_params]
    pub adam_m: GpuBuffer,   // [num_params]
    pub adam_v: GpuBuffer,   // [num_params]
    pub scratch: GpuBuffer,  // [Scratch::LEN]
    /// Read once per window: [window figures (Scratch::LEN) | cumulative (loss sum, count) after
    /// each micro-batch (2 per micro-batch)], filled by copies inside the submissions.
    figures: GpuBuffer,
    figures_cap: usize,
    pub partials: GpuBuffer, // [NORM_GROUPS]
    /// The parameters before the step, then the update (for ||update||); scratch.
    prev: GpuBuffer,         // [num_params]
    pub offsets: [usize; NUM_PARAM_TENSORS],
    pub sizes: [usize; NUM_PARAM_TENSORS],
    mb: Option<MicroBatch>,
    step_prog: Option<StepProgram>,
    micro_clip: Option<MicroClip>,
}

/// The per-micro-batch clipping mistake, kept for `verify`: a sum slab and the program that
/// normalizes, clips and adds one micro-batch's gradient to it.
struct MicroClip {
    accum: GpuBuffer,
    prog: Program,
    scale_index: usize,
    clip_index: usize,
}

/// Everything sized by the micro-batch: activation slabs, token buffers and the programs that
/// bind them.
struct MicroBatch {
    layout: ActLayout,
    acts: GpuBuffer,
    inputs: GpuBuffer,  // [B,T] u32
    targets: GpuBuffer, // [B,T] u32
    /// forward + loss + backward for one micro-batch (gradients accumulate into `grads`)
    train: Program,
    /// index of the crossentropy_backward dispatch in `train` (dloss is rewritten for the
    /// per-micro-batch-mean normalization)
    ce_backward: usize,
    ce_uniform_base: CeUniform,
    /// forward + loss only (evaluation)
    eval: Program,
}

#[derive(Clone)]
struct CeUniform {
    dlogits: View,
    logits: View,
    targets: View,
    n: usize,
    v: usize,
}

struct StepProgram {
    /// window-count normalization, global norm, clip
    prologue_norm: Program,
    prologue_clip: Program,
    clip_index: usize,
    /// norm only (no clipping, per-micro-batch-mean mode already scaled)
    norm_only: Program,
    adamw: Program,
}

impl GpuGpt {
    /// Allocate parameter, gradient and optimizer slabs and upload `params` (host layout =
    /// `GptConfig::param_offsets`).
    pub fn new(gpu: &Gpu, cfg: GptConfig, params: &[f32]) -> Result<Self, ProgramError> {
        let n = cfg.num_params();
        assert_eq!(params.len(), n, "parameter count");
        let pbuf = gpu.try_storage("parameters", Category::Parameters, n)?;
        let grads = gpu.try_storage("gradients", Category::Gradients, n)?;
        let adam_m = gpu.try_storage("adamw m", Category::OptimizerState, n)?;
        let adam_v = gpu.try_storage("adamw v", Category::OptimizerState, n)?;
        let scratch = gpu.storage("window figures", Category::Scratch, Scratch::LEN);
        let partials = gpu.storage("norm partials", Category::Scratch, crate::gpu::kernels::NORM_GROUPS);
        let prev = gpu.try_storage("parameters before the step", Category::Scratch, n)?;
        gpu.upload(&pbuf, 0, params);
        let zeros = vec![0.0f32; n];
        gpu.upload(&adam_m, 0, &zeros);
        gpu.upload(&adam_v, 0, &zeros);
        gpu.upload(&grads, 0, &zeros);
        gpu.upload(&scratch, 0, &[0.0f32; Scratch::LEN]);
        let figures_cap = 16;
        let figures = gpu.storage("window figures readback", Category::Scratch, Scratch::LEN + 2 * figures_cap);
        let offsets = cfg.param_offsets();
        let sizes = cfg.param_sizes();
        Ok(Self {
            gpu: gpu.clone(), cfg, params: pbuf, grads, adam_m, adam_v, scratch, figures, figures_cap, partials, prev, offsets, sizes,
            mb: None, step_prog: None, micro_clip: None,
        })
    }

    fn pv(&self, i: usize) -> View {
        View::at(&self.params, self.offsets[i])
    }
    fn gv(&self, i: usize) -> View {
        View::at(&self.grads, self.offsets[i])
    }

    /// The current micro-batch size (0 before `set_micro_batch`).
    pub fn micro_batch(&self) -> usize {
        self.mb.as_ref().map_or(0, |m| m.layout.b)
    }

    /// Bytes of the activation slab at micro-batch `b` (for limit checks before allocating).
    pub fn activation_slab_bytes(cfg: &GptConfig, b: usize) -> u64 {
        ActLayout::new(cfg, b, cfg.block_size).bytes()
    }

    /// Bytes in the activations category at micro-batch `b`, exactly as `set_micro_batch`
    /// allocates them: the activation slab, its gradient slab, and the input and target tokens.
    pub fn predicted_activation_bytes(cfg: &GptConfig, b: usize) -> u64 {
        let slab = Self::activation_slab_bytes(cfg, b);
        let tokens = ((b * cfg.block_size).max(1) as u64 * 4).next_multiple_of(4);
        2 * slab + 2 * tokens
    }

    /// (Re)allocate the activation slabs for micro-batch `b` and record the programs that bind
    /// them. Only the activation slabs change; parameters, gradients and AdamW state stay.
    pub fn set_micro_batch(&mut self, b: usize) -> Result<(), ProgramError> {
        if self.micro_batch() == b {
            return Ok(());
        }
        self.mb = None; // free the old slabs before allocating new ones
        let t = self.cfg.block_size;
        let layout = ActLayout::new(&self.cfg, b, t);
        let acts = self.gpu.try_storage("activations", Category::Activations, layout.len)?;
        let dacts = self.gpu.try_storage("activation gradients", Category::Activations, layout.len)?;
        let inputs = self.gpu.try_storage("input tokens", Category::Activations, b * t)?;
        let targets = self.gpu.try_storage("target tokens", Category::Activations, b * t)?;

        let mut pb = ProgramBuilder::new(&self.gpu);
        self.record_forward(&mut pb, &layout, &acts, &inputs, &targets)?;
        let eval = pb.finish("gpt eval");

        let mut pb = ProgramBuilder::new(&self.gpu);
        // activation gradients start from zero each micro-batch (backward kernels accumulate)
        pb.fill(&View::of(&dacts), 0.0, layout.len)?;
        self.record_forward(&mut pb, &layout, &acts, &inputs, &targets)?;
        let (ce_backward, ce) = self.record_backward(&mut pb, &layout, &acts, &dacts, &inputs, &targets)?;
        let train = pb.finish("gpt train micro-batch");
        self.mb = Some(MicroBatch {
            layout, acts, inputs, targets, train, ce_backward, ce_uniform_base: ce, eval,
        });
        Ok(())
    }

    /// Forward pass and loss of one micro-batch (llm.c gpt2_forward as a dispatch list).
    fn record_forward(
        &self, pb: &mut ProgramBuilder, a: &ActLayout, acts: &GpuBuffer, inputs: &GpuBuffer, targets: &GpuBuffer,
    ) -> Result<(), ProgramError> {
        let (b, t) = (a.b, a.t);
        let (c, nh, v) = (self.cfg.n_embd, self.cfg.n_head, self.cfg.vocab_size);
        let bt = b * t;
        let act = |o: usize| View::at(acts, o);
        let (ci, cl) = (self.cfg.n_embd, self.cfg.n_layer);
        let lw = |i: usize, l: usize, per: usize| self.pv(i).add(l * per);

        pb.encoder_forward(&act(a.encoded), &View::of(inputs), &self.pv(p::WTE), &self.pv(p::WPE), b, t, c)?;
        for l in 0..cl {
            let residual = if l == 0 { act(a.encoded) } else { act(a.residual3[l - 1]) };
            pb.layernorm_forward(&act(a.ln1[l]), &act(a.ln1_mean[l]), &act(a.ln1_rstd[l]), &residual,
                &lw(p::LN1W, l, ci), &lw(p::LN1B, l, ci), bt, c)?;
            pb.matmul_forward(&act(a.qkv[l]), &act(a.ln1[l]), &lw(p::QKVW, l, 3 * c * c), Some(&lw(p::QKVB, l, 3 * c)), bt, c, 3 * c)?;
            pb.attention_forward(&act(a.atty[l]), &act(a.preatt[l]), &act(a.att[l]), &act(a.qkv[l]), b, t, c, nh)?;
            pb.matmul_forward(&act(a.attproj[l]), &act(a.atty[l]), &lw(p::ATTPROJW, l, c * c), Some(&lw(p::ATTPROJB, l, c)), bt, c, c)?;
            pb.residual_forward(&act(a.residual2[l]), &residual, &act(a.attproj[l]), bt * c)?;
            pb.layernorm_forward(&act(a.ln2[l]), &act(a.ln2_mean[l]), &act(a.ln2_rstd[l]), &act(a.residual2[l]),
                &lw(p::LN2W, l, ci), &lw(p::LN2B, l, ci), bt, c)?;
            pb.matmul_forward(&act(a.fch[l]), &act(a.ln2[l]), &lw(p::FCW, l, 4 * c * c), Some(&lw(p::FCB, l, 4 * c)), bt, c, 4 * c)?;
            pb.gelu_forward(&act(a.fch_gelu[l]), &act(a.fch[l]), bt * 4 * c)?;
            pb.matmul_forward(&act(a.fcproj[l]), &act(a.fch_gelu[l]), &lw(p::FCPROJW, l, 4 * c * c), Some(&lw(p::FCPROJB, l, c)), bt, 4 * c, c)?;
            pb.residual_forward(&act(a.residual3[l]), &act(a.residual2[l]), &act(a.fcproj[l]), bt * c)?;
        }
        let last = if cl == 0 { act(a.encoded) } else { act(a.residual3[cl - 1]) };
        pb.layernorm_forward(&act(a.lnf), &act(a.lnf_mean), &act(a.lnf_rstd), &last, &self.pv(p::LNFW), &self.pv(p::LNFB), bt, c)?;
        // lm_head tied to wte: logits [BT,V] = lnf [BT,C] . wte [V,C]^T
        pb.matmul_forward(&act(a.logits), &act(a.lnf), &self.pv(p::WTE), None, bt, c, v)?;
        pb.crossentropy_forward(&act(a.losses), &act(a.logits), &View::of(targets), bt, v)?;
        // window figures: loss sum and count accumulate over the micro-batches of the window
        pb.crossentropy_reduce(&View::at(&self.scratch, Scratch::LOSS_SUM), &act(a.losses), &View::of(targets), bt)?;
        Ok(())
    }

    /// Backward pass of one micro-batch; parameter gradients accumulate (`+=`) into `grads`.
    #[allow(clippy::too_many_arguments)]
    fn record_backward(
        &self, pb: &mut ProgramBuilder, a: &ActLayout, acts: &GpuBuffer, dacts: &GpuBuffer, inputs: &GpuBuffer,
        targets: &GpuBuffer,
    ) -> Result<(usize, CeUniform), ProgramError> {
        let (b, t) = (a.b, a.t);
        let (c, nh, v, cl) = (self.cfg.n_embd, self.cfg.n_head, self.cfg.vocab_size, self.cfg.n_layer);
        let bt = b * t;
        let act = |o: usize| View::at(acts, o);
        let dact = |o: usize| View::at(dacts, o);
        let lw = |i: usize, l: usize, per: usize| self.pv(i).add(l * per);
        let lg = |i: usize, l: usize, per: usize| self.gv(i).add(l * per);

        // reduction = sum: each counted target's loss has weight 1; the window's gradient is
        // divided once by the window's count at the step.
        let ce = CeUniform { dlogits: dact(a.logits), logits: act(a.logits), targets: View::of(targets), n: bt, v };
        let ce_idx = pb.crossentropy_backward(&ce.dlogits, &ce.logits, &ce.targets, 1.0, bt, v)?;
        pb.matmul_backward(Some(&dact(a.lnf)), &self.gv(p::WTE), None, &dact(a.logits), &act(a.lnf), &self.pv(p::WTE), bt, c, v)?;
        let last = if cl == 0 { a.encoded } else { a.residual3[cl - 1] };
        pb.layernorm_backward(&dact(last), &self.gv(p::LNFW), &self.gv(p::LNFB), &dact(a.lnf), &act(last),
            &self.pv(p::LNFW), &act(a.lnf_mean), &act(a.lnf_rstd), bt, c)?;
        for l in (0..cl).rev() {
            let residual = if l == 0 { a.encoded } else { a.residual3[l - 1] };
            // residual3 = residual2 + fcproj
            pb.residual_backward(&dact(a.residual2[l]), &dact(a.fcproj[l]), &dact(a.residual3[l]), bt * c)?;
            pb.matmul_backward(Some(&dact(a.fch_gelu[l])), &lg(p::FCPROJW, l, 4 * c * c), Some(&lg(p::FCPROJB, l, c)),
                &dact(a.fcproj[l]), &act(a.fch_gelu[l]), &lw(p::FCPROJW, l, 4 * c * c), bt, 4 * c, c)?;
            pb.gelu_backward(&dact(a.fch[l]), &act(a.fch[l]), &dact(a.fch_gelu[l]), bt * 4 * c)?;
            pb.matmul_backward(Some(&dact(a.ln2[l])), &lg(p::FCW, l, 4 * c * c), Some(&lg(p::FCB, l, 4 * c)),
                &dact(a.fch[l]), &act(a.ln2[l]), &lw(p::FCW, l, 4 * c * c), bt, c, 4 * c)?;
            pb.layernorm_backward(&dact(a.residual2[l]), &lg(p::LN2W, l, c), &lg(p::LN2B, l, c), &dact(a.ln2[l]),
                &act(a.residual2[l]), &lw(p::LN2W, l, c), &act(a.ln2_mean[l]), &act(a.ln2_rstd[l]), bt, c)?;
            // residual2 = residual + attproj
            pb.residual_backward(&dact(residual), &dact(a.attproj[l]), &dact(a.residual2[l]), bt * c)?;
            pb.matmul_backward(Some(&dact(a.atty[l])), &lg(p::ATTPROJW, l, c * c), Some(&lg(p::ATTPROJB, l, c)),
                &dact(a.attproj[l]), &act(a.atty[l]), &lw(p::ATTPROJW, l, c * c), bt, c, c)?;
            pb.attention_backward(&dact(a.qkv[l]), &dact(a.preatt[l]), &dact(a.att[l]), &dact(a.atty[l]),
                &act(a.qkv[l]), &act(a.att[l]), b, t, c, nh)?;
            pb.matmul_backward(Some(&dact(a.ln1[l])), &lg(p::QKVW, l, 3 * c * c), Some(&lg(p::QKVB, l, 3 * c)),
                &dact(a.qkv[l]), &act(a.ln1[l]), &lw(p::QKVW, l, 3 * c * c), bt, c, 3 * c)?;
            pb.layernorm_backward(&dact(residual), &lg(p::LN1W, l, c), &lg(p::LN1B, l, c), &dact(a.ln1[l]),
                &act(residual), &lw(p::LN1W, l, c), &act(a.ln1_mean[l]), &act(a.ln1_rstd[l]), bt, c)?;
        }
        pb.encoder_backward(&self.gv(p::WTE), &self.gv(p::WPE), &dact(a.encoded), &View::of(inputs), b, t, c)?;
        Ok((ce_idx, ce))
    }

    /// Record the end-of-window programs (once; they bind only the fixed slabs).
    fn step_programs(&mut self) -> Result<&StepProgram, ProgramError> {
        if self.step_prog.is_none() {
            let n = self.cfg.num_params();
            let grads = View::of(&self.grads);
            let norm = View::at(&self.scratch, Scratch::NORM);
            let totals = View::at(&self.scratch, Scratch::LOSS_SUM);
            let parts = View::of(&self.partials);

            let mut pb = ProgramBuilder::new(&self.gpu);
            pb.scale_by_inverse_count(&grads, &totals, n)?;
            pb.grad_norm(&norm, &parts, &grads, n)?;
            let prologue_norm = pb.finish("window normalize + norm");

            let mut pb = ProgramBuilder::new(&self.gpu);
            pb.grad_norm(&norm, &parts, &grads, n)?;
            let norm_only = pb.finish("window norm");

            let mut pb = ProgramBuilder::new(&self.gpu);
            let clip_index = pb.clip_by_norm(&grads, &norm, 1.0, n)?;
            let prologue_clip = pb.finish("window clip");

            let mut pb = ProgramBuilder::new(&self.gpu);
            let hp = AdamW { lr: 0.0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
            for i in 0..NUM_PARAM_TENSORS {
                pb.adamw(&self.pv(i), &self.gv(i), &View::at(&self.adam_m, self.offsets[i]),
                    &View::at(&self.adam_v, self.offsets[i]), &totals, &norm, self.sizes[i], &hp, 1)?;
            }
            // update = params - prev; its norm
            let prev = View::of(&self.prev);
            pb.scale(&prev, -1.0, n)?;
            pb.accumulate(&prev, &View::of(&self.params), n)?;
            pb.grad_norm(&View::at(&self.scratch, Scratch::UPDATE_NORM), &parts, &prev, n)?;
            let adamw = pb.finish("adamw");
            self.step_prog = Some(StepProgram { prologue_norm, prologue_clip, clip_index, norm_only, adamw });
        }
        Ok(self.step_prog.as_ref().unwrap())
    }

    /// Run one micro-batch: upload its tokens, and on micro-step 0 of a window zero the
    /// gradients and the window figures first; then forward, loss and backward, with parameter
    /// gradients accumulating into the gradient slab. One submission, no readback.
    ///
    /// `dloss` is the weight of each counted target's loss in the gradient: 1 for the correct
    /// normalization (reduction = sum, divided once by the window count at the step);
    /// 1/(count_j * K) reproduces the per-micro-batch-mean bug.
    /// `index` is the micro-batch's position j in the window: the cumulative loss sum and count
    /// after it are copied to the figures buffer (read with the window figures, no extra wait).
    pub fn micro_step(&mut self, inputs: &[u32], targets: &[u32], index: usize, dloss: f32) {
        let first_in_window = index == 0;
        if index >= self.figures_cap {
            self.figures_cap = (index + 1).next_power_of_two();
            self.figures = self.gpu.storage("window figures readback", Category::Scratch, Scratch::LEN + 2 * self.figures_cap);
        }
        let mb = self.mb.as_ref().expect("set_micro_batch before micro_step");
        let bt = mb.layout.b * mb.layout.t;
        assert_eq!(inputs.len(), bt, "inputs must be [B,T]");
        assert_eq!(targets.len(), bt, "targets must be [B,T]");
        self.gpu.upload(&mb.inputs, 0, inputs);
        self.gpu.upload(&mb.targets, 0, targets);
        let ce = &mb.ce_uniform_base;
        let u = crate::gpu::kernels::crossentropy_backward_uniforms(&ce.dlogits, &ce.logits, &ce.targets, dloss, ce.n, ce.v);
        mb.train.set_uniform(mb.ce_backward, &u);
        let mut s = self.gpu.submission();
        if first_in_window {
            s.clear(&self.grads).clear(&self.scratch);
        }
        s.run(&mb.train);
        s.copy(&self.scratch, Scratch::LOSS_SUM, &self.figures, Scratch::LEN + 2 * index, 2);
        s.submit();
    }

    /// The per-micro-batch clipping mistake (for `verify`): this micro-batch's gradient alone is
    /// divided by the window count, clipped on its own norm to `max_norm`, and added to a sum.
    /// Call `finish_clipped_window` before `optimizer_step(.., divide_by_count = false)`
    /// with clipping off (the gradient is then already normalized and clipped).
    pub fn micro_step_clipped(
        &mut self, inputs: &[u32], targets: &[u32], index: usize, window_count: f32, max_norm: f32,
    ) -> Result<(), ProgramError> {
        let first_in_window = index == 0;
        if self.micro_clip.is_none() {
            let n = self.cfg.num_params();
            let accum = self.gpu.storage("per-micro-batch clip sum", Category::Gradients, n);
            let grads = View::of(&self.grads);
            let mut pb = ProgramBuilder::new(&self.gpu);
            let scale_index = pb.scale(&grads, 1.0, n)?;
            pb.grad_norm(&View::at(&self.scratch, Scratch::NORM), &View::of(&self.partials), &grads, n)?;
            let clip_index = pb.clip_by_norm(&grads, &View::at(&self.scratch, Scratch::NORM), 1.0, n)?;
            pb.accumulate(&View::of(&accum), &grads, n)?;
            self.micro_clip = Some(MicroClip { accum, prog: pb.finish("per-micro-batch clip"), scale_index, clip_index });
        }
        if !first_in_window {
            let mut s = self.gpu.submission();
            s.clear(&self.grads);
            s.submit();
        }
        self.micro_step(inputs, targets, index, 1.0);
        let mc = self.micro_clip.as_ref().unwrap();
        let n = self.cfg.num_params();
        let grads = View::of(&self.grads);
        mc.prog.set_uniform(mc.scale_index, &crate::gpu::kernels::scale_uniforms(&grads, 1.0 / window_count, n));
        let clip = if max_norm > 0.0 { max_norm } else { f32::MAX };
        mc.prog.set_uniform(mc.clip_index, &crate::gpu::kernels::clip_uniforms(&grads, &View::at(&self.scratch, Scratch::NORM), clip, n));
        let mut s = self.gpu.submission();
        if first_in_window {
            s.clear(&mc.accum);
        }
        s.run(&mc.prog);
        s.submit();
        Ok(())
    }

    /// Move the per-micro-batch-clipped sum into the gradient slab.
    pub fn finish_clipped_window(&self) {
        if let Some(mc) = &self.micro_clip {
            let mut s = self.gpu.submission();
            s.copy(&mc.accum, 0, &self.grads, 0, self.cfg.num_params());
            s.submit();
        }
    }

    /// The optimizer step at the end of a window: normalize the accumulated gradient by the
    /// window's real count (read on the device), take its global L2 norm, clip once, AdamW.
    /// `step` is the 1-based optimizer step count (AdamW bias correction). One submission.
    /// `divide_by_count`: false when the gradient slab is already normalized (the
    /// per-micro-batch-mean mode, or after `normalized_window_gradient`).
    pub fn optimizer_step(&mut self, st: &StepSettings, step: u32, divide_by_count: bool) -> Result<(), ProgramError> {
        let n = self.cfg.num_params();
        let offsets = self.offsets;
        let sizes = self.sizes;
        let (params, grads, m, v) = (self.params.clone(), self.grads.clone(), self.adam_m.clone(), self.adam_v.clone());
        let scratch = self.scratch.clone();
        let (prev, figures) = (self.prev.clone(), self.figures.clone());
        let gpu = self.gpu.clone();
        let prog = self.step_programs()?;
        for i in 0..NUM_PARAM_TENSORS {
            let hp = AdamW {
                lr: st.lr, beta1: st.beta1, beta2: st.beta2, eps: st.eps,
                weight_decay: if decays(i) { st.weight_decay } else { 0.0 },
            };
            let u = adamw_uniforms(&View::at(&params, offsets[i]), &View::at(&grads, offsets[i]),
                &View::at(&m, offsets[i]), &View::at(&v, offsets[i]), &View::at(&scratch, Scratch::LOSS_SUM),
                &View::at(&scratch, Scratch::NORM), sizes[i], &hp, step);
            prog.adamw.set_uniform(i, &u);
        }
        let mut s = gpu.submission();
        if divide_by_count {
            s.run(&prog.prologue_norm);
        } else {
            s.run(&prog.norm_only);
        }
        if st.grad_clip > 0.0 {
            let u = crate::gpu::kernels::clip_uniforms(&View::of(&grads), &View::at(&scratch, Scratch::NORM), st.grad_clip, n);
            prog.prologue_clip.set_uniform(prog.clip_index, &u);
            s.run(&prog.prologue_clip);
        }
        s.copy(&params, 0, &prev, 0, n);
        s.run(&prog.adamw);
        s.copy(&scratch, 0, &figures, 0, Scratch::LEN);
        s.submit();
        Ok(())
    }

    /// Normalize the accumulated window gradient exactly as `optimizer_step` would (before
    /// clipping) and read it back, without stepping: for `verify`, tests and the app's stepping
    /// view. The gradient slab then holds the normalized gradient; start a new window after it.
    pub fn normalized_window_gradient(&mut self, divide_by_count: bool) -> Result<Vec<f32>, GpuGptError> {
        let gpu = self.gpu.clone();
        let prog = self.step_programs()?;
        let mut s = gpu.submission();
        if divide_by_count {
            s.run(&prog.prologue_norm);
        } else {
            s.run(&prog.norm_only);
        }
        s.submit();
        Ok(self.read_grads()?)
    }

    /// Read the figures of the window of `k` micro-batches just stepped (one wait): the logged
    /// loss, count and norm, and each micro-batch's loss sum and count.
    pub fn window_figures(&self, k: usize) -> Result<WindowFigures, crate::gpu::readback::ReadbackError> {
        let f: Vec<f32> = self.gpu.read(&self.figures, 0, Scratch::LEN + 2 * k)?;
        let mut micro = Vec::with_capacity(k);
        let (mut prev_l, mut prev_c) = (0.0f64, 0.0f64);
        for j in 0..k {
            let (l, c) = (f[Scratch::LEN + 2 * j] as f64, f[Scratch::LEN + 2 * j + 1] as f64);
            micro.push((l - prev_l, c - prev_c));
            (prev_l, prev_c) = (l, c);
        }
        Ok(WindowFigures {
            loss_sum: f[Scratch::LOSS_SUM] as f64,
            count: f[Scratch::COUNT] as f64,
            grad_norm: f[Scratch::NORM] as f64,
            update_norm: f[Scratch::UPDATE_NORM] as f64,
            micro,
        })
    }

    /// The window so far, without stepping (stepping mode; waits): cumulative loss sum and count.
    pub fn running_figures(&self) -> Result<(f64, f64), crate::gpu::readback::ReadbackError> {
        let f: Vec<f32> = self.gpu.read(&self.scratch, 0, 2)?;
        Ok((f[0] as f64, f[1] as f64))
    }

    /// Mean loss over `batches` of (inputs, targets), each [B,T], forward only. Clobbers the
    /// window figures: call between windows.
    pub fn eval_loss(&mut self, batches: &[(Vec<u32>, Vec<u32>)]) -> Result<(f64, f64), crate::gpu::readback::ReadbackError> {
        let mb = self.mb.as_ref().expect("set_micro_batch before eval_loss");
        let mut first = true;
        for (x, y) in batches {
            self.gpu.upload(&mb.inputs, 0, x);
            self.gpu.upload(&mb.targets, 0, y);
            let mut s = self.gpu.submission();
            if first {
                s.clear(&self.scratch);
                first = false;
            }
            s.run(&mb.eval);
            s.submit();
        }
        let f: Vec<f32> = self.gpu.read(&self.scratch, 0, 2)?;
        Ok((f[0] as f64, f[1] as f64))
    }

    /// Logits [B,T,V] of the last `eval`/`micro_step` (for sampling).
    pub fn read_logits(&self) -> Result<Vec<f32>, crate::gpu::readback::ReadbackError> {
        let mb = self.mb.as_ref().expect("set_micro_batch first");
        let a = &mb.layout;
        self.gpu.read(&mb.acts, a.logits, a.b * a.t * self.cfg.vocab_size)
    }

    /// Run the forward pass on one batch without touching the window figures' meaning.
    pub fn forward_only(&mut self, inputs: &[u32], targets: &[u32]) {
        let mb = self.mb.as_ref().expect("set_micro_batch first");
        self.gpu.upload(&mb.inputs, 0, inputs);
        self.gpu.upload(&mb.targets, 0, targets);
        let mut s = self.gpu.submission();
        s.run(&mb.eval);
        s.submit();
    }

    pub fn read_params(&self) -> Result<Vec<f32>, crate::gpu::readback::ReadbackError> {
        self.gpu.read_all(&self.params).map(|mut v: Vec<f32>| { v.truncate(self.cfg.num_params()); v })
    }
    pub fn read_grads(&self) -> Result<Vec<f32>, crate::gpu::readback::ReadbackError> {
        self.gpu.read_all(&self.grads).map(|mut v: Vec<f32>| { v.truncate(self.cfg.num_params()); v })
    }
    /// AdamW first and second moments.
    pub fn read_adam(&self) -> Result<(Vec<f32>, Vec<f32>), crate::gpu::readback::ReadbackError> {
        let n = self.cfg.num_params();
        Ok((self.gpu.read(&self.adam_m, 0, n)?, self.gpu.read(&self.adam_v, 0, n)?))
    }
    /// Restore parameters and AdamW moments (resume).
    pub fn load_state(&self, params: &[f32], m: &[f32], v: &[f32]) {
        self.gpu.upload(&self.params, 0, params);
        self.gpu.upload(&self.adam_m, 0, m);
        self.gpu.upload(&self.adam_v, 0, v);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GpuGptError {
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
    /// Per micro-batch: (loss sum, count of targets).
    pub micro: Vec<(f64, f64)>,
}

impl WindowFigures {
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.count.max(1.0)
    }
}

