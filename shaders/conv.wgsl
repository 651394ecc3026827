// 2-D convolution as im2col + gemm (matmul.wgsl) and gemm + col2im:
//   forward:         cols_n = im2col(x_n);   y_n = W · cols_n           (batched gemm)
//   backward-data:   dcols_n = Wᵀ · dy_n;    dx_n += col2im(dcols_n)
//   backward-weight: cols_n = im2col(x_n);   part_n = dy_n · cols_nᵀ;   dW += Σ_n part_n
// Columns are laid out per image as (C·KH·KW, OH·OW), images of one chunk
// back to back. The host cuts the batch into chunks that fit the scratch.
//
// Bindings (DESIGN.md, Conventions): 0 params, 1 input (read), 2 output (read_write).

// Rust twin: `ConvUniform` in src/backend/wgpu/kernels.rs (64 bytes).
struct Params {
    // Threads: nb·C·KH·KW·OH·OW (im2col) or nb·C·H·W (col2im).
    total: u32,
    c: u32,
    h: u32,
    w: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    oh: u32,
    ow: u32,
    // Element offset of the chunk's first image in x (or dx).
    x_off: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Invocations per workgroup, the Rust `kernels::WG` (the host sizes
// per-element grids by it); also sizes the common.wgsl helpers appended here.
const WG: u32 = 256u;

// ---- im2col: cols[z, (ci·KH + ki)·KW + kj, oy·OW + ox] = x[z, ci, iy, ix] ----

@group(0) @binding(1) var<storage, read> ic_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> ic_cols: array<f32>;

@compute @workgroup_size(WG)
fn im2col(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    let ohw = p.oh * p.ow;
    let kk = p.kh * p.kw;
    let per_img = p.c * kk * ohw;
    let z = i / per_img;
    let rem = i - z * per_img;
    let row = rem / ohw;
    let pos = rem - row * ohw;
    let ci = row / kk;
    let kr = row - ci * kk;
    let ki = kr / p.kw;
    let kj = kr - ki * p.kw;
    let oy = pos / p.ow;
    let ox = pos - oy * p.ow;
    let iy = i32(oy * p.sh + ki) - i32(p.ph);
    let ix = i32(ox * p.sw + kj) - i32(p.pw);
    var v = 0.0;
    if (iy >= 0 && ix >= 0 && iy < i32(p.h) && ix < i32(p.w)) {
        let plane = p.x_off + (z * p.c + ci) * p.h * p.w;
        v = ic_x[plane + u32(iy) * p.w + u32(ix)];
    }
    ic_cols[i] = v;
}

// ---- col2im: dx[z, ci, iy, ix] += Σ over the (ki, kj) that read it ----

@group(0) @binding(1) var<storage, read> ci_dcols: array<f32>;
@group(0) @binding(2) var<storage, read_write> ci_dx: array<f32>;

@compute @workgroup_size(WG)
fn col2im(
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
    let z = plane / p.c;
    let ci = plane - z * p.c;
    let iy = i32(cell / p.w);
    let ix = i32(cell % p.w);
    let ohw = p.oh * p.ow;
    let kk = p.kh * p.kw;
    let img = z * p.c * kk * ohw;
    var sum = 0.0;
    for (var ki = 0u; ki < p.kh; ki = ki + 1u) {
        // oy · sh = iy + ph − ki must be a non-negative multiple of sh below OH·sh.
        let ty = iy + i32(p.ph) - i32(ki);
        if (ty < 0 || (ty % i32(p.sh)) != 0) {
            continue;
        }
        let oy = u32(ty) / p.sh;
        if (oy >= p.oh) {
            continue;
        }
        for (var kj = 0u; kj < p.kw; kj = kj + 1u) {
            let tx = ix + i32(p.pw) - i32(kj);
            if (tx < 0 || (tx % i32(p.sw)) != 0) {
                continue;
            }
            let ox = u32(tx) / p.sw;
            if (ox >= p.ow) {
                continue;
            }
            let row = (ci * p.kh + ki) * p.kw + kj;
            sum = sum + ci_dcols[img + row * ohw + oy * p.ow + ox];
        }
    }
    let dst = p.x_off + i;
    ci_dx[dst] = ci_dx[dst] + sum;
}
