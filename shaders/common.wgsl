// ==== shaders/common.wgsl: helpers shared by the shader families ====
//
// Not a module of its own: src/backend/wgpu/kernels.rs appends this file to
// every family that asks for it (WGSL has no imports). It is appended rather
// than prepended so that the line numbers of a compile error in a family
// still match its own file; module-scope declarations may come in any order.
//
// Contract: a family that includes this file declares `const WG: u32`, its
// invocations per 1-D workgroup (each entry point's @workgroup_size(WG)).
// Every helper below is sized by it, so a family may choose its own (loss.wgsl
// uses 128, the others 256, the Rust `kernels::WG`). An entry point that
// calls no reduction never touches their scratch arrays, so it is not
// charged for them: naga zero-initialises only the workgroup variables an
// entry point uses, and the drivers drop the others.

// Index of this workgroup in a grid folded into 2-D: dispatches past the
// per-dimension limit spill into y (the host's `Ctx::grid`).
fn flat_workgroup_id(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// Global invocation index of a 1-D entry point on a folded grid.
fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return flat_workgroup_id(wid, nwg) * WG + li;
}

// ---- workgroup tree reductions ----
// Each returns the reduction of `v` over the workgroup to every invocation
// (li = local_invocation_index). They contain barriers: call them from
// uniform control flow only, with every invocation taking part. The final
// barrier lets the scratch array be reused by the next call.

var<workgroup> red: array<f32, WG>;

fn wg_sum(v: f32, li: u32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (li < s) {
            red[li] = red[li] + red[li + s];
        }
        workgroupBarrier();
    }
    let t = red[0];
    workgroupBarrier();
    return t;
}

fn wg_max(v: f32, li: u32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (li < s) {
            red[li] = max(red[li], red[li + s]);
        }
        workgroupBarrier();
    }
    let t = red[0];
    workgroupBarrier();
    return t;
}

// Four independent reductions in one tree (component-wise), for kernels that
// need several sums or maxima of a row at once: one set of barriers for all.
var<workgroup> red4: array<vec4<f32>, WG>;

fn wg_sum4(v: vec4<f32>, li: u32) -> vec4<f32> {
    red4[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (li < s) {
            red4[li] = red4[li] + red4[li + s];
        }
        workgroupBarrier();
    }
    let t = red4[0];
    workgroupBarrier();
    return t;
}

fn wg_max4(v: vec4<f32>, li: u32) -> vec4<f32> {
    red4[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (li < s) {
            red4[li] = max(red4[li], red4[li + s]);
        }
        workgroupBarrier();
    }
    let t = red4[0];
    workgroupBarrier();
    return t;
}
