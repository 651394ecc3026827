// Reductions: bias gradients (column sums), per-row maxima for evaluation,
// summing partial results into one accumulator (the loss scalar), and
// adding the partial C blocks of a split-K gemm.
//
// Sums use the workgroup tree reduction of common.wgsl; maxima start from
// real data (the first element), never from a sentinel.
//
// Bindings (DESIGN.md, Conventions): 0 params, then read-only inputs, then outputs.

// Rust twin: `ReduceParams` in src/backend/wgpu/kernels.rs (32 bytes).
struct Params {
    // Elements (sum_into, splitk_reduce: per partial block).
    n: u32,
    rows: u32,
    cols: u32,
    inner: u32,
    alpha: f32,
    beta: f32,
    _pad0: f32,
    _pad1: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Invocations per workgroup, the Rust `kernels::WG` (the host sizes
// per-element grids by it); also sizes the common.wgsl helpers appended here.
const WG: u32 = 256u;

// ---- bias_grad: db[c] += Σ_{r,i} dy[r, c, i], one workgroup per column ----

@group(0) @binding(1) var<storage, read> bg_dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> bg_db: array<f32>;

@compute @workgroup_size(WG)
fn bias_grad(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let col = flat_workgroup_id(wid, nwg);
    if (col >= p.cols) {
        return;
    }
    let per_col = p.rows * p.inner;
    var s = 0.0;
    for (var j = li; j < per_col; j = j + WG) {
        let r = j / p.inner;
        let i = j - r * p.inner;
        s = s + bg_dy[(r * p.cols + col) * p.inner + i];
    }
    let total = wg_sum(s, li);
    if (li == 0u) {
        bg_db[col] = bg_db[col] + total;
    }
}

// ---- max_rows: per row of x (rows, cols) its maximum and first argmax ----

@group(0) @binding(1) var<storage, read> mr_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> mr_vals: array<f32>;
@group(0) @binding(3) var<storage, read_write> mr_idx: array<u32>;

@compute @workgroup_size(WG)
fn max_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let r = linear_id(wid, nwg, li);
    if (r >= p.rows) {
        return;
    }
    let base = r * p.cols;
    var best = 0u;
    var bv = mr_x[base];
    for (var i = 1u; i < p.cols; i = i + 1u) {
        let v = mr_x[base + i];
        if (v > bv) {
            bv = v;
            best = i;
        }
    }
    mr_vals[r] = bv;
    mr_idx[r] = best;
}

// ---- sum_into: out[0] += alpha · Σ parts[0..n], one workgroup ----

@group(0) @binding(1) var<storage, read> si_parts: array<f32>;
@group(0) @binding(2) var<storage, read_write> si_out: array<f32>;

@compute @workgroup_size(WG)
fn sum_into(@builtin(local_invocation_index) li: u32) {
    var s = 0.0;
    for (var j = li; j < p.n; j = j + WG) {
        s = s + si_parts[j];
    }
    let total = wg_sum(s, li);
    if (li == 0u) {
        si_out[0] = si_out[0] + p.alpha * total;
    }
}

// ---- splitk_reduce: c[i] = alpha · Σ_z parts[z·n + i] + beta · c[i] ----

@group(0) @binding(1) var<storage, read> sk_parts: array<f32>;
@group(0) @binding(2) var<storage, read_write> sk_c: array<f32>;

@compute @workgroup_size(WG)
fn splitk_reduce(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.n) {
        return;
    }
    var s = 0.0;
    for (var z = 0u; z < p.rows; z = z + 1u) {
        s = s + sk_parts[z * p.n + i];
    }
    var out = p.alpha * s;
    if (p.beta != 0.0) {
        out = out + p.beta * sk_c[i];
    }
    sk_c[i] = out;
}
