// adamw.wgsl: AdamW with decoupled weight decay (as PyTorch's torch.optim.AdamW).
//   p -= lr * wd * p
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr * (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps)
// `step` (starting at 1) is passed in: it advances once per optimizer step, never per micro-batch.
// Non-finite guard: when the window's loss or gradient norm (read from `status` on the device) is
// NaN or infinite the step is skipped, so a bad window never reaches the weights or the moments,
// and no readback is needed to decide it.

struct Params {
    o0: u32, o1: u32, o2: u32, o3: u32, o4: u32, o5: u32, o6: u32, o7: u32,
    N: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

// adamw(params [N], grads [N], m [N], v [N], loss [1], norm [1]) (loss and norm: window figures)
@group(0) @binding(1) var<storage, read_write> params: array<f32>;
@group(0) @binding(2) var<storage, read_write> grads: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> status: array<f32>;

// NaN or +-inf: all exponent bits set (bit test, immune to fast-math folding of x != x)
fn nonfinite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u;
}

const WG: u32 = 64u;
fn flat(w: vec3<u32>, n: vec3<u32>, l: u32) -> u32 { return (w.x + w.y * n.x) * WG + l; }

@compute @workgroup_size(64)
fn adamw(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
         @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    if (nonfinite(status[p.o4]) || nonfinite(status[p.o5])) { return; }
    let g = grads[p.o1 + i];
    let mi = p.beta1 * m[p.o2 + i] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v[p.o3 + i] + (1.0 - p.beta2) * g * g;
    m[p.o2 + i] = mi;
    v[p.o3 + i] = vi;
    let t = f32(p.step);
    let mhat = mi / (1.0 - pow(p.beta1, t));
    let vhat = vi / (1.0 - pow(p.beta2, t));
    var x = params[p.o0 + i];
    x -= p.lr * p.weight_decay * x;
    x -= p.lr * mhat / (sqrt(vhat) + p.eps);
    params[p.o0 + i] = x;
}
