// grad_norm.wgsl: the global L2 norm of the whole gradient, and scaling by a scalar (clipping).
//   grad_norm_partial: workgroup g sums the squares of its strided share -> partials[g]
//   grad_norm_final:   one workgroup sums the partials -> norm[0] = sqrt(sum), norm[1] = sum
// Two stages, fixed summation order: deterministic, and no single thread walks the whole gradient.
//   scale:         x *= s                              (s in the uniform)
//   clip_by_norm:  x *= min(1, max_norm / (norm[0] + 1e-6)), with the norm read on the device,
//                  so clipping needs no readback. Clip once, on the global norm of the whole
//                  accumulated gradient, just before the optimizer step.
//   scale_by_inverse_count: x *= 1 / totals[1], the window's real count of targets.

struct Params {
    off: Offsets,
    N: u32,
    groups: u32,
    s: f32,
}
@group(0) @binding(0) var<uniform> p: Params;

// grad_norm_partial(partials [groups], grads [N])
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
@group(0) @binding(2) var<storage, read> grads: array<f32>;
// grad_norm_final(norm [2], partials [groups])
@group(0) @binding(3) var<storage, read_write> norm: array<f32>;
@group(0) @binding(4) var<storage, read> f_partials: array<f32>;
// scale(x [N]);  clip_by_norm(x [N], norm [2]) with max_norm = s;  scale_by_inverse_count(x, totals)
@group(0) @binding(5) var<storage, read_write> x: array<f32>;
@group(0) @binding(6) var<storage, read> by: array<f32>;

const WG: u32 = 64u;

var<workgroup> part: array<f32, 64>;

fn tree(l: u32) {
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (l < stride) { part[l] += part[l + stride]; }
        workgroupBarrier();
    }
}

@compute @workgroup_size(64)
fn grad_norm_partial(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = w.x;
    var s = 0.0;
    for (var i = g * WG + l; i < p.N; i += p.groups * WG) {
        let v = grads[p.off.o1 + i];
        s += v * v;
    }
    part[l] = s;
    tree(l);
    if (l == 0u) { partials[p.off.o0 + g] = part[0]; }
}

@compute @workgroup_size(64)
fn grad_norm_final(@builtin(local_invocation_index) l: u32) {
    var s = 0.0;
    for (var i = l; i < p.groups; i += WG) { s += f_partials[p.off.o1 + i]; }
    part[l] = s;
    tree(l);
    if (l == 0u) {
        norm[p.off.o0] = sqrt(part[0]);
        norm[p.off.o0 + 1u] = part[0];
    }
}

@compute @workgroup_size(64)
fn scale(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
         @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    x[p.off.o0 + i] *= p.s;
}

@compute @workgroup_size(64)
fn clip_by_norm(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    let c = min(1.0, p.s / (by[p.off.o1] + 1e-6));
    x[p.off.o0 + i] *= c;
}

@compute @workgroup_size(64)
fn scale_by_inverse_count(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                          @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    x[p.off.o0 + i] *= 1.0 / max(by[p.off.o1 + 1u], 1.0);
}
