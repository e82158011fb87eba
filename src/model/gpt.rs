//! The GPT on the GPU: parameter, gradient, AdamW-state and activation slabs (llm.c layout, named
//! offsets), and forward/backward as readable lists of dispatches recorded once into programs.
//!
//! Dimensions: B micro-batch, T sequence length (= block_size), C channels, NH heads, V vocab,
//! L layers. Activations are sized by B; changing B rebuilds only the activation slabs and the
//! programs that bind them.

use crate::gpu::kernels::{DropoutArgs, MatmulVariant};
use crate::gpu::kernels_embedding::{buckets_len, embedding_buckets};
use crate::gpu::{Category, Gpu, GpuBuffer, Precision, Program, ProgramBuilder, ProgramError, View};
use crate::model::layout::{Packer, SlabLimits, allocate, locate, view};
use crate::reference::dropout::{self, site};
use crate::reference::gpt::GptConfig;

pub use super::optim::{ModelError, Normalization, Scratch, Slabs, StepSettings, WindowDivide, WindowFigures};

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

/// The parameter tensors as the slabs lay them out: the tied embedding (wte) may be cut into
/// row ranges (vocabulary ranges) and the per-layer tensors ([L, ...]) into ranges of whole
/// layers that each fit one binding; wpe and the final LayerNorm must fit one.
pub fn tensor_specs(cfg: &GptConfig) -> Vec<super::optim::TensorSpec> {
    let names = GptConfig::param_names();
    cfg.param_sizes()
        .iter()
        .enumerate()
        .map(|(i, &size)| super::optim::TensorSpec {
            name: names[i].to_string(),
            size,
            rows_of: match i {
                p::WTE => cfg.n_embd,
                p::LN1W..=p::FCPROJB => size / cfg.n_layer.max(1),
                _ => 0,
            },
            decay: decays(i),
        })
        .collect()
}

/// Whether AdamW decays a parameter tensor: 2-D weights (embeddings and linear weights) yes,
/// LayerNorm parameters and biases no.
pub fn decays(tensor: usize) -> bool {
    matches!(tensor, p::WTE | p::WPE | p::QKVW | p::ATTPROJW | p::FCW | p::FCPROJW)
}

/// Offsets (in elements of the activation precision) of every activation tensor of a micro-batch of B sequences.
/// Each tensor starts at a multiple of `TENSOR_ALIGN` bytes, so each is bound as its own range
/// (and the vec4 kernels can read it).
///
/// With activation checkpointing (`recompute`) only each block's input (`encoded` and the
/// `residual3` of every layer) is kept per layer; the tensors inside a block have one copy shared
/// by all layers (every per-layer vector then holds the same offset) and the backward pass
/// recomputes a block's forward into it just before that block's backward.
#[derive(Clone, Debug)]
pub struct ActLayout {
    pub b: usize,
    pub t: usize,
    pub recompute: bool,
    pub encoded: usize,          // [B,T,C]
    pub residual3: Vec<usize>,   // L x [B,T,C] (block outputs = next block's inputs)
    pub ln1: Vec<usize>,         // L x [B,T,C]
    pub ln1_mean: Vec<usize>,    // L x [B,T]
    pub ln1_rstd: Vec<usize>,    // L x [B,T]
    pub qkv: Vec<usize>,         // L x [B,T,3C]
    pub atty: Vec<usize>,        // L x [B,T,C]
    /// L x [B,NH,T,T] each, in parts of whole sequences that each fit one binding (the
    /// attention runs per part): per layer, the parts' (virtual offset, first sequence, sequences).
    /// Empty per layer with flash attention (`flash`): no T x T matrix is stored.
    pub preatt: Vec<Vec<(usize, usize, usize)>>,
    pub att: Vec<Vec<(usize, usize, usize)>>,
    /// Flash attention (the GPU family, `gpu::kernels_attention`): instead of preatt and att,
    /// each query row's log-sum-exp, L x [B,NH,T] f32 (`lse_view`); in the gradients' layout the
    /// same slot holds the backward pass's D = dout . out per row. Empty without flash.
    pub flash: bool,
    pub lse: Vec<usize>,
    pub attproj: Vec<usize>,     // L x [B,T,C]
    pub residual2: Vec<usize>,   // L x [B,T,C]
    pub ln2: Vec<usize>,         // L x [B,T,C]
    pub ln2_mean: Vec<usize>,    // L x [B,T]
    pub ln2_rstd: Vec<usize>,    // L x [B,T]
    pub fch: Vec<usize>,         // L x [B,T,4C]
    pub fch_gelu: Vec<usize>,    // L x [B,T,4C]
    pub fcproj: Vec<usize>,      // L x [B,T,C]
    /// Ranges (virtual offset, elements) that zero the block-internal gradients (everything from
    /// `ln1` to `fcproj`) before a recomputed block's backward: one range when they share a
    /// buffer (they are then contiguous), else one per tensor.
    pub block_fill: Vec<(usize, usize)>,
    pub lnf: usize,              // [B,T,C]
    pub lnf_mean: usize,         // [B,T]
    pub lnf_rstd: usize,         // [B,T]
    pub logits: usize,           // [B,T,chunk]: one vocabulary chunk's logits (`vocab_chunks`)
    /// Vocabulary entries per lm_head chunk: `vocab_chunk` (or V), fewer when [B*T, chunk] would
    /// pass one binding.
    pub chunk: usize,
    pub losses: usize,           // [B,T]
    /// The buffers of the slab (`layout::Packer`; offsets above are virtual).
    pub packer: Packer,
}

