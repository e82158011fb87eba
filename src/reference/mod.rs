//! The CPU reference: a plain-Rust twin of every kernel and of both models, the oracle of the
//! tests. It never imports wgpu.
//!
//! - `layers`: the GPT kernels (llm.c style), same names and argument order as the WGSL entry
//!   points: `<layer>_forward` with its `<layer>_backward` right under it, plus `accumulate`,
//!   `grad_norm`, `scale` and `adamw`.
//! - `gpt`: the whole GPT (config, parameter slab layout, init, forward, backward).
//! - `dropout`: dropout's counter-based random numbers (the twin of `shaders/prelude.wgsl`).
//! - `rng`: splitmix64 and Box-Muller, the documented generator of the initialization.
//! - `cnn`, `cnn_model`: the same for the CNN.
//! - `linreg`: linear regression with a known gradient noise (exact |G|^2 and tr(Sigma)), the
//!   oracle of the gradient noise scale.
//!
//! Conventions: every tensor is a flat row-major slice, its shape in a comment next to it
//! (B batch, T sequence length, C channels, NH heads, V vocabulary, L layers, maxT block size).
//! Every function is generic over `num_traits::Float`, so finite-difference checks run in f64 and
//! GPU checks compare f32 kernels with f64 math on the same (f32) inputs. Backward functions
//! ACCUMULATE (`+=`) into every gradient output, like the kernels: callers zero gradients where a
//! new sum starts (micro-step 0 of a window, scratch buffers).

pub mod cnn;
pub mod cnn_model;
pub mod dropout;
pub mod gpt;
pub mod layers;
pub mod linreg;
pub mod rng;

pub use gpt::{GptConfig, gpt_forward, gpt_forward_backward, gpt_forward_backward_dropout, gpt_forward_dropout, gpt_logits, init_params};
pub use layers::*;
pub use rng::splitmix64;

/// Shared by the finite-difference tests of `layers` and `gpt`: a seeded generator (the seed is
/// fresh per run and printed; `GRADSCOPE_SEED=<n>` replays a run) and the error measure.
#[cfg(test)]
pub(crate) mod testutil {
    use super::rng::splitmix64;

    /// Relative tolerance of a gradient check, normalised by max(|a|, |b|, 1e-8) ...
    pub const REL_TOL: f64 = 1e-6;
    /// ... unless the absolute difference is below this floor (a gradient element that is zero or
    /// nearly so, where finite differences can only resolve ~1e-11 absolute).
    pub const ABS_FLOOR: f64 = 1e-9;

    pub struct Rng(u64);

    impl Rng {
        pub fn fresh(name: &str) -> Self {
            let seed = std::env::var("GRADSCOPE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
            });
            println!("{name}: seed {seed} (replay with GRADSCOPE_SEED={seed})");
            Rng(seed)
        }
        pub fn next_u64(&mut self) -> u64 {
            splitmix64(&mut self.0)
        }
        /// Uniform in [-1, 1).
        pub fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }
        /// n values uniform in [-scale, scale).
        pub fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
            (0..n).map(|_| self.uniform() * scale).collect()
        }
        pub fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }
        pub fn tokens(&mut self, n: usize, v: usize) -> Vec<u32> {
            (0..n).map(|_| self.below(v) as u32).collect()
        }
    }

    /// Central difference of f at 0 with Richardson extrapolation: d(h) = (f(h) - f(-h)) / 2h has
    /// error c h^2 + O(h^4); (4 d(h/2) - d(h)) / 3 cancels the h^2 term, so h can be large enough
    /// (1e-4) that rounding in f stays ~1e-11 while truncation is ~h^4.
    pub fn central_difference(mut f: impl FnMut(f64) -> f64) -> f64 {
        let h = 1e-4;
        let d = |f: &mut dyn FnMut(f64) -> f64, h: f64| (f(h) - f(-h)) / (2.0 * h);
        let (d1, d2) = (d(&mut f, h), d(&mut f, h / 2.0));
        (4.0 * d2 - d1) / 3.0
    }

    /// Elements at least this large (in |analytic| or |numeric|) enter the reported relative
    /// error; below it the relative error of a finite difference says little.
    pub const SIGNIFICANT: f64 = 1e-3;

    /// Agreement of analytic and numeric gradients over the elements seen so far.
    /// An element passes when |a - b| / max(|a|, |b|, 1e-8) < REL_TOL or |a - b| < ABS_FLOOR.
    #[derive(Default, Debug, Clone, Copy)]
    pub struct Worst {
        /// max |a - b| / max(|a|, |b|) over the elements with max(|a|, |b|) >= SIGNIFICANT
        pub rel: f64,
        /// max |a - b| over all elements
        pub abs: f64,
        /// elements compared
        pub count: usize,
        /// elements that fail both the relative tolerance and the absolute floor
        pub failing: usize,
    }

    impl Worst {
        pub fn add(&mut self, analytic: f64, numeric: f64) {
            let diff = (analytic - numeric).abs();
            assert!(diff.is_finite(), "non-finite gradient: analytic {analytic}, numeric {numeric}");
            let size = analytic.abs().max(numeric.abs());
            let rel = diff / size.max(1e-8);
            self.abs = self.abs.max(diff);
            if size >= SIGNIFICANT {
                self.rel = self.rel.max(rel);
            }
            if rel >= REL_TOL && diff >= ABS_FLOOR {
                self.failing += 1;
            }
            self.count += 1;
        }
        pub fn merge(&mut self, other: Worst) {
            self.rel = self.rel.max(other.rel);
            self.abs = self.abs.max(other.abs);
            self.count += other.count;
            self.failing += other.failing;
        }
        pub fn passes(&self) -> bool {
            self.failing == 0
        }
        /// Print and assert.
        pub fn check(&self, name: &str) {
            println!(
                "{name:<27} max rel err {:.2e} (|grad| >= {SIGNIFICANT:.0e})  max abs err {:.2e}  {} elements, {} failing",
                self.rel, self.abs, self.count, self.failing
            );
            assert!(self.passes(), "{name}: analytic gradient differs from finite differences: {self:?}");
        }
    }

    /// Check every element of the analytic gradients against central differences of `loss`
    /// (a scalar function of all inputs) in the matching input.
    /// inputs[i] and analytic[i] have the same length.
    pub fn fd_check(inputs: &[Vec<f64>], analytic: &[Vec<f64>], loss: impl Fn(&[Vec<f64>]) -> f64) -> Worst {
        let mut x = inputs.to_vec();
        let mut worst = Worst::default();
        for (i, grad) in analytic.iter().enumerate() {
            assert_eq!(grad.len(), x[i].len(), "gradient {i} has the wrong length");
            for j in 0..grad.len() {
                let orig = x[i][j];
                let num = central_difference(|h| {
                    x[i][j] = orig + h;
                    let l = loss(&x);
                    x[i][j] = orig;
                    l
                });
                worst.add(grad[j], num);
            }
        }
        worst
    }

    /// sum(a * b): the random linear functional whose gradient w.r.t. `a` is `b`.
    pub fn dot(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// after - before, elementwise: what a backward call added to a pre-filled gradient buffer.
    pub fn added(after: &[f64], before: &[f64]) -> Vec<f64> {
        after.iter().zip(before).map(|(a, b)| a - b).collect()
    }
}
