// matmul_gpu.wgsl: the linear layer, GPU variant: register-blocked tiles in workgroup memory.
//   forward:  out[M,N] = inp[M,K] . weight[N,K]^T + bias[N]    (+ GELU, or += as below)
//   backward: dinp[M,K]    += dout[M,N] . weight[N,K]           (optionally times GELU'(pre))
//             dweight[N,K] += dout[M,N]^T . inp[M,K]
// Each kernel computes one BM x 64 block of C[i,j] (+)= sum_r A(i,r) B(r,j) per workgroup of 256
// invocations (16 x 16), each invocation a TM x 4 register block, walking r in slices of 16: the
// workgroup stages A's BM x 16 and B's 16 x 64 slice in workgroup memory with TM / 4 + 1 vec4
// loads per invocation, then every invocation does TM x 4 multiply-adds per r from TM / 4 + 1
// vec4 reads of workgroup memory. On a GPU this is what turns a memory-bound product into a
// compute-bound one (each loaded element feeds 64 multiply-adds, or 85 in the 128-row tile,
// instead of 1); on a CPU adapter barriers are expensive, and matmul_cpu.wgsl is the variant
// there. All variants pass the same tests.
// TM, the rows per invocation, is not declared in this file: the registry puts
// `const TM: u32 = 4u;` in front of it for `matmul_gpu` (64 x 64 blocks, 8 KiB of workgroup
// memory) and `const TM: u32 = 8u;` for `matmul_gpu_128x64` (128 x 64 blocks, 12 KiB, half the
// workgroup-memory reads per multiply-add of 64 x 64's, for large products on large GPUs:
// `gpu::kernels_gpu::MatmulTile`).
// Any shape: each operand has a vec4 binding and a scalar binding; the launcher binds the vec4
// one when the operand's contiguous dimension is a multiple of 4 and its offset is 4-aligned
// (flag bits 4 and 5 clear), the scalar one otherwise (4 guarded scalar loads instead of one
// vec4). Tile edges read zeros and stores are guarded, so M, N and K are arbitrary.
// Flags (Params.flags), numbered as matmul_cpu.wgsl's where they overlap (no accumulating
// forward here: the input gradient has its own kernel, so the weights need no transpose):
//   bit 0 (forward): add the bias;
//   bit 1 (forward): also write aux = GELU(out) (the MLP's GELU fused into its first matmul);
//   bit 3 (input gradient): dinp += GELU'(pre) * (dout . weight), the GELU backward of a gradient
//          that starts at zero fused into the second MLP matmul's input gradient;
//   bit 4: operand A is bound scalar; bit 5: operand B is bound scalar.
// GELU uses gelu.wgsl's formulas, applied to values rounded to `act` exactly as the separate
// passes store them. Activations are `act` (f32, or f16 in the mixed-precision instantiation,
// converted to f32 as loaded); weights, bias and their gradients, tiles and accumulators are f32.

alias act = f32;

