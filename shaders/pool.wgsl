// Max pooling without padding: x (N, C, H, W) → y (N, C, OH, OW).
// Forward: one invocation per output cell; argmax is the winner's index
// within its (H, W) plane, first maximum on ties (strict >, scanning the
// window row by row, as the CPU backend).
// Backward without atomics: one invocation per *input* cell, scanning the
// output cells whose windows cover it and summing the dy of those that chose
// it; dx += that sum.
//
// Bindings (DESIGN.md, Conventions): 0 params, then read-only inputs, then outputs.

// Rust twin: `PoolUniform` in src/backend/wgpu/kernels.rs (32 bytes).
struct Params {
    // Threads: N·C·OH·OW (forward) or N·C·H·W (backward).
    total: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    k: u32,
    s: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Invocations per workgroup, the Rust `kernels::WG` (the host sizes
// per-element grids by it); also sizes the common.wgsl helpers appended here.
const WG: u32 = 256u;

// ---- maxpool_fwd ----

@group(0) @binding(1) var<storage, read> mf_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> mf_y: array<f32>;
@group(0) @binding(3) var<storage, read_write> mf_argmax: array<u32>;

@compute @workgroup_size(WG)
fn maxpool_fwd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    let ohw = p.oh * p.ow;
    let plane = i / ohw;
    let o = i - plane * ohw;
    let oy = o / p.ow;
    let ox = o - oy * p.ow;
    let base = plane * p.h * p.w;
    let y0 = oy * p.s;
    let x0 = ox * p.s;
    var best = y0 * p.w + x0;
    var bv = mf_x[base + best];
    for (var ky = 0u; ky < p.k; ky = ky + 1u) {
        for (var kx = 0u; kx < p.k; kx = kx + 1u) {
            let idx = (y0 + ky) * p.w + x0 + kx;
            let v = mf_x[base + idx];
            if (v > bv) {
                bv = v;
                best = idx;
            }
        }
    }
    mf_y[i] = bv;
    mf_argmax[i] = best;
}

// ---- maxpool_bwd ----

@group(0) @binding(1) var<storage, read> mb_dy: array<f32>;
@group(0) @binding(2) var<storage, read> mb_argmax: array<u32>;
@group(0) @binding(3) var<storage, read_write> mb_dx: array<f32>;

@compute @workgroup_size(WG)
fn maxpool_bwd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    let hw = p.h * p.w;
    let plane = i / hw;
    let cell = i - plane * hw;
    let iy = cell / p.w;
    let ix = cell - iy * p.w;
    // Output rows whose window [oy·s, oy·s + k) holds iy.
    var oy_lo = 0u;
    if (iy + 1u > p.k) {
        oy_lo = (iy + 1u - p.k + p.s - 1u) / p.s;
    }
    let oy_hi = min(iy / p.s + 1u, p.oh);
    var ox_lo = 0u;
    if (ix + 1u > p.k) {
        ox_lo = (ix + 1u - p.k + p.s - 1u) / p.s;
    }
    let ox_hi = min(ix / p.s + 1u, p.ow);
    let obase = plane * p.oh * p.ow;
    var sum = 0.0;
    var hit = false;
    for (var oy = oy_lo; oy < oy_hi; oy = oy + 1u) {
        for (var ox = ox_lo; ox < ox_hi; ox = ox + 1u) {
            let o = obase + oy * p.ow + ox;
            if (mb_argmax[o] == cell) {
                sum = sum + mb_dy[o];
                hit = true;
            }
        }
    }
    if (hit) {
        mb_dx[i] = mb_dx[i] + sum;
    }
}
