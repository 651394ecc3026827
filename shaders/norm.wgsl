// Batch normalisation and global average pooling, forward and backward side
// by side. Both reduce the planes of x (N, C, HW): BatchNorm each channel's
// N·HW values (N strided planes), the average pool each plane on its own.
//
// Reductions are deterministic: every invocation of a workgroup sums a fixed
// stride of the values, then the tree of common.wgsl adds the partials in a
// fixed order, so a run gives the same bits every time (the CPU sums in f64;
// the parity tests allow for the f32 sums here).
//
// A dispatch binds at most five buffers (the host's bind-group key), so the
// per-channel constants that an elementwise pass needs (γ/σ, the shift, the
// backward's S₁/M and S₂/M) are first folded by a tiny per-channel kernel
// into one scratch array, instead of binding mean, var, γ, β, … separately.
//
// Bindings (DESIGN.md, Conventions): 0 params, then read-only inputs in the
// order of the Rust signature, then the read_write outputs.

// Rust twin: `NormParams` in src/backend/wgpu/kernels.rs (32 bytes).
struct Params {
    // Invocations of an elementwise pass: N·C·HW (avgpool: rows·inner, or
    // rows for the forward).
    total: u32,
    // Channels (bn_acc: entries to add).
    c: u32,
    // Values per plane (avgpool: inner).
    hw: u32,
    // Values per channel, N·HW: what the batch statistics average over.
    count: u32,
    eps: f32,
    // 1 / count as the host rounds it (avgpool: 1 / inner), so that the
    // scaling matches the CPU's f32 factor.
    inv_count: f32,
    // bn_bwd_dx: 1 when the statistics were the batch's own.
    batch_stats: u32,
    // bn_acc: first entry of sums to add (0: S₁, c: S₂).
    offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Invocations per workgroup, the Rust `kernels::WG` (the host sizes
// per-element grids by it); also sizes the common.wgsl helpers appended here.
const WG: u32 = 256u;

// Index in x (N, C, HW) of the j-th value of channel `ch` (j < N·HW, image
// by image): flattening the channel's planes keeps every invocation busy even
// when a plane is smaller than the workgroup (the 8×8 maps of a CIFAR ResNet).
fn channel_at(ch: u32, j: u32) -> u32 {
    let n = j / p.hw;
    return (n * p.c + ch) * p.hw + (j - n * p.hw);
}

// 1/σ as the CPU computes it (1 / sqrt, not inverseSqrt, whose error bound
// is looser).
fn inv_std(v: f32) -> f32 {
    return 1.0 / sqrt(v + p.eps);
}

// ==== batchnorm_stats ====

// ---- bn_stats: mean[c], biased var[c]; one workgroup per channel ----
// Two passes over the channel, as the CPU: the mean first, then the squared
// deviations from it (E[x²] − E[x]² would cancel when |mean| ≫ σ).

@group(0) @binding(1) var<storage, read> st_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> st_mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> st_var: array<f32>;

@compute @workgroup_size(WG)
fn bn_stats(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    // Uniform per workgroup, so the early return keeps the barriers of
    // wg_sum in uniform control flow.
    let ch = flat_workgroup_id(wid, nwg);
    if (ch >= p.c) {
        return;
    }
    var s = 0.0;
    for (var j = li; j < p.count; j = j + WG) {
        s = s + st_x[channel_at(ch, j)];
    }
    let mean = wg_sum(s, li) * p.inv_count;
    var ss = 0.0;
    for (var j = li; j < p.count; j = j + WG) {
        let d = st_x[channel_at(ch, j)] - mean;
        ss = ss + d * d;
    }
    let variance = wg_sum(ss, li) * p.inv_count;
    if (li == 0u) {
        st_mean[ch] = mean;
        st_var[ch] = variance;
    }
}

// ==== batchnorm_fwd ====

// ---- bn_affine: ab = [γ/σ …, β − mean·γ/σ …], one invocation per channel ----
// The normalisation is an affine map per channel; folding it once here
// leaves two loads and one multiply-add per element to bn_fwd.

@group(0) @binding(1) var<storage, read> af_mean: array<f32>;
@group(0) @binding(2) var<storage, read> af_var: array<f32>;
@group(0) @binding(3) var<storage, read> af_gamma: array<f32>;
@group(0) @binding(4) var<storage, read> af_beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> af_ab: array<f32>;

@compute @workgroup_size(WG)
fn bn_affine(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let ch = linear_id(wid, nwg, li);
    if (ch >= p.c) {
        return;
    }
    let scale = af_gamma[ch] * inv_std(af_var[ch]);
    af_ab[ch] = scale;
    af_ab[p.c + ch] = af_beta[ch] - af_mean[ch] * scale;
}

// ---- bn_fwd: y = x·ab[c] + ab[C + c] ----

@group(0) @binding(1) var<storage, read> bf_x: array<f32>;
@group(0) @binding(2) var<storage, read> bf_ab: array<f32>;
@group(0) @binding(3) var<storage, read_write> bf_y: array<f32>;

@compute @workgroup_size(WG)
fn bn_fwd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    let ch = (i / p.hw) % p.c;
    bf_y[i] = bf_x[i] * bf_ab[ch] + bf_ab[p.c + ch];
}

// ==== batchnorm_bwd ====
// sums = [S₁ = Σ dy …, S₂ = Σ dy·x̂ …] (bn_bwd_sums); dbeta += S₁ and
// dgamma += S₂ (bn_acc, once each, skipped for an absent gradient); then, if
// dx is wanted, the per-channel constants (bn_bwd_coef) and dx (bn_bwd_dx).

// ---- bn_bwd_sums: S₁, S₂ per channel; one workgroup per channel ----

@group(0) @binding(1) var<storage, read> bs_x: array<f32>;
@group(0) @binding(2) var<storage, read> bs_dy: array<f32>;
@group(0) @binding(3) var<storage, read> bs_mean: array<f32>;
@group(0) @binding(4) var<storage, read> bs_var: array<f32>;
@group(0) @binding(5) var<storage, read_write> bs_sums: array<f32>;

@compute @workgroup_size(WG)
fn bn_bwd_sums(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let ch = flat_workgroup_id(wid, nwg);
    if (ch >= p.c) {
        return;
    }
    let mu = bs_mean[ch];
    let inv = inv_std(bs_var[ch]);
    // Both sums in one tree (wg_sum4's x and y): one set of barriers.
    var acc = vec4<f32>(0.0);
    for (var j = li; j < p.count; j = j + WG) {
        let idx = channel_at(ch, j);
        let g = bs_dy[idx];
        acc.x = acc.x + g;
        acc.y = acc.y + g * (bs_x[idx] - mu) * inv;
    }
    let t = wg_sum4(acc, li);
    if (li == 0u) {
        bs_sums[ch] = t.x;
        bs_sums[p.c + ch] = t.y;
    }
}

// ---- bn_acc: d[i] += sums[offset + i] for i < c (dbeta, dgamma) ----

@group(0) @binding(1) var<storage, read> ba_sums: array<f32>;
@group(0) @binding(2) var<storage, read_write> ba_d: array<f32>;

@compute @workgroup_size(WG)
fn bn_acc(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.c) {
        return;
    }
    ba_d[i] = ba_d[i] + ba_sums[p.offset + i];
}

