//! The GPU backend: hand-written WGSL compute shaders (`shaders/*.wgsl`) run
//! through wgpu (Vulkan), implementing the same [`Backend`] trait as the CPU
//! so every model, loss, optimizer and method runs on it unchanged.
//!
//! - [`device`]: adapter/device set-up, all pipelines built once, buffers,
//!   batched submission, per-dispatch uniforms, cached bind groups, read-back.
//! - [`kernels`]: the shader table and the uniform structs' Rust twins.
//! - this file: the ops, i.e. how each `Backend` call maps onto dispatches.
//!
//! Data stays on the device; a training step is one or a few submissions and
//! its only read-back is the loss scalar.

mod device;
mod kernels;

use super::{Backend, BnParams, Conv2dParams, Gemm, PoolParams, SgdHyper};
use device::{lock, u, Ctx, RawBuf, Slot};
use kernels::{
    AnchorParams, ConvUniform, EwParams, GemmParams, KdUniform, Kernel, LossUniform, NormParams, PoolUniform,
    ReduceParams, SgdParams, WG,
};
use std::sync::Arc;

/// f32 storage on the GPU.
pub struct WgpuBuf(RawBuf);

/// u32 storage on the GPU.
pub struct WgpuIdxBuf(RawBuf);

/// The wgpu device. Cheap to clone; clones share the device and its queue.
#[derive(Clone)]
pub struct WgpuBackend {
    ctx: Arc<Ctx>,
    /// gemm through `gemm_reg` (no workgroup memory): the default on a CPU
    /// adapter (lavapipe), where the tiled kernels are slower.
    reg_gemm: bool,
}

/// gemm output tiles (of 64×64) below which K is split across workgroups.
const SPLIT_MIN_TILES: usize = 32;
/// Workgroups a split-K gemm aims for.
const SPLIT_TARGET: usize = 128;
/// Smallest K for a split, and smallest K-chunk of one split.
const SPLIT_MIN_K: usize = 1024;
const SPLIT_CHUNK: usize = 256;

impl WgpuBackend {
    /// Open the first high-performance adapter (Vulkan), create the device
    /// and compile every shader. Errors name the missing adapter or the
    /// shader file that failed.
    pub fn new() -> crate::Result<Self> {
        let ctx = Ctx::new()?;
        let reg_gemm = ctx.info.device_type == ::wgpu::DeviceType::Cpu;
        Ok(WgpuBackend { ctx: Arc::new(ctx), reg_gemm })
    }

    /// Adapter name, driver, backend and device type, for reports.
    pub fn gpu_info(&self) -> String {
        let i = &self.ctx.info;
        let driver = if i.driver_info.is_empty() {
            i.driver.clone()
        } else {
            format!("{} {}", i.driver, i.driver_info)
        };
        format!("{} | driver: {} | backend: {:?} | type: {:?}", i.name, driver, i.backend, i.device_type)
    }

    /// True on a software rasteriser (Mesa's lavapipe/llvmpipe): correct but
    /// 100× slower than the CPU backend, so benches shrink their sizes.
    pub fn is_software(&self) -> bool {
        self.ctx.info.device_type == ::wgpu::DeviceType::Cpu
    }

    /// This handle (same device) with the workgroup-tiled gemm kernels a real
    /// GPU uses, even on a software adapter. For tests.
    #[doc(hidden)]
    pub fn force_tiled_gemm(mut self) -> Self {
        self.reg_gemm = false;
        self
    }

    /// Submit recorded work without waiting for it (e.g. before host work
    /// that overlaps the GPU). `download` submits by itself.
    pub fn submit(&self) {
        self.ctx.submit();
    }

    /// Cap every scratch buffer at `elems` elements (0: the device's limit),
    /// so that convolutions run in several batch chunks. For tests.
    #[doc(hidden)]
    pub fn set_scratch_limit(&self, elems: usize) {
        self.ctx.scratch_limit.store(elems, std::sync::atomic::Ordering::Relaxed);
    }

