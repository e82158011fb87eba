// matmul_cpu.wgsl: the linear layer, CPU-adapter variant (lavapipe, llvmpipe, WARP).
// Each invocation computes a 4x8 block of outputs from vec4 loads straight from the buffers: no
// workgroup memory and no barriers, which are expensive when invocations are SIMD lanes of a CPU
// core (measured on lavapipe at 1024^3: ~12 GFLOP/s here vs ~0.5 for 16x16 shared tiles).
//   forward:  out[M,N] = inp[M,K] . weight[N,K]^T + bias[N]
//   backward: dinp[M,K] += dout[M,N] . weight[N,K];  dweight[N,K] += dout^T . inp
// Requires K % 4 == 0 and the offsets of the vec4 operands to be multiples of 4 (the launcher
// falls back to matmul.wgsl otherwise). M and N are arbitrary: loads clamp, stores are guarded.
// The bias gradient is matmul.wgsl's matmul_backward_bias.
// matmul_forward_cpu's flags (Params.flags):
//   bit 0: add the bias;
//   bit 1: also write aux = GELU(out) (the MLP's GELU fused into its first matmul);
//   bit 2: accumulate, out += inp . weight^T. With weight = W^T (transpose_cpu) this is the input
//          gradient dinp += dout . W in the forward kernel's loop order, which keeps its speed at
//          small M where matmul_backward_input_cpu_v4 loses it (measured: `gradscope bench`);
//   bit 3 (with bit 2): out += GELU'(aux) * (inp . weight^T), the GELU backward of a gradient that
//          starts at zero fused into the second MLP matmul's input gradient.
// GELU uses gelu.wgsl's formulas, applied to values rounded to `act` exactly as the separate
// passes store them.
// Activations (out, inp, dinp, dout, dout4) are `act`: f32, or f16 in the mixed-precision
// instantiation of this file (converted to f32 as loaded); weight, bias and their gradients stay
// f32, and the register blocks are f32.

alias act = f32;

struct Params {
    off: Offsets,
    M: u32, K: u32, N: u32,
    flags: u32, // matmul_forward_cpu: bit 0 bias, bit 1 GELU out, bit 2 accumulate, bit 3 GELU backward
}
@group(0) @binding(0) var<uniform> p: Params;

// matmul_forward(out [M,N], inp [M,K], weight [N,K], bias [N])
@group(0) @binding(1) var<storage, read_write> out: array<act>;
@group(0) @binding(2) var<storage, read_write> inp: array<vec4<act>>;
@group(0) @binding(3) var<storage, read> weight: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
// the GELU output (flag bit 1) or the GELU input (flag bit 3), [M,N] like out
@group(0) @binding(5) var<storage, read_write> aux: array<act>;
// transpose_cpu(weight [N,K] at binding 3) -> weight_t [K,N]
@group(0) @binding(6) var<storage, read_write> weight_t: array<f32>;

// matmul_backward(dinp [M,K], dweight [N,K], dbias [N], dout [M,N], inp [M,K], weight [N,K])
@group(0) @binding(9) var<storage, read_write> dinp: array<vec4<act>>;
@group(0) @binding(10) var<storage, read_write> dweight: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> dout: array<act>;
@group(0) @binding(13) var<storage, read> b_inp: array<vec4<act>>;
@group(0) @binding(14) var<storage, read> b_weight: array<vec4<f32>>;
// the same dout read as vec4 along N (N % 4 == 0): the *_v4 entries get dout twice
@group(0) @binding(15) var<storage, read_write> dout4: array<vec4<act>>;

// 16 invocations per workgroup (two 8-wide SIMD rows on lavapipe): smaller work items than 64
// leave less idle time at the end of each dispatch when 2 threads share few workgroups
// (`gradscope bench`: +7% tokens/s at B 16 x K 4, +10% at B 64 x K 1 against 64).
const WG: u32 = 16u;


