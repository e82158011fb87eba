
// reduce/workgroup.wgsl (appended to a row-kernel file that defines WG, the invocations per
// row): `tree_sum2`, the sum of x over the WG invocations of a workgroup by a tree in workgroup
// memory, returned to every invocation. Call it in uniform control flow. Files without
// subgroups define `row_sum2` as this.

var<workgroup> red: array<vec2<f32>, WG>;

fn tree_sum2(x: vec2<f32>, l: u32) -> vec2<f32> {
    red[l] = x;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
        if (l < s) { red[l] += red[l + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}