    /// Cap every buffer at `bytes` (0: the device's limit), as if the GPU
    /// were smaller. For tests of the device-limit errors.
    #[doc(hidden)]
    pub fn set_buffer_limit(&self, bytes: u64) {
        self.ctx.buffer_limit.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn ew(&self, k: Kernel, n: usize, alpha: f32, bufs: &[&RawBuf]) {
        let p = EwParams { n: u(n), alpha, ..Default::default() };
        self.ctx.dispatch(k, &p, bufs, self.ctx.grid_elems(n));
    }

    /// Record `gp` over `nz` batch items (grid z) with the tile shape that fits.
    fn gemm(&self, c: &RawBuf, a: &RawBuf, b: &RawBuf, gp: &GemmParams, nz: usize) {
        let (m, n) = (gp.m as usize, gp.n as usize);
        if m == 0 || n == 0 || nz == 0 {
            return;
        }
        let big_tiles = m.div_ceil(128) * n.div_ceil(128) * nz;
        let (kernel, t) = if self.reg_gemm {
            (Kernel::GemmReg, 32)
        } else if m >= 128 && n >= 128 && big_tiles >= 256 {
            (Kernel::Gemm128, 128)
        } else {
            (Kernel::Gemm64, 64)
        };
        let groups = [u(n.div_ceil(t)), u(m.div_ceil(t)), u(nz)];
        self.ctx.dispatch(kernel, gp, &[a, b, c], groups);
    }

    /// `c[i] = alpha · Σ_z parts[z·n + i] + beta · c[i]` for `i < n`.
    fn reduce_parts(&self, c: &RawBuf, parts: &RawBuf, n: usize, nz: usize, alpha: f32, beta: f32) {
        let p = ReduceParams { n: u(n), rows: u(nz), alpha, beta, ..Default::default() };
        self.ctx.dispatch(Kernel::SplitkReduce, &p, &[parts, c], self.ctx.grid_elems(n));
    }

    /// `loss[0] += alpha · Σ parts[..n]` (one workgroup, tree reduction).
    fn sum_into(&self, loss: &RawBuf, parts: &RawBuf, n: usize, alpha: f32) {
        let p = ReduceParams { n: u(n), alpha, ..Default::default() };
        self.ctx.dispatch(Kernel::SumInto, &p, &[parts, loss], [1, 1, 1]);
    }

    /// How many K-chunks a plain gemm is cut into (1: no split).
    fn split_k(&self, m: usize, n: usize, k: usize) -> usize {
        let tiles = m.div_ceil(64) * n.div_ceil(64);
        if tiles >= SPLIT_MIN_TILES || k < SPLIT_MIN_K {
            return 1;
        }
        let by_mem = self.ctx.scratch_cap() / (m * n).max(1);
        SPLIT_TARGET.div_ceil(tiles).min(k / SPLIT_CHUNK).min(by_mem).clamp(1, 64)
    }

    fn conv_uniform(p: &Conv2dParams, total: usize, x_off: usize) -> ConvUniform {
        ConvUniform {
            total: u(total),
            c: u(p.c),
            h: u(p.h),
            w: u(p.w),
            kh: u(p.kh),
            kw: u(p.kw),
            sh: u(p.sh),
            sw: u(p.sw),
            ph: u(p.ph),
            pw: u(p.pw),
            oh: u(p.oh()),
            ow: u(p.ow()),
            x_off: u(x_off),
            _pad: [0; 3],
        }
    }

    /// Images per chunk when each image needs `per_image` elements in every
    /// scratch buffer listed.
    fn conv_chunk(&self, n: usize, per_image: &[usize]) -> usize {
        let cap = self.ctx.scratch_cap();
        let worst = per_image.iter().copied().max().unwrap_or(1).max(1);
        if worst > cap {
            // A device limit, not a bug: the step is skipped and the verb reports it.
            self.ctx.set_fault(format!(
                "a convolution needs {} bytes of scratch per image, over the GPU's largest buffer ({} bytes); \
                 use a smaller image size, or --backend cpu",
                4 * worst,
                4 * cap
            ));
            return 1;
        }
        (cap / worst).min(n).min(device::MAX_DIM as usize).max(1)
    }
}

fn check_conv(p: &Conv2dParams, x_len: usize, w_len: usize, y_len: usize, op: &str) {
    assert!(p.h + 2 * p.ph >= p.kh && p.w + 2 * p.pw >= p.kw, "{op}: kernel larger than padded input: {p:?}");
    assert!(p.sh > 0 && p.sw > 0, "{op}: zero stride: {p:?}");
    assert!(x_len >= p.x_len(), "{op}: x has {x_len} elements, needs {} for {p:?}", p.x_len());
    assert!(w_len >= p.w_len(), "{op}: w has {w_len} elements, needs {} for {p:?}", p.w_len());
    assert!(y_len >= p.y_len(), "{op}: y has {y_len} elements, needs {} for {p:?}", p.y_len());
}

/// The geometry the pooling kernels rely on: a window that fits the padded
/// plane, and padding narrower than the window (so every window holds a
/// real cell, the only kind that can win).
fn check_pool(p: &PoolParams, op: &str) {
    assert!(p.k > 0 && p.s > 0, "{op}: zero window or stride: {p:?}");
    assert!(p.pad < p.k, "{op}: padding {} not smaller than the window {}: {p:?}", p.pad, p.k);
    assert!(
        p.h + 2 * p.pad >= p.k && p.w + 2 * p.pad >= p.k,
        "{op}: window larger than the padded input: {p:?}"
    );
}

/// BatchNorm's buffers against its geometry: `x` (and the other
/// `(N, C, HW)` buffers, checked by the caller) and every per-channel one.
fn check_bn(p: &BnParams, x_len: usize, per_channel: &[(&str, usize)], op: &str) {
    assert!(p.hw > 0, "{op}: empty planes (HW = 0) in {p:?}");
    assert!(x_len >= p.x_len(), "{op}: x has {x_len} elements, needs {} for {p:?}", p.x_len());
    for &(name, len) in per_channel {
        assert!(len >= p.c, "{op}: {name} has {len} elements, needs C = {} for {p:?}", p.c);
    }
}

/// The norm.wgsl uniform of a BatchNorm op over `total` invocations
/// (`batch_stats` and `offset` zero).
fn norm_params(p: &BnParams, total: usize) -> NormParams {
    NormParams {
        total: u(total),
        c: u(p.c),
        hw: u(p.hw),
        count: u(p.count()),
        eps: p.eps,
        // The CPU divides by the count in f64 for the statistics and by
        // `count as f32` for the backward's S/M: one f32 factor, within both.
        inv_count: 1.0 / p.count().max(1) as f32,
        ..Default::default()
    }
}

/// Global average pooling's buffers: the per-row one (`y`, `dy`) and the
/// `(rows, inner)` one (`x`, `dx`).
fn check_avgpool(row_len: usize, plane_len: usize, rows: usize, inner: usize, op: &str, r: &str, x: &str) {
    assert!(inner > 0, "{op}: empty rows (inner = 0)");
    assert!(row_len >= rows, "{op}: {r} has {row_len} elements, needs {rows} rows");
    assert!(
        plane_len >= rows * inner,
        "{op}: {x} has {plane_len} elements, needs {rows}×{inner} = {}",
        rows * inner
    );
}

/// The norm.wgsl uniform of an average pool: `(rows, inner)` planes, the
/// CPU's f32 factor `1 / inner`.
fn avgpool_params(total: usize, rows: usize, inner: usize) -> NormParams {
    NormParams {
        total: u(total),
        c: u(rows),
        hw: u(inner),
        inv_count: 1.0 / inner as f32,
        ..Default::default()
    }
}

fn pool_uniform(p: &PoolParams, total: usize) -> PoolUniform {
    PoolUniform {
        total: u(total),
        h: u(p.h),
        w: u(p.w),
        oh: u(p.oh()),
        ow: u(p.ow()),
        k: u(p.k),
        s: u(p.s),
        pad: u(p.pad),
    }
}

impl Backend for WgpuBackend {
    type Buf = WgpuBuf;
    type IdxBuf = WgpuIdxBuf;

