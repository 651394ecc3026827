//! The CPU backend: `matrixmultiply`'s SIMD sgemm for every dense product;
//! convolutions by Winograd F(2×2,3×3) ([`winograd`]), a direct AVX2 kernel
//! for the tiny-patch first layer ([`direct`]), im2col/col2im + one sgemm
//! per chunk of images, or the centre tap of a 1×1 map ([`im2col`]; see
//! `ConvPath`); rayon over the batch (or over rows/planes) for the rest. matrixmultiply's own threading stays off (its pool would
//! fight rayon's for the cores; on a 2-vCPU machine that was measured to be
//! far slower): convolutions run in parallel over the batch, and a big
//! single product (a linear layer) is cut into one block of C per rayon
//! thread ([`gemm`]).
//!
//! Per-thread scratch (im2col columns, transformed tiles, padded planes,
//! partial weight gradients) is kept in thread-locals and in the backend, so
//! a steady-state training step allocates nothing. Naive reference kernels,
//! used by the tests, are in [`naive`].
//!
//! This file holds the buffers, the `Backend` impl (argument checks, then
//! dispatch to one file per job: [`gemm`], [`im2col`], [`winograd`],
//! [`direct`], [`pool`], [`rows`]), the elementwise ops too small to need a
//! file of their own, and the helpers the convolution paths share: the
//! deterministic per-thread weight-gradient
//! partials.

use super::{Backend, BnParams, Conv2dParams, Gemm, PoolParams, SgdHyper};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

// The SIMD path choice and `with_simd!` (first: the macro is used below).
#[macro_use]
pub mod simd;
pub mod probe;

mod direct;
mod gemm;
mod im2col;
pub mod kernel_switch;
mod microgemm;
pub mod naive;
mod norm;
mod pool;
mod rows;
mod transpose;
mod winograd;