struct Params {
    off: Offsets,
    M: u32, K: u32, N: u32,
    flags: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

// matmul_forward_gpu(out [M,N], inp [M,K], weight [N,K], bias [N], aux [M,N], inp, weight)
// A(i, r) = inp[i, r], B(r, j) = weight[j, r]: both contiguous along r.
@group(0) @binding(1) var<storage, read_write> out: array<act>;
@group(0) @binding(2) var<storage, read_write> inp4: array<vec4<act>>;
@group(0) @binding(3) var<storage, read> weight4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
// the GELU output (flag bit 1), [M,N] like out
@group(0) @binding(5) var<storage, read_write> aux: array<act>;
@group(0) @binding(6) var<storage, read_write> inp: array<act>;
@group(0) @binding(7) var<storage, read> weight: array<f32>;

// matmul_backward_input_gpu(dinp [M,K], dout [M,N] (vec4, scalar), weight [N,K] (vec4, scalar), pre [M,K])
// C(i = m, j = k), r = n: A(i, r) = dout[i, r] (contiguous along r), B(r, j) = weight[r, j] (along j).
@group(0) @binding(9) var<storage, read_write> dinp: array<act>;
@group(0) @binding(10) var<storage, read_write> bi_dout4: array<vec4<act>>;
@group(0) @binding(11) var<storage, read_write> bi_dout: array<act>;
@group(0) @binding(12) var<storage, read> bi_weight4: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read> bi_weight: array<f32>;
// the GELU input (flag bit 3), [M,K] like dinp
@group(0) @binding(14) var<storage, read> pre: array<act>;

// matmul_backward_weight_gpu(dweight [N,K], dout [M,N] (vec4, scalar), inp [M,K] (vec4, scalar))
// C(i = n, j = k), r = m: A(i, r) = dout[r, i] (contiguous along i), B(r, j) = inp[r, j] (along j).
@group(0) @binding(17) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(18) var<storage, read_write> bw_dout4: array<vec4<act>>;
@group(0) @binding(19) var<storage, read_write> bw_dout: array<act>;
@group(0) @binding(20) var<storage, read> bw_inp4: array<vec4<act>>;
@group(0) @binding(21) var<storage, read> bw_inp: array<act>;

// Block tile BM (i) x 64 (j), slices of 16 along r; 16 x 16 invocations with TM x 4 outputs each.
// invocations per workgroup (the prelude's `flat`; the tile kernels index by workgroup instead)
const WG: u32 = 256u;
const BM: u32 = 16u * TM;   // block rows
const BN: u32 = 64u;        // block columns
const BR: u32 = 16u;        // slice of r
const TQ: u32 = TM / 4u;    // row quads per invocation
const AQ: u32 = BM / 4u;    // row quads per r in ta
// ta[r * AQ + q] = A(i0 + 4q .. i0 + 4q + 4, r0 + r);  tb[r * 16 + q] = B(r0 + r, j0 + 4q .. + 4)
var<workgroup> ta: array<vec4<f32>, BR * AQ>;
var<workgroup> tb: array<vec4<f32>, 256>;


// Staging: slot L (0 <= L < BM * 4 for A, < 256 for B) holds 4 consecutive elements v of a
// slice; invocation l stages slots l (and l + 256 when TM is 8) of A and slot l of B.
// Operand contiguous along r (A: row i = L / 4, columns r = 4 (L % 4) ..; B likewise with j):
// scatter the 4 values over 4 rows of the tile.
fn put_a_along_r(L: u32, v: vec4<f32>) {
    let il = L / 4u;
    let r = (L % 4u) * 4u;
    let q = il / 4u;
    let c = il % 4u;
    ta[r * AQ + q][c] = v.x;
    ta[(r + 1u) * AQ + q][c] = v.y;
    ta[(r + 2u) * AQ + q][c] = v.z;
    ta[(r + 3u) * AQ + q][c] = v.w;
}
fn put_b_along_r(l: u32, v: vec4<f32>) {
    let jl = l / 4u;
    let r = (l % 4u) * 4u;
    let q = jl / 4u;
    let c = jl % 4u;
    tb[r * 16u + q][c] = v.x;
    tb[(r + 1u) * 16u + q][c] = v.y;
    tb[(r + 2u) * 16u + q][c] = v.z;
    tb[(r + 3u) * 16u + q][c] = v.w;
}
// Operand contiguous along i (or j): slot L holds row r = L / AQ (L / 16 for B), columns
// 4 (L % AQ) .., which is exactly slot L of the tile.

// acc[base + c] += a[c] * b for the 4 rows of one quad. `base` is a parameter, not a constant,
// so that the 4x4 instantiation compiles the 8x4 one's second quad (dead code there) at all.
fn fma_quad(acc: ptr<function, array<vec4<f32>, TM>>, base: u32, a: vec4<f32>, b: vec4<f32>) {
    (*acc)[base] += a.x * b;
    (*acc)[base + 1u] += a.y * b;
    (*acc)[base + 2u] += a.z * b;
    (*acc)[base + 3u] += a.w * b;
}
// acc[a] += row ty * TM + a of the A slice times columns tx * 4 .. + 4 of the B slice. The 16
// steps are written out: Mesa's CPU adapters count every loop iteration of an invocation against
// a limit of 65,535 (a loop here would count 16 per slice), and GPUs unroll it anyway.
fn mac(r: u32, tx: u32, ty: u32, acc: ptr<function, array<vec4<f32>, TM>>) {
    let b = tb[r * 16u + tx];
    let q = r * AQ + ty * TQ;
    fma_quad(acc, 0u, ta[q], b);
    if (TQ > 1u) { fma_quad(acc, 4u, ta[q + 1u], b); }
}
fn tile_product(tx: u32, ty: u32, acc: ptr<function, array<vec4<f32>, TM>>) {
    mac(0u, tx, ty, acc); mac(1u, tx, ty, acc); mac(2u, tx, ty, acc); mac(3u, tx, ty, acc);
    mac(4u, tx, ty, acc); mac(5u, tx, ty, acc); mac(6u, tx, ty, acc); mac(7u, tx, ty, acc);
    mac(8u, tx, ty, acc); mac(9u, tx, ty, acc); mac(10u, tx, ty, acc); mac(11u, tx, ty, acc);
    mac(12u, tx, ty, acc); mac(13u, tx, ty, acc); mac(14u, tx, ty, acc); mac(15u, tx, ty, acc);
}

// the slice position of slot L when the operand is contiguous along r: (row, r)
fn along_r(L: u32) -> vec2<u32> { return vec2<u32>(L / 4u, (L % 4u) * 4u); }
// ... and when it is contiguous along j: (r, column)
fn along_j(l: u32) -> vec2<u32> { return vec2<u32>(l / 16u, (l % 16u) * 4u); }

// forward: A(i, r..r+4) = inp[i, r..r+4], zero past M or K
fn fwd_a(i: u32, r: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (i >= p.M || r >= p.K) { return v; }
    if ((p.flags & 16u) == 0u) { return vec4<f32>(inp4[(p.off.o1 + i * p.K + r) / 4u]); }
    let e = p.off.o5 + i * p.K + r;
    v.x = f32(inp[e]);
    if (r + 1u < p.K) { v.y = f32(inp[e + 1u]); }
    if (r + 2u < p.K) { v.z = f32(inp[e + 2u]); }
    if (r + 3u < p.K) { v.w = f32(inp[e + 3u]); }
    return v;
}
// forward: B(r..r+4, j) = weight[j, r..r+4], zero past N or K
fn fwd_b(j: u32, r: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (j >= p.N || r >= p.K) { return v; }
    if ((p.flags & 32u) == 0u) { return weight4[(p.off.o2 + j * p.K + r) / 4u]; }
    let e = p.off.o6 + j * p.K + r;
    v.x = weight[e];
    if (r + 1u < p.K) { v.y = weight[e + 1u]; }
    if (r + 2u < p.K) { v.z = weight[e + 2u]; }
    if (r + 3u < p.K) { v.w = weight[e + 3u]; }
    return v;
}

// slot L of the forward's A slice
fn stage_fwd_a(L: u32, i0: u32, r0: u32) {
    let s = along_r(L);
    put_a_along_r(L, fwd_a(i0 + s.x, r0 + s.y));
}

// workgroup (x, y) -> the block of out with rows BM y .., columns 64 x ..
@compute @workgroup_size(256)
fn matmul_forward_gpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i0 = w.y * BM;
    let j0 = w.x * BN;
    let tx = l % 16u;
    let ty = l / 16u;
    let lb = along_r(l);
    var acc: array<vec4<f32>, TM>;
    for (var r0 = 0u; r0 < p.K; r0 += BR) {
        stage_fwd_a(l, i0, r0);
        if (TQ > 1u) { stage_fwd_a(l + WG, i0, r0); }
        put_b_along_r(l, fwd_b(j0 + lb.x, r0 + lb.y));
        workgroupBarrier();
        tile_product(tx, ty, &acc);
        workgroupBarrier();
    }
    for (var a = 0u; a < TM; a++) {
        let i = i0 + ty * TM + a;
        if (i >= p.M) { break; }
        let row = acc[a];
        for (var b = 0u; b < 4u; b++) {
            let j = j0 + tx * 4u + b;
            if (j >= p.N) { break; }
            let e = i * p.N + j;
            var bj = 0.0;
            if ((p.flags & 1u) != 0u) { bj = bias[p.off.o3 + j]; }
            let v = act(row[b] + bj);
            out[p.off.o0 + e] = v;
            if ((p.flags & 2u) != 0u) { aux[p.off.o4 + e] = act(gelu(f32(v))); }
        }
    }
}

