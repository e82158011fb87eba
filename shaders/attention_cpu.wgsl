// attention_cpu.wgsl: the kernels of attention.wgsl for CPU adapters, as register-blocked tiles.
// Causal attention is five small matrix products per (batch, head) and two row-wise softmax
// passes; each product is computed in blocks of 4 rows by 8 columns (or 4 rows by 2 vec4 of head
// channels) held in registers, from vec4 loads along the head dimension, with no workgroup memory
// and no barriers (the matmul_cpu.wgsl recipe). Blocks wholly above the diagonal do no work.
//   forward:  preatt = q k^T * scale (masked 0)  ->  att = softmax(preatt)  ->  out = att v
//   backward: datt += dout v^T  ->  dpreatt += att * (datt - sum(att * datt))
//             dq += dpreatt k * scale;  dk += dpreatt^T q * scale;  dv += att^T dout
// Same math, same outputs and the same binding order as attention.wgsl; datt, dpreatt and dqkv
// accumulate, and only entries on or below the diagonal of datt and dpreatt are read or written
// in the backward. Needs C % 4 == 0, (C / NH) % 4 == 0 and 4-aligned offsets o0, o3 (and o4 in
// the backward); the launcher falls back to attention.wgsl otherwise.
// Dropout on the attention probabilities as in attention.wgsl (THR > 0: the value product, datt
// and dv use att[t, s] * m[t, s]; att keeps the probabilities before dropout).
// Every tensor is `act`: f32, or f16 in the mixed-precision instantiation of this file (converted
// to f32 as loaded); the arithmetic is f32.

alias act = f32;

struct Params {
    off: Offsets,
    B: u32, T: u32, C: u32, NH: u32,
    // dropout: the part's first sequence in the micro-batch, the site, the threshold, 1/(1-p)
    S0: u32, SITE: u32, THR: u32, SCALE: f32,
}
@group(0) @binding(0) var<uniform> p: Params;

// attention_*_cpu forward entries (out [B,T,C], preatt [B,NH,T,T], att [B,NH,T,T], qkv [B,T,3C])
@group(0) @binding(1) var<storage, read_write> out4: array<vec4<act>>;
@group(0) @binding(2) var<storage, read_write> preatt: array<act>;
@group(0) @binding(3) var<storage, read_write> att: array<act>;
@group(0) @binding(4) var<storage, read_write> qkv4: array<vec4<act>>;
@group(0) @binding(5) var<storage, read> key_f: array<u32>; // dropout key [seed, step, sample0, 0]

// attention_backward_*_cpu(dqkv [B,T,3C], dpreatt [B,NH,T,T], datt [B,NH,T,T], dout [B,T,C],
//                          qkv [B,T,3C], att [B,NH,T,T])
@group(0) @binding(9) var<storage, read_write> dqkv4: array<vec4<act>>;
@group(0) @binding(10) var<storage, read_write> dpreatt: array<act>;
@group(0) @binding(11) var<storage, read_write> datt: array<act>;
@group(0) @binding(12) var<storage, read_write> dout4: array<vec4<act>>;
@group(0) @binding(13) var<storage, read> b_qkv4: array<vec4<act>>;
@group(0) @binding(14) var<storage, read> b_att: array<act>;
@group(0) @binding(15) var<storage, read> key_b: array<u32>;

// 16 invocations per workgroup (two 8-wide SIMD rows on lavapipe): smaller work items than 64
// leave less idle time at the end of each dispatch when 2 threads share few workgroups
// (`gradscope bench`: +7% tokens/s at B 16 x K 4, +10% at B 64 x K 1 against 64).
const WG: u32 = 16u;

// dropout streams of sequence b of the part (forward: key at o4; backward: key at o6) and the
// factor of probability (h, t, s)
fn stream_f(b: u32) -> u32 {
    if (p.THR == 0u) { return 0u; }
    return dropout_stream(key_f[p.off.o4], key_f[p.off.o4 + 1u], p.SITE, key_f[p.off.o4 + 2u] + p.S0 + b);
}
fn stream_b(b: u32) -> u32 {
    if (p.THR == 0u) { return 0u; }
    return dropout_stream(key_b[p.off.o6], key_b[p.off.o6 + 1u], p.SITE, key_b[p.off.o6 + 2u] + p.S0 + b);
}
fn drop_at(stream: u32, h: u32, t: u32, s: u32) -> f32 {
    return dropout_factor(stream, (h * p.T + t) * p.T + s, p.THR, p.SCALE);
}

