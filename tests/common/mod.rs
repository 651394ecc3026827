//! Shared test helpers: closeness checks with a max-diff report, host (f64)
//! losses, small layer builders and the finite-difference gradient checker
//! (DESIGN.md, Conventions). Each test binary uses a different subset.
#![allow(dead_code)]

use lwf_engine::autodiff::{Grads, Tape, Var, Workspace};
use lwf_engine::backend::{Backend, CpuBackend, IGNORE_LABEL};
use lwf_engine::nn::{Conv2d, Linear, Param, ParamId};
use lwf_engine::rng::Rng;
use lwf_engine::tensor::Tensor;

pub mod cli;

pub type B = CpuBackend;

// ---- data -------------------------------------------------------------------

pub fn uniform_vec(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(lo, hi)).collect()
}

pub fn normal_vec(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n).map(|_| std * rng.normal()).collect()
}

// ---- closeness ----------------------------------------------------------------

/// `Ok` when every `|got − want| ≤ atol + rtol·|want|`; otherwise the max
/// difference and the first mismatches with their indices.
pub fn close(what: &str, got: &[f32], want: &[f32], atol: f64, rtol: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: lengths differ: got {}, want {}", got.len(), want.len()));
    }
    let mut bad = Vec::new();
    let mut max_diff = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w as f64).abs();
        if d.is_nan() || d > atol + rtol * (w as f64).abs() {
            bad.push(i);
        }
        if d > max_diff || d.is_nan() {
            max_diff = d;
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    let first: Vec<String> =
        bad.iter().take(5).map(|&i| format!("[{i}] got {} want {}", got[i], want[i])).collect();
    Err(format!(
        "{what}: {} of {} elements differ (atol {atol:e}, rtol {rtol:e}); max diff {max_diff:e}; first: {}",
        bad.len(),
        got.len(),
        first.join(", ")
    ))
}

/// [`close`], panicking with its report.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f64, rtol: f64) {
    if let Err(e) = close(what, got, want, atol, rtol) {
        panic!("{e}");
    }
}

/// Largest `|got − want| / max(|want|, floor)` (to measure and report errors).
pub fn max_rel_err(got: &[f32], want: &[f32], floor: f64) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).abs() / (w as f64).abs().max(floor))
        .fold(0.0, f64::max)
}

// ---- host reference losses (f64 throughout) --------------------------------------

/// `scale · Σ_rows −log softmax(z_r)[y_r]`, rows labelled IGNORE_LABEL skipped.
pub fn ce_f64(z: &[f32], labels: &[u32], cols: usize, scale: f64) -> f64 {
    let mut total = 0.0;
    for (r, &y) in labels.iter().enumerate() {
        if y == IGNORE_LABEL {
            continue;
        }
        let row: Vec<f64> = z[r * cols..(r + 1) * cols].iter().map(|&v| v as f64).collect();
        total += log_sum_exp(&row) - row[y as usize];
    }
    scale * total
}

/// `scale · Σ_rows −Σ_i softmax(zt/T)_i log softmax(zs/T)_i` over the first
/// `cols` columns of the student rows (stride `ld`).
pub fn kd_f64(zs: &[f32], zt: &[f32], rows: usize, cols: usize, ld: usize, t: f64, scale: f64) -> f64 {
    let mut total = 0.0;
    for r in 0..rows {
        let s: Vec<f64> = zs[r * ld..r * ld + cols].iter().map(|&v| v as f64 / t).collect();
        let tt: Vec<f64> = zt[r * cols..(r + 1) * cols].iter().map(|&v| v as f64 / t).collect();
        let (ls, lt) = (log_sum_exp(&s), log_sum_exp(&tt));
        total -= s.iter().zip(&tt).map(|(a, b)| (b - lt).exp() * (a - ls)).sum::<f64>();
    }
    scale * total
}