impl ActLayout {
    /// `chunk`: vocabulary entries per lm_head chunk (`vocab_chunks`), the width of `logits`.
    /// `flash`: attention runs as flash attention (`uses_flash_attention`), which keeps a
    /// log-sum-exp per query row instead of the T x T matrices.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &GptConfig, b: usize, t: usize, recompute: bool, precision: Precision, limits: SlabLimits, chunk: usize, flash: bool,
    ) -> Self {
        let (c, nh, v, l) = (cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_layer);
        let bt = b * t;
        let mut packer = Packer::new(precision.act_bytes(), limits);
        let encoded = packer.take("encoded", bt * c);
        let residual3 = (0..l).map(|_| packer.take("residual3", bt * c)).collect::<Vec<_>>();
        // one copy per layer, or one shared copy when the backward recomputes blocks
        let copies = if recompute { l.min(1) } else { l };
        let mut block: Vec<(usize, usize)> = Vec::new();
        // layer i's copy: its own, or the one shared copy
        fn layers<T: Clone>(own: &[T], l: usize) -> Vec<T> {
            (0..l).map(|i| own[i.min(own.len().saturating_sub(1))].clone()).collect()
        }
        let per = |packer: &mut Packer, block: &mut Vec<(usize, usize)>, name: &str, n: usize| {
            let own: Vec<usize> = (0..copies).map(|_| packer.take(name, n)).collect();
            if let Some(&first) = own.first() {
                block.push((first, n));
            }
            layers(&own, l)
        };
        let ln1 = per(&mut packer, &mut block, "ln1", bt * c);
        let ln1_mean = per(&mut packer, &mut block, "ln1_mean", bt);
        let ln1_rstd = per(&mut packer, &mut block, "ln1_rstd", bt);
        let qkv = per(&mut packer, &mut block, "qkv", bt * 3 * c);
        let atty = per(&mut packer, &mut block, "atty", bt * c);
        // the T x T matrices in parts of whole sequences, each within one binding
        let seq = nh * t * t;
        let per_rows = |packer: &mut Packer, block: &mut Vec<(usize, usize)>, name: &str| {
            let own: Vec<Vec<(usize, usize, usize)>> = (0..copies)
                .map(|_| packer.take_rows(name, b, seq).iter().map(|p| (p.at, p.start / seq, p.len / seq)).collect())
                .collect();
            if let Some(first) = own.first() {
                block.extend(first.iter().map(|&(at, _, n)| (at, n * seq)));
            }
            layers(&own, l)
        };
        let (preatt, att, lse) = if flash {
            // f32 whatever the activation precision: as many activation elements as that takes
            let n = b * nh * t * 4 / precision.act_bytes() as usize;
            (vec![Vec::new(); l], vec![Vec::new(); l], per(&mut packer, &mut block, "lse", n))
        } else {
            let preatt = per_rows(&mut packer, &mut block, "preatt");
            let att = per_rows(&mut packer, &mut block, "att");
            (preatt, att, Vec::new())
        };
        let attproj = per(&mut packer, &mut block, "attproj", bt * c);
        let residual2 = per(&mut packer, &mut block, "residual2", bt * c);
        let ln2 = per(&mut packer, &mut block, "ln2", bt * c);
        let ln2_mean = per(&mut packer, &mut block, "ln2_mean", bt);
        let ln2_rstd = per(&mut packer, &mut block, "ln2_rstd", bt);
        let fch = per(&mut packer, &mut block, "fch", bt * 4 * c);
        let fch_gelu = per(&mut packer, &mut block, "fch_gelu", bt * 4 * c);
        let fcproj = per(&mut packer, &mut block, "fcproj", bt * c);
        // one fill when the block's tensors share a buffer and their span fits one binding
        let fits = |n: usize| n as u64 * precision.act_bytes() <= limits.max_binding;
        let block_fill = match (block.first(), block.last()) {
            (Some(&(first, _)), Some(&(last, n)))
                if block.iter().all(|&(o, _)| locate(o).0 == locate(first).0) && fits(last + n - first) =>
            {
                vec![(first, last + n - first)]
            }
            _ => block,
        };
        let lnf = packer.take("lnf", bt * c);
        let lnf_mean = packer.take("lnf_mean", bt);
        let lnf_rstd = packer.take("lnf_rstd", bt);
        // as many vocabulary entries per chunk as `chunk` asks and one binding holds
        let fit = (limits.max_binding / (bt.max(1) as u64 * precision.act_bytes())).max(1) as usize;
        let chunk = effective_chunk(v, chunk).min(fit);
        let logits = packer.take("logits", bt * chunk);
        let losses = packer.take("losses", bt);
        Self {
            b, t, recompute, encoded, residual3, ln1, ln1_mean, ln1_rstd, qkv, atty, preatt, att, flash, lse, attproj,
            residual2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu, fcproj, block_fill, lnf, lnf_mean,
            lnf_rstd, logits, chunk, losses, packer,
        }
    }

    /// Bytes of one activation slab (all its buffers).
    pub fn bytes(&self) -> u64 {
        self.packer.bytes()
    }

    /// The f32 view of layer l's `lse` in the slab `buffers` (its offset in 4-byte units, as
    /// the kernels bind it, whatever the activation precision).
    pub fn lse_view(&self, buffers: &[GpuBuffer], l: usize) -> View {
        let v = view(buffers, self.lse[l]);
        let bytes = v.offset as u64 * self.packer.elem_bytes();
        View::at(&v.buf, (bytes / 4) as usize)
    }
}

/// Whether the GPT's attention runs as flash attention with this kernel family (the GPU family
/// and a head size the flash kernels hold; `gpu::kernels_attention::uses_flash_attention`).
pub fn uses_flash_attention(cfg: &GptConfig, kernels: MatmulVariant) -> bool {
    crate::gpu::kernels_attention::uses_flash_attention(kernels, cfg.n_embd, cfg.n_head)
}

/// The GPT's GPU state: the shared parameter/optimizer slabs and the programs of the current
/// micro-batch size.
pub struct GpuGpt {
    pub gpu: Gpu,
    pub cfg: GptConfig,
    pub slabs: Slabs,
    /// Activation checkpointing: keep only block inputs, recompute blocks in the backward pass.
    recompute: bool,
    /// Element type of the activation slabs (f16: mixed precision; parameters, gradients and
    /// AdamW state stay f32).
    precision: Precision,
    mb: Option<MicroBatch>,
    /// The tokens of the last window, [inputs of K micro-batches | targets of K micro-batches]
    /// (2 K B T), uploaded once and copied into the micro-batch's token buffers between runs
    /// (`record_micro_steps`); reallocated when K or B changes.
    window_tokens: Option<GpuBuffer>,
    /// Vocabulary entries per lm_head/cross-entropy chunk (0: all at once).
    vocab_chunk: usize,
    /// CPU adapters: each block's four weight matrices transposed ([K,N] per [N,K] weight, per
    /// layer qkv | attn_proj | c_fc | mlp_proj, 12 C^2 floats), refreshed at the start of every
    /// micro-batch's backward, so the input gradients run in the forward matmul kernel
    /// (`matmul_backward_t`). None on GPUs.
    weights_t: Option<(Vec<GpuBuffer>, Vec<usize>)>,
    /// Dropout's probability (0: none; the train program has no dropout dispatches) and the seed
    /// of its masks (`reference::dropout`).
    dropout: f64,
    dropout_seed: u32,
    /// The optimizer step the next window makes: the masks' key with the seed.
    window_step: u32,
    /// Attention as flash attention (GPU family): no T x T matrices (`ActLayout::flash`).
    flash: bool,
}

