//! Dropout's counter-based random numbers: the CPU twin, bit for bit, of `shaders/prelude.wgsl`.
//!
//! Whether an element is dropped is a pure function of (seed, step, site, sample, element):
//! - `seed`: the run's seed; `step`: the optimizer step the window makes (1, 2, ...);
//! - `site`: where in the model (`site::EMBEDDING`, `site::attention(l)`, ...);
//! - `sample`: the sequence's position in the window (micro-batch index x B + row), so a
//!   window cut into B x K micro-batches draws the masks of the same window as one B*K batch;
//! - `element`: the element's index inside that sample's tensor at the site.
//!
//! The forward, the backward and a recomputed block (activation checkpointing) regenerate the
//! same mask; nothing is stored. An element is dropped when its 32 bits are below
//! `threshold(p)` = round(p 2^32) and kept, scaled by 1 / (1 - p), otherwise.

use num_traits::Float;

/// PCG's RXS-M-XS output function on one LCG step (Jarzynski and Olano 2020).
pub fn pcg_hash(v: u32) -> u32 {
    let state = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// The stream of one (seed, step, site, sample).
pub fn stream(seed: u32, step: u32, site: u32, sample: u32) -> u32 {
    pcg_hash(sample.wrapping_add(pcg_hash(site.wrapping_add(pcg_hash(step.wrapping_add(pcg_hash(seed)))))))
}

/// The bits of element `elem` of a stream.
pub fn bits(stream: u32, elem: u32) -> u32 {
    pcg_hash(elem.wrapping_add(stream))
}

/// round(p 2^32), saturating: elements whose bits are below it are dropped (0 keeps all).
pub fn threshold(p: f64) -> u32 {
    (p * 4_294_967_296.0).round().clamp(0.0, u32::MAX as f64) as u32
}

/// The factor of kept elements, 1 / (1 - p), in f32 as the kernels use it.
pub fn scale(p: f64) -> f32 {
    (1.0 / (1.0 - p)) as f32
}

/// The sites of the GPT (nanoGPT's places): the embedding, and per layer the attention
/// probabilities and the two residual branches (the attention's and the MLP's projection).
pub mod site {
    pub const EMBEDDING: u32 = 0;
    pub fn attention(layer: usize) -> u32 {
        1 + 3 * layer as u32
    }
    pub fn attention_projection(layer: usize) -> u32 {
        2 + 3 * layer as u32
    }
    pub fn mlp_projection(layer: usize) -> u32 {
        3 + 3 * layer as u32
    }
}

/// Dropout of one forward pass: probability `p`, and the key of the window's masks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub p: f64,
    pub seed: u32,
    pub step: u32,
    /// The window position of the batch's first sequence.
    pub sample0: u32,
}

impl Dropout {
    /// The factors (0 or 1/(1-p)) of `samples` sequences of `per_sample` elements each at `site`,
    /// the first sequence being at window position `sample0`.
    pub fn mask<T: Float>(&self, site: u32, samples: usize, per_sample: usize) -> Vec<T> {
        let thr = threshold(self.p);
        if thr == 0 {
            return vec![T::one(); samples * per_sample];
        }
        let keep = T::from(scale(self.p)).expect("a float");
        let mut out = Vec::with_capacity(samples * per_sample);
        for s in 0..samples {
            let st = stream(self.seed, self.step, site, self.sample0 + s as u32);
            out.extend((0..per_sample).map(|e| if bits(st, e as u32) < thr { T::zero() } else { keep }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_pcg_rxs_m_xs() {
        // state = 0 * 747796405 + 2891336453; word = ((state >> ((state >> 28) + 4)) ^ state) * 277803737
        let state: u32 = 2_891_336_453;
        let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
        assert_eq!(pcg_hash(0), (word >> 22) ^ word);
        assert_ne!(pcg_hash(1), pcg_hash(0));
    }

    #[test]
    fn masks_drop_the_asked_fraction_and_scale_the_rest() {
        let d = Dropout { p: 0.2, seed: 1337, step: 3, sample0: 5 };
        let m: Vec<f64> = d.mask(site::attention(1), 8, 4096);
        let dropped = m.iter().filter(|&&x| x == 0.0).count() as f64 / m.len() as f64;
        assert!((dropped - 0.2).abs() < 0.01, "dropped {dropped}");
        assert!(m.iter().all(|&x| x == 0.0 || x == scale(0.2) as f64));
        // the mean factor is 1 (inverted dropout)
        let mean = m.iter().sum::<f64>() / m.len() as f64;
        assert!((mean - 1.0).abs() < 0.015, "mean {mean}");
        // the window position, not the batch, keys a sequence's mask
        let later = Dropout { sample0: 6, ..d };
        let m2: Vec<f64> = later.mask(site::attention(1), 7, 4096);
        assert_eq!(&m[4096..], &m2[..]);
        // other steps, sites and seeds draw other masks
        for other in [Dropout { step: 4, ..d }, Dropout { seed: 1338, ..d }] {
            assert_ne!(other.mask::<f64>(site::attention(1), 8, 4096), m);
        }
        assert_ne!(d.mask::<f64>(site::mlp_projection(1), 8, 4096), m);
        // p = 0 keeps everything unscaled
        assert!(Dropout { p: 0.0, ..d }.mask::<f64>(0, 2, 100).iter().all(|&x| x == 1.0));
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(0.5), 1 << 31);
    }
}
