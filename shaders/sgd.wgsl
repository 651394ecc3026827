// Fused SGD update with momentum and L2 weight decay, PyTorch semantics
// (dampening 0, no Nesterov): g' = g + wd·w; v = μ·v + g'; w -= lr·v.
// One invocation per parameter; 2-D grid folding as in elementwise.wgsl.
//
// Bindings (DESIGN.md, Conventions): 0 params, 1 g (read), 2 w, 3 v (read_write).

// Rust twin: `SgdParams` in src/backend/wgpu/kernels.rs (32 bytes).
struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    _pad3: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;

// Invocations per workgroup, the Rust `kernels::WG` (the host sizes
// per-element grids by it); also sizes the common.wgsl helpers appended here.
const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn sgd_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.n) {
        return;
    }
    let wi = w[i];
    let d = g[i] + p.weight_decay * wi;
    let vi = p.momentum * v[i] + d;
    v[i] = vi;
    w[i] = wi - p.lr * vi;
}
