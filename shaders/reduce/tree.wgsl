
// reduce/tree.wgsl (appended after reduce/workgroup.wgsl for adapters without SUBGROUP):
// `row_sum2` is the workgroup tree.

fn row_sum2(x: vec2<f32>, l: u32) -> vec2<f32> {
    return tree_sum2(x, l);
}
