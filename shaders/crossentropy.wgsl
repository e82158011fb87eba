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

alias act = f32;

struct Params {
    o0: u32, o1: u32, o2: u32, o3: u32, o4: u32, o5: u32, o6: u32, o7: u32,
    N: u32, V: u32,
    dloss: f32,
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
    if (l == 0u) { row_target = targets[p.o2 + row]; }
    let tgt = workgroupUniformLoad(&row_target);
    if (tgt == IGNORE) {
        if (l == 0u) { losses[p.o0 + row] = 0.0; }
        return;
    }
    let x = p.o1 + row * p.V;
    var ms = vec2<f32>(LOWEST, 0.0);
    for (var v = l; v < p.V; v += WG) { ms = online(ms, f32(logits[x + v])); }
    let st = row_stats(l, ms);
    if (l == 0u) { losses[p.o0 + row] = act(log(st.y) + st.x - f32(logits[x + tgt])); }
}

// one workgroup: strided partial sums, then a tree in workgroup memory (fixed order: deterministic)
var<workgroup> part_loss: array<f32, 64>;
var<workgroup> part_count: array<f32, 64>;
@compute @workgroup_size(64)
fn crossentropy_reduce(@builtin(local_invocation_index) l: u32) {
    var s = 0.0;
    var c = 0.0;
    for (var i = l; i < p.N; i += WG) {
        if (r_targets[p.o2 + i] != IGNORE) {
            s += f32(r_losses[p.o1 + i]);
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
        totals[p.o0] += part_loss[0];
        totals[p.o0 + 1u] += part_count[0];
    }
}

// one workgroup per row
@compute @workgroup_size(64)
fn crossentropy_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                         @builtin(local_invocation_index) l: u32) {
    let row = row_of(w, n);
    if (row >= p.N) { return; }
    if (l == 0u) { row_target = b_targets[p.o2 + row]; }
    let tgt = workgroupUniformLoad(&row_target);
    if (tgt == IGNORE) { return; }
    let x = p.o1 + row * p.V;
    var ms = vec2<f32>(LOWEST, 0.0);
    for (var v = l; v < p.V; v += WG) { ms = online(ms, f32(b_logits[x + v])); }
    let st = row_stats(l, ms);
    let inv = 1.0 / st.y;
    let d = p.o0 + row * p.V;
    for (var v = l; v < p.V; v += WG) {
        var g = exp(f32(b_logits[x + v]) - st.x) * inv;
        if (v == tgt) { g -= 1.0; }
        dlogits[d + v] = act(f32(dlogits[d + v]) + p.dloss * g);
    }
}