fn log_sum_exp(xs: &[f64]) -> f64 {
    let m = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + xs.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

// ---- layer builders ---------------------------------------------------------------

pub fn param(b: &B, id: ParamId, dims: &[usize], data: &[f32], trainable: bool) -> Param<B> {
    Param { id, name: format!("p{id}"), value: Tensor::from_vec(b, dims, data), trainable }
}

/// A linear layer `in → out` with weight ids `id` and bias id `id + 1`.
pub fn linear(b: &B, rng: &mut Rng, id: ParamId, in_f: usize, out_f: usize, trainable: bool) -> Linear<B> {
    Linear {
        w: param(b, id, &[out_f, in_f], &uniform_vec(rng, out_f * in_f, -1.0, 1.0), trainable),
        b: param(b, id + 1, &[out_f], &uniform_vec(rng, out_f, -1.0, 1.0), trainable),
        in_f,
        out_f,
    }
}

/// A conv layer with weight id `id` and bias id `id + 1`.
#[allow(clippy::too_many_arguments)]
pub fn conv(
    b: &B,
    rng: &mut Rng,
    id: ParamId,
    c: usize,
    oc: usize,
    k: usize,
    stride: usize,
    pad: usize,
    trainable: bool,
) -> Conv2d<B> {
    let bound = 1.0 / ((c * k * k) as f32).sqrt();
    Conv2d {
        w: param(b, id, &[oc, c, k, k], &uniform_vec(rng, oc * c * k * k, -bound, bound), trainable),
        b: Some(param(b, id + 1, &[oc], &uniform_vec(rng, oc, -bound, bound), trainable)),
        c,
        oc,
        k,
        stride,
        pad,
    }
}

/// A trainable tensor that the tape can differentiate: the tape gives no
/// gradient to its inputs, so a test that needs dX feeds a constant one-hot
/// input through a layer whose weights *are* X. The gemm against a one-hot
/// matrix (and the zero bias) reproduce the weights exactly, so the leaf's
/// weight gradient is exactly the next op's dX.
pub enum Leaf {
    /// X: (N, D) from `Linear(N → D)` applied to the N×N identity: y[n, d] = W[d, n].
    Mat { lin: Linear<B>, eye: Vec<f32>, n: usize },
    /// X: (N, C, H, W) from a 1×1 conv with N·H·W input channels applied to a
    /// one-hot image batch: y[n, c, h, w] = W[c, n·H·W + h·W + w].
    Img { conv: Conv2d<B>, onehot: Vec<f32>, dims: [usize; 4] },
}

impl Leaf {
    /// Values uniform in [lo, hi); weight id `id`, frozen zero bias `id + 1`.
    pub fn mat(b: &B, rng: &mut Rng, id: ParamId, n: usize, d: usize, lo: f32, hi: f32) -> Self {
        let lin = Linear {
            w: param(b, id, &[d, n], &uniform_vec(rng, d * n, lo, hi), true),
            b: param(b, id + 1, &[d], &vec![0.0; d], false),
            in_f: n,
            out_f: d,
        };
        let mut eye = vec![0.0; n * n];
        (0..n).for_each(|i| eye[i * n + i] = 1.0);
        Leaf::Mat { lin, eye, n }
    }

    pub fn img(b: &B, rng: &mut Rng, id: ParamId, dims: [usize; 4], lo: f32, hi: f32) -> Self {
        let [n, c, h, w] = dims;
        let cin = n * h * w;
        let conv = Conv2d {
            w: param(b, id, &[c, cin, 1, 1], &uniform_vec(rng, c * cin, lo, hi), true),
            b: Some(param(b, id + 1, &[c], &vec![0.0; c], false)),
            c: cin,
            oc: c,
            k: 1,
            stride: 1,
            pad: 0,
        };
        let mut onehot = vec![0.0; n * cin * h * w];
        for i in 0..n {
            for p in 0..h * w {
                onehot[(i * cin + i * h * w + p) * h * w + p] = 1.0;
            }
        }
        Leaf::Img { conv, onehot, dims }
    }

    pub fn record<'a>(&'a self, tape: &mut Tape<'a, B>) -> Var {
        match self {
            Leaf::Mat { lin, eye, n } => {
                let x0 = tape.input(&[*n, *n], eye);
                tape.linear(x0, lin)
            }
            Leaf::Img { conv, onehot, dims } => {
                let [n, _, h, w] = *dims;
                let x0 = tape.input(&[n, n * h * w, h, w], onehot);
                tape.conv2d(x0, conv)
            }
        }
    }

    pub fn params(&self) -> Vec<&Param<B>> {
        match self {
            Leaf::Mat { lin, .. } => vec![&lin.w, &lin.b],
            Leaf::Img { conv, .. } => conv.params(),
        }
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        match self {
            Leaf::Mat { lin, .. } => vec![&mut lin.w, &mut lin.b],
            Leaf::Img { conv, .. } => conv.params_mut(),
        }
    }

    /// The id of the parameter that holds X.
    pub fn id(&self) -> ParamId {
        self.params()[0].id
    }
}

