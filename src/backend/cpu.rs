//! The CPU backend: `matrixmultiply`'s SIMD sgemm for every dense product;
//! convolutions by Winograd F(2×2,3×3) ([`winograd`]), a direct AVX2 kernel
//! for the tiny-patch first layer ([`direct`]) or im2col/col2im + sgemm
//! (see `ConvPath`); rayon over the batch (or over rows/planes) for the rest.
//! matrixmultiply's own threading stays off (its pool would fight rayon's for
//! the cores; on a 2-vCPU machine that was measured to be far slower):
//! convolutions run in parallel over
//! the batch, and a big single product (a linear layer) is cut into one block
//! of C per rayon thread.
//!
//! Per-thread scratch (im2col columns, transformed tiles, padded planes,
//! partial weight gradients) is kept in thread-locals and in the backend, so
//! a steady-state training step allocates nothing. Naive reference kernels,
//! used by the tests, are in [`naive`].

use super::{Backend, Conv2dParams, Gemm, PoolParams, SgdHyper, IGNORE_LABEL};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};

// The SIMD path choice and `with_simd!` (first: the macro is used below).
#[macro_use]
pub mod simd;
pub mod probe;

mod direct;
mod microgemm;
mod winograd;

/// f32 storage on the host.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuBuf(pub(crate) Vec<f32>);

/// u32 storage on the host.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuIdxBuf(pub(crate) Vec<u32>);

impl CpuBuf {
    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }
}

/// Element counts below this run on the calling thread: forking costs more.
const PAR_MIN: usize = 1 << 15;

/// The CPU device. Cheap to clone; clones share the scratch space.
#[derive(Clone, Default)]
pub struct CpuBackend {
    /// One partial weight-gradient buffer per batch chunk (conv2d_bwd_weight).
    partials: Arc<Mutex<Vec<Vec<f32>>>>,
    /// Every convolution through im2col + gemm, none through the
    /// specialised paths (the baseline they are benchmarked and tested against).
    im2col_only: bool,
}

/// How a convolution is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConvPath {
    /// 3×3, stride 1, pad 1, ≥ 4 input channels: [`winograd`].
    Winograd,
    /// Tiny patch, stride 1 (the first layer): [`direct`], forward and
    /// backward-weight.
    Direct,
    Im2col,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// The same backend with every convolution on im2col + gemm: the baseline
    /// the Winograd and direct paths are benchmarked and tested against.
    pub fn im2col_only() -> Self {
        CpuBackend { im2col_only: true, ..Self::default() }
    }

    /// `y = conv(x, w) (+ bias)`: the Winograd and direct paths add the bias
    /// as they write `y`; im2col adds it after the gemm.
    fn conv2d_forward(&self, y: &mut CpuBuf, x: &CpuBuf, w: &CpuBuf, bias: Option<&[f32]>, p: &Conv2dParams) {
        check_conv(p, x.0.len(), w.0.len(), y.0.len(), "conv2d_fwd");
        match self.conv_path(p) {
            ConvPath::Winograd => return winograd::fwd(&mut y.0, &x.0, &w.0, bias, p),
            ConvPath::Direct => return direct::fwd(&mut y.0, &x.0, &w.0, bias, p),
            ConvPath::Im2col => {}
        }
        let (ohw, k) = (p.oh() * p.ow(), p.patch());
        let g = Gemm::nn(p.oc, ohw, k);
        y.0[..p.y_len()].par_chunks_mut(p.oc * ohw).zip(x.0.par_chunks(p.c * p.h * p.w)).for_each(
            |(y_n, x_n)| {
                with_cols(k * ohw, |cols| {
                    im2col(cols, x_n, p);
                    gemm_slices(y_n, &w.0, cols, g);
                });
                if let Some(bias) = bias {
                    for (plane, &b) in y_n.chunks_exact_mut(ohw).zip(bias) {
                        plane.iter_mut().for_each(|v| *v += b);
                    }
                }
            },
        );
    }

    fn conv_path(&self, p: &Conv2dParams) -> ConvPath {
        if self.im2col_only {
            ConvPath::Im2col
        } else if winograd::applies(p) {
            ConvPath::Winograd
        } else if direct::applies(p) {
            ConvPath::Direct
        } else {
            ConvPath::Im2col
        }
    }
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

/// `C = alpha·op(A)·op(B) + beta·C` on slices; transposes are free stride swaps.
/// Runs on the calling thread (the convolutions call it once per image or
/// tile block, already in parallel); [`gemm_parallel`] splits one big product.
pub fn gemm_slices(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm) {
    check_gemm(c, a, b, &g);
    // SAFETY: `check_gemm` guarantees every index of the full product is in
    // bounds, and `c` does not alias `a` or `b` (&mut vs &).
    unsafe { gemm_block(c.as_mut_ptr(), a.as_ptr(), b.as_ptr(), &g, 0..g.m, 0..g.n) }
}

/// Products of at least this many FLOPs are split over the threads by
/// [`gemm_parallel`] (a linear layer's 2·128·256·3136 is 200 MFLOP; below
/// ~10 MFLOP the fork costs more than the second core gives).
const PAR_GEMM_FLOPS: f64 = 1.6e7;