/// Offsets of the four matrices in one layer's part of `GpuGpt::weights_t`, and that part's size,
/// in units of C^2 floats.
pub const WT_QKV: usize = 0;
pub const WT_ATTPROJ: usize = 3;
pub const WT_FC: usize = 4;
pub const WT_FCPROJ: usize = 8;
pub const WT_PER_LAYER_C2: usize = 12;

/// The logits' width for a vocabulary of `v` and a `vocab_chunk` (0: the whole vocabulary).
pub fn effective_chunk(v: usize, vocab_chunk: usize) -> usize {
    if vocab_chunk == 0 { v.max(1) } else { vocab_chunk.min(v).max(1) }
}

/// The transposed block weights' slab: each layer's four matrices (qkv 3C^2, attn_proj C^2,
/// c_fc 4C^2, mlp_proj 4C^2 floats) as tensors, and their virtual offsets (4 per layer, in the
/// order of `WT_QKV`, `WT_ATTPROJ`, `WT_FC`, `WT_FCPROJ`).
pub fn transposed_weights_layout(cfg: &GptConfig, limits: SlabLimits) -> (Packer, Vec<usize>) {
    let mut packer = Packer::new(4, limits);
    let c2 = cfg.n_embd * cfg.n_embd;
    let offsets = (0..cfg.n_layer)
        .flat_map(|_| [3, 1, 4, 4].map(|n| n * c2))
        .map(|n| packer.take("transposed block weights", n))
        .collect();
    (packer, offsets)
}

/// f32 elements of the partials of the GPU family's two-stage column sums (the bias and
/// LayerNorm-parameter gradients, `gpu::kernels_rows`) at micro-batch `b`: enough for the widest,
/// the MLP's bias of 4 C columns over B*T rows; 0 with the other kernels, which sum in one stage.
pub fn column_partials_len(cfg: &GptConfig, b: usize, kernels: MatmulVariant) -> usize {
    if kernels == MatmulVariant::GpuTiled { crate::gpu::kernels_rows::column_partials_len(b * cfg.block_size, 4 * cfg.n_embd) } else { 0 }
}

/// Whether the GPT keeps transposed block weights (`GpuGpt::weights_t`) with these kernels.
pub fn uses_transposed_weights(cfg: &GptConfig, kernels: MatmulVariant) -> bool {
    kernels == MatmulVariant::RegisterBlocked && cfg.n_embd % 4 == 0
}

/// Everything sized by the micro-batch: activation slabs, token buffers and the programs that
/// bind them.
struct MicroBatch {
    layout: ActLayout,
    /// The activation slab's buffers.
    acts: Vec<GpuBuffer>,
    /// Activation gradients (the checkpointing layout: one copy of the block-internal tensors,
    /// shared by the blocks, zeroed before each block's backward): cleared (buffer clears, not dispatches) before
    /// each micro-batch's train program, since the backward kernels accumulate.
    dacts: Vec<GpuBuffer>,
    inputs: GpuBuffer,  // [B,T] u32
    targets: GpuBuffer, // [B,T] u32
    /// Dropout's key of the running micro-batch: [seed, step, window position of its first
    /// sequence, 0] u32, copied in before each run like the tokens.
    key: GpuBuffer,
    /// The bucket list of the running micro-batch's input tokens (its positions stably sorted by
    /// token, `gpu::kernels_embedding::embedding_buckets`, u32 [3 B T + 2]): the GPU family's
    /// token-embedding gradient reads it; built by the host with the tokens and copied in before
    /// each run like them.
    buckets: GpuBuffer,
    /// forward + loss + backward for one micro-batch (gradients accumulate into `grads`)
    train: Program,
    /// (kept with the programs that bind it) The cross-entropy's per-row state over the vocabulary chunks: f32 [B*T, 4] (running max,
    /// sum of exponentials, the target's logit, log-sum-exp), f32 under mixed precision too.
    _ce_state: GpuBuffer,
    /// (kept with the train program, which binds it) The GPU family's column-sum partials
    /// (`column_partials_len`); None with the CPU family.
    _column_partials: Option<GpuBuffer>,
    /// The crossentropy_chunk_backward dispatches in `train`, with their chunk (v0, vn): dloss is
    /// rewritten for the loss scale and the per-micro-batch-mean normalization
    ce_backward: Vec<(usize, usize, usize)>,
    /// One program per vocabulary chunk that writes that chunk's logits (for `read_logits`)
    logit_chunks: Vec<(Program, usize, usize)>,
    /// forward + loss only (evaluation)
    eval: Program,
}



impl GpuGpt {
    /// Allocate parameter, gradient and optimizer slabs and upload `params` (host layout =
    /// `GptConfig::param_offsets`).
    pub fn new(gpu: &Gpu, cfg: GptConfig, params: &[f32]) -> Result<Self, ProgramError> {
        assert_eq!(params.len(), cfg.num_params(), "parameter count");
        let slabs = Slabs::new(gpu, params, cfg.param_offsets().to_vec(), &tensor_specs(&cfg))?;
        let kernels = gpu.kernels().matmul();
        let flash = uses_flash_attention(&cfg, kernels);
        let weights_t = match uses_transposed_weights(&cfg, kernels) {
            true => {
                let (packer, offsets) = transposed_weights_layout(&cfg, SlabLimits::of(gpu));
                Some((allocate(gpu, "transposed block weights", Category::Scratch, &packer)?, offsets))
            }
            false => None,
        };
        Ok(Self {
            gpu: gpu.clone(), cfg, slabs, recompute: false, precision: Precision::F32, mb: None, window_tokens: None,
            weights_t, vocab_chunk: 0, dropout: 0.0, dropout_seed: 0, window_step: 1, flash,
        })
    }

    fn pv(&self, i: usize) -> View {
        self.slabs.pv(i)
    }
    fn gv(&self, i: usize) -> View {
        self.slabs.gv(i)
    }

    /// Buffers of the activation slab (0 before `set_micro_batch`).
    pub fn activation_buffers(&self) -> usize {
        self.mb.as_ref().map_or(0, |m| m.acts.len())
    }

    /// The current micro-batch size (0 before `set_micro_batch`).
    pub fn micro_batch(&self) -> usize {
        self.mb.as_ref().map_or(0, |m| m.layout.b)
    }

