//! The general convolution path: unfold each image into columns (im2col),
//! one sgemm per image, and the adjoint fold (col2im) for backward-data.
//!
//! Any shape works here, which makes it the fallback for layers the
//! Winograd and direct paths do not take, and the baseline they are tested
//! and benchmarked against (`CpuBackend::im2col_only`). Images run in
//! parallel over the batch, each thread unfolding into its own reused
//! scratch, so a steady-state step allocates nothing. The unfolding copies
//! whole valid runs of a row (the valid range computed once per kernel
//! column) instead of testing every index against the padding.

use super::{add_partials, batch_partials, gemm_slices, Conv2dParams, Gemm};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::Mutex;

/// `y = conv(x, w) (+ bias)` for `x: (N, C, H, W)`, `w: (OC, C·KH·KW)`,
/// `y: (N, OC, OH, OW)`. Per image: `y_n = W · im2col(x_n)`, images in
/// parallel; the bias is added after the gemm.
pub fn fwd(y: &mut [f32], x: &[f32], w: &[f32], bias: Option<&[f32]>, p: &Conv2dParams) {
    let (ohw, k) = (p.oh() * p.ow(), p.patch());
    let g = Gemm::nn(p.oc, ohw, k);
    y[..p.y_len()].par_chunks_mut(p.oc * ohw).zip(x.par_chunks(p.c * p.h * p.w)).for_each(|(y_n, x_n)| {
        with_cols(k * ohw, |cols| {
            im2col(cols, x_n, p);
            gemm_slices(y_n, w, cols, g);
        });
        if let Some(bias) = bias {
            for (plane, &b) in y_n.chunks_exact_mut(ohw).zip(bias) {
                plane.iter_mut().for_each(|v| *v += b);
            }
        }
    });
}

/// `dx_n += col2im(Wᵀ · dy_n)`, images in parallel (their dx are disjoint).
pub fn bwd_data(dx: &mut [f32], dy: &[f32], w: &[f32], p: &Conv2dParams) {
    let (ohw, k) = (p.oh() * p.ow(), p.patch());
    let g = Gemm::nn(k, ohw, p.oc).trans(true, false);
    dx[..p.x_len()].par_chunks_mut(p.c * p.h * p.w).zip(dy.par_chunks(p.oc * ohw)).for_each(
        |(dx_n, dy_n)| {
            with_cols(k * ohw, |dcols| {
                gemm_slices(dcols, w, dy_n, g);
                col2im_acc(dx_n, dcols, p);
            })
        },
    );
}

/// `dW += Σ_n dy_n · im2col(x_n)ᵀ`, per thread chunk (`batch_partials`).
pub fn bwd_weight(dw: &mut [f32], x: &[f32], dy: &[f32], p: &Conv2dParams, partials: &Mutex<Vec<Vec<f32>>>) {
    let (ohw, k) = (p.oh() * p.ow(), p.patch());
    let parts = batch_partials(partials, p.n, p.oc * k, |part, images| {
        with_cols(k * ohw, |cols| {
            for img in images {
                im2col(cols, &x[img * p.c * p.h * p.w..(img + 1) * p.c * p.h * p.w], p);
                let g = Gemm::nn(p.oc, k, ohw).trans(false, true).acc();
                gemm_slices(part, &dy[img * p.oc * ohw..(img + 1) * p.oc * ohw], cols, g);
            }
        })
    });
    add_partials(&mut dw[..p.oc * k], &parts);
}

thread_local! {
    /// im2col columns of one image, reused across calls on this thread.
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with this thread's scratch of at least `len` floats.
fn with_cols<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    COLS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < len {
            c.resize(len, 0.0);
        }
        f(&mut c[..len])
    })
}

/// The output columns `ox` whose input column `ox·s + k − pad` lies inside
/// `0..w`: a contiguous range, so the inner loops need no bounds tests.
fn valid_range(out: usize, w: usize, s: usize, k: usize, pad: usize) -> std::ops::Range<usize> {
    // ix = ox·s + k − pad ≥ 0  ⇔  ox ≥ ceil((pad − k) / s)
    let lo = if pad > k { (pad - k).div_ceil(s) } else { 0 };
    // ix ≤ w − 1  ⇔  ox ≤ (w − 1 + pad − k) / s
    let hi = if w + pad > k { ((w - 1 + pad - k) / s + 1).min(out) } else { 0 };
    lo.min(hi)..hi
}

/// Unfold one image `x: (C, H, W)` into `cols: (C·KH·KW, OH·OW)`; padding reads as 0.
/// Each (row, output line) is a zero-filled border plus a contiguous copy
/// (stride 1) or a strided gather, with the valid range computed once.
fn im2col(cols: &mut [f32], x: &[f32], p: &Conv2dParams) {
    {
        let (oh, ow) = (p.oh(), p.ow());
        for ci in 0..p.c {
            let plane = &x[ci * p.h * p.w..(ci + 1) * p.h * p.w];
            for ki in 0..p.kh {
                for kj in 0..p.kw {
                    let row = (ci * p.kh + ki) * p.kw + kj;
                    let out = &mut cols[row * oh * ow..(row + 1) * oh * ow];
                    let xs = valid_range(ow, p.w, p.sw, kj, p.pw);
                    for oy in 0..oh {
                        let iy = (oy * p.sh + ki) as isize - p.ph as isize;
                        let dst = &mut out[oy * ow..(oy + 1) * ow];
                        if iy < 0 || iy >= p.h as isize || xs.is_empty() {
                            dst.fill(0.0);
                            continue;
                        }
                        let src = &plane[iy as usize * p.w..(iy as usize + 1) * p.w];
                        dst[..xs.start].fill(0.0);
                        dst[xs.end..].fill(0.0);
                        let ix0 = xs.start * p.sw + kj - p.pw;
                        if p.sw == 1 {
                            dst[xs.clone()].copy_from_slice(&src[ix0..ix0 + xs.len()]);
                        } else {
                            for (d, ix) in dst[xs.clone()].iter_mut().zip((ix0..).step_by(p.sw)) {
                                *d = src[ix];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: `dx (C, H, W) += fold(dcols)`.
fn col2im_acc(dx: &mut [f32], dcols: &[f32], p: &Conv2dParams) {
    {
        let (oh, ow) = (p.oh(), p.ow());
        for ci in 0..p.c {
            let plane = &mut dx[ci * p.h * p.w..(ci + 1) * p.h * p.w];
            for ki in 0..p.kh {
                for kj in 0..p.kw {
                    let row = (ci * p.kh + ki) * p.kw + kj;
                    let src = &dcols[row * oh * ow..(row + 1) * oh * ow];
                    let xs = valid_range(ow, p.w, p.sw, kj, p.pw);
                    if xs.is_empty() {
                        continue;
                    }
                    let ix0 = xs.start * p.sw + kj - p.pw;
                    for oy in 0..oh {
                        let iy = (oy * p.sh + ki) as isize - p.ph as isize;
                        if iy < 0 || iy >= p.h as isize {
                            continue;
                        }
                        let dst = &mut plane[iy as usize * p.w..(iy as usize + 1) * p.w];
                        let s = &src[oy * ow + xs.start..oy * ow + xs.end];
                        if p.sw == 1 {
                            for (d, v) in dst[ix0..ix0 + s.len()].iter_mut().zip(s) {
                                *d += v;
                            }
                        } else {
                            for (v, ix) in s.iter().zip((ix0..).step_by(p.sw)) {
                                dst[ix] += v;
                            }
                        }
                    }
                }
            }
        }
    }
}