// invocation -> block of rows m0..m0+4 and columns n0..n0+8; acc_j holds column n0+j of 4 rows
@compute @workgroup_size(WG)
fn matmul_forward_cpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
                      @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, nw, l);
    let nbn = (p.N + 7u) / 8u;
    let nbm = (p.M + 3u) / 4u;
    if (idx >= nbn * nbm) { return; }
    let m0 = (idx / nbn) * 4u;
    let n0 = (idx % nbn) * 8u;
    let K4 = p.K / 4u;
    // row starts in vec4 units, clamped so tail blocks read valid memory
    let a0 = p.off.o1 / 4u + min(m0, p.M - 1u) * K4;
    let a1 = p.off.o1 / 4u + min(m0 + 1u, p.M - 1u) * K4;
    let a2 = p.off.o1 / 4u + min(m0 + 2u, p.M - 1u) * K4;
    let a3 = p.off.o1 / 4u + min(m0 + 3u, p.M - 1u) * K4;
    let b0 = p.off.o2 / 4u + min(n0, p.N - 1u) * K4;
    let b1 = p.off.o2 / 4u + min(n0 + 1u, p.N - 1u) * K4;
    let b2 = p.off.o2 / 4u + min(n0 + 2u, p.N - 1u) * K4;
    let b3 = p.off.o2 / 4u + min(n0 + 3u, p.N - 1u) * K4;
    let b4 = p.off.o2 / 4u + min(n0 + 4u, p.N - 1u) * K4;
    let b5 = p.off.o2 / 4u + min(n0 + 5u, p.N - 1u) * K4;
    let b6 = p.off.o2 / 4u + min(n0 + 6u, p.N - 1u) * K4;
    let b7 = p.off.o2 / 4u + min(n0 + 7u, p.N - 1u) * K4;
    var acc0 = vec4<f32>(0.0); var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0); var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0); var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0); var acc7 = vec4<f32>(0.0);
    for (var k = 0u; k < K4; k++) {
        let x0 = vec4<f32>(inp[a0 + k]); let x1 = vec4<f32>(inp[a1 + k]);
        let x2 = vec4<f32>(inp[a2 + k]); let x3 = vec4<f32>(inp[a3 + k]);
        acc0 += dot4(x0, x1, x2, x3, weight[b0 + k]);
        acc1 += dot4(x0, x1, x2, x3, weight[b1 + k]);
        acc2 += dot4(x0, x1, x2, x3, weight[b2 + k]);
        acc3 += dot4(x0, x1, x2, x3, weight[b3 + k]);
        acc4 += dot4(x0, x1, x2, x3, weight[b4 + k]);
        acc5 += dot4(x0, x1, x2, x3, weight[b5 + k]);
        acc6 += dot4(x0, x1, x2, x3, weight[b6 + k]);
        acc7 += dot4(x0, x1, x2, x3, weight[b7 + k]);
    }
    var cols = array<vec4<f32>, 8>(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7);
    for (var j = 0u; j < 8u; j++) {
        let n = n0 + j;
        if (n >= p.N) { break; }
        var bj = 0.0;
        if ((p.flags & 1u) != 0u) { bj = bias[p.off.o3 + n]; }
        let c = cols[j];
        for (var i = 0u; i < 4u; i++) {
            let m = m0 + i;
            if (m < p.M) {
                let e = m * p.N + n;
                if ((p.flags & 4u) != 0u) {
                    var g = c[i];
                    if ((p.flags & 8u) != 0u) { g = gelu_grad(f32(aux[p.off.o4 + e])) * f32(act(c[i])); }
                    out[p.off.o0 + e] = act(f32(out[p.off.o0 + e]) + g);
                } else {
                    let v = act(c[i] + bj);
                    out[p.off.o0 + e] = v;
                    if ((p.flags & 2u) != 0u) { aux[p.off.o4 + e] = act(gelu(f32(v))); }
                }
            }
        }
    }
}

