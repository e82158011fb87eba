// batchnorm.wgsl: BatchNorm over NCHW. Training mode normalizes with the statistics of the
// micro-batch (per channel over B*HW elements, biased variance, eps 1e-5) and updates the running
// statistics as PyTorch: r = (1 - momentum) r + momentum stat, with the unbiased variance for
// running_var. Under accumulation they are updated K times per optimizer step, from K small
// batches: this is the drift gradscope measures. Evaluation mode uses the running statistics.
//   backward (training mode, through the batch statistics), per channel with dnorm = dout * w:
//             dinp += (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd
//             dweight += sum dout * norm;  dbias += sum dout

struct Params {
    o0: u32, o1: u32, o2: u32, o3: u32, o4: u32, o5: u32, o6: u32, o7: u32,
    B: u32, C: u32, HW: u32,
    momentum: f32,
}
@group(0) @binding(0) var<uniform> p: Params;

// batchnorm_forward_train(out [B,C,HW], mean [C], rstd [C], running_mean [C], running_var [C],
//                         inp [B,C,HW], weight [C], bias [C])
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(6) var<storage, read_write> inp: array<f32>;
@group(0) @binding(7) var<storage, read_write> weight: array<f32>;
@group(0) @binding(8) var<storage, read_write> bias: array<f32>;

// batchnorm_backward(dinp, dweight [C], dbias [C], dout, inp, weight [C], mean [C], rstd [C])
@group(0) @binding(9) var<storage, read_write> dinp: array<f32>;
@group(0) @binding(10) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(11) var<storage, read_write> dbias: array<f32>;
@group(0) @binding(12) var<storage, read_write> dout: array<f32>;
@group(0) @binding(13) var<storage, read_write> b_inp: array<f32>;
@group(0) @binding(14) var<storage, read_write> b_weight: array<f32>;
@group(0) @binding(15) var<storage, read_write> b_mean: array<f32>;
@group(0) @binding(16) var<storage, read_write> b_rstd: array<f32>;

// batchnorm_forward_eval(out, inp, weight [C], bias [C], running_mean [C], running_var [C])
@group(0) @binding(17) var<storage, read_write> e_out: array<f32>;
@group(0) @binding(18) var<storage, read_write> e_inp: array<f32>;
@group(0) @binding(19) var<storage, read_write> e_weight: array<f32>;
@group(0) @binding(20) var<storage, read_write> e_bias: array<f32>;
@group(0) @binding(21) var<storage, read_write> e_rmean: array<f32>;
@group(0) @binding(22) var<storage, read_write> e_rvar: array<f32>;

const WG: u32 = 64u;
const EPS: f32 = 1e-5;
fn flat(w: vec3<u32>, n: vec3<u32>, l: u32) -> u32 { return (w.x + w.y * n.x) * WG + l; }

// one invocation per channel
@compute @workgroup_size(64)
fn batchnorm_forward_train(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                           @builtin(local_invocation_index) l: u32) {
    let c = flat(w, n, l);
    if (c >= p.C) { return; }
    let count = p.B * p.HW;
    var m = 0.0;
    for (var b = 0u; b < p.B; b++) {
        let base = p.o5 + (b * p.C + c) * p.HW;
        for (var k = 0u; k < p.HW; k++) { m += inp[base + k]; }
    }
    m = m / f32(count);
    var v = 0.0;
    for (var b = 0u; b < p.B; b++) {
        let base = p.o5 + (b * p.C + c) * p.HW;
        for (var k = 0u; k < p.HW; k++) { let d = inp[base + k] - m; v += d * d; }
    }
    v = v / f32(count);
    let s = 1.0 / sqrt(v + EPS);
    let wc = weight[p.o6 + c];
    let bc = bias[p.o7 + c];
    for (var b = 0u; b < p.B; b++) {
        let base = (b * p.C + c) * p.HW;
        for (var k = 0u; k < p.HW; k++) {
            out[p.o0 + base + k] = (inp[p.o5 + base + k] - m) * s * wc + bc;
        }
    }
    mean[p.o1 + c] = m;
    rstd[p.o2 + c] = s;
    var unbiased = v;
    if (count > 1u) { unbiased = v * f32(count) / f32(count - 1u); }
    running_mean[p.o3 + c] = (1.0 - p.momentum) * running_mean[p.o3 + c] + p.momentum * m;
    running_var[p.o4 + c] = (1.0 - p.momentum) * running_var[p.o4 + c] + p.momentum * unbiased;
}

// one invocation per element
@compute @workgroup_size(64)
fn batchnorm_forward_eval(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                          @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.B * p.C * p.HW) { return; }
    let c = (i / p.HW) % p.C;
    let s = 1.0 / sqrt(e_rvar[p.o5 + c] + EPS);
    e_out[p.o0 + i] = (e_inp[p.o1 + i] - e_rmean[p.o4 + c]) * s * e_weight[p.o2 + c] + e_bias[p.o3 + c];
}

// one invocation per channel: input, weight and bias gradients of the channel's set
@compute @workgroup_size(64)
fn batchnorm_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                      @builtin(local_invocation_index) l: u32) {
    let c = flat(w, n, l);
    if (c >= p.C) { return; }
    let count = f32(p.B * p.HW);
    let m = b_mean[p.o6 + c];
    let s = b_rstd[p.o7 + c];
    let wc = b_weight[p.o5 + c];
    var dm = 0.0;
    var dnn = 0.0;
    var dw = 0.0;
    var db = 0.0;
    for (var b = 0u; b < p.B; b++) {
        let base = (b * p.C + c) * p.HW;
        for (var k = 0u; k < p.HW; k++) {
            let d = dout[p.o3 + base + k];
            let norm = (b_inp[p.o4 + base + k] - m) * s;
            dm += d * wc;
            dnn += d * wc * norm;
            dw += d * norm;
            db += d;
        }
    }
    dm = dm / count;
    dnn = dnn / count;
    for (var b = 0u; b < p.B; b++) {
        let base = (b * p.C + c) * p.HW;
        for (var k = 0u; k < p.HW; k++) {
            let norm = (b_inp[p.o4 + base + k] - m) * s;
            dinp[p.o0 + base + k] += (dout[p.o3 + base + k] * wc - dm - norm * dnn) * s;
        }
    }
    dweight[p.o1 + c] += dw;
    dbias[p.o2 + c] += db;
}
