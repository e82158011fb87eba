// residual.wgsl: the residual connection.
//   forward:  out = inp1 + inp2
//   backward: dinp1 += dout; dinp2 += dout

struct Params {
    o0: u32, o1: u32, o2: u32, o3: u32, o4: u32, o5: u32, o6: u32, o7: u32,
    N: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

// residual_forward(out [N], inp1 [N], inp2 [N])
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> inp1: array<f32>;
@group(0) @binding(3) var<storage, read_write> inp2: array<f32>;
// residual_backward(dinp1 [N], dinp2 [N], dout [N])
@group(0) @binding(9) var<storage, read_write> dinp1: array<f32>;
@group(0) @binding(10) var<storage, read_write> dinp2: array<f32>;
@group(0) @binding(11) var<storage, read_write> dout: array<f32>;

const WG: u32 = 64u;
fn flat(w: vec3<u32>, n: vec3<u32>, l: u32) -> u32 { return (w.x + w.y * n.x) * WG + l; }

@compute @workgroup_size(64)
fn residual_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                    @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    out[p.o0 + i] = inp1[p.o1 + i] + inp2[p.o2 + i];
}

@compute @workgroup_size(64)
fn residual_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                     @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    let g = dout[p.o2 + i];
    dinp1[p.o0 + i] += g;
    dinp2[p.o1 + i] += g;
}
