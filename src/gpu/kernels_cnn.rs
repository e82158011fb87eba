//! Typed launchers of the CNN kernels, with the names and argument order of their CPU twins in
//! `crate::reference::cnn`. Backward launchers accumulate (`+=`) like the reference.

use super::kernel_set::KernelSet;
use super::kernels_rows::RowReduce;
use super::program::{Grid, ProgramBuilder, ProgramError, Uniforms, View};

type R = Result<(), ProgramError>;

/// Invocations per (image, group) of the GPU family's GroupNorm kernels (groupnorm.wgsl's WG).
const SET_WG: usize = 64;

impl ProgramBuilder {
    /// out [B,OC,HO,WO] = conv(inp [B,IC,H,W], weight [OC,IC,K,K]) + bias [OC]; stride 1.
    /// The device's kernel set chooses the kernel (`KernelSet::conv_blocked`).
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_forward(
        &mut self, out: &View, inp: &View, weight: &View, bias: &View, b: usize, ic: usize, oc: usize, h: usize, w: usize,
        k: usize, pad: usize,
    ) -> R {
        let blocked = self.kernels().conv_blocked();
        self.conv2d_forward_with(blocked, out, inp, weight, bias, b, ic, oc, h, w, k, pad)
    }

    /// `blocked`: conv2d_forward_x4, else the one-output-per-invocation conv2d_forward.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_forward_with(
        &mut self, blocked: bool, out: &View, inp: &View, weight: &View, bias: &View, b: usize, ic: usize, oc: usize,
        h: usize, w: usize, k: usize, pad: usize,
    ) -> R {
        let dims = Uniforms::new().n(b).n(ic).n(oc).n(h).n(w).n(k).n(pad);
        let (ho, wo) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
        let args = [(out, b * oc * ho * wo), (inp, b * ic * h * w), (weight, oc * ic * k * k), (bias, oc)];
        if blocked {
            let n = b * oc.div_ceil(4) * ho * wo.div_ceil(4);
            self.call("conv2d", "conv2d_forward_x4", 1, &args, dims, Grid::Threads(n))?;
        } else {
            self.call("conv2d", "conv2d_forward", 1, &args, dims, Grid::Threads(b * oc * ho * wo))?;
        }
        Ok(())
    }

    /// The device's kernel set chooses the input gradient's kernel (`KernelSet::conv_blocked`).
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_backward(
        &mut self, dinp: &View, dweight: &View, dbias: &View, dout: &View, inp: &View, weight: &View, b: usize, ic: usize,
        oc: usize, h: usize, w: usize, k: usize, pad: usize,
    ) -> R {
        let blocked = self.kernels().conv_blocked();
        self.conv2d_backward_with(blocked, dinp, dweight, dbias, dout, inp, weight, b, ic, oc, h, w, k, pad)
    }

    /// `blocked`: conv2d_backward_input_x4, else one input element per invocation.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_backward_with(
        &mut self, blocked: bool, dinp: &View, dweight: &View, dbias: &View, dout: &View, inp: &View, weight: &View,
        b: usize, ic: usize, oc: usize, h: usize, w: usize, k: usize, pad: usize,
    ) -> R {
        let dims = Uniforms::new().n(b).n(ic).n(oc).n(h).n(w).n(k).n(pad);
        let (ho, wo) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
        let (x, wt) = (b * ic * h * w, oc * ic * k * k);
        let args = [(dinp, x), (dweight, wt), (dbias, oc), (dout, b * oc * ho * wo), (inp, x), (weight, wt)];
        if blocked {
            let n = b * ic.div_ceil(4) * h * w.div_ceil(4);
            self.call("conv2d", "conv2d_backward_input_x4", 9, &args, dims.clone(), Grid::Threads(n))?;
        } else {
            self.call("conv2d", "conv2d_backward_input", 9, &args, dims.clone(), Grid::Threads(b * ic * h * w))?;
        }
        self.call("conv2d", "conv2d_backward_weight", 9, &args, dims.clone(), Grid::Threads(oc * ic * k * k))?;
        self.call("conv2d", "conv2d_backward_bias", 9, &args, dims, Grid::Threads(oc))?;
        Ok(())
    }

    /// GroupNorm over G groups per image: out, inp [B,C,HW]; mean, rstd [B*G]. The CPU family
    /// runs one invocation per (image, group), the GPU family one workgroup
    /// (`groupnorm_forward_sets`).
    #[allow(clippy::too_many_arguments)]
    pub fn groupnorm_forward(
        &mut self, out: &View, mean: &View, rstd: &View, inp: &View, weight: &View, bias: &View, b: usize, c: usize,
        hw: usize, g: usize,
    ) -> R {
        if self.kernels() == KernelSet::Gpu {
            let r = self.row_reduce();
            return self.groupnorm_forward_sets(r, out, mean, rstd, inp, weight, bias, b, c, hw, g);
        }
        let dims = Uniforms::new().n(b).n(c).n(hw).n(g);
        let x = b * c * hw;
        let args = [(out, x), (mean, b * g), (rstd, b * g), (inp, x), (weight, c), (bias, c)];
        self.call("groupnorm", "groupnorm_forward", 1, &args, dims, Grid::Threads(b * g))?;
        Ok(())
    }

    fn groupnorm_file(reduce: RowReduce) -> &'static str {
        match reduce {
            RowReduce::Workgroup => "groupnorm",
            RowReduce::Subgroup => "groupnorm_subgroup",
        }
    }

    /// GroupNorm forward with one workgroup of 64 per (image, group), reducing with `reduce`.
    #[allow(clippy::too_many_arguments)]
    pub fn groupnorm_forward_sets(
        &mut self, reduce: RowReduce, out: &View, mean: &View, rstd: &View, inp: &View, weight: &View, bias: &View, b: usize,
        c: usize, hw: usize, g: usize,
    ) -> R {
        let dims = Uniforms::new().n(b).n(c).n(hw).n(g);
        let x = b * c * hw;
        let args = [(out, x), (mean, b * g), (rstd, b * g), (inp, x), (weight, c), (bias, c)];
        self.check_loops("groupnorm_forward_sets", 3 * (c / g.max(1) * hw).div_ceil(SET_WG) + 2)?;
        let grid = self.one_group_per_row(b * g);
        self.call(Self::groupnorm_file(reduce), "groupnorm_forward_sets", 1, &args, dims, grid)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn groupnorm_backward(
        &mut self, dinp: &View, dweight: &View, dbias: &View, dout: &View, inp: &View, weight: &View, mean: &View,
        rstd: &View, b: usize, c: usize, hw: usize, g: usize,
    ) -> R {
        let x = b * c * hw;
        let args = [(dinp, x), (dweight, c), (dbias, c), (dout, x), (inp, x), (weight, c), (mean, b * g), (rstd, b * g)];
        let dims = Uniforms::new().n(b).n(c).n(hw).n(g);
        if self.kernels() == KernelSet::Gpu {
            let r = self.row_reduce();
            self.groupnorm_backward_input_sets(r, dinp, dout, inp, weight, mean, rstd, b, c, hw, g)?;
        } else {
            self.call("groupnorm", "groupnorm_backward_input", 9, &args, dims.clone(), Grid::Threads(b * g))?;
        }
        self.call("groupnorm", "groupnorm_backward_params", 9, &args, dims, Grid::Groups([c as u32, 1, 1]))?;
        Ok(())
    }

    /// GroupNorm's input gradient with one workgroup of 64 per (image, group), reducing with
    /// `reduce` (the parameter gradients are `groupnorm_backward`'s workgroup per channel).
    #[allow(clippy::too_many_arguments)]
    pub fn groupnorm_backward_input_sets(
        &mut self, reduce: RowReduce, dinp: &View, dout: &View, inp: &View, weight: &View, mean: &View, rstd: &View, b: usize,
        c: usize, hw: usize, g: usize,
    ) -> R {
        let x = b * c * hw;
        // (the parameter gradients' bindings get stand-ins: this entry point does not use them)
        let args = [(dinp, x), (dinp, 0), (dinp, 0), (dout, x), (inp, x), (weight, c), (mean, b * g), (rstd, b * g)];
        let dims = Uniforms::new().n(b).n(c).n(hw).n(g);
        self.check_loops("groupnorm_backward_input_sets", 2 * (c / g.max(1) * hw).div_ceil(SET_WG) + 2)?;
        let grid = self.one_group_per_row(b * g);
        self.call(Self::groupnorm_file(reduce), "groupnorm_backward_input_sets", 9, &args, dims, grid)?;
        Ok(())
    }

    /// BatchNorm, training mode: batch statistics, running statistics updated with `momentum`.
    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm_forward_train(
        &mut self, out: &View, mean: &View, rstd: &View, running_mean: &View, running_var: &View, inp: &View,
        weight: &View, bias: &View, b: usize, c: usize, hw: usize, momentum: f32,
    ) -> R {
        let x = b * c * hw;
        let args = [(out, x), (mean, c), (rstd, c), (running_mean, c), (running_var, c), (inp, x), (weight, c), (bias, c)];
        let dims = Uniforms::new().n(b).n(c).n(hw).f(momentum);
        self.call("batchnorm", "batchnorm_forward_train", 1, &args, dims, Grid::Groups([c as u32, 1, 1]))?;
        Ok(())
    }

    /// BatchNorm, evaluation mode (running statistics).
    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm_forward_eval(
        &mut self, out: &View, inp: &View, weight: &View, bias: &View, running_mean: &View, running_var: &View, b: usize,
        c: usize, hw: usize,
    ) -> R {
        let x = b * c * hw;
        let args = [(out, x), (inp, x), (weight, c), (bias, c), (running_mean, c), (running_var, c)];
        let dims = Uniforms::new().n(b).n(c).n(hw).f(0.0);
        self.call("batchnorm", "batchnorm_forward_eval", 17, &args, dims, Grid::Threads(b * c * hw))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm_backward(
        &mut self, dinp: &View, dweight: &View, dbias: &View, dout: &View, inp: &View, weight: &View, mean: &View,
        rstd: &View, b: usize, c: usize, hw: usize,
    ) -> R {
        let x = b * c * hw;
        let args = [(dinp, x), (dweight, c), (dbias, c), (dout, x), (inp, x), (weight, c), (mean, c), (rstd, c)];
        let dims = Uniforms::new().n(b).n(c).n(hw).f(0.0);
        self.call("batchnorm", "batchnorm_backward", 9, &args, dims, Grid::Groups([c as u32, 1, 1]))?;
        Ok(())
    }

    pub fn relu_forward(&mut self, out: &View, inp: &View, n: usize) -> R {
        self.call("relu", "relu_forward", 1, &[(out, n), (inp, n)], Uniforms::new().n(n), Grid::Threads(n))?;
        Ok(())
    }

    pub fn relu_backward(&mut self, dinp: &View, inp: &View, dout: &View, n: usize) -> R {
        self.call("relu", "relu_backward", 9, &[(dinp, n), (inp, n), (dout, n)], Uniforms::new().n(n), Grid::Threads(n))?;
        Ok(())
    }

    /// out, idx [B,C,H/2,W/2] from inp [B,C,H,W]; idx (u32) indexes inp.
    #[allow(clippy::too_many_arguments)]
    pub fn maxpool2_forward(&mut self, out: &View, idx: &View, inp: &View, b: usize, c: usize, h: usize, w: usize) -> R {
        let dims = Uniforms::new().n(b).n(c).n(h).n(w).n(0);
        let o = b * c * (h / 2) * (w / 2);
        self.call("maxpool", "maxpool2_forward", 1, &[(out, o), (idx, o), (inp, b * c * h * w)], dims, Grid::Threads(o))?;
        Ok(())
    }

    /// dinp [n_in] (the pooled input) += dout [n_out] at the argmax `idx` [n_out].
    pub fn maxpool2_backward(&mut self, dinp: &View, idx: &View, dout: &View, n_out: usize, n_in: usize) -> R {
        let dims = Uniforms::new().n(0).n(0).n(0).n(0).n(n_out);
        self.call("maxpool", "maxpool2_backward", 9, &[(dinp, n_in), (idx, n_out), (dout, n_out)], dims, Grid::Threads(n_out))?;
        Ok(())
    }
}
