//! Launchers of the GPU kernel family's matmuls (matmul_gpu.wgsl): 64x64 or 128x64 workgroup
//! tiles (4x4 or 8x4 outputs per invocation), vec4 loads where an operand allows them, scalar
//! loads where it does not, so any shape runs. `matmul_forward` and friends in `kernels.rs` route
//! here when the device's kernel set is `KernelSet::Gpu` (`MatmulVariant::GpuTiled`); the tile of
//! each product comes from the device's `TilePolicy` (`Gpu::matmul_tiles`).

use std::fmt;

use super::program::{Grid, ProgramBuilder, ProgramError, Uniforms, View};

type R = Result<(), ProgramError>;

/// Outputs per workgroup along the columns of matmul_gpu.wgsl's block tile (its `BN`).
pub const GPU_TILE: usize = 64;
/// The slice of the reduced dimension staged per step (its `BR`).
pub const GPU_SLICE: usize = 16;

/// The environment variable that overrides a device's tile policy (`64x64`, `128x64` or `auto`).
pub const MATMUL_TILE_ENV: &str = "GRADSCOPE_MATMUL_TILE";

/// A block tile of the GPU family's matmuls: output rows x columns per workgroup of 256.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulTile {
    /// 64 x 64 outputs, 4 x 4 per invocation, 8 KiB of workgroup memory (`matmul_gpu`).
    T64x64,
    /// 128 x 64 outputs, 8 x 4 per invocation, 12 KiB (`matmul_gpu_128x64`): 5/4 the
    /// multiply-adds per staged element, 3/4 the workgroup-memory reads per multiply-add, twice
    /// the accumulators per invocation, half the workgroups.
    T128x64,
}

impl MatmulTile {
    /// Output rows per workgroup (the shader's `BM`).
    pub fn rows(self) -> usize {
        match self {
            MatmulTile::T64x64 => 64,
            MatmulTile::T128x64 => 128,
        }
    }

    /// The shader file (matmul_gpu.wgsl instantiated with the tile's rows per invocation).
    pub fn file(self) -> &'static str {
        match self {
            MatmulTile::T64x64 => "matmul_gpu",
            MatmulTile::T128x64 => "matmul_gpu_128x64",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MatmulTile::T64x64 => "64x64",
            MatmulTile::T128x64 => "128x64",
        }
    }

    /// Workgroups of this tile for an output of `rows` x `cols`.
    pub fn blocks(self, rows: usize, cols: usize) -> usize {
        rows.div_ceil(self.rows()) * cols.div_ceil(GPU_TILE)
    }
}

impl fmt::Display for MatmulTile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a device picks the tile of each product, chosen once per device (`Gpu::matmul_tiles`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TilePolicy {
    /// Every product with this tile.
    Fixed(MatmulTile),
    /// 128x64 for products whose 128x64 grid still has `LARGE_GRID` workgroups, 64x64 for
    /// smaller ones (where the larger tile would leave a large GPU's cores idle).
    BySize,
}

/// The workgroups a product's 128x64 grid needs for `TilePolicy::BySize` to choose it: about 4
/// per compute unit of a 132-SM datacenter GPU, so the larger tile never costs occupancy there.
pub const LARGE_GRID: usize = 512;

impl TilePolicy {
    /// The policy for a device: `BySize` on discrete GPUs (many compute units, registers for
    /// 8x4 blocks), 64x64 everywhere else (integrated and virtual GPUs, CPU adapters).
    pub fn for_device(discrete: bool) -> Self {
        if discrete { TilePolicy::BySize } else { TilePolicy::Fixed(MatmulTile::T64x64) }
    }

    /// The device's policy unless `value` (the override's text) names one: `64x64`, `128x64`,
    /// or empty / `auto` for the device's own.
    pub fn choose(discrete: bool, value: Option<&str>) -> Result<Self, String> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("auto") => Ok(Self::for_device(discrete)),
            Some("64x64") => Ok(TilePolicy::Fixed(MatmulTile::T64x64)),
            Some("128x64") => Ok(TilePolicy::Fixed(MatmulTile::T128x64)),
            Some(other) => Err(format!("{MATMUL_TILE_ENV}={other:?}: expected `64x64`, `128x64` or `auto`")),
        }
    }

    /// `choose` with the value of `GRADSCOPE_MATMUL_TILE`.
    pub fn from_env(discrete: bool) -> Result<Self, String> {
        Self::choose(discrete, std::env::var(MATMUL_TILE_ENV).ok().as_deref())
    }

    /// The tile of a product whose output is `rows` x `cols`.
    pub fn pick(self, rows: usize, cols: usize) -> MatmulTile {
        match self {
            TilePolicy::Fixed(t) => t,
            TilePolicy::BySize if MatmulTile::T128x64.blocks(rows, cols) >= LARGE_GRID => MatmulTile::T128x64,
            TilePolicy::BySize => MatmulTile::T64x64,
        }
    }
}

