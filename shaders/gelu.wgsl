// gelu.wgsl: GELU, tanh approximation (as GPT-2).
//   forward:  out = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   backward: dinp += dout * (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2))
// Every tensor is `act`: f32, or f16 in the mixed-precision instantiation of this file; the
// arithmetic is f32.

alias act = f32;

struct Params {
    o0: u32, o1: u32, o2: u32, o3: u32, o4: u32, o5: u32, o6: u32, o7: u32,
    N: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

// gelu_forward(out [N], inp [N])
@group(0) @binding(1) var<storage, read_write> out: array<act>;
@group(0) @binding(2) var<storage, read_write> inp: array<act>;
// gelu_backward(dinp [N], inp [N], dout [N])
@group(0) @binding(9) var<storage, read_write> dinp: array<act>;
@group(0) @binding(10) var<storage, read> b_inp: array<act>;
@group(0) @binding(11) var<storage, read_write> dout: array<act>;

const WG: u32 = 64u;
const S: f32 = 0.7978845608028654; // sqrt(2/pi)
fn flat(w: vec3<u32>, n: vec3<u32>, l: u32) -> u32 { return (w.x + w.y * n.x) * WG + l; }

// 0.5 (1 + tanh u) = sigmoid(2u) = 1 / (1 + exp(-2u)): no cancellation for very negative x
// (where 1 + tanh u loses every digit in f32), and exp overflowing to +inf gives 0, not NaN.
fn half_one_plus_tanh(u: f32) -> f32 {
    return 1.0 / (1.0 + exp(-2.0 * u));
}

@compute @workgroup_size(64)
fn gelu_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    let x = f32(inp[p.o1 + i]);
    let u = S * (x + 0.044715 * x * x * x);
    out[p.o0 + i] = act(x * half_one_plus_tanh(u));
}

@compute @workgroup_size(64)
fn gelu_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                 @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    let x = f32(b_inp[p.o1 + i]);
    let u = S * (x + 0.044715 * x * x * x);
    // with s = 0.5 (1 + tanh u): 0.5 (1 - tanh^2 u) = 2 s (1 - s)
    let sg = half_one_plus_tanh(u);
    let grad = sg + 2.0 * x * sg * (1.0 - sg) * S * (1.0 + 3.0 * 0.044715 * x * x);
    dinp[p.o0 + i] = act(f32(dinp[p.o0 + i]) + grad * f32(dout[p.o2 + i]));
}