// ---- bn_bwd_coef: coef[c] = (γ/σ, 1/σ, S₁/M, S₂/M), one invocation per channel ----

@group(0) @binding(1) var<storage, read> bc_var: array<f32>;
@group(0) @binding(2) var<storage, read> bc_gamma: array<f32>;
@group(0) @binding(3) var<storage, read> bc_sums: array<f32>;
@group(0) @binding(4) var<storage, read_write> bc_coef: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn bn_bwd_coef(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let ch = linear_id(wid, nwg, li);
    if (ch >= p.c) {
        return;
    }
    let inv = inv_std(bc_var[ch]);
    bc_coef[ch] = vec4<f32>(
        bc_gamma[ch] * inv,
        inv,
        bc_sums[ch] * p.inv_count,
        bc_sums[p.c + ch] * p.inv_count,
    );
}

// ---- bn_bwd_dx: dx += γ/σ·(dy − S₁/M − x̂·S₂/M), or γ/σ·dy ----
// Without batch statistics (running ones, constants of the step) the mean
// and variance carry no gradient, so only the direct term remains.

@group(0) @binding(1) var<storage, read> bd_x: array<f32>;
@group(0) @binding(2) var<storage, read> bd_dy: array<f32>;
@group(0) @binding(3) var<storage, read> bd_mean: array<f32>;
@group(0) @binding(4) var<storage, read> bd_coef: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> bd_dx: array<f32>;

@compute @workgroup_size(WG)
fn bn_bwd_dx(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    let ch = (i / p.hw) % p.c;
    let k = bd_coef[ch];
    let g = bd_dy[i];
    var d = k.x * g;
    if (p.batch_stats != 0u) {
        let xhat = (bd_x[i] - bd_mean[ch]) * k.y;
        d = k.x * (g - k.z - xhat * k.w);
    }
    bd_dx[i] = bd_dx[i] + d;
}

// ==== global average pooling ====

// ---- avgpool_fwd: y[r] = mean of x[r, 0..inner], one invocation per row ----
// Global pooling closes a network: rows = N·C are many and inner = H·W few
// (8×8, or 1×1 for an ImageNet ResNet on small images), so a workgroup per
// row would leave most of it idle; each invocation sums its row in order.

@group(0) @binding(1) var<storage, read> pf_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> pf_y: array<f32>;

@compute @workgroup_size(WG)
fn avgpool_fwd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let r = linear_id(wid, nwg, li);
    if (r >= p.total) {
        return;
    }
    let base = r * p.hw;
    var s = 0.0;
    for (var i = 0u; i < p.hw; i = i + 1u) {
        s = s + pf_x[base + i];
    }
    pf_y[r] = s * p.inv_count;
}

// ---- avgpool_bwd: dx[r, i] += dy[r] / inner, one invocation per element ----

@group(0) @binding(1) var<storage, read> pb_dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> pb_dx: array<f32>;

@compute @workgroup_size(WG)
fn avgpool_bwd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    pb_dx[i] = pb_dx[i] + pb_dy[i / p.hw] * p.inv_count;
}