    fn name(&self) -> String {
        format!("wgpu: {} ({:?})", self.ctx.info.name, self.ctx.info.backend)
    }

    fn fault(&self) -> Option<String> {
        self.ctx.fault().map(|why| format!("{}: {why}", self.name()))
    }

    fn zeros(&self, len: usize) -> WgpuBuf {
        WgpuBuf(self.ctx.alloc(len, "lwf f32"))
    }
    fn zeros_idx(&self, len: usize) -> WgpuIdxBuf {
        WgpuIdxBuf(self.ctx.alloc(len, "lwf u32"))
    }
    fn upload(&self, xs: &[f32]) -> WgpuBuf {
        WgpuBuf(self.ctx.alloc_init(xs))
    }
    fn upload_idx(&self, xs: &[u32]) -> WgpuIdxBuf {
        WgpuIdxBuf(self.ctx.alloc_init(xs))
    }
    fn write(&self, dst: &mut WgpuBuf, xs: &[f32]) {
        self.ctx.write(&dst.0, xs);
    }
    fn write_idx(&self, dst: &mut WgpuIdxBuf, xs: &[u32]) {
        self.ctx.write(&dst.0, xs);
    }
    fn download(&self, b: &WgpuBuf) -> Vec<f32> {
        bytemuck::pod_collect_to_vec(&self.ctx.read(&b.0))
    }
    fn download_idx(&self, b: &WgpuIdxBuf) -> Vec<u32> {
        bytemuck::pod_collect_to_vec(&self.ctx.read(&b.0))
    }
    fn len(&self, b: &WgpuBuf) -> usize {
        b.0.len
    }
    fn len_idx(&self, b: &WgpuIdxBuf) -> usize {
        b.0.len
    }
    fn fill(&self, y: &mut WgpuBuf, v: f32) {
        if y.0.len == 0 {
            return;
        }
        if v.to_bits() == 0 {
            self.ctx.clear(&y.0);
        } else {
            self.ew(Kernel::Fill, y.0.len, v, &[&y.0]);
        }
    }
    fn copy(&self, dst: &mut WgpuBuf, dst_off: usize, src: &WgpuBuf, src_off: usize, len: usize) {
        self.ctx.copy(&dst.0, dst_off, &src.0, src_off, len);
    }