// ---- kink patterns --------------------------------------------------------------------

/// ReLU pattern of a recorded output: 1 where y > 0.
pub fn relu_pattern(b: &B, tape: &Tape<'_, B>, y: Var) -> Vec<u32> {
    b.download(tape.value(y)).iter().map(|&v| (v > 0.0) as u32).collect()
}

/// Maxpool winners (first maximum, as the kernel) of a recorded input
/// `x: (N, C, H, W)` for a `k×k` window with stride `s` and `pad` cells of
/// padding.
pub fn pool_pattern(b: &B, tape: &Tape<'_, B>, x: Var, k: usize, s: usize, pad: usize) -> Vec<u32> {
    let d = tape.shape(x).dims().to_vec();
    pool_winners_padded(&b.download(tape.value(x)), d[2], d[3], k, s, pad)
}

/// [`pool_winners`] with `pad` cells of −∞ padding on every side: each
/// window is clipped to the plane (padding never wins).
pub fn pool_winners_padded(xs: &[f32], h: usize, w: usize, k: usize, s: usize, pad: usize) -> Vec<u32> {
    let (oh, ow) = ((h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1);
    let clip = |o: usize, len: usize| {
        let start = (o * s) as i64 - pad as i64;
        (start.max(0) as usize, ((start + k as i64).min(len as i64)) as usize)
    };
    let mut out = Vec::with_capacity(xs.len() / (h * w) * oh * ow);
    for plane in xs.chunks(h * w) {
        for oy in 0..oh {
            let (y0, y1) = clip(oy, h);
            for ox in 0..ow {
                let (x0, x1) = clip(ox, w);
                let mut best = y0 * w + x0;
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        if plane[iy * w + ix] > plane[best] {
                            best = iy * w + ix;
                        }
                    }
                }
                out.push(best as u32);
            }
        }
    }
    out
}

/// Index within its `h × w` plane of each `k×k`, stride-`s` window's first
/// maximum in scan order, planes one after another: the plain reference for
/// max pooling's argmax.
pub fn pool_winners(xs: &[f32], h: usize, w: usize, k: usize, s: usize) -> Vec<u32> {
    let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
    let mut out = Vec::with_capacity(xs.len() / (h * w) * oh * ow);
    for plane in xs.chunks(h * w) {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = oy * s * w + ox * s;
                for ky in 0..k {
                    for kx in 0..k {
                        let i = (oy * s + ky) * w + ox * s + kx;
                        if plane[i] > plane[best] {
                            best = i;
                        }
                    }
                }
                out.push(best as u32);
            }
        }
    }
    out
}

// ---- finite differences ----------------------------------------------------------------

/// One evaluation of a model: its loss computed on the host in f64 from the
/// downloaded outputs, and its activation pattern.
pub struct Eval {
    pub loss: f64,
    /// ReLU signs and maxpool winners. If the pattern at x ± h differs from
    /// the one at x, the segment crosses a kink and the coordinate is skipped.
    pub pattern: Vec<u32>,
}

/// Something whose parameters the checker can perturb and re-evaluate.
pub trait Model {
    fn params(&self) -> Vec<&Param<B>>;
    fn params_mut(&mut self) -> Vec<&mut Param<B>>;
    /// Record the forward pass and every loss term on `tape`.
    fn record<'a>(&'a self, tape: &mut Tape<'a, B>) -> Eval;
}

/// `|num − ana| ≤ atol + rtol·|num| + noise / (2h)`: the last term is the
/// rounding noise of an f32 forward pass (`noise` ≈ the absolute error of
/// one loss evaluation) amplified by the central difference.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub atol: f64,
    pub rtol: f64,
    pub noise: f64,
    /// Relative step: `h = h_rel · max(1, |x|)`.
    pub h_rel: f32,
}

