// prelude.wgsl: functions every shader file can call. The registry puts this file in front of
// each one when it is compiled (after the file's `enable` lines); it has no bindings and no entry
// points.

// ---- the uniform's tensor offsets ---------------------------------------------------------------
// Every file's `struct Params` (its uniform at binding 0, `p`) starts with `off: Offsets`: the
// element offset of each tensor argument inside the range bound for it, in argument order
// (`ProgramBuilder::call` writes them), followed by the file's own dims. 32 bytes, so the dims
// start at byte 32 as they would with the eight fields written out.
struct Offsets { o0: u32, o1: u32, o2: u32, o3: u32, o4: u32, o5: u32, o6: u32, o7: u32 }

// ---- indexing ------------------------------------------------------------------------------
// The invocation's index in a 1-D dispatch (`Grid::Threads`: workgroups laid out over x, then
// y past the device's per-dimension limit) of workgroups of WG invocations. Every shader file
// declares its `const WG`, the @workgroup_size of its 1-D kernels.
fn flat(w: vec3<u32>, n: vec3<u32>, l: u32) -> u32 { return (w.x + w.y * n.x) * WG + l; }

// ---- GELU, tanh approximation (PyTorch approximate="tanh", GPT-2) ------------------------------
// gelu(x) = 0.5 x (1 + tanh u), u = sqrt(2/pi) (x + 0.044715 x^3), with 0.5 (1 + tanh u) written
// as sigmoid(2u) = 1 / (1 + exp(-2u)): no cancellation for very negative x (where 1 + tanh u
// loses every digit in f32), and exp overflowing to +inf gives 0, not NaN.
const GELU_S: f32 = 0.7978845608028654; // sqrt(2/pi)
fn gelu(x: f32) -> f32 {
    let u = GELU_S * (x + 0.044715 * x * x * x);
    return x * (1.0 / (1.0 + exp(-2.0 * u)));
}
// d gelu / dx; with s = 0.5 (1 + tanh u): 0.5 (1 - tanh^2 u) = 2 s (1 - s)
fn gelu_grad(x: f32) -> f32 {
    let u = GELU_S * (x + 0.044715 * x * x * x);
    let sg = 1.0 / (1.0 + exp(-2.0 * u));
    return sg + 2.0 * x * sg * (1.0 - sg) * GELU_S * (1.0 + 3.0 * 0.044715 * x * x);
}

// ---- register blocks ---------------------------------------------------------------------------
// (a0..a3 . w) as one vec4: four rows against one column (or weight row)
fn dot4(a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>, w: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dot(a0, w), dot(a1, w), dot(a2, w), dot(a3, w));
}

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