fn hs4() -> u32 { return p.C / p.NH / 4u; }
fn att_scale() -> f32 { return 1.0 / sqrt(f32(4u * hs4())); }

// vec4 index of channel 0 of head h in part `part` (0 q, 1 k, 2 v) of qkv row (b, t), from base o
fn qkv_at(o: u32, b: u32, t: u32, part: u32, h: u32) -> u32 {
    return (o + (b * p.T + t) * 3u * p.C + part * p.C) / 4u + h * hs4();
}
// vec4 index of channel 0 of head h in row (b, t) of a [B,T,C] tensor at base o
fn row_at(o: u32, b: u32, t: u32, h: u32) -> u32 {
    return (o + (b * p.T + t) * p.C) / 4u + h * hs4();
}

// A 4 x 8 block of a (T x T) score matrix: rows t0..t0+4, columns s0..s0+8 of head (b, h).
// Invocations vary fastest in the row block, so the lanes of a SIMD group share s0 (one load of
// each column serves them all) and are masked or not together.
struct ScoreBlock { b: u32, h: u32, t0: u32, s0: u32, live: bool, }

fn score_block(idx: u32) -> ScoreBlock {
    let nbq = (p.T + 3u) / 4u;
    let nbs = (p.T + 7u) / 8u;
    var sb: ScoreBlock;
    sb.live = idx < p.B * p.NH * nbq * nbs;
    let qb = idx % nbq;
    let sblk = (idx / nbq) % nbs;
    let bh = idx / (nbq * nbs);
    sb.b = bh / p.NH;
    sb.h = bh % p.NH;
    sb.t0 = qb * 4u;
    sb.s0 = sblk * 8u;
    return sb;
}

// q[t0..t0+4] . k[s0..s0+8] over the head's channels (rows past T clamped to T - 1)
fn scores_q_k(sb: ScoreBlock) -> array<vec4<f32>, 8> {
    let tl = p.T - 1u;
    let a0 = qkv_at(p.off.o3, sb.b, min(sb.t0, tl), 0u, sb.h);
    let a1 = qkv_at(p.off.o3, sb.b, min(sb.t0 + 1u, tl), 0u, sb.h);
    let a2 = qkv_at(p.off.o3, sb.b, min(sb.t0 + 2u, tl), 0u, sb.h);
    let a3 = qkv_at(p.off.o3, sb.b, min(sb.t0 + 3u, tl), 0u, sb.h);
    var cb: array<u32, 8>;
    for (var j = 0u; j < 8u; j++) { cb[j] = qkv_at(p.off.o3, sb.b, min(sb.s0 + j, tl), 1u, sb.h); }
    var acc: array<vec4<f32>, 8>;
    for (var j = 0u; j < 8u; j++) { acc[j] = vec4<f32>(0.0); }
    for (var i = 0u; i < hs4(); i++) {
        let x0 = vec4<f32>(qkv4[a0 + i]); let x1 = vec4<f32>(qkv4[a1 + i]);
        let x2 = vec4<f32>(qkv4[a2 + i]); let x3 = vec4<f32>(qkv4[a3 + i]);
        acc[0] += dot4(x0, x1, x2, x3, vec4<f32>(qkv4[cb[0] + i]));
        acc[1] += dot4(x0, x1, x2, x3, vec4<f32>(qkv4[cb[1] + i]));
        acc[2] += dot4(x0, x1, x2, x3, vec4<f32>(qkv4[cb[2] + i]));
        acc[3] += dot4(x0, x1, x2, x3, vec4<f32>(qkv4[cb[3] + i]));
        acc[4] += dot4(x0, x1, x2, x3, vec4<f32>(qkv4[cb[4] + i]));
        acc[5] += dot4(x0, x1, x2, x3, vec4<f32>(qkv4[cb[5] + i]));
        acc[6] += dot4(x0, x1, x2, x3, vec4<f32>(qkv4[cb[6] + i]));
        acc[7] += dot4(x0, x1, x2, x3, vec4<f32>(qkv4[cb[7] + i]));
    }
    return acc;
}

