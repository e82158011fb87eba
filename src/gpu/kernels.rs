//! Typed launchers: one method per kernel, with the name and argument order of its CPU twin in
//! `crate::reference::layers`. Each records dispatches into a `ProgramBuilder`; nothing runs until
//! the program is submitted. Backward launchers accumulate (`+=`) into every gradient, like the
//! reference, so callers zero gradients where a new sum starts; the one exception is
//! `crossentropy_chunk_backward`, which assigns (one scratch serves every vocabulary chunk).

use super::context::DeviceKind;
use super::kernel_set::KernelSet;
use super::program::{Grid, ProgramBuilder, ProgramError, Uniforms, View, grid_1d};

type R = Result<(), ProgramError>;

/// The matmul implementation. The device's kernel set picks it (`KernelSet::matmul`); the
/// `*_with` launchers take one explicitly so tests run every variant on one adapter.
/// The other kernels follow the same choice (attention blocks, fused GELU on CPU adapters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatmulVariant {
    /// matmul.wgsl: 16x16 workgroup tiles, one output per invocation; any shape. The simple twin
    /// (and the fallback of `RegisterBlocked` for shapes it cannot take).
    #[default]
    Tiled,
    /// matmul_cpu.wgsl: 4x8 outputs per invocation from vec4 loads, no barriers. Needs K % 4 == 0
    /// and 4-aligned offsets of its vec4 operands; other shapes fall back to `Tiled`.
    RegisterBlocked,
    /// matmul_gpu.wgsl: 64x64 workgroup tiles, 4x4 outputs per invocation, vec4 loads where an
    /// operand allows them; any shape (`kernels_gpu.rs`).
    GpuTiled,
}

/// Dropout in one dispatch (`reference::dropout`): the micro-batch's key ([seed, step, window
/// position of its first sequence, 0], u32), the site, p's threshold and kept scale, and (for
/// attention run in parts of sequences) the part's first sequence in the micro-batch.
#[derive(Clone)]
pub struct DropoutArgs {
    pub key: View,
    pub site: u32,
    pub threshold: u32,
    pub scale: f32,
    pub first: usize,
}

impl DropoutArgs {
    /// The same for the part of sequences that starts at sequence `first` of the micro-batch.
    pub fn part(&self, first: usize) -> Self {
        Self { first, ..self.clone() }
    }
    /// The uniform fields after the attention's dims: S0, SITE, THR, SCALE (all 0 without dropout).
    pub(crate) fn attention_dims(drop: Option<&Self>, dims: Uniforms) -> Uniforms {
        match drop {
            Some(d) => dims.n(d.first).u(d.site).u(d.threshold).f(d.scale),
            None => dims.u(0).u(0).u(0).f(1.0),
        }
    }
    /// The key binding: 4 u32, or an unused binding without dropout.
    pub(crate) fn key_arg(drop: Option<&Self>, none: &View) -> (View, usize) {
        match drop {
            Some(d) => (d.key.clone(), 4),
            None => (none.clone(), 0),
        }
    }
}

fn tiles(rows: usize, cols: usize) -> Grid {
    Grid::Groups([cols.div_ceil(16) as u32, rows.div_ceil(16) as u32, 1])
}

fn aligned(views: &[&View]) -> bool {
    views.iter().all(|v| v.offset % 4 == 0)
}

/// Whether attention can use the vec4 kernels of attention_cpu.wgsl.
fn attention_v4(variant: MatmulVariant, c: usize, nh: usize, vec4_views: &[&View]) -> bool {
    variant == MatmulVariant::RegisterBlocked && c % 4 == 0 && (c / nh) % 4 == 0 && aligned(vec4_views)
}

/// Whether matmul_forward_cpu takes an inner dimension of `k` with these vec4 operands.
fn forward_cpu_fits(variant: MatmulVariant, k: usize, inp: &View, weight: &View) -> bool {
    variant == MatmulVariant::RegisterBlocked && k % 4 == 0 && aligned(&[inp, weight])
}

/// Invocations of attention_cpu.wgsl's block kernels for (B, T, C, NH): score blocks (4 rows by
/// 8 columns of a T x T matrix per head) and row blocks (4 rows by 2 vec4 of head channels).
fn attention_blocks(b: usize, t: usize, c: usize, nh: usize) -> (usize, usize) {
    let heads = b * nh;
    (heads * t.div_ceil(4) * t.div_ceil(8), heads * t.div_ceil(4) * (c / nh / 4).div_ceil(2))
}

/// Mesa's CPU adapters (lavapipe, llvmpipe) stop a shader invocation's loops after 65,535
/// iterations in total, silently (the kernel then returns wrong numbers). On such adapters each
/// launcher whose kernel loops over an axis in one invocation refuses shapes that would pass it
/// (`ProgramBuilder::check_loops`); kernels that stride a row over a workgroup (cross-entropy)
/// stay far under it by construction.
pub const CPU_ADAPTER_MAX_LOOP: usize = 65_535;

/// The most loop iterations of one attention invocation over T positions with head size hs,
/// counted as `check_loops` counts: attention_cpu.wgsl's softmax walks a row three times plus
/// the masked tail (at most 4 T + 4); attention.wgsl's query-row kernels also run a head-size
/// loop per position and a position loop per head channel (T (hs + 2) + 2 (T + 1) + hs (T + 2)
/// + 1 at most).
fn attention_loops(v4: bool, t: usize, hs: usize) -> usize {
    if v4 { 4 * t + 4 } else { t * (2 * hs + 4) + hs + 3 }
}

/// Number of partial sums of the two-stage norm: enough workgroups to fill the device, few
/// enough that the final stage is one workgroup's short loop.
pub const NORM_GROUPS: usize = 256;

/// Elements one workgroup of `grad_stats_partial` reduces (64 per invocation).
pub const GRAD_STATS_CHUNK: usize = 4096;

/// Partial sums per buffer when a norm spans `buffers` buffers (`grad_norm_slabs`).
pub fn norm_groups(buffers: usize) -> usize {
    (NORM_GROUPS / buffers.max(1)).max(1)
}

