// maxpool.wgsl: 2x2 max-pool, stride 2 (odd sizes: the last row/column is dropped).
//   forward:  out[b,c,y,x] = max of inp[b,c,2y..2y+2,2x..2x+2]; idx = flat index (into inp) of
//             the window's first maximum in row-major order
//   backward: dinp[idx[o]] += dout[o] (windows do not overlap: no two invocations write one element)

struct Params {
    off: Offsets,
    B: u32, C: u32, H: u32, W: u32, N: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

// maxpool2_forward(out [B,C,H/2,W/2], idx [B,C,H/2,W/2] u32, inp [B,C,H,W])
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> inp: array<f32>;
// maxpool2_backward(dinp [B,C,H,W], idx [N] u32, dout [N])
@group(0) @binding(9) var<storage, read_write> dinp: array<f32>;
@group(0) @binding(10) var<storage, read> b_idx: array<u32>;
@group(0) @binding(11) var<storage, read_write> dout: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn maxpool2_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                    @builtin(local_invocation_index) l: u32) {
    let o = flat(w, n, l);
    let HO = p.H / 2u;
    let WO = p.W / 2u;
    if (o >= p.B * p.C * HO * WO) { return; }
    let x = o % WO;
    let y = (o / WO) % HO;
    let bc = o / (WO * HO);
    let base = bc * p.H * p.W + (2u * y) * p.W + 2u * x;
    var best = base;
    let c1 = base + 1u;
    let c2 = base + p.W;
    let c3 = base + p.W + 1u;
    if (inp[p.off.o2 + c1] > inp[p.off.o2 + best]) { best = c1; }
    if (inp[p.off.o2 + c2] > inp[p.off.o2 + best]) { best = c2; }
    if (inp[p.off.o2 + c3] > inp[p.off.o2 + best]) { best = c3; }
    out[p.off.o0 + o] = inp[p.off.o2 + best];
    idx[p.off.o1 + o] = best;
}

@compute @workgroup_size(64)
fn maxpool2_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                     @builtin(local_invocation_index) l: u32) {
    let o = flat(w, n, l);
    if (o >= p.N) { return; }
    let i = p.off.o0 + b_idx[p.off.o1 + o];
    dinp[i] += dout[p.off.o2 + o];
}
