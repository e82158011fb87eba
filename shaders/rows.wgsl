// rows.wgsl: the GPU family's row kernels. LayerNorm with one workgroup per row (its WG
// invocations stride the row's C channels, then reduce across the workgroup), and column sums
// over all N rows (the LayerNorm parameter gradients, a matmul's bias gradient) in two stages:
// one workgroup per block of COLS columns and CHUNK rows, whose LANES row lanes each sum a
// strided share of the chunk before a tree over the lanes, writes the chunk's sums to a partials
// buffer [chunks, C]; then one workgroup per COLS columns sums the chunks the same way and adds
// the sums to the gradient (`column_sums_finish`). So a GPU runs ceil(N / CHUNK) x C / COLS
// workgroups instead of C / COLS, and no invocation loops over more than CHUNK / LANES rows of
// the first stage. Without a partials buffer (`ProgramBuilder::set_column_partials`) the single
// stage `*_cols` kernels sum all N rows per column block. Both are deterministic.
// The row reduction `row_sum2` is not in this file: the registry appends
// shaders/reduce/workgroup.wgsl (a workgroup tree: `rows`) or, for adapters with SUBGROUP,
// shaders/reduce/subgroup.wgsl too (subgroup sums, then one slot per subgroup: `rows_subgroup`).
//   layernorm forward:  mean = avg(x); rstd = 1/sqrt(avg((x-mean)^2) + eps); norm = (x-mean)*rstd
//                       out = norm * weight + bias                        (eps 1e-5, biased var)
//   layernorm backward: dnorm = dout * weight
//                       dinp += (dnorm - avg(dnorm) - norm * avg(dnorm * norm)) * rstd
//                       dweight += sum_rows dout * norm;  dbias += sum_rows dout
//   bias backward:      dbias [C] += sum_rows dout [N,C]
// Activations (out, mean, rstd, inp, dinp, dout) are `act`: f32, or f16 in the mixed-precision
// instantiation; weights, biases and their gradients stay f32, and all arithmetic is f32.

alias act = f32;

struct Params {
    off: Offsets,
    N: u32, C: u32,
    // column_sums_finish: columns below S go to out0, the others to out1
    S: u32,
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

// bias_backward(dbias [C], dout [N,C])
@group(0) @binding(17) var<storage, read_write> c_dbias: array<f32>;
@group(0) @binding(18) var<storage, read> c_dout: array<act>;

// the first stage of the two-stage column sums:
// layernorm_backward_params_part(part [chunks, 2C], dout [N,C], inp [N,C], mean [N], rstd [N])
// bias_backward_part(part [chunks, C], dout [N,C])
@group(0) @binding(25) var<storage, read_write> part: array<f32>;
@group(0) @binding(26) var<storage, read> pt_dout: array<act>;
@group(0) @binding(27) var<storage, read> pt_inp: array<act>;
@group(0) @binding(28) var<storage, read> pt_mean: array<act>;
@group(0) @binding(29) var<storage, read> pt_rstd: array<act>;

// the second: column_sums_finish(out0 [S], out1 [C - S], part [N, C]) with N = chunks
@group(0) @binding(33) var<storage, read_write> f_out0: array<f32>;
@group(0) @binding(34) var<storage, read_write> f_out1: array<f32>;
@group(0) @binding(35) var<storage, read> f_part: array<f32>;

const WG: u32 = 64u;    // invocations per row (row kernels)
const COLS: u32 = 32u;  // columns per workgroup (column sums)
const LANES: u32 = 8u;  // row lanes per column (column sums)
const CHUNK: u32 = 256u; // rows per workgroup of the column sums' first stage
const EPS: f32 = 1e-5;

fn row_of(w: vec3<u32>, n: vec3<u32>) -> u32 { return w.x + w.y * n.x; }

// one workgroup per row
@compute @workgroup_size(64)
fn layernorm_forward_rows(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                          @builtin(local_invocation_index) l: u32) {
    let row = row_of(w, n);
    if (row >= p.N) { return; }
    let x = p.off.o3 + row * p.C;
    var s = 0.0;
    for (var i = l; i < p.C; i += WG) { s += f32(inp[x + i]); }
    let m = row_sum2(vec2<f32>(s, 0.0), l).x / f32(p.C);
    var v = 0.0;
    for (var i = l; i < p.C; i += WG) { let d = f32(inp[x + i]) - m; v += d * d; }
    let rs = 1.0 / sqrt(row_sum2(vec2<f32>(v, 0.0), l).x / f32(p.C) + EPS);
    let y = p.off.o0 + row * p.C;
    for (var i = l; i < p.C; i += WG) {
        out[y + i] = act((f32(inp[x + i]) - m) * rs * weight[p.off.o4 + i] + bias[p.off.o5 + i]);
    }
    if (l == 0u) {
        mean[p.off.o1 + row] = act(m);
        rstd[p.off.o2 + row] = act(rs);
    }
}

// one workgroup per row: the input gradient
@compute @workgroup_size(64)
fn layernorm_backward_input_rows(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                                 @builtin(local_invocation_index) l: u32) {
    let row = row_of(w, n);
    if (row >= p.N) { return; }
    let x = p.off.o4 + row * p.C;
    let g = p.off.o3 + row * p.C;
    let m = f32(b_mean[p.off.o6 + row]);
    let s = f32(b_rstd[p.off.o7 + row]);
    var acc = vec2<f32>(0.0);
    for (var i = l; i < p.C; i += WG) {
        let norm = (f32(b_inp[x + i]) - m) * s;
        let dnorm = b_weight[p.off.o5 + i] * f32(dout[g + i]);
        acc += vec2<f32>(dnorm, dnorm * norm);
    }
    // (avg(dnorm), avg(dnorm * norm))
    let r = row_sum2(acc, l) / f32(p.C);
    let d = p.off.o0 + row * p.C;
    for (var i = l; i < p.C; i += WG) {
        let norm = (f32(b_inp[x + i]) - m) * s;
        let dnorm = b_weight[p.off.o5 + i] * f32(dout[g + i]);
        dinp[d + i] = act(f32(dinp[d + i]) + (dnorm - r.x - norm * r.y) * s);
    }
}

// [LANES, COLS] partial sums of the column kernels
var<workgroup> lanes: array<vec2<f32>, 256>;

// The sum over the LANES row lanes of each column (a tree over the lanes); every invocation gets
// its column's sum.
fn lane_sum(x: vec2<f32>, li: vec3<u32>) -> vec2<f32> {
    lanes[li.y * COLS + li.x] = x;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s /= 2u) {
        if (li.y < s) { lanes[li.y * COLS + li.x] += lanes[(li.y + s) * COLS + li.x]; }
        workgroupBarrier();
    }
    return lanes[li.x];
}