impl ProgramBuilder {
    /// The device's kernel family (chosen once, `Gpu::kernels`).
    pub fn kernels(&self) -> KernelSet {
        self.gpu().kernels()
    }

    fn variant(&self) -> MatmulVariant {
        self.kernels().matmul()
    }

    /// Refuse, on a CPU adapter, a dispatch of `kernel` whose invocations would loop more than
    /// CPU_ADAPTER_MAX_LOOP times. `iterations`: the worst case of one invocation, all its loops
    /// together, plus one for every loop entered after the first (measured on lavapipe: one loop
    /// of 65,535 iterations completes; three passes over C = 21,845 do not, over 21,844 they
    /// do); loops of a constant trip count of at most 16 are unrolled and not counted.
    pub(crate) fn check_loops(&self, kernel: &str, iterations: usize) -> R {
        if self.gpu().kind == DeviceKind::Cpu && iterations > CPU_ADAPTER_MAX_LOOP {
            return Err(ProgramError::Shape {
                kernel: kernel.into(),
                message: format!(
                    "one invocation would loop {iterations} times, past the {CPU_ADAPTER_MAX_LOOP} iterations after which \
                     this CPU adapter (Mesa) silently stops a shader's loops; use smaller dimensions"
                ),
            });
        }
        Ok(())
    }

    /// out [B,T,C] = wte[inp] + wpe[t]
    #[allow(clippy::too_many_arguments)]
    pub fn encoder_forward(&mut self, out: &View, inp: &View, wte: &View, wpe: &View, b: usize, t: usize, c: usize, v: usize) -> R {
        self.encoder_forward_rows(out, inp, wte, wpe, b, t, c, 0, v)
    }

