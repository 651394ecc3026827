// Softmax cross-entropy, loss and gradient in one pass per row: one
// workgroup per row of logits (R, CO): row max (tree reduction, started from
// the row's own first element) → Σ exp (tree reduction) → gradient
// dlogits[r] += scale · (softmax(z_r) − onehot(y_r)) and the row's loss
// −log softmax(z_r)[y_r] into `rowloss[r]`; reduce.wgsl `sum_into` then adds
// scale · Σ_r rowloss[r] into the loss scalar (a tree reduction, no atomics).
// Rows labelled IGNORE_LABEL (u32::MAX) contribute nothing; any other label
// ≥ CO makes the row's loss NaN (a loud failure instead of a silent one).
//
// Bindings (DESIGN.md, Conventions): 0 params, 1 logits, 2 labels (read),
// 3 dlogits, 4 rowloss (read_write).

// Rust twin: `LossUniform` in src/backend/wgpu/kernels.rs (32 bytes).
struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
    scale: f32,
    _pad2: f32,
    _pad3: f32,
    _pad4: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(4) var<storage, read_write> rowloss: array<f32>;

// Invocations per workgroup (one workgroup per row of logits: the host's
// grid does not depend on it); also sizes the common.wgsl helpers appended.
const WG: u32 = 128u;
const IGNORE_LABEL: u32 = 0xffffffffu;

@compute @workgroup_size(WG)
fn softmax_xent(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let r = flat_workgroup_id(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let base = r * p.cols;
    let y = labels[r];
    // Max from real data: every invocation starts at the row's first element.
    var m = logits[base];
    for (var i = li; i < p.cols; i = i + WG) {
        m = max(m, logits[base + i]);
    }
    m = wg_max(m, li);
    var s = 0.0;
    for (var i = li; i < p.cols; i = i + WG) {
        s = s + exp(logits[base + i] - m);
    }
    s = wg_sum(s, li);
    if (y == IGNORE_LABEL) {
        if (li == 0u) {
            rowloss[r] = 0.0;
        }
        return;
    }
    if (y >= p.cols) {
        if (li == 0u) {
            rowloss[r] = bitcast<f32>(0x7fc00000u);
        }
        return;
    }
    let inv = 1.0 / s;
    for (var i = li; i < p.cols; i = i + WG) {
        var g = exp(logits[base + i] - m) * inv;
        if (i == y) {
            g = g - 1.0;
        }
        dlogits[base + i] = dlogits[base + i] + p.scale * g;
    }
    if (li == 0u) {
        // −log softmax(z)_y = log Σ exp(z − m) − (z_y − m)
        rowloss[r] = log(s) - (logits[base + y] - m);
    }
}
