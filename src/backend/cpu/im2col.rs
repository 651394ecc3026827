//! The general convolution path: unfold images into columns (im2col), one
//! sgemm per chunk of images, and the adjoint fold (col2im) for
//! backward-data; and the centre-tap special case of a 1×1 map.
//!
//! Any shape works here, which makes it the fallback for layers the
//! Winograd and direct paths do not take, and the baseline they are tested
//! and benchmarked against (`CpuBackend::im2col_only`). The batch is cut
//! into chunks of images whose columns sit side by side in one
//! `(C·KH·KW, images·OH·OW)` matrix, so a strided layer on a 4×4 … 1×1 map
//! still gets one wide gemm rather than a sliver per image; chunks run in
//! parallel, each thread unfolding into its own reused scratch, so a
//! steady-state step allocates nothing. The unfolding copies
//! whole valid runs of a row (the valid range computed once per kernel
//! column) instead of testing every index against the padding.

use super::{add_partials, gemm_parallel, gemm_slices, Conv2dParams, Gemm};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::Mutex;

/// A chunk's gemm gets at least this many columns (images × output
/// positions) when the batch allows: late ResNet stages have 4×4 … 1×1
/// maps, where one gemm per image would be 16 … 1 columns wide.
const CHUNK_COLUMNS: usize = 256;
/// …but the batch is cut into at least this many chunks, so every core has
/// work. A constant, not the thread count: the chunks (and so every sum of
/// the weight gradient) are the same however many threads run them.
const MIN_CHUNKS: usize = 4;

/// Images per chunk for `p`: depends on the shape only.
fn chunk_images(p: &Conv2dParams) -> usize {
    let ohw = (p.oh() * p.ow()).max(1);
    CHUNK_COLUMNS.div_ceil(ohw).min(p.n.div_ceil(MIN_CHUNKS)).max(1)
}

/// `y = conv(x, w) (+ bias)` for `x: (N, C, H, W)`, `w: (OC, C·KH·KW)`,
/// `y: (N, OC, OH, OW)`. Per chunk of `m` images (in parallel): their
/// columns side by side, `cols: (K, m·OH·OW)`, one gemm `W · cols`, then
/// the product's `(OC, m·OH·OW)` layout scattered into the images' planes
/// with the bias (a chunk of one image writes its plane directly).
pub fn fwd(y: &mut [f32], x: &[f32], w: &[f32], bias: Option<&[f32]>, p: &Conv2dParams) {
    let (ohw, k) = (p.oh() * p.ow(), p.patch());
    let (xl, yl, nb) = (p.c * p.h * p.w, p.oc * ohw, chunk_images(p));
    y[..p.y_len()].par_chunks_mut(nb * yl).zip(x[..p.x_len()].par_chunks(nb * xl)).for_each(|(y_c, x_c)| {
        let m = x_c.len() / xl;
        let wide = m * ohw;
        with_cols(k * wide + if m > 1 { p.oc * wide } else { 0 }, |buf| {
            let (cols, prod) = buf.split_at_mut(k * wide);
            for (i, x_n) in x_c.chunks_exact(xl).enumerate() {
                im2col(cols, wide, i * ohw, x_n, p);
            }
            if m == 1 {
                gemm_slices(y_c, w, cols, Gemm::nn(p.oc, ohw, k));
            } else {
                gemm_slices(prod, w, cols, Gemm::nn(p.oc, wide, k));
                for (i, y_n) in y_c.chunks_exact_mut(yl).enumerate() {
                    for (o, plane) in y_n.chunks_exact_mut(ohw).enumerate() {
                        plane.copy_from_slice(&prod[o * wide + i * ohw..o * wide + (i + 1) * ohw]);
                    }
                }
            }
            if let Some(bias) = bias {
                for y_n in y_c.chunks_exact_mut(yl) {
                    for (plane, &b) in y_n.chunks_exact_mut(ohw).zip(bias) {
                        plane.iter_mut().for_each(|v| *v += b);
                    }
                }
            }
        });
    });
}

