//! Direct convolution for 3×3, stride-1 layers with at most 3 input
//! channels: the trunk's first layer, 1 → 32 channels at 28×28. Through
//! im2col its gemm has a reduction of only 9, so the gemm kernel spends its
//! time loading and storing C; here each output row is built from the nine
//! shifted rows of the zero-padded input, 8 outputs at a time in one AVX2
//! register, or (AVX-512) 16 at a time for `ROWS512` rows at once. The loops
//! are written with `std::arch` intrinsics: the compiler's auto-vectoriser
//! left them scalar. On the portable path such layers stay on im2col.
//!
//! Each output is `bias + Σ_c Σ_ij w·x` as one FMA chain in the same order on
//! both paths, so the AVX2 and AVX-512 forward passes give the same bits.
//! Backward-weight runs the AVX2 kernel on both (it is a small share of a
//! step; a 16-lane version would sum in another order).
//!
//! Forward and backward-weight only: the first layer's input needs no
//! gradient, and any other layer takes the im2col path for backward-data.
//! When the layer is pooled (cnn-s, cnn-m), the weight gradient comes from
//! the pooled gradient and each window's winner ([`bwd_weight_pooled`]),
//! never from the 4× larger gradient of the convolution's output.

use super::simd::{self, SimdPath};
use super::{add_partials, batch_partials, Conv2dParams, PoolParams};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::Mutex;

/// Outputs per register.
const LANES: usize = 8;
/// Chunks of a row computed together: four independent FMA chains hide the
/// FMA latency that one accumulator per chunk would wait on.
const GROUP: usize = 4;
/// Kernel side handled here.
const K: usize = 3;
/// Most input channels handled here (RGB).
const MAX_CHANNELS: usize = 3;

/// Output rows per AVX-512 forward call: each row is two 16-lane FMA chains
/// per 32 outputs, so four rows keep eight chains in flight (two FMA pipes ×
/// four cycles of latency), where one row would wait on its two.
const ROWS512: usize = 4;

/// Whether the direct path computes this convolution (on the active SIMD path).
pub fn applies(p: &Conv2dParams) -> bool {
    shape_fits(p) && simd::active() != SimdPath::Portable
}

fn shape_fits(p: &Conv2dParams) -> bool {
    p.sh == 1 && p.sw == 1 && p.kh == K && p.kw == K && p.c <= MAX_CHANNELS
}

/// Output rows computed together on `path`.
fn rows_per_call(path: SimdPath) -> usize {
    if path == SimdPath::Avx512 {
        ROWS512
    } else {
        1
    }
}

/// Asserts what every kernel call below relies on: a vector path this CPU has.
fn check_path(path: SimdPath) {
    assert!(
        path != SimdPath::Portable && path.supported(),
        "direct convolution on unsupported SIMD path {path}"
    );
}

/// The inner kernels: AVX2 (8 lanes) and AVX-512 (16 lanes).
#[cfg(target_arch = "x86_64")]
mod avx {
    use super::{GROUP, K, LANES};
    use std::arch::x86_64::*;

    /// Output rows `oy..oy + R` of plane k, as [`row_fwd`] computes each,
    /// 16 lanes per register: row `r` into `out[r·span..]` (`span` = the
    /// whole groups of chunks of a row, a multiple of 32).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F (+ FMA).
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rows_fwd512<const R: usize>(
        oy: usize,
        padded: &[f32],
        plane: usize,
        row: usize,
        w: &[f32],
        bias: f32,
        out: &mut [f32],
        span: usize,
    ) {
        const V: usize = 2;
        const SPAN: usize = V * 16;
        assert!(span.is_multiple_of(SPAN) && out.len() >= R * span && span + K - 1 <= row);
        for g in 0..span / SPAN {
            let mut acc = [[_mm512_set1_ps(bias); V]; R];
            for (c, wc) in w.chunks_exact(K * K).enumerate() {
                for i in 0..K {
                    for j in 0..K {
                        let wv = _mm512_set1_ps(wc[i * K + j]);
                        for (r, acc_r) in acc.iter_mut().enumerate() {
                            let x = &padded[c * plane + (oy + r + i) * row + g * SPAN..][..SPAN + K - 1];
                            for (q, a) in acc_r.iter_mut().enumerate() {
                                // SAFETY: x holds SPAN + 2 floats, q·16 + j + 16 ≤ SPAN + 2.
                                let xv = unsafe { _mm512_loadu_ps(x.as_ptr().add(q * 16 + j)) };
                                *a = _mm512_fmadd_ps(wv, xv, *a);
                            }
                        }
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let o = &mut out[r * span + g * SPAN..][..SPAN];
                for (q, &a) in acc_r.iter().enumerate() {
                    // SAFETY: `o` is SPAN floats, so 16 are writable at q·16.
                    unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(q * 16), a) };
                }
            }
        }
    }

