//! Gradient checks: every op recorded on the tape, differentiated by
//! `Tape::backward` on the CPU backend, against central finite differences
//! of the forward pass (DESIGN.md, Conventions), over random shapes and values.
//!
//! The tape cannot be seeded with an arbitrary output gradient from outside,
//! so each op is reduced to a scalar through a fixed random *probe* (a frozen
//! `Linear` to 3 logits) and a cross-entropy with random labels: the probe's
//! random weights play the role of STYLE's `L = Σ rᵢ·yᵢ`. The numeric side
//! recomputes the loss on the host in f64 from the downloaded logits, after
//! perturbing one parameter coordinate through `Backend::write`. Inputs that
//! need dX come from a [`Leaf`], so dX is checked coordinate by coordinate.
//! Points near ReLU / maxpool kinks are detected exactly (the activation
//! pattern changes between x − h and x + h) and skipped.
//!
//! Step and tolerance: `h = 3e-3·max(1, |x|)` (STYLE's 1e-2 leaves an
//! O(h²) truncation error of up to ~1.5e-3 on wide convolutions), and
//! `|num − ana| ≤ 2e-4 + 1e-2·|num| + 1e-6 / 2h`. With
//! `GRADCHECK_STATS=1 cargo test --release --test gradcheck -- --nocapture`
//! each case prints how many coordinates it checked, how many it skipped at
//! kinks and its worst error as a fraction of the allowed one: at most 0.11
//! over 5 × 96 cases per op, and every seeded bug tried fails the suite (a
//! wrong stride in col2im, KD without 1/T, ReLU's mask at 0, the Fisher
//! weight missing from the anchor gradient, conv dW not accumulating over
//! the batch, linear dX overwriting instead of accumulating).

mod common;

use common::*;
use lwf_engine::autodiff::{Grads, Tape, Var, Workspace};
use lwf_engine::backend::{Backend, Conv2dParams, IGNORE_LABEL};
use lwf_engine::nn::{Arch, ArchKind, BatchNorm2d, BnPolicy, Conv2d, Layer, Linear, Net, Param, ParamId};
use lwf_engine::rng::Rng;
use lwf_engine::step::KdConcat;
use lwf_engine::tensor::Tensor;
use proptest::prelude::*;

/// The op under test, between a leaf and the probe.
enum Body {
    Linear(Linear<B>),
    Conv(Conv2d<B>),
    /// `conv2d_maxpool` with a k×k, stride-2 window.
    ConvPool(Conv2d<B>, usize),
    Relu,
    MaxPool {
        k: usize,
        s: usize,
        pad: usize,
    },
    /// flatten ∘ flatten: a view of a view still shares the root's gradient.
    Flatten,
    /// BatchNorm2d with the batch's statistics (`batch`, where the gradient
    /// also flows through the mean and variance) or its running ones.
    BatchNorm(BatchNorm2d<B>, bool),
    /// `x + second leaf`: both inputs get the gradient.
    Add(Leaf),
    GlobalAvgPool,
}

/// The parameters of a body, in order.
fn body_params(body: &Body) -> Vec<&Param<B>> {
    match body {
        Body::Linear(l) => vec![&l.w, &l.b],
        Body::Conv(c) | Body::ConvPool(c, _) => c.params(),
        Body::BatchNorm(bn, _) => vec![&bn.w, &bn.b],
        Body::Add(leaf) => leaf.params(),
        _ => vec![],
    }
}

fn body_params_mut(body: &mut Body) -> Vec<&mut Param<B>> {
    match body {
        Body::Linear(l) => vec![&mut l.w, &mut l.b],
        Body::Conv(c) | Body::ConvPool(c, _) => c.params_mut(),
        Body::BatchNorm(bn, _) => vec![&mut bn.w, &mut bn.b],
        Body::Add(leaf) => leaf.params_mut(),
        _ => vec![],
    }
}

/// A BatchNorm over `c` channels with ids `id`, `id + 1`, random γ, β and
/// running statistics (variances in [0.5, 2)).
fn batchnorm(b: &B, rng: &mut Rng, id: ParamId, c: usize) -> BatchNorm2d<B> {
    let mut ids = id;
    let mut bn = BatchNorm2d::new(b, &mut ids, "bn", c);
    bn.w.value = Tensor::from_vec(b, &[c], &uniform_vec(rng, c, 0.5, 1.5));
    bn.b.value = Tensor::from_vec(b, &[c], &uniform_vec(rng, c, -0.5, 0.5));
    bn.running_mean = Tensor::from_vec(b, &[c], &uniform_vec(rng, c, -0.5, 0.5));
    bn.running_var = Tensor::from_vec(b, &[c], &uniform_vec(rng, c, 0.5, 2.0));
    bn
}

/// leaf → body → flatten → probe → cross-entropy.
struct Chain {
    leaf: Leaf,
    body: Body,
    probe: Linear<B>,
    labels: Vec<u32>,
}

impl Chain {
    /// `width` is the flattened row length of the body's output.
    fn new(b: &B, rng: &mut Rng, leaf: Leaf, body: Body, rows: usize, width: usize) -> Self {
        // Weights ±1/√width (PyTorch's init bound) keep the logits O(1) for
        // any width, so the loss's curvature, and with it the central
        // difference's O(h²) error, stays small.
        let mut probe = linear(b, rng, 100, width, 3, false);
        let w: Vec<f32> = probe.w.value.to_vec(b).iter().map(|v| v / (width as f32).sqrt()).collect();
        b.write(&mut probe.w.value.buf, &w);
        let labels = (0..rows).map(|_| rng.below(3) as u32).collect();
        Chain { leaf, body, probe, labels }
    }

    fn ids(&self) -> Vec<ParamId> {
        let mut ids = vec![self.leaf.id()];
        ids.extend(body_params(&self.body).iter().filter(|p| p.trainable).map(|p| p.id));
        ids
    }
}