    fn sgemm(&self, c: &mut WgpuBuf, a: &WgpuBuf, b: &WgpuBuf, g: Gemm) {
        let Gemm { m, n, k, trans_a, trans_b, alpha, beta } = g;
        assert!(a.0.len >= m * k, "sgemm: A has {} elements, needs {m}×{k}", a.0.len);
        assert!(b.0.len >= k * n, "sgemm: B has {} elements, needs {k}×{n}", b.0.len);
        assert!(c.0.len >= m * n, "sgemm: C has {} elements, needs {m}×{n}", c.0.len);
        if m == 0 || n == 0 {
            return;
        }
        let mut gp = GemmParams {
            m: u(m),
            n: u(n),
            k: u(k),
            k_total: u(k),
            lda: u(if trans_a { m } else { k }),
            ldb: u(if trans_b { k } else { n }),
            ldc: u(n),
            trans: trans_a as u32 | (trans_b as u32) << 1,
            alpha,
            beta,
            ..Default::default()
        };
        let split = self.split_k(m, n, k);
        if split <= 1 {
            self.gemm(&c.0, &a.0, &b.0, &gp, 1);
            return;
        }
        // Split-K: each z item sums one K-chunk into its own partial C.
        let chunk = k.div_ceil(split).next_multiple_of(16);
        let nz = k.div_ceil(chunk);
        gp.k = u(chunk);
        gp.a_zs = u(if trans_a { chunk * m } else { chunk });
        gp.b_zs = u(if trans_b { chunk } else { chunk * n });
        gp.c_zs = u(m * n);
        gp.alpha = 1.0;
        gp.beta = 0.0;
        let mut scr = lock(&self.ctx.scratch);
        scr.ensure(&self.ctx, Slot::Parts, nz * m * n);
        let parts = scr.get(Slot::Parts);
        self.gemm(parts, &a.0, &b.0, &gp, nz);
        self.reduce_parts(&c.0, parts, m * n, nz, alpha, beta);
    }

    // Per chunk of images: cols = im2col(x), then y_n = W · cols_n (batched gemm).
    fn conv2d_fwd(&self, y: &mut WgpuBuf, x: &WgpuBuf, w: &WgpuBuf, p: &Conv2dParams) {
        check_conv(p, x.0.len, w.0.len, y.0.len, "conv2d_fwd");
        let (ohw, kp) = (p.oh() * p.ow(), p.patch());
        let per = kp * ohw;
        if p.n == 0 || p.oc == 0 || ohw == 0 {
            return;
        }
        let nb = self.conv_chunk(p.n, &[per]);
        let mut scr = lock(&self.ctx.scratch);
        scr.ensure(&self.ctx, Slot::Cols, nb * per);
        let cols = scr.get(Slot::Cols);
        for n0 in (0..p.n).step_by(nb) {
            let cnt = nb.min(p.n - n0);
            let cu = Self::conv_uniform(p, cnt * per, n0 * p.c * p.h * p.w);
            self.ctx.dispatch(Kernel::Im2col, &cu, &[&x.0, cols], self.ctx.grid_elems(cnt * per));
            let gp = GemmParams {
                m: u(p.oc),
                n: u(ohw),
                k: u(kp),
                k_total: u(kp * cnt),
                lda: u(kp),
                ldb: u(ohw),
                ldc: u(ohw),
                c_off: u(n0 * p.oc * ohw),
                b_zs: u(per),
                c_zs: u(p.oc * ohw),
                alpha: 1.0,
                beta: 0.0,
                ..Default::default()
            };
            self.gemm(&y.0, &w.0, cols, &gp, cnt);
        }
    }

