//! Launchers of the GPU family's attention (shaders/flash_attention.wgsl): FlashAttention-style
//! tiles in workgroup memory with an online softmax. The forward pass keeps each query row's
//! log-sum-exp (f32 [B,NH,T]) instead of the T x T matrices of `attention_forward`; the backward
//! pass recomputes the probabilities from q, k and it. Backward launchers accumulate (`+=`) into
//! dqkv like the reference.

use super::kernels::{DropoutArgs, MatmulVariant};
use super::program::{Grid, ProgramBuilder, ProgramError, Uniforms, View, grid_1d};

type R = Result<(), ProgramError>;

/// The largest head size the flash kernels take (their per-row registers and tiles hold 64).
pub const FLASH_MAX_HEAD: usize = 64;
/// Query rows per workgroup of the forward and query passes, keys per tile there, key rows per
/// workgroup of the key pass and query rows per tile there (flash_attention.wgsl's BR, BC, BK, BQ).
const BR: usize = 64;
const BC: usize = 32;
const BK: usize = 64;
const BQ: usize = 24;

/// Whether attention with C channels and NH heads runs as flash attention with these kernels:
/// the GPU family (`MatmulVariant::GpuTiled`) and a head size that is a multiple of 4 and at most
/// `FLASH_MAX_HEAD` (the GPT configurations use 16 to 64). Otherwise attention.wgsl, which
/// stores the T x T matrices, runs.
pub fn uses_flash_attention(kernels: MatmulVariant, c: usize, nh: usize) -> bool {
    kernels == MatmulVariant::GpuTiled && nh > 0 && c.is_multiple_of(nh) && (c / nh).is_multiple_of(4) && c / nh <= FLASH_MAX_HEAD
}

impl ProgramBuilder {
    /// One workgroup per `rows` rows of each of the B*NH heads, split over x and y past the
    /// device's per-dimension limit.
    fn head_blocks(&self, b: usize, t: usize, nh: usize, rows: usize) -> Grid {
        let groups = u32::try_from(b * nh * t.div_ceil(rows)).expect("dispatch too large");
        Grid::Groups(grid_1d(groups, self.gpu().limits().max_compute_workgroups_per_dimension))
    }

    fn flash_shape(&self, kernel: &str, c: usize, nh: usize) -> R {
        if !uses_flash_attention(MatmulVariant::GpuTiled, c, nh) {
            return Err(ProgramError::Shape {
                kernel: kernel.into(),
                message: format!(
                    "C {c} and NH {nh}: the head size must be a multiple of 4 and at most {FLASH_MAX_HEAD}"
                ),
            });
        }
        Ok(())
    }

    /// out [B,T,C] = causal attention over qkv [B,T,3C]; lse [B,NH,T] (f32, a view in units of
    /// 4 bytes) = each query row's log-sum-exp of its scaled scores. With `drop`, dropout on
    /// the probabilities (the log-sum-exp stays over the undropped ones).
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_forward(
        &mut self, out: &View, lse: &View, qkv: &View, drop: Option<&DropoutArgs>, b: usize, t: usize, c: usize, nh: usize,
    ) -> R {
        self.flash_shape("flash_attention_forward", c, nh)?;
        let dims = DropoutArgs::attention_dims(drop, Uniforms::new().n(b).n(t).n(c).n(nh));
        let key = DropoutArgs::key_arg(drop, qkv);
        // per key tile: the load (at most BC * 16 / BR vec4s), the scores and the value sums
        self.check_loops("flash_attention_forward", t.div_ceil(BC) * (2 * BC + BC * 16 / BR + 2) + 2)?;
        let args = [(out, b * t * c), (lse, b * nh * t), (qkv, b * t * 3 * c), (&key.0, key.1)];
        self.call("flash_attention", "flash_attention_forward", 1, &args, dims, self.head_blocks(b, t, nh, BR))?;
        Ok(())
    }

    /// dqkv [B,T,3C] += the gradient of `flash_attention_forward` given dout [B,T,C], its inputs
    /// qkv and outputs out and lse. `dsum` (f32 [B,NH,T], a view in units of 4 bytes) is
    /// scratch: each row's D = dout . out, written by the query pass for the key pass.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_backward(
        &mut self, dqkv: &View, dsum: &View, dout: &View, qkv: &View, out: &View, lse: &View, drop: Option<&DropoutArgs>,
        b: usize, t: usize, c: usize, nh: usize,
    ) -> R {
        self.flash_shape("flash_attention_backward", c, nh)?;
        let dims = DropoutArgs::attention_dims(drop, Uniforms::new().n(b).n(t).n(c).n(nh));
        let key = DropoutArgs::key_arg(drop, qkv);
        let rows = b * nh * t;
        let args = [
            (dqkv, b * t * 3 * c), (dsum, rows), (dout, b * t * c), (qkv, b * t * 3 * c), (out, b * t * c), (lse, rows), (&key.0, key.1),
        ];
        self.check_loops("flash_attention_backward_query", t.div_ceil(BC) * (BC + BC * 16 / BR + 1) + 2)?;
        self.check_loops("flash_attention_backward_key_value", t.div_ceil(BQ) * (BQ + BQ * 16 / BK + 1) + 2)?;
        self.call("flash_attention", "flash_attention_backward_query", 9, &args, dims.clone(), self.head_blocks(b, t, nh, BR))?;
        self.call("flash_attention", "flash_attention_backward_key_value", 9, &args, dims, self.head_blocks(b, t, nh, BK))?;
        Ok(())
    }
}