impl Model for Chain {
    fn params(&self) -> Vec<&Param<B>> {
        let mut v = self.leaf.params();
        v.extend(body_params(&self.body));
        v.extend([&self.probe.w, &self.probe.b]);
        v
    }
    fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        let mut v = self.leaf.params_mut();
        v.extend(body_params_mut(&mut self.body));
        v.extend([&mut self.probe.w, &mut self.probe.b]);
        v
    }
    fn record<'a>(&'a self, tape: &mut Tape<'a, B>) -> Eval {
        let b = B::new();
        let x = self.leaf.record(tape);
        let mut pattern = Vec::new();
        let y = match &self.body {
            Body::Linear(l) => tape.linear(x, l),
            Body::Conv(c) => tape.conv2d(x, c),
            Body::ConvPool(c, k) => {
                // The kinks: a separate, gradient-free convolution node.
                let conv_out = tape.conv2d(x, c);
                pattern = pool_pattern(&b, tape, conv_out, *k, 2, 0);
                tape.conv2d_maxpool(x, c, *k, 2)
            }
            Body::Relu => {
                let y = tape.relu(x);
                pattern = relu_pattern(&b, tape, y);
                y
            }
            Body::MaxPool { k, s, pad } => {
                pattern = pool_pattern(&b, tape, x, *k, *s, *pad);
                tape.maxpool2d(x, *k, *s, *pad)
            }
            Body::Flatten => {
                let f = tape.flatten(x);
                tape.flatten(f)
            }
            Body::BatchNorm(bn, batch) => tape.batchnorm(x, bn, *batch),
            Body::Add(second) => {
                let x2 = second.record(tape);
                tape.add(x, x2)
            }
            Body::GlobalAvgPool => tape.global_avgpool(x),
        };
        let f = tape.flatten(y);
        let z = tape.linear(f, &self.probe);
        tape.cross_entropy(z, &self.labels, 1.0);
        Eval { loss: ce_f64(&b.download(tape.value(z)), &self.labels, 3, 1.0), pattern }
    }
}

/// Run the checker and turn its report into a proptest verdict.
fn verdict<M: Model>(m: &mut M, ids: &[ParamId], seed: u64, tol: Tol) -> Result<Report, TestCaseError> {
    let b = B::new();
    let mut rng = Rng::new(seed ^ 0x5eed);
    let rep = check_grads(&b, m, ids, 16, &mut rng, tol);
    if std::env::var("GRADCHECK_STATS").is_ok() {
        eprintln!(
            "STATS checked {} kinks {} max_abs {:.2e} max_ratio {:.3} loss {:.4e}/{:.4e}",
            rep.checked, rep.kinks, rep.max_abs, rep.max_ratio, rep.loss_engine, rep.loss_host
        );
    }
    prop_assert!(rep.failures.is_empty(), "{} failures:\n{}", rep.failures.len(), rep.failures.join("\n"));
    let (le, lh) = (rep.loss_engine, rep.loss_host);
    prop_assert!((le - lh).abs() <= 1e-5 * lh.abs().max(1.0), "engine loss {le} vs host loss {lh}");
    Ok(rep)
}

