// embedding_gpu.wgsl: the GPU family's token-embedding gradient, dwte[inp[b,t],:] += dout[b,t,:],
// parallel over (token, channel) and deterministic without atomics (as llm.c does it): the host
// sorts each micro-batch's B*T positions by token (a stable sort, `gpu::kernels_embedding::
// embedding_buckets`), and one invocation per (bucket, channel) sums its bucket's positions in
// position order, then adds the sum to its token's gradient row. Every run adds the same numbers
// in the same order; no two invocations write the same element.
// buckets (u32): [count | rows [B*T]: the positions in token order | starts [B*T + 1]: where each
// bucket's positions begin in rows | tokens [B*T]: each bucket's token]; bucket slots past count
// are unused.
// wte may be one part of the embedding, its rows v0 .. v0 + vn: buckets whose token is outside it
// are left to the dispatches of the other parts.
// The position embedding's gradient stays encoder.wgsl's encoder_backward_wpe (a sum over B per
// (t, c): T*C-way parallel already).
// Binding convention: binding 0 = Params (o0..o7 the element offsets of the tensors, bindings 9..
// like encoder.wgsl's backward). dout is `act` (f16 in the mixed-precision instantiation); dwte
// and all arithmetic are f32.

alias act = f32;

struct Params {
    off: Offsets,
    B: u32, T: u32, C: u32,
    v0: u32, vn: u32, // the rows of the embedding bound as dwte
}
@group(0) @binding(0) var<uniform> p: Params;

// encoder_backward_buckets(dwte [vn,C], dout [B,T,C], buckets [3 B T + 2])
@group(0) @binding(9) var<storage, read_write> dwte: array<f32>;
@group(0) @binding(10) var<storage, read> dout: array<act>;
@group(0) @binding(11) var<storage, read> buckets: array<u32>;

const WG: u32 = 64u;

// one invocation per (bucket slot, channel c); a workgroup covers 64 channels of one bucket
// (coalesced rows of dout and dwte)
@compute @workgroup_size(64)
fn encoder_backward_buckets(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                            @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    let bt = p.B * p.T;
    if (i >= bt * p.C) { return; }
    let k = i / p.C;
    let c = i % p.C;
    let base = p.off.o2;
    if (k >= buckets[base]) { return; }
    let tok = buckets[base + 1u + 2u * bt + 1u + k];
    if (tok < p.v0 || tok - p.v0 >= p.vn) { return; }
    let first = buckets[base + 1u + bt + k];
    let last = buckets[base + 1u + bt + k + 1u];
    var s = 0.0;
    for (var j = first; j < last; j++) {
        let row = buckets[base + 1u + j];
        s += f32(dout[p.off.o1 + row * p.C + c]);
    }
    let o = p.off.o0 + (tok - p.v0) * p.C + c;
    dwte[o] = dwte[o] + s;
}
