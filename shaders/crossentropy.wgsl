// crossentropy.wgsl: softmax cross-entropy over V classes with reduction = sum over the counted
// targets. A target equal to IGNORE (0xffffffff, e.g. padding) contributes no loss, no gradient
// and no count, so a window's gradient can be normalized once by its real count of targets.
//   forward:  losses[n] = logsumexp(logits[n,:]) - logits[n, targets[n]]   (0 when ignored)
//   reduce:   totals[0] += sum_n losses[n];  totals[1] += count of counted rows
//             (accumulated across the micro-batches of a window, read once per optimizer step)
//   backward: dlogits[n,:] += dloss * (softmax(logits[n,:]) - onehot(targets[n]))  (counted rows)
// Activations (losses, logits, dlogits) are `act`: f32, or f16 in the mixed-precision instantiation
// of this file; totals (the window's loss sum and count) stay f32, and all arithmetic is f32.
//
// The forward and the backward run one workgroup per row: each of its WG invocations walks the
// row with stride WG, keeping a running max m and sum s = sum exp(x - m) (the online softmax),
// and a fixed tree in workgroup memory merges the WG pairs (deterministic). No invocation loops
// more than 2 * ceil(V / WG) + log2(WG) times, far under the 65,535 loop iterations after which
// Mesa's CPU adapters silently stop an invocation's loops (a loop over V in one invocation gave
// garbage from V ~ 22k on lavapipe).
//
// Vocabulary chunks (a "fused linear" cross-entropy: the logits [N,V] are never whole; the lm_head
// writes one chunk [N,VC] of columns [V0, V0 + VC) at a time and these kernels consume it):
//   chunk_forward:  state[n] <- the chunk's (max, sum of exp) merged into the row's running
//                   (m, s) by an online log-sum-exp, m' = max(m, mc),
//                   s' = s exp(m - m') + sc exp(mc - m'); the target's logit is recorded when
//                   V0 <= target < V0 + VC. With `first` the state is set from this chunk alone.
//   chunk_finish:   losses[n] = log(s) + m - target logit (0 when ignored); state[n].lse = m + log(s)
//   chunk_backward: dlogits_chunk[n,j] = dloss * (exp(logit[n,j] - lse) - [V0 + j == target])
//                   on counted rows, 0 on ignored rows: assigned, not accumulated (one scratch
//                   serves every chunk; the lm_head's matmul backward accumulates from it).
// The state is f32 [N,4] = (m, s, target logit, lse) in a buffer of its own (never act, and never
// the buffer of the logits: the chunk kernels read the logits through read-only bindings).
// Ignored rows leave the state as it was. In the chunk kernels V is the chunk's width VC (the row
// stride of logits_chunk and dlogits_chunk) and V0 its first column.

alias act = f32;

struct Params {
    off: Offsets,
    N: u32, V: u32,
    dloss: f32,
    V0: u32,    // chunk kernels: the chunk's first column
    first: u32, // chunk_forward: 1 = set the state from this chunk, 0 = merge into it
}
@group(0) @binding(0) var<uniform> p: Params;

// crossentropy_forward(losses [N], logits [N,V], targets [N])
@group(0) @binding(1) var<storage, read_write> losses: array<act>;
@group(0) @binding(2) var<storage, read_write> logits: array<act>;
@group(0) @binding(3) var<storage, read> targets: array<u32>;
// crossentropy_reduce(totals [2], losses [N], targets [N])
@group(0) @binding(5) var<storage, read_write> totals: array<f32>;
@group(0) @binding(6) var<storage, read> r_losses: array<act>;
@group(0) @binding(7) var<storage, read> r_targets: array<u32>;
// crossentropy_backward(dlogits [N,V], logits [N,V], targets [N])
@group(0) @binding(9) var<storage, read_write> dlogits: array<act>;
@group(0) @binding(10) var<storage, read> b_logits: array<act>;
@group(0) @binding(11) var<storage, read> b_targets: array<u32>;
// crossentropy_chunk_forward(state [N,4] f32, logits_chunk [N,VC], targets [N])
@group(0) @binding(13) var<storage, read_write> c_state: array<f32>;
@group(0) @binding(14) var<storage, read> c_logits: array<act>;
@group(0) @binding(15) var<storage, read> c_targets: array<u32>;
// crossentropy_chunk_finish(losses [N], state [N,4] f32, targets [N])
@group(0) @binding(17) var<storage, read_write> f_losses: array<act>;
@group(0) @binding(18) var<storage, read_write> f_state: array<f32>;
@group(0) @binding(19) var<storage, read> f_targets: array<u32>;
// crossentropy_chunk_backward(dlogits_chunk [N,VC], logits_chunk [N,VC], state [N,4] f32, targets [N])
@group(0) @binding(21) var<storage, read_write> cb_dlogits: array<act>;
@group(0) @binding(22) var<storage, read> cb_logits: array<act>;
@group(0) @binding(23) var<storage, read> cb_state: array<f32>;
@group(0) @binding(24) var<storage, read> cb_targets: array<u32>;