    // Per chunk: dcols_n = Wᵀ · dy_n (batched gemm), then dx_n += col2im(dcols_n).
    fn conv2d_bwd_data(&self, dx: &mut WgpuBuf, dy: &WgpuBuf, w: &WgpuBuf, p: &Conv2dParams) {
        check_conv(p, dx.0.len, w.0.len, dy.0.len, "conv2d_bwd_data");
        let (ohw, kp) = (p.oh() * p.ow(), p.patch());
        let per = kp * ohw;
        if p.n == 0 || per == 0 || p.oc == 0 {
            return;
        }
        let nb = self.conv_chunk(p.n, &[per]);
        let mut scr = lock(&self.ctx.scratch);
        scr.ensure(&self.ctx, Slot::Cols, nb * per);
        let cols = scr.get(Slot::Cols);
        for n0 in (0..p.n).step_by(nb) {
            let cnt = nb.min(p.n - n0);
            let gp = GemmParams {
                m: u(kp),
                n: u(ohw),
                k: u(p.oc),
                k_total: u(p.oc * cnt),
                lda: u(kp),
                ldb: u(ohw),
                ldc: u(ohw),
                trans: 1,
                b_off: u(n0 * p.oc * ohw),
                b_zs: u(p.oc * ohw),
                c_zs: u(per),
                alpha: 1.0,
                beta: 0.0,
                ..Default::default()
            };
            self.gemm(cols, &w.0, &dy.0, &gp, cnt);
            let img = p.c * p.h * p.w;
            let cu = Self::conv_uniform(p, cnt * img, n0 * img);
            self.ctx.dispatch(Kernel::Col2im, &cu, &[cols, &dx.0], self.ctx.grid_elems(cnt * img));
        }
    }

    // Per chunk: cols = im2col(x); part_n = dy_n · cols_nᵀ (batched gemm);
    // dW += Σ_n part_n (a reduction over the chunk, no atomics).
    fn conv2d_bwd_weight(&self, dw: &mut WgpuBuf, x: &WgpuBuf, dy: &WgpuBuf, p: &Conv2dParams) {
        check_conv(p, x.0.len, dw.0.len, dy.0.len, "conv2d_bwd_weight");
        let (ohw, kp) = (p.oh() * p.ow(), p.patch());
        let per = kp * ohw;
        let wl = p.oc * kp;
        if p.n == 0 || per == 0 || p.oc == 0 {
            return;
        }
        let nb = self.conv_chunk(p.n, &[per, wl]);
        let mut scr = lock(&self.ctx.scratch);
        scr.ensure(&self.ctx, Slot::Cols, nb * per);
        scr.ensure(&self.ctx, Slot::Parts, nb * wl);
        let (cols, parts) = (scr.get(Slot::Cols), scr.get(Slot::Parts));
        for n0 in (0..p.n).step_by(nb) {
            let cnt = nb.min(p.n - n0);
            let cu = Self::conv_uniform(p, cnt * per, n0 * p.c * p.h * p.w);
            self.ctx.dispatch(Kernel::Im2col, &cu, &[&x.0, cols], self.ctx.grid_elems(cnt * per));
            let mut gp = GemmParams {
                m: u(p.oc),
                n: u(kp),
                k: u(ohw),
                k_total: u(ohw * cnt),
                lda: u(ohw),
                ldb: u(ohw),
                ldc: u(kp),
                trans: 2,
                a_off: u(n0 * p.oc * ohw),
                a_zs: u(p.oc * ohw),
                b_zs: u(per),
                c_zs: u(wl),
                alpha: 1.0,
                beta: 0.0,
                ..Default::default()
            };
            if cnt == 1 {
                gp.beta = 1.0;
                self.gemm(&dw.0, &dy.0, cols, &gp, 1);
            } else {
                self.gemm(parts, &dy.0, cols, &gp, cnt);
                self.reduce_parts(&dw.0, parts, wl, cnt, 1.0, 1.0);
            }
        }
    }

    fn maxpool2d_fwd(&self, y: &mut WgpuBuf, argmax: &mut WgpuIdxBuf, x: &WgpuBuf, p: &PoolParams) {
        check_pool(p, "maxpool2d_fwd");
        assert!(x.0.len >= p.x_len(), "maxpool2d_fwd: x has {} elements, needs {:?}", x.0.len, p);
        assert!(
            y.0.len >= p.y_len() && argmax.0.len >= p.y_len(),
            "maxpool2d_fwd: y/argmax too short for {p:?}"
        );
        let total = p.y_len();
        let pu = pool_uniform(p, total);
        self.ctx.dispatch(Kernel::MaxpoolFwd, &pu, &[&x.0, &y.0, &argmax.0], self.ctx.grid_elems(total));
    }

    fn maxpool2d_bwd(&self, dx: &mut WgpuBuf, dy: &WgpuBuf, argmax: &WgpuIdxBuf, p: &PoolParams) {
        check_pool(p, "maxpool2d_bwd");
        assert!(dx.0.len >= p.x_len(), "maxpool2d_bwd: dx too short for {p:?}");
        assert!(
            dy.0.len >= p.y_len() && argmax.0.len >= p.y_len(),
            "maxpool2d_bwd: dy/argmax too short for {p:?}"
        );
        let total = p.x_len();
        let pu = pool_uniform(p, total);
        self.ctx.dispatch(Kernel::MaxpoolBwd, &pu, &[&dy.0, &argmax.0, &dx.0], self.ctx.grid_elems(total));
    }

