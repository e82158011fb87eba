// layernorm.wgsl: LayerNorm over the last dimension C of N rows (eps 1e-5, biased variance).
//   forward:  mean = avg(x); rstd = 1/sqrt(avg((x-mean)^2) + eps); norm = (x-mean)*rstd
//             out = norm * weight + bias
//   backward: dnorm = dout * weight
//             dinp += (dnorm - avg(dnorm) - norm * avg(dnorm * norm)) * rstd
//             dweight += sum_rows dout * norm;  dbias += sum_rows dout
// Activations (out, mean, rstd, inp, dinp, dout) are `act`: f32, or f16 in the mixed-precision
// instantiation of this file; weight, bias and their gradients stay f32, and all arithmetic is f32.

alias act = f32;

struct Params {
    off: Offsets,
    N: u32, C: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

// layernorm_forward(out [N,C], mean [N], rstd [N], inp [N,C], weight [C], bias [C])
@group(0) @binding(1) var<storage, read_write> out: array<act>;
@group(0) @binding(2) var<storage, read_write> mean: array<act>;
@group(0) @binding(3) var<storage, read_write> rstd: array<act>;
@group(0) @binding(4) var<storage, read_write> inp: array<act>;
@group(0) @binding(5) var<storage, read> weight: array<f32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;

// layernorm_backward(dinp [N,C], dweight [C], dbias [C], dout [N,C], inp [N,C], weight [C],
//                    mean [N], rstd [N])
@group(0) @binding(9) var<storage, read_write> dinp: array<act>;
@group(0) @binding(10) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(11) var<storage, read_write> dbias: array<f32>;
@group(0) @binding(12) var<storage, read_write> dout: array<act>;
@group(0) @binding(13) var<storage, read> b_inp: array<act>;
@group(0) @binding(14) var<storage, read> b_weight: array<f32>;
@group(0) @binding(15) var<storage, read> b_mean: array<act>;
@group(0) @binding(16) var<storage, read> b_rstd: array<act>;

const WG: u32 = 64u;
const EPS: f32 = 1e-5;

// one invocation per row
@compute @workgroup_size(64)
fn layernorm_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                     @builtin(local_invocation_index) l: u32) {
    let row = flat(w, n, l);
    if (row >= p.N) { return; }
    let x = p.off.o3 + row * p.C;
    var m = 0.0;
    for (var i = 0u; i < p.C; i++) { m += f32(inp[x + i]); }
    m = m / f32(p.C);
    var v = 0.0;
    for (var i = 0u; i < p.C; i++) { let d = f32(inp[x + i]) - m; v += d * d; }
    v = v / f32(p.C);
    let s = 1.0 / sqrt(v + EPS);
    let y = p.off.o0 + row * p.C;
    for (var i = 0u; i < p.C; i++) {
        out[y + i] = act((f32(inp[x + i]) - m) * s * weight[p.off.o4 + i] + bias[p.off.o5 + i]);
    }
    mean[p.off.o1 + row] = act(m);
    rstd[p.off.o2 + row] = act(s);
}

// one invocation per row: the input gradient
@compute @workgroup_size(64)
fn layernorm_backward_input(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                            @builtin(local_invocation_index) l: u32) {
    let row = flat(w, n, l);
    if (row >= p.N) { return; }
    let x = p.off.o4 + row * p.C;
    let g = p.off.o3 + row * p.C;
    let m = f32(b_mean[p.off.o6 + row]);
    let s = f32(b_rstd[p.off.o7 + row]);
    var dnorm_mean = 0.0;
    var dnorm_norm_mean = 0.0;
    for (var i = 0u; i < p.C; i++) {
        let norm = (f32(b_inp[x + i]) - m) * s;
        let dnorm = b_weight[p.off.o5 + i] * f32(dout[g + i]);
        dnorm_mean += dnorm;
        dnorm_norm_mean += dnorm * norm;
    }
    dnorm_mean = dnorm_mean / f32(p.C);
    dnorm_norm_mean = dnorm_norm_mean / f32(p.C);
    let d = p.off.o0 + row * p.C;
    for (var i = 0u; i < p.C; i++) {
        let norm = (f32(b_inp[x + i]) - m) * s;
        let dnorm = b_weight[p.off.o5 + i] * f32(dout[g + i]);
        dinp[d + i] = act(f32(dinp[d + i]) + (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s);
    }
}

// one invocation per channel: weight and bias gradients summed over rows in order (deterministic)
@compute @workgroup_size(64)
fn layernorm_backward_params(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                             @builtin(local_invocation_index) l: u32) {
    let c = flat(w, n, l);
    if (c >= p.C) { return; }
    var dw = 0.0;
    var db = 0.0;
    for (var row = 0u; row < p.N; row++) {
        let norm = (f32(b_inp[p.off.o4 + row * p.C + c]) - f32(b_mean[p.off.o6 + row])) * f32(b_rstd[p.off.o7 + row]);
        let g = f32(dout[p.off.o3 + row * p.C + c]);
        dw += g * norm;
        db += g;
    }
    dweight[p.off.o1 + c] += dw;
    dbias[p.off.o2 + c] += db;
}
