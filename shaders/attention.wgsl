// attention.wgsl: causal multi-head self-attention (GPT-2 style, llm.c layout).
// qkv row (b,t) = [q (C) | k (C) | v (C)]; head h uses channels h*hs .. (h+1)*hs, hs = C / NH.
//   forward:  preatt[b,h,t,t2] = q[t] . k[t2] / sqrt(hs)      for t2 <= t (0 above the diagonal)
//             att[b,h,t,:]     = softmax over t2 <= t          (0 above the diagonal)
//             out[b,t,h*hs+i]  = sum_t2 att[b,h,t,t2] v[t2,i]
//   backward: datt[t,t2]    += dout[t] . v[t2]
//             dpreatt[t,t3] += att[t,t3] (datt[t,t3] - sum_t2 att[t,t2] datt[t,t2])   (softmax)
//             dq[t]  += sum_t2 dpreatt[t,t2] k[t2] / sqrt(hs)
//             dk[t2] += sum_t dpreatt[t,t2] q[t] / sqrt(hs);  dv[t2] += sum_t att[t,t2] dout[t]
// The backward is split in two passes so that no two invocations write the same element:
// attention_backward_query owns row t (datt, dpreatt, dq), attention_backward_key_value owns
// column t2 (dk, dv).
// Dropout on the attention probabilities (THR > 0): out = (att * m) v with m[b,h,t,t2] = 0 or
// 1/(1-p) from the prelude's hash (site SITE, sample key[2] + S0 + b, element (h T + t) T + t2);
// att keeps the probabilities before dropout. The backward scales datt[t,t2] and the dv terms by
// the same m (datt is then the gradient of the probabilities before dropout).
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

// attention_forward(out [B,T,C], preatt [B,NH,T,T], att [B,NH,T,T], qkv [B,T,3C])
@group(0) @binding(1) var<storage, read_write> out: array<act>;
@group(0) @binding(2) var<storage, read_write> preatt: array<act>;
@group(0) @binding(3) var<storage, read_write> att: array<act>;
@group(0) @binding(4) var<storage, read_write> qkv: array<act>;
@group(0) @binding(5) var<storage, read> key_f: array<u32>; // dropout key [seed, step, sample0, 0]

// attention_backward(dqkv [B,T,3C], dpreatt [B,NH,T,T], datt [B,NH,T,T], dout [B,T,C],
//                    qkv [B,T,3C], att [B,NH,T,T])
@group(0) @binding(9) var<storage, read_write> dqkv: array<act>;
@group(0) @binding(10) var<storage, read_write> dpreatt: array<act>;
@group(0) @binding(11) var<storage, read_write> datt: array<act>;
@group(0) @binding(12) var<storage, read_write> dout: array<act>;
@group(0) @binding(13) var<storage, read> b_qkv: array<act>;
@group(0) @binding(14) var<storage, read> b_att: array<act>;
@group(0) @binding(15) var<storage, read> key_b: array<u32>;

const WG: u32 = 64u;

// dropout streams of sequence b of the part (forward: key at o4; backward: key at o6)
fn stream_f(b: u32) -> u32 {
    if (p.THR == 0u) { return 0u; }
    return dropout_stream(key_f[p.off.o4], key_f[p.off.o4 + 1u], p.SITE, key_f[p.off.o4 + 2u] + p.S0 + b);
}
fn stream_b(b: u32) -> u32 {
    if (p.THR == 0u) { return 0u; }
    return dropout_stream(key_b[p.off.o6], key_b[p.off.o6 + 1u], p.SITE, key_b[p.off.o6 + 2u] + p.S0 + b);
}

// one invocation per (b, h, t) query row
@compute @workgroup_size(64)
fn attention_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                     @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, n, l);
    if (idx >= p.B * p.NH * p.T) { return; }
    let t = idx % p.T;
    let h = (idx / p.T) % p.NH;
    let b = idx / (p.T * p.NH);
    let C3 = 3u * p.C;
    let hs = p.C / p.NH;
    let scale = 1.0 / sqrt(f32(hs));
    let q = p.off.o3 + (b * p.T + t) * C3 + h * hs;
    let row = (idx) * p.T; // (b*NH + h)*T + t, times T
    var maxv = -3.4028234e38;
    for (var t2 = 0u; t2 <= t; t2++) {
        let k = p.off.o3 + (b * p.T + t2) * C3 + p.C + h * hs;
        var s = 0.0;
        for (var i = 0u; i < hs; i++) { s += f32(qkv[q + i]) * f32(qkv[k + i]); }
        s *= scale;
        preatt[p.off.o1 + row + t2] = act(s);
        maxv = max(maxv, s);
    }
    var sum = 0.0;
    for (var t2 = 0u; t2 <= t; t2++) {
        let e = exp(f32(preatt[p.off.o1 + row + t2]) - maxv);
        att[p.off.o2 + row + t2] = act(e);
        sum += e;
    }
    let inv = 1.0 / sum;
    for (var t2 = 0u; t2 < p.T; t2++) {
        if (t2 <= t) {
            att[p.off.o2 + row + t2] = act(f32(att[p.off.o2 + row + t2]) * inv);
        } else {
            att[p.off.o2 + row + t2] = 0.0;
            preatt[p.off.o1 + row + t2] = 0.0;
        }
    }
    let o = p.off.o0 + (b * p.T + t) * p.C + h * hs;
    let ds = stream_f(b);
    let e0 = (h * p.T + t) * p.T;
    for (var i = 0u; i < hs; i++) {
        var acc = 0.0;
        for (var t2 = 0u; t2 <= t; t2++) {
            let m = dropout_factor(ds, e0 + t2, p.THR, p.SCALE);
            acc += f32(att[p.off.o2 + row + t2]) * m * f32(qkv[p.off.o3 + (b * p.T + t2) * C3 + 2u * p.C + h * hs + i]);
        }
        out[o + i] = act(acc);
    }
}

