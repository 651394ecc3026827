// Dense matrix products: C[M,N] = alpha · op(A) · op(B) + beta · C, row-major,
// any M, N, K (edge tiles are bounds-checked), with leading dimensions and
// base offsets so one dispatch can also run a batch (workgroup_id.z = batch
// item, each with its own offsets) or a split of K (each z sums one K-chunk
// into its own partial C; reduce.wgsl `splitk_reduce` adds the partials).
//
// Two tile shapes of the same algorithm (workgroup tiles of A and B staged in
// workgroup memory, each invocation accumulating a register block of C; the
// next K-tile is fetched into registers while the current one is used):
//   gemm_64:  64×64 C tile, K-step 16, 256 invocations × 4×4 outputs
//   gemm_128: 128×128 C tile, K-step 8, 256 invocations × 8×8 outputs
// The host picks gemm_128 only when there are enough big tiles to fill the GPU.
// A third shape, gemm_reg (no workgroup memory, no barriers: 8×8 invocations
// × 4×4 outputs straight from global memory), is used on software adapters
// (lavapipe), where workgroup memory and barriers cost more than they save.
//
// Bindings (DESIGN.md, Conventions): 0 params, 1 A, 2 B (read), 3 C (read_write).

// Rust twin: `GemmParams` in src/backend/wgpu/kernels.rs (80 bytes).
struct Params {
    m: u32,
    n: u32,
    // K extent of one z item; the last item of a K split is clipped to k_total.
    k: u32,
    k_total: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    // bit 0: A stored [K, M]; bit 1: B stored [N, K].
    trans: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    _pad0: u32,
    // Per-z offsets (elements) of A, B and C.
    a_zs: u32,
    b_zs: u32,
    c_zs: u32,
    _pad1: u32,
    alpha: f32,
    beta: f32,
    _pad2: f32,
    _pad3: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// op(A)[i, kk] of the current z item, 0 outside the matrix.
fn load_a(base: u32, i: u32, kk: u32, ke: u32) -> f32 {
    if (i >= p.m || kk >= ke) {
        return 0.0;
    }
    if ((p.trans & 1u) == 0u) {
        return a[base + i * p.lda + kk];
    }
    return a[base + kk * p.lda + i];
}

// op(B)[kk, j] of the current z item, 0 outside the matrix.
fn load_b(base: u32, kk: u32, j: u32, ke: u32) -> f32 {
    if (j >= p.n || kk >= ke) {
        return 0.0;
    }
    if ((p.trans & 2u) == 0u) {
        return b[base + kk * p.ldb + j];
    }
    return b[base + j * p.ldb + kk];
}

// K extent of item z (the last item of a K split may be shorter).
fn k_extent(z: u32) -> u32 {
    let start = z * p.k;
    if (start >= p.k_total) {
        return 0u;
    }
    return min(p.k, p.k_total - start);
}

// C[row, col] = alpha · v + beta · C[row, col] (beta = 0 ignores C, even NaN).
fn store_c(base: u32, row: u32, col: u32, v: f32) {
    if (row < p.m && col < p.n) {
        let idx = base + row * p.ldc + col;
        var out = p.alpha * v;
        if (p.beta != 0.0) {
            out = out + p.beta * c[idx];
        }
        c[idx] = out;
    }
}

fn store_c4(base: u32, row: u32, col: u32, v: vec4<f32>) {
    store_c(base, row, col, v.x);
    store_c(base, row, col + 1u, v.y);
    store_c(base, row, col + 2u, v.z);
    store_c(base, row, col + 3u, v.w);
}

// ---- gemm_64 ----------------------------------------------------------------

const T64: u32 = 64u;
const K64: u32 = 16u;
// Row stride of the staged tiles in vec4s: 16 + 1 of padding against bank conflicts.
const S64: u32 = 17u;

// As64[kk * S64 + r / 4][r % 4] = op(A)[tile row r, kk]; Bs64 likewise for op(B)[kk, col].
var<workgroup> As64: array<vec4<f32>, 272>;
var<workgroup> Bs64: array<vec4<f32>, 272>;

// The tile elements invocation `li` fetches: e = li + 256·l for l = 0..3,
// mapped so that consecutive invocations read consecutive addresses.
fn a64_coord(e: u32) -> vec2<u32> {
    // (row, kk)
    if ((p.trans & 1u) == 0u) {
        return vec2<u32>(e >> 4u, e & 15u);
    }
    return vec2<u32>(e & 63u, e >> 6u);
}

fn b64_coord(e: u32) -> vec2<u32> {
    // (kk, col)
    if ((p.trans & 2u) == 0u) {
        return vec2<u32>(e >> 6u, e & 63u);
    }
    return vec2<u32>(e & 15u, e >> 4u);
}

@compute @workgroup_size(256)
fn gemm_64(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let z = wid.z;
    let ke = k_extent(z);
    let abase = p.a_off + z * p.a_zs;
    let bbase = p.b_off + z * p.b_zs;
    let cbase = p.c_off + z * p.c_zs;
    let row0 = wid.y * T64;
    let col0 = wid.x * T64;
    let tx = li & 15u;
    let ty = li >> 4u;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    // Registers holding the next K-tile (4 elements of A and 4 of B).
    var ra = vec4<f32>(0.0);
    var rb = vec4<f32>(0.0);
    let ca0 = a64_coord(li);
    let ca1 = a64_coord(li + 256u);
    let ca2 = a64_coord(li + 512u);
    let ca3 = a64_coord(li + 768u);
    let cb0 = b64_coord(li);
    let cb1 = b64_coord(li + 256u);
    let cb2 = b64_coord(li + 512u);
    let cb3 = b64_coord(li + 768u);

    let ntiles = (ke + K64 - 1u) / K64;
    if (ntiles > 0u) {
        ra = vec4<f32>(
            load_a(abase, row0 + ca0.x, ca0.y, ke),
            load_a(abase, row0 + ca1.x, ca1.y, ke),
            load_a(abase, row0 + ca2.x, ca2.y, ke),
            load_a(abase, row0 + ca3.x, ca3.y, ke),
        );
        rb = vec4<f32>(
            load_b(bbase, cb0.x, col0 + cb0.y, ke),
            load_b(bbase, cb1.x, col0 + cb1.y, ke),
            load_b(bbase, cb2.x, col0 + cb2.y, ke),
            load_b(bbase, cb3.x, col0 + cb3.y, ke),
        );
    }
    for (var t = 0u; t < ntiles; t = t + 1u) {
        workgroupBarrier();
        As64[ca0.y * S64 + (ca0.x >> 2u)][ca0.x & 3u] = ra.x;
        As64[ca1.y * S64 + (ca1.x >> 2u)][ca1.x & 3u] = ra.y;
        As64[ca2.y * S64 + (ca2.x >> 2u)][ca2.x & 3u] = ra.z;
        As64[ca3.y * S64 + (ca3.x >> 2u)][ca3.x & 3u] = ra.w;
        Bs64[cb0.x * S64 + (cb0.y >> 2u)][cb0.y & 3u] = rb.x;
        Bs64[cb1.x * S64 + (cb1.y >> 2u)][cb1.y & 3u] = rb.y;
        Bs64[cb2.x * S64 + (cb2.y >> 2u)][cb2.y & 3u] = rb.z;
        Bs64[cb3.x * S64 + (cb3.y >> 2u)][cb3.y & 3u] = rb.w;
        workgroupBarrier();
        if (t + 1u < ntiles) {
            let k0 = (t + 1u) * K64;
            ra = vec4<f32>(
                load_a(abase, row0 + ca0.x, k0 + ca0.y, ke),
                load_a(abase, row0 + ca1.x, k0 + ca1.y, ke),
                load_a(abase, row0 + ca2.x, k0 + ca2.y, ke),
                load_a(abase, row0 + ca3.x, k0 + ca3.y, ke),
            );
            rb = vec4<f32>(
                load_b(bbase, k0 + cb0.x, col0 + cb0.y, ke),
                load_b(bbase, k0 + cb1.x, col0 + cb1.y, ke),
                load_b(bbase, k0 + cb2.x, col0 + cb2.y, ke),
                load_b(bbase, k0 + cb3.x, col0 + cb3.y, ke),
            );
        }
        for (var kk = 0u; kk < K64; kk = kk + 1u) {
            let av = As64[kk * S64 + ty];
            let bv = Bs64[kk * S64 + tx];
            acc0 = fma(vec4<f32>(av.x), bv, acc0);
            acc1 = fma(vec4<f32>(av.y), bv, acc1);
            acc2 = fma(vec4<f32>(av.z), bv, acc2);
            acc3 = fma(vec4<f32>(av.w), bv, acc3);
        }
    }

    let r = row0 + ty * 4u;
    let cc = col0 + tx * 4u;
    store_c4(cbase, r, cc, acc0);
    store_c4(cbase, r + 1u, cc, acc1);
    store_c4(cbase, r + 2u, cc, acc2);
    store_c4(cbase, r + 3u, cc, acc3);
}

// ---- gemm_128 ---------------------------------------------------------------

const T128: u32 = 128u;
const K128: u32 = 8u;
// Row stride of the staged tiles in vec4s: 32 + 1 of padding.
const S128: u32 = 33u;

var<workgroup> As128: array<vec4<f32>, 264>;
var<workgroup> Bs128: array<vec4<f32>, 264>;

fn a128_coord(e: u32) -> vec2<u32> {
    // (row, kk)
    if ((p.trans & 1u) == 0u) {
        return vec2<u32>(e >> 3u, e & 7u);
    }
    return vec2<u32>(e & 127u, e >> 7u);
}

fn b128_coord(e: u32) -> vec2<u32> {
    // (kk, col)
    if ((p.trans & 2u) == 0u) {
        return vec2<u32>(e >> 7u, e & 127u);
    }
    return vec2<u32>(e & 7u, e >> 3u);
}

// Each invocation owns rows {4ty..4ty+3, 64+4ty..64+4ty+3} and columns
// {4tx..4tx+3, 64+4tx..64+4tx+3}: its vec4 reads of the staged tiles are
// contiguous across the 16 invocations of a row (no bank conflicts).
@compute @workgroup_size(256)
fn gemm_128(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let z = wid.z;
    let ke = k_extent(z);
    let abase = p.a_off + z * p.a_zs;
    let bbase = p.b_off + z * p.b_zs;
    let cbase = p.c_off + z * p.c_zs;
    let row0 = wid.y * T128;
    let col0 = wid.x * T128;
    let tx = li & 15u;
    let ty = li >> 4u;

    // acc<r><h>: row r of the 8 owned rows, column half h.
    var acc00 = vec4<f32>(0.0);
    var acc01 = vec4<f32>(0.0);
    var acc10 = vec4<f32>(0.0);
    var acc11 = vec4<f32>(0.0);
    var acc20 = vec4<f32>(0.0);
    var acc21 = vec4<f32>(0.0);
    var acc30 = vec4<f32>(0.0);
    var acc31 = vec4<f32>(0.0);
    var acc40 = vec4<f32>(0.0);
    var acc41 = vec4<f32>(0.0);
    var acc50 = vec4<f32>(0.0);
    var acc51 = vec4<f32>(0.0);
    var acc60 = vec4<f32>(0.0);
    var acc61 = vec4<f32>(0.0);
    var acc70 = vec4<f32>(0.0);
    var acc71 = vec4<f32>(0.0);

    var ra = vec4<f32>(0.0);
    var rb = vec4<f32>(0.0);
    let ca0 = a128_coord(li);
    let ca1 = a128_coord(li + 256u);
    let ca2 = a128_coord(li + 512u);
    let ca3 = a128_coord(li + 768u);
    let cb0 = b128_coord(li);
    let cb1 = b128_coord(li + 256u);
    let cb2 = b128_coord(li + 512u);
    let cb3 = b128_coord(li + 768u);

    let ntiles = (ke + K128 - 1u) / K128;
    if (ntiles > 0u) {
        ra = vec4<f32>(
            load_a(abase, row0 + ca0.x, ca0.y, ke),
            load_a(abase, row0 + ca1.x, ca1.y, ke),
            load_a(abase, row0 + ca2.x, ca2.y, ke),
            load_a(abase, row0 + ca3.x, ca3.y, ke),
        );
        rb = vec4<f32>(
            load_b(bbase, cb0.x, col0 + cb0.y, ke),
            load_b(bbase, cb1.x, col0 + cb1.y, ke),
            load_b(bbase, cb2.x, col0 + cb2.y, ke),
            load_b(bbase, cb3.x, col0 + cb3.y, ke),
        );
    }
    for (var t = 0u; t < ntiles; t = t + 1u) {
        workgroupBarrier();
        As128[ca0.y * S128 + (ca0.x >> 2u)][ca0.x & 3u] = ra.x;
        As128[ca1.y * S128 + (ca1.x >> 2u)][ca1.x & 3u] = ra.y;
        As128[ca2.y * S128 + (ca2.x >> 2u)][ca2.x & 3u] = ra.z;
        As128[ca3.y * S128 + (ca3.x >> 2u)][ca3.x & 3u] = ra.w;
        Bs128[cb0.x * S128 + (cb0.y >> 2u)][cb0.y & 3u] = rb.x;
        Bs128[cb1.x * S128 + (cb1.y >> 2u)][cb1.y & 3u] = rb.y;
        Bs128[cb2.x * S128 + (cb2.y >> 2u)][cb2.y & 3u] = rb.z;
        Bs128[cb3.x * S128 + (cb3.y >> 2u)][cb3.y & 3u] = rb.w;
        workgroupBarrier();
        if (t + 1u < ntiles) {
            let k0 = (t + 1u) * K128;
            ra = vec4<f32>(
                load_a(abase, row0 + ca0.x, k0 + ca0.y, ke),
                load_a(abase, row0 + ca1.x, k0 + ca1.y, ke),
                load_a(abase, row0 + ca2.x, k0 + ca2.y, ke),
                load_a(abase, row0 + ca3.x, k0 + ca3.y, ke),
            );
            rb = vec4<f32>(
                load_b(bbase, k0 + cb0.x, col0 + cb0.y, ke),
                load_b(bbase, k0 + cb1.x, col0 + cb1.y, ke),
                load_b(bbase, k0 + cb2.x, col0 + cb2.y, ke),
                load_b(bbase, k0 + cb3.x, col0 + cb3.y, ke),
            );
        }
        for (var kk = 0u; kk < K128; kk = kk + 1u) {
            let a0 = As128[kk * S128 + ty];
            let a1 = As128[kk * S128 + 16u + ty];
            let b0 = Bs128[kk * S128 + tx];
            let b1 = Bs128[kk * S128 + 16u + tx];
            acc00 = fma(vec4<f32>(a0.x), b0, acc00);
            acc01 = fma(vec4<f32>(a0.x), b1, acc01);
            acc10 = fma(vec4<f32>(a0.y), b0, acc10);
            acc11 = fma(vec4<f32>(a0.y), b1, acc11);
            acc20 = fma(vec4<f32>(a0.z), b0, acc20);
            acc21 = fma(vec4<f32>(a0.z), b1, acc21);
            acc30 = fma(vec4<f32>(a0.w), b0, acc30);
            acc31 = fma(vec4<f32>(a0.w), b1, acc31);
            acc40 = fma(vec4<f32>(a1.x), b0, acc40);
            acc41 = fma(vec4<f32>(a1.x), b1, acc41);
            acc50 = fma(vec4<f32>(a1.y), b0, acc50);
            acc51 = fma(vec4<f32>(a1.y), b1, acc51);
            acc60 = fma(vec4<f32>(a1.z), b0, acc60);
            acc61 = fma(vec4<f32>(a1.z), b1, acc61);
            acc70 = fma(vec4<f32>(a1.w), b0, acc70);
            acc71 = fma(vec4<f32>(a1.w), b1, acc71);
        }
    }

    let r0 = row0 + ty * 4u;
    let r1 = row0 + 64u + ty * 4u;
    let c0 = col0 + tx * 4u;
    let c1 = col0 + 64u + tx * 4u;
    store_c4(cbase, r0, c0, acc00);
    store_c4(cbase, r0, c1, acc01);
    store_c4(cbase, r0 + 1u, c0, acc10);
    store_c4(cbase, r0 + 1u, c1, acc11);
    store_c4(cbase, r0 + 2u, c0, acc20);
    store_c4(cbase, r0 + 2u, c1, acc21);
    store_c4(cbase, r0 + 3u, c0, acc30);
    store_c4(cbase, r0 + 3u, c1, acc31);
    store_c4(cbase, r1, c0, acc40);
    store_c4(cbase, r1, c1, acc41);
    store_c4(cbase, r1 + 1u, c0, acc50);
    store_c4(cbase, r1 + 1u, c1, acc51);
    store_c4(cbase, r1 + 2u, c0, acc60);
    store_c4(cbase, r1 + 2u, c1, acc61);
    store_c4(cbase, r1 + 3u, c0, acc70);
    store_c4(cbase, r1 + 3u, c1, acc71);
}

// ---- gemm_reg (software adapters) -------------------------------------------

@compute @workgroup_size(8, 8)
fn gemm_reg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let z = wid.z;
    let ke = k_extent(z);
    let abase = p.a_off + z * p.a_zs;
    let bbase = p.b_off + z * p.b_zs;
    let cbase = p.c_off + z * p.c_zs;
    let r = (wid.y * 8u + lid.y) * 4u;
    let cc = (wid.x * 8u + lid.x) * 4u;
    if (r >= p.m || cc >= p.n) {
        return;
    }
    // Element strides of op(A) along (row, k) and of op(B) along (k, col).
    var sa = vec2<u32>(p.lda, 1u);
    if ((p.trans & 1u) != 0u) {
        sa = vec2<u32>(1u, p.lda);
    }
    var sb = vec2<u32>(p.ldb, 1u);
    if ((p.trans & 2u) != 0u) {
        sb = vec2<u32>(1u, p.ldb);
    }
    // Rows/columns past the edge read the last valid one (discarded at the store).
    let a0 = abase + min(r, p.m - 1u) * sa.x;
    let a1 = abase + min(r + 1u, p.m - 1u) * sa.x;
    let a2 = abase + min(r + 2u, p.m - 1u) * sa.x;
    let a3 = abase + min(r + 3u, p.m - 1u) * sa.x;
    let b0 = bbase + min(cc, p.n - 1u) * sb.y;
    let b1 = bbase + min(cc + 1u, p.n - 1u) * sb.y;
    let b2 = bbase + min(cc + 2u, p.n - 1u) * sb.y;
    let b3 = bbase + min(cc + 3u, p.n - 1u) * sb.y;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < ke; kk = kk + 1u) {
        let ka = kk * sa.y;
        let kb = kk * sb.x;
        let bv = vec4<f32>(b[b0 + kb], b[b1 + kb], b[b2 + kb], b[b3 + kb]);
        acc0 = fma(vec4<f32>(a[a0 + ka]), bv, acc0);
        acc1 = fma(vec4<f32>(a[a1 + ka]), bv, acc1);
        acc2 = fma(vec4<f32>(a[a2 + ka]), bv, acc2);
        acc3 = fma(vec4<f32>(a[a3 + ka]), bv, acc3);
    }
    store_c4(cbase, r, cc, acc0);
    store_c4(cbase, r + 1u, cc, acc1);
    store_c4(cbase, r + 2u, cc, acc2);
    store_c4(cbase, r + 3u, cc, acc3);
}