    // One workgroup per channel: the mean, then the squared deviations.
    fn batchnorm_stats(&self, mean: &mut WgpuBuf, var: &mut WgpuBuf, x: &WgpuBuf, p: &BnParams) {
        check_bn(p, x.0.len, &[("mean", mean.0.len), ("var", var.0.len)], "batchnorm_stats");
        if p.x_len() == 0 {
            return;
        }
        let np = norm_params(p, 0);
        self.ctx.dispatch(Kernel::BnStats, &np, &[&x.0, &mean.0, &var.0], self.ctx.grid(p.c));
    }

    // ab = the per-channel affine map (scratch), then y = x·a + b.
    fn batchnorm_fwd(
        &self,
        y: &mut WgpuBuf,
        x: &WgpuBuf,
        mean: &WgpuBuf,
        var: &WgpuBuf,
        gamma: &WgpuBuf,
        beta: &WgpuBuf,
        p: &BnParams,
    ) {
        let per_channel =
            [("mean", mean.0.len), ("var", var.0.len), ("gamma", gamma.0.len), ("beta", beta.0.len)];
        check_bn(p, x.0.len, &per_channel, "batchnorm_fwd");
        assert!(
            y.0.len >= p.x_len(),
            "batchnorm_fwd: y has {} elements, needs {} for {p:?}",
            y.0.len,
            p.x_len()
        );
        if p.x_len() == 0 {
            return;
        }
        let np = norm_params(p, p.x_len());
        let mut scr = lock(&self.ctx.scratch);
        scr.ensure(&self.ctx, Slot::Rows, 2 * p.c);
        let ab = scr.get(Slot::Rows);
        let bufs = [&mean.0, &var.0, &gamma.0, &beta.0, ab];
        self.ctx.dispatch(Kernel::BnAffine, &np, &bufs, self.ctx.grid_elems(p.c));
        self.ctx.dispatch(Kernel::BnFwd, &np, &[&x.0, ab, &y.0], self.ctx.grid_elems(p.x_len()));
    }

    // sums (one workgroup per channel); dbeta/dgamma += their half of sums;
    // then, for dx, the per-channel constants (scratch) and the elementwise pass.
    fn batchnorm_bwd(
        &self,
        dx: Option<&mut WgpuBuf>,
        dgamma: Option<&mut WgpuBuf>,
        dbeta: Option<&mut WgpuBuf>,
        sums: &mut WgpuBuf,
        x: &WgpuBuf,
        dy: &WgpuBuf,
        mean: &WgpuBuf,
        var: &WgpuBuf,
        gamma: &WgpuBuf,
        p: &BnParams,
        batch_stats: bool,
    ) {
        let mut per_channel = vec![("mean", mean.0.len), ("var", var.0.len), ("gamma", gamma.0.len)];
        per_channel.extend(dgamma.as_ref().map(|d| ("dgamma", d.0.len)));
        per_channel.extend(dbeta.as_ref().map(|d| ("dbeta", d.0.len)));
        check_bn(p, x.0.len, &per_channel, "batchnorm_bwd");
        assert!(
            sums.0.len >= 2 * p.c,
            "batchnorm_bwd: sums has {} elements, needs 2·C = {} for {p:?}",
            sums.0.len,
            2 * p.c
        );
        assert!(
            dy.0.len >= p.x_len(),
            "batchnorm_bwd: dy has {} elements, needs {} for {p:?}",
            dy.0.len,
            p.x_len()
        );
        if let Some(d) = &dx {
            assert!(
                d.0.len >= p.x_len(),
                "batchnorm_bwd: dx has {} elements, needs {} for {p:?}",
                d.0.len,
                p.x_len()
            );
        }
        if p.x_len() == 0 {
            return;
        }
        let mut np = norm_params(p, p.x_len());
        np.batch_stats = batch_stats as u32;
        let sums = &sums.0;
        self.ctx.dispatch(Kernel::BnBwdSums, &np, &[&x.0, &dy.0, &mean.0, &var.0, sums], self.ctx.grid(p.c));
        let grid_c = self.ctx.grid_elems(p.c);
        for (d, offset) in [(dbeta, 0), (dgamma, p.c)] {
            if let Some(d) = d {
                let np = NormParams { offset: u(offset), ..np };
                self.ctx.dispatch(Kernel::BnAcc, &np, &[sums, &d.0], grid_c);
            }
        }
        let Some(dx) = dx else { return };
        let mut scr = lock(&self.ctx.scratch);
        scr.ensure(&self.ctx, Slot::Rows, 4 * p.c);
        let coef = scr.get(Slot::Rows);
        self.ctx.dispatch(Kernel::BnBwdCoef, &np, &[&var.0, &gamma.0, sums, coef], grid_c);
        let bufs = [&x.0, &dy.0, &mean.0, coef, &dx.0];
        self.ctx.dispatch(Kernel::BnBwdDx, &np, &bufs, self.ctx.grid_elems(p.x_len()));
    }