// dinp[m, k] += sum_n dout[m, n] weight[n, k]
// invocation -> rows m0..m0+4, columns k0..k0+8 (two vec4); loop over n
@compute @workgroup_size(WG)
fn matmul_backward_input_cpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
                             @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, nw, l);
    let K4 = p.K / 4u;
    let nbk = (K4 + 1u) / 2u;
    let nbm = (p.M + 3u) / 4u;
    if (idx >= nbk * nbm) { return; }
    let m0 = (idx / nbk) * 4u;
    let k0 = (idx % nbk) * 2u;                // in vec4 units
    let k1 = min(k0 + 1u, K4 - 1u);           // clamped second vec4 column
    let r0 = p.off.o3 + min(m0, p.M - 1u) * p.N;
    let r1 = p.off.o3 + min(m0 + 1u, p.M - 1u) * p.N;
    let r2 = p.off.o3 + min(m0 + 2u, p.M - 1u) * p.N;
    let r3 = p.off.o3 + min(m0 + 3u, p.M - 1u) * p.N;
    let wb = p.off.o5 / 4u;
    var c00 = vec4<f32>(0.0); var c01 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0); var c11 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0); var c21 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0); var c31 = vec4<f32>(0.0);
    for (var n = 0u; n < p.N; n++) {
        let w0 = b_weight[wb + n * K4 + k0];
        let w1 = b_weight[wb + n * K4 + k1];
        let d0 = f32(dout[r0 + n]); let d1 = f32(dout[r1 + n]);
        let d2 = f32(dout[r2 + n]); let d3 = f32(dout[r3 + n]);
        c00 += d0 * w0; c01 += d0 * w1;
        c10 += d1 * w0; c11 += d1 * w1;
        c20 += d2 * w0; c21 += d2 * w1;
        c30 += d3 * w0; c31 += d3 * w1;
    }
    let ob = p.off.o0 / 4u;
    let second = k0 + 1u < K4;
    if (m0 < p.M) {
        let e = ob + m0 * K4 + k0;
        dinp[e] = vec4<act>(vec4<f32>(dinp[e]) + c00);
        if (second) { dinp[e + 1u] = vec4<act>(vec4<f32>(dinp[e + 1u]) + c01); }
    }
    if (m0 + 1u < p.M) {
        let e = ob + (m0 + 1u) * K4 + k0;
        dinp[e] = vec4<act>(vec4<f32>(dinp[e]) + c10);
        if (second) { dinp[e + 1u] = vec4<act>(vec4<f32>(dinp[e + 1u]) + c11); }
    }
    if (m0 + 2u < p.M) {
        let e = ob + (m0 + 2u) * K4 + k0;
        dinp[e] = vec4<act>(vec4<f32>(dinp[e]) + c20);
        if (second) { dinp[e + 1u] = vec4<act>(vec4<f32>(dinp[e + 1u]) + c21); }
    }
    if (m0 + 3u < p.M) {
        let e = ob + (m0 + 3u) * K4 + k0;
        dinp[e] = vec4<act>(vec4<f32>(dinp[e]) + c30);
        if (second) { dinp[e + 1u] = vec4<act>(vec4<f32>(dinp[e + 1u]) + c31); }
    }
}

// dweight[n, k] += sum_m dout[m, n] inp[m, k]
// invocation -> rows n0..n0+4 of dweight, columns k0..k0+8 (two vec4); loop over m
@compute @workgroup_size(WG)
fn matmul_backward_weight_cpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
                              @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, nw, l);
    let K4 = p.K / 4u;
    let nbk = (K4 + 1u) / 2u;
    let nbn = (p.N + 3u) / 4u;
    if (idx >= nbk * nbn) { return; }
    let n0 = (idx / nbk) * 4u;
    let k0 = (idx % nbk) * 2u;
    let k1 = min(k0 + 1u, K4 - 1u);
    let q0 = min(n0, p.N - 1u);
    let q1 = min(n0 + 1u, p.N - 1u);
    let q2 = min(n0 + 2u, p.N - 1u);
    let q3 = min(n0 + 3u, p.N - 1u);
    let xb = p.off.o4 / 4u;
    var c00 = vec4<f32>(0.0); var c01 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0); var c11 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0); var c21 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0); var c31 = vec4<f32>(0.0);
    for (var m = 0u; m < p.M; m++) {
        let x0 = vec4<f32>(b_inp[xb + m * K4 + k0]);
        let x1 = vec4<f32>(b_inp[xb + m * K4 + k1]);
        let r = p.off.o3 + m * p.N;
        let d0 = f32(dout[r + q0]); let d1 = f32(dout[r + q1]);
        let d2 = f32(dout[r + q2]); let d3 = f32(dout[r + q3]);
        c00 += d0 * x0; c01 += d0 * x1;
        c10 += d1 * x0; c11 += d1 * x1;
        c20 += d2 * x0; c21 += d2 * x1;
        c30 += d3 * x0; c31 += d3 * x1;
    }
    let ob = p.off.o1 / 4u;
    let second = k0 + 1u < K4;
    if (n0 < p.N) {
        dweight[ob + n0 * K4 + k0] += c00;
        if (second) { dweight[ob + n0 * K4 + k0 + 1u] += c01; }
    }
    if (n0 + 1u < p.N) {
        dweight[ob + (n0 + 1u) * K4 + k0] += c10;
        if (second) { dweight[ob + (n0 + 1u) * K4 + k0 + 1u] += c11; }
    }
    if (n0 + 2u < p.N) {
        dweight[ob + (n0 + 2u) * K4 + k0] += c20;
        if (second) { dweight[ob + (n0 + 2u) * K4 + k0 + 1u] += c21; }
    }
    if (n0 + 3u < p.N) {
        dweight[ob + (n0 + 3u) * K4 + k0] += c30;
        if (second) { dweight[ob + (n0 + 3u) * K4 + k0 + 1u] += c31; }
    }
}

