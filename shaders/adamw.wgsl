// adamw.wgsl: AdamW with decoupled weight decay (as PyTorch's torch.optim.AdamW).
//   p -= lr * wd * p
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr * (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps)
// `step` (starting at 1) is passed in: it advances once per optimizer step, never per micro-batch.
// Non-finite guard, decided on the device (no readback): the step is skipped when the window's
// loss or gradient norm is NaN or infinite, or when the step would write a non-finite weight or
// moment anywhere (a poisoned moment, a weight that overflows). `adamw_check` runs first over
// every tensor and sets the window's update flag (to 1.0) if any element's candidate update is
// non-finite; `adamw` then reads the flag, so either every tensor steps or none does.

struct Params {
    off: Offsets,
    N: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step: u32,
    norm_at: u32, // positions of the gradient norm and the update flag in `status`, after the loss
    flag_at: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

// adamw(params [N], grads [N], m [N], v [N], loss [1], norm [1], flag [1]): loss, norm and flag
// are views of one buffer (the window figures), read through binding 5 (from the loss on: the
// norm at norm_at, the flag at flag_at); adamw_check sets the flag through binding 7 (the same
// buffer as atomic bits, so concurrent writers are defined).
@group(0) @binding(1) var<storage, read_write> params: array<f32>;
@group(0) @binding(2) var<storage, read> grads: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read> status: array<f32>;
@group(0) @binding(7) var<storage, read_write> flag_bits: array<atomic<u32>>;

// NaN or +-inf: all exponent bits set (bit test, immune to fast-math folding of x != x)
fn nonfinite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u;
}

const WG: u32 = 64u;

// The new (weight, m, v) of element i; one function for the check and the step, so both see
// the same values.
struct Update { x: f32, m: f32, v: f32 }
fn update(i: u32) -> Update {
    let g = grads[p.off.o1 + i];
    let mi = p.beta1 * m[p.off.o2 + i] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v[p.off.o3 + i] + (1.0 - p.beta2) * g * g;
    let t = f32(p.step);
    let mhat = mi / (1.0 - pow(p.beta1, t));
    let vhat = vi / (1.0 - pow(p.beta2, t));
    var x = params[p.off.o0 + i];
    x -= p.lr * p.weight_decay * x;
    x -= p.lr * mhat / (sqrt(vhat) + p.eps);
    return Update(x, mi, vi);
}

// flag = 1.0 if the step would write a non-finite value (the flag is 0.0 before the first check)
@compute @workgroup_size(64)
fn adamw_check(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
               @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    let u = update(i);
    if (nonfinite(u.x) || nonfinite(u.m) || nonfinite(u.v)) {
        atomicOr(&flag_bits[p.off.o6], 0x3f800000u); // the bits of 1.0
    }
}

@compute @workgroup_size(64)
fn adamw(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
         @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    if (nonfinite(status[p.off.o4]) || nonfinite(status[p.off.o4 + p.norm_at]) || status[p.off.o4 + p.flag_at] != 0.0) { return; }
    let u = update(i);
    m[p.off.o2 + i] = u.m;
    v[p.off.o3 + i] = u.v;
    params[p.off.o0 + i] = u.x;
}