    /// Bytes of the activation slab at micro-batch `b` (all its buffers) with the kernel family
    /// `kernels` (flash attention or not: `uses_flash_attention`).
    pub fn activation_slab_bytes(
        cfg: &GptConfig, b: usize, recompute: bool, precision: Precision, limits: SlabLimits, chunk: usize, kernels: MatmulVariant,
    ) -> u64 {
        ActLayout::new(cfg, b, cfg.block_size, recompute, precision, limits, chunk, uses_flash_attention(cfg, kernels)).bytes()
    }

    /// Bytes in the activations category at micro-batch `b`, exactly as `set_micro_batch`
    /// allocates them: the activation slab, the activation gradients (one copy of the
    /// block-internal tensors), the input and target tokens, the cross-entropy's per-row
    /// state (f32 [B*T, 4]), dropout's key (4 u32), the input tokens' bucket list (u32
    /// [3 B T + 2], `gpu::kernels_embedding::buckets_len`; allocated with either kernel family)
    /// and, with the GPU family, the column-sum partials (`column_partials_len`).
    pub fn predicted_activation_bytes(
        cfg: &GptConfig, b: usize, recompute: bool, precision: Precision, limits: SlabLimits, chunk: usize, kernels: MatmulVariant,
    ) -> u64 {
        let slab = Self::activation_slab_bytes(cfg, b, recompute, precision, limits, chunk, kernels);
        let grads = Self::activation_slab_bytes(cfg, b, true, precision, limits, chunk, kernels);
        let bt = (b * cfg.block_size).max(1) as u64;
        let partials = match column_partials_len(cfg, b, kernels) {
            0 => 0,
            n => n as u64 * 4,
        };
        slab + grads + 2 * bt * 4 + bt * 16 + 16 + buckets_len(bt as usize) as u64 * 4 + partials
    }

    /// u32 elements of the window's token buffer for K micro-batches of B: the inputs and targets
    /// of each, then each one's dropout key (4 u32), then each one's bucket list of its inputs
    /// (`gpu::kernels_embedding::buckets_len(B T)`, with either kernel family).
    pub fn window_tokens_len(cfg: &GptConfig, b: usize, k: usize) -> usize {
        let bt = b * cfg.block_size;
        2 * k * bt + 4 * k + k * buckets_len(bt)
    }

    /// Dropout with probability `p` (0 <= p < 1; 0: none) and masks keyed by `seed`: the
    /// programs are recorded again. Evaluation and sampling never drop.
    pub fn set_dropout(&mut self, p: f64, seed: u32) -> Result<(), ProgramError> {
        assert!((0.0..1.0).contains(&p), "dropout must be in [0, 1)");
        if (p, seed) == (self.dropout, self.dropout_seed) {
            return Ok(());
        }
        (self.dropout, self.dropout_seed) = (p, seed);
        let b = self.micro_batch();
        if b > 0 {
            self.mb = None;
            self.set_micro_batch(b)?;
        }
        Ok(())
    }

    /// The optimizer step the next recorded window makes (dropout's masks are keyed by it).
    pub fn set_window_step(&mut self, step: u64) {
        self.window_step = step as u32;
    }

    /// Dropout's arguments for the train program (site 0; each use sets its site), or None.
    fn dropout_args(&self, key: &GpuBuffer) -> Option<DropoutArgs> {
        (self.dropout > 0.0).then(|| DropoutArgs {
            key: View::of(key),
            site: site::EMBEDDING,
            threshold: dropout::threshold(self.dropout),
            scale: dropout::scale(self.dropout),
            first: 0,
        })
    }

    /// Vocabulary entries per lm_head chunk (0: the whole vocabulary); takes effect at the next
    /// `set_micro_batch` (call before the first).
    pub fn set_vocab_chunk(&mut self, chunk: usize) -> Result<(), ProgramError> {
        if chunk == self.vocab_chunk {
            return Ok(());
        }
        self.vocab_chunk = chunk;
        let b = self.micro_batch();
        if b > 0 {
            self.mb = None;
            self.set_micro_batch(b)?;
        }
        Ok(())
    }

    /// The lm_head's vocabulary chunks: (wte rows, their gradient, first entry v0, entries vn),
    /// each inside one part of the embedding and at most `chunk` entries (`ActLayout::chunk`).
    fn vocab_chunks(&self, chunk: usize) -> Vec<(View, View, usize, usize)> {
        let c = self.cfg.n_embd;
        let mut out = Vec::new();
        for (w, g, start, len) in self.slabs.tensor_parts(p::WTE) {
            let (r0, rows) = (start / c, len / c);
            let mut r = 0;
            while r < rows {
                let n = chunk.min(rows - r);
                out.push((w.add(r * c), g.add(r * c), r0 + r, n));
                r += n;
            }
        }
        out
    }

    /// Whether activation checkpointing is on.
    pub fn activation_checkpointing(&self) -> bool {
        self.recompute
    }

    /// Turn activation checkpointing on or off: the activation slabs and programs of the current
    /// micro-batch size are rebuilt; parameters, gradients and AdamW state stay.
    pub fn set_activation_checkpointing(&mut self, on: bool) -> Result<(), ProgramError> {
        self.rebuild_with(on, self.precision)
    }

    /// The activation element type.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Switch the activations between f32 and f16 (mixed precision): the activation slabs and
    /// programs are rebuilt; parameters, gradients and AdamW state stay f32. F16 needs the
    /// device's SHADER_F16 (an error otherwise, and nothing changes).
    pub fn set_precision(&mut self, precision: Precision) -> Result<(), ProgramError> {
        self.rebuild_with(self.recompute, precision)
    }

    fn rebuild_with(&mut self, recompute: bool, precision: Precision) -> Result<(), ProgramError> {
        if (self.recompute, self.precision) == (recompute, precision) {
            return Ok(());
        }
        // fails before anything is freed when the device has no f16
        ProgramBuilder::with_precision(&self.gpu, precision)?;
        let b = self.micro_batch();
        let old = (self.recompute, self.precision);
        (self.recompute, self.precision) = (recompute, precision);
        if b > 0 {
            self.mb = None;
            if let Err(e) = self.set_micro_batch(b) {
                // keep training as before
                (self.recompute, self.precision) = old;
                self.set_micro_batch(b)?;
                return Err(e);
            }
        }
        Ok(())
    }

