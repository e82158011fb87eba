//! Text generation from a trained GPT: the context (at most block_size characters) is run
//! through the forward pass, the next character drawn from softmax(logits / temperature) at the
//! last position. Greedy when temperature is 0.

use crate::data::text::splitmix64;
use crate::reference::layers::IGNORE_INDEX;

use std::path::Path;

use crate::data::text::TextData;
use crate::gpu::Gpu;

use super::checkpoint;
use super::gpt::GptModel;
use super::model::Model;

/// The GPT of a checkpoint, for generation: needs only the checkpoint (its vocabulary, config
/// and weights), not the training corpus. Micro-batch 1, f32.
pub fn load(gpu: &Gpu, path: &Path) -> anyhow::Result<GptModel> {
    let (gcfg, tokenizer, train, _) = checkpoint::read_header(path)?;
    let mut cfg = super::TrainConfig {
        micro_batch: 1, accum_steps: 1, effective_batch: 0, memory_budget: String::new(), init_from: String::new(),
        precision: crate::gpu::Precision::F32, checkpoint_activations: false, ..train
    };
    let data = TextData::empty(tokenizer, gcfg.vocab_size)?;
    let m = GptModel::with_data(gpu, &mut cfg, data)?;
    anyhow::ensure!(m.gcfg == gcfg, "{}: its config {gcfg:?} does not match its vocabulary", path.display());
    let params = checkpoint::load_weights(path, &gcfg)?;
    let n = params.len();
    m.slabs().load_state(&params, &vec![0.0; n], &vec![0.0; n]);
    Ok(m)
}

/// Generate `tokens` characters after `prompt`.
pub fn sample(t: &mut GptModel, prompt: &str, tokens: usize, temperature: f64, seed: u64) -> anyhow::Result<String> {
    anyhow::ensure!(temperature >= 0.0 && temperature.is_finite(), "temperature must be >= 0");
    let mut ctx = t.data.tokenizer.encode(prompt).map_err(|e| anyhow::anyhow!("prompt: {e}"))?;
    anyhow::ensure!(!ctx.is_empty(), "the prompt must have at least one character");
    let block = t.gcfg.block_size;
    let v = t.gcfg.vocab_size;
    t.gpu_model.set_micro_batch(1)?;
    let mut rng = seed;
    let mut out = Vec::with_capacity(tokens);
    for _ in 0..tokens {
        let start = ctx.len().saturating_sub(block);
        let window = &ctx[start..];
        let mut x = vec![0u32; block];
        x[..window.len()].copy_from_slice(window);
        // causal attention: positions after the context do not change the last one's logits
        t.gpu_model.forward_only(&x, &vec![IGNORE_INDEX; block]);
        let logits = t.gpu_model.read_logits()?;
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