    /// One output row `oy` of plane k: `out[ox] = bias + Σ_c Σ_ij w[c][i][j] ·
    /// x_c[oy + i][ox + j]` over the padded planes (`plane` floats apart,
    /// rows `row` wide), 8 outputs per register, into `out_row` (whole groups
    /// of chunks, ≤ row − 2 floats; the lanes past the output width are junk).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA ([`available`]).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_fwd(
        oy: usize,
        padded: &[f32],
        plane: usize,
        row: usize,
        w: &[f32],
        bias: f32,
        out_row: &mut [f32],
    ) {
        const SPAN: usize = GROUP * LANES;
        for (g, out) in out_row.chunks_exact_mut(SPAN).enumerate() {
            let mut acc = [_mm256_set1_ps(bias); GROUP];
            for (c, wc) in w.chunks_exact(K * K).enumerate() {
                for i in 0..K {
                    let r = &padded[c * plane + (oy + i) * row + g * SPAN..][..SPAN + K - 1];
                    for j in 0..K {
                        let wv = _mm256_set1_ps(wc[i * K + j]);
                        for (q, a) in acc.iter_mut().enumerate() {
                            // SAFETY: r holds SPAN + 2 floats, q·8 + j + 8 ≤ SPAN + 2.
                            let x = unsafe { _mm256_loadu_ps(r.as_ptr().add(q * LANES + j)) };
                            *a = _mm256_fmadd_ps(wv, x, *a);
                        }
                    }
                }
            }
            for (q, a) in acc.into_iter().enumerate() {
                // SAFETY: `out` is SPAN floats, so 8 are writable at q·8.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(q * LANES), a) };
            }
        }
    }

    /// The nine tap gradients of one (output, input) channel pair over one
    /// image: `dw[i·3 + j] += Σ_{oy,ox} dy_k[oy][ox] · x_c[oy + i][ox + j]`,
    /// `x_c` the padded plane (rows `row` wide). `dy_row` (a whole number of
    /// chunks, ≤ row − 2) carries each dy row, zero past `ow`.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA ([`available`]).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn plane_bwd_weight(
        dw: &mut [f32],
        dy_k: &[f32],
        ow: usize,
        x_c: &[f32],
        row: usize,
        dy_row: &mut [f32],
    ) {
        let mut a = [_mm256_setzero_ps(); K * K];
        for (oy, src) in dy_k.chunks_exact(ow).enumerate() {
            dy_row[..ow].copy_from_slice(src);
            for (ch, d) in dy_row.chunks_exact(LANES).enumerate() {
                // SAFETY: `d` is exactly LANES floats.
                let d = unsafe { _mm256_loadu_ps(d.as_ptr()) };
                for i in 0..K {
                    let r = &x_c[(oy + i) * row + ch * LANES..][..LANES + K - 1];
                    for j in 0..K {
                        // SAFETY: r holds LANES + 2 floats and j ≤ 2.
                        let x = unsafe { _mm256_loadu_ps(r.as_ptr().add(j)) };
                        a[i * K + j] = _mm256_fmadd_ps(d, x, a[i * K + j]);
                    }
                }
            }
        }
        let mut lanes = [0.0f32; LANES];
        for (dst, v) in dw.iter_mut().zip(a) {
            // SAFETY: `lanes` is exactly LANES floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
            *dst += lanes.iter().sum::<f32>();
        }
    }
}

/// Elsewhere the direct path never applies (only the portable path exists).
#[cfg(not(target_arch = "x86_64"))]
mod avx {
    #[allow(clippy::missing_safety_doc, clippy::too_many_arguments)]
    pub unsafe fn rows_fwd512<const R: usize>(
        _: usize,
        _: &[f32],
        _: usize,
        _: usize,
        _: &[f32],
        _: f32,
        _: &mut [f32],
        _: usize,
    ) {
        unreachable!("the direct convolution needs AVX-512")
    }
    #[allow(clippy::missing_safety_doc)]
    pub unsafe fn row_fwd(_: usize, _: &[f32], _: usize, _: usize, _: &[f32], _: f32, _: &mut [f32]) {
        unreachable!("the direct convolution needs AVX2")
    }
    #[allow(clippy::missing_safety_doc)]
    pub unsafe fn plane_bwd_weight(_: &mut [f32], _: &[f32], _: usize, _: &[f32], _: usize, _: &mut [f32]) {
        unreachable!("the direct convolution needs AVX2")
    }
}