    fn avgpool_fwd(&self, y: &mut WgpuBuf, x: &WgpuBuf, rows: usize, inner: usize) {
        check_avgpool(y.0.len, x.0.len, rows, inner, "avgpool_fwd", "y", "x");
        let np = avgpool_params(rows, rows, inner);
        self.ctx.dispatch(Kernel::AvgpoolFwd, &np, &[&x.0, &y.0], self.ctx.grid_elems(rows));
    }

    fn avgpool_bwd(&self, dx: &mut WgpuBuf, dy: &WgpuBuf, rows: usize, inner: usize) {
        check_avgpool(dy.0.len, dx.0.len, rows, inner, "avgpool_bwd", "dy", "dx");
        let np = avgpool_params(rows * inner, rows, inner);
        self.ctx.dispatch(Kernel::AvgpoolBwd, &np, &[&dy.0, &dx.0], self.ctx.grid_elems(rows * inner));
    }

    fn add(&self, y: &mut WgpuBuf, a: &WgpuBuf, b: &WgpuBuf) {
        assert!(
            y.0.len == a.0.len && a.0.len == b.0.len,
            "add: lengths differ (y {}, a {}, b {})",
            y.0.len,
            a.0.len,
            b.0.len
        );
        self.ew(Kernel::Add, y.0.len, 0.0, &[&a.0, &b.0, &y.0]);
    }

    fn relu_fwd(&self, y: &mut WgpuBuf, x: &WgpuBuf) {
        assert_eq!(y.0.len, x.0.len, "relu_fwd: y and x lengths differ");
        self.ew(Kernel::ReluFwd, x.0.len, 0.0, &[&x.0, &y.0]);
    }

    fn relu_bwd(&self, dx: &mut WgpuBuf, y: &WgpuBuf, dy: &WgpuBuf) {
        assert!(dx.0.len == y.0.len && y.0.len == dy.0.len, "relu_bwd: lengths differ");
        self.ew(Kernel::ReluBwd, y.0.len, 0.0, &[&y.0, &dy.0, &dx.0]);
    }

    fn bias_add(&self, y: &mut WgpuBuf, b: &WgpuBuf, rows: usize, cols: usize, inner: usize) {
        assert!(b.0.len >= cols && y.0.len >= rows * cols * inner, "bias_add: shapes");
        let n = rows * cols * inner;
        let p = EwParams { n: u(n), cols: u(cols), inner: u(inner), ..Default::default() };
        self.ctx.dispatch(Kernel::BiasAdd, &p, &[&b.0, &y.0], self.ctx.grid_elems(n));
    }

    fn bias_grad(&self, db: &mut WgpuBuf, dy: &WgpuBuf, rows: usize, cols: usize, inner: usize) {
        assert!(db.0.len >= cols && dy.0.len >= rows * cols * inner, "bias_grad: shapes");
        if rows * inner == 0 {
            return;
        }
        let p = ReduceParams { rows: u(rows), cols: u(cols), inner: u(inner), ..Default::default() };
        self.ctx.dispatch(Kernel::BiasGrad, &p, &[&dy.0, &db.0], self.ctx.grid(cols));
    }

    fn axpy(&self, y: &mut WgpuBuf, alpha: f32, x: &WgpuBuf) {
        assert_eq!(y.0.len, x.0.len, "axpy: lengths {} and {} differ", y.0.len, x.0.len);
        self.ew(Kernel::Axpy, y.0.len, alpha, &[&x.0, &y.0]);
    }

    fn scale(&self, y: &mut WgpuBuf, alpha: f32) {
        self.ew(Kernel::Scale, y.0.len, alpha, &[&y.0]);
    }

    fn softmax_xent(
        &self,
        dlogits: &mut WgpuBuf,
        loss: &mut WgpuBuf,
        logits: &WgpuBuf,
        labels: &WgpuIdxBuf,
        rows: usize,
        cols: usize,
        scale: f32,
    ) {
        assert!(logits.0.len >= rows * cols && dlogits.0.len >= rows * cols, "softmax_xent: shapes");
        assert!(labels.0.len >= rows && loss.0.len >= 1, "softmax_xent: labels/loss too short");
        if rows == 0 || cols == 0 {
            return;
        }
        let mut scr = lock(&self.ctx.scratch);
        scr.ensure(&self.ctx, Slot::Rows, rows);
        let rowloss = scr.get(Slot::Rows);
        let p = LossUniform { rows: u(rows), cols: u(cols), scale, ..Default::default() };
        self.ctx.dispatch(
            Kernel::SoftmaxXent,
            &p,
            &[&logits.0, &labels.0, &dlogits.0, rowloss],
            self.ctx.grid(rows),
        );
        self.sum_into(&loss.0, rowloss, rows, scale);
    }

