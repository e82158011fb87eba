//! Deterministic random numbers for initialization: splitmix64 feeding Box-Muller. Documented
//! exactly, so that the same initial parameters can be rebuilt elsewhere from a seed:
//! - splitmix64 (below) turns a 64-bit state into a stream of 64-bit words;
//! - a uniform in (0, 1] is ((word >> 11) + 1) / 2^53;
//! - Box-Muller takes two uniforms u1, u2 and gives r cos(th), then r sin(th), with
//!   r = sqrt(-2 ln u1), th = 2 pi u2.

/// splitmix64 (Steele, Lea, Flood 2014): the state advances by the golden-ratio constant and the
/// output is the state through two xor-shift-multiply rounds.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in (0, 1]: 53 random bits, never 0 (Box-Muller takes its log).
pub fn uniform(state: &mut u64) -> f64 {
    ((splitmix64(state) >> 11) as f64 + 1.0) / (1u64 << 53) as f64
}

/// Standard normal samples by Box-Muller, two per pair of uniforms (cos first, then sin).
pub struct Normal {
    state: u64,
    spare: Option<f64>,
}

impl Normal {
    pub fn new(seed: u64) -> Self {
        Self { state: seed, spare: None }
    }

    pub fn sample(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let u1 = uniform(&mut self.state);
        let u2 = uniform(&mut self.state);
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * th.sin());
        r * th.cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_values() {
        // the published outputs of splitmix64 from state 0
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(splitmix64(&mut s), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn uniform_and_box_muller() {
        let mut s = 42u64;
        assert!((0..10_000).map(|_| uniform(&mut s)).all(|u| u > 0.0 && u <= 1.0));
        // the pair structure: the second sample is r sin(th) of the first pair of uniforms
        let mut st = 7u64;
        let (u1, u2) = (uniform(&mut st), uniform(&mut st));
        let mut g = Normal::new(7);
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        assert_eq!(g.sample(), r * th.cos());
        assert_eq!(g.sample(), r * th.sin());
        // moments of 200k samples: mean 0, variance 1 (standard errors ~0.002 and ~0.003)
        let mut g = Normal::new(1337);
        let xs: Vec<f64> = (0..200_000).map(|_| g.sample()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.015 && (var - 1.0).abs() < 0.02, "mean {mean} var {var}");
    }
}