proptest! {
    #![proptest_config(proptest_cfg(96))]

    /// Linear: dX (through the leaf), dW and db.
    #[test]
    fn linear_grads(n in 1usize..4, in_f in 1usize..9, out_f in 1usize..7, seed: u64) {
        let b = B::new();
        let mut rng = Rng::new(seed);
        let leaf = Leaf::mat(&b, &mut rng, 0, n, in_f, -1.0, 1.0);
        let body = Body::Linear(linear(&b, &mut rng, 2, in_f, out_f, true));
        let mut m = Chain::new(&b, &mut rng, leaf, body, n, out_f);
        let ids = m.ids();
        let rep = verdict(&mut m, &ids, seed, Tol::default())?;
        prop_assert_eq!(rep.kinks, 0);
    }

    /// Conv2d: dX, dW, db over kernel 1–7, stride 1–3, padding 0–3, with
    /// a bias or without (the ResNets' convolutions).
    #[test]
    fn conv2d_grads(
        n in 1usize..4, c in 1usize..5, oc in 1usize..5, h in 3usize..10, w in 3usize..10,
        k in 1usize..8, s in 1usize..4, p in 0usize..4, bias: bool, seed: u64,
    ) {
        prop_assume!(h + 2 * p >= k && w + 2 * p >= k);
        let b = B::new();
        let mut rng = Rng::new(seed);
        let leaf = Leaf::img(&b, &mut rng, 0, [n, c, h, w], -1.0, 1.0);
        let mut layer = conv(&b, &mut rng, 2, c, oc, k, s, p, true);
        if !bias {
            layer.b = None;
        }
        let cp = Conv2dParams { n, c, h, w, oc, kh: k, kw: k, sh: s, sw: s, ph: p, pw: p };
        let mut m = Chain::new(&b, &mut rng, leaf, Body::Conv(layer), n, oc * cp.oh() * cp.ow());
        let ids = m.ids();
        verdict(&mut m, &ids, seed, Tol::default())?;
    }

    /// Conv2d through the CPU backend's Winograd F(2×2,3×3) path (3×3,
    /// stride 1, pad 1, ≥ 4 input channels), odd sizes with partial tiles.
    #[test]
    fn conv2d_winograd_grads(
        n in 1usize..3, c in 4usize..7, oc in 1usize..4, h in 1usize..8, w in 1usize..8, seed: u64,
    ) {
        let b = B::new();
        let mut rng = Rng::new(seed);
        let leaf = Leaf::img(&b, &mut rng, 0, [n, c, h, w], -1.0, 1.0);
        let layer = conv(&b, &mut rng, 2, c, oc, 3, 1, 1, true);
        let mut m = Chain::new(&b, &mut rng, leaf, Body::Conv(layer), n, oc * h * w);
        let ids = m.ids();
        verdict(&mut m, &ids, seed, Tol::default())?;
    }

    /// Convolution + max pooling as one op: dX, dW, db through the CPU's
    /// fused paths (2×2 windows after Winograd, ≥ 4 channels, or the direct
    /// convolution, ≤ 3) and the two-kernel default (3×3 windows); near-ties
    /// skipped.
    #[test]
    fn conv2d_maxpool_grads(
        n in 1usize..3, c in 1usize..7, oc in 1usize..4, h in 3usize..9, w in 3usize..9, k in 2usize..4, seed: u64,
    ) {
        let b = B::new();
        let mut rng = Rng::new(seed);
        let leaf = Leaf::img(&b, &mut rng, 0, [n, c, h, w], -1.0, 1.0);
        let layer = conv(&b, &mut rng, 2, c, oc, 3, 1, 1, true);
        let (ph, pw) = ((h - k) / 2 + 1, (w - k) / 2 + 1);
        let mut m = Chain::new(&b, &mut rng, leaf, Body::ConvPool(layer, k), n, oc * ph * pw);
        let ids = m.ids();
        let rep = verdict(&mut m, &ids, seed, Tol::default())?;
        prop_assume!(rep.checked >= 8);
    }

    /// ReLU: dX (kinks at 0 skipped).
    #[test]
    fn relu_grads(n in 1usize..4, c in 1usize..5, h in 3usize..10, w in 3usize..10, seed: u64) {
        let b = B::new();
        let mut rng = Rng::new(seed);
        let leaf = Leaf::img(&b, &mut rng, 0, [n, c, h, w], -1.0, 1.0);
        let mut m = Chain::new(&b, &mut rng, leaf, Body::Relu, n, c * h * w);
        let ids = m.ids();
        let rep = verdict(&mut m, &ids, seed, Tol::default())?;
        prop_assume!(rep.checked >= 8);
    }

    /// Max pooling: dX for windows 2–3, strides 1–3, padding 0 to k − 1
    /// (the ResNet stem's 3×3 / 2 / 1 among them; near-ties skipped).
    #[test]
    fn maxpool2d_grads(
        n in 1usize..4, c in 1usize..5, h in 3usize..10, w in 3usize..10,
        k in 2usize..4, s in 1usize..4, pad in 0usize..3, seed: u64,
    ) {
        let pad = pad % k;
        let b = B::new();
        let mut rng = Rng::new(seed);
        let leaf = Leaf::img(&b, &mut rng, 0, [n, c, h, w], -1.0, 1.0);
        let (oh, ow) = ((h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1);
        let mut m = Chain::new(&b, &mut rng, leaf, Body::MaxPool { k, s, pad }, n, c * oh * ow);
        let ids = m.ids();
        let rep = verdict(&mut m, &ids, seed, Tol::default())?;
        prop_assume!(rep.checked >= 8);
    }

    /// BatchNorm2d in training mode (the batch's statistics: dX flows
    /// through the mean and the variance as well as directly) and with
    /// running statistics (eval / frozen), γ and β trainable or frozen.
    #[test]
    fn batchnorm_grads(
        n in 1usize..4, c in 1usize..4, h in 1usize..5, w in 1usize..5, batch: bool,
        affine: bool, seed: u64,
    ) {
        prop_assume!(!batch || n * h * w >= 2);
        let b = B::new();
        let mut rng = Rng::new(seed);
        let leaf = Leaf::img(&b, &mut rng, 0, [n, c, h, w], -2.0, 2.0);
        if batch {
            // A channel whose few values nearly coincide has σ ≈ √eps: its
            // output is then so curved in x that a finite-difference step
            // cannot resolve it (two values 0.05 apart, a step of 0.006).
            // The leaf's weight row c is channel c's values.
            let vals = leaf.params()[0].value.to_vec(&b);
            let spread = vals.chunks(n * h * w).map(|ch| {
                let m = ch.iter().sum::<f32>() / ch.len() as f32;
                (ch.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / ch.len() as f32).sqrt()
            });
            prop_assume!(spread.fold(f32::INFINITY, f32::min) >= 0.25);
        }
        let mut bn = batchnorm(&b, &mut rng, 2, c);
        bn.w.trainable = affine;
        bn.b.trainable = affine;
        let mut m = Chain::new(&b, &mut rng, leaf, Body::BatchNorm(bn, batch), n, c * h * w);
        let ids = m.ids();
        let rep = verdict(&mut m, &ids, seed, Tol::default())?;
        prop_assert_eq!(rep.kinks, 0);
    }

    /// Elementwise add: both inputs get the gradient.
    #[test]
    fn add_grads(n in 1usize..4, c in 1usize..4, h in 1usize..6, w in 1usize..6, seed: u64) {
        let b = B::new();
        let mut rng = Rng::new(seed);
        let leaf = Leaf::img(&b, &mut rng, 0, [n, c, h, w], -1.0, 1.0);
        let second = Leaf::img(&b, &mut rng, 4, [n, c, h, w], -1.0, 1.0);
        let mut m = Chain::new(&b, &mut rng, leaf, Body::Add(second), n, c * h * w);
        let ids = m.ids();
        prop_assert_eq!(&ids, &vec![0, 4]);
        verdict(&mut m, &ids, seed, Tol::default())?;
    }

    /// Global average pooling (N, C, H, W) → (N, C), 1×1 planes included.
    #[test]
    fn global_avgpool_grads(n in 1usize..4, c in 1usize..5, h in 1usize..6, w in 1usize..6, seed: u64) {
        let b = B::new();
        let mut rng = Rng::new(seed);
        let leaf = Leaf::img(&b, &mut rng, 0, [n, c, h, w], -1.0, 1.0);
        let mut m = Chain::new(&b, &mut rng, leaf, Body::GlobalAvgPool, n, c);
        let ids = m.ids();
        verdict(&mut m, &ids, seed, Tol::default())?;
    }

    /// Flatten (a view, twice): the gradient reaches the root's buffer.
    #[test]
    fn flatten_grads(n in 1usize..4, c in 1usize..5, h in 3usize..7, w in 3usize..7, seed: u64) {
        let b = B::new();
        let mut rng = Rng::new(seed);
        let leaf = Leaf::img(&b, &mut rng, 0, [n, c, h, w], -1.0, 1.0);
        let mut m = Chain::new(&b, &mut rng, leaf, Body::Flatten, n, c * h * w);
        let ids = m.ids();
        verdict(&mut m, &ids, seed, Tol::default())?;
    }
}

// ---- losses ---------------------------------------------------------------------

/// Cross-entropy straight on leaf logits, some rows IGNORE_LABEL.
struct Ce {
    leaf: Leaf,
    labels: Vec<u32>,
    cols: usize,
    scale: f32,
}

impl Model for Ce {
    fn params(&self) -> Vec<&Param<B>> {
        self.leaf.params()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        self.leaf.params_mut()
    }
    fn record<'a>(&'a self, tape: &mut Tape<'a, B>) -> Eval {
        let z = self.leaf.record(tape);
        tape.cross_entropy(z, &self.labels, self.scale);
        let zs = B::new().download(tape.value(z));
        Eval { loss: ce_f64(&zs, &self.labels, self.cols, self.scale as f64), pattern: vec![] }
    }
}