// preatt[t, s] = q[t] . k[s] * scale for s <= t, 0 above the diagonal
@compute @workgroup_size(WG)
fn attention_scores_cpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                        @builtin(local_invocation_index) l: u32) {
    let sb = score_block(flat(w, n, l));
    if (!sb.live) { return; }
    var acc: array<vec4<f32>, 8>;
    for (var j = 0u; j < 8u; j++) { acc[j] = vec4<f32>(0.0); }
    if (sb.s0 <= sb.t0 + 3u) { acc = scores_q_k(sb); }
    let scale = att_scale();
    let base = p.off.o1 + (sb.b * p.NH + sb.h) * p.T * p.T;
    for (var j = 0u; j < 8u; j++) {
        let s = sb.s0 + j;
        if (s >= p.T) { break; }
        let c = acc[j];
        for (var i = 0u; i < 4u; i++) {
            let t = sb.t0 + i;
            if (t < p.T) { preatt[base + t * p.T + s] = act(select(0.0, c[i] * scale, s <= t)); }
        }
    }
}

// one invocation per (b, h, t) row: att[t, :t+1] = softmax(preatt[t, :t+1]), 0 above the diagonal
@compute @workgroup_size(WG)
fn attention_softmax_cpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                         @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, n, l);
    if (idx >= p.B * p.NH * p.T) { return; }
    let t = idx % p.T;
    let pr = p.off.o1 + idx * p.T;
    let ar = p.off.o2 + idx * p.T;
    var maxv = -3.4028234e38;
    for (var s = 0u; s <= t; s++) { maxv = max(maxv, f32(preatt[pr + s])); }
    var sum = 0.0;
    for (var s = 0u; s <= t; s++) { sum += exp(f32(preatt[pr + s]) - maxv); }
    let inv = 1.0 / sum;
    for (var s = 0u; s <= t; s++) { att[ar + s] = act(exp(f32(preatt[pr + s]) - maxv) * inv); }
    for (var s = t + 1u; s < p.T; s++) { att[ar + s] = 0.0; }
}

// A block of 4 rows by 2 vec4 of head channels: rows r0..r0+4 of head (b, h), channel vec4s
// c0, c0+1. Invocations vary fastest in the channel block, so the lanes of a SIMD group have the
// same row block (and the same causal loop length).
struct RowBlock { b: u32, h: u32, r0: u32, c0: u32, c1: u32, second: bool, live: bool, }

fn row_block(idx: u32) -> RowBlock {
    let h4 = hs4();
    let ncb = (h4 + 1u) / 2u;
    let nbr = (p.T + 3u) / 4u;
    var rb: RowBlock;
    rb.live = idx < p.B * p.NH * nbr * ncb;
    let cb = idx % ncb;
    let rblk = (idx / ncb) % nbr;
    let bh = idx / (ncb * nbr);
    rb.b = bh / p.NH;
    rb.h = bh % p.NH;
    rb.r0 = rblk * 4u;
    rb.c0 = cb * 2u;
    rb.c1 = min(cb * 2u + 1u, h4 - 1u);
    rb.second = cb * 2u + 1u < h4;
    return rb;
}