/// [`gemm_slices`] with C cut into one block of rows (or of columns) per
/// thread: the linear layers' products, which would otherwise run on one
/// core while the other waits. The longer of C's two sides is cut, so the
/// operand every block packs in full is the smaller one. Each element of C
/// sees the same sequence of multiply-adds as on one thread, so the result
/// is bit-identical to [`gemm_slices`].
fn gemm_parallel(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm) {
    let threads = rayon::current_num_threads();
    if threads < 2 || g.flops() < PAR_GEMM_FLOPS {
        return gemm_slices(c, a, b, g);
    }
    check_gemm(c, a, b, &g);
    let cut_rows = g.m >= g.n;
    let len = if cut_rows { g.m } else { g.n };
    // Multiples of 16: whole micro-kernel tiles in every block but the last.
    let chunk = len.div_ceil(threads).next_multiple_of(16);
    let (c, a, b) =
        (SharedPtr(c.as_mut_ptr()), SharedPtr(a.as_ptr() as *mut f32), SharedPtr(b.as_ptr() as *mut f32));
    (0..len.div_ceil(chunk)).into_par_iter().for_each(|i| {
        let part = i * chunk..((i + 1) * chunk).min(len);
        let (rows, cols) = if cut_rows { (part, 0..g.n) } else { (0..g.m, part) };
        // SAFETY: as in `gemm_slices`; the blocks of C are disjoint, so no
        // two threads write the same element, and A and B are only read.
        unsafe { gemm_block(c.get(), a.get(), b.get(), &g, rows, cols) }
    });
}

/// A pointer shared by the threads of [`gemm_parallel`], each of which
/// touches a disjoint part of what it points to.
#[derive(Clone, Copy)]
struct SharedPtr(*mut f32);
// SAFETY: only used where the writers' ranges are disjoint (see above).
unsafe impl Send for SharedPtr {}
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    // A method, so closures capture the whole (Sync) wrapper, not its field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

fn check_gemm(c: &[f32], a: &[f32], b: &[f32], g: &Gemm) {
    let Gemm { m, n, k, .. } = *g;
    assert!(a.len() >= m * k, "sgemm: A has {} elements, needs {m}×{k}", a.len());
    assert!(b.len() >= k * n, "sgemm: B has {} elements, needs {k}×{n}", b.len());
    assert!(c.len() >= m * n, "sgemm: C has {} elements, needs {m}×{n}", c.len());
}

/// Rows `rows` × columns `cols` of `C = alpha·op(A)·op(B) + beta·C`.
///
/// # Safety
/// `c`, `a`, `b` must hold the full product's extents (as [`check_gemm`]
/// asserts for slices), `c` must not alias `a` or `b`, and no other thread may
/// touch this block of `c` meanwhile.
unsafe fn gemm_block(
    c: *mut f32,
    a: *const f32,
    b: *const f32,
    g: &Gemm,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    let Gemm { m, n, k, trans_a, trans_b, alpha, beta } = *g;
    if rows.is_empty() || cols.is_empty() {
        return;
    }
    // A is logically [m, k]; stored [k, m] when transposed.
    let (rsa, csa) = if trans_a { (1, m) } else { (k, 1) };
    let (rsb, csb) = if trans_b { (1, k) } else { (n, 1) };
    // SAFETY: the caller's contract; the offsets stay inside the full product.
    unsafe {
        matrixmultiply::sgemm(
            rows.len(),
            k,
            cols.len(),
            alpha,
            a.add(rows.start * rsa),
            rsa as isize,
            csa as isize,
            b.add(cols.start * csb),
            rsb as isize,
            csb as isize,
            beta,
            c.add(rows.start * n + cols.start),
            n as isize,
            1,
        );
    }
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

/// Split `0..n` into `parts` contiguous ranges (deterministic: depends only on
/// n and parts, never on scheduling).
fn chunks(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts).map(|i| (i * n / parts)..((i + 1) * n / parts)).collect()
}

/// A weight gradient summed over the batch, split over the threads: the
/// images are cut into one chunk per thread, and `accumulate(partial, images)`
/// adds a chunk's share into its own zeroed partial of `len` floats. The
/// partials come back in chunk order, so the caller's reduction (and with it
/// every number) does not depend on scheduling: a seed gives the same result.
fn batch_partials<'a>(
    partials: &'a Mutex<Vec<Vec<f32>>>,
    n: usize,
    len: usize,
    accumulate: impl Fn(&mut [f32], std::ops::Range<usize>) + Sync,
) -> std::sync::MutexGuard<'a, Vec<Vec<f32>>> {
    let ranges = chunks(n, rayon::current_num_threads());
    let mut parts = partials.lock().unwrap_or_else(|e| e.into_inner());
    parts.resize_with(ranges.len(), Vec::new);
    for part in parts.iter_mut() {
        part.clear();
        part.resize(len, 0.0);
    }
    parts.par_iter_mut().zip(ranges).for_each(|(part, images)| accumulate(part, images));
    parts
}

