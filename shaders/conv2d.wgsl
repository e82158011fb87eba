// conv2d.wgsl: 2-D convolution, stride 1, zero padding PAD, NCHW layout; HO = H + 2 PAD - K + 1.
//   forward:  out[b,o,y,x] = bias[o] + sum_{i,ky,kx} weight[o,i,ky,kx] inp[b,i,y+ky-PAD,x+kx-PAD]
//   backward: dinp[b,i,iy,ix] += sum_{o,ky,kx} weight[o,i,ky,kx] dout[b,o,iy-ky+PAD,ix-kx+PAD]
//             dweight[o,i,ky,kx] += sum_{b,y,x} dout[b,o,y,x] inp[b,i,y+ky-PAD,x+kx-PAD]
//             dbias[o] += sum_{b,y,x} dout[b,o,y,x]
// Each backward output has one owner invocation that sums in a fixed order (no atomics).

struct Params {
    off: Offsets,
    B: u32, IC: u32, OC: u32, H: u32, W: u32, K: u32, PAD: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

// conv2d_forward(out [B,OC,HO,WO], inp [B,IC,H,W], weight [OC,IC,K,K], bias [OC])
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> inp: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

// conv2d_backward(dinp [B,IC,H,W], dweight [OC,IC,K,K], dbias [OC], dout [B,OC,HO,WO],
//                 inp [B,IC,H,W], weight [OC,IC,K,K])
@group(0) @binding(9) var<storage, read_write> dinp: array<f32>;
@group(0) @binding(10) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(11) var<storage, read_write> dbias: array<f32>;
@group(0) @binding(12) var<storage, read_write> dout: array<f32>;
@group(0) @binding(13) var<storage, read> b_inp: array<f32>;
@group(0) @binding(14) var<storage, read> b_weight: array<f32>;

const WG: u32 = 64u;
fn ho() -> u32 { return p.H + 2u * p.PAD + 1u - p.K; }
fn wo() -> u32 { return p.W + 2u * p.PAD + 1u - p.K; }

// one invocation per output element
@compute @workgroup_size(64)
fn conv2d_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                  @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, n, l);
    let HO = ho();
    let WO = wo();
    if (idx >= p.B * p.OC * HO * WO) { return; }
    let x = idx % WO;
    let y = (idx / WO) % HO;
    let o = (idx / (WO * HO)) % p.OC;
    let b = idx / (WO * HO * p.OC);
    var acc = bias[p.off.o3 + o];
    for (var i = 0u; i < p.IC; i++) {
        for (var ky = 0u; ky < p.K; ky++) {
            let iy = i32(y + ky) - i32(p.PAD);
            if (iy < 0 || iy >= i32(p.H)) { continue; }
            for (var kx = 0u; kx < p.K; kx++) {
                let ix = i32(x + kx) - i32(p.PAD);
                if (ix < 0 || ix >= i32(p.W)) { continue; }
                acc += weight[p.off.o2 + ((o * p.IC + i) * p.K + ky) * p.K + kx]
                     * inp[p.off.o1 + ((b * p.IC + i) * p.H + u32(iy)) * p.W + u32(ix)];
            }
        }
    }
    out[p.off.o0 + idx] = acc;
}

// Register-blocked variant: one invocation computes 4 output channels x 4 neighbouring columns,
// so each input value loaded serves 4 channels and each weight 4 columns (8 loads per 16
// multiply-adds instead of 32). Same results as conv2d_forward, same tests.
fn ld(row: u32, ix: i32) -> f32 {
    let inside = ix >= 0 && ix < i32(p.W);
    return select(0.0, inp[row + u32(clamp(ix, 0, i32(p.W) - 1))], inside);
}