use gemm::gemm_parallel;
pub use gemm::gemm_slices;
pub use rows::exp_fast;
// The fused paths of `winograd` and `direct` pool through these.
use pool::{max4, pool_rows};

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
    /// backward-weight (from the pooled gradient when the layer is pooled).
    Direct,
    Im2col,
    /// A 1×1 map under an odd kernel padded by half its size: only the
    /// centre tap meets the image ([`im2col::centre_tap_applies`]), one
    /// gemm over the batch.
    CentreTap,
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
            ConvPath::Winograd => winograd::fwd(&mut y.0, &x.0, &w.0, bias, p),
            ConvPath::Direct => direct::fwd(&mut y.0, &x.0, &w.0, bias, p),
            ConvPath::Im2col => im2col::fwd(&mut y.0, &x.0, &w.0, bias, p),
            ConvPath::CentreTap => im2col::centre_fwd(&mut y.0, &x.0, &w.0, bias, p),
        }
    }

    fn conv_path(&self, p: &Conv2dParams) -> ConvPath {
        if self.im2col_only {
            ConvPath::Im2col
        } else if im2col::centre_tap_applies(p) {
            ConvPath::CentreTap
        } else if winograd::applies(p) {
            ConvPath::Winograd
        } else if direct::applies(p) {
            ConvPath::Direct
        } else {
            ConvPath::Im2col
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

impl Backend for CpuBackend {
    type Buf = CpuBuf;
    type IdxBuf = CpuIdxBuf;

    fn name(&self) -> String {
        let only = if self.im2col_only { ", im2col only" } else { "" };
        let plain = kernel_switch::plain_names();
        let plain = if plain.is_empty() { String::new() } else { format!(", plain {}", plain.join("+")) };
        format!("cpu ({} threads, {}{only}{plain})", rayon::current_num_threads(), simd::active())
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

    // x: (N, C, H, W), w: (OC, C·KH·KW) → y: (N, OC, OH, OW).
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
        if pool.k != 2
            || pool.s != 2
            || pool.pad != 0
            || !matches!(path, ConvPath::Winograd | ConvPath::Direct)
        {
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

    fn conv2d_bwd_data(&self, dx: &mut CpuBuf, dy: &CpuBuf, w: &CpuBuf, p: &Conv2dParams) {
        check_conv(p, dx.0.len(), w.0.len(), dy.0.len(), "conv2d_bwd_data");
        match self.conv_path(p) {
            ConvPath::Winograd => winograd::bwd_data(&mut dx.0, &dy.0, &w.0, p),
            ConvPath::Direct | ConvPath::Im2col => im2col::bwd_data(&mut dx.0, &dy.0, &w.0, p),
            ConvPath::CentreTap => im2col::centre_bwd_data(&mut dx.0, &dy.0, &w.0, p),
        }
    }

    // Per thread chunk of images (`batch_partials`), summed in chunk order.
    fn conv2d_bwd_weight(&self, dw: &mut CpuBuf, x: &CpuBuf, dy: &CpuBuf, p: &Conv2dParams) {
        check_conv(p, x.0.len(), dw.0.len(), dy.0.len(), "conv2d_bwd_weight");
        let (dw, x, dy, partials) = (&mut dw.0, &x.0, &dy.0, &self.partials);
        match self.conv_path(p) {
            ConvPath::Winograd => winograd::bwd_weight(dw, x, dy, p, partials),
            ConvPath::Direct => direct::bwd_weight(dw, x, dy, p, partials),
            ConvPath::Im2col => im2col::bwd_weight(dw, x, dy, p, partials),
            ConvPath::CentreTap => im2col::centre_bwd_weight(dw, x, dy, p),
        }
    }

    /// The direct path sums over the windows' winners only (a quarter of
    /// the positions) and never writes the 4× larger output
    /// gradient; the other paths take the default composition.
    fn conv2d_maxpool_bwd_weight(
        &self,
        dw: &mut CpuBuf,
        dconv: &mut CpuBuf,
        x: &CpuBuf,
        dy: &CpuBuf,
        argmax: &CpuIdxBuf,
        p: &Conv2dParams,
        pool: &PoolParams,
    ) {
        if !matches!(self.conv_path(p), ConvPath::Direct)
            || !direct::pooled_applies(p, pool)
            || !kernel_switch::on(kernel_switch::Kernel::PooledWeightGrad)
        {
            self.maxpool2d_bwd_set(dconv, dy, argmax, pool);
            return self.conv2d_bwd_weight(dw, x, dconv, p);
        }
        check_conv(p, x.0.len(), dw.0.len(), p.y_len(), "conv2d_maxpool_bwd_weight");
        assert!(
            dy.0.len() >= pool.y_len() && argmax.0.len() >= pool.y_len(),
            "conv2d_maxpool_bwd_weight: pooled gradient or argmax shorter than {pool:?}"
        );
        direct::bwd_weight_pooled(&mut dw.0, &x.0, &dy.0, &argmax.0, p, pool, &self.partials);
    }

    fn maxpool2d_fwd(&self, y: &mut CpuBuf, argmax: &mut CpuIdxBuf, x: &CpuBuf, p: &PoolParams) {
        assert!(
            x.0.len() >= p.x_len()
                && p.pad < p.k
                && p.h + 2 * p.pad >= p.k
                && p.w + 2 * p.pad >= p.k
                && p.s > 0,
            "maxpool2d_fwd: x has {} elements for {p:?} (the window must fit the padded input, pad < k)",
            x.0.len()
        );
        assert!(
            y.0.len() >= p.y_len() && argmax.0.len() >= p.y_len(),
            "maxpool2d_fwd: y/argmax too short for {p:?}"
        );
        pool::fwd(&mut y.0, &mut argmax.0, &x.0, p);
    }

    fn maxpool2d_bwd(&self, dx: &mut CpuBuf, dy: &CpuBuf, argmax: &CpuIdxBuf, p: &PoolParams) {
        assert!(
            dx.0.len() >= p.x_len() && dy.0.len() >= p.y_len() && argmax.0.len() >= p.y_len(),
            "maxpool2d_bwd: buffers too short for {p:?}"
        );
        pool::bwd(&mut dx.0, &dy.0, &argmax.0, p, |_| {});
    }

    /// Each plane is zeroed just before its gradients are scattered into it,
    /// while it sits in L1: one pass over `dx` instead of a fill pass and a
    /// scatter pass.
    fn maxpool2d_bwd_set(&self, dx: &mut CpuBuf, dy: &CpuBuf, argmax: &CpuIdxBuf, p: &PoolParams) {
        pool::bwd(&mut dx.0, &dy.0, &argmax.0, p, |plane| plane.fill(0.0));
    }

    fn batchnorm_stats(&self, mean: &mut CpuBuf, var: &mut CpuBuf, x: &CpuBuf, p: &BnParams) {
        check_bn(p, x.0.len(), &[mean.0.len(), var.0.len()], "batchnorm_stats");
        norm::stats(&mut mean.0, &mut var.0, &x.0, p);
    }

    fn batchnorm_fwd(
        &self,
        y: &mut CpuBuf,
        x: &CpuBuf,
        mean: &CpuBuf,
        var: &CpuBuf,
        gamma: &CpuBuf,
        beta: &CpuBuf,
        p: &BnParams,
    ) {
        check_bn(
            p,
            x.0.len().min(y.0.len()),
            &[mean.0.len(), var.0.len(), gamma.0.len(), beta.0.len()],
            "batchnorm_fwd",
        );
        norm::fwd(&mut y.0, &x.0, &mean.0, &var.0, &gamma.0, &beta.0, p);
    }

    fn batchnorm_bwd(
        &self,
        dx: Option<&mut CpuBuf>,
        dgamma: Option<&mut CpuBuf>,
        dbeta: Option<&mut CpuBuf>,
        sums: &mut CpuBuf,
        x: &CpuBuf,
        dy: &CpuBuf,
        mean: &CpuBuf,
        var: &CpuBuf,
        gamma: &CpuBuf,
        p: &BnParams,
        batch_stats: bool,
    ) {
        let x_len = x.0.len().min(dy.0.len()).min(dx.as_ref().map_or(usize::MAX, |d| d.0.len()));
        let mut per_channel = vec![mean.0.len(), var.0.len(), gamma.0.len(), sums.0.len() / 2];
        per_channel.extend(dgamma.as_ref().map(|d| d.0.len()));
        per_channel.extend(dbeta.as_ref().map(|d| d.0.len()));
        check_bn(p, x_len, &per_channel, "batchnorm_bwd");
        norm::bwd(
            dx.map(|d| &mut d.0[..]),
            dgamma.map(|d| &mut d.0[..]),
            dbeta.map(|d| &mut d.0[..]),
            &mut sums.0,
            &x.0,
            &dy.0,
            &mean.0,
            &var.0,
            &gamma.0,
            p,
            batch_stats,
        );
    }

    fn avgpool_fwd(&self, y: &mut CpuBuf, x: &CpuBuf, rows: usize, inner: usize) {
        assert!(
            inner > 0 && y.0.len() >= rows && x.0.len() >= rows * inner,
            "avgpool_fwd: y {} / x {} too short for {rows}×{inner}",
            y.0.len(),
            x.0.len()
        );
        norm::avgpool_fwd(&mut y.0, &x.0, rows, inner);
    }

    fn avgpool_bwd(&self, dx: &mut CpuBuf, dy: &CpuBuf, rows: usize, inner: usize) {
        assert!(
            inner > 0 && dy.0.len() >= rows && dx.0.len() >= rows * inner,
            "avgpool_bwd: dx {} / dy {} too short for {rows}×{inner}",
            dx.0.len(),
            dy.0.len()
        );
        norm::avgpool_bwd(&mut dx.0, &dy.0, rows, inner);
    }

    fn add(&self, y: &mut CpuBuf, a: &CpuBuf, b: &CpuBuf) {
        assert!(y.0.len() == a.0.len() && a.0.len() == b.0.len(), "add: lengths differ");
        let f = |y: &mut [f32], a: &[f32], b: &[f32]| {
            y.iter_mut().zip(a).zip(b).for_each(|((y, &a), &b)| *y = a + b);
        };
        if y.0.len() >= PAR_MIN {
            y.0.par_chunks_mut(PAR_MIN)
                .zip(a.0.par_chunks(PAR_MIN))
                .zip(b.0.par_chunks(PAR_MIN))
                .for_each(|((y, a), b)| f(y, a, b));
        } else {
            f(&mut y.0, &a.0, &b.0);
        }
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
                        .map(|r| {
                            rows::lane_total(&dy[(r * cols + c) * inner..(r * cols + c + 1) * inner]) as f64
                        })
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
        let total = rows::softmax_xent(&mut dlogits.0, &logits.0, &labels.0, rows, cols, scale);
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
        let total = rows::kd_loss(&mut dzs.0, &zs.0, &zt.0, rows, cols, ld, t, scale);
        loss.0[0] += (scale as f64 * total) as f32;
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
        rows::max_rows(&mut vals.0, &mut idx.0, &x.0, rows, cols);
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

/// A batch normalisation's buffers must hold its geometry: `x_len` values of
/// `x` (and `y`/`dy`/`dx`), and every per-channel buffer `C`.
fn check_bn(p: &BnParams, x_len: usize, per_channel: &[usize], op: &str) {
    assert!(
        x_len >= p.x_len() && per_channel.iter().all(|&l| l >= p.c) && p.hw > 0,
        "{op}: buffers too short for {p:?} (x {x_len}, per channel {per_channel:?})"
    );
}

fn check_conv(p: &Conv2dParams, x_len: usize, w_len: usize, y_len: usize, op: &str) {
    assert!(p.h + 2 * p.ph >= p.kh && p.w + 2 * p.pw >= p.kw, "{op}: kernel larger than padded input: {p:?}");
    assert!(x_len >= p.x_len(), "{op}: x has {x_len} elements, needs {} for {p:?}", p.x_len());
    assert!(w_len >= p.w_len(), "{op}: w has {w_len} elements, needs {} for {p:?}", p.w_len());
    assert!(y_len >= p.y_len(), "{op}: y has {y_len} elements, needs {} for {p:?}", p.y_len());
}