/// `dw += Σ parts`, in order.
fn add_partials(dw: &mut [f32], parts: &[Vec<f32>]) {
    for part in parts {
        dw.iter_mut().zip(part).for_each(|(d, s)| *d += s);
    }
}

/// A fast `exp` for f32 that the compiler can vectorise: range reduction to
/// `2^n · e^r`, |r| ≤ ln2/2, and a degree-6 polynomial (max rel. error 2.7e-7
/// over the whole range, measured exhaustively in tests/losses.rs). Rounding
/// uses the 1.5·2^23 trick instead of `round()` (a libm call per lane), and
/// `2^n` is built from the same bits. Inputs below −87 give ~1e-38, not 0.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_52 + r * (0.008_333_68 + r * 0.001_394_1)))));
    p * f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23)
}

/// Max of a non-empty slice (starts from the first element, never a sentinel).
fn row_max(xs: &[f32]) -> f32 {
    xs.iter().fold(xs[0], |m, &v| m.max(v))
}

impl Backend for CpuBackend {
    type Buf = CpuBuf;
    type IdxBuf = CpuIdxBuf;

    fn name(&self) -> String {
        let only = if self.im2col_only { ", im2col only" } else { "" };
        format!("cpu ({} threads, {}{only})", rayon::current_num_threads(), simd::active())
    }

    fn zeros(&self, len: usize) -> CpuBuf {
        CpuBuf(vec![0.0; len])
    }
    fn zeros_idx(&self, len: usize) -> CpuIdxBuf {
        CpuIdxBuf(vec![0; len])
    }
    fn upload(&self, xs: &[f32]) -> CpuBuf {
        CpuBuf(xs.to_vec())
    }
    fn upload_idx(&self, xs: &[u32]) -> CpuIdxBuf {
        CpuIdxBuf(xs.to_vec())
    }
    fn write(&self, dst: &mut CpuBuf, xs: &[f32]) {
        dst.0[..xs.len()].copy_from_slice(xs);
    }
    fn write_idx(&self, dst: &mut CpuIdxBuf, xs: &[u32]) {
        dst.0[..xs.len()].copy_from_slice(xs);
    }
    fn download(&self, b: &CpuBuf) -> Vec<f32> {
        b.0.clone()
    }
    fn download_idx(&self, b: &CpuIdxBuf) -> Vec<u32> {
        b.0.clone()
    }
    fn len(&self, b: &CpuBuf) -> usize {
        b.0.len()
    }
    fn len_idx(&self, b: &CpuIdxBuf) -> usize {
        b.0.len()
    }
    fn fill(&self, y: &mut CpuBuf, v: f32) {
        if y.0.len() >= PAR_MIN * 4 {
            y.0.par_chunks_mut(PAR_MIN).for_each(|c| c.fill(v));
        } else {
            y.0.fill(v);
        }
    }
    fn copy(&self, dst: &mut CpuBuf, dst_off: usize, src: &CpuBuf, src_off: usize, len: usize) {
        dst.0[dst_off..dst_off + len].copy_from_slice(&src.0[src_off..src_off + len]);
    }

    fn sgemm(&self, c: &mut CpuBuf, a: &CpuBuf, b: &CpuBuf, g: Gemm) {
        gemm_parallel(&mut c.0, &a.0, &b.0, g);
    }

    // x: (N, C, H, W), w: (OC, C·KH·KW) → y: (N, OC, OH, OW). Per image:
    // y_n = W · im2col(x_n), images in parallel.
    fn conv2d_fwd(&self, y: &mut CpuBuf, x: &CpuBuf, w: &CpuBuf, p: &Conv2dParams) {
        self.conv2d_forward(y, x, w, None, p);
    }

    fn conv2d_fwd_bias(&self, y: &mut CpuBuf, x: &CpuBuf, w: &CpuBuf, bias: &CpuBuf, p: &Conv2dParams) {
        assert!(bias.0.len() >= p.oc, "conv2d_fwd_bias: bias has {} elements, needs {}", bias.0.len(), p.oc);
        self.conv2d_forward(y, x, w, Some(&bias.0[..p.oc]), p);
    }

    /// 2×2 / stride-2 pooling after a Winograd or direct convolution is
    /// pooled as the convolution writes (`conv_out` untouched); anything
    /// else runs the two kernels.
    fn conv2d_bias_maxpool_fwd(
        &self,
        y: &mut CpuBuf,
        argmax: &mut CpuIdxBuf,
        conv_out: &mut CpuBuf,
        x: &CpuBuf,
        w: &CpuBuf,
        bias: &CpuBuf,
        p: &Conv2dParams,
        pool: &PoolParams,
    ) {
        let fits = (pool.n, pool.c, pool.h, pool.w) == (p.n, p.oc, p.oh(), p.ow());
        assert!(
            fits,
            "conv2d_bias_maxpool_fwd: pooling {pool:?} does not fit the convolution's output {p:?}"
        );
        let path = self.conv_path(p);
        if pool.k != 2 || pool.s != 2 || path == ConvPath::Im2col {
            self.conv2d_fwd_bias(conv_out, x, w, bias, p);
            return self.maxpool2d_fwd(y, argmax, conv_out, pool);
        }
        check_conv(p, x.0.len(), w.0.len(), usize::MAX, "conv2d_bias_maxpool_fwd");
        assert!(
            bias.0.len() >= p.oc,
            "conv2d_bias_maxpool_fwd: bias has {} elements, needs {}",
            bias.0.len(),
            p.oc
        );
        let (y, am, bias) = (&mut y.0[..pool.y_len()], &mut argmax.0[..pool.y_len()], &bias.0[..p.oc]);
        match path {
            ConvPath::Winograd => winograd::fwd_pool(y, am, &x.0, &w.0, bias, p),
            _ => direct::fwd_pool(y, am, &x.0, &w.0, bias, p),
        }
    }