@compute @workgroup_size(64)
fn conv2d_forward_x4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                     @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, n, l);
    let HO = ho();
    let WO = wo();
    let XG = (WO + 3u) / 4u;
    let OG = (p.OC + 3u) / 4u;
    if (idx >= p.B * OG * HO * XG) { return; }
    let xg = idx % XG;
    let y = (idx / XG) % HO;
    let og = (idx / (XG * HO)) % OG;
    let b = idx / (XG * HO * OG);
    let x0 = xg * 4u;
    let o0 = og * 4u;
    let KK = p.IC * p.K * p.K;
    let w0 = p.off.o2 + min(o0, p.OC - 1u) * KK;
    let w1 = p.off.o2 + min(o0 + 1u, p.OC - 1u) * KK;
    let w2 = p.off.o2 + min(o0 + 2u, p.OC - 1u) * KK;
    let w3 = p.off.o2 + min(o0 + 3u, p.OC - 1u) * KK;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var i = 0u; i < p.IC; i++) {
        for (var ky = 0u; ky < p.K; ky++) {
            let iy = i32(y + ky) - i32(p.PAD);
            if (iy < 0 || iy >= i32(p.H)) { continue; }
            let row = p.off.o1 + ((b * p.IC + i) * p.H + u32(iy)) * p.W;
            for (var kx = 0u; kx < p.K; kx++) {
                let wk = (i * p.K + ky) * p.K + kx;
                let ix = i32(x0 + kx) - i32(p.PAD);
                let v = vec4<f32>(ld(row, ix), ld(row, ix + 1), ld(row, ix + 2), ld(row, ix + 3));
                a0 += v * weight[w0 + wk];
                a1 += v * weight[w1 + wk];
                a2 += v * weight[w2 + wk];
                a3 += v * weight[w3 + wk];
            }
        }
    }
    var acc = array<vec4<f32>, 4>(a0, a1, a2, a3);
    for (var j = 0u; j < 4u; j++) {
        let o = o0 + j;
        if (o >= p.OC) { break; }
        let bj = bias[p.off.o3 + o];
        let base = p.off.o0 + ((b * p.OC + o) * HO + y) * WO;
        let a = acc[j];
        for (var xi = 0u; xi < 4u; xi++) {
            if (x0 + xi < WO) { out[base + x0 + xi] = a[xi] + bj; }
        }
    }
}

// one invocation per input element
@compute @workgroup_size(64)
fn conv2d_backward_input(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                         @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, n, l);
    if (idx >= p.B * p.IC * p.H * p.W) { return; }
    let HO = ho();
    let WO = wo();
    let ix = idx % p.W;
    let iy = (idx / p.W) % p.H;
    let i = (idx / (p.W * p.H)) % p.IC;
    let b = idx / (p.W * p.H * p.IC);
    var acc = 0.0;
    for (var o = 0u; o < p.OC; o++) {
        for (var ky = 0u; ky < p.K; ky++) {
            let y = i32(iy + p.PAD) - i32(ky);
            if (y < 0 || y >= i32(HO)) { continue; }
            for (var kx = 0u; kx < p.K; kx++) {
                let x = i32(ix + p.PAD) - i32(kx);
                if (x < 0 || x >= i32(WO)) { continue; }
                acc += b_weight[p.off.o5 + ((o * p.IC + i) * p.K + ky) * p.K + kx]
                     * dout[p.off.o3 + ((b * p.OC + o) * HO + u32(y)) * WO + u32(x)];
            }
        }
    }
    dinp[p.off.o0 + idx] += acc;
}

// Register-blocked input gradient: 4 input channels x 4 neighbouring columns per invocation.
fn ld_dout(row: u32, x: i32, WO: u32) -> f32 {
    let inside = x >= 0 && x < i32(WO);
    return select(0.0, dout[row + u32(clamp(x, 0, i32(WO) - 1))], inside);
}