    /// (Re)allocate the activation slabs for micro-batch `b` and record the programs that bind
    /// them. Only the activation slabs change; parameters, gradients and AdamW state stay.
    /// If the new slabs cannot be allocated, the previous micro-batch size is restored (when it
    /// still fits) and the error returned.
    pub fn set_micro_batch(&mut self, b: usize) -> Result<(), ProgramError> {
        if self.micro_batch() == b {
            return Ok(());
        }
        let old = self.micro_batch();
        self.mb = None; // free the old slabs before allocating new ones
        match self.build_micro_batch(b) {
            Ok(mb) => {
                self.mb = Some(mb);
                Ok(())
            }
            Err(e) => {
                if old > 0 {
                    self.mb = self.build_micro_batch(old).ok();
                }
                Err(e)
            }
        }
    }

    fn build_micro_batch(&self, b: usize) -> Result<MicroBatch, ProgramError> {
        let t = self.cfg.block_size;
        let limits = SlabLimits::of(&self.gpu);
        let layout = ActLayout::new(&self.cfg, b, t, self.recompute, self.precision, limits, self.vocab_chunk, self.flash);
        layout.packer.check(&format!("activations of micro_batch {b}")).map_err(|e| ProgramError::Shape { kernel: "activation slab".into(), message: e.message })?;
        let acts = allocate(&self.gpu, "activations", Category::Activations, &layout.packer)?;
        // the activation gradients keep one copy of the block-internal tensors (as checkpointing
        // lays out activations): the backward runs one block at a time
        let dlayout = ActLayout::new(&self.cfg, b, t, true, self.precision, limits, self.vocab_chunk, self.flash);
        let dacts = allocate(&self.gpu, "activation gradients", Category::Activations, &dlayout.packer)?;
        let inputs = self.gpu.try_storage("input tokens", Category::Activations, b * t)?;
        let targets = self.gpu.try_storage("target tokens", Category::Activations, b * t)?;
        let ce_state = self.gpu.try_storage("cross-entropy state", Category::Activations, 4 * b * t)?;
        let key = self.gpu.try_storage("dropout key", Category::Activations, 4)?;
        let buckets = self.gpu.try_storage("embedding buckets", Category::Activations, buckets_len(b * t))?;
        let drop = self.dropout_args(&key);
        let partials_len = column_partials_len(&self.cfg, b, self.gpu.kernels().matmul());
        let partials = if partials_len > 0 { Some(self.gpu.try_storage("column-sum partials", Category::Activations, partials_len)?) } else { None };

        let mut pb = ProgramBuilder::with_precision(&self.gpu, self.precision)?;
        self.record_forward(&mut pb, &layout, &acts, &inputs, &targets, &ce_state, None)?;
        let eval = pb.finish("gpt eval");

        let mut pb = ProgramBuilder::with_precision(&self.gpu, self.precision)?;
        if let Some(p) = &partials {
            pb.set_column_partials(View::of(p), partials_len);
        }
        self.record_forward(&mut pb, &layout, &acts, &inputs, &targets, &ce_state, drop.as_ref())?;
        let ce_backward =
            self.record_backward(&mut pb, &layout, &acts, &dacts, &inputs, &buckets, &targets, &ce_state, &dlayout, drop.as_ref())?;
        let train = pb.finish("gpt train micro-batch");

        let mut logit_chunks = Vec::new();
        let lnf = view(&acts, layout.lnf);
        for (w, _, v0, vn) in self.vocab_chunks(layout.chunk) {
            let mut pb = ProgramBuilder::with_precision(&self.gpu, self.precision)?;
            pb.matmul_forward(&view(&acts, layout.logits), &lnf, &w, None, b * t, self.cfg.n_embd, vn)?;
            logit_chunks.push((pb.finish("gpt logits chunk"), v0, vn));
        }
        Ok(MicroBatch { layout, acts, dacts, inputs, targets, key, buckets, _ce_state: ce_state, _column_partials: partials, train, ce_backward, logit_chunks, eval })
    }

    /// Forward pass and loss of one micro-batch (llm.c gpt2_forward as a dispatch list), with
    /// dropout when `drop` is given (nanoGPT's places: the embedding, the attention
    /// probabilities, both projections before their residual add).
    #[allow(clippy::too_many_arguments)]
    fn record_forward(
        &self, pb: &mut ProgramBuilder, a: &ActLayout, acts: &[GpuBuffer], inputs: &GpuBuffer, targets: &GpuBuffer,
        ce_state: &GpuBuffer, drop: Option<&DropoutArgs>,
    ) -> Result<(), ProgramError> {
        let (b, t) = (a.b, a.t);
        let (c, cl) = (self.cfg.n_embd, self.cfg.n_layer);
        let bt = b * t;
        let act = |o: usize| view(acts, o);

        // the embedding, in as many vocabulary ranges as the device's bindings need
        for (w, _, start, len) in self.slabs.tensor_parts(p::WTE) {
            pb.encoder_forward_rows(&act(a.encoded), &View::of(inputs), &w, &self.pv(p::WPE), b, t, c, start / c, len / c)?;
        }
        if let Some(d) = drop {
            pb.dropout_forward(&act(a.encoded), d, t * c, bt * c)?;
        }
        for l in 0..cl {
            self.record_block_forward(pb, a, acts, l, drop)?;
        }
        let last = if cl == 0 { act(a.encoded) } else { act(a.residual3[cl - 1]) };
        pb.layernorm_forward(&act(a.lnf), &act(a.lnf_mean), &act(a.lnf_rstd), &last, &self.pv(p::LNFW), &self.pv(p::LNFB), bt, c)?;
        // lm_head tied to wte, chunk by chunk of the vocabulary (the logits never exist whole):
        // logits [BT,vn] = lnf [BT,C] . wte[v0..v0+vn] [vn,C]^T, folded into each row's online
        // log-sum-exp; then each row's loss from its state
        for (j, (w, _, v0, vn)) in self.vocab_chunks(a.chunk).into_iter().enumerate() {
            pb.matmul_forward(&act(a.logits), &act(a.lnf), &w, None, bt, c, vn)?;
            pb.crossentropy_chunk_forward(&View::of(ce_state), &act(a.logits), &View::of(targets), v0, vn, bt, j == 0)?;
        }
        pb.crossentropy_chunk_finish(&act(a.losses), &View::of(ce_state), &View::of(targets), bt)?;
        // window figures: loss sum and count accumulate over the micro-batches of the window
        pb.crossentropy_reduce(&View::at(&self.slabs.scratch, Scratch::LOSS_SUM), &act(a.losses), &View::of(targets), bt)?;
        Ok(())
    }

