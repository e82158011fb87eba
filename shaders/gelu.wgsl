// gelu.wgsl: GELU, tanh approximation (as GPT-2).
//   forward:  out = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   backward: dinp += dout * (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2))

struct Params {
    o0: u32, o1: u32, o2: u32, o3: u32, o4: u32, o5: u32, o6: u32, o7: u32,
    N: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

// gelu_forward(out [N], inp [N])
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> inp: array<f32>;
// gelu_backward(dinp [N], inp [N], dout [N])
@group(0) @binding(9) var<storage, read_write> dinp: array<f32>;
@group(0) @binding(10) var<storage, read_write> b_inp: array<f32>;
@group(0) @binding(11) var<storage, read_write> dout: array<f32>;

const WG: u32 = 64u;
const S: f32 = 0.7978845608028654; // sqrt(2/pi)
fn flat(w: vec3<u32>, n: vec3<u32>, l: u32) -> u32 { return (w.x + w.y * n.x) * WG + l; }

// tanh written out: WGSL's tanh overflows to NaN for |u| > ~44 on some drivers.
fn tanh_safe(u: f32) -> f32 {
    let e = exp(-2.0 * abs(u));
    return sign(u) * (1.0 - e) / (1.0 + e);
}

@compute @workgroup_size(64)
fn gelu_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    let x = inp[p.o1 + i];
    let u = S * (x + 0.044715 * x * x * x);
    out[p.o0 + i] = 0.5 * x * (1.0 + tanh_safe(u));
}

@compute @workgroup_size(64)
fn gelu_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                 @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    let x = b_inp[p.o1 + i];
    let u = S * (x + 0.044715 * x * x * x);
    let th = tanh_safe(u);
    let grad = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * S * (1.0 + 3.0 * 0.044715 * x * x);
    dinp[p.o0 + i] += grad * dout[p.o2 + i];
}
