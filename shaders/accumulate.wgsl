// accumulate.wgsl: gradient accumulation, grad += micro_grad, and a fill (zeroing a range inside a
// compute pass, where the encoder's clear_buffer cannot be used).

struct Params {
    off: Offsets,
    N: u32,
    value: f32,
}
@group(0) @binding(0) var<uniform> p: Params;

// accumulate(grad [N], micro_grad [N])
@group(0) @binding(1) var<storage, read_write> grad: array<f32>;
@group(0) @binding(2) var<storage, read> micro_grad: array<f32>;
// fill(x [N]) with value
@group(0) @binding(9) var<storage, read_write> x: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn accumulate(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
              @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    grad[p.off.o0 + i] += micro_grad[p.off.o1 + i];
}

@compute @workgroup_size(64)
fn fill(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
        @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    x[p.off.o0 + i] = p.value;
}
