// batchnorm.wgsl: BatchNorm over NCHW. Training mode normalizes with the statistics of the
// micro-batch (per channel over B*HW elements, biased variance, eps 1e-5) and updates the running
// statistics as PyTorch: r = (1 - momentum) r + momentum stat, with the unbiased variance for
// running_var. Under accumulation they are updated K times per optimizer step, from K small
// batches: this is the drift gradscope measures. Evaluation mode uses the running statistics.
//   backward (training mode, through the batch statistics), per channel with dnorm = dout * w:
//             dinp += (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd
//             dweight += sum dout * norm;  dbias += sum dout
//             (mean(dnorm) = w * sum dout / n and mean(dnorm * norm) = w * sum dout * norm / n)
// The per-channel kernels run one WORKGROUP per channel: lane l sums elements l, l+64, ... of the
// channel's B*HW set in order, then a fixed tree combines the 64 partials (deterministic, no
// atomics). One invocation walking the whole set would not do: Mesa's llvmpipe/lavapipe stops
// every loop of an invocation after 65535 iterations in total (LP_MAX_TGSI_LOOP_ITERATIONS),
// silently, which three passes over B*HW = 32*784 already exceed.

struct Params {
    off: Offsets,
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
@group(0) @binding(7) var<storage, read> weight: array<f32>;
@group(0) @binding(8) var<storage, read> bias: array<f32>;

// batchnorm_backward(dinp, dweight [C], dbias [C], dout, inp, weight [C], mean [C], rstd [C])
@group(0) @binding(9) var<storage, read_write> dinp: array<f32>;
@group(0) @binding(10) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(11) var<storage, read_write> dbias: array<f32>;
@group(0) @binding(12) var<storage, read_write> dout: array<f32>;
@group(0) @binding(13) var<storage, read> b_inp: array<f32>;
@group(0) @binding(14) var<storage, read> b_weight: array<f32>;
@group(0) @binding(15) var<storage, read> b_mean: array<f32>;
@group(0) @binding(16) var<storage, read> b_rstd: array<f32>;

// batchnorm_forward_eval(out, inp, weight [C], bias [C], running_mean [C], running_var [C])
@group(0) @binding(17) var<storage, read_write> e_out: array<f32>;
@group(0) @binding(18) var<storage, read_write> e_inp: array<f32>;
@group(0) @binding(19) var<storage, read> e_weight: array<f32>;
@group(0) @binding(20) var<storage, read> e_bias: array<f32>;
@group(0) @binding(21) var<storage, read> e_rmean: array<f32>;
@group(0) @binding(22) var<storage, read> e_rvar: array<f32>;

const WG: u32 = 64u;
const EPS: f32 = 1e-5;

var<workgroup> part: array<vec2<f32>, 64>;

// Sum of v over the 64 lanes in a fixed tree order; every lane gets the result. Call from
// uniform control flow.
fn reduce(l: u32, v: vec2<f32>) -> vec2<f32> {
    part[l] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (l < stride) { part[l] += part[l + stride]; }
        workgroupBarrier();
    }
    let r = part[0];
    workgroupBarrier(); // everyone has read part[0] before it is written again
    return r;
}

// element j (0 <= j < B*HW) of channel c's set -> its index in [B,C,HW]
fn at(c: u32, j: u32) -> u32 { return ((j / p.HW) * p.C + c) * p.HW + j % p.HW; }

// one workgroup per channel (workgroup_id.x = channel)
@compute @workgroup_size(64)
fn batchnorm_forward_train(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let c = w.x;
    let count = p.B * p.HW;
    var s = 0.0;
    for (var j = l; j < count; j += WG) { s += inp[p.off.o5 + at(c, j)]; }
    let m = reduce(l, vec2<f32>(s, 0.0)).x / f32(count);
    var q = 0.0;
    for (var j = l; j < count; j += WG) { let d = inp[p.off.o5 + at(c, j)] - m; q += d * d; }
    let v = reduce(l, vec2<f32>(q, 0.0)).x / f32(count);
    let r = 1.0 / sqrt(v + EPS);
    let wc = weight[p.off.o6 + c];
    let bc = bias[p.off.o7 + c];
    for (var j = l; j < count; j += WG) {
        let i = at(c, j);
        out[p.off.o0 + i] = (inp[p.off.o5 + i] - m) * r * wc + bc;
    }
    if (l == 0u) {
        mean[p.off.o1 + c] = m;
        rstd[p.off.o2 + c] = r;
        var unbiased = v;
        if (count > 1u) { unbiased = v * f32(count) / f32(count - 1u); }
        running_mean[p.off.o3 + c] = (1.0 - p.momentum) * running_mean[p.off.o3 + c] + p.momentum * m;
        running_var[p.off.o4 + c] = (1.0 - p.momentum) * running_var[p.off.o4 + c] + p.momentum * unbiased;
    }
}

// one invocation per element
@compute @workgroup_size(64)
fn batchnorm_forward_eval(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                          @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.B * p.C * p.HW) { return; }
    let c = (i / p.HW) % p.C;
    let s = 1.0 / sqrt(e_rvar[p.off.o5 + c] + EPS);
    e_out[p.off.o0 + i] = (e_inp[p.off.o1 + i] - e_rmean[p.off.o4 + c]) * s * e_weight[p.off.o2 + c] + e_bias[p.off.o3 + c];
}

// one workgroup per channel: input, weight and bias gradients of the channel's set
@compute @workgroup_size(64)
fn batchnorm_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let c = w.x;
    let count = p.B * p.HW;
    let m = b_mean[p.off.o6 + c];
    let s = b_rstd[p.off.o7 + c];
    let wc = b_weight[p.off.o5 + c];
    var acc = vec2<f32>(0.0); // (sum dout * norm, sum dout)
    for (var j = l; j < count; j += WG) {
        let i = at(c, j);
        let d = dout[p.off.o3 + i];
        acc += vec2<f32>(d * (b_inp[p.off.o4 + i] - m) * s, d);
    }
    let sums = reduce(l, acc);
    let dm = wc * sums.y / f32(count);   // mean(dnorm)
    let dnn = wc * sums.x / f32(count);  // mean(dnorm * norm)
    for (var j = l; j < count; j += WG) {
        let i = at(c, j);
        let norm = (b_inp[p.off.o4 + i] - m) * s;
        dinp[p.off.o0 + i] += (dout[p.off.o3 + i] * wc - dm - norm * dnn) * s;
    }
    if (l == 0u) {
        dweight[p.off.o1 + c] += sums.x;
        dbias[p.off.o2 + c] += sums.y;
    }
}
