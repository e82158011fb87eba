//! The GPU family's embedding gradients (shaders/embedding_gpu.wgsl): the token embedding's
//! gradient from a bucket list the host builds with the tokens (the micro-batch's positions
//! stably sorted by token), one invocation per (bucket, channel), deterministic without atomics;
//! the position embedding's gradient stays encoder.wgsl's sum over the batch per (t, c).

use super::program::{Grid, ProgramBuilder, ProgramError, Uniforms, View};

type R = Result<(), ProgramError>;

/// u32 elements of the bucket list of `bt` positions: [count | rows [bt] | starts [bt + 1] |
/// tokens [bt]].
pub fn buckets_len(bt: usize) -> usize {
    3 * bt + 2
}

/// The bucket list of a micro-batch's tokens ([B*T]): its positions stably sorted by token (a
/// counting sort: positions of one token stay in position order), each distinct token's run a
/// bucket. Layout as `buckets_len`; unused slots are 0.
pub fn embedding_buckets(tokens: &[u32]) -> Vec<u32> {
    let bt = tokens.len();
    let mut out = vec![0u32; buckets_len(bt)];
    embedding_buckets_into(tokens, &mut out);
    out
}

/// `embedding_buckets` into `out` (`buckets_len(tokens.len())` elements).
pub fn embedding_buckets_into(tokens: &[u32], out: &mut [u32]) {
    let bt = tokens.len();
    assert_eq!(out.len(), buckets_len(bt), "bucket list length");
    out.fill(0);
    let mut order: Vec<u32> = (0..bt as u32).collect();
    // stable: equal tokens keep their position order
    order.sort_by_key(|&r| tokens[r as usize]);
    let (count, rest) = out.split_at_mut(1);
    let (rows, rest) = rest.split_at_mut(bt);
    let (starts, toks) = rest.split_at_mut(bt + 1);
    rows.copy_from_slice(&order);
    let mut n = 0usize;
    for (j, &r) in order.iter().enumerate() {
        let tok = tokens[r as usize];
        if j == 0 || tokens[order[j - 1] as usize] != tok {
            starts[n] = j as u32;
            toks[n] = tok;
            n += 1;
        }
    }
    starts[n] = bt as u32;
    count[0] = n as u32;
}

impl ProgramBuilder {
    /// dwte (the embedding rows v0 .. v0 + vn) += the rows of dout [B,T,C] of each token, from
    /// the bucket list `buckets` of the micro-batch's tokens (`embedding_buckets`); and dwpe
    /// [T,C] += the sum over the batch of dout when given (once, with one of the parts).
    #[allow(clippy::too_many_arguments)]
    pub fn encoder_backward_buckets(
        &mut self, dwte: &View, dwpe: Option<&View>, dout: &View, buckets: &View, b: usize, t: usize, c: usize, v0: usize,
        vn: usize,
    ) -> R {
        let bt = b * t;
        let dims = Uniforms::new().n(b).n(t).n(c).n(v0).n(vn);
        // a bucket holds at most every position
        self.check_loops("encoder_backward_buckets", bt)?;
        let args = [(dwte, vn * c), (dout, bt * c), (buckets, buckets_len(bt))];
        self.call("embedding_gpu", "encoder_backward_buckets", 9, &args, dims.clone(), Grid::Threads(bt * c))?;
        if let Some(dwpe) = dwpe {
            // encoder.wgsl's layout: dwte, dwpe, dout, inp (the wpe kernel binds dwpe and dout)
            let args = [(dwte, 0), (dwpe, t * c), (dout, bt * c), (buckets, 0)];
            self.call("encoder", "encoder_backward_wpe", 9, &args, dims, Grid::Threads(t * c))?;
        }
        Ok(())
    }
}