// out[t] = sum_{s <= t} att[t, s] v[s] (att is 0 above the diagonal: the loop runs to the block's
// last row)
@compute @workgroup_size(WG)
fn attention_value_cpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                       @builtin(local_invocation_index) l: u32) {
    let rb = row_block(flat(w, n, l));
    if (!rb.live) { return; }
    let tl = p.T - 1u;
    let base = p.off.o2 + (rb.b * p.NH + rb.h) * p.T * p.T;
    let a0 = base + min(rb.r0, tl) * p.T;
    let a1 = base + min(rb.r0 + 1u, tl) * p.T;
    let a2 = base + min(rb.r0 + 2u, tl) * p.T;
    let a3 = base + min(rb.r0 + 3u, tl) * p.T;
    var c00 = vec4<f32>(0.0); var c01 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0); var c11 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0); var c21 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0); var c31 = vec4<f32>(0.0);
    let last = min(rb.r0 + 3u, tl);
    let ds = stream_f(rb.b);
    for (var s = 0u; s <= last; s++) {
        let v = qkv_at(p.off.o3, rb.b, s, 2u, rb.h);
        let v0 = vec4<f32>(qkv4[v + rb.c0]);
        let v1 = vec4<f32>(qkv4[v + rb.c1]);
        var x0 = f32(att[a0 + s]); var x1 = f32(att[a1 + s]);
        var x2 = f32(att[a2 + s]); var x3 = f32(att[a3 + s]);
        if (p.THR != 0u) {
            x0 *= drop_at(ds, rb.h, min(rb.r0, tl), s); x1 *= drop_at(ds, rb.h, min(rb.r0 + 1u, tl), s);
            x2 *= drop_at(ds, rb.h, min(rb.r0 + 2u, tl), s); x3 *= drop_at(ds, rb.h, min(rb.r0 + 3u, tl), s);
        }
        c00 += x0 * v0; c01 += x0 * v1;
        c10 += x1 * v0; c11 += x1 * v1;
        c20 += x2 * v0; c21 += x2 * v1;
        c30 += x3 * v0; c31 += x3 * v1;
    }
    var lo = array<vec4<f32>, 4>(c00, c10, c20, c30);
    var hi = array<vec4<f32>, 4>(c01, c11, c21, c31);
    for (var i = 0u; i < 4u; i++) {
        let t = rb.r0 + i;
        if (t >= p.T) { break; }
        let o = row_at(p.off.o0, rb.b, t, rb.h);
        out4[o + rb.c0] = vec4<act>(lo[i]);
        if (rb.second) { out4[o + rb.c0 + 1u] = vec4<act>(hi[i]); }
    }
}

// datt[t, s] += dout[t] . v[s] for s <= t
@compute @workgroup_size(WG)
fn attention_backward_datt_cpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                               @builtin(local_invocation_index) l: u32) {
    let sb = score_block(flat(w, n, l));
    if (!sb.live || sb.s0 > sb.t0 + 3u) { return; }
    let tl = p.T - 1u;
    let a0 = row_at(p.off.o3, sb.b, min(sb.t0, tl), sb.h);
    let a1 = row_at(p.off.o3, sb.b, min(sb.t0 + 1u, tl), sb.h);
    let a2 = row_at(p.off.o3, sb.b, min(sb.t0 + 2u, tl), sb.h);
    let a3 = row_at(p.off.o3, sb.b, min(sb.t0 + 3u, tl), sb.h);
    var cb: array<u32, 8>;
    for (var j = 0u; j < 8u; j++) { cb[j] = qkv_at(p.off.o4, sb.b, min(sb.s0 + j, tl), 2u, sb.h); }
    var acc: array<vec4<f32>, 8>;
    for (var j = 0u; j < 8u; j++) { acc[j] = vec4<f32>(0.0); }
    for (var i = 0u; i < hs4(); i++) {
        let x0 = vec4<f32>(dout4[a0 + i]); let x1 = vec4<f32>(dout4[a1 + i]);
        let x2 = vec4<f32>(dout4[a2 + i]); let x3 = vec4<f32>(dout4[a3 + i]);
        acc[0] += dot4(x0, x1, x2, x3, vec4<f32>(b_qkv4[cb[0] + i]));
        acc[1] += dot4(x0, x1, x2, x3, vec4<f32>(b_qkv4[cb[1] + i]));
        acc[2] += dot4(x0, x1, x2, x3, vec4<f32>(b_qkv4[cb[2] + i]));
        acc[3] += dot4(x0, x1, x2, x3, vec4<f32>(b_qkv4[cb[3] + i]));
        acc[4] += dot4(x0, x1, x2, x3, vec4<f32>(b_qkv4[cb[4] + i]));
        acc[5] += dot4(x0, x1, x2, x3, vec4<f32>(b_qkv4[cb[5] + i]));
        acc[6] += dot4(x0, x1, x2, x3, vec4<f32>(b_qkv4[cb[6] + i]));
        acc[7] += dot4(x0, x1, x2, x3, vec4<f32>(b_qkv4[cb[7] + i]));
    }
    let base = p.off.o2 + (sb.b * p.NH + sb.h) * p.T * p.T;
    let ds = stream_b(sb.b);
    for (var j = 0u; j < 8u; j++) {
        let s = sb.s0 + j;
        if (s >= p.T) { break; }
        let c = acc[j];
        for (var i = 0u; i < 4u; i++) {
            let t = sb.t0 + i;
            if (t < p.T && s <= t) {
                let e = base + t * p.T + s;
                datt[e] = act(f32(datt[e]) + c[i] * drop_at(ds, sb.h, t, s));
            }
        }
    }
}