// dinp[m, k] += sum_n dout[m, n] weight[n, k], reading dout as vec4 along n (N % 4 == 0):
// per 4 n, 4 dout loads and 8 weight loads feed 32 vec4 multiply-adds (as the forward kernel).
@compute @workgroup_size(WG)
fn matmul_backward_input_cpu_v4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
                                @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, nw, l);
    let K4 = p.K / 4u;
    let N4 = p.N / 4u;
    let nbk = (K4 + 1u) / 2u;
    let nbm = (p.M + 3u) / 4u;
    if (idx >= nbk * nbm) { return; }
    let m0 = (idx / nbk) * 4u;
    let k0 = (idx % nbk) * 2u;
    let k1 = min(k0 + 1u, K4 - 1u);
    let r0 = p.off.o6 / 4u + min(m0, p.M - 1u) * N4;
    let r1 = p.off.o6 / 4u + min(m0 + 1u, p.M - 1u) * N4;
    let r2 = p.off.o6 / 4u + min(m0 + 2u, p.M - 1u) * N4;
    let r3 = p.off.o6 / 4u + min(m0 + 3u, p.M - 1u) * N4;
    let wb = p.off.o5 / 4u;
    var c00 = vec4<f32>(0.0); var c01 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0); var c11 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0); var c21 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0); var c31 = vec4<f32>(0.0);
    for (var n4 = 0u; n4 < N4; n4++) {
        let d0 = vec4<f32>(dout4[r0 + n4]); let d1 = vec4<f32>(dout4[r1 + n4]);
        let d2 = vec4<f32>(dout4[r2 + n4]); let d3 = vec4<f32>(dout4[r3 + n4]);
        let n = n4 * 4u;
        let wa0 = b_weight[wb + n * K4 + k0];        let wb0 = b_weight[wb + n * K4 + k1];
        let wa1 = b_weight[wb + (n + 1u) * K4 + k0]; let wb1 = b_weight[wb + (n + 1u) * K4 + k1];
        let wa2 = b_weight[wb + (n + 2u) * K4 + k0]; let wb2 = b_weight[wb + (n + 2u) * K4 + k1];
        let wa3 = b_weight[wb + (n + 3u) * K4 + k0]; let wb3 = b_weight[wb + (n + 3u) * K4 + k1];
        c00 += d0.x * wa0 + d0.y * wa1 + d0.z * wa2 + d0.w * wa3;
        c01 += d0.x * wb0 + d0.y * wb1 + d0.z * wb2 + d0.w * wb3;
        c10 += d1.x * wa0 + d1.y * wa1 + d1.z * wa2 + d1.w * wa3;
        c11 += d1.x * wb0 + d1.y * wb1 + d1.z * wb2 + d1.w * wb3;
        c20 += d2.x * wa0 + d2.y * wa1 + d2.z * wa2 + d2.w * wa3;
        c21 += d2.x * wb0 + d2.y * wb1 + d2.z * wb2 + d2.w * wb3;
        c30 += d3.x * wa0 + d3.y * wa1 + d3.z * wa2 + d3.w * wa3;
        c31 += d3.x * wb0 + d3.y * wb1 + d3.z * wb2 + d3.w * wb3;
    }
    let second = k0 + 1u < K4;
    var lo = array<vec4<f32>, 4>(c00, c10, c20, c30);
    var hi = array<vec4<f32>, 4>(c01, c11, c21, c31);
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + i;
        if (m >= p.M) { break; }
        add_dinp(m * K4 + k0, lo[i]);
        if (second) { add_dinp(m * K4 + k0 + 1u, hi[i]); }
    }
}

