// Elementwise ops, one invocation per element. Dispatches of more than 65535
// workgroups are folded into a 2-D grid: every entry point rebuilds the linear
// id from (workgroup_id, num_workgroups) and bounds-checks it.
//
// Bindings (DESIGN.md, Conventions): 0 params, then read-only inputs in the order of
// the Rust signature, then the read_write outputs.

// Rust twin: `EwParams` in src/backend/wgpu/kernels.rs (32 bytes).
struct Params {
    n: u32,
    // bias_add: y is (rows, cols, inner); only cols and inner are needed.
    cols: u32,
    inner: u32,
    _pad0: u32,
    alpha: f32,
    _pad1: f32,
    _pad2: f32,
    _pad3: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Invocations per workgroup, the Rust `kernels::WG` (the host sizes
// per-element grids by it); also sizes the common.wgsl helpers appended here.
const WG: u32 = 256u;

// ---- fill: y = alpha ----

@group(0) @binding(1) var<storage, read_write> fill_y: array<f32>;

@compute @workgroup_size(WG)
fn fill(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.n) {
        return;
    }
    fill_y[i] = p.alpha;
}

// ---- relu_fwd: y = max(x, 0) ----

@group(0) @binding(1) var<storage, read> rf_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> rf_y: array<f32>;

@compute @workgroup_size(WG)
fn relu_fwd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.n) {
        return;
    }
    // NOTE: not max(x, 0): that may turn NaN into 0 and hide a diverging
    // run; NaN passes through, as on the CPU and in PyTorch.
    let x = rf_x[i];
    rf_y[i] = select(x, 0.0, x < 0.0);
}

// ---- relu_bwd: dx += dy · [y > 0] ----

@group(0) @binding(1) var<storage, read> rb_y: array<f32>;
@group(0) @binding(2) var<storage, read> rb_dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> rb_dx: array<f32>;

@compute @workgroup_size(WG)
fn relu_bwd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.n) {
        return;
    }
    // The subgradient at 0 is 0, as PyTorch's.
    if (rb_y[i] > 0.0) {
        rb_dx[i] = rb_dx[i] + rb_dy[i];
    }
}

// ---- bias_add: y[r, c, i] += b[c] ----

@group(0) @binding(1) var<storage, read> ba_b: array<f32>;
@group(0) @binding(2) var<storage, read_write> ba_y: array<f32>;

@compute @workgroup_size(WG)
fn bias_add(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.n) {
        return;
    }
    let c = (i / p.inner) % p.cols;
    ba_y[i] = ba_y[i] + ba_b[c];
}

// ---- axpy: y += alpha · x ----

@group(0) @binding(1) var<storage, read> ax_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> ax_y: array<f32>;

@compute @workgroup_size(WG)
fn axpy(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.n) {
        return;
    }
    ax_y[i] = ax_y[i] + p.alpha * ax_x[i];
}

// ---- scale: y *= alpha ----

@group(0) @binding(1) var<storage, read_write> sc_y: array<f32>;

@compute @workgroup_size(WG)
fn scale(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.n) {
        return;
    }
    sc_y[i] = sc_y[i] * p.alpha;
}

// ---- add_squared: y += alpha · x² ----

@group(0) @binding(1) var<storage, read> as_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> as_y: array<f32>;

@compute @workgroup_size(WG)
fn add_squared(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.n) {
        return;
    }
    let x = as_x[i];
    as_y[i] = as_y[i] + p.alpha * x * x;
}

// ---- add: y = a + b (a residual connection's join) ----

@group(0) @binding(1) var<storage, read> ad_a: array<f32>;
@group(0) @binding(2) var<storage, read> ad_b: array<f32>;
@group(0) @binding(3) var<storage, read_write> ad_y: array<f32>;

@compute @workgroup_size(WG)
fn add(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.n) {
        return;
    }
    ad_y[i] = ad_a[i] + ad_b[i];
}