/// Distillation of leaf student logits (N, ld) against constant teacher
/// logits (N, cols), cols ≤ ld (the grown shared head).
struct Kd {
    student: Leaf,
    teacher: Vec<f32>,
    rows: usize,
    cols: usize,
    ld: usize,
    t: f32,
    scale: f32,
}

impl Model for Kd {
    fn params(&self) -> Vec<&Param<B>> {
        self.student.params()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        self.student.params_mut()
    }
    fn record<'a>(&'a self, tape: &mut Tape<'a, B>) -> Eval {
        let zs = self.student.record(tape);
        let zt = tape.input(&[self.rows, self.cols], &self.teacher);
        tape.distill(zs, zt, self.t, self.scale);
        let s = B::new().download(tape.value(zs));
        let loss = kd_f64(&s, &self.teacher, self.rows, self.cols, self.ld, self.t as f64, self.scale as f64);
        Eval { loss, pattern: vec![] }
    }
}

/// Distillation of two old heads in one softmax (`--kd-softmax all`): leaf
/// student logits of widths c1 and c2 joined by `KdConcat`, against the
/// two constant teachers joined the same way. The host reference joins the
/// rows itself, so a wrong placement fails both the loss and the gradient.
struct JoinedKd {
    parts: [Leaf; 2],
    teachers: [Vec<f32>; 2],
    concat: KdConcat<B>,
    rows: usize,
    cols: [usize; 2],
    t: f32,
    scale: f32,
}

impl Model for JoinedKd {
    fn params(&self) -> Vec<&Param<B>> {
        self.parts.iter().flat_map(Leaf::params).collect()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        self.parts.iter_mut().flat_map(Leaf::params_mut).collect()
    }
    fn record<'a>(&'a self, tape: &mut Tape<'a, B>) -> Eval {
        let b = B::new();
        let zs: Vec<Var> = self.parts.iter().map(|p| p.record(tape)).collect();
        let zt: Vec<Var> =
            self.teachers.iter().zip(self.cols).map(|(t, c)| tape.input(&[self.rows, c], t)).collect();
        let (js, jt) = (self.concat.join(tape, &zs), self.concat.join(tape, &zt));
        tape.distill(js, jt, self.t, self.scale);
        let width = self.cols[0] + self.cols[1];
        let join = |a: &[f32], b: &[f32]| -> Vec<f32> {
            (0..self.rows)
                .flat_map(|r| {
                    a[r * self.cols[0]..(r + 1) * self.cols[0]]
                        .iter()
                        .chain(&b[r * self.cols[1]..(r + 1) * self.cols[1]])
                        .copied()
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let s = join(&b.download(tape.value(zs[0])), &b.download(tape.value(zs[1])));
        let t = join(&self.teachers[0], &self.teachers[1]);
        let loss = kd_f64(&s, &t, self.rows, width, width, self.t as f64, self.scale as f64);
        Eval { loss, pattern: vec![] }
    }
}

/// Feature distillation of leaf features (N, D) against constant old
/// features, beside a cross-entropy on a linear head over the same
/// features (both gradients reach them).
struct FeatureKd {
    feats: Leaf,
    lin: Linear<B>,
    old: Vec<f32>,
    labels: Vec<u32>,
    rows: usize,
    dim: usize,
    scale: f32,
}

impl Model for FeatureKd {
    fn params(&self) -> Vec<&Param<B>> {
        let mut p = self.feats.params();
        p.extend([&self.lin.w, &self.lin.b]);
        p
    }
    fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        let mut p = self.feats.params_mut();
        p.extend([&mut self.lin.w, &mut self.lin.b]);
        p
    }
    fn record<'a>(&'a self, tape: &mut Tape<'a, B>) -> Eval {
        let b = B::new();
        let f = self.feats.record(tape);
        let z = tape.linear(f, &self.lin);
        tape.cross_entropy(z, &self.labels, 1.0 / self.rows as f32);
        let old = tape.input(&[self.rows, self.dim], &self.old);
        tape.feature_distill(f, old, self.scale);
        let fv = b.download(tape.value(f));
        let ce = ce_f64(&b.download(tape.value(z)), &self.labels, self.lin.out_f, 1.0 / self.rows as f64);
        let sq: f64 = fv.iter().zip(&self.old).map(|(&a, &o)| (a as f64 - o as f64).powi(2)).sum();
        Eval { loss: ce + self.scale as f64 * sq, pattern: vec![] }
    }
}

/// A linear layer trained by cross-entropy plus an anchor penalty on its
/// weight (l2 without Fisher, ewc with it): both gradients accumulate.
struct Anchored {
    lin: Linear<B>,
    x: Vec<f32>,
    labels: Vec<u32>,
    anchor: <B as Backend>::Buf,
    fisher: Option<<B as Backend>::Buf>,
    scale: f32,
}

