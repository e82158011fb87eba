//! Text generation from a trained GPT: the context (at most block_size characters) is run
//! through the forward pass, the next character drawn from softmax(logits / temperature) at the
//! last position. Greedy when temperature is 0.

use crate::data::text::{encode, splitmix64};
use crate::reference::layers::IGNORE_INDEX;

use super::trainer::Trainer;

pub fn sample(t: &mut Trainer, prompt: &str, tokens: usize, temperature: f64, seed: u64) -> anyhow::Result<String> {
    anyhow::ensure!(temperature >= 0.0 && temperature.is_finite(), "temperature must be >= 0");
    let mut ctx = encode(&t.data.vocab, prompt).map_err(|e| anyhow::anyhow!("prompt: {e}"))?;
    anyhow::ensure!(!ctx.is_empty(), "the prompt must have at least one character");
    let block = t.cfg.block_size;
    let v = t.gcfg.vocab_size;
    t.model.set_micro_batch(1)?;
    let mut rng = seed;
    let mut out = Vec::with_capacity(tokens);
    for _ in 0..tokens {
        let start = ctx.len().saturating_sub(block);
        let window = &ctx[start..];
        let mut x = vec![0u32; block];
        x[..window.len()].copy_from_slice(window);
        // causal attention: positions after the context do not change the last one's logits
        t.model.forward_only(&x, &vec![IGNORE_INDEX; block]);
        let logits = t.model.read_logits()?;
        let row = &logits[(window.len() - 1) * v..window.len() * v];
        let next = if temperature == 0.0 {
            row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0)
        } else {
            let m = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
            let w: Vec<f64> = row.iter().map(|&l| ((l as f64 - m) / temperature).exp()).collect();
            let total: f64 = w.iter().sum();
            let u = (splitmix64(&mut rng) >> 11) as f64 / (1u64 << 53) as f64 * total;
            let mut acc = 0.0;
            let mut pick = v - 1;
            for (i, wi) in w.iter().enumerate() {
                acc += wi;
                if u < acc {
                    pick = i;
                    break;
                }
            }
            pick
        };
        ctx.push(next as u32);
        out.push(next as u32);
    }
    Ok(t.data.decode(&out))
}
