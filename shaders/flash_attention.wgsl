// flash_attention.wgsl: causal multi-head self-attention for GPUs, FlashAttention style: keys,
// values (and in the backward queries and output gradients) pass through workgroup memory in
// tiles, the softmax is computed online, and no T x T matrix is ever stored. Only each query
// row's log-sum-exp survives the forward pass; the backward recomputes the probabilities from
// q, k and it (FlashAttention-2).
// qkv row (b,t) = [q (C) | k (C) | v (C)]; head h uses channels h*hs .. (h+1)*hs, hs = C / NH;
// hs must be a multiple of 4 and at most 4 * HS4 = 64 (the launcher checks).
//   forward:  s[t,j] = q[t] . k[j] / sqrt(hs) for j <= t;  lse[t] = log sum_j exp(s[t,j])
//             P[t,j] = exp(s[t,j] - lse[t]);  out[t] = sum_j keep(t,j) P[t,j] v[j]
//   backward: D[t]   = dout[t] . out[t]                        (= sum_j P dP, FlashAttention-2)
//             dP[t,j] = keep(t,j) dout[t] . v[j];  dS = P (dP - D)
//             dq[t] += sum_j dS[t,j] k[j] / sqrt(hs)           (pass over query blocks)
//             dk[j] += sum_t dS[t,j] q[t] / sqrt(hs);  dv[j] += sum_t keep P[t,j] dout[t]
//                                                              (pass over key blocks)
// WGSL has no float atomics, so the backward is two passes that each own what they write: the
// query pass (one invocation per query row) writes dq and D, the key pass (one invocation per
// key row) reads D and writes dk and dv.
// `keep` is dropout on the attention probabilities (`attn_keep`: 0 or 1/(1-p) from the prelude's
// counter-based hash, site SITE, sample key[2] + S0 + b, element (h T + t) T + j; 1 when THR is
// 0): it scales P before P.V in the forward pass and dP in the backward pass; the normaliser
// (lse) and D are taken over the undropped probabilities.
// Activations (qkv, out, dqkv, dout) are `act`: f32, or f16 in the mixed-precision instantiation
// of this file; lse and D are always f32, and all arithmetic is f32.

alias act = f32;

struct Params {
    off: Offsets,
    B: u32, T: u32, C: u32, NH: u32,
    // dropout: the first sequence in the micro-batch, the site, the threshold, 1/(1-p)
    S0: u32, SITE: u32, THR: u32, SCALE: f32,
}
@group(0) @binding(0) var<uniform> p: Params;

// flash_attention_forward(out [B,T,C], lse [B,NH,T] f32, qkv [B,T,3C])
@group(0) @binding(1) var<storage, read_write> out: array<act>;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;
@group(0) @binding(3) var<storage, read_write> qkv: array<act>;
@group(0) @binding(4) var<storage, read> key_f: array<u32>; // dropout key [seed, step, sample0, 0]

// flash_attention_backward(dqkv [B,T,3C], dsum [B,NH,T] f32 (D, scratch), dout [B,T,C],
//                          qkv [B,T,3C], out [B,T,C], lse [B,NH,T] f32)
@group(0) @binding(9) var<storage, read_write> dqkv: array<act>;
@group(0) @binding(10) var<storage, read_write> dsum: array<f32>;
@group(0) @binding(11) var<storage, read_write> dout: array<act>;
@group(0) @binding(12) var<storage, read> b_qkv: array<act>;
@group(0) @binding(13) var<storage, read> b_out: array<act>;
@group(0) @binding(14) var<storage, read> b_lse: array<f32>;
@group(0) @binding(15) var<storage, read> key_b: array<u32>;

// invocations per workgroup (the prelude's `flat`; the passes index by workgroup instead)
const WG: u32 = 64u;
const HS4: u32 = 16u;  // vec4s of the largest head size (64)
const BR: u32 = 64u;   // query rows per workgroup of the forward and query passes (one each)
const BC: u32 = 32u;   // keys per tile of the forward and query passes
const BK: u32 = 64u;   // key rows per workgroup of the key pass (one each)
const BQ: u32 = 24u;   // query rows per tile of the key pass
const NEG: f32 = -3.4028234e38;

// forward and query pass: one tile of keys and values, [BC, HS4] each (16 KiB together)
var<workgroup> tile_k: array<vec4<f32>, 512>;
var<workgroup> tile_v: array<vec4<f32>, 512>;
// key pass: one tile of queries and output gradients, [BQ, HS4] each, and their lse and D
var<workgroup> tile_q: array<vec4<f32>, 384>;
var<workgroup> tile_g: array<vec4<f32>, 384>;
var<workgroup> tile_lse: array<f32, BQ>;
var<workgroup> tile_d: array<f32, BQ>;