/// Copy a chunk's output gradients `dy: (m, OC, OH·OW)` into `out: (OC, m·OH·OW)`.
fn gather_dy(out: &mut [f32], dy_c: &[f32], oc: usize, ohw: usize) {
    let wide = dy_c.len() / oc;
    for (i, dy_n) in dy_c.chunks_exact(oc * ohw).enumerate() {
        for (o, plane) in dy_n.chunks_exact(ohw).enumerate() {
            out[o * wide + i * ohw..o * wide + (i + 1) * ohw].copy_from_slice(plane);
        }
    }
}

/// `dx_n += col2im(Wᵀ · dy_n)`: per chunk of images (in parallel; their dx
/// are disjoint), the output gradients side by side, one gemm, then each
/// image's columns folded back.
pub fn bwd_data(dx: &mut [f32], dy: &[f32], w: &[f32], p: &Conv2dParams) {
    let (ohw, k) = (p.oh() * p.ow(), p.patch());
    let (xl, yl, nb) = (p.c * p.h * p.w, p.oc * ohw, chunk_images(p));
    dx[..p.x_len()].par_chunks_mut(nb * xl).zip(dy[..p.y_len()].par_chunks(nb * yl)).for_each(
        |(dx_c, dy_c)| {
            let m = dx_c.len() / xl;
            let wide = m * ohw;
            with_cols(k * wide + if m > 1 { p.oc * wide } else { 0 }, |buf| {
                let (dcols, g_dy) = buf.split_at_mut(k * wide);
                let g = Gemm::nn(k, wide, p.oc).trans(true, false);
                if m == 1 {
                    gemm_slices(dcols, w, dy_c, g);
                } else {
                    gather_dy(g_dy, dy_c, p.oc, ohw);
                    gemm_slices(dcols, w, g_dy, g);
                }
                for (i, dx_n) in dx_c.chunks_exact_mut(xl).enumerate() {
                    col2im_acc(dx_n, dcols, wide, i * ohw, p);
                }
            })
        },
    );
}

/// `dW += Σ_n dy_n · im2col(x_n)ᵀ`. The batch is cut into [`MIN_CHUNKS`]
/// parts (fewer for a smaller batch), each summed into its own zeroed
/// partial, chunk by chunk of [`chunk_images`] (one gemm a chunk, its
/// reduction over the chunk's images and positions); the partials are then
/// added in order. Parts and chunks depend on the shape only, so the result
/// is the same on any number of threads.
pub fn bwd_weight(dw: &mut [f32], x: &[f32], dy: &[f32], p: &Conv2dParams, partials: &Mutex<Vec<Vec<f32>>>) {
    let (ohw, k) = (p.oh() * p.ow(), p.patch());
    let (xl, yl, nb) = (p.c * p.h * p.w, p.oc * ohw, chunk_images(p));
    let ranges = super::chunks(p.n, MIN_CHUNKS);
    let mut parts = partials.lock().unwrap_or_else(|e| e.into_inner());
    parts.resize_with(ranges.len(), Vec::new);
    parts.par_iter_mut().zip(ranges).for_each(|(part, images)| {
        part.clear();
        part.resize(p.oc * k, 0.0);
        let mut start = images.start;
        while start < images.end {
            let m = nb.min(images.end - start);
            let wide = m * ohw;
            with_cols(k * wide + p.oc * wide, |buf| {
                let (cols, g_dy) = buf.split_at_mut(k * wide);
                for i in 0..m {
                    let img = start + i;
                    im2col(cols, wide, i * ohw, &x[img * xl..(img + 1) * xl], p);
                }
                gather_dy(g_dy, &dy[start * yl..(start + m) * yl], p.oc, ohw);
                gemm_slices(part, g_dy, cols, Gemm::nn(p.oc, k, wide).trans(false, true).acc());
            });
            start += m;
        }
    });
    add_partials(&mut dw[..p.oc * k], &parts);
}

