// attention_cpu.wgsl: the kernels of attention.wgsl for CPU adapters: q, k, v, dout and dqkv are
// read and written as vec4 along the head dimension (4 channels per load, no workgroup memory, no
// barriers), and each output row is accumulated in vec4 registers with the key loop inside, so
// the attention row is walked hs/4 times instead of hs times. Same math, same outputs, same
// bindings order as attention.wgsl. Needs C % 4 == 0, (C / NH) % 4 == 0 and 4-aligned offsets
// o0, o3 (and o4 in the backward); the launcher falls back to attention.wgsl otherwise.
// Every tensor is `act`: f32, or f16 in the mixed-precision instantiation of this file (converted
// to f32 as loaded); the arithmetic is f32.

alias act = f32;

struct Params {
    o0: u32, o1: u32, o2: u32, o3: u32, o4: u32, o5: u32, o6: u32, o7: u32,
    B: u32, T: u32, C: u32, NH: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

// attention_forward_cpu(out [B,T,C], preatt [B,NH,T,T], att [B,NH,T,T], qkv [B,T,3C])
@group(0) @binding(1) var<storage, read_write> out4: array<vec4<act>>;
@group(0) @binding(2) var<storage, read_write> preatt: array<act>;
@group(0) @binding(3) var<storage, read_write> att: array<act>;
@group(0) @binding(4) var<storage, read_write> qkv4: array<vec4<act>>;

// attention_backward_*_cpu(dqkv [B,T,3C], dpreatt [B,NH,T,T], datt [B,NH,T,T], dout [B,T,C],
//                          qkv [B,T,3C], att [B,NH,T,T])
@group(0) @binding(9) var<storage, read_write> dqkv4: array<vec4<act>>;
@group(0) @binding(10) var<storage, read_write> dpreatt: array<act>;
@group(0) @binding(11) var<storage, read_write> datt: array<act>;
@group(0) @binding(12) var<storage, read_write> dout4: array<vec4<act>>;
@group(0) @binding(13) var<storage, read_write> b_qkv4: array<vec4<act>>;
@group(0) @binding(14) var<storage, read_write> b_att: array<act>;

const WG: u32 = 64u;
fn flat(w: vec3<u32>, n: vec3<u32>, l: u32) -> u32 { return (w.x + w.y * n.x) * WG + l; }

// vec4 index of channel 0 of head h in part `part` (0 q, 1 k, 2 v) of qkv row (b, t), from base o
fn qkv_at(o: u32, b: u32, t: u32, part: u32, h: u32) -> u32 {
    let hs = p.C / p.NH;
    return (o + (b * p.T + t) * 3u * p.C + part * p.C + h * hs) / 4u;
}

// one invocation per (b, h, t) query row
@compute @workgroup_size(64)
fn attention_forward_cpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                         @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, n, l);
    if (idx >= p.B * p.NH * p.T) { return; }
    let t = idx % p.T;
    let h = (idx / p.T) % p.NH;
    let b = idx / (p.T * p.NH);
    let hs4 = p.C / p.NH / 4u;
    let scale = 1.0 / sqrt(f32(4u * hs4));
    let q = qkv_at(p.o3, b, t, 0u, h);
    let row = idx * p.T;
    var maxv = -3.4028234e38;
    for (var t2 = 0u; t2 <= t; t2++) {
        let k = qkv_at(p.o3, b, t2, 1u, h);
        var s4 = vec4<f32>(0.0);
        for (var i = 0u; i < hs4; i++) { s4 += vec4<f32>(qkv4[q + i]) * vec4<f32>(qkv4[k + i]); }
        let s = (s4.x + s4.y + s4.z + s4.w) * scale;
        preatt[p.o1 + row + t2] = act(s);
        maxv = max(maxv, s);
    }
    var sum = 0.0;
    for (var t2 = 0u; t2 <= t; t2++) {
        let e = exp(f32(preatt[p.o1 + row + t2]) - maxv);
        att[p.o2 + row + t2] = act(e);
        sum += e;
    }
    let inv = 1.0 / sum;
    for (var t2 = 0u; t2 <= t; t2++) {
        att[p.o2 + row + t2] = act(f32(att[p.o2 + row + t2]) * inv);
    }
    for (var t2 = t + 1u; t2 < p.T; t2++) {
        att[p.o2 + row + t2] = 0.0;
        preatt[p.o1 + row + t2] = 0.0;
    }
    let o = (p.o0 + (b * p.T + t) * p.C) / 4u + h * hs4;
    for (var i = 0u; i < hs4; i++) {
        var acc = vec4<f32>(0.0);
        for (var t2 = 0u; t2 <= t; t2++) {
            acc += f32(att[p.o2 + row + t2]) * vec4<f32>(qkv4[qkv_at(p.o3, b, t2, 2u, h) + i]);
        }
        out4[o + i] = vec4<act>(acc);
    }
}

