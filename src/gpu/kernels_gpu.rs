//! Launchers of the GPU kernel family's matmuls (matmul_gpu.wgsl): 64x64 workgroup tiles, 4x4
//! outputs per invocation, vec4 loads where an operand allows them, scalar loads where it does
//! not, so any shape runs. `matmul_forward` and friends in `kernels.rs` route here when the
//! device's kernel set is `KernelSet::Gpu` (`MatmulVariant::GpuTiled`).

use super::program::{Grid, ProgramBuilder, ProgramError, Uniforms, View};

type R = Result<(), ProgramError>;

/// Outputs per workgroup along each side of matmul_gpu.wgsl's block tile (its `BT`).
pub const GPU_TILE: usize = 64;
/// The slice of the reduced dimension staged per step (its `BR`).
pub const GPU_SLICE: usize = 16;

// matmul_gpu.wgsl's flag bits
const BIAS: u32 = 1;
const GELU_OUT: u32 = 2;
const GELU_BACKWARD: u32 = 8;
const A_SCALAR: u32 = 16;
const B_SCALAR: u32 = 32;

/// Whether an operand with contiguous dimension `contiguous` can be read as vec4.
fn vec4_ok(v: &View, contiguous: usize) -> bool {
    contiguous.is_multiple_of(4) && v.offset.is_multiple_of(4)
}

/// The (vec4, scalar) argument pair of an operand of `len` elements: one bound, the other the
/// unused-binding stand-in.
fn operand(v: &View, len: usize, vec4: bool) -> [(&View, usize); 2] {
    if vec4 { [(v, len), (v, 0)] } else { [(v, 0), (v, len)] }
}

fn blocks(rows: usize, cols: usize) -> Grid {
    Grid::Groups([cols.div_ceil(GPU_TILE) as u32, rows.div_ceil(GPU_TILE) as u32, 1])
}

/// Loop iterations of one invocation for a reduced dimension of `r` (the slice loop, and the
/// epilogue's and scalar loads' short loops counted in case they are not unrolled).
fn loops(r: usize) -> usize {
    r.div_ceil(GPU_SLICE) + 32
}

impl ProgramBuilder {
    /// out [M,N] = inp [M,K] . weight [N,K]^T (+ bias [N]); with `gelu_out`, also
    /// gelu_out = GELU(out) in the same pass.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward_gpu(
        &mut self, out: &View, inp: &View, weight: &View, bias: Option<&View>, gelu_out: Option<&View>, m: usize, k: usize,
        n: usize,
    ) -> R {
        let (a4, b4) = (vec4_ok(inp, k), vec4_ok(weight, k));
        let [a_v, a_s] = operand(inp, m * k, a4);
        let [b_v, b_s] = operand(weight, n * k, b4);
        let mut flags = if a4 { 0 } else { A_SCALAR } | if b4 { 0 } else { B_SCALAR };
        if bias.is_some() {
            flags |= BIAS;
        }
        if gelu_out.is_some() {
            flags |= GELU_OUT;
        }
        // unused bindings get the unused-binding stand-in (the kernel does not touch them)
        let args = [(out, m * n), a_v, b_v, bias.map_or((out, 0), |b| (b, n)), gelu_out.map_or((out, 0), |g| (g, m * n)), a_s, b_s];
        let dims = Uniforms::new().n(m).n(k).n(n).u(flags);
        self.check_loops("matmul_forward_gpu", loops(k))?;
        self.call("matmul_gpu", "matmul_forward_gpu", 1, &args, dims, blocks(m, n))?;
        Ok(())
    }

    /// dinp [M,K] += dout [M,N] . weight [N,K]; with `pre` (the GELU input, [M,K]),
    /// dinp += GELU'(pre) * (dout . weight) instead: the GELU backward of a gradient that
    /// starts at zero, fused.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward_input_gpu(
        &mut self, dinp: &View, pre: Option<&View>, dout: &View, weight: &View, m: usize, k: usize, n: usize,
    ) -> R {
        let (a4, b4) = (vec4_ok(dout, n), vec4_ok(weight, k));
        let [a_v, a_s] = operand(dout, m * n, a4);
        let [b_v, b_s] = operand(weight, n * k, b4);
        let mut flags = if a4 { 0 } else { A_SCALAR } | if b4 { 0 } else { B_SCALAR };
        if pre.is_some() {
            flags |= GELU_BACKWARD;
        }
        let args = [(dinp, m * k), a_v, a_s, b_v, b_s, pre.map_or((dinp, 0), |p| (p, m * k))];
        let dims = Uniforms::new().n(m).n(k).n(n).u(flags);
        self.check_loops("matmul_backward_input_gpu", loops(n))?;
        self.call("matmul_gpu", "matmul_backward_input_gpu", 9, &args, dims, blocks(m, k))?;
        Ok(())
    }

    /// dweight [N,K] += dout [M,N]^T . inp [M,K]
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward_weight_gpu(&mut self, dweight: &View, dout: &View, inp: &View, m: usize, k: usize, n: usize) -> R {
        let (a4, b4) = (vec4_ok(dout, n), vec4_ok(inp, k));
        let [a_v, a_s] = operand(dout, m * n, a4);
        let [b_v, b_s] = operand(inp, m * k, b4);
        let flags = if a4 { 0 } else { A_SCALAR } | if b4 { 0 } else { B_SCALAR };
        let args = [(dweight, n * k), a_v, a_s, b_v, b_s];
        let dims = Uniforms::new().n(m).n(k).n(n).u(flags);
        self.check_loops("matmul_backward_weight_gpu", loops(m))?;
        self.call("matmul_gpu", "matmul_backward_weight_gpu", 17, &args, dims, blocks(n, k))?;
        Ok(())
    }
}