    // dx_n += col2im(Wᵀ · dy_n), images in parallel (their dx are disjoint).
    fn conv2d_bwd_data(&self, dx: &mut CpuBuf, dy: &CpuBuf, w: &CpuBuf, p: &Conv2dParams) {
        check_conv(p, dx.0.len(), w.0.len(), dy.0.len(), "conv2d_bwd_data");
        if self.conv_path(p) == ConvPath::Winograd {
            return winograd::bwd_data(&mut dx.0, &dy.0, &w.0, p);
        }
        let (ohw, k) = (p.oh() * p.ow(), p.patch());
        let g = Gemm::nn(k, ohw, p.oc).trans(true, false);
        dx.0[..p.x_len()].par_chunks_mut(p.c * p.h * p.w).zip(dy.0.par_chunks(p.oc * ohw)).for_each(
            |(dx_n, dy_n)| {
                with_cols(k * ohw, |dcols| {
                    gemm_slices(dcols, &w.0, dy_n, g);
                    col2im_acc(dx_n, dcols, p);
                })
            },
        );
    }

    // dW += Σ_n dy_n · im2col(x_n)ᵀ, per thread chunk (`batch_partials`).
    fn conv2d_bwd_weight(&self, dw: &mut CpuBuf, x: &CpuBuf, dy: &CpuBuf, p: &Conv2dParams) {
        check_conv(p, x.0.len(), dw.0.len(), dy.0.len(), "conv2d_bwd_weight");
        match self.conv_path(p) {
            ConvPath::Winograd => return winograd::bwd_weight(&mut dw.0, &x.0, &dy.0, p, &self.partials),
            ConvPath::Direct => return direct::bwd_weight(&mut dw.0, &x.0, &dy.0, p, &self.partials),
            ConvPath::Im2col => {}
        }
        let (ohw, k) = (p.oh() * p.ow(), p.patch());
        let (xs, dys) = (&x.0, &dy.0);
        let parts = batch_partials(&self.partials, p.n, p.oc * k, |part, images| {
            with_cols(k * ohw, |cols| {
                for img in images {
                    im2col(cols, &xs[img * p.c * p.h * p.w..(img + 1) * p.c * p.h * p.w], p);
                    let g = Gemm::nn(p.oc, k, ohw).trans(false, true).acc();
                    gemm_slices(part, &dys[img * p.oc * ohw..(img + 1) * p.oc * ohw], cols, g);
                }
            })
        });
        add_partials(&mut dw.0[..p.oc * k], &parts);
    }