    fn kd_loss(
        &self,
        dzs: &mut WgpuBuf,
        loss: &mut WgpuBuf,
        zs: &WgpuBuf,
        zt: &WgpuBuf,
        rows: usize,
        cols: usize,
        ld: usize,
        t: f32,
        scale: f32,
    ) {
        assert!(ld >= cols && zs.0.len >= (rows.max(1) - 1) * ld + cols, "kd_loss: student shape");
        assert!(zt.0.len >= rows * cols && dzs.0.len >= zs.0.len.min(rows * ld), "kd_loss: shapes");
        assert!(loss.0.len >= 1, "kd_loss: empty loss buffer");
        if rows == 0 || cols == 0 {
            return;
        }
        let mut scr = lock(&self.ctx.scratch);
        scr.ensure(&self.ctx, Slot::Rows, rows);
        let rowloss = scr.get(Slot::Rows);
        let p = KdUniform {
            rows: u(rows),
            cols: u(cols),
            ld: u(ld),
            inv_t: 1.0 / t,
            gscale: scale / t,
            ..Default::default()
        };
        self.ctx.dispatch(Kernel::KdLoss, &p, &[&zs.0, &zt.0, &dzs.0, rowloss], self.ctx.grid(rows));
        self.sum_into(&loss.0, rowloss, rows, scale);
    }

    fn anchor_penalty(
        &self,
        dw: &mut WgpuBuf,
        loss: &mut WgpuBuf,
        w: &WgpuBuf,
        anchor: &WgpuBuf,
        fisher: Option<&WgpuBuf>,
        scale: f32,
    ) {
        let n = w.0.len;
        assert!(dw.0.len == n && anchor.0.len == n, "anchor_penalty: lengths differ");
        if let Some(f) = fisher {
            assert_eq!(f.0.len, n, "anchor_penalty: fisher length differs");
        }
        if n == 0 {
            return;
        }
        let groups = n.div_ceil(WG as usize);
        let mut scr = lock(&self.ctx.scratch);
        scr.ensure(&self.ctx, Slot::Rows, groups);
        let partials = scr.get(Slot::Rows);
        let p = AnchorParams {
            n: u(n),
            has_fisher: fisher.is_some() as u32,
            groups: u(groups),
            two_scale: 2.0 * scale,
            ..Default::default()
        };
        // Without Fisher, w is bound again in the fisher slot (never read).
        let f = fisher.map_or(&w.0, |f| &f.0);
        self.ctx.dispatch(
            Kernel::AnchorPenalty,
            &p,
            &[&w.0, &anchor.0, f, &dw.0, partials],
            self.ctx.grid(groups),
        );
        self.sum_into(&loss.0, partials, groups, scale);
    }

    fn add_squared(&self, y: &mut WgpuBuf, alpha: f32, x: &WgpuBuf) {
        assert_eq!(y.0.len, x.0.len, "add_squared: lengths {} and {} differ", y.0.len, x.0.len);
        self.ew(Kernel::AddSquared, y.0.len, alpha, &[&x.0, &y.0]);
    }

    fn sgd_step(&self, w: &mut WgpuBuf, v: &mut WgpuBuf, g: &WgpuBuf, h: SgdHyper) {
        let n = w.0.len;
        assert!(v.0.len == n && g.0.len == n, "sgd_step: lengths differ");
        let p = SgdParams {
            n: u(n),
            lr: h.lr,
            momentum: h.momentum,
            weight_decay: h.weight_decay,
            ..Default::default()
        };
        self.ctx.dispatch(Kernel::SgdStep, &p, &[&g.0, &w.0, &v.0], self.ctx.grid_elems(n));
    }

    fn max_rows(&self, vals: &mut WgpuBuf, idx: &mut WgpuIdxBuf, x: &WgpuBuf, rows: usize, cols: usize) {
        assert!(x.0.len >= rows * cols && vals.0.len >= rows && idx.0.len >= rows, "max_rows: shapes");
        if rows == 0 || cols == 0 {
            return;
        }
        let p = ReduceParams { rows: u(rows), cols: u(cols), ..Default::default() };
        self.ctx.dispatch(Kernel::MaxRows, &p, &[&x.0, &vals.0, &idx.0], self.ctx.grid_elems(rows));
    }
}