impl Default for Tol {
    fn default() -> Self {
        Tol { atol: 2e-4, rtol: 1e-2, noise: 1e-6, h_rel: 3e-3 }
    }
}

/// What a gradient check saw.
#[derive(Debug, Default)]
pub struct Report {
    pub checked: usize,
    pub kinks: usize,
    pub failures: Vec<String>,
    /// Largest `|num − ana|` seen, and largest ratio to the allowed error.
    pub max_abs: f64,
    pub max_ratio: f64,
    /// The engine's loss (read back after backward) vs the host loss.
    pub loss_engine: f64,
    pub loss_host: f64,
}

pub fn evaluate<M: Model>(b: &B, m: &M) -> Eval {
    let mut ws = Workspace::new();
    let mut tape = Tape::new(b, &mut ws);
    m.record(&mut tape)
}

/// Gradients of every trainable parameter from one backward pass, the host
/// loss and the engine's loss.
pub fn analytic<M: Model>(b: &B, m: &M) -> (Grads<B>, Eval, f32) {
    let mut ws = Workspace::new();
    let mut grads = Grads::new();
    let mut tape = Tape::new(b, &mut ws);
    let e = m.record(&mut tape);
    grads.prepare(b, m.params());
    tape.backward(&mut grads);
    let loss = tape.loss_value();
    (grads, e, loss)
}

/// Check the gradients of the parameters `ids` on `coords` random coordinates
/// each (all of them when fewer) against central differences. A frozen
/// parameter must have no gradient buffer.
pub fn check_grads<M: Model>(
    b: &B,
    m: &mut M,
    ids: &[ParamId],
    coords: usize,
    rng: &mut Rng,
    tol: Tol,
) -> Report {
    let (grads, center, engine_loss) = analytic(b, m);
    let mut rep = Report { loss_engine: engine_loss as f64, loss_host: center.loss, ..Report::default() };
    for &id in ids {
        let (name, trainable, mut vals) = {
            let p = m.params().into_iter().find(|p| p.id == id).expect("param id");
            (p.name.clone(), p.trainable, p.value.to_vec(b))
        };
        let Some(g) = grads.get(id) else {
            if trainable {
                rep.failures.push(format!("{name}: trainable but has no gradient"));
            }
            continue;
        };
        if !trainable {
            rep.failures.push(format!("{name}: frozen but has a gradient"));
            continue;
        }
        let ana = b.download(g);
        let picks: Vec<usize> = if vals.len() <= coords {
            (0..vals.len()).collect()
        } else {
            rng.permutation(vals.len())[..coords].to_vec()
        };
        for i in picks {
            let x = vals[i];
            let h = tol.h_rel * x.abs().max(1.0);
            let (xp, xm) = (x + h, x - h);
            let mut at = |v: f32, vals: &mut Vec<f32>| {
                vals[i] = v;
                let p = m.params_mut().into_iter().find(|p| p.id == id).expect("param id");
                b.write(&mut p.value.buf, vals);
                evaluate(b, m)
            };
            let (ep, em) = (at(xp, &mut vals), at(xm, &mut vals));
            at(x, &mut vals);
            if ep.pattern != center.pattern || em.pattern != center.pattern {
                rep.kinks += 1;
                continue;
            }
            let step = xp as f64 - xm as f64;
            let num = (ep.loss - em.loss) / step;
            let a = ana[i] as f64;
            let allowed = tol.atol + tol.rtol * num.abs() + tol.noise / step;
            let d = (num - a).abs();
            rep.max_abs = rep.max_abs.max(d);
            rep.max_ratio = rep.max_ratio.max(d / allowed);
            rep.checked += 1;
            if d.is_nan() || d > allowed {
                rep.failures.push(format!("{name}[{i}] (x = {x}): numeric {num:.6e}, analytic {a:.6e}, diff {d:.2e} > {allowed:.2e}"));
            }
        }
    }
    rep
}

/// Proptest settings: `cases` cases, no regression files written (a failure
/// prints its minimal input and seed; add it as a unit test when fixing).
pub fn proptest_cfg(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config { cases, failure_persistence: None, ..Default::default() }
}
