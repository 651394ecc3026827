//! Direct convolution for 3×3, stride-1 layers with at most 3 input
//! channels: the trunk's first layer, 1 → 32 channels at 28×28. Through
//! im2col its gemm has a reduction of only 9, so the gemm kernel spends its
//! time loading and storing C; here each output row is built from the nine
//! shifted rows of the zero-padded input, 8 outputs at a time in one AVX2
//! register. The loops are written with `std::arch` intrinsics: the
//! compiler's auto-vectoriser left them scalar. On a CPU without AVX2 + FMA
//! such layers stay on im2col.
//!
//! Forward and backward-weight only: the first layer's input needs no
//! gradient, and any other layer takes the im2col path for backward-data.

use super::{add_partials, batch_partials, Conv2dParams};
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

/// Whether the direct path computes this convolution (on this CPU).
pub fn applies(p: &Conv2dParams) -> bool {
    p.sh == 1 && p.sw == 1 && p.kh == K && p.kw == K && p.c <= MAX_CHANNELS && simd::available()
}

/// The two inner kernels, 8 lanes per register.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{GROUP, K, LANES};
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
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

/// Elsewhere the direct path never applies (`available` is false).
#[cfg(not(target_arch = "x86_64"))]
mod simd {
    pub fn available() -> bool {
        false
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

/// `y = conv(x, w) (+ bias)`, overwriting `y`; images in parallel.
pub fn fwd(y: &mut [f32], x: &[f32], w: &[f32], bias: Option<&[f32]>, p: &Conv2dParams) {
    let (oh, ow, patch) = (p.oh(), p.ow(), p.patch());
    let y_len = p.oc * oh * ow;
    each_image(y[..p.n * y_len].par_chunks_mut(y_len), x, p, 1, |y_img, padded, row, g| {
        for (k, y_k) in y_img.chunks_exact_mut(oh * ow).enumerate() {
            let (b, wk) = (bias.map_or(0.0, |b| b[k]), &w[k * patch..(k + 1) * patch]);
            for (oy, y_row) in y_k.chunks_exact_mut(ow).enumerate() {
                // SAFETY: `applies` checked that the CPU has AVX2 and FMA.
                unsafe { simd::row_fwd(oy, padded, g.plane(), g.row, wk, b, row) };
                y_row.copy_from_slice(&row[..ow]);
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
    let (ow, patch) = (p.ow(), p.patch());
    let (ph, pw) = (p.oh() / 2, ow / 2);
    let y_len = p.oc * ph * pw;
    let outs = y[..p.n * y_len].par_chunks_mut(y_len).zip(am[..p.n * y_len].par_chunks_mut(y_len));
    each_image(outs, x, p, 2, |(y_img, a_img), padded, rows, g| {
        let (r0, r1) = rows.split_at_mut(rows.len() / 2);
        for (k, (y_k, a_k)) in
            y_img.chunks_exact_mut(ph * pw).zip(a_img.chunks_exact_mut(ph * pw)).enumerate()
        {
            let wk = &w[k * patch..(k + 1) * patch];
            for py in 0..ph {
                // SAFETY: `applies` checked that the CPU has AVX2 and FMA.
                unsafe {
                    simd::row_fwd(2 * py, padded, g.plane(), g.row, wk, bias[k], r0);
                    simd::row_fwd(2 * py + 1, padded, g.plane(), g.row, wk, bias[k], r1);
                }
                let at = py * pw..(py + 1) * pw;
                with_simd!(super::pool_rows(
                    &mut y_k[at.clone()],
                    &mut a_k[at.clone()],
                    r0,
                    r1,
                    ow,
                    2 * py * ow
                ));
            }
        }
    });
}

/// `dw += ∂L/∂w`, per thread chunk of images (`batch_partials`).
pub fn bwd_weight(dw: &mut [f32], x: &[f32], dy: &[f32], p: &Conv2dParams, partials: &Mutex<Vec<Vec<f32>>>) {
    let g = Padded::new(p);
    let (oh, ow) = (p.oh(), p.ow());
    let (x_len, y_len, patch) = (p.c * p.h * p.w, p.oc * oh * ow, p.patch());
    let parts = batch_partials(partials, p.n, p.oc * patch, |part, images| {
        PADDED.with(|buf| {
            let (padded, dy_row) = &mut *buf.borrow_mut();
            padded.resize(p.c * g.plane(), 0.0);
            // Lanes past `ow` stay zero, so the slack columns add nothing.
            dy_row.clear();
            dy_row.resize(g.chunks * LANES, 0.0);
            for img in images {
                pad_image(padded, &x[img * x_len..(img + 1) * x_len], p, g);
                let dy_img = &dy[img * y_len..(img + 1) * y_len];
                for (k, dy_k) in dy_img.chunks_exact(oh * ow).enumerate() {
                    for (c, x_c) in padded.chunks_exact(g.plane()).enumerate() {
                        let dw_kc = &mut part[(k * p.c + c) * K * K..][..K * K];
                        // SAFETY: `applies` checked that the CPU has AVX2 and FMA.
                        unsafe { simd::plane_bwd_weight(dw_kc, dy_k, ow, x_c, g.row, dy_row) };
                    }
                }
            }
        })
    });
    add_partials(&mut dw[..p.oc * patch], &parts);
}