// Dropout's stream of sequence b (forward: key at o3; backward: key at o6), and the keep/scale
// factor of the probability of query t attending to key j in head h of that stream (0 for a
// dropped one, 1 / (1 - p) for a kept one; 1 without dropout).
fn stream_f(b: u32) -> u32 {
    if (p.THR == 0u) { return 0u; }
    return dropout_stream(key_f[p.off.o3], key_f[p.off.o3 + 1u], p.SITE, key_f[p.off.o3 + 2u] + p.S0 + b);
}
fn stream_b(b: u32) -> u32 {
    if (p.THR == 0u) { return 0u; }
    return dropout_stream(key_b[p.off.o6], key_b[p.off.o6 + 1u], p.SITE, key_b[p.off.o6 + 2u] + p.S0 + b);
}
fn attn_keep(stream: u32, h: u32, t: u32, j: u32) -> f32 {
    return dropout_factor(stream, (h * p.T + t) * p.T + j, p.THR, p.SCALE);
}

fn ld_qkv(a: u32) -> vec4<f32> {
    return vec4<f32>(f32(qkv[a]), f32(qkv[a + 1u]), f32(qkv[a + 2u]), f32(qkv[a + 3u]));
}
fn ld_bqkv(a: u32) -> vec4<f32> {
    return vec4<f32>(f32(b_qkv[a]), f32(b_qkv[a + 1u]), f32(b_qkv[a + 2u]), f32(b_qkv[a + 3u]));
}
fn ld_dout(a: u32) -> vec4<f32> {
    return vec4<f32>(f32(dout[a]), f32(dout[a + 1u]), f32(dout[a + 2u]), f32(dout[a + 3u]));
}
fn ld_bout(a: u32) -> vec4<f32> {
    return vec4<f32>(f32(b_out[a]), f32(b_out[a + 1u]), f32(b_out[a + 2u]), f32(b_out[a + 3u]));
}
fn add_dqkv(a: u32, x: vec4<f32>) {
    dqkv[a] = act(f32(dqkv[a]) + x.x);
    dqkv[a + 1u] = act(f32(dqkv[a + 1u]) + x.y);
    dqkv[a + 2u] = act(f32(dqkv[a + 2u]) + x.z);
    dqkv[a + 3u] = act(f32(dqkv[a + 3u]) + x.w);
}

// Where one workgroup of a pass works: head bh = b * NH + h and its first row r0 (query rows for
// the forward and query passes, key rows for the key pass, `rows` per workgroup).
struct Block { ok: bool, b: u32, h: u32, bh: u32, r0: u32 }
fn block(w: vec3<u32>, n: vec3<u32>, rows: u32) -> Block {
    let per_head = (p.T + rows - 1u) / rows;
    let g = w.x + w.y * n.x;
    let bh = g / per_head;
    return Block(g < p.B * p.NH * per_head, bh / p.NH, bh % p.NH, bh, (g % per_head) * rows);
}

// Keys and values k0 .. k0 + BC of head (b, h) into the tiles (zeros past T): element e of the
// [BC, hs/4] tile is key k0 + e / (hs/4), vec4 e % (hs/4). The forward pass reads qkv, the
// query pass b_qkv (two functions: a function's bindings count for every entry point calling it).
fn kv_tile_at(b: u32, h: u32, k0: u32, e: u32) -> vec2<u32> {
    let hs = p.C / p.NH;
    let hs4 = hs / 4u;
    let key = k0 + e / hs4;
    return vec2<u32>(select(0xffffffffu, (b * p.T + key) * 3u * p.C + p.C + h * hs + 4u * (e % hs4), key < p.T),
                     (e / hs4) * HS4 + e % hs4);
}
fn load_kv_tile_forward(b: u32, h: u32, k0: u32, l: u32) {
    for (var e = l; e < BC * (p.C / p.NH / 4u); e += BR) {
        let at = kv_tile_at(b, h, k0, e);
        var kv = vec4<f32>(0.0);
        var vv = vec4<f32>(0.0);
        if (at.x != 0xffffffffu) { kv = ld_qkv(p.off.o2 + at.x); vv = ld_qkv(p.off.o2 + at.x + p.C); }
        tile_k[at.y] = kv;
        tile_v[at.y] = vv;
    }
}
fn load_kv_tile_backward(b: u32, h: u32, k0: u32, l: u32) {
    for (var e = l; e < BC * (p.C / p.NH / 4u); e += BR) {
        let at = kv_tile_at(b, h, k0, e);
        var kv = vec4<f32>(0.0);
        var vv = vec4<f32>(0.0);
        if (at.x != 0xffffffffu) { kv = ld_bqkv(p.off.o3 + at.x); vv = ld_bqkv(p.off.o3 + at.x + p.C); }
        tile_k[at.y] = kv;
        tile_v[at.y] = vv;
    }
}

