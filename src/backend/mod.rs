//! The device contract: every op the engine needs, and nothing else.
//!
//! Letters used in every shape comment of this crate (fixed here, once):
//! `N` batch, `C` input channels, `H`/`W` input height/width, `OC` output
//! channels, `OH`/`OW` output height/width, `KH`/`KW` kernel size, `M`/`K`/`N`
//! in a gemm (C[M,N] = A[M,K] · B[K,N]), `R` rows and `CO` columns of a 2-D
//! block of logits.
//!
//! Conventions (from llm.c): outputs come first, then inputs, then parameters.
//! Gradients are named `d<name>`. Every backward kernel **accumulates** into its
//! output (`+=`), so a buffer used by several consumers collects all of them;
//! the caller zeroes gradient buffers once per step. Forward kernels overwrite.
//!
//! Buffers are opaque handles owned by the backend. Nothing in a training step
//! reads device data back except the loss scalar (`download` of a 1-element
//! buffer); evaluation reads back per-row maxima.

pub mod cpu;
pub mod wgpu;

pub use cpu::CpuBackend;

/// `C[M,N] = alpha · op(A) · op(B) + beta · C`, all row-major and contiguous.
/// With `trans_a`, A is stored as `[K, M]`; with `trans_b`, B is stored `[N, K]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl Gemm {
    /// `C = A · B` (overwrite).
    pub fn nn(m: usize, n: usize, k: usize) -> Self {
        Gemm { m, n, k, trans_a: false, trans_b: false, alpha: 1.0, beta: 0.0 }
    }
    pub fn trans(mut self, a: bool, b: bool) -> Self {
        self.trans_a = a;
        self.trans_b = b;
        self
    }
    /// Accumulate into C (`beta = 1`).
    pub fn acc(mut self) -> Self {
        self.beta = 1.0;
        self
    }
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// 2-D convolution geometry. `x: (N, C, H, W)`, `w: (OC, C, KH, KW)`,
/// `y: (N, OC, OH, OW)` with `OH = (H + 2·PH − KH) / SH + 1` (the one place this
/// formula lives).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub oc: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
}

impl Conv2dParams {
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.ph - self.kh) / self.sh + 1
    }
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pw - self.kw) / self.sw + 1
    }
    /// Length of one im2col column: `C·KH·KW` (the gemm's K).
    pub fn patch(&self) -> usize {
        self.c * self.kh * self.kw
    }
    pub fn x_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn w_len(&self) -> usize {
        self.oc * self.patch()
    }
    pub fn y_len(&self) -> usize {
        self.n * self.oc * self.oh() * self.ow()
    }
    /// Multiply-adds × 2 of the forward pass.
    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.oc * self.oh() * self.ow() * self.patch()) as f64
    }
}

/// Max pooling geometry: `x: (N, C, H, W)` → `y: (N, C, OH, OW)`,
/// `OH = (H + 2·PAD − K) / S + 1` (floor, as PyTorch's default
/// `ceil_mode=False`). Padding cells never win (they count as −∞, as in
/// PyTorch), so every window's argmax is a real input cell; `PAD < K`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolParams {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub s: usize,
    pub pad: usize,
}

impl PoolParams {
    /// A k×k window, stride s, no padding.
    pub fn new(n: usize, c: usize, h: usize, w: usize, k: usize, s: usize) -> Self {
        PoolParams { n, c, h, w, k, s, pad: 0 }
    }
    /// The same with `pad` cells of padding on every side.
    pub fn padded(self, pad: usize) -> Self {
        PoolParams { pad, ..self }
    }
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.s + 1
    }
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.s + 1
    }
    pub fn x_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn y_len(&self) -> usize {
        self.n * self.c * self.oh() * self.ow()
    }
}

/// Batch normalisation geometry: `x: (N, C, HW)` (a conv output's planes,
/// `HW = H·W`), each channel normalised over its `N·HW` values (PyTorch's
/// BatchNorm2d). `eps` is added to the variance under the square root.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnParams {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub eps: f32,
}

impl BnParams {
    pub fn x_len(&self) -> usize {
        self.n * self.c * self.hw
    }
    /// Values per channel: the count the batch statistics average over.
    pub fn count(&self) -> usize {
        self.n * self.hw
    }
}