    fn maxpool2d_fwd(&self, y: &mut CpuBuf, argmax: &mut CpuIdxBuf, x: &CpuBuf, p: &PoolParams) {
        assert!(x.0.len() >= p.x_len(), "maxpool2d_fwd: x has {} elements, needs {:?}", x.0.len(), p);
        let (oh, ow, hw) = (p.oh(), p.ow(), p.h * p.w);
        let y = &mut y.0[..p.y_len()];
        let am = &mut argmax.0[..p.y_len()];
        y.par_chunks_mut(oh * ow).zip(am.par_chunks_mut(oh * ow)).zip(x.0.par_chunks(hw)).for_each(
            |((y_p, a_p), x_p)| {
                if p.k == 2 && p.s == 2 {
                    return with_simd!(pool_2x2(y_p, a_p, x_p, p.w, oh, ow));
                }
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (y0, x0) = (oy * p.s, ox * p.s);
                        let mut best = y0 * p.w + x0;
                        for ky in 0..p.k {
                            for kx in 0..p.k {
                                let i = (y0 + ky) * p.w + x0 + kx;
                                if x_p[i] > x_p[best] {
                                    best = i;
                                }
                            }
                        }
                        y_p[oy * ow + ox] = x_p[best];
                        a_p[oy * ow + ox] = best as u32;
                    }
                }
            },
        );
    }

    fn maxpool2d_bwd(&self, dx: &mut CpuBuf, dy: &CpuBuf, argmax: &CpuIdxBuf, p: &PoolParams) {
        unpool_planes(dx, dy, argmax, p, |_| {});
    }

    /// Each plane is zeroed just before its gradients are scattered into it,
    /// while it sits in L1: one pass over `dx` instead of a fill pass and a
    /// scatter pass.
    fn maxpool2d_bwd_set(&self, dx: &mut CpuBuf, dy: &CpuBuf, argmax: &CpuIdxBuf, p: &PoolParams) {
        unpool_planes(dx, dy, argmax, p, |plane| plane.fill(0.0));
    }

    fn relu_fwd(&self, y: &mut CpuBuf, x: &CpuBuf) {
        assert_eq!(y.0.len(), x.0.len(), "relu_fwd: y and x lengths differ");
        // Not `x.max(0.0)`: that maps NaN to 0 and would hide a diverging
        // run from the non-finite-loss check (PyTorch's ReLU keeps NaN too).
        zip_apply(&mut y.0, &x.0, |y, x| *y = if x < 0.0 { 0.0 } else { x });
    }

    fn relu_bwd(&self, dx: &mut CpuBuf, y: &CpuBuf, dy: &CpuBuf) {
        assert!(dx.0.len() == y.0.len() && y.0.len() == dy.0.len(), "relu_bwd: lengths differ");
        let f = |dx: &mut [f32], y: &[f32], dy: &[f32]| {
            {
                for ((d, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
                    // NOTE: the subgradient at 0 is 0, as PyTorch's.
                    *d += if y > 0.0 { g } else { 0.0 };
                }
            }
        };
        if dx.0.len() >= PAR_MIN {
            dx.0.par_chunks_mut(PAR_MIN)
                .zip(y.0.par_chunks(PAR_MIN))
                .zip(dy.0.par_chunks(PAR_MIN))
                .for_each(|((d, y), g)| f(d, y, g));
        } else {
            f(&mut dx.0, &y.0, &dy.0);
        }
    }

    fn bias_add(&self, y: &mut CpuBuf, b: &CpuBuf, rows: usize, cols: usize, inner: usize) {
        assert!(b.0.len() >= cols && y.0.len() >= rows * cols * inner, "bias_add: shapes");
        y.0[..rows * cols * inner].par_chunks_mut(cols * inner).for_each(|row| {
            for (c, seg) in row.chunks_mut(inner).enumerate() {
                let bc = b.0[c];
                seg.iter_mut().for_each(|v| *v += bc);
            }
        });
    }

    fn bias_grad(&self, db: &mut CpuBuf, dy: &CpuBuf, rows: usize, cols: usize, inner: usize) {
        assert!(db.0.len() >= cols && dy.0.len() >= rows * cols * inner, "bias_grad: shapes");
        // Per column: each inner segment is summed in 8 f32 lanes (vectorised,
        // at most a few hundred addends each), the segments in f64 — with 10⁵
        // addends plain f32 summation would lose ~3 digits.
        let dy = &dy.0;
        let sums: Vec<f64> = (0..cols)
            .into_par_iter()
            .map(|c| {
                {
                    (0..rows)
                        .map(|r| lane_total(&dy[(r * cols + c) * inner..(r * cols + c + 1) * inner]) as f64)
                        .sum()
                }
            })
            .collect();
        for (d, s) in db.0.iter_mut().zip(sums) {
            *d += s as f32;
        }
    }

    fn axpy(&self, y: &mut CpuBuf, alpha: f32, x: &CpuBuf) {
        zip_apply(&mut y.0, &x.0, |y, x| *y += alpha * x);
    }

    fn scale(&self, y: &mut CpuBuf, alpha: f32) {
        y.0.iter_mut().for_each(|v| *v *= alpha);
    }

    fn softmax_xent(
        &self,
        dlogits: &mut CpuBuf,
        loss: &mut CpuBuf,
        logits: &CpuBuf,
        labels: &CpuIdxBuf,
        rows: usize,
        cols: usize,
        scale: f32,
    ) {
        assert!(logits.0.len() >= rows * cols && dlogits.0.len() >= rows * cols, "softmax_xent: shapes");
        let mut total = 0.0f64;
        for r in 0..rows {
            let y = labels.0[r];
            if y == IGNORE_LABEL {
                continue;
            }
            assert!((y as usize) < cols, "softmax_xent: label {y} out of range for {cols} classes");
            let z = &logits.0[r * cols..(r + 1) * cols];
            let dz = &mut dlogits.0[r * cols..(r + 1) * cols];
            let m = row_max(z);
            let mut sum = 0.0f32;
            for &v in z {
                sum += exp_fast(v - m);
            }
            let inv = 1.0 / sum;
            for (d, &v) in dz.iter_mut().zip(z) {
                *d += scale * exp_fast(v - m) * inv;
            }
            dz[y as usize] -= scale;
            // −log softmax(z)_y = log Σ exp(z − m) − (z_y − m)
            total += (sum.ln() - (z[y as usize] - m)) as f64;
        }
        loss.0[0] += (scale as f64 * total) as f32;
    }

    fn kd_loss(
        &self,
        dzs: &mut CpuBuf,
        loss: &mut CpuBuf,
        zs: &CpuBuf,
        zt: &CpuBuf,
        rows: usize,
        cols: usize,
        ld: usize,
        t: f32,
        scale: f32,
    ) {
        assert!(ld >= cols && zs.0.len() >= (rows.max(1) - 1) * ld + cols, "kd_loss: student shape");
        assert!(zt.0.len() >= rows * cols && dzs.0.len() >= zs.0.len().min(rows * ld), "kd_loss: shapes");
        let inv_t = 1.0 / t;
        let gscale = scale * inv_t;
        let rows_loss: Vec<f64> = dzs.0[..rows * ld]
            .par_chunks_mut(ld)
            .enumerate()
            .with_min_len(64)
            .map(|(r, dz)| {
                let s = &zs.0[r * ld..r * ld + cols];
                let tt = &zt.0[r * cols..(r + 1) * cols];
                kd_row(&mut dz[..cols], s, tt, inv_t, gscale)
            })
            .collect();
        loss.0[0] += (scale as f64 * rows_loss.iter().sum::<f64>()) as f32;
    }

    fn anchor_penalty(
        &self,
        dw: &mut CpuBuf,
        loss: &mut CpuBuf,
        w: &CpuBuf,
        anchor: &CpuBuf,
        fisher: Option<&CpuBuf>,
        scale: f32,
    ) {
        let n = w.0.len();
        assert!(dw.0.len() == n && anchor.0.len() == n, "anchor_penalty: lengths differ");
        let mut total = 0.0f64;
        for i in 0..n {
            let f = fisher.map_or(1.0, |f| f.0[i]);
            let d = w.0[i] - anchor.0[i];
            total += (f * d * d) as f64;
            dw.0[i] += 2.0 * scale * f * d;
        }
        loss.0[0] += (scale as f64 * total) as f32;
    }

    fn add_squared(&self, y: &mut CpuBuf, alpha: f32, x: &CpuBuf) {
        zip_apply(&mut y.0, &x.0, |y, x| *y += alpha * x * x);
    }

    fn sgd_step(&self, w: &mut CpuBuf, v: &mut CpuBuf, g: &CpuBuf, h: SgdHyper) {
        let n = w.0.len();
        assert!(v.0.len() == n && g.0.len() == n, "sgd_step: lengths differ");
        let f = |w: &mut [f32], v: &mut [f32], g: &[f32]| {
            for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(g) {
                let d = g + h.weight_decay * *w;
                *v = h.momentum * *v + d;
                *w -= h.lr * *v;
            }
        };
        if n >= PAR_MIN * 4 {
            w.0.par_chunks_mut(PAR_MIN)
                .zip(v.0.par_chunks_mut(PAR_MIN))
                .zip(g.0.par_chunks(PAR_MIN))
                .for_each(|((w, v), g)| f(w, v, g));
        } else {
            f(&mut w.0, &mut v.0, &g.0);
        }
    }

    fn max_rows(&self, vals: &mut CpuBuf, idx: &mut CpuIdxBuf, x: &CpuBuf, rows: usize, cols: usize) {
        for r in 0..rows {
            let z = &x.0[r * cols..(r + 1) * cols];
            let mut best = 0;
            for (i, &v) in z.iter().enumerate() {
                if v > z[best] {
                    best = i;
                }
            }
            vals.0[r] = z[best];
            idx.0[r] = best as u32;
        }
    }
}