// one invocation per (b, h, t) row: dpreatt[t, s] += att[t, s] (datt[t, s] - sum_s' att datt)
// for s <= t, with the full (accumulated) datt row
@compute @workgroup_size(WG)
fn attention_backward_softmax_cpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                                  @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, n, l);
    if (idx >= p.B * p.NH * p.T) { return; }
    let t = idx % p.T;
    let row = idx * p.T;
    var dot_ad = 0.0;
    for (var s = 0u; s <= t; s++) { dot_ad += f32(b_att[p.off.o5 + row + s]) * f32(datt[p.off.o2 + row + s]); }
    for (var s = 0u; s <= t; s++) {
        let e = p.off.o1 + row + s;
        dpreatt[e] = act(f32(dpreatt[e]) + f32(b_att[p.off.o5 + row + s]) * (f32(datt[p.off.o2 + row + s]) - dot_ad));
    }
}

// dq[t] += scale * sum_{s <= t} dpreatt[t, s] k[s]
@compute @workgroup_size(WG)
fn attention_backward_query_cpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                                @builtin(local_invocation_index) l: u32) {
    let rb = row_block(flat(w, n, l));
    if (!rb.live) { return; }
    let tl = p.T - 1u;
    let base = p.off.o1 + (rb.b * p.NH + rb.h) * p.T * p.T;
    let t0 = rb.r0; let t1 = rb.r0 + 1u; let t2 = rb.r0 + 2u; let t3 = rb.r0 + 3u;
    let a0 = base + min(t0, tl) * p.T;
    let a1 = base + min(t1, tl) * p.T;
    let a2 = base + min(t2, tl) * p.T;
    let a3 = base + min(t3, tl) * p.T;
    var c00 = vec4<f32>(0.0); var c01 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0); var c11 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0); var c21 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0); var c31 = vec4<f32>(0.0);
    let last = min(t3, tl);
    for (var s = 0u; s <= last; s++) {
        let k = qkv_at(p.off.o4, rb.b, s, 1u, rb.h);
        let k0 = vec4<f32>(b_qkv4[k + rb.c0]);
        let k1 = vec4<f32>(b_qkv4[k + rb.c1]);
        // entries above the diagonal are not part of dpreatt
        let x0 = select(0.0, f32(dpreatt[a0 + s]), s <= t0);
        let x1 = select(0.0, f32(dpreatt[a1 + s]), s <= t1);
        let x2 = select(0.0, f32(dpreatt[a2 + s]), s <= t2);
        let x3 = f32(dpreatt[a3 + s]);
        c00 += x0 * k0; c01 += x0 * k1;
        c10 += x1 * k0; c11 += x1 * k1;
        c20 += x2 * k0; c21 += x2 * k1;
        c30 += x3 * k0; c31 += x3 * k1;
    }
    let scale = att_scale();
    var lo = array<vec4<f32>, 4>(c00, c10, c20, c30);
    var hi = array<vec4<f32>, 4>(c01, c11, c21, c31);
    for (var i = 0u; i < 4u; i++) {
        let t = rb.r0 + i;
        if (t >= p.T) { break; }
        let q = qkv_at(p.off.o0, rb.b, t, 0u, rb.h);
        dqkv4[q + rb.c0] = vec4<act>(vec4<f32>(dqkv4[q + rb.c0]) + lo[i] * scale);
        if (rb.second) { dqkv4[q + rb.c0 + 1u] = vec4<act>(vec4<f32>(dqkv4[q + rb.c0 + 1u]) + hi[i] * scale); }
    }
}