// input gradient: A(i, r..r+4) = dout[i, r..r+4] (i < M, r < N)
fn bi_a(i: u32, r: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (i >= p.M || r >= p.N) { return v; }
    if ((p.flags & 16u) == 0u) { return vec4<f32>(bi_dout4[(p.off.o1 + i * p.N + r) / 4u]); }
    let e = p.off.o2 + i * p.N + r;
    v.x = f32(bi_dout[e]);
    if (r + 1u < p.N) { v.y = f32(bi_dout[e + 1u]); }
    if (r + 2u < p.N) { v.z = f32(bi_dout[e + 2u]); }
    if (r + 3u < p.N) { v.w = f32(bi_dout[e + 3u]); }
    return v;
}
// input gradient: B(r, j..j+4) = weight[r, j..j+4] (r < N, j < K)
fn bi_b(r: u32, j: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (r >= p.N || j >= p.K) { return v; }
    if ((p.flags & 32u) == 0u) { return bi_weight4[(p.off.o3 + r * p.K + j) / 4u]; }
    let e = p.off.o4 + r * p.K + j;
    v.x = bi_weight[e];
    if (j + 1u < p.K) { v.y = bi_weight[e + 1u]; }
    if (j + 2u < p.K) { v.z = bi_weight[e + 2u]; }
    if (j + 3u < p.K) { v.w = bi_weight[e + 3u]; }
    return v;
}