impl Model for Anchored {
    fn params(&self) -> Vec<&Param<B>> {
        vec![&self.lin.w, &self.lin.b]
    }
    fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        vec![&mut self.lin.w, &mut self.lin.b]
    }
    fn record<'a>(&'a self, tape: &mut Tape<'a, B>) -> Eval {
        let b = B::new();
        let n = self.labels.len();
        let x = tape.input(&[n, self.lin.in_f], &self.x);
        let z = tape.linear(x, &self.lin);
        tape.cross_entropy(z, &self.labels, 1.0 / n as f32);
        tape.anchor_penalty(&self.lin.w, &self.anchor, self.fisher.as_ref(), self.scale);
        let ce = ce_f64(&b.download(tape.value(z)), &self.labels, self.lin.out_f, 1.0 / n as f64);
        let (w, a) = (self.lin.w.value.to_vec(&b), b.download(&self.anchor));
        let f = self.fisher.as_ref().map(|f| b.download(f));
        let pen: f64 = (0..w.len())
            .map(|i| {
                let d = w[i] as f64 - a[i] as f64;
                f.as_ref().map_or(1.0, |f| f[i] as f64) * d * d
            })
            .sum();
        Eval { loss: ce + self.scale as f64 * pen, pattern: vec![] }
    }
}

proptest! {
    #![proptest_config(proptest_cfg(96))]

    /// Cross-entropy, including rows labelled IGNORE_LABEL (no gradient).
    #[test]
    fn cross_entropy_grads(rows in 1usize..6, cols in 1usize..8, scale in 0.1f32..2.0, seed: u64) {
        let b = B::new();
        let mut rng = Rng::new(seed);
        let leaf = Leaf::mat(&b, &mut rng, 0, rows, cols, -3.0, 3.0);
        let labels: Vec<u32> =
            (0..rows).map(|_| if rng.below(4) == 0 { IGNORE_LABEL } else { rng.below(cols) as u32 }).collect();
        let mut m = Ce { leaf, labels, cols, scale };
        let rep = verdict(&mut m, &[0], seed, Tol::default())?;
        // Ignored rows: exactly zero gradient (leaf weight is (cols, rows)).
        let (grads, _, _) = analytic(&b, &m);
        let g = b.download(grads.get(0).unwrap());
        for (r, &y) in m.labels.iter().enumerate() {
            if y == IGNORE_LABEL {
                prop_assert!((0..cols).all(|c| g[c * rows + r] == 0.0), "ignored row {} has a gradient", r);
            }
        }
        prop_assert_eq!(rep.kinks, 0);
    }

    /// Distillation, T ∈ [1, 5], student wider than the teacher (ld > cols):
    /// the extra columns get exactly zero gradient.
    #[test]
    fn distill_grads(
        rows in 1usize..6, cols in 1usize..7, extra in 0usize..4, t in 1.0f32..5.0,
        scale in 0.1f32..2.0, seed: u64,
    ) {
        let b = B::new();
        let mut rng = Rng::new(seed);
        let ld = cols + extra;
        let student = Leaf::mat(&b, &mut rng, 0, rows, ld, -4.0, 4.0);
        let teacher = uniform_vec(&mut rng, rows * cols, -4.0, 4.0);
        let mut m = Kd { student, teacher, rows, cols, ld, t, scale };
        verdict(&mut m, &[0], seed, Tol::default())?;
        let (grads, _, _) = analytic(&b, &m);
        let g = b.download(grads.get(0).unwrap());
        prop_assert!(g[cols * rows..].iter().all(|&v| v == 0.0), "columns past the teacher's have a gradient");
    }

    /// Two heads distilled in one softmax through `KdConcat`.
    #[test]
    fn joined_distill_grads(
        rows in 1usize..5, c1 in 1usize..5, c2 in 1usize..5, t in 1.0f32..5.0,
        scale in 0.1f32..2.0, seed: u64,
    ) {
        let b = B::new();
        let mut rng = Rng::new(seed);
        let parts = [
            Leaf::mat(&b, &mut rng, 0, rows, c1, -4.0, 4.0),
            Leaf::mat(&b, &mut rng, 2, rows, c2, -4.0, 4.0),
        ];
        let teachers = [uniform_vec(&mut rng, rows * c1, -4.0, 4.0), uniform_vec(&mut rng, rows * c2, -4.0, 4.0)];
        let concat = KdConcat::new(&b, &[c1, c2]);
        let mut m = JoinedKd { parts, teachers, concat, rows, cols: [c1, c2], t, scale };
        verdict(&mut m, &[0, 2], seed, Tol::default())?;
    }

    /// Feature distillation on top of a head's CE over the same features.
    #[test]
    fn feature_distill_grads(
        rows in 1usize..5, dim in 1usize..7, out_f in 1usize..4, scale in 0.01f32..2.0, seed: u64,
    ) {
        let b = B::new();
        let mut rng = Rng::new(seed);
        let feats = Leaf::mat(&b, &mut rng, 0, rows, dim, -2.0, 2.0);
        let lin = linear(&b, &mut rng, 2, dim, out_f, true);
        let old = uniform_vec(&mut rng, rows * dim, -2.0, 2.0);
        let labels = (0..rows).map(|_| rng.below(out_f) as u32).collect();
        let mut m = FeatureKd { feats, lin, old, labels, rows, dim, scale };
        verdict(&mut m, &[0, 2, 3], seed, Tol::default())?;
    }

    /// Anchor penalty with and without a Fisher weight, on top of CE.
    #[test]
    fn anchor_penalty_grads(
        n in 1usize..4, in_f in 1usize..6, out_f in 1usize..5, with_fisher: bool,
        scale in 0.01f32..2.0, seed: u64,
    ) {
        let b = B::new();
        let mut rng = Rng::new(seed);
        let lin = linear(&b, &mut rng, 0, in_f, out_f, true);
        let anchor = b.upload(&uniform_vec(&mut rng, in_f * out_f, -1.0, 1.0));
        let fisher = with_fisher.then(|| b.upload(&uniform_vec(&mut rng, in_f * out_f, 0.0, 3.0)));
        let x = uniform_vec(&mut rng, n * in_f, -1.0, 1.0);
        let labels = (0..n).map(|_| rng.below(out_f) as u32).collect();
        let mut m = Anchored { lin, x, labels, anchor, fisher, scale };
        verdict(&mut m, &[0, 1], seed, Tol::default())?;
    }
}

// ---- the whole net ----------------------------------------------------------------

/// A small cnn-s-shaped net with two heads: CE on head 1, distillation of
/// head 0 against 3-column teacher logits and of head 1 (4 outputs) against
/// 2-column ones (the shared-head case).
struct NetModel {
    net: Net<B>,
    x: Vec<f32>,
    n: usize,
    labels: Vec<u32>,
    zt0: Vec<f32>,
    zt1: Vec<f32>,
    t: f32,
}