// for key/value rows s: dk[s] += scale * sum_{t >= s} dpreatt[t, s] q[t];
//                       dv[s] += sum_{t >= s} att[t, s] dout[t]
@compute @workgroup_size(WG)
fn attention_backward_key_value_cpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                                    @builtin(local_invocation_index) l: u32) {
    let rb = row_block(flat(w, n, l));
    if (!rb.live) { return; }
    let tl = p.T - 1u;
    let bh = rb.b * p.NH + rb.h;
    let s0 = rb.r0; let s1 = min(rb.r0 + 1u, tl); let s2 = min(rb.r0 + 2u, tl); let s3 = min(rb.r0 + 3u, tl);
    var k00 = vec4<f32>(0.0); var k01 = vec4<f32>(0.0);
    var k10 = vec4<f32>(0.0); var k11 = vec4<f32>(0.0);
    var k20 = vec4<f32>(0.0); var k21 = vec4<f32>(0.0);
    var k30 = vec4<f32>(0.0); var k31 = vec4<f32>(0.0);
    var v00 = vec4<f32>(0.0); var v01 = vec4<f32>(0.0);
    var v10 = vec4<f32>(0.0); var v11 = vec4<f32>(0.0);
    var v20 = vec4<f32>(0.0); var v21 = vec4<f32>(0.0);
    var v30 = vec4<f32>(0.0); var v31 = vec4<f32>(0.0);
    let ds = stream_b(rb.b);
    for (var t = s0; t < p.T; t++) {
        let q = qkv_at(p.off.o4, rb.b, t, 0u, rb.h);
        let q0 = vec4<f32>(b_qkv4[q + rb.c0]);
        let q1 = vec4<f32>(b_qkv4[q + rb.c1]);
        let g = row_at(p.off.o3, rb.b, t, rb.h);
        let g0 = vec4<f32>(dout4[g + rb.c0]);
        let g1 = vec4<f32>(dout4[g + rb.c1]);
        let r = (bh * p.T + t) * p.T;
        // column s of row t is below the diagonal when s <= t
        let d0 = f32(dpreatt[p.off.o1 + r + s0]);
        let d1 = select(0.0, f32(dpreatt[p.off.o1 + r + s1]), s1 <= t);
        let d2 = select(0.0, f32(dpreatt[p.off.o1 + r + s2]), s2 <= t);
        let d3 = select(0.0, f32(dpreatt[p.off.o1 + r + s3]), s3 <= t);
        var e0 = f32(b_att[p.off.o5 + r + s0]);
        var e1 = select(0.0, f32(b_att[p.off.o5 + r + s1]), s1 <= t);
        var e2 = select(0.0, f32(b_att[p.off.o5 + r + s2]), s2 <= t);
        var e3 = select(0.0, f32(b_att[p.off.o5 + r + s3]), s3 <= t);
        if (p.THR != 0u) {
            e0 *= drop_at(ds, rb.h, t, s0); e1 *= drop_at(ds, rb.h, t, s1);
            e2 *= drop_at(ds, rb.h, t, s2); e3 *= drop_at(ds, rb.h, t, s3);
        }
        k00 += d0 * q0; k01 += d0 * q1;
        k10 += d1 * q0; k11 += d1 * q1;
        k20 += d2 * q0; k21 += d2 * q1;
        k30 += d3 * q0; k31 += d3 * q1;
        v00 += e0 * g0; v01 += e0 * g1;
        v10 += e1 * g0; v11 += e1 * g1;
        v20 += e2 * g0; v21 += e2 * g1;
        v30 += e3 * g0; v31 += e3 * g1;
    }
    let scale = att_scale();
    var klo = array<vec4<f32>, 4>(k00, k10, k20, k30);
    var khi = array<vec4<f32>, 4>(k01, k11, k21, k31);
    var vlo = array<vec4<f32>, 4>(v00, v10, v20, v30);
    var vhi = array<vec4<f32>, 4>(v01, v11, v21, v31);
    for (var i = 0u; i < 4u; i++) {
        let s = rb.r0 + i;
        if (s >= p.T) { break; }
        let k = qkv_at(p.off.o0, rb.b, s, 1u, rb.h);
        let v = qkv_at(p.off.o0, rb.b, s, 2u, rb.h);
        dqkv4[k + rb.c0] = vec4<act>(vec4<f32>(dqkv4[k + rb.c0]) + klo[i] * scale);
        dqkv4[v + rb.c0] = vec4<act>(vec4<f32>(dqkv4[v + rb.c0]) + vlo[i]);
        if (rb.second) {
            dqkv4[k + rb.c0 + 1u] = vec4<act>(vec4<f32>(dqkv4[k + rb.c0 + 1u]) + khi[i] * scale);
            dqkv4[v + rb.c0 + 1u] = vec4<act>(vec4<f32>(dqkv4[v + rb.c0 + 1u]) + vhi[i]);
        }
    }
}