// one invocation per (b, h, t) query row: datt, dpreatt, dq
@compute @workgroup_size(64)
fn attention_backward_query_cpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                                @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, n, l);
    if (idx >= p.B * p.NH * p.T) { return; }
    let t = idx % p.T;
    let h = (idx / p.T) % p.NH;
    let b = idx / (p.T * p.NH);
    let hs4 = p.C / p.NH / 4u;
    let scale = 1.0 / sqrt(f32(4u * hs4));
    let row = idx * p.T;
    let g = (p.o3 + (b * p.T + t) * p.C) / 4u + h * hs4;
    // datt[t, t2] += dout[t] . v[t2]
    for (var t2 = 0u; t2 <= t; t2++) {
        let v = qkv_at(p.o4, b, t2, 2u, h);
        var s4 = vec4<f32>(0.0);
        for (var i = 0u; i < hs4; i++) { s4 += vec4<f32>(dout4[g + i]) * vec4<f32>(b_qkv4[v + i]); }
        datt[p.o2 + row + t2] = act(f32(datt[p.o2 + row + t2]) + (s4.x + s4.y + s4.z + s4.w));
    }
    // softmax backward with the full (accumulated) datt row
    var dot_ad = 0.0;
    for (var t2 = 0u; t2 <= t; t2++) { dot_ad += f32(b_att[p.o5 + row + t2]) * f32(datt[p.o2 + row + t2]); }
    for (var t2 = 0u; t2 <= t; t2++) {
        let a = f32(b_att[p.o5 + row + t2]);
        dpreatt[p.o1 + row + t2] = act(f32(dpreatt[p.o1 + row + t2]) + a * (f32(datt[p.o2 + row + t2]) - dot_ad));
    }
    // dq[t] += sum_t2 dpreatt[t, t2] k[t2] * scale
    let dq = qkv_at(p.o0, b, t, 0u, h);
    for (var i = 0u; i < hs4; i++) {
        var s4 = vec4<f32>(0.0);
        for (var t2 = 0u; t2 <= t; t2++) {
            s4 += f32(dpreatt[p.o1 + row + t2]) * vec4<f32>(b_qkv4[qkv_at(p.o4, b, t2, 1u, h) + i]);
        }
        dqkv4[dq + i] = vec4<act>(vec4<f32>(dqkv4[dq + i]) + s4 * scale);
    }
}

// one invocation per (b, h, t2) key/value row: dk, dv (reads the dpreatt of the pass above)
@compute @workgroup_size(64)
fn attention_backward_key_value_cpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                                    @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, n, l);
    if (idx >= p.B * p.NH * p.T) { return; }
    let t2 = idx % p.T;
    let h = (idx / p.T) % p.NH;
    let b = idx / (p.T * p.NH);
    let bh = b * p.NH + h;
    let hs4 = p.C / p.NH / 4u;
    let scale = 1.0 / sqrt(f32(4u * hs4));
    let dk = qkv_at(p.o0, b, t2, 1u, h);
    let dv = qkv_at(p.o0, b, t2, 2u, h);
    for (var i = 0u; i < hs4; i++) {
        var sk = vec4<f32>(0.0);
        var sv = vec4<f32>(0.0);
        for (var t = t2; t < p.T; t++) {
            let r = (bh * p.T + t) * p.T + t2;
            sk += f32(dpreatt[p.o1 + r]) * vec4<f32>(b_qkv4[qkv_at(p.o4, b, t, 0u, h) + i]);
            sv += f32(b_att[p.o5 + r]) * vec4<f32>(dout4[(p.o3 + (b * p.T + t) * p.C) / 4u + h * hs4 + i]);
        }
        dqkv4[dk + i] = vec4<act>(vec4<f32>(dqkv4[dk + i]) + sk * scale);
        dqkv4[dv + i] = vec4<act>(vec4<f32>(dqkv4[dv + i]) + sv);
    }
}
