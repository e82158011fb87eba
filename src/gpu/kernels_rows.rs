//! Launchers of the GPU family's row kernels (shaders/rows.wgsl): LayerNorm with one workgroup
//! per row, and the column sums over all rows (LayerNorm parameter gradients, a matmul's bias
//! gradient) with one workgroup per block of 32 columns and 8 row lanes. The row reduction is a
//! subgroup sum on devices with SUBGROUP (`rows_subgroup`) and a workgroup tree otherwise
//! (`rows`). Backward launchers accumulate (`+=`) like the reference.

use super::program::{Grid, ProgramBuilder, ProgramError, Uniforms, View, grid_1d};

type R = Result<(), ProgramError>;

/// Invocations per row of the row kernels, columns per workgroup and row lanes per column of the
/// column sums (rows.wgsl's WG, COLS, LANES).
const WG: usize = 64;
const COLS: usize = 32;
const LANES: usize = 8;

/// The row reduction of the row kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowReduce {
    /// A tree in workgroup memory (any adapter).
    Workgroup,
    /// Subgroup sums, then one slot per subgroup (adapters with SUBGROUP).
    Subgroup,
}

impl ProgramBuilder {
    /// The row reduction this device runs: subgroups where it has them.
    pub fn row_reduce(&self) -> RowReduce {
        if self.gpu().has_subgroups() { RowReduce::Subgroup } else { RowReduce::Workgroup }
    }

    fn rows_file(reduce: RowReduce) -> &'static str {
        match reduce {
            RowReduce::Workgroup => "rows",
            RowReduce::Subgroup => "rows_subgroup",
        }
    }

    /// One workgroup per row, split over x and y past the device's per-dimension limit.
    fn one_group_per_row(&self, rows: usize) -> Grid {
        let rows = u32::try_from(rows).expect("dispatch too large");
        Grid::Groups(grid_1d(rows, self.gpu().limits().max_compute_workgroups_per_dimension))
    }

    fn column_blocks(c: usize) -> Grid {
        Grid::Groups([u32::try_from(c.div_ceil(COLS)).expect("dispatch too large"), 1, 1])
    }

    /// out [N,C], mean [N], rstd [N] from inp [N,C], weight [C], bias [C]: one workgroup per row.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_forward_rows(
        &mut self, reduce: RowReduce, out: &View, mean: &View, rstd: &View, inp: &View, weight: &View, bias: &View, n: usize,
        c: usize,
    ) -> R {
        let dims = Uniforms::new().n(n).n(c);
        self.check_loops("layernorm_forward_rows", 3 * c.div_ceil(WG) + 2)?;
        let args = [(out, n * c), (mean, n), (rstd, n), (inp, n * c), (weight, c), (bias, c)];
        let grid = self.one_group_per_row(n);
        self.call(Self::rows_file(reduce), "layernorm_forward_rows", 1, &args, dims, grid)?;
        Ok(())
    }

    /// The input gradient with one workgroup per row, the weight and bias gradients as column
    /// sums (one workgroup per 32 channels).
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_backward_rows(
        &mut self, reduce: RowReduce, dinp: &View, dweight: &View, dbias: &View, dout: &View, inp: &View, weight: &View,
        mean: &View, rstd: &View, n: usize, c: usize,
    ) -> R {
        let args = [(dinp, n * c), (dweight, c), (dbias, c), (dout, n * c), (inp, n * c), (weight, c), (mean, n), (rstd, n)];
        let dims = Uniforms::new().n(n).n(c);
        self.check_loops("layernorm_backward_input_rows", 2 * c.div_ceil(WG) + 2)?;
        self.check_loops("layernorm_backward_params_cols", n.div_ceil(LANES) + 2)?;
        let file = Self::rows_file(reduce);
        let grid = self.one_group_per_row(n);
        self.call(file, "layernorm_backward_input_rows", 9, &args, dims.clone(), grid)?;
        self.call(file, "layernorm_backward_params_cols", 9, &args, dims, Self::column_blocks(c))?;
        Ok(())
    }

    /// dbias [C] += the column sums of dout [N,C] (a matmul's bias gradient, N = M rows).
    pub fn bias_backward_cols(&mut self, dbias: &View, dout: &View, n: usize, c: usize) -> R {
        let dims = Uniforms::new().n(n).n(c);
        self.check_loops("bias_backward_cols", n.div_ceil(LANES) + 2)?;
        // the column sums use no row reduction: either file serves
        self.call("rows", "bias_backward_cols", 17, &[(dbias, c), (dout, n * c)], dims, Self::column_blocks(c))?;
        Ok(())
    }
}
