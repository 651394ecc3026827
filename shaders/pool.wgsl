// Max pooling with `pad` cells of padding on every side:
// x (N, C, H, W) → y (N, C, OH, OW), OH = (H + 2·pad − K) / S + 1.
// The window of output cell (oy, ox) covers input rows oy·s − pad …
// oy·s − pad + k − 1 (and the same for columns). Padding cells count as −∞
// and never win, so the window is simply clipped to the plane: every window
// keeps at least one real cell while pad < k (the host asserts it), and the
// argmax is always a real cell's index within its (H, W) plane.
// Forward: one invocation per output cell; first maximum on ties (strict >,
// scanning the clipped window row by row, as the CPU backend).
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
    // Padding on every side, < k.
    pad: u32,
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
    // The window clipped to the plane, in unsigned arithmetic: its start
    // max(o·s, pad) − pad, its end min(o·s + k − pad, len) (o·s + k > pad
    // always, as k > pad).
    let y0 = max(oy * p.s, p.pad) - p.pad;
    let y1 = min(oy * p.s + p.k - p.pad, p.h);
    let x0 = max(ox * p.s, p.pad) - p.pad;
    let x1 = min(ox * p.s + p.k - p.pad, p.w);
    // Start from the window's first real cell, never from a −∞ sentinel, so
    // that a window of NaNs or −∞ still names one of its own cells.
    var best = y0 * p.w + x0;
    var bv = mf_x[base + best];
    for (var iy = y0; iy < y1; iy = iy + 1u) {
        for (var ix = x0; ix < x1; ix = ix + 1u) {
            let idx = iy * p.w + ix;
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
    // In padded coordinates (t = i + pad) the window of output o covers
    // [o·s, o·s + k), so the outputs that cover t are
    // ceil((t + 1 − k) / s) ≤ o ≤ t / s, clipped to the output plane.
    let ty = iy + p.pad;
    let tx = ix + p.pad;
    var oy_lo = 0u;
    if (ty + 1u > p.k) {
        oy_lo = (ty + 1u - p.k + p.s - 1u) / p.s;
    }
    let oy_hi = min(ty / p.s + 1u, p.oh);
    var ox_lo = 0u;
    if (tx + 1u > p.k) {
        ox_lo = (tx + 1u - p.k + p.s - 1u) / p.s;
    }
    let ox_hi = min(tx / p.s + 1u, p.ow);
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