/// Geometry of the zero-padded input planes: each row `row` wide (padding
/// plus slack so the last 8-wide chunk of a row reads inside it).
#[derive(Clone, Copy)]
struct Padded {
    rows: usize,
    row: usize,
    chunks: usize,
}

impl Padded {
    fn new(p: &Conv2dParams) -> Self {
        // Whole groups of chunks, so the forward kernel's loads stay in the row.
        let chunks = p.ow().div_ceil(LANES).next_multiple_of(GROUP);
        Padded { rows: p.h + 2 * p.ph, row: chunks * LANES + p.kw - 1, chunks }
    }
    fn plane(&self) -> usize {
        self.rows * self.row
    }
}

thread_local! {
    /// The padded input planes of one image, and one padded output row.
    static PADDED: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Copies the `c` planes of one image into `dst` (zeroed borders).
fn pad_image(dst: &mut [f32], x_img: &[f32], p: &Conv2dParams, g: Padded) {
    dst.fill(0.0);
    for (c, plane) in x_img.chunks_exact(p.h * p.w).take(p.c).enumerate() {
        for (y, row) in plane.chunks_exact(p.w).enumerate() {
            let at = c * g.plane() + (y + p.ph) * g.row + p.pw;
            dst[at..at + p.w].copy_from_slice(row);
        }
    }
}

/// Runs `f(out, padded, rows, geometry)` for every image in parallel, `out`
/// the image's item of `outs`, `padded` its zero-padded input planes and
/// `rows` scratch for `out_rows` output rows (thread-local buffers).
fn each_image<O: Send>(
    outs: impl IndexedParallelIterator<Item = O>,
    x: &[f32],
    p: &Conv2dParams,
    out_rows: usize,
    f: impl Fn(O, &[f32], &mut [f32], Padded) + Sync + Send,
) {
    let g = Padded::new(p);
    let x_len = p.c * p.h * p.w;
    outs.zip(x[..p.n * x_len].par_chunks(x_len)).for_each(|(out, x_img)| {
        PADDED.with(|buf| {
            let (padded, rows) = &mut *buf.borrow_mut();
            padded.resize(p.c * g.plane(), 0.0);
            let rows_len = out_rows * g.chunks * LANES;
            rows.resize(rows_len.max(rows.len()), 0.0);
            pad_image(padded, x_img, p, g);
            f(out, padded, &mut rows[..rows_len], g);
        })
    });
}

/// Output rows `oy..oy + n` (n ≤ [`rows_per_call`]) of one output channel
/// (kernel `wk`, bias `b`) into `rows`, row r at `r·span`.
#[allow(clippy::too_many_arguments)]
fn out_rows(
    path: SimdPath,
    oy: usize,
    n: usize,
    padded: &[f32],
    g: Padded,
    wk: &[f32],
    b: f32,
    rows: &mut [f32],
) {
    let (span, plane) = (g.chunks * LANES, g.plane());
    match path {
        // SAFETY: `check_path` (in every caller) asserted the CPU has AVX-512.
        SimdPath::Avx512 => unsafe {
            match n {
                4 => avx::rows_fwd512::<4>(oy, padded, plane, g.row, wk, b, rows, span),
                3 => avx::rows_fwd512::<3>(oy, padded, plane, g.row, wk, b, rows, span),
                2 => avx::rows_fwd512::<2>(oy, padded, plane, g.row, wk, b, rows, span),
                _ => avx::rows_fwd512::<1>(oy, padded, plane, g.row, wk, b, rows, span),
            }
        },
        _ => {
            for r in 0..n {
                // SAFETY: `check_path` (in every caller) asserted AVX2 + FMA.
                unsafe { avx::row_fwd(oy + r, padded, plane, g.row, wk, b, &mut rows[r * span..][..span]) };
            }
        }
    }
}

/// `y = conv(x, w) (+ bias)`, overwriting `y`; images in parallel.
pub fn fwd(y: &mut [f32], x: &[f32], w: &[f32], bias: Option<&[f32]>, p: &Conv2dParams) {
    fwd_on(simd::active(), y, x, w, bias, p)
}

fn fwd_on(path: SimdPath, y: &mut [f32], x: &[f32], w: &[f32], bias: Option<&[f32]>, p: &Conv2dParams) {
    check_path(path);
    assert!(shape_fits(p), "direct::fwd: {p:?}");
    let (oh, ow, patch) = (p.oh(), p.ow(), p.patch());
    let y_len = p.oc * oh * ow;
    let per_call = rows_per_call(path);
    each_image(y[..p.n * y_len].par_chunks_mut(y_len), x, p, per_call, |y_img, padded, rows, g| {
        let span = g.chunks * LANES;
        for (k, y_k) in y_img.chunks_exact_mut(oh * ow).enumerate() {
            let (b, wk) = (bias.map_or(0.0, |b| b[k]), &w[k * patch..(k + 1) * patch]);
            for oy in (0..oh).step_by(per_call) {
                let n = per_call.min(oh - oy);
                out_rows(path, oy, n, padded, g, wk, b, rows);
                for (r, y_row) in y_k[oy * ow..(oy + n) * ow].chunks_exact_mut(ow).enumerate() {
                    y_row.copy_from_slice(&rows[r * span..][..ow]);
                }
            }
        }
    });
}

/// `y = maxpool₂ₓ₂(conv(x, w) + bias)` with the argmax of each window (an
/// index into the convolution's output plane, as `maxpool2d_fwd` gives it).
/// Each pair of output rows is pooled as soon as it is made, so the
/// convolution's output is never written out; rows and columns past the last
/// whole window are not computed.
pub fn fwd_pool(y: &mut [f32], am: &mut [u32], x: &[f32], w: &[f32], bias: &[f32], p: &Conv2dParams) {
    fwd_pool_on(simd::active(), y, am, x, w, bias, p)
}

#[allow(clippy::too_many_arguments)]
fn fwd_pool_on(
    path: SimdPath,
    y: &mut [f32],
    am: &mut [u32],
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    p: &Conv2dParams,
) {
    check_path(path);
    assert!(shape_fits(p), "direct::fwd_pool: {p:?}");
    let (ow, patch) = (p.ow(), p.patch());
    let (ph, pw) = (p.oh() / 2, ow / 2);
    let y_len = p.oc * ph * pw;
    // Pooled rows per kernel call: two output rows each.
    let per_call = rows_per_call(path).div_ceil(2);
    let outs = y[..p.n * y_len].par_chunks_mut(y_len).zip(am[..p.n * y_len].par_chunks_mut(y_len));
    each_image(outs, x, p, 2 * per_call, |(y_img, a_img), padded, rows, g| {
        let span = g.chunks * LANES;
        for (k, (y_k, a_k)) in
            y_img.chunks_exact_mut(ph * pw).zip(a_img.chunks_exact_mut(ph * pw)).enumerate()
        {
            let wk = &w[k * patch..(k + 1) * patch];
            for py0 in (0..ph).step_by(per_call) {
                let n = per_call.min(ph - py0);
                out_rows(path, 2 * py0, 2 * n, padded, g, wk, bias[k], rows);
                for (i, pair) in rows[..2 * n * span].chunks_exact(2 * span).enumerate() {
                    let (r0, r1) = pair.split_at(span);
                    let py = py0 + i;
                    let at = py * pw..(py + 1) * pw;
                    with_simd!(path; super::pool_rows(
                        &mut y_k[at.clone()],
                        &mut a_k[at.clone()],
                        r0,
                        r1,
                        ow,
                        2 * py * ow
                    ));
                }
            }
        }
    });
}

/// `dw += ∂L/∂w`, per thread chunk of images (`batch_partials`).
pub fn bwd_weight(dw: &mut [f32], x: &[f32], dy: &[f32], p: &Conv2dParams, partials: &Mutex<Vec<Vec<f32>>>) {
    check_path(simd::active());
    assert!(shape_fits(p), "direct::bwd_weight: {p:?}");
    let (oh, ow) = (p.oh(), p.ow());
    let y_len = p.oc * oh * ow;
    weight_gradient(dw, x, p, partials, |part, img, padded, g, dy_row| {
        let dy_img = &dy[img * y_len..(img + 1) * y_len];
        for (k, dy_k) in dy_img.chunks_exact(oh * ow).enumerate() {
            for (c, x_c) in padded.chunks_exact(g.plane()).enumerate() {
                let dw_kc = &mut part[(k * p.c + c) * K * K..][..K * K];
                // SAFETY: `check_path` asserted a vector path this CPU
                // has, and both include AVX2 + FMA.
                unsafe { avx::plane_bwd_weight(dw_kc, dy_k, ow, x_c, g.row, dy_row) };
            }
        }
    });
}

/// `dw += Σ_images image(part, img, padded, g, row)`, the frame both
/// weight gradients share: per thread chunk of images (`batch_partials`),
/// each image's input planes padded into `padded` (one float of slack past
/// the last plane), `row` a scratch row of `g.chunks · LANES` floats zeroed
/// once per chunk; the partials summed in chunk order.
fn weight_gradient(
    dw: &mut [f32],
    x: &[f32],
    p: &Conv2dParams,
    partials: &Mutex<Vec<Vec<f32>>>,
    image: impl Fn(&mut [f32], usize, &[f32], Padded, &mut [f32]) + Sync,
) {
    let g = Padded::new(p);
    let (x_len, patch) = (p.c * p.h * p.w, p.patch());
    let parts = batch_partials(partials, p.n, p.oc * patch, |part, images| {
        PADDED.with(|buf| {
            let (padded, row) = &mut *buf.borrow_mut();
            padded.resize(p.c * g.plane() + 1, 0.0);
            row.clear();
            row.resize(g.chunks * LANES, 0.0);
            for img in images {
                pad_image(padded, &x[img * x_len..(img + 1) * x_len], p, g);
                image(part, img, padded, g, row);
            }
        })
    });
    add_partials(&mut dw[..p.oc * patch], &parts);
}

/// Whether [`bwd_weight_pooled`] takes this pooling of this convolution:
/// the pooling covers the convolution's whole output, planes of `oh × ow`.
pub fn pooled_applies(p: &Conv2dParams, pool: &PoolParams) -> bool {
    shape_fits(p) && pool.n == p.n && pool.c == p.oc && pool.h == p.oh() && pool.w == p.ow()
}

/// `dw += ∂L/∂w` of `maxpool(conv(x))` from the pooled gradient `dy` and
/// the argmax of each window (an index into the convolution's output
/// plane): each window's winner `(oy, ox)` adds `dy · x[oy + i][ox + j]` to
/// tap `(i, j)`: the only terms of the dense sum whose output gradient can
/// be other than zero, a quarter of them. Per thread chunk of images
/// (`batch_partials`), summed in chunk order.
///
/// The taps of one input row are one 4-lane multiply and add (the fourth
/// lane is the padded row's next value, never stored), auto-vectorised on
/// every path with the same operations, so every path gives the same bits.
pub fn bwd_weight_pooled(
    dw: &mut [f32],
    x: &[f32],
    dy: &[f32],
    argmax: &[u32],
    p: &Conv2dParams,
    pool: &PoolParams,
    partials: &Mutex<Vec<Vec<f32>>>,
) {
    bwd_weight_pooled_on(simd::active(), dw, x, dy, argmax, p, pool, partials)
}

#[allow(clippy::too_many_arguments)]
fn bwd_weight_pooled_on(
    path: SimdPath,
    dw: &mut [f32],
    x: &[f32],
    dy: &[f32],
    argmax: &[u32],
    p: &Conv2dParams,
    pool: &PoolParams,
    partials: &Mutex<Vec<Vec<f32>>>,
) {
    check_path(path);
    assert!(pooled_applies(p, pool), "direct::bwd_weight_pooled: {p:?} pooled by {pool:?}");
    let (ow, patch, pw, cells) = (p.ow(), p.patch(), pool.ow(), pool.oh() * pool.ow());
    // The padded planes' float of slack is what the last window's fourth lane reads.
    weight_gradient(dw, x, p, partials, |part, img, padded, g, _| {
        let at = img * p.oc * cells;
        let (dy_img, arg_img) = (&dy[at..at + p.oc * cells], &argmax[at..at + p.oc * cells]);
        with_simd!(path; for (k, (dy_k, arg_k)) in
            dy_img.chunks_exact(cells).zip(arg_img.chunks_exact(cells)).enumerate()
        {
            winners_bwd_weight(&mut part[k * patch..(k + 1) * patch], dy_k, arg_k, padded, p.c, ow, pw, g);
        });
    });
}

/// One output channel's `dw_k` (`c × 3 × 3`) over one image's windows,
/// `pw` per pooled row: `dy_k` and `arg_k` per window, `padded` the image's
/// padded planes. The winner's offset in its window comes from the argmax
/// minus the window's corner (0, 1, ow or ow + 1), with no division; every
/// window is summed, zero gradients too: skipping ReLU's zeros was a branch
/// mispredicted about half the time, slower than the arithmetic it saved.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn winners_bwd_weight(
    dw_k: &mut [f32],
    dy_k: &[f32],
    arg_k: &[u32],
    padded: &[f32],
    c: usize,
    ow: usize,
    pw: usize,
    g: Padded,
) {
    let plane = g.plane();
    for ch in 0..c {
        let x_c = &padded[ch * plane..];
        let mut acc = [[0.0f32; 4]; K];
        for (py, (dy_r, arg_r)) in dy_k.chunks_exact(pw).zip(arg_k.chunks_exact(pw)).enumerate() {
            for (px, (&d, &a)) in dy_r.iter().zip(arg_r).enumerate() {
                let rel = a as usize - (2 * py * ow + 2 * px);
                let down = usize::from(rel >= ow);
                let at = (2 * py + down) * g.row + 2 * px + rel - down * ow;
                let win = &x_c[at..at + 2 * g.row + 4];
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let r = &win[i * g.row..i * g.row + 4];
                    for (s, &v) in acc_i.iter_mut().zip(r) {
                        *s += d * v;
                    }
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (j, &s) in acc_i[..K].iter().enumerate() {
                dw_k[(ch * K + i) * K + j] += s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::naive;
    use crate::rng::Rng;

    fn random(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    /// Forward with bias and fused forward + pooling on one path.
    fn run(
        path: SimdPath,
        p: &Conv2dParams,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
        let mut y = vec![f32::NAN; p.y_len()];
        fwd_on(path, &mut y, x, w, Some(bias), p);
        let len = p.n * p.oc * (p.oh() / 2) * (p.ow() / 2);
        let (mut pooled, mut argmax) = (vec![f32::NAN; len], vec![0u32; len]);
        fwd_pool_on(path, &mut pooled, &mut argmax, x, w, bias, p);
        (y, pooled, argmax)
    }

    /// The cnn-s first layer, odd sizes (row counts off ROWS512, widths off
    /// the 32-float groups, and one exactly 32 wide), 1–3 channels, pad 0
    /// and 1.
    fn shapes() -> Vec<Conv2dParams> {
        [
            (2, 1, 28, 28, 32, 1),
            (1, 3, 9, 37, 5, 1),
            (3, 2, 7, 5, 4, 0),
            (1, 1, 11, 13, 3, 1),
            (2, 3, 30, 32, 3, 1),
        ]
        .into_iter()
        .map(|(n, c, h, w, oc, pad)| Conv2dParams {
            n,
            c,
            h,
            w,
            oc,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            ph: pad,
            pw: pad,
        })
        .collect()
    }

    /// Each vector path against the portable result (the naive
    /// convolution: the portable path runs such layers through im2col),
    /// within rounding (FMA chains against f64-free plain sums).
    #[test]
    fn vector_paths_match_portable() {
        let mut rng = Rng::new(21);
        for p in shapes() {
            let (x, w, bias) =
                (random(&mut rng, p.x_len()), random(&mut rng, p.w_len()), random(&mut rng, p.oc));
            let mut want = naive::conv2d(&x, &w, &p);
            let plane = p.oh() * p.ow();
            want.iter_mut().enumerate().for_each(|(i, v)| *v += bias[(i / plane) % p.oc]);
            for path in [SimdPath::Avx2, SimdPath::Avx512] {
                if !path.supported() {
                    eprintln!("direct {p:?}: {path} not supported by this CPU, not run");
                    continue;
                }
                eprintln!("direct {}×{}×{}×{}→{}: {path} against portable (naive)", p.n, p.c, p.h, p.w, p.oc);
                let (y, pooled, argmax) = run(path, &p, &x, &w, &bias);
                for (i, (&g, &v)) in y.iter().zip(&want).enumerate() {
                    assert!((g - v).abs() <= 1e-5 * (1.0 + v.abs()), "{path} at {i}: {g} vs {v}");
                }
                // Pooling picks from the path's own outputs, so it is exact.
                let (ph, pw, ow) = (p.oh() / 2, p.ow() / 2, p.ow());
                for (i, (&v, &a)) in pooled.iter().zip(&argmax).enumerate() {
                    let (img_k, py, px) = (i / (ph * pw), (i / pw) % ph, i % pw);
                    let (ay, ax) = (a as usize / ow, a as usize % ow);
                    assert!(ay / 2 == py && ax / 2 == px, "{path}: argmax {a} outside window {i}");
                    assert_eq!(v.to_bits(), y[img_k * plane + a as usize].to_bits(), "{path}: pooled {i}");
                }
            }
        }
    }

    /// The first layer of cnn-s at its training size (128 images of 28×28,
    /// 32 output channels): the pooled weight gradient and the dense one
    /// (scatter, then the direct weight gradient) against an f64 sum. Both
    /// are f32 sums of the same terms in different orders, so they differ
    /// from the exact sum by rounding of the same size, and neither leans
    /// one way: the mean signed error of each is within four standard
    /// errors of zero. (README, "Numbers across builds": why that order
    /// change still moves a run's figures.)
    #[test]
    fn pooled_and_dense_weight_gradients_round_alike() {
        let p = Conv2dParams { n: 128, c: 1, h: 28, w: 28, oc: 32, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1 };
        let (oh, ow) = (p.oh(), p.ow());
        let pool = PoolParams { n: p.n, c: p.oc, h: oh, w: ow, k: 2, s: 2, pad: 0 };
        let (ph, pw) = (pool.oh(), pool.ow());
        let mut rng = Rng::new(5);
        // Normalised Fashion-MNIST-like inputs (mostly background), ReLU-sparse gradients.
        let x: Vec<f32> =
            (0..p.x_len()).map(|_| if rng.below(2) == 0 { -0.81 } else { rng.uniform(-0.8, 2.0) }).collect();
        let cells = p.n * p.oc * ph * pw;
        let dy: Vec<f32> =
            (0..cells).map(|_| if rng.below(2) == 0 { 0.0 } else { rng.uniform(-1e-3, 1e-3) }).collect();
        let argmax: Vec<u32> = (0..cells)
            .map(|i| {
                let (py, px) = ((i / pw) % ph, i % pw);
                ((2 * py + rng.below(2)) * ow + 2 * px + rng.below(2)) as u32
            })
            .collect();
        let mut dconv = vec![0.0f32; p.y_len()];
        for (i, (&d, &a)) in dy.iter().zip(&argmax).enumerate() {
            dconv[(i / (ph * pw)) * oh * ow + a as usize] += d;
        }
        let mut exact = vec![0.0f64; p.w_len()];
        for n in 0..p.n {
            for k in 0..p.oc {
                for (i, j) in (0..3).flat_map(|i| (0..3).map(move |j| (i, j))) {
                    let mut s = 0.0f64;
                    for (oy, ox) in (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox))) {
                        let (iy, ix) = ((oy + i) as isize - 1, (ox + j) as isize - 1);
                        if iy < 0 || ix < 0 || iy >= p.h as isize || ix >= p.w as isize {
                            continue;
                        }
                        let xv = x[(n * p.h + iy as usize) * p.w + ix as usize];
                        s += dconv[((n * p.oc + k) * oh + oy) * ow + ox] as f64 * xv as f64;
                    }
                    exact[(k * 3 + i) * 3 + j] += s;
                }
            }
        }
        let partials = Mutex::new(Vec::new());
        let mut pooled = vec![0.0f32; p.w_len()];
        bwd_weight_pooled_on(SimdPath::Avx2, &mut pooled, &x, &dy, &argmax, &p, &pool, &partials);
        let mut dense = vec![0.0f32; p.w_len()];
        bwd_weight(&mut dense, &x, &dconv, &p, &partials);
        let scale = (exact.iter().map(|v| v * v).sum::<f64>() / exact.len() as f64).sqrt();
        let errors = |got: &[f32]| -> (f64, f64) {
            let e: Vec<f64> = got.iter().zip(&exact).map(|(&g, &v)| (g as f64 - v) / scale).collect();
            let mean = e.iter().sum::<f64>() / e.len() as f64;
            let rms = (e.iter().map(|v| v * v).sum::<f64>() / e.len() as f64).sqrt();
            (mean, rms)
        };
        let ((mp, rp), (md, rd)) = (errors(&pooled), errors(&dense));
        let se = |rms: f64| rms / (p.w_len() as f64).sqrt();
        eprintln!(
            "pooled: rms {rp:.2e}, mean {mp:.2e} (se {:.2e}); dense: rms {rd:.2e}, mean {md:.2e} (se {:.2e}); \
             pooled vs dense differ by rms {:.2e}",
            se(rp),
            se(rd),
            (pooled.iter().zip(&dense).map(|(a, b)| ((a - b) as f64 / scale).powi(2)).sum::<f64>()
                / p.w_len() as f64)
                .sqrt()
        );
        assert!(pooled != dense, "the two orders gave the same bits: nothing to explain");
        for (what, mean, rms) in [("pooled", mp, rp), ("dense", md, rd)] {
            assert!(rms > 0.0 && rms < 1e-5, "{what}: rms error {rms:e} of the gradient's scale");
            assert!(mean.abs() <= 4.0 * se(rms), "{what}: mean signed error {mean:e}, se {:e}", se(rms));
        }
        assert!(rp < 4.0 * rd && rd < 4.0 * rp, "errors of different sizes: pooled {rp:e}, dense {rd:e}");
    }

    /// The weight gradient from the pooled gradient (winners only) against
    /// the dense one: the pooled gradient scattered to its argmax, then the
    /// naive f64 sum over every output position. Random winners in each
    /// window, a third of the pooled gradients zero (as after a ReLU).
    /// Every vector path within rounding, and AVX-512 bitwise AVX2.
    #[test]
    fn pooled_weight_gradient_matches_dense() {
        let mut rng = Rng::new(23);
        let partials = Mutex::new(Vec::new());
        for p in shapes() {
            let (oh, ow) = (p.oh(), p.ow());
            let pool = PoolParams { n: p.n, c: p.oc, h: oh, w: ow, k: 2, s: 2, pad: 0 };
            let (ph, pw) = (pool.oh(), pool.ow());
            let x = random(&mut rng, p.x_len());
            let cells = p.n * p.oc * ph * pw;
            let dy: Vec<f32> =
                (0..cells).map(|_| if rng.below(3) == 0 { 0.0 } else { rng.uniform(-1.0, 1.0) }).collect();
            let argmax: Vec<u32> = (0..cells)
                .map(|i| {
                    let (py, px) = ((i / pw) % ph, i % pw);
                    ((2 * py + rng.below(2)) * ow + 2 * px + rng.below(2)) as u32
                })
                .collect();
            // Dense: scatter, then Σ dconv · x over every position.
            let mut dconv = vec![0.0f32; p.y_len()];
            for (i, (&d, &a)) in dy.iter().zip(&argmax).enumerate() {
                dconv[(i / (ph * pw)) * oh * ow + a as usize] += d;
            }
            let mut want = vec![0.0f64; p.w_len()];
            for n in 0..p.n {
                for k in 0..p.oc {
                    for c in 0..p.c {
                        for (i, j) in (0..3).flat_map(|i| (0..3).map(move |j| (i, j))) {
                            let mut s = 0.0f64;
                            for (oy, ox) in (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox))) {
                                let (iy, ix) =
                                    ((oy + i) as isize - p.ph as isize, (ox + j) as isize - p.pw as isize);
                                if iy < 0 || ix < 0 || iy >= p.h as isize || ix >= p.w as isize {
                                    continue;
                                }
                                let xv = x[((n * p.c + c) * p.h + iy as usize) * p.w + ix as usize];
                                s += dconv[((n * p.oc + k) * oh + oy) * ow + ox] as f64 * xv as f64;
                            }
                            want[((k * p.c + c) * 3 + i) * 3 + j] += s;
                        }
                    }
                }
            }
            let mut results = Vec::new();
            for path in [SimdPath::Avx2, SimdPath::Avx512] {
                if !path.supported() {
                    eprintln!("direct pooled dW {p:?}: {path} not supported by this CPU, not run");
                    continue;
                }
                eprintln!(
                    "direct pooled dW {}×{}×{}×{}→{}: {path} against the dense sum",
                    p.n, p.c, p.h, p.w, p.oc
                );
                let mut dw = vec![0.5f32; p.w_len()];
                bwd_weight_pooled_on(path, &mut dw, &x, &dy, &argmax, &p, &pool, &partials);
                for (i, (&g, &v)) in dw.iter().zip(&want).enumerate() {
                    let v = v as f32 + 0.5;
                    assert!((g - v).abs() <= 1e-4 * (1.0 + v.abs()), "{path} {p:?} at {i}: {g} vs {v}");
                }
                results.push(dw);
            }
            if let [a, b] = &results[..] {
                assert!(a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits()), "AVX-512 vs AVX2 on {p:?}");
            }
        }
    }

    /// AVX-512 against AVX2, bitwise (each output is the same FMA chain).
    /// Without AVX-512 this says so and checks AVX2 against itself
    /// (determinism) instead.
    #[test]
    fn avx512_is_bitwise_avx2() {
        let (path, reference) = if SimdPath::Avx512.supported() {
            eprintln!("direct: AVX-512 forward against the AVX2 forward, bitwise");
            (SimdPath::Avx512, SimdPath::Avx2)
        } else if SimdPath::Avx2.supported() {
            eprintln!("direct: NO AVX-512 on this CPU; checking AVX2 against itself (determinism) instead");
            (SimdPath::Avx2, SimdPath::Avx2)
        } else {
            eprintln!("direct: neither AVX-512 nor AVX2 on this CPU; nothing to compare");
            return;
        };
        let mut rng = Rng::new(22);
        for p in shapes() {
            let (x, w, bias) =
                (random(&mut rng, p.x_len()), random(&mut rng, p.w_len()), random(&mut rng, p.oc));
            let (got, want) = (run(path, &p, &x, &w, &bias), run(reference, &p, &x, &w, &bias));
            let same = got.0.iter().zip(&want.0).all(|(a, b)| a.to_bits() == b.to_bits())
                && got.1.iter().zip(&want.1).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same && got.2 == want.2, "{path} vs {reference} differ on {p:?}");
        }
    }
}