/// Whether only one tap of the kernel ever meets the image: a 1×1 map under
/// an odd kernel padded by half its size (a 3×3 pad-1 convolution on the
/// last stage of a ResNet at 32×32 input). The output is 1×1 too, and the
/// convolution is a product with the kernel's centre column: the other taps
/// read padding.
pub fn centre_tap_applies(p: &Conv2dParams) -> bool {
    p.h == 1 && p.w == 1 && p.kh % 2 == 1 && p.kw % 2 == 1 && p.ph == p.kh / 2 && p.pw == p.kw / 2
}

thread_local! {
    /// The kernel's centre taps `(OC, C)` (and a weight-gradient product), reused.
    static CENTRE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The index of the centre tap in a row of `w: (OC, C·KH·KW)`, and its stride.
fn centre(p: &Conv2dParams) -> (usize, usize) {
    ((p.kh / 2) * p.kw + p.kw / 2, p.kh * p.kw)
}

/// `wc (OC, C) = w[:, :, centre]`.
fn centre_weights(wc: &mut Vec<f32>, w: &[f32], p: &Conv2dParams) {
    let (off, taps) = centre(p);
    wc.clear();
    wc.extend((0..p.oc * p.c).map(|i| w[i * taps + off]));
}

/// [`centre_tap_applies`]: `y (N, OC) = x (N, C) · Wcᵀ (+ bias)`, one gemm
/// for the whole batch (cut over the threads by [`gemm_parallel`], which
/// gives the same bits on any number of them).
pub fn centre_fwd(y: &mut [f32], x: &[f32], w: &[f32], bias: Option<&[f32]>, p: &Conv2dParams) {
    CENTRE.with(|wc| {
        let mut wc = wc.borrow_mut();
        centre_weights(&mut wc, w, p);
        gemm_parallel(
            &mut y[..p.n * p.oc],
            &x[..p.n * p.c],
            &wc,
            Gemm::nn(p.n, p.oc, p.c).trans(false, true),
        );
    });
    if let Some(bias) = bias {
        for row in y[..p.n * p.oc].chunks_exact_mut(p.oc) {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        }
    }
}

/// `dx (N, C) += dy (N, OC) · Wc`.
pub fn centre_bwd_data(dx: &mut [f32], dy: &[f32], w: &[f32], p: &Conv2dParams) {
    CENTRE.with(|wc| {
        let mut wc = wc.borrow_mut();
        centre_weights(&mut wc, w, p);
        gemm_parallel(&mut dx[..p.n * p.c], &dy[..p.n * p.oc], &wc, Gemm::nn(p.n, p.c, p.oc).acc());
    });
}

/// `dW[:, :, centre] += dyᵀ · x`; the other taps' gradients are zero, so
/// they are left as they were.
pub fn centre_bwd_weight(dw: &mut [f32], x: &[f32], dy: &[f32], p: &Conv2dParams) {
    let (off, taps) = centre(p);
    CENTRE.with(|g| {
        let mut g = g.borrow_mut();
        g.clear();
        g.resize(p.oc * p.c, 0.0);
        gemm_parallel(
            &mut g,
            &dy[..p.n * p.oc],
            &x[..p.n * p.c],
            Gemm::nn(p.oc, p.c, p.n).trans(true, false),
        );
        for (i, v) in g.iter().enumerate() {
            dw[i * taps + off] += v;
        }
    });
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

/// Unfold one image `x: (C, H, W)` into columns `col0 .. col0 + OH·OW` of
/// `cols: (C·KH·KW, ld)`; padding reads as 0.
/// Each (row, output line) is a zero-filled border plus a contiguous copy
/// (stride 1) or a strided gather, with the valid range computed once.
fn im2col(cols: &mut [f32], ld: usize, col0: usize, x: &[f32], p: &Conv2dParams) {
    {
        let (oh, ow) = (p.oh(), p.ow());
        for ci in 0..p.c {
            let plane = &x[ci * p.h * p.w..(ci + 1) * p.h * p.w];
            for ki in 0..p.kh {
                for kj in 0..p.kw {
                    let row = (ci * p.kh + ki) * p.kw + kj;
                    let out = &mut cols[row * ld + col0..row * ld + col0 + oh * ow];
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

/// The adjoint of [`im2col`]: `dx (C, H, W) += fold(dcols[:, col0 .. col0 + OH·OW])`.
fn col2im_acc(dx: &mut [f32], dcols: &[f32], ld: usize, col0: usize, p: &Conv2dParams) {
    {
        let (oh, ow) = (p.oh(), p.ow());
        for ci in 0..p.c {
            let plane = &mut dx[ci * p.h * p.w..(ci + 1) * p.h * p.w];
            for ki in 0..p.kh {
                for kj in 0..p.kw {
                    let row = (ci * p.kh + ki) * p.kw + kj;
                    let src = &dcols[row * ld + col0..row * ld + col0 + oh * ow];
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

#[cfg(test)]
mod tests {
    use super::super::naive;
    use super::*;
    use crate::rng::Rng;

    fn random(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
        }
    }

    /// Forward (with bias), backward-data and backward-weight (both
    /// accumulating into what the buffers held) of the chunked path, and of
    /// the centre-tap path where it applies, against the naive kernels.
    fn check(p: Conv2dParams, seed: u64) {
        let mut rng = Rng::new(seed);
        let (x, w, bias) = (random(&mut rng, p.x_len()), random(&mut rng, p.w_len()), random(&mut rng, p.oc));
        let dy = random(&mut rng, p.y_len());
        let (dx0, dw0) = (random(&mut rng, p.x_len()), random(&mut rng, p.w_len()));
        let mut want_y = naive::conv2d(&x, &w, &p);
        let ohw = p.oh() * p.ow();
        want_y.iter_mut().enumerate().for_each(|(i, v)| *v += bias[(i / ohw) % p.oc]);
        let mut want_dx = dx0.clone();
        naive::conv2d_bwd_data(&mut want_dx, &dy, &w, &p);
        let mut want_dw = dw0.clone();
        naive::conv2d_bwd_weight(&mut want_dw, &x, &dy, &p);
        let tol = 1e-5 * (p.patch().max(p.oc) as f32).sqrt() * 4.0;

        let partials = Mutex::new(Vec::new());
        let mut y = vec![f32::NAN; p.y_len()];
        fwd(&mut y, &x, &w, Some(&bias), &p);
        close(&format!("fwd {p:?}"), &y, &want_y, tol);
        let mut dx = dx0.clone();
        bwd_data(&mut dx, &dy, &w, &p);
        close(&format!("bwd_data {p:?}"), &dx, &want_dx, tol);
        let mut dw = dw0.clone();
        bwd_weight(&mut dw, &x, &dy, &p, &partials);
        close(&format!("bwd_weight {p:?}"), &dw, &want_dw, tol * (p.n as f32).sqrt());

        if centre_tap_applies(&p) {
            let mut y = vec![f32::NAN; p.y_len()];
            centre_fwd(&mut y, &x, &w, Some(&bias), &p);
            close(&format!("centre fwd {p:?}"), &y, &want_y, tol);
            let mut dx = dx0.clone();
            centre_bwd_data(&mut dx, &dy, &w, &p);
            close(&format!("centre bwd_data {p:?}"), &dx, &want_dx, tol);
            let mut dw = dw0.clone();
            centre_bwd_weight(&mut dw, &x, &dy, &p);
            close(&format!("centre bwd_weight {p:?}"), &dw, &want_dw, tol * (p.n as f32).sqrt());
        }
    }

    /// n, c, h, w, oc, kh, kw, stride, pad.
    type Shape = (usize, usize, usize, usize, usize, usize, usize, usize, usize);

    /// Odd batches (partial chunks: up to 37 images of 1×1 outputs, 9 a
    /// chunk), strides 1-3, pads 0-3, rectangular kernels and maps, and the
    /// late-ResNet shapes (4×4, 2×2 and 1×1 maps, stride 2, 1×1 shortcuts).
    #[test]
    fn chunked_and_centre_paths_match_naive() {
        #[rustfmt::skip]
        let shapes: [Shape; 16] = [
            // n, c, h, w, oc, kh, kw, stride, pad
            (37, 5, 1, 1, 7, 3, 3, 1, 1),   // centre tap, odd batch
            (33, 6, 1, 1, 3, 1, 1, 1, 0),   // 1×1 conv on a 1×1 map
            (19, 4, 1, 1, 5, 5, 5, 2, 2),   // centre tap, 5×5, stride 2
            (21, 8, 2, 2, 9, 3, 3, 2, 1),   // stride 2 → 1×1 output
            (13, 7, 2, 2, 6, 3, 3, 1, 1),   // 2×2 map
            (11, 5, 4, 4, 10, 3, 3, 1, 1),  // 4×4 map
            (9, 6, 4, 4, 12, 1, 1, 2, 0),   // 1×1 shortcut, stride 2
            (7, 3, 9, 7, 4, 7, 7, 2, 3),    // a 7×7 stem on an odd map
            (5, 2, 7, 11, 3, 3, 5, 3, 2),   // rectangular kernel, stride 3
            (3, 4, 6, 5, 5, 2, 2, 1, 0),    // even kernel
            (1, 3, 5, 5, 4, 3, 3, 2, 1),    // one image
            (2, 1, 3, 3, 2, 3, 3, 1, 3),    // padding wider than the kernel's half
            (17, 9, 3, 3, 8, 3, 3, 2, 1),   // 3×3 map, stride 2 → 2×2
            (6, 5, 8, 8, 7, 3, 3, 2, 1),    // 8×8, stride 2
            (40, 3, 2, 3, 4, 3, 3, 1, 1),   // rectangular tiny map
            (4, 16, 1, 1, 16, 3, 3, 2, 1),  // centre tap, stride 2
        ];
        for (i, &(n, c, h, w, oc, kh, kw, s, pad)) in shapes.iter().enumerate() {
            let p = Conv2dParams { n, c, h, w, oc, kh, kw, sh: s, sw: s, ph: pad, pw: pad };
            check(p, 100 + i as u64);
        }
    }

    /// The chunked weight gradient and the centre-tap gemms give the same
    /// bits on 1, 2 and 3 threads.
    #[test]
    fn independent_of_the_thread_count() {
        let shapes = [
            Conv2dParams { n: 37, c: 8, h: 2, w: 2, oc: 9, kh: 3, kw: 3, sh: 2, sw: 2, ph: 1, pw: 1 },
            Conv2dParams { n: 64, c: 32, h: 1, w: 1, oc: 48, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1 },
            Conv2dParams { n: 29, c: 6, h: 4, w: 4, oc: 10, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1 },
        ];
        for p in shapes {
            let mut rng = Rng::new(7);
            let (x, w) = (random(&mut rng, p.x_len()), random(&mut rng, p.w_len()));
            let dy = random(&mut rng, p.y_len());
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    let partials = Mutex::new(Vec::new());
                    let mut y = vec![0.0; p.y_len()];
                    let mut dx = vec![0.0; p.x_len()];
                    let mut dw = vec![0.0; p.w_len()];
                    if centre_tap_applies(&p) {
                        centre_fwd(&mut y, &x, &w, None, &p);
                        centre_bwd_data(&mut dx, &dy, &w, &p);
                        centre_bwd_weight(&mut dw, &x, &dy, &p);
                    } else {
                        fwd(&mut y, &x, &w, None, &p);
                        bwd_data(&mut dx, &dy, &w, &p);
                        bwd_weight(&mut dw, &x, &dy, &p, &partials);
                    }
                    (y, dx, dw)
                })
            };
            let one = run(1);
            for threads in [2, 3] {
                assert!(run(threads) == one, "{p:?}: {threads} threads differ from 1");
            }
        }
    }
}
