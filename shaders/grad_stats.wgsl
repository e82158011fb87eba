// grad_stats.wgsl: per-micro-batch gradient statistics inside the fused window, one two-stage
// reduction per micro-batch (no atomics, fixed summation order: deterministic).
//
// After micro-batch k's backward the gradient slab holds G_k and `prev` holds G_{k-1} (zeroed
// before the window's first micro-batch). Per statistics segment s (a contiguous range of one
// slab buffer: a tensor, a layer of a per-layer tensor, a row part of the embedding):
//   grad_stats_partial(partials [2*W], prev [N], grads [N], table): workgroup w takes a chunk of
//     `chunk` elements of one segment; with d = grads - prev (micro-batch k's own gradient g_k):
//     partials[2w] = sum d*d, partials[2w+1] = sum d*prev; then prev = grads (G_k, the next
//     micro-batch's G_{k-1}). One dispatch per slab buffer.
//   grad_stats_final(stats [2*S], partials, table): workgroup t sums the pairs of statistic t
//     (its segments' workgroups are consecutive) -> stats[2t] = |g_k|^2, stats[2t+1] = <g_k, G_{k-1}>.
//
// table (u32): per segment j, 3 words (first global workgroup, element offset in its buffer,
// elements), in packing order; then at t0, per statistic t its workgroups [first, end) (a
// statistic's segments are consecutive in packing order).

struct Params {
    off: Offsets,
    // grad_stats_partial: this buffer's segments [p0, p1), its first global workgroup, its
    // workgroup count, elements per workgroup; grad_stats_final: t0 = the statistics' table
    p0: u32,
    p1: u32,
    wg0: u32,
    wgs: u32,
    chunk: u32,
    t0: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

// grad_stats_partial(partials, prev, grads, table)
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> prev: array<f32>;
@group(0) @binding(3) var<storage, read> grads: array<f32>;
@group(0) @binding(4) var<storage, read> table: array<u32>;
// grad_stats_final(stats, partials, table)
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;
@group(0) @binding(6) var<storage, read> f_partials: array<f32>;
@group(0) @binding(7) var<storage, read> f_table: array<u32>;

const WG: u32 = 64u;

var<workgroup> sq: array<f32, 64>;
var<workgroup> dt: array<f32, 64>;

fn tree(l: u32) {
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (l < stride) {
            sq[l] += sq[l + stride];
            dt[l] += dt[l + stride];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(64)
fn grad_stats_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
                      @builtin(local_invocation_index) l: u32) {
    let w = wid.x + wid.y * nw.x;
    if (w >= p.wgs) { return; }
    let gw = p.wg0 + w;
    // the last segment of this buffer whose first workgroup is <= gw (binary search)
    var lo = p.p0;
    var hi = p.p1;
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (table[p.off.o3 + 3u * mid] <= gw) { lo = mid; } else { hi = mid; }
    }
    let first = table[p.off.o3 + 3u * lo];
    let at = table[p.off.o3 + 3u * lo + 1u];
    let len = table[p.off.o3 + 3u * lo + 2u];
    let start = (gw - first) * p.chunk;
    let end = min(start + p.chunk, len);
    var s = 0.0;
    var d = 0.0;
    for (var i = start + l; i < end; i += WG) {
        let g = grads[p.off.o2 + at + i];
        let q = prev[p.off.o1 + at + i];
        let x = g - q;
        s += x * x;
        d += x * q;
        prev[p.off.o1 + at + i] = g;
    }
    sq[l] = s;
    dt[l] = d;
    tree(l);
    if (l == 0u) {
        partials[p.off.o0 + 2u * gw] = sq[0];
        partials[p.off.o0 + 2u * gw + 1u] = dt[0];
    }
}

@compute @workgroup_size(64)
fn grad_stats_final(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
                    @builtin(local_invocation_index) l: u32) {
    let t = wid.x + wid.y * nw.x;
    if (t >= p.wgs) { return; }
    let a = f_table[p.off.o2 + p.t0 + 2u * t];
    let b = f_table[p.off.o2 + p.t0 + 2u * t + 1u];
    var s = 0.0;
    var d = 0.0;
    for (var i = a + l; i < b; i += WG) {
        s += f_partials[p.off.o1 + 2u * i];
        d += f_partials[p.off.o1 + 2u * i + 1u];
    }
    sq[l] = s;
    dt[l] = d;
    tree(l);
    if (l == 0u) {
        stats[p.off.o0 + 2u * t] = sq[0];
        stats[p.off.o0 + 2u * t + 1u] = dt[0];
    }
}