impl Model for NetModel {
    fn params(&self) -> Vec<&Param<B>> {
        self.net.params()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        self.net.params_mut()
    }
    fn record<'a>(&'a self, tape: &mut Tape<'a, B>) -> Eval {
        let b = B::new();
        let n = self.n;
        let [c, h, w] = self.net.arch.input;
        let x = tape.input(&[n, c, h, w], &self.x);
        // A training-mode pass: BatchNorm (ResNets) per the net's policy.
        let z = self.net.forward_train(tape, x, &[0, 1]);
        let zt0 = tape.input(&[n, 3], &self.zt0);
        let zt1 = tape.input(&[n, 2], &self.zt1);
        tape.cross_entropy(z[1], &self.labels, 1.0 / n as f32);
        tape.distill(z[0], zt0, self.t, 0.7 / n as f32);
        tape.distill(z[1], zt1, self.t, 1.3 / n as f32);
        let (z0, z1) = (b.download(tape.value(z[0])), b.download(tape.value(z[1])));
        let nf = n as f64;
        let t = self.t as f64;
        let loss = ce_f64(&z1, &self.labels, 4, 1.0 / nf)
            + kd_f64(&z0, &self.zt0, n, 3, 3, t, 0.7 / nf)
            + kd_f64(&z1, &self.zt1, n, 2, 4, t, 1.3 / nf);
        Eval { loss, pattern: trunk_pattern(&b, tape, &self.net, x) }
    }
}

/// Kink pattern of the trunk: a second, gradient-free walk of the same
/// layers on the same tape (no loss reaches it, so backward skips it).
fn trunk_pattern<'a>(
    b: &B,
    tape: &mut Tape<'a, B>,
    net: &'a Net<B>,
    x: lwf_engine::autodiff::Var,
) -> Vec<u32> {
    let mut pattern = Vec::new();
    let mut h = x;
    for layer in &net.trunk {
        h = match layer {
            Layer::Conv2d(c) => tape.conv2d(h, c),
            Layer::Relu => {
                let y = tape.relu(h);
                pattern.extend(relu_pattern(b, tape, y));
                y
            }
            Layer::MaxPool2d { k, s, pad } => {
                pattern.extend(pool_pattern(b, tape, h, *k, *s, *pad));
                tape.maxpool2d(h, *k, *s, *pad)
            }
            Layer::Flatten => tape.flatten(h),
            Layer::Linear(l) => tape.linear(h, l),
            Layer::BatchNorm(bn) => tape.batchnorm(h, bn, batch_stats(net, bn)),
            Layer::GlobalAvgPool => tape.global_avgpool(h),
            Layer::Basic(blk) => {
                let a = tape.conv2d(h, &blk.conv1);
                let a = tape.batchnorm(a, &blk.bn1, batch_stats(net, &blk.bn1));
                let a = tape.relu(a);
                pattern.extend(relu_pattern(b, tape, a));
                let a = tape.conv2d(a, &blk.conv2);
                let a = tape.batchnorm(a, &blk.bn2, batch_stats(net, &blk.bn2));
                let s = match &blk.downsample {
                    Some((conv, bn)) => {
                        let s = tape.conv2d(h, conv);
                        tape.batchnorm(s, bn, batch_stats(net, bn))
                    }
                    None => h,
                };
                let y = tape.add(a, s);
                let y = tape.relu(y);
                pattern.extend(relu_pattern(b, tape, y));
                y
            }
        };
    }
    pattern
}

/// Whether the trunk walk normalises `bn` with batch statistics: as
/// `Net::forward_train` does under the net's policy (the models below
/// record training-mode passes when the policy is `train`).
fn batch_stats(net: &Net<B>, bn: &BatchNorm2d<B>) -> bool {
    net.bn_policy == BnPolicy::Train && bn.trainable()
}

fn small_arch() -> Arch {
    Arch { name: "cnn-s".into(), input: [1, 8, 8], conv: vec![3, 4], hidden: 8, resnet: None }
}

/// cnn-m's shape at a small size: three conv blocks over 3-channel images.
fn small_arch_m() -> Arch {
    Arch { name: "cnn-m".into(), input: [3, 16, 16], conv: vec![4, 8, 8], hidden: 16, resnet: None }
}

fn net_model(arch: Arch, n: usize, t: f32, seed: u64) -> NetModel {
    let b = B::new();
    let mut rng = Rng::new(seed);
    let len = arch.image_len();
    let mut net = Net::new(&b, arch, &mut rng);
    net.add_head(&b, &mut rng, &[0, 1, 2]);
    net.add_head(&b, &mut rng, &[3, 4, 5, 6]);
    let x = normal_vec(&mut rng, n * len, 1.0);
    let labels = (0..n).map(|i| if i == 1 { IGNORE_LABEL } else { rng.below(4) as u32 }).collect();
    let zt0 = normal_vec(&mut rng, n * 3, 2.0);
    let zt1 = normal_vec(&mut rng, n * 2, 2.0);
    NetModel { net, x, n, labels, zt0, zt1, t }
}

proptest! {
    #![proptest_config(proptest_cfg(24))]

    /// Every parameter of the two-head net under CE + KD, with the first
    /// `frozen` trunk layers frozen (those must get no gradient).
    #[test]
    fn cnn_s_net_grads(n in 1usize..4, t in 1.0f32..5.0, frozen in 0usize..4, seed: u64) {
        let mut m = net_model(small_arch(), n, t, seed);
        m.net.set_trainable(true, frozen, &[0, 1]);
        let ids: Vec<ParamId> = m.net.params().iter().map(|p| p.id).collect();
        prop_assert_eq!(ids.len(), 10);
        // Smaller steps: one weight moves hundreds of activations, so the
        // default step crosses a ReLU kink too often.
        let tol = Tol { h_rel: 2e-3, ..Tol::default() };
        let rep = verdict(&mut m, &ids, seed, tol)?;
        prop_assume!(rep.checked >= 5 * (10 - 2 * frozen));
    }
}

