// prelude.wgsl: functions every shader file can call. The registry puts this file in front of
// each one when it is compiled (after the file's `enable` lines); it has no bindings and no entry
// points.

// ---- dropout's random numbers ---------------------------------------------------------------
// Counter-based: an element's keep/drop decision is a pure function of (seed, step, site, sample,
// element), so the forward and the backward (and a recomputed block) regenerate the same mask
// without storing it, and a sample's masks depend on its position in the window, not on how the
// window is cut into micro-batches. The hash is PCG's RXS-M-XS output function on one LCG step
// (Jarzynski and Olano, "Hash Functions for GPU Rendering", 2020), chained over the key's words;
// `reference::dropout` is its CPU twin, bit for bit.
//   seed:    the run's seed;  step: the optimizer step the window makes (1, 2, ...)
//   site:    0 the embedding; for layer l, 1 + 3l the attention probabilities, 2 + 3l the
//            attention's projection, 3 + 3l the MLP's projection
//   sample:  the sequence's position in the window (micro-batch index x B + row)
//   element: the element's index inside the sample's tensor at that site
// An element is dropped when its bits are below `threshold` = round(p 2^32), kept and scaled by
// 1 / (1 - p) otherwise.

fn pcg_hash(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// The stream of one (seed, step, site, sample): hashed once per sample, then one hash per element.
fn dropout_stream(seed: u32, step: u32, site: u32, sample: u32) -> u32 {
    return pcg_hash(sample + pcg_hash(site + pcg_hash(step + pcg_hash(seed))));
}

// The factor of element `elem` of a stream: 0 (dropped) or `scale`; threshold 0 keeps everything.
fn dropout_factor(stream: u32, elem: u32, threshold: u32, scale: f32) -> f32 {
    if (threshold == 0u) { return 1.0; }
    return select(scale, 0.0, pcg_hash(elem + stream) < threshold);
}
