// groupnorm.wgsl: GroupNorm over NCHW: statistics per (image, group of C/G channels) over its
// (C/G)*HW elements (eps 1e-5, biased variance). Independent of the batch: accumulation-safe.
//   forward:  norm = (x - mean) * rstd;  out = norm * weight[c] + bias[c]
//   backward: dnorm = dout * weight[c]
//             dinp += (dnorm - mean_set(dnorm) - norm * mean_set(dnorm * norm)) * rstd
//             dweight[c] += sum_{b,hw} dout * norm;  dbias[c] += sum_{b,hw} dout
// Forward and input gradient, CPU family: one invocation per (b, group), three passes over its
// (C/G)*HW elements; on lavapipe (65535 loop iterations per invocation, silently) that caps
// (C/G)*HW at about 21000. GPU family (`*_sets`): one workgroup per (b, group), its WG
// invocations striding the set, then a workgroup reduction `row_sum2` that the registry appends
// as it does to rows.wgsl (a tree in `groupnorm`, subgroup sums in `groupnorm_subgroup`).

struct Params {
    off: Offsets,
    B: u32, C: u32, HW: u32, G: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

// groupnorm_forward(out [B,C,HW], mean [B*G], rstd [B*G], inp [B,C,HW], weight [C], bias [C])
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> inp: array<f32>;
@group(0) @binding(5) var<storage, read> weight: array<f32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;

// groupnorm_backward(dinp, dweight [C], dbias [C], dout, inp, weight [C], mean [B*G], rstd [B*G])
@group(0) @binding(9) var<storage, read_write> dinp: array<f32>;
@group(0) @binding(10) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(11) var<storage, read_write> dbias: array<f32>;
@group(0) @binding(12) var<storage, read_write> dout: array<f32>;
@group(0) @binding(13) var<storage, read> b_inp: array<f32>;
@group(0) @binding(14) var<storage, read> b_weight: array<f32>;
@group(0) @binding(15) var<storage, read> b_mean: array<f32>;
@group(0) @binding(16) var<storage, read> b_rstd: array<f32>;

const WG: u32 = 64u;
const EPS: f32 = 1e-5;

// The set of (image, group) bg = b * G + group: its (C/G)*HW elements, contiguous in [B,C,HW].
struct Set {
    bg: u32,     // the set's index in mean and rstd [B*G]
    c0: u32,     // its first channel
    start: u32,  // its first element in [B,C,HW]
    count: u32,  // its (C/G)*HW elements
}
fn set_at(bg: u32) -> Set {
    let cg = p.C / p.G;
    let c0 = (bg % p.G) * cg;
    return Set(bg, c0, ((bg / p.G) * p.C + c0) * p.HW, cg * p.HW);
}

// out at element k of set gs, from the set's mean m and rstd s (both families' forward)
fn put_out(gs: Set, k: u32, m: f32, s: f32) {
    let i = gs.start + k;
    let c = gs.c0 + k / p.HW;
    out[p.off.o0 + i] = (inp[p.off.o3 + i] - m) * s * weight[p.off.o4 + c] + bias[p.off.o5 + c];
}

// (dnorm, norm) at element k of set gs (both families' input gradient)
fn dnorm_norm(gs: Set, k: u32, m: f32, s: f32) -> vec2<f32> {
    let i = gs.start + k;
    return vec2<f32>(dout[p.off.o3 + i] * b_weight[p.off.o5 + gs.c0 + k / p.HW], (b_inp[p.off.o4 + i] - m) * s);
}

// one invocation per (b, group)
@compute @workgroup_size(64)
fn groupnorm_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                     @builtin(local_invocation_index) l: u32) {
    let bg = flat(w, n, l);
    if (bg >= p.B * p.G) { return; }
    let gs = set_at(bg);
    var m = 0.0;
    for (var k = 0u; k < gs.count; k++) { m += inp[p.off.o3 + gs.start + k]; }
    m = m / f32(gs.count);
    var v = 0.0;
    for (var k = 0u; k < gs.count; k++) { let d = inp[p.off.o3 + gs.start + k] - m; v += d * d; }
    v = v / f32(gs.count);
    let s = 1.0 / sqrt(v + EPS);
    for (var k = 0u; k < gs.count; k++) { put_out(gs, k, m, s); }
    mean[p.off.o1 + bg] = m;
    rstd[p.off.o2 + bg] = s;
}

