// encoder.wgsl: the GPT input layer, token embedding + position embedding.
//   forward:  out[b,t,:] = wte[inp[b,t],:] + wpe[t,:]
//   backward: dwte[inp[b,t],:] += dout[b,t,:];   dwpe[t,:] += sum_b dout[b,t,:]
// wte may be one part of the embedding, its rows v0 .. v0 + vn (the embedding cut into
// vocabulary ranges that each fit one binding): positions whose token is outside it are left to
// the dispatches of the other parts.
// Binding convention (all gradscope shaders): binding 0 = Params (o0..o7 are the element offsets of
// the tensor arguments in the order of the CPU reference function); the forward function's tensors
// are bindings 1.., the backward function's 9...
// Activations (out, dout) are `act`: f32, or f16 in the mixed-precision instantiation of this file;
// the embeddings and their gradients stay f32, and all arithmetic is f32.

alias act = f32;

struct Params {
    off: Offsets,
    B: u32, T: u32, C: u32,
    v0: u32, vn: u32, // the rows of the embedding bound as wte / dwte
}
@group(0) @binding(0) var<uniform> p: Params;

// encoder_forward(out [B,T,C], inp [B,T] tokens, wte [V,C], wpe [maxT,C])
@group(0) @binding(1) var<storage, read_write> out: array<act>;
@group(0) @binding(2) var<storage, read> inp: array<u32>;
@group(0) @binding(3) var<storage, read> wte: array<f32>;
@group(0) @binding(4) var<storage, read> wpe: array<f32>;

// encoder_backward(dwte [V,C], dwpe [maxT,C], dout [B,T,C], inp [B,T])
@group(0) @binding(9) var<storage, read_write> dwte: array<f32>;
@group(0) @binding(10) var<storage, read_write> dwpe: array<f32>;
@group(0) @binding(11) var<storage, read> dout: array<act>;
@group(0) @binding(12) var<storage, read> inp_b: array<u32>;

const WG: u32 = 64u;

// one invocation per output element (b, t, c)
@compute @workgroup_size(64)
fn encoder_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                   @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.B * p.T * p.C) { return; }
    let bt = i / p.C;
    let c = i % p.C;
    let t = bt % p.T;
    let tok = inp[p.off.o1 + bt];
    if (tok < p.v0 || tok - p.v0 >= p.vn) { return; }
    out[p.off.o0 + i] = act(wte[p.off.o2 + (tok - p.v0) * p.C + c] + wpe[p.off.o3 + t * p.C + c]);
}

// one invocation per channel c walks every position in order: tokens repeat, so a thread per
// position would race on dwte; this is deterministic and needs no atomics.
@compute @workgroup_size(64)
fn encoder_backward_wte(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                        @builtin(local_invocation_index) l: u32) {
    let c = flat(w, n, l);
    if (c >= p.C) { return; }
    for (var bt = 0u; bt < p.B * p.T; bt++) {
        let tok = inp_b[p.off.o3 + bt];
        if (tok >= p.v0 && tok - p.v0 < p.vn) {
            let i = p.off.o0 + (tok - p.v0) * p.C + c;
            dwte[i] = dwte[i] + f32(dout[p.off.o2 + bt * p.C + c]);
        }
    }
}

// one invocation per (t, c): sum over the batch
@compute @workgroup_size(64)
fn encoder_backward_wpe(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                        @builtin(local_invocation_index) l: u32) {
    let i = flat(w, n, l);
    if (i >= p.T * p.C) { return; }
    let t = i / p.C;
    let c = i % p.C;
    var s = 0.0;
    for (var b = 0u; b < p.B; b++) {
        s += f32(dout[p.off.o2 + (b * p.T + t) * p.C + c]);
    }
    dwpe[p.off.o1 + i] += s;
}
