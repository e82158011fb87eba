// matmul.wgsl: the linear layer, GPU variant (16x16 workgroup-shared-memory tiles), any shape.
//   forward:  out[M,N] = inp[M,K] . weight[N,K]^T + bias[N]       (PyTorch Linear: weight [out,in])
//   backward: dinp[M,K]    += dout[M,N] . weight[N,K]
//             dweight[N,K] += dout[M,N]^T . inp[M,K]
//             dbias[N]     += sum_m dout[M,N]
// Workgroup memory and barriers are what make a matmul fast on a GPU; on a CPU adapter they are
// slow, and matmul_cpu.wgsl (register-blocked, no barriers) is used instead. Both pass the same tests.
// Each tiled kernel computes C[i,j] (+)= sum_r A(i,r) B(r,j) for its own A and B.
// Activations (out, inp, dinp, dout) are `act`: f32, or f16 in the mixed-precision instantiation of
// this file; weight, bias and their gradients stay f32, and tiles and accumulators are f32.

alias act = f32;

struct Params {
    off: Offsets,
    M: u32, K: u32, N: u32,
    has_bias: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

// matmul_forward(out [M,N], inp [M,K], weight [N,K], bias [N])
@group(0) @binding(1) var<storage, read_write> out: array<act>;
@group(0) @binding(2) var<storage, read_write> inp: array<act>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

// matmul_backward(dinp [M,K], dweight [N,K], dbias [N], dout [M,N], inp [M,K], weight [N,K])
@group(0) @binding(9) var<storage, read_write> dinp: array<act>;
@group(0) @binding(10) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(11) var<storage, read_write> dbias: array<f32>;
@group(0) @binding(12) var<storage, read_write> dout: array<act>;
@group(0) @binding(13) var<storage, read> b_inp: array<act>;
@group(0) @binding(14) var<storage, read> b_weight: array<f32>;

const TS: u32 = 16u;
var<workgroup> ta: array<array<f32, 16>, 16>; // ta[i][r]
var<workgroup> tb: array<array<f32, 16>, 16>; // tb[r][j]

const WG: u32 = 64u;

// workgroup (x, y) computes the 16x16 tile of out with rows y*16.., columns x*16..
@compute @workgroup_size(16, 16)
fn matmul_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = w.y * TS + lid.y; // m
    let j = w.x * TS + lid.x; // n
    var acc = 0.0;
    for (var r0 = 0u; r0 < p.K; r0 += TS) {
        // A(i, r) = inp[i, r];  B(r, j) = weight[j, r]
        let ra = r0 + lid.x;
        ta[lid.y][lid.x] = select(0.0, f32(inp[p.off.o1 + i * p.K + ra]), i < p.M && ra < p.K);
        let rb = r0 + lid.y;
        let jb = w.x * TS + lid.x;
        tb[lid.y][lid.x] = select(0.0, weight[p.off.o2 + jb * p.K + rb], jb < p.N && rb < p.K);
        workgroupBarrier();
        for (var r = 0u; r < TS; r++) { acc += ta[lid.y][r] * tb[r][lid.x]; }
        workgroupBarrier();
    }
    if (i < p.M && j < p.N) {
        if (p.has_bias != 0u) { acc += bias[p.off.o3 + j]; }
        out[p.off.o0 + i * p.N + j] = act(acc);
    }
}

// dinp[m, k] += sum_n dout[m, n] weight[n, k]: i = m, j = k, r = n
@compute @workgroup_size(16, 16)
fn matmul_backward_input(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = w.y * TS + lid.y;
    let j = w.x * TS + lid.x;
    var acc = 0.0;
    for (var r0 = 0u; r0 < p.N; r0 += TS) {
        let ra = r0 + lid.x;
        ta[lid.y][lid.x] = select(0.0, f32(dout[p.off.o3 + i * p.N + ra]), i < p.M && ra < p.N);
        let rb = r0 + lid.y;
        tb[lid.y][lid.x] = select(0.0, b_weight[p.off.o5 + rb * p.K + j], rb < p.N && j < p.K);
        workgroupBarrier();
        for (var r = 0u; r < TS; r++) { acc += ta[lid.y][r] * tb[r][lid.x]; }
        workgroupBarrier();
    }
    if (i < p.M && j < p.K) {
        dinp[p.off.o0 + i * p.K + j] = act(f32(dinp[p.off.o0 + i * p.K + j]) + acc);
    }
}

// dweight[n, k] += sum_m dout[m, n] inp[m, k]: i = n, j = k, r = m
@compute @workgroup_size(16, 16)
fn matmul_backward_weight(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = w.y * TS + lid.y;
    let j = w.x * TS + lid.x;
    var acc = 0.0;
    for (var r0 = 0u; r0 < p.M; r0 += TS) {
        // ta[i_local][r_local] = dout[r0 + r_local, i]: load transposed so reads stay coalesced
        let ia = w.y * TS + lid.x;
        let ra = r0 + lid.y;
        ta[lid.x][lid.y] = select(0.0, f32(dout[p.off.o3 + ra * p.N + ia]), ra < p.M && ia < p.N);
        let rb = r0 + lid.y;
        tb[lid.y][lid.x] = select(0.0, f32(b_inp[p.off.o4 + rb * p.K + j]), rb < p.M && j < p.K);
        workgroupBarrier();
        for (var r = 0u; r < TS; r++) { acc += ta[lid.y][r] * tb[r][lid.x]; }
        workgroupBarrier();
    }
    if (i < p.N && j < p.K) {
        dweight[p.off.o1 + i * p.K + j] += acc;
    }
}

// one invocation per output channel n, summing rows in order (used by both variants)
@compute @workgroup_size(64)
fn matmul_backward_bias(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
                        @builtin(local_invocation_index) l: u32) {
    let n = flat(w, nw, l);
    if (n >= p.N) { return; }
    var s = 0.0;
    for (var m = 0u; m < p.M; m++) { s += f32(dout[p.off.o3 + m * p.N + n]); }
    dbias[p.off.o2 + n] += s;
}