// one invocation per (b, group): the input gradient
@compute @workgroup_size(64)
fn groupnorm_backward_input(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                            @builtin(local_invocation_index) l: u32) {
    let bg = flat(w, n, l);
    if (bg >= p.B * p.G) { return; }
    let gs = set_at(bg);
    let m = b_mean[p.off.o6 + bg];
    let s = b_rstd[p.off.o7 + bg];
    var dm = 0.0;
    var dnn = 0.0;
    for (var k = 0u; k < gs.count; k++) {
        let d = dnorm_norm(gs, k, m, s);
        dm += d.x;
        dnn += d.x * d.y;
    }
    dm = dm / f32(gs.count);
    dnn = dnn / f32(gs.count);
    for (var k = 0u; k < gs.count; k++) {
        let d = dnorm_norm(gs, k, m, s);
        dinp[p.off.o0 + gs.start + k] += (d.x - dm - d.y * dnn) * s;
    }
}

// one WORKGROUP per channel (workgroup_id.x = channel): weight and bias gradients summed over the
// channel's B*HW elements, lane l taking elements l, l+64, ... in order, then a fixed tree
// (deterministic). The set grows with the batch; one invocation walking it would run into
// lavapipe's silent cap of 65535 loop iterations per invocation.
var<workgroup> part: array<vec2<f32>, 64>;

@compute @workgroup_size(64)
fn groupnorm_backward_params(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let c = w.x;
    let g = c / (p.C / p.G);
    var acc = vec2<f32>(0.0); // (sum dout * norm, sum dout)
    for (var j = l; j < p.B * p.HW; j += WG) {
        let b = j / p.HW;
        let i = (b * p.C + c) * p.HW + j % p.HW;
        let d = dout[p.off.o3 + i];
        acc += vec2<f32>(d * (b_inp[p.off.o4 + i] - b_mean[p.off.o6 + b * p.G + g]) * b_rstd[p.off.o7 + b * p.G + g], d);
    }
    part[l] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (l < stride) { part[l] += part[l + stride]; }
        workgroupBarrier();
    }
    if (l == 0u) {
        dweight[p.off.o1 + c] += part[0].x;
        dbias[p.off.o2 + c] += part[0].y;
    }
}

// GPU family: workgroup (x, y) -> set x + y * num_workgroups.x
fn set_of(w: vec3<u32>, n: vec3<u32>) -> Set { return set_at(w.x + w.y * n.x); }

// one workgroup per (b, group): statistics and output
@compute @workgroup_size(64)
fn groupnorm_forward_sets(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                          @builtin(local_invocation_index) l: u32) {
    let gs = set_of(w, n);
    if (gs.bg >= p.B * p.G) { return; }
    var s = 0.0;
    for (var k = l; k < gs.count; k += WG) { s += inp[p.off.o3 + gs.start + k]; }
    let m = row_sum2(vec2<f32>(s, 0.0), l).x / f32(gs.count);
    var v = 0.0;
    for (var k = l; k < gs.count; k += WG) { let d = inp[p.off.o3 + gs.start + k] - m; v += d * d; }
    let rs = 1.0 / sqrt(row_sum2(vec2<f32>(v, 0.0), l).x / f32(gs.count) + EPS);
    for (var k = l; k < gs.count; k += WG) { put_out(gs, k, m, rs); }
    if (l == 0u) {
        mean[p.off.o1 + gs.bg] = m;
        rstd[p.off.o2 + gs.bg] = rs;
    }
}

// one workgroup per (b, group): the input gradient
@compute @workgroup_size(64)
fn groupnorm_backward_input_sets(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                                 @builtin(local_invocation_index) l: u32) {
    let gs = set_of(w, n);
    if (gs.bg >= p.B * p.G) { return; }
    let m = b_mean[p.off.o6 + gs.bg];
    let s = b_rstd[p.off.o7 + gs.bg];
    var acc = vec2<f32>(0.0);
    for (var k = l; k < gs.count; k += WG) {
        let d = dnorm_norm(gs, k, m, s);
        acc += vec2<f32>(d.x, d.x * d.y);
    }
    // (mean_set(dnorm), mean_set(dnorm * norm))
    let r = row_sum2(acc, l) / f32(gs.count);
    for (var k = l; k < gs.count; k += WG) {
        let d = dnorm_norm(gs, k, m, s);
        dinp[p.off.o0 + gs.start + k] += (d.x - r.x - d.y * r.y) * s;
    }
}