@compute @workgroup_size(64)
fn conv2d_backward_input_x4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                            @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, n, l);
    let HO = ho();
    let WO = wo();
    let XG = (p.W + 3u) / 4u;
    let IG = (p.IC + 3u) / 4u;
    if (idx >= p.B * IG * p.H * XG) { return; }
    let xg = idx % XG;
    let iy = (idx / XG) % p.H;
    let ig = (idx / (XG * p.H)) % IG;
    let b = idx / (XG * p.H * IG);
    let x0 = xg * 4u;
    let i0 = ig * 4u;
    let KK = p.K * p.K;
    let c0 = min(i0, p.IC - 1u);
    let c1 = min(i0 + 1u, p.IC - 1u);
    let c2 = min(i0 + 2u, p.IC - 1u);
    let c3 = min(i0 + 3u, p.IC - 1u);
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var o = 0u; o < p.OC; o++) {
        let wo_ = p.off.o5 + o * p.IC * KK;
        for (var ky = 0u; ky < p.K; ky++) {
            let y = i32(iy + p.PAD) - i32(ky);
            if (y < 0 || y >= i32(HO)) { continue; }
            let row = p.off.o3 + ((b * p.OC + o) * HO + u32(y)) * WO;
            for (var kx = 0u; kx < p.K; kx++) {
                let x = i32(x0 + p.PAD) - i32(kx);
                let v = vec4<f32>(ld_dout(row, x, WO), ld_dout(row, x + 1, WO), ld_dout(row, x + 2, WO), ld_dout(row, x + 3, WO));
                let k = ky * p.K + kx;
                a0 += v * b_weight[wo_ + c0 * KK + k];
                a1 += v * b_weight[wo_ + c1 * KK + k];
                a2 += v * b_weight[wo_ + c2 * KK + k];
                a3 += v * b_weight[wo_ + c3 * KK + k];
            }
        }
    }
    var acc = array<vec4<f32>, 4>(a0, a1, a2, a3);
    for (var j = 0u; j < 4u; j++) {
        let i = i0 + j;
        if (i >= p.IC) { break; }
        let base = p.off.o0 + ((b * p.IC + i) * p.H + iy) * p.W;
        let a = acc[j];
        for (var xi = 0u; xi < 4u; xi++) {
            if (x0 + xi < p.W) { dinp[base + x0 + xi] += a[xi]; }
        }
    }
}

// one invocation per weight element
@compute @workgroup_size(64)
fn conv2d_backward_weight(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                          @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, n, l);
    if (idx >= p.OC * p.IC * p.K * p.K) { return; }
    let HO = ho();
    let WO = wo();
    let kx = idx % p.K;
    let ky = (idx / p.K) % p.K;
    let i = (idx / (p.K * p.K)) % p.IC;
    let o = idx / (p.K * p.K * p.IC);
    var acc = 0.0;
    for (var b = 0u; b < p.B; b++) {
        for (var y = 0u; y < HO; y++) {
            let iy = i32(y + ky) - i32(p.PAD);
            if (iy < 0 || iy >= i32(p.H)) { continue; }
            let drow = p.off.o3 + ((b * p.OC + o) * HO + y) * WO;
            let irow = p.off.o4 + ((b * p.IC + i) * p.H + u32(iy)) * p.W;
            for (var x = 0u; x < WO; x++) {
                let ix = i32(x + kx) - i32(p.PAD);
                if (ix < 0 || ix >= i32(p.W)) { continue; }
                acc += dout[drow + x] * b_inp[irow + u32(ix)];
            }
        }
    }
    dweight[p.off.o1 + idx] += acc;
}

// one invocation per output channel
@compute @workgroup_size(64)
fn conv2d_backward_bias(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                        @builtin(local_invocation_index) l: u32) {
    let o = flat(w, n, l);
    if (o >= p.OC) { return; }
    let HW = ho() * wo();
    var acc = 0.0;
    for (var b = 0u; b < p.B; b++) {
        let base = p.off.o3 + (b * p.OC + o) * HW;
        for (var k = 0u; k < HW; k++) { acc += dout[base + k]; }
    }
    dbias[p.off.o2 + o] += acc;
}