/// One row of the fused KD loss: returns `−Σ p log q` and adds
/// `gscale · (q − p)` into `dz`. Three passes over the row, all in L1:
/// maxima; the exponentials (kept in a per-thread scratch row) with their
/// sums and `Σ p·s`; the gradient update.
#[inline]
fn kd_row(dz: &mut [f32], s: &[f32], t: &[f32], inv_t: f32, gscale: f32) -> f64 {
    let n = s.len();
    let ms = row_max(s) * inv_t;
    let mt = row_max(t) * inv_t;
    KD_ROW.with(|row| {
        let mut row = row.borrow_mut();
        if row.len() < 2 * n {
            row.resize(2 * n, 0.0);
        }
        let (es, et) = row[..2 * n].split_at_mut(n);
        for i in 0..n {
            es[i] = exp_fast(s[i] * inv_t - ms);
            et[i] = exp_fast(t[i] * inv_t - mt);
        }
        // −Σ p_i log q_i with log q_i = (s_i/T − ms) − ln Σes and Σ p_i = 1,
        // so only Σes, Σet and Σ et·s are needed (8 lanes each, fixed order).
        let (ss, st) = (lane_total(es), lane_total(et));
        let mut dot = [0.0f32; LANES];
        for (e8, s8) in et.chunks(LANES).zip(s.chunks(LANES)) {
            for (l, (&e, &v)) in e8.iter().zip(s8).enumerate() {
                dot[l] += e * (v * inv_t - ms);
            }
        }
        let (iss, ist) = (1.0 / ss, 1.0 / st);
        for ((d, &q), &p) in dz.iter_mut().zip(es.iter()).zip(et.iter()) {
            *d += gscale * (q * iss - p * ist);
        }
        (ss.ln() - lane_sum(&dot) * ist) as f64
    })
}

