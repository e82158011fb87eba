// relu.wgsl: ReLU.
//   forward:  out = max(x, 0)
//   backward: dinp += dout where x > 0 (0 at x <= 0)

struct Params {
    off: Offsets,
    N: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

// relu_forward(out [N], inp [N])
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> inp: array<f32>;
// relu_backward(dinp [N], inp [N], dout [N])
@group(0) @binding(9) var<storage, read_write> dinp: array<f32>;
@group(0) @binding(10) var<storage, read> b_inp: array<f32>;
@group(0) @binding(11) var<storage, read_write> dout: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn relu_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    out[p.off.o0 + i] = max(inp[p.off.o1 + i], 0.0);
}

@compute @workgroup_size(64)
fn relu_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                 @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    if (b_inp[p.off.o1 + i] > 0.0) {
        dinp[p.off.o0 + i] += dout[p.off.o2 + i];
    }
}