/// SGD with momentum and L2 weight decay, PyTorch semantics (dampening 0,
/// no Nesterov): `g' = g + wd·w; v = μ·v + g'; w -= lr·v`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdHyper {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

/// A label value that makes softmax-cross-entropy skip a row (no loss, no
/// gradient). Used when a batch mixes tasks whose rows belong to other heads.
pub const IGNORE_LABEL: u32 = u32::MAX;

/// The op set of DESIGN.md. `&self` is the device context; no globals.
pub trait Backend: Clone + Send + Sync + 'static {
    /// f32 storage on this device.
    type Buf: Send + Sync;
    /// u32 storage (labels, maxpool argmax, row argmax).
    type IdxBuf: Send + Sync;

    /// Human-readable device name (e.g. "cpu (2 threads, avx2)" or the GPU adapter).
    fn name(&self) -> String;

    /// Why the device stopped working, once it has: a buffer over the GPU's
    /// limits, a lost device. Its operations are then skipped, so a verb
    /// asks before it saves or reports anything. The CPU never faults.
    fn fault(&self) -> Option<String> {
        None
    }

    // ---- memory ---------------------------------------------------------
    /// A new buffer of `len` zeros.
    fn zeros(&self, len: usize) -> Self::Buf;
    fn zeros_idx(&self, len: usize) -> Self::IdxBuf;
    fn upload(&self, xs: &[f32]) -> Self::Buf;
    fn upload_idx(&self, xs: &[u32]) -> Self::IdxBuf;
    /// Overwrite the first `xs.len()` elements of an existing buffer (no allocation).
    fn write(&self, dst: &mut Self::Buf, xs: &[f32]);
    fn write_idx(&self, dst: &mut Self::IdxBuf, xs: &[u32]);
    /// Copy to the host. The only sync points, with `download_idx`.
    fn download(&self, b: &Self::Buf) -> Vec<f32>;
    fn download_idx(&self, b: &Self::IdxBuf) -> Vec<u32>;
    fn len(&self, b: &Self::Buf) -> usize;
    fn len_idx(&self, b: &Self::IdxBuf) -> usize;
    /// `y[i] = v` for every element.
    fn fill(&self, y: &mut Self::Buf, v: f32);
    /// `dst[dst_off..dst_off+len] = src[src_off..src_off+len]`.
    fn copy(&self, dst: &mut Self::Buf, dst_off: usize, src: &Self::Buf, src_off: usize, len: usize);

    // ---- dense ----------------------------------------------------------
    /// See [`Gemm`]. `c` has at least `m·n` elements.
    fn sgemm(&self, c: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf, g: Gemm);

    // ---- convolution ----------------------------------------------------
    /// `y = conv(x, w)` (no bias; see `bias_add`). Overwrites y.
    fn conv2d_fwd(&self, y: &mut Self::Buf, x: &Self::Buf, w: &Self::Buf, p: &Conv2dParams);
    /// `y = conv(x, w) + bias` (per output channel). A backend whose
    /// convolution writes its output itself adds the bias there, saving a
    /// pass over `y`; the default is the two kernels.
    fn conv2d_fwd_bias(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        bias: &Self::Buf,
        p: &Conv2dParams,
    ) {
        self.conv2d_fwd(y, x, w, p);
        self.bias_add(y, bias, p.n, p.oc, p.oh() * p.ow());
    }
    /// `y = maxpool(conv(x, w) + bias)` and the pooling's `argmax`, as
    /// `maxpool2d_fwd` writes it (indices into the convolution's output
    /// planes, whose shape `pool` gives). `conv_out` (`p.y_len()` elements)
    /// is scratch for the default, the two kernels one after the other; a
    /// backend that pools as the convolution writes need not touch it.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_bias_maxpool_fwd(
        &self,
        y: &mut Self::Buf,
        argmax: &mut Self::IdxBuf,
        conv_out: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        bias: &Self::Buf,
        p: &Conv2dParams,
        pool: &PoolParams,
    ) {
        self.conv2d_fwd_bias(conv_out, x, w, bias, p);
        self.maxpool2d_fwd(y, argmax, conv_out, pool);
    }
    /// `dx += conv_transpose(dy, w)`.
    fn conv2d_bwd_data(&self, dx: &mut Self::Buf, dy: &Self::Buf, w: &Self::Buf, p: &Conv2dParams);
    /// `dw += Σ_n dy_n ⊛ x_n`.
    fn conv2d_bwd_weight(&self, dw: &mut Self::Buf, x: &Self::Buf, dy: &Self::Buf, p: &Conv2dParams);

    // ---- pooling --------------------------------------------------------
    /// `y = maxpool(x)`; `argmax` holds, per output cell, the index of the
    /// winning input within its `(H, W)` plane (first maximum on ties).
    fn maxpool2d_fwd(&self, y: &mut Self::Buf, argmax: &mut Self::IdxBuf, x: &Self::Buf, p: &PoolParams);
    /// `dx[argmax] += dy`.
    fn maxpool2d_bwd(&self, dx: &mut Self::Buf, dy: &Self::Buf, argmax: &Self::IdxBuf, p: &PoolParams);
    /// `dw += ∂L/∂w` of `maxpool(conv(x, w))` from the *pooled* output
    /// gradient `dy` and the pooling's `argmax`, for a convolution whose
    /// input needs no gradient (the first layer). Only each window's winner
    /// has a gradient, so a backend can sum over those alone and never build
    /// the convolution's output gradient. The default builds it in `dconv`
    /// (`p.y_len()` elements of scratch) and runs the two kernels.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_maxpool_bwd_weight(
        &self,
        dw: &mut Self::Buf,
        dconv: &mut Self::Buf,
        x: &Self::Buf,
        dy: &Self::Buf,
        argmax: &Self::IdxBuf,
        p: &Conv2dParams,
        pool: &PoolParams,
    ) {
        self.maxpool2d_bwd_set(dconv, dy, argmax, pool);
        self.conv2d_bwd_weight(dw, x, dconv, p);
    }
    /// `dx = 0, then dx[argmax] += dy`: for a `dx` that nothing else flows
    /// into (the fused convolution + pooling's), so a backend can zero each
    /// plane as it scatters into it instead of zeroing all of `dx` in a pass
    /// of its own first. The default is exactly that composition.
    fn maxpool2d_bwd_set(&self, dx: &mut Self::Buf, dy: &Self::Buf, argmax: &Self::IdxBuf, p: &PoolParams) {
        self.fill(dx, 0.0);
        self.maxpool2d_bwd(dx, dy, argmax, p);
    }

    // ---- batch normalisation ---------------------------------------------
    /// Per channel `c` of `x`: `mean[c]` and the biased variance `var[c]`
    /// (divided by `N·HW`) of its values; the training-mode statistics.
    fn batchnorm_stats(&self, mean: &mut Self::Buf, var: &mut Self::Buf, x: &Self::Buf, p: &BnParams);
    /// `y = (x − mean[c]) / √(var[c] + eps) · gamma[c] + beta[c]`, with the
    /// batch's statistics (training) or the running ones (evaluation).
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_fwd(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        mean: &Self::Buf,
        var: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        p: &BnParams,
    );
    /// Backward of [`batchnorm_fwd`](Backend::batchnorm_fwd) from `dy`. With
    /// `x̂ = (x − mean) / σ`, `σ = √(var + eps)` and the per-channel sums
    /// `S₁ = Σ dy`, `S₂ = Σ dy·x̂` (written to `sums`, `2·C` scratch, as
    /// `[S₁…, S₂…]`): `dbeta += S₁`, `dgamma += S₂`, and
    /// `dx += γ/σ · (dy − (S₁ + x̂·S₂) / (N·HW))` when `batch_stats` (the
    /// statistics were the batch's own, so the gradient flows through them
    /// too), else `dx += γ/σ · dy` (running statistics are constants).
    /// Each of `dx`, `dgamma`, `dbeta` is skipped when `None`.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_bwd(
        &self,
        dx: Option<&mut Self::Buf>,
        dgamma: Option<&mut Self::Buf>,
        dbeta: Option<&mut Self::Buf>,
        sums: &mut Self::Buf,
        x: &Self::Buf,
        dy: &Self::Buf,
        mean: &Self::Buf,
        var: &Self::Buf,
        gamma: &Self::Buf,
        p: &BnParams,
        batch_stats: bool,
    );

    // ---- global average pooling -------------------------------------------
    /// `y[r] = mean_i x[r, i]` for `x: (rows, inner)`: a conv output's planes
    /// (`rows = N·C`, `inner = H·W`) to one value each.
    fn avgpool_fwd(&self, y: &mut Self::Buf, x: &Self::Buf, rows: usize, inner: usize);
    /// `dx[r, i] += dy[r] / inner`.
    fn avgpool_bwd(&self, dx: &mut Self::Buf, dy: &Self::Buf, rows: usize, inner: usize);

    // ---- elementwise ----------------------------------------------------
    /// `y = a + b` (a residual connection's join).
    fn add(&self, y: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf);
    /// `y = max(x, 0)`.
    fn relu_fwd(&self, y: &mut Self::Buf, x: &Self::Buf);
    /// `dx += dy · [y > 0]` — the mask comes from the *output* (micrograd).
    fn relu_bwd(&self, dx: &mut Self::Buf, y: &Self::Buf, dy: &Self::Buf);
    /// `y[r, c, i] += b[c]` for `y: (rows, cols, inner)`.
    fn bias_add(&self, y: &mut Self::Buf, b: &Self::Buf, rows: usize, cols: usize, inner: usize);
    /// `db[c] += Σ_{r,i} dy[r, c, i]`.
    fn bias_grad(&self, db: &mut Self::Buf, dy: &Self::Buf, rows: usize, cols: usize, inner: usize);
    /// `y += alpha · x`.
    fn axpy(&self, y: &mut Self::Buf, alpha: f32, x: &Self::Buf);
    /// `y *= alpha`.
    fn scale(&self, y: &mut Self::Buf, alpha: f32);

    // ---- losses (loss and gradient in one pass per row) -------------------
    /// Softmax cross-entropy over `logits: (R, CO)` with integer `labels: (R)`.
    /// Per row r with a label: `loss[0] += scale · (−log softmax(z_r)[y_r])` and
    /// `dlogits[r] += scale · (softmax(z_r) − onehot(y_r))`. Rows labelled
    /// [`IGNORE_LABEL`] contribute nothing. Labels must be `< CO` otherwise.
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent(
        &self,
        dlogits: &mut Self::Buf,
        loss: &mut Self::Buf,
        logits: &Self::Buf,
        labels: &Self::IdxBuf,
        rows: usize,
        cols: usize,
        scale: f32,
    );
    /// Temperature distillation (Hinton et al. 2015) on the first `cols`
    /// columns of student logits `zs` (row stride `ld ≥ cols`) against teacher
    /// logits `zt: (R, cols)`. With `p = softmax(zt/T)`, `q = softmax(zs/T)`:
    /// `loss[0] += scale · Σ_r Σ_i −p_i log q_i` and
    /// `dzs[r, i] += scale · (q_i − p_i) / T` (dzs has stride `ld`).
    #[allow(clippy::too_many_arguments)]
    fn kd_loss(
        &self,
        dzs: &mut Self::Buf,
        loss: &mut Self::Buf,
        zs: &Self::Buf,
        zt: &Self::Buf,
        rows: usize,
        cols: usize,
        ld: usize,
        t: f32,
        scale: f32,
    );
    /// Quadratic pull towards an anchor (the `l2` and `ewc` penalties):
    /// `loss[0] += scale · Σ f_i (w_i − a_i)²`, `dw += 2 · scale · f (w − a)`,
    /// with `f = 1` when `fisher` is `None`.
    fn anchor_penalty(
        &self,
        dw: &mut Self::Buf,
        loss: &mut Self::Buf,
        w: &Self::Buf,
        anchor: &Self::Buf,
        fisher: Option<&Self::Buf>,
        scale: f32,
    );
    /// `y += alpha · x²` elementwise (EWC's diagonal Fisher accumulation).
    fn add_squared(&self, y: &mut Self::Buf, alpha: f32, x: &Self::Buf);

    // ---- optimizer --------------------------------------------------------
    /// Fused SGD update, see [`SgdHyper`]. `v` is the momentum buffer.
    fn sgd_step(&self, w: &mut Self::Buf, v: &mut Self::Buf, g: &Self::Buf, h: SgdHyper);

    // ---- evaluation -----------------------------------------------------
    /// Per row of `x: (R, CO)`: the maximum value and its column (first on ties).
    fn max_rows(&self, vals: &mut Self::Buf, idx: &mut Self::IdxBuf, x: &Self::Buf, rows: usize, cols: usize);
}