    /// Transformer block `l`: from its input (`encoded` or the previous block's `residual3`) to
    /// its `residual3`. Also what the backward pass replays under activation checkpointing.
    fn record_block_forward(
        &self, pb: &mut ProgramBuilder, a: &ActLayout, acts: &[GpuBuffer], l: usize, drop: Option<&DropoutArgs>,
    ) -> Result<(), ProgramError> {
        let at_site = |f: fn(usize) -> u32| drop.map(|d| DropoutArgs { site: f(l), ..d.clone() });
        let (drop_att, drop_attproj, drop_fcproj) =
            (at_site(site::attention), at_site(site::attention_projection), at_site(site::mlp_projection));
        let (c, nh) = (self.cfg.n_embd, self.cfg.n_head);
        let (b, t) = (a.b, a.t);
        let bt = b * t;
        let act = |o: usize| view(acts, o);
        let lw = |i: usize, per: usize| self.slabs.param_at(i, l * per);
        let residual = if l == 0 { act(a.encoded) } else { act(a.residual3[l - 1]) };
        pb.layernorm_forward(&act(a.ln1[l]), &act(a.ln1_mean[l]), &act(a.ln1_rstd[l]), &residual,
            &lw(p::LN1W, c), &lw(p::LN1B, c), bt, c)?;
        pb.matmul_forward(&act(a.qkv[l]), &act(a.ln1[l]), &lw(p::QKVW, 3 * c * c), Some(&lw(p::QKVB, 3 * c)), bt, c, 3 * c)?;
        // flash attention keeps each query row's log-sum-exp; otherwise the T x T matrices, per
        // part of whole sequences (one, unless they pass a binding)
        if a.flash {
            pb.flash_attention_forward(&act(a.atty[l]), &a.lse_view(acts, l), &act(a.qkv[l]), drop_att.as_ref(), b, t, c, nh)?;
        }
        for (&(pre, s0, n), &(at, _, _)) in a.preatt[l].iter().zip(&a.att[l]) {
            let d = drop_att.as_ref().map(|d| d.part(s0));
            pb.attention_forward_dropout(&act(a.atty[l]).add(s0 * t * c), &act(pre), &act(at), &act(a.qkv[l]).add(s0 * t * 3 * c),
                d.as_ref(), n, t, c, nh)?;
        }
        pb.matmul_forward(&act(a.attproj[l]), &act(a.atty[l]), &lw(p::ATTPROJW, c * c), Some(&lw(p::ATTPROJB, c)), bt, c, c)?;
        if let Some(d) = &drop_attproj {
            pb.dropout_forward(&act(a.attproj[l]), d, t * c, bt * c)?;
        }
        pb.residual_forward(&act(a.residual2[l]), &residual, &act(a.attproj[l]), bt * c)?;
        pb.layernorm_forward(&act(a.ln2[l]), &act(a.ln2_mean[l]), &act(a.ln2_rstd[l]), &act(a.residual2[l]),
            &lw(p::LN2W, c), &lw(p::LN2B, c), bt, c)?;
        pb.matmul_forward_gelu(&act(a.fch[l]), &act(a.fch_gelu[l]), &act(a.ln2[l]), &lw(p::FCW, 4 * c * c),
            Some(&lw(p::FCB, 4 * c)), bt, c, 4 * c)?;
        pb.matmul_forward(&act(a.fcproj[l]), &act(a.fch_gelu[l]), &lw(p::FCPROJW, 4 * c * c), Some(&lw(p::FCPROJB, c)), bt, 4 * c, c)?;
        if let Some(d) = &drop_fcproj {
            pb.dropout_forward(&act(a.fcproj[l]), d, t * c, bt * c)?;
        }
        pb.residual_forward(&act(a.residual3[l]), &act(a.residual2[l]), &act(a.fcproj[l]), bt * c)?;
        Ok(())
    }