proptest! {
    #![proptest_config(proptest_cfg(12))]

    /// The same over cnn-m's shape: colour input (the first convolution's 3
    /// channels) and a third conv block, every parameter of both heads.
    #[test]
    fn cnn_m_net_grads(n in 1usize..3, t in 1.0f32..5.0, seed: u64) {
        let mut m = net_model(small_arch_m(), n, t, seed);
        let ids: Vec<ParamId> = m.net.params().iter().map(|p| p.id).collect();
        prop_assert_eq!(ids.len(), 12);
        let tol = Tol { h_rel: 2e-3, ..Tol::default() };
        let rep = verdict(&mut m, &ids, seed, tol)?;
        prop_assume!(rep.checked >= 5 * 12);
    }
}

/// A ResNet small enough to check every parameter: the CIFAR stem (3×3)
/// or torchvision's (7×7 stride 2 + 3×3 stride-2 max-pool), then two
/// stages of one BasicBlock each, the second with a strided 1×1 projection
/// shortcut, then global average pooling.
fn small_resnet(imagenet: bool) -> Arch {
    use lwf_engine::nn::{ResNetSpec, Stem};
    let (stem, input) = if imagenet { (Stem::Imagenet, [3, 12, 12]) } else { (Stem::Cifar, [3, 6, 6]) };
    Arch::resnet("resnet-test", input, ResNetSpec { stem, stem_width: 4, stages: vec![(4, 1), (6, 1)] })
}

proptest! {
    #![proptest_config(proptest_cfg(12))]

    /// Every parameter of a two-head ResNet under CE + KD, BatchNorm with
    /// batch statistics (the training step's pass) or frozen running
    /// statistics; both stems.
    #[test]
    fn resnet_net_grads(n in 1usize..4, t in 1.0f32..5.0, imagenet: bool, frozen_bn: bool, seed: u64) {
        let mut m = net_model(small_resnet(imagenet), n, t, seed);
        m.net.bn_policy = if frozen_bn { BnPolicy::Frozen } else { BnPolicy::Train };
        if frozen_bn {
            // Running statistics away from their initial 0 / 1.
            let b = B::new();
            let mut rng = Rng::new(seed ^ 1);
            for bn in m.net.batchnorms_mut() {
                bn.running_mean = Tensor::from_vec(&b, &[bn.c], &uniform_vec(&mut rng, bn.c, -0.3, 0.3));
                bn.running_var = Tensor::from_vec(&b, &[bn.c], &uniform_vec(&mut rng, bn.c, 0.5, 2.0));
            }
        }
        let ids: Vec<ParamId> = m.net.params().iter().map(|p| p.id).collect();
        // conv1, bn1 (2); block 1: 2 convs + 2 BNs (6); block 2: the same
        // plus the projection (9); two heads (4).
        prop_assert_eq!(ids.len(), 3 + 6 + 9 + 4);
        let tol = Tol { h_rel: 2e-3, ..Tol::default() };
        let rep = verdict(&mut m, &ids, seed, tol)?;
        prop_assume!(rep.checked >= 5 * ids.len());
    }
}

/// The ResNets the CLI offers have the layout and tensor names of
/// torchvision's and their sizes, counted independently (by a script from
/// the layer list): resnet18's trunk is 11,176,512 parameters
/// (torchvision's 11,689,512 less fc's 513,000) and its forward pass at
/// 224×224 is 1,814,073,344 multiply-adds with a 1000-class fc (the stem
/// alone 118,013,952); resnet20 with projection shortcuts has 271,824
/// (He et al.'s "0.27M").
#[test]
fn resnet_layouts_match_torchvision_names_and_counts() {
    let b = B::new();
    let net = Net::new(&b, ArchKind::Resnet18.build([3, 224, 224]), &mut Rng::new(0));
    let names: Vec<&str> = net.params().iter().map(|p| p.name.as_str()).collect();
    // torchvision's 62 parameter tensors less fc.weight and fc.bias.
    assert_eq!(names.len(), 60);
    assert_eq!(&names[..3], &["conv1.weight", "bn1.weight", "bn1.bias"]);
    for want in [
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.bias",
        "layer4.1.bn2.weight",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("layer1.0.downsample")),
        "layer1 keeps its width: no projection"
    );
    let trunk: usize = net.params().iter().map(|p| p.value.shape.numel()).sum();
    assert_eq!(trunk, 11_689_512 - 513_000);
    assert_eq!(net.batchnorms().len(), 20);
    let bn_values: usize = net.batchnorms().iter().map(|bn| 2 * bn.c).sum();
    assert_eq!(net.arch.param_count(&[1000]), Some(11_689_512 + bn_values));
    assert_eq!(net.arch.forward_flops(&[1000]), 2.0 * 1_814_073_344.0);
    let stem = Conv2dParams { n: 1, c: 3, h: 224, w: 224, oc: 64, kh: 7, kw: 7, sh: 2, sw: 2, ph: 3, pw: 3 };
    assert_eq!(stem.flops() / 2.0, 118_013_952.0);

    let r20 = Net::new(&b, ArchKind::Resnet20.build([3, 32, 32]), &mut Rng::new(0));
    let weights: usize = r20.params().iter().map(|p| p.value.shape.numel()).sum();
    assert_eq!(weights, 271_824);
    assert_eq!(r20.arch.hidden, 64);
}

// ---- frozen parameters, needs_grad --------------------------------------------------

/// `x → linear → CE`, with x a constant input or a trainable leaf.
struct OneLinear {
    leaf: Option<Leaf>,
    lin: Linear<B>,
    x: Vec<f32>,
    labels: Vec<u32>,
}

