// Quadratic pull towards an anchor (the l2 and ewc penalties):
// dw += 2·scale·f·(w − a) per element, and per workgroup the partial sum of
// f·(w − a)², which reduce.wgsl `sum_into` then adds (times scale) into the
// loss scalar. f = fisher[i] when `has_fisher` is 1, else 1 (the host then
// binds w again in the fisher slot: it is never read).
//
// Bindings (DESIGN.md, Conventions): 0 params, 1 w, 2 anchor, 3 fisher (read),
// 4 dw, 5 partials (read_write).

// Rust twin: `AnchorParams` in src/backend/wgpu/kernels.rs (32 bytes).
struct Params {
    n: u32,
    has_fisher: u32,
    // Workgroups that own a partial-sum slot (the grid may have a few more).
    groups: u32,
    _pad0: u32,
    // 2 · scale.
    two_scale: f32,
    _pad1: f32,
    _pad2: f32,
    _pad3: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> anchor: array<f32>;
@group(0) @binding(3) var<storage, read> fisher: array<f32>;
@group(0) @binding(4) var<storage, read_write> dw: array<f32>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;

// Invocations per workgroup, the Rust `kernels::WG` (the host sizes
// per-element grids by it); also sizes the common.wgsl helpers appended here.
const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn anchor_penalty(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let wg = flat_workgroup_id(wid, nwg);
    // No early return: every invocation takes part in the tree reduction.
    let i = linear_id(wid, nwg, li);
    var sq = 0.0;
    if (i < p.n) {
        var f = 1.0;
        if (p.has_fisher != 0u) {
            f = fisher[i];
        }
        let d = w[i] - anchor[i];
        sq = f * d * d;
        dw[i] = dw[i] + p.two_scale * f * d;
    }
    let total = wg_sum(sq, li);
    if (li == 0u && wg < p.groups) {
        partials[wg] = total;
    }
}