    /// `encoder_forward` for the positions whose token is in `v0 .. v0 + vn`, with `wte` the
    /// embedding's rows v0 .. v0 + vn (one part of an embedding cut into vocabulary ranges).
    #[allow(clippy::too_many_arguments)]
    pub fn encoder_forward_rows(
        &mut self, out: &View, inp: &View, wte: &View, wpe: &View, b: usize, t: usize, c: usize, v0: usize, vn: usize,
    ) -> R {
        let dims = Uniforms::new().n(b).n(t).n(c).n(v0).n(vn);
        let args = [(out, b * t * c), (inp, b * t), (wte, vn * c), (wpe, t * c)];
        self.call("encoder", "encoder_forward", 1, &args, dims, Grid::Threads(b * t * c))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn encoder_backward(&mut self, dwte: &View, dwpe: &View, dout: &View, inp: &View, b: usize, t: usize, c: usize, v: usize) -> R {
        self.encoder_backward_rows(dwte, Some(dwpe), dout, inp, b, t, c, 0, v)
    }

    /// `encoder_backward` into the embedding rows v0 .. v0 + vn (`dwte` is that part), and the
    /// position embedding's gradient when `dwpe` is given (once, with one of the parts).
    #[allow(clippy::too_many_arguments)]
    pub fn encoder_backward_rows(
        &mut self, dwte: &View, dwpe: Option<&View>, dout: &View, inp: &View, b: usize, t: usize, c: usize, v0: usize,
        vn: usize,
    ) -> R {
        let dwpe_v = dwpe.map_or((dwte, 0), |d| (d, t * c));
        let args = [(dwte, vn * c), dwpe_v, (dout, b * t * c), (inp, b * t)];
        let dims = Uniforms::new().n(b).n(t).n(c).n(v0).n(vn);
        self.check_loops("encoder_backward_wte", b * t)?;
        self.call("encoder", "encoder_backward_wte", 9, &args, dims.clone(), Grid::Threads(c))?;
        if dwpe.is_some() {
            self.call("encoder", "encoder_backward_wpe", 9, &args, dims, Grid::Threads(t * c))?;
        }
        Ok(())
    }

    /// out [N,C], mean [N], rstd [N] from inp [N,C], weight [C], bias [C]
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_forward(&mut self, out: &View, mean: &View, rstd: &View, inp: &View, weight: &View, bias: &View, n: usize, c: usize) -> R {
        if self.variant() == MatmulVariant::GpuTiled {
            // the GPU family: one workgroup per row (gpu::kernels_rows)
            let r = self.row_reduce();
            return self.layernorm_forward_rows(r, out, mean, rstd, inp, weight, bias, n, c);
        }
        let dims = Uniforms::new().n(n).n(c);
        self.check_loops("layernorm_forward", 3 * c + 2)?;
        let args = [(out, n * c), (mean, n), (rstd, n), (inp, n * c), (weight, c), (bias, c)];
        self.call("layernorm", "layernorm_forward", 1, &args, dims, Grid::Threads(n))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_backward(
        &mut self, dinp: &View, dweight: &View, dbias: &View, dout: &View, inp: &View, weight: &View,
        mean: &View, rstd: &View, n: usize, c: usize,
    ) -> R {
        if self.variant() == MatmulVariant::GpuTiled {
            let r = self.row_reduce();
            return self.layernorm_backward_rows(r, dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c);
        }
        let args = [(dinp, n * c), (dweight, c), (dbias, c), (dout, n * c), (inp, n * c), (weight, c), (mean, n), (rstd, n)];
        let dims = Uniforms::new().n(n).n(c);
        self.check_loops("layernorm_backward_input", 2 * c + 1)?;
        self.check_loops("layernorm_backward_params", n)?;
        self.call("layernorm", "layernorm_backward_input", 9, &args, dims.clone(), Grid::Threads(n))?;
        self.call("layernorm", "layernorm_backward_params", 9, &args, dims, Grid::Threads(c))?;
        Ok(())
    }

    /// out [M,N] = inp [M,K] . weight [N,K]^T (+ bias [N]), with the device's variant.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward(&mut self, out: &View, inp: &View, weight: &View, bias: Option<&View>, m: usize, k: usize, n: usize) -> R {
        let v = self.variant();
        self.matmul_forward_with(v, out, inp, weight, bias, m, k, n)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward_with(
        &mut self, variant: MatmulVariant, out: &View, inp: &View, weight: &View, bias: Option<&View>,
        m: usize, k: usize, n: usize,
    ) -> R {
        if variant == MatmulVariant::GpuTiled {
            return self.matmul_forward_gpu(out, inp, weight, bias, None, m, k, n);
        }
        if forward_cpu_fits(variant, k, inp, weight) {
            return self.matmul_forward_cpu(out, inp, weight, bias, None, 0, m, k, n);
        }
        // Without a bias the binding gets the unused-binding stand-in; the kernel does not read it.
        let bias_v = bias.map_or((out, 0), |b| (b, n));
        let dims = Uniforms::new().n(m).n(k).n(n).u(bias.is_some() as u32);
        self.check_loops("matmul_forward", k.div_ceil(16))?;
        self.call("matmul", "matmul_forward", 1, &[(out, m * n), (inp, m * k), (weight, n * k), bias_v], dims, tiles(m, n))?;
        Ok(())
    }

    /// matmul_forward_cpu: out [M,N] = inp [M,K] . weight [N,K]^T (+ bias), or `+=` with flag
    /// bit 2; `aux` is the GELU output (bit 1) or input (bit 3). The bias bit comes from `bias`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_forward_cpu(
        &mut self, out: &View, inp: &View, weight: &View, bias: Option<&View>, aux: Option<&View>, flags: u32, m: usize,
        k: usize, n: usize,
    ) -> R {
        // Unused bindings get the unused-binding stand-in (the kernel does not touch them).
        let args = [(out, m * n), (inp, m * k), (weight, n * k), bias.map_or((out, 0), |b| (b, n)), aux.map_or((out, 0), |a| (a, m * n))];
        let dims = Uniforms::new().n(m).n(k).n(n).u(flags | bias.is_some() as u32);
        let blocks = m.div_ceil(4) * n.div_ceil(8);
        // the K / 4 loop and the epilogue's 8 x 4 (counted in case it is not unrolled)
        self.check_loops("matmul_forward_cpu", k / 4 + 49)?;
        self.call("matmul_cpu", "matmul_forward_cpu", 1, &args, dims, Grid::Threads(blocks))?;
        Ok(())
    }

    /// out [M,N] = inp . weight^T + bias, then gelu_out = GELU(out): one pass on CPU adapters
    /// (matmul_cpu.wgsl's GELU flag), the matmul and gelu_forward otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward_gelu(
        &mut self, out: &View, gelu_out: &View, inp: &View, weight: &View, bias: Option<&View>, m: usize, k: usize,
        n: usize,
    ) -> R {
        let v = self.variant();
        self.matmul_forward_gelu_with(v, out, gelu_out, inp, weight, bias, m, k, n)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward_gelu_with(
        &mut self, variant: MatmulVariant, out: &View, gelu_out: &View, inp: &View, weight: &View, bias: Option<&View>,
        m: usize, k: usize, n: usize,
    ) -> R {
        if variant == MatmulVariant::GpuTiled {
            self.matmul_forward_gpu(out, inp, weight, bias, Some(gelu_out), m, k, n)?;
        } else if forward_cpu_fits(variant, k, inp, weight) {
            self.matmul_forward_cpu(out, inp, weight, bias, Some(gelu_out), 2, m, k, n)?;
        } else {
            self.matmul_forward_with(variant, out, inp, weight, bias, m, k, n)?;
            self.gelu_forward(gelu_out, out, m * n)?;
        }
        Ok(())
    }

    /// The backward of `matmul_forward_gelu` followed by a matmul reading `gelu_out`: the matmul's
    /// input gradient goes through GELU' into `dpre` (+=). With `weight_t` (weight [N,K]
    /// transposed to [K,N] by `transpose`) on CPU adapters, the input gradient runs in the
    /// forward kernel with the GELU backward fused and `dpost` is not touched; otherwise it
    /// accumulates into `dpost` (which must start at zero) and gelu_backward reads it.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward_gelu(
        &mut self, dpre: &View, dpost: &View, pre: &View, weight_t: Option<&View>, dweight: &View, dbias: Option<&View>,
        dout: &View, inp: &View, weight: &View, m: usize, k: usize, n: usize,
    ) -> R {
        let v = self.variant();
        self.matmul_backward_gelu_with(v, dpre, dpost, pre, weight_t, dweight, dbias, dout, inp, weight, m, k, n)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward_gelu_with(
        &mut self, variant: MatmulVariant, dpre: &View, dpost: &View, pre: &View, weight_t: Option<&View>, dweight: &View,
        dbias: Option<&View>, dout: &View, inp: &View, weight: &View, m: usize, k: usize, n: usize,
    ) -> R {
        if variant == MatmulVariant::GpuTiled {
            // the GELU backward fused into the input gradient's epilogue; dpost is not touched
            self.matmul_backward_input_gpu(dpre, Some(pre), dout, weight, m, k, n)?;
            return self.matmul_backward_with(variant, None, dweight, dbias, dout, inp, weight, m, k, n);
        }
        if self.input_grad_transposed(variant, dpre, Some(pre), weight_t, dout, m, k, n)? {
            self.matmul_backward_with(variant, None, dweight, dbias, dout, inp, weight, m, k, n)
        } else {
            self.matmul_backward_with(variant, Some(dpost), dweight, dbias, dout, inp, weight, m, k, n)?;
            self.gelu_backward(dpre, pre, dpost, m * k)
        }
    }

    /// `matmul_backward` with the input gradient taken from `weight_t` (weight [N,K] transposed to
    /// [K,N] by `transpose`) where the adapter's kernels gain from it (CPU adapters: the forward
    /// kernel's loop order); the same sums otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward_t(
        &mut self, dinp: &View, weight_t: Option<&View>, dweight: &View, dbias: Option<&View>, dout: &View, inp: &View,
        weight: &View, m: usize, k: usize, n: usize,
    ) -> R {
        let v = self.variant();
        self.matmul_backward_t_with(v, dinp, weight_t, dweight, dbias, dout, inp, weight, m, k, n)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward_t_with(
        &mut self, variant: MatmulVariant, dinp: &View, weight_t: Option<&View>, dweight: &View, dbias: Option<&View>,
        dout: &View, inp: &View, weight: &View, m: usize, k: usize, n: usize,
    ) -> R {
        let done = self.input_grad_transposed(variant, dinp, None, weight_t, dout, m, k, n)?;
        let dinp = if done { None } else { Some(dinp) };
        self.matmul_backward_with(variant, dinp, dweight, dbias, dout, inp, weight, m, k, n)
    }

    /// dinp [M,K] += dout [M,N] . weight_t [K,N]^T (times GELU'(pre) with `pre`) in
    /// matmul_forward_cpu's accumulate mode, when the adapter and shapes allow; false otherwise.
    #[allow(clippy::too_many_arguments)]
    fn input_grad_transposed(
        &mut self, variant: MatmulVariant, dinp: &View, pre: Option<&View>, weight_t: Option<&View>, dout: &View, m: usize,
        k: usize, n: usize,
    ) -> Result<bool, ProgramError> {
        // the forward kernel with inner dimension N and output width K
        match weight_t {
            Some(wt) if forward_cpu_fits(variant, n, dout, wt) => {
                let flags = 4 | if pre.is_some() { 8 } else { 0 };
                self.matmul_forward_cpu(dinp, dout, wt, None, pre, flags, m, n, k)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// weight_t [K,N] = weight [N,K]^T (f32 weights; K % 4 == 0 and a 4-aligned weight).
    pub fn transpose(&mut self, weight_t: &View, weight: &View, n: usize, k: usize) -> R {
        if k % 4 != 0 || !aligned(&[weight]) {
            return Err(ProgramError::Shape { kernel: "transpose_cpu".into(), message: format!("needs K % 4 == 0 and a 4-aligned weight (N {n}, K {k})") });
        }
        let dims = Uniforms::new().n(0).n(k).n(n).u(0);
        let args = [(weight_t, 0), (weight_t, 0), (weight, n * k), (weight_t, 0), (weight_t, 0), (weight_t, k * n)];
        self.call("matmul_cpu", "transpose_cpu", 1, &args, dims, Grid::Threads(n * k / 4))?;
        Ok(())
    }

    /// dinp [M,K] += dout . weight;  dweight [N,K] += dout^T . inp;  dbias [N] += colsum(dout)
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward(
        &mut self, dinp: Option<&View>, dweight: &View, dbias: Option<&View>, dout: &View, inp: &View, weight: &View,
        m: usize, k: usize, n: usize,
    ) -> R {
        let v = self.variant();
        self.matmul_backward_with(v, dinp, dweight, dbias, dout, inp, weight, m, k, n)
    }

    /// As `matmul_backward`; `dinp` None skips the input gradient (the first layer's input).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward_with(
        &mut self, variant: MatmulVariant, dinp: Option<&View>, dweight: &View, dbias: Option<&View>, dout: &View,
        inp: &View, weight: &View, m: usize, k: usize, n: usize,
    ) -> R {
        let dims = Uniforms::new().n(m).n(k).n(n).u(dbias.is_some() as u32);
        if variant == MatmulVariant::GpuTiled {
            if let Some(dinp) = dinp {
                self.matmul_backward_input_gpu(dinp, None, dout, weight, m, k, n)?;
            }
            self.matmul_backward_weight_gpu(dweight, dout, inp, m, k, n)?;
            if let Some(dbias) = dbias {
                // column sums, two-stage with the builder's partials (gpu::kernels_rows)
                self.bias_backward_cols(dbias, dout, m, n)?;
            }
            return Ok(());
        }
        let cpu = variant == MatmulVariant::RegisterBlocked && k % 4 == 0;
        let dinp_v = dinp.map_or((dweight, 0), |d| (d, m * k));
        let dbias_v = dbias.map_or((dweight, 0), |d| (d, n));
        let args = [dinp_v, (dweight, n * k), dbias_v, (dout, m * n), (inp, m * k), (weight, n * k)];
        // the _v4 entries read dout as vec4 along N (binding 15 = the 7th argument) instead
        let args_v4 = [dinp_v, (dweight, n * k), dbias_v, (dout, 0), (inp, m * k), (weight, n * k), (dout, m * n)];
        let dout_v4 = n % 4 == 0 && aligned(&[dout]);
        if let Some(dinp) = dinp {
            if cpu && aligned(&[dinp, weight]) && dout_v4 {
                let blocks = m.div_ceil(4) * (k / 4).div_ceil(2);
                self.check_loops("matmul_backward_input_cpu_v4", n / 4)?;
                self.call("matmul_cpu", "matmul_backward_input_cpu_v4", 9, &args_v4, dims.clone(), Grid::Threads(blocks))?;
            } else if cpu && aligned(&[dinp, weight]) {
                let blocks = m.div_ceil(4) * (k / 4).div_ceil(2);
                self.check_loops("matmul_backward_input_cpu", n)?;
                self.call("matmul_cpu", "matmul_backward_input_cpu", 9, &args, dims.clone(), Grid::Threads(blocks))?;
            } else {
                self.check_loops("matmul_backward_input", n.div_ceil(16))?;
                self.call("matmul", "matmul_backward_input", 9, &args, dims.clone(), tiles(m, k))?;
            }
        }
        // the weight and bias gradients sum over the M rows in one invocation
        self.check_loops("matmul_backward_weight", m)?;
        if cpu && aligned(&[dweight, inp]) && dout_v4 {
            let blocks = (n / 4) * (k / 4).div_ceil(2);
            self.call("matmul_cpu", "matmul_backward_weight_cpu_v4", 9, &args_v4, dims.clone(), Grid::Threads(blocks))?;
        } else if cpu && aligned(&[dweight, inp]) {
            let blocks = n.div_ceil(4) * (k / 4).div_ceil(2);
            self.call("matmul_cpu", "matmul_backward_weight_cpu", 9, &args, dims.clone(), Grid::Threads(blocks))?;
        } else {
            self.call("matmul", "matmul_backward_weight", 9, &args, dims.clone(), tiles(n, k))?;
        }
        if dbias.is_some() {
            self.call("matmul", "matmul_backward_bias", 9, &args, dims, Grid::Threads(n))?;
        }
        Ok(())
    }

    /// Causal multi-head self-attention over qkv [B,T,3C], with the device's variant.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward(
        &mut self, out: &View, preatt: &View, att: &View, qkv: &View, b: usize, t: usize, c: usize, nh: usize,
    ) -> R {
        let v = self.variant();
        self.attention_forward_with(v, out, preatt, att, qkv, b, t, c, nh)
    }

    /// `RegisterBlocked` (CPU adapters) uses attention_cpu.wgsl (vec4 along the head dimension)
    /// when C and the head size are multiples of 4 and the vec4 operands are 4-aligned.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward_with(
        &mut self, variant: MatmulVariant, out: &View, preatt: &View, att: &View, qkv: &View, b: usize, t: usize, c: usize,
        nh: usize,
    ) -> R {
        self.attention_forward_dropout_with(variant, out, preatt, att, qkv, None, b, t, c, nh)
    }

    /// Attention with dropout on the probabilities (`drop`; None: none), the device's variant.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward_dropout(
        &mut self, out: &View, preatt: &View, att: &View, qkv: &View, drop: Option<&DropoutArgs>, b: usize, t: usize,
        c: usize, nh: usize,
    ) -> R {
        let v = self.variant();
        self.attention_forward_dropout_with(v, out, preatt, att, qkv, drop, b, t, c, nh)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward_dropout_with(
        &mut self, variant: MatmulVariant, out: &View, preatt: &View, att: &View, qkv: &View, drop: Option<&DropoutArgs>,
        b: usize, t: usize, c: usize, nh: usize,
    ) -> R {
        let dims = DropoutArgs::attention_dims(drop, Uniforms::new().n(b).n(t).n(c).n(nh));
        let tt = b * nh * t * t;
        let key = DropoutArgs::key_arg(drop, qkv);
        let args = [(out, b * t * c), (preatt, tt), (att, tt), (qkv, b * t * 3 * c), (&key.0, key.1)];
        let v4 = attention_v4(variant, c, nh, &[out, qkv]);
        self.check_loops("attention_forward", attention_loops(v4, t, c / nh.max(1)))?;
        if v4 {
            let (scores, rows) = attention_blocks(b, t, c, nh);
            self.call("attention_cpu", "attention_scores_cpu", 1, &args, dims.clone(), Grid::Threads(scores))?;
            self.call("attention_cpu", "attention_softmax_cpu", 1, &args, dims.clone(), Grid::Threads(b * nh * t))?;
            self.call("attention_cpu", "attention_value_cpu", 1, &args, dims, Grid::Threads(rows))?;
        } else {
            self.call("attention", "attention_forward", 1, &args, dims, Grid::Threads(b * nh * t))?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        &mut self, dqkv: &View, dpreatt: &View, datt: &View, dout: &View, qkv: &View, att: &View,
        b: usize, t: usize, c: usize, nh: usize,
    ) -> R {
        let v = self.variant();
        self.attention_backward_with(v, dqkv, dpreatt, datt, dout, qkv, att, b, t, c, nh)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward_with(
        &mut self, variant: MatmulVariant, dqkv: &View, dpreatt: &View, datt: &View, dout: &View, qkv: &View, att: &View,
        b: usize, t: usize, c: usize, nh: usize,
    ) -> R {
        self.attention_backward_dropout_with(variant, dqkv, dpreatt, datt, dout, qkv, att, None, b, t, c, nh)
    }

    /// The backward of `attention_forward_dropout` (the same `drop`), the device's variant.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward_dropout(
        &mut self, dqkv: &View, dpreatt: &View, datt: &View, dout: &View, qkv: &View, att: &View, drop: Option<&DropoutArgs>,
        b: usize, t: usize, c: usize, nh: usize,
    ) -> R {
        let v = self.variant();
        self.attention_backward_dropout_with(v, dqkv, dpreatt, datt, dout, qkv, att, drop, b, t, c, nh)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward_dropout_with(
        &mut self, variant: MatmulVariant, dqkv: &View, dpreatt: &View, datt: &View, dout: &View, qkv: &View, att: &View,
        drop: Option<&DropoutArgs>, b: usize, t: usize, c: usize, nh: usize,
    ) -> R {
        let tt = b * nh * t * t;
        let key = DropoutArgs::key_arg(drop, qkv);
        let args = [(dqkv, b * t * 3 * c), (dpreatt, tt), (datt, tt), (dout, b * t * c), (qkv, b * t * 3 * c), (att, tt), (&key.0, key.1)];
        let dims = DropoutArgs::attention_dims(drop, Uniforms::new().n(b).n(t).n(c).n(nh));
        let v4 = attention_v4(variant, c, nh, &[dqkv, dout, qkv]);
        self.check_loops("attention_backward", attention_loops(v4, t, c / nh.max(1)))?;
        if v4 {
            let (scores, rows) = attention_blocks(b, t, c, nh);
            let f = "attention_cpu";
            self.call(f, "attention_backward_datt_cpu", 9, &args, dims.clone(), Grid::Threads(scores))?;
            self.call(f, "attention_backward_softmax_cpu", 9, &args, dims.clone(), Grid::Threads(b * nh * t))?;
            self.call(f, "attention_backward_query_cpu", 9, &args, dims.clone(), Grid::Threads(rows))?;
            self.call(f, "attention_backward_key_value_cpu", 9, &args, dims, Grid::Threads(rows))?;
        } else {
            self.call("attention", "attention_backward_query", 9, &args, dims.clone(), Grid::Threads(b * nh * t))?;
            self.call("attention", "attention_backward_key_value", 9, &args, dims, Grid::Threads(b * nh * t))?;
        }
        Ok(())
    }

    pub fn gelu_forward(&mut self, out: &View, inp: &View, n: usize) -> R {
        self.call("gelu", "gelu_forward", 1, &[(out, n), (inp, n)], Uniforms::new().n(n), Grid::Threads(n))?;
        Ok(())
    }

    pub fn gelu_backward(&mut self, dinp: &View, inp: &View, dout: &View, n: usize) -> R {
        self.call("gelu", "gelu_backward", 9, &[(dinp, n), (inp, n), (dout, n)], Uniforms::new().n(n), Grid::Threads(n))?;
        Ok(())
    }

    pub fn residual_forward(&mut self, out: &View, inp1: &View, inp2: &View, n: usize) -> R {
        self.call("residual", "residual_forward", 1, &[(out, n), (inp1, n), (inp2, n)], Uniforms::new().n(n), Grid::Threads(n))?;
        Ok(())
    }

    /// x[..n] *= dropout's factors (in place), n = samples x `per` elements.
    pub fn dropout_forward(&mut self, x: &View, drop: &DropoutArgs, per: usize, n: usize) -> R {
        let dims = Uniforms::new().n(n).f(0.0).n(per).u(drop.site).u(drop.threshold).f(drop.scale);
        self.call("residual", "dropout_forward", 16, &[(x, n), (x, 0), (&drop.key, 4)], dims, Grid::Threads(n))?;
        Ok(())
    }

    /// dx[..n] = dropout's factors * dy (assigns), n = samples x `per` elements.
    pub fn dropout_backward(&mut self, dx: &View, dy: &View, drop: &DropoutArgs, per: usize, n: usize) -> R {
        let dims = Uniforms::new().n(n).f(0.0).n(per).u(drop.site).u(drop.threshold).f(drop.scale);
        self.call("residual", "dropout_backward", 16, &[(dx, n), (dy, n), (&drop.key, 4)], dims, Grid::Threads(n))?;
        Ok(())
    }

    pub fn residual_backward(&mut self, dinp1: &View, dinp2: &View, dout: &View, n: usize) -> R {
        self.call("residual", "residual_backward", 9, &[(dinp1, n), (dinp2, n), (dout, n)], Uniforms::new().n(n), Grid::Threads(n))?;
        Ok(())
    }

    /// One workgroup per row (split over x and y past the device's per-dimension limit), for the
    /// kernels that reduce a row cooperatively.
    fn row_groups(&self, rows: usize) -> Grid {
        let rows = u32::try_from(rows).expect("dispatch too large");
        Grid::Groups(grid_1d(rows, self.gpu().limits().max_compute_workgroups_per_dimension))
    }

    /// losses [N] from logits [N,V] and targets [N] (IGNORE_INDEX rows get 0).
    pub fn crossentropy_forward(&mut self, losses: &View, logits: &View, targets: &View, n: usize, v: usize) -> R {
        let dims = Uniforms::new().n(n).n(v).f(0.0);
        let grid = self.row_groups(n);
        self.call("crossentropy", "crossentropy_forward", 1, &[(losses, n), (logits, n * v), (targets, n)], dims, grid)?;
        Ok(())
    }

    /// totals[0] += sum of counted losses; totals[1] += count of counted rows.
    pub fn crossentropy_reduce(&mut self, totals: &View, losses: &View, targets: &View, n: usize) -> R {
        let dims = Uniforms::new().n(n).n(0).f(0.0);
        self.call("crossentropy", "crossentropy_reduce", 5, &[(totals, 2), (losses, n), (targets, n)], dims, Grid::Groups([1, 1, 1]))?;
        Ok(())
    }

    /// dlogits [N,V] += dloss * (softmax - onehot) on counted rows. Returns the dispatch index so
    /// `dloss` can be rewritten with `Program::set_dims` (see `crossentropy_backward_uniforms`).
    #[allow(clippy::too_many_arguments)]
    pub fn crossentropy_backward(
        &mut self, dlogits: &View, logits: &View, targets: &View, dloss: f32, n: usize, v: usize,
    ) -> Result<usize, ProgramError> {
        let dims = Uniforms::new().n(n).n(v).f(dloss);
        let grid = self.row_groups(n);
        self.call("crossentropy", "crossentropy_backward", 9, &[(dlogits, n * v), (logits, n * v), (targets, n)], dims, grid)
    }

    /// One vocabulary chunk of a chunked cross-entropy: logits_chunk [N,VC] holds columns
    /// [v0, v0 + vc) of the logits. Merges the chunk's max and sum of exp into each counted row's
    /// state [N,4] (f32: m, s, target logit, lse) with an online log-sum-exp, and records the
    /// target's logit when the target is in the chunk; `first` sets the state from this chunk
    /// instead of merging (no fill needed before). Ignored rows keep their state. The state is an
    /// f32 tensor in a buffer of its own (the logits are bound read-only).
    #[allow(clippy::too_many_arguments)]
    pub fn crossentropy_chunk_forward(
        &mut self, state: &View, logits_chunk: &View, targets: &View, v0: usize, vc: usize, n: usize, first: bool,
    ) -> R {
        let dims = Uniforms::new().n(n).n(vc).f(0.0).n(v0).u(u32::from(first));
        let grid = self.row_groups(n);
        let args = [(state, n * 4), (logits_chunk, n * vc), (targets, n)];
        self.call("crossentropy", "crossentropy_chunk_forward", 13, &args, dims, grid)?;
        Ok(())
    }

    /// After every chunk's `crossentropy_chunk_forward`: losses [N] = log(s) + m - target logit
    /// (0 on ignored rows) and state[row].lse = m + log(s) for `crossentropy_chunk_backward`.
    pub fn crossentropy_chunk_finish(&mut self, losses: &View, state: &View, targets: &View, n: usize) -> R {
        let dims = Uniforms::new().n(n).n(0).f(0.0);
        self.call("crossentropy", "crossentropy_chunk_finish", 17, &[(losses, n), (state, n * 4), (targets, n)], dims, Grid::Threads(n))?;
        Ok(())
    }

    /// dlogits_chunk [N,VC] = dloss * (exp(logits_chunk - lse) - onehot(targets - v0)) on counted
    /// rows, 0 on ignored rows: ASSIGNED, not accumulated (one scratch serves every chunk). Needs
    /// the state after `crossentropy_chunk_finish`. Returns the dispatch index so `dloss` can be
    /// rewritten with `Program::set_dims` (see `crossentropy_chunk_backward_uniforms`).
    #[allow(clippy::too_many_arguments)]
    pub fn crossentropy_chunk_backward(
        &mut self, dlogits_chunk: &View, logits_chunk: &View, state: &View, targets: &View, dloss: f32, v0: usize,
        vc: usize, n: usize,
    ) -> Result<usize, ProgramError> {
        let dims = crossentropy_chunk_backward_uniforms(dloss, n, v0, vc);
        let grid = self.row_groups(n);
        let args = [(dlogits_chunk, n * vc), (logits_chunk, n * vc), (state, n * 4), (targets, n)];
        self.call("crossentropy", "crossentropy_chunk_backward", 21, &args, dims, grid)
    }

    /// grad += micro_grad
    pub fn accumulate(&mut self, grad: &View, micro_grad: &View, n: usize) -> R {
        self.call("accumulate", "accumulate", 1, &[(grad, n), (micro_grad, n)], Uniforms::new().n(n).f(0.0), Grid::Threads(n))?;
        Ok(())
    }

    /// x[..n] = value
    pub fn fill(&mut self, x: &View, value: f32, n: usize) -> R {
        self.call("accumulate", "fill", 9, &[(x, n)], Uniforms::new().n(n).f(value), Grid::Threads(n))?;
        Ok(())
    }

    /// x[..n] = value on an activation tensor (of the builder's precision).
    pub fn fill_act(&mut self, x: &View, value: f32, n: usize) -> R {
        // fill_act reads o0 and N (the uniform's residual layout) and `value` after them
        let dims = Uniforms::new().n(n).f(value);
        self.call("residual", "fill_act", 12, &[(x, n)], dims, Grid::Threads(n))?;
        Ok(())
    }

    /// norm[0] = ||grads[..n]||_2, norm[1] = its square; `partials` holds NORM_GROUPS floats.
    pub fn grad_norm(&mut self, norm: &View, partials: &View, grads: &View, n: usize) -> R {
        self.grad_norm_slabs(norm, partials, &[(grads.clone(), n)])
    }

    /// The global norm of several buffers' contents (a slab of several buffers): each buffer's
    /// partial sums into its own `norm_groups(buffers)` slots of `partials`, then one final sum
    /// over all of them: norm[0] = ||all||_2, norm[1] = its square. With one buffer, `grad_norm`
    /// exactly; the partials stay NORM_GROUPS floats (or one per buffer past that), so the final
    /// stage binds 1 KiB however many buffers there are.
    pub fn grad_norm_slabs(&mut self, norm: &View, partials: &View, slabs: &[(View, usize)]) -> R {
        let g = norm_groups(slabs.len());
        for (i, (x, n)) in slabs.iter().enumerate() {
            let dims = Uniforms::new().n(*n).n(g).f(0.0);
            let part = partials.add(i * g);
            self.call("grad_norm", "grad_norm_partial", 1, &[(&part, g), (x, *n)], dims, Grid::Groups([g as u32, 1, 1]))?;
        }
        let all = g * slabs.len().max(1);
        let dims = Uniforms::new().n(0).n(all).f(0.0);
        self.call("grad_norm", "grad_norm_final", 3, &[(norm, 2), (partials, all)], dims, Grid::Groups([1, 1, 1]))?;
        Ok(())
    }

    /// grad_stats_partial over one slab buffer: every workgroup takes `GRAD_STATS_CHUNK` elements
    /// of one statistics segment (segments `p0..p1` of `table`, this buffer's, its first global
    /// workgroup `wg0`, `wgs` workgroups) and writes (|grads - prev|^2, <grads - prev, prev>) to
    /// partials[2 (wg0 + w) ..], then prev = grads. `prev` and `grads` are the whole buffers
    /// (`n` elements); `table` as `model::optim::StatsLayout::table` lays it out.
    #[allow(clippy::too_many_arguments)]
    pub fn grad_stats_partial(
        &mut self, partials: &View, partials_len: usize, prev: &View, grads: &View, n: usize, table: &View,
        table_len: usize, p0: usize, p1: usize, wg0: usize, wgs: usize,
    ) -> R {
        // the chunk's strided loop and the binary search over this buffer's segments
        self.check_loops("grad_stats_partial", GRAD_STATS_CHUNK / 64 + (p1 - p0).max(1).ilog2() as usize + 2)?;
        let dims = Uniforms::new().n(p0).n(p1).n(wg0).n(wgs).n(GRAD_STATS_CHUNK).n(0);
        let grid = Grid::Groups(super::program::grid_1d(u32::try_from(wgs).expect("too many workgroups"), self.gpu().limits().max_compute_workgroups_per_dimension));
        let args = [(partials, partials_len), (prev, n), (grads, n), (table, table_len)];
        self.call("grad_stats", "grad_stats_partial", 1, &args, dims, grid)?;
        Ok(())
    }

    /// grad_stats_final: statistic t (of `count`) sums its workgroups' pairs (the range at
    /// table[t0 + 2t], table[t0 + 2t + 1]) into stats[2t] = |g_k|^2, stats[2t + 1] =
    /// <g_k, G_{k-1}>. `most` is the most workgroups one statistic has (its loop's length).
    #[allow(clippy::too_many_arguments)]
    pub fn grad_stats_final(
        &mut self, stats: &View, count: usize, partials: &View, partials_len: usize, table: &View, table_len: usize,
        t0: usize, most: usize,
    ) -> R {
        self.check_loops("grad_stats_final", most.div_ceil(64) + 1)?;
        let dims = Uniforms::new().n(0).n(0).n(0).n(count).n(0).n(t0);
        let grid = Grid::Groups(super::program::grid_1d(u32::try_from(count).expect("too many statistics"), self.gpu().limits().max_compute_workgroups_per_dimension));
        let args = [(stats, 2 * count), (partials, partials_len), (table, table_len)];
        self.call("grad_stats", "grad_stats_final", 5, &args, dims, grid)?;
        Ok(())
    }

    /// x[..n] *= s. Returns the dispatch index (the scalar can be rewritten).
    pub fn scale(&mut self, x: &View, s: f32, n: usize) -> Result<usize, ProgramError> {
        self.call("grad_norm", "scale", 5, &[(x, n)], Uniforms::new().n(n).n(0).f(s), Grid::Threads(n))
    }

    /// x[..n] *= min(1, max_norm / (norm[0] + 1e-6)), the norm read on the device.
    pub fn clip_by_norm(&mut self, x: &View, norm: &View, max_norm: f32, n: usize) -> Result<usize, ProgramError> {
        self.call("grad_norm", "clip_by_norm", 5, &[(x, n), (norm, 2)], Uniforms::new().n(n).n(0).f(max_norm), Grid::Threads(n))
    }

    /// x[..n] *= 1 / totals[1] (the window's count of counted targets, read on the device).
    pub fn scale_by_inverse_count(&mut self, x: &View, totals: &View, n: usize) -> R {
        self.call("grad_norm", "scale_by_inverse_count", 5, &[(x, n), (totals, 2)], Uniforms::new().n(n).n(0).f(0.0), Grid::Threads(n))?;
        Ok(())
    }

    /// One AdamW step over n elements, skipped on the device when `loss[0]` or `norm[0]` is
    /// non-finite or `flag[0]` is not 0 (set by `adamw_check`). `loss`, `norm` and `flag` are
    /// views of one buffer (the window figures). Returns the dispatch index: `adamw_uniforms`
    /// rebuilds the uniform for the next step (step count, learning rate).
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        &mut self, params: &View, grads: &View, m: &View, v: &View, loss: &View, norm: &View, flag: &View, n: usize,
        hp: &AdamW, step: u32,
    ) -> Result<usize, ProgramError> {
        self.adamw_call("adamw", [params, grads, m, v, loss, norm, flag], n, hp, step)
    }

    /// flag[0] = 1.0 if the AdamW step with these arguments would write a non-finite weight or
    /// moment; otherwise the flag is left as it is (clear it once before the checks of a step).
    /// Same arguments and uniform as `adamw` (`adamw_uniforms` rebuilds it).
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_check(
        &mut self, params: &View, grads: &View, m: &View, v: &View, loss: &View, norm: &View, flag: &View, n: usize,
        hp: &AdamW, step: u32,
    ) -> Result<usize, ProgramError> {
        self.adamw_call("adamw_check", [params, grads, m, v, loss, norm, flag], n, hp, step)
    }

    /// adamw.wgsl's `entry` over (params, grads, m, v, loss, norm, flag): `adamw` reads loss,
    /// norm and flag through one read-only binding (the window figures), bound from `loss` to
    /// the end of the later of `norm` and `flag`, so the three must be views of one buffer with
    /// `loss` first; `adamw_check` writes the flag through its own binding.
    fn adamw_call(&mut self, entry: &str, args: [&View; 7], n: usize, hp: &AdamW, step: u32) -> Result<usize, ProgramError> {
        let [params, grads, m, v, loss, norm, flag] = args;
        let id = loss.buf.id();
        if norm.buf.id() != id || flag.buf.id() != id || norm.offset < loss.offset || flag.offset < loss.offset {
            return Err(ProgramError::Shape { kernel: entry.into(), message: "loss, norm and flag must be views of one buffer, loss first".into() });
        }
        let (norm_at, flag_at) = (norm.offset - loss.offset, flag.offset - loss.offset);
        let args = [(params, n), (grads, n), (m, n), (v, n), (loss, norm_at.max(flag_at) + 1), (norm, 2), (flag, 1)];
        let dims = adamw_dims(n, hp, step).n(norm_at).n(flag_at);
        self.call("adamw", entry, 1, &args, dims, Grid::Threads(n))
    }
}

/// AdamW hyper-parameters for one dispatch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

fn adamw_dims(n: usize, hp: &AdamW, step: u32) -> Uniforms {
    Uniforms::new().n(n).f(hp.lr).f(hp.beta1).f(hp.beta2).f(hp.eps).f(hp.weight_decay).u(step)
}

/// The dimensions and scalars of an `adamw` or `adamw_check` dispatch, for `Program::set_dims`
/// (the positions of the norm and the flag in the window figures stay as recorded).
pub fn adamw_uniforms(n: usize, hp: &AdamW, step: u32) -> Uniforms {
    adamw_dims(n, hp, step)
}

/// The dimensions and scalars of a `crossentropy_backward` dispatch (to rewrite `dloss`).
pub fn crossentropy_backward_uniforms(dloss: f32, n: usize, v: usize) -> Uniforms {
    Uniforms::new().n(n).n(v).f(dloss)
}

/// The dimensions and scalars of a `crossentropy_chunk_backward` dispatch of the chunk
/// [v0, v0 + vc) (to rewrite `dloss`; every field is rebuilt, so pass the chunk's own v0 and vc).
pub fn crossentropy_chunk_backward_uniforms(dloss: f32, n: usize, v0: usize, vc: usize) -> Uniforms {
    Uniforms::new().n(n).n(vc).f(dloss).n(v0)
}

/// The dimensions and scalars of a `clip_by_norm` dispatch (to change the threshold).
pub fn clip_uniforms(max_norm: f32, n: usize) -> Uniforms {
    Uniforms::new().n(n).n(0).f(max_norm)
}

/// The dimensions and scalars of a `scale` dispatch (to change the scalar).
pub fn scale_uniforms(s: f32, n: usize) -> Uniforms {
    Uniforms::new().n(n).n(0).f(s)
}