thread_local! {
    /// Exponentials of one KD row (student, teacher), reused across calls.
    static KD_ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

const LANES: usize = 8;

/// Sum of per-lane partial sums, in lane order.
#[inline(always)]
fn lane_sum(x: &[f32; LANES]) -> f32 {
    ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]))
}

/// Sum of a slice in 8 lanes (vectorisable, deterministic).
#[inline(always)]
fn lane_total(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    for (l, &v) in rem.iter().enumerate() {
        acc[l] += v;
    }
    lane_sum(&acc)
}

/// The maximum of a 2×2 window `a b / c d` and its offset among
/// `[0, 1, w, w + 1]` (`w`: the plane's row length). Strict `>` keeps the
/// first maximum in scan order, as a sequential scan would; selects instead
/// of branches, so loops over windows vectorise. Every 2×2 pooling of the CPU
/// backend (plain, and fused into the convolutions) goes through this.
#[inline(always)]
fn max4(a: f32, b: f32, c: f32, d: f32, w: u32) -> (f32, u32) {
    let (v_top, k_top) = if b > a { (b, 1) } else { (a, 0) };
    let (v_bot, k_bot) = if d > c { (d, w + 1) } else { (c, w) };
    if v_bot > v_top {
        (v_bot, k_bot)
    } else {
        (v_top, k_top)
    }
}

/// One output row of 2×2 / stride-2 max pooling from the input rows `top`
/// and `bot` of a plane `w` wide, `top` starting at plane offset `base`.
#[inline(always)]
fn pool_rows(yr: &mut [f32], ar: &mut [u32], top: &[f32], bot: &[f32], w: usize, base: usize) {
    let n = yr.len();
    let (top, bot, ar) = (&top[..2 * n], &bot[..2 * n], &mut ar[..n]);
    for ox in 0..n {
        let (v, k) = max4(top[2 * ox], top[2 * ox + 1], bot[2 * ox], bot[2 * ox + 1], w as u32);
        yr[ox] = v;
        ar[ox] = (base + 2 * ox) as u32 + k;
    }
}

/// `dx[argmax] += dy` plane by plane, in parallel, each plane of `dx` first
/// handed to `prepare`.
fn unpool_planes(
    dx: &mut CpuBuf,
    dy: &CpuBuf,
    argmax: &CpuIdxBuf,
    p: &PoolParams,
    prepare: impl Fn(&mut [f32]) + Sync,
) {
    let (ohw, hw) = (p.oh() * p.ow(), p.h * p.w);
    dx.0[..p.x_len()]
        .par_chunks_mut(hw)
        .zip(dy.0[..p.y_len()].par_chunks(ohw))
        .zip(argmax.0[..p.y_len()].par_chunks(ohw))
        .for_each(|((dx_p, dy_p), a_p)| {
            prepare(dx_p);
            for (g, &i) in dy_p.iter().zip(a_p) {
                dx_p[i as usize] += g;
            }
        });
}

/// 2×2 stride-2 max pooling of one plane.
#[inline(always)]
fn pool_2x2(y: &mut [f32], am: &mut [u32], x: &[f32], w: usize, oh: usize, ow: usize) {
    for oy in 0..oh {
        let (r0, r1) = (2 * oy * w, (2 * oy + 1) * w);
        let (yr, ar) = (&mut y[oy * ow..(oy + 1) * ow], &mut am[oy * ow..(oy + 1) * ow]);
        pool_rows(yr, ar, &x[r0..r0 + 2 * ow], &x[r1..r1 + 2 * ow], w, r0);
    }
}

/// `f(y_i, x_i)` over two equal-length slices, in parallel when large.
fn zip_apply(y: &mut [f32], x: &[f32], f: impl Fn(&mut f32, f32) + Sync) {
    assert_eq!(y.len(), x.len(), "elementwise op: lengths {} and {} differ", y.len(), x.len());
    if y.len() >= PAR_MIN * 4 {
        y.par_chunks_mut(PAR_MIN).zip(x.par_chunks(PAR_MIN)).for_each(|(y, x)| {
            y.iter_mut().zip(x).for_each(|(y, &x)| f(y, x));
        });
    } else {
        y.iter_mut().zip(x).for_each(|(y, &x)| f(y, x));
    }
}

fn check_conv(p: &Conv2dParams, x_len: usize, w_len: usize, y_len: usize, op: &str) {
    assert!(p.h + 2 * p.ph >= p.kh && p.w + 2 * p.pw >= p.kw, "{op}: kernel larger than padded input: {p:?}");
    assert!(x_len >= p.x_len(), "{op}: x has {x_len} elements, needs {} for {p:?}", p.x_len());
    assert!(w_len >= p.w_len(), "{op}: w has {w_len} elements, needs {} for {p:?}", p.w_len());
    assert!(y_len >= p.y_len(), "{op}: y has {y_len} elements, needs {} for {p:?}", p.y_len());
}

/// Plain, obviously-correct reference kernels (llm.c's `*_naive`): the fast
/// CPU kernels are tested against these, and the GPU against the fast CPU.
pub mod naive {
    use super::super::{Conv2dParams, Gemm};