const IGNORE: u32 = 0xffffffffu;
const WG: u32 = 64u;
const LOWEST: f32 = -3.4028234e38;

// The row of a one-workgroup-per-row dispatch (rows are split over x and y like Grid::Threads).
fn row_of(w: vec3<u32>, n: vec3<u32>) -> u32 { return w.x + w.y * n.x; }

// Fold one logit into a running (max m, sum s of exp(x - m)): one exp per element.
fn online(ms: vec2<f32>, x: f32) -> vec2<f32> {
    if (x > ms.x) { return vec2<f32>(x, ms.y * exp(ms.x - x) + 1.0); }
    return vec2<f32>(ms.x, ms.y + exp(x - ms.x));
}

// Merge every invocation's (m, s) into the row's (max, sum of exp(x - max)) with a fixed tree
// (the same order on every run). Called once per invocation, from uniform control flow.
var<workgroup> tree_m: array<f32, 64>;
var<workgroup> tree_s: array<f32, 64>;
fn row_stats(l: u32, ms: vec2<f32>) -> vec2<f32> {
    tree_m[l] = ms.x;
    tree_s[l] = ms.y;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (l < stride) {
            let m1 = tree_m[l];
            let m2 = tree_m[l + stride];
            let m = max(m1, m2);
            tree_s[l] = tree_s[l] * exp(m1 - m) + tree_s[l + stride] * exp(m2 - m);
            tree_m[l] = m;
        }
        workgroupBarrier();
    }
    return vec2<f32>(tree_m[0], tree_s[0]);
}

// The row's target, read by one invocation and shared (uniform, so ignored rows can return early).
var<workgroup> row_target: u32;

// one workgroup per row
@compute @workgroup_size(64)
fn crossentropy_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                        @builtin(local_invocation_index) l: u32) {
    let row = row_of(w, n);
    if (row >= p.N) { return; }
    if (l == 0u) { row_target = targets[p.off.o2 + row]; }
    let tgt = workgroupUniformLoad(&row_target);
    if (tgt == IGNORE) {
        if (l == 0u) { losses[p.off.o0 + row] = 0.0; }
        return;
    }
    let x = p.off.o1 + row * p.V;
    var ms = vec2<f32>(LOWEST, 0.0);
    for (var v = l; v < p.V; v += WG) { ms = online(ms, f32(logits[x + v])); }
    let st = row_stats(l, ms);
    if (l == 0u) { losses[p.off.o0 + row] = act(log(st.y) + st.x - f32(logits[x + tgt])); }
}

// one workgroup: strided partial sums, then a tree in workgroup memory (fixed order: deterministic)
var<workgroup> part_loss: array<f32, 64>;
var<workgroup> part_count: array<f32, 64>;
@compute @workgroup_size(64)
fn crossentropy_reduce(@builtin(local_invocation_index) l: u32) {
    var s = 0.0;
    var c = 0.0;
    for (var i = l; i < p.N; i += WG) {
        if (r_targets[p.off.o2 + i] != IGNORE) {
            s += f32(r_losses[p.off.o1 + i]);
            c += 1.0;
        }
    }
    part_loss[l] = s;
    part_count[l] = c;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (l < stride) {
            part_loss[l] += part_loss[l + stride];
            part_count[l] += part_count[l + stride];
        }
        workgroupBarrier();
    }
    if (l == 0u) {
        totals[p.off.o0] += part_loss[0];
        totals[p.off.o0 + 1u] += part_count[0];
    }
}