// one invocation per (b, h, t) query row: datt, dpreatt, dq
@compute @workgroup_size(64)
fn attention_backward_query(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                            @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, n, l);
    if (idx >= p.B * p.NH * p.T) { return; }
    let t = idx % p.T;
    let h = (idx / p.T) % p.NH;
    let b = idx / (p.T * p.NH);
    let C3 = 3u * p.C;
    let hs = p.C / p.NH;
    let scale = 1.0 / sqrt(f32(hs));
    let row = idx * p.T;
    let g = p.off.o3 + (b * p.T + t) * p.C + h * hs;
    // datt[t, t2] += m[t, t2] (dout[t] . v[t2])
    let ds = stream_b(b);
    let e0 = (h * p.T + t) * p.T;
    for (var t2 = 0u; t2 <= t; t2++) {
        let v = p.off.o4 + (b * p.T + t2) * C3 + 2u * p.C + h * hs;
        var s = 0.0;
        for (var i = 0u; i < hs; i++) { s += f32(dout[g + i]) * f32(b_qkv[v + i]); }
        datt[p.off.o2 + row + t2] = act(f32(datt[p.off.o2 + row + t2]) + s * dropout_factor(ds, e0 + t2, p.THR, p.SCALE));
    }
    // softmax backward with the full (accumulated) datt row
    var dot_ad = 0.0;
    for (var t2 = 0u; t2 <= t; t2++) { dot_ad += f32(b_att[p.off.o5 + row + t2]) * f32(datt[p.off.o2 + row + t2]); }
    for (var t2 = 0u; t2 <= t; t2++) {
        let a = f32(b_att[p.off.o5 + row + t2]);
        dpreatt[p.off.o1 + row + t2] = act(f32(dpreatt[p.off.o1 + row + t2]) + a * (f32(datt[p.off.o2 + row + t2]) - dot_ad));
    }
    // dq[t] += sum_t2 dpreatt[t, t2] k[t2] * scale
    let dq = p.off.o0 + (b * p.T + t) * C3 + h * hs;
    for (var i = 0u; i < hs; i++) {
        var s = 0.0;
        for (var t2 = 0u; t2 <= t; t2++) {
            s += f32(dpreatt[p.off.o1 + row + t2]) * f32(b_qkv[p.off.o4 + (b * p.T + t2) * C3 + p.C + h * hs + i]);
        }
        dqkv[dq + i] = act(f32(dqkv[dq + i]) + s * scale);
    }
}

// one invocation per (b, h, t2) key/value row: dk, dv (reads the dpreatt of the pass above)
@compute @workgroup_size(64)
fn attention_backward_key_value(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                                @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, n, l);
    if (idx >= p.B * p.NH * p.T) { return; }
    let t2 = idx % p.T;
    let h = (idx / p.T) % p.NH;
    let b = idx / (p.T * p.NH);
    let bh = b * p.NH + h;
    let C3 = 3u * p.C;
    let hs = p.C / p.NH;
    let scale = 1.0 / sqrt(f32(hs));
    let dk = p.off.o0 + (b * p.T + t2) * C3 + p.C + h * hs;
    let dv = dk + p.C;
    let ds = stream_b(b);
    for (var i = 0u; i < hs; i++) {
        var sk = 0.0;
        var sv = 0.0;
        for (var t = t2; t < p.T; t++) {
            let r = (bh * p.T + t) * p.T + t2;
            let m = dropout_factor(ds, (h * p.T + t) * p.T + t2, p.THR, p.SCALE);
            sk += f32(dpreatt[p.off.o1 + r]) * f32(b_qkv[p.off.o4 + (b * p.T + t) * C3 + h * hs + i]);
            sv += f32(b_att[p.off.o5 + r]) * m * f32(dout[p.off.o3 + (b * p.T + t) * p.C + h * hs + i]);
        }
        dqkv[dk + i] = act(f32(dqkv[dk + i]) + sk * scale);
        dqkv[dv + i] = act(f32(dqkv[dv + i]) + sv);
    }
}
