//! Linear regression with a known gradient noise: the oracle of the gradient noise scale
//! (`model::grad_stats`).
//!
//! Inputs x ~ N(0, I_d), targets y = w* . x + e with e ~ N(0, sigma^2), per-example loss
//! (w . x - y)^2 / 2. At fixed weights w, with r = w - w*, one example's gradient is
//! g = (r . x - e) x. For Gaussian x, E[x x^T] = I and E[(r . x)^2 x x^T] = |r|^2 I + 2 r r^T, so
//!
//!   G = E g = r,                                    |G|^2 = |r|^2,
//!   Sigma = E[g g^T] - G G^T = (|r|^2 + sigma^2) I + r r^T,
//!   tr(Sigma) = d (|r|^2 + sigma^2) + |r|^2,
//!
//! and B_simple = tr(Sigma) / |G|^2 = d (1 + sigma^2 / |r|^2) + 1, exactly.

use super::rng::Normal;

/// A linear-regression problem at fixed weights: the offset r = w - w* and the label noise.
#[derive(Clone, Debug)]
pub struct LinReg {
    /// r = w - w* [d].
    pub r: Vec<f64>,
    /// Standard deviation of the label noise e.
    pub sigma: f64,
}

impl LinReg {
    pub fn d(&self) -> usize {
        self.r.len()
    }

    /// |G|^2 = |r|^2, exactly.
    pub fn true_grad_sq(&self) -> f64 {
        self.r.iter().map(|v| v * v).sum()
    }

    /// tr(Sigma) of one example's gradient, exactly.
    pub fn trace_sigma(&self) -> f64 {
        let r2 = self.true_grad_sq();
        self.d() as f64 * (r2 + self.sigma * self.sigma) + r2
    }

    /// B_simple = tr(Sigma) / |G|^2, exactly.
    pub fn b_simple(&self) -> f64 {
        self.trace_sigma() / self.true_grad_sq()
    }

    /// One example's gradient (r . x - e) x, drawn from `rng`.
    pub fn example_gradient(&self, rng: &mut Normal) -> Vec<f64> {
        let x: Vec<f64> = (0..self.d()).map(|_| rng.sample()).collect();
        let e = self.sigma * rng.sample();
        let res = self.r.iter().zip(&x).map(|(a, b)| a * b).sum::<f64>() - e;
        x.into_iter().map(|v| res * v).collect()
    }

    /// The summed gradient of `count` examples (a micro-batch's g_k, each loss weighing 1).
    pub fn summed_gradient(&self, rng: &mut Normal, count: usize) -> Vec<f64> {
        let mut g = vec![0.0; self.d()];
        for _ in 0..count {
            for (a, b) in g.iter_mut().zip(self.example_gradient(rng)) {
                *a += b;
            }
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed forms against a Monte-Carlo estimate of the example gradients' moments.
    #[test]
    fn closed_forms_match_sampled_moments() {
        let lr = LinReg { r: vec![0.5, -0.25, 1.0], sigma: 0.7 };
        let mut rng = Normal::new(7);
        let n = 200_000;
        let mut mean = [0.0f64; 3];
        let mut sq = 0.0f64;
        for _ in 0..n {
            let g = lr.example_gradient(&mut rng);
            for (m, v) in mean.iter_mut().zip(&g) {
                *m += v / n as f64;
            }
            sq += g.iter().map(|v| v * v).sum::<f64>() / n as f64;
        }
        let g2: f64 = mean.iter().map(|v| v * v).sum();
        let trace = sq - g2;
        println!("|G|^2 {g2:.4} (exact {:.4}), tr(Sigma) {trace:.4} (exact {:.4})", lr.true_grad_sq(), lr.trace_sigma());
        assert!((g2 - lr.true_grad_sq()).abs() < 0.02 * lr.true_grad_sq());
        assert!((trace - lr.trace_sigma()).abs() < 0.02 * lr.trace_sigma());
    }
}