// dinp[e] += c (e in vec4 units from o0)
fn add_dinp(e: u32, c: vec4<f32>) {
    let d = p.off.o0 / 4u + e;
    dinp[d] = vec4<act>(vec4<f32>(dinp[d]) + c);
}

// weight_t [K,N] = weight [N,K]^T: one invocation per vec4 of weight (K % 4 == 0)
@compute @workgroup_size(WG)
fn transpose_cpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
                 @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, nw, l);
    let K4 = p.K / 4u;
    if (idx >= p.N * K4) { return; }
    let n = idx / K4;
    let k = (idx % K4) * 4u;
    let v = weight[p.off.o2 / 4u + idx];
    weight_t[p.off.o5 + k * p.N + n] = v.x;
    weight_t[p.off.o5 + (k + 1u) * p.N + n] = v.y;
    weight_t[p.off.o5 + (k + 2u) * p.N + n] = v.z;
    weight_t[p.off.o5 + (k + 3u) * p.N + n] = v.w;
}

// dweight[n, k] += sum_m dout[m, n] inp[m, k], reading dout[m, n0..n0+4] as one vec4
// (N % 4 == 0): 3 loads per 8 vec4 multiply-adds instead of 6.
@compute @workgroup_size(WG)
fn matmul_backward_weight_cpu_v4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
                                 @builtin(local_invocation_index) l: u32) {
    let idx = flat(w, nw, l);
    let K4 = p.K / 4u;
    let N4 = p.N / 4u;
    let nbk = (K4 + 1u) / 2u;
    if (idx >= nbk * N4) { return; }
    let n4 = idx / nbk;
    let n0 = n4 * 4u;
    let k0 = (idx % nbk) * 2u;
    let k1 = min(k0 + 1u, K4 - 1u);
    let xb = p.off.o4 / 4u;
    let db = p.off.o6 / 4u;
    var c00 = vec4<f32>(0.0); var c01 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0); var c11 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0); var c21 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0); var c31 = vec4<f32>(0.0);
    for (var m = 0u; m < p.M; m++) {
        let x0 = vec4<f32>(b_inp[xb + m * K4 + k0]);
        let x1 = vec4<f32>(b_inp[xb + m * K4 + k1]);
        let d = vec4<f32>(dout4[db + m * N4 + n4]);
        c00 += d.x * x0; c01 += d.x * x1;
        c10 += d.y * x0; c11 += d.y * x1;
        c20 += d.z * x0; c21 += d.z * x1;
        c30 += d.w * x0; c31 += d.w * x1;
    }
    let ob = p.off.o1 / 4u;
    let second = k0 + 1u < K4;
    dweight[ob + n0 * K4 + k0] += c00;
    dweight[ob + (n0 + 1u) * K4 + k0] += c10;
    dweight[ob + (n0 + 2u) * K4 + k0] += c20;
    dweight[ob + (n0 + 3u) * K4 + k0] += c30;
    if (second) {
        dweight[ob + n0 * K4 + k0 + 1u] += c01;
        dweight[ob + (n0 + 1u) * K4 + k0 + 1u] += c11;
        dweight[ob + (n0 + 2u) * K4 + k0 + 1u] += c21;
        dweight[ob + (n0 + 3u) * K4 + k0 + 1u] += c31;
    }
}