// slot L of the input gradient's A slice
fn stage_bi_a(L: u32, i0: u32, r0: u32) {
    let s = along_r(L);
    put_a_along_r(L, bi_a(i0 + s.x, r0 + s.y));
}

// dinp[m, k] += sum_n dout[m, n] weight[n, k]; workgroup (x, y) -> rows BM y .., columns 64 x ..
@compute @workgroup_size(256)
fn matmul_backward_input_gpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i0 = w.y * BM;
    let j0 = w.x * BN;
    let tx = l % 16u;
    let ty = l / 16u;
    let lb = along_j(l);
    var acc: array<vec4<f32>, TM>;
    for (var r0 = 0u; r0 < p.N; r0 += BR) {
        stage_bi_a(l, i0, r0);
        if (TQ > 1u) { stage_bi_a(l + WG, i0, r0); }
        tb[l] = bi_b(r0 + lb.x, j0 + lb.y);
        workgroupBarrier();
        tile_product(tx, ty, &acc);
        workgroupBarrier();
    }
    for (var a = 0u; a < TM; a++) {
        let i = i0 + ty * TM + a;
        if (i >= p.M) { break; }
        let row = acc[a];
        for (var b = 0u; b < 4u; b++) {
            let j = j0 + tx * 4u + b;
            if (j >= p.K) { break; }
            let e = i * p.K + j;
            var g = row[b];
            if ((p.flags & 8u) != 0u) { g = gelu_grad(f32(pre[p.off.o5 + e])) * f32(act(g)); }
            dinp[p.off.o0 + e] = act(f32(dinp[p.off.o0 + e]) + g);
        }
    }
}

// weight gradient: A(i..i+4, r) = dout[r, i..i+4] (r < M, i < N)
fn bw_a(r: u32, i: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (r >= p.M || i >= p.N) { return v; }
    if ((p.flags & 16u) == 0u) { return vec4<f32>(bw_dout4[(p.off.o1 + r * p.N + i) / 4u]); }
    let e = p.off.o2 + r * p.N + i;
    v.x = f32(bw_dout[e]);
    if (i + 1u < p.N) { v.y = f32(bw_dout[e + 1u]); }
    if (i + 2u < p.N) { v.z = f32(bw_dout[e + 2u]); }
    if (i + 3u < p.N) { v.w = f32(bw_dout[e + 3u]); }
    return v;
}
// weight gradient: B(r, j..j+4) = inp[r, j..j+4] (r < M, j < K)
fn bw_b(r: u32, j: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (r >= p.M || j >= p.K) { return v; }
    if ((p.flags & 32u) == 0u) { return vec4<f32>(bw_inp4[(p.off.o3 + r * p.K + j) / 4u]); }
    let e = p.off.o4 + r * p.K + j;
    v.x = f32(bw_inp[e]);
    if (j + 1u < p.K) { v.y = f32(bw_inp[e + 1u]); }
    if (j + 2u < p.K) { v.z = f32(bw_inp[e + 2u]); }
    if (j + 3u < p.K) { v.w = f32(bw_inp[e + 3u]); }
    return v;
}

// slot L of the weight gradient's A slice (contiguous along i: r = L / AQ, i = 4 (L % AQ) ..)
fn stage_bw_a(L: u32, i0: u32, r0: u32) {
    ta[L] = bw_a(r0 + L / AQ, i0 + (L % AQ) * 4u);
}

// dweight[n, k] += sum_m dout[m, n] inp[m, k]; workgroup (x, y) -> rows n BM y .., columns k 64 x ..
@compute @workgroup_size(256)
fn matmul_backward_weight_gpu(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i0 = w.y * BM;
    let j0 = w.x * BN;
    let tx = l % 16u;
    let ty = l / 16u;
    let lb = along_j(l);
    var acc: array<vec4<f32>, TM>;
    for (var r0 = 0u; r0 < p.M; r0 += BR) {
        stage_bw_a(l, i0, r0);
        if (TQ > 1u) { stage_bw_a(l + WG, i0, r0); }
        tb[l] = bw_b(r0 + lb.x, j0 + lb.y);
        workgroupBarrier();
        tile_product(tx, ty, &acc);
        workgroupBarrier();
    }
    for (var a = 0u; a < TM; a++) {
        let i = i0 + ty * TM + a;
        if (i >= p.N) { break; }
        let row = acc[a];
        for (var b = 0u; b < 4u; b++) {
            let j = j0 + tx * 4u + b;
            if (j >= p.K) { break; }
            dweight[p.off.o0 + i * p.K + j] += row[b];
        }
    }
}