// One invocation per query row t, BR rows of one head per workgroup: out and lse.
@compute @workgroup_size(64)
fn flash_attention_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                           @builtin(local_invocation_index) l: u32) {
    let blk = block(w, n, BR);
    if (!blk.ok) { return; }
    let hs = p.C / p.NH;
    let hs4 = hs / 4u;
    let scale = 1.0 / sqrt(f32(hs));
    let t = blk.r0 + l;
    let live = t < p.T;
    // q, pre-scaled by 1/sqrt(hs); a row past T computes on the last row and writes nothing
    var q: array<vec4<f32>, HS4>;
    var acc: array<vec4<f32>, HS4>;
    let qa = p.off.o2 + (blk.b * p.T + min(t, p.T - 1u)) * 3u * p.C + blk.h * hs;
    for (var i = 0u; i < HS4; i++) {
        if (i < hs4) { q[i] = ld_qkv(qa + 4u * i) * scale; }
    }
    let drs = stream_f(blk.b);
    var m = NEG;   // running max of the scores
    var sum = 0.0; // running sum of exp(score - m)
    let kend = min(blk.r0 + BR, p.T); // the block's last query sees keys < kend
    for (var k0 = 0u; k0 < kend; k0 += BC) {
        workgroupBarrier();
        load_kv_tile_forward(blk.b, blk.h, k0, l);
        workgroupBarrier();
        var s: array<f32, BC>;
        var mt = m;
        for (var j = 0u; j < BC; j++) {
            var d = 0.0;
            for (var i = 0u; i < HS4; i++) {
                if (i < hs4) { d += dot(q[i], tile_k[j * HS4 + i]); }
            }
            s[j] = select(NEG, d, k0 + j <= t);
            mt = max(mt, s[j]);
        }
        // rescale what was summed under the old max (exp(NEG - mt) = 0 on the first tile)
        let corr = exp(m - mt);
        sum *= corr;
        for (var i = 0u; i < HS4; i++) { acc[i] *= corr; }
        for (var j = 0u; j < BC; j++) {
            let e = select(0.0, exp(s[j] - mt), k0 + j <= t);
            sum += e;
            let pk = e * attn_keep(drs, blk.h, t, k0 + j);
            for (var i = 0u; i < HS4; i++) { acc[i] += pk * tile_v[j * HS4 + i]; }
        }
        m = mt;
    }
    if (live) {
        let inv = 1.0 / sum;
        let o = p.off.o0 + (blk.b * p.T + t) * p.C + blk.h * hs;
        for (var i = 0u; i < HS4; i++) {
            if (i < hs4) {
                let y = acc[i] * inv;
                out[o + 4u * i] = act(y.x);
                out[o + 4u * i + 1u] = act(y.y);
                out[o + 4u * i + 2u] = act(y.z);
                out[o + 4u * i + 3u] = act(y.w);
            }
        }
        lse[p.off.o1 + blk.bh * p.T + t] = m + log(sum);
    }
}

// Backward, first pass: one invocation per query row t, BR rows of one head per workgroup,
// keys and values in tiles: D[t] (kept in dsum for the key pass) and dq[t] (+=).
@compute @workgroup_size(64)
fn flash_attention_backward_query(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                                  @builtin(local_invocation_index) l: u32) {
    let blk = block(w, n, BR);
    if (!blk.ok) { return; }
    let hs = p.C / p.NH;
    let hs4 = hs / 4u;
    let scale = 1.0 / sqrt(f32(hs));
    let t = blk.r0 + l;
    let live = t < p.T;
    let tc = min(t, p.T - 1u);
    var q: array<vec4<f32>, HS4>;
    var g: array<vec4<f32>, HS4>;
    var dq: array<vec4<f32>, HS4>;
    let qa = p.off.o3 + (blk.b * p.T + tc) * 3u * p.C + blk.h * hs;
    let ga = (blk.b * p.T + tc) * p.C + blk.h * hs;
    var dd = 0.0;
    for (var i = 0u; i < HS4; i++) {
        if (i < hs4) {
            q[i] = ld_bqkv(qa + 4u * i) * scale;
            g[i] = ld_dout(p.off.o2 + ga + 4u * i);
            dd += dot(g[i], ld_bout(p.off.o4 + ga + 4u * i));
        }
    }
    let row_lse = b_lse[p.off.o5 + blk.bh * p.T + tc];
    let drs = stream_b(blk.b);
    let kend = min(blk.r0 + BR, p.T);
    for (var k0 = 0u; k0 < kend; k0 += BC) {
        workgroupBarrier();
        load_kv_tile_backward(blk.b, blk.h, k0, l);
        workgroupBarrier();
        for (var j = 0u; j < BC; j++) {
            var s = 0.0;
            var dp = 0.0;
            for (var i = 0u; i < HS4; i++) {
                if (i < hs4) {
                    s += dot(q[i], tile_k[j * HS4 + i]);
                    dp += dot(g[i], tile_v[j * HS4 + i]);
                }
            }
            let pr = select(0.0, exp(s - row_lse), k0 + j <= t);
            let ds = pr * (dp * attn_keep(drs, blk.h, t, k0 + j) - dd);
            for (var i = 0u; i < HS4; i++) { dq[i] += ds * tile_k[j * HS4 + i]; }
        }
    }
    if (live) {
        for (var i = 0u; i < HS4; i++) {
            if (i < hs4) { add_dqkv(p.off.o0 + (blk.b * p.T + t) * 3u * p.C + blk.h * hs + 4u * i, dq[i] * scale); }
        }
        dsum[p.off.o1 + blk.bh * p.T + t] = dd;
    }
}