    /// Backward pass of one micro-batch; parameter gradients accumulate (`+=`) into `grads`.
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::too_many_arguments)]
    fn record_backward(
        &self, pb: &mut ProgramBuilder, a: &ActLayout, acts: &[GpuBuffer], dacts: &[GpuBuffer], inputs: &GpuBuffer,
        buckets: &GpuBuffer, targets: &GpuBuffer, ce_state: &GpuBuffer, d: &ActLayout, drop: Option<&DropoutArgs>,
    ) -> Result<Vec<(usize, usize, usize)>, ProgramError> {
        let (b, t) = (a.b, a.t);
        let (c, nh, cl) = (self.cfg.n_embd, self.cfg.n_head, self.cfg.n_layer);
        let bt = b * t;
        let act = |o: usize| view(acts, o);
        let dact = |o: usize| view(dacts, o);
        let lw = |i: usize, l: usize, per: usize| self.slabs.param_at(i, l * per);
        let lg = |i: usize, l: usize, per: usize| self.slabs.grad_at(i, l * per);
        // the transposed block weights, refreshed from this step's weights first
        let wt = |l: usize, at: usize| {
            let m = [WT_QKV, WT_ATTPROJ, WT_FC, WT_FCPROJ].iter().position(|&x| x == at).expect("a block matrix");
            self.weights_t.as_ref().map(|(w, offsets)| view(w, offsets[4 * l + m]))
        };
        if self.weights_t.is_some() {
            for l in 0..cl {
                pb.transpose(&wt(l, WT_QKV).unwrap(), &lw(p::QKVW, l, 3 * c * c), 3 * c, c)?;
                pb.transpose(&wt(l, WT_ATTPROJ).unwrap(), &lw(p::ATTPROJW, l, c * c), c, c)?;
                pb.transpose(&wt(l, WT_FC).unwrap(), &lw(p::FCW, l, 4 * c * c), 4 * c, c)?;
                pb.transpose(&wt(l, WT_FCPROJ).unwrap(), &lw(p::FCPROJW, l, 4 * c * c), c, 4 * c)?;
            }
        }

        // reduction = sum: each counted target's loss has weight 1; the window's gradient is
        // divided once by the window's count at the step.
        // The lm_head chunk by chunk, last first: the forward left the last chunk's logits in
        // place; every other chunk's are recomputed. dlogits of a chunk is assigned, then its
        // input and weight gradients accumulate into dlnf and that chunk's rows of dwte.
        let chunks = self.vocab_chunks(a.chunk);
        let mut ce_idx = Vec::with_capacity(chunks.len());
        for (j, (w, g, v0, vn)) in chunks.iter().enumerate().rev() {
            if j + 1 < chunks.len() {
                pb.matmul_forward(&act(a.logits), &act(a.lnf), w, None, bt, c, *vn)?;
            }
            let i = pb.crossentropy_chunk_backward(&dact(d.logits), &act(a.logits), &View::of(ce_state), &View::of(targets), 1.0, *v0, *vn, bt)?;
            ce_idx.push((i, *v0, *vn));
            pb.matmul_backward(Some(&dact(d.lnf)), g, None, &dact(d.logits), &act(a.lnf), w, bt, c, *vn)?;
        }
        let last = if cl == 0 { a.encoded } else { a.residual3[cl - 1] };
        // The residual stream's gradient is one tensor (llm.c's dresidual), the gradient of the
        // last residual: every block's LayerNorm backward adds into it and both projections read
        // it as their output gradient (d(x + f(x)) passes dx to both terms unchanged), so no
        // residual backward pass copies it. After block 0 it is the encoder's output gradient.
        let dres = dact(last);
        pb.layernorm_backward(&dres, &self.gv(p::LNFW), &self.gv(p::LNFB), &dact(d.lnf), &act(last),
            &self.pv(p::LNFW), &act(a.lnf_mean), &act(a.lnf_rstd), bt, c)?;
        for l in (0..cl).rev() {
            let residual = if l == 0 { a.encoded } else { a.residual3[l - 1] };
            if l + 1 < cl {
                // Checkpointing: the shared block tensors hold block l+1; recompute block l from
                // its kept input. The last block's activations are still there.
                if a.recompute {
                    self.record_block_forward(pb, a, acts, l, drop)?;
                }
                // The block-internal gradients have one copy shared by all blocks (`d`, only
                // one block's backward runs at a time): restart them from zero, since the
                // backward kernels accumulate.
                for &(at, n) in &d.block_fill {
                    pb.fill_act(&dact(at), 0.0, n)?;
                }
            }
            // residual3 = residual2 + fcproj: dfcproj = dresidual3 = dres (times dropout's mask
            // when the projection is dropped: then into its own tensor)
            let at_site = |f: fn(usize) -> u32| drop.map(|x| DropoutArgs { site: f(l), ..x.clone() });
            let dfcproj = match at_site(site::mlp_projection) {
                Some(x) => {
                    pb.dropout_backward(&dact(d.fcproj[l]), &dres, &x, t * c, bt * c)?;
                    dact(d.fcproj[l])
                }
                None => dres.clone(),
            };
            // through fcproj and GELU into dfch (dfch_gelu is the unfused path's scratch)
            pb.matmul_backward_gelu(&dact(d.fch[l]), &dact(d.fch_gelu[l]), &act(a.fch[l]), wt(l, WT_FCPROJ).as_ref(),
                &lg(p::FCPROJW, l, 4 * c * c), Some(&lg(p::FCPROJB, l, c)), &dfcproj, &act(a.fch_gelu[l]),
                &lw(p::FCPROJW, l, 4 * c * c), bt, 4 * c, c)?;
            pb.matmul_backward_t(&dact(d.ln2[l]), wt(l, WT_FC).as_ref(), &lg(p::FCW, l, 4 * c * c), Some(&lg(p::FCB, l, 4 * c)),
                &dact(d.fch[l]), &act(a.ln2[l]), &lw(p::FCW, l, 4 * c * c), bt, c, 4 * c)?;
            // dres becomes dresidual2
            pb.layernorm_backward(&dres, &lg(p::LN2W, l, c), &lg(p::LN2B, l, c), &dact(d.ln2[l]),
                &act(a.residual2[l]), &lw(p::LN2W, l, c), &act(a.ln2_mean[l]), &act(a.ln2_rstd[l]), bt, c)?;
            // residual2 = residual + attproj: dattproj = dresidual2 = dres (masked as above)
            let dattproj = match at_site(site::attention_projection) {
                Some(x) => {
                    pb.dropout_backward(&dact(d.attproj[l]), &dres, &x, t * c, bt * c)?;
                    dact(d.attproj[l])
                }
                None => dres.clone(),
            };
            pb.matmul_backward_t(&dact(d.atty[l]), wt(l, WT_ATTPROJ).as_ref(), &lg(p::ATTPROJW, l, c * c), Some(&lg(p::ATTPROJB, l, c)),
                &dattproj, &act(a.atty[l]), &lw(p::ATTPROJW, l, c * c), bt, c, c)?;
            let drop_att = at_site(site::attention);
            // flash attention recomputes the probabilities from q, k and the kept log-sum-exp;
            // the gradients' lse slot holds D = dout . out per row
            if a.flash {
                pb.flash_attention_backward(&dact(d.qkv[l]), &d.lse_view(dacts, l), &dact(d.atty[l]), &act(a.qkv[l]),
                    &act(a.atty[l]), &a.lse_view(acts, l), drop_att.as_ref(), b, t, c, nh)?;
            }
            for ((&(dpre, s0, n), &(dat, _, _)), &(at, _, _)) in d.preatt[l].iter().zip(&d.att[l]).zip(&a.att[l]) {
                let (q, y) = (s0 * t * 3 * c, s0 * t * c);
                let x = drop_att.as_ref().map(|x| x.part(s0));
                pb.attention_backward_dropout(&dact(d.qkv[l]).add(q), &dact(dpre), &dact(dat), &dact(d.atty[l]).add(y),
                    &act(a.qkv[l]).add(q), &act(at), x.as_ref(), n, t, c, nh)?;
            }
            pb.matmul_backward_t(&dact(d.ln1[l]), wt(l, WT_QKV).as_ref(), &lg(p::QKVW, l, 3 * c * c), Some(&lg(p::QKVB, l, 3 * c)),
                &dact(d.qkv[l]), &act(a.ln1[l]), &lw(p::QKVW, l, 3 * c * c), bt, c, 3 * c)?;
            // dres becomes the gradient of the block's input
            pb.layernorm_backward(&dres, &lg(p::LN1W, l, c), &lg(p::LN1B, l, c), &dact(d.ln1[l]),
                &act(residual), &lw(p::LN1W, l, c), &act(a.ln1_mean[l]), &act(a.ln1_rstd[l]), bt, c)?;
        }
        // encoded = dropout(wte[inputs] + wpe): the encoder's output gradient is dres times the mask
        if let Some(x) = drop {
            pb.dropout_forward(&dres, x, t * c, bt * c)?;
        }
        for (k, (_, dw, start, len)) in self.slabs.tensor_parts(p::WTE).into_iter().enumerate() {
            let dwpe = (k == 0).then(|| self.gv(p::WPE));
            if pb.kernels().matmul() == MatmulVariant::GpuTiled {
                // the GPU family: one invocation per (token bucket, channel) (gpu::kernels_embedding)
                pb.encoder_backward_buckets(&dw, dwpe.as_ref(), &dres, &View::of(buckets), b, t, c, start / c, len / c)?;
            } else {
                pb.encoder_backward_rows(&dw, dwpe.as_ref(), &dres, &View::of(inputs), b, t, c, start / c, len / c)?;
            }
        }
        Ok(ce_idx)
    }

    /// Record micro-batches `first..first + batches.len()` of a window of `k` into one open
    /// submission, each counted target's loss weighing `dloss` (1 in f32: the window's count
    /// divides once at the step; loss scale / window count in mixed precision, unscaled once at
    /// the step; constant over the window either way): the window's tokens are uploaded once, and
    /// each run is preceded by a copy of its tokens into the micro-batch's token buffers. With
    /// `Slabs::record_optimizer_step` after it, a whole window is one submission.
    pub fn record_micro_steps(
        &mut self, s: &mut crate::gpu::submit::Submission, batches: &[(&[u32], &[u32])], first: usize, k: usize,
        dloss: f32,
    ) -> Result<(), ProgramError> {
        let mb = self.mb.as_ref().expect("set_micro_batch before record_micro_steps");
        let bt = mb.layout.b * mb.layout.t;
        assert!(first + batches.len() <= k, "micro-batches past the window");
        let b = mb.layout.b;
        let len = Self::window_tokens_len(&self.cfg, b, k);
        if self.window_tokens.as_ref().is_none_or(|w| w.len() != len) {
            self.window_tokens = None;
            self.window_tokens = Some(self.gpu.try_storage("window tokens", Category::Activations, len)?);
        }
        let tokens = self.window_tokens.clone().expect("allocated above");
        let mb = self.mb.as_ref().expect("checked above");
        self.slabs.reserve_figures(k);
        let bt_ = mb.layout.b * mb.layout.t;
        for &(i, v0, vn) in &mb.ce_backward {
            mb.train.set_dims(i, &crate::gpu::kernels::crossentropy_chunk_backward_uniforms(dloss, bt_, v0, vn));
        }
        for (i, (x, y)) in batches.iter().enumerate() {
            assert_eq!((x.len(), y.len()), (bt, bt), "inputs and targets must be [B,T]");
            self.gpu.upload(&tokens, (first + i) * bt, x);
            self.gpu.upload(&tokens, (k + first + i) * bt, y);
            // dropout's key: the micro-batch's first sequence is at window position (first + i) B
            let key = [self.dropout_seed, self.window_step, ((first + i) * b) as u32, 0];
            self.gpu.upload(&tokens, 2 * k * bt + 4 * (first + i), &key);
            let nb = buckets_len(bt);
            self.gpu.upload(&tokens, 2 * k * bt + 4 * k + nb * (first + i), &embedding_buckets(x));
        }
        for i in 0..batches.len() {
            let j = first + i;
            self.slabs.record_begin_micro(s, j);
            s.copy(&tokens, j * bt, &mb.inputs, 0, bt);
            s.copy(&tokens, (k + j) * bt, &mb.targets, 0, bt);
            s.copy(&tokens, 2 * k * bt + 4 * j, &mb.key, 0, 4);
            s.copy(&tokens, 2 * k * bt + 4 * k + buckets_len(bt) * j, &mb.buckets, 0, buckets_len(bt));
            for d in &mb.dacts {
                s.clear(d);
            }
            s.run(&mb.train);
            self.slabs.record_end_micro(s, j);
        }
        Ok(())
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
                s.clear(&self.slabs.scratch);
                first = false;
            }
            s.run(&mb.eval);
            s.submit();
        }
        let f: Vec<f32> = self.gpu.read(&self.slabs.scratch, 0, 2)?;
        Ok((f[0] as f64, f[1] as f64))
    }

    /// Logits [B,T,V] of the last forward pass (`forward_only`, evaluation or a train program; for
    /// sampling): each vocabulary chunk's are computed again from the final LayerNorm's output
    /// and read (waits).
    pub fn read_logits(&self) -> Result<Vec<f32>, crate::gpu::readback::ReadbackError> {
        let mb = self.mb.as_ref().expect("set_micro_batch first");
        let a = &mb.layout;
        let (bt, v) = (a.b * a.t, self.cfg.vocab_size);
        let mut out = vec![0.0f32; bt * v];
        let at = view(&mb.acts, a.logits);
        for (prog, v0, vn) in &mb.logit_chunks {
            let mut s = self.gpu.submission();
            s.run(prog);
            s.submit();
            let chunk = match self.precision {
                Precision::F32 => self.gpu.read(&at.buf, at.offset, bt * vn)?,
                Precision::F16 => self.gpu.read_f16(&at.buf, at.offset, bt * vn)?,
            };
            for r in 0..bt {
                out[r * v + v0..r * v + v0 + vn].copy_from_slice(&chunk[r * vn..(r + 1) * vn]);
            }
        }
        Ok(out)
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

    /// Per-kernel device time of one micro-batch's train program (timestamp queries), or None
    /// without timestamp support.
    pub fn profile_micro_batch(&mut self, inputs: &[u32], targets: &[u32]) -> Option<Vec<(String, f64)>> {
        let mb = self.mb.as_ref()?;
        self.gpu.upload(&mb.inputs, 0, inputs);
        self.gpu.upload(&mb.buckets, 0, &embedding_buckets(inputs));
        self.gpu.upload(&mb.targets, 0, targets);
        mb.train.profile()
    }

    /// Wall-clock seconds per run of the micro-batch's forward program (forward + loss) and of
    /// its train program (forward + loss + backward), each averaged over `reps` submissions
    /// with a wait (for `gradscope bench`; the uploads of `inputs`/`targets` happen once).
    pub fn time_micro_programs(&mut self, inputs: &[u32], targets: &[u32], reps: usize) -> Result<(f64, f64), crate::gpu::readback::ReadbackError> {
        let mb = self.mb.as_ref().expect("set_micro_batch first");
        self.gpu.upload(&mb.inputs, 0, inputs);
        self.gpu.upload(&mb.buckets, 0, &embedding_buckets(inputs));
        self.gpu.upload(&mb.targets, 0, targets);
        Ok((self.gpu.time_program(&mb.eval, &[], reps)?, self.gpu.time_program(&mb.train, &mb.dacts, reps)?))
    }
}