// one workgroup per row
@compute @workgroup_size(64)
fn crossentropy_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                         @builtin(local_invocation_index) l: u32) {
    let row = row_of(w, n);
    if (row >= p.N) { return; }
    if (l == 0u) { row_target = b_targets[p.off.o2 + row]; }
    let tgt = workgroupUniformLoad(&row_target);
    if (tgt == IGNORE) { return; }
    let x = p.off.o1 + row * p.V;
    var ms = vec2<f32>(LOWEST, 0.0);
    for (var v = l; v < p.V; v += WG) { ms = online(ms, f32(b_logits[x + v])); }
    let st = row_stats(l, ms);
    let inv = 1.0 / st.y;
    let d = p.off.o0 + row * p.V;
    for (var v = l; v < p.V; v += WG) {
        var g = exp(f32(b_logits[x + v]) - st.x) * inv;
        if (v == tgt) { g -= 1.0; }
        dlogits[d + v] = act(f32(dlogits[d + v]) + p.dloss * g);
    }
}

// one workgroup per row
@compute @workgroup_size(64)
fn crossentropy_chunk_forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                              @builtin(local_invocation_index) l: u32) {
    let row = row_of(w, n);
    if (row >= p.N) { return; }
    if (l == 0u) { row_target = c_targets[p.off.o2 + row]; }
    let tgt = workgroupUniformLoad(&row_target);
    if (tgt == IGNORE) { return; }
    let x = p.off.o1 + row * p.V;
    var ms = vec2<f32>(LOWEST, 0.0);
    for (var v = l; v < p.V; v += WG) { ms = online(ms, f32(c_logits[x + v])); }
    let st = row_stats(l, ms);
    if (l == 0u) {
        let s = p.off.o0 + row * 4u;
        var m = st.x;
        var sum = st.y;
        var t = 0.0;
        if (p.first == 0u) {
            let m0 = c_state[s];
            m = max(m0, st.x);
            sum = c_state[s + 1u] * exp(m0 - m) + st.y * exp(st.x - m);
            t = c_state[s + 2u];
        }
        if (tgt >= p.V0 && tgt - p.V0 < p.V) { t = f32(c_logits[x + (tgt - p.V0)]); }
        c_state[s] = m;
        c_state[s + 1u] = sum;
        c_state[s + 2u] = t;
    }
}

// one invocation per row
@compute @workgroup_size(64)
fn crossentropy_chunk_finish(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                             @builtin(local_invocation_index) l: u32) {
    let row = row_of(w, n) * WG + l;
    if (row >= p.N) { return; }
    if (f_targets[p.off.o2 + row] == IGNORE) {
        f_losses[p.off.o0 + row] = 0.0;
        return;
    }
    let s = p.off.o1 + row * 4u;
    let m = f_state[s];
    let log_s = log(f_state[s + 1u]);
    f_losses[p.off.o0 + row] = act(log_s + m - f_state[s + 2u]);
    f_state[s + 3u] = m + log_s;
}

// one workgroup per row
@compute @workgroup_size(64)
fn crossentropy_chunk_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                               @builtin(local_invocation_index) l: u32) {
    let row = row_of(w, n);
    if (row >= p.N) { return; }
    let tgt = cb_targets[p.off.o3 + row];
    let d = p.off.o0 + row * p.V;
    if (tgt == IGNORE) {
        for (var v = l; v < p.V; v += WG) { cb_dlogits[d + v] = 0.0; }
        return;
    }
    let x = p.off.o1 + row * p.V;
    let lse = cb_state[p.off.o2 + row * 4u + 3u];
    for (var v = l; v < p.V; v += WG) {
        var g = exp(f32(cb_logits[x + v]) - lse);
        if (p.V0 + v == tgt) { g -= 1.0; }
        cb_dlogits[d + v] = act(p.dloss * g);
    }
}