// Backward, second pass: one invocation per key row j, BK rows of one head per workgroup,
// queries t >= j (with their output gradients, lse and D) in tiles: dk[j] and dv[j] (+=).
@compute @workgroup_size(64)
fn flash_attention_backward_key_value(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                                      @builtin(local_invocation_index) l: u32) {
    let blk = block(w, n, BK);
    if (!blk.ok) { return; }
    let hs = p.C / p.NH;
    let hs4 = hs / 4u;
    let scale = 1.0 / sqrt(f32(hs));
    let j = blk.r0 + l;
    let live = j < p.T;
    let ka = p.off.o3 + (blk.b * p.T + min(j, p.T - 1u)) * 3u * p.C + p.C + blk.h * hs;
    var k: array<vec4<f32>, HS4>;
    var v: array<vec4<f32>, HS4>;
    var dk: array<vec4<f32>, HS4>;
    var dv: array<vec4<f32>, HS4>;
    for (var i = 0u; i < HS4; i++) {
        if (i < hs4) {
            k[i] = ld_bqkv(ka + 4u * i) * scale;
            v[i] = ld_bqkv(ka + p.C + 4u * i);
        }
    }
    let drs = stream_b(blk.b);
    // queries before the block's first key see none of its keys
    for (var q0 = blk.r0; q0 < p.T; q0 += BQ) {
        workgroupBarrier();
        for (var e = l; e < BQ * hs4; e += BK) {
            let r = e / hs4;
            let i = e % hs4;
            let tq = q0 + r;
            var qv = vec4<f32>(0.0);
            var gv = vec4<f32>(0.0);
            if (tq < p.T) {
                qv = ld_bqkv(p.off.o3 + (blk.b * p.T + tq) * 3u * p.C + blk.h * hs + 4u * i);
                gv = ld_dout(p.off.o2 + (blk.b * p.T + tq) * p.C + blk.h * hs + 4u * i);
            }
            tile_q[r * HS4 + i] = qv;
            tile_g[r * HS4 + i] = gv;
        }
        if (l < BQ) {
            let tq = min(q0 + l, p.T - 1u);
            tile_lse[l] = b_lse[p.off.o5 + blk.bh * p.T + tq];
            tile_d[l] = dsum[p.off.o1 + blk.bh * p.T + tq];
        }
        workgroupBarrier();
        for (var r = 0u; r < BQ; r++) {
            let tq = q0 + r;
            var s = 0.0;
            var dp = 0.0;
            for (var i = 0u; i < HS4; i++) {
                if (i < hs4) {
                    s += dot(k[i], tile_q[r * HS4 + i]);
                    dp += dot(v[i], tile_g[r * HS4 + i]);
                }
            }
            let ok = tq < p.T && tq >= j;
            let pr = select(0.0, exp(s - tile_lse[r]), ok);
            let keep = attn_keep(drs, blk.h, tq, j);
            let ds = pr * (dp * keep - tile_d[r]);
            for (var i = 0u; i < HS4; i++) {
                dv[i] += (pr * keep) * tile_g[r * HS4 + i];
                dk[i] += ds * tile_q[r * HS4 + i];
            }
        }
    }
    if (live) {
        let a = p.off.o0 + (blk.b * p.T + j) * 3u * p.C + p.C + blk.h * hs;
        for (var i = 0u; i < HS4; i++) {
            if (i < hs4) {
                add_dqkv(a + 4u * i, dk[i] * scale);
                add_dqkv(a + p.C + 4u * i, dv[i]);
            }
        }
    }
}
