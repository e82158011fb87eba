
// reduce/subgroup.wgsl (appended after reduce/workgroup.wgsl for adapters with SUBGROUP):
// `row_sum2`, the sum of x over the WG invocations of a workgroup, returned to every invocation,
// from subgroup sums: each subgroup adds its invocations' x in registers, its first invocation
// puts the sum in one slot per subgroup, and every invocation adds the WG / n slots. The subgroup
// size n is what the adapter runs (8 on lavapipe, 32 or 64 on GPUs), counted here as the
// subgroup's active invocations (all are active: call it in uniform control flow). The slots
// assume subgroups that are aligned runs of local_invocation_index, as drivers lay out a 1-D
// workgroup; a workgroup that sees otherwise falls back to the tree (`tree_sum2`).

var<workgroup> sg_unaligned: u32;

fn row_sum2(x: vec2<f32>, l: u32) -> vec2<f32> {
    let n = subgroupAdd(1u);
    let first = subgroupMin(l);
    let last = subgroupMax(l);
    let s = subgroupAdd(x);
    // (every subgroup operation above runs in uniform control flow, none behind a condition)
    if (first % n != 0u || last != first + n - 1u) { sg_unaligned = 1u; }
    if (l == first) { red[first / n] = s; }
    if (workgroupUniformLoad(&sg_unaligned) != 0u) {
        return tree_sum2(x, l);
    }
    var r = vec2<f32>(0.0);
    for (var i = 0u; i < WG / n; i++) { r += red[i]; }
    workgroupBarrier();
    return r;
}