// one workgroup per COLS channels: the weight and bias gradients, each lane summing rows
// lane, lane + LANES, ... in order, then the lanes in a fixed tree (deterministic)
@compute @workgroup_size(32, 8)
fn layernorm_backward_params_cols(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_id) li: vec3<u32>) {
    let c = w.x * COLS + li.x;
    var acc = vec2<f32>(0.0);
    if (c < p.C) {
        for (var row = li.y; row < p.N; row += LANES) {
            let norm = (f32(b_inp[p.off.o4 + row * p.C + c]) - f32(b_mean[p.off.o6 + row])) * f32(b_rstd[p.off.o7 + row]);
            let g = f32(dout[p.off.o3 + row * p.C + c]);
            acc += vec2<f32>(g * norm, g);
        }
    }
    let r = lane_sum(acc, li);
    if (li.y == 0u && c < p.C) {
        dweight[p.off.o1 + c] += r.x;
        dbias[p.off.o2 + c] += r.y;
    }
}

// one workgroup per COLS columns: dbias += the column sums of dout, as above
@compute @workgroup_size(32, 8)
fn bias_backward_cols(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_id) li: vec3<u32>) {
    let c = w.x * COLS + li.x;
    var acc = vec2<f32>(0.0);
    if (c < p.C) {
        for (var row = li.y; row < p.N; row += LANES) { acc.x += f32(c_dout[p.off.o1 + row * p.C + c]); }
    }
    let r = lane_sum(acc, li);
    if (li.y == 0u && c < p.C) { c_dbias[p.off.o0 + c] += r.x; }
}

// The two-stage column sums. First stage: workgroup (x, y) sums rows CHUNK y .. CHUNK (y + 1) of
// columns COLS x .. (lanes in order, then the lane tree) into row y of the partials.
@compute @workgroup_size(32, 8)
fn layernorm_backward_params_part(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_id) li: vec3<u32>) {
    let c = w.x * COLS + li.x;
    let end = min(p.N, (w.y + 1u) * CHUNK);
    var acc = vec2<f32>(0.0);
    if (c < p.C) {
        for (var row = w.y * CHUNK + li.y; row < end; row += LANES) {
            let norm = (f32(pt_inp[p.off.o2 + row * p.C + c]) - f32(pt_mean[p.off.o3 + row])) * f32(pt_rstd[p.off.o4 + row]);
            let g = f32(pt_dout[p.off.o1 + row * p.C + c]);
            acc += vec2<f32>(g * norm, g);
        }
    }
    let r = lane_sum(acc, li);
    if (li.y == 0u && c < p.C) {
        // [dweight's C sums | dbias's C sums] per chunk
        let at = p.off.o0 + w.y * 2u * p.C + c;
        part[at] = r.x;
        part[at + p.C] = r.y;
    }
}

@compute @workgroup_size(32, 8)
fn bias_backward_part(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_id) li: vec3<u32>) {
    let c = w.x * COLS + li.x;
    let end = min(p.N, (w.y + 1u) * CHUNK);
    var acc = vec2<f32>(0.0);
    if (c < p.C) {
        for (var row = w.y * CHUNK + li.y; row < end; row += LANES) { acc.x += f32(pt_dout[p.off.o1 + row * p.C + c]); }
    }
    let r = lane_sum(acc, li);
    if (li.y == 0u && c < p.C) { part[p.off.o0 + w.y * p.C + c] = r.x; }
}

// Second stage: one workgroup per COLS columns of the partials [N = chunks, C] sums its columns
// over the chunks (lanes, then the tree) and adds each sum to out0[c] (c < S) or out1[c - S].
@compute @workgroup_size(32, 8)
fn column_sums_finish(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_id) li: vec3<u32>) {
    let c = w.x * COLS + li.x;
    var acc = vec2<f32>(0.0);
    if (c < p.C) {
        for (var row = li.y; row < p.N; row += LANES) { acc.x += f_part[p.off.o2 + row * p.C + c]; }
    }
    let r = lane_sum(acc, li);
    if (li.y == 0u && c < p.C) {
        if (c < p.S) { f_out0[p.off.o0 + c] += r.x; } else { f_out1[p.off.o1 + c - p.S] += r.x; }
    }
}