impl Model for OneLinear {
    fn params(&self) -> Vec<&Param<B>> {
        let mut v = vec![&self.lin.w, &self.lin.b];
        v.extend(self.leaf.iter().flat_map(|l| l.params()));
        v
    }
    fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        let mut v = vec![&mut self.lin.w, &mut self.lin.b];
        v.extend(self.leaf.iter_mut().flat_map(|l| l.params_mut()));
        v
    }
    fn record<'a>(&'a self, tape: &mut Tape<'a, B>) -> Eval {
        let n = self.labels.len();
        let x = match &self.leaf {
            Some(l) => l.record(tape),
            None => tape.input(&[n, self.lin.in_f], &self.x),
        };
        let z = tape.linear(x, &self.lin);
        tape.cross_entropy(z, &self.labels, 1.0);
        let zs = B::new().download(tape.value(z));
        Eval { loss: ce_f64(&zs, &self.labels, self.lin.out_f, 1.0), pattern: vec![] }
    }
}

/// Device buffers a fresh workspace hands out for the forward pass alone
/// and for forward + backward, and the gradients. Every gradient of an
/// activation (a dX) takes a workspace buffer, so `with − without` counts
/// the dX computations of backward.
fn allocations<M: Model>(b: &B, m: &M) -> (usize, usize, Grads<B>) {
    let count = |backward: bool| {
        let mut ws = Workspace::new();
        let mut grads = Grads::new();
        {
            let mut tape = Tape::new(b, &mut ws);
            m.record(&mut tape);
            if backward {
                grads.prepare(b, m.params());
                tape.backward(&mut grads);
            }
        }
        (ws.allocations, grads)
    };
    let (without, _) = count(false);
    let (with, grads) = count(true);
    (without, with, grads)
}

fn one_linear(leaf: bool) -> OneLinear {
    let b = B::new();
    let mut rng = Rng::new(3);
    let (n, in_f, out_f) = (2, 3, 5);
    let leaf = leaf.then(|| Leaf::mat(&b, &mut rng, 10, n, in_f, -1.0, 1.0));
    let lin = linear(&b, &mut rng, 0, in_f, out_f, true);
    OneLinear { leaf, lin, x: uniform_vec(&mut rng, n * in_f, -1.0, 1.0), labels: vec![1, 4] }
}

#[test]
fn frozen_param_gets_no_gradient_buffer_and_the_rest_are_right() {
    let b = B::new();
    let mut m = one_linear(true);
    m.lin.w.trainable = false;
    let (_, _, grads) = allocations(&b, &m);
    assert!(grads.get(m.lin.w.id).is_none(), "a frozen weight got a gradient buffer");
    assert!(grads.get(m.lin.b.id).is_some() && grads.get(10).is_some());
    // dX and db are still right with W frozen (the checker also fails on a
    // gradient buffer for a frozen parameter).
    let rep = check_grads(&b, &mut m, &[0, 1, 10], 16, &mut Rng::new(4), Tol::default());
    assert!(rep.failures.is_empty(), "{:?}", rep.failures);
    assert_eq!(rep.checked, 5 + 6);
}

#[test]
fn no_dx_is_computed_for_an_input_that_needs_no_gradient() {
    let b = B::new();
    let (without, with, grads) = allocations(&b, &one_linear(false));
    assert_eq!(with, without, "backward allocated a buffer: a dX for the constant input");
    assert!(grads.get(0).is_some() && grads.get(1).is_some());
    // Control: the same layer fed by a trainable leaf computes exactly one dX.
    let (without, with, _) = allocations(&b, &one_linear(true));
    assert_eq!(with, without + 1);
}

#[test]
fn frozen_trunk_and_old_head_launch_no_backward_work_below_the_new_head() {
    let b = B::new();
    let mut m = net_model(small_arch(), 3, 2.0, 9);
    m.net.set_trainable(false, 0, &[1]);
    let (without, with, grads) = allocations(&b, &m);
    assert_eq!(with, without, "backward computed a dX below the trainable head");
    for p in m.net.params() {
        assert_eq!(grads.get(p.id).is_some(), p.name.starts_with("heads.1"), "{}", p.name);
    }
    let ids: Vec<ParamId> = m.net.params().iter().map(|p| p.id).collect();
    let rep = check_grads(&b, &mut m, &ids, 16, &mut Rng::new(5), Tol::default());
    assert!(rep.failures.is_empty(), "{:?}", rep.failures);
    assert_eq!(rep.checked, 16 + 4);
}

// ---- shape mismatches panic naming both shapes -----------------------------------------

#[test]
#[should_panic(expected = "linear: input shape [2, 5] does not fit weight shape [3, 4]")]
fn linear_with_wrong_input_width_panics() {
    let b = B::new();
    let lin = linear(&b, &mut Rng::new(0), 0, 4, 3, true);
    let mut ws = Workspace::new();
    let mut tape = Tape::new(&b, &mut ws);
    let x = tape.input(&[2, 5], &[0.0; 10]);
    tape.linear(x, &lin);
}

#[test]
#[should_panic(expected = "conv2d: input shape [1, 2, 5, 5] does not fit weight shape [4, 3, 3, 3]")]
fn conv_with_wrong_channels_panics() {
    let b = B::new();
    let layer = conv(&b, &mut Rng::new(0), 0, 3, 4, 3, 1, 1, true);
    let mut ws = Workspace::new();
    let mut tape = Tape::new(&b, &mut ws);
    let x = tape.input(&[1, 2, 5, 5], &[0.0; 50]);
    tape.conv2d(x, &layer);
}

#[test]
#[should_panic(expected = "distill: student logits [3, 5] do not fit teacher logits [2, 5]")]
fn distill_with_mismatched_rows_panics() {
    let b = B::new();
    let mut ws = Workspace::new();
    let mut tape = Tape::new(&b, &mut ws);
    let zs = tape.input(&[3, 5], &[0.0; 15]);
    let zt = tape.input(&[2, 5], &[0.0; 10]);
    tape.distill(zs, zt, 2.0, 1.0);
}

#[test]
#[should_panic(expected = "distill: student logits [2, 3] do not fit teacher logits [2, 5]")]
fn distill_with_teacher_wider_than_student_panics() {
    let b = B::new();
    let mut ws = Workspace::new();
    let mut tape = Tape::new(&b, &mut ws);
    let zs = tape.input(&[2, 3], &[0.0; 6]);
    let zt = tape.input(&[2, 5], &[0.0; 10]);
    tape.distill(zs, zt, 2.0, 1.0);
}
