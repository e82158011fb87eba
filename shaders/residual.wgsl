// residual.wgsl: the residual connection.
//   forward:  out = inp1 + inp2
//   backward: dinp1 += dout; dinp2 += dout
//   fill_act: x = value (zeroing a range of an activation slab inside a compute pass; accumulate.wgsl's
//             fill is its f32 counterpart)
//   dropout_forward:  x[i] *= factor(i)       (in place: the dropped tensor replaces the output)
//   dropout_backward: dx[i] = factor(i) dy[i] (assigns)
//     factor(i): 0 or 1/(1-p) from the prelude's counter-based hash, for sample key[2] + i / PER
//     (key = [seed, step, the micro-batch's first window position, 0]) and element i % PER
// Every tensor is `act`: f32, or f16 in the mixed-precision instantiation of this file; the
// arithmetic is f32.

alias act = f32;

struct Params {
    off: Offsets,
    N: u32,
    value: f32, // fill_act only (after N: residual_forward/backward's layout is o0..o7, N)
    // dropout_* only: elements per sample, the site, the drop threshold and the kept scale
    PER: u32, SITE: u32, THR: u32, SCALE: f32,
}
@group(0) @binding(0) var<uniform> p: Params;

// residual_forward(out [N], inp1 [N], inp2 [N])
@group(0) @binding(1) var<storage, read_write> out: array<act>;
@group(0) @binding(2) var<storage, read_write> inp1: array<act>;
@group(0) @binding(3) var<storage, read_write> inp2: array<act>;
// residual_backward(dinp1 [N], dinp2 [N], dout [N])
@group(0) @binding(9) var<storage, read_write> dinp1: array<act>;
@group(0) @binding(10) var<storage, read_write> dinp2: array<act>;
@group(0) @binding(11) var<storage, read_write> dout: array<act>;
// fill_act(x [N]) with value
@group(0) @binding(12) var<storage, read_write> fill_x: array<act>;

// dropout_forward(x [N], -, key [4]); dropout_backward(dx [N], dy [N], key [4])
@group(0) @binding(16) var<storage, read_write> drop_x: array<act>;
@group(0) @binding(17) var<storage, read_write> drop_dy: array<act>;
@group(0) @binding(18) var<storage, read> drop_key: array<u32>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn residual_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                    @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    out[p.off.o0 + i] = act(f32(inp1[p.off.o1 + i]) + f32(inp2[p.off.o2 + i]));
}

@compute @workgroup_size(64)
fn residual_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                     @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    let g = f32(dout[p.off.o2 + i]);
    dinp1[p.off.o0 + i] = act(f32(dinp1[p.off.o0 + i]) + g);
    dinp2[p.off.o1 + i] = act(f32(dinp2[p.off.o1 + i]) + g);
}

@compute @workgroup_size(64)
fn fill_act(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
            @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    fill_x[p.off.o0 + i] = act(p.value);
}

fn dropout_at(i: u32) -> f32 {
    let k = p.off.o2;
    let stream = dropout_stream(drop_key[k], drop_key[k + 1u], p.SITE, drop_key[k + 2u] + i / p.PER);
    return dropout_factor(stream, i % p.PER, p.THR, p.SCALE);
}

@compute @workgroup_size(64)
fn dropout_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                   @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    drop_x[p.off.o0 + i] = act(f32(drop_x[p.off.o0 + i]) * dropout_at(i));
}

@compute @workgroup_size(64)
fn dropout_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                    @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.N) { return; }
    drop_x[p.off.o0 + i] = act(f32(drop_dy[p.off.o1 + i]) * dropout_at(i));
}
