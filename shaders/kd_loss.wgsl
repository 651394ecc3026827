// The fused distillation kernel (Hinton et al. 2015; DESIGN.md "The loss"):
// one workgroup per row r, with p = softmax(zt_r / T), q = softmax(zs_r / T):
//   1. row maxima of student and teacher at temperature T (tree reduction,
//      started from the row's own first elements, never a sentinel);
//   2. Σ exp of both and Σ p̃·(zs/T − ms), one combined tree reduction;
//   3. the gradient dzs[r, i] += gscale · (q_i − p_i) with gscale = scale / T,
//      and the row's loss −Σ p log q = log Σ_s − Σ p̃ (zs/T − ms) / Σ_t into
//      rowloss[r].
// reduce.wgsl `sum_into` then adds scale · Σ_r rowloss[r] into loss[0] with a
// workgroup tree reduction (accumulate, as the Backend trait says).
// Every exponent is ≤ 0, so logits of ±1e4 at T = 1 stay finite.
//
// Bindings (DESIGN.md, Conventions): 0 params, 1 zs, 2 zt (read), 3 dzs, 4 rowloss
// (read_write). zs and dzs have row stride `ld ≥ cols`, zt has stride cols.

// Rust twin: `KdUniform` in src/backend/wgpu/kernels.rs (32 bytes).
struct Params {
    rows: u32,
    cols: u32,
    ld: u32,
    _pad0: u32,
    inv_t: f32,
    gscale: f32,
    _pad1: f32,
    _pad2: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> zs: array<f32>;
@group(0) @binding(2) var<storage, read> zt: array<f32>;
@group(0) @binding(3) var<storage, read_write> dzs: array<f32>;
@group(0) @binding(4) var<storage, read_write> rowloss: array<f32>;

// Invocations per workgroup, the Rust `kernels::WG` (the host sizes
// per-element grids by it); also sizes the common.wgsl helpers appended here.
const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn kd_loss(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let r = flat_workgroup_id(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let sb = r * p.ld;
    let tb = r * p.cols;
    let inv_t = p.inv_t;

    // 1. maxima (of the raw logits; T > 0 keeps the argmax).
    var ms = zs[sb];
    var mt = zt[tb];
    for (var i = li; i < p.cols; i = i + WG) {
        ms = max(ms, zs[sb + i]);
        mt = max(mt, zt[tb + i]);
    }
    let mx = wg_max4(vec4<f32>(ms, mt, 0.0, 0.0), li);
    let ms_t = mx.x * inv_t;
    let mt_t = mx.y * inv_t;

    // 2. Σ exp(zs/T − ms), Σ exp(zt/T − mt), Σ exp(zt/T − mt)·(zs/T − ms).
    var acc = vec4<f32>(0.0);
    for (var i = li; i < p.cols; i = i + WG) {
        let a = zs[sb + i] * inv_t - ms_t;
        let et = exp(zt[tb + i] * inv_t - mt_t);
        acc = acc + vec4<f32>(exp(a), et, et * a, 0.0);
    }
    let sums = wg_sum4(acc, li);
    let iss = 1.0 / sums.x;
    let ist = 1.0 / sums.y;

    // 3. gradient (exponentials recomputed: the row is still in cache).
    for (var i = li; i < p.cols; i = i + WG) {
        let q = exp(zs[sb + i] * inv_t - ms_t) * iss;
        let pt = exp(zt[tb + i] * inv_t - mt_t) * ist;
        dzs[sb + i] = dzs[sb + i] + p.gscale * (q - pt);
    }
    if (li == 0u) {
        // −Σ p_i log q_i with log q_i = (zs_i/T − ms) − log Σ_s and Σ p_i = 1.
        rowloss[r] = log(sums.x) - sums.z * ist;
    }
}
