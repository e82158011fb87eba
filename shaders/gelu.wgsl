// gelu.wgsl: GELU, tanh approximation (as GPT-2).
//   forward:  out = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   backward: dinp += dout * (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2))
// Every tensor is `act`: f32, or f16 in the mixed-precision instantiation of this file; the
// arithmetic is f32.

alias act = f32;

struct Params {
    off: Offsets,
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

@compute @workgroup_size(64)
fn gelu_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    out[p.off.o0 + i] = act(gelu(f32(inp[p.off.o1 + i])));
}

@compute @workgroup_size(64)
fn gelu_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                 @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    dinp[p.off.o0 + i] = act(f32(dinp[p.off.o0 + i]) + gelu_grad(f32(b_inp[p.off.o1 + i])) * f32(dout[p.off.o2 + i]));
}