impl fmt::Display for TilePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TilePolicy::Fixed(t) => write!(f, "{t}"),
            TilePolicy::BySize => write!(f, "128x64 from {LARGE_GRID} workgroups, else 64x64"),
        }
    }
}

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

fn blocks(tile: MatmulTile, rows: usize, cols: usize) -> Grid {
    Grid::Groups([cols.div_ceil(GPU_TILE) as u32, rows.div_ceil(tile.rows()) as u32, 1])
}

/// Loop iterations of one invocation for a reduced dimension of `r` (the slice loop, and the
/// epilogue's and scalar loads' short loops counted in case they are not unrolled).
fn loops(r: usize) -> usize {
    r.div_ceil(GPU_SLICE) + 48
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
        let tile = self.gpu().matmul_tiles().pick(m, n);
        self.call(tile.file(), "matmul_forward_gpu", 1, &args, dims, blocks(tile, m, n))?;
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
        let tile = self.gpu().matmul_tiles().pick(m, k);
        self.call(tile.file(), "matmul_backward_input_gpu", 9, &args, dims, blocks(tile, m, k))?;
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
        let tile = self.gpu().matmul_tiles().pick(n, k);
        self.call(tile.file(), "matmul_backward_weight_gpu", 17, &args, dims, blocks(tile, n, k))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_chooses_the_tiles_unless_overridden() {
        assert_eq!(TilePolicy::choose(true, None), Ok(TilePolicy::BySize));
        assert_eq!(TilePolicy::choose(false, Some("auto")), Ok(TilePolicy::Fixed(MatmulTile::T64x64)));
        assert_eq!(TilePolicy::choose(false, Some(" 128X64 ")), Ok(TilePolicy::Fixed(MatmulTile::T128x64)));
        assert_eq!(TilePolicy::choose(true, Some("64x64")), Ok(TilePolicy::Fixed(MatmulTile::T64x64)));
        let e = TilePolicy::choose(true, Some("256x128")).unwrap_err();
        assert!(e.contains(MATMUL_TILE_ENV) && e.contains("256x128"), "{e}");
    }

    #[test]
    fn by_size_takes_the_large_tile_only_where_its_grid_is_large() {
        let p = TilePolicy::BySize;
        // GPT-2 small at B 4 x T 1024 (M 4096): the QKV and MLP products have 1152 and 1536
        // workgroups of 128x64; the attention projection's 384 keep 64x64 (768 workgroups)
        assert_eq!(p.pick(4096, 3 * 768), MatmulTile::T128x64);
        assert_eq!(p.pick(4096, 4 * 768), MatmulTile::T128x64);
        assert_eq!(p.pick(4096, 768), MatmulTile::T64x64);
        // the boundary: 512 workgroups exactly
        assert_eq!(MatmulTile::T128x64.blocks(128 * 16, 64 * 32), LARGE_GRID);
        assert_eq!(p.pick(128 * 16, 64 * 32), MatmulTile::T128x64);
        assert_eq!(p.pick(128 * 16, 64 * 32 - 64), MatmulTile::T64x64);
        // the reference GPT (B 16 x T 64, C 128) is small everywhere
        assert_eq!(p.pick(1024, 128), MatmulTile::T64x64);
        assert_eq!(TilePolicy::Fixed(MatmulTile::T128x64).pick(1, 1), MatmulTile::T128x64);
        assert_eq!(MatmulTile::T128x64.blocks(129, 65), 4);
    }
}