    pub fn sgemm(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm) {
        for i in 0..g.m {
            for j in 0..g.n {
                let mut s = 0.0f64;
                for p in 0..g.k {
                    let av = if g.trans_a { a[p * g.m + i] } else { a[i * g.k + p] };
                    let bv = if g.trans_b { b[j * g.k + p] } else { b[p * g.n + j] };
                    s += av as f64 * bv as f64;
                }
                let old = if g.beta == 0.0 { 0.0 } else { g.beta * c[i * g.n + j] };
                c[i * g.n + j] = g.alpha * s as f32 + old;
            }
        }
    }

    /// Direct 7-loop convolution, `y = conv(x, w)`.
    pub fn conv2d(x: &[f32], w: &[f32], p: &Conv2dParams) -> Vec<f32> {
        let (oh, ow) = (p.oh(), p.ow());
        let mut y = vec![0.0; p.y_len()];
        for n in 0..p.n {
            for o in 0..p.oc {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = 0.0f64;
                        for c in 0..p.c {
                            for ki in 0..p.kh {
                                for kj in 0..p.kw {
                                    let iy = (oy * p.sh + ki) as isize - p.ph as isize;
                                    let ix = (ox * p.sw + kj) as isize - p.pw as isize;
                                    if iy < 0 || ix < 0 || iy >= p.h as isize || ix >= p.w as isize {
                                        continue;
                                    }
                                    let xv = x[((n * p.c + c) * p.h + iy as usize) * p.w + ix as usize];
                                    let wv = w[((o * p.c + c) * p.kh + ki) * p.kw + kj];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((n * p.oc + o) * oh + oy) * ow + ox] = s as f32;
                    }
                }
            }
        }
        y
    }

    /// Unfused distillation loss and gradient, written the way a framework
    /// composes it: softmax(zt/T), log_softmax(zs/T), their product summed,
    /// then softmax(zs/T) again for the gradient. Returns (loss, dzs).
    pub fn kd_loss(zs: &[f32], zt: &[f32], rows: usize, cols: usize, t: f32, scale: f32) -> (f64, Vec<f32>) {
        let div = |z: &[f32]| z.iter().map(|v| v / t).collect::<Vec<f32>>();
        let softmax = |z: &[f32]| {
            let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
            let s: f32 = e.iter().sum();
            e.iter().map(|v| v / s).collect::<Vec<f32>>()
        };
        let log_softmax = |z: &[f32]| {
            let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let s: f32 = z.iter().map(|v| (v - m).exp()).sum();
            z.iter().map(|v| v - m - s.ln()).collect::<Vec<f32>>()
        };
        let mut loss = 0.0f64;
        let mut grad = vec![0.0; rows * cols];
        for r in 0..rows {
            let s = div(&zs[r * cols..(r + 1) * cols]);
            let tt = div(&zt[r * cols..(r + 1) * cols]);
            let p = softmax(&tt);
            let lq = log_softmax(&s);
            let prod: Vec<f32> = p.iter().zip(&lq).map(|(a, b)| a * b).collect();
            loss -= prod.iter().map(|&v| v as f64).sum::<f64>();
            let q = softmax(&s);
            for i in 0..cols {
                grad[r * cols + i] = scale * (q[i] - p[i]) / t;
            }
        }
        (scale as f64 * loss, grad)
    }

    /// Unfused softmax cross-entropy. Returns (loss, dlogits).
    pub fn softmax_xent(z: &[f32], labels: &[u32], rows: usize, cols: usize, scale: f32) -> (f64, Vec<f32>) {
        let mut loss = 0.0f64;
        let mut grad = vec![0.0; rows * cols];
        for r in 0..rows {
            if labels[r] == super::IGNORE_LABEL {
                continue;
            }
            let row: Vec<f64> = z[r * cols..(r + 1) * cols].iter().map(|&v| v as f64).collect();
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
            let y = labels[r] as usize;
            loss += s.ln() - (row[y] - m);
            for i in 0..cols {
                let p = (row[i] - m).exp() / s;
                grad[r * cols + i] = scale * (p - if i == y { 1.0 } else { 0.0 }) as f32;
            }
        }
        (scale as f64 * loss, grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Cutting C over the threads changes no bit of the product, for every
    /// transpose pair, cut along rows and along columns, with three threads
    /// (uneven blocks) and accumulation into a non-zero C.
    #[test]
    fn parallel_gemm_is_bit_identical() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("thread pool");
        let mut rng = Rng::new(11);
        for (m, n, k) in [(300, 70, 400), (70, 300, 400)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let g = Gemm { m, n, k, trans_a: ta, trans_b: tb, alpha: 0.5, beta: 1.0 };
                assert!(g.flops() >= PAR_GEMM_FLOPS, "{g:?} would not be cut");
                let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let b: Vec<f32> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let c0: Vec<f32> = (0..m * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let mut one = c0.clone();
                gemm_slices(&mut one, &a, &b, g);
                let mut cut = c0.clone();
                pool.install(|| gemm_parallel(&mut cut, &a, &b, g));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(bits(&one) == bits(&cut), "{g:?}: the cut product differs");
            }
        }
    }
}
