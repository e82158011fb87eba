//! Launchers of the GPU family's row kernels (shaders/rows.wgsl): LayerNorm with one workgroup
//! per row, and the column sums over all rows (LayerNorm parameter gradients, a matmul's bias
//! gradient): with a partials buffer (`ProgramBuilder::set_column_partials`, which the GPT
//! gives its programs) in two stages, one workgroup per 32 columns and 256 rows, then one per 32
//! columns over the chunks; without one, a single stage of one workgroup per 32 columns, 8 row
//! lanes each. The row reduction is a subgroup sum on devices with SUBGROUP (`rows_subgroup`)
//! and a workgroup tree otherwise (`rows`). Backward launchers accumulate (`+=`) like the
//! reference.

use super::program::{Grid, ProgramBuilder, ProgramError, Uniforms, View, grid_1d};

type R = Result<(), ProgramError>;

/// Invocations per row of the row kernels, columns per workgroup and row lanes per column of the
/// column sums (rows.wgsl's WG, COLS, LANES).
const WG: usize = 64;
const COLS: usize = 32;
const LANES: usize = 8;

/// Rows per workgroup of the two-stage column sums' first stage (rows.wgsl's CHUNK).
pub const COLUMN_CHUNK: usize = 256;

/// f32 elements of the partials buffer that two-stage column sums over `rows` rows need when
/// the widest has `columns` columns (a LayerNorm counts 2 C: its weight's and bias's sums).
pub fn column_partials_len(rows: usize, columns: usize) -> usize {
    rows.div_ceil(COLUMN_CHUNK).max(1) * columns
}

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
    pub(crate) fn one_group_per_row(&self, rows: usize) -> Grid {
        let rows = u32::try_from(rows).expect("dispatch too large");
        Grid::Groups(grid_1d(rows, self.gpu().limits().max_compute_workgroups_per_dimension))
    }

    fn column_blocks(c: usize) -> Grid {
        Grid::Groups([u32::try_from(c.div_ceil(COLS)).expect("dispatch too large"), 1, 1])
    }

    /// The partials of a two-stage column sum over `n` rows of `columns` columns, when the
    /// builder has a partials buffer; an error when it is too small.
    fn partials_for(&self, kernel: &str, n: usize, columns: usize) -> Result<Option<View>, ProgramError> {
        let Some((view, len)) = self.column_partials() else { return Ok(None) };
        let need = column_partials_len(n, columns);
        if need > *len {
            return Err(ProgramError::Shape {
                kernel: kernel.into(),
                message: format!("the column-sum partials hold {len} elements, {n} rows of {columns} columns need {need}"),
            });
        }
        Ok(Some(view.clone()))
    }

    /// The first stage's grid: column blocks x row chunks.
    fn chunk_blocks(n: usize, c: usize) -> Grid {
        let chunks = u32::try_from(n.div_ceil(COLUMN_CHUNK).max(1)).expect("dispatch too large");
        Grid::Groups([u32::try_from(c.div_ceil(COLS)).expect("dispatch too large"), chunks, 1])
    }

    /// The second stage: out0 [s] += the column sums of part [chunks, c] below column s, out1
    /// [c - s] += those from s on.
    fn column_sums_finish(&mut self, out0: &View, out1: Option<&View>, part: &View, chunks: usize, c: usize, s: usize) -> R {
        let args = [(out0, s), out1.map_or((out0, 0), |o| (o, c - s)), (part, chunks * c)];
        let dims = Uniforms::new().n(chunks).n(c).n(s);
        self.check_loops("column_sums_finish", chunks.div_ceil(LANES) + 2)?;
        self.call("rows", "column_sums_finish", 33, &args, dims, Self::column_blocks(c))?;
        Ok(())
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
    /// sums (two stages with the builder's partials, else one workgroup per 32 channels).
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
        if let Some(part) = self.partials_for("layernorm_backward_params_part", n, 2 * c)? {
            let chunks = n.div_ceil(COLUMN_CHUNK).max(1);
            let pargs = [(&part, chunks * 2 * c), (dout, n * c), (inp, n * c), (mean, n), (rstd, n)];
            self.check_loops("layernorm_backward_params_part", COLUMN_CHUNK / LANES + 2)?;
            // the column sums use no row reduction: either file serves
            self.call("rows", "layernorm_backward_params_part", 25, &pargs, dims, Self::chunk_blocks(n, c))?;
            return self.column_sums_finish(dweight, Some(dbias), &part, chunks, 2 * c, c);
        }
        self.call(file, "layernorm_backward_params_cols", 9, &args, dims, Self::column_blocks(c))?;
        Ok(())
    }

    /// dbias [C] += the column sums of dout [N,C] (a matmul's bias gradient, N = M rows): two
    /// stages with the builder's partials, else one.
    pub fn bias_backward_cols(&mut self, dbias: &View, dout: &View, n: usize, c: usize) -> R {
        let dims = Uniforms::new().n(n).n(c);
        if let Some(part) = self.partials_for("bias_backward_part", n, c)? {
            let chunks = n.div_ceil(COLUMN_CHUNK).max(1);
            self.check_loops("bias_backward_part", COLUMN_CHUNK / LANES + 2)?;
            self.call("rows", "bias_backward_part", 25, &[(&part, chunks * c), (dout, n * c)], dims, Self::chunk_blocks(n, c))?;
            return self.column_sums_finish(dbias, None, &part, chunks, c, c);
        }
        self.check_loops("bias_backward_cols", n.div_ceil(LANES) + 2)?;
        // the column sums use no row reduction: either file serves
        self.call("rows", "bias_backward_cols", 17, &[(dbias, c), (dout, n * c)], dims, Self::column_blocks(c))?;
        Ok(())
    }
}
